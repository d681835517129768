// expect: these GFP flags may sleep [(]gfp::direct_reclaim[)] but the call site is declared atomic
// Rule: mempool_alloc from a call site declared atomic cannot use flags that may sleep (gfp::check_context).
#include <kmem/mempool.hpp>

#include <new>

struct Heap {
    void* alloc(kmem::gfp_t) { return ::operator new(64, std::nothrow); }
    void free(void* p) { ::operator delete(p); }
};

void* f(kmem::MemPool<Heap>& pool) {
#ifndef KMEM_CONTROL
    return pool.alloc(kmem::atomic_context, kmem::gfp::kernel);
#else
    return pool.alloc(kmem::atomic_context, kmem::gfp::atomic);
#endif
}
