/// @file
/// Zone policy: which zone (ZONE_DMA, ZONE_NORMAL...) a page allocator's memory belongs to.
///
/// GFP zone modifiers are checked against it at compile time: `gfp::dma` on an allocator built without
/// `InZone<ZoneType::dma>` does not compile.
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma>> dma_zone(
///       kmem::OffsetRegion(16 << 20));
///   kmem::Page* page = dma_zone.alloc_pages(kmem::gfp::dma, 0);   // fine: this allocator is ZONE_DMA
///   dma_zone.free_pages(page, 0);
/// @endcode
#pragma once

#include <kmem/policy/category.hpp>

#include <kmem/gfp.hpp>

namespace kmem::policy {

/// Declares the zone an allocator manages (ZONE_NORMAL when no InZone policy is given).
template <ZoneType Z>
struct InZone {
    /// This is a zone policy.
    using policy_category = zone_policy_tag;
    /// The zone.
    static constexpr ZoneType zone = Z;
};

/// True when a request whose flags allow zones up to `requested` (gfp_zone()) may be served from zone `have`:
/// the kernel's zonelists fall back from the requested zone to lower zones, never to higher ones.
constexpr bool zone_serves(ZoneType have, ZoneType requested) noexcept {
    return have <= requested;
}

} // namespace kmem::policy
