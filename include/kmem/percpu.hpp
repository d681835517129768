/// @file
/// Per-CPU data (mm/percpu.c and include/linux/percpu-defs.h): one copy of a variable for every CPU, allocated
/// dynamically, updated by the running CPU without a lock or a locked instruction, and summed over all CPUs.
///
/// `PerCpuAllocator<Policies...>` is the kernel's dynamic per-CPU allocator.  It hands out areas in chunks; a
/// chunk holds one unit per CPU (pcpu_unit_size bytes, a multiple of the page size), and an area occupies the
/// same offset of every unit, so each CPU's copies sit in their own unit and two CPUs never share a cache line.
/// `alloc_percpu<T>()` and `alloc_percpu(size, align)` (the kernel's `__alloc_percpu`) return a `PerCpuPtr`, the
/// `__percpu` pointer: it names every copy at once and is not dereferenced itself; `per_cpu_ptr(p, cpu)` gives
/// one CPU's copy and `free_percpu(p)` gives the area back.  Areas are zeroed (alloc_percpu<T> value-initialises
/// a T in each copy); sizes run from 1 to 32 KiB (PCPU_MIN_UNIT_SIZE) and alignments from 1 to 4096 (PAGE_SIZE),
/// anything else is reported through the error policy and gives a null pointer.
///
/// The `this_cpu_*` operations (read, write, add, sub, inc, dec, add_return, cmpxchg, xchg) work on the calling
/// CPU's copy and stay correct when the thread migrates in the middle of one:
///  * policy::CpuSlots (default): one unit per possible CPU.  On x86-64 with glibc's restartable sequences each
///    read-modify-write is one plain instruction (add, xadd, cmpxchg, mov) inside an rseq critical section that
///    the kernel restarts if the thread is preempted, migrated or signalled first: exact, and as cheap as the
///    kernel's `%gs`-relative this_cpu ops.  Elsewhere (no rseq, other architectures, ThreadSanitizer, or
///    PerCpuConfig::use_rseq = false) they are relaxed atomic operations on the slot of the CPU the thread ran on
///    when it asked: still exact (a migrated thread only updates another CPU's copy), with a locked instruction.
///  * policy::ThreadSlots: one unit per live thread (a small id claimed on first use, given back at thread exit)
///    plus one shared overflow unit.  A thread owning its slot updates it with a relaxed load and store (no
///    read-modify-write instruction), exact because it is the only writer; threads beyond the configured number
///    of slots share the overflow unit through relaxed atomic read-modify-writes.  Values outlive their thread.
/// `sum(p)` (percpu_counter_sum) reads every copy with relaxed loads: exact once the writers are done, otherwise a
/// value that each copy's history allows.  Writing another CPU's copy through per_cpu_ptr() while this_cpu
/// operations run on it is a data race, as in the kernel.  All copies are visited with `possible_cpus()`
/// (for_each_possible_cpu).
///
/// @code
///   kmem::PerCpuAllocator<> pcpu;                                           // one unit per possible CPU
///   kmem::PerCpuPtr<std::uint64_t> hits = pcpu.alloc_percpu<std::uint64_t>(); // alloc_percpu(u64): zeroed
///   pcpu.this_cpu_add(hits, 3);                                             // migration-safe, no lock
///   pcpu.this_cpu_inc(hits);
///   assert(pcpu.sum(hits) == 4);                                            // percpu_counter_sum()
///   std::uint64_t seen = 0;
///   for (unsigned cpu : pcpu.possible_cpus()) seen += *pcpu.per_cpu_ptr(hits, cpu); // for_each_possible_cpu
///   assert(seen == 4);
///   kmem::PerCpuPtr<void> raw = pcpu.alloc_percpu(24, 8);                  // __alloc_percpu(24, 8)
///   assert(raw && pcpu.stats().areas == 2);
///   pcpu.free_percpu(raw);
///   pcpu.free_percpu(hits);
/// @endcode
#pragma once

#include <kmem/detail/cpu.hpp>
#include <kmem/detail/policies.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>
#include <ostream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include <sys/mman.h>
#include <unistd.h>

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

namespace kmem {

/// The allocation granule of per-CPU areas in bytes (PCPU_MIN_ALLOC_SIZE): sizes round up to it.
inline constexpr std::size_t percpu_min_alloc_size = 4;
/// The largest per-CPU area in bytes (PCPU_MIN_UNIT_SIZE, 32 KiB).
inline constexpr std::size_t percpu_max_alloc_size = std::size_t{32} << 10;
/// The largest alignment of a per-CPU area in bytes (PAGE_SIZE).
inline constexpr std::size_t percpu_max_align = 4096;
/// The default size of one CPU's unit in a chunk (pcpu_unit_size), in bytes.
inline constexpr std::size_t percpu_default_unit_size = std::size_t{64} << 10;

namespace policy {

/// One copy per possible CPU, chosen by the CPU the thread runs on (raw_smp_processor_id(): the rseq cpu id,
/// else sched_getcpu()); this_cpu operations run in an rseq critical section where available, else as relaxed
/// atomics.  The default.
struct CpuSlots {
    /// This is a per-CPU slot policy.
    using policy_category = percpu_slot_policy_tag;
    /// False: slots belong to CPUs.
    static constexpr bool per_thread = false;
};

/// One copy per live thread (a small id claimed on first use and given back at thread exit) plus one shared
/// overflow copy; the owning thread updates its copy with a plain relaxed load and store.
struct ThreadSlots {
    /// This is a per-CPU slot policy.
    using policy_category = percpu_slot_policy_tag;
    /// True: slots belong to threads.
    static constexpr bool per_thread = true;
};

} // namespace policy

/// A per-CPU area (the kernel's `T __percpu *`): names every CPU's copy of a T at once.  It is not dereferenced;
/// the allocator that made it gives a CPU's copy (per_cpu_ptr) and runs this_cpu operations on it.  Internally the
/// address of CPU 0's copy, as the kernel's pointer is an address that each CPU's offset is added to.
template <class T>
class PerCpuPtr {
public:
    /// The type of each copy.
    using element_type = T;
    /// A null per-CPU pointer.
    constexpr PerCpuPtr() noexcept = default;
    /// A null per-CPU pointer.
    constexpr PerCpuPtr(std::nullptr_t) noexcept {}
    /// Any per-CPU pointer converts to `PerCpuPtr<void>`, as `T __percpu *` converts to `void __percpu *`.
    template <class U>
    requires(std::is_void_v<T> && !std::is_void_v<U>) constexpr PerCpuPtr(PerCpuPtr<U> p) noexcept
        : unit0_(p.unit0_) {}
    /// An untyped area viewed as copies of T (the cast from `void __percpu *`); the area must be large and aligned
    /// enough for a T.
    template <class U>
    requires(!std::is_void_v<T> && std::is_void_v<U>) constexpr explicit PerCpuPtr(PerCpuPtr<U> p) noexcept
        : unit0_(static_cast<T*>(p.unit0_)) {}

