// Benchmarks for kmem's object caches (kmem::SlabCache<T>, the kernel's kmem_cache) and the kmalloc family
// (kmem::Kmalloc), with peers measured in the same run.
//
// Every figure is the median over repetitions of the real time per alloc+free pair, in nanoseconds.
// Patterns, for objects of 16, 64 and 256 bytes:
//   * hot:   allocate one object, free it, repeat (64 pairs per iteration);
//   * batch: allocate 1000 objects, then free the 1000 in allocation order (per pair).
// Allocators:
//   * kmem, called directly (inlined, as users call it): SlabCache<T> and Kmalloc, each with NoLock and with
//     policy::SpinLock (+ gfp::atomic); slab pages come from a BuddyAllocator<10, 4096, MmapRegion> with the
//     kernel's per-CPU page lists (policy::PerCpuPages<>), with a SpinLock too for the locked variants;
//   * kmem's std::pmr resources: kmem::MemoryResource over Kmalloc with NoLock (the "unsynchronized" one) and
//     with SpinLock (the "synchronized" one), called through std::pmr::memory_resource as pmr users do;
//   * peers, through function pointers (the same indirect call for each): glibc malloc/free, mimalloc,
//     jemalloc and tcmalloc (each dlopen()ed: bench/support/peers.hpp; a missing one is skipped with a line),
//     boost::object_pool<T>; and libstdc++'s std::pmr::unsynchronized_pool_resource and
//     synchronized_pool_resource through std::pmr::memory_resource (a virtual call, as kmem's resources);
//   * a bare intrusive free list over a pre-carved array, called directly: the floor.
// Threads (1, 2, 4, ... up to this machine's cores, at most 16): SlabCache and Kmalloc with SpinLock over the
// SpinLock buddy, gfp::atomic, 64-byte objects; "hot" (every thread allocates and frees its own objects) and
// "producer/consumer" (pairs of threads: one allocates and passes objects through a ring, 32 at a time, the
// other frees them); the malloc peers and the ring alone run the same patterns for reference, and each figure
// carries the share of time its threads were on a CPU.  Memory: per kmalloc class, slab geometry, metadata and
// waste per object beside the kernel's SLUB.
//
// Defaults injected unless the command line sets them: --benchmark_repetitions=5, --benchmark_min_time=0.1,
// --benchmark_report_aggregates_only=true (about 80-90 s).  --quick: 3 repetitions of at least 0.01 s and
// shorter thread runs (a few seconds; figures are rougher).  Any --benchmark_* flag still works.  After Google
// Benchmark's output a summary prints the tables, the ratios and the targets (PASS/MISS; a miss never fails
// the process).
#include <kmem/buddy.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/pmr.hpp>
#include <kmem/slab.hpp>

#include "support/cli.hpp"
#include "support/peers.hpp"
#include "support/report.hpp"
#include "support/threads.hpp"

#include <benchmark/benchmark.h>
#if __has_include(<boost/pool/object_pool.hpp>)
#include <boost/pool/object_pool.hpp>
#define KMEM_BENCH_HAVE_BOOST_POOL 1
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <memory_resource>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

using kmem::bench::cpu_share;
using kmem::bench::cpu_shares;
using kmem::bench::run_threads;
using kmem::bench::thread_cpu_seconds;

constexpr unsigned kMaxOrder = 10;
constexpr std::size_t kPageSize = 4096;
constexpr std::size_t kArenaBytes = std::size_t{128} << 20; // per buddy arena (host memory, touched lazily)
constexpr std::size_t kHotPairs = 64;                       // pairs per iteration of the hot pattern
constexpr std::size_t kBatch = 1000;                        // objects per iteration of the batch pattern
constexpr std::array<std::size_t, 3> kSizes{16, 64, 256};
constexpr std::size_t kThreadSize = 64; // object size of the threaded cases

bool quick_mode = false; // --quick

using Buddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::PerCpuPages<>>;
using SpinBuddy = kmem::BuddyAllocator<kMaxOrder, kPageSize, kmem::MmapRegion, kmem::policy::SpinLock,
                                       kmem::policy::PerCpuPages<>>;

/// An object of N bytes, the T of the SlabCache<T> and boost::object_pool<T> cases.
template <std::size_t N>
struct Obj {
    std::byte bytes[N];
};

template <std::size_t N>
using Slab = kmem::SlabCache<Obj<N>, Buddy>;
template <std::size_t N>
using SpinSlab = kmem::SlabCache<Obj<N>, SpinBuddy, kmem::policy::SpinLock>;
using Km = kmem::Kmalloc<Buddy>;
using SpinKm = kmem::Kmalloc<SpinBuddy, kmem::policy::SpinLock>;
using KmResource = kmem::MemoryResource<Km>;
using SpinKmResource = kmem::MemoryResource<SpinKm, kmem::gfp::type<kmem::gfp::atomic>>;

