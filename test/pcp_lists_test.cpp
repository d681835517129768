// Tests for the per-CPU page lists of BuddyAllocator (policy::PerCpuPages, include/kmem/policy/pcp.hpp): the
// batch / high figures, one set of lists per CPU, what goes on a list and what bypasses it, refill in address
// order, the spill at `high`, drains, drain-and-retry on exhaustion, set_pcp_high_and_batch(), stats.
// Mistakes on parked blocks: pcp_mistakes_test.cpp; threads: pcp_threads_test.cpp; the model: pcp_model_test.cpp.
#include <kmem/buddy.hpp>
#include <kmem/detail/cpu.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/expect_error.hpp"
#include "support/pcp_arena.hpp"

#include <boost/test/unit_test.hpp>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::PageFlag;
using kmem::Placement;
using kmem::test::buddyinfo_line;
using kmem::test::check_from_outside;
using kmem::test::expect_consistent;
using kmem::test::expect_error;
using kmem::test::Parked;
using kmem::test::parked_blocks;
using namespace kmem::test::pcp_arena;

// Whether the per-CPU calls exist (they are constrained on has_pcp).
template <class A>
constexpr bool has_nr_pcp_pages = requires(const A& a) {
    a.nr_pcp_pages();
};
template <class A>
constexpr bool has_pcp_calls = requires(A& a) {
    a.drain_all_pages();
    a.drain_local_pages();
    a.set_pcp_high_and_batch(2u, 1u);
    a.pcp_batch();
    a.pcp_high();
    a.pcp_sets();
};

// Expects pcp_batch() / pcp_high() of a default-configured allocator over `bytes` of PageSize pages.
template <std::size_t PageSize = 4096, class Pcp = kmem::policy::PerCpuPages<>>
void expect_batch_high(std::uint64_t bytes, unsigned batch, unsigned high) {
    kmem::BuddyAllocator<10, PageSize, kmem::OffsetRegion, Pcp> a(bytes);
    BOOST_TEST_CONTEXT(bytes / MiB << " MiB of " << PageSize << "-byte pages (" << a.total_pages()
                                   << " pages)") {
        BOOST_TEST(a.pcp_batch() == batch);
        BOOST_TEST(a.pcp_high() == high);
        BOOST_TEST(a.nr_pcp_pages() == 0u);
    }
}

// Pins the calling thread to one CPU; false when the system refuses.
bool pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(pcp_setup)

BOOST_AUTO_TEST_CASE(default_batch_and_high_follow_zone_batchsize) {
    // batch = min(pages >> 10, 1 MiB / PageSize) / 4, at least 1, then bit_floor(b + b/2) - 1, at least 1;
    // high = zone_highsize(): the low watermark of a zone of that size (min = sqrt(16 * KiB) KiB clamped to
    // [128 KiB, 256 MiB], at most 1/16 of the zone; low = min + max(min / 4, 0.1 % of the pages)) over the
    // sets (one here: no lock), at least 4 * batch.  Worked by hand for each size:
    expect_batch_high(1 * MiB, 1, 20);     // 256 pages: batch 1; min 128 KiB = 32 pages, capped at 16; low 20
    expect_batch_high(16 * MiB, 1, 160);   // 4096 pages: batch 1; min sqrt(262144) = 512 KiB = 128; low 160
    expect_batch_high(32 * MiB, 1, 226);   // 8192: batch 1; min sqrt(524288) = 724 KiB = 181; low 181 + 45
    expect_batch_high(64 * MiB, 3, 320);   // 16384: 16 / 4 = 4 -> bit_floor(6) - 1 = 3; min 1024 KiB = 256
    expect_batch_high(100 * MiB, 7, 400);  // 25600: 25 / 4 = 6 -> bit_floor(9) - 1 = 7; min 1280 KiB = 320
    expect_batch_high(128 * MiB, 7, 452);  // 32768: 32 / 4 = 8 -> bit_floor(12) - 1 = 7; min 1448 KiB = 362
    expect_batch_high(256 * MiB, 15, 640); // 65536: 64 / 4 = 16 -> bit_floor(24) - 1 = 15; min 512, low 640
    expect_batch_high(512 * MiB, 31, 905); // 131072: 128 / 4 = 32 -> bit_floor(48) - 1 = 31; min 724
    expect_batch_high(1 * GiB, 63, 1286);  // 262144: 256 / 4 = 64 -> 63; min 1024, low 1024 + max(256, 262)
    expect_batch_high(4 * GiB, 63, 3096);  // 1048576: 1024, capped at 256 -> 63; min 2048, low 2048 + 1048
    expect_batch_high<65536>(4 * GiB, 3,
                             193);            // 65536 pages of 64 KiB: batch 3; min 8 MiB = 128, low 128 + 65
    expect_batch_high<65536>(1 * GiB, 3, 80); // 16384 pages: batch 3; min 4 MiB = 64, low 64 + 16
}

