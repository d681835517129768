// expect: gfp::highmem cannot be used for a slab or kmalloc allocation \(GFP_SLAB_BUG_MASK\): slab memory must be permanently mapped
// Rule: __GFP_HIGHMEM is in GFP_SLAB_BUG_MASK: slab memory must be permanently mapped (gfp::check_slab).
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
struct Object {
    long id;
};

Object* f(kmem::SlabCache<Object, Buddy>& cache) {
#ifndef KMEM_CONTROL
    return cache.alloc(kmem::gfp::kernel | kmem::gfp::highmem);
#else
    return cache.zalloc(kmem::gfp::kernel);
#endif
}