    /// True unless null.
    constexpr explicit operator bool() const noexcept { return unit0_ != nullptr; }
    /// Same area (or both null).
    friend constexpr bool operator==(PerCpuPtr, PerCpuPtr) noexcept = default;

    /// Prints the pointer as the kernel's `%px` would print a `__percpu` pointer: the address of CPU 0's copy.
    friend std::ostream& operator<<(std::ostream& out, PerCpuPtr p) {
        return out << static_cast<const void*>(p.unit0_);
    }
    /// The per-CPU pointer `n` elements further in an array area (the kernel's `ptr + n` on a `__percpu`
    /// pointer, e.g. `pcpu.this_cpu_inc(counters + i)`); it must stay inside the area.
    constexpr PerCpuPtr operator+(std::ptrdiff_t n) const noexcept requires(!std::is_void_v<T>) {
        return PerCpuPtr(unit0_ + n);
    }
    /// The per-CPU pointer to member `m` of every copy (the kernel's `&p->field` on a `__percpu` pointer), for
    /// this_cpu operations on one field of a per-CPU struct.
    template <class M, class C>
    PerCpuPtr<M> member(M C::*m) const noexcept {
        return PerCpuPtr<M>(&(unit0_->*m));
    }

private:
    template <class>
    friend class PerCpuPtr;
    template <class...>
    friend class PerCpuAllocator;
    constexpr explicit PerCpuPtr(T* unit0) noexcept : unit0_(unit0) {}
    T* unit0_ = nullptr;
};

/// How a PerCpuAllocator lays out its chunks (the kernel decides these at boot, in pcpu_setup_first_chunk).
struct PerCpuConfig {
    /// Bytes of each CPU's unit in a chunk (pcpu_unit_size): a multiple of 4096 of at least
    /// percpu_max_alloc_size; anything else is reported (ErrorKind::bad_parameter) and rounded up.
    std::size_t unit_size = percpu_default_unit_size;
    /// CpuSlots: units per chunk, 0 = one per possible CPU (fewer is reported and raised to that number).
    /// ThreadSlots: slots owned by one thread each, 0 = max(16, 4 * std::thread::hardware_concurrency()); one
    /// more unit is shared by the threads beyond them.
    unsigned units = 0;
    /// CpuSlots: run this_cpu operations in restartable sequences where the platform has them; false forces
    /// the relaxed atomic operations.
    bool use_rseq = true;
};

/// A snapshot of a PerCpuAllocator's counters (the kernel's pcpu_stats, /sys/kernel/debug/percpu_stats).
struct PerCpuStats {
    std::size_t unit_size = 0;     ///< Bytes of each unit (pcpu_unit_size).
    unsigned units = 0;            ///< Units per chunk: copies of every area (num_possible_cpus()).
    std::uint64_t chunks = 0;      ///< Chunks mapped (nr_chunks).
    std::uint64_t areas = 0;       ///< Live areas (nr_cur_alloc).
    std::uint64_t max_areas = 0;   ///< The most areas live at once (nr_max_alloc).
    std::uint64_t used_bytes = 0;  ///< Bytes of each unit in live areas, sizes rounded up to the granule.
    std::uint64_t free_bytes = 0;  ///< Bytes of each unit free, alignment gaps included.
    std::uint64_t total_bytes = 0; ///< chunks * unit_size == used_bytes + free_bytes.
    std::uint64_t allocations = 0; ///< Areas handed out (nr_alloc).
    std::uint64_t frees = 0;       ///< Areas given back (nr_dealloc).
    std::uint64_t failures = 0;    ///< Valid requests that failed for want of memory.
};

namespace detail {

// ----- bitmaps (lib/bitmap.c's find_next_bit family, over 64-bit words) ----------------------------------------

inline bool percpu_test_bit(const std::uint64_t* map, std::size_t bit) noexcept {
    return (map[bit >> 6] >> (bit & 63)) & 1u;
}
// Sets (or clears) bits [bit, bit + n).
inline void percpu_assign_bits(std::uint64_t* map, std::size_t bit, std::size_t n, bool value) noexcept {
    while (n > 0) {
        const std::size_t shift = bit & 63;
        const std::size_t k = std::min<std::size_t>(n, 64 - shift);
        const std::uint64_t mask = (k == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << k) - 1)) << shift;
        if (value)
            map[bit >> 6] |= mask;
        else
            map[bit >> 6] &= ~mask;
        bit += k;
        n -= k;
    }
}
// The first bit at or after `from` (and below `size`) whose value is `value`; `size` when there is none.
inline std::size_t percpu_find_next(const std::uint64_t* map, std::size_t size, std::size_t from,
                                    bool value) noexcept {
    if (from >= size) return size;
    std::size_t w = from >> 6;
    std::uint64_t x = (value ? map[w] : ~map[w]) & (~std::uint64_t{0} << (from & 63));
    for (;;) {
        if (x != 0) return std::min(size, w * 64 + static_cast<std::size_t>(std::countr_zero(x)));
        if (++w * 64 >= size) return size;
        x = value ? map[w] : ~map[w];
    }
}
// One more than the last set bit below `before`, or 0 when bits [0, before) are all clear.
inline std::size_t percpu_find_prev_set(const std::uint64_t* map, std::size_t before) noexcept {
    while (before > 0) {
        const std::size_t w = (before - 1) >> 6;
        const std::size_t top = ((before - 1) & 63) + 1; // bits [0, top) of word w are below `before`
        const std::uint64_t x = map[w] & (top == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << top) - 1));
        if (x != 0) return w * 64 + 64 - static_cast<std::size_t>(std::countl_zero(x));
        before = w * 64;
    }
    return 0;
}

// ----- CPUs and thread slots -------------------------------------------------------------------------------

// The number of possible CPUs (nr_cpu_ids): one more than the largest number in /sys/devices/system/cpu/possible,
// and at least sysconf(_SC_NPROCESSORS_CONF), so that every CPU number the kernel reports has a unit.
inline unsigned percpu_possible_cpus() noexcept {
    static const unsigned count = [] {
        const long conf = ::sysconf(_SC_NPROCESSORS_CONF);
        unsigned long best = conf > 0 ? static_cast<unsigned long>(conf) : 1;
        if (std::FILE* f = std::fopen("/sys/devices/system/cpu/possible", "r")) { // e.g. "0-3,8-11\n"
            unsigned long number = 0;
            bool in_number = false;
            for (int c; (c = std::fgetc(f)) != EOF;) {
                if (c >= '0' && c <= '9' && number < (1ul << 20)) {
                    number = number * 10 + static_cast<unsigned long>(c - '0');
                    in_number = true;
                    continue;
                }
                if (in_number) best = std::max(best, number + 1);
                number = 0;
                in_number = false;
            }
            if (in_number) best = std::max(best, number + 1);
            std::fclose(f);
        }
        return static_cast<unsigned>(std::min(best, 1ul << 16));
    }();
    return count;
}

