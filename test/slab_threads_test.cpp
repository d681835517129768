// Multi-threaded tests of KmemCache and SlabCache (CTest labels this file `threads`; CI runs it under
// ThreadSanitizer).  Each case runs with a SpinLock cache over a SpinLock buddy (gfp::atomic: a spin lock holder
// may not sleep) and with a MutexLock cache over a MutexLock buddy (gfp::kernel).
//
// - four threads allocate and free their own objects, each stamped with its owner and checked before its free;
// - producers and consumers: objects are freed by another thread than the one that allocated them (pointers go
//   through a queue) and their stamps are checked on the way;
// - with room to spare (the threads together never hold more than the cache's capacity minus what can be in
//   transit between a thread and the slabs), no allocation may fail: objects parked in other CPUs' arrays are
//   free memory too;
// - near exhaustion (a buddy so small that allocations fail): failures are allowed, but no object is handed out
//   twice, no stamp changes, and when the threads stop and everything is freed, shrink() and destroy() give every
//   page back and validate() finds nothing;
// - maintenance (shrink, drain, stats, validate, slabinfo, set_tunables) from one thread while others work.
//
// The seed is printed; KMEM_SEED=<n> repeats a run's choices.  KMEM_THREADS_SCALE=<percent> scales the work.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <latch>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace policy = kmem::policy;
using kmem::test::Xoshiro256;

constexpr std::size_t page = 4096;
constexpr unsigned nthreads = 4;
constexpr std::size_t obj_size = 64;

using SpinBuddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion, policy::SpinLock>;
using MutexBuddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion, policy::MutexLock>;
using SpinCache = kmem::KmemCache<SpinBuddy, policy::SpinLock, policy::ThrowOnError>;
using MutexCache = kmem::KmemCache<MutexBuddy, policy::MutexLock, policy::ThrowOnError>;

std::uint64_t scaled(std::uint64_t n) {
    const char* env = std::getenv("KMEM_THREADS_SCALE");
    if (env == nullptr || *env == '\0') return n;
    return std::max<std::uint64_t>(100, n * std::strtoul(env, nullptr, 10) / 100);
}

// A stamp: the owner and a sequence number in the first word, bytes derived from it in the rest.
void stamp(void* p, std::uint64_t tag) {
    auto* b = static_cast<unsigned char*>(p);
    std::memcpy(b, &tag, sizeof tag);
    for (std::size_t i = sizeof tag; i < obj_size; ++i) b[i] = static_cast<unsigned char>(tag * 31 + i);
}
bool stamp_intact(const void* p, std::uint64_t tag) {
    const auto* b = static_cast<const unsigned char*>(p);
    std::uint64_t got;
    std::memcpy(&got, b, sizeof got);
    if (got != tag) return false;
    for (std::size_t i = sizeof tag; i < obj_size; ++i)
        if (b[i] != static_cast<unsigned char>(tag * 31 + i)) return false;
    return true;
}
std::uint64_t tag_of(unsigned thread, std::uint64_t seq) {
    return (std::uint64_t{thread + 1} << 48) | seq;
}

// The flags each lock allows: a spin lock's holders may not sleep.
template <class Cache>
constexpr auto flags_for() {
    if constexpr (Cache::lock_type::may_sleep)
        return gfp::kernel | gfp::nowarn;
    else
        return gfp::atomic | gfp::nowarn;
}

// After the threads: everything is back, the cache is sound, and every page returns to the buddy.
template <class Buddy, class Cache>
void expect_settled(Buddy& buddy, Cache& c, std::uint64_t start) {
    BOOST_TEST(c.validate() == "");
    const kmem::SlabStats s = c.stats();
    BOOST_TEST(s.active_objs == 0u);
    c.shrink();
    BOOST_TEST(c.stats().num_slabs == 0u);
    BOOST_TEST(c.stats().cpu_objs == 0u);
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
    BOOST_TEST(buddy.check_invariants() == "");
}

