// expect: page_address.*addressable.* evaluated to [^a-z]*false
// Rule: page_address() exists only when the region is addressable (a constraint on the member).
#include <kmem/buddy.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::StaticRegion<4096 * 4>>;
#endif

void* f(Buddy& buddy, kmem::Page* page) {
    return buddy.page_address(page);
}
