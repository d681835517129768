// expect: a slab cache's Parent must be a page allocator \(BuddyAllocator, Zone, Node\)
// Rule: a KmemCache's parent must offer alloc_pages, free_pages, compound_head, page_size and max_order.
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

#include <memory>

#ifndef KMEM_CONTROL
using Parent = std::allocator<char>;
#else
using Parent = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#endif

std::size_t f(const kmem::KmemCache<Parent>& cache) {
    return cache.object_size();
}
