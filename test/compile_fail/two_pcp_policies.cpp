// expect: give at most one policy::PerCpuPages
// Rule: an allocator has one set of per-CPU page lists.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::PerCpuPages<>,
                                   kmem::policy::PerCpuPages<31>>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::PerCpuPages<31>>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
