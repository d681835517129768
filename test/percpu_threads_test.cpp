// PerCpuAllocator's this_cpu operations under concurrency: more threads than CPUs (so threads are preempted and
// migrate in the middle of operations), plus one thread that keeps moving itself between CPUs.
//
//  * counters: every thread adds, subtracts, increments, decrements and add_returns; the total must be exact at
//    the end, with restartable sequences, with the atomic fallback and with per-thread slots (threads owning a
//    slot and threads sharing the overflow one); a reader summing meanwhile must see a counter that only grows
//    never shrink, and never exceed what was added;
//  * cmpxchg: increments built from read + cmpxchg must each count once (the sum equals the successes); xchg
//    must lose nothing (every value put in comes out, or is still in a copy at the end);
//  * thread slots are given back at thread exit and reused; values stay;
//  * alloc_percpu / free_percpu from several threads at once (MutexLock and SpinLock) while the areas are used.
// CI also runs this file under ThreadSanitizer, where the operations are relaxed atomics.
#include <kmem/percpu.hpp>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>

#include <sched.h>

namespace {

constexpr int kThreads = 8; // on a 2-CPU machine, 4 threads per CPU: preemption mid-operation is common

// Moves the calling thread to the next allowed CPU (sched_setaffinity), round robin; a no-op with one CPU.
class Migrator {
public:
    Migrator() {
        cpu_set_t set;
        if (::sched_getaffinity(0, sizeof set, &set) == 0)
            for (unsigned c = 0; c < CPU_SETSIZE; ++c)
                if (CPU_ISSET(c, &set)) cpus_.push_back(c);
        saved_ = set;
    }
    ~Migrator() { ::sched_setaffinity(0, sizeof saved_, &saved_); }
    Migrator(const Migrator&) = delete;
    Migrator& operator=(const Migrator&) = delete;
    void next() {
        if (cpus_.size() < 2) return;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus_[k_++ % cpus_.size()], &one);
        ::sched_setaffinity(0, sizeof one, &one);
    }

private:
    std::vector<unsigned> cpus_;
    cpu_set_t saved_{};
    std::size_t k_ = 0;
};

// Each thread runs `ops` operations on one signed counter and one counter that only grows; one more thread
// moves itself to another CPU every 2048 operations (each move waits for a turn on that CPU, so not more often);
// a reader sums the growing counter all along.
template <class A>
void counters_are_exact(A& pcpu, int ops) {
    const kmem::PerCpuPtr<std::int64_t> counter = pcpu.template alloc_percpu<std::int64_t>();
    const kmem::PerCpuPtr<std::uint32_t> grows = pcpu.template alloc_percpu<std::uint32_t>();
    BOOST_REQUIRE(counter);
    BOOST_REQUIRE(grows);
    std::atomic<std::int64_t> expected{0};
    std::atomic<std::uint64_t> added{0};
    std::atomic<bool> done{false};
    std::atomic<bool> reader_ok{true};
    std::atomic<int> running{0};
    std::thread reader([&] {
        std::uint32_t last = 0;
        while (!done.load(std::memory_order_acquire)) {
            const std::uint32_t now = pcpu.sum(grows);
            if (now < last) reader_ok = false; // each copy only grows: so does any later sum
            last = now;
            std::this_thread::yield(); // leave the CPUs to the writers
        }
    });
    std::barrier start(kThreads + 1); // all at once, so that they really overlap
    std::vector<std::thread> pool;
    for (int t = 0; t <= kThreads; ++t) {
        pool.emplace_back([&, t] {
            running.fetch_add(1);
            Migrator migrator;
            start.arrive_and_wait();
            std::int64_t mine = 0;
            std::uint64_t my_growth = 0;
            for (int i = 0; i < ops; ++i) {
                if (t == kThreads && i % 2048 == 0) migrator.next(); // this thread keeps changing CPU
                switch (i % 6) {
                case 0:
                    pcpu.this_cpu_add(counter, t + 3);
                    mine += t + 3;
                    break;
                case 1:
                    pcpu.this_cpu_sub(counter, 2);
                    mine -= 2;
                    break;
                case 2:
                    pcpu.this_cpu_inc(counter);
                    ++mine;
                    break;
                case 3:
                    pcpu.this_cpu_dec(counter);
                    --mine;
                    break;
                case 4:
                    (void)pcpu.this_cpu_add_return(counter, 5);
                    mine += 5;
                    break;
                default:
                    pcpu.this_cpu_add(grows, 1u);
                    ++my_growth;
                    break;
                }
            }
            expected.fetch_add(mine);
            added.fetch_add(my_growth);
        });
    }
    for (std::thread& t : pool) t.join();
    done.store(true, std::memory_order_release);
    reader.join();
    BOOST_TEST(running.load() == kThreads + 1);
    BOOST_TEST(pcpu.sum(counter) == expected.load());
    BOOST_TEST(pcpu.sum(grows) == added.load());
    BOOST_TEST(reader_ok.load());
    std::int64_t by_hand = 0;
    for (unsigned cpu : pcpu.possible_cpus()) by_hand += *pcpu.per_cpu_ptr(counter, cpu);
    BOOST_TEST(by_hand == expected.load());
    pcpu.free_percpu(counter);
    pcpu.free_percpu(grows);
    BOOST_TEST(pcpu.check_invariants() == "");
}

