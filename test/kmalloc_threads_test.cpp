// Multi-threaded tests of Kmalloc (CTest labels this file `threads`; CI runs it under ThreadSanitizer), with a
// SpinLock Kmalloc over a SpinLock buddy (gfp::atomic) and a MutexLock one over a MutexLock buddy (gfp::kernel):
//
// - four threads kmalloc, krealloc and kfree random sizes (1 byte to 40 KiB: every size class and the
//   large-allocation path), each allocation stamped and checked before it is freed;
// - producers and consumers: memory is kfree'd (or krealloc'd, then kfree'd) by another thread than the one that
//   allocated it;
// - near exhaustion (a small buddy): allocations may fail, but nothing is lost: when the threads stop and
//   everything is freed, validate() finds nothing, shrink() empties every cache, and once the Kmalloc is gone the
//   buddy has every page back.
//
// The seed is printed; KMEM_SEED=<n> repeats a run's choices.  KMEM_THREADS_SCALE=<percent> scales the work.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>

#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace policy = kmem::policy;
using kmem::test::Xoshiro256;

constexpr std::size_t page = 4096;
constexpr unsigned nthreads = 4;

using SpinBuddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion, policy::SpinLock>;
using MutexBuddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion, policy::MutexLock>;
using SpinKm = kmem::Kmalloc<SpinBuddy, policy::SpinLock, policy::ThrowOnError>;
using MutexKm = kmem::Kmalloc<MutexBuddy, policy::MutexLock, policy::ThrowOnError>;

std::uint64_t scaled(std::uint64_t n) {
    const char* env = std::getenv("KMEM_THREADS_SCALE");
    if (env == nullptr || *env == '\0') return n;
    return std::max<std::uint64_t>(100, n * std::strtoul(env, nullptr, 10) / 100);
}

template <class Km>
constexpr auto flags_for() {
    if constexpr (Km::cache_type::lock_type::may_sleep)
        return gfp::kernel | gfp::nowarn;
    else
        return gfp::atomic | gfp::nowarn;
}

// An allocation with its stamp: the tag in the first word (when it fits) and bytes derived from it at the start,
// every 256th byte and the end.
struct Block {
    void* p;
    std::size_t size;
    std::uint64_t tag;
};
unsigned char byte_of(std::uint64_t tag, std::size_t i) {
    return static_cast<unsigned char>(tag * 131 + i * 7);
}
template <class F>
void samples(std::size_t size, F&& f) {
    for (std::size_t i = 0; i < std::min<std::size_t>(size, 32); ++i) f(i);
    for (std::size_t i = 32; i < size; i += 256) f(i);
    if (size > 0) f(size - 1);
}
void stamp(const Block& b) {
    auto* c = static_cast<unsigned char*>(b.p);
    samples(b.size, [&](std::size_t i) { c[i] = byte_of(b.tag, i); });
}
bool intact(const Block& b, std::size_t upto = ~std::size_t{0}) {
    const auto* c = static_cast<const unsigned char*>(b.p);
    bool ok = true;
    samples(b.size, [&](std::size_t i) { ok = ok && (i >= upto || c[i] == byte_of(b.tag, i)); });
    return ok;
}
std::size_t random_size(Xoshiro256& rng) {
    const std::uint64_t r = rng.below(100);
    if (r < 60) return rng.between(1, 256);
    if (r < 90) return rng.between(257, 8192);
    return rng.between(8193, 40960);
}

class Queue {
public:
    void push(Block b) {
        {
            std::lock_guard<std::mutex> g(m_);
            q_.push_back(b);
        }
        cv_.notify_one();
    }
    bool pop(Block& out) {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return !q_.empty() || closed_; });
        if (q_.empty()) return false;
        out = q_.front();
        q_.pop_front();
        return true;
    }
    bool try_pop(Block& out) {
        std::lock_guard<std::mutex> g(m_);
        if (q_.empty()) return false;
        out = q_.front();
        q_.pop_front();
        return true;
    }
    std::size_t size() {
        std::lock_guard<std::mutex> g(m_);
        return q_.size();
    }
    void close() {
        {
            std::lock_guard<std::mutex> g(m_);
            closed_ = true;
        }
        cv_.notify_all();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<Block> q_;
    bool closed_ = false;
};

// Resizes b with krealloc; on success b follows the memory, with the new tag's stamp.  False when it failed
// (then b is unchanged and still allocated).
template <class Km>
bool resize(Km& km, Block& b, std::size_t size, std::uint64_t tag, std::atomic<int>& corrupted) {
    void* q = km.krealloc(b.p, size, flags_for<Km>());
    if (q == nullptr) return false;
    const Block moved{q, b.size, b.tag};
    if (!intact(moved, size)) corrupted.fetch_add(1); // the bytes both sizes share were kept
    b = Block{q, size, tag};
    stamp(b);
    return true;
}

