// expect: get_free_pages.*addressable.* evaluated to [^a-z]*false
// Rule: __get_free_pages() returns an address, so it exists only when the region is addressable.
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::StaticRegion<4096 * 4>>;
#endif

void* f(Buddy& buddy) {
    return buddy.get_free_pages(kmem::gfp::kernel, 0);
}
