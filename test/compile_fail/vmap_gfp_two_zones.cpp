// expect: gfp::dma and gfp::dma32 name two different zones; a request may name one zone modifier
// Rule: vmalloc's flags obey every GFP rule at compile time, as alloc_pages' do.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;

void* f(kmem::VirtualMap<Buddy&>& vm) {
#ifndef KMEM_CONTROL
    return vm.vmalloc(4096, kmem::gfp::kernel | kmem::gfp::dma | kmem::gfp::dma32);
#else
    return vm.vmalloc(4096, kmem::gfp::kernel | kmem::gfp::dma32);
#endif
}
