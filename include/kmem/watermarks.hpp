/// @file
/// Zone watermarks (the kernel's zone->_watermark[] and their defaults from init_per_zone_wmark_min() and
/// __setup_per_zone_wmarks()): used by a Node's zones (zone.hpp) and by the per-CPU page lists' default high
/// (zone_highsize(), pcp_lists.hpp).
///
/// @code
///   const kmem::Watermarks w = kmem::default_watermarks<4096>(/*zone pages*/ 65536, /*node pages*/ 65536);
///   assert(w.min == 512 && w.low == 640 && w.high == 768); // 256 MiB: min_free_kbytes = sqrt(16 * 262144)
/// @endcode
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace kmem {

/// A zone's watermarks in pages (zone->_watermark[WMARK_MIN], [WMARK_LOW], [WMARK_HIGH]).
struct Watermarks {
    std::uint64_t min = 0; ///< Below it only reserve-entitled requests succeed (WMARK_MIN).
    std::uint64_t low =
        0; ///< Below it the fast path fails over to the slow path and kswapd wakes (WMARK_LOW).
    std::uint64_t high = 0; ///< kswapd reclaims until every zone is above it (WMARK_HIGH).
};

/// The kernel's default watermarks for a zone of `zone_pages` in a node of `node_pages` (init_per_zone_wmark_min
/// and __setup_per_zone_wmarks): min_free_kbytes = sqrt(16 * node KiB) clamped to [128 KiB, 256 MiB], shared by
/// the zones in proportion to their size; low and high add max(min / 4, 0.1 % of the zone) once and twice
/// (watermark_scale_factor 10).  For the small arenas user space often builds, min is capped at 1/16 of the zone.
template <std::size_t PageSize>
constexpr Watermarks default_watermarks(std::uint64_t zone_pages, std::uint64_t node_pages) noexcept {
    if (zone_pages == 0 || node_pages == 0) return {};
    const std::uint64_t node_kib = node_pages * (PageSize / 64) / 16; // pages * PageSize / 1024
    std::uint64_t min_kib = 0;
    for (std::uint64_t bit = std::uint64_t{1} << 62, x = node_kib * 16; bit != 0; bit >>= 2) { // int_sqrt
        if (x >= min_kib + bit) {
            x -= min_kib + bit;
            min_kib = (min_kib >> 1) + bit;
        } else {
            min_kib >>= 1;
        }
    }
    min_kib = std::clamp<std::uint64_t>(min_kib, 128, 262144);
    const std::uint64_t node_min = min_kib * 1024 / PageSize;
    std::uint64_t min = node_min * zone_pages / node_pages;
    min = std::min(min, zone_pages / 16);
    const std::uint64_t step = std::max(min / 4, zone_pages * 10 / 10000);
    return {min, min + step, min + 2 * step};
}

} // namespace kmem
