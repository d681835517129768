// Unit tests for include/kmem/slab.hpp: KmemCache (kmem_cache_create / alloc / free / bulk / shrink / destroy),
// its geometry (slab order and waste, colouring, SLAB_HWCACHE_ALIGN, explicit alignment), the constructor, the
// typed SlabCache, pointer -> page -> cache lookups and the mistakes they catch, bad configurations, tunables,
// validate() against planted corruption, and the /proc/slabinfo and slabtop reports.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include "support/expect_error.hpp"

#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::SlabFlags;
using kmem::test::expect_error;
using kmem::test::expect_no_error;

constexpr std::size_t page = 4096;
using Buddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion>;
using Cache = kmem::KmemCache<Buddy, kmem::policy::ThrowOnError>;
using CbCache = kmem::KmemCache<Buddy, kmem::policy::CallbackOnError>;
using PlainCache = kmem::KmemCache<Buddy>;

// Lets a test write into a free object on purpose: under AddressSanitizer slab.hpp poisons free objects.
void allow_access([[maybe_unused]] void* p, [[maybe_unused]] std::size_t n) {
#ifdef KMEM_DETAIL_SLAB_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#endif
}

// Runs `f` with stderr sent to a temporary file and returns what was written there.
template <class F>
std::string capture_stderr(F&& f) {
    std::fflush(stderr);
    std::FILE* tmp = std::tmpfile();
    BOOST_REQUIRE(tmp != nullptr);
    const int saved = ::dup(2);
    ::dup2(::fileno(tmp), 2);
    f();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::string out;
    std::rewind(tmp);
    char buf[512];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, tmp)) > 0) out.append(buf, n);
    std::fclose(tmp);
    return out;
}

// A CacheConfig with the fields the tests vary.
kmem::CacheConfig config(std::string name, std::size_t size, std::size_t align = 0,
                         SlabFlags flags = SlabFlags::none, unsigned min_partial = 5) {
    kmem::CacheConfig c;
    c.name = std::move(name);
    c.size = size;
    c.align = align;
    c.flags = flags;
    c.min_partial = min_partial;
    return c;
}

std::uintptr_t addr(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p);
}

// The slab (its first byte) holding `p`: slabs are compound pages, naturally aligned blocks of the buddy.
template <class C>
std::uintptr_t slab_base(const C& c, const void* p) {
    return addr(p) & ~((std::uintptr_t{page} << c.order()) - 1);
}

} // namespace

BOOST_AUTO_TEST_SUITE(slab)

