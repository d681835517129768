// Multi-threaded tests of kmem::MemPool (CTest labels this file `threads`; CI runs it again under
// ThreadSanitizer).  Every case is bounded, and the ones that could hang run under a watchdog that turns a
// deadlock into a failure.
//
// - a caller that may sleep, facing an empty reserve and a source that fails every call, blocks; it resumes
//   with the very element another thread frees (MutexLock and SpinLock pools), long before its wait times out;
// - with no free at all, a waiter asks the source again when its wait times out (io_schedule_timeout(5*HZ)),
//   and gets an element once the source recovers;
// - eight threads share a pool of four elements whose source always (then half the time) fails: every
//   blocking allocation succeeds, no element is held by two threads at once, and nothing leaks (each thread
//   holds one element at a time: waiting for a second while holding one can deadlock any mempool);
// - one thread allocates and others free (frees from other threads wake the allocator);
// - allocations that may not sleep under contention fail cleanly and never hand an element out twice;
// - a page pool over a shared BuddyAllocator that is too small for all the threads: gfp::kernel never fails;
// - resize() while other threads allocate and free.
//
// The seed is printed; KMEM_SEED=<n> repeats a run's choices.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/mempool.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>

#include "support/expect_error.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <future>
#include <latch>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using namespace std::chrono_literals;

constexpr std::size_t kElementSize = 64;

// A thread-safe element source with fault injection: heap blocks of 64 bytes, a failure rate in percent
// (0 and 100 need no random numbers; in between, a seeded generator under a mutex), and counts.
class SharedSource {
public:
    explicit SharedSource(std::uint64_t seed = 1) : rng_(seed) {}

    void* alloc(kmem::gfp_t) {
        if (fails_now()) {
            failed_.fetch_add(1, std::memory_order_relaxed);
            return nullptr;
        }
        void* p = ::operator new(kElementSize);
        live_.fetch_add(1, std::memory_order_relaxed);
        return p;
    }
    void free(void* p) {
        ::operator delete(p);
        live_.fetch_sub(1, std::memory_order_relaxed);
    }

    void set_failure_percent(unsigned percent) { percent_.store(percent, std::memory_order_relaxed); }
    long live() const { return live_.load(std::memory_order_relaxed); }
    long failed() const { return failed_.load(std::memory_order_relaxed); }

private:
    bool fails_now() {
        const unsigned pct = percent_.load(std::memory_order_relaxed);
        if (pct == 0) return false;
        if (pct >= 100) return true;
        std::lock_guard<std::mutex> guard(m_);
        return rng_.percent(pct);
    }

    std::mutex m_;
    kmem::test::Xoshiro256 rng_;
    std::atomic<unsigned> percent_{0};
    std::atomic<long> live_{0};
    std::atomic<long> failed_{0};
};

template <class Lock>
using PoolWith = kmem::MemPool<SharedSource&, Lock, kmem::policy::ThrowOnError>;
using MutexPool = PoolWith<kmem::policy::MutexLock>;

// Writes `stamp` over the element and checks it is still there after other threads had a chance to run: an
// element handed to two threads at once would be overwritten by the second.
bool stamp_and_check(void* element, unsigned char stamp) {
    auto* bytes = static_cast<unsigned char*>(element);
    std::memset(bytes, stamp, kElementSize);
    std::this_thread::yield();
    for (std::size_t k = 0; k < kElementSize; ++k)
        if (bytes[k] != stamp) return false;
    return true;
}

// Waits (polling) until `pred` holds or `limit` passes; returns whether it holds.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

