// expect: gfp::dma32 cannot be used for a slab or kmalloc allocation \(GFP_SLAB_BUG_MASK\)
// Rule: __GFP_DMA32 is in GFP_SLAB_BUG_MASK: a slab allocation may not ask for ZONE_DMA32 (gfp::check_slab).
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
struct Object {
    long id;
};

Object* f(kmem::SlabCache<Object, Buddy>& cache) {
#ifndef KMEM_CONTROL
    return cache.alloc(kmem::gfp::kernel | kmem::gfp::dma32);
#else
    return cache.alloc(kmem::gfp::kernel);
#endif
}
