// Tests for mistakes around the per-CPU page lists of BuddyAllocator (policy::PerCpuPages): a free, put_page or
// get_page of a block parked on a list is reported (through the ThrowOnError and CallbackOnError policies) and
// changes nothing; free_offset mistakes at an odd base; and the outside checker of test/support/ accepts what the
// lists do and rejects what they must not do.
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/expect_error.hpp"
#include "support/pcp_arena.hpp"

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::PageFlag;
using kmem::test::buddyinfo_line;
using kmem::test::check_from_outside;
using kmem::test::expect_consistent;
using kmem::test::expect_error;
using kmem::test::nr_free_vector;
using kmem::test::Snapshot;
using namespace kmem::test::pcp_arena;

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(pcp_mistakes)

BOOST_AUTO_TEST_CASE(mistakes_on_a_parked_block_are_reported_and_change_nothing) {
    OffPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 2); // pages 0..3; block 4 waits on the list
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 2);
    BOOST_REQUIRE(p->test(PageFlag::pcp));
    const Snapshot<OffPcp> before(a);
    const std::string on_list = "per-CPU page list";
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p, 2); }, on_list);
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_offset(0, 2); }, on_list);
    expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); }); // put_page on a count of 0
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p, 0); }, on_list); // any order: it is free
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p, 1); }, on_list);
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p, 4); }, on_list); // above the lists' orders
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p + 1, 0); }, on_list); // a page inside it
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p + 3, 0); }, on_list);
    expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p + 2); });
    expect_error(a, ErrorKind::order_too_large, [&] { a.free_pages(p, max_order + 1); });
    expect_error(a, ErrorKind::bad_refcount, [&] { a.get_page(p); });
    expect_error(a, ErrorKind::misaligned, [&] { a.free_offset(100, 2); });
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
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(r, 0); });
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(r, 2); });
    expect_error(a, ErrorKind::wrong_order, [&] { a.free_pages(r, 4); });
    expect_error(a, ErrorKind::not_block_start, [&] { a.free_pages(r + 1, 0); });
    live.expect_unchanged(a);
    BOOST_TEST(r->refcount() == 1);
    a.free_pages(r, 1);
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(r, 1); }, on_list);
    a.drain_all_pages();
    expect_consistent(a);
    BOOST_TEST(a.buddyinfo() == buddyinfo_line({0, 0, 0, 0, 4}));
}

BOOST_AUTO_TEST_CASE(callback_policy_reports_a_double_free_and_goes_on) {
    CbPcp a(arena_bytes);
    Page* p = a.alloc_pages(gfp::kernel, 0);
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 0);
    const Snapshot<CbPcp> before(a);
    const std::string on_list = "per-CPU page list";
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_pages(p, 0); }, on_list);
    expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); }); // put_page on a count of 0
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_offset(0, 0); }, on_list);
    before.expect_unchanged(a);
    BOOST_TEST(a.nr_pcp_pages() == 4u);
    expect_consistent(a);
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
        BOOST_TEST(error.find(needle) != std::string::npos,
                   "'" << error << "' does not mention '" << needle << "'");
    };
    p[1].set(PageFlag::tail); // a dirty page inside a parked block
    expect_reported("inside the per-CPU block");
    p[1].clear(PageFlag::tail);
    kmem::get_page(*p); // a parked block with a reference
    expect_reported("per-CPU block has refcount 1");
    BOOST_TEST(kmem::put_page_testzero(*p)); // back to 0
    p->set(PageFlag::buddy);                 // on both kinds of list
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
    BOOST_TEST(initial == kmem::test::expected_initial_nr_free(38, 199, max_order),
               boost::test_tools::per_element());
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
    expect_error(
        a, ErrorKind::double_free, [&] { a.free_offset(off1, order1); }, "per-CPU page list");
    expect_error(a, ErrorKind::misaligned, [&] { a.free_offset(off1 + 1, order1); });
    expect_error(a, ErrorKind::out_of_region, [&] { a.free_offset(a.region().size() + ps, 0); });
    expect_consistent(a);
    a.drain_all_pages();
    BOOST_TEST(nr_free_vector(a) == initial, boost::test_tools::per_element());
    BOOST_TEST(a.nr_free_pages() == 199u);
    expect_consistent(a);
}

BOOST_AUTO_TEST_SUITE_END()
