// PerCpu<T, Shared>: one value of T per configured CPU, each on its own cache lines behind its own small lock
// (the kernel's DEFINE_PER_CPU data with the local lock that guards it).  Not part of the API.
//
// The calling thread's slot comes from its CPU number.  Like the kernel's raw_smp_processor_id(), that number may
// be stale by the time it is used (the thread may migrate), so every slot has a lock: the hot paths only try the
// local slot's lock (pcp_spin_trylock) and fall back to a slower path when it is busy; whole-set operations
// (drain_all_pages, statistics, invariant checks, the exact last pass of a failing allocation) lock slots as
// "remote" lockers, waiting.
//
// How a slot is locked:
//  * Shared == false (an allocator without a lock policy, used by one thread at a time): one slot, no lock at all.
//  * Restartable sequences (x86-64, glibc with rseq registered, membarrier's PRIVATE_EXPEDITED_RSEQ available, not
//    under ThreadSanitizer): the local lock is taken inside an rseq critical section that checks the slot's
//    `owner` and `fenced` words and commits `owner = 1` with one plain store.  The kernel aborts the section if the
//    thread is preempted, migrated or signalled before the commit, so two threads on one CPU cannot both take it,
//    and a thread on another CPU never takes this CPU's slot locally: no locked instruction on the hot path, as
//    with the kernel's preemption-disabling per-CPU lock.  A remote locker serialises with other remote lockers
//    through a spin lock, sets `fenced`, and calls membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) for that
//    CPU, which restarts any critical section running there; after it, no local locker can commit, and the remote
//    locker waits for a current holder (possibly migrated since) to store `owner = 0`.  This is the fence
//    tcmalloc's per-CPU caches use to reach another CPU's cache.
//  * Otherwise: `owner` is a test-and-test-and-set spin lock (one locked exchange to take it).
#pragma once

#include <kmem/detail/cpu.hpp>
#include <kmem/policy/lock.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include <unistd.h>

#if defined(KMEM_DETAIL_HAVE_RSEQ) && defined(__x86_64__) && __has_include(<linux/membarrier.h>)
#if defined(__SANITIZE_THREAD__)
#define KMEM_DETAIL_RSEQ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KMEM_DETAIL_RSEQ_TSAN 1
#endif
#endif
#ifndef KMEM_DETAIL_RSEQ_TSAN // ThreadSanitizer cannot see the ordering membarrier gives: use the spin lock there
#include <linux/membarrier.h>
#include <sys/syscall.h>
#define KMEM_DETAIL_RSEQ_LOCK 1
#endif
#endif

namespace kmem::detail {

#ifdef KMEM_DETAIL_RSEQ_LOCK
// Whether this process can use rseq-locked slots: glibc registered rseq for its threads (with the x86 signature
// 0x53053053 that the abort handler below carries), and membarrier's expedited rseq fence is registered and works.
inline bool rseq_slots_available() noexcept {
    static const bool ok = [] {
        if (__rseq_size == 0) return false;
        if (::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0)
            return false;
        return ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0;
    }();
    return ok;
}
// Restarts every rseq critical section running on `cpu` (all CPUs when cpu < 0) and orders memory with them.
inline void rseq_fence(int cpu) noexcept {
    const auto fence = [cpu] {
        return cpu >= 0 ? ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
                                    MEMBARRIER_CMD_FLAG_CPU, cpu)
                        : ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    };
    if (fence() == 0) [[likely]]
        return;
    // The registration belongs to the process (a child made by fork() may have to register again).
    ::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0);
    if (fence() != 0) {
        std::fputs(
            "kmem: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) failed after it had worked; the per-CPU "
            "lists cannot be fenced\n",
            stderr);
        std::abort();
    }
}
#endif

