// Multi-threaded tests of kmem::Node (zones, watermarks, the slow path, shrinkers, kswapd and compaction).  CTest
// labels this file `threads` and CI runs it under ThreadSanitizer, so every case is bounded.  The nodes have two
// zones, ZONE_DMA32 (4 MiB) and ZONE_NORMAL (8 MiB), over MmapRegions; a MutexLock node takes gfp::kernel, a
// SpinLock node only gfp::atomic and gfp::nowait.
//
// - blocking: on an exhausted node a gfp::kernel | gfp::nofail request waits (past max_reclaim_retries rounds)
//   until another thread frees a page and then gets that very page; gfp::atomic, gfp::nowait and
//   gfp::kernel | gfp::noretry fail at once under the same pressure (far faster than the other thread's delay),
//   and once the page is freed (to the freeing thread's per-CPU list) a non-blocking request finds it;
// - shrinkers: direct reclaim calls a registered shrinker and the pages its scan_objects frees satisfy the
//   request; count_objects answering shrink_empty means scan_objects is never called and the request fails after
//   max_reclaim_retries waits (gfp::kernel, gfp::retry_mayfail) or at once (gfp::noretry); shrink_stop ends a
//   shrinker's scan loop; an unregistered shrinker is not called again;
// - kswapd: woken by wakeup_kswapd() or by a request that takes the slow path, it reclaims through the shrinkers
//   until the zone is at its high watermark, from its own thread; destroying the node stops it, even in the middle
//   of a balancing run;
// - stress: four threads allocate and free orders 0..3 with mixed zone flags (anywhere, ZONE_DMA32 only,
//   non-blocking) while together holding up to 90 % of the node, freeing each other's blocks through a queue;
//   every page is stamped and checked, ZONE_DMA32 requests get ZONE_DMA32 memory, stats().fallbacks counts exactly
//   the requests served from a lower zone; in the end every page is back and the zones' invariants hold;
// - no spurious failures: two threads that together hold at most what gfp::kernel may take (every zone less its
//   min watermark, no per-CPU slack) and keep moving between CPUs never see nullptr;
// - compaction: one thread allocates movable blocks and writes and checks them through pin(), another holds the
//   lowest block pinned, a third compacts after every step of the first; no content is ever lost, pinned blocks
//   never move and are counted in blocks_pinned.
//
// The seed is printed; KMEM_SEED=<n> repeats a run's choices.  KMEM_THREADS_SCALE=<percent> scales the work.
#include <kmem/gfp.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>
#include <kmem/zone.hpp>

#include "support/cpus.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace policy = kmem::policy;
using kmem::ZoneType;
using kmem::test::Xoshiro256;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::size_t page = 4096;
constexpr unsigned max_order = 10;
constexpr std::size_t MiB = std::size_t{1} << 20;

template <class Lock>
using NodeWith = kmem::Node<max_order, page,
                            kmem::Zones<kmem::ZoneSpec<ZoneType::dma32, kmem::MmapRegion>,
                                        kmem::ZoneSpec<ZoneType::normal, kmem::MmapRegion>>,
                            Lock, policy::ThrowOnError>;
using MutexNode = NodeWith<policy::MutexLock>;
using SpinNode = NodeWith<policy::SpinLock>;

// DMA32 4 MiB + NORMAL 8 MiB, each aligned to the largest block so that its layout is deterministic.
template <class N>
std::unique_ptr<N> make_node() {
    const kmem::MmapOptions aligned{.alignment = page << max_order};
    auto n = std::make_unique<N>(kmem::MmapRegion(4 * MiB, aligned), kmem::MmapRegion(8 * MiB, aligned));
    n->set_warning_stream(nullptr);
    return n;
}

std::uint64_t scaled(std::uint64_t n) {
    const char* env = std::getenv("KMEM_THREADS_SCALE");
    if (env == nullptr || *env == '\0') return n;
    return std::max<std::uint64_t>(100, n * std::strtoul(env, nullptr, 10) / 100);
}

using kmem::test::allowed_cpus;
using kmem::test::move_to;

std::string zone_str(std::optional<ZoneType> z) {
    return z ? std::string(kmem::zone_name(*z)) : std::string("none");
}

template <class T>
double ms(T d) {
    return std::chrono::duration<double, std::milli>(d).count();
}

// Every page of a block gets three words derived from the tag (first, middle, last); a block handed out twice, or
// moved without its contents, loses them.
void stamp_block(void* p, unsigned order, std::uint64_t tag) {
    auto* b = static_cast<unsigned char*>(p);
    for (std::size_t k = 0; k < (std::size_t{1} << order); ++k) {
        const std::uint64_t v = tag ^ (k * 0x9e3779b97f4a7c15ull);
        std::memcpy(b + k * page, &v, sizeof v);
        std::memcpy(b + k * page + page / 2, &v, sizeof v);
        std::memcpy(b + (k + 1) * page - sizeof v, &v, sizeof v);
    }
}
bool stamp_intact(const void* p, unsigned order, std::uint64_t tag) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t k = 0; k < (std::size_t{1} << order); ++k) {
        const std::uint64_t v = tag ^ (k * 0x9e3779b97f4a7c15ull);
        for (const std::size_t off : {k * page, k * page + page / 2, (k + 1) * page - sizeof v}) {
            std::uint64_t got;
            std::memcpy(&got, b + off, sizeof got);
            if (got != v) return false;
        }
    }
    return true;
}

struct Block {
    void* p;
    unsigned order;
};

// Sets every watermark of both zones to zero: then "exhausted" means no page free at all, for every request.
template <class N>
void zero_watermarks(N& node) {
    node.set_watermarks(ZoneType::dma32, {});
    node.set_watermarks(ZoneType::normal, {});
}

