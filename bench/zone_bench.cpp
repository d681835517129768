// Benchmarks for kmem::Node (include/kmem/zone.hpp): what the zone layer costs on the allocation fast path,
// how a node with per-CPU page lists scales with threads, and how long compaction of a fragmented zone takes.
//
// Cases:
//   * order-0 pairs through a node of one ZONE_NORMAL zone (256 MiB, policy::PerCpuPages<>): get_free_pages(
//     flags, 0) / free_pages(addr, 0), one pair at a time ("hot") and batches of 64 allocations then 64 frees,
//     with policy::MutexLock + gfp::kernel and policy::SpinLock + gfp::atomic (a spin lock's holders cannot
//     sleep, so gfp::kernel does not compile there); each against a bare BuddyAllocator<10, 4096, MmapRegion,
//     same lock, PerCpuPages<>> over a region of the same size, measured in the same run.  The difference is the
//     zone layer: the watermark check and zonelist walk on allocation, the zone lookup and free accounting on
//     free.  Target: at most 3 ns more per pair;
//   * threads: 1, 2, 4, 8, 16 threads (up to this machine's hardware threads; the rest are skipped and said so)
//     doing order-0 pairs on one node with per-CPU lists, each thread its own pages; one iteration is the wall
//     time from a common start to the last thread's end.  Target: N threads reach >= 0.75 x N x the throughput
//     of one thread.  The bare buddies (SpinLock and MutexLock) run the same for reference;
//   * compaction: a node of one ZONE_NORMAL zone (MutexLock, PerCpuPages<>) over an MmapRegion of 64 MiB,
//     256 MiB and 1 GiB is filled with order-0 movable blocks (alloc_movable(gfp::highuser_movable, 0); the
//     watermarks are set to 0 for the fill and restored after it), a pattern is written into every block through
//     pin(), and every block on an odd page frame is freed, so that every free block has order 0 (no order >= 1
//     block is free); then compact() is timed (wall clock) and every block that stayed live is checked against
//     its pattern (the program aborts with a message if one is not intact, if the moved count disagrees with the
//     CompactResult, or if the node's invariants break).  The fragmentation index of orders 4, 9 and 10 is
//     printed before and after.  Every run builds a fresh node; set-up is not timed.
//
// Defaults injected unless the command line sets them: --benchmark_repetitions=5, --benchmark_min_time=0.2,
// --benchmark_report_aggregates_only=true; the thread cases run 3 iterations per repetition, the compaction of
// 64 MiB and 256 MiB 3 runs, that of 1 GiB 3 runs too (about 50 ms of compact() each, 0.4 s of set-up).
// --compact_runs=N runs the 1 GiB compaction N times (median).  Any --benchmark_* flag still works
// (e.g. --benchmark_filter=compact).  After Google Benchmark's output, a summary prints the tables, the
// ratios and the targets (PASS/MISS; a miss never fails the process).
#include <kmem/buddy.hpp>
#include <kmem/zone.hpp>

#include "support/cli.hpp"
#include "support/report.hpp"
#include "support/threads.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using kmem::bench::cpu_share;
using kmem::bench::cpu_shares;
using kmem::bench::run_threads;
using kmem::bench::thread_cpu_seconds;

namespace gfp = kmem::gfp;
using kmem::ZoneType;

constexpr unsigned kMaxOrder = 10;
constexpr std::size_t kPageSize = 4096;
constexpr std::size_t kArenaBytes = std::size_t{256} << 20; // node zone and bare buddy: 65536 pages each
constexpr std::size_t kBatch = 64;                          // pairs per iteration in the batch cases
constexpr std::size_t kThreadPairs = std::size_t{1} << 20;  // order-0 pairs per thread and iteration

unsigned compact_runs = 3; // --compact_runs: runs of the 1 GiB compaction

using NormalZone = kmem::ZoneSpec<ZoneType::normal, kmem::MmapRegion>;
template <class Lock>
using NodeOf = kmem::Node<kMaxOrder, kPageSize, kmem::Zones<NormalZone>, Lock, kmem::policy::PerCpuPages<>>;
template <class Lock>
using BuddyOf =
    kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, Lock, kmem::policy::PerCpuPages<>>;
using CompactNode = NodeOf<kmem::policy::MutexLock>;

