// Benchmarks for kmem::BuddyAllocator (the binary buddy allocator), with peers measured in the same run.
//
// Every figure is the median over repetitions of the real time per alloc+free pair, in nanoseconds.
// Cases:
//   * order-0 pair and random-order (0..10, precomputed sequence) pair, on an empty arena and on a
//     half-fragmented arena (see make_fragmented());
//   * the same with the SpinLock policy and gfp::atomic (the lock's uncontended cost);
//   * the address interface (get_free_pages / free_pages(void*)) next to the Page* interface;
//   * a batch of 64 order-0 allocations then 64 frees (splitting and merging amortised over the batch);
//   * the same allocator with policy::PerCpuPages (the kernel's per-CPU page lists: orders 0..3 are served
//     from a per-CPU list refilled and drained in batches, so a pair does not split and merge every time);
//   * offset-only regions (kmem::OffsetRegion) of 1 GiB and 64 GiB under the same op mix, to show the
//     allocator does not slow down with the size of what it manages;
//   * peers: malloc/free, ::operator new/delete, std::pmr::unsynchronized_pool_resource, same byte sizes
//     (4096 << order).  monotonic_buffer_resource never frees, so it is not a peer.
//
// Defaults injected when the command line does not set them: --benchmark_repetitions=5,
// --benchmark_min_time=0.2, --benchmark_report_aggregates_only=true.  Any --benchmark_* flag still works
// (e.g. --benchmark_filter=offset).  After the Google Benchmark output, a summary table gives the medians,
// the ratios against the peers and the targets (PASS/MISS; a miss never fails the process).
#include <kmem/buddy.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory_resource>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

