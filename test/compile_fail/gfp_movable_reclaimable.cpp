// expect: gfp::movable and gfp::reclaimable pick two different migrate types
// Rule: one migrate type per request (gfp::check).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::movable | kmem::gfp::reclaimable, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::movable, 0);
#endif
}
