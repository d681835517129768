// Unit tests for include/kmem/buddy.hpp: every public operation of BuddyAllocator (single-threaded; the
// multi-threaded ones are in buddy_threads_test.cpp, the re-entrant error callback and oversized requests under the
// default policy in buddy_errors_test.cpp, the randomized model in buddy_model_test.cpp).
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/expect_error.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
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
using kmem::test::expect_no_error;
using kmem::test::nr_free_vector;
using kmem::test::Snapshot;

constexpr std::size_t ps = 4096;
constexpr unsigned max_order = 4;         // blocks of 1..16 pages
constexpr std::uint64_t arena_pages = 64; // four order-4 blocks
constexpr std::uint64_t arena_bytes = arena_pages * ps;

using OffBuddy = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError>;
using MemBuddy = kmem::BuddyAllocator<max_order, ps, kmem::MmapRegion, kmem::policy::ThrowOnError>;
using CbBuddy = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::CallbackOnError>;

// An mmap region aligned to the largest block, so its layout (and buddyinfo) is deterministic.
kmem::MmapOptions aligned() {
    return kmem::MmapOptions{.alignment = ps << max_order};
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(geometry)

BOOST_AUTO_TEST_CASE(get_order_matches_the_kernel) {
    static_assert(kmem::get_order<4096>(0) == 0);
    static_assert(kmem::get_order<4096>(1) == 0);
    static_assert(kmem::get_order<4096>(4096) == 0);
    static_assert(kmem::get_order<4096>(4097) == 1);
    static_assert(kmem::get_order<4096>(8192) == 1);
    static_assert(kmem::get_order<4096>(8193) == 2);
    static_assert(kmem::get_order<4096>(std::uint64_t{1} << 30) == 18);
    static_assert(kmem::get_order<64>(65) == 1);
    BOOST_TEST(kmem::get_order<4096>(3 * 4096) == 2u);
}

BOOST_AUTO_TEST_CASE(initial_state_and_buddyinfo) {
    OffBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    BOOST_TEST(a.total_pages() == arena_pages);
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    BOOST_TEST(a.nr_free(max_order) == 4u);
    for (unsigned k = 0; k < max_order; ++k) BOOST_TEST(a.nr_free(k) == 0u);
    BOOST_TEST(a.nr_free(max_order + 1) == 0u); // out-of-range order reads as empty
    BOOST_TEST(a.largest_free_order() == int{max_order});
    BOOST_TEST(a.buddyinfo() == "Node 0, zone   Normal      0      0      0      0      4 \n");
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    const auto s = a.stats();
    BOOST_TEST(s.total_pages == arena_pages);
    BOOST_TEST(s.free_pages == arena_pages);
    BOOST_TEST(s.allocations == 0u);
    BOOST_TEST(s.frees == 0u);
    BOOST_TEST(s.failures == 0u);
    BOOST_TEST(s.nr_free.size() == std::size_t{max_order + 1});
    BOOST_TEST(s.nr_free[max_order] == 4u);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(buddyinfo_after_a_split) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    // One order-4 block was split: one free block of each lower order remains.
    BOOST_TEST(a.buddyinfo() == "Node 0, zone   Normal      1      1      1      1      3 \n");
    BOOST_TEST(a.page_offset(p) == 0u); // lowest block first
    BOOST_TEST(a.largest_free_order() == int{max_order});
    a.free_pages(p, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(buddyinfo_node_and_zone_names) {
    kmem::BuddyAllocator<2, ps, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::dma32>> a(
        std::uint64_t{8 * ps});
    a.set_node(3);
    BOOST_TEST(a.buddyinfo() == "Node 3, zone    DMA32      0      0      2 \n");
    kmem::BuddyAllocator<0, ps, kmem::OffsetRegion, kmem::policy::InZone<kmem::ZoneType::movable>> m(
        std::uint64_t{3 * ps});
    BOOST_TEST(m.buddyinfo() == "Node 0, zone  Movable      3 \n");
}

BOOST_AUTO_TEST_CASE(region_of_1000_pages_at_an_odd_start_tiles_correctly) {
    // pfns [37, 1037): the edges get smaller blocks; compute the expected tiling independently.
    OffBuddy a(std::uint64_t{1000} * ps, std::uint64_t{37} * ps);
    BOOST_TEST(a.total_pages() == 1000u);
    BOOST_TEST(a.page_table().first_pfn() == 37u);
    const auto want = kmem::test::expected_initial_nr_free(37, 1000, max_order);
    BOOST_TEST(nr_free_vector(a) == want, boost::test_tools::per_element());
    // By hand: 37 (1) 38 (2) 40 (8) 48..1024 (61 x 16) 1024..1032 (8) 1032..1036 (4) 1036 (1).
    BOOST_TEST(want == (std::vector<std::uint64_t>{2, 1, 1, 2, 61}), boost::test_tools::per_element());
    expect_consistent(a);
    // Everything can be allocated page by page, and merges back.
    const std::string initial = a.buddyinfo();
    std::vector<Page*> pages;
    while (Page* p = a.alloc_pages(gfp::kernel | gfp::nowarn, 0)) pages.push_back(p);
    BOOST_TEST(pages.size() == 1000u);
    BOOST_TEST(a.nr_free_pages() == 0u);
    for (Page* p : pages) a.free_pages(p, 0);
    BOOST_TEST(a.buddyinfo() == initial);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(unaligned_base_and_size_use_whole_pages_only) {
    // Bytes [37*ps + 100, 1037*ps + 100): the partial pages at both ends are not managed.
    OffBuddy a(std::uint64_t{1000} * ps, std::uint64_t{37} * ps + 100);
    BOOST_TEST(a.page_table().first_pfn() == 38u);
    BOOST_TEST(a.total_pages() == 999u);
    BOOST_TEST(nr_free_vector(a) == kmem::test::expected_initial_nr_free(38, 999, max_order),
               boost::test_tools::per_element());
    Page* first = a.pfn_to_page(38);
    BOOST_TEST(a.page_offset(first) == ps - 100); // offsets are from the region's first byte
    BOOST_TEST(a.offset_to_page(ps - 100) == first);
    expect_error(a, ErrorKind::misaligned, [&] { a.free_offset(0, 0); });
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(span_region_inside_a_buffer) {
    std::vector<std::byte> buf(20 * ps + 123);
    kmem::BuddyAllocator<3, ps, kmem::SpanRegion, kmem::policy::ThrowOnError> a{std::span<std::byte>(buf)};
    const auto base = reinterpret_cast<std::uintptr_t>(buf.data());
    const std::uint64_t first = (base + ps - 1) / ps;
    const std::uint64_t end = (base + buf.size()) / ps;
    BOOST_TEST(a.total_pages() == end - first);
    BOOST_TEST(nr_free_vector(a) == kmem::test::expected_initial_nr_free(first, end - first, 3),
               boost::test_tools::per_element());
    void* p = a.get_free_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(static_cast<std::byte*>(p) >= buf.data());
    BOOST_TEST(static_cast<std::byte*>(p) + ps <= buf.data() + buf.size());
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) % ps == 0u);
    a.free_pages(p, 0);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(borrowed_region) {
    kmem::OffsetRegion r(arena_bytes, std::uint64_t{1} << 32);
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion&> a(r);
    BOOST_TEST(&a.region() == &r);
    BOOST_TEST(a.total_pages() == arena_pages);
    auto off = a.alloc_offset(gfp::kernel, 2);
    BOOST_REQUIRE(off.has_value());
    BOOST_TEST(a.page_to_pfn(a.offset_to_page(*off)) == ((std::uint64_t{1} << 32) + *off) / ps);
    a.free_offset(*off, 2);
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(alloc_and_free)

BOOST_AUTO_TEST_CASE(every_order_is_naturally_aligned) {
    OffBuddy a(arena_bytes, std::uint64_t{5} * (ps << max_order)); // pfn space starts at 80
    for (unsigned order = 0; order <= max_order; ++order) {
        Page* p = a.alloc_pages(gfp::kernel, order);
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(a.page_to_pfn(p) % (1u << order) == 0u);
        BOOST_TEST(a.page_offset(p) % (ps << order) == 0u);
        BOOST_TEST(p->test(PageFlag::block));
        BOOST_TEST(p->order() == order);
        BOOST_TEST(p->refcount() == 1);
        BOOST_TEST(a.nr_free_pages() == arena_pages - (1u << order));
        expect_consistent(a);
        a.free_pages(p, order);
        BOOST_TEST(a.nr_free_pages() == arena_pages);
        BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    }
}

BOOST_AUTO_TEST_CASE(compile_time_order) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages<3>(gfp::kernel);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(p->order() == 3u);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 8);
    Page* q = a.alloc_pages<max_order>(gfp::kernel);
    BOOST_REQUIRE(q != nullptr);
    BOOST_TEST(q->order() == max_order);
    Page* r = a.alloc_pages<0>(gfp::kernel | gfp::nofail); // nofail is allowed up to order 1
    BOOST_REQUIRE(r != nullptr);
    a.free_pages(p, 3);
    a.free_pages(q, max_order);
    a.free_pages(r, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(call_context_overloads) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(kmem::process_context, gfp::kernel, 1);
    Page* q = a.alloc_pages(kmem::atomic_context, gfp::atomic, 2);
    Page* r = a.alloc_pages(kmem::atomic_context, gfp::nowait, 0);
    BOOST_REQUIRE(p != nullptr);
    BOOST_REQUIRE(q != nullptr);
    BOOST_REQUIRE(r != nullptr);
    BOOST_TEST(p->order() == 1u);
    BOOST_TEST(q->order() == 2u);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 7);
    a.free_pages(p, 1);
    a.free_pages(q, 2);
    a.free_pages(r, 0);
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(runtime_flags) {
    OffBuddy a(arena_bytes);
    const kmem::gfp_t flags = gfp::kernel;
    Page* p = a.alloc_pages(flags, 2);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(p->order() == 2u);
    Page* top = a.alloc_pages(flags, 0, Placement{.top_down = true});
    BOOST_REQUIRE(top != nullptr);
    BOOST_TEST(a.page_offset(top) == arena_bytes - ps);
    a.free_pages(top, 0);
    a.free_pages(p, 2);
    // Broken run-time flags are reported and nothing is allocated.
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::invalid_gfp, [&] { a.alloc_pages(kmem::gfp_t(gfp::dma) | gfp::highmem, 0); });
    expect_error(a, ErrorKind::invalid_gfp,
                 [&] { a.alloc_pages(kmem::gfp_t(gfp::zero), 0); }); // offset-only region
    before.expect_unchanged(a);
}

BOOST_AUTO_TEST_CASE(stats_count_allocations_frees_and_failures) {
    OffBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    std::vector<Page*> blocks;
    for (int i = 0; i < 4; ++i) blocks.push_back(a.alloc_pages(gfp::kernel, max_order));
    BOOST_TEST(a.stats().allocations == 4u);
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0) == nullptr);
    BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, 3) == nullptr);
    BOOST_TEST(a.stats().failures == 2u);
    BOOST_TEST(a.stats().allocations == 4u);
    BOOST_TEST(a.largest_free_order() == -1);
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(a.stats().free_pages == 0u);
    for (Page* p : blocks) a.free_pages(p, max_order);
    const auto s = a.stats();
    BOOST_TEST(s.frees == 4u);
    BOOST_TEST(s.allocations == 4u);
    BOOST_TEST(s.failures == 2u);
    BOOST_TEST(s.free_pages == arena_pages);
}

