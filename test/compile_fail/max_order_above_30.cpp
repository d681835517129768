// expect: BuddyAllocator's MaxOrder must be at most 30
// Rule: MaxOrder fits the free-list bitmap and the 32-bit page indices.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<31, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<30, 4096, kmem::OffsetRegion>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