// Everything freed: the caches are sound and empty, and every page is back once the Kmalloc is gone.
template <class Buddy, class Km>
void expect_settled(Buddy& buddy, Km& km) {
    BOOST_TEST(km.validate() == "");
    km.shrink();
    for (const kmem::SlabStats& s : km.stats()) {
        BOOST_TEST(s.active_objs == 0u, s.name);
        BOOST_TEST(s.num_slabs == 0u, s.name);
        BOOST_TEST(s.cpu_objs == 0u, s.name);
    }
    BOOST_TEST(buddy.check_invariants() == "");
}

template <class Buddy, class Km>
void own_memory(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(32 << 20));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    {
        Km km(buddy);
        std::atomic<int> corrupted{0}, failed{0}, wrong_size{0};
        std::latch go(nthreads);
        std::vector<std::thread> threads;
        const std::uint64_t iterations = scaled(15'000);
        for (unsigned t = 0; t < nthreads; ++t)
            threads.emplace_back([&, t] {
                Xoshiro256 rng(seed + t);
                std::vector<Block> held;
                std::uint64_t seq = 0;
                go.arrive_and_wait();
                for (std::uint64_t i = 0; i < iterations; ++i) {
                    const std::uint64_t tag = (std::uint64_t{t + 1} << 48) | ++seq;
                    const std::uint64_t r = rng.below(100);
                    if (held.empty() || (held.size() < 200 && r < 50)) {
                        const std::size_t size = random_size(rng);
                        void* p = km.kmalloc(size, flags_for<Km>());
                        if (p == nullptr) {
                            failed.fetch_add(1);
                            continue;
                        }
                        if (km.ksize(p) != Km::kmalloc_size_roundup(size)) wrong_size.fetch_add(1);
                        held.push_back({p, size, tag});
                        stamp(held.back());
                    } else if (r < 65) {
                        Block& b = held[rng.below(held.size())];
                        if (!intact(b)) corrupted.fetch_add(1);
                        if (!resize(km, b, random_size(rng), tag, corrupted)) failed.fetch_add(1);
                    } else {
                        const std::size_t k = rng.below(held.size());
                        if (!intact(held[k])) corrupted.fetch_add(1);
                        if (rng.percent(10))
                            km.kfree_sensitive(held[k].p);
                        else
                            km.kfree(held[k].p);
                        held[k] = held.back();
                        held.pop_back();
                    }
                }
                for (const Block& b : held) {
                    if (!intact(b)) corrupted.fetch_add(1);
                    km.kfree(b.p);
                }
            });
        for (auto& th : threads) th.join();
        BOOST_TEST(corrupted.load() == 0);
        BOOST_TEST(failed.load() == 0); // 32 MiB is plenty
        BOOST_TEST(wrong_size.load() == 0);
        expect_settled(buddy, km);
    }
    BOOST_TEST(buddy.nr_free_pages() == start);
}

template <class Buddy, class Km>
void handed_over(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(32 << 20));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    {
        Km km(buddy);
        Queue q;
        std::atomic<int> corrupted{0}, failed{0};
        std::atomic<std::uint64_t> produced{0}, consumed{0};
        std::atomic<unsigned> producers{2};
        std::latch go(nthreads);
        std::vector<std::thread> threads;
        const std::uint64_t per_producer = scaled(20'000);
        for (unsigned t = 0; t < 2; ++t)
            threads.emplace_back([&, t] {
                Xoshiro256 rng(seed ^ (t + 50));
                go.arrive_and_wait();
                for (std::uint64_t i = 0; i < per_producer; ++i) {
                    const std::size_t size = random_size(rng);
                    void* p = km.kmalloc(size, flags_for<Km>());
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    const Block b{p, size, (std::uint64_t{t + 1} << 48) | i};
                    stamp(b);
                    q.push(b);
                    produced.fetch_add(1);
                    while (q.size() > 2000) std::this_thread::yield();
                }
                if (producers.fetch_sub(1) == 1) q.close();
            });
        for (unsigned t = 2; t < nthreads; ++t)
            threads.emplace_back([&, t] {
                Xoshiro256 rng(seed ^ (t + 90));
                go.arrive_and_wait();
                Block b{};
                while (q.pop(b)) {
                    if (!intact(b)) corrupted.fetch_add(1);
                    if (rng.percent(30)) { // resize what another thread allocated, then free it
                        if (!resize(km, b, random_size(rng), b.tag ^ 0xff, corrupted)) failed.fetch_add(1);
                        if (!intact(b)) corrupted.fetch_add(1);
                    }
                    km.kfree(b.p);
                    consumed.fetch_add(1);
                }
            });
        for (auto& th : threads) th.join();
        BOOST_TEST(corrupted.load() == 0);
        BOOST_TEST(failed.load() == 0);
        BOOST_TEST(produced.load() == consumed.load());
        expect_settled(buddy, km);
    }
    BOOST_TEST(buddy.nr_free_pages() == start);
}

