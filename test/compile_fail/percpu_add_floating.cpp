// expect: this_cpu arithmetic \(add, sub, inc, dec, add_return\) and sum\(\) need an integral type other than bool
// Rule: this_cpu arithmetic is integer arithmetic (a single add instruction on the CPU's copy).
#include <kmem/percpu.hpp>

#ifndef KMEM_CONTROL
using Value = double;
#else
using Value = long;
#endif

void f(kmem::PerCpuAllocator<>& pcpu, kmem::PerCpuPtr<Value> p) {
    pcpu.this_cpu_add(p, 1);
}