namespace {

constexpr unsigned kMaxOrder = 10;
constexpr std::size_t kPageSize = 4096;
constexpr std::size_t kHostBytes = std::size_t{256} << 20;     // host arena: 65536 pages, 64 order-10 blocks
constexpr std::uint64_t kSmallDevice = std::uint64_t{1} << 30;  // 1 GiB offset-only region
constexpr std::uint64_t kLargeDevice = std::uint64_t{64} << 30; // 64 GiB offset-only region
constexpr std::size_t kBatch = 64;                              // pairs per iteration in the batch cases
constexpr std::size_t kChurnLive = 128;                         // live blocks in the churn mix

using HostBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion>;
using SpinBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::SpinLock>;
using DeviceBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::OffsetRegion>;
using PcpBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::PerCpuPages<>>;
using SpinPcpBuddy =
    kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::SpinLock, kmem::policy::PerCpuPages<>>;

kmem::MmapOptions host_options() {
    kmem::MmapOptions o;
    o.alignment = std::size_t{4} << 20; // order-10 aligned, so the block layout is the same on every run
    return o;
}

// ----- the random order sequence (precomputed, so the RNG is not timed) ------------------------------------
constexpr std::size_t kSeqLen = 4096; // a power of two: index with `& kSeqMask`
constexpr std::size_t kSeqMask = kSeqLen - 1;

const std::vector<std::uint8_t>& random_orders() {
    static const std::vector<std::uint8_t> seq = [] {
        std::vector<std::uint8_t> s(kSeqLen);
        std::mt19937_64 rng(0x6b6d656dULL); // fixed seed: the same sequence on every run
        std::uniform_int_distribution<unsigned> dist(0, kMaxOrder);
        for (auto& o : s) o = static_cast<std::uint8_t>(dist(rng));
        return s;
    }();
    return seq;
}

// Keeps a value alive for the optimiser.  Always through the const overload of DoNotOptimize: with GCC 12 and
// Google Benchmark 1.7.1, the non-const overload's "+m,r" in-out asm operand made GCC drop the store of
// alloc_pages()' result into the `live` array of the batch loop (the frees then saw garbage pointers).
template <class T>
inline void keep(const T& value) {
    benchmark::DoNotOptimize(value);
}

// ----- arenas (built once, on first use, outside any timed region) -----------------------------------------
HostBuddy& empty_arena() {
    static HostBuddy b(kHostBytes, host_options());
    return b;
}

// The half-fragmented arena.  Every page is first allocated at order 0.  The top eighth of the arena (8
// order-10 blocks) is then freed whole: it merges back into order-10 blocks, the only large blocks left, so
// higher orders must split them.  The other seven eighths are walked as aligned page pairs and, at random
// (fixed seed), each pair gets one of: both pages freed (they merge into an order-1 block, and further when
// neighbouring pairs were freed too), only the first freed, only the second freed (an order-0 block whose
// buddy stays allocated), or neither.  Half of those pages end up free, so order-0 requests are served from
// the order-0 list without splitting, orders 1..3 mostly from the small lists, and orders 4..10 by splitting
// a reserve block.
std::vector<std::uint64_t> fragmented_profile; // nr_free per order after the setup, for the summary

HostBuddy& fragmented_arena() {
    static HostBuddy& arena = [] () -> HostBuddy& {
        auto* b = new HostBuddy(kHostBytes, host_options());
        const std::uint64_t n = b->total_pages();
        const std::uint64_t first = b->page_table().first_pfn();
        std::vector<kmem::Page*> by_index(n, nullptr);
        for (std::uint64_t k = 0; k < n; ++k) {
            kmem::Page* p = b->alloc_pages(kmem::gfp::kernel, 0);
            if (p == nullptr) std::abort();
            by_index[b->page_to_pfn(p) - first] = p;
        }
        const std::uint64_t reserve_start = n - n / 8;
        std::mt19937_64 rng(0x66726167ULL);
        for (std::uint64_t i = 0; i + 1 < reserve_start; i += 2) {
            switch (rng() & 3u) {
            case 0: b->free_pages(by_index[i], 0); b->free_pages(by_index[i + 1], 0); break;
            case 1: b->free_pages(by_index[i], 0); break;
            case 2: b->free_pages(by_index[i + 1], 0); break;
            default: break;
            }
        }
        for (std::uint64_t i = reserve_start; i < n; ++i) b->free_pages(by_index[i], 0);
        const std::string problem = b->check_invariants();
        if (!problem.empty()) {
            std::fprintf(stderr, "buddy_bench: fragmented arena is inconsistent: %s\n", problem.c_str());
            std::abort();
        }
        for (unsigned k = 0; k <= kMaxOrder; ++k) fragmented_profile.push_back(b->nr_free(k));
        fragmented_profile.push_back(b->nr_free_pages());
        fragmented_profile.push_back(n);
        return *b;
    }();
    return arena;
}

SpinBuddy& spin_arena() {
    static SpinBuddy b(kHostBytes, host_options());
    return b;
}

PcpBuddy& pcp_arena() {
    static PcpBuddy b(kHostBytes, host_options());
    return b;
}

SpinPcpBuddy& spin_pcp_arena() {
    static SpinPcpBuddy b(kHostBytes, host_options());
    return b;
}

template <std::uint64_t Bytes>
DeviceBuddy& device_arena() {
    static DeviceBuddy b(Bytes);
    return b;
}

// ----- kmem cases ------------------------------------------------------------------------------------------
template <class Buddy, class Flags>
void kmem_order0(benchmark::State& st, Buddy& b, Flags flags) {
    for (auto _ : st) {
        kmem::Page* p = b.alloc_pages(flags, 0);
        keep(p);
        b.free_pages(p, 0);
    }
}

template <class Buddy, class Flags>
void kmem_random(benchmark::State& st, Buddy& b, Flags flags) {
    const std::uint8_t* seq = random_orders().data();
    std::size_t i = 0;
    for (auto _ : st) {
        const unsigned order = seq[i++ & kSeqMask];
        kmem::Page* p = b.alloc_pages(flags, order);
        keep(p);
        b.free_pages(p, order);
    }
}

void kmem_order0_address(benchmark::State& st, HostBuddy& b) {
    for (auto _ : st) {
        void* p = b.get_free_pages(kmem::gfp::kernel, 0);
        keep(p);
        b.free_pages(p, 0);
    }
}

template <class Buddy>
void kmem_order0_batch(benchmark::State& st, Buddy& b) {
    kmem::Page* live[kBatch];
    for (auto _ : st) {
        for (auto& p : live) {
            p = b.alloc_pages(kmem::gfp::kernel, 0);
            keep(p);
        }
        for (kmem::Page* p : live) b.free_pages(p, 0);
    }
}

// Offset-only regions: the offset interface (the one device-memory users call).
template <std::uint64_t Bytes>
void device_order0(benchmark::State& st) {
    DeviceBuddy& b = device_arena<Bytes>();
    for (auto _ : st) {
        const std::optional<std::uint64_t> off = b.alloc_offset(kmem::gfp::kernel, 0);
        keep(off);
        b.free_offset(*off, 0);
    }
}

template <std::uint64_t Bytes>
void device_random(benchmark::State& st) {
    DeviceBuddy& b = device_arena<Bytes>();
    const std::uint8_t* seq = random_orders().data();
    std::size_t i = 0;
    for (auto _ : st) {
        const unsigned order = seq[i++ & kSeqMask];
        const std::optional<std::uint64_t> off = b.alloc_offset(kmem::gfp::kernel, order);
        keep(off);
        b.free_offset(*off, order);
    }
}

// Churn: kChurnLive random-order blocks stay live; each iteration frees the oldest and allocates a new one,
// so frees happen long after their allocation and merges meet a partly used arena.
struct ChurnSlot {
    std::uint64_t offset;
    unsigned order;
    bool live;
};

template <std::uint64_t Bytes>
void device_churn(benchmark::State& st) {
    DeviceBuddy& b = device_arena<Bytes>();
    static std::vector<ChurnSlot> ring = [&b] {
        std::vector<ChurnSlot> r(kChurnLive);
        const std::uint8_t* seq = random_orders().data();
        for (std::size_t k = 0; k < kChurnLive; ++k) {
            const unsigned order = seq[(k * 7 + 3) & kSeqMask];
            const auto off = b.alloc_offset(kmem::gfp::kernel | kmem::gfp::nowarn, order);
            r[k] = ChurnSlot{off.value_or(0), order, off.has_value()};
        }
        return r;
    }();
    static std::size_t i = 0;
    std::int64_t failures = 0;
    const std::uint8_t* seq = random_orders().data();
    for (auto _ : st) {
        ChurnSlot& s = ring[i % kChurnLive];
        if (s.live) b.free_offset(s.offset, s.order);
        const unsigned order = seq[i++ & kSeqMask];
        const auto off = b.alloc_offset(kmem::gfp::kernel | kmem::gfp::nowarn, order);
        keep(off);
        s = ChurnSlot{off.value_or(0), order, off.has_value()};
        failures += off.has_value() ? 0 : 1;
    }
    if (failures != 0) st.counters["failed_allocs"] = static_cast<double>(failures);
}

// ----- peers -----------------------------------------------------------------------------------------------
struct MallocPeer {
    void* get(std::size_t n) { return std::malloc(n); }
    void put(void* p, std::size_t) { std::free(p); }
};
struct NewPeer {
    void* get(std::size_t n) { return ::operator new(n); }
    void put(void* p, std::size_t n) { ::operator delete(p, n); }
};
struct PoolPeer {
    // Pools up to the largest request (4 MiB); the implementation may clamp it and send larger requests
    // upstream (new_delete_resource), as any user of the default options would see.
    std::pmr::unsynchronized_pool_resource pool{std::pmr::pool_options{0, kPageSize << kMaxOrder},
                                                std::pmr::new_delete_resource()};
    void* get(std::size_t n) { return pool.allocate(n); }
    void put(void* p, std::size_t n) { pool.deallocate(p, n); }
};

template <class Peer>
Peer& peer() {
    static Peer p;
    return p;
}

template <class Peer>
void peer_order0(benchmark::State& st) {
    Peer& a = peer<Peer>();
    for (auto _ : st) {
        void* p = a.get(kPageSize);
        keep(p);
        a.put(p, kPageSize);
    }
}

template <class Peer>
void peer_random(benchmark::State& st) {
    Peer& a = peer<Peer>();
    const std::uint8_t* seq = random_orders().data();
    std::size_t i = 0;
    for (auto _ : st) {
        const std::size_t n = kPageSize << seq[i++ & kSeqMask];
        void* p = a.get(n);
        keep(p);
        a.put(p, n);
    }
}

template <class Peer>
void peer_order0_batch(benchmark::State& st) {
    Peer& a = peer<Peer>();
    void* live[kBatch];
    for (auto _ : st) {
        for (auto& p : live) {
            p = a.get(kPageSize);
            keep(p);
        }
        for (void* p : live) a.put(p, kPageSize);
    }
}

// ----- registration ----------------------------------------------------------------------------------------
// Names double as keys for the summary; `pairs` is the number of alloc+free pairs in one iteration.
std::map<std::string, double, std::less<>> pairs_per_iteration;

template <class Fn>
void add(const std::string& name, double pairs, Fn&& fn) {
    pairs_per_iteration[name] = pairs;
    benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn))->Unit(benchmark::kNanosecond);
}