// Keeps a value alive for the optimiser, through the const overload of DoNotOptimize (see buddy_bench.cpp).
template <class T>
inline void keep(const T& value) {
    benchmark::DoNotOptimize(value);
}

// Hides a value from the optimiser: afterwards it may be anything (so a function pointer is called
// indirectly, and a memory_resource* is not devirtualised).
template <class T>
inline T opaque(T value) {
    asm volatile("" : "+r"(value));
    return value;
}

// ----- kmem's allocators (built once, on first use, outside any timed region) -----------------------------
kmem::MmapOptions arena_options() {
    kmem::MmapOptions o;
    o.alignment = std::size_t{4} << 20; // order-10 aligned: the same block layout on every run
    return o;
}
Buddy& buddy() {
    static Buddy b(kArenaBytes, arena_options());
    return b;
}
SpinBuddy& spin_buddy() {
    static SpinBuddy b(kArenaBytes, arena_options());
    return b;
}
template <std::size_t N>
Slab<N>& slab() {
    static Slab<N> c(buddy(), "obj-" + std::to_string(N));
    return c;
}
template <std::size_t N>
SpinSlab<N>& spin_slab() {
    static SpinSlab<N> c(spin_buddy(), "obj-" + std::to_string(N) + "-spin");
    return c;
}
Km& km() {
    static Km k(buddy());
    return k;
}
SpinKm& spin_km() {
    static SpinKm k(spin_buddy(), kmem::SlabFlags::none, "kmalloc-spin-");
    return k;
}
KmResource& km_resource() {
    static KmResource r(km());
    return r;
}
SpinKmResource& spin_km_resource() {
    static SpinKmResource r(spin_km());
    return r;
}

// ----- the allocators as the patterns see them: get() and put(p) ------------------------------------------
template <std::size_t N>
struct SlabApi {
    Slab<N>& c;
    void* get() { return c.alloc(kmem::gfp::kernel); }
    void put(void* p) { c.free(static_cast<Obj<N>*>(p)); }
};
template <std::size_t N>
struct SpinSlabApi {
    SpinSlab<N>& c;
    void* get() { return c.alloc(kmem::gfp::atomic); }
    void put(void* p) { c.free(static_cast<Obj<N>*>(p)); }
};
template <std::size_t N>
struct KmallocApi {
    Km& k;
    void* get() { return k.kmalloc(N, kmem::gfp::kernel); }
    void put(void* p) { k.kfree(p); }
};
template <std::size_t N>
struct SpinKmallocApi {
    SpinKm& k;
    void* get() { return k.kmalloc(N, kmem::gfp::atomic); }
    void put(void* p) { k.kfree(p); }
};
// std::pmr resources (kmem's and libstdc++'s): the virtual allocate/deallocate with the default alignment.
template <std::size_t N>
struct PmrApi {
    std::pmr::memory_resource* r;
    void* get() { return r->allocate(N); }
    void put(void* p) { r->deallocate(p, N); }
};
// malloc-like peers and boost::object_pool: a function pointer each way.
template <std::size_t N>
struct FnApi {
    void* (*alloc)(std::size_t);
    void (*free)(void*);
    void* get() { return alloc(N); }
    void put(void* p) { free(p); }
};

// No allocator: get() returns the same static object, put() does nothing (the producer/consumer transport's
// own cost).
struct RingOnlyApi {
    void* get() {
        static std::byte object[64];
        return object;
    }
    void put(void*) {}
};

// The floor: an intrusive singly linked free list over a pre-carved array of N-byte slots, inlined.
template <std::size_t N>
class BareFreeList {
    struct alignas(16) Slot {
        std::byte bytes[N];
    };
    struct Node {
        Node* next;
    };

public:
    explicit BareFreeList(std::size_t count) : slots_(std::make_unique<Slot[]>(count)) {
        for (std::size_t i = count; i-- > 0;) put(&slots_[i]);
    }
    void* get() noexcept {
        Node* n = head_;
        head_ = n->next;
        return n;
    }
    void put(void* p) noexcept {
        auto* n = ::new (p) Node{head_};
        head_ = n;
    }

private:
    std::unique_ptr<Slot[]> slots_;
    Node* head_ = nullptr;
};
template <std::size_t N>
BareFreeList<N>& free_list() {
    static BareFreeList<N> l(kBatch + 1);
    return l;
}
template <std::size_t N>
struct FreeListApi {
    BareFreeList<N>& l;
    void* get() { return l.get(); }
    void put(void* p) { l.put(p); }
};

// kmalloc through function pointers, as the malloc peers are called (the size is then a run-time value too).
Km* kmalloc_fn_target = nullptr;
void* kmalloc_fn(std::size_t n) {
    return kmalloc_fn_target->kmalloc(n, kmem::gfp::kernel);
}
void kfree_fn(void* p) {
    kmalloc_fn_target->kfree(p);
}

