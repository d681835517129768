// Benchmarks for kmem::VirtualMap (vmalloc over a BuddyAllocator on a 256 MiB MemfdRegion), with mmap measured
// in the same run as the peer.
//
// Every iteration is one whole cycle on 64 MiB: allocate, write one byte in every page (16384 pages), free.
// Cases:
//   * kmem vmalloc + touch + vfree (pages mapped at vmalloc time: VmapOptions::populate, the default);
//   * the same without populate (each page faults in on its first touch);
//   * vzalloc + touch + vfree (zeroed, as the peer's fresh anonymous memory is);
//   * vmalloc + vfree without touching (order-0 page allocations, the mapping calls, the unmapping);
//   * on a fragmented allocator (every other page held by someone else, so 16384 single-page mappings);
//   * peers: mmap(MAP_PRIVATE | MAP_ANONYMOUS) + touch + munmap, and the same with MAP_POPULATE.
// The same cycle on 64 KiB (16 pages) shows the fixed cost of a small area.
//
// The memfd's pages are faulted in once before the cases run, so kmem reuses memory it owns (as the kernel's
// vmalloc takes pages the buddy allocator already has), while each mmap cycle gets fresh zeroed pages from the
// system.  Figures are medians of real time (milliseconds per cycle in the summary); the target is kmem
// vmalloc + touch + vfree within 1.5x of mmap + touch + munmap.  Defaults: --benchmark_repetitions=5,
// --benchmark_min_time=0.2, --benchmark_report_aggregates_only=true; any --benchmark_* flag still works.
#include <kmem/buddy.hpp>
#include <kmem/vmap.hpp>

#include "support/cli.hpp"
#include "support/report.hpp"

#include <benchmark/benchmark.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kRegion = std::size_t{256} << 20; // the buddy's memfd
constexpr std::size_t kBig = std::size_t{64} << 20;     // one cycle's area
constexpr std::size_t kSmall = std::size_t{64} << 10;
constexpr double kMs = 1e6; // "units" per iteration that turn the summary's ns into ms

using Buddy = kmem::BuddyAllocator<10, kPage, kmem::MemfdRegion>;
using Vm = kmem::VirtualMap<Buddy&>;

template <class T>
inline void keep(const T& value) {
    benchmark::DoNotOptimize(value);
}

Buddy& make_buddy() {
    auto* b = new Buddy(kmem::MemfdRegion(kRegion, "vmap_bench"));
    std::memset(b->region().data(), 0, kRegion); // fault the memfd's pages in once
    return *b;
}
Buddy& buddy() {
    static Buddy& b = make_buddy();
    return b;
}
Buddy& fragmented_buddy() { // every other page held: no two free pages are neighbours
    static Buddy& b = []() -> Buddy& {
        Buddy& f = make_buddy();
        std::vector<kmem::Page*> all;
        while (kmem::Page* p = f.alloc_pages(kmem::gfp::kernel | kmem::gfp::nowarn, 0)) all.push_back(p);
        std::sort(all.begin(), all.end());
        for (std::size_t k = 0; k < all.size(); k += 2) f.free_pages(all[k], 0);
        return f;
    }();
    return b;
}
Vm& vm_populate() {
    static Vm vm(buddy());
    return vm;
}
Vm& vm_lazy() {
    static Vm vm(buddy(), {.populate = false});
    return vm;
}
Vm& vm_fragmented() {
    static Vm vm(fragmented_buddy());
    return vm;
}

void touch(void* p, std::size_t bytes) {
    auto* c = static_cast<volatile char*>(p);
    for (std::size_t off = 0; off < bytes; off += kPage) c[off] = 1;
}

void kmem_cycle(benchmark::State& st, Vm& vm, std::size_t bytes, bool zero, bool touch_pages) {
    for (auto _ : st) {
        void* p = zero ? vm.vzalloc(bytes) : vm.vmalloc(bytes);
        if (p == nullptr) {
            st.SkipWithError("vmalloc failed");
            break;
        }
        if (touch_pages) touch(p, bytes);
        keep(p);
        vm.vfree(p);
    }
}

void mmap_cycle(benchmark::State& st, std::size_t bytes, int extra_flags) {
    for (auto _ : st) {
        void* p =
            ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
        if (p == MAP_FAILED) {
            st.SkipWithError("mmap failed");
            break;
        }
        touch(p, bytes);
        keep(p);
        ::munmap(p, bytes);
    }
}

