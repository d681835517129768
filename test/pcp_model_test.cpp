// Model-based randomized test of the per-CPU page lists of BuddyAllocator (policy::PerCpuPages), through the
// shared model runner (test/support/model_runner.hpp): random allocations and frees of orders 0..5, placed and
// exact allocations, drains and new high/batch settings, and mistakes on parked and live blocks, against a model
// of the per-CPU lists that predicts every call (which block an allocation served from a list returns, how many
// blocks a refill takes, when a free spills and how many pages go back, when an allocation needs the
// drain-and-retry and whether it then succeeds, nr_pcp_pages() and stats()).  Every few thousand operations the
// whole state is checked from outside.  The seed is printed; KMEM_SEED=<n> repeats a run.
#include <kmem/buddy.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/model_runner.hpp"

#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>

BOOST_AUTO_TEST_SUITE(pcp_model)

BOOST_AUTO_TEST_CASE(three_hundred_thousand_operations_on_an_offset_region) {
    // 1499 pages at an unaligned base (small blocks at the edges); the default batch (1) and high (6) until the
    // run changes them.
    using A = kmem::BuddyAllocator<6, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                                   kmem::policy::PerCpuPages<>>;
    A a(std::uint64_t{1500} * 4096, std::uint64_t{37} * 4096 + 100);
    BOOST_TEST(a.total_pages() == 1499u);
    BOOST_TEST(a.pcp_batch() == 1u);
    kmem::test::run_model(a, {.ops = 300'000, .check_every = 2000});
}

BOOST_AUTO_TEST_CASE(every_order_on_the_lists_with_contents_on_an_addressable_region) {
    // 256-byte pages so that tagging every page stays cheap; the lists keep every order (0..5 = MaxOrder).
    using A = kmem::BuddyAllocator<5, 256, kmem::MmapRegion, kmem::policy::ThrowOnError,
                                   kmem::policy::PerCpuPages<7, 40, 5>>;
    static_assert(A::pcp_max_order == 5);
    A a(std::size_t{1000} * 256);
    kmem::test::run_model(a, {.ops = 100'000, .check_every = 2000, .seed_salt = 0x9c9});
}

BOOST_AUTO_TEST_SUITE_END()
