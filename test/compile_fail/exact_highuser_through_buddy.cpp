// expect: gfp::highmem cannot be used for an exact allocation
// Rule: on a ZONE_HIGHMEM allocator, alloc_pages_exact(gfp::highuser) is refused (the kernel WARNs and strips
// __GFP_HIGHMEM: an exact allocation must be permanently mapped, so it comes from a lower zone).
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::InZone<kmem::ZoneType::highmem>>;
void* f(Buddy& buddy) {
    return buddy.alloc_pages_exact(8192, kmem::gfp::highuser);
}
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
void* f(Buddy& buddy) {
    return buddy.alloc_pages_exact(8192, kmem::gfp::user);
}
#endif