BOOST_AUTO_TEST_CASE(alloc_zalloc_free) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache c(buddy, "test_obj", 100);
    BOOST_TEST(c.valid());
    BOOST_TEST(c.name() == "test_obj");
    BOOST_TEST(c.object_size() == 100u);
    BOOST_TEST(c.align() == 8u);
    BOOST_TEST(c.stride() >= 100u);
    BOOST_TEST(c.stride() % c.align() == 0u);
    BOOST_TEST(c.usable_size() == 100u);

    auto* a = static_cast<unsigned char*>(c.alloc(gfp::kernel));
    auto* b = static_cast<unsigned char*>(c.alloc());
    BOOST_REQUIRE(a != nullptr);
    BOOST_REQUIRE(b != nullptr);
    BOOST_TEST(a != b);
    BOOST_TEST((addr(a) > addr(b) ? addr(a) - addr(b) : addr(b) - addr(a)) >= c.stride());
    BOOST_TEST(addr(a) % 8 == 0u);
    std::memset(a, 0xa1, 100);
    std::memset(b, 0xb2, 100);
    BOOST_TEST(a[99] == 0xa1);
    BOOST_TEST(b[0] == 0xb2);
    BOOST_TEST(c.stats().active_objs == 2u);
    BOOST_TEST(c.inuse_objects() >= 2u);
    BOOST_TEST(c.slab_count() == 1u);

    // The slab's head page is marked PG_slab and names the slab descriptor, whose cache is c.
    kmem::Page* head = buddy.compound_head(buddy.virt_to_page(a));
    BOOST_TEST(head->test(kmem::PageFlag::slab));
    BOOST_TEST(Cache::virt_to_slab(buddy, a)->cache == &c);
    BOOST_TEST(Cache::virt_to_slab(buddy, a + 57)->cache == &c); // any byte of the slab finds it
    BOOST_TEST(Cache::virt_to_slab(buddy, &head) == nullptr);    // a stack address is in no slab

    c.free(a);
    c.free(b);
    c.free(nullptr); // ignored, as kmem_cache_free(s, NULL)
    BOOST_TEST(c.stats().active_objs == 0u);

    // zalloc (and gfp::zero through alloc) clears the object even when it was dirty.
    std::vector<unsigned char*> dirty;
    for (int i = 0; i < 50; ++i) {
        auto* p = static_cast<unsigned char*>(c.alloc());
        std::memset(p, 0xff, 100);
        dirty.push_back(p);
    }
    for (auto* p : dirty) c.free(p);
    for (int i = 0; i < 50; ++i) {
        auto* z = static_cast<unsigned char*>(i % 2 ? c.zalloc() : c.alloc(gfp::kernel | gfp::zero));
        BOOST_REQUIRE(z != nullptr);
        BOOST_TEST(std::count(z, z + 100, 0) == 100);
        dirty[static_cast<std::size_t>(i)] = z;
    }
    for (auto* p : dirty) c.free(p);
    // The run-time flags path clears too.
    auto* z = static_cast<unsigned char*>(c.alloc(kmem::gfp_t(gfp::kernel | gfp::zero)));
    BOOST_REQUIRE(z != nullptr);
    BOOST_TEST(std::count(z, z + 100, 0) == 100);
    c.free(z);
    BOOST_TEST(c.validate() == "");
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(byte_interface_serves_only_objects_that_fit) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    Cache c(buddy, "bytes", 48, 16);
    void* p = c.try_allocate(gfp::kernel, 48, 16);
    void* q = c.try_allocate(gfp::kernel, 1, 1);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(q != nullptr);
    BOOST_TEST(c.try_allocate(gfp::kernel, 49, 8) == nullptr);
    BOOST_TEST(c.try_allocate(gfp::kernel, 16, 32) == nullptr);
    BOOST_TEST(c.stats().active_objs == 2u);
    c.deallocate(p, 48, 16);
    c.deallocate(q, 1, 1);
    BOOST_TEST(c.stats().active_objs == 0u);
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(alloc_bulk_is_all_or_none) {
    // 64 pages: the cache runs the buddy dry part-way through a large bulk request.
    Buddy buddy(kmem::MmapRegion(64 * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "bulk", 256);

    std::vector<void*> live(10);
    BOOST_TEST(c.alloc_bulk(gfp::kernel, live) == 10u);
    for (void* p : live) {
        BOOST_REQUIRE(p != nullptr);
        std::memset(p, 0x3c, 256);
    }
    BOOST_TEST(std::set<void*>(live.begin(), live.end()).size() == 10u);
    BOOST_TEST(c.stats().active_objs == 10u);

    // More objects than 64 pages can hold: nothing is handed out and nothing stays allocated.
    std::vector<void*> big(64 * page / 256 + 10, reinterpret_cast<void*>(1));
    BOOST_TEST(c.alloc_bulk(gfp::kernel, big) == 0u);
    BOOST_TEST(std::all_of(big.begin(), big.end(), [](void* p) { return p == nullptr; }));
    BOOST_TEST(c.stats().active_objs == 10u);
    BOOST_TEST(c.validate() == "");
    for (void* p : live) BOOST_TEST(static_cast<unsigned char*>(p)[255] == 0x3c);

    // A request that fits still succeeds after the failure (the objects of the failed one came back).
    std::vector<void*> more(100);
    BOOST_TEST(c.alloc_bulk(gfp::kernel, more) == 100u);
    c.free_bulk(more);
    c.free_bulk(live);
    BOOST_TEST(c.stats().active_objs == 0u);
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
}

BOOST_AUTO_TEST_CASE(free_bulk_frees_every_object) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache c(buddy, "free_bulk", 64);
    std::vector<void*> objs(1000);
    BOOST_TEST(c.alloc_bulk(gfp::kernel, objs) == 1000u);
    BOOST_TEST(c.stats().active_objs == 1000u);
    c.free_bulk(std::span<void* const>(objs).first(400));
    BOOST_TEST(c.stats().active_objs == 600u);
    c.free_bulk(std::span<void* const>(objs).subspan(400));
    BOOST_TEST(c.stats().active_objs == 0u);
    c.free_bulk({}); // nothing
    BOOST_TEST(c.validate() == "");
    c.drain_cpu_arrays();
    BOOST_TEST(c.stats().active_slabs == 0u);
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(shrink_gives_empty_slabs_back) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "shrinkable", 512);
    const std::uint32_t per_slab = c.objects_per_slab();
    const std::uint64_t slab_pages = std::uint64_t{1} << c.order();

    void* first = c.alloc();
    // One slab and one page of slab descriptors (they live outside the slabs, 63 to a page).
    BOOST_TEST(start - buddy.nr_free_pages() == slab_pages + 1);
    std::vector<void*> objs{first};
    for (std::uint32_t i = 1; i < 20 * per_slab; ++i) objs.push_back(c.alloc());
    BOOST_TEST(c.slab_count() == 20u);
    BOOST_TEST(buddy.nr_free_pages() == start - 20 * slab_pages - 1);
    // Keep one object in the first slab; everything else goes back.
    for (std::size_t i = 1; i < objs.size(); ++i) c.free(objs[i]);
    BOOST_TEST(c.stats().active_objs == 1u);
    const std::uint64_t slabs_before = c.slab_count();
    const std::uint64_t given = c.shrink();
    BOOST_TEST(given == (slabs_before - 1) * slab_pages);
    BOOST_TEST(c.slab_count() == 1u);
    BOOST_TEST(c.stats().cpu_objs == 0u);
    BOOST_TEST(buddy.nr_free_pages() == start - slab_pages - 1);
    BOOST_TEST(c.shrink() == 0u); // nothing more is empty
    c.free(first);
    BOOST_TEST(c.shrink() == slab_pages);
    BOOST_TEST(c.slab_count() == 0u);
    BOOST_TEST(buddy.nr_free_pages() == start); // with no slab left, the descriptor page went back too
    BOOST_TEST(c.validate() == "");
    // The cache grows again from nothing.
    void* again = c.alloc();
    BOOST_TEST(start - buddy.nr_free_pages() == slab_pages + 1);
    c.free(again);
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
}

BOOST_AUTO_TEST_CASE(frees_keep_at_most_min_partial_empty_slabs) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    Cache c(buddy, config("min_partial", 1024, 0, SlabFlags::none, 2));
    const std::uint32_t per_slab = c.objects_per_slab();
    std::vector<void*> objs;
    for (std::uint32_t i = 0; i < 10 * per_slab; ++i) objs.push_back(c.alloc());
    BOOST_TEST(c.slab_count() == 10u);
    for (void* p : objs) c.free(p);
    c.drain_cpu_arrays();
    // The frees emptied ten slabs; all but min_partial (2) went back to the buddy as they emptied.
    BOOST_TEST(c.slab_count() == 2u);
    BOOST_TEST(c.stats().active_slabs == 0u);
    BOOST_TEST(c.validate() == "");
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(destroy_with_live_objects_reports_and_keeps_the_cache) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    for (int policy = 0; policy < 2; ++policy) {
        BOOST_TEST_CONTEXT((policy == 0 ? "ThrowOnError" : "CallbackOnError")) {
            const auto run = [&](auto& c) {
                void* keep = c.alloc();
                void* gone = c.alloc();
                std::memset(keep, 0x5e, 200);
                c.free(gone);
                const kmem::SlabStats before = c.stats();
                char where[32];
                std::snprintf(where, sizeof where, "0x%016llx",
                              static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(keep)));
                const auto e = expect_error(
                    c, ErrorKind::objects_remain, [&] { BOOST_TEST(!c.destroy()); },
                    "Slab cache still has objects");
                BOOST_REQUIRE(e.has_value());
                BOOST_TEST(e->message.find("(1 allocated)") != std::string::npos, e->message);
                BOOST_TEST(e->message.find(where) != std::string::npos, e->message); // names the live object
                BOOST_TEST(e->operation == "kmem_cache_destroy");
                // Nothing changed and the cache goes on working.
                BOOST_TEST(c.slab_count() == before.num_slabs);
                BOOST_TEST(c.stats().active_objs == 1u);
                BOOST_TEST(static_cast<unsigned char*>(keep)[199] == 0x5e);
                BOOST_TEST(c.validate() == "");
                void* again = c.alloc();
                BOOST_TEST(again != nullptr);
                BOOST_TEST(again != keep);
                c.free(again);
                c.free(keep);
                BOOST_TEST(c.destroy());
                BOOST_TEST(buddy.nr_free_pages() == start);
            };
            if (policy == 0) {
                Cache c(buddy, "leaky", 200);
                run(c);
            } else {
                CbCache c(buddy, "leaky", 200);
                run(c);
            }
        }
    }
}

