/// @file
/// The vocabulary of per-CPU data (include/linux/percpu.h and include/linux/percpu-defs.h): the size limits of a
/// per-CPU area (PCPU_MIN_ALLOC_SIZE, PCPU_MIN_UNIT_SIZE), the slot policies (a copy per CPU or per thread), the
/// `__percpu` pointer PerCpuPtr, and a PerCpuAllocator's configuration and counters.  kmem/percpu.hpp includes it,
/// with the allocator and the this_cpu operations.
///
/// @code
///   static_assert(kmem::percpu_arithmetic<std::uint64_t> && !kmem::percpu_arithmetic<bool>);
///   static_assert(kmem::percpu_scalar<void*> && !kmem::percpu_scalar<double>);
///   kmem::PerCpuPtr<long> none;                               // a null `long __percpu *`
///   assert(!none && none == nullptr);
///   kmem::PerCpuPtr<void> untyped = none;                     // converts to `void __percpu *`
///   assert(!untyped);
///   kmem::PerCpuConfig config;                                // the default layout: 64 KiB units
///   assert(config.unit_size == kmem::percpu_default_unit_size && config.unit_size >= kmem::percpu_max_alloc_size);
///   assert(kmem::PerCpuStats{}.areas == 0);
/// @endcode
#pragma once

#include <kmem/policy/category.hpp>

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <type_traits>

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

} // namespace kmem