template <class Pool>
void blocked_allocator_resumes(const char* label) {
    SharedSource src;
    Pool pool(2, src);
    pool.set_wait_timeout(60s); // the resume must come from the free, not from the timeout
    src.set_failure_percent(100);
    void* a = pool.alloc(gfp::kernel);
    void* b = pool.alloc(gfp::kernel);
    BOOST_REQUIRE(a != nullptr);
    BOOST_REQUIRE(b != nullptr);
    BOOST_TEST(pool.curr_nr() == 0u);

    std::promise<void*> got;
    std::future<void*> result = got.get_future();
    std::thread waiter([&] { got.set_value(pool.alloc(gfp::kernel)); });
    BOOST_TEST(eventually([&] { return pool.nr_waiters() == 1u; }), label << ": the allocator never waited");
    BOOST_TEST((result.wait_for(50ms) == std::future_status::timeout), label << ": it did not block");
    const auto freed_at = std::chrono::steady_clock::now();
    pool.free(b);
    BOOST_REQUIRE_MESSAGE(result.wait_for(20s) == std::future_status::ready,
                          label << ": the blocked allocator did not resume after a free");
    const bool quick = std::chrono::steady_clock::now() - freed_at < 10s;
    BOOST_TEST(quick, label << ": the allocator resumed only after a long time");
    BOOST_TEST(result.get() == b, label << ": it did not get the freed element");
    waiter.join();
    const kmem::MemPoolStats s = pool.stats();
    BOOST_TEST(s.waits >= 1u);
    BOOST_TEST(s.waiters == 0u);
    BOOST_TEST(s.outstanding == 2u);
    pool.free(a);
    pool.free(b);
    BOOST_TEST(pool.curr_nr() == 2u);
    pool.destroy();
    BOOST_TEST(src.live() == 0);
}

} // namespace

BOOST_AUTO_TEST_SUITE(mempool_threads)

BOOST_AUTO_TEST_CASE(a_blocked_allocator_resumes_when_an_element_is_freed) {
    blocked_allocator_resumes<MutexPool>("MutexLock");
    blocked_allocator_resumes<PoolWith<kmem::policy::SpinLock>>("SpinLock");
}

BOOST_AUTO_TEST_CASE(a_waiter_asks_the_source_again_when_its_wait_times_out) {
    SharedSource src;
    MutexPool pool(1, src);
    pool.set_wait_timeout(20ms);
    src.set_failure_percent(100);
    void* reserve_element = pool.alloc(gfp::kernel);
    std::promise<void*> got;
    std::future<void*> result = got.get_future();
    std::thread waiter([&] { got.set_value(pool.alloc(gfp::kernel)); });
    BOOST_TEST(eventually([&] { return pool.stats().waits >= 3u; })); // woke and retried several times
    BOOST_TEST((result.wait_for(0ms) == std::future_status::timeout));
    src.set_failure_percent(0); // the source recovers; nobody frees
    BOOST_REQUIRE(result.wait_for(20s) == std::future_status::ready);
    void* p = result.get();
    waiter.join();
    BOOST_TEST(p != nullptr);
    BOOST_TEST(p != reserve_element);
    BOOST_TEST(src.live() == 2);
    pool.free(p);
    pool.free(reserve_element);
    BOOST_TEST(pool.curr_nr() == 1u);
    pool.destroy();
    BOOST_TEST(src.live() == 0);
}

BOOST_AUTO_TEST_CASE(eight_threads_share_four_elements) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        for (const unsigned failure_percent : {100u, 50u}) {
            SharedSource src(seed);
            MutexPool pool(4, src);
            src.set_failure_percent(failure_percent);
            std::atomic<int> null_results{0};
            std::atomic<int> corrupted{0};
            kmem::test::finish_or_exit("eight_threads_share_four_elements", 120s, [&] {
                std::latch start(8);
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < 8; ++t) {
                    threads.emplace_back([&, t] {
                        start.arrive_and_wait();
                        // One element at a time: a thread that holds an element and waits for a second can
                        // deadlock a pool (the kernel's rule for mempool users), so these never do.
                        for (int i = 0; i < 400; ++i) {
                            void* p = pool.alloc(gfp::kernel); // may sleep: never fails
                            if (p == nullptr) {
                                null_results.fetch_add(1);
                                continue;
                            }
                            if (!stamp_and_check(p, static_cast<unsigned char>(t + 1)))
                                corrupted.fetch_add(1);
                            pool.free(p);
                        }
                    });
                }
                for (auto& th : threads) th.join();
                return 0;
            });
            BOOST_TEST(null_results.load() == 0, failure_percent << "%: a blocking allocation failed");
            BOOST_TEST(corrupted.load() == 0, failure_percent << "%: an element was held by two threads");
            const kmem::MemPoolStats s = pool.stats();
            BOOST_TEST(s.outstanding == 0u);
            BOOST_TEST(s.curr_nr == 4u); // every free refilled the reserve first
            BOOST_TEST(s.failures == 0u);
            BOOST_TEST(src.live() == 4);
            if (failure_percent == 100) BOOST_TEST(s.waits > 0u); // eight threads, four elements
            pool.destroy();
            BOOST_TEST(src.live() == 0);
        }
    }
}

