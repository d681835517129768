// expect: gfp::dma and gfp::highmem name two different zones
// Rule: a request names at most one zone modifier (gfp::check).  The allocator is in ZONE_DMA so the zone
// rule is satisfied and the flag-combination rule is the one that fires.
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma>>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::dma | kmem::gfp::highmem, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma, 0);
#endif
}
