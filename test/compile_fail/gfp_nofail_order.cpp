// expect: gfp::nofail is only supported up to order 1
// Rule: __GFP_NOFAIL above order 1 (gfp::check_order, through alloc_pages<Order>).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages<2>(kmem::gfp::kernel | kmem::gfp::nofail);
#else
    return buddy.alloc_pages<1>(kmem::gfp::kernel | kmem::gfp::nofail);
#endif
}