BOOST_AUTO_TEST_CASE(lifo_reuse_and_merging) {
    OffBuddy a(arena_bytes);
    Page* p0 = a.alloc_pages(gfp::kernel, 0);
    Page* p1 = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p0 != nullptr);
    BOOST_REQUIRE(p1 != nullptr);
    BOOST_TEST(a.page_to_pfn(p1) == (a.page_to_pfn(p0) ^ 1u)); // p1 is p0's buddy
    a.free_pages(p0, 0);
    BOOST_TEST(a.nr_free(0) == 1u); // cannot merge: its buddy p1 is allocated
    a.free_pages(p1, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4})); // merged all the way up
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(failure_report)

BOOST_AUTO_TEST_CASE(kernel_like_report) {
    OffBuddy a(arena_bytes);
    std::ostringstream out;
    a.set_warning_stream(&out);
    a.set_name("kworker");
    std::vector<Page*> blocks;
    for (int i = 0; i < 4; ++i) blocks.push_back(a.alloc_pages(gfp::kernel, max_order));
    BOOST_TEST(out.str().empty()); // successes print nothing
    BOOST_TEST(a.alloc_pages(gfp::kernel, 2) == nullptr);
    const std::string text = out.str();
    std::istringstream in(text);
    std::string first, second, third;
    std::getline(in, first);
    std::getline(in, second);
    std::getline(in, third);
    BOOST_TEST(first == "kworker: page allocation failure: order:2, mode:0xcc0(GFP_KERNEL), nodemask=(null)");
    BOOST_TEST(second + "\n" == a.buddyinfo());
    BOOST_TEST(second + "\n" == buddyinfo_line({0, 0, 0, 0, 0}));
    BOOST_TEST(third.find("free pages: 0 of 64") != std::string::npos);
    BOOST_TEST(third.find("largest free order: -1") != std::string::npos);

    // With other flags the mode names them.
    out.str("");
    BOOST_TEST(a.alloc_pages(gfp::atomic | gfp::comp, 1) == nullptr);
    BOOST_TEST(
        out.str().rfind("kworker: page allocation failure: order:1, mode:0x40820(GFP_ATOMIC|__GFP_COMP)",
                        0) == 0u);
    for (Page* p : blocks) a.free_pages(p, max_order);
}

