// expect: a MemPool policy must be a lock policy
// Rule: a MemPool takes only a lock policy and an error policy.
#include <kmem/mempool.hpp>
#include <kmem/policy/zone.hpp>

#include <new>

struct Heap {
    void* alloc(kmem::gfp_t) { return ::operator new(64, std::nothrow); }
    void free(void* p) { ::operator delete(p); }
};

#ifndef KMEM_CONTROL
using Pool = kmem::MemPool<Heap, kmem::policy::InZone<kmem::ZoneType::dma>>;
#else
using Pool = kmem::MemPool<Heap, kmem::policy::SpinLock>;
#endif

std::size_t f(Pool& pool) {
    return pool.curr_nr();
}