/// A small stack of pointers (SLAB's array_cache, a magazine): the per-CPU object arrays of slab caches.  A
/// PerCpu of PtrStack offers pop_local() and push_local(), which with restartable sequences do the whole
/// operation in one critical section, committed by the store of `avail`.
template <unsigned N>
struct PtrStack {
    std::uint32_t avail = 0;                ///< Entries in use: entry[0 .. avail).
    std::array<void*, N> entry{};           ///< The pointers; entry[avail - 1] is the hot end.
    static constexpr unsigned capacity = N; ///< N.
};
template <class T>
inline constexpr bool is_ptr_stack = false;
template <unsigned N>
inline constexpr bool is_ptr_stack<PtrStack<N>> = true;

/// One T per configured CPU (one in all when not Shared), each cache-line aligned with its own lock.
template <class T, bool Shared>
class PerCpu {
public:
    /// One slot per configured CPU (sysconf(_SC_NPROCESSORS_CONF)), or a single one when not Shared; each T is
    /// value-initialised.
    PerCpu() : count_(cpus()), slots_(Shared ? std::make_unique<Slot[]>(count_) : nullptr) {
#ifdef KMEM_DETAIL_RSEQ_LOCK
        if constexpr (Shared) rseq_ = rseq_slots_available();
#endif
    }

    /// The number of slots.
    unsigned size() const noexcept {
        return count_;
    }
    /// Slot `cpu`'s value (the caller holds its lock, or owns the whole set).
    T& operator[](unsigned cpu) noexcept {
        return slot(cpu).value;
    }
    /// Slot `cpu`'s value, read-only.
    const T& operator[](unsigned cpu) const noexcept {
        return slot(cpu).value;
    }
    /// The number of slots an instance has on this machine (the configured CPUs when Shared, else 1).
    static unsigned slots_on_this_machine() noexcept {
        return cpus();
    }
    /// True when slots are locked with restartable sequences (no locked instruction on the hot path).
    bool uses_rseq() const noexcept {
        return rseq_;
    }

    /// The calling CPU's slot number (stale as soon as it is read: the thread may migrate).
    unsigned local_slot() const noexcept {
        if constexpr (Shared) {
            const int cpu = current_cpu();
            unsigned c = cpu > 0 ? static_cast<unsigned>(cpu) : 0u;
            if (c >= count_) [[unlikely]] // CPU numbers are below the configured count: only a guard
                c %= count_;
            return c;
        } else {
            return 0;
        }
    }

    /// Takes the calling CPU's slot if it is free (pcp_spin_trylock) and returns its number, or -1 when it is
    /// busy; release it with unlock_local().
    int try_lock_local() noexcept {
        if constexpr (!Shared) {
            return 0;
        } else {
#ifdef KMEM_DETAIL_RSEQ_LOCK
            if (rseq_) [[likely]]
                return rseq_try_lock_local();
#endif
            const unsigned c = local_slot();
            return spin_try_lock(slot(c)) ? static_cast<int>(c) : -1;
        }
    }
    /// Releases a slot taken by try_lock_local().
    void unlock_local(unsigned cpu) noexcept {
        if constexpr (Shared)
            std::atomic_ref<std::uint32_t>(slot(cpu).owner).store(0, std::memory_order_release);
    }

    /// Takes slot `cpu`, waiting for it (a remote CPU's pcp lock).  Release it with unlock().
    T& lock(unsigned cpu) noexcept {
        if constexpr (Shared) {
#ifdef KMEM_DETAIL_RSEQ_LOCK
            if (rseq_) {
                fence_begin(slot(cpu));
                rseq_fence(static_cast<int>(cpu));
                wait_released(slot(cpu));
                return slot(cpu).value;
            }
#endif
            while (!spin_try_lock(slot(cpu))) pause();
        }
        return slot(cpu).value;
    }
    /// Releases slot `cpu` taken by lock().
    void unlock(unsigned cpu) noexcept {
        if constexpr (Shared) {
#ifdef KMEM_DETAIL_RSEQ_LOCK
            if (rseq_) return fence_end(slot(cpu));
#endif
            unlock_local(cpu);
        }
    }
    /// Takes every slot (in CPU order), as lock() does for each, with one fence for all.
    void lock_all() noexcept {
        if constexpr (Shared) {
#ifdef KMEM_DETAIL_RSEQ_LOCK
            if (rseq_) {
                for (unsigned c = 0; c < count_; ++c) fence_begin(slot(c));
                rseq_fence(-1);
                for (unsigned c = 0; c < count_; ++c) wait_released(slot(c));
                return;
            }
#endif
            for (unsigned c = 0; c < count_; ++c) lock(c);
        }
    }
    /// Releases every slot taken by lock_all().
    void unlock_all() noexcept {
        for (unsigned c = count_; c-- > 0;) unlock(c);
    }

