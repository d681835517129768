// expect: a BuddyAllocator policy must be a Region, a lock policy, an error policy, policy::InZone, policy::PerCpuPages, policy::MigrateTypes or a fault-injection policy
// Rule: every policy argument must be recognisable.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, int>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
