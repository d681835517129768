// expect: gfp::comp cannot be used for an exact allocation
// Rule: an exact allocation is split into single pages, never a compound page (gfp::check_exact; the kernel's
// alloc_pages_exact() WARNs on __GFP_COMP and strips it).
#include <kmem/gfp.hpp>

void f() {
#ifndef KMEM_CONTROL
    kmem::gfp::check_exact(kmem::gfp::kernel | kmem::gfp::comp);
#else
    kmem::gfp::check_exact(kmem::gfp::kernel);
#endif
}
