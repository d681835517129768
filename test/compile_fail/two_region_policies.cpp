// expect: BuddyAllocator needs exactly one Region policy
// Rule: an allocator manages one region (two are as wrong as none).
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::MmapRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
