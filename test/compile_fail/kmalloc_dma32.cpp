// expect: gfp::dma32 cannot be used for a slab or kmalloc allocation \(GFP_SLAB_BUG_MASK\)
// Rule: kzalloc (kmalloc with gfp::zero) refuses __GFP_DMA32 at compile time, like every kmalloc call.
#include <kmem/buddy.hpp>
#include <kmem/kmalloc.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;

void* f(kmem::Kmalloc<Buddy>& km) {
#ifndef KMEM_CONTROL
    return km.kzalloc(64, kmem::gfp::kernel | kmem::gfp::dma32);
#else
    return km.kzalloc(64, kmem::gfp::kernel | kmem::gfp::nowarn);
#endif
}
