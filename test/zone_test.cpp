// Zones and nodes: zonelist fallback, watermarks and reserves, the slow path's retry rules, shrinkers,
// compaction of movable memory, the fragmentation index, reports, the page API through a node, errors and fault
// injection.  Threaded cases (waiting for frees, kswapd) are in zone_threads_test.cpp.
#include <kmem/fault.hpp>
#include <kmem/gfp.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>
#include <kmem/zone.hpp>

#include "support/expect_error.hpp"
#include "support/fail_nth_sweep.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace policy = kmem::policy;
using kmem::MmapRegion;
using kmem::ZoneSpec;
using kmem::ZoneType;
constexpr std::size_t page = 4096;

using Three =
    kmem::Node<10, page,
               kmem::Zones<ZoneSpec<ZoneType::dma, MmapRegion>, ZoneSpec<ZoneType::dma32, MmapRegion>,
                           ZoneSpec<ZoneType::normal, MmapRegion>>,
               policy::ThrowOnError>;
using One = kmem::Node<10, page, kmem::Zones<ZoneSpec<ZoneType::normal, MmapRegion>>, policy::ThrowOnError>;
using MutexOne = kmem::Node<10, page, kmem::Zones<ZoneSpec<ZoneType::normal, MmapRegion>>, policy::MutexLock,
                            policy::ThrowOnError>;
using Movable =
    kmem::Node<10, page,
               kmem::Zones<ZoneSpec<ZoneType::normal, MmapRegion>, ZoneSpec<ZoneType::movable, MmapRegion>>,
               policy::ThrowOnError>;

// Allocates order-0 pages with `flags` until one fails; returns them.
template <class N, class F>
std::vector<void*> fill(N& node, F flags, unsigned order = 0) {
    std::vector<void*> out;
    while (void* p = node.get_free_pages(flags, order)) out.push_back(p);
    return out;
}
template <class N>
void release(N& node, std::vector<void*>& v, unsigned order = 0) {
    for (void* p : v) node.free_pages(p, order);
    v.clear();
}

// A shrinker over pages the test holds: count = pages held, scan frees up to nr_to_scan of them.
template <class N>
struct PageHoard {
    N& node;
    std::vector<void*> pages;
    unsigned counts = 0, scans = 0;
    std::uint64_t largest_scan = 0;
    kmem::Shrinker shrinker(std::uint64_t batch = 0) {
        kmem::Shrinker s;
        s.name = "hoard";
        s.batch = batch;
        s.count_objects = [this](const kmem::ShrinkControl&) -> std::uint64_t {
            ++counts;
            return pages.empty() ? kmem::shrink_empty : pages.size();
        };
        s.scan_objects = [this](kmem::ShrinkControl& sc) -> std::uint64_t {
            ++scans;
            largest_scan = std::max(largest_scan, sc.nr_to_scan);
            std::uint64_t n = 0;
            while (n < sc.nr_to_scan && !pages.empty()) {
                node.free_pages(pages.back(), 0);
                pages.pop_back();
                ++n;
            }
            return n;
        };
        return s;
    }
};

} // namespace

BOOST_AUTO_TEST_SUITE(zone)

