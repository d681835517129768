// Tests for include/kmem/page.hpp: the page descriptor and the page table (mem_map).
#include <kmem/page.hpp>

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <stdexcept>
#include <type_traits>

using kmem::Page;
using kmem::PageFlag;
using kmem::PageTable;

BOOST_AUTO_TEST_SUITE(page_descriptor)

BOOST_AUTO_TEST_CASE(is_at_most_16_bytes_and_starts_clear) {
    static_assert(sizeof(Page) <= 16);
    static_assert(std::is_default_constructible_v<Page>);
    Page p;
    BOOST_TEST(p.flags() == 0u);
    BOOST_TEST(p.order() == 0u);
    BOOST_TEST(p.refcount() == 0);
    BOOST_TEST(p.owner() == 0u);
}

BOOST_AUTO_TEST_CASE(flags_set_test_clear_independently) {
    const PageFlag all[] = {PageFlag::buddy,    PageFlag::head, PageFlag::tail,
                            PageFlag::reserved, PageFlag::slab, PageFlag::block};
    Page p;
    for (PageFlag f : all) {
        BOOST_TEST(!p.test(f));
        p.set(f);
        BOOST_TEST(p.test(f));
        BOOST_TEST(p.flags() == static_cast<std::uint16_t>(f)); // only that bit
        p.set(f);                                               // setting twice is idempotent
        BOOST_TEST(p.flags() == static_cast<std::uint16_t>(f));
        p.clear(f);
        BOOST_TEST(!p.test(f));
        BOOST_TEST(p.flags() == 0u);
    }
    // Several at once; clearing one keeps the others.
    p.set(PageFlag::head);
    p.set(PageFlag::slab);
    p.set(PageFlag::reserved);
    p.clear(PageFlag::slab);
    BOOST_TEST(p.test(PageFlag::head));
    BOOST_TEST(p.test(PageFlag::reserved));
    BOOST_TEST(!p.test(PageFlag::slab));
    BOOST_TEST(p.flags() ==
               (static_cast<std::uint16_t>(PageFlag::head) | static_cast<std::uint16_t>(PageFlag::reserved)));
    p.clear(PageFlag::tail); // clearing an unset flag changes nothing
    BOOST_TEST(p.flags() ==
               (static_cast<std::uint16_t>(PageFlag::head) | static_cast<std::uint16_t>(PageFlag::reserved)));
    // The bits are distinct.
    std::uint16_t seen = 0;
    for (PageFlag f : all) {
        BOOST_TEST((seen & static_cast<std::uint16_t>(f)) == 0);
        seen = static_cast<std::uint16_t>(seen | static_cast<std::uint16_t>(f));
    }
}

BOOST_AUTO_TEST_CASE(refcount_get_put) {
    Page p;
    kmem::set_page_refcounted(p);
    BOOST_TEST(p.refcount() == 1);
    BOOST_TEST(kmem::page_ref_count(p) == 1);
    kmem::get_page(p);
    kmem::get_page(p);
    BOOST_TEST(kmem::page_ref_count(p) == 3);
    BOOST_TEST(!kmem::put_page_testzero(p));
    BOOST_TEST(p.refcount() == 2);
    BOOST_TEST(!kmem::put_page_testzero(p));
    BOOST_TEST(p.refcount() == 1);
    BOOST_TEST(kmem::put_page_testzero(p)); // the last reference
    BOOST_TEST(p.refcount() == 0);
    kmem::set_page_refcounted(p); // set_page_refcounted resets, whatever the count was
    kmem::get_page(p);
    kmem::set_page_refcounted(p);
    BOOST_TEST(p.refcount() == 1);
}