// Thread slot ids: a process-wide bitmap of claimed ids (the lowest free id is claimed, so ids stay dense); a
// thread keeps its id in a thread-local int and gives it back when it exits.  The bitmap's acquire/release pair
// orders a leaving owner's last stores before the next owner's first loads.
inline constexpr unsigned thread_slot_capacity = 1u << 16;
inline std::atomic<std::uint64_t> thread_slot_bits[thread_slot_capacity / 64] = {};
inline constexpr int thread_slot_unclaimed = -1;
inline constexpr int thread_slot_shared = -2; // no id: capacity exhausted, or the thread is exiting

inline int& thread_slot_tls() noexcept {
    static thread_local int id = thread_slot_unclaimed;
    return id;
}
inline int claim_thread_slot_id() noexcept {
    for (unsigned w = 0; w < thread_slot_capacity / 64; ++w) {
        std::uint64_t x = thread_slot_bits[w].load(std::memory_order_relaxed);
        while (~x != 0) {
            const unsigned bit = static_cast<unsigned>(std::countr_one(x));
            if (thread_slot_bits[w].compare_exchange_weak(
                    x, x | (std::uint64_t{1} << bit), std::memory_order_acquire, std::memory_order_relaxed))
                return static_cast<int>(w * 64 + bit);
        }
    }
    return thread_slot_shared;
}
inline void release_thread_slot_id(int id) noexcept {
    const auto u = static_cast<unsigned>(id);
    thread_slot_bits[u / 64].fetch_and(~(std::uint64_t{1} << (u % 64)), std::memory_order_release);
}
struct ThreadSlotOwner {
    int id = thread_slot_shared;
    ThreadSlotOwner() = default;
    ThreadSlotOwner(const ThreadSlotOwner&) = delete;
    ThreadSlotOwner& operator=(const ThreadSlotOwner&) = delete;
    ~ThreadSlotOwner() { // thread exit: later uses in this thread (other destructors) share the overflow unit
        thread_slot_tls() = thread_slot_shared;
        if (id >= 0) release_thread_slot_id(id);
    }
};
// The calling thread's slot id, claiming one on first use; thread_slot_shared when it has none.
[[gnu::noinline]] inline int claim_thread_slot() noexcept {
    int& id = thread_slot_tls();
    if (id != thread_slot_unclaimed) return id;
    static thread_local ThreadSlotOwner owner; // its destructor gives the id back at thread exit
    owner.id = claim_thread_slot_id();
    id = owner.id;
    return id;
}
/// The calling thread's slot id (claimed on first use), or thread_slot_shared.
inline int thread_slot() noexcept {
    const int id = thread_slot_tls();
    return id != thread_slot_unclaimed ? id : claim_thread_slot();
}
/// How many thread slot ids are claimed now (for tests).
inline unsigned thread_slots_claimed() noexcept {
    unsigned n = 0;
    for (const auto& w : thread_slot_bits)
        n += static_cast<unsigned>(std::popcount(w.load(std::memory_order_relaxed)));
    return n;
}

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

/// The numbers 0 .. count-1 as a range (cpu_possible_mask, dense): what possible_cpus() returns.
struct CpuRange {
    unsigned count = 0; ///< One more than the last number.
    /// An iterator over the numbers.
    struct iterator {
        using value_type = unsigned;
        using difference_type = std::ptrdiff_t;
        unsigned cpu = 0;
        unsigned operator*() const noexcept { return cpu; }
        iterator& operator++() noexcept {
            ++cpu;
            return *this;
        }
        iterator operator++(int) noexcept { return iterator{cpu++}; }
        friend bool operator==(iterator, iterator) noexcept = default;
    };
    iterator begin() const noexcept { return iterator{0}; }
    iterator end() const noexcept { return iterator{count}; }
    unsigned size() const noexcept { return count; }
};

// A caller mistake found under the lock, reported after it.
struct PercpuMisuse {
    ErrorKind kind{};
    bool found = false;
    const void* address = nullptr;
    std::size_t offset = 0; // in the unit
    std::size_t start = 0;  // not_block_start: offset of the enclosing area
    std::size_t size = 0;   // its size
    unsigned unit = 0;      // out_of_region: the unit the address lies in (when inside a chunk)
    bool inside_chunk = false;
};

} // namespace detail

namespace detail {
template <class T>
consteval bool percpu_scalar_type() {
    if constexpr (std::is_integral_v<T> || std::is_pointer_v<T>)
        return sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8;
    else
        return false;
}
} // namespace detail

/// True for the types this_cpu read, write, cmpxchg and xchg work on: integral or pointer, 1, 2, 4 or 8 bytes.
template <class T>
inline constexpr bool percpu_scalar = detail::percpu_scalar_type<T>();
/// True for the types this_cpu arithmetic and sum() work on: integral other than bool, 1, 2, 4 or 8 bytes.
template <class T>
inline constexpr bool percpu_arithmetic =
    std::is_integral_v<T> && !std::is_same_v<T, bool> && percpu_scalar<T>;

/// The dynamic per-CPU allocator (mm/percpu.c: pcpu_alloc, free_percpu, per_cpu_ptr) and the this_cpu
/// operations (include/linux/percpu-defs.h).  Policies, in any order: a per-CPU slot policy
/// (policy::CpuSlots by default, or policy::ThreadSlots), a lock policy guarding allocation and free
/// (policy::MutexLock by default, as the kernel's pcpu_alloc_mutex; this_cpu operations never lock), and an
/// error policy (policy::AssertOnError by default).  Chunks are anonymous mappings (MAP_NORESERVE, populated as
/// touched, as the kernel populates chunk pages on demand), each followed by its allocation bitmaps.
template <class... Policies>
class PerCpuAllocator {
    using policies = detail::PolicySet<Policies...>;
    static_assert(
        policies::template only<policy::percpu_slot_policy_tag, policy::lock_policy_tag,
                                policy::error_policy_tag>,
        "a PerCpuAllocator policy must be policy::CpuSlots, policy::ThreadSlots, a lock policy or an "
        "error policy.");
    static_assert(policies::unique);

public:
    /// The slot policy: policy::CpuSlots or policy::ThreadSlots.
    using slot_policy = typename policies::template get<policy::percpu_slot_policy_tag, policy::CpuSlots>;
    static_assert(std::is_same_v<slot_policy, policy::CpuSlots> ||
                      std::is_same_v<slot_policy, policy::ThreadSlots>,
                  "the per-CPU slot policy must be policy::CpuSlots or policy::ThreadSlots.");
    /// The lock policy guarding alloc_percpu and free_percpu.
    using lock_type = typename policies::template get<policy::lock_policy_tag, policy::MutexLock>;
    static_assert(policy::LockPolicy<lock_type>, "the lock policy needs lock(), unlock() and may_sleep.");
    /// The error policy.
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    static_assert(policy::ErrorPolicy<error_policy_type>,
                  "the error policy needs on_error(const UsageError&).");
    /// True with policy::ThreadSlots: a copy per thread, not per CPU.
    static constexpr bool per_thread = slot_policy::per_thread;