BOOST_AUTO_TEST_CASE(explicit_batch_and_high) {
    expect_batch_high<4096, kmem::policy::PerCpuPages<8, 32>>(64 * MiB, 8, 32);
    expect_batch_high<4096, kmem::policy::PerCpuPages<5>>(64 * MiB, 5, 320);      // high = low watermark
    expect_batch_high<4096, kmem::policy::PerCpuPages<100>>(64 * MiB, 100, 400);  // high = 4 * batch
    expect_batch_high<4096, kmem::policy::PerCpuPages<0, 100>>(64 * MiB, 3, 100); // computed batch
    expect_batch_high<4096, kmem::policy::PerCpuPages<0, 1>>(1 * GiB, 63, 63);    // high never below batch
    expect_batch_high<4096, kmem::policy::PerCpuPages<7, 7>>(1 * MiB, 7, 7);
}

BOOST_AUTO_TEST_CASE(compile_time_properties) {
    using kmem::policy::PerCpuPages;
    static_assert(PerCpuPages<>::batch == 0 && PerCpuPages<>::high == 0 && PerCpuPages<>::max_order == 3);
    static_assert(kmem::policy::is_per_cpu_pages<PerCpuPages<>>);
    static_assert(kmem::policy::is_per_cpu_pages<PerCpuPages<1, 2, 0>>);
    static_assert(!kmem::policy::is_per_cpu_pages<kmem::policy::SpinLock>);
    static_assert(OffPcp::has_pcp && OffPcp::pcp_max_order == 3);
    using Plain = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion>;
    static_assert(!Plain::has_pcp);
    static_assert(kmem::BuddyAllocator<2, ps, kmem::OffsetRegion, PerCpuPages<>>::pcp_max_order ==
                  2); // capped
    static_assert(kmem::BuddyAllocator<10, ps, kmem::OffsetRegion, PerCpuPages<0, 0, 8>>::pcp_max_order == 8);
    static_assert(kmem::BuddyAllocator<10, ps, kmem::OffsetRegion, PerCpuPages<0, 0, 0>>::pcp_max_order == 0);
    // The per-CPU calls exist only with the policy; the policy goes anywhere among the others.
    static_assert(has_pcp_calls<OffPcp>);
    static_assert(!has_pcp_calls<Plain>);
    static_assert(!has_nr_pcp_pages<Plain>);
    static_assert(has_nr_pcp_pages<OffPcp>);
    static_assert(
        kmem::BuddyAllocator<4, ps, PerCpuPages<>, kmem::policy::SpinLock, kmem::OffsetRegion>::has_pcp);
    static_assert(kmem::test::has_pcp_lists<OffPcp>() && !kmem::test::has_pcp_lists<Plain>());
    Plain plain(arena_bytes);
    BOOST_TEST(plain.stats().pcp_pages == 0u);
    BOOST_TEST(kmem::test::walk_from_outside(plain).pcp_pages == 0u);
}