BOOST_AUTO_TEST_CASE(report_shows_the_state_at_failure) {
    OffBuddy a(arena_bytes);
    std::ostringstream out;
    a.set_warning_stream(&out);
    std::vector<Page*> blocks;
    for (int i = 0; i < 3; ++i) blocks.push_back(a.alloc_pages(gfp::kernel, max_order));
    Page* small = a.alloc_pages(gfp::kernel, 0); // leaves 1,1,1,1 in orders 0..3
    BOOST_TEST(a.alloc_pages(gfp::kernel, max_order) == nullptr);
    BOOST_TEST(out.str().find("page allocation failure: order:4, mode:0xcc0(GFP_KERNEL)") !=
               std::string::npos);
    BOOST_TEST(out.str().find("\n" + buddyinfo_line({1, 1, 1, 1, 0})) != std::string::npos);
    BOOST_TEST(out.str().find("free pages: 15 of 64, largest free order: 3") != std::string::npos);
    a.free_pages(small, 0);
    for (Page* p : blocks) a.free_pages(p, max_order);
}

BOOST_AUTO_TEST_CASE(nowarn_silences_it) {
    OffBuddy a(arena_bytes);
    std::ostringstream out;
    a.set_warning_stream(&out);
    std::vector<Page*> blocks;
    for (int i = 0; i < 4; ++i) blocks.push_back(a.alloc_pages(gfp::kernel, max_order));
    BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nowarn, 0) == nullptr);
    BOOST_TEST(a.alloc_pages(gfp::atomic | gfp::nowarn, 0, Placement{.top_down = true}) == nullptr);
    BOOST_TEST(!a.alloc_offset(gfp::kernel | gfp::nowarn, 1).has_value());
    BOOST_TEST(out.str().empty());
    BOOST_TEST(a.stats().failures == 3u);
    // A null stream silences everything too.
    a.set_warning_stream(nullptr);
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0) == nullptr);
    BOOST_TEST(out.str().empty());
    for (Page* p : blocks) a.free_pages(p, max_order);
}

BOOST_AUTO_TEST_CASE(nofail_failure_is_reported_as_an_error) {
    OffBuddy a(arena_bytes);
    std::ostringstream out;
    a.set_warning_stream(&out);
    std::vector<Page*> blocks;
    for (int i = 0; i < 4; ++i) blocks.push_back(a.alloc_pages(gfp::kernel, max_order));
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::nofail_failed, [&] { a.alloc_pages(gfp::kernel | gfp::nofail, 0); });
    BOOST_TEST(out.str().find("page allocation failure: order:0, mode:0x8cc0(GFP_KERNEL|__GFP_NOFAIL)") !=
               std::string::npos);
    // nofail is reported even with nowarn: the caller cannot handle the failure.
    out.str("");
    expect_error(a, ErrorKind::nofail_failed,
                 [&] { a.alloc_pages(gfp::kernel | gfp::nofail | gfp::nowarn, 1); });
    BOOST_TEST(out.str().find("page allocation failure: order:1") != std::string::npos);
    before.expect_unchanged(a);
    BOOST_TEST(a.stats().failures == 2u);

    // nofail above order 1 is refused (a run-time order: the compile-time form is a compile error).
    for (Page* p : blocks) a.free_pages(p, max_order);
    const Snapshot<OffBuddy> freed(a);
    expect_error(a, ErrorKind::invalid_gfp, [&] { a.alloc_pages(gfp::kernel | gfp::nofail, 2); });
    freed.expect_unchanged(a);
}

