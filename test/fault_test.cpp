// Fault injection: the kernel's fault_attr knobs, fail_page_alloc in the buddy allocator, and a sweep that fails
// the k-th backing page allocation under kmalloc for every k, checking that nothing is lost.
#include <kmem/buddy.hpp>
#include <kmem/fault.hpp>
#include <kmem/kmalloc.hpp>

#include "support/fail_nth_sweep.hpp"

#include <boost/test/unit_test.hpp>

#include <cstring>
#include <vector>

namespace {

using kmem::FaultAttr;
using kmem::FaultInjector;
constexpr std::uint32_t kernel = kmem::gfp::kernel.value;
constexpr std::uint32_t atomic = kmem::gfp::atomic.value;

std::vector<bool> run(FaultInjector& f, int n, std::uint32_t gfp = kernel, std::uint64_t size = 4096) {
    std::vector<bool> out;
    for (int i = 0; i < n; ++i) out.push_back(f.should_fail(gfp, size));
    return out;
}

} // namespace

BOOST_AUTO_TEST_CASE(off_by_default_and_with_probability_zero) {
    FaultInjector f;
    for (bool b : run(f, 1000)) BOOST_TEST(!b);
    BOOST_TEST(f.failures() == 0u);
    BOOST_TEST(f.checked() == 1000u);
}

BOOST_AUTO_TEST_CASE(probability_is_honoured_and_deterministic_under_a_seed) {
    FaultInjector a(FaultAttr{.probability = 30, .seed = 42});
    FaultInjector b(FaultAttr{.probability = 30, .seed = 42});
    FaultInjector c(FaultAttr{.probability = 30, .seed = 43});
    const auto ra = run(a, 20000), rb = run(b, 20000), rc = run(c, 20000);
    BOOST_TEST((ra == rb), "the same seed fails the same requests");
    BOOST_TEST((ra != rc), "another seed fails other requests");
    BOOST_TEST(a.failures() > 5400u);
    BOOST_TEST(a.failures() < 6600u); // 30 % of 20000, well within six standard deviations
    a.reseed();
    BOOST_TEST((run(a, 20000) == ra), "reseed() starts the same sequence again");
    FaultInjector all(FaultAttr{.probability = 100});
    for (bool x : run(all, 100)) BOOST_TEST(x);
}

BOOST_AUTO_TEST_CASE(times_interval_and_space) {
    FaultInjector times(FaultAttr{.probability = 100, .times = 3});
    const auto r = run(times, 10);
    BOOST_TEST(std::count(r.begin(), r.end(), true) == 3);
    BOOST_TEST((r[0] && r[1] && r[2] && !r[3]));
    BOOST_TEST(times.attr().times == 0);

    FaultInjector every3(FaultAttr{.probability = 100, .interval = 3});
    const auto e = run(every3, 9);
    BOOST_TEST((e == std::vector<bool>{false, false, true, false, false, true, false, false, true}));

    // space: the first 10000 bytes of requests pass, then requests fail.
    FaultInjector space(FaultAttr{.probability = 100, .space = 10000});
    const auto s = run(space, 4, kernel, 4096); // 4096 and 4096 pass (space 10000 -> 1808), then 4096 > 1808
    BOOST_TEST((s == std::vector<bool>{false, false, true, true}));
}

BOOST_AUTO_TEST_CASE(filters_nofail_wait_highmem_min_order) {
    kmem::policy::FailPageAlloc f(
        FaultAttr{.probability = 100, .min_order = 2, .ignore_gfp_wait = true, .ignore_gfp_highmem = true});
    BOOST_TEST(!f.should_fail(atomic, 1u)); // below min_order
    BOOST_TEST(f.should_fail(atomic, 2u));
    BOOST_TEST(!f.should_fail(kernel, 3u)); // may sleep: ignore-gfp-wait
    BOOST_TEST(!f.should_fail(atomic | kmem::gfp::highmem.value, 3u));
    BOOST_TEST(!f.should_fail(atomic | kmem::gfp::nofail.value, 3u)); // never NOFAIL
    FaultInjector plain(FaultAttr{.probability = 100});
    BOOST_TEST(!plain.should_fail((kmem::gfp::kernel | kmem::gfp::nofail).value, 4096));
    BOOST_TEST(plain.should_fail(kernel, 4096));
}

BOOST_AUTO_TEST_CASE(fail_nth_fails_exactly_one_request) {
    FaultInjector f(FaultAttr{.fail_nth = 4});
    const auto r = run(f, 8);
    BOOST_TEST((r == std::vector<bool>{false, false, false, true, false, false, false, false}));
}

