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
/// The size limits, the slot policies, PerCpuPtr, PerCpuConfig and PerCpuStats are in kmem/percpu_defs.hpp, which
/// this header includes.
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
#include <kmem/detail/percpu_chunk.hpp>
#include <kmem/detail/percpu_rseq.hpp>
#include <kmem/detail/percpu_slots.hpp>
#include <kmem/detail/policies.hpp>
#include <kmem/percpu_defs.hpp>
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

namespace kmem {

/// The dynamic per-CPU allocator (mm/percpu.c: pcpu_alloc, free_percpu, per_cpu_ptr) and the this_cpu
/// operations (include/linux/percpu-defs.h).  Policies, in any order: a per-CPU slot policy
/// (policy::CpuSlots by default, or policy::ThreadSlots), a lock policy guarding allocation and free
/// (policy::MutexLock by default, as the kernel's pcpu_alloc_mutex; this_cpu operations never lock), and an
/// error policy (policy::AssertOnError by default).  Chunks are anonymous mappings (MAP_NORESERVE, populated as
/// touched, as the kernel populates chunk pages on demand), each followed by its allocation bitmaps.
template <class... Policies>
class PerCpuAllocator : private detail::PercpuChunks {
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

    mutable lock_type lock_;
    [[no_unique_address]] error_policy_type error_;
    std::ostream* warn_ = &std::clog;
};

} // namespace kmem
