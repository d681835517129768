// expect: the GFP zone modifier asks for a zone this allocator was not built with
// Rule: gfp::dma32 on a ZONE_NORMAL allocator; the control shows a ZONE_DMA32 allocator accepts it.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma32>>;
#endif

kmem::Page* f(Buddy& buddy) {
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);
}