#ifdef KMEM_BENCH_HAVE_BOOST_POOL
// boost::object_pool<Obj<N>>, reached through function pointers like the malloc peers.
template <std::size_t N>
boost::object_pool<Obj<N>>& boost_pool() {
    static boost::object_pool<Obj<N>> pool;
    return pool;
}
template <std::size_t N>
void* boost_alloc(std::size_t) {
    return boost_pool<N>().malloc();
}
template <std::size_t N>
void boost_free(void* p) {
    boost_pool<N>().free(static_cast<Obj<N>*>(p));
}
#endif

std::pmr::memory_resource& pmr_unsync() {
    static std::pmr::unsynchronized_pool_resource r;
    return r;
}
std::pmr::memory_resource& pmr_sync() {
    static std::pmr::synchronized_pool_resource r;
    return r;
}

// ----- the patterns ----------------------------------------------------------------------------------------
template <class Api>
void hot(benchmark::State& st, Api a) {
    for (auto _ : st)
        for (std::size_t k = 0; k < kHotPairs; ++k) {
            void* p = a.get();
            keep(p);
            a.put(p);
        }
}

template <class Api>
void batch(benchmark::State& st, Api a) {
    std::vector<void*> live(kBatch);
    for (auto _ : st) {
        for (void*& p : live) {
            p = a.get();
            keep(p);
        }
        for (void* p : live) a.put(p);
    }
}

// ----- threads ---------------------------------------------------------------------------------------------
// Pairs (hot) or objects (producer/consumer) each thread, or each producer, handles per iteration.
std::size_t thread_ops() {
    return quick_mode ? std::size_t{1} << 16 : std::size_t{1} << 20;
}

inline void cpu_relax(unsigned& spins) {
    if (++spins < 1024) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        spins = 0;
        std::this_thread::yield();
    }
}

// A single-producer single-consumer ring of object pointers, filled and drained a batch at a time (one index
// update per batch, so the transport costs little beside the allocator).
class Ring {
public:
    static constexpr std::size_t capacity = 1024;
    static constexpr std::size_t batch = 32; // objects the producer allocates before handing them over

    // Appends `n` (<= batch) pointers, waiting for room.
    void push(void* const* p, std::size_t n) {
        const std::size_t t = tail_.load(std::memory_order_relaxed);
        unsigned spins = 0;
        while (t + n - head_seen_ > capacity) {
            head_seen_ = head_.load(std::memory_order_acquire);
            if (t + n - head_seen_ > capacity) cpu_relax(spins);
        }
        for (std::size_t i = 0; i < n; ++i) slot_[(t + i) % capacity] = p[i];
        tail_.store(t + n, std::memory_order_release);
    }
    // Takes up to `max` pointers into `out`, waiting for at least one; returns how many.
    std::size_t pop(void** out, std::size_t max) {
        const std::size_t h = head_.load(std::memory_order_relaxed);
        unsigned spins = 0;
        while (tail_seen_ == h) {
            tail_seen_ = tail_.load(std::memory_order_acquire);
            if (tail_seen_ == h) cpu_relax(spins);
        }
        const std::size_t n = std::min(max, tail_seen_ - h);
        for (std::size_t i = 0; i < n; ++i) out[i] = slot_[(h + i) % capacity];
        head_.store(h + n, std::memory_order_release);
        return n;
    }

private:
    alignas(64) std::atomic<std::size_t> tail_{0}; // written by the producer
    std::size_t head_seen_ = 0;                    // the producer's copy of head_
    alignas(64) std::atomic<std::size_t> head_{0}; // written by the consumer
    std::size_t tail_seen_ = 0;                    // the consumer's copy of tail_
    alignas(64) std::array<void*, capacity> slot_{};
};

// Every thread allocates and frees its own objects.
template <class Api>
void threads_hot(benchmark::State& st, const std::string& key, Api a) {
    const auto n = static_cast<unsigned>(st.range(0));
    const std::size_t ops = thread_ops();
    for (auto _ : st)
        st.SetIterationTime(run_threads(key, n, [&](unsigned) {
            Api local = a;
            for (std::size_t k = 0; k < ops; ++k) {
                void* p = local.get();
                keep(p);
                local.put(p);
            }
        }));
}