// Allocates until nothing is left for `flags`, largest blocks first; returns what it took.
template <class N, class F>
std::vector<Block> exhaust(N& node, F flags) {
    std::vector<Block> held;
    for (int o = static_cast<int>(max_order); o >= 0; --o)
        while (void* p = node.get_free_pages(flags, static_cast<unsigned>(o)))
            held.push_back({p, static_cast<unsigned>(o)});
    // The last block goes back and is taken again page by page, so that the last blocks held are single pages.
    if (!held.empty() && held.back().order != 0) {
        node.free_pages(held.back().p, held.back().order);
        held.pop_back();
        node.drain_all_pages();
        while (void* p = node.get_free_pages(flags, 0)) held.push_back({p, 0});
    }
    return held;
}

// The flags that fail fast on each node: gfp::kernel | gfp::noretry where the lock lets callers sleep.
template <class N>
constexpr auto try_flags() {
    if constexpr (N::may_sleep)
        return gfp::kernel | gfp::noretry | gfp::nowarn;
    else
        return gfp::atomic | gfp::nowarn;
}

// A page cache a shrinker can reclaim: order-0 pages taken from the node up front, freed by scan_objects.
template <class N>
struct PageCache {
    enum class Mode { normal, empty, stop, lazy };
    explicit PageCache(N& n) : node(n) {}

    // Takes `count` order-0 pages with `flags` (all must succeed); before the shrinker is registered.
    template <class F>
    void fill(std::size_t count, F flags) {
        std::vector<void*> got;
        for (std::size_t i = 0; i < count; ++i) {
            void* p = node.get_free_pages(flags, 0);
            if (p == nullptr) throw std::runtime_error("PageCache::fill: the node is out of memory");
            got.push_back(p);
        }
        std::lock_guard g(m); // not held while allocating: reclaim would call count_objects, which takes it
        pages.insert(pages.end(), got.begin(), got.end());
        origin.insert(got.begin(), got.end());
    }
    std::size_t size() {
        std::lock_guard g(m);
        return pages.size();
    }
    bool scanned_from_another_thread(std::thread::id me) {
        std::lock_guard g(m);
        return std::any_of(scanners.begin(), scanners.end(), [&](std::thread::id t) { return t != me; });
    }
    bool scanned_from(std::thread::id me) {
        std::lock_guard g(m);
        return scanners.count(me) != 0;
    }

    kmem::Shrinker shrinker(Mode mode, std::uint64_t batch = 16) {
        return kmem::Shrinker{"page-cache",
                              [this, mode](const kmem::ShrinkControl&) -> std::uint64_t {
                                  counts.fetch_add(1);
                                  if (mode == Mode::empty) return kmem::shrink_empty;
                                  if (mode == Mode::stop || mode == Mode::lazy)
                                      return 1000; // claims objects it never frees
                                  std::lock_guard g(m);
                                  return pages.size();
                              },
                              [this, mode](kmem::ShrinkControl& sc) -> std::uint64_t {
                                  scans.fetch_add(1);
                                  if (on_scan) on_scan();
                                  std::lock_guard g(m);
                                  scanners.insert(std::this_thread::get_id());
                                  if (mode == Mode::stop) return kmem::shrink_stop;
                                  if (mode == Mode::lazy) return 0;
                                  std::uint64_t n = 0;
                                  while (n < sc.nr_to_scan && !pages.empty()) {
                                      node.free_pages(pages.back(), 0);
                                      pages.pop_back();
                                      ++n;
                                  }
                                  freed.fetch_add(n);
                                  return n;
                              },
                              2, batch};
    }

    N& node;
    std::mutex m;
    std::vector<void*> pages;
    std::set<void*> origin;
    std::set<std::thread::id> scanners;
    std::function<void()> on_scan; // set before registering
    std::atomic<std::uint64_t> counts{0}, scans{0}, freed{0};
};

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(blocking)