BOOST_AUTO_TEST_CASE(destroy_when_empty_returns_every_page) {
    Buddy buddy(kmem::MmapRegion(16 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "many_slabs", 2000);
    // More slabs than one descriptor page describes (63), so two descriptor pages are in use.
    const std::uint32_t n = 100 * c.objects_per_slab();
    std::vector<void*> objs;
    for (std::uint32_t i = 0; i < n; ++i) objs.push_back(c.alloc());
    BOOST_TEST(c.slab_count() == 100u);
    BOOST_TEST(start - buddy.nr_free_pages() == (std::uint64_t{100} << c.order()) + 2);
    for (void* p : objs) c.free(p);
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
    BOOST_TEST(buddy.check_invariants() == "");
    // A destroyed cache may be used again: it grows anew (and destroy() with no slab at all is fine too).
    void* p = c.alloc();
    BOOST_TEST(p != nullptr);
    c.free(p);
    BOOST_TEST(c.destroy());
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
    BOOST_TEST(c.stats().num_slabs == 0u);
}

BOOST_AUTO_TEST_CASE(destructor_returns_every_page) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    {
        Cache c(buddy, "scoped", 300);
        std::vector<void*> objs;
        for (int i = 0; i < 500; ++i) objs.push_back(c.alloc());
        for (void* p : objs) c.free(p);
        BOOST_TEST(buddy.nr_free_pages() < start);
    }
    BOOST_TEST(buddy.nr_free_pages() == start);
    // With a live object the destructor reports on stderr and leaves the slab holding it allocated (a live
    // pointer must not be handed out again); the empty slabs and the descriptor page go back.
    std::uint64_t slab_pages = 0;
    const std::string err = capture_stderr([&] {
        Cache c(buddy, "leaked", 300);
        slab_pages = std::uint64_t{1} << c.order();
        std::vector<void*> objs;
        for (std::uint32_t i = 0; i < 3 * c.objects_per_slab(); ++i) objs.push_back(c.alloc());
        for (std::size_t i = 1; i < objs.size(); ++i) c.free(objs[i]);
        BOOST_TEST(c.slab_count() == 3u);
    });
    BOOST_TEST(err.find("Slab cache still has objects") != std::string::npos, err);
    BOOST_TEST(buddy.nr_free_pages() + slab_pages == start);
}

BOOST_AUTO_TEST_CASE(full_partial_empty_transitions) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache c(buddy, "lists", 128);
    const std::uint32_t n = c.objects_per_slab();
    BOOST_REQUIRE(n >= 4u);
    const auto check = [&](std::uint64_t slabs, std::uint64_t active_slabs, std::uint64_t active_objs) {
        c.drain_cpu_arrays(); // objects parked in per-CPU arrays go back to their slabs
        const kmem::SlabStats s = c.stats();
        BOOST_TEST(s.num_slabs == slabs);
        BOOST_TEST(s.active_slabs == active_slabs);
        BOOST_TEST(s.active_objs == active_objs);
        BOOST_TEST(s.num_objs == slabs * n);
        BOOST_TEST(s.cpu_objs == 0u);
        BOOST_TEST(c.inuse_objects() == active_objs);
        BOOST_TEST(c.validate() == ""); // each slab is on the list its use calls for
    };
    check(0, 0, 0);
    std::vector<void*> first;
    for (std::uint32_t i = 0; i < n; ++i) first.push_back(c.alloc());
    check(1, 1, n); // one full slab
    for (void* p : first) BOOST_TEST(slab_base(c, p) == slab_base(c, first[0]));
    void* second = c.alloc();
    BOOST_TEST(slab_base(c, second) != slab_base(c, first[0]));
    check(2, 2, n + 1); // full + partial
    c.free(first[0]);
    check(2, 2, n); // partial + partial
    c.free(second);
    check(2, 1, n - 1); // partial + empty (kept: fewer than min_partial empty slabs)
    for (std::uint32_t i = 1; i < n; ++i) c.free(first[i]);
    check(2, 0, 0); // empty + empty
    BOOST_TEST(c.shrink() == 2u << c.order());
    check(0, 0, 0);
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(slab_order_keeps_waste_within_an_eighth) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    std::size_t impossible = 0;
    for (std::size_t size = 8; size <= 8192; ++size) {
        PlainCache c(buddy, "order", size);
        BOOST_TEST_CONTEXT("size " << size << " stride " << c.stride() << " order " << c.order()) {
            BOOST_REQUIRE(c.valid());
            BOOST_TEST(c.order() <= PlainCache::max_slab_order);
            const std::size_t slab = page << c.order();
            BOOST_TEST(c.objects_per_slab() == slab / c.stride());
            BOOST_TEST(c.objects_per_slab() >= 1u);
            const bool within = c.objects_per_slab() * c.stride() * 8 >= slab * 7;
            if (size <= 4096) {
                // An object of at most a page wastes less than itself in a slab of 8 pages: always possible.
                BOOST_TEST(within);
                continue;
            }
            // Larger objects: 1/8 holds whenever some order up to slub_max_order reaches it; otherwise the
            // order with the least waste is taken.
            bool possible = false;
            double least = 1.0;
            for (unsigned o = 0; o <= PlainCache::max_slab_order; ++o) {
                const std::size_t s = page << o;
                const std::size_t k = s / c.stride();
                if (k == 0) continue;
                possible = possible || k * c.stride() * 8 >= s * 7;
                least = std::min(least, static_cast<double>(s - k * c.stride()) / static_cast<double>(s));
            }
            if (possible) {
                BOOST_TEST(within);
            } else {
                ++impossible;
                const double waste =
                    static_cast<double>(slab - c.objects_per_slab() * c.stride()) / static_cast<double>(slab);
                BOOST_TEST(waste <= least + 1e-12);
            }
        }
    }
    BOOST_TEST_MESSAGE(impossible << " sizes above a page cannot keep waste within 1/8 up to order 3");
    BOOST_TEST(impossible < 2000u); // most sizes can
}

