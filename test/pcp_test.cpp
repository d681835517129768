// Tests for the per-CPU page lists of BuddyAllocator (policy::PerCpuPages, include/kmem/policy/pcp.hpp): the
// batch / high figures, what goes on a list and what bypasses it, refill in address order, the spill at `high`,
// drains, drain-and-retry on exhaustion, mistakes on blocks parked on a list, stats, a multi-threaded stress
// with lock policies, and a model-based randomized run (seed printed; KMEM_SEED=<n> repeats a run).
#include <kmem/buddy.hpp>
#include <kmem/detail/cpu.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <latch>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::PageFlag;
using kmem::Placement;
using kmem::test::check_from_outside;
using kmem::test::expect_consistent;
using kmem::test::nr_free_vector;
using kmem::test::Snapshot;

constexpr std::uint64_t MiB = std::uint64_t{1} << 20;
constexpr std::uint64_t GiB = std::uint64_t{1} << 30;
constexpr std::size_t ps = 4096;
constexpr unsigned max_order = 4;         // blocks of 1..16 pages
constexpr std::uint64_t arena_pages = 64; // four order-4 blocks
constexpr std::uint64_t arena_bytes = arena_pages * ps;
constexpr unsigned test_batch = 4;
constexpr unsigned test_high = 12;

using Lists = kmem::policy::PerCpuPages<test_batch, test_high>; // orders 0..3 on the lists
using OffPcp = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError, Lists>;
using MemPcp = kmem::BuddyAllocator<max_order, ps, kmem::MmapRegion, kmem::policy::ThrowOnError, Lists>;
using CbPcp = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::CallbackOnError, Lists>;

// An mmap region aligned to the largest block, so its layout (and buddyinfo) is deterministic.
kmem::MmapOptions aligned() { return kmem::MmapOptions{.alignment = ps << max_order}; }

// Runs `f`, which must throw kmem::bad_usage of `kind` whose message contains `needle`.
template <class F>
void expect_error(ErrorKind kind, F&& f, const std::string& needle = "") {
    try {
        f();
    } catch (const kmem::bad_usage& e) {
        BOOST_TEST(static_cast<int>(e.error().kind) == static_cast<int>(kind),
                   "expected '" << kmem::to_string(kind) << "' but got '" << kmem::to_string(e.error().kind)
                                << "': " << e.what());
        BOOST_TEST(e.error().message.find(needle) != std::string::npos,
                   "'" << e.error().message << "' does not mention '" << needle << "'");
        return;
    }
    BOOST_ERROR("expected a bad_usage '" << kmem::to_string(kind) << "' but nothing was thrown");
}

// The buddyinfo line for the given per-order counts (zone Normal, node 0).
std::string line(const std::vector<unsigned>& counts) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "Node %d, zone %8s ", 0, "Normal");
    std::string s = buf;
    for (unsigned c : counts) {
        std::snprintf(buf, sizeof buf, "%6u ", c);
        s += buf;
    }
    return s + "\n";
}

// The page's index in the allocator (pfn - first pfn); equal to the pfn for an OffsetRegion at base 0.
template <class A>
std::uint64_t idx(const A& a, const Page* p) {
    return a.page_to_pfn(p) - a.page_table().first_pfn();
}
template <class A>
Page* at(const A& a, std::uint64_t index) {
    return a.pfn_to_page(a.page_table().first_pfn() + index);
}

// The blocks parked on per-CPU lists, as (index, order), in address order: found by walking the page flags.
template <class A>
std::vector<std::pair<std::uint64_t, unsigned>> parked(const A& a) {
    std::vector<std::pair<std::uint64_t, unsigned>> out;
    for (std::uint64_t i = 0; i < a.total_pages();) {
        const Page* p = at(a, i);
        if (p->test(PageFlag::pcp)) out.emplace_back(i, p->order());
        i += std::uint64_t{1} << p->order();
    }
    return out;
}
using Parked = std::vector<std::pair<std::uint64_t, unsigned>>;

