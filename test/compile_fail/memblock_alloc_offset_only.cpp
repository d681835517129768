// expect: memblock alloc\(\) returns zeroed host memory, but this Memblock's region is offset-only
// Rule: memblock alloc() clears and returns host memory, so it needs an addressable region (phys_alloc otherwise).
#include <kmem/memblock.hpp>

#ifndef KMEM_CONTROL
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
#else
using Memblock = kmem::Memblock<kmem::StaticRegion<4096 * 4>, 4096>;
#endif

void* f(Memblock& memblock) {
    return memblock.alloc(64, 64);
}