    /// An allocator with `config`'s layout; maps no chunk until the first allocation.  A bad unit size or unit
    /// count is reported (ErrorKind::bad_parameter) and corrected.
    explicit PerCpuAllocator(PerCpuConfig config = {}) {
        std::size_t unit = config.unit_size;
        if (unit < percpu_max_alloc_size || unit % percpu_max_align != 0 || unit > (std::size_t{1} << 30)) {
            const std::size_t fixed =
                std::clamp((unit + percpu_max_align - 1) / percpu_max_align * percpu_max_align,
                           percpu_max_alloc_size, std::size_t{1} << 30);
            error_.on_error(
                UsageError{ErrorKind::bad_parameter, "PerCpuAllocator",
                           "a per-CPU unit of " + std::to_string(unit) +
                               " bytes is not a multiple of 4096 between 32768 (PCPU_MIN_UNIT_SIZE) "
                               "and 1 GiB; using " +
                               std::to_string(fixed) + " bytes."});
            unit = fixed;
        }
        unit_size_ = unit;
        nr_bits_ = unit_size_ / percpu_min_alloc_size;
        map_words_ = nr_bits_ / 64;
        bound_words_ = (nr_bits_ + 1 + 63) / 64;
        if constexpr (per_thread) {
            const unsigned hw = std::thread::hardware_concurrency();
            unsigned own = config.units != 0 ? config.units : std::max(16u, 4 * hw);
            own = std::min(own, detail::thread_slot_capacity);
            exclusive_ = own;
            units_ = own + 1;
        } else {
            const unsigned possible = detail::percpu_possible_cpus();
            units_ = config.units != 0 ? config.units : possible;
            if (units_ < possible) {
                error_.on_error(UsageError{ErrorKind::bad_parameter, "PerCpuAllocator",
                                           std::to_string(units_) + " per-CPU units are fewer than the " +
                                               std::to_string(possible) +
                                               " possible CPUs; every CPU needs its own unit, so " +
                                               std::to_string(possible) + " are used."});
                units_ = possible;
            }
#ifdef KMEM_DETAIL_PERCPU_RSEQ
            rseq_ = config.use_rseq && __rseq_size != 0;
#endif
        }
    }
    PerCpuAllocator(const PerCpuAllocator&) = delete;            ///< Not copyable.
    PerCpuAllocator& operator=(const PerCpuAllocator&) = delete; ///< Not copyable.
    /// Unmaps every chunk; areas still allocated vanish with them.
    ~PerCpuAllocator() {
        while (chunks_ != nullptr) {
            Chunk* c = chunks_;
            chunks_ = c->next;
            unmap_chunk(c);
        }
    }

    // ----- allocation (pcpu_alloc / free_percpu) ---------------------------------------------------------------

    /// A zeroed area of `size` bytes aligned to `align` in every unit (__alloc_percpu, which C++ reserves the
    /// name of); null when out of memory (reported on the warning stream).  A size of 0 or above 32768 bytes
    /// (ErrorKind::bad_parameter), or an alignment that is not a power of two or is above 4096
    /// (ErrorKind::bad_alignment), is reported through the error policy and gives null.
    PerCpuPtr<void> alloc_percpu(std::size_t size, std::size_t align) {
        if (size == 0 || size > percpu_max_alloc_size) {
            error_.on_error(UsageError{ErrorKind::bad_parameter, "__alloc_percpu",
                                       "illegal size " + std::to_string(size) +
                                           " for a per-CPU area: sizes run from 1 to 32768 bytes "
                                           "(PCPU_MIN_UNIT_SIZE)."});
            return {};
        }
        if (!std::has_single_bit(align) || align > percpu_max_align) {
            error_.on_error(UsageError{ErrorKind::bad_alignment, "__alloc_percpu",
                                       "illegal alignment " + std::to_string(align) +
                                           " for a per-CPU area: it must be a power of two from 1 to 4096 "
                                           "(PAGE_SIZE)."});
            return {};
        }
        const std::size_t bits = (size + percpu_min_alloc_size - 1) / percpu_min_alloc_size;
        const std::size_t bit_align = std::max(align, percpu_min_alloc_size) / percpu_min_alloc_size;
        std::byte* area = nullptr;
        {
            policy::LockGuard<lock_type> guard(lock_);
            area = alloc_locked(bits, bit_align);
        }
        if (area == nullptr) { // pcpu_create_chunk(), outside the lock; then try again with it in the list
            Chunk* fresh = map_chunk();
            policy::LockGuard<lock_type> guard(lock_);
            if (fresh != nullptr) {
                fresh->next = chunks_;
                chunks_ = fresh;
                ++nr_chunks_;
                area = alloc_locked(bits, bit_align);
            } else {
                ++failures_;
            }
        }
        if (area == nullptr) {
            if (warn_ != nullptr)
                *warn_ << "percpu: allocation failed, size=" << size << " align=" << align
                       << ", could not map a new chunk\n";
            return {};
        }
        for (unsigned u = 0; u < units_; ++u)
            std::memset(area + std::size_t{u} * unit_size_, 0, bits * percpu_min_alloc_size);
        return PerCpuPtr<void>(static_cast<void*>(area));
    }

    /// A T in every unit, value-initialised (alloc_percpu(type)); null when out of memory.  T must fit a
    /// per-CPU area and be trivially destructible, since free_percpu runs no destructor (neither does the
    /// kernel's).
    template <class T>
    PerCpuPtr<T> alloc_percpu() {
        static_assert(!std::is_void_v<T> && !std::is_reference_v<T> && std::is_object_v<T>,
                      "alloc_percpu<T> needs an object type T.");
        static_assert(
            sizeof(T) <= percpu_max_alloc_size,
            "alloc_percpu<T>: T is larger than a per-CPU area can be (32768 bytes, PCPU_MIN_UNIT_SIZE).");
        static_assert(
            alignof(T) <= percpu_max_align,
            "alloc_percpu<T>: T's alignment is above the largest per-CPU alignment (4096, PAGE_SIZE).");
        static_assert(
            std::is_default_constructible_v<T> && std::is_trivially_destructible_v<T>,
            "alloc_percpu<T> needs a default-constructible, trivially destructible T: free_percpu runs "
            "no destructor.");
        const PerCpuPtr<void> raw = alloc_percpu(sizeof(T), alignof(T));
        if (!raw) return {};
        auto* unit0 = static_cast<std::byte*>(raw.unit0_);
        unsigned made = 0;
        try {
            for (; made < units_; ++made)
                ::new (static_cast<void*>(unit0 + std::size_t{made} * unit_size_)) T();
        } catch (...) {
            free_percpu(raw);
            throw;
        }
        return PerCpuPtr<T>(std::launder(reinterpret_cast<T*>(unit0)));
    }