// ----- own objects ------------------------------------------------------------------------------------------

template <class Buddy, class Cache>
void own_objects(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "own", obj_size);
    std::atomic<int> corrupted{0}, failed{0}, duplicates{0};
    std::latch go(nthreads);
    std::vector<std::thread> threads;
    const std::uint64_t iterations = scaled(30'000);
    for (unsigned t = 0; t < nthreads; ++t)
        threads.emplace_back([&, t] {
            Xoshiro256 rng(seed + t);
            struct Held {
                void* p;
                std::uint64_t tag;
            };
            std::vector<Held> held;
            std::uint64_t seq = 0;
            go.arrive_and_wait();
            for (std::uint64_t i = 0; i < iterations; ++i) {
                const bool alloc = held.empty() || (held.size() < 400 && rng.percent(55));
                if (alloc) {
                    void* p = c.alloc(flags_for<Cache>());
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    const std::uint64_t tag = tag_of(t, ++seq);
                    stamp(p, tag);
                    held.push_back({p, tag});
                } else {
                    const std::size_t k = rng.below(held.size());
                    if (!stamp_intact(held[k].p, held[k].tag)) corrupted.fetch_add(1);
                    c.free(held[k].p);
                    held[k] = held.back();
                    held.pop_back();
                }
                if (i % 1024 == 0) { // someone else's object in our hands would have been overwritten
                    std::set<void*> mine;
                    for (const Held& h : held)
                        if (!mine.insert(h.p).second) duplicates.fetch_add(1);
                }
            }
            for (const Held& h : held) {
                if (!stamp_intact(h.p, h.tag)) corrupted.fetch_add(1);
                c.free(h.p);
            }
        });
    for (auto& th : threads) th.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(duplicates.load() == 0);
    BOOST_TEST(failed.load() == 0); // 8 MiB is plenty for 4 x 400 objects
    expect_settled(buddy, c, start);
}

// ----- producers and consumers --------------------------------------------------------------------------------

// A queue of stamped objects between threads.
class Queue {
public:
    struct Item {
        void* p;
        std::uint64_t tag;
    };
    void push(Item i) {
        {
            std::lock_guard<std::mutex> g(m_);
            q_.push_back(i);
        }
        cv_.notify_one();
    }
    // Waits for an item; false when the queue is closed and empty.
    bool pop(Item& out) {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return !q_.empty() || closed_; });
        if (q_.empty()) return false;
        out = q_.front();
        q_.pop_front();
        return true;
    }
    // Takes an item if there is one, without waiting.
    bool try_pop(Item& out) {
        std::lock_guard<std::mutex> g(m_);
        if (q_.empty()) return false;
        out = q_.front();
        q_.pop_front();
        return true;
    }
    void close() {
        {
            std::lock_guard<std::mutex> g(m_);
            closed_ = true;
        }
        cv_.notify_all();
    }
    std::size_t size() {
        std::lock_guard<std::mutex> g(m_);
        return q_.size();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<Item> q_;
    bool closed_ = false;
};

