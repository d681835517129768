// expect: give at most one error policy
// Rule: at most one error policy per allocator.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                   kmem::policy::AssertOnError>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