// Producer/consumer: n / 2 pairs of threads; the producer of a pair allocates `ops` objects, 32 at a time, and
// passes them through a ring to its consumer, which frees them (every free is of an object another thread
// allocated).  With one thread, the same thread allocates 32 objects, then frees them, `ops` objects in all: the
// work one thread does when nobody shares it.
template <class Api>
void threads_producer_consumer(benchmark::State& st, const std::string& key, Api a) {
    const auto n = static_cast<unsigned>(st.range(0));
    const std::size_t ops = thread_ops();
    for (auto _ : st) {
        if (n == 1) {
            st.SetIterationTime(run_threads(key, 1, [&](unsigned) {
                Api local = a;
                std::array<void*, Ring::batch> held;
                for (std::size_t k = 0; k < ops; k += held.size()) {
                    for (void*& p : held) {
                        p = local.get();
                        keep(p);
                    }
                    for (void* p : held) local.put(p);
                }
            }));
            continue;
        }
        std::vector<Ring> rings(n / 2);
        st.SetIterationTime(run_threads(key, n / 2 * 2, [&](unsigned t) {
            Api local = a;
            Ring& ring = rings[t / 2];
            std::array<void*, Ring::batch> held;
            if (t % 2 == 0) {
                for (std::size_t k = 0; k < ops; k += held.size()) {
                    for (void*& p : held) {
                        p = local.get();
                        keep(p);
                    }
                    ring.push(held.data(), held.size());
                }
            } else {
                for (std::size_t k = 0; k < ops;) {
                    const std::size_t n = ring.pop(held.data(), held.size());
                    for (std::size_t i = 0; i < n; ++i) local.put(held[i]);
                    k += n;
                }
            }
        }));
    }
}

// The thread counts measured: 1, 2, 4, ... up to the cores this machine has (at most 16).
std::vector<unsigned> thread_counts() {
    const unsigned hw = std::thread::hardware_concurrency();
    const unsigned top = hw == 0 ? 1 : std::min(hw, 16u);
    std::vector<unsigned> v;
    for (unsigned t = 1; t <= top; t *= 2) v.push_back(t);
    return v;
}

// Objects handled per iteration of a threaded case.
double thread_units(bool producer_consumer, unsigned n) {
    const auto ops = static_cast<double>(thread_ops());
    if (!producer_consumer) return ops * n;
    return n == 1 ? ops : ops * (n / 2);
}

// ----- case names ------------------------------------------------------------------------------------------
// "<allocator>/<pattern><size>", e.g. "slab/hot64"; threaded cases "threads/<cache>/<pattern>/<n>".
struct Row {
    const char* key;   // the allocator part of case names
    const char* label; // the table's label
};
constexpr std::array<Row, 6> kKmemRows{{
    {"slab", "SlabCache<T>, NoLock"},
    {"slab_spin", "SlabCache<T>, SpinLock + gfp::atomic"},
    {"kmalloc", "kmalloc/kfree, NoLock"},
    {"kmalloc_spin", "kmalloc/kfree, SpinLock + gfp::atomic"},
    {"kmem_pmr", "pmr: MemoryResource<Kmalloc>, NoLock"},
    {"kmem_pmr_sync", "pmr: MemoryResource<Kmalloc>, SpinLock"},
}};
// Peers that are judged against (the "fastest peer" of each column).
constexpr std::array<Row, 7> kPeerRows{{
    {"glibc", "glibc malloc/free"},
    {"mimalloc", "mimalloc mi_malloc/mi_free"},
    {"jemalloc", "jemalloc malloc/free"},
    {"tcmalloc", "tcmalloc tc_malloc/tc_free"},
    {"boost_pool", "boost::object_pool<T> malloc/free"},
    {"pmr_unsync", "std::pmr::unsynchronized_pool_resource"},
    {"pmr_sync", "std::pmr::synchronized_pool_resource"},
}};
constexpr Row kFnRow{"kmalloc_fn", "kmalloc/kfree, NoLock, via fn pointers"};
constexpr Row kFloorRow{"freelist", "bare free list (floor, inlined)"};

std::string op_name(const char* pattern, std::size_t size) {
    return pattern + std::to_string(size);
}
std::string case_name(const char* key, const char* pattern, std::size_t size) {
    return std::string(key) + "/" + op_name(pattern, size);
}

// ----- registration ----------------------------------------------------------------------------------------
using kmem::bench::add;

template <std::size_t N, class Api>
void add_pattern(const char* key, const char* pattern, Api a) {
    if (std::string_view(pattern) == "hot")
        add(case_name(key, pattern, N), kHotPairs, [a](benchmark::State& s) { hot(s, a); });
    else
        add(case_name(key, pattern, N), kBatch, [a](benchmark::State& s) { batch(s, a); });
}

