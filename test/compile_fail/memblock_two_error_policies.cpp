// expect: give at most one error policy
// Rule: at most one error policy per memblock.
#include <kmem/memblock.hpp>

#ifndef KMEM_CONTROL
using Memblock =
    kmem::Memblock<kmem::OffsetRegion, 4096, kmem::policy::ThrowOnError, kmem::policy::CallbackOnError>;
#else
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096, kmem::policy::ThrowOnError>;
#endif

std::uint64_t f(const Memblock& memblock) {
    return memblock.phys_mem_size();
}
