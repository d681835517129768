// expect: PerCpuPages' High must be at least its Batch
// Rule: a per-CPU list that gives pages back below its refill size would thrash (pcp->high >= pcp->batch).
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Pcp = kmem::policy::PerCpuPages<32, 16>;
#else
using Pcp = kmem::policy::PerCpuPages<16, 32>;
#endif
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, Pcp>;

std::uint64_t f(const Buddy& buddy) {
    return buddy.pcp_high();
}
