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
// the ratios against the peers and the targets (PASS/MISS; a miss never fails the process).  The command
// line, the median collection and the table printing live in bench/support/; this file holds the cases and
// the layout of its summary.
#include <kmem/buddy.hpp>

#include "support/cli.hpp"
#include "support/report.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory_resource>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr unsigned kMaxOrder = 10;
constexpr std::size_t kPageSize = 4096;
constexpr std::size_t kHostBytes = std::size_t{256} << 20;      // host arena: 65536 pages, 64 order-10 blocks
constexpr std::uint64_t kSmallDevice = std::uint64_t{1} << 30;  // 1 GiB offset-only region
constexpr std::uint64_t kLargeDevice = std::uint64_t{64} << 30; // 64 GiB offset-only region
constexpr std::size_t kBatch = 64;                              // pairs per iteration in the batch cases
constexpr std::size_t kChurnLive = 128;                         // live blocks in the churn mix

using HostBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion>;
using SpinBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::SpinLock>;
using DeviceBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::OffsetRegion>;
using PcpBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::PerCpuPages<>>;
using SpinPcpBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::SpinLock,
                                          kmem::policy::PerCpuPages<>>;

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
    static HostBuddy& arena = []() -> HostBuddy& {
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
            case 0:
                b->free_pages(by_index[i], 0);
                b->free_pages(by_index[i + 1], 0);
                break;
            case 1:
                b->free_pages(by_index[i], 0);
                break;
            case 2:
                b->free_pages(by_index[i + 1], 0);
                break;
            default:
                break;
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

// Churn with half the arena live: blocks of random orders 0..6 are allocated until half the pages are live;
// each iteration then frees a random live block and allocates one of a new random order.  Per-CPU lists only
// help orders 0..3 and must not slow the rest down (the case the issue measured at 15.8 vs 12.9 ns).
constexpr std::size_t kChurnSeq = 1 << 16;
struct HalfChurnSlot {
    kmem::Page* page;
    unsigned order;
};
template <class Buddy>
void kmem_half_live_churn(benchmark::State& st, Buddy& b) {
    std::mt19937_64 rng(0x63687572ULL);
    std::vector<std::uint8_t> orders(kChurnSeq), victims(kChurnSeq);
    std::vector<std::uint32_t> picks(kChurnSeq);
    for (std::size_t k = 0; k < kChurnSeq; ++k) {
        orders[k] = static_cast<std::uint8_t>(rng() % 7);
        picks[k] = static_cast<std::uint32_t>(rng());
    }
    std::vector<HalfChurnSlot> live;
    std::uint64_t pages = 0;
    for (std::size_t k = 0; pages < b.total_pages() / 2; ++k) {
        const unsigned order = orders[k & (kChurnSeq - 1)];
        kmem::Page* p = b.alloc_pages(kmem::gfp::kernel | kmem::gfp::nowarn, order);
        if (p == nullptr) break;
        live.push_back({p, order});
        pages += std::uint64_t{1} << order;
    }
    std::size_t i = 0;
    std::int64_t failures = 0;
    for (auto _ : st) {
        HalfChurnSlot& s = live[picks[i & (kChurnSeq - 1)] % live.size()];
        b.free_pages(s.page, s.order);
        const unsigned order = orders[i++ & (kChurnSeq - 1)];
        kmem::Page* p = b.alloc_pages(kmem::gfp::kernel | kmem::gfp::nowarn, order);
        keep(p);
        if (p == nullptr) { // keep the slot valid: take back a block of the old order
            ++failures;
            p = b.alloc_pages(kmem::gfp::kernel, s.order);
        } else {
            s.order = order;
        }
        s.page = p;
    }
    for (const HalfChurnSlot& s : live) b.free_pages(s.page, s.order);
    if (failures != 0) st.counters["failed_allocs"] = static_cast<double>(failures);
}

// Fill then free all: every page of the arena allocated at order 0, then all freed (in allocation order); the
// time is per page (one allocation and one free).
template <class Buddy>
void kmem_fill_free(benchmark::State& st, Buddy& b) {
    std::vector<kmem::Page*> pages(b.total_pages());
    for (auto _ : st) {
        std::size_t n = 0;
        while (n < pages.size()) {
            kmem::Page* p = b.alloc_pages(kmem::gfp::kernel | kmem::gfp::nowarn, 0);
            if (p == nullptr) break;
            pages[n++] = p;
        }
        keep(pages.data());
        for (std::size_t k = 0; k < n; ++k) b.free_pages(pages[k], 0);
    }
}

// Threads sharing one SpinLock + PerCpuPages arena: each thread does kThreadPairs order-0 pairs; one iteration
// is the wall time from a common start to the last thread's end, so ns per pair over all threads gives the
// aggregate throughput and 1-thread ns / N-thread ns the scaling.
constexpr std::size_t kThreadPairs = 1000000;
template <class Buddy, class Flags>
void kmem_threads_order0(benchmark::State& st, Buddy& b, Flags flags) {
    const auto threads = static_cast<unsigned>(st.range(0));
    for (auto _ : st) {
        std::atomic<bool> go{false};
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&] {
                while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
                for (std::size_t k = 0; k < kThreadPairs; ++k) {
                    kmem::Page* p = b.alloc_pages(flags, 0);
                    keep(p);
                    b.free_pages(p, 0);
                }
            });
        const auto start = std::chrono::steady_clock::now();
        go.store(true, std::memory_order_release);
        for (std::thread& t : pool) t.join();
        st.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
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

// The thread counts measured: 1, 2, 4, ... up to the cores this machine has (at most 16).
unsigned thread_counts() {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : (hw > 16 ? 16 : hw);
}

// ----- registration ----------------------------------------------------------------------------------------
// Names double as keys for the summary; the second argument is the number of alloc+free pairs in one
// iteration.
using kmem::bench::add;

void register_all() {
    using namespace kmem;
    // order-0 pairs
    add("kmem/order0/empty", 1, [](benchmark::State& s) { kmem_order0(s, empty_arena(), gfp::kernel); });
    add("kmem/order0/fragmented", 1,
        [](benchmark::State& s) { kmem_order0(s, fragmented_arena(), gfp::kernel); });
    add("kmem/order0/empty/address", 1, [](benchmark::State& s) { kmem_order0_address(s, empty_arena()); });
    add("kmem/order0/empty/spinlock", 1,
        [](benchmark::State& s) { kmem_order0(s, spin_arena(), gfp::atomic); });
    add("kmem/order0/empty/pcp", 1, [](benchmark::State& s) { kmem_order0(s, pcp_arena(), gfp::kernel); });
    add("kmem/order0/empty/pcp/spinlock", 1,
        [](benchmark::State& s) { kmem_order0(s, spin_pcp_arena(), gfp::atomic); });
    add("malloc/order0", 1, peer_order0<MallocPeer>);
    add("new/order0", 1, peer_order0<NewPeer>);
    add("pmr_pool/order0", 1, peer_order0<PoolPeer>);
    // random orders 0..10
    add("kmem/random/empty", 1, [](benchmark::State& s) { kmem_random(s, empty_arena(), gfp::kernel); });
    add("kmem/random/fragmented", 1,
        [](benchmark::State& s) { kmem_random(s, fragmented_arena(), gfp::kernel); });
    add("kmem/random/empty/spinlock", 1,
        [](benchmark::State& s) { kmem_random(s, spin_arena(), gfp::atomic); });
    add("kmem/random/empty/pcp", 1, [](benchmark::State& s) { kmem_random(s, pcp_arena(), gfp::kernel); });
    add("malloc/random", 1, peer_random<MallocPeer>);
    add("new/random", 1, peer_random<NewPeer>);
    add("pmr_pool/random", 1, peer_random<PoolPeer>);
    // batches of 64 order-0 allocations, then 64 frees
    add("kmem/order0_batch64/empty", kBatch,
        [](benchmark::State& s) { kmem_order0_batch(s, empty_arena()); });
    add("kmem/order0_batch64/empty/pcp", kBatch,
        [](benchmark::State& s) { kmem_order0_batch(s, pcp_arena()); });
    add("malloc/order0_batch64", kBatch, peer_order0_batch<MallocPeer>);
    add("new/order0_batch64", kBatch, peer_order0_batch<NewPeer>);
    add("pmr_pool/order0_batch64", kBatch, peer_order0_batch<PoolPeer>);
    // per-CPU lists against the plain allocator on workloads they do not serve alone
    add("kmem/churn_half/plain", 1, [](benchmark::State& s) { kmem_half_live_churn(s, empty_arena()); });
    add("kmem/churn_half/pcp", 1, [](benchmark::State& s) { kmem_half_live_churn(s, pcp_arena()); });
    add("kmem/fill_free/plain", kHostBytes / kPageSize,
        [](benchmark::State& s) { kmem_fill_free(s, empty_arena()); });
    add("kmem/fill_free/pcp", kHostBytes / kPageSize,
        [](benchmark::State& s) { kmem_fill_free(s, pcp_arena()); });
    // threads sharing a SpinLock + PerCpuPages arena (as many as this machine has cores, at most 16)
    for (unsigned t = 1; t <= thread_counts(); t *= 2)
        add("kmem/threads" + std::to_string(t) + "/order0/pcp/spinlock",
            static_cast<double>(t * kThreadPairs),
            [](benchmark::State& s) { kmem_threads_order0(s, spin_pcp_arena(), gfp::atomic); })
            ->Arg(t)
            ->UseManualTime()
            ->Iterations(5);
    // offset-only regions, same op mix on 1 GiB and 64 GiB
    add("offset_1GiB/order0", 1, device_order0<kSmallDevice>);
    add("offset_64GiB/order0", 1, device_order0<kLargeDevice>);
    add("offset_1GiB/random", 1, device_random<kSmallDevice>);
    add("offset_64GiB/random", 1, device_random<kLargeDevice>);
    add("offset_1GiB/churn128", 1, device_churn<kSmallDevice>);
    add("offset_64GiB/churn128", 1, device_churn<kLargeDevice>);
}

// ----- the summary -----------------------------------------------------------------------------------------
void print_summary(const kmem::bench::Results& res) {
    using kmem::bench::format_value;
    using kmem::bench::ratio;
    kmem::bench::Verdicts verdicts;
    std::printf("\n==== kmem::BuddyAllocator<10, 4096, MmapRegion> summary: median real time per alloc+free "
                "pair ====\n");
    std::printf("ratios are kmem / peer (below 1.00x: kmem is faster); peers allocate the same byte sizes "
                "(4096 << order)\n");

    // kmem rows: ns per pair, kmem / peer for the peers' cases "<peer>/<op>", target in ns.
    kmem::bench::PeerTable t(res, verdicts, {{"malloc", "/malloc"}, {"new", "/new"}, {"pmr_pool", "/pmr"}});
    t.header("-- order-0 pair (4 KiB) --");
    t.row("kmem + PerCpuPages, empty arena", "kmem/order0/empty/pcp", "order0", 15.0);
    t.row("kmem + PerCpuPages, SpinLock + gfp::atomic", "kmem/order0/empty/pcp/spinlock", "order0", 15.0);
    t.row("kmem, empty arena (splits+merges 10 levels)", "kmem/order0/empty", "order0", std::nullopt);
    t.row("kmem, half-fragmented arena", "kmem/order0/fragmented", "order0", 15.0);
    t.row("kmem, empty arena, address API", "kmem/order0/empty/address", "order0", std::nullopt);
    t.row("kmem, empty arena, SpinLock + gfp::atomic", "kmem/order0/empty/spinlock", "order0", std::nullopt);
    t.peer_row("  malloc/free", "malloc/order0");
    t.peer_row("  operator new/delete", "new/order0");
    t.peer_row("  pmr::unsynchronized_pool_resource", "pmr_pool/order0");

    t.header("-- random orders 0..10 pair (4 KiB .. 4 MiB, precomputed sequence) --");
    t.row("kmem, empty arena", "kmem/random/empty", "random", 40.0);
    t.row("kmem, half-fragmented arena", "kmem/random/fragmented", "random", 40.0);
    t.row("kmem, empty arena, SpinLock + gfp::atomic", "kmem/random/empty/spinlock", "random", std::nullopt);
    t.row("kmem + PerCpuPages, empty arena", "kmem/random/empty/pcp", "random", 40.0);
    t.peer_row("  malloc/free", "malloc/random");
    t.peer_row("  operator new/delete", "new/random");
    t.peer_row("  pmr::unsynchronized_pool_resource", "pmr_pool/random");

    t.header("-- order-0, batches of 64 allocations then 64 frees (per pair) --");
    t.row("kmem, empty arena", "kmem/order0_batch64/empty", "order0_batch64", std::nullopt);
    t.row("kmem + PerCpuPages, empty arena", "kmem/order0_batch64/empty/pcp", "order0_batch64", std::nullopt);
    t.peer_row("  malloc/free", "malloc/order0_batch64");
    t.peer_row("  operator new/delete", "new/order0_batch64");
    t.peer_row("  pmr::unsynchronized_pool_resource", "pmr_pool/order0_batch64");

    // Per-CPU lists against the plain allocator, and the cost of sharing them (SpinLock) against NoLock.
    const kmem::bench::Table vs({{"case", 44, true},
                                 {"plain ns", 10},
                                 {"pcp ns", 10},
                                 {"pcp/plain", 10},
                                 {"target", 10},
                                 {"result", 0, true, 2}},
                                100);
    vs.header("-- PerCpuPages must not slow these down (ns per pair / per page) --");
    for (const auto& [label, key] :
         {std::pair<const char*, const char*>{"churn, orders 0..6, half the arena live", "churn_half"},
          {"fill the arena at order 0, then free all", "fill_free"}}) {
        const auto q =
            ratio(res.ns(std::string("kmem/") + key + "/pcp"), res.ns(std::string("kmem/") + key + "/plain"));
        vs.row({label, res.cell(std::string("kmem/") + key + "/plain"),
                res.cell(std::string("kmem/") + key + "/pcp"), format_value(q, "%.2fx"), "<=1.05x",
                verdicts.judge(q, 1.05)});
    }
    {
        const auto q = ratio(res.ns("kmem/order0/empty/pcp/spinlock"), res.ns("kmem/order0/empty/pcp"));
        vs.row({"order-0 pair: SpinLock+pcp (col 3) vs NoLock+pcp", res.cell("kmem/order0/empty/pcp"),
                res.cell("kmem/order0/empty/pcp/spinlock"), format_value(q, "%.2fx"), "<=1.30x",
                verdicts.judge(q, 1.3)});
    }

    const kmem::bench::Table mt({{"threads", 10, true},
                                 {"ns/pair (all)", 14},
                                 {"Mpairs/s", 10},
                                 {"x 1 thread", 12},
                                 {"target", 10},
                                 {"result", 0, true, 2}},
                                80);
    mt.header("-- threads sharing one SpinLock + PerCpuPages arena, order-0 pairs (this machine's cores) --");
    const auto one = res.ns("kmem/threads1/order0/pcp/spinlock");
    for (unsigned t = 1; t <= thread_counts(); t *= 2) {
        const std::string key = "kmem/threads" + std::to_string(t) + "/order0/pcp/spinlock";
        const auto ns = res.ns(key);
        const auto speedup = ratio(one, ns);
        const bool judged = t == 2;
        mt.row({std::to_string(t),
                format_value(ns), // wall time of the threads: CPU time is the main thread's, no '*'
                format_value(ns ? std::optional<double>(1e3 / *ns) : std::nullopt, "%.1f"),
                format_value(speedup, "%.2fx"), judged ? ">=1.90x" : "-",
                judged ? verdicts.judge(speedup ? std::optional<double>(1.0 / *speedup) : std::nullopt,
                                        1.0 / 1.9)
                       : "-"});
    }

    std::printf("\n-- lock cost (SpinLock + gfp::atomic minus NoLock, uncontended) --\n");
    const auto lock0 = res.ns("kmem/order0/empty/spinlock"), nolock0 = res.ns("kmem/order0/empty");
    const auto lockr = res.ns("kmem/random/empty/spinlock"), nolockr = res.ns("kmem/random/empty");
    kmem::bench::print_figure("order-0 pair: extra ns",
                              lock0 && nolock0 ? std::optional<double>(*lock0 - *nolock0) : std::nullopt,
                              "%+.1f ns");
    kmem::bench::print_figure("random pair:  extra ns",
                              lockr && nolockr ? std::optional<double>(*lockr - *nolockr) : std::nullopt,
                              "%+.1f ns");

    // Offset-only regions: the same op mix on 1 GiB and 64 GiB; the 64 GiB figure must stay within 1.2x.
    const kmem::bench::Table scaling({{"op mix", 14, true},
                                      {"1 GiB ns", 12},
                                      {"64 GiB ns", 12},
                                      {"64/1 ratio", 12},
                                      {"target", 10},
                                      {"result", 0, true, 2}},
                                     76);
    scaling.header(
        "-- offset-only regions (kmem::OffsetRegion, alloc_offset/free_offset): 64 GiB vs 1 GiB --");
    for (const char* mix_name : {"order0", "random", "churn128"}) {
        const std::string mix(mix_name);
        const auto q = ratio(res.ns("offset_64GiB/" + mix), res.ns("offset_1GiB/" + mix));
        scaling.row({mix, res.cell("offset_1GiB/" + mix), res.cell("offset_64GiB/" + mix),
                     format_value(q, "%.3fx"), "<=1.20x", verdicts.judge(q, 1.2)});
    }

    if (!fragmented_profile.empty()) {
        std::printf("\nhalf-fragmented arena after setup: free blocks per order 0..10:");
        for (unsigned k = 0; k <= kMaxOrder; ++k)
            std::printf(" %llu", static_cast<unsigned long long>(fragmented_profile[k]));
        std::printf("  (%llu of %llu pages free)\n",
                    static_cast<unsigned long long>(fragmented_profile[kMaxOrder + 1]),
                    static_cast<unsigned long long>(fragmented_profile[kMaxOrder + 2]));
    }
    kmem::bench::print_footer(verdicts);
}

} // namespace

int main(int argc, char** argv) {
    return kmem::bench::run_main(argc, argv, kmem::bench::standard_defaults(), register_all, print_summary);
}
