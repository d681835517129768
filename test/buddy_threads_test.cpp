// Multi-threaded tests of BuddyAllocator (every test case here runs several threads; CTest labels this file
// `threads` and CI runs it under ThreadSanitizer, so each case is bounded: a few seconds normally).
//
// - lock_policies: SpinLock excludes; a shared allocator under four threads with SpinLock and with MutexLock; two
//   threads tagging pages through their descriptors.
// - pcp_and_lock: per-CPU page lists with a lock policy.  Two threads that together hold at most 62 of 64 pages
//   and keep moving between CPUs must never see an allocation fail (the pages parked on another CPU's list are
//   free memory too), with gfp::nofail, without it, and with SpinLock and gfp::atomic; three threads that really
//   run the allocator dry
//   may see failures but never a page handed out twice or lost; a gfp::nofail request with no page free waits
//   until another thread frees one.
//
// The time each pcp_and_lock case spends is KMEM_THREADS_SECONDS (default 2) seconds, in rounds on fresh
// allocators; the seed is printed and KMEM_SEED=<n> repeats a run's choices.
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/cpus.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <pthread.h>
#include <sched.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <latch>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::Page;
using kmem::test::expect_consistent;

constexpr std::size_t page = 4096;

// Four threads share one allocator; each does `iterations` random alloc/free steps on blocks of order 0..3,
// stamps every page of a block with its owner and checks the stamp before freeing (a block handed out twice
// would be overwritten by its second owner).
template <class Buddy, class Flags>
void stress(Buddy& buddy, Flags flags, unsigned seed, int iterations) {
    std::atomic<int> corrupted{0};
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    std::latch start(4); // all four begin together, so they really contend
    for (unsigned t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            start.arrive_and_wait();
            std::mt19937 rng(seed + t);
            struct Held {
                unsigned char* p;
                unsigned order;
                unsigned char stamp;
            };
            std::vector<Held> held;
            const auto release = [&](std::size_t k) {
                const Held h = held[k];
                for (std::size_t off = 0; off < (page << h.order); off += page / 2)
                    if (h.p[off] != h.stamp) corrupted.fetch_add(1);
                buddy.free_pages(h.p, h.order);
                held[k] = held.back();
                held.pop_back();
            };
            for (int i = 0; i < iterations; ++i) {
                if (held.size() < 32 && (held.empty() || rng() % 2 == 0)) {
                    const unsigned order = rng() % 4;
                    auto* p = static_cast<unsigned char*>(buddy.get_free_pages(flags, order));
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    const auto stamp = static_cast<unsigned char>(rng());
                    for (std::size_t off = 0; off < (page << order); off += page / 2) p[off] = stamp;
                    held.push_back({p, order, stamp});
                } else {
                    release(rng() % held.size());
                }
            }
            while (!held.empty()) release(held.size() - 1);
        });
    }
    for (auto& th : threads) th.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() == 0); // 4 x 32 blocks of at most 8 pages fit easily
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(lock_policies)

BOOST_AUTO_TEST_CASE(spin_lock_excludes) {
    kmem::policy::SpinLock lock;
    long counter = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 100'000; ++i) {
                kmem::policy::LockGuard guard(lock);
                counter = counter + 1;
            }
        });
    for (auto& th : threads) th.join();
    BOOST_TEST(counter == 400'000);
}