BOOST_AUTO_TEST_CASE(fail_page_alloc_in_the_buddy_allocator) {
    kmem::BuddyAllocator<8, 4096, kmem::MmapRegion, kmem::policy::FailPageAlloc> buddy(
        kmem::MmapRegion(4 << 20));
    buddy.fault_policy().attr() = FaultAttr{.probability = 50, .min_order = 1, .seed = 7};
    buddy.fault_policy().reseed();
    std::vector<kmem::Page*> got;
    int failed = 0;
    for (int i = 0; i < 200; ++i) {
        kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 1);
        if (p == nullptr)
            ++failed;
        else
            got.push_back(p);
        kmem::Page* q = buddy.alloc_pages(kmem::gfp::kernel, 0); // below min_order: never fails
        BOOST_TEST_REQUIRE(q != nullptr);
        buddy.free_pages(q, 0);
    }
    BOOST_TEST(failed > 60);
    BOOST_TEST(failed < 140);
    BOOST_TEST(buddy.fault_policy().failures() == static_cast<std::uint64_t>(failed));
    BOOST_TEST(buddy.check_invariants() == "");
    for (kmem::Page* p : got) buddy.free_pages(p, 1);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    // NOFAIL requests are never failed.
    buddy.fault_policy().attr().probability = 100;
    kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::nofail, 1);
    BOOST_TEST(p != nullptr);
    buddy.free_pages(p, 1);
}

// The sweep: fail the k-th page allocation the page allocator sees while a kmalloc workload runs, for every k
// until a run sees no failure.  After each run every object is freed and the caches shrunk: the page allocator
// must have every page back and every invariant must hold, whichever allocation failed.
BOOST_AUTO_TEST_CASE(sweep_failing_the_kth_page_allocation_under_kmalloc) {
    using Buddy = kmem::BuddyAllocator<8, 4096, kmem::MmapRegion, kmem::policy::FailPageAlloc>;
    Buddy buddy(kmem::MmapRegion(8 << 20));
    const auto workload = [&](std::uint64_t k) {
        std::vector<std::pair<unsigned char*, std::size_t>> live;
        std::uint64_t nulls = 0;
        kmem::Kmalloc<Buddy> km(buddy);
        for (int i = 0; i < 300; ++i) {
            const std::size_t size = 1 + (static_cast<std::size_t>(i) * 2654435761u) % 20000;
            auto* p = static_cast<unsigned char*>(km.kmalloc(size, kmem::gfp::kernel));
            if (p == nullptr) {
                ++nulls;
                continue;
            }
            std::memset(p, static_cast<int>(i & 0xff), size);
            live.emplace_back(p, size);
            if (i % 3 == 2) { // free one in three as we go
                auto [q, n] = live[live.size() / 2];
                BOOST_TEST_REQUIRE(q[n - 1] == q[0]);
                km.kfree(q);
                live.erase(live.begin() + static_cast<std::ptrdiff_t>(live.size() / 2));
            }
        }
        BOOST_TEST_REQUIRE(km.validate() == "", "k = " << k);
        for (auto [p, n] : live) {
            BOOST_TEST_REQUIRE(p[0] == p[n - 1]);
            km.kfree(p);
        }
        km.shrink();
        BOOST_TEST_REQUIRE(km.validate() == "", "k = " << k);
        return nulls;
    };
    const int runs = kmem::test::sweep_fail_nth(buddy, workload, [] {});
    BOOST_TEST(runs > 20);
}

// failslab: object allocations fail on purpose; the cache stays consistent and every page comes back.
BOOST_AUTO_TEST_CASE(failslab_in_a_cache) {
    using Buddy = kmem::BuddyAllocator<8, 4096, kmem::MmapRegion>;
    Buddy buddy(kmem::MmapRegion(4 << 20));
    {
        kmem::KmemCache<Buddy, kmem::policy::FailSlab> cache(buddy, "failing", 64);
        cache.fault_policy().attr() = FaultAttr{.probability = 25, .seed = 3};
        cache.fault_policy().reseed();
        std::vector<void*> got;
        int failed = 0;
        for (int i = 0; i < 4000; ++i) {
            void* p = cache.alloc(kmem::gfp::kernel);
            if (p == nullptr)
                ++failed;
            else
                got.push_back(p);
        }
        BOOST_TEST(failed > 800);
        BOOST_TEST(failed < 1200);
        BOOST_TEST(cache.fault_policy().failures() == static_cast<std::uint64_t>(failed));
        BOOST_TEST(cache.validate() == "");
        // NOFAIL is never failed; ignore_gfp_wait spares callers that may sleep.
        cache.fault_policy().attr().probability = 100;
        void* q = cache.alloc(kmem::gfp::kernel | kmem::gfp::nofail);
        BOOST_TEST(q != nullptr);
        cache.fault_policy().attr().ignore_gfp_wait = true;
        void* r = cache.alloc(kmem::gfp::kernel);
        BOOST_TEST(r != nullptr);
        BOOST_TEST(cache.alloc(kmem::gfp::atomic) == nullptr);
        got.push_back(q);
        got.push_back(r);
        for (void* p : got) cache.free(p);
        BOOST_TEST(cache.destroy());
    }
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}
