/// @file
/// Shrinkers (include/linux/shrinker.h): callbacks through which reclaim asks caches to give memory back.
///
/// A `Shrinker` is a pair of callbacks: count_objects says how many objects could be freed, scan_objects frees up
/// to `sc.nr_to_scan` of them.  A `Node` (zone.hpp) calls the registered shrinkers from direct reclaim and from
/// its kswapd thread, never with an allocator lock held; a slab cache offers one for itself
/// (`KmemCache::shrinker()`).
///
/// @code
///   std::vector<int> cache(1000);
///   kmem::Shrinker s{"my_cache",
///                    [&](const kmem::ShrinkControl&) -> std::uint64_t {
///                        return cache.empty() ? kmem::shrink_empty : cache.size();
///                    },
///                    [&](kmem::ShrinkControl& sc) -> std::uint64_t {
///                        const std::uint64_t n = std::min<std::uint64_t>(sc.nr_to_scan, cache.size());
///                        cache.resize(cache.size() - n);
///                        return n;
///                    }};
///   kmem::ShrinkControl sc{.nr_to_scan = 128};
///   assert(s.count_objects(sc) == 1000 && s.scan_objects(sc) == 128 && cache.size() == 872);
/// @endcode
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace kmem {

/// What a shrinker's count and scan callbacks receive (struct shrink_control).
struct ShrinkControl {
    std::uint32_t gfp_mask = 0;   ///< The flags of the allocation that caused reclaim (0 for kswapd).
    int nid = 0;                  ///< The node.
    std::uint64_t nr_to_scan = 0; ///< How many objects scan_objects should look at.
    std::uint64_t nr_scanned = 0; ///< How many it looked at (preset to nr_to_scan; a scan may lower it).
};
/// scan_objects' "stop, reclaim cannot make progress now" answer (SHRINK_STOP).
inline constexpr std::uint64_t shrink_stop = ~std::uint64_t{0};
/// count_objects' "nothing to reclaim" answer (SHRINK_EMPTY).
inline constexpr std::uint64_t shrink_empty = ~std::uint64_t{0} - 1;

/// A reclaim callback pair (struct shrinker): count_objects says how many objects could be freed, scan_objects
/// frees up to sc.nr_to_scan of them and returns how many it freed (or shrink_stop).  Both are called without
/// any allocator lock held, from the allocating thread (direct reclaim) or from kswapd, so they must be
/// thread-safe; they may free memory to the node, and allocations they make never recurse into reclaim.
struct Shrinker {
    std::string name;                                                 ///< For reports.
    std::function<std::uint64_t(const ShrinkControl&)> count_objects; ///< Freeable objects, or shrink_empty.
    std::function<std::uint64_t(ShrinkControl&)> scan_objects;        ///< Objects freed, or shrink_stop.
    unsigned seeks = 2;      ///< Cost to recreate an object (DEFAULT_SEEKS); higher means scanned less.
    std::uint64_t batch = 0; ///< Objects per scan call; 0 means SHRINK_BATCH (128).
};

} // namespace kmem