    /// For a PtrStack: pops the hot end of the calling CPU's stack; nullptr when it is empty or its slot is
    /// held (the caller takes its slow path).  With rseq no lock is taken: the pop is one restartable sequence.
    void* pop_local() noexcept requires is_ptr_stack<T> {
        if constexpr (!Shared) {
            T& t = slot(0).value;
            return t.avail != 0 ? t.entry[--t.avail] : nullptr;
        } else {
#ifdef KMEM_DETAIL_RSEQ_LOCK
            if (rseq_) [[likely]]
                return rseq_pop_local();
#endif
            const int cpu = try_lock_local();
            if (cpu < 0) return nullptr;
            T& t = slot(cpu).value;
            void* p = t.avail != 0 ? t.entry[--t.avail] : nullptr;
            unlock_local(static_cast<unsigned>(cpu));
            return p;
        }
    }
    /// For a PtrStack: pushes `p` on the calling CPU's stack when it holds fewer than `limit` entries; false
    /// when it is full or its slot is held (the caller takes its slow path).
    bool push_local(void* p, unsigned limit) noexcept requires is_ptr_stack<T> {
        if constexpr (!Shared) {
            T& t = slot(0).value;
            if (t.avail >= limit) return false;
            t.entry[t.avail++] = p;
            return true;
        } else {
#ifdef KMEM_DETAIL_RSEQ_LOCK
            if (rseq_) [[likely]]
                return rseq_push_local(p, limit);
#endif
            const int cpu = try_lock_local();
            if (cpu < 0) return false;
            T& t = slot(cpu).value;
            const bool ok = t.avail < limit;
            if (ok) t.entry[t.avail++] = p;
            unlock_local(static_cast<unsigned>(cpu));
            return ok;
        }
    }

private:
    struct alignas(64) Slot {
        std::uint32_t owner = 0;  // 1 while a local (or, without rseq, any) locker holds the slot
        std::uint32_t fenced = 0; // rseq: 1 while a remote locker holds or is taking the slot
        policy::SpinLock remote;  // rseq: serialises remote lockers of this slot
        T value{};
    };