kmem::MmapOptions host_options() {
    kmem::MmapOptions o;
    o.alignment = std::size_t{4} << 20; // order-10 aligned, so the block layout is the same on every run
    return o;
}

// Keeps a value alive for the optimiser (through the const overload: see buddy_bench.cpp).
template <class T>
inline void keep(const T& value) {
    benchmark::DoNotOptimize(value);
}

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "zone_bench: %s\n", what.c_str());
    std::fflush(stdout);
    std::abort();
}

// ----- arenas (built on first use, outside any timed region) -----------------------------------------------
template <class Lock>
NodeOf<Lock>& node() {
    static NodeOf<Lock> n(kmem::MmapRegion(kArenaBytes, host_options()));
    return n;
}

template <class Lock>
BuddyOf<Lock>& buddy() {
    static BuddyOf<Lock> b(kArenaBytes, host_options());
    return b;
}

// Every page must be back (free or on a per-CPU list) after a case.
template <class Lock>
bool all_free(NodeOf<Lock>& n) {
    return n.nr_free_and_pcp_pages() == n.total_pages();
}
template <class Lock>
bool all_free(BuddyOf<Lock>& b) {
    return b.nr_free_pages() + b.nr_pcp_pages() == b.total_pages();
}

// ----- order-0 pairs -----------------------------------------------------------------------------------------
template <class A, class Flags>
void order0_pair(benchmark::State& st, A& a, Flags flags) {
    for (auto _ : st) {
        void* p = a.get_free_pages(flags, 0);
        keep(p);
        a.free_pages(p, 0);
    }
    if (!all_free(a)) st.SkipWithError("pages are missing after the run");
}

template <class A, class Flags>
void order0_batch(benchmark::State& st, A& a, Flags flags) {
    void* live[kBatch];
    for (auto _ : st) {
        for (auto& p : live) {
            p = a.get_free_pages(flags, 0);
            keep(p);
        }
        for (void* p : live) a.free_pages(p, 0);
    }
    if (!all_free(a)) st.SkipWithError("pages are missing after the run");
}

// ----- threads -----------------------------------------------------------------------------------------------

template <class A, class Flags>
void threads_order0(benchmark::State& st, const std::string& key, A& a, Flags flags) {
    const auto n = static_cast<unsigned>(st.range(0));
    for (auto _ : st)
        st.SetIterationTime(run_threads(key, n, [&] {
            for (std::size_t k = 0; k < kThreadPairs; ++k) {
                void* p = a.get_free_pages(flags, 0);
                keep(p);
                a.free_pages(p, 0);
            }
        }));
    if (!all_free(a)) st.SkipWithError("pages are missing after the run");
}

// 1, 2, 4, 8, 16 threads, those up to this machine's hardware threads.
constexpr std::array<unsigned, 5> kThreadCounts{1, 2, 4, 8, 16};
unsigned hardware_threads() {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : hw;
}
std::vector<unsigned> thread_counts() {
    std::vector<unsigned> v;
    for (unsigned t : kThreadCounts)
        if (t <= hardware_threads()) v.push_back(t);
    return v;
}
std::string thread_key(const char* kind, unsigned n) {
    return std::string("threads/") + kind + "/" + std::to_string(n);
}

// ----- compaction --------------------------------------------------------------------------------------------
constexpr std::array<unsigned, 3> kFragOrders{4, 9, 10}; // orders whose fragmentation index is printed

// What one compaction run saw.
struct CompactionRun {
    std::uint64_t pages = 0, live = 0, moved = 0;
    double fill_s = 0, write_s = 0, fragment_s = 0, compact_s = 0, verify_s = 0;
    kmem::CompactResult result;
    std::array<int, kFragOrders.size()> fi_before{}, fi_after{};
    std::uint64_t top_before = 0, top_after = 0; // free blocks of MaxOrder
    std::string extfrag_before, extfrag_after;
};
std::map<std::string, std::vector<CompactionRun>, std::less<>>& compaction_runs() {
    static std::map<std::string, std::vector<CompactionRun>, std::less<>> runs;
    return runs;
}

