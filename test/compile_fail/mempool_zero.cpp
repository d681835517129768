// expect: gfp::zero cannot be used with mempool_alloc
// Rule: mempool_alloc does not support __GFP_ZERO (the kernel WARNs); kmem rejects it at compile time.
#include <kmem/mempool.hpp>

#include <new>

struct Heap {
    void* alloc(kmem::gfp_t) { return ::operator new(64, std::nothrow); }
    void free(void* p) { ::operator delete(p); }
};

void* f(kmem::MemPool<Heap>& pool) {
#ifndef KMEM_CONTROL
    return pool.alloc(kmem::gfp::kernel | kmem::gfp::zero);
#else
    return pool.alloc(kmem::gfp::kernel);
#endif
}