    /// Gives an area back (free_percpu); null is ignored.  A pointer that is not a live area of this allocator
    /// is reported (ErrorKind::out_of_region, misaligned, not_block_start or double_free) and nothing changes.
    template <class T>
    void free_percpu(PerCpuPtr<T> p) {
        if (!p) return;
        const auto* addr = reinterpret_cast<const std::byte*>(static_cast<const void*>(p.unit0_));
        detail::PercpuMisuse bad;
        Chunk* spare = nullptr;
        {
            policy::LockGuard<lock_type> guard(lock_);
            bad = free_locked(addr, spare);
        }
        if (spare != nullptr) unmap_chunk(spare); // pcpu_balance_free(): one empty chunk is kept
        if (bad.found) report_free(bad);
    }

    // ----- addressing ----------------------------------------------------------------------------------------

    /// CPU `cpu`'s copy (per_cpu_ptr); cpu < num_possible_cpus().
    template <class T>
    T* per_cpu_ptr(PerCpuPtr<T> p, unsigned cpu) const noexcept {
        return reinterpret_cast<T*>(reinterpret_cast<std::byte*>(const_cast<std::remove_cv_t<T>*>(p.unit0_)) +
                                    std::size_t{cpu} * unit_size_);
    }
    /// The calling CPU's copy (this_cpu_ptr / raw_cpu_ptr): with CpuSlots it is stale as soon as the thread
    /// migrates, so write through it only with atomics; with ThreadSlots it is the thread's own copy (the shared
    /// overflow copy when the thread has no slot: owns_slot()).
    template <class T>
    T* this_cpu_ptr(PerCpuPtr<T> p) const noexcept {
        return per_cpu_ptr(p, this_cpu_unit());
    }
    /// The unit the calling thread's this_cpu operations use now: its CPU number (raw_smp_processor_id()) with
    /// CpuSlots, its slot with ThreadSlots.
    unsigned this_cpu_unit() const noexcept {
        if constexpr (per_thread)
            return thread_unit();
        else
            return cpu_unit();
    }
    /// ThreadSlots: true when the calling thread has a copy of its own (false when more threads live than the
    /// allocator has slots, or at thread exit); CpuSlots: always false, copies belong to CPUs.
    bool owns_slot() const noexcept {
        if constexpr (per_thread)
            return thread_unit() < exclusive_;
        else
            return false;
    }
    /// The number of copies of every area (num_possible_cpus(); with ThreadSlots, the slots plus the overflow).
    unsigned num_possible_cpus() const noexcept {
        return units_;
    }
    /// Every unit number, for `for (unsigned cpu : pcpu.possible_cpus())` (for_each_possible_cpu).
    detail::CpuRange possible_cpus() const noexcept {
        return detail::CpuRange{units_};
    }
    /// Calls fn(cpu) for every unit number (for_each_possible_cpu).
    template <class Fn>
    void for_each_possible_cpu(Fn&& fn) const {
        for (unsigned cpu = 0; cpu < units_; ++cpu) fn(cpu);
    }
    /// True when this_cpu operations run in restartable sequences (CpuSlots on x86-64 with glibc's rseq, not
    /// under ThreadSanitizer, PerCpuConfig::use_rseq); false when they are relaxed atomic operations.
    bool uses_rseq() const noexcept {
        return rseq_;
    }
    /// Bytes between two CPUs' copies of an area (pcpu_unit_size).
    std::size_t unit_size() const noexcept {
        return unit_size_;
    }

    // ----- this_cpu operations ---------------------------------------------------------------------------------