BOOST_AUTO_TEST_CASE(consecutive_slabs_are_coloured) {
    Buddy buddy(kmem::MmapRegion(16 << 20));
    // 200-byte objects leave a tail in each slab that holds at least one 64-byte colour step.
    Cache c(buddy, "coloured", 200);
    const std::size_t slab = page << c.order();
    const std::size_t leftover = slab - c.objects_per_slab() * c.stride();
    BOOST_REQUIRE(leftover >= 64u);
    const std::size_t colours = leftover / 64 + 1;
    std::map<std::uintptr_t, std::uintptr_t> first_object; // slab base -> lowest object address
    std::vector<std::uintptr_t> order_of_slabs;            // slabs in the order they were created
    std::vector<void*> objs;
    for (std::size_t i = 0; i < (colours + 2) * c.objects_per_slab(); ++i) {
        void* p = c.alloc();
        objs.push_back(p);
        const std::uintptr_t base = slab_base(c, p);
        auto [it, fresh] = first_object.try_emplace(base, addr(p));
        if (fresh) order_of_slabs.push_back(base);
        it->second = std::min(it->second, addr(p));
    }
    BOOST_REQUIRE(order_of_slabs.size() == colours + 2);
    std::vector<std::size_t> offsets;
    for (std::uintptr_t base : order_of_slabs) {
        const std::size_t off = first_object[base] - base;
        BOOST_TEST(off % 64 == 0u);
        BOOST_TEST(off + c.objects_per_slab() * c.stride() <= slab); // every object fits in the slab
        offsets.push_back(off);
    }
    // Consecutive slabs start their objects at different offsets; the colours cycle 0, 64, 128, ...
    for (std::size_t i = 0; i + 1 < offsets.size(); ++i) BOOST_TEST(offsets[i] != offsets[i + 1]);
    for (std::size_t i = 0; i < offsets.size(); ++i) BOOST_TEST(offsets[i] == (i % colours) * 64);
    for (void* p : objs) c.free(p);

    // No leftover (64-byte objects fill a slab exactly): every slab starts at offset 0.
    Cache d(buddy, "uncoloured", 64);
    BOOST_REQUIRE((page << d.order()) % d.stride() == 0u);
    std::set<std::size_t> seen;
    objs.clear();
    for (std::size_t i = 0; i < 3 * d.objects_per_slab(); ++i) {
        void* p = d.alloc();
        objs.push_back(p);
        seen.insert(addr(p) - slab_base(d, p));
    }
    BOOST_TEST(seen.size() == d.objects_per_slab()); // every slot of a slab, the first at offset 0
    BOOST_TEST(*seen.begin() == 0u);
    BOOST_TEST(*seen.rbegin() == (d.objects_per_slab() - 1) * d.stride());
    for (void* p : objs) d.free(p);
}

BOOST_AUTO_TEST_CASE(hwcache_align_follows_calculate_alignment) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    struct Case {
        std::size_t size, align;
    };
    // A cache line for objects above half a line, halved while the object fits in half (calculate_alignment).
    for (Case k : {Case{40, 64}, Case{20, 32}, Case{33, 64}, Case{32, 32}, Case{17, 32}, Case{16, 16},
                   Case{10, 16}, Case{8, 8}, Case{1, 8}, Case{100, 64}, Case{1000, 64}}) {
        BOOST_TEST_CONTEXT("size " << k.size) {
            Cache c(buddy, "hw", k.size, 0, SlabFlags::hwcache_align);
            BOOST_TEST(c.align() == k.align);
            BOOST_TEST(c.stride() % k.align == 0u);
            std::vector<void*> objs;
            for (int i = 0; i < 300; ++i) {
                objs.push_back(c.alloc());
                BOOST_TEST(addr(objs.back()) % k.align == 0u);
            }
            for (void* p : objs) c.free(p);
        }
    }
    // Without the flag, 40-byte objects are only 8-byte aligned and packed at 40 bytes.
    Cache plain(buddy, "packed", 40);
    BOOST_TEST(plain.align() == 8u);
    BOOST_TEST(plain.stride() == 40u);
}

BOOST_AUTO_TEST_CASE(explicit_alignment_is_honoured) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    for (std::size_t align : {8u, 16u, 32u, 64u, 128u, 256u, 512u, 1024u, 2048u, 4096u}) {
        for (std::size_t size : {1u, 24u, 100u, 700u, 5000u}) {
            BOOST_TEST_CONTEXT("size " << size << " align " << align) {
                Cache c(buddy, "aligned", size, align);
                BOOST_TEST(c.align() == align);
                std::vector<void*> objs;
                for (int i = 0; i < 40; ++i) {
                    objs.push_back(c.alloc());
                    BOOST_REQUIRE(objs.back() != nullptr);
                    BOOST_TEST(addr(objs.back()) % align == 0u);
                    std::memset(objs.back(), 0x11, size);
                }
                for (void* p : objs) c.free(p);
                BOOST_TEST(c.validate() == "");
            }
        }
    }
    // An alignment below 8 still gives 8 (ARCH_SLAB_MINALIGN here).
    Cache small(buddy, "align2", 3, 2);
    BOOST_TEST(small.align() == 8u);
}

BOOST_AUTO_TEST_CASE(constructor_runs_once_per_object_when_a_slab_is_populated) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    int calls = 0;
    constexpr std::size_t size = 96;
    const auto ctor = [&calls](void* p) {
        ++calls;
        std::memset(p, 0xc7, size);
    };
    Cache c(buddy, "with_ctor", size, 0, SlabFlags::none, ctor);
    const std::uint32_t n = c.objects_per_slab();
    BOOST_TEST(calls == 0); // nothing before the first slab
    auto* a = static_cast<unsigned char*>(c.alloc());
    BOOST_TEST(calls == static_cast<int>(n));
    BOOST_TEST(std::count(a, a + size, 0xc7) == static_cast<long>(size));
    // Free and allocate again: no constructor call, and the free pointer did not land in the object.
    c.free(a);
    auto* b = static_cast<unsigned char*>(c.alloc());
    BOOST_TEST(calls == static_cast<int>(n));
    BOOST_TEST(std::count(b, b + size, 0xc7) == static_cast<long>(size));
    // Objects that went back to their slabs (the free list) come back in the constructed state too.
    std::vector<unsigned char*> objs{b};
    for (std::uint32_t i = 1; i < n; ++i) objs.push_back(static_cast<unsigned char*>(c.alloc()));
    BOOST_TEST(calls == static_cast<int>(n));
    for (auto* p : objs) c.free(p);
    c.drain_cpu_arrays();
    for (std::uint32_t i = 0; i < n; ++i) {
        objs[i] = static_cast<unsigned char*>(c.alloc());
        BOOST_TEST(std::count(objs[i], objs[i] + size, 0xc7) == static_cast<long>(size));
    }
    BOOST_TEST(calls == static_cast<int>(n));
    // A second slab runs the constructor for its objects.
    objs.push_back(static_cast<unsigned char*>(c.alloc()));
    BOOST_TEST(calls == static_cast<int>(2 * n));
    // zalloc clears a constructed object (the kernel forbids the combination; here zero wins).
    for (auto* p : objs) c.free(p);
    BOOST_TEST(c.shrink() > 0u);
    BOOST_TEST(c.slab_count() == 0u);
    void* last = c.alloc(); // a fresh slab: the constructor runs again
    BOOST_TEST(calls == static_cast<int>(3 * n));
    c.free(last);
}

