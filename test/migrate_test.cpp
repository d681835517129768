// Anti-fragmentation (policy::MigrateTypes, FreeArea<MaxOrder, nr_migrate_types>): pageblocks with migrate
// types, free lists per order and type, the fallback order with pageblock claiming, HIGHATOMIC reserves, per-CPU
// lists per type, /proc/pagetypeinfo.
#include <kmem/buddy.hpp>
#include <kmem/free_area.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>
#include <kmem/zone.hpp>

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace policy = kmem::policy;
using kmem::MigrateType;
constexpr unsigned unmovable = static_cast<unsigned>(MigrateType::unmovable);
constexpr unsigned movable = static_cast<unsigned>(MigrateType::movable);
constexpr unsigned reclaimable = static_cast<unsigned>(MigrateType::reclaimable);
constexpr unsigned highatomic = static_cast<unsigned>(MigrateType::highatomic);

// 4 pageblocks of 512 pages (pageblock order 9), aligned so that the layout is exact.
using Typed = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, policy::ThrowOnError, policy::MigrateTypes>;
Typed make_typed() {
    return Typed(std::uint64_t{2048} * 4096, std::uint64_t{1} << 30);
}

} // namespace

BOOST_AUTO_TEST_SUITE(migrate)

BOOST_AUTO_TEST_CASE(gfp_flags_pick_the_migrate_type) {
    BOOST_TEST(kmem::gfp_migratetype(gfp::kernel.value) == unmovable);
    BOOST_TEST(kmem::gfp_migratetype(gfp::highuser_movable.value) == movable);
    BOOST_TEST(kmem::gfp_migratetype((gfp::kernel | gfp::reclaimable).value) == reclaimable);
    BOOST_TEST(kmem::migratetype_name(highatomic) == "HighAtomic");
}

