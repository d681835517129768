// expect: gfp::zero needs host memory to clear, but this allocator's region is offset-only
// Rule: an offset-only region has no bytes to zero.
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::zero, 0);
#else
    return buddy.alloc_pages(kmem::gfp::kernel, 0);
#endif
}
