// expect: memblock free_all\(\) ends memblock: call it as std::move\(memblock\)\.free_all\(map\)
// Rule: the hand-off consumes the memblock, so it is called on an rvalue.
#include <kmem/memblock.hpp>

#include <utility>

using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
using Map = kmem::MemMap<kmem::OffsetRegion, 4096>;

std::uint64_t f(Memblock& memblock, Map& map) {
#ifndef KMEM_CONTROL
    return memblock.free_all(map).released_pages;
#else
    return std::move(memblock).free_all(map).released_pages;
#endif
}
