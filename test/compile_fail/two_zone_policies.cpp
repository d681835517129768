// expect: give at most one zone policy
// Rule: an allocator manages one zone.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma>,
                                   kmem::policy::InZone<kmem::ZoneType::dma32>>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma32>>;
#endif

std::uint64_t f(const Buddy& buddy) {
    return buddy.total_pages();
}