    /// The calling CPU's copy (this_cpu_read): a relaxed load; a thread that migrates meanwhile reads the copy of
    /// the CPU it was on, which was current when it asked.
    template <class T>
    T this_cpu_read(PerCpuPtr<T> p) const noexcept {
        static_assert(percpu_scalar<T>,
                      "this_cpu operations work on an integral or pointer type of 1, 2, 4 or 8 "
                      "bytes; use per_cpu_ptr() or this_cpu_ptr() for other types.");
        return std::atomic_ref<T>(*this_cpu_ptr(p)).load(std::memory_order_relaxed);
    }
    /// Stores `v` in the calling CPU's copy (this_cpu_write).
    template <class T>
    void this_cpu_write(PerCpuPtr<T> p, std::type_identity_t<T> v) noexcept {
        static_assert(percpu_scalar<T>,
                      "this_cpu operations work on an integral or pointer type of 1, 2, 4 or 8 "
                      "bytes; use per_cpu_ptr() or this_cpu_ptr() for other types.");
        if constexpr (per_thread) {
            std::atomic_ref<T>(*this_cpu_ptr(p)).store(v, std::memory_order_relaxed);
        } else {
#ifdef KMEM_DETAIL_PERCPU_RSEQ
            if (rseq_ && detail::rseq_this_cpu_write<T>(bytes(p), unit_size_, units_, v)) [[likely]]
                return;
#endif
            std::atomic_ref<T>(*this_cpu_ptr(p)).store(v, std::memory_order_relaxed);
        }
    }
    /// Adds `v` to the calling CPU's copy (this_cpu_add), wrapping like unsigned arithmetic.
    template <class T>
    void this_cpu_add(PerCpuPtr<T> p, std::type_identity_t<T> v) noexcept {
        static_assert(percpu_arithmetic<T>,
                      "this_cpu arithmetic (add, sub, inc, dec, add_return) and sum() need "
                      "an integral type other than bool of 1, 2, 4 or 8 bytes.");
        if constexpr (per_thread) {
            const unsigned u = thread_unit();
            std::atomic_ref<T> slot(*per_cpu_ptr(p, u));
            if (u < exclusive_) [[likely]] // the only writer: a load and a store, no read-modify-write
                slot.store(wrap_add(slot.load(std::memory_order_relaxed), v), std::memory_order_relaxed);
            else
                slot.fetch_add(v, std::memory_order_relaxed);
        } else {
#ifdef KMEM_DETAIL_PERCPU_RSEQ
            if (rseq_ && detail::rseq_this_cpu_add<T>(bytes(p), unit_size_, units_, v)) [[likely]]
                return;
#endif
            std::atomic_ref<T>(*per_cpu_ptr(p, cpu_unit())).fetch_add(v, std::memory_order_relaxed);
        }
    }
    /// Subtracts `v` from the calling CPU's copy (this_cpu_sub).
    template <class T>
    void this_cpu_sub(PerCpuPtr<T> p, std::type_identity_t<T> v) noexcept {
        static_assert(percpu_arithmetic<T>,
                      "this_cpu arithmetic (add, sub, inc, dec, add_return) and sum() need "
                      "an integral type other than bool of 1, 2, 4 or 8 bytes.");
        this_cpu_add(p, negate(v));
    }
    /// Adds 1 to the calling CPU's copy (this_cpu_inc).
    template <class T>
    void this_cpu_inc(PerCpuPtr<T> p) noexcept {
        static_assert(percpu_arithmetic<T>,
                      "this_cpu arithmetic (add, sub, inc, dec, add_return) and sum() need "
                      "an integral type other than bool of 1, 2, 4 or 8 bytes.");
        this_cpu_add(p, T{1});
    }
    /// Subtracts 1 from the calling CPU's copy (this_cpu_dec).
    template <class T>
    void this_cpu_dec(PerCpuPtr<T> p) noexcept {
        static_assert(percpu_arithmetic<T>,
                      "this_cpu arithmetic (add, sub, inc, dec, add_return) and sum() need "
                      "an integral type other than bool of 1, 2, 4 or 8 bytes.");
        this_cpu_add(p, negate(T{1}));
    }
    /// Adds `v` to the calling CPU's copy and returns the new value of that copy (this_cpu_add_return).
    template <class T>
    T this_cpu_add_return(PerCpuPtr<T> p, std::type_identity_t<T> v) noexcept {
        static_assert(percpu_arithmetic<T>,
                      "this_cpu arithmetic (add, sub, inc, dec, add_return) and sum() need "
                      "an integral type other than bool of 1, 2, 4 or 8 bytes.");
        if constexpr (per_thread) {
            const unsigned u = thread_unit();
            std::atomic_ref<T> slot(*per_cpu_ptr(p, u));
            if (u < exclusive_) [[likely]] {
                const T now = wrap_add(slot.load(std::memory_order_relaxed), v);
                slot.store(now, std::memory_order_relaxed);
                return now;
            }
            return wrap_add(slot.fetch_add(v, std::memory_order_relaxed), v);
        } else {
#ifdef KMEM_DETAIL_PERCPU_RSEQ
            T old{};
            if (rseq_ && detail::rseq_this_cpu_xadd<T>(bytes(p), unit_size_, units_, v, old)) [[likely]]
                return wrap_add(old, v);
#endif
            return wrap_add(
                std::atomic_ref<T>(*per_cpu_ptr(p, cpu_unit())).fetch_add(v, std::memory_order_relaxed), v);
        }
    }
    /// If the calling CPU's copy equals `expected`, stores `desired` in it; returns the value found either way
    /// (this_cpu_cmpxchg: it succeeded when the result equals `expected`).  Atomic with respect to every other
    /// this_cpu operation on the area.
    template <class T>
    T this_cpu_cmpxchg(PerCpuPtr<T> p, std::type_identity_t<T> expected,
                       std::type_identity_t<T> desired) noexcept {
        static_assert(percpu_scalar<T>,
                      "this_cpu operations work on an integral or pointer type of 1, 2, 4 or 8 "
                      "bytes; use per_cpu_ptr() or this_cpu_ptr() for other types.");
        if constexpr (per_thread) {
            const unsigned u = thread_unit();
            std::atomic_ref<T> slot(*per_cpu_ptr(p, u));
            if (u < exclusive_) [[likely]] {
                const T seen = slot.load(std::memory_order_relaxed);
                if (seen == expected) slot.store(desired, std::memory_order_relaxed);
                return seen;
            }
            slot.compare_exchange_strong(expected, desired, std::memory_order_relaxed);
            return expected;
        } else {
#ifdef KMEM_DETAIL_PERCPU_RSEQ
            T seen{};
            if (rseq_ && detail::rseq_this_cpu_cmpxchg<T>(bytes(p), unit_size_, units_, expected, desired,
                                                          seen)) [[likely]]
                return seen;
#endif
            std::atomic_ref<T>(*per_cpu_ptr(p, cpu_unit()))
                .compare_exchange_strong(expected, desired, std::memory_order_relaxed);
            return expected;
        }
    }
    /// Stores `v` in the calling CPU's copy and returns the value it replaced (this_cpu_xchg; a cmpxchg loop, as
    /// on x86, where a memory xchg always locks the bus).
    template <class T>
    T this_cpu_xchg(PerCpuPtr<T> p, std::type_identity_t<T> v) noexcept {
        static_assert(percpu_scalar<T>,
                      "this_cpu operations work on an integral or pointer type of 1, 2, 4 or 8 "
                      "bytes; use per_cpu_ptr() or this_cpu_ptr() for other types.");
        T seen = this_cpu_read(p);
        for (;;) {
            const T found = this_cpu_cmpxchg(p, seen, v);
            if (found == seen) return found;
            seen = found;
        }
    }

    /// The sum of every CPU's copy (percpu_counter_sum), wrapping like unsigned arithmetic: relaxed loads, exact
    /// once no this_cpu operation runs on the area.
    template <class T>
    T sum(PerCpuPtr<T> p) const noexcept {
        static_assert(percpu_arithmetic<T>,
                      "this_cpu arithmetic (add, sub, inc, dec, add_return) and sum() need "
                      "an integral type other than bool of 1, 2, 4 or 8 bytes.");
        T total{};
        for (unsigned u = 0; u < units_; ++u)
            total = wrap_add(total, std::atomic_ref<T>(*per_cpu_ptr(p, u)).load(std::memory_order_relaxed));
        return total;
    }

    // ----- state and reports ---------------------------------------------------------------------------------