BOOST_AUTO_TEST_CASE(one_set_without_a_lock_one_per_cpu_with_one) {
    const long cpus = ::sysconf(_SC_NPROCESSORS_CONF);
    const unsigned want = cpus > 0 ? static_cast<unsigned>(cpus) : 1u;
    OffPcp none(arena_bytes);
    BOOST_TEST(none.pcp_sets() == 1u);
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::SpinLock, Lists> spin(arena_bytes);
    BOOST_TEST(spin.pcp_sets() == want);
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::MutexLock, Lists> mutex(
        arena_bytes);
    BOOST_TEST(mutex.pcp_sets() == want);
    // Every CPU's set works: pages freed on one stay there until drain_all_pages() collects them all.
    Page* p = spin.alloc_pages(gfp::atomic, 0);
    BOOST_REQUIRE(p != nullptr);
    spin.free_pages(p, 0);
    BOOST_TEST(spin.nr_pcp_pages() == std::uint64_t{test_batch});
    BOOST_TEST(spin.check_invariants() == "");
    BOOST_TEST(check_from_outside(spin) == "");
    BOOST_TEST(spin.drain_all_pages() == std::uint64_t{test_batch});
    BOOST_TEST(spin.nr_free_pages() == arena_pages);
    BOOST_TEST(spin.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(the_set_used_is_the_calling_cpus) {
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    BOOST_REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE && cpus.size() < 4; ++c)
        if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
    BOOST_REQUIRE(!cpus.empty());
    // The cheap CPU number (rseq where the C library has it) agrees with sched_getcpu() on every CPU.
    for (const int c : cpus) {
        BOOST_REQUIRE(pin_to(c));
        BOOST_TEST(kmem::detail::current_cpu() == c);
        BOOST_TEST(::sched_getcpu() == c);
    }
    if (cpus.size() >= 2) {
        // A page freed on one CPU parks on that CPU's set: another CPU's drain_local_pages() leaves it alone.
        kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::SpinLock, Lists> spin(
            arena_bytes);
        BOOST_REQUIRE(pin_to(cpus[0]));
        Page* p = spin.alloc_pages(gfp::atomic, 0);
        BOOST_REQUIRE(p != nullptr);
        spin.free_pages(p, 0);
        BOOST_TEST(spin.nr_pcp_pages() == std::uint64_t{test_batch});
        BOOST_REQUIRE(pin_to(cpus[1]));
        BOOST_TEST(spin.drain_local_pages() == 0u);
        BOOST_TEST(spin.nr_pcp_pages() == std::uint64_t{test_batch});
        BOOST_REQUIRE(pin_to(cpus[0]));
        BOOST_TEST(spin.drain_local_pages() == std::uint64_t{test_batch});
        BOOST_TEST(spin.nr_pcp_pages() == 0u);
        BOOST_TEST(spin.check_invariants() == "");
    }
    BOOST_REQUIRE(::sched_setaffinity(0, sizeof allowed, &allowed) == 0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(pcp_lists)

BOOST_AUTO_TEST_CASE(a_freed_page_stays_on_the_list_until_drained) {
    OffPcp a(arena_bytes);
    const std::string initial = a.buddyinfo();
    BOOST_TEST(initial == buddyinfo_line({0, 0, 0, 0, 4}));
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(idx(a, p) == 0u);
    // The refill took batch (4) pages 0..3 off the free lists; one is handed out, three wait on the list.
    BOOST_TEST(a.nr_pcp_pages() == 3u);
    BOOST_TEST(a.nr_free_pages() == 60u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 1, 1, 3}));
    a.free_pages(p, 0);
    // Back on the list, not merged: the free lists and nr_free_pages() do not see it.
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    BOOST_TEST(a.nr_free_pages() == 60u);
    BOOST_TEST(a.nr_free(0) == 0u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 1, 1, 3}));
    BOOST_TEST(p->test(PageFlag::pcp));
    BOOST_TEST(!p->test(PageFlag::buddy));
    BOOST_TEST(!p->test(PageFlag::block));
    BOOST_TEST(p->refcount() == 0);
    BOOST_TEST((parked_blocks(a) == Parked{{0, 0}, {1, 0}, {2, 0}, {3, 0}}));
    const auto v = kmem::test::walk_from_outside(a);
    BOOST_TEST(v.error == "");
    BOOST_TEST(v.pcp_pages == 4u);
    BOOST_TEST(v.free_pages == 60u);
    BOOST_TEST(v.used_pages == 0u);
    const auto s = a.stats();
    BOOST_TEST(s.pcp_pages == 4u);
    BOOST_TEST(s.free_pages == 60u);
    expect_consistent(a);
    // The next allocation takes it back from the hot end.
    Page* again = a.alloc_pages(gfp::kernel, 0);
    BOOST_TEST(again == p);
    BOOST_TEST(a.nr_pcp_pages() == 3u);
    a.free_pages(again, 0);
    // drain_all_pages() merges everything: back to the initial buddyinfo.
    BOOST_TEST(a.drain_all_pages() == 4u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    BOOST_TEST(a.buddyinfo() == initial);
    BOOST_TEST(a.drain_all_pages() == 0u);
    expect_consistent(a);
    // drain_local_pages() does the same for the calling CPU's set (the only one here).
    Page* q = a.alloc_pages(gfp::kernel, 1);
    BOOST_REQUIRE(q != nullptr);
    a.free_pages(q, 1);
    BOOST_TEST(a.nr_pcp_pages() == 4u); // two order-1 blocks (batch 4 >> 1 = 2)
    BOOST_TEST(a.drain_local_pages() == 4u);
    BOOST_TEST(a.drain_local_pages() == 0u);
    BOOST_TEST(a.buddyinfo() == initial);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(refill_takes_blocks_in_address_order) {
    {
        OffPcp a(arena_bytes);
        std::vector<std::uint64_t> got;
        for (int n = 0; n < 16; ++n) {
            Page* p = a.alloc_pages(gfp::kernel, 0);
            BOOST_REQUIRE(p != nullptr);
            got.push_back(idx(a, p));
            BOOST_TEST(a.nr_pcp_pages() ==
                       static_cast<std::uint64_t>(3 - n % 4)); // refilled with 4 every fourth call
        }
        for (std::uint64_t n = 0; n < 16; ++n) BOOST_TEST(got[n] == n);
        BOOST_TEST(a.nr_free_pages() == 48u);
        expect_consistent(a);
    }
    {
        // batch 8: order 0 takes 8 pages, order 1 takes 8 >> 1 = 4 blocks, order 3 takes max(8 >> 3, 2) = 2.
        using A = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                       kmem::policy::PerCpuPages<8, 48>>;
        A a(arena_bytes);
        Page* p = a.alloc_pages(gfp::kernel, 0);
        BOOST_TEST(idx(a, p) == 0u);
        BOOST_TEST((parked_blocks(a) == Parked{{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}, {6, 0}, {7, 0}}));
        for (std::uint64_t n = 1; n < 8; ++n) BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 0)) == n);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 1)) == 8u);
        BOOST_TEST((parked_blocks(a) == Parked{{10, 1}, {12, 1}, {14, 1}}));
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 1)) == 10u);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 1)) == 12u);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 3)) == 16u);
        BOOST_TEST((parked_blocks(a) == Parked{{14, 1}, {24, 3}}));
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 3)) == 24u);
        BOOST_TEST(a.nr_pcp_pages() == 2u);
        expect_consistent(a);
    }
    {
        // A refill takes at least two blocks: batch 4 >> 2 = 1, so order 2 takes 2; order 3 takes 2 too.
        OffPcp a(arena_bytes);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 2)) == 0u);
        BOOST_TEST(a.nr_pcp_pages() == 4u);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 2)) == 4u);
        BOOST_TEST(a.nr_pcp_pages() == 0u);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 3)) == 8u);
        BOOST_TEST(a.nr_pcp_pages() == 8u);
        BOOST_TEST((parked_blocks(a) == Parked{{16, 3}}));
        expect_consistent(a);
    }
}