BOOST_AUTO_TEST_CASE(frees_from_other_threads_wake_the_allocator) {
    SharedSource src;
    MutexPool pool(2, src);
    src.set_failure_percent(100);
    constexpr int total = 3000;
    std::mutex m;
    std::condition_variable cv;
    std::deque<void*> queue;
    bool done = false;
    std::atomic<int> consumed{0};
    kmem::test::finish_or_exit("frees_from_other_threads", 120s, [&] {
        std::vector<std::thread> consumers;
        for (int c = 0; c < 2; ++c) {
            consumers.emplace_back([&] {
                for (;;) {
                    void* p = nullptr;
                    {
                        std::unique_lock<std::mutex> lock(m);
                        cv.wait(lock, [&] { return done || !queue.empty(); });
                        if (queue.empty()) return;
                        p = queue.front();
                        queue.pop_front();
                    }
                    pool.free(p);
                    consumed.fetch_add(1);
                }
            });
        }
        for (int i = 0; i < total; ++i) {
            void* p = pool.alloc(gfp::kernel); // only two elements exist: waits for the consumers' frees
            if (p == nullptr) break;
            {
                std::lock_guard<std::mutex> lock(m);
                queue.push_back(p);
            }
            cv.notify_one();
        }
        {
            std::lock_guard<std::mutex> lock(m);
            done = true;
        }
        cv.notify_all();
        for (auto& th : consumers) th.join();
        return 0;
    });
    BOOST_TEST(consumed.load() == total);
    BOOST_TEST(pool.outstanding() == 0u);
    BOOST_TEST(pool.curr_nr() == 2u);
    BOOST_TEST(src.live() == 2);
    BOOST_TEST(pool.stats().reserve_allocs == static_cast<std::uint64_t>(total));
    pool.destroy();
    BOOST_TEST(src.live() == 0);
}

BOOST_AUTO_TEST_CASE(allocations_that_may_not_sleep_fail_cleanly_under_contention) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        SharedSource src(seed);
        PoolWith<kmem::policy::SpinLock> pool(3, src);
        src.set_failure_percent(90);
        std::atomic<int> corrupted{0};
        std::atomic<int> nulls{0};
        std::atomic<int> served{0};
        std::latch start(4);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < 4; ++t) {
            threads.emplace_back([&, t] {
                start.arrive_and_wait();
                std::vector<void*> held;
                for (int i = 0; i < 3000; ++i) {
                    if (held.size() < 3 && (i % 3 != 2)) {
                        void* p = pool.alloc(gfp::atomic);
                        if (p == nullptr) {
                            nulls.fetch_add(1);
                        } else {
                            served.fetch_add(1);
                            held.push_back(p);
                        }
                    } else if (!held.empty()) {
                        void* p = held.back();
                        held.pop_back();
                        if (!stamp_and_check(p, static_cast<unsigned char>(0x40 + t))) corrupted.fetch_add(1);
                        pool.free(p);
                    }
                }
                for (void* p : held) pool.free(p);
            });
        }
        for (auto& th : threads) th.join();
        BOOST_TEST(corrupted.load() == 0);
        BOOST_TEST(served.load() > 0);
        const kmem::MemPoolStats s = pool.stats();
        BOOST_TEST(s.failures == static_cast<std::uint64_t>(nulls.load()));
        BOOST_TEST(s.outstanding == 0u);
        BOOST_TEST(src.live() == static_cast<long>(s.curr_nr));
        BOOST_TEST(s.curr_nr <= 3u);
        pool.destroy();
        BOOST_TEST(src.live() == 0);
    }
}

