// expect: memblock alloc_raw\(\) returns host memory, but this Memblock's region is offset-only
// Rule: memblock alloc_raw() returns a host address, so it needs an addressable region.
#include <kmem/memblock.hpp>

#ifndef KMEM_CONTROL
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
#else
using Memblock = kmem::Memblock<kmem::StaticRegion<4096 * 4>, 4096>;
#endif

void* f(Memblock& memblock) {
    return memblock.alloc_raw(64, 64);
}