// The pattern of a movable block: 64-bit words derived from its handle id (splitmix64) and their position.
std::uint64_t block_seed(std::uint32_t id) {
    std::uint64_t x = id + 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
void write_pattern(void* block, std::uint32_t id) {
    auto* w = static_cast<std::uint64_t*>(block);
    const std::uint64_t seed = block_seed(id);
    for (std::size_t k = 0; k < kPageSize / sizeof(std::uint64_t); ++k) w[k] = seed + k;
}
bool pattern_intact(const void* block, std::uint32_t id) {
    const auto* w = static_cast<const std::uint64_t*>(block);
    const std::uint64_t seed = block_seed(id);
    bool ok = true;
    for (std::size_t k = 0; k < kPageSize / sizeof(std::uint64_t); ++k) ok &= w[k] == seed + k;
    return ok;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string size_name(std::size_t bytes) {
    return bytes >= (std::size_t{1} << 30) ? std::to_string(bytes >> 30) + " GiB"
                                           : std::to_string(bytes >> 20) + " MiB";
}

// A fragmented zone ready for compaction: a fresh node, its live blocks and their addresses before compact().
struct Fragmented {
    std::unique_ptr<CompactNode> node;
    std::vector<kmem::MovableHandle> live;
    std::vector<const void*> before;
};

std::string where(std::size_t bytes) {
    return "compaction of a " + size_name(bytes) + " zone: ";
}

// Builds a fresh node of `bytes`, fills it with order-0 movable blocks, writes their patterns and frees every
// block on an odd page frame; records the set-up times and the state before compaction in `run`.
Fragmented fragment(std::size_t bytes, CompactionRun& run) {
    using clock = std::chrono::steady_clock;
    Fragmented f;
    f.node = std::make_unique<CompactNode>(kmem::MmapRegion(bytes, host_options()));
    CompactNode& node = *f.node;
    auto& zone = node.zone_allocator_of<ZoneType::normal>();
    run.pages = node.total_pages();

    // Fill every page with an order-0 movable block (watermarks off for the fill, restored after it).
    const kmem::Watermarks marks = node.watermarks(ZoneType::normal);
    node.set_watermarks(ZoneType::normal, {});
    std::vector<kmem::MovableHandle> handles(run.pages);
    auto t0 = clock::now();
    for (kmem::MovableHandle& h : handles) {
        h = node.alloc_movable(gfp::highuser_movable, 0);
        if (!h) die(where(bytes) + "alloc_movable failed before the zone was full");
    }
    run.fill_s = seconds_since(t0);
    t0 = clock::now();
    for (const kmem::MovableHandle& h : handles) write_pattern(node.pin(h).get(), h.id());
    run.write_s = seconds_since(t0);

    // Free every block on an odd page frame: each free page's buddy stays allocated, so every free block has
    // order 0 and no order >= 1 is available.
    t0 = clock::now();
    f.live.reserve(handles.size() / 2 + 1);
    for (const kmem::MovableHandle& h : handles) {
        const auto i = node.mem_map().index_of_address(node.movable_address(h));
        if (i == kmem::Page::nil) die(where(bytes) + "a movable block has no page in the node");
        if (i % 2 != 0)
            node.free_movable(h);
        else
            f.live.push_back(h);
    }
    handles = {};
    node.drain_all_pages(); // so that the free lists (and the index) see every free page
    node.set_watermarks(ZoneType::normal, marks);
    run.fragment_s = seconds_since(t0);
    run.live = f.live.size();
    if (zone.largest_free_order() != 0)
        die(where(bytes) + "the fragmented zone still has a free block above order 0");

    f.before.resize(f.live.size());
    for (std::size_t k = 0; k < f.live.size(); ++k) f.before[k] = node.movable_address(f.live[k]);
    for (std::size_t k = 0; k < kFragOrders.size(); ++k)
        run.fi_before[k] = node.fragmentation_index(ZoneType::normal, kFragOrders[k]);
    run.top_before = zone.nr_free(kMaxOrder);
    run.extfrag_before = node.extfrag_index();
    return f;
}

// After compact(): every block that stayed live keeps its content, wherever it is now; the moved ones are
// counted and must match the CompactResult; the node's invariants hold.  Aborts otherwise.
void check_compacted(std::size_t bytes, Fragmented& f, CompactionRun& run) {
    CompactNode& node = *f.node;
    auto& zone = node.zone_allocator_of<ZoneType::normal>();
    for (std::size_t k = 0; k < kFragOrders.size(); ++k)
        run.fi_after[k] = node.fragmentation_index(ZoneType::normal, kFragOrders[k]);
    run.top_after = zone.nr_free(kMaxOrder);
    run.extfrag_after = node.extfrag_index();

    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t k = 0; k < f.live.size(); ++k) {
        const auto pin = node.pin(f.live[k]);
        if (pin.get() == nullptr) die(where(bytes) + "a live handle cannot be pinned after compaction");
        const bool moved = pin.get() != f.before[k];
        if (moved) ++run.moved;
        if (!pattern_intact(pin.get(), f.live[k].id()))
            die(where(bytes) + "the content of movable block " + std::to_string(f.live[k].id()) +
                " is not intact (" + (moved ? "moved" : "not moved") + ")");
    }
    run.verify_s = seconds_since(t0);
    if (run.moved != run.result.pages_moved || run.moved != run.result.blocks_moved)
        die(where(bytes) + std::to_string(run.moved) + " blocks changed address, but compact() reports " +
            std::to_string(run.result.pages_moved) + " pages / " + std::to_string(run.result.blocks_moved) +
            " blocks moved");
    if (node.nr_movable() != f.live.size()) die(where(bytes) + "the node's count of movable blocks changed");
    if (const std::string problem = node.check_invariants(); !problem.empty())
        die(where(bytes) + "invariants broken after compaction: " + problem);
    for (const kmem::MovableHandle& h : f.live) node.free_movable(h);
    node.drain_all_pages();
    if (node.nr_free_pages() != node.total_pages())
        die(where(bytes) + "pages are missing after freeing every block");
}

// One compact() per iteration on a freshly fragmented zone; set-up and checks run with the timer paused, and
// the iteration's (manual) time is the wall time of compact() alone.
void compaction_case(benchmark::State& st, const std::string& key, std::size_t bytes) {
    for (auto _ : st) {
        st.PauseTiming();
        CompactionRun run;
        Fragmented f = fragment(bytes, run);
        st.ResumeTiming();
        const auto t0 = std::chrono::steady_clock::now();
        run.result = f.node->compact();
        run.compact_s = seconds_since(t0);
        st.PauseTiming();
        st.SetIterationTime(run.compact_s);
        check_compacted(bytes, f, run);
        f = {}; // unmap the zone outside the timed region
        st.counters["pages_moved"] = static_cast<double>(run.result.pages_moved);
        st.counters["setup_s"] = run.fill_s + run.write_s + run.fragment_s;
        compaction_runs()[key].push_back(std::move(run));
        st.ResumeTiming();
    }
}

struct CompactionSize {
    const char* key;
    std::size_t bytes;
    bool large; // runs --compact_runs times; the others 3 times
};
constexpr std::array<CompactionSize, 3> kCompactionSizes{{
    {"compact/64MiB", std::size_t{64} << 20, false},
    {"compact/256MiB", std::size_t{256} << 20, false},
    {"compact/1GiB", std::size_t{1} << 30, true},
}};

// ----- registration ------------------------------------------------------------------------------------------
// A threaded case "threads/<kind>/<n>": n threads doing order-0 pairs on the allocator get() returns.
template <class A, class Flags>
void add_thread_case(const char* kind, unsigned n, A& (*get)(), Flags flags) {
    const std::string key = thread_key(kind, n);
    kmem::bench::add(key, static_cast<double>(n * kThreadPairs),
                     [key, get, flags](benchmark::State& s) { threads_order0(s, key, get(), flags); })
        ->Arg(n)
        ->UseManualTime()
        ->Iterations(3);
}

void register_all() {
    using kmem::bench::add;
    using kmem::policy::MutexLock;
    using kmem::policy::SpinLock;
    // order-0 pairs: node against the bare buddy, both over 256 MiB with per-CPU lists
    add("node/order0_mutex", 1, [](benchmark::State& s) { order0_pair(s, node<MutexLock>(), gfp::kernel); });
    add("buddy/order0_mutex", 1,
        [](benchmark::State& s) { order0_pair(s, buddy<MutexLock>(), gfp::kernel); });
    add("node/order0_spin", 1, [](benchmark::State& s) { order0_pair(s, node<SpinLock>(), gfp::atomic); });
    add("buddy/order0_spin", 1, [](benchmark::State& s) { order0_pair(s, buddy<SpinLock>(), gfp::atomic); });
    add("node/batch64_mutex", kBatch,
        [](benchmark::State& s) { order0_batch(s, node<MutexLock>(), gfp::kernel); });
    add("buddy/batch64_mutex", kBatch,
        [](benchmark::State& s) { order0_batch(s, buddy<MutexLock>(), gfp::kernel); });
    add("node/batch64_spin", kBatch,
        [](benchmark::State& s) { order0_batch(s, node<SpinLock>(), gfp::atomic); });
    add("buddy/batch64_spin", kBatch,
        [](benchmark::State& s) { order0_batch(s, buddy<SpinLock>(), gfp::atomic); });

    // threads
    for (unsigned n : thread_counts()) {
        add_thread_case("node_spin", n, &node<SpinLock>, gfp::atomic);
        add_thread_case("node_mutex", n, &node<MutexLock>, gfp::kernel);
        add_thread_case("buddy_spin", n, &buddy<SpinLock>, gfp::atomic);
        add_thread_case("buddy_mutex", n, &buddy<MutexLock>, gfp::kernel);
    }

    // compaction of fragmented zones
    for (const CompactionSize& c : kCompactionSizes) {
        const std::string key = c.key;
        const std::size_t bytes = c.bytes;
        add(key, 1, [key, bytes](benchmark::State& s) { compaction_case(s, key, bytes); })
            ->UseManualTime()
            ->Iterations(1)
            ->Repetitions(static_cast<int>(c.large ? compact_runs : 3));
    }
}

// ----- the summary -------------------------------------------------------------------------------------------
std::optional<double> difference(std::optional<double> a, std::optional<double> b) {
    if (!a || !b) return std::nullopt;
    return *a - *b;
}

// A fragmentation index in thousandths as extfrag_index prints it ("0.938", "-1.000").
std::string fraction(int fi) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%s%d.%03d", fi < 0 ? "-" : "", std::abs(fi) / 1000, std::abs(fi) % 1000);
    return buf;
}

