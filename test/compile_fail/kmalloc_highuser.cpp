// expect: gfp::highmem cannot be used for a slab or kmalloc allocation \(GFP_SLAB_BUG_MASK\).*gfp::highuser includes gfp::highmem
// Rule: kmalloc refuses GFP_HIGHUSER, which carries __GFP_HIGHMEM (GFP_SLAB_BUG_MASK), at compile time.
#include <kmem/buddy.hpp>
#include <kmem/kmalloc.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;

void* f(kmem::Kmalloc<Buddy>& km) {
#ifndef KMEM_CONTROL
    return km.kmalloc(100, kmem::gfp::highuser);
#else
    return km.kmalloc(100, kmem::gfp::user);
#endif
}
