// expect: this_cpu operations work on an integral or pointer type of 1, 2, 4 or 8 bytes
// Rule: this_cpu read/write/cmpxchg/xchg move one machine word; other types go through per_cpu_ptr().
#include <kmem/percpu.hpp>

struct Pair {
    long a, b;
};

#ifndef KMEM_CONTROL
using Value = Pair;
#else
using Value = Pair*;
#endif

Value f(kmem::PerCpuAllocator<>& pcpu, kmem::PerCpuPtr<Value> p) {
    return pcpu.this_cpu_read(p);
}
