// expect: a PerCpuAllocator policy must be policy::CpuSlots, policy::ThreadSlots, a lock policy or an error policy
// Rule: a PerCpuAllocator takes a slot policy, a lock policy and an error policy, nothing else.
#include <kmem/percpu.hpp>

#ifndef KMEM_CONTROL
using Pcpu = kmem::PerCpuAllocator<kmem::policy::ThreadSlots, int>;
#else
using Pcpu = kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::SpinLock>;
#endif

unsigned f(const Pcpu& pcpu) {
    return pcpu.num_possible_cpus();
}
