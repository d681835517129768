// expect: a Memblock policy must be an error policy
// Rule: memblock takes only an error policy; it has no lock (it runs before other threads).
#include <kmem/memblock.hpp>
#include <kmem/policy/lock.hpp>

#ifndef KMEM_CONTROL
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096, kmem::policy::SpinLock>;
#else
using Memblock = kmem::Memblock<kmem::OffsetRegion, 4096, kmem::policy::ThrowOnError>;
#endif

std::uint64_t f(const Memblock& memblock) {
    return memblock.phys_mem_size();
}
