// expect: StaticRegion alignment must be a power of two
// Rule: a StaticRegion's alignment is a power of two.
#include <kmem/region.hpp>

#ifndef KMEM_CONTROL
using R = kmem::StaticRegion<8192, 3000>;
#else
using R = kmem::StaticRegion<8192, 4096>;
#endif

std::uint64_t f(const R& r) {
    return r.size();
}
