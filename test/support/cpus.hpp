/// @file
/// CPU placement for threaded tests: the CPUs this process may run on, and moving the calling thread to one (a
/// migration, as the scheduler makes them), so that per-CPU structures see threads change CPUs mid-run.
///
/// @code
///   const std::vector<int> cpus = kmem::test::allowed_cpus();
///   if (cpus.size() > 1) kmem::test::move_to(cpus[1]);
/// @endcode
#pragma once

#include <pthread.h>
#include <sched.h>

#include <vector>

namespace kmem::test {

/// The CPUs this process may run on (sched_getaffinity), at most 64 of them.
inline std::vector<int> allowed_cpus() {
    std::vector<int> out;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0) return out;
    for (int c = 0; c < CPU_SETSIZE && out.size() < 64; ++c)
        if (CPU_ISSET(c, &set)) out.push_back(c);
    return out;
}

/// Moves the calling thread to `cpu`; false when refused.
inline bool move_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set) == 0;
}

} // namespace kmem::test