BOOST_AUTO_TEST_CASE(refcount_does_not_touch_flags_or_owner) {
    Page p;
    p.set(PageFlag::slab);
    p.set_owner(0x1234'5678'9abc'def0ull);
    kmem::set_page_refcounted(p);
    kmem::get_page(p);
    BOOST_TEST(!kmem::put_page_testzero(p));
    BOOST_TEST(p.test(PageFlag::slab));
    BOOST_TEST(p.owner() == 0x1234'5678'9abc'def0ull);
}

BOOST_AUTO_TEST_CASE(owner_slot_round_trips_a_pointer) {
    Page p;
    int object = 42;
    p.set_owner(reinterpret_cast<std::uintptr_t>(&object));
    BOOST_TEST(reinterpret_cast<int*>(static_cast<std::uintptr_t>(p.owner())) == &object);
    BOOST_TEST(*reinterpret_cast<int*>(static_cast<std::uintptr_t>(p.owner())) == 42);
    // Both 32-bit halves are kept.
    for (std::uint64_t v :
         {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{0xffffffffu}, std::uint64_t{1} << 32,
          ~std::uint64_t{0}, std::uint64_t{0x8000'0000'0000'0001ull}}) {
        p.set_owner(v);
        BOOST_TEST(p.owner() == v);
    }
    BOOST_TEST(p.flags() == 0u); // the owner slot does not spill into the flags
    BOOST_TEST(p.refcount() == 0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(page_table)

BOOST_AUTO_TEST_CASE(pfn_page_conversions) {
    PageTable<4096> t(256, 1024);
    BOOST_TEST(t.first_pfn() == 256u);
    BOOST_TEST(t.size() == 1024u);
    BOOST_TEST(t.metadata_bytes() == 1024 * sizeof(Page));
    for (std::uint64_t pfn :
         {std::uint64_t{256}, std::uint64_t{300}, std::uint64_t{1000}, std::uint64_t{1279}}) {
        Page& p = t.pfn_to_page(pfn);
        BOOST_TEST(t.page_to_pfn(&p) == pfn);
        BOOST_TEST(&t[pfn - 256] == &p);
        BOOST_TEST(t.owns(&p));
        BOOST_TEST(t.contains_pfn(pfn));
    }
    // Neighbouring frames have neighbouring descriptors (O(1) arithmetic, no lookup).
    BOOST_TEST(&t.pfn_to_page(301) == &t.pfn_to_page(300) + 1);
    // Descriptors start zeroed.
    for (std::uint64_t i = 0; i < t.size(); ++i) {
        if (t[i].flags() != 0 || t[i].refcount() != 0 || t[i].owner() != 0) {
            BOOST_FAIL("descriptor " << i << " is not zeroed");
        }
    }
}

BOOST_AUTO_TEST_CASE(contains_pfn_bounds) {
    PageTable<4096> t(256, 1024);
    BOOST_TEST(!t.contains_pfn(0));
    BOOST_TEST(!t.contains_pfn(255));
    BOOST_TEST(t.contains_pfn(256));
    BOOST_TEST(t.contains_pfn(1279));
    BOOST_TEST(!t.contains_pfn(1280));
    BOOST_TEST(!t.contains_pfn(~std::uint64_t{0}));
    PageTable<4096> empty(10, 0);
    BOOST_TEST(!empty.contains_pfn(10));
    BOOST_TEST(empty.metadata_bytes() == 0u);
}

BOOST_AUTO_TEST_CASE(owns_only_its_own_descriptors) {
    PageTable<4096> a(0, 64), b(0, 64);
    BOOST_TEST(a.owns(&a[0]));
    BOOST_TEST(a.owns(&a[63]));
    BOOST_TEST(!a.owns(&a[0] + 64)); // one past the end
    BOOST_TEST(!a.owns(&b[0]));
    BOOST_TEST(!b.owns(&a[5]));
    BOOST_TEST(!a.owns(nullptr));
    Page outside;
    BOOST_TEST(!a.owns(&outside));
    // A pointer into the middle of a descriptor is not a descriptor.
    const auto* mid = reinterpret_cast<const Page*>(reinterpret_cast<const unsigned char*>(&a[3]) + 4);
    BOOST_TEST(!a.owns(mid));
}

BOOST_AUTO_TEST_CASE(writes_through_the_table_persist) {
    PageTable<4096> t(1000, 16);
    t.pfn_to_page(1005).set(PageFlag::reserved);
    kmem::set_page_refcounted(t.pfn_to_page(1007));
    t.pfn_to_page(1015).set_owner(99);
    BOOST_TEST(t[5].test(PageFlag::reserved));
    BOOST_TEST(t[7].refcount() == 1);
    BOOST_TEST(t[15].owner() == 99u);
    BOOST_TEST(t[6].flags() == 0u);
}

BOOST_AUTO_TEST_CASE(moves) {
    PageTable<4096> a(50, 8);
    a.pfn_to_page(52).set(PageFlag::slab);
    Page* p = &a.pfn_to_page(52);
    PageTable<4096> b(std::move(a));
    BOOST_TEST(b.first_pfn() == 50u);
    BOOST_TEST(b.size() == 8u);
    BOOST_TEST(&b.pfn_to_page(52) == p); // same descriptors, no copy
    BOOST_TEST(b.pfn_to_page(52).test(PageFlag::slab));
    BOOST_TEST(a.size() == 0u); // NOLINT(bugprone-use-after-move): the moved-from table is empty
    BOOST_TEST(!a.contains_pfn(52));
}

BOOST_AUTO_TEST_CASE(sixteen_million_frames_are_cheap) {
    // 64 GiB of 4 KiB pages: the descriptors are reserved, not committed, so this costs nothing until touched.
    constexpr std::uint64_t frames = std::uint64_t{16} << 20;
    const std::uint64_t first = (std::uint64_t{1} << 40) / 4096; // 1 TiB
    PageTable<4096> t(first, frames);
    BOOST_TEST(t.size() == frames);
    BOOST_TEST(t.metadata_bytes() == 16 * frames);
    BOOST_TEST(t.metadata_bytes() >= frames * sizeof(Page));
    for (std::uint64_t pfn : {first, first + frames / 2, first + frames - 1, first + 12345678}) {
        Page& p = t.pfn_to_page(pfn);
        BOOST_TEST(p.flags() == 0u);
        p.set(PageFlag::block);
        kmem::set_page_refcounted(p);
        BOOST_TEST(t.page_to_pfn(&p) == pfn);
        BOOST_TEST(t.owns(&p));
        BOOST_TEST(t.pfn_to_page(pfn).test(PageFlag::block));
        BOOST_TEST(t.pfn_to_page(pfn).refcount() == 1);
    }
    BOOST_TEST(!t.contains_pfn(first + frames));
    BOOST_TEST(!t.contains_pfn(first - 1));
}

BOOST_AUTO_TEST_CASE(rejects_more_frames_than_an_index_can_name) {
    BOOST_CHECK_THROW(PageTable<4096>(0, Page::nil), std::length_error);
    BOOST_CHECK_THROW(PageTable<4096>(0, std::uint64_t{1} << 33), std::length_error);
}

BOOST_AUTO_TEST_SUITE_END()
