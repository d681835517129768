// BuddyAllocator over offset-only regions (device memory): 64 GiB ranges, nonzero bases, MaxOrder 20.
#include <kmem/buddy.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::Placement;

constexpr std::uint64_t KiB = 1024, MiB = KiB << 10, GiB = MiB << 10, TiB = GiB << 10;
constexpr std::uint64_t ps = 4096;
using Vram = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError>;
using VramHuge = kmem::BuddyAllocator<20, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError>;

static_assert(!Vram::addressable);

std::string buddyinfo_line(const std::vector<std::uint64_t>& counts) {
    std::string s = "Node 0, zone   Normal ";
    char buf[32];
    for (auto c : counts) {
        std::snprintf(buf, sizeof buf, "%6llu ", static_cast<unsigned long long>(c));
        s += buf;
    }
    return s + "\n";
}

// The outside walk without faulting in 256 MiB of descriptors (inner pages are skipped at this size).
template <class A>
void expect_walk_ok(const A& a) {
    BOOST_TEST(kmem::test::check_from_outside(a) == "");
}

} // namespace

BOOST_AUTO_TEST_SUITE(offset_region)

BOOST_AUTO_TEST_CASE(sixty_four_gib_initial_state) {
    Vram a(64 * GiB);
    BOOST_TEST(a.total_pages() == 16u * 1024 * 1024);
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
    BOOST_TEST(a.nr_free(10) == 16384u);
    std::vector<std::uint64_t> want(11, 0);
    want[10] = 16384;
    BOOST_TEST(a.buddyinfo() == buddyinfo_line(want));
    BOOST_TEST(a.buddyinfo() ==
               "Node 0, zone   Normal      0      0      0      0      0      0      0      0      0"
               "      0  16384 \n");
    BOOST_TEST(a.page_table().metadata_bytes() == 16 * a.total_pages());
    expect_walk_ok(a);
}

BOOST_AUTO_TEST_CASE(alloc_and_free_offsets) {
    Vram a(64 * GiB);
    a.set_warning_stream(nullptr);
    const std::string initial = a.buddyinfo();
    std::vector<std::pair<std::uint64_t, unsigned>> got;
    for (unsigned order = 0; order <= 10; ++order) {
        auto off = a.alloc_offset(gfp::kernel, order);
        BOOST_REQUIRE(off.has_value());
        BOOST_TEST(*off % (ps << order) == 0u); // aligned to the block size
        BOOST_TEST(*off + (ps << order) <= 64 * GiB);
        got.emplace_back(*off, order);
    }
    std::uint64_t used = 0;
    for (auto [off, order] : got) used += std::uint64_t{1} << order;
    BOOST_TEST(a.nr_free_pages() == a.total_pages() - used);
    // No two of them overlap.
    kmem::test::ShadowModel shadow;
    for (auto [off, order] : got) BOOST_TEST(shadow.insert(off / ps, std::uint64_t{1} << order));
    expect_walk_ok(a);
    for (auto [off, order] : got) a.free_offset(off, order);
    BOOST_TEST(a.buddyinfo() == initial);
    expect_walk_ok(a);
}

BOOST_AUTO_TEST_CASE(placement_near_the_top) {
    Vram a(64 * GiB);
    auto top = a.alloc_offset(gfp::kernel, 0, Placement{.top_down = true});
    BOOST_REQUIRE(top.has_value());
    BOOST_TEST(*top == 64 * GiB - ps);
    auto big = a.alloc_offset(gfp::kernel, 10, Placement{.top_down = true});
    BOOST_REQUIRE(big.has_value());
    BOOST_TEST(*big == 64 * GiB - 8 * MiB); // the top 4 MiB block is split by the first page
    // Bottom-up inside the last 16 MiB.
    auto low = a.alloc_offset(gfp::kernel, 2, Placement{.start = 64 * GiB - 16 * MiB});
    BOOST_REQUIRE(low.has_value());
    BOOST_TEST(*low == 64 * GiB - 16 * MiB);
    // A range in the middle, start not aligned to the block: rounded up to the block size.
    auto mid = a.alloc_offset(gfp::kernel, 4, Placement{.start = GiB + 12 * KiB, .end = 2 * GiB});
    BOOST_REQUIRE(mid.has_value());
    BOOST_TEST(*mid == GiB + 64 * KiB);
    // Top-down inside a range.
    auto mid_top =
        a.alloc_offset(gfp::kernel, 4, Placement{.start = GiB, .end = 2 * GiB + 100, .top_down = true});
    BOOST_REQUIRE(mid_top.has_value());
    BOOST_TEST(*mid_top == 2 * GiB - 64 * KiB);
    a.free_offset(*top, 0);
    a.free_offset(*big, 10);
    a.free_offset(*low, 2);
    a.free_offset(*mid, 4);
    a.free_offset(*mid_top, 4);
    BOOST_TEST(a.nr_free(10) == 16384u);
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
}

BOOST_AUTO_TEST_CASE(nonzero_base) {
    const std::uint64_t base = TiB + 4 * MiB;
    Vram a(64 * GiB, base);
    BOOST_TEST(a.page_table().first_pfn() == base / ps);
    BOOST_TEST(a.nr_free(10) == 16384u); // base is 4 MiB aligned: still whole order-10 blocks
    BOOST_TEST(a.total_pages() == 16u * 1024 * 1024);
    auto off = a.alloc_offset(gfp::kernel, 3);
    BOOST_REQUIRE(off.has_value());
    BOOST_TEST(*off == 0u); // offsets are relative to the base
    BOOST_TEST(a.page_to_pfn(a.offset_to_page(*off)) == base / ps);
    auto top = a.alloc_offset(gfp::kernel, 10, Placement{.top_down = true});
    BOOST_REQUIRE(top.has_value());
    BOOST_TEST(*top == 64 * GiB - 4 * MiB);
    BOOST_TEST((base + *top) % (4 * MiB) == 0u); // device addresses are naturally aligned
    BOOST_TEST(a.offset_to_page(64 * GiB) == nullptr);
    BOOST_CHECK_THROW(a.free_offset(64 * GiB, 0), kmem::bad_usage);
    a.free_offset(*off, 3);
    a.free_offset(*top, 10);
    BOOST_TEST(a.nr_free(10) == 16384u);
    expect_walk_ok(a);
}

