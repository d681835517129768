// expect: the requested order is above this allocator's MaxOrder
// Rule: a constant order must not exceed MaxOrder (alloc_pages<Order>).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages<11>(kmem::gfp::kernel);
#else
    return buddy.alloc_pages<10>(kmem::gfp::kernel);
#endif
}
