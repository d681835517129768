// Benchmarks for kmem::MemPool (mm/mempool.c): what the reserve costs in front of its source.
//
// Every figure is the median over repetitions of the real time per alloc+free pair, in nanoseconds, and each
// pool case is compared with the bare source measured in the same run:
//   * a page pool (PagePool, order 0) over a BuddyAllocator with per-CPU page lists, and over a plain one
//     (every order-0 pair splits and merges ten levels), against alloc_pages / free_pages on the same buddy;
//   * a pool over a malloc-backed custom source (256-byte elements), against malloc / free;
//   * each pool with policy::NoLock, policy::MutexLock (the default) and policy::SpinLock: on the fast path
//     (the source serves, the reserve is full) no lock is taken, so these differ only in how elements out are
//     counted (a plain count; per-CPU counts, changed in a restartable sequence where rseq is available);
//   * the reserve path, with the source failing every call (the kernel's fail_mempool_alloc fault injection):
//     a failed source call, the pool lock, a pop; then the free, the pool lock, a push.
//
// Defaults injected when the command line does not set them: --benchmark_repetitions=5,
// --benchmark_min_time=0.2, --benchmark_report_aggregates_only=true.  After the Google Benchmark output, a
// summary gives the medians, pool / bare ratios, and the extra nanoseconds per pair.
#include <kmem/buddy.hpp>
#include <kmem/mempool.hpp>

#include "support/cli.hpp"
#include "support/report.hpp"

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