    /// A snapshot of the counters.
    PerCpuStats stats() const {
        PerCpuStats s;
        s.unit_size = unit_size_;
        s.units = units_;
        policy::LockGuard<lock_type> guard(lock_);
        for (const Chunk* c = chunks_; c != nullptr; c = c->next)
            s.free_bytes += c->free_bits * percpu_min_alloc_size;
        s.chunks = nr_chunks_;
        s.areas = nr_areas_;
        s.max_areas = max_areas_;
        s.total_bytes = nr_chunks_ * unit_size_;
        s.used_bytes = s.total_bytes - s.free_bytes;
        s.allocations = allocations_;
        s.frees = frees_;
        s.failures = failures_;
        return s;
    }
    /// Checks every invariant (per chunk: free counts match the bitmap, every allocated granule belongs to an
    /// area that starts at a boundary bit, the end boundary is set, the largest-free-run hint is not below the
    /// real run, the first-free hint is below every free granule; overall: areas and chunks counted, used + free
    /// == total); returns the first violation, or an empty string when all hold.  O(chunk bitmaps).
    std::string check_invariants() const {
        policy::LockGuard<lock_type> guard(lock_);
        std::uint64_t areas = 0, chunks = 0;
        for (const Chunk* c = chunks_; c != nullptr; c = c->next) {
            ++chunks;
            std::size_t used = 0, starts = 0, longest = 0, run = 0, first_free = nr_bits_;
            for (std::size_t b = 0; b < nr_bits_; ++b) {
                const bool in_use = detail::percpu_test_bit(c->alloc_map, b);
                const bool bound = detail::percpu_test_bit(c->bound_map, b);
                if (in_use) {
                    ++used;
                    run = 0;
                    if (bound)
                        ++starts;
                    else if (b == 0 || !detail::percpu_test_bit(c->alloc_map, b - 1))
                        return chunk_problem(c,
                                             "granule " + std::to_string(b) +
                                                 " is allocated but neither starts an area nor follows one");
                } else {
                    first_free = std::min(first_free, b);
                    longest = std::max(longest, ++run);
                }
            }
            if (!detail::percpu_test_bit(c->bound_map, nr_bits_))
                return chunk_problem(c, "the boundary bit after the last granule is clear");
            if (nr_bits_ - used != c->free_bits)
                return chunk_problem(c, std::to_string(nr_bits_ - used) + " granules are free but " +
                                            std::to_string(c->free_bits) + " are counted");
            if (starts != c->nr_alloc)
                return chunk_problem(c, std::to_string(starts) + " areas start in the bitmap but " +
                                            std::to_string(c->nr_alloc) + " are counted");
            if (c->contig_hint < longest)
                return chunk_problem(c, "the largest free run is " + std::to_string(longest) +
                                            " granules but the hint says " + std::to_string(c->contig_hint));
            if (c->first_free > first_free)
                return chunk_problem(c, "granule " + std::to_string(first_free) +
                                            " is free but the first-free hint is " +
                                            std::to_string(c->first_free));
            areas += c->nr_alloc;
        }
        if (chunks != nr_chunks_)
            return std::to_string(chunks) + " chunks are listed but " + std::to_string(nr_chunks_) +
                   " are counted";
        if (areas != nr_areas_)
            return std::to_string(areas) + " areas are in the chunks but " + std::to_string(nr_areas_) +
                   " are counted";
        if (allocations_ - frees_ != nr_areas_)
            return std::to_string(allocations_) + " allocations less " + std::to_string(frees_) +
                   " frees differ from the " + std::to_string(nr_areas_) + " live areas";
        return {};
    }
    /// The error policy, e.g. to install a callback.
    error_policy_type& error_policy() noexcept {
        return error_;
    }
    /// Where allocation-failure warnings go (default std::clog); nullptr silences them.  They are written after
    /// the lock is released.
    void set_warning_stream(std::ostream* out) noexcept {
        warn_ = out;
    }

private:
    // struct pcpu_chunk: the units, then (after the last unit, in the same mapping) this header and the bitmaps
    // of one unit's granules: alloc_map (1 = in use) and bound_map (1 at the start of each area and just after
    // its end; bit nr_bits is always set), as the kernel keeps them.
    struct Chunk {
        Chunk* next = nullptr;
        std::byte* base = nullptr; // unit 0; unit u at base + u * unit_size
        std::size_t map_bytes = 0;
        std::uint64_t* alloc_map = nullptr;
        std::uint64_t* bound_map = nullptr;
        std::size_t free_bits = 0;   // free granules
        std::size_t contig_hint = 0; // at least the longest free run (exact after a failed scan)
        std::size_t first_free = 0;  // no free granule below it
        std::size_t nr_alloc = 0;    // live areas
    };

