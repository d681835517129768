// expect: give at most one per-CPU slot policy
// Rule: a copy belongs either to a CPU or to a thread.
#include <kmem/percpu.hpp>

#ifndef KMEM_CONTROL
using Pcpu = kmem::PerCpuAllocator<kmem::policy::CpuSlots, kmem::policy::ThreadSlots>;
#else
using Pcpu = kmem::PerCpuAllocator<kmem::policy::ThreadSlots>;
#endif

unsigned f(const Pcpu& pcpu) {
    return pcpu.num_possible_cpus();
}