BOOST_AUTO_TEST_CASE(requests_take_the_highest_allowed_zone_and_fall_back_downward) {
    Three node(MmapRegion(1 << 20), MmapRegion(2 << 20), MmapRegion(4 << 20));
    node.set_warning_stream(nullptr);
    void* n = node.get_free_pages(gfp::kernel, 0);
    void* d32 = node.get_free_pages(gfp::kernel | gfp::dma32, 0);
    void* d = node.get_free_pages(gfp::kernel | gfp::dma, 0);
    BOOST_TEST((node.zone_of(n) == ZoneType::normal));
    BOOST_TEST((node.zone_of(d32) == ZoneType::dma32));
    BOOST_TEST((node.zone_of(d) == ZoneType::dma));
    BOOST_TEST(node.stats().fallbacks == 0u);
    // GFP_KERNEL fills NORMAL to its low watermark, then DMA32, then DMA (the zonelist order).
    std::vector<void*> all = fill(node, gfp::kernel | gfp::nowarn);
    std::vector<std::string_view> order_seen;
    for (void* p : all) {
        const std::string_view z = kmem::zone_name(*node.zone_of(p));
        if (order_seen.empty() || order_seen.back() != z) order_seen.push_back(z);
    }
    // The fast path stops at each zone's low watermark, the slow path then at each one's min, both walking the
    // zonelist from the top.
    const std::vector<std::string_view> twice{"Normal", "DMA32", "DMA", "Normal", "DMA32", "DMA"};
    BOOST_TEST(order_seen == twice, boost::test_tools::per_element());
    BOOST_TEST(node.stats().fallbacks > 0u);
    release(node, all);
    // A DMA32 request never gets NORMAL memory, even when DMA32 and DMA are full.
    std::vector<void*> low = fill(node, gfp::kernel | gfp::dma32 | gfp::nowarn);
    for (void* p : low) BOOST_TEST((*node.zone_of(p) != ZoneType::normal));
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::dma | gfp::nowarn, 0) == nullptr);
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::nowarn, 0) != nullptr); // NORMAL still has room
    release(node, low);
    node.free_pages(n, 0);
    node.free_pages(d32, 0);
    node.free_pages(d, 0);
    node.drain_all_pages();
    BOOST_TEST(node.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(movable_zone_serves_only_movable_requests) {
    Movable node(MmapRegion(1 << 20), MmapRegion(1 << 20));
    node.set_warning_stream(nullptr);
    void* m = node.get_free_pages(gfp::highuser_movable, 0);
    BOOST_TEST((node.zone_of(m) == ZoneType::movable));
    std::vector<void*> k = fill(node, gfp::kernel | gfp::nowarn);
    for (void* p : k) BOOST_TEST((*node.zone_of(p) == ZoneType::normal));
    // NORMAL is at its min watermark now; movable memory still comes from ZONE_MOVABLE.
    void* m2 = node.get_free_pages(gfp::highuser_movable, 0);
    BOOST_TEST((node.zone_of(m2) == ZoneType::movable));
    release(node, k);
    node.free_pages(m, 0);
    node.free_pages(m2, 0);
}

BOOST_AUTO_TEST_CASE(watermarks_decide_who_may_dip_into_reserves) {
    // Reserve discounts (__zone_watermark_ok): __GFP_HIGH takes half off min, a caller that cannot block another
    // quarter of the rest, __GFP_MEMALLOC ignores the watermarks; order-0 requests succeed while free > min.
    const auto pages_left_after = [](auto flags) {
        One node(MmapRegion(1 << 20)); // 256 pages
        node.set_warning_stream(nullptr);
        node.set_watermarks(ZoneType::normal, {100, 120, 140});
        auto v = fill(node, flags | gfp::nowarn);
        const std::uint64_t left = node.nr_free_pages();
        BOOST_TEST(node.stats().failures == 1u);
        release(node, v);
        return left;
    };
    const std::uint64_t nowait = pages_left_after(gfp::nowait);                    // min 100
    const std::uint64_t high_blocking = pages_left_after(gfp::kernel | gfp::high); // 100 - 50 = 50
    const std::uint64_t atomic = pages_left_after(gfp::atomic);                    // 50 - 12 = 38
    const std::uint64_t atomic_nomem =
        pages_left_after(gfp::atomic | gfp::nomemalloc);                          // 50: not ALLOC_NON_BLOCK
    const std::uint64_t memalloc = pages_left_after(gfp::kernel | gfp::memalloc); // no watermark
    BOOST_TEST(nowait <= 100u);
    BOOST_TEST(nowait >= 98u);
    BOOST_TEST(high_blocking <= 50u);
    BOOST_TEST(high_blocking >= 48u);
    BOOST_TEST(atomic <= 38u);
    BOOST_TEST(atomic >= 36u);
    BOOST_TEST(atomic_nomem <= 50u);
    BOOST_TEST(atomic_nomem >= 48u);
    BOOST_TEST(memalloc == 0u);
    // The fast path stops at the low watermark: a request below it goes through the slow path.
    One node(MmapRegion(1 << 20));
    node.set_watermarks(ZoneType::normal, {100, 120, 140});
    std::vector<void*> v;
    while (node.nr_free_pages() > 121) v.push_back(node.get_free_pages(gfp::nowait, 0));
    const auto slow_before = node.stats().slowpath;
    v.push_back(node.get_free_pages(gfp::nowait, 0));
    v.push_back(node.get_free_pages(gfp::nowait, 0));
    BOOST_TEST(node.stats().slowpath > slow_before);
    release(node, v);
}

BOOST_AUTO_TEST_CASE(default_watermarks_follow_the_kernel_formula) {
    // 1 GiB: min_free_kbytes = sqrt(16 * 1048576) = 4096 KiB = 1024 pages; step = max(256, 262) = 262.
    const kmem::Watermarks w = kmem::default_watermarks<4096>(262144, 262144);
    BOOST_TEST(w.min == 1024u);
    BOOST_TEST(w.low == 1024u + 262u);
    BOOST_TEST(w.high == 1024u + 2 * 262u);
    // Two zones share min in proportion to their size.
    const kmem::Watermarks a = kmem::default_watermarks<4096>(65536, 262144);
    BOOST_TEST(a.min == 256u);
    // Tiny arenas: min_free_kbytes is clamped to 128 KiB, and min to 1/16 of the zone.
    const kmem::Watermarks t = kmem::default_watermarks<4096>(256, 256);
    BOOST_TEST(t.min == 16u);
    One node(MmapRegion(1 << 20));
    BOOST_TEST(node.watermarks(ZoneType::normal).min == 16u);
    kmem::test::expect_error(node, kmem::ErrorKind::bad_parameter, [&] {
        node.set_watermarks(ZoneType::normal, {10, 5, 20});
    });
    kmem::test::expect_error(
        node, kmem::ErrorKind::bad_parameter,
        [&] {
            node.set_watermarks(ZoneType::dma, {1, 2, 3});
        },
        "no zone DMA");
    BOOST_TEST(node.watermarks(ZoneType::normal).min == 16u);
}

BOOST_AUTO_TEST_CASE(direct_reclaim_runs_shrinkers_and_uses_what_they_free) {
    One node(MmapRegion(1 << 20));
    node.set_warning_stream(nullptr);
    PageHoard<One> hoard{node, {}};
    hoard.pages = fill(node, gfp::kernel | gfp::nowarn);
    const std::size_t held = hoard.pages.size();
    BOOST_TEST(held > 200u);
    const auto id = node.register_shrinker(hoard.shrinker(16));
    // A non-blocking request never reclaims.
    BOOST_TEST(node.get_free_pages(gfp::nowait | gfp::nowarn, 0) == nullptr);
    BOOST_TEST(hoard.scans == 0u);
    // GFP_KERNEL reclaims: the shrinker frees pages and the request gets one.
    void* p = node.get_free_pages(gfp::kernel, 0);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(hoard.scans > 0u);
    BOOST_TEST(hoard.largest_scan <= 16u); // batch honoured
    BOOST_TEST(hoard.pages.size() < held);
    const auto s = node.stats();
    BOOST_TEST(s.direct_reclaim >= 1u);
    BOOST_TEST(s.reclaimed_pages >= held - hoard.pages.size() - 1);
    BOOST_TEST(node.unregister_shrinker(id));
    BOOST_TEST(!node.unregister_shrinker(id));
    node.free_pages(p, 0);
    release(node, hoard.pages);
    node.drain_all_pages();
    BOOST_TEST(node.nr_free_pages() == node.total_pages());
}

BOOST_AUTO_TEST_CASE(a_slab_cache_over_a_node_gives_its_free_slabs_back_under_pressure) {
    using Cache = kmem::KmemCache<MutexOne, policy::MutexLock>;
    MutexOne node(MmapRegion(1 << 20));
    node.set_warning_stream(nullptr);
    Cache cache(node, "pressure", 256);
    std::vector<void*> objs;
    for (int i = 0; i < 600; ++i) objs.push_back(cache.alloc(gfp::kernel));
    for (void* o : objs) cache.free(o); // free objects stay in per-CPU arrays and slabs
    const std::uint64_t held = cache.stats().num_slabs;
    BOOST_TEST(held > 0u);
    std::vector<void*> pages = fill(node, gfp::kernel | gfp::memalloc | gfp::nowarn); // the rest of the node
    // Without the cache's shrinker, reclaim finds nothing.
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0) == nullptr);
    const auto id = node.register_shrinker(cache.shrinker());
    void* p = node.get_free_pages(gfp::kernel | gfp::noretry, 0);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(cache.stats().num_slabs < held);
    // The slow path woke kswapd, which may have run the shrinker first: its pages are usable as soon as they are
    // freed, and its count is added when its pass ends, so give that pass a moment.
    for (int i = 0; i < 1000 && node.stats().reclaimed_pages == 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    BOOST_TEST(node.stats().reclaimed_pages > 0u);
    BOOST_TEST(cache.validate() == "");
    node.unregister_shrinker(id);
    node.free_pages(p, 0);
    release(node, pages);
    BOOST_TEST(cache.destroy());
    node.drain_all_pages();
    BOOST_TEST(node.nr_free_pages() == node.total_pages());
}