// The run whose compaction time is the median (the lower middle one for an even count).
const CompactionRun* median_run(std::string_view key) {
    const auto it = compaction_runs().find(key);
    if (it == compaction_runs().end() || it->second.empty()) return nullptr;
    std::vector<const CompactionRun*> v;
    for (const CompactionRun& r : it->second) v.push_back(&r);
    std::sort(v.begin(), v.end(), [](const auto* a, const auto* b) { return a->compact_s < b->compact_s; });
    return v[(v.size() - 1) / 2];
}

void print_pairs(const kmem::bench::Results& res, kmem::bench::Verdicts& verdicts) {
    using kmem::bench::format_value;
    const kmem::bench::Table t({{"case", 44, true},
                                {"node ns", 9},
                                {"buddy ns", 9},
                                {"node/buddy", 11},
                                {"extra ns", 9},
                                {"target", 8},
                                {"result", 0, true, 2}},
                               100);
    t.header("-- order-0 pair, get_free_pages / free_pages: Node against the bare BuddyAllocator (same lock, "
             "PerCpuPages<>) --");
    for (const auto& [label, op] :
         {std::pair<const char*, const char*>{"MutexLock, gfp::kernel, hot pair", "order0_mutex"},
          {"MutexLock, gfp::kernel, batch 64 (per pair)", "batch64_mutex"},
          {"SpinLock, gfp::atomic, hot pair", "order0_spin"},
          {"SpinLock, gfp::atomic, batch 64 (per pair)", "batch64_spin"}}) {
        const std::string n = std::string("node/") + op, b = std::string("buddy/") + op;
        const auto extra = difference(res.ns(n), res.ns(b));
        t.row({label, res.cell(n), res.cell(b),
               format_value(kmem::bench::ratio(res.ns(n), res.ns(b)), "%.2fx"), format_value(extra, "%+.1f"),
               "<=+3", verdicts.judge(extra, 3.0)});
    }
    std::printf("  extra ns = node minus bare buddy: the zone layer (watermark check and zonelist walk on "
                "allocation, zone lookup and free accounting on free).\n");
}