template <std::size_t N>
void add_size(const char* pattern) {
    add_pattern<N>("slab", pattern, SlabApi<N>{slab<N>()});
    add_pattern<N>("slab_spin", pattern, SpinSlabApi<N>{spin_slab<N>()});
    add_pattern<N>("kmalloc", pattern, KmallocApi<N>{km()});
    add_pattern<N>("kmalloc_spin", pattern, SpinKmallocApi<N>{spin_km()});
    add_pattern<N>("kmem_pmr", pattern, PmrApi<N>{opaque<std::pmr::memory_resource*>(&km_resource())});
    add_pattern<N>("kmem_pmr_sync", pattern,
                   PmrApi<N>{opaque<std::pmr::memory_resource*>(&spin_km_resource())});
    add_pattern<N>("kmalloc_fn", pattern, FnApi<N>{opaque(&kmalloc_fn), opaque(&kfree_fn)});
    add_pattern<N>("freelist", pattern, FreeListApi<N>{free_list<N>()});
    for (const kmem::bench::MallocPeer& p : kmem::bench::malloc_peers())
        if (p.loaded()) add_pattern<N>(p.name.c_str(), pattern, FnApi<N>{opaque(p.alloc), opaque(p.free)});
#ifdef KMEM_BENCH_HAVE_BOOST_POOL
    add_pattern<N>("boost_pool", pattern, FnApi<N>{opaque(&boost_alloc<N>), opaque(&boost_free<N>)});
#endif
    add_pattern<N>("pmr_unsync", pattern, PmrApi<N>{opaque(&pmr_unsync())});
    add_pattern<N>("pmr_sync", pattern, PmrApi<N>{opaque(&pmr_sync())});
}

void register_all() {
    std::printf(
        "slab_bench: kmem is called directly (inlined, as users call it); glibc, mimalloc, jemalloc, "
        "tcmalloc and boost::object_pool through function pointers (one indirect call per operation, "
        "the same for each); every std::pmr resource, kmem's included, through std::pmr::memory_resource "
        "(a virtual call).\n");
    for (const kmem::bench::MallocPeer& p : kmem::bench::malloc_peers()) {
        if (p.loaded())
            std::printf("slab_bench: peer %-9s %s from %s\n", p.name.c_str(), p.functions.c_str(),
                        p.library.c_str());
        else
            std::printf("slab_bench: peer %-9s skipped: %s\n", p.name.c_str(), p.missing.c_str());
    }
#ifdef KMEM_BENCH_HAVE_BOOST_POOL
    std::printf("slab_bench: peer boost_pool boost::object_pool<T> malloc/free (its free keeps the free list "
                "ordered: O(free objects) per free, which the batch pattern shows)\n");
#else
    std::printf("slab_bench: peer boost_pool skipped: <boost/pool/object_pool.hpp> not found (Debian package "
                "libboost-dev)\n");
#endif
    kmalloc_fn_target = &km();
    std::printf("slab_bench: per-CPU object arrays of the SpinLock caches use %s\n",
                spin_slab<64>().cache().uses_rseq() ? "restartable sequences (no atomic instruction)"
                                                    : "a test-and-set lock (no rseq here)");
    std::fflush(stdout);

    for (const char* pattern : {"hot", "batch"}) {
        add_size<16>(pattern);
        add_size<64>(pattern);
        add_size<256>(pattern);
    }
    for (unsigned n : thread_counts()) {
        const auto reg = [n](const std::string& prefix, bool pc, auto api) {
            const std::string name = prefix + "/" + std::to_string(n);
            add(name, thread_units(pc, n),
                [name, pc, api](benchmark::State& s) {
                    if (pc)
                        threads_producer_consumer(s, name, api);
                    else
                        threads_hot(s, name, api);
                })
                ->Arg(n)
                ->UseManualTime()
                ->Iterations(quick_mode ? 2 : 5);
        };
        reg("threads/slab/hot", false, SpinSlabApi<kThreadSize>{spin_slab<kThreadSize>()});
        reg("threads/slab/pc", true, SpinSlabApi<kThreadSize>{spin_slab<kThreadSize>()});
        reg("threads/kmalloc/hot", false, SpinKmallocApi<kThreadSize>{spin_km()});
        reg("threads/kmalloc/pc", true, SpinKmallocApi<kThreadSize>{spin_km()});
        // The transport alone: the producer hands over one static object again and again, nothing is freed.
        reg("threads/ring/pc", true, RingOnlyApi{});
        // The malloc peers under the same patterns, for reference (not judged).
        for (const kmem::bench::MallocPeer& p : kmem::bench::malloc_peers())
            if (p.loaded()) {
                const FnApi<kThreadSize> api{opaque(p.alloc), opaque(p.free)};
                reg("threads/" + p.name + "/hot", false, api);
                reg("threads/" + p.name + "/pc", true, api);
            }
    }
}

// ----- the summary -----------------------------------------------------------------------------------------
using kmem::bench::format_value;
using kmem::bench::ratio;

std::string ns_cell(const kmem::bench::Results& res, const std::string& name) {
    return format_value(res.ns(name), "%.2f") + (res.preempted(name) ? "*" : " ");
}

struct Fastest {
    std::string key;
    std::optional<double> ns;
};
Fastest fastest_peer(const kmem::bench::Results& res, const std::string& op) {
    Fastest f;
    for (const Row& r : kPeerRows) {
        const auto v = res.ns(std::string(r.key) + "/" + op);
        if (v && (!f.ns || *v < *f.ns)) f = Fastest{r.key, v};
    }
    return f;
}