    static unsigned cpus() noexcept {
        if constexpr (!Shared) {
            return 1;
        } else {
            const long n = ::sysconf(_SC_NPROCESSORS_CONF);
            return n > 0 ? static_cast<unsigned>(n) : 1u;
        }
    }
    static void pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    static bool spin_try_lock(Slot& s) noexcept {
        std::atomic_ref<std::uint32_t> owner(s.owner);
        return owner.load(std::memory_order_relaxed) == 0 &&
               owner.exchange(1, std::memory_order_acquire) == 0;
    }

#ifdef KMEM_DETAIL_RSEQ_LOCK
    static void fence_begin(Slot& s) noexcept {
        s.remote.lock();
        std::atomic_ref<std::uint32_t>(s.fenced).store(1, std::memory_order_seq_cst);
    }
    static void wait_released(Slot& s) noexcept { // a holder may have been preempted: spin, then yield
        std::atomic_ref<std::uint32_t> owner(s.owner);
        for (unsigned spins = 0; owner.load(std::memory_order_acquire) != 0; ++spins) {
            if (spins < 1024)
                pause();
            else
                std::this_thread::yield();
        }
    }
    static void fence_end(Slot& s) noexcept {
        std::atomic_ref<std::uint32_t>(s.fenced).store(0, std::memory_order_release);
        s.remote.unlock();
    }
    // The rseq critical section: abort (restart) when the thread left the CPU whose slot it looked at; give up
    // when the slot is held or fenced; else commit owner = 1.  The abort handler is preceded by glibc's rseq
    // signature, as the kernel requires.
    int rseq_try_lock_local() noexcept {
        auto* rs =
            reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
        for (;;) {
            const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
            if (cpu >= count_) [[unlikely]]
                return -1;
            Slot& s = slot(cpu);
            asm goto(".pushsection __rseq_cs, \"aw\"\n\t"
                     ".balign 32\n\t"
                     "3:\n\t"
                     ".long 0x0, 0x0\n\t"
                     ".quad 1f, (2f - 1f), 4f\n\t"
                     ".popsection\n\t"
                     "leaq 3b(%%rip), %%rax\n\t"
                     "movq %%rax, %[rseq_cs]\n\t"
                     "1:\n\t"
                     "cmpl %[cpu], %[current_cpu]\n\t"
                     "jnz 4f\n\t"
                     "cmpl $0, %[owner]\n\t"
                     "jnz %l[busy]\n\t"
                     "cmpl $0, %[fenced]\n\t"
                     "jnz %l[busy]\n\t"
                     "movl $1, %[owner]\n\t"
                     "2:\n\t"
                     ".pushsection __rseq_failure, \"ax\"\n\t"
                     ".byte 0x0f, 0xb9, 0x3d\n\t"
                     ".long 0x53053053\n\t"
                     "4:\n\t"
                     "jmp %l[restart]\n\t"
                     ".popsection\n\t"
                     :
                     : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id), [rseq_cs] "m"(rs->rseq_cs),
                       [owner] "m"(s.owner), [fenced] "m"(s.fenced)
                     : "memory", "cc", "rax"
                     : busy, restart);
            return static_cast<int>(cpu);
        restart:
            continue;
        busy:
            return -1;
        }
    }
#endif

