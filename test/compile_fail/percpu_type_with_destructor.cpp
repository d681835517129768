// expect: alloc_percpu<T> needs a default-constructible, trivially destructible T: free_percpu runs no destructor
// Rule: free_percpu runs no destructor (neither does the kernel's), so T must not need one.
#include <kmem/percpu.hpp>

#include <string>

#ifndef KMEM_CONTROL
using Value = std::string;
#else
using Value = long;
#endif

kmem::PerCpuPtr<Value> f(kmem::PerCpuAllocator<>& pcpu) {
    return pcpu.alloc_percpu<Value>();
}
