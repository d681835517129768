// Model-based randomized test of BuddyAllocator: 1,000,000 random operations against a shadow model
// (test/support/model_runner.hpp).
//
// Every operation's result is checked against what the model predicts (which order a plain allocation splits,
// which block a placed allocation must return, how many pages a free returns, which error a mistake raises);
// every few thousand operations the full invariants are checked from outside (no overlap between live blocks,
// no two free buddies, free + used == total, per-order counts) and at the end everything is freed and the
// allocator must be back at its initial buddyinfo.  The seed is printed; KMEM_SEED=<n> repeats a run.
#include <kmem/buddy.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include "support/model_runner.hpp"

#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <cstdint>

BOOST_AUTO_TEST_SUITE(buddy_model)

BOOST_AUTO_TEST_CASE(one_million_operations_on_an_offset_region) {
    // 3000 pages at an unaligned base: partial pages at both ends, small blocks at the edges.
    using A = kmem::BuddyAllocator<8, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError>;
    A a(std::uint64_t{3000} * 4096, std::uint64_t{37} * 4096 + 100);
    BOOST_TEST(a.total_pages() == 2999u);
    kmem::test::run_model(a, {.ops = 1'000'000, .check_every = 2000});
}

BOOST_AUTO_TEST_CASE(contents_survive_on_an_addressable_region) {
    // Small pages (256 bytes) so that tagging every page stays cheap; region not aligned to the largest block.
    using A = kmem::BuddyAllocator<6, 256, kmem::MmapRegion, kmem::policy::ThrowOnError>;
    A a(std::size_t{1000} * 256);
    kmem::test::run_model(a, {.ops = 200'000, .check_every = 2000, .seed_salt = 0x5eed});
}

BOOST_AUTO_TEST_SUITE_END()