// Whether the per-CPU calls exist (they are constrained on has_pcp).
template <class A>
constexpr bool has_nr_pcp_pages = requires(const A& a) { a.nr_pcp_pages(); };
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
    BOOST_TEST_CONTEXT(bytes / MiB << " MiB of " << PageSize << "-byte pages (" << a.total_pages() << " pages)") {
        BOOST_TEST(a.pcp_batch() == batch);
        BOOST_TEST(a.pcp_high() == high);
        BOOST_TEST(a.nr_pcp_pages() == 0u);
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(pcp_setup)

BOOST_AUTO_TEST_CASE(default_batch_and_high_follow_zone_batchsize) {
    // batch = min(pages >> 10, 1 MiB / PageSize) / 4, at least 1, then bit_floor(b + b/2) - 1, at least 1;
    // high = 6 * batch.  Worked by hand for each size:
    expect_batch_high(1 * MiB, 1, 6);         // 256 pages: 0 -> 1 -> bit_floor(1) - 1 = 0 -> 1
    expect_batch_high(16 * MiB, 1, 6);        // 4096 pages: 4 / 4 = 1 -> 0 -> 1
    expect_batch_high(32 * MiB, 1, 6);        // 8192: 8 / 4 = 2 -> bit_floor(3) - 1 = 1
    expect_batch_high(64 * MiB, 3, 18);       // 16384: 16 / 4 = 4 -> bit_floor(6) - 1 = 3
    expect_batch_high(100 * MiB, 7, 42);      // 25600: 25 / 4 = 6 -> bit_floor(9) - 1 = 7
    expect_batch_high(128 * MiB, 7, 42);      // 32768: 32 / 4 = 8 -> bit_floor(12) - 1 = 7
    expect_batch_high(256 * MiB, 15, 90);     // 65536: 64 / 4 = 16 -> bit_floor(24) - 1 = 15
    expect_batch_high(512 * MiB, 31, 186);    // 131072: 128 / 4 = 32 -> bit_floor(48) - 1 = 31
    expect_batch_high(1 * GiB, 63, 378);      // 262144: 256 / 4 = 64 -> bit_floor(96) - 1 = 63
    expect_batch_high(4 * GiB, 63, 378);      // 1048576: 1024, capped at 1 MiB / 4 KiB = 256 -> 63
    expect_batch_high<65536>(4 * GiB, 3, 18); // 65536 pages of 64 KiB: 64, capped at 16 -> 4 -> 3
    expect_batch_high<65536>(1 * GiB, 3, 18); // 16384 pages: 16 (the cap) -> 3
}

BOOST_AUTO_TEST_CASE(explicit_batch_and_high) {
    expect_batch_high<4096, kmem::policy::PerCpuPages<8, 32>>(64 * MiB, 8, 32);
    expect_batch_high<4096, kmem::policy::PerCpuPages<5>>(64 * MiB, 5, 30);      // high = 6 * batch
    expect_batch_high<4096, kmem::policy::PerCpuPages<0, 100>>(64 * MiB, 3, 100); // computed batch
    expect_batch_high<4096, kmem::policy::PerCpuPages<0, 1>>(1 * GiB, 63, 63);   // high never below batch
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
    static_assert(kmem::BuddyAllocator<2, ps, kmem::OffsetRegion, PerCpuPages<>>::pcp_max_order == 2); // capped
    static_assert(kmem::BuddyAllocator<10, ps, kmem::OffsetRegion, PerCpuPages<0, 0, 8>>::pcp_max_order == 8);
    static_assert(kmem::BuddyAllocator<10, ps, kmem::OffsetRegion, PerCpuPages<0, 0, 0>>::pcp_max_order == 0);
    // The per-CPU calls exist only with the policy; the policy goes anywhere among the others.
    static_assert(has_pcp_calls<OffPcp>);
    static_assert(!has_pcp_calls<Plain>);
    static_assert(!has_nr_pcp_pages<Plain>);
    static_assert(has_nr_pcp_pages<OffPcp>);
    static_assert(kmem::BuddyAllocator<4, ps, PerCpuPages<>, kmem::policy::SpinLock, kmem::OffsetRegion>::has_pcp);
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
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::MutexLock, Lists> mutex(arena_bytes);
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
    BOOST_TEST(spin.buddyinfo() == line({0, 0, 0, 0, 4}));
}

// Pins the calling thread to one CPU; false when the system refuses.
static bool pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return ::sched_setaffinity(0, sizeof set, &set) == 0;
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
        kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::SpinLock, Lists> spin(arena_bytes);
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
    BOOST_TEST(initial == line({0, 0, 0, 0, 4}));
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(idx(a, p) == 0u);
    // The refill took batch (4) pages 0..3 off the free lists; one is handed out, three wait on the list.
    BOOST_TEST(a.nr_pcp_pages() == 3u);
    BOOST_TEST(a.nr_free_pages() == 60u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 1, 1, 3}));
    a.free_pages(p, 0);
    // Back on the list, not merged: the free lists and nr_free_pages() do not see it.
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    BOOST_TEST(a.nr_free_pages() == 60u);
    BOOST_TEST(a.nr_free(0) == 0u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 1, 1, 3}));
    BOOST_TEST(p->test(PageFlag::pcp));
    BOOST_TEST(!p->test(PageFlag::buddy));
    BOOST_TEST(!p->test(PageFlag::block));
    BOOST_TEST(p->refcount() == 0);
    BOOST_TEST((parked(a) == Parked{{0, 0}, {1, 0}, {2, 0}, {3, 0}}));
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
            BOOST_TEST(a.nr_pcp_pages() == static_cast<std::uint64_t>(3 - n % 4)); // refilled with 4 every fourth call
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
        BOOST_TEST((parked(a) == Parked{{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}, {6, 0}, {7, 0}}));
        for (std::uint64_t n = 1; n < 8; ++n) BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 0)) == n);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 1)) == 8u);
        BOOST_TEST((parked(a) == Parked{{10, 1}, {12, 1}, {14, 1}}));
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 1)) == 10u);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 1)) == 12u);
        BOOST_TEST(idx(a, a.alloc_pages(gfp::kernel, 3)) == 16u);
        BOOST_TEST((parked(a) == Parked{{14, 1}, {24, 3}}));
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
        BOOST_TEST((parked(a) == Parked{{16, 3}}));
        expect_consistent(a);
    }
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
    a.free_pages(pages[11], 0); // reaches high: batch (4) pages leave from the cold end (the first freed: 0..3)
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST(a.nr_free_pages() == 52u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 1, 0, 3})); // 0..3 merged into one order-2 block
    BOOST_TEST(at(a, 0)->test(PageFlag::buddy));
    BOOST_TEST(at(a, 0)->order() == 2u);
    BOOST_TEST(at(a, 4)->test(PageFlag::pcp));
    expect_consistent(a);
    for (std::size_t n = 12; n < 15; ++n) a.free_pages(pages[n], 0);
    BOOST_TEST(a.nr_pcp_pages() == 11u);
    a.free_pages(pages[15], 0); // again: 4..7 leave and merge with 0..3 into an order-3 block
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST(a.nr_free_pages() == 56u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 1, 3}));
    BOOST_TEST((parked(a) == Parked{{8, 0}, {9, 0}, {10, 0}, {11, 0}, {12, 0}, {13, 0}, {14, 0}, {15, 0}}));
    expect_consistent(a);
    BOOST_TEST(a.stats().frees == 16u);
    BOOST_TEST(a.drain_all_pages() == 8u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(spill_goes_round_robin_over_orders) {
    OffPcp a(arena_bytes);
    std::vector<Page*> small, pairs;
    for (int n = 0; n < 8; ++n) small.push_back(a.alloc_pages(gfp::kernel, 0)); // pages 0..7
    for (int n = 0; n < 4; ++n) pairs.push_back(a.alloc_pages(gfp::kernel, 1));  // 8, 10, 12, 14
    for (std::uint64_t n = 0; n < 4; ++n) BOOST_TEST(idx(a, pairs[n]) == 8 + 2 * n);
    BOOST_TEST(a.nr_pcp_pages() == 0u);
    for (Page* p : pairs) a.free_pages(p, 1); // 8 pages on the order-1 list
    for (std::size_t n = 0; n < 3; ++n) a.free_pages(small[n], 0);
    BOOST_TEST(a.nr_pcp_pages() == 11u);
    // The fourth order-0 free reaches high: order 0 (page 0), order 1 (block 8), order 0 again (page 1) go back:
    // 4 pages, round robin from order 0.
    a.free_pages(small[3], 0);
    BOOST_TEST(a.nr_pcp_pages() == 8u);
    BOOST_TEST((parked(a) == Parked{{2, 0}, {3, 0}, {10, 1}, {12, 1}, {14, 1}}));
    BOOST_TEST(a.nr_free_pages() == 52u);
    BOOST_TEST(a.buddyinfo() == line({0, 2, 0, 0, 3})); // 0+1 merged; 8 stays alone: its buddy 10 is parked
    // A free block of order 1 (8) next to a parked one of the same order (10) is fine from the outside too.
    BOOST_TEST(at(a, 8)->test(PageFlag::buddy));
    BOOST_TEST(at(a, 10)->test(PageFlag::pcp));
    BOOST_TEST(at(a, 10)->order() == 1u);
    expect_consistent(a);
    for (std::size_t n = 4; n < 8; ++n) a.free_pages(small[n], 0);
    // 8 + 4 = 12 again at the last free: the round robin goes on from order 1 (block 10), then order 0 (page 2),
    // then order 1 (block 12): 5 pages.
    BOOST_TEST(a.nr_pcp_pages() == 7u);
    BOOST_TEST((parked(a) == Parked{{3, 0}, {4, 0}, {5, 0}, {6, 0}, {7, 0}, {14, 1}}));
    expect_consistent(a);
    BOOST_TEST(a.drain_all_pages() == 7u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
        BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
        BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
    BOOST_TEST(a.buddyinfo() == line({1, 1, 1, 1, 3}));
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));

    // A window whose only free pages sit on a per-CPU list: the lists are drained and the call retried.  (After
    // the drain the free lists are in merge order, so the refill may come from any order-4 block: find it.)
    Page* p = a.alloc_pages(gfp::kernel, 0); // the first page of an aligned run of 4; the other 3 wait on the list
    BOOST_REQUIRE(p != nullptr);
    const std::uint64_t run = idx(a, p);
    BOOST_TEST(run % 4 == 0u);
    a.free_pages(p, 0);
    BOOST_TEST((parked(a) == Parked{{run, 0}, {run + 1, 0}, {run + 2, 0}, {run + 3, 0}}));
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
    expect_error(ErrorKind::not_block_start, [&] { a.free_pages(s + 1, 0); });
    a.free_pages(s, 1);
    BOOST_TEST(s[1].flags() == 0u);
    expect_consistent(a);
    a.drain_all_pages();
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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

BOOST_AUTO_TEST_CASE(mistakes_on_a_parked_block_are_reported_and_change_nothing) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2); // pages 0..3; block 4 waits on the list
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 2);
    BOOST_REQUIRE(p->test(PageFlag::pcp));
    const Snapshot<OffPcp> before(a);
    const std::string on_list = "per-CPU page list";
    expect_error(ErrorKind::double_free, [&] { a.free_pages(p, 2); }, on_list);
    expect_error(ErrorKind::double_free, [&] { a.free_offset(0, 2); }, on_list);
    expect_error(ErrorKind::double_free, [&] { a.put_page(p); }, on_list);
    expect_error(ErrorKind::double_free, [&] { a.free_pages(p, 0); }, on_list); // any order: it is free
    expect_error(ErrorKind::double_free, [&] { a.free_pages(p, 1); }, on_list);
    expect_error(ErrorKind::double_free, [&] { a.free_pages(p, 4); }, on_list); // above the lists' orders
    expect_error(ErrorKind::double_free, [&] { a.free_pages(p + 1, 0); }, on_list); // a page inside it
    expect_error(ErrorKind::double_free, [&] { a.free_pages(p + 3, 0); }, on_list);
    expect_error(ErrorKind::double_free, [&] { a.put_page(p + 2); }, on_list);
    expect_error(ErrorKind::order_too_large, [&] { a.free_pages(p, max_order + 1); });
    expect_error(ErrorKind::bad_refcount, [&] { a.get_page(p); });
    expect_error(ErrorKind::misaligned, [&] { a.free_offset(100, 2); });
    before.expect_unchanged(a);
    BOOST_TEST(p->test(PageFlag::pcp));
    BOOST_TEST(p->refcount() == 0);
    // The block is still good: it is handed out again and freed properly.
    Page* q = a.alloc_pages(gfp::kernel, 2);
    BOOST_TEST(q == p);
    a.free_pages(q, 2);

    // Mistakes on allocated blocks are reported as before, with the lists on.
    Page* r = a.alloc_pages(gfp::kernel, 1);
    BOOST_REQUIRE(r != nullptr);
    const Snapshot<OffPcp> live(a);
    expect_error(ErrorKind::wrong_order, [&] { a.free_pages(r, 0); });
    expect_error(ErrorKind::wrong_order, [&] { a.free_pages(r, 2); });
    expect_error(ErrorKind::wrong_order, [&] { a.free_pages(r, 4); });
    expect_error(ErrorKind::not_block_start, [&] { a.free_pages(r + 1, 0); });
    live.expect_unchanged(a);
    BOOST_TEST(r->refcount() == 1);
    a.free_pages(r, 1);
    expect_error(ErrorKind::double_free, [&] { a.free_pages(r, 1); }, on_list);
    a.drain_all_pages();
    expect_consistent(a);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(callback_policy_reports_a_double_free_and_goes_on) {
    CbPcp a(arena_bytes);
    std::vector<std::pair<ErrorKind, std::string>> seen;
    a.error_policy().set_callback([&](const kmem::UsageError& e) { seen.emplace_back(e.kind, e.message); });
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 0);
    const Snapshot<CbPcp> before(a);
    a.free_pages(p, 0);
    a.put_page(p);
    a.free_offset(0, 0);
    before.expect_unchanged(a);
    BOOST_REQUIRE(seen.size() == 3u);
    for (const auto& [kind, message] : seen) {
        BOOST_TEST(static_cast<int>(kind) == static_cast<int>(ErrorKind::double_free));
        BOOST_TEST(message.find("per-CPU page list") != std::string::npos, message);
    }
    BOOST_TEST(a.nr_pcp_pages() == 4u);
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 0}));
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(set_pcp_high_and_batch_validates_and_drains) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    a.free_pages(p, 0);
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    const auto rejected = [&](unsigned high, unsigned batch) {
        BOOST_TEST_CONTEXT("high " << high << ", batch " << batch) {
            bool thrown = false;
            try {
                a.set_pcp_high_and_batch(high, batch);
            } catch (const kmem::bad_usage&) {
                BOOST_ERROR("a bad_usage instead of a plain std::invalid_argument");
            } catch (const std::invalid_argument& e) {
                thrown = true;
                BOOST_TEST(std::string(e.what()).find("batch") != std::string::npos);
            }
            BOOST_TEST(thrown);
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
    // A failure with the callback policy.
    CbPcp c(arena_bytes);
    int reported = 0;
    c.error_policy().set_callback([&](const kmem::UsageError&) { ++reported; });
    BOOST_TEST(c.alloc_pages(kmem::gfp_t(gfp::kernel), max_order + 1) == nullptr);
    BOOST_TEST(reported == 1);
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
    expect_error(ErrorKind::bad_refcount, [&] { a.get_page(p); });
    expect_error(ErrorKind::double_free, [&] { a.put_page(p); }, "per-CPU page list");
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
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(split_pages_go_on_the_list_one_by_one) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2);
    BOOST_REQUIRE(p != nullptr);
    a.split_page(p, 2);
    for (int k = 0; k < 4; ++k) a.free_pages(p + k, 0);
    BOOST_TEST(a.nr_pcp_pages() == 8u); // the other order-2 block of the refill + four order-0 pages
    BOOST_TEST((parked(a) == Parked{{0, 0}, {1, 0}, {2, 0}, {3, 0}, {4, 2}}));
    expect_consistent(a);
    BOOST_TEST(a.drain_all_pages() == 8u);
    BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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
        BOOST_TEST(a.buddyinfo() == line({0, 0, 1, 1, 3}));
        BOOST_TEST(a.stats().frees == 3u);
        expect_consistent(a);
        a.drain_all_pages();
        BOOST_TEST(a.buddyinfo() == line({0, 0, 0, 0, 4}));
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

BOOST_AUTO_TEST_CASE(outside_checker_understands_parked_blocks) {
    // The checker of test/support/ must accept what the lists do and reject what they must not do: each
    // corruption below is made through the public page flags and undone at once.
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 1); // 0..1; block 2 waits on the order-1 list
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 1);
    const auto v = kmem::test::walk_from_outside(a);
    BOOST_TEST(v.error == "");
    BOOST_TEST(v.pcp_pages == 4u);
    BOOST_TEST(v.free_pages + v.pcp_pages + v.used_pages == arena_pages);
    BOOST_TEST(kmem::test::check_shadow_allocated(a, kmem::test::ShadowModel{}) == "");
    const auto expect_reported = [&](const std::string& needle) {
        const std::string error = check_from_outside(a);
        BOOST_TEST(error.find(needle) != std::string::npos, "'" << error << "' does not mention '" << needle << "'");
    };
    p[1].set(PageFlag::tail); // a dirty page inside a parked block
    expect_reported("inside the per-CPU block");
    p[1].clear(PageFlag::tail);
    kmem::get_page(*p); // a parked block with a reference
    expect_reported("per-CPU block has refcount 1");
    BOOST_TEST(kmem::put_page_testzero(*p)); // back to 0
    p->set(PageFlag::buddy); // on both kinds of list
    expect_reported("both on a free list");
    p->clear(PageFlag::buddy);
    expect_consistent(a);
    // A live block must not be parked, nor lie inside a parked block.
    kmem::test::ShadowModel shadow;
    BOOST_TEST(shadow.insert(a.page_to_pfn(p), 2));
    BOOST_TEST(kmem::test::check_shadow_allocated(a, shadow).find("per-CPU page list") != std::string::npos);
    shadow.clear();
    BOOST_TEST(shadow.insert(a.page_to_pfn(p) + 1, 1));
    BOOST_TEST(kmem::test::check_shadow_allocated(a, shadow).find("per-CPU page list") != std::string::npos);
    // An allocated block that claims to be parked: the walk's count no longer matches nr_pcp_pages().
    Page* q = a.alloc_pages(gfp::kernel, 3);
    BOOST_REQUIRE(q != nullptr);
    BOOST_TEST(kmem::put_page_testzero(*q));
    q->clear(PageFlag::block);
    q->set(PageFlag::pcp);
    expect_reported("nr_pcp_pages() is");
    q->clear(PageFlag::pcp);
    q->set(PageFlag::block);
    kmem::set_page_refcounted(*q);
    a.free_pages(q, 3);
    expect_consistent(a);
    // Without per-CPU lists, a parked-looking block is an error in itself.
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError> plain(arena_bytes);
    Page* r = plain.alloc_pages(gfp::kernel, 0);
    r->clear(PageFlag::block);
    r->set(PageFlag::pcp);
    BOOST_TEST(check_from_outside(plain).find("has no per-CPU lists") != std::string::npos);
    r->clear(PageFlag::pcp);
    r->set(PageFlag::block);
    plain.free_pages(r, 0);
    expect_consistent(plain);
}

