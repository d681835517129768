// expect: PageAddressSource hands out addresses, but this allocator's region is offset-only
// Rule: PageAddressSource needs an addressable region; device memory uses PageSource.
#include <kmem/buddy.hpp>
#include <kmem/mempool.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::MutexLock>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
#endif

std::size_t f(Buddy& buddy) {
    kmem::PageAddressSource<Buddy> source(buddy, 0);
    return source.element_size();
}