    template <class T>
    static T wrap_add(T a, T b) noexcept { // modular addition, without signed overflow
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
    }
    template <class T>
    static T negate(T v) noexcept {
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(U{0} - static_cast<U>(v)));
    }
    template <class T>
    static std::byte* bytes(PerCpuPtr<T> p) noexcept {
        return reinterpret_cast<std::byte*>(const_cast<std::remove_cv_t<T>*>(p.unit0_));
    }

    unsigned cpu_unit() const noexcept {
        const int cpu = detail::current_cpu();
        unsigned u = cpu > 0 ? static_cast<unsigned>(cpu) : 0u;
        if (u >= units_) [[unlikely]] // CPU numbers are below nr_cpu_ids: only a guard
            u %= units_;
        return u;
    }
    unsigned thread_unit() const noexcept {
        const int id = detail::thread_slot();
        return id >= 0 && static_cast<unsigned>(id) < exclusive_ ? static_cast<unsigned>(id) : exclusive_;
    }

    // pcpu_create_chunk(): maps the units and the metadata behind them; nullptr when mmap fails.
    Chunk* map_chunk() noexcept {
        const std::size_t units_bytes = std::size_t{units_} * unit_size_;
        const std::size_t meta = sizeof(Chunk) + (map_words_ + bound_words_) * sizeof(std::uint64_t);
        const std::size_t total =
            units_bytes + (meta + percpu_max_align - 1) / percpu_max_align * percpu_max_align;
        void* m = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (m == MAP_FAILED) return nullptr;
        auto* base = static_cast<std::byte*>(m);
        Chunk* c = ::new (static_cast<void*>(base + units_bytes)) Chunk{};
        c->base = base;
        c->map_bytes = total;
        c->alloc_map = reinterpret_cast<std::uint64_t*>(c + 1);
        c->bound_map = c->alloc_map + map_words_; // both zero, as mapped
        detail::percpu_assign_bits(c->bound_map, nr_bits_, 1, true);
        c->free_bits = nr_bits_;
        c->contig_hint = nr_bits_;
        return c;
    }
    static void unmap_chunk(Chunk* c) noexcept {
        const std::size_t bytes = c->map_bytes;
        void* base = c->base;
        c->~Chunk();
        ::munmap(base, bytes);
    }

    // pcpu_alloc()'s search: first fit over the chunks whose hint allows the request (pcpu_find_block_fit), then
    // pcpu_alloc_area(); nullptr when no chunk has room.
    std::byte* alloc_locked(std::size_t bits, std::size_t bit_align) noexcept {
        for (Chunk* c = chunks_; c != nullptr; c = c->next) {
            if (c->contig_hint < bits) continue;
            const std::size_t bit = find_fit(c, bits, bit_align);
            if (bit == nr_bits_) continue;
            detail::percpu_assign_bits(c->alloc_map, bit, bits, true);
            detail::percpu_assign_bits(c->bound_map, bit, 1, true);
            detail::percpu_assign_bits(c->bound_map, bit + 1, bits - 1, false);
            detail::percpu_assign_bits(c->bound_map, bit + bits, 1, true);
            c->free_bits -= bits;
            ++c->nr_alloc;
            if (bit == c->first_free)
                c->first_free = detail::percpu_find_next(c->alloc_map, nr_bits_, bit + bits, false);
            ++nr_areas_;
            max_areas_ = std::max(max_areas_, nr_areas_);
            ++allocations_;
            return c->base + bit * percpu_min_alloc_size;
        }
        return nullptr;
    }
    // The first granule of a free run that holds `bits` granules from a multiple of `bit_align`, or nr_bits_.
    // A scan that finds nothing has seen every free run, so it makes the chunk's hint exact.
    std::size_t find_fit(Chunk* c, std::size_t bits, std::size_t bit_align) const noexcept {
        std::size_t longest = 0;
        for (std::size_t at = c->first_free; at < nr_bits_;) {
            const std::size_t start = detail::percpu_find_next(c->alloc_map, nr_bits_, at, false);
            if (start >= nr_bits_) break;
            const std::size_t end = detail::percpu_find_next(c->alloc_map, nr_bits_, start, true);
            longest = std::max(longest, end - start);
            const std::size_t aligned = (start + bit_align - 1) / bit_align * bit_align;
            if (aligned + bits <= end) return aligned;
            at = end;
        }
        c->contig_hint = longest;
        return nr_bits_;
    }

    // pcpu_free_area() after pcpu_chunk_addr_search(), with the checks the kernel leaves to WARN()s.
    detail::PercpuMisuse free_locked(const std::byte* addr, Chunk*& spare) noexcept {
        detail::PercpuMisuse bad;
        bad.address = addr;
        Chunk* c = chunks_;
        for (; c != nullptr; c = c->next) {
            if (addr >= c->base && addr < c->base + unit_size_) break;
            if (addr >= c->base && addr < c->base + std::size_t{units_} * unit_size_) {
                bad.inside_chunk = true;
                bad.unit = static_cast<unsigned>(static_cast<std::size_t>(addr - c->base) / unit_size_);
            }
        }
        if (c == nullptr) {
            bad.found = true;
            bad.kind = ErrorKind::out_of_region;
            return bad;
        }
        const std::size_t offset = static_cast<std::size_t>(addr - c->base);
        bad.offset = offset;
        if (offset % percpu_min_alloc_size != 0) {
            bad.found = true;
            bad.kind = ErrorKind::misaligned;
            return bad;
        }
        const std::size_t bit = offset / percpu_min_alloc_size;
        if (!detail::percpu_test_bit(c->alloc_map, bit)) {
            bad.found = true;
            bad.kind = ErrorKind::double_free;
            return bad;
        }
        if (!detail::percpu_test_bit(c->bound_map, bit)) { // inside an area: find its start
            std::size_t start = bit;
            while (!detail::percpu_test_bit(c->bound_map, start)) --start;
            bad.found = true;
            bad.kind = ErrorKind::not_block_start;
            bad.start = start * percpu_min_alloc_size;
            bad.size = (detail::percpu_find_next(c->bound_map, nr_bits_ + 1, start + 1, true) - start) *
                       percpu_min_alloc_size;
            return bad;
        }
        const std::size_t end = detail::percpu_find_next(c->bound_map, nr_bits_ + 1, bit + 1, true);
        detail::percpu_assign_bits(c->alloc_map, bit, end - bit, false);
        c->free_bits += end - bit;
        --c->nr_alloc;
        c->first_free = std::min(c->first_free, bit);
        const std::size_t run_start = detail::percpu_find_prev_set(c->alloc_map, bit);
        const std::size_t run_end = detail::percpu_find_next(c->alloc_map, nr_bits_, end, true);
        c->contig_hint = std::max(c->contig_hint, run_end - run_start);
        --nr_areas_;
        ++frees_;
        if (c->nr_alloc == 0) { // keep one empty chunk; unmap any other (after the lock is released)
            for (Chunk* other = chunks_; other != nullptr; other = other->next) {
                if (other == c || other->nr_alloc != 0) continue;
                unlink(c);
                spare = c;
                break;
            }
        }
        return bad;
    }
    void unlink(Chunk* c) noexcept {
        for (Chunk** link = &chunks_; *link != nullptr; link = &(*link)->next) {
            if (*link == c) {
                *link = c->next;
                --nr_chunks_;
                return;
            }
        }
    }

    void report_free(const detail::PercpuMisuse& bad) {
        char addr[32];
        std::snprintf(addr, sizeof addr, "%p", bad.address);
        std::string msg;
        switch (bad.kind) {
        case ErrorKind::out_of_region:
            msg = std::string(addr) + " is not a per-CPU area of this allocator";
            if (bad.inside_chunk)
                msg += " (it lies in unit " + std::to_string(bad.unit) +
                       " of a chunk: pass the per-CPU pointer, not a CPU's copy from per_cpu_ptr())";
            msg += ".";
            break;
        case ErrorKind::misaligned:
            msg = std::string(addr) + " (offset " + std::to_string(bad.offset) +
                  " in its unit) is not aligned to the 4-byte per-CPU granule, so no area starts there.";
            break;
        case ErrorKind::double_free:
            msg = "the per-CPU area at " + std::string(addr) + " (offset " + std::to_string(bad.offset) +
                  " in its unit) is already free.";
            break;
        default:
            msg = std::string(addr) + " (offset " + std::to_string(bad.offset) +
                  " in its unit) is inside the per-CPU area of " + std::to_string(bad.size) +
                  " bytes at offset " + std::to_string(bad.start) + ", not at its start.";
            break;
        }
        error_.on_error(UsageError{bad.kind, "free_percpu", std::move(msg)});
    }
    std::string chunk_problem(const Chunk* c, const std::string& what) const {
        char addr[32];
        std::snprintf(addr, sizeof addr, "%p", static_cast<const void*>(c->base));
        return "per-CPU chunk at " + std::string(addr) + ": " + what;
    }

    std::size_t unit_size_ = percpu_default_unit_size;
    std::size_t nr_bits_ = 0;     // granules per unit
    std::size_t map_words_ = 0;   // words of alloc_map
    std::size_t bound_words_ = 0; // words of bound_map (nr_bits_ + 1 bits)
    unsigned units_ = 1;
    unsigned exclusive_ = 0; // ThreadSlots: units owned by one thread; unit exclusive_ is the shared one
    bool rseq_ = false;
    Chunk* chunks_ = nullptr;
    mutable lock_type lock_;
    std::uint64_t nr_chunks_ = 0;
    std::uint64_t nr_areas_ = 0;
    std::uint64_t max_areas_ = 0;
    std::uint64_t allocations_ = 0;
    std::uint64_t frees_ = 0;
    std::uint64_t failures_ = 0;
    [[no_unique_address]] error_policy_type error_;
    std::ostream* warn_ = &std::clog;
};

} // namespace kmem