#ifdef KMEM_DETAIL_RSEQ_LOCK
    // pop_local() as one rseq critical section: same checks as the lock (cpu, owner, fenced), then
    // out = entry[avail - 1] and the commit `avail = avail - 1`.  No asm output operands: with outputs in an
    // asm goto, g++ 12 at -O1 (with sanitizers) returned a stale register on the `none` path, so the popped
    // pointer goes through memory and the asm only reads its operands.
    void* rseq_pop_local() noexcept requires is_ptr_stack<T> {
        auto* rs =
            reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
        for (;;) {
            const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
            if (cpu >= count_) [[unlikely]]
                return nullptr;
            Slot& s = slot(cpu);
            void* out = nullptr;
            asm goto(".pushsection __rseq_cs, \"aw\"\n\t"
                     ".balign 32\n\t"
                     "3:\n\t"
                     ".long 0x0, 0x0\n\t"
                     ".quad 1f, (2f - 1f), 4f\n\t"
                     ".popsection\n\t"
                     "leaq 3b(%%rip), %%rax\n\t"
                     "movq %%rax, %[rseq_cs]\n\t"
                     "1:\n\t"
                     "cmpl %[cpu], %[current_cpu]\n\t"
                     "jnz 4f\n\t"
                     "cmpl $0, %[owner]\n\t"
                     "jnz %l[none]\n\t"
                     "cmpl $0, %[fenced]\n\t"
                     "jnz %l[none]\n\t"
                     "movl %[avail], %%eax\n\t"
                     "testl %%eax, %%eax\n\t"
                     "jz %l[none]\n\t"
                     "subl $1, %%eax\n\t"
                     "movq (%[entry], %%rax, 8), %%rdx\n\t"
                     "movq %%rdx, (%[out])\n\t"
                     "movl %%eax, %[avail]\n\t"
                     "2:\n\t"
                     ".pushsection __rseq_failure, \"ax\"\n\t"
                     ".byte 0x0f, 0xb9, 0x3d\n\t"
                     ".long 0x53053053\n\t"
                     "4:\n\t"
                     "jmp %l[restart]\n\t"
                     ".popsection\n\t"
                     :
                     : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id), [rseq_cs] "m"(rs->rseq_cs),
                       [owner] "m"(s.owner), [fenced] "m"(s.fenced), [avail] "m"(s.value.avail),
                       [entry] "r"(s.value.entry.data()), [out] "r"(&out)
                     : "memory", "cc", "rax", "rdx"
                     : none, restart);
            return out;
        restart:
            continue;
        none:
            return nullptr;
        }
    }
    // push_local() as one rseq critical section: entry[avail] = p (harmless if the section restarts: the slot
    // is above avail), then the commit `avail = avail + 1`.
    bool rseq_push_local(void* p, unsigned limit) noexcept requires is_ptr_stack<T> {
        auto* rs =
            reinterpret_cast<struct rseq*>(static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
        for (;;) {
            const std::uint32_t cpu = __atomic_load_n(&rs->cpu_id_start, __ATOMIC_RELAXED);
            if (cpu >= count_) [[unlikely]]
                return false;
            Slot& s = slot(cpu);
            asm goto(".pushsection __rseq_cs, \"aw\"\n\t"
                     ".balign 32\n\t"
                     "3:\n\t"
                     ".long 0x0, 0x0\n\t"
                     ".quad 1f, (2f - 1f), 4f\n\t"
                     ".popsection\n\t"
                     "leaq 3b(%%rip), %%rax\n\t"
                     "movq %%rax, %[rseq_cs]\n\t"
                     "1:\n\t"
                     "cmpl %[cpu], %[current_cpu]\n\t"
                     "jnz 4f\n\t"
                     "cmpl $0, %[owner]\n\t"
                     "jnz %l[no]\n\t"
                     "cmpl $0, %[fenced]\n\t"
                     "jnz %l[no]\n\t"
                     "movl %[avail], %%eax\n\t"
                     "cmpl %[limit], %%eax\n\t"
                     "jae %l[no]\n\t"
                     "movq %[p], (%[entry], %%rax, 8)\n\t"
                     "addl $1, %%eax\n\t"
                     "movl %%eax, %[avail]\n\t"
                     "2:\n\t"
                     ".pushsection __rseq_failure, \"ax\"\n\t"
                     ".byte 0x0f, 0xb9, 0x3d\n\t"
                     ".long 0x53053053\n\t"
                     "4:\n\t"
                     "jmp %l[restart]\n\t"
                     ".popsection\n\t"
                     :
                     : [cpu] "r"(cpu), [current_cpu] "m"(rs->cpu_id), [rseq_cs] "m"(rs->rseq_cs),
                       [owner] "m"(s.owner), [fenced] "m"(s.fenced), [avail] "m"(s.value.avail),
                       [entry] "r"(s.value.entry.data()), [p] "r"(p), [limit] "r"(limit)
                     : "memory", "cc", "rax"
                     : no, restart);
            return true;
        restart:
            continue;
        no:
            return false;
        }
    }
#endif

    // Slot `c`: one of the array when Shared, else the one slot held inline (no pointer to follow).
    Slot& slot(unsigned c) noexcept {
        if constexpr (Shared)
            return slots_[c];
        else
            return (void)c, single_;
    }
    const Slot& slot(unsigned c) const noexcept {
        if constexpr (Shared)
            return slots_[c];
        else
            return (void)c, single_;
    }
    struct NoSlot {};

    unsigned count_;
    std::unique_ptr<Slot[]> slots_;
    [[no_unique_address]] std::conditional_t<Shared, NoSlot, Slot> single_{};
    bool rseq_ = false;
};

} // namespace kmem::detail
