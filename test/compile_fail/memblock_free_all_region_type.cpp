// expect: memblock free_all\(\) needs a MemMap over the Memblock's region type
// Rule: the map memblock hands its memory to covers the same kind of region.
#include <kmem/memblock.hpp>

#include <utility>

using Memblock = kmem::Memblock<kmem::MmapRegion&, 4096>;
#ifndef KMEM_CONTROL
using Map = kmem::MemMap<kmem::OffsetRegion, 4096>;
#else
using Map = kmem::MemMap<kmem::MmapRegion&, 4096>;
#endif

std::uint64_t f(Memblock& memblock, Map& map) {
    return std::move(memblock).free_all(map).released_pages;
}
