// expect: alloc_mem_map\(\) places page descriptors in host memory, but this Memblock's region is offset-only
// Rule: the page descriptor table can be placed in the region only when the region holds host memory.
#include <kmem/memblock.hpp>

#ifndef KMEM_CONTROL
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
#else
using Memblock = kmem::Memblock<kmem::StaticRegion<4096 * 4>, 4096>;
#endif

std::uint64_t f(Memblock& memblock) {
    return memblock.alloc_mem_map().size();
}
