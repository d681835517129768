// expect: give at most one lock policy
// Rule: at most one lock policy per VirtualMap.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion, kmem::policy::MutexLock>;
#ifndef KMEM_CONTROL
using Vm = kmem::VirtualMap<Buddy&, kmem::policy::MutexLock, kmem::policy::SpinLock>;
#else
using Vm = kmem::VirtualMap<Buddy&, kmem::policy::MutexLock>;
#endif

void* f(Vm& vm) {
    return vm.vmalloc(4096);
}
