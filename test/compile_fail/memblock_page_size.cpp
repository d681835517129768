// expect: Memblock's PageSize must be a power of two of at least 64 bytes
// Rule: memblock's page size follows the page allocator's rule.
#include <kmem/memblock.hpp>

#ifndef KMEM_CONTROL
using Memblock = kmem::Memblock<kmem::OffsetRegion, 3000>;
#else
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096>;
#endif

std::uint64_t f(const Memblock& memblock) {
    return memblock.phys_mem_size();
}
