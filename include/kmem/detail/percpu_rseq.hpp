/// @file
/// The this_cpu operations in restartable sequences on x86-64 (the user-space counterpart of the kernel's
/// %gs-relative this_cpu ops in arch/x86/include/asm/percpu.h): each read-modify-write is one plain instruction
/// that the kernel restarts if the thread is preempted, migrated or signalled first.  Defines
/// KMEM_DETAIL_PERCPU_RSEQ where they are available.  Not part of the API; used by kmem/percpu.hpp.
#pragma once

#include <kmem/detail/cpu.hpp>

#include <cstddef>
#include <cstdint>

// asm goto with outputs needs GCC 11 or clang 11.
#if defined(KMEM_DETAIL_HAVE_RSEQ) && defined(__x86_64__) &&                                                 \
    ((defined(__clang__) && __clang_major__ >= 11) || (!defined(__clang__) && __GNUC__ >= 11))
#if defined(__SANITIZE_THREAD__)
#define KMEM_DETAIL_PERCPU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KMEM_DETAIL_PERCPU_TSAN 1
#endif
#endif
#ifndef KMEM_DETAIL_PERCPU_TSAN // ThreadSanitizer cannot see the rseq critical sections: atomics there
#define KMEM_DETAIL_PERCPU_RSEQ 1
#endif
#endif

namespace kmem::detail {

// ----- this_cpu operations in restartable sequences (x86-64) -----------------------------------------------
#ifdef KMEM_DETAIL_PERCPU_RSEQ
// The critical section's descriptor (struct rseq_cs: version, flags, start, post-commit offset, abort) goes to
// the __rseq_cs section; the thread's rseq area points at it while the section runs.  The section checks that
// the thread still runs on the CPU whose copy it addresses, then commits with ONE instruction placed last (2:
// is just after it): an interrupt happens between instructions, so the kernel either restarts the section
// (preempted, migrated or signalled before the commit) or the commit is complete.  The abort handler follows
// glibc's x86 signature 0x53053053, as the kernel requires, and jumps back to recompute the CPU's copy.
#define KMEM_DETAIL_PERCPU_RSEQ_BEGIN                                                                        \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                                                     \
    ".balign 32\n\t"                                                                                         \
    "3:\n\t"                                                                                                 \
    ".long 0x0, 0x0\n\t"                                                                                     \
    ".quad 1f, (2f - 1f), 4f\n\t"                                                                            \
    ".popsection\n\t"                                                                                        \
    "leaq 3b(%%rip), %[scratch]\n\t"                                                                         \
    "movq %[scratch], %[rseq_cs]\n\t"                                                                        \
    "1:\n\t"                                                                                                 \
    "cmpl %[cpu], %[current_cpu]\n\t"                                                                        \
    "jnz 4f\n\t"
#define KMEM_DETAIL_PERCPU_RSEQ_END                                                                          \
    "2:\n\t"                                                                                                 \
    ".pushsection __rseq_failure, \"ax\"\n\t"                                                                \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                                                             \
    ".long 0x53053053\n\t"                                                                                   \
    "4:\n\t"                                                                                                 \
    "jmp %l[restart]\n\t"                                                                                    \
    ".popsection\n\t"

inline struct rseq* percpu_rseq_area() noexcept {
    return reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
}
// Each returns false (having done nothing) when the CPU number has no unit, which the kernel's numbering
// (below nr_cpu_ids) rules out; the caller then uses an atomic operation.
template <class T>
bool rseq_this_cpu_add(std::byte* unit0, std::size_t stride, unsigned units, T v) noexcept {
    struct rseq* rs = percpu_rseq_area();
    for (;;) {
        const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
        if (cpu >= units) [[unlikely]]
            return false;
        T* slot = reinterpret_cast<T*>(unit0 + std::size_t{cpu} * stride);
        std::uint64_t scratch;
        asm goto(KMEM_DETAIL_PERCPU_RSEQ_BEGIN "add %[v], %[slot]\n\t" KMEM_DETAIL_PERCPU_RSEQ_END
                 : [scratch] "=&r"(scratch), [slot] "+m"(*slot), [rseq_cs] "=m"(rs->rseq_cs)
                 : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id), [v] "r"(v)
                 : "memory", "cc"
                 : restart);
        (void)scratch;
        return true;
    restart:;
    }
}
template <class T>
bool rseq_this_cpu_write(std::byte* unit0, std::size_t stride, unsigned units, T v) noexcept {
    struct rseq* rs = percpu_rseq_area();
    for (;;) {
        const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
        if (cpu >= units) [[unlikely]]
            return false;
        T* slot = reinterpret_cast<T*>(unit0 + std::size_t{cpu} * stride);
        std::uint64_t scratch;
        asm goto(KMEM_DETAIL_PERCPU_RSEQ_BEGIN "mov %[v], %[slot]\n\t" KMEM_DETAIL_PERCPU_RSEQ_END
                 : [scratch] "=&r"(scratch), [slot] "=m"(*slot), [rseq_cs] "=m"(rs->rseq_cs)
                 : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id), [v] "r"(v)
                 : "memory", "cc"
                 : restart);
        (void)scratch;
        return true;
    restart:;
    }
}
// *old_out = the value before; v added.
template <class T>
bool rseq_this_cpu_xadd(std::byte* unit0, std::size_t stride, unsigned units, T v, T& old_out) noexcept {
    struct rseq* rs = percpu_rseq_area();
    for (;;) {
        const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
        if (cpu >= units) [[unlikely]]
            return false;
        T* slot = reinterpret_cast<T*>(unit0 + std::size_t{cpu} * stride);
        std::uint64_t scratch;
        T value = v;
        asm goto(
            KMEM_DETAIL_PERCPU_RSEQ_BEGIN "xadd %[value], %[slot]\n\t" KMEM_DETAIL_PERCPU_RSEQ_END
            : [scratch] "=&r"(scratch), [slot] "+m"(*slot), [rseq_cs] "=m"(rs->rseq_cs), [value] "+r"(value)
            : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id)
            : "memory", "cc"
            : restart);
        (void)scratch;
        old_out = value;
        return true;
    restart:;
    }
}
// *old_out = the value found; `desired` stored when it equalled `expected` (a cmpxchg without lock prefix).
template <class T>
bool rseq_this_cpu_cmpxchg(std::byte* unit0, std::size_t stride, unsigned units, T expected, T desired,
                           T& old_out) noexcept {
    struct rseq* rs = percpu_rseq_area();
    for (;;) {
        const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
        if (cpu >= units) [[unlikely]]
            return false;
        T* slot = reinterpret_cast<T*>(unit0 + std::size_t{cpu} * stride);
        std::uint64_t scratch;
        T seen = expected;
        asm goto(
            KMEM_DETAIL_PERCPU_RSEQ_BEGIN "cmpxchg %[desired], %[slot]\n\t" KMEM_DETAIL_PERCPU_RSEQ_END
            : [scratch] "=&r"(scratch), [slot] "+m"(*slot), [rseq_cs] "=m"(rs->rseq_cs), [seen] "+a"(seen)
            : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id), [desired] "r"(desired)
            : "memory", "cc"
            : restart);
        (void)scratch;
        old_out = seen;
        return true;
    restart:;
    }
}
#undef KMEM_DETAIL_PERCPU_RSEQ_BEGIN
#undef KMEM_DETAIL_PERCPU_RSEQ_END
#endif // KMEM_DETAIL_PERCPU_RSEQ

} // namespace kmem::detail
