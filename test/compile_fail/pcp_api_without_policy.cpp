// expect: (constraints not satisfied|no matching|requires|has_pcp)
// Rule: the per-CPU list calls exist only on allocators built with policy::PerCpuPages.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::PerCpuPages<>>;
#endif

std::uint64_t f(Buddy& buddy) {
    return buddy.drain_all_pages();
}
