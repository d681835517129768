// The calling thread's CPU number, cheaply (not part of the API): the kernel's raw_smp_processor_id().
//
// With glibc 2.35 or later the C library registers restartable sequences (rseq) for every thread, and the
// kernel keeps the thread's current CPU in the registered area; reading it is one thread-local load, where
// sched_getcpu() costs a call.  Without rseq (an older C library, or rseq turned off through
// GLIBC_TUNABLES=glibc.pthread.rseq=0) it falls back to sched_getcpu().  Like the kernel's raw form, the answer
// may be stale by the time it is used: callers must stay correct on any CPU (the per-CPU lists lock their set).
#pragma once

#include <cstddef>
#include <cstdint>

#include <sched.h>

#if defined(__GLIBC__) && defined(__GLIBC_PREREQ) && defined(__has_include) && defined(__has_builtin)
#if __GLIBC_PREREQ(2, 35) && __has_include(<sys/rseq.h>) && __has_builtin(__builtin_thread_pointer)
#include <sys/rseq.h>
#define KMEM_DETAIL_HAVE_RSEQ 1
#endif
#endif

namespace kmem::detail {

/// The CPU the calling thread runs on now, or a negative number when it cannot be told.
inline int current_cpu() noexcept {
#ifdef KMEM_DETAIL_HAVE_RSEQ
    if (__rseq_size != 0) [[likely]] {
        const auto* area = static_cast<const unsigned char*>(__builtin_thread_pointer()) + __rseq_offset;
        const auto* cpu_id = reinterpret_cast<const std::uint32_t*>(area + offsetof(struct rseq, cpu_id));
        return static_cast<int>(__atomic_load_n(cpu_id, __ATOMIC_RELAXED));
    }
#endif
    return ::sched_getcpu();
}

} // namespace kmem::detail