void print_threads(const kmem::bench::Results& res, kmem::bench::Verdicts& verdicts) {
    using kmem::bench::format_value;
    using kmem::bench::ratio;
    const kmem::bench::Table t({{"case", 40, true},
                                {"threads", 8},
                                {"ns/pair", 9},
                                {"Mpairs/s", 9},
                                {"on CPU", 7},
                                {"N/(N x 1)", 10},
                                {"target", 8},
                                {"result", 0, true, 2}},
                               104);
    t.header(
        "-- threads: order-0 pairs on one Node with per-CPU lists (256 MiB), each thread its own pages --");
    std::string skipped;
    for (unsigned n : kThreadCounts)
        if (n > hardware_threads()) skipped += (skipped.empty() ? "" : ", ") + std::to_string(n);
    if (!skipped.empty())
        std::printf("(this machine has %u hardware threads: %s threads skipped)\n", hardware_threads(),
                    skipped.c_str());
    for (const auto& [kind, label, judged] :
         {std::tuple<const char*, const char*, bool>{"node_spin", "Node, SpinLock + gfp::atomic", true},
          {"node_mutex", "Node, MutexLock + gfp::kernel", true},
          {"buddy_spin", "  bare buddy, SpinLock + gfp::atomic", false},
          {"buddy_mutex", "  bare buddy, MutexLock + gfp::kernel", false}}) {
        const auto one = res.ns(thread_key(kind, 1));
        for (unsigned n : thread_counts()) {
            const std::string key = thread_key(kind, n);
            const auto ns = res.ns(key); // wall time per pair, all threads together
            // throughput(n) / (n * throughput(1)) = ns(1) / (n * ns(n)); target >= 0.75, i.e. 0.75 / it <= 1
            const auto scaling = ratio(one, ns ? std::optional<double>(n * *ns) : std::nullopt);
            const auto share = cpu_share(key);
            const bool starved = share && *share < 0.9;
            const bool judge = judged && n > 1;
            t.row({label, std::to_string(n), format_value(ns, "%.2f") + (starved ? "*" : " "),
                   format_value(ns ? std::optional<double>(1e3 / *ns) : std::nullopt, "%.1f"),
                   format_value(share ? std::optional<double>(100.0 * *share) : std::nullopt, "%.0f%%"),
                   format_value(scaling, "%.2fx"), judge ? ">=0.75x" : "-",
                   judge ? verdicts.judge(ratio(0.75, scaling), 1.0) + (starved ? "*" : "") : "-"});
        }
    }
    std::printf(
        "  ns/pair: wall time / (threads x pairs); N/(N x 1): throughput at N threads / (N x throughput "
        "at 1 thread).  \"on CPU\": the threads' CPU time / (threads x wall time), median; '*' below "
        "90%%: the threads did not get their cores (other work on the machine).\n");
}

