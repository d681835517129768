// Multi-threaded tests of VirtualMap (CTest labels this file `threads`; CI runs it again under
// ThreadSanitizer).  Several threads vmalloc, vmap, vunmap and vfree on one VirtualMap whose page allocator holds
// fewer pages than they ask for together, so allocations fail near exhaustion; a share of the areas is freed by
// another thread than the one that made it; a reader thread meanwhile lists, counts, looks up and checks every
// invariant.  Every page of every area is stamped with its owner and checked (through the area and through the
// page allocator's own address) before it is freed: a page handed out twice, or mapped at the wrong place, would
// show.  The seed is printed; KMEM_SEED=<n> repeats a run's choices (not its interleaving).
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>
#include <kmem/vmap.hpp>

#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::Page;

constexpr std::size_t ps = 4096;

struct Held {
    std::byte* addr;
    std::size_t pages;
    std::uint64_t tag;
    bool vmap;
    std::vector<Page*> mapped; // vmap: the pages it maps (the maker's own pages)
};

std::uint64_t stamp(std::uint64_t tag, std::size_t k) {
    return kmem::test::SplitMix64(tag + k).next();
}

struct Shared {
    std::mutex mailbox_lock;
    std::deque<Held> mailbox; // vmalloc areas handed to another thread to free
    std::atomic<long> corrupted{0};
    std::atomic<long> failed{0};
    std::atomic<long> made{0};
    std::atomic<long> freed_by_other{0};
    std::atomic<bool> done{false};
    std::string reader_problem;
};

// One worker: random vmalloc / vmap / vunmap / vfree, with about a quarter of its vmalloc areas passed on.
template <class Vm, class Flags>
void worker(Vm& vm, Flags flags, Shared& shared, std::uint64_t seed, int iterations) {
    auto& buddy = vm.parent();
    kmem::test::Xoshiro256 rng(seed);
    std::vector<Held> held;
    std::vector<Page*> own_pages; // for vmap
    const auto check = [&](const Held& h) {
        for (std::size_t k = 0; k < h.pages; ++k) {
            std::uint64_t through_area = 0, through_page = 0;
            std::memcpy(&through_area, h.addr + k * ps, sizeof through_area);
            Page* page = vm.vmalloc_to_page(h.addr + k * ps);
            if (page == nullptr) {
                shared.corrupted.fetch_add(1);
                continue;
            }
            std::memcpy(&through_page, buddy.page_address(page), sizeof through_page);
            const std::uint64_t want =
                h.vmap ? stamp(reinterpret_cast<std::uintptr_t>(h.mapped[k]), 0) : stamp(h.tag, k);
            if (through_area != want || through_page != want) shared.corrupted.fetch_add(1);
        }
    };
    const auto release = [&](std::size_t i) {
        Held h = std::move(held[i]);
        held[i] = std::move(held.back());
        held.pop_back();
        check(h);
        if (h.vmap)
            vm.vunmap(h.addr);
        else
            vm.vfree(h.addr);
    };
    for (int it = 0; it < iterations; ++it) {
        const std::uint64_t r = rng.below(100);
        const auto count = [&](bool vmap) {
            return std::count_if(held.begin(), held.end(), [vmap](const Held& h) { return h.vmap == vmap; });
        };
        if (r < 45 && count(false) < 12) {
            const std::size_t n = rng.between(1, 96);
            auto* p = static_cast<std::byte*>(vm.vmalloc(n * ps - rng.below(ps), flags));
            if (p == nullptr) {
                shared.failed.fetch_add(1);
                continue;
            }
            shared.made.fetch_add(1);
            Held h{p, n, rng(), false, {}};
            for (std::size_t k = 0; k < n; ++k) {
                const std::uint64_t v = stamp(h.tag, k);
                std::memcpy(p + k * ps, &v, sizeof v);
            }
            if (rng.percent(25)) {
                std::lock_guard<std::mutex> g(shared.mailbox_lock);
                shared.mailbox.push_back(std::move(h));
            } else {
                held.push_back(std::move(h));
            }
        } else if (r < 55 && count(true) < 4) {
            if (own_pages.size() < 8) {
                if (Page* page = buddy.alloc_pages(flags, 0)) {
                    const std::uint64_t v = stamp(reinterpret_cast<std::uintptr_t>(page), 0);
                    std::memcpy(buddy.page_address(page), &v, sizeof v);
                    own_pages.push_back(page);
                }
            }
            if (own_pages.empty()) continue;
            std::vector<Page*> pages;
            const std::size_t n = rng.between(1, 6);
            for (std::size_t k = 0; k < n; ++k) pages.push_back(own_pages[rng.below(own_pages.size())]);
            auto* p = static_cast<std::byte*>(vm.vmap(pages));
            if (p == nullptr) {
                shared.corrupted.fetch_add(1); // the window is large: vmap must not fail
                continue;
            }
            held.push_back({p, n, 0, true, std::move(pages)});
        } else if (r < 65) {
            Held h;
            {
                std::lock_guard<std::mutex> g(shared.mailbox_lock);
                if (shared.mailbox.empty()) continue;
                h = std::move(shared.mailbox.front());
                shared.mailbox.pop_front();
            }
            check(h);
            vm.vfree(h.addr); // often made by another thread
            shared.freed_by_other.fetch_add(1);
        } else if (!held.empty()) {
            release(rng.below(held.size()));
        }
    }
    while (!held.empty()) release(held.size() - 1);
    for (Page* page : own_pages) buddy.free_pages(page, 0);
}