template <class Buddy, class Cache>
void producers_and_consumers(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "handed_over", obj_size);
    Queue q;
    std::atomic<int> corrupted{0}, failed{0};
    std::atomic<std::uint64_t> produced{0}, consumed{0};
    std::atomic<unsigned> producers_left{2};
    const std::uint64_t per_producer = scaled(40'000);
    std::vector<std::thread> threads;
    std::latch go(nthreads);
    for (unsigned t = 0; t < 2; ++t)
        threads.emplace_back([&, t] { // producers; they also free some objects of their own
            Xoshiro256 rng(seed ^ (t + 100));
            go.arrive_and_wait();
            std::vector<Queue::Item> own;
            for (std::uint64_t i = 0; i < per_producer; ++i) {
                void* p = c.alloc(flags_for<Cache>());
                if (p == nullptr) {
                    failed.fetch_add(1);
                    continue;
                }
                const std::uint64_t tag = tag_of(t, i);
                stamp(p, tag);
                if (rng.percent(80)) {
                    q.push({p, tag});
                    produced.fetch_add(1);
                } else {
                    own.push_back({p, tag});
                }
                if (own.size() > 50) {
                    for (const auto& o : own) {
                        if (!stamp_intact(o.p, o.tag)) corrupted.fetch_add(1);
                        c.free(o.p);
                    }
                    own.clear();
                }
                while (q.size() > 5000) std::this_thread::yield(); // keep the consumers in sight
            }
            for (const auto& o : own) c.free(o.p);
            if (producers_left.fetch_sub(1) == 1) q.close();
        });
    for (unsigned t = 2; t < nthreads; ++t)
        threads.emplace_back([&] { // consumers: free what others allocated, sometimes allocate and free too
            go.arrive_and_wait();
            Queue::Item item;
            while (q.pop(item)) {
                if (!stamp_intact(item.p, item.tag)) corrupted.fetch_add(1);
                std::memset(item.p, 0xdd, obj_size); // the consumer owns it now
                c.free(item.p);
                consumed.fetch_add(1);
            }
        });
    for (auto& th : threads) th.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() == 0);
    BOOST_TEST(produced.load() == consumed.load());
    BOOST_TEST(produced.load() > 0u);
    expect_settled(buddy, c, start);
}

// ----- room to spare: no allocation may fail ------------------------------------------------------------------

template <class Buddy, class Cache>
void no_failure_with_room_to_spare(std::uint64_t seed) {
    const unsigned cpus = static_cast<unsigned>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
    constexpr unsigned limit = 8, batch = 4;
    // Objects that can be out of reach of a failing allocation at one moment: every CPU's array (drained by the
    // failing thread, but maybe in another thread's hands while it drains), each other thread's refill or
    // flush batch, and the objects of slabs whose pages are between the cache and the buddy.
    const std::size_t transit_slabs = cpus * limit + nthreads * batch + nthreads;
    const std::size_t pages = 2 * (transit_slabs + 2 * cpus * limit / 64 + 64) + 64;
    Buddy buddy(kmem::MmapRegion(pages * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "room", obj_size);
    BOOST_REQUIRE(c.order() == 0u);
    c.set_tunables(limit, batch);
    // The capacity, measured: fill the buddy once (shrink() gives every page back, so later fills find the
    // same room).
    std::vector<void*> fill;
    while (void* p = c.alloc(flags_for<Cache>())) fill.push_back(p);
    const std::size_t capacity = fill.size();
    for (void* p : fill) c.free(p);
    fill.clear();
    c.shrink();
    const std::size_t in_transit =
        cpus * limit + nthreads * (limit + batch) + transit_slabs * c.objects_per_slab();
    BOOST_REQUIRE(capacity > 2 * in_transit);
    const std::size_t per_thread = (capacity - in_transit) / nthreads;
    BOOST_TEST_MESSAGE("capacity " << capacity << " objects; each of " << nthreads
                                   << " threads holds at most " << per_thread);
    std::atomic<int> corrupted{0}, failed{0};
    std::atomic<std::uint64_t> total_held{0}, peak{0};
    std::latch go(nthreads);
    std::vector<std::thread> threads;
    // Rounds: every thread fills up to its share, all meet (so that together they hold everything they may),
    // then each frees one and allocates one at the limit for a while, then frees most and meets the others again.
    const unsigned rounds = static_cast<unsigned>(std::max<std::uint64_t>(1, scaled(3)));
    // When all have met (before any goes on), the total they hold.
    const auto record = [&]() noexcept { peak.store(std::max(peak.load(), total_held.load())); };
    std::barrier meet(nthreads, record);
    for (unsigned t = 0; t < nthreads; ++t)
        threads.emplace_back([&, t] {
            Xoshiro256 rng(seed ^ (t * 977));
            struct Held {
                void* p;
                std::uint64_t tag;
            };
            std::vector<Held> held;
            std::uint64_t seq = 0;
            const auto alloc_one = [&] {
                void* p = c.alloc(flags_for<Cache>());
                if (p == nullptr) {
                    failed.fetch_add(1);
                    return;
                }
                stamp(p, tag_of(t, ++seq));
                held.push_back({p, tag_of(t, seq)});
                total_held.fetch_add(1);
            };
            const auto free_one = [&] {
                const std::size_t k = rng.below(held.size());
                if (!stamp_intact(held[k].p, held[k].tag)) corrupted.fetch_add(1);
                c.free(held[k].p);
                held[k] = held.back();
                held.pop_back();
                total_held.fetch_sub(1);
            };
            go.arrive_and_wait();
            for (unsigned r = 0; r < rounds; ++r) {
                for (std::size_t tries = 0; held.size() < per_thread && tries < 2 * per_thread; ++tries)
                    alloc_one();
                meet.arrive_and_wait();
                for (std::size_t i = 0; i < per_thread; ++i) { // churn at the limit, all together
                    if (held.size() == per_thread || rng.percent(50)) free_one();
                    if (held.size() < per_thread) alloc_one();
                }
                while (held.size() > per_thread / 10) free_one();
                meet.arrive_and_wait();
            }
            while (!held.empty()) free_one();
        });
    for (auto& th : threads) th.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() == 0);
    BOOST_TEST_MESSAGE("at most " << peak.load() << " objects held at once");
    BOOST_TEST(peak.load() == std::uint64_t{nthreads} * per_thread); // all at their limit together
    expect_settled(buddy, c, start);
}