BOOST_AUTO_TEST_CASE(an_allocation_streak_stops_refilling) {
    static_assert(OffPcp::pcp_refill_streak_limit == 8);
    OffPcp a(arena_bytes);
    std::vector<Page*> pages;
    for (int n = 0; n < 32; ++n) pages.push_back(a.alloc_pages(gfp::kernel, 0)); // 8 refills of 4, no free
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 32u);
    pages.push_back(a.alloc_pages(gfp::kernel, 0)); // the list is empty again: no ninth refill, one page
    BOOST_TEST(idx(a, pages.back()) == 32u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 31u);
    a.free_pages(pages.back(), 0); // a free ends the streak (and parks the page)
    pages.pop_back();
    BOOST_TEST(a.nr_pcp_pages() == 1u);
    pages.push_back(a.alloc_pages(gfp::kernel, 0)); // the hot end
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    pages.push_back(a.alloc_pages(gfp::kernel, 0)); // empty list, no streak: a refill of 4 again
    BOOST_TEST(a.nr_pcp_pages() == 3u);
    BOOST_TEST(a.nr_free_pages() == 27u);
    expect_consistent(a);
    for (Page* p : pages) a.free_pages(p, 0);
    a.drain_all_pages();
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(a_free_streak_bypasses_the_lists) {
    static_assert(OffPcp::pcp_free_streak_factor == 4);
    OffPcp a(arena_bytes);
    std::vector<Page*> pages;
    for (int n = 0; n < 60; ++n) pages.push_back(a.alloc_pages(gfp::kernel, 0));
    BOOST_TEST(a.nr_free_pages() == 4u);
    std::size_t n = 0;
    for (; n < 4 * test_high; ++n) a.free_pages(pages[n], 0); // 48 pages: through the lists (with spills)
    const std::uint64_t parked = a.nr_pcp_pages();
    BOOST_TEST(parked < std::uint64_t{test_high});
    for (; n < pages.size();
         ++n) { // past 4 * high pages freed with no allocation: straight to the free lists
        const std::uint64_t free_before = a.nr_free_pages();
        a.free_pages(pages[n], 0);
        BOOST_TEST(a.nr_pcp_pages() == parked);
        BOOST_TEST(a.nr_free_pages() == free_before + 1);
        BOOST_TEST(!a.pfn_to_page(a.page_to_pfn(pages[n]))->test(PageFlag::pcp));
    }
    expect_consistent(a);
    Page* p = a.alloc_pages(gfp::kernel, 0); // an allocation halves the streak: frees park again
    BOOST_TEST(a.nr_pcp_pages() == parked - 1);
    a.free_pages(p, 0);
    BOOST_TEST(a.nr_pcp_pages() == parked);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(reaching_high_gives_a_batch_back) {
    OffPcp a(arena_bytes);
    std::vector<Page*> pages;
    for (int n = 0; n < 16; ++n) pages.push_back(a.alloc_pages(gfp::kernel, 0)); // pages 0..15
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 48u);
    for (std::size_t n = 0; n < 11; ++n) a.free_pages(pages[n], 0);
    BOOST_TEST(a.nr_pcp_pages() == 11u); // below high (12)
    BOOST_TEST(a.nr_free_pages() == 48u);
    a.free_pages(pages[11],
                 0); // reaches high: batch (4) pages leave from the cold end (the first freed: 0..3)
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST(a.nr_free_pages() == 52u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 1, 0, 3})); // 0..3 merged into one order-2 block
    BOOST_TEST(at(a, 0)->test(PageFlag::buddy));
    BOOST_TEST(at(a, 0)->order() == 2u);
    BOOST_TEST(at(a, 4)->test(PageFlag::pcp));
    expect_consistent(a);
    for (std::size_t n = 12; n < 15; ++n) a.free_pages(pages[n], 0);
    BOOST_TEST(a.nr_pcp_pages() == 11u);
    a.free_pages(pages[15], 0); // again: 4..7 leave and merge with 0..3 into an order-3 block
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST(a.nr_free_pages() == 56u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 1, 3}));
    BOOST_TEST(
        (parked_blocks(a) == Parked{{8, 0}, {9, 0}, {10, 0}, {11, 0}, {12, 0}, {13, 0}, {14, 0}, {15, 0}}));
    expect_consistent(a);
    BOOST_TEST(a.stats().frees == 16u);
    BOOST_TEST(a.drain_all_pages() == 8u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(spill_goes_round_robin_over_orders) {
    OffPcp a(arena_bytes);
    std::vector<Page*> small, pairs;
    for (int n = 0; n < 8; ++n) small.push_back(a.alloc_pages(gfp::kernel, 0)); // pages 0..7
    for (int n = 0; n < 4; ++n) pairs.push_back(a.alloc_pages(gfp::kernel, 1)); // 8, 10, 12, 14
    for (std::uint64_t n = 0; n < 4; ++n) BOOST_TEST(idx(a, pairs[n]) == 8 + 2 * n);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    for (Page* p : pairs) a.free_pages(p, 1); // 8 pages on the order-1 list
    for (std::size_t n = 0; n < 3; ++n) a.free_pages(small[n], 0);
    BOOST_TEST(a.nr_pcp_pages() == 11u);
    // The fourth order-0 free reaches high: order 0 (page 0), order 1 (block 8), order 0 again (page 1) go back:
    // 4 pages, round robin from order 0.
    a.free_pages(small[3], 0);
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST((parked_blocks(a) == Parked{{2, 0}, {3, 0}, {10, 1}, {12, 1}, {14, 1}}));
    BOOST_TEST(a.nr_free_pages() == 52u);
    BOOST_TEST(a.buddyinfo() ==
               buddyinfo_line({0, 2, 0, 0, 3})); // 0+1 merged; 8 stays alone: its buddy 10 is parked
    // A free block of order 1 (8) next to a parked one of the same order (10) is fine from the outside too.
    BOOST_TEST(at(a, 8)->test(PageFlag::buddy));
    BOOST_TEST(at(a, 10)->test(PageFlag::pcp));
    BOOST_TEST(at(a, 10)->order() == 1u);
    expect_consistent(a);
    for (std::size_t n = 4; n < 8; ++n) a.free_pages(small[n], 0);
    // 8 + 4 = 12 again at the last free: the round robin goes on from order 1 (block 10), then order 0 (page 2),
    // then order 1 (block 12): 5 pages.
    BOOST_TEST(a.nr_pcp_pages() == 7u);
    BOOST_TEST((parked_blocks(a) == Parked{{3, 0}, {4, 0}, {5, 0}, {6, 0}, {7, 0}, {14, 1}}));
    expect_consistent(a);
    BOOST_TEST(a.drain_all_pages() == 7u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(orders_above_the_lists_bypass_them) {
    {
        OffPcp a(arena_bytes);
        Page* p = a.alloc_pages(gfp::kernel, 4); // above pcp_max_order (3): straight from the free lists
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(a.nr_pcp_pages() == 0u);
        BOOST_TEST(a.nr_free_pages() == 48u);
        BOOST_TEST(a.stats().allocations == 1u);
        a.free_pages(p, 4); // and straight back, merged
        BOOST_TEST(a.nr_pcp_pages() == 0u);
        BOOST_TEST(a.nr_free_pages() == arena_pages);
        BOOST_TEST(a.stats().frees == 1u);
        BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    }
    {
        using A = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                       kmem::policy::PerCpuPages<test_batch, test_high, 1>>;
        static_assert(A::pcp_max_order == 1);
        A a(arena_bytes);
        Page* two = a.alloc_pages(gfp::kernel, 2);
        BOOST_TEST(a.nr_pcp_pages() == 0u);
        Page* one = a.alloc_pages(gfp::kernel, 1);
        BOOST_TEST(a.nr_pcp_pages() == 2u); // 4 >> 1 = 2 blocks taken, one handed out
        a.free_pages(two, 2);
        BOOST_TEST(a.nr_pcp_pages() == 2u);
        a.free_pages(one, 1);
        BOOST_TEST(a.nr_pcp_pages() == 4u);
        expect_consistent(a);
        BOOST_TEST(a.drain_all_pages() == 4u);
        BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    }
    {
        // MaxOrder below the policy's: every order goes through the lists.
        using A = kmem::BuddyAllocator<2, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError, Lists>;
        A a(std::uint64_t{16} * ps);
        Page* p = a.alloc_pages(gfp::kernel, 2);
        BOOST_TEST(a.nr_pcp_pages() == 4u);
        a.free_pages(p, 2);
        BOOST_TEST(a.nr_pcp_pages() == 8u);
        BOOST_TEST(a.nr_free_pages() == 8u);
        expect_consistent(a);
        BOOST_TEST(a.drain_all_pages() == 8u);
        BOOST_TEST(a.buddyinfo() == "Node 0, zone   Normal      0      0      4 \n");
    }
}

BOOST_AUTO_TEST_CASE(placed_and_top_down_allocations_bypass_the_lists) {
    OffPcp a(arena_bytes);
    Page* top = a.alloc_pages(gfp::kernel, 0, Placement{.top_down = true});
    BOOST_REQUIRE(top != nullptr);
    BOOST_TEST(idx(a, top) == 63u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 63u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({1, 1, 1, 1, 3}));
    Page* mid = a.alloc_pages(gfp::kernel, 1, Placement{.start = 16 * ps, .end = 32 * ps});
    BOOST_REQUIRE(mid != nullptr);
    BOOST_TEST(idx(a, mid) == 16u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    auto off = a.alloc_offset(gfp::kernel, 2, Placement{.start = 32 * ps, .top_down = true});
    BOOST_REQUIRE(off.has_value());
    BOOST_TEST(*off == 56 * ps); // 60..63 is broken by page 63: the highest whole order-2 block is 56
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    // Their frees are ordinary frees of small orders: onto the list.
    a.free_pages(top, 0);
    a.free_pages(mid, 1);
    a.free_offset(*off, 2);
    BOOST_TEST(a.nr_pcp_pages() == 7u);
    expect_consistent(a);
    BOOST_TEST(a.drain_all_pages() == 7u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));

    // A window whose only free pages sit on a per-CPU list: the lists are drained and the call retried.  (After
    // the drain the free lists are in merge order, so the refill may come from any order-4 block: find it.)
    Page* p =
        a.alloc_pages(gfp::kernel, 0); // the first page of an aligned run of 4; the other 3 wait on the list
    BOOST_REQUIRE(p != nullptr);
    const std::uint64_t run = idx(a, p);
    BOOST_TEST(run % 4 == 0u);
    a.free_pages(p, 0);
    BOOST_TEST((parked_blocks(a) == Parked{{run, 0}, {run + 1, 0}, {run + 2, 0}, {run + 3, 0}}));
    Page* low = a.alloc_pages(gfp::kernel, 2, Placement{.start = run * ps, .end = (run + 4) * ps});
    BOOST_REQUIRE(low != nullptr);
    BOOST_TEST(idx(a, low) == run);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 60u);
    a.free_pages(low, 2);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(compound_pages_through_the_lists) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel | gfp::comp, 2);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(p->test(PageFlag::head));
    BOOST_TEST(a.compound_order(p) == 2u);
    for (int k = 1; k < 4; ++k) {
        BOOST_TEST(p[k].test(PageFlag::tail));
        BOOST_TEST(a.compound_head(p + k) == p);
    }
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    expect_consistent(a);
    a.put_page(p + 2); // through a tail: the head's last reference, the block goes on the list
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST(p->flags() == static_cast<std::uint16_t>(PageFlag::pcp)); // PG_head gone
    for (int k = 1; k < 4; ++k) BOOST_TEST(p[k].flags() == 0u);          // tails cleared
    expect_consistent(a);
    // Taken back as a plain block: no compound marks left over.
    Page* q = a.alloc_pages(gfp::kernel, 2);
    BOOST_TEST(q == p);
    BOOST_TEST(!q->test(PageFlag::head));
    BOOST_TEST(a.compound_order(q) == 0u);
    for (int k = 1; k < 4; ++k) BOOST_TEST(q[k].flags() == 0u);
    a.free_pages(q, 2);
    // And as a compound page again, freed by its head.
    Page* r = a.alloc_pages(gfp::kernel | gfp::comp, 2);
    BOOST_TEST(r == p);
    BOOST_TEST(r->test(PageFlag::head));
    BOOST_TEST(r[3].test(PageFlag::tail));
    a.free_pages(r, 2);
    BOOST_TEST(r[3].flags() == 0u);
    // Order 1, freed through free_pages; a tail passed to free_pages is not a block start.
    Page* s = a.alloc_pages(gfp::kernel | gfp::comp, 1);
    BOOST_REQUIRE(s != nullptr);
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(s + 1, 0); });
    a.free_pages(s, 1);
    BOOST_TEST(s[1].flags() == 0u);
    expect_consistent(a);
    a.drain_all_pages();
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(zeroed_page_from_the_list_is_zeroed) {
    MemPcp a(kmem::MmapRegion(arena_bytes, aligned()));
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    auto* bytes = static_cast<unsigned char*>(a.page_address(p));
    std::memset(bytes, 0xa5, ps);
    a.free_pages(p, 0);
    BOOST_TEST(a.nr_pcp_pages() == std::uint64_t{test_batch});
    Page* z = a.alloc_pages(gfp::kernel | gfp::zero, 0);
    BOOST_TEST(z == p); // the same page, back from the hot end
    BOOST_TEST(std::all_of(bytes, bytes + ps, [](unsigned char c) { return c == 0; }));
    std::memset(bytes, 0x5a, ps);
    a.free_page(bytes);
    void* again = a.get_zeroed_page(gfp::kernel);
    BOOST_TEST(again == static_cast<void*>(bytes));
    BOOST_TEST(std::all_of(bytes, bytes + ps, [](unsigned char c) { return c == 0; }));
    a.free_page(again);
    // Order 2 too, the whole block.
    auto* big = static_cast<unsigned char*>(a.get_free_pages(gfp::kernel, 2));
    BOOST_REQUIRE(big != nullptr);
    std::memset(big, 0xff, 4 * ps);
    a.free_pages(big, 2);
    auto* big_again = static_cast<unsigned char*>(a.get_free_pages(gfp::kernel | gfp::zero, 2));
    BOOST_TEST(big_again == big);
    BOOST_TEST(std::all_of(big, big + 4 * ps, [](unsigned char c) { return c == 0; }));
    a.free_pages(big_again, 2);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(exhaustion_drains_the_lists_and_retries) {
    OffPcp a(arena_bytes);
    a.set_warning_stream(nullptr);
    std::vector<Page*> pages(arena_pages, nullptr);
    for (std::uint64_t n = 0; n < arena_pages; ++n) {
        Page* p = a.alloc_pages(gfp::kernel, 0);
        BOOST_REQUIRE(p != nullptr);
        pages[idx(a, p)] = p;
    }
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, 0) == nullptr); // nothing anywhere
    BOOST_TEST(a.stats().failures == 1u);
    // Free an aligned run 4..7: it waits on the list, the free lists stay empty...
    for (std::uint64_t n = 4; n < 8; ++n) a.free_pages(std::exchange(pages[n], nullptr), 0);
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 0}));
    BOOST_TEST(a.largest_free_order() == -1);
    // ... yet an order-2 request succeeds: the lists are drained, 4..7 merge, and the allocation is retried.
    Page* two = a.alloc_pages(gfp::kernel, 2);
    BOOST_REQUIRE(two != nullptr);
    BOOST_TEST(idx(a, two) == 4u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(a.stats().failures == 1u);
    expect_consistent(a);
    // Four pages that form no pair: an order-1 request drains them, still fails, and they stay free.
    for (std::uint64_t n : {8u, 10u, 12u, 14u}) a.free_pages(std::exchange(pages[n], nullptr), 0);
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, 1) == nullptr);
    BOOST_TEST(a.stats().failures == 2u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 4u);
    BOOST_TEST(a.nr_free(0) == 4u);
    expect_consistent(a);
    Page* one = a.alloc_pages(gfp::kernel, 0); // an order-0 request refills from them
    BOOST_REQUIRE(one != nullptr);
    BOOST_TEST(a.nr_pcp_pages() == 3u);
    a.free_pages(one, 0);
    a.free_pages(two, 2);
    for (Page*& p : pages)
        if (p != nullptr) a.free_pages(std::exchange(p, nullptr), 0);
    a.drain_all_pages();
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(exhaustion_with_every_page_parked) {
    // high above the arena: every freed page stays on the list; an order-4 request (which bypasses the lists)
    // still succeeds after the drain.
    using A = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                   kmem::policy::PerCpuPages<4, 1000>>;
    A a(arena_bytes);
    a.set_warning_stream(nullptr);
    std::vector<Page*> pages;
    while (Page* p = a.alloc_pages(gfp::kernel | gfp::nowarn, 0)) pages.push_back(p);
    BOOST_TEST(pages.size() == arena_pages);
    for (Page* p : pages) a.free_pages(p, 0);
    BOOST_TEST(a.nr_pcp_pages() == arena_pages);
    BOOST_TEST(a.nr_free_pages() == 0u);
    expect_consistent(a);
    Page* big = a.alloc_pages(gfp::kernel, 4);
    BOOST_REQUIRE(big != nullptr);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 48u);
    a.free_pages(big, 4);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(set_pcp_high_and_batch_validates_and_drains) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    a.free_pages(p, 0);
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    // A misuse like any other: reported through the error policy (ErrorKind::bad_parameter), nothing changed.
    const auto rejected = [&](unsigned high, unsigned batch) {
        BOOST_TEST_CONTEXT("high " << high << ", batch " << batch) {
            expect_error(
                a, ErrorKind::bad_parameter, [&] { a.set_pcp_high_and_batch(high, batch); },
                "1 <= batch <= high");
        }
    };
    rejected(0, 0);
    rejected(4, 0);
    rejected(3, 4);
    rejected(0, 1);
    // Nothing changed, nothing drained.
    BOOST_TEST(a.pcp_batch() == test_batch);
    BOOST_TEST(a.pcp_high() == test_high);
    BOOST_TEST(a.nr_pcp_pages() == 4u);

    a.set_pcp_high_and_batch(20, 5);
    BOOST_TEST(a.pcp_batch() == 5u);
    BOOST_TEST(a.pcp_high() == 20u);
    BOOST_TEST(a.nr_pcp_pages() == 0u); // drained
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    p = a.alloc_pages(gfp::kernel, 0);
    BOOST_TEST(a.nr_pcp_pages() == 4u); // refilled with 5
    Page* q = a.alloc_pages(gfp::kernel, 1);
    BOOST_TEST(a.nr_pcp_pages() == 6u); // 5 >> 1 = 2 blocks, one handed out
    a.free_pages(p, 0);
    a.free_pages(q, 1);
    BOOST_TEST(a.nr_pcp_pages() == 9u);

    a.set_pcp_high_and_batch(2, 1);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    p = a.alloc_pages(gfp::kernel, 0); // a refill takes at least 2
    BOOST_TEST(a.nr_pcp_pages() == 1u);
    a.free_pages(p, 0); // 2 pages reach high: 1 goes back
    BOOST_TEST(a.nr_pcp_pages() == 1u);
    expect_consistent(a);

    a.set_pcp_high_and_batch(1, 1); // batch == high is allowed
    BOOST_TEST(a.pcp_high() == 1u);
    BOOST_TEST(a.pcp_batch() == 1u);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(stats_count_per_cpu_events) {
    OffPcp a(arena_bytes);
    std::vector<Page*> pages;
    for (int n = 0; n < 3; ++n) pages.push_back(a.alloc_pages(gfp::kernel, 0));
    auto s = a.stats();
    BOOST_TEST(s.allocations == 3u); // served from the list; the refill itself is no allocation
    BOOST_TEST(s.frees == 0u);
    BOOST_TEST(s.pcp_pages == 1u);
    BOOST_TEST(s.free_pages == 60u);
    BOOST_TEST(s.total_pages == arena_pages);
    BOOST_TEST(s.nr_free[0] == 0u);
    BOOST_TEST(s.nr_free[2] == 1u);
    a.free_pages(pages[0], 0);
    a.free_pages(pages[1], 0);
    s = a.stats();
    BOOST_TEST(s.frees == 2u);
    BOOST_TEST(s.pcp_pages == 3u);
    Page* big = a.alloc_pages(gfp::kernel, 4);
    BOOST_TEST(a.stats().allocations == 4u);
    a.free_pages(big, 4);
    BOOST_TEST(a.stats().frees == 3u);
    BOOST_TEST(a.drain_all_pages() == 3u); // a drain is no free event
    s = a.stats();
    BOOST_TEST(s.frees == 3u);
    BOOST_TEST(s.pcp_pages == 0u);
    BOOST_TEST(s.free_pages == 63u);
    a.free_pages(pages[2], 0);
    s = a.stats();
    BOOST_TEST(s.frees == 4u);
    BOOST_TEST(s.allocations == 4u);
    BOOST_TEST(s.failures == 0u);
    BOOST_TEST(s.free_pages + s.pcp_pages == s.total_pages);
    // A failure with the callback policy: an order above MaxOrder fails (it is no caller mistake: not reported).
    CbPcp c(arena_bytes);
    c.set_warning_stream(nullptr);
    kmem::test::expect_no_error(
        c, [&] { BOOST_TEST(c.alloc_pages(kmem::gfp_t(gfp::kernel), max_order + 1) == nullptr); });
    BOOST_TEST(c.stats().failures == 1u);
    BOOST_TEST(c.stats().allocations == 0u);
}