template <class Buddy, class Km>
void near_exhaustion(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(256 * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    std::atomic<std::uint64_t> failed{0}, succeeded{0};
    {
        Km km(buddy);
        Queue q;
        std::atomic<int> corrupted{0};
        std::atomic<unsigned> left{nthreads};
        std::latch go(nthreads);
        std::vector<std::thread> threads;
        const std::uint64_t iterations = scaled(10'000);
        for (unsigned t = 0; t < nthreads; ++t)
            threads.emplace_back([&, t] {
                Xoshiro256 rng(seed ^ (t * 7919));
                std::vector<Block> held;
                go.arrive_and_wait();
                for (std::uint64_t i = 0; i < iterations; ++i) {
                    const std::uint64_t r = rng.below(100);
                    const std::uint64_t tag = (std::uint64_t{t + 1} << 48) | i;
                    if (r < 55) {
                        const std::size_t size = random_size(rng);
                        void* p = km.kmalloc(size, flags_for<Km>());
                        if (p == nullptr) {
                            failed.fetch_add(1);
                            continue;
                        }
                        succeeded.fetch_add(1);
                        held.push_back({p, size, tag});
                        stamp(held.back());
                    } else if (r < 65 && !held.empty()) {
                        q.push(held.back());
                        held.pop_back();
                    } else if (r < 75) {
                        Block b{};
                        if (q.try_pop(b)) {
                            if (!intact(b)) corrupted.fetch_add(1);
                            km.kfree(b.p);
                        }
                    } else if (r < 82 && !held.empty()) {
                        Block& b = held[rng.below(held.size())];
                        if (!intact(b)) corrupted.fetch_add(1);
                        if (!resize(km, b, random_size(rng), tag, corrupted)) {
                            failed.fetch_add(1);
                            if (!intact(b)) corrupted.fetch_add(1); // a failed krealloc leaves it alone
                        }
                    } else if (!held.empty()) {
                        const std::size_t k = rng.below(held.size());
                        if (!intact(held[k])) corrupted.fetch_add(1);
                        km.kfree(held[k].p);
                        held[k] = held.back();
                        held.pop_back();
                    }
                    if (i % 2000 == 0 && t == 0) km.shrink(); // now and then, beside the others
                }
                for (const Block& b : held) {
                    if (!intact(b)) corrupted.fetch_add(1);
                    km.kfree(b.p);
                }
                if (left.fetch_sub(1) == 1) q.close();
            });
        for (auto& th : threads) th.join();
        Block b{};
        while (q.pop(b)) {
            if (!intact(b)) corrupted.fetch_add(1);
            km.kfree(b.p);
        }
        BOOST_TEST(corrupted.load() == 0);
        expect_settled(buddy, km);
    }
    BOOST_TEST_MESSAGE(succeeded.load() << " allocations, " << failed.load() << " failed");
    BOOST_TEST(failed.load() > 0u); // the buddy really ran dry
    BOOST_TEST(succeeded.load() > 0u);
    BOOST_TEST(buddy.nr_free_pages() == start);
}

} // namespace

BOOST_AUTO_TEST_SUITE(kmalloc_threads)

BOOST_AUTO_TEST_CASE(threads_kmalloc_krealloc_and_kfree) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        own_memory<SpinBuddy, SpinKm>(seed);
        own_memory<MutexBuddy, MutexKm>(seed);
    }
}

BOOST_AUTO_TEST_CASE(memory_freed_by_other_threads) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        handed_over<SpinBuddy, SpinKm>(seed);
        handed_over<MutexBuddy, MutexKm>(seed);
    }
}

BOOST_AUTO_TEST_CASE(near_exhaustion_loses_nothing) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        near_exhaustion<SpinBuddy, SpinKm>(seed);
        near_exhaustion<MutexBuddy, MutexKm>(seed);
    }
}

BOOST_AUTO_TEST_SUITE_END()
