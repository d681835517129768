// expect: these GFP flags may sleep [(]gfp::direct_reclaim[)] but the call site is declared atomic
// Rule: a call site declared atomic cannot use flags that may sleep (gfp::check_context).
#include <kmem/buddy.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;

kmem::Page* f(Buddy& buddy) {
#ifndef KMEM_CONTROL
    return buddy.alloc_pages(kmem::atomic_context, kmem::gfp::kernel, 0);
#else
    return buddy.alloc_pages(kmem::atomic_context, kmem::gfp::atomic, 0);
#endif
}
