// expect: memblock free_all\(\) needs a MemMap with the Memblock's PageSize
// Rule: the map memblock hands its memory to has the page size memblock was built for.
#include <kmem/memblock.hpp>

#include <utility>

using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
#ifndef KMEM_CONTROL
using Map = kmem::MemMap<kmem::OffsetRegion, 8192>;
#else
using Map = kmem::MemMap<kmem::OffsetRegion, 4096>;
#endif

std::uint64_t f(Memblock& memblock, Map& map) {
    return std::move(memblock).free_all(map).released_pages;
}