BOOST_AUTO_TEST_CASE(nofail_with_callback_policy_returns_null) {
    CbBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    std::vector<Page*> blocks;
    for (int i = 0; i < 4; ++i) blocks.push_back(a.alloc_pages(gfp::kernel, max_order));
    expect_error(a, ErrorKind::nofail_failed,
                 [&] { BOOST_TEST(a.alloc_pages(gfp::kernel | gfp::nofail, 0) == nullptr); });
    expect_no_error(a, [&] {
        for (Page* p : blocks) a.free_pages(p, max_order);
    });
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(addressable)

BOOST_AUTO_TEST_CASE(conversions) {
    MemBuddy a(arena_bytes, aligned());
    auto* base = a.region().data();
    BOOST_REQUIRE(reinterpret_cast<std::uintptr_t>(base) % (ps << max_order) == 0u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    const std::uint64_t first = reinterpret_cast<std::uintptr_t>(base) / ps;
    BOOST_TEST(a.page_table().first_pfn() == first);
    Page* p = a.alloc_pages(gfp::kernel, 1);
    BOOST_REQUIRE(p != nullptr);
    void* addr = a.page_address(p);
    BOOST_TEST(addr == static_cast<void*>(base)); // the lowest block first
    BOOST_TEST(a.page_to_pfn(p) == reinterpret_cast<std::uintptr_t>(addr) / ps);
    BOOST_TEST(a.virt_to_page(addr) == p);
    BOOST_TEST(a.virt_to_page(static_cast<char*>(addr) + 100) == p); // any byte of the page
    BOOST_TEST(a.virt_to_page(static_cast<char*>(addr) + ps) == p + 1);
    BOOST_TEST(a.pfn_to_page(a.page_to_pfn(p)) == p);
    BOOST_TEST(a.page_offset(p) == 0u);
    BOOST_TEST(a.offset_to_page(0) == p);
    BOOST_TEST(a.offset_to_page(5 * ps) == a.pfn_to_page(first + 5));
    BOOST_TEST(a.page_address(a.offset_to_page(5 * ps)) == static_cast<void*>(base + 5 * ps));
    // Outside the region.
    BOOST_TEST(a.virt_to_page(base + arena_bytes) == nullptr);
    BOOST_TEST(a.virt_to_page(base - 1) == nullptr);
    BOOST_TEST(a.pfn_to_page(first - 1) == nullptr);
    BOOST_TEST(a.pfn_to_page(first + arena_pages) == nullptr);
    BOOST_TEST(a.offset_to_page(arena_bytes) == nullptr);
    a.free_pages(p, 1);
}

BOOST_AUTO_TEST_CASE(get_free_pages_and_free_page) {
    MemBuddy a(arena_bytes, aligned());
    void* one = a.get_free_page(gfp::kernel);
    void* four = a.get_free_pages(gfp::kernel, 2);
    void* rt = a.get_free_pages(kmem::gfp_t(gfp::kernel), 1);
    BOOST_REQUIRE(one != nullptr);
    BOOST_REQUIRE(four != nullptr);
    BOOST_REQUIRE(rt != nullptr);
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(four) % (4 * ps) == 0u);
    std::memset(one, 1, ps);
    std::memset(four, 4, 4 * ps);
    std::memset(rt, 2, 2 * ps);
    BOOST_TEST(static_cast<unsigned char*>(one)[ps - 1] == 1);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 7);
    a.free_page(one);
    a.free_pages(four, 2);
    a.free_pages(rt, 1);
    a.free_pages(static_cast<void*>(nullptr), 3); // ignored, as in the kernel
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(zero_flag_really_zeroes) {
    MemBuddy a(arena_bytes, aligned());
    std::memset(a.region().data(), 0xa5, arena_bytes); // dirty every byte first
    for (unsigned order = 0; order <= max_order; ++order) {
        Page* p = a.alloc_pages(gfp::kernel | gfp::zero, order);
        BOOST_REQUIRE(p != nullptr);
        const auto* bytes = static_cast<const unsigned char*>(a.page_address(p));
        const std::size_t n = ps << order;
        BOOST_TEST(std::count(bytes, bytes + n, 0) == static_cast<std::ptrdiff_t>(n));
        std::memset(a.page_address(p), 0x5a, n); // dirty it again before it goes back
        a.free_pages(p, order);
    }
    // Without gfp::zero, the memory is left as it was (no hidden cost).
    Page* p = a.alloc_pages(gfp::kernel, max_order);
    BOOST_TEST(static_cast<const unsigned char*>(a.page_address(p))[0] == 0x5a);
    a.free_pages(p, max_order);
    // get_zeroed_page.
    std::memset(a.region().data(), 0xee, arena_bytes);
    auto* z = static_cast<const unsigned char*>(a.get_zeroed_page(gfp::kernel));
    BOOST_REQUIRE(z != nullptr);
    BOOST_TEST(std::count(z, z + ps, 0) == static_cast<std::ptrdiff_t>(ps));
    a.free_page(const_cast<unsigned char*>(z));
}

BOOST_AUTO_TEST_CASE(alloc_pages_exact_returns_the_tail) {
    MemBuddy a(arena_bytes, aligned());
    const std::string initial = a.buddyinfo();
    for (std::uint64_t pages = 1; pages <= (1u << max_order); ++pages) {
        for (std::size_t bytes :
             {static_cast<std::size_t>(pages * ps), static_cast<std::size_t>(pages * ps - 100)}) {
            BOOST_TEST_CONTEXT("pages=" << pages << " bytes=" << bytes) {
                const std::uint64_t before = a.nr_free_pages();
                void* p = a.alloc_pages_exact(bytes, gfp::kernel | gfp::zero);
                BOOST_REQUIRE(p != nullptr);
                BOOST_TEST(a.nr_free_pages() == before - pages); // exactly the pages asked for
                BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) % ps == 0u);
                Page* first = a.virt_to_page(p);
                for (std::uint64_t k = 0; k < pages; ++k) { // each page is an order-0 page now
                    BOOST_TEST(first[k].test(PageFlag::block));
                    BOOST_TEST(first[k].order() == 0u);
                    BOOST_TEST(first[k].refcount() == 1);
                }
                // The page after the last one is not allocated (unless it starts another block of the arena).
                const std::uint64_t next = a.page_to_pfn(first) + pages;
                if (pages < (1u << max_order)) BOOST_TEST(!a.pfn_to_page(next)->test(PageFlag::block));
                std::memset(p, 0x77, bytes);
                expect_consistent(a);
                a.free_pages_exact(p, bytes);
                BOOST_TEST(a.nr_free_pages() == before);
                BOOST_TEST(a.buddyinfo() == initial);
            }
        }
    }
    // Zero bytes is one page.
    void* p = a.alloc_pages_exact(0, gfp::kernel);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 1);
    a.free_pages_exact(p, 0);
    BOOST_TEST(a.buddyinfo() == initial);
}