// Increments made of this_cpu_read + this_cpu_cmpxchg: a success must count exactly once, a lost or doubled
// update would make the sum differ from the successes.  Then xchg: values put in == values taken out + left.
template <class A>
void cmpxchg_and_xchg_are_atomic(A& pcpu, int ops) {
    const kmem::PerCpuPtr<std::uint64_t> cas = pcpu.template alloc_percpu<std::uint64_t>();
    const kmem::PerCpuPtr<std::uint64_t> box = pcpu.template alloc_percpu<std::uint64_t>();
    std::atomic<std::uint64_t> successes{0}, failures{0}, put{0}, taken{0};
    std::barrier start(kThreads + 1);
    std::vector<std::thread> pool;
    for (int t = 0; t <= kThreads; ++t) {
        pool.emplace_back([&, t] {
            Migrator migrator;
            start.arrive_and_wait();
            std::uint64_t ok = 0, missed = 0, in = 0, out = 0;
            for (int i = 0; i < ops; ++i) {
                if (t == kThreads && i % 2048 == 0) migrator.next();
                const std::uint64_t seen = pcpu.this_cpu_read(cas);
                if (pcpu.this_cpu_cmpxchg(cas, seen, seen + 1) == seen)
                    ++ok;
                else
                    ++missed;
                const std::uint64_t value =
                    (static_cast<std::uint64_t>(t) << 32) + static_cast<std::uint64_t>(i) + 1;
                in += value;
                out += pcpu.this_cpu_xchg(box, value);
            }
            successes.fetch_add(ok);
            failures.fetch_add(missed);
            put.fetch_add(in);
            taken.fetch_add(out);
        });
    }
    for (std::thread& t : pool) t.join();
    BOOST_TEST(pcpu.sum(cas) == successes.load());
    BOOST_TEST(successes.load() + failures.load() == static_cast<std::uint64_t>(ops) * (kThreads + 1));
    BOOST_TEST(successes.load() > 0u);
    BOOST_TEST(put.load() == taken.load() + pcpu.sum(box));
    BOOST_TEST_MESSAGE("cmpxchg: " << successes.load() << " successes, " << failures.load() << " misses");
    pcpu.free_percpu(cas);
    pcpu.free_percpu(box);
}

} // namespace

BOOST_AUTO_TEST_SUITE(percpu_threads)

