// expect: but this allocator's lock policy is a non-sleeping spin lock
// Rule: a cache over a page allocator with a spin lock cannot grow with flags that may sleep (gfp::kernel);
// the page allocator's rule reaches through the cache.
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::SpinLock>;

void* f(kmem::KmemCache<Buddy, kmem::policy::SpinLock>& cache) {
#ifndef KMEM_CONTROL
    return cache.alloc(kmem::gfp::kernel);
#else
    return cache.alloc(kmem::gfp::atomic);
#endif
}