BOOST_AUTO_TEST_CASE(alloc_pages_exact_too_large) {
    // More than the largest block is a failed allocation (null, one failure counted), not a caller mistake: the
    // kernel's __alloc_pages() warns once and returns NULL for an order above MAX_PAGE_ORDER.
    MemBuddy a(arena_bytes, aligned());
    a.set_warning_stream(nullptr);
    const Snapshot<MemBuddy> before(a);
    expect_no_error(a, [&] {
        BOOST_TEST(a.alloc_pages_exact(((std::size_t{1} << max_order) + 1) * ps, gfp::kernel) == nullptr);
    });
    before.expect_unchanged(a);
    BOOST_TEST(a.stats().failures == 1u);
}

BOOST_AUTO_TEST_CASE(free_pages_exact_errors_change_nothing) {
    MemBuddy a(arena_bytes, aligned());
    void* p = a.alloc_pages_exact(5 * ps, gfp::kernel);
    BOOST_REQUIRE(p != nullptr);
    const Snapshot<MemBuddy> before(a);
    // Freeing more pages than allocated: the sixth page is free, so nothing at all is freed.
    expect_error(a, ErrorKind::double_free, [&] { a.free_pages_exact(p, 6 * ps); });
    before.expect_unchanged(a);
    // Running past the region.
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_pages_exact(p, (arena_pages + 1) * ps); });
    before.expect_unchanged(a);
    expect_error(a, ErrorKind::misaligned, [&] { a.free_pages_exact(static_cast<char*>(p) + 1, ps); });
    before.expect_unchanged(a);
    a.free_pages_exact(p, 5 * ps);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(compound_and_split)

BOOST_AUTO_TEST_CASE(compound_page_heads_and_tails) {
    OffBuddy a(arena_bytes);
    Page* head = a.alloc_pages(gfp::kernel | gfp::comp, 3);
    BOOST_REQUIRE(head != nullptr);
    BOOST_TEST(head->test(PageFlag::head));
    BOOST_TEST(head->test(PageFlag::block));
    BOOST_TEST(!head->test(PageFlag::tail));
    BOOST_TEST(a.compound_order(head) == 3u);
    BOOST_TEST(a.compound_head(head) == head);
    for (int k = 1; k < 8; ++k) {
        BOOST_TEST(head[k].test(PageFlag::tail));
        BOOST_TEST(!head[k].test(PageFlag::head));
        BOOST_TEST(a.compound_head(head + k) == head);
        BOOST_TEST(a.compound_order(head + k) == 0u);
    }
    BOOST_TEST(!head[8].test(PageFlag::tail)); // the tail ends with the block
    expect_consistent(a);
    // A plain block is not compound.
    Page* plain = a.alloc_pages(gfp::kernel, 2);
    BOOST_TEST(a.compound_order(plain) == 0u);
    BOOST_TEST(a.compound_head(plain + 1) == plain + 1);
    BOOST_TEST(!plain->test(PageFlag::head));
    // Order-0 with comp is just a page.
    Page* single = a.alloc_pages(gfp::kernel | gfp::comp, 0);
    BOOST_TEST(!single->test(PageFlag::head));
    BOOST_TEST(a.compound_order(single) == 0u);

    // Freeing a tail is a mistake; freeing the head releases every tail.
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(head + 3, 0); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(head + 1, 3); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.split_page(head, 3); });
    before.expect_unchanged(a);
    a.free_pages(head, 3);
    for (int k = 0; k < 8; ++k) BOOST_TEST(!head[k].test(PageFlag::tail));
    a.free_pages(plain, 2);
    a.free_pages(single, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(put_page_on_a_tail_drops_the_heads_reference) {
    OffBuddy a(arena_bytes);
    Page* head = a.alloc_pages(gfp::kernel | gfp::comp, 2);
    BOOST_REQUIRE(head != nullptr);
    a.get_page(head);
    BOOST_TEST(head->refcount() == 2);
    a.put_page(head + 3); // via a tail
    BOOST_TEST(head->refcount() == 1);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 4);
    a.put_page(head + 1);
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    BOOST_TEST(a.stats().frees == 1u);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(split_page_then_free_each_page_merges_back) {
    MemBuddy a(arena_bytes, aligned());
    const std::string initial = a.buddyinfo();
    Page* p = a.alloc_pages(gfp::kernel, max_order);
    BOOST_REQUIRE(p != nullptr);
    a.split_page(p, max_order);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 16);
    for (int k = 0; k < 16; ++k) {
        BOOST_TEST(p[k].test(PageFlag::block));
        BOOST_TEST(p[k].order() == 0u);
        BOOST_TEST(p[k].refcount() == 1);
    }
    expect_consistent(a);
    // Freed as a whole is now a wrong order.
    const Snapshot<MemBuddy> before(a);
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(p, max_order); });
    before.expect_unchanged(a);
    // Free in a scrambled order, by page and by address.
    const int order[16] = {5, 0, 15, 3, 9, 1, 12, 7, 2, 14, 8, 4, 11, 6, 13, 10};
    for (int i = 0; i < 16; ++i) {
        if (i % 2 == 0)
            a.free_pages(p + order[i], 0);
        else
            a.free_page(a.page_address(p + order[i]));
        BOOST_TEST(a.nr_free_pages() == arena_pages - 16 + static_cast<std::uint64_t>(i) + 1);
        expect_consistent(a);
    }
    BOOST_TEST(a.buddyinfo() == initial);
    BOOST_TEST(a.stats().frees == 16u);
}

