// expect: VirtualMap needs a page allocator whose region is remappable
// Rule: an offset-only region (device memory) has no host pages to map, so VirtualMap refuses it too.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
#endif

void f(kmem::VirtualMap<Buddy&>& vm, void* p) {
    vm.vfree(p);
}
