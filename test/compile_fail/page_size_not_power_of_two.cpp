// expect: BuddyAllocator's PageSize must be a power of two of at least 64 bytes
// Rule: the page size is a power of two (PAGE_SHIFT exists) and holds at least 64 bytes.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 3000, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 2048, kmem::OffsetRegion>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