BOOST_AUTO_TEST_CASE(counters_are_exact_per_cpu) {
    kmem::PerCpuAllocator<kmem::policy::ThrowOnError> pcpu;
    BOOST_TEST_MESSAGE("per-CPU copies updated with "
                       << (pcpu.uses_rseq() ? "restartable sequences" : "atomics"));
    counters_are_exact(pcpu, 300'000);
}

BOOST_AUTO_TEST_CASE(counters_are_exact_per_cpu_with_atomics) {
    kmem::PerCpuAllocator<kmem::policy::ThrowOnError> pcpu(kmem::PerCpuConfig{.use_rseq = false});
    counters_are_exact(pcpu, 200'000);
}

BOOST_AUTO_TEST_CASE(counters_are_exact_per_thread) {
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::ThrowOnError> pcpu;
    counters_are_exact(pcpu, 300'000);
}

BOOST_AUTO_TEST_CASE(counters_are_exact_when_threads_share_the_overflow_slot) {
    // Two owned slots for eleven threads (nine workers, the reader, this one): most share the overflow unit.
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::ThrowOnError> pcpu(
        kmem::PerCpuConfig{.units = 2});
    BOOST_TEST(pcpu.num_possible_cpus() == 3u);
    counters_are_exact(pcpu, 200'000);
}

BOOST_AUTO_TEST_CASE(cmpxchg_and_xchg_are_atomic_per_cpu) {
    kmem::PerCpuAllocator<kmem::policy::ThrowOnError> pcpu;
    cmpxchg_and_xchg_are_atomic(pcpu, 200'000);
    kmem::PerCpuAllocator<kmem::policy::ThrowOnError> atomics(kmem::PerCpuConfig{.use_rseq = false});
    cmpxchg_and_xchg_are_atomic(atomics, 100'000);
}

BOOST_AUTO_TEST_CASE(cmpxchg_and_xchg_are_atomic_per_thread) {
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::ThrowOnError> pcpu;
    cmpxchg_and_xchg_are_atomic(pcpu, 200'000);
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::ThrowOnError> shared(
        kmem::PerCpuConfig{.units = 1});
    cmpxchg_and_xchg_are_atomic(shared, 100'000);
}

BOOST_AUTO_TEST_CASE(thread_slots_are_given_back_and_reused_and_values_stay) {
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::ThrowOnError> pcpu(
        kmem::PerCpuConfig{.units = 4});
    const kmem::PerCpuPtr<std::uint64_t> p = pcpu.alloc_percpu<std::uint64_t>();
    (void)pcpu.this_cpu_unit(); // this thread's slot, held throughout
    const unsigned claimed = kmem::detail::thread_slots_claimed();
    constexpr int waves = 20, per_wave = 3;
    for (int w = 0; w < waves; ++w) {
        std::barrier sync(per_wave);
        std::vector<std::thread> wave;
        std::atomic<int> owners{0};
        for (int t = 0; t < per_wave; ++t)
            wave.emplace_back([&] {
                for (int i = 0; i < 1000; ++i) pcpu.this_cpu_inc(p);
                owners += pcpu.owns_slot() ? 1 : 0;
                sync.arrive_and_wait(); // all three live at once: three distinct slots
            });
        for (std::thread& t : wave) t.join();
        BOOST_TEST(owners.load() == per_wave); // 3 threads + this one fit in 4 slots: every wave reuses them
        BOOST_TEST(kmem::detail::thread_slots_claimed() == claimed);
    }
    BOOST_TEST(pcpu.sum(p) == std::uint64_t{waves} * per_wave * 1000);
    BOOST_TEST(*pcpu.per_cpu_ptr(p, pcpu.num_possible_cpus() - 1) == 0u); // nobody needed the overflow unit
    pcpu.free_percpu(p);
}

template <class Lock>
void concurrent_alloc_and_free() {
    kmem::PerCpuAllocator<Lock, kmem::policy::ThrowOnError> pcpu(kmem::PerCpuConfig{.unit_size = 32768});
    std::atomic<int> wrong{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < 4; ++t)
        pool.emplace_back([&, t] {
            std::vector<kmem::PerCpuPtr<std::uint32_t>> mine;
            for (int i = 0; i < 4000; ++i) {
                if (mine.size() < 40 && (i % 3 != 2)) {
                    kmem::PerCpuPtr<void> raw = pcpu.alloc_percpu(
                        4 + static_cast<std::size_t>((i * 7 + t) % 300), std::size_t{4} << (i % 4));
                    kmem::PerCpuPtr<std::uint32_t> p(raw);
                    if (pcpu.sum(p) != 0u) ++wrong; // zeroed, and nobody else writes it
                    pcpu.this_cpu_add(p, static_cast<std::uint32_t>(i));
                    if (pcpu.sum(p) != static_cast<std::uint32_t>(i)) ++wrong;
                    mine.push_back(p);
                } else if (!mine.empty()) {
                    pcpu.free_percpu(mine.back());
                    mine.pop_back();
                }
            }
            for (auto p : mine) pcpu.free_percpu(p);
        });
    for (std::thread& t : pool) t.join();
    BOOST_TEST(wrong.load() == 0);
    const kmem::PerCpuStats s = pcpu.stats();
    BOOST_TEST(s.areas == 0u);
    BOOST_TEST(s.allocations == s.frees);
    BOOST_TEST(pcpu.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(alloc_and_free_from_several_threads) {
    concurrent_alloc_and_free<kmem::policy::MutexLock>();
    concurrent_alloc_and_free<kmem::policy::SpinLock>();
}

BOOST_AUTO_TEST_SUITE_END()
