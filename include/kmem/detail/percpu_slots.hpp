/// @file
/// Which unit of a per-CPU area a caller uses (mm/percpu.c's nr_cpu_ids and cpu_possible_mask): the number of
/// possible CPUs, the process-wide thread slot ids of policy::ThreadSlots, and the range of unit numbers that
/// possible_cpus() returns.  Not part of the API; used by kmem/percpu.hpp.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include <unistd.h>

namespace kmem::detail {

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

} // namespace kmem::detail
