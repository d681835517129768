// expect: the GFP zone modifier asks for a zone this allocator was not built with
// Rule: gfp::dma on an allocator without policy::InZone<ZoneType::dma> (ZONE_NORMAL by default).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel, 0);
#endif
}