// ----- near exhaustion --------------------------------------------------------------------------------------

template <class Buddy, class Cache>
void near_exhaustion(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(48 * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "scarce", obj_size);
    Queue q;
    std::atomic<int> corrupted{0};
    std::atomic<std::uint64_t> failed{0}, succeeded{0};
    std::latch go(nthreads);
    std::vector<std::thread> threads;
    const std::uint64_t iterations = scaled(20'000);
    std::atomic<unsigned> left{nthreads};
    for (unsigned t = 0; t < nthreads; ++t)
        threads.emplace_back([&, t] {
            Xoshiro256 rng(seed ^ (t * 31337));
            std::vector<Queue::Item> held;
            go.arrive_and_wait();
            for (std::uint64_t i = 0; i < iterations; ++i) {
                const std::uint64_t r = rng.below(100);
                if (r < 55) { // each thread alone would nearly fill the buddy
                    void* p = c.alloc(flags_for<Cache>());
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    succeeded.fetch_add(1);
                    stamp(p, tag_of(t, i));
                    held.push_back({p, tag_of(t, i)});
                } else if (r < 65 && !held.empty()) { // hand one to whoever frees next
                    q.push(held.back());
                    held.pop_back();
                } else if (r < 80) { // free one someone handed over, if any
                    Queue::Item item{};
                    if (q.try_pop(item)) {
                        if (!stamp_intact(item.p, item.tag)) corrupted.fetch_add(1);
                        c.free(item.p);
                    }
                } else if (!held.empty()) {
                    const std::size_t k = rng.below(held.size());
                    if (!stamp_intact(held[k].p, held[k].tag)) corrupted.fetch_add(1);
                    c.free(held[k].p);
                    held[k] = held.back();
                    held.pop_back();
                }
            }
            for (const auto& h : held) {
                if (!stamp_intact(h.p, h.tag)) corrupted.fetch_add(1);
                c.free(h.p);
            }
            if (left.fetch_sub(1) == 1) q.close();
        });
    for (auto& th : threads) th.join();
    Queue::Item item;
    while (q.pop(item)) {
        if (!stamp_intact(item.p, item.tag)) corrupted.fetch_add(1);
        c.free(item.p);
    }
    BOOST_TEST_MESSAGE(succeeded.load() << " allocations, " << failed.load() << " failed");
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() > 0u); // the buddy really ran dry
    BOOST_TEST(succeeded.load() > 0u);
    expect_settled(buddy, c, start);
}

