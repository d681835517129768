// expect: gfp::dma32 and gfp::highmem name two different zones
// Rule: a request names at most one zone modifier (gfp::check).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma32>>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32 | kmem::gfp::highmem, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);
#endif
}
