// expect: but this allocator's lock policy is a non-sleeping spin lock
// Rule: vmalloc() means GFP_KERNEL, which may sleep; over a spin-locked page allocator pass gfp::atomic / nowait.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion, kmem::policy::SpinLock>;

void* f(kmem::VirtualMap<Buddy&, kmem::policy::SpinLock>& vm) {
#ifndef KMEM_CONTROL
    return vm.vmalloc(4096);
#else
    return vm.vmalloc(4096, kmem::gfp::atomic);
#endif
}
