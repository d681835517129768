// Scenario tests for BuddyAllocator: fill and drain with every order, and pathological fragmentation
// (in the spirit of drm_buddy's pessimistic / optimistic / pathological tests).
#include <kmem/buddy.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::Page;
using kmem::test::expect_consistent;
using kmem::test::ShadowModel;

constexpr std::size_t ps = 4096;
constexpr unsigned max_order = 5;
using Buddy = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError>;

struct Block {
    Page* page;
    unsigned order;
};

// Allocates blocks of orders 0, 1, ..., max_order, 0, 1, ... (skipping orders that no longer fit) until not even
// one page is left; checks each block against a shadow model.
std::vector<Block> fill_round_robin(Buddy& a, ShadowModel& shadow) {
    std::vector<Block> blocks;
    for (bool any = true; any;) {
        any = false;
        for (unsigned order = 0; order <= max_order; ++order) {
            Page* p = a.alloc_pages(gfp::kernel | gfp::nowarn, order);
            if (p == nullptr) continue;
            any = true;
            BOOST_REQUIRE(shadow.insert(a.page_to_pfn(p), std::uint64_t{1} << order));
            BOOST_REQUIRE(a.page_to_pfn(p) % (std::uint64_t{1} << order) == 0u);
            blocks.push_back({p, order});
        }
    }
    return blocks;
}

void drain(Buddy& a, ShadowModel& shadow, const std::vector<Block>& blocks) {
    std::uint64_t freed = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        a.free_pages(blocks[i].page, blocks[i].order);
        BOOST_REQUIRE(shadow.erase(a.page_to_pfn(blocks[i].page)));
        freed += std::uint64_t{1} << blocks[i].order;
        BOOST_REQUIRE(a.nr_free_pages() == freed);
        if (i % 64 == 0) expect_consistent(a, shadow);
    }
}

// The two arenas every scenario runs on: aligned (pfns [0, 1024)) and odd (1000 pages from pfn 37).
struct Arena {
    std::uint64_t pages;
    std::uint64_t first_pfn;
};
const Arena arenas[] = {{1024, 0}, {1000, 37}, {777, 4096 + 3}};

} // namespace

BOOST_AUTO_TEST_SUITE(fill_and_drain)

BOOST_AUTO_TEST_CASE(every_order_round_robin_then_free_by_increasing_size) {
    for (const Arena& ar : arenas) {
        BOOST_TEST_CONTEXT("arena of " << ar.pages << " pages at pfn " << ar.first_pfn) {
            Buddy a(ar.pages * ps, ar.first_pfn * ps);
            const std::string initial = a.buddyinfo();
            ShadowModel shadow;
            auto blocks = fill_round_robin(a, shadow);
            BOOST_TEST(a.nr_free_pages() == 0u);
            BOOST_TEST(a.largest_free_order() == -1);
            BOOST_TEST(shadow.used_pages() == ar.pages);
            for (unsigned k = 0; k <= max_order; ++k) // every order was handed out
                BOOST_TEST(
                    std::any_of(blocks.begin(), blocks.end(), [k](const Block& b) { return b.order == k; }));
            expect_consistent(a, shadow);
            std::stable_sort(blocks.begin(), blocks.end(),
                             [](const Block& x, const Block& y) { return x.order < y.order; });
            drain(a, shadow, blocks);
            BOOST_TEST(a.buddyinfo() == initial);
            BOOST_TEST(kmem::test::nr_free_vector(a) ==
                           kmem::test::expected_initial_nr_free(ar.first_pfn, ar.pages, max_order),
                       boost::test_tools::per_element());
            expect_consistent(a, shadow);
        }
    }
}

BOOST_AUTO_TEST_CASE(every_order_round_robin_then_free_by_decreasing_size) {
    for (const Arena& ar : arenas) {
        BOOST_TEST_CONTEXT("arena of " << ar.pages << " pages at pfn " << ar.first_pfn) {
            Buddy a(ar.pages * ps, ar.first_pfn * ps);
            const std::string initial = a.buddyinfo();
            ShadowModel shadow;
            auto blocks = fill_round_robin(a, shadow);
            BOOST_TEST(a.nr_free_pages() == 0u);
            std::stable_sort(blocks.begin(), blocks.end(),
                             [](const Block& x, const Block& y) { return x.order > y.order; });
            drain(a, shadow, blocks);
            BOOST_TEST(a.buddyinfo() == initial);
            expect_consistent(a, shadow);
        }
    }
}

BOOST_AUTO_TEST_CASE(every_order_round_robin_then_free_in_random_order) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        kmem::test::Xoshiro256 rng(seed);
        for (const Arena& ar : arenas) {
            Buddy a(ar.pages * ps, ar.first_pfn * ps);
            const std::string initial = a.buddyinfo();
            ShadowModel shadow;
            auto blocks = fill_round_robin(a, shadow);
            std::shuffle(blocks.begin(), blocks.end(), rng);
            drain(a, shadow, blocks);
            BOOST_TEST(a.buddyinfo() == initial);
            // Twice: the allocator is as good as new.
            blocks = fill_round_robin(a, shadow);
            BOOST_TEST(a.nr_free_pages() == 0u);
            std::shuffle(blocks.begin(), blocks.end(), rng);
            drain(a, shadow, blocks);
            BOOST_TEST(a.buddyinfo() == initial);
        }
    }
}