BOOST_AUTO_TEST_CASE(free_offset_on_an_offset_region_at_an_odd_base) {
    // pfns [38, 237): an unaligned start, partial pages at both ends.  high is large enough that nothing spills.
    using A = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                   kmem::policy::PerCpuPages<test_batch, 100>>;
    const std::uint64_t base = 37 * ps + 100;
    A a(std::uint64_t{200} * ps, base);
    BOOST_TEST(a.total_pages() == 199u);
    BOOST_TEST(a.page_table().first_pfn() == 38u);
    const auto initial = nr_free_vector(a);
    BOOST_TEST(initial == kmem::test::expected_initial_nr_free(38, 199, max_order), boost::test_tools::per_element());
    std::vector<std::pair<std::uint64_t, unsigned>> held;
    for (unsigned order : {0u, 1u, 2u, 3u, 4u, 1u, 0u}) {
        auto off = a.alloc_offset(gfp::kernel, order);
        BOOST_REQUIRE(off.has_value());
        BOOST_TEST(((base + *off) / ps) % (std::uint64_t{1} << order) == 0u); // naturally aligned pfn
        held.emplace_back(*off, order);
    }
    expect_consistent(a);
    const std::uint64_t parked_before = a.nr_pcp_pages();
    std::uint64_t to_lists = 0;
    for (const auto& [off, order] : held) {
        a.free_offset(off, order);
        if (order <= A::pcp_max_order) to_lists += std::uint64_t{1} << order;
    }
    BOOST_TEST(a.nr_pcp_pages() == parked_before + to_lists);
    const std::uint64_t off1 = held[1].first; // an order-1 block, now parked
    const unsigned order1 = held[1].second;
    expect_error(ErrorKind::double_free, [&] { a.free_offset(off1, order1); }, "per-CPU page list");
    expect_error(ErrorKind::misaligned, [&] { a.free_offset(off1 + 1, order1); });
    expect_error(ErrorKind::out_of_region, [&] { a.free_offset(a.region().size() + ps, 0); });
    expect_consistent(a);
    a.drain_all_pages();
    BOOST_TEST(nr_free_vector(a) == initial, boost::test_tools::per_element());
    BOOST_TEST(a.nr_free_pages() == 199u);
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
namespace {

// Four threads share one allocator with per-CPU lists; each does `iterations` random alloc/free steps on blocks
// of order 0..4, stamps every page of a block and checks the stamp before freeing (a block handed out twice would
// be overwritten by its second owner), and now and then drains its CPU's lists (thread 0 drains all of them).
template <class Buddy, class Flags>
void pcp_stress(Buddy& buddy, Flags flags, std::uint64_t seed, int iterations) {
    buddy.set_warning_stream(nullptr);
    const std::string initial = buddy.buddyinfo();
    std::atomic<int> corrupted{0};
    std::atomic<int> failed{0};
    std::atomic<int> bad_descriptor{0};
    std::atomic<int> not_zeroed{0};
    std::latch start(4); // all four begin together, so they really contend
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            start.arrive_and_wait();
            kmem::test::Xoshiro256 rng(seed + t);
            struct Held {
                unsigned char* p;
                unsigned order;
                unsigned char stamp;
            };
            std::vector<Held> held;
            const auto release = [&](std::size_t k) {
                const Held h = held[k];
                for (std::size_t off = 0; off < (ps << h.order); off += ps / 2)
                    if (h.p[off] != h.stamp) corrupted.fetch_add(1);
                if (rng.percent(25)) buddy.put_page(buddy.virt_to_page(h.p));
                else buddy.free_pages(h.p, h.order);
                held[k] = held.back();
                held.pop_back();
            };
            for (int i = 0; i < iterations; ++i) {
                if (rng.below(512) == 0) buddy.drain_local_pages();
                if (t == 0 && rng.below(2048) == 0) buddy.drain_all_pages();
                if (held.size() < 32 && (held.empty() || rng.percent(50))) {
                    const auto order = static_cast<unsigned>(rng.below(5));
                    const bool zero = rng.percent(5);
                    auto* p = static_cast<unsigned char*>(zero ? buddy.get_free_pages(flags | gfp::zero, order)
                                                               : buddy.get_free_pages(flags, order));
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    const Page* d = buddy.virt_to_page(p);
                    if (!d->test(PageFlag::block) || d->order() != order || d->refcount() != 1)
                        bad_descriptor.fetch_add(1);
                    if (zero && !std::all_of(p, p + (ps << order), [](unsigned char c) { return c == 0; }))
                        not_zeroed.fetch_add(1);
                    const auto stamp = static_cast<unsigned char>(rng() | 1u);
                    for (std::size_t off = 0; off < (ps << order); off += ps / 2) p[off] = stamp;
                    held.push_back({p, order, stamp});
                } else {
                    release(rng.below(held.size()));
                }
            }
            while (!held.empty()) release(held.size() - 1);
        });
    }
    for (auto& th : threads) th.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() == 0); // 4 x 32 blocks of at most 16 pages fit easily
    BOOST_TEST(bad_descriptor.load() == 0);
    BOOST_TEST(not_zeroed.load() == 0);
    BOOST_TEST(buddy.check_invariants() == "");
    BOOST_TEST(check_from_outside(buddy) == "");
    const auto s = buddy.stats();
    BOOST_TEST(s.allocations == s.frees);
    BOOST_TEST(s.allocations > 0u);
    BOOST_TEST(s.pcp_pages == buddy.nr_pcp_pages());
    BOOST_TEST(s.free_pages + s.pcp_pages == buddy.total_pages());
    BOOST_TEST(buddy.drain_all_pages() == s.pcp_pages);
    BOOST_TEST(buddy.nr_pcp_pages() == 0u);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_TEST(buddy.buddyinfo() == initial); // everything merged back
    BOOST_TEST(buddy.check_invariants() == "");
}

} // namespace

