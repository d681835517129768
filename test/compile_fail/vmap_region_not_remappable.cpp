// expect: VirtualMap needs a page allocator whose region is remappable \(MemfdRegion\)
// Rule: vmalloc maps the page allocator's pages again, so its region must be remappable (MmapRegion is not).
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
#endif

void* f(kmem::VirtualMap<Buddy&>& vm) {
    return vm.vmalloc(4096);
}