BOOST_AUTO_TEST_CASE(largest_blocks_first_fill_exactly_the_initial_tiling) {
    // Optimistic: asking for the largest fitting order each time takes exactly the initial blocks.
    Buddy a(std::uint64_t{1000} * ps, std::uint64_t{37} * ps);
    const auto want = kmem::test::expected_initial_nr_free(37, 1000, max_order);
    std::vector<std::uint64_t> got(max_order + 1, 0);
    std::vector<Block> blocks;
    for (int k = max_order; k >= 0; --k) {
        while (Page* p = a.alloc_pages(gfp::kernel | gfp::nowarn, static_cast<unsigned>(k))) {
            blocks.push_back({p, static_cast<unsigned>(k)});
            ++got[static_cast<unsigned>(k)];
        }
    }
    BOOST_TEST(got == want, boost::test_tools::per_element());
    BOOST_TEST(a.nr_free_pages() == 0u);
    for (const Block& b : blocks) a.free_pages(b.page, b.order);
    BOOST_TEST(kmem::test::nr_free_vector(a) == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(fragmentation)

BOOST_AUTO_TEST_CASE(half_free_but_no_pair_of_pages) {
    for (const Arena& ar : arenas) {
        BOOST_TEST_CONTEXT("arena of " << ar.pages << " pages at pfn " << ar.first_pfn) {
            Buddy a(ar.pages * ps, ar.first_pfn * ps);
            a.set_warning_stream(nullptr);
            const std::string initial = a.buddyinfo();
            std::vector<Page*> pages;
            while (Page* p = a.alloc_pages(gfp::kernel | gfp::nowarn, 0)) pages.push_back(p);
            BOOST_TEST(pages.size() == ar.pages);
            BOOST_TEST(a.nr_free_pages() == 0u);
            // Free every page with an even pfn: no two free pages are buddies.
            std::uint64_t even = 0;
            std::vector<Page*> rest;
            for (Page* p : pages) {
                if (a.page_to_pfn(p) % 2 == 0) {
                    a.free_pages(p, 0);
                    ++even;
                } else {
                    rest.push_back(p);
                }
            }
            BOOST_TEST(a.nr_free_pages() == even);
            BOOST_TEST(a.nr_free(0) == even);
            if (ar.pages % 2 == 0) BOOST_TEST(a.nr_free_pages() == a.total_pages() / 2);
            BOOST_TEST(a.largest_free_order() == 0);
            expect_consistent(a);
            const auto failures = a.stats().failures;
            for (unsigned order = 1; order <= max_order; ++order) {
                BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, order) == nullptr);
                BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, order,
                                         kmem::Placement{.top_down = true}) == nullptr);
            }
            BOOST_TEST(a.stats().failures == failures + 2 * max_order);
            BOOST_TEST(a.nr_free_pages() == even); // the failures took nothing
            // Freeing the rest merges everything back.
            for (Page* p : rest) a.free_pages(p, 0);
            BOOST_TEST(a.buddyinfo() == initial);
            expect_consistent(a);
        }
    }
}

BOOST_AUTO_TEST_CASE(pessimistic_each_order_appears_only_when_its_buddies_are_free) {
    // Allocate every page; then for k = 0, 1, ..., free the pages whose pfn has bit k as its lowest set bit
    // (pfn 0 mod 2^max_order last).  After step k, the largest free order is exactly k.
    Buddy a(std::uint64_t{1} << (max_order + 2) << 12, 0); // 4 blocks of the largest order
    a.set_warning_stream(nullptr);
    std::vector<Page*> pages;
    while (Page* p = a.alloc_pages(gfp::kernel | gfp::nowarn, 0)) pages.push_back(p);
    BOOST_REQUIRE(pages.size() == a.total_pages());
    std::uint64_t freed = 0;
    for (unsigned k = 0; k <= max_order; ++k) {
        for (Page* p : pages) {
            const std::uint64_t pfn = a.page_to_pfn(p);
            const unsigned low = pfn == 0 ? 64 : static_cast<unsigned>(std::countr_zero(pfn));
            if ((k < max_order && low == k) || (k == max_order && low >= max_order)) {
                a.free_pages(p, 0);
                ++freed;
            }
        }
        BOOST_TEST_CONTEXT("after step " << k) {
            BOOST_TEST(a.nr_free_pages() == freed);
            if (k < max_order) {
                // Every page with low bit <= k is free, but each pfn whose low bit is k+1 is still allocated, so
                // blocks of order k+1 cannot form: free blocks have order k (pfns p with low bit k, merged down).
                BOOST_TEST(a.largest_free_order() == static_cast<int>(k));
                BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, k + 1) == nullptr);
            } else {
                BOOST_TEST(a.largest_free_order() == static_cast<int>(max_order));
            }
            expect_consistent(a);
        }
    }
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
    BOOST_TEST(a.nr_free(max_order) == 4u);
}

BOOST_AUTO_TEST_SUITE_END()