std::vector<std::pair<const char*, std::size_t>> columns() {
    std::vector<std::pair<const char*, std::size_t>> c;
    for (const char* pattern : {"hot", "batch"})
        for (std::size_t size : kSizes) c.emplace_back(pattern, size);
    return c;
}

void print_matrix(const kmem::bench::Results& res) {
    std::vector<kmem::bench::Table::Column> cols{{"allocator (ns per alloc+free pair)", 44, true}};
    for (const auto& [pattern, size] : columns()) cols.push_back({op_name(pattern, size), 9});
    const kmem::bench::Table t(cols, 44 + 6 * 10);
    const auto line = [&](const Row& r) {
        std::vector<std::string> cells{r.label};
        for (const auto& [pattern, size] : columns())
            cells.push_back(ns_cell(res, case_name(r.key, pattern, size)));
        t.row(cells);
    };
    t.header("-- alloc+free pairs: hot = alloc one, free it; batch = alloc 1000, free the 1000 (sizes in "
             "bytes) --");
    for (const Row& r : kKmemRows) line(r);
    line(kFnRow);
    line(kFloorRow);
    std::printf("  peers:\n");
    for (const Row& r : kPeerRows) line(r);
    std::vector<std::string> cells{"fastest peer"};
    for (const auto& [pattern, size] : columns())
        cells.push_back(fastest_peer(res, op_name(pattern, size)).key);
    t.row(cells);
}

void print_targets(const kmem::bench::Results& res, kmem::bench::Verdicts& verdicts) {
    const kmem::bench::Table t({{"case", 46, true},
                                {"kmem ns", 9},
                                {"fastest peer", 13},
                                {"peer ns", 9},
                                {"ratio", 8},
                                {"target", 9},
                                {"result", 0, true, 2}},
                               104);
    t.header("-- targets: SlabCache and kmalloc <= 0.80x the fastest peer (ratio = kmem ns / peer ns) --");
    for (const auto& [pattern, size] : columns()) {
        const std::string op = op_name(pattern, size);
        const Fastest f = fastest_peer(res, op);
        for (std::size_t k = 0; k < 4; ++k) {
            const Row& r = kKmemRows[k];
            const std::string name = case_name(r.key, pattern, size);
            const auto q = ratio(res.ns(name), f.ns);
            t.row({op + "  " + r.label, ns_cell(res, name), f.key.empty() ? "n/a" : f.key,
                   format_value(f.ns, "%.2f"), format_value(q, "%.2fx"), "<=0.80x", verdicts.judge(q, 0.8)});
        }
    }
    const kmem::bench::Table p({{"case", 46, true},
                                {"kmem ns", 9},
                                {"peer", 13},
                                {"peer ns", 9},
                                {"speedup", 8},
                                {"target", 9},
                                {"result", 0, true, 2}},
                               104);
    p.header("-- targets: kmem's pmr resources >= 4x (unsynchronized) and >= 5x (synchronized) faster than "
             "libstdc++'s pool resources (speedup = peer ns / kmem ns) --");
    for (const auto& [pattern, size] : columns()) {
        const std::string op = op_name(pattern, size);
        for (const auto& [kmem_key, peer_key, label, factor] :
             {std::tuple<const char*, const char*, const char*, double>{"kmem_pmr", "pmr_unsync",
                                                                        "MemoryResource<Kmalloc>", 4.0},
              {"kmem_pmr_sync", "pmr_sync", "MemoryResource<Kmalloc>, SpinLock", 5.0}}) {
            const std::string kname = std::string(kmem_key) + "/" + op,
                              pname = std::string(peer_key) + "/" + op;
            const auto q = ratio(res.ns(kname), res.ns(pname)); // kmem / peer: the target is q <= 1 / factor
            const auto speedup = ratio(res.ns(pname), res.ns(kname));
            char target[16];
            std::snprintf(target, sizeof target, ">=%.0fx", factor);
            p.row({op + "  " + label, ns_cell(res, kname), peer_key, ns_cell(res, pname),
                   format_value(speedup, "%.2fx"), target, verdicts.judge(q, 1.0 / factor)});
        }
    }
}