void register_all() {
    using namespace kmem;
    // order-0 pairs
    add("kmem/order0/empty", 1, [](benchmark::State& s) { kmem_order0(s, empty_arena(), gfp::kernel); });
    add("kmem/order0/fragmented", 1, [](benchmark::State& s) { kmem_order0(s, fragmented_arena(), gfp::kernel); });
    add("kmem/order0/empty/address", 1, [](benchmark::State& s) { kmem_order0_address(s, empty_arena()); });
    add("kmem/order0/empty/spinlock", 1, [](benchmark::State& s) { kmem_order0(s, spin_arena(), gfp::atomic); });
    add("kmem/order0/empty/pcp", 1, [](benchmark::State& s) { kmem_order0(s, pcp_arena(), gfp::kernel); });
    add("kmem/order0/empty/pcp/spinlock", 1,
        [](benchmark::State& s) { kmem_order0(s, spin_pcp_arena(), gfp::atomic); });
    add("malloc/order0", 1, peer_order0<MallocPeer>);
    add("new/order0", 1, peer_order0<NewPeer>);
    add("pmr_pool/order0", 1, peer_order0<PoolPeer>);
    // random orders 0..10
    add("kmem/random/empty", 1, [](benchmark::State& s) { kmem_random(s, empty_arena(), gfp::kernel); });
    add("kmem/random/fragmented", 1, [](benchmark::State& s) { kmem_random(s, fragmented_arena(), gfp::kernel); });
    add("kmem/random/empty/spinlock", 1, [](benchmark::State& s) { kmem_random(s, spin_arena(), gfp::atomic); });
    add("kmem/random/empty/pcp", 1, [](benchmark::State& s) { kmem_random(s, pcp_arena(), gfp::kernel); });
    add("malloc/random", 1, peer_random<MallocPeer>);
    add("new/random", 1, peer_random<NewPeer>);
    add("pmr_pool/random", 1, peer_random<PoolPeer>);
    // batches of 64 order-0 allocations, then 64 frees
    add("kmem/order0_batch64/empty", kBatch, [](benchmark::State& s) { kmem_order0_batch(s, empty_arena()); });
    add("kmem/order0_batch64/empty/pcp", kBatch, [](benchmark::State& s) { kmem_order0_batch(s, pcp_arena()); });
    add("malloc/order0_batch64", kBatch, peer_order0_batch<MallocPeer>);
    add("new/order0_batch64", kBatch, peer_order0_batch<NewPeer>);
    add("pmr_pool/order0_batch64", kBatch, peer_order0_batch<PoolPeer>);
    // offset-only regions, same op mix on 1 GiB and 64 GiB
    add("offset_1GiB/order0", 1, device_order0<kSmallDevice>);
    add("offset_64GiB/order0", 1, device_order0<kLargeDevice>);
    add("offset_1GiB/random", 1, device_random<kSmallDevice>);
    add("offset_64GiB/random", 1, device_random<kLargeDevice>);
    add("offset_1GiB/churn128", 1, device_churn<kSmallDevice>);
    add("offset_64GiB/churn128", 1, device_churn<kLargeDevice>);
}

