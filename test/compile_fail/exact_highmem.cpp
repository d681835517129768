// expect: gfp::highmem cannot be used for an exact allocation
// Rule: the pages of an exact allocation must be permanently mapped, so no gfp::highmem, which gfp::highuser
// includes (gfp::check_exact; the kernel's alloc_pages_exact() WARNs on __GFP_HIGHMEM and strips it).
#include <kmem/gfp.hpp>

void f() {
#ifndef KMEM_CONTROL
    kmem::gfp::check_exact(kmem::gfp::highuser);
#else
    kmem::gfp::check_exact(kmem::gfp::user);
#endif
}