BOOST_AUTO_TEST_CASE(shared_allocator_with_spin_lock) {
    const unsigned seed = std::random_device{}();
    BOOST_TEST_MESSAGE("seed " << seed);
    BOOST_TEST_INFO("seed " << seed);
    kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::SpinLock> buddy(
        kmem::MmapRegion(std::size_t{16} << 20));
    buddy.set_warning_stream(nullptr);
    stress(buddy, kmem::gfp::atomic, seed, 20'000);
    BOOST_TEST(buddy.check_invariants() == "");
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    const auto s = buddy.stats();
    BOOST_TEST(s.allocations == s.frees);
    BOOST_TEST(s.allocations > 4u * 5'000u);
}

BOOST_AUTO_TEST_CASE(shared_allocator_with_mutex) {
    const unsigned seed = std::random_device{}();
    BOOST_TEST_MESSAGE("seed " << seed);
    BOOST_TEST_INFO("seed " << seed);
    kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock> buddy(
        kmem::MmapRegion(std::size_t{16} << 20));
    buddy.set_warning_stream(nullptr);
    stress(buddy, kmem::gfp::kernel, seed, 20'000);
    BOOST_TEST(buddy.check_invariants() == "");
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    const auto s = buddy.stats();
    BOOST_TEST(s.allocations == s.frees);
}

BOOST_AUTO_TEST_CASE(spin_lock_under_two_threads) {
    kmem::BuddyAllocator<6, page, kmem::OffsetRegion, kmem::policy::SpinLock> a(std::uint64_t{1024} * page);
    a.set_warning_stream(nullptr);
    const std::string initial = a.buddyinfo();
    std::atomic<bool> overlap{false};
    auto worker = [&](unsigned seed) {
        // Every page of a block is tagged through its owner slot; a page handed to both threads at once would
        // have its tag overwritten by the other one.
        std::vector<std::pair<Page*, unsigned>> live;
        std::uint64_t x = seed;
        const std::uint64_t tag = std::uint64_t{seed} << 32;
        for (int i = 0; i < 20000; ++i) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            if ((x >> 60) < 9 || live.empty()) {
                const unsigned order = static_cast<unsigned>((x >> 33) % 4);
                if (Page* p = a.alloc_pages(gfp::atomic | gfp::nowarn, order)) {
                    for (unsigned k = 0; k < (1u << order); ++k)
                        p[k].set_owner(tag | static_cast<std::uint64_t>(i));
                    live.emplace_back(p, order);
                }
            } else {
                const std::size_t j = (x >> 20) % live.size();
                auto [p, order] = live[j];
                const std::uint64_t mine = p->owner();
                if ((mine >> 32) != seed) overlap = true;
                for (unsigned k = 1; k < (1u << order); ++k)
                    if (p[k].owner() != mine) overlap = true;
                a.free_pages(p, order);
                live[j] = live.back();
                live.pop_back();
            }
        }
        for (auto [p, order] : live) a.free_pages(p, order);
    };
    std::thread t1(worker, 1u), t2(worker, 2u);
    t1.join();
    t2.join();
    BOOST_TEST(!overlap.load());
    BOOST_TEST(a.buddyinfo() == initial);
    BOOST_TEST(a.stats().allocations == a.stats().frees);
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
namespace {

// Per-CPU lists in front of a lock: batch 31 and high 93 over 64 pages, so one CPU's list can hold every page
// that is not allocated.
using PcpMutex = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock,
                                      kmem::policy::PerCpuPages<31, 93>>;
using PcpSpin = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::SpinLock,
                                     kmem::policy::PerCpuPages<31, 93>>;
constexpr std::uint64_t arena_pages = 64;

// The time one pcp_and_lock case may take: KMEM_THREADS_SECONDS (default 2) seconds.
std::chrono::milliseconds time_budget() {
    const char* env = std::getenv("KMEM_THREADS_SECONDS");
    double seconds = 2.0;
    if (env != nullptr && *env != '\0') {
        char* end = nullptr;
        const double v = std::strtod(env, &end);
        if (end != nullptr && *end == '\0' && v > 0) seconds = v;
    }
    return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

using kmem::test::allowed_cpus;
using kmem::test::move_to;

// What a run of churn() saw.
struct Churn {
    std::uint64_t rounds = 0;
    std::uint64_t steps = 0;       // allocation and free calls, all threads
    std::uint64_t allocations = 0; // successful ones
    std::uint64_t nulls = 0;       // allocations that returned nullptr
    std::uint64_t corrupted = 0;   // pages whose stamp changed while held, or handed to two owners at once
    std::uint64_t over = 0;        // moments at which more than arena_pages pages were held
    std::vector<std::string> problems; // the allocator's state after a round, when it was wrong
};

// `threads` threads share one fresh allocator of type A per round (rounds run until the time budget is spent,
// each at most `steps_per_round` steps per thread).  Each thread holds at most `hold_max` order-0 pages: it
// allocates with `flags` or frees one of its pages at random, stamps every page it gets (the first word: its
// thread and a counter) and checks the stamp and the page's owner slot before freeing it.  After each round
// every page is free again: drain_all_pages() must bring nr_free_pages() back to 64 with the invariants intact.
// Every 256 steps each thread moves itself to a random allowed CPU, so that the pages it freed are left parked on
// the list of a CPU it no longer runs on while it (or the other thread) asks for more: with two threads the
// migrations a loaded scheduler makes now and then, every few microseconds.
template <class A, class Flags>
Churn churn(Flags flags, unsigned threads, unsigned hold_max, std::uint64_t steps_per_round,
            std::uint64_t seed) {
    Churn out;
    const auto deadline = std::chrono::steady_clock::now() + time_budget();
    const std::vector<int> cpus = allowed_cpus();
    do {
        A a(kmem::MmapRegion(arena_pages * page));
        a.set_warning_stream(nullptr);
        auto* const base =
            static_cast<unsigned char*>(a.page_address(a.pfn_to_page(a.page_table().first_pfn())));
        std::array<std::atomic<int>, arena_pages> owner; // the thread holding each page, or -1
        for (auto& o : owner) o.store(-1);
        std::atomic<std::uint64_t> held_total{0};
        std::atomic<std::uint64_t> steps{0}, allocations{0}, nulls{0}, corrupted{0}, over{0};
        std::latch start(threads);
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                kmem::test::Xoshiro256 rng(seed + out.rounds * threads + t);
                std::vector<std::uint64_t*> held;
                std::uint64_t my_steps = 0, my_allocations = 0, my_nulls = 0, my_corrupted = 0, my_over = 0;
                const auto release = [&](std::size_t k) {
                    std::uint64_t* p = held[k];
                    const auto index =
                        static_cast<std::size_t>((reinterpret_cast<unsigned char*>(p) - base) / page);
                    if ((*p >> 48) != t + 1u) ++my_corrupted;
                    if (owner[index].exchange(-1) != static_cast<int>(t)) ++my_corrupted;
                    held_total.fetch_sub(1);
                    a.free_pages(p, 0);
                    held[k] = held.back();
                    held.pop_back();
                };
                start.arrive_and_wait();
                for (std::uint64_t i = 0; i < steps_per_round; ++i) {
                    if ((i & 1023) == 0 && std::chrono::steady_clock::now() > deadline) break;
                    ++my_steps;
                    if ((i & 255) == 0 && cpus.size() > 1) move_to(cpus[rng.below(cpus.size())]);
                    if (held.size() < hold_max && (held.empty() || rng.percent(50))) {
                        auto* p = static_cast<std::uint64_t*>(a.get_free_pages(flags, 0));
                        if (p == nullptr) {
                            ++my_nulls;
                            continue;
                        }
                        ++my_allocations;
                        if (held_total.fetch_add(1) + 1 > arena_pages) ++my_over;
                        const auto index =
                            static_cast<std::size_t>((reinterpret_cast<unsigned char*>(p) - base) / page);
                        if (index >= arena_pages || owner[index].exchange(static_cast<int>(t)) != -1)
                            ++my_corrupted;
                        *p = (std::uint64_t{t} + 1) << 48 | (i & 0xffffffffffffull);
                        held.push_back(p);
                    } else {
                        release(rng.below(held.size()));
                    }
                }
                while (!held.empty()) release(held.size() - 1);
                steps += my_steps;
                allocations += my_allocations;
                nulls += my_nulls;
                corrupted += my_corrupted;
                over += my_over;
            });
        }
        for (auto& th : pool) th.join();
        ++out.rounds;
        out.steps += steps;
        out.allocations += allocations;
        out.nulls += nulls;
        out.corrupted += corrupted;
        out.over += over;
        a.drain_all_pages();
        std::string problem = a.check_invariants();
        if (problem.empty() && a.nr_free_pages() != arena_pages)
            problem =
                "nr_free_pages() is " + std::to_string(a.nr_free_pages()) + " after freeing and draining all";
        if (problem.empty() && a.nr_pcp_pages() != 0)
            problem = "pages left on per-CPU lists after drain_all_pages()";
        if (problem.empty()) problem = kmem::test::check_from_outside(a);
        if (!problem.empty()) out.problems.push_back("round " + std::to_string(out.rounds) + ": " + problem);
    } while (std::chrono::steady_clock::now() < deadline);
    BOOST_TEST_MESSAGE(out.rounds << " rounds, " << out.steps << " steps, " << out.allocations
                                  << " allocations, " << out.nulls << " null returns");
    return out;
}

// The checks every variant shares: nothing corrupted, never more held than there is, every round ended clean.
void expect_clean(const Churn& c) {
    BOOST_TEST(c.steps > 0u);
    BOOST_TEST(c.allocations > 0u);
    BOOST_TEST(c.corrupted == 0u);
    BOOST_TEST(c.over == 0u);
    BOOST_TEST(c.problems.empty());
    for (const std::string& p : c.problems) BOOST_TEST_MESSAGE(p);
}

} // namespace

BOOST_AUTO_TEST_SUITE(pcp_and_lock)

// 31 + 31 <= 64: the memory is always there, so no allocation may fail, even when the free pages sit on the
// other thread's CPU list (they must be drained and the allocation retried until it succeeds).
BOOST_AUTO_TEST_CASE(two_threads_with_nofail_never_fail) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        // A spurious gfp::nofail failure is reported through AssertOnError: it aborts with a message.
        const Churn c = churn<PcpMutex>(gfp::kernel | gfp::nofail, 2, 31, 2'000'000, seed);
        expect_clean(c);
        BOOST_TEST(c.nulls == 0u);
    }
}