namespace {
struct Counted {
    static inline int constructed = 0;
    static inline int destroyed = 0;
    static inline bool throw_next = false;
    long id;
    char name[40];
    explicit Counted(long i) : id(i), name{} {
        if (throw_next) {
            throw_next = false;
            throw std::runtime_error("Counted: constructor failed");
        }
        ++constructed;
        std::snprintf(name, sizeof name, "obj-%ld", i);
    }
    ~Counted() { ++destroyed; }
};
} // namespace

BOOST_AUTO_TEST_CASE(slab_cache_constructs_and_destroys) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    kmem::SlabCache<Counted, Buddy, kmem::policy::ThrowOnError> cache(buddy, "counted");
    BOOST_TEST(cache.cache().object_size() == sizeof(Counted));
    BOOST_TEST(cache.cache().align() >= alignof(Counted));
    Counted::constructed = Counted::destroyed = 0;
    std::vector<Counted*> objs;
    for (long i = 0; i < 100; ++i) {
        Counted* p = cache.construct(i);
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(addr(p) % alignof(Counted) == 0u);
        objs.push_back(p);
    }
    BOOST_TEST(Counted::constructed == 100);
    BOOST_TEST(Counted::destroyed == 0);
    for (long i = 0; i < 100; ++i) {
        BOOST_TEST(objs[static_cast<std::size_t>(i)]->id == i);
        BOOST_TEST(std::string(objs[static_cast<std::size_t>(i)]->name) == "obj-" + std::to_string(i));
    }
    for (Counted* p : objs) cache.destroy(p);
    cache.destroy(static_cast<Counted*>(nullptr)); // ignored
    BOOST_TEST(Counted::destroyed == 100);
    BOOST_TEST(cache.stats().active_objs == 0u);

    // A throwing constructor: the exception propagates and the storage goes back.
    Counted::throw_next = true;
    BOOST_CHECK_THROW((void)cache.construct(7L), std::runtime_error);
    BOOST_TEST(Counted::constructed == 100);
    BOOST_TEST(cache.stats().active_objs == 0u);
    BOOST_TEST(cache.validate() == "");

    // alloc/free hand out raw storage: no constructor, no destructor.
    Counted* raw = cache.alloc();
    Counted* zeroed = cache.zalloc();
    BOOST_REQUIRE(raw != nullptr);
    BOOST_REQUIRE(zeroed != nullptr);
    BOOST_TEST(zeroed->id == 0);
    cache.free(raw);
    cache.free(zeroed);
    BOOST_TEST(Counted::constructed == 100);
    BOOST_TEST(Counted::destroyed == 100);
    BOOST_TEST(cache.shrink() > 0u);
    BOOST_TEST(cache.destroy());

    // The typed constructor argument runs once per object when the slab is populated.
    int ctor_calls = 0;
    kmem::SlabCache<Counted, Buddy> with_ctor(buddy, "typed_ctor", SlabFlags::none, [&](Counted* c) {
        ++ctor_calls;
        c->id = -1;
    });
    Counted* fresh = with_ctor.alloc();
    BOOST_TEST(fresh->id == -1);
    BOOST_TEST(ctor_calls == static_cast<int>(with_ctor.cache().objects_per_slab()));
    with_ctor.free(fresh);
}

BOOST_AUTO_TEST_CASE(freeing_to_the_wrong_cache_is_reported_and_changes_nothing) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache a(buddy, "cache_a", 64);
    Cache b(buddy, "cache_b", 64);
    CbCache cb(buddy, "cache_cb", 64);
    void* x = a.alloc();
    void* y = b.alloc();
    std::memset(x, 0x42, 64);
    const kmem::SlabStats a_before = a.stats(), b_before = b.stats();
    const auto e = expect_error(
        b, ErrorKind::wrong_cache, [&] { b.free(x); }, "Wrong slab cache");
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST(e->message.find("cache_b but object is from cache_a") != std::string::npos, e->message);
    expect_error(
        cb, ErrorKind::wrong_cache, [&] { cb.free(x); }, "object is from cache_a");
    BOOST_TEST(a.stats().active_objs == a_before.active_objs);
    BOOST_TEST(b.stats().active_objs == b_before.active_objs);
    BOOST_TEST(b.stats().cpu_objs == b_before.cpu_objs);
    BOOST_TEST(static_cast<unsigned char*>(x)[63] == 0x42);
    // x is still allocated in a: a's next objects are others.
    std::vector<void*> more;
    for (int i = 0; i < 200; ++i) {
        more.push_back(a.alloc());
        BOOST_TEST(more.back() != x);
    }
    for (void* p : more) a.free(p);
    expect_no_error(a, [&] { a.free(x); });
    expect_no_error(b, [&] { b.free(y); });
    BOOST_TEST(a.validate() == "");
    BOOST_TEST(b.validate() == "");
    BOOST_TEST(a.stats().active_objs == 0u);
}

BOOST_AUTO_TEST_CASE(foreign_pointers_are_reported) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache c(buddy, "strict", 100);
    auto* obj = static_cast<unsigned char*>(c.alloc());
    const kmem::SlabStats before = c.stats();

    // Not the start of an object: inside one, and in the slab's tail after the last object.
    expect_error(
        c, ErrorKind::not_object, [&] { c.free(obj + 1); }, "Invalid object pointer");
    expect_error(
        c, ErrorKind::not_object, [&] { c.free(obj + 99); }, "Invalid object pointer");
    const std::uintptr_t base = slab_base(c, obj);
    const std::size_t slab = page << c.order();
    expect_error(c, ErrorKind::not_object, [&] { c.free(reinterpret_cast<void*>(base + slab - 1)); });
    // Outside the buddy's region.
    int on_stack = 0;
    expect_error(
        c, ErrorKind::out_of_region, [&] { c.free(&on_stack); }, "not inside the page allocator");
    // A page the buddy gave out that is not a slab.
    void* plain_page = buddy.get_free_pages(gfp::kernel, 0);
    BOOST_REQUIRE(plain_page != nullptr);
    expect_error(
        c, ErrorKind::not_object, [&] { c.free(plain_page); }, "outside of slab");
    expect_error(c, ErrorKind::not_object, [&] { c.free(static_cast<char*>(plain_page) + 128); });
    // A free page of the buddy.
    void* free_page = buddy.get_free_pages(gfp::kernel, 0);
    buddy.free_pages(free_page, 0);
    expect_error(c, ErrorKind::not_object, [&] { c.free(free_page); });
    buddy.free_pages(plain_page, 0);

    BOOST_TEST(c.stats().active_objs == before.active_objs);
    BOOST_TEST(c.stats().num_slabs == before.num_slabs);
    BOOST_TEST(c.validate() == "");
    expect_no_error(c, [&] { c.free(obj); });
}

