// expect: a slab cache needs a page allocator over host memory.*offset-only
// Rule: slab objects need addresses, so a KmemCache's page allocator must manage host memory.
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#endif

void* f(Buddy& buddy) {
    kmem::KmemCache<Buddy> cache(buddy, "objects", 64);
    return cache.alloc(kmem::gfp::kernel);
}
