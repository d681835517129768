// expect: memblock free\(\) takes a host address, but this Memblock's region is offset-only
// Rule: memblock free() (memblock_free) takes a host address; offset-only regions use phys_free().
#include <kmem/memblock.hpp>

#ifndef KMEM_CONTROL
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
#else
using Memblock = kmem::Memblock<kmem::StaticRegion<4096 * 4>, 4096>;
#endif

bool f(Memblock& memblock, void* p) {
    return memblock.free(p, 64);
}