// An exhausted node (watermarks zero, every page taken); a gfp::kernel | gfp::nofail order-0 request must wait for
// the page another thread frees -- at least 100 ms later, and only once the request has waited more than
// max_reclaim_retries times (stats().waits), so that a request that gives up like a plain gfp::kernel one would
// have returned nullptr -- and get exactly that page.
BOOST_AUTO_TEST_CASE(nofail_waits_until_another_thread_frees) {
    auto node = make_node<MutexNode>();
    zero_watermarks(*node);
    std::vector<Block> held = exhaust(*node, try_flags<MutexNode>());
    BOOST_REQUIRE(node->nr_free_and_pcp_pages() == 0u);
    BOOST_REQUIRE(held.back().order == 0u);
    const Block victim = held.back();
    held.pop_back();
    std::vector<Block> spares(held.end() - 8, held.end()); // order-0 pages a rescue may free
    held.resize(held.size() - 8);
    for (const Block& b : spares) BOOST_REQUIRE(b.order == 0u);

    const auto before = node->stats();
    std::atomic<bool> freed{false}, done{false}, rescued{false}, spares_freed{false};
    std::thread freer([&] {
        std::this_thread::sleep_for(100ms);
        for (const auto give_up = Clock::now() + 20s;
             node->stats().waits - before.waits <= MutexNode::max_reclaim_retries && !done.load() &&
             Clock::now() < give_up;)
            std::this_thread::sleep_for(1ms);
        freed.store(true);
        node->free_pages(victim.p, 0);
        // A watchdog: a request that misses the freed page would wait forever; rescue it (drain the per-CPU lists,
        // then free more pages) so that the case fails instead of hanging.
        const auto deadline = Clock::now() + 20s;
        while (!done.load() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
        if (done.load()) return;
        rescued.store(true);
        node->drain_all_pages();
        std::this_thread::sleep_for(1s);
        if (done.load()) return;
        spares_freed.store(true);
        for (const Block& b : spares) node->free_pages(b.p, b.order);
    });
    const auto t0 = Clock::now();
    void* p = node->get_free_pages(gfp::kernel | gfp::nofail, 0);
    const auto waited = Clock::now() - t0;
    const bool saw_free = freed.load();
    done.store(true);
    freer.join();
    const auto after = node->stats();
    BOOST_TEST_MESSAGE("gfp::nofail waited " << ms(waited) << " ms, " << (after.waits - before.waits)
                                             << " waits");
    BOOST_TEST(p != nullptr);
    BOOST_TEST(saw_free);        // it did not return before the free
    BOOST_TEST(!rescued.load()); // the freed page was enough
    BOOST_TEST(p == victim.p);   // the only free page
    BOOST_TEST(ms(waited) >= 90.0);
    BOOST_TEST(after.waits - before.waits > MutexNode::max_reclaim_retries);
    BOOST_TEST(after.failures == before.failures);
    BOOST_TEST(after.slowpath > before.slowpath);

    if (p != nullptr) node->free_pages(p, 0);
    if (!spares_freed.load())
        for (const Block& b : spares) node->free_pages(b.p, b.order);
    for (const Block& b : held) node->free_pages(b.p, b.order);
    node->drain_all_pages();
    BOOST_TEST(node->nr_free_pages() == node->total_pages());
    BOOST_TEST(node->check_invariants() == "");
}

// Under the same pressure, requests that may not sleep fail at once: far faster than the 500 ms after which
// another thread frees a page, and without waiting.  Once that page is freed (onto the freeing thread's per-CPU
// list), a gfp::atomic request finds it: the slow path drains the per-CPU lists.
template <class N>
void non_blocking_requests_fail_at_once() {
    auto node = make_node<N>();
    zero_watermarks(*node);
    std::vector<Block> held = exhaust(*node, try_flags<N>());
    BOOST_REQUIRE(node->nr_free_and_pcp_pages() == 0u);
    BOOST_REQUIRE(held.back().order == 0u);
    const Block victim = held.back();
    held.pop_back();

    const auto before = node->stats();
    constexpr auto delay = 500ms;
    std::atomic<bool> freed{false};
    std::latch started(1);
    std::thread freer([&] {
        started.count_down();
        std::this_thread::sleep_for(delay);
        freed.store(true);
        node->free_pages(victim.p, 0);
    });
    started.wait();
    const auto t0 = Clock::now();
    void* a = node->get_free_pages(gfp::atomic | gfp::nowarn, 0);
    void* b = node->get_free_pages(gfp::nowait | gfp::nowarn, 0);
    void* c = node->get_free_pages(gfp::atomic | gfp::dma32 | gfp::nowarn, 0);
    void* d = nullptr;
    if constexpr (N::may_sleep) d = node->get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0);
    const auto took = Clock::now() - t0;
    const bool early = !freed.load();
    const auto mid = node->stats();
    freer.join();
    BOOST_TEST_MESSAGE("four failing requests took " << ms(took) << " ms");
    BOOST_TEST(a == nullptr);
    BOOST_TEST(b == nullptr);
    BOOST_TEST(c == nullptr);
    BOOST_TEST(d == nullptr);
    BOOST_TEST(early);
    BOOST_TEST(ms(took) < ms(delay) / 2);
    BOOST_TEST(mid.waits == before.waits);
    BOOST_TEST(mid.failures == before.failures + (N::may_sleep ? 4u : 3u));

    // The freed page sits on the freer's per-CPU list: still a free page for a request that cannot sleep.
    BOOST_TEST(node->nr_free_and_pcp_pages() == 1u);
    void* e = node->get_free_pages(gfp::atomic | gfp::nowarn, 0);
    BOOST_TEST(e == victim.p);
    if (e != nullptr) node->free_pages(e, 0);
    for (const Block& blk : held) node->free_pages(blk.p, blk.order);
    node->drain_all_pages();
    BOOST_TEST(node->nr_free_pages() == node->total_pages());
    BOOST_TEST(node->check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(non_blocking_requests_fail_at_once_with_a_mutex) {
    non_blocking_requests_fail_at_once<MutexNode>();
}

BOOST_AUTO_TEST_CASE(non_blocking_requests_fail_at_once_with_a_spin_lock) {
    non_blocking_requests_fail_at_once<SpinNode>();
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(shrinkers)

// Direct reclaim on an exhausted node: the shrinker's pages come back and one of them serves the request.
BOOST_AUTO_TEST_CASE(direct_reclaim_frees_through_the_shrinker) {
    auto node = make_node<MutexNode>();
    zero_watermarks(*node);
    PageCache<MutexNode> cache(*node);
    cache.fill(256, gfp::kernel);
    std::vector<Block> held = exhaust(*node, try_flags<MutexNode>());
    BOOST_REQUIRE(node->nr_free_and_pcp_pages() == 0u);
    const std::uint64_t id = node->register_shrinker(cache.shrinker(PageCache<MutexNode>::Mode::normal));

    const auto before = node->stats();
    void* p = node->get_free_pages(gfp::kernel, 0);
    const auto after = node->stats();
    BOOST_TEST(p != nullptr);
    BOOST_TEST(cache.origin.count(p) == 1u); // one of the pages the shrinker gave back
    BOOST_TEST(cache.scans.load() > 0u);
    BOOST_TEST(
        cache.scanned_from(std::this_thread::get_id())); // direct reclaim runs in the allocating thread
    BOOST_TEST(cache.freed.load() > 0u);
    BOOST_TEST(cache.size() == 256u - cache.freed.load());
    BOOST_TEST(after.direct_reclaim > before.direct_reclaim);
    BOOST_TEST(after.reclaimed_pages - before.reclaimed_pages == cache.freed.load());
    BOOST_TEST(after.waits == before.waits); // the first pass made progress
    BOOST_TEST(after.failures == before.failures);
    BOOST_TEST(node->nr_free_and_pcp_pages() == cache.freed.load() - 1);

    // Unregistered, it is never called again.
    BOOST_TEST(node->unregister_shrinker(id));
    BOOST_TEST(!node->unregister_shrinker(id));
    const std::uint64_t counts = cache.counts.load();
    node->shrink_slab(0);
    BOOST_TEST(node->reclaim(64) == 0u);
    BOOST_TEST(cache.counts.load() == counts);

    node->free_pages(p, 0);
    for (void* q : cache.pages) node->free_pages(q, 0);
    for (const Block& b : held) node->free_pages(b.p, b.order);
    node->drain_all_pages();
    BOOST_TEST(node->nr_free_pages() == node->total_pages());
    BOOST_TEST(node->check_invariants() == "");
}

// count_objects answering shrink_empty: scan_objects is never called; gfp::noretry fails after one pass without
// waiting, gfp::kernel and gfp::retry_mayfail after max_reclaim_retries waits each.
BOOST_AUTO_TEST_CASE(shrink_empty_is_never_scanned) {
    auto node = make_node<MutexNode>();
    zero_watermarks(*node);
    PageCache<MutexNode> cache(*node);
    cache.fill(64, gfp::kernel);
    std::vector<Block> held = exhaust(*node, try_flags<MutexNode>());
    BOOST_REQUIRE(node->nr_free_and_pcp_pages() == 0u);
    const std::uint64_t id = node->register_shrinker(cache.shrinker(PageCache<MutexNode>::Mode::empty));

    auto s0 = node->stats();
    BOOST_TEST(node->get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0) == nullptr);
    auto s1 = node->stats();
    BOOST_TEST(s1.waits == s0.waits);
    BOOST_TEST(s1.failures == s0.failures + 1);
    BOOST_TEST(cache.counts.load() > 0u);

    const auto t0 = Clock::now();
    BOOST_TEST(node->get_free_pages(gfp::kernel | gfp::nowarn, 0) == nullptr);
    auto s2 = node->stats();
    BOOST_TEST(s2.waits - s1.waits == MutexNode::max_reclaim_retries);
    BOOST_TEST(node->get_free_pages(gfp::kernel | gfp::retry_mayfail | gfp::nowarn, 0) == nullptr);
    auto s3 = node->stats();
    BOOST_TEST_MESSAGE("two bounded retries took " << ms(Clock::now() - t0) << " ms");
    BOOST_TEST(s3.waits - s2.waits == MutexNode::max_reclaim_retries);
    BOOST_TEST(s3.failures == s1.failures + 2);
    BOOST_TEST(s3.direct_reclaim - s1.direct_reclaim >= 2u * (MutexNode::max_reclaim_retries + 1));
    BOOST_TEST(cache.counts.load() >= 2u * (MutexNode::max_reclaim_retries + 1));
    BOOST_TEST(cache.scans.load() == 0u);
    BOOST_TEST(cache.size() == 64u);
    BOOST_TEST(node->unregister_shrinker(id)); // kswapd must not call it once `cache` is gone

    for (void* q : cache.pages) node->free_pages(q, 0);
    for (const Block& b : held) node->free_pages(b.p, b.order);
    node->drain_all_pages();
    BOOST_TEST(node->nr_free_pages() == node->total_pages());
}

// shrink_stop ends a shrinker's scan loop: a shrinker claiming 1000 objects with batch 1 is scanned once per
// count at priority 0, where one that answers 0 ("nothing freed, go on") is scanned many times.  Run from two
// threads at once through shrink_slab() and through direct reclaim.
BOOST_AUTO_TEST_CASE(shrink_stop_stops_scanning) {
    auto node = make_node<MutexNode>();
    zero_watermarks(*node);
    PageCache<MutexNode> stopper(*node), lazy(*node);
    const std::uint64_t stop_id =
        node->register_shrinker(stopper.shrinker(PageCache<MutexNode>::Mode::stop, 1));
    const std::uint64_t lazy_id = node->register_shrinker(lazy.shrinker(PageCache<MutexNode>::Mode::lazy, 1));
    node->shrink_slab(0);
    BOOST_TEST(stopper.counts.load() == 1u);
    BOOST_TEST(stopper.scans.load() == 1u);
    BOOST_TEST(lazy.counts.load() == 1u);
    BOOST_TEST(lazy.scans.load() >= 100u);
    BOOST_TEST(node->unregister_shrinker(lazy_id));

    std::vector<Block> held = exhaust(*node, try_flags<MutexNode>());
    BOOST_REQUIRE(node->nr_free_and_pcp_pages() == 0u);
    const std::uint64_t c0 = stopper.counts.load(), s0 = stopper.scans.load();
    std::thread other([&] {
        for (int i = 0; i < 20; ++i) node->shrink_slab(i % 13);
    });
    for (int i = 0; i < 4; ++i)
        BOOST_TEST(node->get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0) == nullptr);
    other.join();
    const std::uint64_t counts = stopper.counts.load() - c0, scans = stopper.scans.load() - s0;
    BOOST_TEST(counts >= 4u * 13u + 20u); // every priority of every pass asked
    BOOST_TEST(scans > 0u);
    BOOST_TEST(scans <= counts); // never more than one scan per count
    BOOST_TEST(node->unregister_shrinker(stop_id));
    for (const Block& b : held) node->free_pages(b.p, b.order);
    node->drain_all_pages();
    BOOST_TEST(node->nr_free_pages() == node->total_pages());
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(kswapd)

namespace {

// ZONE_NORMAL watermarks 32 / 128 / 512, ZONE_DMA32 zero; the cache holds 1024 pages of ZONE_NORMAL, ZONE_DMA32
// is taken entirely and ZONE_NORMAL is taken down to 64 free pages (below low, above min).  Returns what the test
// holds besides the cache.
std::vector<Block> below_low(MutexNode& node, PageCache<MutexNode>& cache) {
    node.set_watermarks(ZoneType::dma32, {});
    node.set_watermarks(ZoneType::normal, {32, 128, 512});
    cache.fill(1024, gfp::kernel);
    for (void* p : cache.pages)
        if (node.zone_of(p) != ZoneType::normal)
            throw std::runtime_error("a cache page is not in ZONE_NORMAL");
    std::vector<Block> held = exhaust(node, gfp::kernel | gfp::dma32 | gfp::noretry | gfp::nowarn);
    auto& normal = node.zone_allocator_of<ZoneType::normal>();
    node.drain_all_pages();
    while (normal.nr_free_pages() > 64) {
        void* p = node.get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0);
        if (p == nullptr || node.zone_of(p) != ZoneType::normal)
            throw std::runtime_error("could not take ZONE_NORMAL below its low watermark");
        held.push_back({p, 0});
        node.drain_all_pages();
    }
    node.wait_kswapd_idle(); // woken by the requests above, it must not see the shrinker registered next
    return held;
}

} // namespace

BOOST_AUTO_TEST_CASE(wakeup_kswapd_reclaims_up_to_the_high_watermark) {
    auto node = make_node<MutexNode>();
    BOOST_TEST(!node->kswapd_running()); // started on the first wake-up only
    PageCache<MutexNode> cache(*node);
    std::vector<Block> held = below_low(*node, cache);
    node->register_shrinker(cache.shrinker(PageCache<MutexNode>::Mode::normal));
    const auto before = node->stats();

    node->wakeup_kswapd();
    node->wait_kswapd_idle();
    const auto after = node->stats();
    auto& normal = node->zone_allocator_of<ZoneType::normal>();
    BOOST_TEST(node->kswapd_running());
    BOOST_TEST(after.kswapd_wakeups > before.kswapd_wakeups);
    BOOST_TEST(after.kswapd_reclaimed > before.kswapd_reclaimed);
    BOOST_TEST(after.direct_reclaim == before.direct_reclaim);
    BOOST_TEST(normal.nr_free_pages() >= node->watermarks(ZoneType::normal).high);
    BOOST_TEST(cache.freed.load() >= 512u - 64u);
    BOOST_TEST(cache.size() > 0u); // it stopped at the watermark, not when the cache ran dry
    BOOST_TEST(cache.scanned_from_another_thread(std::this_thread::get_id()));
    BOOST_TEST(!cache.scanned_from(std::this_thread::get_id()));

    // Balanced now: another wake-up finds nothing to do.
    const std::uint64_t scans = cache.scans.load();
    node->wakeup_kswapd();
    node->wait_kswapd_idle();
    BOOST_TEST(cache.scans.load() == scans);

    // Destroying the node stops the thread.
    const auto t0 = Clock::now();
    node.reset();
    BOOST_TEST(ms(Clock::now() - t0) < 5000.0);
}

// A gfp::kernel request that finds every zone below its low watermark takes the slow path, wakes kswapd and is
// served above the min watermark without direct reclaim; kswapd then balances the zone.
BOOST_AUTO_TEST_CASE(slow_path_wakes_kswapd) {
    auto node = make_node<MutexNode>();
    PageCache<MutexNode> cache(*node);
    std::vector<Block> held = below_low(*node, cache);
    node->register_shrinker(cache.shrinker(PageCache<MutexNode>::Mode::normal));
    const auto before = node->stats();

    void* p = node->get_free_pages(gfp::kernel, 0);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(zone_str(node->zone_of(p)) == "Normal");
    node->wait_kswapd_idle();
    const auto after = node->stats();
    BOOST_TEST(node->kswapd_running());
    BOOST_TEST(after.slowpath > before.slowpath);
    BOOST_TEST(after.kswapd_wakeups > before.kswapd_wakeups);
    BOOST_TEST(after.direct_reclaim == before.direct_reclaim);
    BOOST_TEST(after.kswapd_reclaimed > 0u);
    BOOST_TEST(node->zone_allocator_of<ZoneType::normal>().nr_free_pages() >=
               node->watermarks(ZoneType::normal).high);
    BOOST_TEST(cache.scanned_from_another_thread(std::this_thread::get_id()));

    const auto t0 = Clock::now();
    node.reset();
    BOOST_TEST(ms(Clock::now() - t0) < 5000.0);
}

// The node is destroyed while kswapd is inside a shrinker: the destructor waits for that scan, and kswapd does not
// go on to the next priority (the cache keeps most of its pages although the zone is far below high).
BOOST_AUTO_TEST_CASE(destroying_the_node_stops_a_busy_kswapd) {
    auto node = make_node<MutexNode>();
    PageCache<MutexNode> cache(*node);
    std::vector<Block> held = below_low(*node, cache);
    node->set_watermarks(ZoneType::normal, {32, 128, 2000}); // out of reach: kswapd would reclaim everything
    std::atomic<bool> entered{false}, release{false};
    cache.on_scan = [&] {
        entered.store(true);
        const auto deadline = Clock::now() + 20s;
        while (!release.load() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
    };
    node->register_shrinker(cache.shrinker(PageCache<MutexNode>::Mode::normal));
    node->wakeup_kswapd();
    const auto deadline = Clock::now() + 20s;
    while (!entered.load() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
    BOOST_REQUIRE(entered.load());

    std::thread releaser([&] {
        std::this_thread::sleep_for(200ms); // the destructor has asked kswapd to stop by then
        release.store(true);
    });
    const auto t0 = Clock::now();
    node.reset();
    const auto took = Clock::now() - t0;
    releaser.join();
    BOOST_TEST_MESSAGE("destruction took " << ms(took) << " ms; the cache kept " << cache.size() << " pages");
    BOOST_TEST(ms(took) >= 150.0); // it waited for the shrinker
    BOOST_TEST(ms(took) < 10000.0);
    BOOST_TEST(cache.size() > 512u);
    cache.pages.clear(); // the node and its memory are gone
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(stress)

namespace {

constexpr unsigned nthreads = 4;
constexpr std::size_t max_queued = 32; // blocks in transit between threads

struct Held {
    void* p;
    unsigned order;
    std::uint64_t tag;
};

// Four threads allocate orders 0..3 with three kinds of flags (anywhere, ZONE_DMA32 only, non-blocking) while
// together asking for more than the node holds; a quarter of the blocks are freed by another thread (through a
// mutex-protected queue).  Every page is stamped and checked before its free; a ZONE_DMA32 request must get
// ZONE_DMA32 memory.
template <class N>
void stress(std::uint64_t seed) {
    auto node = make_node<N>();
    const std::uint64_t iterations = scaled(60'000);
    // Each thread holds at most a quarter of 90 % of the node's pages, so ZONE_NORMAL runs down to its watermarks
    // and requests fall back to ZONE_DMA32 all the time, which runs short for ZONE_DMA32 requests now and then.
    // (Much more and every thread would wait in the slow path at once, each failure costing max_reclaim_retries
    // waits.)
    const std::uint64_t budget = node->total_pages() * 90 / 100 / nthreads;
    std::mutex qm;
    std::deque<Held> queue;
    std::atomic<std::uint64_t> corrupted{0}, wrong_zone{0}, failed{0}, allocated{0}, passed{0}, fell_back{0};
    std::atomic<std::uint64_t> in_use{0}, peak{0}; // pages the threads hold (not counting the queue)
    std::atomic<unsigned> finished{0};
    std::latch go(nthreads);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t) {
        threads.emplace_back([&, t] {
            Xoshiro256 rng(seed + t);
            std::vector<Held> held;
            std::uint64_t seq = 0, pages = 0;
            const auto release = [&](const Held& h) {
                if (!stamp_intact(h.p, h.order, h.tag)) corrupted.fetch_add(1);
                node->free_pages(h.p, h.order);
            };
            go.arrive_and_wait();
            // Each thread goes on until every thread has done its share, so that all four overlap.
            for (std::uint64_t i = 0; i < iterations || finished.load() < nthreads; ++i) {
                if (i == iterations) finished.fetch_add(1);
                const std::uint64_t r = rng.below(100);
                const auto order = static_cast<unsigned>(rng.below(4));
                if (r < 50 && pages + (1u << order) <= budget) {
                    const std::uint64_t k = rng.below(100); // 45 % anywhere, 15 % ZONE_DMA32, 40 % atomic
                    const unsigned kind = k < 45 ? 0u : k < 60 ? 1u : 2u;
                    void* p = nullptr;
                    if constexpr (N::may_sleep) {
                        if (kind == 0) p = node->get_free_pages(gfp::kernel | gfp::nowarn, order);
                        if (kind == 1)
                            p = node->get_free_pages(gfp::kernel | gfp::dma32 | gfp::nowarn, order);
                    } else {
                        if (kind == 0) p = node->get_free_pages(gfp::nowait | gfp::nowarn, order);
                        if (kind == 1)
                            p = node->get_free_pages(gfp::atomic | gfp::dma32 | gfp::nowarn, order);
                    }
                    if (kind == 2) p = node->get_free_pages(gfp::atomic | gfp::nowarn, order);
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    allocated.fetch_add(1);
                    const auto z = node->zone_of(p);
                    if (!z || (kind == 1 && *z != ZoneType::dma32)) wrong_zone.fetch_add(1);
                    if (kind != 1 && z == ZoneType::dma32) fell_back.fetch_add(1);
                    const std::uint64_t tag = (std::uint64_t{t + 1} << 56) | (++seq << 4) | order;
                    stamp_block(p, order, tag);
                    held.push_back({p, order, tag});
                    pages += std::uint64_t{1} << order;
                    const std::uint64_t now = in_use.fetch_add(std::uint64_t{1} << order) + (1u << order);
                    for (std::uint64_t m = peak.load(); now > m && !peak.compare_exchange_weak(m, now);) {
                    }
                } else if (r < 90 && !held.empty()) {
                    const std::size_t k = rng.below(held.size());
                    const Held h = held[k];
                    held[k] = held.back();
                    held.pop_back();
                    pages -= std::uint64_t{1} << h.order;
                    in_use.fetch_sub(std::uint64_t{1} << h.order);
                    if (!stamp_intact(h.p, h.order, h.tag)) corrupted.fetch_add(1);
                    bool queued = false;
                    if (rng.percent(25)) { // another thread frees it
                        std::lock_guard g(qm);
                        if (queue.size() < max_queued) {
                            queue.push_back(h);
                            queued = true;
                        }
                    }
                    if (queued)
                        passed.fetch_add(1);
                    else
                        release(h);
                } else {
                    std::optional<Held> h;
                    {
                        std::lock_guard g(qm);
                        if (!queue.empty()) {
                            h = queue.front();
                            queue.pop_front();
                        }
                    }
                    if (h) release(*h);
                }
            }
            for (const Held& h : held) {
                in_use.fetch_sub(std::uint64_t{1} << h.order);
                release(h);
            }
        });
    }
    for (auto& th : threads) th.join();
    for (const Held& h : queue) {
        if (!stamp_intact(h.p, h.order, h.tag)) corrupted.fetch_add(1);
        node->free_pages(h.p, h.order);
    }
    BOOST_TEST_MESSAGE("allocations " << allocated.load() << ", failures " << failed.load()
                                      << ", freed by another thread " << passed.load());
    BOOST_TEST(corrupted.load() == 0u);
    BOOST_TEST(wrong_zone.load() == 0u);
    BOOST_TEST(allocated.load() > nthreads * iterations / 4);
    BOOST_TEST(passed.load() > 0u);
    node->drain_all_pages();
    BOOST_TEST(node->nr_free_pages() == node->total_pages());
    BOOST_TEST(node->check_invariants() == "");
    const auto s = node->stats();
    BOOST_TEST(s.allocations >= allocated.load());
    BOOST_TEST(s.failures == failed.load());
    BOOST_TEST_MESSAGE("peak " << peak.load() << " of " << node->total_pages() << " pages held; fallbacks "
                               << s.fallbacks << ", slow path " << s.slowpath);
    BOOST_TEST(s.fallbacks == fell_back.load()); // requests for ZONE_NORMAL served from ZONE_DMA32
    if (iterations >= 6000) { // enough to get there (a KMEM_THREADS_SCALE of a few percent may not be)
        BOOST_TEST(peak.load() >= node->total_pages() * 85 / 100); // it did run near exhaustion
        BOOST_TEST(s.fallbacks > 0u);
    }
}

} // namespace

BOOST_AUTO_TEST_CASE(four_threads_near_exhaustion_with_a_mutex) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        stress<MutexNode>(seed);
    }
}

BOOST_AUTO_TEST_CASE(four_threads_near_exhaustion_with_a_spin_lock) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        stress<SpinNode>(seed ^ 0x5b1d);
    }
}