namespace {

namespace gfp = kmem::gfp;

constexpr std::size_t kHostBytes = std::size_t{64} << 20; // 16384 pages
constexpr std::size_t kElement = 256;                     // malloc source element size
constexpr std::size_t kMinNr = 16;

using PlainBuddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
using PcpBuddy =
    kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock, kmem::policy::PerCpuPages<>>;

kmem::MmapOptions host_options() {
    kmem::MmapOptions o;
    o.alignment = std::size_t{4} << 20;
    return o;
}

template <class T>
inline void keep(const T& value) {
    benchmark::DoNotOptimize(value);
}

// A custom source over malloc, with a switch that makes every call fail (fault injection).
struct MallocSource {
    bool failing = false;
    void* alloc(kmem::gfp_t) { return failing ? nullptr : std::malloc(kElement); }
    void free(void* p) { std::free(p); }
};

template <class Buddy>
Buddy& buddy() {
    static Buddy b(kHostBytes, host_options());
    return b;
}

template <class Buddy, class Lock>
kmem::PagePool<Buddy, Lock>& page_pool() {
    static kmem::PagePool<Buddy, Lock> pool(kMinNr, {buddy<Buddy>(), 0});
    return pool;
}

// Each malloc-backed pool owns its source; `failing` selects the reserve-path instance.
template <class Lock, bool Failing>
kmem::MemPool<MallocSource, Lock>& malloc_pool() {
    static kmem::MemPool<MallocSource, Lock>& pool = []() -> kmem::MemPool<MallocSource, Lock>& {
        auto* p = new kmem::MemPool<MallocSource, Lock>(kMinNr, MallocSource{});
        p->source().failing = Failing;
        return *p;
    }();
    return pool;
}

// ----- cases -------------------------------------------------------------------------------------------------
template <class Buddy>
void bare_page(benchmark::State& st) {
    Buddy& b = buddy<Buddy>();
    for (auto _ : st) {
        kmem::Page* p = b.alloc_pages(gfp::kernel, 0);
        keep(p);
        b.free_pages(p, 0);
    }
}

template <class Pool>
void pool_pair(benchmark::State& st, Pool& pool) {
    for (auto _ : st) {
        auto* p = pool.alloc(gfp::kernel);
        keep(p);
        pool.free(p);
    }
    if (pool.curr_nr() != kMinNr) st.SkipWithError("the reserve is not full after the run");
}

// The reserve path: gfp::atomic, so that an empty reserve would fail rather than wait (it never empties: one
// element out at a time).
template <class Pool>
void reserve_pair(benchmark::State& st, Pool& pool) {
    for (auto _ : st) {
        void* p = pool.alloc(gfp::atomic);
        keep(p);
        pool.free(p);
    }
    if (pool.stats().reserve_allocs == 0) st.SkipWithError("the reserve was not used");
}

void bare_malloc(benchmark::State& st) {
    MallocSource src;
    for (auto _ : st) {
        void* p = src.alloc(gfp::kernel);
        keep(p);
        src.free(p);
    }
}

void register_all() {
    using kmem::bench::add;
    using kmem::policy::MutexLock;
    using kmem::policy::NoLock;
    using kmem::policy::SpinLock;

    // Build every pool first: each takes kMinNr pages from its buddy, which changes how far an order-0
    // request splits; the bare cases must see the buddy in the same state as the pool cases.
    page_pool<PcpBuddy, NoLock>();
    page_pool<PcpBuddy, MutexLock>();
    page_pool<PcpBuddy, SpinLock>();
    page_pool<PlainBuddy, NoLock>();
    page_pool<PlainBuddy, MutexLock>();

    add("bare/page0_pcp", 1, bare_page<PcpBuddy>);
    add("pool_nolock/page0_pcp", 1, [](benchmark::State& s) { pool_pair(s, page_pool<PcpBuddy, NoLock>()); });
    add("pool_mutex/page0_pcp", 1,
        [](benchmark::State& s) { pool_pair(s, page_pool<PcpBuddy, MutexLock>()); });
    add("pool_spin/page0_pcp", 1, [](benchmark::State& s) { pool_pair(s, page_pool<PcpBuddy, SpinLock>()); });

    add("bare/page0", 1, bare_page<PlainBuddy>);
    add("pool_nolock/page0", 1, [](benchmark::State& s) { pool_pair(s, page_pool<PlainBuddy, NoLock>()); });
    add("pool_mutex/page0", 1, [](benchmark::State& s) { pool_pair(s, page_pool<PlainBuddy, MutexLock>()); });

    add("bare/malloc256", 1, bare_malloc);
    add("pool_nolock/malloc256", 1, [](benchmark::State& s) { pool_pair(s, malloc_pool<NoLock, false>()); });
    add("pool_mutex/malloc256", 1,
        [](benchmark::State& s) { pool_pair(s, malloc_pool<MutexLock, false>()); });
    add("pool_spin/malloc256", 1, [](benchmark::State& s) { pool_pair(s, malloc_pool<SpinLock, false>()); });
    add("reserve_nolock/malloc256", 1,
        [](benchmark::State& s) { reserve_pair(s, malloc_pool<NoLock, true>()); });
    add("reserve_mutex/malloc256", 1,
        [](benchmark::State& s) { reserve_pair(s, malloc_pool<MutexLock, true>()); });
    add("reserve_spin/malloc256", 1,
        [](benchmark::State& s) { reserve_pair(s, malloc_pool<SpinLock, true>()); });
}

// ----- the summary -------------------------------------------------------------------------------------------
void print_summary(const kmem::bench::Results& res) {
    using kmem::bench::format_value;
    kmem::bench::Verdicts verdicts;
    std::printf("\n==== kmem::MemPool summary: median real time per alloc+free pair ====\n");
    std::printf("ratios are pool / bare source (the source alone, same run); min_nr = %zu\n", kMinNr);

    kmem::bench::PeerTable t(res, verdicts, {{"bare", "/bare"}});
    t.header("-- page pool, order 0, over BuddyAllocator + PerCpuPages (source: alloc_pages/free_pages) --");
    t.row("PagePool, NoLock", "pool_nolock/page0_pcp", "page0_pcp", std::nullopt);
    t.row("PagePool, MutexLock", "pool_mutex/page0_pcp", "page0_pcp", std::nullopt);
    t.row("PagePool, SpinLock", "pool_spin/page0_pcp", "page0_pcp", std::nullopt);
    t.peer_row("  bare alloc_pages/free_pages", "bare/page0_pcp");

    t.header("-- page pool, order 0, over a plain BuddyAllocator (each pair splits+merges 10 levels) --");
    t.row("PagePool, NoLock", "pool_nolock/page0", "page0", std::nullopt);
    t.row("PagePool, MutexLock", "pool_mutex/page0", "page0", std::nullopt);
    t.peer_row("  bare alloc_pages/free_pages", "bare/page0");

    t.header("-- malloc-backed custom source, 256-byte elements --");
    t.row("MemPool, NoLock", "pool_nolock/malloc256", "malloc256", std::nullopt);
    t.row("MemPool, MutexLock", "pool_mutex/malloc256", "malloc256", std::nullopt);
    t.row("MemPool, SpinLock", "pool_spin/malloc256", "malloc256", std::nullopt);
    t.row("reserve path (source fails), NoLock", "reserve_nolock/malloc256", "malloc256", std::nullopt);
    t.row("reserve path (source fails), MutexLock", "reserve_mutex/malloc256", "malloc256", std::nullopt);
    t.row("reserve path (source fails), SpinLock", "reserve_spin/malloc256", "malloc256", std::nullopt);
    t.peer_row("  bare malloc/free", "bare/malloc256");

    const kmem::bench::Table extra({{"case", 44, true}, {"pool ns", 10}, {"bare ns", 10}, {"extra ns", 10}},
                                   80);
    extra.header("-- what the pool adds per pair (pool minus bare source) --");
    for (const auto& [label, name, bare] : {
             std::tuple<const char*, const char*, const char*>{"page pool + pcp, NoLock",
                                                               "pool_nolock/page0_pcp", "bare/page0_pcp"},
             {"page pool + pcp, MutexLock", "pool_mutex/page0_pcp", "bare/page0_pcp"},
             {"malloc source, NoLock", "pool_nolock/malloc256", "bare/malloc256"},
             {"malloc source, MutexLock", "pool_mutex/malloc256", "bare/malloc256"},
         }) {
        const auto p = res.ns(name), b = res.ns(bare);
        extra.row({label, res.cell(name), res.cell(bare),
                   format_value(p && b ? std::optional<double>(*p - *b) : std::nullopt, "%+.1f")});
    }
    kmem::bench::print_footer(verdicts);
}

} // namespace

int main(int argc, char** argv) {
    return kmem::bench::run_main(argc, argv, kmem::bench::standard_defaults(), register_all, print_summary);
}
