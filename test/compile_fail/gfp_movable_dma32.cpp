// expect: gfp::movable cannot be combined with gfp::dma or gfp::dma32
// Rule: movable memory lives in ZONE_MOVABLE or ZONE_HIGHMEM, never in ZONE_DMA32 (gfp::check).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma32>>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::movable | kmem::gfp::dma32, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);
#endif
}