BOOST_AUTO_TEST_CASE(shrinker_answers_empty_and_stop_and_priorities) {
    One node(MmapRegion(1 << 20));
    unsigned scans = 0;
    kmem::Shrinker empty{"empty", [](const kmem::ShrinkControl&) { return kmem::shrink_empty; },
                         [&](kmem::ShrinkControl&) -> std::uint64_t {
                             ++scans;
                             return 0;
                         }};
    node.register_shrinker(empty);
    node.shrink_slab(0);
    BOOST_TEST(scans == 0u); // SHRINK_EMPTY: never scanned
    unsigned stop_scans = 0;
    kmem::Shrinker stop{"stop", [](const kmem::ShrinkControl&) -> std::uint64_t { return 10000; },
                        [&](kmem::ShrinkControl&) {
                            ++stop_scans;
                            return kmem::shrink_stop;
                        },
                        2, 10};
    node.register_shrinker(stop);
    node.shrink_slab(0);
    BOOST_TEST(stop_scans == 1u); // SHRINK_STOP ends the pass at once
    // Priority: 12 scans freeable >> 12 (nothing of 100 objects), 0 scans them all.
    std::uint64_t scanned = 0;
    kmem::Shrinker counted{"counted", [](const kmem::ShrinkControl&) -> std::uint64_t { return 100; },
                           [&](kmem::ShrinkControl& sc) {
                               scanned += sc.nr_to_scan;
                               return sc.nr_to_scan;
                           }};
    const auto id = node.register_shrinker(counted);
    node.shrink_slab(12);
    BOOST_TEST(scanned == 0u);
    node.shrink_slab(0);
    BOOST_TEST(scanned >= 100u);
    node.unregister_shrinker(id);
}

