// expect: alloc_percpu<T>: T's alignment is above the largest per-CPU alignment \(4096, PAGE_SIZE\)
// Rule: per-CPU areas are aligned to at most a page.
#include <kmem/percpu.hpp>

#ifndef KMEM_CONTROL
struct alignas(8192) Aligned {
    int x;
};
#else
struct alignas(4096) Aligned {
    int x;
};
#endif

kmem::PerCpuPtr<Aligned> f(kmem::PerCpuAllocator<>& pcpu) {
    return pcpu.alloc_percpu<Aligned>();
}