// ----- collecting the medians ------------------------------------------------------------------------------
// Passes everything to the console reporter and keeps, per benchmark, the "median" aggregate (or, when run
// with --benchmark_repetitions=1, the median of the iteration runs it saw).
class MedianReporter : public benchmark::ConsoleReporter {
public:
    explicit MedianReporter(OutputOptions opts) : ConsoleReporter(opts) {}
    void ReportRuns(const std::vector<Run>& reports) override {
        for (const Run& r : reports) {
            if (r.error_occurred) continue;
            const std::string& name = r.run_name.function_name;
            if (r.run_type == Run::RT_Aggregate) {
                if (r.aggregate_name == "median") {
                    medians_[name] = r.GetAdjustedRealTime();
                    cpu_medians_[name] = r.GetAdjustedCPUTime();
                }
            } else {
                samples_[name].push_back(r.GetAdjustedRealTime());
            }
        }
        ConsoleReporter::ReportRuns(reports);
    }
    // Nanoseconds per iteration, or nullopt when the benchmark did not run.
    std::optional<double> median(std::string_view name) const {
        if (auto it = medians_.find(name); it != medians_.end()) return it->second;
        if (auto it = samples_.find(name); it != samples_.end() && !it->second.empty()) {
            std::vector<double> v = it->second;
            std::sort(v.begin(), v.end());
            const std::size_t m = v.size() / 2;
            return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
        }
        return std::nullopt;
    }
    // True when the median real time exceeds the median CPU time by more than 10%: the process was
    // preempted (other work on the machine), so that figure is inflated.
    bool preempted(std::string_view name) const {
        const auto r = medians_.find(name);
        const auto c = cpu_medians_.find(name);
        return r != medians_.end() && c != cpu_medians_.end() && r->second > 1.10 * c->second;
    }

private:
    std::map<std::string, double, std::less<>> medians_;
    std::map<std::string, double, std::less<>> cpu_medians_;
    std::map<std::string, std::vector<double>, std::less<>> samples_;
};

