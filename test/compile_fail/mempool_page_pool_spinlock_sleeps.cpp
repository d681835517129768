// expect: but this allocator's lock policy is a non-sleeping spin lock
// Rule: a page pool passes compile-time flags to its page allocator, whose own checks apply: a SpinLock buddy
// rejects flags that may sleep.
#include <kmem/buddy.hpp>
#include <kmem/mempool.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::SpinLock>;
using Pool = kmem::PagePool<Buddy, kmem::policy::SpinLock>;

kmem::Page* f(Pool& pool) {
#ifndef KMEM_CONTROL
    return pool.alloc(kmem::gfp::kernel);
#else
    return pool.alloc(kmem::gfp::atomic);
#endif
}