BOOST_AUTO_TEST_CASE(types_keep_to_their_own_pageblocks) {
    Typed a = make_typed();
    BOOST_TEST(a.nr_pageblocks(movable) == 4u); // every pageblock starts MOVABLE, as at boot
    // The first unmovable page falls back to the largest movable block (order 10 = two pageblocks) and claims
    // both pageblocks; later unmovable pages come from them.
    std::vector<kmem::Page*> u;
    for (int i = 0; i < 100; ++i) u.push_back(a.alloc_pages(gfp::kernel, 0));
    BOOST_TEST(a.nr_pageblocks(unmovable) == 2u);
    BOOST_TEST(a.nr_pageblocks(movable) == 2u);
    BOOST_TEST(a.fallback_counts().first == 1u);
    BOOST_TEST(a.fallback_counts().second == 1u);
    std::vector<kmem::Page*> m;
    for (int i = 0; i < 100; ++i) m.push_back(a.alloc_pages(gfp::highuser_movable, 0));
    for (kmem::Page* p : u) BOOST_TEST(a.pageblock_migratetype(p) == unmovable);
    for (kmem::Page* p : m) BOOST_TEST(a.pageblock_migratetype(p) == movable);
    // No pageblock holds both kinds.
    for (kmem::Page* p : u)
        for (kmem::Page* q : m) BOOST_TEST(((a.page_to_pfn(p) >> 9) != (a.page_to_pfn(q) >> 9)));
    BOOST_TEST(a.nr_free(0, unmovable) + a.nr_free(0, movable) == a.nr_free(0));
    BOOST_TEST(a.check_invariants() == "");
    for (kmem::Page* p : u) a.free_pages(p, 0);
    for (kmem::Page* p : m) a.free_pages(p, 0);
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
    BOOST_TEST(a.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(a_fallback_claims_a_pageblock_only_when_half_of_it_is_free) {
    Typed a = make_typed();
    // Fill everything with movable pages, then free most of one pageblock and a little of another.
    std::vector<kmem::Page*> all;
    while (kmem::Page* p = a.alloc_pages(gfp::highuser_movable | gfp::nowarn, 0)) all.push_back(p);
    BOOST_TEST(all.size() == 2048u);
    BOOST_TEST(a.nr_pageblocks(movable) == 4u);
    const auto pfn0 = a.page_to_pfn(all[0]) & ~std::uint64_t{511};
    std::vector<kmem::Page*> keep;
    for (kmem::Page* p : all) {
        const std::uint64_t off = a.page_to_pfn(p) - pfn0;
        const bool block0_mostly_free = off < 512 && off % 8 != 0; // 448 of 512 free, as order-0 pages
        const bool block1_some_free = off >= 512 && off < 1024 && off % 64 == 1; // 8 free
        if (block0_mostly_free || block1_some_free)
            a.free_pages(p, 0);
        else
            keep.push_back(p);
    }
    BOOST_TEST(a.check_invariants() == "");
    // An unmovable request: no unmovable or reclaimable block exists, so it falls back to movable.  The largest
    // movable blocks are in pageblock 0 (order 2 after merging), which is more than half free: claimed.
    kmem::Page* u = a.alloc_pages(gfp::kernel, 0);
    BOOST_TEST(u != nullptr);
    BOOST_TEST(a.pageblock_migratetype(u) == unmovable);
    BOOST_TEST(a.nr_pageblocks(unmovable) == 1u);
    BOOST_TEST(a.nr_free(2, movable) == 0u); // every free block of the claimed pageblock moved to unmovable
    keep.push_back(u);
    // Take the rest of pageblock 0; the next unmovable page must come from pageblock 1, only 8/512 free: it
    // falls back without claiming, so the pageblock stays movable.
    while (a.nr_free(0, unmovable) + a.nr_free(1, unmovable) + a.nr_free(2, unmovable) != 0)
        keep.push_back(a.alloc_pages(gfp::kernel, 0));
    const auto steals = a.fallback_counts().second;
    kmem::Page* v = a.alloc_pages(gfp::kernel, 0);
    BOOST_TEST(v != nullptr);
    BOOST_TEST(a.pageblock_migratetype(v) == movable);
    BOOST_TEST(a.fallback_counts().second == steals);
    BOOST_TEST(a.nr_pageblocks(unmovable) == 1u);
    keep.push_back(v);
    BOOST_TEST(a.check_invariants() == "");
    for (kmem::Page* p : keep) a.free_pages(p, 0);
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
    BOOST_TEST(a.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(per_cpu_lists_keep_types_apart) {
    using Pcp = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, policy::ThrowOnError, policy::MigrateTypes,
                                     policy::PerCpuPages<8, 32>>;
    Pcp a(std::uint64_t{2048} * 4096, std::uint64_t{1} << 30);
    std::vector<kmem::Page*> u, m;
    for (int i = 0; i < 50; ++i) {
        u.push_back(a.alloc_pages(gfp::kernel, 0));
        m.push_back(a.alloc_pages(gfp::highuser_movable, 0));
    }
    for (kmem::Page* p : u) BOOST_TEST(a.pageblock_migratetype(p) == unmovable);
    for (kmem::Page* p : m) BOOST_TEST(a.pageblock_migratetype(p) == movable);
    // Freed pages go to the list of their pageblock's type: a movable request never gets a freed unmovable page.
    for (kmem::Page* p : u) a.free_pages(p, 0);
    for (int i = 0; i < 50; ++i) {
        kmem::Page* p = a.alloc_pages(gfp::highuser_movable, 0);
        BOOST_TEST(a.pageblock_migratetype(p) == movable);
        m.push_back(p);
    }
    BOOST_TEST(a.check_invariants() == "");
    for (kmem::Page* p : m) a.free_pages(p, 0);
    a.drain_all_pages();
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
    BOOST_TEST(a.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(highatomic_reserves_serve_atomic_high_orders_and_go_back_under_pressure) {
    using Node = kmem::Node<10, 4096, kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::normal, kmem::MmapRegion>>,
                            policy::MutexLock, policy::ThrowOnError>;
    Node node(kmem::MmapRegion(4 << 20, {.alignment = 4 << 20})); // two pageblocks
    node.set_warning_stream(nullptr);
    node.set_watermarks(kmem::ZoneType::normal, {0, 0, 0});
    auto& zone = node.zone_allocator_of<kmem::ZoneType::normal>();
    // Fill the node with order-0 pages, then free those of one pageblock.
    std::vector<void*> all;
    while (void* p = node.get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0)) all.push_back(p);
    const auto block_of = [&](void* p) { return node.page_to_pfn(node.virt_to_page(p)) >> 9; };
    const auto first_block = block_of(all[0]);
    std::vector<void*> kept;
    for (void* p : all) {
        if (block_of(p) == first_block)
            node.free_pages(p, 0);
        else
            kept.push_back(p);
    }
    all.swap(kept);
    node.drain_all_pages();
    BOOST_TEST(node.nr_free_pages() == 512u);
    // ALLOC_HIGHATOMIC is a slow-path flag: raise the watermarks so that a GFP_ATOMIC order-2 request fails the
    // fast path (low 600 > 512 free) and passes the slow path's reduced min (400 - 200 - 50 = 150).
    node.set_watermarks(kmem::ZoneType::normal, {400, 600, 700});
    void* hi = node.get_free_pages(gfp::atomic, 2);
    BOOST_TEST(hi != nullptr);
    BOOST_TEST(zone.reserved_highatomic() == 512u); // the pageblock became a HIGHATOMIC reserve
    BOOST_TEST(zone.nr_pageblocks(highatomic) == 1u);
    BOOST_TEST(node.pagetypeinfo().find("HighAtomic") != std::string::npos);
    // Ordinary requests leave the reserve out of their watermark check and cannot use it ...
    node.set_watermarks(kmem::ZoneType::normal, {0, 0, 0});
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0) == nullptr);
    // ... another high-order atomic request can ...
    void* hi2 = node.get_free_pages(gfp::atomic, 1);
    BOOST_TEST(hi2 != nullptr);
    // ... and a request that may retry gets the reserve back (unreserve_highatomic_pageblock) and succeeds.
    void* k = node.get_free_pages(gfp::kernel | gfp::nowarn, 0);
    BOOST_TEST(k != nullptr);
    BOOST_TEST(zone.reserved_highatomic() == 0u);
    BOOST_TEST(node.check_invariants() == "");
    node.free_pages(k, 0);
    node.free_pages(hi, 2);
    node.free_pages(hi2, 1);
    for (void* p : all) node.free_pages(p, 0);
    node.drain_all_pages();
    BOOST_TEST(node.nr_free_pages() == node.total_pages());
    BOOST_TEST(node.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(pagetypeinfo_has_the_kernel_layout) {
    using Node = kmem::Node<10, 4096,
                            kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::dma32, kmem::OffsetRegion>,
                                        kmem::ZoneSpec<kmem::ZoneType::normal, kmem::OffsetRegion>>>;
    Node node(kmem::OffsetRegion(4 << 20), kmem::OffsetRegion(8 << 20));
    const std::string t = node.pagetypeinfo();
    BOOST_TEST(
        t.find("Page block order: 9\nPages per block:  512\n\nFree pages count per migrate type at order "
               "      0      1") == 0u);
    BOOST_TEST(t.find("Node    0, zone    DMA32, type      Movable      0      0") != std::string::npos);
    BOOST_TEST(t.find("Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic \n") !=
               std::string::npos);
    BOOST_TEST(t.find("Node 0, zone   Normal            0            4            0            0 \n") !=
               std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
