// expect: alloc_percpu<T>: T is larger than a per-CPU area can be \(32768 bytes, PCPU_MIN_UNIT_SIZE\)
// Rule: a per-CPU area holds at most 32 KiB (PCPU_MIN_UNIT_SIZE), known at compile time for a type.
#include <kmem/percpu.hpp>

#include <array>

#ifndef KMEM_CONTROL
using Big = std::array<char, 32769>;
#else
using Big = std::array<char, 32768>;
#endif

kmem::PerCpuPtr<Big> f(kmem::PerCpuAllocator<>& pcpu) {
    return pcpu.alloc_percpu<Big>();
}