BOOST_AUTO_TEST_CASE(two_threads_without_nofail_never_fail) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        const Churn c = churn<PcpMutex>(gfp::kernel, 2, 31, 2'000'000, seed);
        expect_clean(c);
        BOOST_TEST(c.nulls == 0u);
    }
}

BOOST_AUTO_TEST_CASE(two_threads_with_spin_lock_and_atomic_never_fail) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        const Churn c = churn<PcpSpin>(gfp::atomic, 2, 31, 2'000'000, seed);
        expect_clean(c);
        BOOST_TEST(c.nulls == 0u);
    }
}

// 3 x 30 > 64: allocations do fail now and then, but no page is handed out twice, no more than 64 are ever held,
// and everything comes back.
BOOST_AUTO_TEST_CASE(three_threads_running_it_dry_lose_nothing) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        const Churn c = churn<PcpMutex>(gfp::kernel, 3, 30, 2'000'000, seed);
        expect_clean(c);
        BOOST_TEST_MESSAGE("failures (allowed here): " << c.nulls);
    }
}

// Every page is held by the main thread; another thread's gfp::nofail request must wait (retry) until one is
// freed, ~50 ms later, and then succeed: it must neither fail nor abort.
BOOST_AUTO_TEST_CASE(nofail_waits_until_a_page_is_freed) {
    PcpMutex a(kmem::MmapRegion(arena_pages * page));
    a.set_warning_stream(nullptr);
    std::vector<void*> all;
    for (std::uint64_t n = 0; n < arena_pages; ++n) {
        void* p = a.get_free_pages(gfp::kernel, 0);
        BOOST_REQUIRE(p != nullptr);
        all.push_back(p);
    }
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    std::atomic<bool> freed{false};
    std::atomic<bool> returned{false};
    auto waiter = std::async(std::launch::async, [&] {
        void* p = a.get_free_pages(gfp::kernel | gfp::nofail, 0);
        returned = true;
        return std::pair<void*, bool>(p, freed.load());
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    BOOST_TEST(!returned.load()); // still waiting: nothing was free
    void* const given_back = all.back();
    all.pop_back();
    freed = true;
    a.free_pages(given_back, 0);
    if (waiter.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        std::fprintf(stderr,
                     "pcp_and_lock/nofail_waits_until_a_page_is_freed: the gfp::nofail call did not return "
                     "within 10 s of a page being freed; exiting\n");
        std::fflush(stderr);
        std::_Exit(1);
    }
    const auto [got, after_free] = waiter.get();
    BOOST_TEST(got != nullptr);
    BOOST_TEST(after_free);        // it returned only once a page was free
    BOOST_TEST(got == given_back); // the only free page
    if (got != nullptr) a.free_pages(got, 0);
    for (void* p : all) a.free_pages(p, 0);
    a.drain_all_pages();
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    BOOST_TEST(a.check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()
