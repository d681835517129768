// expect: gfp::comp cannot be used for an exact allocation
// Rule: BuddyAllocator::alloc_pages_exact applies gfp::check_exact (the kernel WARNs on __GFP_COMP there).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;

void* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages_exact(8192, kmem::gfp::kernel | kmem::gfp::comp);
#else
    return buddy.alloc_pages_exact(8192, kmem::gfp::kernel);
#endif
}