BOOST_AUTO_TEST_CASE(runtime_gfp_breaking_the_slab_rules_is_refused) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    CbCache c(buddy, "runtime_gfp", 64);
    void* got = reinterpret_cast<void*>(1);
    expect_error(
        c, ErrorKind::invalid_gfp, [&] { got = c.alloc(kmem::gfp_t(gfp::kernel | gfp::dma32)); },
        "GFP_SLAB_BUG_MASK");
    BOOST_TEST(got == nullptr);
    got = reinterpret_cast<void*>(1);
    expect_error(
        c, ErrorKind::invalid_gfp, [&] { got = c.alloc(kmem::gfp_t(gfp::highuser)); },
        "gfp::highmem cannot be used");
    BOOST_TEST(got == nullptr);
    got = reinterpret_cast<void*>(1);
    expect_error(
        c, ErrorKind::invalid_gfp, [&] { got = c.alloc(kmem::gfp_t(gfp::dma | gfp::highmem)); },
        gfp::describe(gfp::Problem::dma_and_highmem));
    BOOST_TEST(got == nullptr);
    BOOST_TEST(c.slab_count() == 0u); // nothing was allocated
    // The same call with valid run-time flags works.
    void* ok = nullptr;
    expect_no_error(c, [&] { ok = c.alloc(kmem::gfp_t(gfp::atomic)); });
    BOOST_TEST(ok != nullptr);
    c.free(ok);
    Cache t(buddy, "runtime_gfp_throw", 64);
    BOOST_CHECK_THROW((void)t.alloc(kmem::gfp_t(gfp::kernel | gfp::highmem)), kmem::bad_usage);
}

BOOST_AUTO_TEST_CASE(bad_configurations_are_reported) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    struct Case {
        const char* label;
        kmem::CacheConfig cfg;
        ErrorKind kind;
        const char* needle;
    };
    const std::vector<Case> cases{
        {"size 0", config("zero", 0), ErrorKind::bad_parameter, "the object size is 0"},
        {"align 3", config("align3", 64, 3), ErrorKind::bad_alignment, "alignment 3 is not a power of two"},
        {"align 48", config("align48", 64, 48), ErrorKind::bad_alignment, "alignment 48"},
        {"align above a page", config("align8k", 64, 8192), ErrorKind::bad_alignment, "at most a page"},
        {"larger than the largest block", config("huge", (page << 10) + 1), ErrorKind::bad_parameter,
         "larger than the largest block"},
        {"debug metadata past the largest block",
         config("huge_debug", page << 10, 0, SlabFlags::red_zone | SlabFlags::store_user),
         ErrorKind::bad_parameter, "larger than the largest block"},
    };
    for (const Case& k : cases) {
        BOOST_TEST_CONTEXT(k.label) {
            // ThrowOnError: the report leaves the constructor.
            try {
                Cache c(buddy, k.cfg);
                BOOST_ERROR("expected kmem::bad_usage");
            } catch (const kmem::bad_usage& e) {
                BOOST_TEST((e.error().kind == k.kind));
                BOOST_TEST(e.error().operation == "kmem_cache_create");
                BOOST_TEST(e.error().message.find(k.needle) != std::string::npos, e.error().message);
                BOOST_TEST(e.error().message.find(k.cfg.name) != std::string::npos, e.error().message);
            }
            // CallbackOnError (its default callback prints): the cache exists but is not valid and stays empty.
            const std::string printed = capture_stderr([&] {
                CbCache c(buddy, k.cfg);
                BOOST_TEST(!c.valid());
                BOOST_TEST(c.alloc() == nullptr);
                BOOST_TEST(c.alloc(kmem::gfp_t(gfp::kernel)) == nullptr);
                std::vector<void*> out(3);
                BOOST_TEST(c.alloc_bulk(gfp::kernel, out) == 0u);
                BOOST_TEST(c.slab_count() == 0u);
                BOOST_TEST(c.validate() == "");
                BOOST_TEST(c.destroy());
            });
            BOOST_TEST(printed.find(k.needle) != std::string::npos, printed);
            BOOST_TEST(printed.find(std::string(kmem::to_string(k.kind))) != std::string::npos, printed);
        }
    }
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    // The largest object that fits is accepted: one object per largest block.
    Cache largest(buddy, "largest", page << 8);
    BOOST_TEST(largest.valid());
    BOOST_TEST(largest.objects_per_slab() >= 1u);
}

