// expect: gfp::nofail needs gfp::direct_reclaim
// Rule: an allocation that may not fail must be allowed to sleep (gfp::check).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::atomic | kmem::gfp::nofail, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::nofail, 0);
#endif
}