// ----- maintenance while others work ------------------------------------------------------------------------

template <class Buddy, class Cache>
void maintenance_while_working(std::uint64_t seed) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "maintained", obj_size);
    std::atomic<bool> stop{false};
    std::atomic<int> corrupted{0}, bad_stats{0}, problems{0};
    std::vector<std::thread> workers;
    std::latch go(nthreads);
    const std::uint64_t iterations = scaled(20'000);
    for (unsigned t = 0; t + 1 < nthreads; ++t)
        workers.emplace_back([&, t] {
            Xoshiro256 rng(seed ^ (t + 7));
            std::vector<Queue::Item> held;
            go.arrive_and_wait();
            for (std::uint64_t i = 0; i < iterations; ++i) {
                if (held.empty() || (held.size() < 300 && rng.percent(52))) {
                    void* p = c.alloc(flags_for<Cache>());
                    if (p == nullptr) continue;
                    stamp(p, tag_of(t, i));
                    held.push_back({p, tag_of(t, i)});
                } else {
                    const std::size_t k = rng.below(held.size());
                    if (!stamp_intact(held[k].p, held[k].tag)) corrupted.fetch_add(1);
                    c.free(held[k].p);
                    held[k] = held.back();
                    held.pop_back();
                }
            }
            for (const auto& h : held) c.free(h.p);
        });
    std::thread maintainer([&] {
        Xoshiro256 rng(seed ^ 0xfeed);
        go.arrive_and_wait();
        while (!stop.load()) {
            switch (rng.below(6)) {
            case 0:
                c.shrink();
                break;
            case 1:
                c.drain_cpu_arrays();
                break;
            case 2: {
                const kmem::SlabStats s = c.stats();
                if (s.active_objs > s.num_objs || s.active_slabs > s.num_slabs ||
                    s.num_objs != s.num_slabs * s.objperslab)
                    bad_stats.fetch_add(1);
                break;
            }
            case 3:
                if (!c.validate().empty()) problems.fetch_add(1);
                break;
            case 4:
                if (kmem::slabinfo({c.stats()}).find("maintained") == std::string::npos)
                    problems.fetch_add(1);
                break;
            default: {
                const unsigned limit = static_cast<unsigned>(rng.between(1, 120));
                c.set_tunables(limit, static_cast<unsigned>(rng.between(1, limit)));
            }
            }
            std::this_thread::yield();
        }
    });
    for (auto& th : workers) th.join();
    stop.store(true);
    maintainer.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(bad_stats.load() == 0);
    BOOST_TEST(problems.load() == 0);
    expect_settled(buddy, c, start);
}

// ----- typed objects across threads -------------------------------------------------------------------------

struct Message {
    static inline std::atomic<int> alive{0};
    std::uint64_t tag;
    char text[48];
    explicit Message(std::uint64_t t) : tag(t), text{} {
        std::memcpy(text, &t, sizeof t);
        alive.fetch_add(1);
    }
    ~Message() { alive.fetch_sub(1); }
    bool intact() const {
        std::uint64_t t;
        std::memcpy(&t, text, sizeof t);
        return t == tag;
    }
};

} // namespace

BOOST_AUTO_TEST_SUITE(slab_threads)

BOOST_AUTO_TEST_CASE(threads_allocate_and_free_their_own_objects) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        own_objects<SpinBuddy, SpinCache>(seed);
        own_objects<MutexBuddy, MutexCache>(seed);
    }
}

BOOST_AUTO_TEST_CASE(objects_freed_by_other_threads) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        producers_and_consumers<SpinBuddy, SpinCache>(seed);
        producers_and_consumers<MutexBuddy, MutexCache>(seed);
    }
}

BOOST_AUTO_TEST_CASE(no_allocation_fails_while_memory_is_there) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        no_failure_with_room_to_spare<SpinBuddy, SpinCache>(seed);
        no_failure_with_room_to_spare<MutexBuddy, MutexCache>(seed);
    }
}