// ----- the summary table -----------------------------------------------------------------------------------
class Summary {
public:
    explicit Summary(const MedianReporter& r) : r_(r) {}

    // ns per alloc+free pair.
    std::optional<double> ns(std::string_view name) const {
        const auto t = r_.median(name);
        if (!t) return std::nullopt;
        const auto it = pairs_per_iteration.find(name);
        return *t / (it == pairs_per_iteration.end() ? 1.0 : it->second);
    }

    // ns figure of a case, with '*' when it was measured while preempted.
    std::string cell(std::string_view name) const { return num(ns(name)) + (r_.preempted(name) ? "*" : ""); }

    static std::string num(std::optional<double> v, const char* fmt = "%.1f") {
        if (!v) return "n/a";
        char buf[32];
        std::snprintf(buf, sizeof buf, fmt, *v);
        return buf;
    }
    static std::optional<double> ratio(std::optional<double> a, std::optional<double> b) {
        if (!a || !b || *b <= 0) return std::nullopt;
        return *a / *b;
    }

    void header(const char* title) const {
        std::printf("\n%s\n", title);
        std::printf("%-44s %9s %9s %9s %9s %8s  %s\n", "case", "ns/pair", "/malloc", "/new", "/pmr", "target",
                    "result");
        std::printf("%s\n", std::string(100, '-').c_str());
    }

    // A kmem row: its time, its ratios against the peers of the same op (kmem time / peer time, so < 1 means
    // kmem is faster), and an optional target in ns.
    void row(const char* label, std::string_view name, std::string_view peer_op, std::optional<double> target) {
        const auto t = ns(name);
        const std::string op(peer_op);
        const auto vm = peer_op.empty() ? std::nullopt : ratio(t, ns("malloc/" + op));
        const auto vn = peer_op.empty() ? std::nullopt : ratio(t, ns("new/" + op));
        const auto vp = peer_op.empty() ? std::nullopt : ratio(t, ns("pmr_pool/" + op));
        std::string result = "-";
        if (target && t) result = *t <= *target ? "PASS" : "MISS";
        else if (target) result = "n/a";
        std::printf("%-44s %9s %9s %9s %9s %8s  %s\n", label, cell(name).c_str(), num(vm, "%.2fx").c_str(),
                    num(vn, "%.2fx").c_str(), num(vp, "%.2fx").c_str(),
                    target ? ("<=" + num(target, "%.0f")).c_str() : "-", result.c_str());
        if (target && t) (*t <= *target ? passes_ : misses_) += 1;
    }
    void peer_row(const char* label, std::string_view name) const {
        std::printf("%-44s %9s\n", label, cell(name).c_str());
    }