void print_compaction(const kmem::bench::Results& res) {
    using kmem::bench::format_value;
    const kmem::bench::Table t({{"zone", 8, true},
                                {"pages", 8},
                                {"runs", 5},
                                {"set-up s", 9},
                                {"compact ms", 11},
                                {"moved", 7},
                                {"us/moved", 9},
                                {"fi(4)", 15},
                                {"fi(9)", 15},
                                {"fi(10)", 15},
                                {"order-10 free", 14},
                                {"content", 0, true, 2}},
                               132);
    t.header("-- compaction: Node<10, 4096, Zones<ZoneSpec<normal, MmapRegion>>, MutexLock, PerCpuPages<>>, "
             "every other page an order-0 movable block, compact() --");
    std::optional<double> small_per_page, large_per_page;
    std::uint64_t small_pages = 0, large_pages = 0;
    for (const CompactionSize& c : kCompactionSizes) {
        const CompactionRun* r = median_run(c.key);
        if (r == nullptr) continue;
        const auto ns = res.ns(c.key);
        const auto runs = compaction_runs().find(c.key)->second.size();
        const auto per_page = ns && r->moved != 0
                                  ? std::optional<double>(*ns / 1e3 / static_cast<double>(r->moved))
                                  : std::nullopt;
        if (!small_per_page) {
            small_per_page = per_page;
            small_pages = r->pages;
        }
        large_per_page = per_page;
        large_pages = r->pages;
        std::array<std::string, kFragOrders.size()> fi;
        for (std::size_t k = 0; k < fi.size(); ++k)
            fi[k] = fraction(r->fi_before[k]) + "->" + fraction(r->fi_after[k]);
        t.row({size_name(c.bytes), std::to_string(r->pages), std::to_string(runs),
               format_value(r->fill_s + r->write_s + r->fragment_s, "%.2f"),
               format_value(ns ? std::optional<double>(*ns / 1e6) : std::nullopt, "%.1f") +
                   (res.preempted(c.key) ? "*" : ""),
               std::to_string(r->moved), format_value(per_page, "%.2f"), fi[0], fi[1], fi[2],
               std::to_string(r->top_before) + "->" + std::to_string(r->top_after), "intact"});
    }
    std::printf(
        "  set-up (not timed): fill with alloc_movable, write the pattern (first touch of the memory), "
        "free the odd page frames.  moved: blocks that changed address (= CompactResult pages_moved); "
        "fi(k): fragmentation index of order k before->after (-1.000: a block of that order is free); "
        "content: every live block checked against its pattern after compact().\n");
    if (small_per_page && large_per_page && large_pages != small_pages)
        std::printf("  us per moved page, %s zone / %s zone (%.0fx the pages): %.1fx (1x for a compactor "
                    "linear in the zone)\n",
                    size_name(large_pages * kPageSize).c_str(), size_name(small_pages * kPageSize).c_str(),
                    static_cast<double>(large_pages) / static_cast<double>(small_pages),
                    *large_per_page / *small_per_page);

    if (const CompactionRun* r = median_run("compact/1GiB")) {
        std::printf(
            "\n1 GiB zone (median run of %zu): set-up %.2f s (fill %.2f s, pattern %.2f s, free half "
            "%.2f s), compact() %.3f s, check %.2f s; %llu live blocks, %llu moved, %llu pinned, "
            "success %s\n",
            compaction_runs().find("compact/1GiB")->second.size(), r->fill_s + r->write_s + r->fragment_s,
            r->fill_s, r->write_s, r->fragment_s, r->compact_s, r->verify_s,
            static_cast<unsigned long long>(r->live), static_cast<unsigned long long>(r->moved),
            static_cast<unsigned long long>(r->result.blocks_pinned), r->result.success ? "true" : "false");
        std::printf("extfrag_index before: %s", r->extfrag_before.c_str());
        std::printf("extfrag_index after:  %s", r->extfrag_after.c_str());
    }
}

