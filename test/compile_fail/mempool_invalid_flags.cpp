// expect: gfp::dma and gfp::highmem name two different zones
// Rule: mempool_alloc checks the caller's flags against every GFP rule before any source call.
#include <kmem/mempool.hpp>

#include <new>

struct Heap {
    void* alloc(kmem::gfp_t) { return ::operator new(64, std::nothrow); }
    void free(void* p) { ::operator delete(p); }
};

void* f(kmem::MemPool<Heap>& pool) {
#ifndef KMEM_CONTROL
    return pool.alloc(kmem::gfp::kernel | kmem::gfp::dma | kmem::gfp::highmem);
#else
    return pool.alloc(kmem::gfp::kernel | kmem::gfp::dma);
#endif
}
