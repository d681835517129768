// expect: gfp::dma and gfp::dma32 name two different zones
// Rule: a request names at most one zone modifier (gfp::check).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma>>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma | kmem::gfp::dma32, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);
#endif
}
