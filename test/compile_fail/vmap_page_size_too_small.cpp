// expect: VirtualMap maps pages with mmap, so its page allocator's PageSize must be at least 4096 bytes
// Rule: pages smaller than the system's cannot be mapped one by one.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 1024, kmem::MemfdRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
#endif

void* f(kmem::VirtualMap<Buddy&>& vm) {
    return vm.vzalloc(4096);
}
