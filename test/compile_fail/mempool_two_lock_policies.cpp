// expect: give at most one lock policy
// Rule: at most one lock policy per MemPool.
#include <kmem/mempool.hpp>

#include <new>

struct Heap {
    void* alloc(kmem::gfp_t) { return ::operator new(64, std::nothrow); }
    void free(void* p) { ::operator delete(p); }
};

#ifndef KMEM_CONTROL
using Pool = kmem::MemPool<Heap, kmem::policy::SpinLock, kmem::policy::MutexLock>;
#else
using Pool = kmem::MemPool<Heap, kmem::policy::MutexLock>;
#endif

std::size_t f(Pool& pool) {
    return pool.curr_nr();
}