BOOST_AUTO_TEST_CASE(split_page_keeps_the_first_pages_references) {
    // As in the kernel, split_page gives every other page a reference of its own and leaves the first page's
    // count alone: a get_page() holder from before the split still holds the first page.
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2);
    BOOST_REQUIRE(p != nullptr);
    a.get_page(p);
    a.split_page(p, 2);
    BOOST_TEST(p->refcount() == 2);
    for (int k = 1; k < 4; ++k) BOOST_TEST(p[k].refcount() == 1);
    BOOST_TEST(p->order() == 0u);
    for (int k = 0; k < 4; ++k) a.free_pages(p + k, 0);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 1); // the extra holder keeps page 0
    BOOST_TEST(p->test(PageFlag::block));
    a.put_page(p);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(region_smaller_than_a_page) {
    OffBuddy a(ps - 1);
    a.set_warning_stream(nullptr);
    BOOST_TEST(a.total_pages() == 0u);
    BOOST_TEST(a.nr_free_pages() == 0u);
    BOOST_TEST(a.largest_free_order() == -1);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 0}));
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0) == nullptr);
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0, Placement{.top_down = true}) == nullptr);
    BOOST_TEST(a.stats().failures == 2u);
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_offset(0, 0); });
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(split_page_validates) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2);
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::wrong_order, [&] { a.split_page(p, 1); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.split_page(p + 1, 0); });
    expect_error(a, ErrorKind::double_free, [&] { a.split_page(a.pfn_to_page(a.page_to_pfn(p) + 4), 2); });
    before.expect_unchanged(a);
    a.split_page(p, 0 + 2);
    for (int k = 0; k < 4; ++k) a.free_pages(p + k, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(refcounts)

BOOST_AUTO_TEST_CASE(free_pages_drops_one_reference) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 1);
    BOOST_REQUIRE(p != nullptr);
    a.get_page(p);
    a.get_page(p);
    BOOST_TEST(p->refcount() == 3);
    a.free_pages(p, 1);
    BOOST_TEST(p->refcount() == 2);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 2); // still allocated
    BOOST_TEST(a.stats().frees == 0u);
    a.put_page(p);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 2);
    a.put_page(p); // the last reference
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    BOOST_TEST(a.stats().frees == 1u);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    // Once free, another put drops a reference that is not there (the kernel's VM_BUG_ON_PAGE on a zero count
    // in put_page) and changes nothing.
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); });
    before.expect_unchanged(a);
}

BOOST_AUTO_TEST_CASE(get_page_on_a_free_page_is_reported) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 1);
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 1);
    const std::string info = a.buddyinfo();
    expect_error(a, ErrorKind::bad_refcount, [&] { a.get_page(p); });
    expect_error(a, ErrorKind::bad_refcount, [&] { a.get_page(p + 1); });
    BOOST_TEST(p->refcount() == 0);
    BOOST_TEST(a.buddyinfo() == info);
    BOOST_TEST(a.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(bad_refcount_is_detected) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(kmem::put_page_testzero(*p)); // a caller dropped the allocator's reference behind its back
    const std::string info = a.buddyinfo();
    expect_error(a, ErrorKind::bad_refcount, [&] { a.free_pages(p, 0); });
    expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); });
    BOOST_TEST(a.buddyinfo() == info);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 1);
    BOOST_TEST(a.stats().frees == 0u);
    BOOST_TEST(a.check_invariants() == "");
    BOOST_TEST(p->test(PageFlag::block)); // still allocated, count untouched
    BOOST_TEST(p->refcount() == 0);
    kmem::set_page_refcounted(*p);
    a.free_pages(p, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(errors)

BOOST_AUTO_TEST_CASE(out_of_region) {
    OffBuddy a(arena_bytes);
    OffBuddy other(arena_bytes);
    Page* mine = a.alloc_pages(gfp::kernel, 0);
    Page* theirs = other.alloc_pages(gfp::kernel, 0);
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_pages(theirs, 0); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_pages(static_cast<Page*>(nullptr), 0); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.put_page(theirs); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.split_page(theirs, 0); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_offset(arena_bytes, 0); });
    expect_error(a, ErrorKind::out_of_region,
                 [&] { a.free_offset(~std::uint64_t{0} & ~std::uint64_t{ps - 1}, 0); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_offset_exact(arena_bytes + ps, ps); });
    before.expect_unchanged(a);
    a.free_pages(mine, 0);
    other.free_pages(theirs, 0);
}

BOOST_AUTO_TEST_CASE(out_of_region_and_misaligned_addresses) {
    MemBuddy a(arena_bytes, aligned());
    void* p = a.get_free_pages(gfp::kernel, 1);
    BOOST_REQUIRE(p != nullptr);
    std::vector<std::byte> elsewhere(2 * ps);
    const Snapshot<MemBuddy> before(a);
    expect_error(a, ErrorKind::misaligned, [&] { a.free_pages(static_cast<char*>(p) + 1, 1); });
    expect_error(a, ErrorKind::misaligned, [&] { a.free_page(static_cast<char*>(p) + ps / 2); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_pages(a.region().data() + arena_bytes, 0); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_pages(a.region().data() - ps, 0); });
    const auto e = reinterpret_cast<std::uintptr_t>(elsewhere.data());
    expect_error(a, ErrorKind::out_of_region,
                 [&] { a.free_page(reinterpret_cast<void*>((e + ps - 1) & ~(ps - 1))); });
    expect_error(a, ErrorKind::misaligned, [&] { a.free_offset(ps + 8, 0); });
    before.expect_unchanged(a);
    a.free_pages(p, 1);
}