// Two threads that together hold at most what gfp::kernel may take (every zone's pages less its min watermark)
// never see a gfp::kernel request fail: a thread asks only while it holds less than its half, so a page is free
// above the watermarks somewhere -- maybe parked on the per-CPU list of a CPU the other thread (or this one) has
// left, which the slow path drains, or in the middle of the other thread's free, which a retry finds.  No per-CPU
// slack is subtracted: parked pages are free memory.  Both threads stay at the edge and move between CPUs.
BOOST_AUTO_TEST_CASE(gfp_kernel_fails_only_when_memory_is_gone) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        auto node = make_node<MutexNode>();
        const std::uint64_t usable = node->total_pages() - node->watermarks(ZoneType::dma32).min -
                                     node->watermarks(ZoneType::normal).min;
        const std::size_t cap = static_cast<std::size_t>(usable / 2);
        const std::uint64_t rounds = scaled(2000);
        std::atomic<std::uint64_t> failed{0}, corrupted{0}, allocated{0};
        std::atomic<unsigned> finished{0};
        const std::vector<int> cpus = allowed_cpus();
        std::latch go(2);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < 2; ++t) {
            threads.emplace_back([&, t] {
                Xoshiro256 rng(seed + 17 * t);
                std::vector<Held> held;
                std::uint64_t seq = 0;
                go.arrive_and_wait();
                for (std::uint64_t round = 0; round < rounds || finished.load() < 2; ++round) {
                    if (round == rounds) finished.fetch_add(1);
                    // A migration now and then leaves the pages this thread freed on a CPU it no longer runs on.
                    if (round % 4 == 0 && cpus.size() > 1) move_to(cpus[rng.below(cpus.size())]);
                    // Up to the cap (or just below), then give back a few pages: both threads stay at the edge.
                    const std::size_t target = rng.percent(50) ? cap : cap - rng.below(cap / 8);
                    while (held.size() < target) {
                        void* p = node->get_free_pages(gfp::kernel | gfp::nowarn, 0);
                        if (p == nullptr) {
                            failed.fetch_add(1);
                            break;
                        }
                        allocated.fetch_add(1);
                        const std::uint64_t tag = (std::uint64_t{t + 1} << 56) | ++seq;
                        stamp_block(p, 0, tag);
                        held.push_back({p, 0, tag});
                    }
                    const std::size_t drop = 1 + rng.below(cap / 16);
                    for (std::size_t k = 0; k < drop && !held.empty(); ++k) {
                        const std::size_t j = rng.below(held.size());
                        if (!stamp_intact(held[j].p, 0, held[j].tag)) corrupted.fetch_add(1);
                        node->free_pages(held[j].p, 0);
                        held[j] = held.back();
                        held.pop_back();
                    }
                }
                for (const Held& h : held) node->free_pages(h.p, 0);
            });
        }
        for (auto& th : threads) th.join();
        BOOST_TEST_MESSAGE("cap " << cap << " pages per thread of " << usable << " usable; allocations "
                                  << allocated.load() << ", waits " << node->stats().waits);
        BOOST_TEST(failed.load() == 0u);
        BOOST_TEST(corrupted.load() == 0u);
        BOOST_TEST(node->stats().failures == 0u);
        node->drain_all_pages();
        BOOST_TEST(node->nr_free_pages() == node->total_pages());
        BOOST_TEST(node->check_invariants() == "");
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(compaction)

