// expect: MemPoolResource needs a pool whose elements are memory
// Rule: the std::pmr adapter needs elements that are memory, not Page descriptors.
#include <kmem/buddy.hpp>
#include <kmem/mempool.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
#ifndef KMEM_CONTROL
using Pool = kmem::MemPool<kmem::PageSource<Buddy>>;
#else
using Pool = kmem::MemPool<kmem::PageAddressSource<Buddy>>;
#endif

std::pmr::memory_resource* f(Pool& pool) {
    static kmem::MemPoolResource<Pool> resource(pool, 4096, 4096);
    return &resource;
}