BOOST_AUTO_TEST_CASE(not_block_start) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 3);
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(p + 1, 0); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(p + 4, 2); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(p + 7, 3); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.put_page(p + 2); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_offset(a.page_offset(p) + ps, 0); });
    before.expect_unchanged(a);
    a.free_pages(p, 3);
}

BOOST_AUTO_TEST_CASE(wrong_order) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2);
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(p, 1); });
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(p, 3); });
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(p, 0); });
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_offset(a.page_offset(p), max_order); });
    before.expect_unchanged(a);
    a.free_pages(p, 2);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(double_free) {
    OffBuddy a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    Page* q = a.alloc_pages(gfp::kernel, 0); // p's buddy: p cannot merge when freed
    Page* big = a.alloc_pages(gfp::kernel, 2);
    a.free_pages(p, 0);
    a.free_pages(big, 2); // merges into a larger free block; big's head is now interior
    const Snapshot<OffBuddy> before(a);
    expect_error(a, ErrorKind::double_free, [&] { a.free_pages(p, 0); });   // the head of a free block
    expect_error(a, ErrorKind::double_free, [&] { a.free_pages(big, 2); }); // inside a free block
    expect_error(a, ErrorKind::double_free, [&] { a.free_offset(a.page_offset(big), 2); });
    expect_error(a, ErrorKind::double_free, [&] { a.free_pages(a.pfn_to_page(a.page_to_pfn(p) + 40), 0); });
    before.expect_unchanged(a);
    a.free_pages(q, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(order_too_large) {
    OffBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    const Snapshot<OffBuddy> before(a);
    // Freeing or splitting with an order above MaxOrder is a caller mistake.
    expect_error(a, ErrorKind::order_too_large, [&] { a.free_pages(p, max_order + 1); });
    expect_error(a, ErrorKind::order_too_large, [&] { a.split_page(p, max_order + 3); });
    // Asking for one is a failed allocation (null, a failure counted), as in the kernel's __alloc_pages(); see
    // buddy_errors_test.cpp for the warning and the default AssertOnError policy.
    expect_no_error(a, [&] {
        BOOST_TEST(a.alloc_pages(gfp::kernel, max_order + 1) == nullptr);
        BOOST_TEST(a.alloc_pages(kmem::gfp_t(gfp::kernel), 31) == nullptr);
        BOOST_TEST(!a.alloc_offset(gfp::kernel, max_order + 1).has_value());
        BOOST_TEST(!a.alloc_offset_exact((std::size_t{ps} << max_order) + 1, gfp::kernel).has_value());
    });
    before.expect_unchanged(a);
    BOOST_TEST(a.stats().failures == 4u);
    a.free_pages(p, 0);
}

BOOST_AUTO_TEST_CASE(callback_policy_reports_and_goes_on) {
    CbBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    Page* p = a.alloc_pages(gfp::kernel, 2);
    const Snapshot<CbBuddy> before(a);
    const auto wrong = expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(p, 1); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(p + 1, 0); });
    const auto misaligned = expect_error(a, ErrorKind::misaligned, [&] { a.free_offset(3, 0); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_offset(arena_bytes, 0); });
    expect_error(a, ErrorKind::order_too_large, [&] { a.free_pages(p, max_order + 1); });
    // An oversized request is a failed allocation, not a mistake: nothing reported.
    expect_no_error(a, [&] { BOOST_TEST(a.alloc_pages(gfp::kernel, max_order + 1) == nullptr); });
    before.expect_unchanged(a); // the callback let every call go on, and none changed anything
    BOOST_REQUIRE(wrong.has_value());
    BOOST_REQUIRE(misaligned.has_value());
    BOOST_TEST(wrong->operation == "free_pages");
    BOOST_TEST(misaligned->operation == "free_offset");
    a.free_pages(p, 2);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(placement)

BOOST_AUTO_TEST_CASE(range_restricted_allocation_lands_inside) {
    OffBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    const Placement window{.start = 20 * ps, .end = 44 * ps};
    std::vector<std::uint64_t> offs;
    // Order 2: aligned blocks inside [20, 44) pages are 20, 24, ..., 40 -> 6 of them.
    while (auto off = a.alloc_offset(gfp::kernel, 2, window)) {
        BOOST_TEST(*off >= window.start);
        BOOST_TEST(*off + 4 * ps <= window.end);
        BOOST_TEST(*off % (4 * ps) == 0u);
        offs.push_back(*off);
        BOOST_REQUIRE(offs.size() <= 6u);
    }
    BOOST_TEST(offs.size() == 6u);
    std::sort(offs.begin(), offs.end());
    BOOST_TEST(offs.front() == 20 * ps); // lowest first
    expect_consistent(a);
    // The rest of the arena is untouched.
    BOOST_TEST(a.nr_free_pages() == arena_pages - 24);
    for (auto off : offs) a.free_offset(off, 2);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(range_without_a_fitting_aligned_block_fails) {
    OffBuddy a(arena_bytes);
    std::ostringstream out;
    a.set_warning_stream(&out);
    const Snapshot<OffBuddy> before(a);
    // Pages [1, 5): four pages, but no 4-aligned block of 4 fits.
    BOOST_TEST(a.alloc_pages(gfp::kernel, 2, Placement{.start = ps, .end = 5 * ps}) == nullptr);
    // Smaller than the block.
    BOOST_TEST(a.alloc_pages(gfp::kernel, 3, Placement{.start = 0, .end = 7 * ps}) == nullptr);
    // Partial pages only: [100, ps + 100) holds no whole page.
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0, Placement{.start = 100, .end = ps + 100}) == nullptr);
    // Empty and inverted windows, and a window past the region.
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0, Placement{.start = 8 * ps, .end = 8 * ps}) == nullptr);
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0, Placement{.start = 9 * ps, .end = 8 * ps}) == nullptr);
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0, Placement{.start = arena_bytes}) == nullptr);
    before.expect_unchanged(a);
    BOOST_TEST(a.stats().failures == 6u);
    BOOST_TEST(out.str().find("page allocation failure: order:2") != std::string::npos);
    // A window that just fits works; the page inside a partial-page window is found.
    Page* p = a.alloc_pages(gfp::kernel, 2, Placement{.start = ps, .end = 8 * ps});
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(a.page_offset(p) == 4 * ps);
    Page* q = a.alloc_pages(gfp::kernel, 0, Placement{.start = 100, .end = 2 * ps + 100});
    BOOST_REQUIRE(q != nullptr);
    BOOST_TEST(a.page_offset(q) == ps);
    a.free_pages(p, 2);
    a.free_pages(q, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(range_fails_when_the_window_is_full) {
    OffBuddy a(arena_bytes);
    a.set_warning_stream(nullptr);
    Page* low = a.alloc_pages(gfp::kernel, max_order, Placement{.end = 16 * ps});
    BOOST_REQUIRE(low != nullptr);
    BOOST_TEST(a.page_offset(low) == 0u);
    BOOST_TEST(a.alloc_pages(gfp::kernel, 0, Placement{.end = 16 * ps}) == nullptr);
    BOOST_TEST(a.nr_free_pages() == arena_pages - 16); // while 48 pages are free elsewhere
    a.free_pages(low, max_order);
}

BOOST_AUTO_TEST_CASE(top_down_returns_the_highest_block) {
    OffBuddy a(arena_bytes);
    for (unsigned order = 0; order <= max_order; ++order) {
        Page* p = a.alloc_pages(gfp::kernel, order, Placement{.top_down = true});
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(a.page_offset(p) == arena_bytes - (ps << order));
        expect_consistent(a);
        a.free_pages(p, order);
    }
    // Successive top-down allocations walk downwards.
    std::vector<Page*> got;
    for (int i = 0; i < 5; ++i) got.push_back(a.alloc_pages(gfp::kernel, 1, Placement{.top_down = true}));
    for (int i = 0; i < 5; ++i)
        BOOST_TEST(a.page_offset(got[static_cast<std::size_t>(i)]) ==
                   arena_bytes - 2 * ps * (static_cast<std::uint64_t>(i) + 1));
    // Top-down inside a window.
    Page* w = a.alloc_pages(gfp::kernel, 1, Placement{.start = 0, .end = 11 * ps, .top_down = true});
    BOOST_REQUIRE(w != nullptr);
    BOOST_TEST(a.page_offset(w) == 8 * ps);
    a.free_pages(w, 1);
    for (Page* p : got) a.free_pages(p, 1);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    // Bottom-up with a window starting mid-block picks the lowest aligned block inside it.
    Page* b = a.alloc_pages(gfp::kernel, 2, Placement{.start = 37 * ps});
    BOOST_REQUIRE(b != nullptr);
    BOOST_TEST(a.page_offset(b) == 40 * ps);
    a.free_pages(b, 2);
    expect_consistent(a);
}

BOOST_AUTO_TEST_CASE(top_down_skips_allocated_blocks) {
    OffBuddy a(arena_bytes);
    Page* top = a.alloc_pages(gfp::kernel, max_order, Placement{.top_down = true});
    BOOST_TEST(a.page_offset(top) == 48 * ps);
    Page* next = a.alloc_pages(gfp::kernel, 0, Placement{.top_down = true});
    BOOST_TEST(a.page_offset(next) == 47 * ps);
    a.free_pages(top, max_order);
    a.free_pages(next, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(offset_interface) {
    OffBuddy a(arena_bytes, std::uint64_t{1} << 30);
    auto o = a.alloc_offset(gfp::kernel, 3);
    BOOST_REQUIRE(o.has_value());
    BOOST_TEST(*o == 0u);
    auto t = a.alloc_offset(gfp::kernel, 1, Placement{.top_down = true});
    BOOST_REQUIRE(t.has_value());
    BOOST_TEST(*t == arena_bytes - 2 * ps);
    BOOST_TEST(a.page_to_pfn(a.offset_to_page(*t)) == ((std::uint64_t{1} << 30) + *t) / ps);
    auto e = a.alloc_offset_exact(3 * ps, gfp::kernel);
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST(a.nr_free_pages() == arena_pages - 8 - 2 - 3);
    BOOST_TEST(*e % (4 * ps) == 0u);
    a.free_offset_exact(*e, 3 * ps);
    a.free_offset(*t, 1);
    a.free_offset(*o, 3);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(lock_policies)

BOOST_AUTO_TEST_CASE(spin_lock_with_atomic_flags) {
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::SpinLock,
                         kmem::policy::ThrowOnError>
        a(arena_bytes);
    static_assert(!decltype(a)::may_sleep);
    Page* p = a.alloc_pages(gfp::atomic, 2);
    Page* q = a.alloc_pages(gfp::nowait, 0);
    BOOST_REQUIRE(p != nullptr);
    BOOST_REQUIRE(q != nullptr);
    a.free_pages(p, 2);
    a.free_pages(q, 0);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
    // Run-time flags that may sleep are refused on a spin-locked allocator.
    expect_error(a, ErrorKind::invalid_gfp, [&] { a.alloc_pages(kmem::gfp_t(gfp::kernel), 0); });
}

BOOST_AUTO_TEST_CASE(mutex_lock_with_kernel_flags) {
    kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::MutexLock> a(arena_bytes);
    static_assert(decltype(a)::may_sleep);
    Page* p = a.alloc_pages(gfp::kernel, 3);
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 3);
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()