void register_all() {
    using kmem::bench::add;
    add("kmem/vmalloc_touch_vfree/64M", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_populate(), kBig, false, true); });
    add("kmem/vmalloc_touch_vfree/64M/lazy", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_lazy(), kBig, false, true); });
    add("kmem/vzalloc_touch_vfree/64M", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_populate(), kBig, true, true); });
    add("kmem/vmalloc_vfree/64M/lazy", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_lazy(), kBig, false, false); });
    add("kmem/vmalloc_touch_vfree/64M/fragmented", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_fragmented(), kBig, false, true); });
    add("mmap/touch_munmap/64M", kMs, [](benchmark::State& s) { mmap_cycle(s, kBig, 0); });
    add("mmap/touch_munmap/64M/populate", kMs,
        [](benchmark::State& s) { mmap_cycle(s, kBig, MAP_POPULATE); });
    add("kmem/vmalloc_touch_vfree/64K", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_populate(), kSmall, false, true); });
    add("kmem/vmalloc_touch_vfree/64K/lazy", kMs,
        [](benchmark::State& s) { kmem_cycle(s, vm_lazy(), kSmall, false, true); });
    add("mmap/touch_munmap/64K", kMs, [](benchmark::State& s) { mmap_cycle(s, kSmall, 0); });
}

void print_summary(const kmem::bench::Results& res) {
    using kmem::bench::format_value;
    using kmem::bench::ratio;
    kmem::bench::Verdicts verdicts;
    std::printf(
        "\n==== kmem::VirtualMap<BuddyAllocator<10, 4096, MemfdRegion 256 MiB>&> summary: median real time "
        "per cycle ====\n");
    std::printf(
        "cycle = allocate, write one byte per page, free; ratios are kmem / mmap (below 1.00x: kmem is "
        "faster)\n");
    const kmem::bench::Table t(
        {{"case", 52, true}, {"ms/cycle", 10}, {"/mmap", 9}, {"target", 9}, {"result", 0, true, 2}}, 96);
    const auto row = [&](const char* label, const std::string& name, const std::string& peer,
                         std::optional<double> limit) {
        const auto q = ratio(res.ns(name), res.ns(peer));
        const std::string ms = format_value(res.ns(name), "%.3f") + (res.preempted(name) ? "*" : "");
        t.row({label, ms, format_value(q, "%.2fx"), limit ? format_value(limit, "<=%.2fx") : "-",
               verdicts.judge(q, limit)});
    };
    t.header("-- 64 MiB (16384 pages) --");
    row("kmem vmalloc + touch + vfree (populated)", "kmem/vmalloc_touch_vfree/64M", "mmap/touch_munmap/64M",
        1.5);
    row("kmem vmalloc + touch + vfree (lazy faults)", "kmem/vmalloc_touch_vfree/64M/lazy",
        "mmap/touch_munmap/64M", std::nullopt);
    row("kmem vzalloc + touch + vfree", "kmem/vzalloc_touch_vfree/64M", "mmap/touch_munmap/64M",
        std::nullopt);
    row("kmem vmalloc + vfree, no touch (lazy)", "kmem/vmalloc_vfree/64M/lazy", "mmap/touch_munmap/64M",
        std::nullopt);
    row("kmem vmalloc + touch + vfree, fragmented buddy", "kmem/vmalloc_touch_vfree/64M/fragmented",
        "mmap/touch_munmap/64M", std::nullopt);
    row("  mmap + touch + munmap", "mmap/touch_munmap/64M", "mmap/touch_munmap/64M", std::nullopt);
    row("  mmap(MAP_POPULATE) + touch + munmap", "mmap/touch_munmap/64M/populate", "mmap/touch_munmap/64M",
        std::nullopt);
    t.header("-- 64 KiB (16 pages) --");
    row("kmem vmalloc + touch + vfree (populated)", "kmem/vmalloc_touch_vfree/64K", "mmap/touch_munmap/64K",
        std::nullopt);
    row("kmem vmalloc + touch + vfree (lazy faults)", "kmem/vmalloc_touch_vfree/64K/lazy",
        "mmap/touch_munmap/64K", std::nullopt);
    row("  mmap + touch + munmap", "mmap/touch_munmap/64K", "mmap/touch_munmap/64K", std::nullopt);
    kmem::bench::print_footer(verdicts);
}

} // namespace

int main(int argc, char** argv) {
    return kmem::bench::run_main(argc, argv, kmem::bench::standard_defaults(), register_all, print_summary);
}