void print_threads(const kmem::bench::Results& res, kmem::bench::Verdicts& verdicts) {
    const kmem::bench::Table t({{"case", 40, true},
                                {"threads", 8},
                                {"ns/object", 10},
                                {"Mobj/s", 9},
                                {"on CPU", 7},
                                {"x 1 thread", 11},
                                {"target", 9},
                                {"result", 0, true, 2}},
                               108);
    std::printf("\n(threads: this machine reports %u hardware threads; counts above it are not run)\n",
                std::thread::hardware_concurrency());
    t.header(
        "-- threads: SpinLock caches over a SpinLock + PerCpuPages buddy, gfp::atomic, 64-byte objects --");
    std::vector<std::tuple<std::string, std::string, bool>> rows{
        {"threads/slab/hot", "SlabCache<T>, hot (own objects)", true},
        {"threads/slab/pc", "SlabCache<T>, producer/consumer", true},
        {"threads/kmalloc/hot", "kmalloc, hot (own objects)", true},
        {"threads/kmalloc/pc", "kmalloc, producer/consumer", true}};
    rows.emplace_back("threads/ring/pc", "  the ring alone (no allocator)", false);
    for (const kmem::bench::MallocPeer& p : kmem::bench::malloc_peers())
        if (p.loaded()) {
            rows.emplace_back("threads/" + p.name + "/hot", "  peer " + p.name + ", hot", false);
            rows.emplace_back("threads/" + p.name + "/pc", "  peer " + p.name + ", producer/consumer", false);
        }
    for (const auto& [key, label, kmem_row] : rows) {
        const auto one = res.ns(key + "/1");
        for (unsigned n : thread_counts()) {
            const std::string name = key + "/" + std::to_string(n);
            const auto ns = res.ns(name);
            const auto speedup = ratio(one, ns); // throughput(n) / throughput(1)
            const bool judged = kmem_row && n > 1;
            // Target: throughput(n) >= 0.75 n throughput(1), i.e. 0.75 n / speedup <= 1.
            const auto q = ratio(std::optional<double>(0.75 * n), speedup);
            char target[16];
            std::snprintf(target, sizeof target, ">=%.2fx", 0.75 * n);
            const auto share = cpu_share(name);
            const bool starved = share && *share < 0.9;
            t.row({label, std::to_string(n), format_value(ns, "%.2f") + (starved ? "*" : " "),
                   format_value(ns ? std::optional<double>(1e3 / *ns) : std::nullopt, "%.1f"),
                   format_value(share ? std::optional<double>(100.0 * *share) : std::nullopt, "%.0f%%"),
                   format_value(speedup, "%.2fx"), judged ? target : "-",
                   judged ? verdicts.judge(q, 1.0) + (starved ? "*" : "") : "-"});
        }
    }
    std::printf(
        "  1-thread producer/consumer: one thread allocates 32 objects, then frees them; n threads: n/2 "
        "producer/consumer pairs passing objects through a ring, 32 at a time.  \"on CPU\": the threads' CPU "
        "time / "
        "(threads * wall time), median; '*' below 90%%: the threads did not get their cores (other work on "
        "the machine) and the figure is inflated.  Peers: through function pointers, for reference (not "
        "judged).\n");
}

// SLUB's slabinfo figures for the kmalloc caches (objperslab, pagesperslab): see print_memory().
struct KernelGeometry {
    std::size_t size;
    unsigned objs, pages;
    const char* note;
};
constexpr std::array<KernelGeometry, 13> kKernel{{
    {8, 512, 1, ""},
    {16, 256, 1, ""},
    {32, 128, 1, ""},
    {64, 64, 1, ""},
    {96, 42, 1, ""},
    {128, 32, 1, ""},
    {192, 21, 1, ""},
    {256, 16, 1, "32/2 with 8+ CPUs"},
    {512, 16, 2, "32/4 with 8+ CPUs"},
    {1024, 16, 4, "32/8 with 8+ CPUs"},
    {2048, 16, 8, ""},
    {4096, 8, 8, ""},
    {8192, 4, 8, ""},
}};