void print_summary(const kmem::bench::Results& res) {
    kmem::bench::Verdicts verdicts;
    std::printf(
        "\n==== kmem::Node (zones) summary: median real time per alloc+free pair; compaction wall time "
        "====\n");
    double load[3] = {0, 0, 0};
    if (std::FILE* f =
            std::fopen("/proc/loadavg", "r")) { // wall times stretch when other work shares the CPUs
        if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = load[1] = load[2] = 0;
        std::fclose(f);
    }
    std::printf(
        "Node<10, 4096, Zones<ZoneSpec<normal, MmapRegion>>, Lock, PerCpuPages<>> vs BuddyAllocator<10, "
        "4096, MmapRegion, Lock, PerCpuPages<>>, 256 MiB each; %u hardware threads; load average %.2f "
        "%.2f %.2f\n",
        hardware_threads(), load[0], load[1], load[2]);
    print_pairs(res, verdicts);
    print_threads(res, verdicts);
    print_compaction(res);
    kmem::bench::print_footer(verdicts);
}

} // namespace

int main(int argc, char** argv) {
    std::vector<char*> args;
    for (int i = 0; i < argc; ++i) {
        const std::string_view a(argv[i]);
        if (i > 0 && a.substr(0, 15) == "--compact_runs=") {
            const int n = std::atoi(argv[i] + 15);
            if (n < 1) {
                std::fprintf(stderr, "zone_bench: --compact_runs needs a count of at least 1\n");
                return 1;
            }
            compact_runs = static_cast<unsigned>(n);
        } else {
            args.push_back(argv[i]);
        }
    }
    const int n = static_cast<int>(args.size());
    args.push_back(nullptr);
    return kmem::bench::run_main(n, args.data(), kmem::bench::standard_defaults(), register_all,
                                 print_summary);
}
