// expect: but this allocator's lock policy is a non-sleeping spin lock
// Rule: an allocator whose lock holders may not sleep rejects flags with gfp::direct_reclaim.
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::SpinLock>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::gfp::kernel, 0);
#else
    return buddy.alloc_pages(kmem::gfp::atomic, 0);
#endif
}
