// expect: a VirtualMap policy must be a lock policy or an error policy
// Rule: VirtualMap takes only lock and error policies (its zone is the page allocator's).
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
#ifndef KMEM_CONTROL
using Vm = kmem::VirtualMap<Buddy&, kmem::policy::InZone<kmem::ZoneType::dma>>;
#else
using Vm = kmem::VirtualMap<Buddy&, kmem::policy::ThrowOnError>;
#endif

void* f(Vm& vm) {
    return vm.vmalloc(4096);
}