BOOST_AUTO_TEST_CASE(near_exhaustion_loses_nothing) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        near_exhaustion<SpinBuddy, SpinCache>(seed);
        near_exhaustion<MutexBuddy, MutexCache>(seed);
    }
}

BOOST_AUTO_TEST_CASE(maintenance_runs_beside_allocations) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        maintenance_while_working<SpinBuddy, SpinCache>(seed);
        maintenance_while_working<MutexBuddy, MutexCache>(seed);
    }
}

BOOST_AUTO_TEST_CASE(objects_parked_on_another_cpu_are_used_before_failing) {
    // Two CPUs this process may run on.
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    BOOST_REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
    std::vector<int> cpus;
    for (int i = 0; i < CPU_SETSIZE && cpus.size() < 2; ++i)
        if (CPU_ISSET(i, &allowed)) cpus.push_back(i);
    if (cpus.size() < 2) {
        BOOST_TEST_MESSAGE("fewer than two CPUs available: nothing to check");
        return;
    }
    // Runs f on a thread pinned to `cpu`.
    const auto on_cpu = [](int cpu, auto f) {
        std::thread t([&] {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            if (::pthread_setaffinity_np(::pthread_self(), sizeof one, &one) == 0) f();
        });
        t.join();
    };
    SpinBuddy buddy(kmem::MmapRegion(24 * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    SpinCache c(buddy, "parked", obj_size);
    std::size_t first = 0, second = 0;
    std::vector<void*> objs;
    // Fill the buddy from the first CPU, free everything there: up to `limit` objects stay in its array.
    on_cpu(cpus[0], [&] {
        while (void* p = c.alloc(gfp::atomic | gfp::nowarn)) objs.push_back(p);
        first = objs.size();
        for (void* p : objs) c.free(p);
        objs.clear();
    });
    const kmem::SlabStats parked = c.stats();
    // From the second CPU, the cache must hand out every object again, those parked on the first included.
    on_cpu(cpus[1], [&] {
        while (void* p = c.alloc(gfp::atomic | gfp::nowarn)) objs.push_back(p);
        second = objs.size();
    });
    BOOST_TEST_MESSAGE(first << " objects; " << parked.cpu_objs << " were parked in per-CPU arrays");
    BOOST_TEST(first > 0u);
    BOOST_TEST(parked.cpu_objs > 0u);
    BOOST_TEST(second == first);
    BOOST_TEST(std::set<void*>(objs.begin(), objs.end()).size() == objs.size());
    for (void* p : objs) c.free(p);
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
}

BOOST_AUTO_TEST_CASE(typed_objects_cross_threads) {
    MutexBuddy buddy(kmem::MmapRegion(4 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    kmem::SlabCache<Message, MutexBuddy, policy::MutexLock> cache(buddy, "messages");
    Queue q;
    std::atomic<int> corrupted{0}, failed{0};
    const std::uint64_t n = scaled(20'000);
    std::thread producer([&] {
        for (std::uint64_t i = 0; i < n; ++i) {
            Message* m = cache.construct(tag_of(0, i));
            if (m == nullptr) {
                failed.fetch_add(1);
                continue;
            }
            q.push({m, i});
        }
        q.close();
    });
    std::thread consumer([&] {
        Queue::Item item;
        while (q.pop(item)) {
            auto* m = static_cast<Message*>(item.p);
            if (!m->intact() || m->tag != tag_of(0, item.tag)) corrupted.fetch_add(1);
            cache.destroy(m);
        }
    });
    producer.join();
    consumer.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() == 0);
    BOOST_TEST(Message::alive.load() == 0);
    BOOST_TEST(cache.stats().active_objs == 0u);
    BOOST_TEST(cache.validate() == "");
    cache.shrink();
    BOOST_TEST(cache.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
}

BOOST_AUTO_TEST_SUITE_END()
