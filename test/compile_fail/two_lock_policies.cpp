// expect: give at most one lock policy
// Rule: at most one lock policy per allocator.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy =
    kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::SpinLock, kmem::policy::MutexLock>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::MutexLock>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