BOOST_AUTO_TEST_CASE(get_page_and_put_page_through_the_lists) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 1);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(a.nr_pcp_pages() == 2u);
    a.get_page(p);
    BOOST_TEST(p->refcount() == 2);
    a.put_page(p); // not the last reference: stays allocated
    BOOST_TEST(p->refcount() == 1);
    BOOST_TEST(p->test(PageFlag::block));
    BOOST_TEST(a.nr_pcp_pages() == 2u);
    a.get_page(p);
    a.free_pages(p, 1); // free_pages drops one reference too
    BOOST_TEST(p->refcount() == 1);
    BOOST_TEST(a.nr_pcp_pages() == 2u);
    a.put_page(p); // the last one: onto the list
    BOOST_TEST(p->refcount() == 0);
    BOOST_TEST(p->test(PageFlag::pcp));
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    BOOST_TEST(a.stats().frees == 1u);
    expect_error(a, ErrorKind::bad_refcount, [&] { a.get_page(p); });
    expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); }); // its count is already 0
    expect_consistent(a);
    // A compound page: references through a tail go to the head.
    Page* c = a.alloc_pages(gfp::kernel | gfp::comp, 1);
    BOOST_REQUIRE(c != nullptr);
    a.get_page(c + 1);
    BOOST_TEST(c->refcount() == 2);
    a.put_page(c + 1);
    BOOST_TEST(c->refcount() == 1);
    BOOST_TEST(c->test(PageFlag::head));
    const std::uint64_t before = a.nr_pcp_pages();
    a.put_page(c);
    BOOST_TEST(a.nr_pcp_pages() == before + 2);
    BOOST_TEST(c->flags() == static_cast<std::uint16_t>(PageFlag::pcp));
    BOOST_TEST(c[1].flags() == 0u);
    expect_consistent(a);
    a.drain_all_pages();
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(split_pages_go_on_the_list_one_by_one) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2);
    BOOST_REQUIRE(p != nullptr);
    a.split_page(p, 2);
    for (int k = 0; k < 4; ++k) a.free_pages(p + k, 0);
    BOOST_TEST(a.nr_pcp_pages() == 8u); // the other order-2 block of the refill + four order-0 pages
    BOOST_TEST((parked_blocks(a) == Parked{{0, 0}, {1, 0}, {2, 0}, {3, 0}, {4, 2}}));
    expect_consistent(a);
    BOOST_TEST(a.drain_all_pages() == 8u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(exact_allocations_free_straight_to_the_free_lists) {
    {
        OffPcp a(arena_bytes);
        auto off = a.alloc_offset_exact(3 * ps, gfp::kernel); // order 2 from the list (refill of 2 blocks)
        BOOST_REQUIRE(off.has_value());
        BOOST_TEST(*off == 0u);
        BOOST_TEST(a.nr_pcp_pages() == 4u);
        BOOST_TEST(a.nr_free_pages() == 57u); // 64 - 8 taken + the unused tail page 3
        BOOST_TEST(a.nr_free(0) == 1u);
        BOOST_TEST(a.stats().allocations == 1u);
        a.free_offset_exact(*off, 3 * ps); // the three pages go to the free lists, not the list
        BOOST_TEST(a.nr_pcp_pages() == 4u);
        BOOST_TEST(a.nr_free_pages() == 60u);
        BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 1, 1, 3}));
        BOOST_TEST(a.stats().frees == 3u);
        expect_consistent(a);
        a.drain_all_pages();
        BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    }
    {
        MemPcp a(kmem::MmapRegion(arena_bytes, aligned()));
        void* p = a.alloc_pages_exact(5 * ps, gfp::kernel); // order 3 from the list
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(a.nr_pcp_pages() == 8u);
        BOOST_TEST(a.nr_free_pages() == 64u - 16u + 3u);
        a.free_pages_exact(p, 5 * ps);
        BOOST_TEST(a.nr_pcp_pages() == 8u);
        BOOST_TEST(a.nr_free_pages() == 56u);
        expect_consistent(a);
        // Pages of an exact allocation freed one by one are ordinary order-0 frees: onto the list.
        a.drain_all_pages(); // room below high
        auto* q = static_cast<std::byte*>(a.alloc_pages_exact(2 * ps, gfp::kernel));
        BOOST_REQUIRE(q != nullptr);
        const std::uint64_t parked_before = a.nr_pcp_pages();
        a.free_page(q);
        a.free_page(q + ps);
        BOOST_TEST(a.nr_pcp_pages() == parked_before + 2);
        expect_consistent(a);
        a.drain_all_pages();
        BOOST_TEST(a.nr_free_pages() == arena_pages);
    }
}

BOOST_AUTO_TEST_SUITE_END()
