// expect: a MemPool source needs `P alloc[(]kmem::gfp_t[)]` returning an object pointer
// Rule: a MemPool's source must satisfy kmem::MemPoolSource (alloc(gfp_t) -> pointer, free(pointer)).
#include <kmem/mempool.hpp>

#include <new>

struct NoFree {
    void* alloc(kmem::gfp_t) { return ::operator new(64, std::nothrow); }
#ifdef KMEM_CONTROL
    void free(void* p) {
        ::operator delete(p);
    }
#endif
};

std::size_t f(kmem::MemPool<NoFree>& pool) {
    return pool.curr_nr();
}