BOOST_AUTO_TEST_CASE(base_not_aligned_to_the_largest_block) {
    const std::uint64_t base = TiB + 4 * KiB; // one page past a 4 MiB boundary
    Vram a(64 * GiB, base);
    const std::uint64_t first = base / ps;
    BOOST_TEST(a.total_pages() == 16u * 1024 * 1024);
    BOOST_TEST(kmem::test::nr_free_vector(a) ==
                   kmem::test::expected_initial_nr_free(first, a.total_pages(), 10),
               boost::test_tools::per_element());
    // pfns [2^28 + 1, 2^28 + 1 + 16 Mi): one block of each order 0..9 climbs to the first 4 MiB boundary
    // (1023 pages), then 16383 order-10 blocks, then the single page left over at the top.
    BOOST_TEST(a.nr_free(10) == 16383u);
    BOOST_TEST(a.nr_free(0) == 2u);
    for (unsigned k = 1; k < 10; ++k) BOOST_TEST(a.nr_free(k) == 1u);
    BOOST_TEST(a.page_offset(a.pfn_to_page(first)) == 0u);
    // Largest blocks are aligned in device address space, not in offsets.
    auto off = a.alloc_offset(gfp::kernel, 10);
    BOOST_REQUIRE(off.has_value());
    BOOST_TEST((base + *off) % (4 * MiB) == 0u);
    a.free_offset(*off, 10);
    expect_walk_ok(a);
}

BOOST_AUTO_TEST_CASE(exhaust_a_small_offset_region) {
    Vram a(16 * MiB, 256 * MiB);
    a.set_warning_stream(nullptr);
    BOOST_TEST(a.nr_free(10) == 4u);
    std::vector<std::uint64_t> offs;
    while (auto off = a.alloc_offset(gfp::kernel, 3)) {
        BOOST_TEST(*off % (8 * ps) == 0u);
        offs.push_back(*off);
    }
    BOOST_TEST(offs.size() == 512u);
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(!a.alloc_offset(gfp::kernel, 0).has_value());
    BOOST_TEST(a.stats().failures == 2u);
    kmem::test::ShadowModel shadow;
    for (auto off : offs) BOOST_TEST(shadow.insert((256 * MiB + off) / ps, 8));
    kmem::test::expect_consistent(a, shadow);
    for (auto off : offs) a.free_offset(off, 3);
    BOOST_TEST(a.nr_free(10) == 4u);
    // Exact offsets: 3 pages of 4, the fourth goes back at once.
    auto e = a.alloc_offset_exact(3 * ps, gfp::kernel);
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST(a.nr_free_pages() == a.total_pages() - 3);
    a.free_offset_exact(*e, 3 * ps);
    BOOST_TEST(a.nr_free(10) == 4u);
    kmem::test::expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(range_allocation_fills_only_the_range) {
    Vram a(64 * MiB);
    a.set_warning_stream(nullptr);
    const Placement range{.start = 8 * MiB, .end = 12 * MiB};
    std::vector<std::uint64_t> offs;
    while (auto off = a.alloc_offset(gfp::kernel, 6, range)) {
        BOOST_TEST(*off >= range.start);
        BOOST_TEST(*off + (ps << 6) <= range.end);
        offs.push_back(*off);
    }
    BOOST_TEST(offs.size() == 16u); // 4 MiB / 256 KiB
    BOOST_TEST(a.nr_free_pages() == a.total_pages() - 1024);
    BOOST_TEST(a.nr_free(10) == 15u); // the other blocks are untouched
    for (auto off : offs) a.free_offset(off, 6);
    BOOST_TEST(a.nr_free(10) == 16u);
    kmem::test::expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(sixty_four_gib_with_max_order_20) {
    VramHuge a(64 * GiB);
    BOOST_TEST(a.nr_free(20) == 16u);
    std::vector<std::uint64_t> want(21, 0);
    want[20] = 16;
    BOOST_TEST(a.buddyinfo() == buddyinfo_line(want));
    const std::string initial = a.buddyinfo();
    auto one = a.alloc_offset(gfp::kernel, 0);
    BOOST_REQUIRE(one.has_value());
    BOOST_TEST(*one == 0u);
    for (unsigned k = 0; k < 20; ++k) BOOST_TEST(a.nr_free(k) == 1u); // one split all the way down
    BOOST_TEST(a.nr_free(20) == 15u);
    auto big = a.alloc_offset(gfp::kernel, 20);
    BOOST_REQUIRE(big.has_value());
    BOOST_TEST(*big % (4 * GiB) == 0u);
    auto top = a.alloc_offset(gfp::kernel, 20, Placement{.top_down = true});
    BOOST_REQUIRE(top.has_value());
    BOOST_TEST(*top == 60 * GiB);
    expect_walk_ok(a);
    a.free_offset(*one, 0);
    a.free_offset(*big, 20);
    a.free_offset(*top, 20);
    BOOST_TEST(a.buddyinfo() == initial);
    expect_walk_ok(a);
}

BOOST_AUTO_TEST_SUITE_END()