    void scaling_row(const char* mix) {
        const std::string m(mix);
        const auto small = ns("offset_1GiB/" + m), large = ns("offset_64GiB/" + m);
        const auto q = ratio(large, small);
        std::string result = q ? (*q <= 1.2 ? "PASS" : "MISS") : "n/a";
        std::printf("%-14s %12s %12s %12s %10s  %s\n", mix, cell("offset_1GiB/" + m).c_str(),
                    cell("offset_64GiB/" + m).c_str(),
                    num(q, "%.3fx").c_str(), "<=1.20x", result.c_str());
        if (q) (*q <= 1.2 ? passes_ : misses_) += 1;
    }

    void line(const char* label, std::optional<double> v, const char* fmt) const {
        std::printf("  %-42s %s\n", label, num(v, fmt).c_str());
    }

    int passes() const { return passes_; }
    int misses() const { return misses_; }

private:
    const MedianReporter& r_;
    int passes_ = 0;
    int misses_ = 0;
};

void print_summary(const MedianReporter& rep) {
    Summary s(rep);
    std::printf("\n==== kmem::BuddyAllocator<10, 4096, MmapRegion> summary: median real time per alloc+free pair ====\n");
    std::printf("ratios are kmem / peer (below 1.00x: kmem is faster); peers allocate the same byte sizes "
                "(4096 << order)\n");

    s.header("-- order-0 pair (4 KiB) --");
    s.row("kmem + PerCpuPages, empty arena", "kmem/order0/empty/pcp", "order0", 15.0);
    s.row("kmem + PerCpuPages, SpinLock + gfp::atomic", "kmem/order0/empty/pcp/spinlock", "order0", 15.0);
    s.row("kmem, empty arena (splits+merges 10 levels)", "kmem/order0/empty", "order0", std::nullopt);
    s.row("kmem, half-fragmented arena", "kmem/order0/fragmented", "order0", 15.0);
    s.row("kmem, empty arena, address API", "kmem/order0/empty/address", "order0", std::nullopt);
    s.row("kmem, empty arena, SpinLock + gfp::atomic", "kmem/order0/empty/spinlock", "order0", std::nullopt);
    s.peer_row("  malloc/free", "malloc/order0");
    s.peer_row("  operator new/delete", "new/order0");
    s.peer_row("  pmr::unsynchronized_pool_resource", "pmr_pool/order0");

    s.header("-- random orders 0..10 pair (4 KiB .. 4 MiB, precomputed sequence) --");
    s.row("kmem, empty arena", "kmem/random/empty", "random", 40.0);
    s.row("kmem, half-fragmented arena", "kmem/random/fragmented", "random", 40.0);
    s.row("kmem, empty arena, SpinLock + gfp::atomic", "kmem/random/empty/spinlock", "random", std::nullopt);
    s.row("kmem + PerCpuPages, empty arena", "kmem/random/empty/pcp", "random", 40.0);
    s.peer_row("  malloc/free", "malloc/random");
    s.peer_row("  operator new/delete", "new/random");
    s.peer_row("  pmr::unsynchronized_pool_resource", "pmr_pool/random");

    s.header("-- order-0, batches of 64 allocations then 64 frees (per pair) --");
    s.row("kmem, empty arena", "kmem/order0_batch64/empty", "order0_batch64", std::nullopt);
    s.row("kmem + PerCpuPages, empty arena", "kmem/order0_batch64/empty/pcp", "order0_batch64", std::nullopt);
    s.peer_row("  malloc/free", "malloc/order0_batch64");
    s.peer_row("  operator new/delete", "new/order0_batch64");
    s.peer_row("  pmr::unsynchronized_pool_resource", "pmr_pool/order0_batch64");

    std::printf("\n-- lock cost (SpinLock + gfp::atomic minus NoLock, uncontended) --\n");
    const auto lock0 = s.ns("kmem/order0/empty/spinlock"), nolock0 = s.ns("kmem/order0/empty");
    const auto lockr = s.ns("kmem/random/empty/spinlock"), nolockr = s.ns("kmem/random/empty");
    s.line("order-0 pair: extra ns", lock0 && nolock0 ? std::optional<double>(*lock0 - *nolock0) : std::nullopt,
           "%+.1f ns");
    s.line("random pair:  extra ns", lockr && nolockr ? std::optional<double>(*lockr - *nolockr) : std::nullopt,
           "%+.1f ns");

    std::printf("\n-- offset-only regions (kmem::OffsetRegion, alloc_offset/free_offset): 64 GiB vs 1 GiB --\n");
    std::printf("%-14s %12s %12s %12s %10s  %s\n", "op mix", "1 GiB ns", "64 GiB ns", "64/1 ratio", "target",
                "result");
    std::printf("%s\n", std::string(76, '-').c_str());
    s.scaling_row("order0");
    s.scaling_row("random");
    s.scaling_row("churn128");

    if (!fragmented_profile.empty()) {
        std::printf("\nhalf-fragmented arena after setup: free blocks per order 0..10:");
        for (unsigned k = 0; k <= kMaxOrder; ++k)
            std::printf(" %llu", static_cast<unsigned long long>(fragmented_profile[k]));
        std::printf("  (%llu of %llu pages free)\n", static_cast<unsigned long long>(fragmented_profile[kMaxOrder + 1]),
                    static_cast<unsigned long long>(fragmented_profile[kMaxOrder + 2]));
    }
    std::printf("\n* median real time > 1.1x median CPU time: the run was preempted by other work; that figure "
                "(and its ratios) is inflated\n");
    std::printf("\ntargets: %d PASS, %d MISS (informational; the exit status does not depend on them)\n",
                s.passes(), s.misses());
}

