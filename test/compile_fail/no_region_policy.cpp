// expect: BuddyAllocator needs exactly one Region policy
// Rule: every BuddyAllocator names the region it manages.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::policy::SpinLock>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::SpinLock>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
