// expect: a slab cache needs a page allocator over host memory.*offset-only
// Rule: kmalloc's size classes are slab caches, so its page allocator must manage host memory.
#include <kmem/buddy.hpp>
#include <kmem/kmalloc.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#endif

void* f(Buddy& buddy) {
    kmem::Kmalloc<Buddy> km(buddy);
    return km.kmalloc(100, kmem::gfp::kernel);
}
