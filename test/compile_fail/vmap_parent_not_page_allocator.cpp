// expect: VirtualMap's Parent must be a page allocator such as BuddyAllocator
// Rule: the parent layer of a VirtualMap is a page allocator (alloc_pages, free_pages, a memory map).
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

#ifndef KMEM_CONTROL
using Parent = kmem::MemfdRegion;
#else
using Parent = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
#endif

void* f(kmem::VirtualMap<Parent&>& vm) {
    return vm.vmalloc(4096);
}