BOOST_AUTO_TEST_CASE(a_page_pool_over_a_buddy_too_small_for_all_threads) {
    // 16 pages, 4 of them in the reserve; six threads that each hold up to three pages (18 > 16).
    using Buddy = kmem::BuddyAllocator<4, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
    Buddy buddy(kmem::MmapRegion(std::size_t{16} * 4096));
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        {
            kmem::PagePool<Buddy, kmem::policy::ThrowOnError> pool(4, {buddy, 0});
            BOOST_TEST(buddy.nr_free_pages() == 12u);
            std::atomic<int> nulls{0};
            std::atomic<int> corrupted{0};
            kmem::test::finish_or_exit("page_pool_threads", 120s, [&] {
                std::latch start(6);
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < 6; ++t) {
                    threads.emplace_back([&, t] {
                        kmem::test::Xoshiro256 rng(seed * 7 + t);
                        start.arrive_and_wait();
                        std::vector<kmem::Page*> held;
                        for (int i = 0; i < 500; ++i) {
                            if (held.size() < 3 && rng.percent(60)) {
                                kmem::Page* p = pool.alloc(gfp::kernel);
                                if (p == nullptr) {
                                    nulls.fetch_add(1);
                                    continue;
                                }
                                held.push_back(p);
                            } else if (!held.empty()) {
                                const std::size_t k = rng.below(held.size());
                                kmem::Page* p = held[k];
                                held[k] = held.back();
                                held.pop_back();
                                if (!stamp_and_check(buddy.page_address(p),
                                                     static_cast<unsigned char>(t + 1)))
                                    corrupted.fetch_add(1);
                                pool.free(p);
                            }
                        }
                        for (kmem::Page* p : held) pool.free(p);
                    });
                }
                for (auto& th : threads) th.join();
                return 0;
            });
            BOOST_TEST(nulls.load() == 0);
            BOOST_TEST(corrupted.load() == 0);
            BOOST_TEST(pool.curr_nr() == 4u);
            BOOST_TEST(pool.outstanding() == 0u);
            BOOST_TEST(buddy.nr_free_pages() == 12u);
        }
        BOOST_TEST(buddy.nr_free_pages() == 16u);
        BOOST_TEST(buddy.check_invariants().empty());
    }
}

BOOST_AUTO_TEST_CASE(resize_while_other_threads_allocate_and_free) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        SharedSource src(seed);
        MutexPool pool(2, src);
        pool.set_wait_timeout(5ms);
        src.set_failure_percent(50);
        std::atomic<bool> stop{false};
        std::atomic<int> nulls{0};
        kmem::test::finish_or_exit("resize_while_in_use", 120s, [&] {
            std::vector<std::thread> threads;
            for (unsigned t = 0; t < 3; ++t) {
                threads.emplace_back([&, t] {
                    kmem::test::Xoshiro256 rng(seed + 100 + t);
                    std::vector<void*> held;
                    while (!stop.load()) {
                        if (held.size() < 2 && rng.percent(55)) {
                            void* p = pool.alloc(gfp::kernel);
                            if (p == nullptr)
                                nulls.fetch_add(1);
                            else
                                held.push_back(p);
                        } else if (!held.empty()) {
                            pool.free(held.back());
                            held.pop_back();
                        }
                    }
                    for (void* p : held) pool.free(p);
                });
            }
            kmem::test::Xoshiro256 rng(seed);
            for (int i = 0; i < 300; ++i) {
                BOOST_TEST(pool.resize(1 + rng.below(8)));
                std::this_thread::yield();
            }
            stop.store(true);
            for (auto& th : threads) th.join();
            return 0;
        });
        BOOST_TEST(nulls.load() == 0);
        const kmem::MemPoolStats s = pool.stats();
        BOOST_TEST(s.outstanding == 0u);
        BOOST_TEST(s.curr_nr <= s.min_nr);
        BOOST_TEST(src.live() == static_cast<long>(s.curr_nr));
        pool.destroy();
        BOOST_TEST(src.live() == 0);
    }
}

BOOST_AUTO_TEST_SUITE_END()