BOOST_AUTO_TEST_CASE(retry_rules_noretry_costly_and_retry_mayfail) {
    MutexOne node(MmapRegion(1 << 20));
    node.set_warning_stream(nullptr);
    std::vector<void*> all = fill(node, gfp::kernel | gfp::memalloc | gfp::nowarn); // everything
    unsigned counts = 0;
    node.register_shrinker({"nothing",
                            [&](const kmem::ShrinkControl&) -> std::uint64_t {
                                ++counts;
                                return 0;
                            },
                            [](kmem::ShrinkControl&) -> std::uint64_t { return 0; }});
    // __GFP_NORETRY: one reclaim round (13 shrinker calls, priorities 12..0), then failure.
    auto before = node.stats();
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::noretry | gfp::nowarn, 0) == nullptr);
    auto after = node.stats();
    BOOST_TEST(after.direct_reclaim - before.direct_reclaim == 1u);
    BOOST_TEST(after.waits == before.waits);
    // A costly order without __GFP_RETRY_MAYFAIL: one round too.
    before = after;
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::nowarn, 4) == nullptr);
    after = node.stats();
    BOOST_TEST(after.direct_reclaim - before.direct_reclaim == 1u);
    // __GFP_RETRY_MAYFAIL: bounded retries without progress, waiting between them, then failure.
    before = after;
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::retry_mayfail | gfp::nowarn, 0) == nullptr);
    after = node.stats();
    BOOST_TEST(after.direct_reclaim - before.direct_reclaim == MutexOne::max_reclaim_retries + 1);
    BOOST_TEST(after.waits - before.waits == MutexOne::max_reclaim_retries);
    BOOST_TEST(after.failures - before.failures == 1u);
    BOOST_TEST(counts > 0u);
    release(node, all);
}