// Lists, counts, looks up and checks while the workers run.
template <class Vm>
void reader(Vm& vm, Shared& shared) {
    while (!shared.done.load()) {
        const std::string problem = vm.check_invariants();
        if (!problem.empty() && shared.reader_problem.empty()) shared.reader_problem = problem;
        const std::string info = vm.vmallocinfo();
        const kmem::VmallocStats s = vm.stats();
        if (s.address_used > s.address_space && shared.reader_problem.empty())
            shared.reader_problem = "more address space used than there is";
        if (!info.empty()) {
            const auto start = std::stoull(info.substr(2, 16), nullptr, 16);
            (void)vm.find_vm_area(reinterpret_cast<void*>(start)); // may be gone already: just must not crash
            (void)vm.vmalloc_to_page(reinterpret_cast<void*>(start));
        }
        std::this_thread::yield();
    }
}

template <class Vm, class Flags>
void run_threads(Vm& vm, Flags flags, unsigned threads, int iterations) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        Shared shared;
        std::latch start(threads + 1);
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
                start.arrive_and_wait();
                worker(vm, flags, shared, seed + t, iterations);
            });
        std::thread watcher([&] {
            start.arrive_and_wait();
            reader(vm, shared);
        });
        for (auto& th : pool) th.join();
        shared.done.store(true);
        watcher.join();
        for (Held& h : shared.mailbox) vm.vfree(h.addr); // whatever nobody picked up
        auto& buddy = vm.parent();
        BOOST_TEST_MESSAGE("made " << shared.made.load() << " failed " << shared.failed.load() << " other "
                                   << shared.freed_by_other.load());
        BOOST_TEST(shared.corrupted.load() == 0);
        BOOST_TEST(shared.reader_problem == "");
        BOOST_TEST(shared.made.load() > 100);
        BOOST_TEST(shared.failed.load() > 0); // they really ran the allocator dry
        BOOST_TEST(shared.freed_by_other.load() > 10);
        BOOST_TEST(vm.check_invariants() == "");
        BOOST_TEST(buddy.check_invariants() == "");
        std::uint64_t parked = 0; // pages on per-CPU lists are free too
        if constexpr (requires { buddy.nr_pcp_pages(); }) parked = buddy.nr_pcp_pages();
        BOOST_TEST(buddy.nr_free_pages() + parked == buddy.total_pages());
        const kmem::VmallocStats s = vm.stats();
        BOOST_TEST(s.address_used == 0u);
        BOOST_TEST(s.vmalloc_pages + s.vmap_pages + s.vmalloc_areas + s.vmap_areas == 0u);
        BOOST_TEST(s.allocations == s.frees);
        BOOST_TEST(s.failures == static_cast<std::uint64_t>(shared.failed.load()));
        BOOST_TEST(vm.vmallocinfo() == "");
    }
}

} // namespace

BOOST_AUTO_TEST_SUITE(vmap_threads)

BOOST_AUTO_TEST_CASE(mutex_near_exhaustion_with_frees_from_other_threads) {
    using Buddy = kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::MutexLock>;
    Buddy buddy(kmem::MemfdRegion(768 * ps)); // four threads may ask for 4 x 12 x 48 pages on average
    kmem::VirtualMap<Buddy&, kmem::policy::MutexLock> vm(buddy, {.address_space = std::size_t{256} << 20});
    vm.set_warning_stream(nullptr);
    run_threads(vm, gfp::kernel | gfp::nowarn, 4, 3000);
}

BOOST_AUTO_TEST_CASE(spin_lock_and_per_cpu_pages_with_atomic_flags) {
    using Buddy =
        kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::SpinLock, kmem::policy::PerCpuPages<>>;
    Buddy buddy(kmem::MemfdRegion(768 * ps));
    kmem::VirtualMap<Buddy&, kmem::policy::SpinLock> vm(buddy, {.address_space = std::size_t{256} << 20});
    vm.set_warning_stream(nullptr);
    run_threads(vm, gfp::atomic | gfp::nowarn, 3, 3000);
    buddy.drain_all_pages();
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_SUITE_END()