namespace {

struct Movable {
    kmem::MovableHandle h;
    unsigned order;
    std::uint64_t tag;
};

} // namespace

// One thread (the test's) allocates and frees movable blocks and writes and checks them through pin(); another
// holds the first block -- the lowest of ZONE_NORMAL, so the first every compaction of the zone looks at -- pinned
// for a while and checks that it neither moves nor changes; a third compacts without pause.  Afterwards every
// block reads back intact through pin(), with every live block pinned a compaction moves nothing and counts every
// one, and unpinned they move and still read back intact.
BOOST_AUTO_TEST_CASE(compaction_concurrent_with_pins) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        auto node = make_node<MutexNode>();
        MutexNode& n = *node;
        constexpr auto mflags = gfp::kernel | gfp::movable | gfp::nowarn;
        Xoshiro256 rng(seed);
        std::vector<Movable> live;
        std::uint64_t seq = 0;
        const auto write = [&](const Movable& m) {
            auto pin = n.pin(m.h);
            stamp_block(pin.get(), m.order, m.tag);
        };
        const auto intact = [&](const Movable& m) {
            auto pin = n.pin(m.h);
            return pin.get() != nullptr && stamp_intact(pin.get(), m.order, m.tag);
        };

        const Movable first{n.alloc_movable(mflags, 0), 0, ++seq};
        BOOST_REQUIRE(static_cast<bool>(first.h));
        BOOST_REQUIRE(n.movable_address(first.h) ==
                      static_cast<void*>(n.zone_allocator_of<ZoneType::normal>().region().data()));
        write(first);

        std::atomic<bool> stop{false}, pinned{false}, pinner_done{false};
        std::atomic<std::uint64_t> passes{0}, pages_moved{0}, blocks_pinned{0}, pinner_bad{0};
        // Pinned before compaction starts (or the first pass would move it up), through at least 20 passes (each
        // compact() visits it first and counts it).
        auto first_pin = n.pin(first.h);
        std::thread pinner([&, pin = std::move(first_pin)] {
            pinned.store(true);
            void* const at = pin.get();
            const std::uint64_t start = passes.load();
            const auto deadline = Clock::now() + 20s;
            while (passes.load() < start + 20 && Clock::now() < deadline) {
                if (!stamp_intact(at, first.order, first.tag)) pinner_bad.fetch_add(1);
                if (n.movable_address(first.h) != at) pinner_bad.fetch_add(1);
                std::this_thread::sleep_for(50us);
            }
            if (passes.load() < start + 20) pinner_bad.fetch_add(1000);
            pinner_done.store(true);
        });

        std::atomic<std::uint64_t> steps_done{0};
        std::thread compactor([&] {
            // A pass after each step of the mutator (compaction holds the movable table's lock; back to back
            // passes would starve alloc_movable and free_movable).
            std::uint64_t last = 0;
            while (!stop.load()) {
                if (steps_done.load() == last) {
                    std::this_thread::yield();
                    continue;
                }
                last = steps_done.load();
                const kmem::CompactResult r =
                    passes.load() % 4 == 3 ? n.compact_zone(ZoneType::normal, 2) : n.compact();
                pages_moved.fetch_add(r.pages_moved);
                blocks_pinned.fetch_add(r.blocks_pinned);
                passes.fetch_add(1);
            }
        });
        std::uint64_t bad = 0, moved_under_pin = 0;
        const std::uint64_t steps = scaled(20'000);
        for (std::uint64_t i = 0; i < steps || !pinner_done.load(); steps_done.store(++i)) {
            const std::uint64_t r = rng.below(100);
            if (r < 45 && live.size() < 400) {
                const auto order = static_cast<unsigned>(rng.below(3));
                const kmem::MovableHandle h = n.alloc_movable(mflags, order);
                if (!h) continue;
                live.push_back({h, order, (++seq << 4) | order});
                write(live.back());
            } else if (r < 85 && !live.empty()) {
                const std::size_t k = rng.below(live.size());
                if (!intact(live[k])) ++bad;
                n.free_movable(live[k].h);
                live[k] = live.back();
                live.pop_back();
            } else if (!live.empty()) { // hold a pin across a few yields: the block stays put and intact
                const Movable& m = live[rng.below(live.size())];
                auto pin = n.pin(m.h);
                void* const at = pin.get();
                if (at == nullptr || !stamp_intact(at, m.order, m.tag)) ++bad;
                for (int y = 0; y < 3; ++y) std::this_thread::yield();
                if (n.movable_address(m.h) != at) ++moved_under_pin;
                if (at != nullptr && !stamp_intact(at, m.order, m.tag)) ++bad;
            }
        }
        pinner.join();
        stop.store(true);
        compactor.join();
        BOOST_TEST_MESSAGE(passes.load() << " compaction passes moved " << pages_moved.load() << " pages; "
                                         << blocks_pinned.load() << " pinned blocks skipped");
        BOOST_TEST(pinned.load());
        BOOST_TEST(pinner_bad.load() == 0u);
        BOOST_TEST(bad == 0u);
        BOOST_TEST(moved_under_pin == 0u);
        BOOST_TEST(passes.load() >= 20u);
        BOOST_TEST(pages_moved.load() > 0u);
        BOOST_TEST(blocks_pinned.load() >= 10u); // the first block, once per compact() pass while pinned
        live.push_back(first);
        for (const Movable& m : live) BOOST_TEST(intact(m));

        // Everything pinned: nothing moves, every block is counted.
        {
            std::vector<MutexNode::Pin> pins;
            std::vector<void*> at;
            for (const Movable& m : live) {
                pins.push_back(n.pin(m.h));
                at.push_back(pins.back().get());
            }
            const kmem::CompactResult r = n.compact();
            BOOST_TEST(r.blocks_moved == 0u);
            BOOST_TEST(r.pages_moved == 0u);
            BOOST_TEST(r.blocks_pinned == live.size());
            for (std::size_t k = 0; k < live.size(); ++k) BOOST_TEST(n.movable_address(live[k].h) == at[k]);
        }
        // Unpinned: compaction packs them and they read back intact.
        n.compact();
        for (const Movable& m : live) BOOST_TEST(intact(m));
        BOOST_TEST(n.nr_movable() == live.size());
        for (const Movable& m : live) n.free_movable(m.h);
        n.drain_all_pages();
        BOOST_TEST(n.nr_free_pages() == n.total_pages());
        BOOST_TEST(n.check_invariants() == "");
    }
}

BOOST_AUTO_TEST_SUITE_END()
