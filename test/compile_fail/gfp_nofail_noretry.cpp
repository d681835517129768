// expect: gfp::nofail and gfp::noretry contradict each other
// Rule: never-fail and fail-fast cannot both be asked (gfp::check).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::nofail | kmem::gfp::noretry, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::nofail, 0);
#endif
}
