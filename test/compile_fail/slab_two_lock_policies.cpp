// expect: give at most one lock policy
// Rule: at most one lock policy per cache.
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#ifndef KMEM_CONTROL
using Cache = kmem::KmemCache<Buddy, kmem::policy::SpinLock, kmem::policy::MutexLock>;
#else
using Cache = kmem::KmemCache<Buddy, kmem::policy::SpinLock>;
#endif

std::size_t f(const Cache& cache) {
    return cache.object_size();
}