BOOST_AUTO_TEST_CASE(nofail_on_a_single_threaded_node_reports_instead_of_hanging) {
    // With NoLock nobody else can free: a __GFP_NOFAIL request that reclaim cannot satisfy is reported.
    One node(MmapRegion(1 << 20));
    node.set_warning_stream(nullptr);
    std::vector<void*> all = fill(node, gfp::kernel | gfp::memalloc | gfp::nowarn);
    kmem::test::expect_error(node, kmem::ErrorKind::nofail_failed,
                             [&] { (void)node.get_free_pages(gfp::kernel | gfp::nofail, 0); });
    release(node, all);
}

BOOST_AUTO_TEST_CASE(compaction_rebuilds_high_orders_and_keeps_contents) {
    One node(MmapRegion(2 << 20)); // 512 pages
    node.set_warning_stream(nullptr);
    node.set_watermarks(ZoneType::normal, {0, 0, 0});
    std::vector<kmem::MovableHandle> hs;
    while (auto h = node.alloc_movable(gfp::highuser_movable | gfp::nowarn, 0)) hs.push_back(h);
    BOOST_TEST(hs.size() == 512u);
    for (std::size_t i = 0; i < hs.size(); ++i)
        std::memset(node.pin(hs[i]).get(), static_cast<int>(i % 251), page);
    // Free every other block: 256 free pages, none of order 1.
    std::vector<kmem::MovableHandle> live;
    std::vector<std::size_t> tag;
    for (std::size_t i = 0; i < hs.size(); ++i) {
        if (i % 2 == 0) {
            node.free_movable(hs[i]);
        } else {
            live.push_back(hs[i]);
            tag.push_back(i % 251);
        }
    }
    node.drain_all_pages();
    BOOST_TEST(node.mem_map().index_of_address(nullptr) == kmem::Page::nil);
    const int before = node.fragmentation_index(ZoneType::normal, 3);
    BOOST_TEST(before > 800); // failure would be from fragmentation: 256 free pages, no order-3 block
    // An order-3 request that may not compact fails; GFP_KERNEL compacts in the slow path and succeeds.
    BOOST_TEST(node.get_free_pages(gfp::nowait | gfp::nowarn, 3) == nullptr);
    void* big = node.get_free_pages(gfp::kernel, 3);
    BOOST_TEST(big != nullptr);
    BOOST_TEST(node.stats().pages_migrated > 0u);
    node.free_pages(big, 3);
    // A full compaction moves the rest together.
    const kmem::CompactResult r = node.compact_zone(ZoneType::normal);
    BOOST_TEST(node.fragmentation_index(ZoneType::normal, 7) == -1000); // a 128-page block is free again
    BOOST_TEST(r.blocks_pinned == 0u);
    for (std::size_t i = 0; i < live.size(); ++i) {
        const auto pin = node.pin(live[i]);
        const auto* b = static_cast<const unsigned char*>(pin.get());
        bool intact = true;
        for (std::size_t k = 0; k < page; ++k) intact = intact && b[k] == tag[i];
        BOOST_TEST(intact, "movable block " << i << " kept its content");
    }
    std::cout << node.extfrag_index();
    for (auto h : live) node.free_movable(h);
    node.drain_all_pages();
    BOOST_TEST(node.nr_free_pages() == node.total_pages());
    BOOST_TEST(node.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(pinned_blocks_stay_where_they_are) {
    One node(MmapRegion(1 << 20, {.alignment = 1 << 20})); // aligned: the first pages are at the bottom
    node.set_watermarks(ZoneType::normal, {0, 0, 0});
    auto a = node.alloc_movable(gfp::highuser_movable, 0);
    auto b = node.alloc_movable(gfp::highuser_movable, 0);
    void* where_a = node.movable_address(a);
    void* where_b = node.movable_address(b);
    {
        auto pin = node.pin(a);
        const kmem::CompactResult r = node.compact();
        BOOST_TEST(r.blocks_pinned == 1u);
        BOOST_TEST(node.movable_address(a) == where_a);
        BOOST_TEST(node.movable_address(b) != where_b); // the unpinned one moved to the top
        kmem::test::expect_error(
            node, kmem::ErrorKind::bad_parameter, [&] { node.free_movable(a); }, "pinned");
    }
    node.free_movable(a);
    kmem::test::expect_error(node, kmem::ErrorKind::bad_parameter, [&] { node.free_movable(a); });
    BOOST_TEST(node.movable_address(a) == nullptr);
    kmem::test::expect_error(node, kmem::ErrorKind::bad_parameter, [&] { (void)node.pin(a); });
    node.free_movable(b);
    BOOST_TEST(node.nr_movable() == 0u);
}

BOOST_AUTO_TEST_CASE(fragmentation_index_matches_the_kernel_formula) {
    std::array<std::uint64_t, 11> nr{};
    BOOST_TEST(kmem::detail::fragmentation_index(nr, 3) == 0); // nothing free: lack of memory
    nr[0] = 100;                                               // 100 single pages
    // 1000 - (1000 + 100 * 1000 / 8) / 100 = 1000 - 135 = 865
    BOOST_TEST(kmem::detail::fragmentation_index(nr, 3) == 865);
    nr[3] = 1;
    BOOST_TEST(kmem::detail::fragmentation_index(nr, 3) == -1000);
}

BOOST_AUTO_TEST_CASE(reports_list_every_zone) {
    Three node(MmapRegion(1 << 20), MmapRegion(2 << 20), MmapRegion(4 << 20));
    const std::string bi = node.buddyinfo();
    BOOST_TEST(bi.find("Node 0, zone      DMA ") == 0u);
    BOOST_TEST(bi.find("Node 0, zone    DMA32 ") != std::string::npos);
    BOOST_TEST(bi.find("Node 0, zone   Normal ") != std::string::npos);
    BOOST_TEST(std::count(bi.begin(), bi.end(), '\n') == 3);
    const std::string zi = node.zoneinfo();
    BOOST_TEST(zi.find("Node 0, zone   Normal\n  pages free     1024\n        min      ") !=
               std::string::npos);
    BOOST_TEST(zi.find("managed  256") != std::string::npos);
    BOOST_TEST(zi.find("pagesets") != std::string::npos);
    const std::string ef = node.extfrag_index();
    BOOST_TEST(std::count(ef.begin(), ef.end(), '\n') == 3);
    BOOST_TEST(ef.find("-1.000") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_page_api_works_across_zones) {
    Three node(MmapRegion(1 << 20), MmapRegion(2 << 20), MmapRegion(4 << 20));
    // Exact allocations, offsets, references and compound pages, in a lower zone as well as the top one.
    void* e = node.alloc_pages_exact(3 * page, gfp::kernel | gfp::dma32);
    BOOST_TEST((node.zone_of(e) == ZoneType::dma32));
    node.free_pages_exact(e, 3 * page);
    auto off = node.alloc_offset(gfp::kernel | gfp::dma, 1);
    BOOST_TEST(off.has_value());
    BOOST_TEST(*off < (1u << 20)); // DMA is the node's first 256 pages
    node.free_offset(*off, 1);
    kmem::Page* p = node.alloc_pages(gfp::kernel | gfp::comp, 2);
    BOOST_TEST(node.compound_order(p) == 2u);
    node.get_page(p);
    node.put_page(p);
    node.put_page(p); // the last reference frees it
    kmem::test::expect_error(node, kmem::ErrorKind::double_free, [&] { node.free_pages(p, 2); });
    void* outside = reinterpret_cast<void*>(std::uintptr_t{1} << 20); // page aligned, in no zone
    kmem::test::expect_error(node, kmem::ErrorKind::out_of_region, [&] { node.free_pages(outside, 0); });
    std::ostringstream warned;
    node.set_warning_stream(&warned);
    BOOST_TEST(node.get_free_pages(gfp::kernel | gfp::nowarn, 11) == nullptr); // above MaxOrder: a failure
    BOOST_TEST(node.stats().failures == 1u);
    BOOST_TEST(warned.str() == ""); // __GFP_NOWARN
    BOOST_TEST(node.alloc_pages(gfp::kernel, 12) ==
               nullptr); // warned once (WARN_ON_ONCE_GFP), as a buddy does
    BOOST_TEST(node.alloc_pages(gfp::kernel, 11) == nullptr);
    BOOST_TEST(node.stats().failures == 3u);
    BOOST_TEST(warned.str().find("alloc_pages: page allocation failure: order:12, mode:") !=
               std::string::npos);
    BOOST_TEST(warned.str().find("above MaxOrder 10 (warned once)") != std::string::npos);
    BOOST_TEST(warned.str().find("order:11") == std::string::npos);
    node.set_warning_stream(nullptr);
    node.drain_all_pages();
    BOOST_TEST(node.nr_free_pages() == node.total_pages());
    BOOST_TEST(node.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(fail_page_alloc_applies_once_per_request_and_spares_nofail) {
    using Faulty = kmem::Node<10, page, kmem::Zones<ZoneSpec<ZoneType::normal, MmapRegion>>,
                              policy::MutexLock, kmem::policy::FailPageAlloc>;
    Faulty node(MmapRegion(1 << 20));
    node.fault_policy().attr().probability = 100;
    BOOST_TEST(node.get_free_pages(gfp::kernel, 0) == nullptr);
    void* p = node.get_free_pages(gfp::kernel | gfp::nofail, 0); // NOFAIL is never failed
    BOOST_TEST(p != nullptr);
    node.free_pages(p, 0);
    BOOST_TEST(node.fault_policy().failures() == 1u);
    BOOST_TEST(node.stats().failures == 1u);
}

// The sweep of issue #8: fail the k-th page allocation a node sees, for every k until a run sees no failure,
// while a workload mixes zones, a slab cache over the node, exact and movable allocations and compaction.  After
// each run everything is freed: every page must be back and every invariant must hold, whichever request failed.
BOOST_AUTO_TEST_CASE(sweep_failing_the_kth_page_allocation_of_a_node) {
    using Faulty =
        kmem::Node<10, page,
                   kmem::Zones<ZoneSpec<ZoneType::dma32, MmapRegion>, ZoneSpec<ZoneType::normal, MmapRegion>>,
                   policy::MutexLock, policy::ThrowOnError, kmem::policy::FailPageAlloc>;
    Faulty node(MmapRegion(1 << 20), MmapRegion(2 << 20));
    node.set_warning_stream(nullptr);
    const auto workload = [&](std::uint64_t k) {
        std::uint64_t nulls = 0;
        kmem::KmemCache<Faulty, policy::MutexLock> cache(node, "sweep", 200);
        std::vector<void*> objs, exact;
        std::vector<std::pair<void*, unsigned>> pages;
        std::vector<kmem::MovableHandle> movable;
        for (int i = 0; i < 120; ++i) {
            const auto note = [&](bool ok) { nulls += ok ? 0 : 1; };
            void* o = cache.alloc(gfp::kernel | gfp::nowarn);
            note(o != nullptr);
            if (o != nullptr) objs.push_back(o);
            void* p = i % 2 == 0 ? node.get_free_pages(gfp::kernel | gfp::nowarn, i % 3)
                                 : node.get_free_pages(gfp::kernel | gfp::dma32 | gfp::nowarn, i % 3);
            note(p != nullptr);
            if (p != nullptr) pages.emplace_back(p, static_cast<unsigned>(i % 3));
            if (i % 10 == 0) {
                void* e = node.alloc_pages_exact(3 * page, gfp::kernel | gfp::nowarn);
                note(e != nullptr);
                if (e != nullptr) exact.push_back(e);
                auto h = node.alloc_movable(gfp::highuser_movable | gfp::nowarn, 0);
                note(static_cast<bool>(h));
                if (h) {
                    std::memset(node.pin(h).get(), i, page);
                    movable.push_back(h);
                }
            }
            if (i % 30 == 29) (void)node.compact();
        }
        BOOST_TEST_REQUIRE(node.check_invariants() == "", "k = " << k);
        BOOST_TEST_REQUIRE(cache.validate() == "", "k = " << k);
        for (void* o : objs) cache.free(o);
        for (auto [p, order] : pages) node.free_pages(p, order);
        for (void* e : exact) node.free_pages_exact(e, 3 * page);
        for (auto h : movable) node.free_movable(h);
        BOOST_TEST_REQUIRE(cache.destroy(), "k = " << k);
        return nulls;
    };
    const int runs = kmem::test::sweep_fail_nth(node, workload, [&] { node.drain_all_pages(); });
    BOOST_TEST(runs > 20);
}

BOOST_AUTO_TEST_SUITE_END()