BOOST_AUTO_TEST_CASE(set_tunables_checks_its_bounds) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache c(buddy, "tunable", 64);
    const kmem::SlabStats initial = c.stats();
    BOOST_TEST(initial.limit == 1024u); // about 64 KiB of small objects, at most 1024 (SLAB stopped at 120)
    BOOST_TEST(initial.batchcount == 512u);
    struct Bad {
        unsigned limit, batch;
    };
    for (Bad b : {Bad{0, 1}, Bad{0, 0}, Bad{1025, 1}, Bad{10, 0}, Bad{10, 11}, Bad{2000, 500}}) {
        BOOST_TEST_CONTEXT("limit " << b.limit << " batchcount " << b.batch) {
            expect_error(
                c, ErrorKind::bad_parameter, [&] { c.set_tunables(b.limit, b.batch); },
                "limit must be 1..1024");
            BOOST_TEST(c.stats().limit == initial.limit);
            BOOST_TEST(c.stats().batchcount == initial.batchcount);
        }
    }
    expect_no_error(c, [&] { c.set_tunables(10, 5); });
    BOOST_TEST(c.stats().limit == 10u);
    BOOST_TEST(c.stats().batchcount == 5u);
    // The per-CPU array now holds at most 10 free objects.
    std::vector<void*> objs;
    for (int i = 0; i < 200; ++i) objs.push_back(c.alloc());
    BOOST_TEST(c.stats().cpu_objs <= 10u);
    for (void* p : objs) {
        c.free(p);
        BOOST_TEST(c.stats().cpu_objs <= 10u);
    }
    BOOST_TEST(c.stats().cpu_objs >= 1u);
    expect_no_error(c, [&] { c.set_tunables(120, 120); });
    expect_no_error(c, [&] { c.set_tunables(1, 1); });
    BOOST_TEST(c.stats().cpu_objs == 0u); // set_tunables drains the arrays
    BOOST_TEST(c.validate() == "");
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(validate_finds_planted_corruption) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Cache c(buddy, "victim", 64);
    std::vector<void*> objs;
    for (int i = 0; i < 100; ++i) objs.push_back(c.alloc());
    BOOST_TEST(c.validate() == "");
    for (int i = 0; i < 100; i += 2) c.free(objs[static_cast<std::size_t>(i)]);
    c.drain_cpu_arrays(); // the freed objects are now on their slabs' free lists
    BOOST_TEST(c.validate() == "");

    // Without a constructor or poisoning, the free pointer is the object's first word (SLUB's s->offset 0).
    void* victim = objs[10];
    allow_access(victim, sizeof(void*));
    void* saved;
    std::memcpy(&saved, victim, sizeof saved);
    // A free pointer out of its slab (a use-after-free write through a stale pointer).
    long long outside = 0;
    void* wild = &outside;
    std::memcpy(victim, &wild, sizeof wild);
    BOOST_TEST(c.validate() == "a free pointer leaves its slab");
    // A free pointer into the middle of an object.
    void* interior = static_cast<char*>(objs[1]) + 8;
    std::memcpy(victim, &interior, sizeof interior);
    BOOST_TEST(c.validate() == "a free pointer leaves its slab");
    // A free pointer pointing back at itself: the list loops.
    std::memcpy(victim, &victim, sizeof victim);
    BOOST_TEST(c.validate() == "a slab's free list loops");
    // A truncated list: the rest of the free objects are lost.
    void* null = nullptr;
    std::memcpy(victim, &null, sizeof null);
    const std::string truncated = c.validate();
    // Either the list ended early, or victim was the last free object already.
    if (saved != nullptr) BOOST_TEST(truncated == "a slab's free list length does not match its use");
    std::memcpy(victim, &saved, sizeof saved);
    BOOST_TEST(c.validate() == "");
    for (int i = 1; i < 100; i += 2) c.free(objs[static_cast<std::size_t>(i)]);
    BOOST_TEST(c.validate() == "");

    // A debug cache also checks every free object's poison and red zones.
    Cache d(buddy, "debug_victim", 40, 0, SlabFlags::poison | SlabFlags::red_zone);
    auto* p = static_cast<unsigned char*>(d.alloc());
    auto* q = static_cast<unsigned char*>(d.alloc());
    d.free(p);
    BOOST_TEST(d.validate() == "");
    p[7] = 0; // use after free
    BOOST_TEST(d.validate() == "Poison overwritten in a free object");
    p[7] = kmem::slab_poison::free_byte;
    BOOST_TEST(d.validate() == "");
    p[40] = 0; // a free object's right red zone
    BOOST_TEST(d.validate() == "Right Redzone overwritten in a free object");
    p[40] = kmem::slab_poison::red_inactive;
    p[-1] = 0;
    BOOST_TEST(d.validate() == "Left Redzone overwritten in a free object");
    p[-1] = kmem::slab_poison::red_inactive;
    BOOST_TEST(d.validate() == "");
    d.free(q);
    BOOST_TEST(d.destroy());
}

BOOST_AUTO_TEST_CASE(slabinfo_prints_the_proc_format) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    Cache a(buddy, "dentry", 192);
    Cache b(buddy, "inode_cache", 600, 0, SlabFlags::hwcache_align);
    std::vector<void*> objs;
    for (int i = 0; i < 50; ++i) objs.push_back(a.alloc());
    for (int i = 0; i < 30; ++i) objs.push_back(b.alloc());
    a.free(objs[0]);
    const std::vector<kmem::SlabStats> stats{a.stats(), b.stats()};
    const std::string text = kmem::slabinfo(stats);
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);
    BOOST_TEST(line == "slabinfo - version: 2.1");
    std::getline(in, line);
    BOOST_TEST(line == "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : "
                       "tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> "
                       "<sharedavail>");
    for (const kmem::SlabStats& s : stats) {
        BOOST_REQUIRE(std::getline(in, line));
        BOOST_TEST_CONTEXT(line) {
            std::istringstream f(line);
            std::string name, colon1, tunables, colon2, slabdata;
            unsigned long long active, num, objsize, perslab, pages, limit, batch, shared, aslabs, nslabs,
                avail;
            f >> name >> active >> num >> objsize >> perslab >> pages >> colon1 >> tunables >> limit >>
                batch >> shared >> colon2 >> slabdata >> aslabs >> nslabs >> avail;
            BOOST_REQUIRE(!f.fail());
            BOOST_TEST(name == s.name);
            BOOST_TEST(active == s.active_objs);
            BOOST_TEST(num == s.num_objs);
            BOOST_TEST(objsize == s.objsize);
            BOOST_TEST(perslab == s.objperslab);
            BOOST_TEST(pages == s.pagesperslab);
            BOOST_TEST(colon1 == ":");
            BOOST_TEST(tunables == "tunables");
            BOOST_TEST(limit == s.limit);
            BOOST_TEST(batch == s.batchcount);
            BOOST_TEST(shared == 0u);
            BOOST_TEST(colon2 == ":");
            BOOST_TEST(slabdata == "slabdata");
            BOOST_TEST(aslabs == s.active_slabs);
            BOOST_TEST(nslabs == s.num_slabs);
            BOOST_TEST(avail == 0u);
        }
    }
    BOOST_TEST(!std::getline(in, line));
    // The figures themselves.
    BOOST_TEST(stats[0].name == "dentry");
    BOOST_TEST(stats[0].active_objs == 49u);
    BOOST_TEST(stats[0].objsize == 192u);
    BOOST_TEST(stats[0].objperslab == a.objects_per_slab());
    BOOST_TEST(stats[0].pagesperslab == 1u << a.order());
    BOOST_TEST(stats[0].num_objs == stats[0].num_slabs * stats[0].objperslab);
    BOOST_TEST(stats[1].active_objs == 30u);
    BOOST_TEST(stats[1].objsize == 640u); // 600 bytes on a 64-byte cache line
    BOOST_TEST(stats[1].object_size == 600u);
    BOOST_TEST(stats[1].num_slabs == (30 + b.objects_per_slab() - 1) / b.objects_per_slab());
    // The exact columns of one line, as the kernel's "%-17s %6lu %6lu %6u %4u %4u" etc. print them.
    kmem::SlabStats fixed;
    fixed.name = "kmalloc-64";
    fixed.active_objs = 1234;
    fixed.num_objs = 1280;
    fixed.objsize = 64;
    fixed.objperslab = 64;
    fixed.pagesperslab = 1;
    fixed.limit = 120;
    fixed.batchcount = 60;
    fixed.active_slabs = 20;
    fixed.num_slabs = 20;
    const std::string one = kmem::slabinfo({fixed});
    BOOST_TEST(
        one.substr(one.find('\n', one.find('\n') + 1) + 1) ==
        "kmalloc-64          1234   1280     64   64    1 : tunables  120   60    0 : slabdata     20     "
        "20      0\n");
    for (std::size_t i = 1; i < objs.size(); ++i) (i < 50 ? a : b).free(objs[i]);
    BOOST_TEST(a.stats().active_objs + b.stats().active_objs == 0u);
}