// The value of `--flag=value` (or "" for a bare `--flag`), or nullopt when the flag is absent.
std::optional<std::string_view> flag_value(const std::vector<char*>& args, std::string_view flag) {
    for (std::size_t k = 1; k < args.size(); ++k) {
        const std::string_view a(args[k]);
        if (a.substr(0, flag.size()) != flag) continue;
        if (a.size() == flag.size()) return std::string_view{};
        if (a[flag.size()] == '=') return a.substr(flag.size() + 1);
    }
    return std::nullopt;
}
bool has_flag(const std::vector<char*>& args, std::string_view flag) { return flag_value(args, flag).has_value(); }

// A reporter handed to RunSpecifiedBenchmarks does not see --benchmark_color, so apply it here: colour only
// on a terminal unless the flag says otherwise.
benchmark::ConsoleReporter::OutputOptions console_options(const std::vector<char*>& args) {
    bool color = ::isatty(STDOUT_FILENO) != 0;
    if (const auto v = flag_value(args, "--benchmark_color")) {
        if (*v == "false" || *v == "no" || *v == "0") color = false;
        else if (*v == "true" || *v == "yes" || *v == "1" || v->empty()) color = true;
    }
    return color ? benchmark::ConsoleReporter::OO_ColorTabular : benchmark::ConsoleReporter::OO_Tabular;
}

} // namespace

int main(int argc, char** argv) {
    // Default flags, unless the command line sets them.
    static char repetitions[] = "--benchmark_repetitions=5";
    static char min_time[] = "--benchmark_min_time=0.2";
    static char aggregates[] = "--benchmark_report_aggregates_only=true";
    std::vector<char*> args(argv, argv + argc);
    if (!has_flag(args, "--benchmark_repetitions")) args.push_back(repetitions);
    if (!has_flag(args, "--benchmark_min_time")) args.push_back(min_time);
    if (!has_flag(args, "--benchmark_report_aggregates_only") && !has_flag(args, "--benchmark_display_aggregates_only"))
        args.push_back(aggregates);
    const auto console = console_options(args); // before Initialize() consumes the flags
    int n = static_cast<int>(args.size());
    args.push_back(nullptr);
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;

    register_all();
    MedianReporter reporter(console);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    print_summary(reporter);
    benchmark::Shutdown();
    return 0;
}