void print_memory() {
    // A fresh kmalloc over its own small arena: one object taken from every class, so each holds one slab.
    Buddy pages(std::size_t{16} << 20, arena_options());
    std::vector<kmem::SlabStats> stats;
    {
        Km k(pages);
        std::vector<void*> held;
        for (std::size_t size : kmem::kmalloc_sizes) held.push_back(k.kmalloc(size, kmem::gfp::kernel));
        stats = k.stats();
        for (void* p : held) k.kfree(p);
    }
    const kmem::bench::Table t({{"cache", 12, true},
                                {"objsize", 7},
                                {"kmem obj/pg", 12},
                                {"kernel obj/pg", 14},
                                {"meta B/obj", 11},
                                {"+pages B/obj", 13},
                                {"kernel B/obj", 13},
                                {"waste B/obj", 12},
                                {"kernel waste", 13},
                                {"", 0, true, 2}},
                               118);
    const long cpus = ::sysconf(_SC_NPROCESSORS_CONF);
    t.header("-- memory per kmalloc class: slab geometry, metadata and waste per object, kmem beside the "
             "kernel's SLUB --");
    for (std::size_t i = 0; i < stats.size() && i < kKernel.size(); ++i) {
        const kmem::SlabStats& s = stats[i];
        const KernelGeometry& kg = kKernel[i];
        const double objs = s.objperslab;
        const double slab_bytes = static_cast<double>(s.pagesperslab * s.page_size);
        const double meta = s.num_objs == 0 ? 0.0 : static_cast<double>(s.metadata_bytes) / s.num_objs;
        const double page_desc = static_cast<double>(s.pagesperslab * sizeof(kmem::Page)) / objs;
        const double waste = (slab_bytes - objs * s.objsize) / objs;
        const double kslab = static_cast<double>(kg.pages * kPageSize);
        const double kwaste = (kslab - kg.objs * static_cast<double>(kg.size)) / kg.objs;
        const double kmeta = 64.0 * kg.pages / kg.objs; // struct slab overlays the 64-byte struct pages
        char kmem_geo[32], kernel_geo[32];
        std::snprintf(kmem_geo, sizeof kmem_geo, "%u/%u", s.objperslab, s.pagesperslab);
        std::snprintf(kernel_geo, sizeof kernel_geo, "%u/%u", kg.objs, kg.pages);
        t.row({s.name, std::to_string(s.objsize), kmem_geo, kernel_geo, format_value(meta, "%.2f"),
               format_value(meta + page_desc, "%.2f"), format_value(kmeta, "%.2f"),
               format_value(waste, "%.2f"), format_value(kwaste, "%.2f"), kg.note});
    }
    std::printf(
        "  kmem: objsize is the stride; meta = metadata_bytes / num_objs (the slab descriptor, %zu bytes, "
        "kept "
        "outside the slab); +pages adds the %zu-byte page descriptors of the slab's pages; waste = (slab "
        "bytes - "
        "objperslab * objsize) / objperslab.  This machine: _SC_NPROCESSORS_CONF = %ld, so kmem's "
        "min_objects "
        "= 4 * (bit_width(cpus) + 1) = %u.\n",
        sizeof(kmem::detail::Slab), sizeof(kmem::Page), cpus,
        4u * (static_cast<unsigned>(std::bit_width(static_cast<unsigned long>(std::max(1L, cpus)))) + 1u));
    std::printf(
        "  kernel: objperslab/pagesperslab as /proc/slabinfo shows them on an x86-64 SLUB kernel with 4 KiB "
        "pages "
        "and 2-4 CPUs, i.e. mm/slub.c calculate_order() (v4.x-6.7) with slub_max_order 3 and min_objects = 4 "
        "* "
        "(fls(nr_cpus) + 1) = 12 or 16; with 8 or more CPUs (min_objects >= 20) the orders noted change.  "
        "Kernel metadata: struct slab overlays the 64-byte struct page of each slab page (64 * pages / "
        "objects); "
        "kernel waste = (slab bytes - objects * size) / objects.\n");
}

void print_summary(const kmem::bench::Results& res) {
    kmem::bench::Verdicts verdicts;
    std::printf(
        "\n==== kmem SlabCache<T> / kmalloc summary: median real time per alloc+free pair (ns) ====\n");
    std::printf("kmem called directly; malloc peers and boost::object_pool through function pointers; pmr "
                "resources through virtual calls; slab pages from BuddyAllocator<10, 4096, MmapRegion, "
                "PerCpuPages<>> (+ SpinLock for the locked variants)\n");
    print_matrix(res);
    print_targets(res, verdicts);
    print_threads(res, verdicts);
    print_memory();

    // The caches must be whole after the run: every object returned, every invariant holding.
    std::string problem = km().validate();
    if (problem.empty()) problem = spin_km().validate();
    for (std::string p :
         {slab<16>().validate(), slab<64>().validate(), slab<256>().validate(), spin_slab<16>().validate(),
          spin_slab<64>().validate(), spin_slab<256>().validate()})
        if (problem.empty()) problem = p;
    std::printf("\ncaches after the run: %s\n",
                problem.empty() ? "validate() holds for every cache" : problem.c_str());
    kmem::bench::print_footer(verdicts);
}

// The defaults of this program: 5 repetitions of at least 0.1 s (about 80-90 s in all), or with --quick 3
// repetitions of at least 0.01 s.
std::vector<kmem::bench::DefaultFlag> defaults(bool quick) {
    return {
        {quick ? "--benchmark_repetitions=3" : "--benchmark_repetitions=5", {"--benchmark_repetitions"}},
        {quick ? "--benchmark_min_time=0.01" : "--benchmark_min_time=0.1", {"--benchmark_min_time"}},
        {"--benchmark_report_aggregates_only=true",
         {"--benchmark_report_aggregates_only", "--benchmark_display_aggregates_only"}},
    };
}

} // namespace

int main(int argc, char** argv) {
    kmem::bench::restart_for_static_tls(
        argv); // jemalloc needs more static TLS than glibc reserves by default
    std::vector<char*> args;
    for (int i = 0; i < argc; ++i) {
        if (i > 0 && std::string_view(argv[i]) == "--quick")
            quick_mode = true;
        else
            args.push_back(argv[i]);
    }
    const int n = static_cast<int>(args.size());
    args.push_back(nullptr);
    return kmem::bench::run_main(n, args.data(), defaults(quick_mode), register_all, print_summary);
}