BOOST_AUTO_TEST_SUITE(pcp_threads)

BOOST_AUTO_TEST_CASE(spin_lock_with_per_cpu_lists_under_four_threads) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        using A = kmem::BuddyAllocator<10, ps, kmem::MmapRegion, kmem::policy::SpinLock, kmem::policy::PerCpuPages<>>;
        A buddy(kmem::MmapRegion(64 * MiB));
        BOOST_TEST(buddy.pcp_batch() == 3u);
        pcp_stress(buddy, gfp::atomic, seed, 50'000);
    }
}

BOOST_AUTO_TEST_CASE(mutex_lock_with_per_cpu_lists_under_four_threads) {
    const std::uint64_t seed = kmem::test::test_seed() ^ 0x3c3c;
    BOOST_TEST_CONTEXT("KMEM_SEED^0x3c3c=" << seed) {
        using A = kmem::BuddyAllocator<10, ps, kmem::MmapRegion, kmem::policy::MutexLock,
                                       kmem::policy::PerCpuPages<16, 96>>;
        A buddy(kmem::MmapRegion(32 * MiB));
        pcp_stress(buddy, gfp::kernel, seed, 50'000);
    }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
// Model-based randomized run: random allocations and frees of orders 0..5, drains and new high/batch settings,
// and mistakes on parked and live blocks, against a model of the per-CPU lists.  The model knows the lists of an
// allocator without a lock policy (one set) exactly except for the order in which one refill's blocks were taken:
// frees push on the hot end in a known order, a refill's blocks sit behind them at the cold end (known as a set,
// learnt by walking the page flags right after the refill).  From this it predicts every call: which block an
// allocation served from a list returns, how many blocks a refill takes and what the free lists look like after
// it, when a free spills and how many pages go back (round robin over the orders), when an allocation needs the
// drain-and-retry and whether it then succeeds (only when an aligned run of free or parked pages exists), and the
// stats() counters.  Every few thousand operations the whole state is checked from outside.
namespace {

template <class A>
class PcpModelRun {
public:
    static constexpr unsigned max_order = A::max_order;
    static constexpr unsigned lists = A::pcp_max_order + 1;
    static constexpr std::size_t page_size = A::page_size;
    static constexpr unsigned top_order = max_order < 5 ? max_order : 5; // orders 0..5 are asked for

    PcpModelRun(A& a, std::uint64_t seed)
        : a_(a), rng_(seed), first_(a.page_table().first_pfn()), end_(first_ + a.total_pages()),
          batch_(a.pcp_batch()), high_(a.pcp_high()) {}

    void run(std::uint64_t ops, std::uint64_t check_every) {
        a_.set_warning_stream(nullptr);
        const std::string initial = a_.buddyinfo();
        full_check();
        for (step_ = 0; step_ < ops; ++step_) {
            // Alternate between a roomy phase and a crowded one, where allocations run into empty free lists.
            const unsigned fill = (step_ / 20'000) % 2 == 0 ? 60 : 97;
            const bool over = shadow_.used_pages() * 100 > a_.total_pages() * fill;
            const std::uint64_t r = rng_.below(1000);
            if (live_.empty()) alloc();
            else if (r < 15) drain_local();
            else if (r < 19) set_high_and_batch();
            else if (r < 50) mistake_on_parked();
            else if (r < 65) mistake_on_live();
            else if (r < 90) take_reference();
            else if (r < 100) split_one();
            else if (rng_.percent(over ? 25 : 55)) alloc();
            else release(rng_.below(live_.size()), false);
            expect_counters();
            if ((step_ + 1) % check_every == 0) full_check();
            if ((step_ + 1) % 100'000 == 0) { // everything back mid-run too
                free_all_and_drain();
                if (a_.buddyinfo() != initial) fail("after freeing and draining, buddyinfo is " + a_.buddyinfo());
            }
        }
        full_check();
        free_all_and_drain();
        BOOST_TEST(a_.buddyinfo() == initial);
        BOOST_TEST(a_.nr_free_pages() == a_.total_pages());
        BOOST_TEST(shadow_.empty());
        expect_counters();
        full_check();
        BOOST_TEST_MESSAGE("ops " << ops << ": allocations " << allocations_ << " (from a list " << served_
                                  << ", refills " << refills_ << ", drain-and-retry " << retries_ << "), frees "
                                  << frees_ << " (spills " << spills_ << "), failures " << failures_
                                  << ", mistakes caught " << mistakes_);
        BOOST_TEST(served_ > 0u);
        BOOST_TEST(refills_ > 0u);
        BOOST_TEST(spills_ > 0u);
        BOOST_TEST(retries_ > 0u);
    }

private:
    struct Live {
        std::uint64_t pfn;
        unsigned order;
        bool comp;
        int refs;
        std::uint64_t tag;
    };
    using Scan = std::array<std::vector<std::uint64_t>, lists>;

    // ----- helpers ---------------------------------------------------------------------------------------------
    void fail(const std::string& what) { BOOST_FAIL("step " << step_ << ": " << what); }
    Page* page(std::uint64_t pfn) const { return a_.pfn_to_page(pfn); }
    static std::uint64_t pages_of(unsigned order) { return std::uint64_t{1} << order; }
    unsigned random_order() { // order k with probability ~ 2^-(k+1), capped
        const std::uint64_t bits = rng_() | (std::uint64_t{1} << 63);
        const auto k = static_cast<unsigned>(std::countr_zero(bits));
        return k > top_order ? static_cast<unsigned>(rng_.below(top_order + 1)) : k;
    }
    std::uint64_t blocks_on(unsigned o) const { return hot_[o].size() + cold_[o].size(); }
    std::uint64_t want(unsigned order) const { return (batch_ >> order) > 2u ? batch_ >> order : 2u; }
    static std::uint64_t takeable(const std::vector<std::uint64_t>& nf, unsigned k) {
        std::uint64_t n = 0;
        for (unsigned j = k; j <= max_order; ++j) n += nf[j] << (j - k);
        return n;
    }
    static void simulate_take(std::vector<std::uint64_t>& nf, unsigned k) { // take(): lowest order, expand
        unsigned cur = k;
        while (nf[cur] == 0) ++cur;
        --nf[cur];
        for (unsigned j = k; j < cur; ++j) ++nf[j];
    }
    // The parked blocks per order, in address order, by walking the page flags.
    Scan scan() const {
        Scan out;
        for (std::uint64_t pfn = first_; pfn < end_;) {
            const Page* p = page(pfn);
            if (p->test(PageFlag::pcp)) {
                if (p->order() >= lists) const_cast<PcpModelRun*>(this)->fail("a parked block above pcp_max_order");
                out[p->order()].push_back(pfn);
            }
            pfn += pages_of(p->order());
        }
        return out;
    }
    // Whether an aligned run of 2^k pages that are all free or parked lies in the range: after a full drain
    // these merge into a block of order >= k, so a retried allocation of order k must succeed.
    bool aligned_run_free(unsigned k) const {
        std::vector<char> free(a_.total_pages(), 0);
        for (std::uint64_t pfn = first_; pfn < end_;) {
            const Page* p = page(pfn);
            const std::uint64_t len = pages_of(p->order());
            if (p->test(PageFlag::buddy) || p->test(PageFlag::pcp))
                std::fill_n(free.begin() + static_cast<std::ptrdiff_t>(pfn - first_), len, 1);
            pfn += len;
        }
        const std::uint64_t n = pages_of(k);
        for (std::uint64_t s = (first_ + n - 1) / n * n; s + n <= end_; s += n) {
            bool all = true;
            for (std::uint64_t q = s; q < s + n && all; ++q) all = free[q - first_] != 0;
            if (all) return true;
        }
        return false;
    }

    // free_pcppages_bulk() on the model: at least `pages` pages from the cold ends, round robin from next_spill.
    // A block popped from a refill's part of a list is one of a known set; the walk afterwards says which.
    std::uint64_t spill(std::uint64_t pages) {
        std::array<std::uint64_t, lists> unknown{};
        std::vector<std::uint64_t> known;
        std::uint64_t done = 0;
        while (done < pages && pcp_pages_ > 0) {
            unsigned o = next_spill_;
            while (blocks_on(o) - unknown[o] == 0) o = (o + 1) % lists;
            next_spill_ = (o + 1) % lists;
            if (cold_[o].size() > unknown[o]) {
                ++unknown[o];
            } else {
                known.push_back(hot_[o].back());
                hot_[o].pop_back();
            }
            pcp_pages_ -= pages_of(o);
            done += pages_of(o);
        }
        for (std::uint64_t pfn : known)
            if (page(pfn)->test(PageFlag::pcp)) fail("pfn " + std::to_string(pfn) + " should have left its list");
        if (std::any_of(unknown.begin(), unknown.end(), [](std::uint64_t n) { return n != 0; })) {
            const Scan now = scan();
            for (unsigned o = 0; o < lists; ++o) {
                if (unknown[o] == 0) continue;
                std::vector<std::uint64_t> gone;
                for (std::uint64_t pfn : cold_[o])
                    if (!std::binary_search(now[o].begin(), now[o].end(), pfn)) gone.push_back(pfn);
                if (gone.size() != unknown[o])
                    fail(std::to_string(gone.size()) + " refilled blocks of order " + std::to_string(o) +
                         " left their list, expected " + std::to_string(unknown[o]));
                for (std::uint64_t pfn : gone) cold_[o].erase(pfn);
            }
        }
        return done;
    }
    void model_drain() {
        spill(pcp_pages_);
        for (unsigned o = 0; o < lists; ++o)
            if (blocks_on(o) != 0) fail("the model's lists are not empty after a drain");
    }

    void expect_counters() {
        const auto s = a_.stats();
        if (a_.nr_pcp_pages() != pcp_pages_ || s.pcp_pages != pcp_pages_)
            fail("nr_pcp_pages() is " + std::to_string(a_.nr_pcp_pages()) + ", the model says " +
                 std::to_string(pcp_pages_));
        if (s.allocations != allocations_ || s.frees != frees_ || s.failures != failures_)
            fail("stats(): allocations " + std::to_string(s.allocations) + "/" + std::to_string(allocations_) +
                 ", frees " + std::to_string(s.frees) + "/" + std::to_string(frees_) + ", failures " +
                 std::to_string(s.failures) + "/" + std::to_string(failures_));
        if (s.free_pages != a_.nr_free_pages()) fail("stats().free_pages != nr_free_pages()");
    }

    // ----- operations ------------------------------------------------------------------------------------------
    Page* call_alloc(unsigned k, bool comp, bool& zeroed) {
        zeroed = false;
        switch (rng_.below(A::addressable ? 4 : 3)) {
        case 0:
            return comp ? a_.alloc_pages(gfp::kernel | gfp::comp | gfp::nowarn, k)
                        : a_.alloc_pages(gfp::kernel | gfp::nowarn, k);
        case 1:
            return a_.alloc_pages(comp ? kmem::gfp_t(gfp::atomic | gfp::comp | gfp::nowarn)
                                       : kmem::gfp_t(gfp::atomic | gfp::nowarn),
                                  k);
        case 2:
            if (!comp) {
                auto off = a_.alloc_offset(gfp::nowait | gfp::nowarn, k);
                return off ? a_.offset_to_page(*off) : nullptr;
            }
            return a_.alloc_pages(gfp::nowait | gfp::comp | gfp::nowarn, k);
        default:
            if constexpr (A::addressable) {
                zeroed = true;
                return comp ? a_.alloc_pages(gfp::kernel | gfp::zero | gfp::comp | gfp::nowarn, k)
                            : a_.alloc_pages(gfp::kernel | gfp::zero | gfp::nowarn, k);
            }
            return nullptr;
        }
    }

    void alloc() {
        const unsigned k = random_order();
        const bool comp = k > 0 && rng_.percent(15);
        std::vector<std::uint64_t> nf = kmem::test::nr_free_vector(a_);
        const std::uint64_t free_before = a_.nr_free_pages();
        const std::uint64_t pcp_before = pcp_pages_;
        const std::uint64_t can_take = takeable(nf, k);
        enum class Way { hot, cold, refill, zone, retry } way;
        std::uint64_t m = 0;
        if (k < lists) {
            if (!hot_[k].empty()) way = Way::hot;
            else if (!cold_[k].empty()) way = Way::cold;
            else {
                m = std::min(want(k), can_take);
                way = m > 0 ? Way::refill : Way::retry;
            }
        } else {
            way = can_take > 0 ? Way::zone : Way::retry;
        }
        const bool possible = way != Way::retry || aligned_run_free(k);
        bool zeroed = false;
        Page* p = call_alloc(k, comp, zeroed);
        const std::string what = "order-" + std::to_string(k) + " allocation";
        if (p == nullptr) {
            if (possible) fail(what + " failed" + (way == Way::retry ? " after the drain" : ""));
            ++failures_;
            if (pcp_before != 0) model_drain(); // the drain happened, the retry failed
            if (a_.nr_free_pages() != free_before + pcp_before) fail("a failed " + what + " lost pages");
            return;
        }
        if (!possible) fail(what + " succeeded where nothing fits");
        ++allocations_;
        const std::uint64_t pfn = a_.page_to_pfn(p);
        if (pfn % pages_of(k) != 0) fail("misaligned block");
        switch (way) {
        case Way::hot:
            if (pfn != hot_[k].front())
                fail(what + " returned pfn " + std::to_string(pfn) + ", the hot end of the list is " +
                     std::to_string(hot_[k].front()));
            hot_[k].pop_front();
            [[fallthrough]];
        case Way::cold:
            if (way == Way::cold && cold_[k].erase(pfn) == 0)
                fail(what + " returned pfn " + std::to_string(pfn) + ", which was not on the list");
            pcp_pages_ -= pages_of(k);
            ++served_;
            if (a_.nr_free_pages() != free_before || kmem::test::nr_free_vector(a_) != nf)
                fail(what + " from a list touched the free lists");
            break;
        case Way::refill: {
            ++refills_;
            if (a_.nr_free_pages() != free_before - m * pages_of(k))
                fail("a refill of order " + std::to_string(k) + " took " +
                     std::to_string(free_before - a_.nr_free_pages()) + " pages, expected " +
                     std::to_string(m * pages_of(k)));
            for (std::uint64_t n = 0; n < m; ++n) simulate_take(nf, k);
            if (kmem::test::nr_free_vector(a_) != nf) fail("the free lists after a refill are not as predicted");
            pcp_pages_ += (m - 1) * pages_of(k);
            const Scan now = scan();
            if (now[k].size() != m - 1)
                fail("a refill left " + std::to_string(now[k].size()) + " blocks on the order-" + std::to_string(k) +
                     " list, expected " + std::to_string(m - 1));
            cold_[k].insert(now[k].begin(), now[k].end());
            break;
        }
        case Way::zone:
            if (a_.nr_free_pages() != free_before - pages_of(k)) fail(what + ": nr_free_pages off");
            simulate_take(nf, k);
            if (kmem::test::nr_free_vector(a_) != nf) fail("the free lists after an " + what + " are not as predicted");
            break;
        case Way::retry:
            ++retries_;
            if (pcp_before == 0) fail("a drain-and-retry with nothing parked");
            model_drain();
            if (a_.nr_free_pages() != free_before + pcp_before - pages_of(k))
                fail(what + " after a drain: nr_free_pages off");
            break;
        }
        if (!p->test(PageFlag::block) || p->order() != k || p->refcount() != 1 ||
            p->test(PageFlag::head) != comp || p->test(PageFlag::pcp))
            fail("bad head descriptor after an " + what);
        if (comp && (!p[pages_of(k) - 1].test(PageFlag::tail) || a_.compound_head(p + pages_of(k) - 1) != p))
            fail("compound tail not marked");
        if (!comp && k > 0 && p[pages_of(k) - 1].flags() != 0) fail("leftover flags inside a new block");
        if (!shadow_.insert(pfn, pages_of(k)))
            fail("pfn " + std::to_string(pfn) + " (+" + std::to_string(pages_of(k)) + ") overlaps a live block");
        const std::uint64_t tag = rng_() | 1u;
        if constexpr (A::addressable) {
            auto* bytes = static_cast<unsigned char*>(a_.page_address(p));
            if (zeroed && !std::all_of(bytes, bytes + (page_size << k), [](unsigned char c) { return c == 0; }))
                fail("a gfp::zero block is not zeroed");
            for (std::uint64_t q = 0; q < pages_of(k); ++q)
                std::memcpy(a_.page_address(p + q), &tag, sizeof tag);
        }
        live_.push_back(Live{pfn, k, comp, 1, tag});
    }

    // Drops one reference on live_[i] (all of them with all_refs); the last one frees the block.
    void release(std::size_t i, bool all_refs) {
        do {
            Live& l = live_[i];
            Page* head = page(l.pfn);
            if constexpr (A::addressable) {
                for (std::uint64_t q = 0; q < pages_of(l.order); ++q) {
                    std::uint64_t got = 0;
                    std::memcpy(&got, a_.page_address(head + q), sizeof got);
                    if (got != l.tag) fail("pfn " + std::to_string(l.pfn + q) + " was overwritten while allocated");
                }
            }
            const std::uint64_t free_before = a_.nr_free_pages();
            const bool last = l.refs == 1;
            const std::uint64_t r = rng_.below(4);
            if (l.comp && r == 0) a_.put_page(head + rng_.below(pages_of(l.order))); // through any page
            else if (r == 0) a_.put_page(head);
            else if (r == 1) a_.free_offset(a_.page_offset(head), l.order);
            else if (r == 2 && A::addressable) {
                if constexpr (A::addressable) a_.free_pages(a_.page_address(head), l.order);
            } else a_.free_pages(head, l.order);
            --l.refs;
            if (!last) {
                if (a_.nr_free_pages() != free_before) fail("dropping a reference freed pages");
                if (!head->test(PageFlag::block) || head->refcount() != l.refs) fail("refcount off");
                continue;
            }
            ++frees_;
            const unsigned k = l.order;
            const std::uint64_t pfn = l.pfn;
            shadow_.erase(pfn);
            live_[i] = live_.back();
            live_.pop_back();
            if (k < lists) {
                hot_[k].push_front(pfn);
                pcp_pages_ += pages_of(k);
                std::uint64_t spilled = 0;
                if (pcp_pages_ >= high_) {
                    ++spills_;
                    spilled = spill(batch_);
                    if (spilled < std::min<std::uint64_t>(batch_, pcp_pages_ + spilled)) fail("spilled too little");
                }
                if (a_.nr_free_pages() != free_before + spilled)
                    fail("a free gave " + std::to_string(a_.nr_free_pages() - free_before) +
                         " pages to the free lists, expected " + std::to_string(spilled));
                const bool parked = std::find(hot_[k].begin(), hot_[k].end(), pfn) != hot_[k].end();
                if (parked && (head->flags() != static_cast<std::uint16_t>(PageFlag::pcp) || head->refcount() != 0))
                    fail("a freed block on the list lacks the pcp flag alone or has references");
                if (parked && k > 0 && head[pages_of(k) - 1].flags() != 0) fail("a parked block has dirty tails");
            } else if (a_.nr_free_pages() != free_before + pages_of(k)) {
                fail("an order-" + std::to_string(k) + " free did not go straight to the free lists");
            }
            return;
        } while (all_refs);
    }

    void take_reference() {
        Live& l = live_[rng_.below(live_.size())];
        Page* head = page(l.pfn);
        a_.get_page(l.comp && rng_.percent(50) ? head + rng_.below(pages_of(l.order)) : head);
        ++l.refs;
        if (head->refcount() != l.refs) fail("refcount does not match the references taken");
    }

    void split_one() {
        const std::size_t i = rng_.below(live_.size());
        const Live l = live_[i];
        if (l.comp || l.order == 0 || l.refs != 1) return;
        a_.split_page(page(l.pfn), l.order);
        shadow_.erase(l.pfn);
        live_[i] = live_.back();
        live_.pop_back();
        for (std::uint64_t q = 0; q < pages_of(l.order); ++q) {
            shadow_.insert(l.pfn + q, 1);
            live_.push_back(Live{l.pfn + q, 0, false, 1, l.tag});
        }
    }

    void drain_local() {
        const std::uint64_t free_before = a_.nr_free_pages();
        const std::uint64_t expect = pcp_pages_;
        const std::uint64_t got = a_.drain_local_pages();
        if (got != expect) fail("drain_local_pages() gave back " + std::to_string(got) + ", expected " + std::to_string(expect));
        model_drain();
        if (a_.nr_free_pages() != free_before + expect) fail("drain_local_pages(): nr_free_pages off");
    }

    void set_high_and_batch() {
        const std::uint64_t free_before = a_.nr_free_pages();
        if (rng_.percent(20)) { // invalid: nothing happens
            const auto batch = static_cast<unsigned>(rng_.below(2) == 0 ? 0 : rng_.between(2, 40));
            const auto high = static_cast<unsigned>(batch == 0 ? rng_.below(50) : rng_.below(batch));
            bool thrown = false;
            try {
                a_.set_pcp_high_and_batch(high, batch);
            } catch (const std::invalid_argument&) {
                thrown = true;
            }
            if (!thrown) fail("set_pcp_high_and_batch(" + std::to_string(high) + ", " + std::to_string(batch) + ") accepted");
            if (a_.pcp_batch() != batch_ || a_.pcp_high() != high_ || a_.nr_free_pages() != free_before)
                fail("a rejected set_pcp_high_and_batch changed something");
            return;
        }
        const auto batch = static_cast<unsigned>(rng_.between(1, 40));
        const auto high = static_cast<unsigned>(rng_.between(batch, std::uint64_t{batch} * 8));
        const std::uint64_t parked = pcp_pages_;
        a_.set_pcp_high_and_batch(high, batch);
        model_drain();
        batch_ = batch;
        high_ = high;
        if (a_.pcp_batch() != batch || a_.pcp_high() != high) fail("set_pcp_high_and_batch did not take");
        if (a_.nr_free_pages() != free_before + parked) fail("set_pcp_high_and_batch did not drain");
    }

    template <class F>
    void expect_mistake(ErrorKind kind, const char* what, F&& f, bool on_list) {
        const std::string info = a_.buddyinfo();
        const std::uint64_t free_before = a_.nr_free_pages();
        try {
            f();
            fail(std::string(what) + ": no error raised");
        } catch (const kmem::bad_usage& e) {
            if (e.error().kind != kind)
                fail(std::string(what) + ": expected '" + std::string(kmem::to_string(kind)) + "', got '" +
                     std::string(kmem::to_string(e.error().kind)) + "': " + e.what());
            if (on_list && e.error().message.find("per-CPU page list") == std::string::npos)
                fail(std::string(what) + ": the message does not say the block is on a per-CPU list: " + e.what());
        }
        if (a_.buddyinfo() != info || a_.nr_free_pages() != free_before) fail(std::string(what) + " changed the allocator");
        expect_counters();
        ++mistakes_;
    }

    void mistake_on_parked() {
        if (pcp_pages_ == 0) return;
        unsigned o = static_cast<unsigned>(rng_.below(lists));
        while (blocks_on(o) == 0) o = (o + 1) % lists;
        std::uint64_t n = rng_.below(blocks_on(o));
        std::uint64_t pfn = 0;
        if (n < hot_[o].size()) pfn = hot_[o][n];
        else pfn = *std::next(cold_[o].begin(), static_cast<std::ptrdiff_t>(n - hot_[o].size()));
        Page* p = page(pfn);
        if (!p->test(PageFlag::pcp)) fail("pfn " + std::to_string(pfn) + " should be on a per-CPU list");
        switch (rng_.below(6)) {
        case 0: expect_mistake(ErrorKind::double_free, "double free of a parked block", [&] { a_.free_pages(p, o); }, true); break;
        case 1: {
            const auto other = static_cast<unsigned>((o + 1 + rng_.below(max_order)) % (max_order + 1));
            expect_mistake(ErrorKind::double_free, "free of a parked block with another order", [&] { a_.free_pages(p, other); }, true);
            break;
        }
        case 2: expect_mistake(ErrorKind::double_free, "put_page on a parked block", [&] { a_.put_page(p); }, true); break;
        case 3:
            if (o == 0) return;
            expect_mistake(ErrorKind::double_free, "free of a page inside a parked block",
                           [&] { a_.free_pages(p + 1 + rng_.below(pages_of(o) - 1), 0); }, true);
            break;
        case 4: expect_mistake(ErrorKind::bad_refcount, "get_page on a parked block", [&] { a_.get_page(p); }, false); break;
        default:
            expect_mistake(ErrorKind::double_free, "free_offset of a parked block",
                           [&] { a_.free_offset(a_.page_offset(p), o); }, true);
        }
        if (!p->test(PageFlag::pcp)) fail("a mistake took pfn " + std::to_string(pfn) + " off its list");
    }

    void mistake_on_live() {
        const Live& l = live_[rng_.below(live_.size())];
        Page* head = page(l.pfn);
        if (rng_.percent(50)) {
            const auto other = static_cast<unsigned>((l.order + 1 + rng_.below(max_order)) % (max_order + 1));
            expect_mistake(ErrorKind::wrong_order, "wrong order", [&] { a_.free_pages(head, other); }, false);
        } else {
            if (l.order == 0) return;
            expect_mistake(ErrorKind::not_block_start, "interior page",
                           [&] { a_.free_pages(head + 1 + rng_.below(pages_of(l.order) - 1), 0); }, false);
        }
        if (head->refcount() != l.refs) fail("a mistake changed a live block's references");
    }

    void free_all_and_drain() {
        while (!live_.empty()) release(live_.size() - 1, true);
        const std::uint64_t parked = pcp_pages_;
        if (a_.drain_all_pages() != parked) fail("drain_all_pages() did not give back what the model holds");
        model_drain();
        expect_counters();
    }

    void full_check() {
        const std::string inv = a_.check_invariants();
        if (!inv.empty()) fail("check_invariants: " + inv);
        const kmem::test::OutsideView v = kmem::test::walk_from_outside(a_);
        if (!v.error.empty()) fail("outside check: " + v.error);
        if (v.pcp_pages != pcp_pages_) fail("the walk finds " + std::to_string(v.pcp_pages) + " parked pages");
        if (v.used_pages != shadow_.used_pages()) fail("the walk finds " + std::to_string(v.used_pages) + " used pages");
        const std::string ov = shadow_.check_no_overlap();
        if (!ov.empty()) fail("shadow: " + ov);
        const std::string al = kmem::test::check_shadow_allocated(a_, shadow_);
        if (!al.empty()) fail("shadow vs allocator: " + al);
        if (a_.nr_free_pages() + a_.nr_pcp_pages() + shadow_.used_pages() != a_.total_pages())
            fail("free + per-CPU + used != total");
        const Scan now = scan();
        for (unsigned o = 0; o < lists; ++o) {
            std::vector<std::uint64_t> model(hot_[o].begin(), hot_[o].end());
            model.insert(model.end(), cold_[o].begin(), cold_[o].end());
            std::sort(model.begin(), model.end());
            if (model != now[o]) fail("the order-" + std::to_string(o) + " list is not what the model holds");
        }
        expect_counters();
    }

    A& a_;
    kmem::test::Xoshiro256 rng_;
    const std::uint64_t first_, end_;
    unsigned batch_, high_;
    kmem::test::ShadowModel shadow_;
    std::vector<Live> live_;
    std::array<std::deque<std::uint64_t>, lists> hot_;  // freed blocks, front = hot end, in list order
    std::array<std::set<std::uint64_t>, lists> cold_;   // one refill's blocks, behind the hot ones
    std::uint64_t pcp_pages_ = 0;
    unsigned next_spill_ = 0;
    std::uint64_t step_ = 0;
    std::uint64_t allocations_ = 0, frees_ = 0, failures_ = 0, mistakes_ = 0;
    std::uint64_t served_ = 0, refills_ = 0, spills_ = 0, retries_ = 0;
};

} // namespace

BOOST_AUTO_TEST_SUITE(pcp_model)

BOOST_AUTO_TEST_CASE(three_hundred_thousand_operations_on_an_offset_region) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        // 1499 pages at an unaligned base (small blocks at the edges); the default batch (1) and high (6) until
        // the run changes them.
        using A = kmem::BuddyAllocator<6, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                       kmem::policy::PerCpuPages<>>;
        A a(std::uint64_t{1500} * 4096, std::uint64_t{37} * 4096 + 100);
        BOOST_TEST(a.total_pages() == 1499u);
        BOOST_TEST(a.pcp_batch() == 1u);
        const auto t0 = std::chrono::steady_clock::now();
        PcpModelRun<A>(a, seed).run(300'000, 2000);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        BOOST_TEST_MESSAGE("300,000 operations in " << ms.count() << " ms");
    }
}

BOOST_AUTO_TEST_CASE(every_order_on_the_lists_with_contents_on_an_addressable_region) {
    const std::uint64_t seed = kmem::test::test_seed() ^ 0x9c9;
    BOOST_TEST_CONTEXT("KMEM_SEED^0x9c9=" << seed) {
        // 256-byte pages so that tagging every page stays cheap; the lists keep every order (0..5 = MaxOrder).
        using A = kmem::BuddyAllocator<5, 256, kmem::MmapRegion, kmem::policy::ThrowOnError,
                                       kmem::policy::PerCpuPages<7, 40, 5>>;
        static_assert(A::pcp_max_order == 5);
        A a(std::size_t{1000} * 256);
        PcpModelRun<A>(a, seed).run(100'000, 2000);
    }
}

BOOST_AUTO_TEST_SUITE_END()
