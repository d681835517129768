// expect: this VirtualMap has a lock policy but its page allocator has none \(policy::NoLock\)
// Rule: VirtualMap calls its page allocator outside its own lock, so a shared VirtualMap needs a locked allocator.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion, kmem::policy::MutexLock>;
#endif

void* f(kmem::VirtualMap<Buddy&, kmem::policy::MutexLock>& vm) {
    return vm.vmalloc(4096);
}