BOOST_AUTO_TEST_CASE(slabtop_sorts_by_each_key) {
    const auto make = [](std::string name, std::uint64_t active, std::uint64_t num, std::uint32_t objsize,
                         std::uint64_t slabs, std::uint32_t pages) {
        kmem::SlabStats s;
        s.name = std::move(name);
        s.active_objs = active;
        s.num_objs = num;
        s.objsize = objsize;
        s.num_slabs = slabs;
        s.active_slabs = slabs;
        s.pagesperslab = pages;
        s.objperslab = static_cast<std::uint32_t>(num / slabs);
        s.page_size = 4096;
        return s;
    };
    // Each key orders the four caches differently.
    const std::vector<kmem::SlabStats> caches{
        make("bravo", 12, 400, 96, 4, 8),    // 128 KiB
        make("alpha", 300, 320, 256, 10, 1), // 40 KiB
        make("delta", 50, 60, 512, 30, 2),   // 240 KiB
        make("charlie", 90, 100, 2048, 2, 4) // 32 KiB
    };
    // The names in the order of the table's rows.
    const auto rows = [](const std::string& text) {
        std::vector<std::string> names;
        std::istringstream in(text);
        std::string line;
        bool table = false;
        while (std::getline(in, line)) {
            if (line.find("OBJS ACTIVE") != std::string::npos) {
                table = true;
                continue;
            }
            if (table && !line.empty()) names.push_back(line.substr(line.rfind(' ') + 1));
        }
        return names;
    };
    using K = kmem::SlabTopKey;
    using V = std::vector<std::string>;
    BOOST_TEST(rows(kmem::slabtop(caches, K::active_objs)) == (V{"alpha", "charlie", "delta", "bravo"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop(caches, K::num_objs)) == (V{"bravo", "alpha", "charlie", "delta"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop(caches, K::objsize)) == (V{"charlie", "delta", "alpha", "bravo"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop(caches, K::num_slabs)) == (V{"delta", "alpha", "bravo", "charlie"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop(caches, K::cache_size)) == (V{"delta", "bravo", "alpha", "charlie"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop(caches)) == (V{"delta", "bravo", "alpha", "charlie"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop(caches, K::name)) == (V{"alpha", "bravo", "charlie", "delta"}),
               boost::test_tools::per_element());
    // The summary lines add the caches up.
    const std::string top = kmem::slabtop(caches);
    BOOST_TEST(top.find(" Active / Total Objects (% used)    : 452 / 880 (51.4%)") != std::string::npos, top);
    BOOST_TEST(top.find(" Active / Total Slabs (% used)      : 46 / 46 (100.0%)") != std::string::npos, top);
    BOOST_TEST(top.find(" Active / Total Caches (% used)     : 4 / 4 (100.0%)") != std::string::npos, top);
    // A row: OBJS ACTIVE USE OBJ SIZE SLABS OBJ/SLAB CACHE SIZE NAME.
    BOOST_TEST(top.find("   400     12   3%    0.09K      4      100       128K bravo") != std::string::npos,
               top);

    // From live caches.
    Buddy buddy(kmem::MmapRegion(2 << 20));
    Cache small(buddy, "small", 32);
    Cache large(buddy, "large", 3000);
    std::vector<void*> s, l;
    for (int i = 0; i < 10; ++i) s.push_back(small.alloc());
    for (int i = 0; i < 10; ++i) l.push_back(large.alloc());
    BOOST_TEST(rows(kmem::slabtop({small.stats(), large.stats()}, K::objsize)) == (V{"large", "small"}),
               boost::test_tools::per_element());
    BOOST_TEST(rows(kmem::slabtop({small.stats(), large.stats()}, K::name)) == (V{"large", "small"}),
               boost::test_tools::per_element());
    for (void* p : s) small.free(p);
    for (void* p : l) large.free(p);
}

BOOST_AUTO_TEST_CASE(exhausted_page_allocator_fails_allocations_then_recovers) {
    Buddy buddy(kmem::MmapRegion(32 * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t start = buddy.nr_free_pages();
    Cache c(buddy, "exhaust", 500);
    std::vector<void*> objs;
    while (void* p = c.alloc(gfp::kernel | gfp::nowarn)) {
        std::memset(p, static_cast<int>(objs.size() & 0xff), 500);
        objs.push_back(p);
        BOOST_REQUIRE(objs.size() < 10'000u);
    }
    // It failed because the pages were gone: every slab is full and no block of the slab's order is left.
    const kmem::SlabStats s = c.stats();
    BOOST_TEST(s.active_objs == objs.size());
    BOOST_TEST(s.num_objs == objs.size());
    BOOST_TEST(buddy.largest_free_order() < static_cast<int>(c.order()));
    BOOST_TEST(objs.size() >= (start - 1) / (1u << c.order()) * c.objects_per_slab() * 9 / 10);
    for (std::size_t i = 0; i < objs.size(); ++i)
        BOOST_TEST(static_cast<unsigned char*>(objs[i])[499] == (i & 0xff));
    c.free(objs.back());
    objs.pop_back();
    void* again = c.alloc();
    BOOST_TEST(again != nullptr);
    objs.push_back(again);
    for (void* p : objs) c.free(p);
    BOOST_TEST(c.destroy());
    BOOST_TEST(buddy.nr_free_pages() == start);
}

BOOST_AUTO_TEST_SUITE_END()
