// Unit tests for include/kmem/kmalloc.hpp: size classes (kmalloc_index, kmalloc-96 and -192), large allocations as
// compound pages, ZERO_SIZE_PTR, the limits, kmalloc_array / kcalloc overflow, kzalloc, krealloc, kmemdup,
// kstrdup, kmalloc_size_roundup, kfree_sensitive, natural alignment, the mistakes kfree catches, and the std::pmr
// resource over Kmalloc and over a SlabCache.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/page.hpp>
#include <kmem/pmr.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include "support/expect_error.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory_resource>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::test::expect_error;
using kmem::test::expect_no_error;

constexpr std::size_t page = 4096;
using Buddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion>;
using Km = kmem::Kmalloc<Buddy, kmem::policy::ThrowOnError>;
using CbKm = kmem::Kmalloc<Buddy, kmem::policy::CallbackOnError>;

std::uintptr_t addr(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p);
}

// Lets a test read a freed object on purpose (under AddressSanitizer slab.hpp poisons free objects).
void allow_access([[maybe_unused]] void* p, [[maybe_unused]] std::size_t n) {
#ifdef KMEM_DETAIL_SLAB_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#endif
}

} // namespace

BOOST_AUTO_TEST_SUITE(kmalloc)

BOOST_AUTO_TEST_CASE(size_class_table) {
    BOOST_TEST(kmem::kmalloc_sizes.size() == 13u);
    BOOST_TEST(kmem::kmalloc_sizes.front() == 8u);
    BOOST_TEST(kmem::kmalloc_sizes.back() == kmem::kmalloc_max_cache_size);
    BOOST_TEST(std::is_sorted(kmem::kmalloc_sizes.begin(), kmem::kmalloc_sizes.end()));
    // The size_index table for small sizes, then powers of two (mm/slab_common.c).
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(65)] == 96u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(96)] == 96u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(97)] == 128u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(128)] == 128u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(129)] == 192u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(192)] == 192u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(193)] == 256u);
    BOOST_TEST(kmem::kmalloc_sizes[kmem::kmalloc_index(4097)] == 8192u);
    for (std::size_t n = 1; n <= kmem::kmalloc_max_cache_size; ++n) {
        const std::size_t c = kmem::kmalloc_sizes[kmem::kmalloc_index(n)];
        BOOST_TEST_INFO("size " << n);
        BOOST_TEST(c >= n);
        // The smallest class that holds n.
        for (std::size_t s : kmem::kmalloc_sizes)
            if (s >= n) {
                BOOST_TEST(c == s);
                break;
            }
    }
}

BOOST_AUTO_TEST_CASE(every_small_size_goes_to_the_smallest_class) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    Km km(buddy);
    // The caches are named and sized as the kernel's.
    const std::vector<kmem::SlabStats> stats = km.stats();
    BOOST_REQUIRE(stats.size() == 13u);
    const std::vector<std::string> names{
        "kmalloc-8",   "kmalloc-16",  "kmalloc-32", "kmalloc-64", "kmalloc-96", "kmalloc-128", "kmalloc-192",
        "kmalloc-256", "kmalloc-512", "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-8k"};
    for (std::size_t i = 0; i < 13; ++i) {
        BOOST_TEST(stats[i].name == names[i]);
        BOOST_TEST(stats[i].object_size == kmem::kmalloc_sizes[i]);
        BOOST_TEST(km.cache(static_cast<unsigned>(i)).object_size() == kmem::kmalloc_sizes[i]);
    }
    for (std::size_t n = 1; n <= 8192; ++n) {
        BOOST_TEST_CONTEXT("size " << n) {
            const unsigned idx = kmem::kmalloc_index(n);
            const std::uint64_t before = km.cache(idx).stats().active_objs;
            void* p = km.kmalloc(n, gfp::kernel);
            BOOST_REQUIRE(p != nullptr);
            BOOST_TEST(km.ksize(p) == kmem::kmalloc_sizes[idx]);
            BOOST_TEST(&km.cache_for(n) == &km.cache(idx));
            BOOST_TEST(Km::cache_type::virt_to_slab(buddy, p)->cache == &km.cache(idx));
            BOOST_TEST(km.cache(idx).stats().active_objs == before + 1);
            std::memset(p, 0x5a, n);
            km.kfree(p);
            BOOST_TEST(km.cache(idx).stats().active_objs == before);
        }
    }
    BOOST_TEST(km.validate() == "");
}

BOOST_AUTO_TEST_CASE(kmalloc_96_and_192_hold_their_ranges) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Km km(buddy);
    std::vector<void*> objs;
    for (std::size_t n = 65; n <= 96; ++n) {
        objs.push_back(km.kmalloc(n, gfp::kernel));
        BOOST_TEST(km.ksize(objs.back()) == 96u);
        BOOST_TEST(addr(objs.back()) % 8 == 0u);
    }
    for (std::size_t n = 129; n <= 192; ++n) {
        objs.push_back(km.kmalloc(n, gfp::kernel));
        BOOST_TEST(km.ksize(objs.back()) == 192u);
        BOOST_TEST(addr(objs.back()) % 8 == 0u);
    }
    BOOST_TEST(km.cache(4).stats().active_objs == 32u);
    BOOST_TEST(km.cache(6).stats().active_objs == 64u);
    BOOST_TEST(km.cache(5).stats().active_objs == 0u); // kmalloc-128 took none of them
    for (void* p : objs) km.kfree(p);
}

BOOST_AUTO_TEST_CASE(large_allocations_are_compound_pages) {
    Buddy buddy(kmem::MmapRegion(16 << 20));
    buddy.set_warning_stream(nullptr);
    Km km(buddy);
    const std::uint64_t start = buddy.nr_free_pages();
    BOOST_TEST(Km::kmalloc_max_size == page << 10);
    for (std::size_t n :
         {std::size_t{8193}, std::size_t{12288}, std::size_t{16384}, std::size_t{16385}, std::size_t{65536},
          std::size_t{100000}, std::size_t{1} << 20, Km::kmalloc_max_size}) {
        BOOST_TEST_CONTEXT("size " << n) {
            const unsigned order = static_cast<unsigned>(std::bit_width((n + page - 1) / page - 1));
            auto* p = static_cast<unsigned char*>(km.kmalloc(n, gfp::kernel));
            BOOST_REQUIRE(p != nullptr);
            BOOST_TEST(km.ksize(p) == page << order);
            BOOST_TEST(km.ksize(p) == Km::kmalloc_size_roundup(n));
            BOOST_TEST(addr(p) % (page << order) == 0u);
            kmem::Page* head = buddy.virt_to_page(p);
            BOOST_TEST(head->test(kmem::PageFlag::head));
            BOOST_TEST(!head->test(kmem::PageFlag::slab));
            BOOST_TEST(head->order() == order);
            BOOST_TEST(buddy.compound_head(buddy.virt_to_page(p + n - 1)) == head);
            BOOST_TEST(buddy.nr_free_pages() == start - (std::uint64_t{1} << order));
            p[0] = 1;
            p[n - 1] = 2;
            // ksize of an interior pointer is that of the whole allocation (the head's order).
            BOOST_TEST(km.ksize(p + n / 2) == page << order);
            km.kfree(p);
            BOOST_TEST(buddy.nr_free_pages() == start);
        }
    }
    // The large path with run-time flags and zeroing.
    auto* z = static_cast<unsigned char*>(km.kmalloc(20000, kmem::gfp_t(gfp::kernel | gfp::zero)));
    BOOST_REQUIRE(z != nullptr);
    BOOST_TEST(std::count(z, z + 20000, 0) == 20000);
    km.kfree(z);
    // Above KMALLOC_MAX_SIZE: nullptr, nothing taken.
    BOOST_TEST(km.kmalloc(Km::kmalloc_max_size + 1, gfp::kernel | gfp::nowarn) == nullptr);
    BOOST_TEST(km.kmalloc(Km::kmalloc_max_size * 4, kmem::gfp_t(gfp::kernel)) == nullptr);
    BOOST_TEST(km.kmalloc(std::numeric_limits<std::size_t>::max(), gfp::kernel) == nullptr);
    BOOST_TEST(km.kzalloc(Km::kmalloc_max_size + 4096, gfp::kernel) == nullptr);
    BOOST_TEST(buddy.nr_free_pages() == start);
}

BOOST_AUTO_TEST_CASE(zero_size_pointer) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    Km km(buddy);
    const std::uint64_t start = buddy.nr_free_pages();
    void* z = km.kmalloc(0, gfp::kernel);
    BOOST_TEST(z == kmem::zero_size_ptr);
    BOOST_TEST(z != nullptr);
    BOOST_TEST(kmem::zero_or_null_ptr(z));
    BOOST_TEST(kmem::zero_or_null_ptr(nullptr));
    BOOST_TEST(km.kmalloc(0, kmem::gfp_t(gfp::kernel)) == kmem::zero_size_ptr);
    BOOST_TEST(km.kzalloc(0, gfp::kernel) == kmem::zero_size_ptr);
    BOOST_TEST(km.kcalloc(0, 100, gfp::kernel) == kmem::zero_size_ptr);
    BOOST_TEST(km.ksize(z) == 0u);
    BOOST_TEST(km.ksize(nullptr) == 0u);
    expect_no_error(km, [&] {
        km.kfree(z);
        km.kfree(nullptr);
        km.kfree_sensitive(z);
    });
    BOOST_TEST(buddy.nr_free_pages() == start);
    for (const kmem::SlabStats& s : km.stats()) BOOST_TEST(s.active_objs == 0u);
}

BOOST_AUTO_TEST_CASE(kmalloc_array_and_kcalloc_refuse_overflow) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    Km km(buddy);
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    BOOST_TEST(km.kmalloc_array(max / 2 + 1, 2, gfp::kernel) == nullptr);
    BOOST_TEST(km.kmalloc_array(2, max / 2 + 1, gfp::kernel) == nullptr);
    BOOST_TEST(km.kmalloc_array(max, max, gfp::kernel) == nullptr);
    BOOST_TEST(km.kcalloc(std::size_t{1} << 33, std::size_t{1} << 33, gfp::kernel) == nullptr);
    BOOST_TEST(km.kcalloc(max / 8 + 1, 8, gfp::kernel) == nullptr);
    for (const kmem::SlabStats& s : km.stats()) BOOST_TEST(s.active_objs == 0u);
    // Without overflow they allocate n * size bytes.
    void* a = km.kmalloc_array(10, 12, gfp::kernel);
    BOOST_TEST(km.ksize(a) == 128u);
    km.kfree(a);
}

BOOST_AUTO_TEST_CASE(kzalloc_and_kcalloc_return_zeroed_memory) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    Km km(buddy);
    for (std::size_t n : {1u, 8u, 24u, 96u, 100u, 192u, 500u, 4096u, 8000u, 12000u}) {
        BOOST_TEST_CONTEXT("size " << n) {
            // Dirty the objects first: the zeroed ones are the same, recycled.
            std::vector<unsigned char*> dirty;
            for (int i = 0; i < 8; ++i) {
                auto* p = static_cast<unsigned char*>(km.kmalloc(n, gfp::kernel));
                std::memset(p, 0xff, km.ksize(p));
                dirty.push_back(p);
            }
            for (auto* p : dirty) km.kfree(p);
            std::vector<unsigned char*> zeroed;
            for (int i = 0; i < 8; ++i) {
                auto* p = static_cast<unsigned char*>(i % 2 ? km.kzalloc(n, gfp::kernel)
                                                            : km.kcalloc(n, 1, gfp::kernel));
                BOOST_REQUIRE(p != nullptr);
                BOOST_TEST(std::count(p, p + n, 0) == static_cast<long>(n));
                zeroed.push_back(p);
            }
            if (n <= kmem::kmalloc_max_cache_size) // the dirty objects came back (LIFO), now cleared
                BOOST_TEST((std::find(dirty.begin(), dirty.end(), zeroed[0]) != dirty.end()));
            for (auto* p : zeroed) km.kfree(p);
        }
    }
    auto* c = static_cast<int*>(km.kcalloc(1000, sizeof(int), gfp::kernel));
    BOOST_TEST(km.ksize(c) == 4096u);
    BOOST_TEST(std::count(c, c + 1000, 0) == 1000);
    km.kfree(c);
}

BOOST_AUTO_TEST_CASE(krealloc_grows_shrinks_and_frees) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    Km km(buddy);
    auto* p = static_cast<unsigned char*>(km.kmalloc(50, gfp::kernel));
    for (int i = 0; i < 50; ++i) p[i] = static_cast<unsigned char>(i);
    // Within the class: the same pointer.
    BOOST_TEST(km.krealloc(p, 64, gfp::kernel) == p);
    BOOST_TEST(km.krealloc(p, 10, gfp::kernel) == p); // shrinking keeps the pointer (and the size class)
    BOOST_TEST(km.ksize(p) == 64u);
    // Growing moves it and keeps the bytes.
    auto* q = static_cast<unsigned char*>(km.krealloc(p, 1000, gfp::kernel));
    BOOST_REQUIRE(q != nullptr);
    BOOST_TEST(q != p);
    BOOST_TEST(km.ksize(q) == 1024u);
    for (int i = 0; i < 50; ++i) BOOST_TEST(q[i] == i);
    BOOST_TEST(km.cache_for(64).stats().active_objs == 0u); // the old object was freed
    for (int i = 0; i < 1000; ++i) q[i] = static_cast<unsigned char>(i * 7);
    // Into the large path and back down (back down keeps the big block: it still holds the bytes).
    auto* r = static_cast<unsigned char*>(km.krealloc(q, 50000, gfp::kernel));
    BOOST_REQUIRE(r != nullptr);
    BOOST_TEST(km.ksize(r) == 65536u);
    for (int i = 0; i < 1000; ++i) BOOST_TEST(r[i] == static_cast<unsigned char>(i * 7));
    BOOST_TEST(km.krealloc(r, 100, gfp::kernel) == r);
    // With gfp::zero the new tail is cleared.
    auto* s = static_cast<unsigned char*>(km.kmalloc(16, gfp::kernel));
    std::memset(s, 0xee, 16);
    auto* t = static_cast<unsigned char*>(km.krealloc(s, 300, gfp::kernel | gfp::zero));
    BOOST_TEST(std::count(t, t + 16, 0xee) == 16);
    BOOST_TEST(std::count(t + 16, t + 300, 0) == 284);
    // nullptr behaves as kmalloc; 0 frees and returns ZERO_SIZE_PTR.
    void* u = km.krealloc(nullptr, 40, gfp::kernel);
    BOOST_TEST(km.ksize(u) == 64u);
    const std::uint64_t before = km.cache_for(64).stats().active_objs;
    BOOST_TEST(km.krealloc(u, 0, gfp::kernel) == kmem::zero_size_ptr);
    BOOST_TEST(km.cache_for(64).stats().active_objs == before - 1);
    void* from_zero = km.krealloc(kmem::zero_size_ptr, 8, gfp::kernel);
    BOOST_TEST(km.ksize(from_zero) == 8u);
    km.kfree(from_zero);
    // A failed krealloc returns nullptr and leaves the old object alone.
    buddy.set_warning_stream(nullptr);
    BOOST_TEST(km.krealloc(t, Km::kmalloc_max_size + 1, gfp::kernel) == nullptr);
    BOOST_TEST(std::count(t, t + 16, 0xee) == 16);
    km.kfree(t);
    km.kfree(r);
}

BOOST_AUTO_TEST_CASE(kmemdup_and_kstrdup_copy) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    Km km(buddy);
    const char text[] = "the quick brown fox jumps over the lazy dog";
    auto* d = static_cast<char*>(km.kmemdup(text, sizeof text, gfp::kernel));
    BOOST_REQUIRE(d != nullptr);
    BOOST_TEST(static_cast<const void*>(d) != static_cast<const void*>(text));
    BOOST_TEST(std::memcmp(d, text, sizeof text) == 0);
    BOOST_TEST(km.ksize(d) == 64u);
    char* s = km.kstrdup("slab", gfp::kernel);
    BOOST_REQUIRE(s != nullptr);
    BOOST_TEST(std::string(s) == "slab");
    BOOST_TEST(km.ksize(s) == 8u);
    BOOST_TEST(km.kstrdup(nullptr, gfp::kernel) == nullptr);
    char* e = km.kstrdup("", gfp::kernel);
    BOOST_REQUIRE(e != nullptr);
    BOOST_TEST(e[0] == '\0');
    const std::string big(20000, 'x');
    char* b = km.kstrdup(big.c_str(), gfp::kernel);
    BOOST_TEST(std::string(b) == big);
    BOOST_TEST(km.kmemdup(text, 0, gfp::kernel) == kmem::zero_size_ptr);
    km.kfree(d);
    km.kfree(s);
    km.kfree(e);
    km.kfree(b);
}

BOOST_AUTO_TEST_CASE(kmalloc_size_roundup_gives_what_kmalloc_gives) {
    BOOST_TEST(Km::kmalloc_size_roundup(0) == 0u);
    BOOST_TEST(Km::kmalloc_size_roundup(1) == 8u);
    BOOST_TEST(Km::kmalloc_size_roundup(8) == 8u);
    BOOST_TEST(Km::kmalloc_size_roundup(9) == 16u);
    BOOST_TEST(Km::kmalloc_size_roundup(65) == 96u);
    BOOST_TEST(Km::kmalloc_size_roundup(100) == 128u);
    BOOST_TEST(Km::kmalloc_size_roundup(129) == 192u);
    BOOST_TEST(Km::kmalloc_size_roundup(193) == 256u);
    BOOST_TEST(Km::kmalloc_size_roundup(8192) == 8192u);
    BOOST_TEST(Km::kmalloc_size_roundup(8193) == 16384u);
    BOOST_TEST(Km::kmalloc_size_roundup(12289) == 16384u);
    BOOST_TEST(Km::kmalloc_size_roundup(16385) == 32768u);
    BOOST_TEST(Km::kmalloc_size_roundup(Km::kmalloc_max_size) == Km::kmalloc_max_size);
    BOOST_TEST(Km::kmalloc_size_roundup(Km::kmalloc_max_size + 1) == Km::kmalloc_max_size + 1);
    static_assert(Km::kmalloc_size_roundup(100) == 128);
    // Against real allocations, every size up to 40000 in steps.
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Km km(buddy);
    for (std::size_t n = 1; n <= 40000; n += (n < 9000 ? 1 : 97)) {
        void* p = km.kmalloc(n, gfp::kernel);
        BOOST_TEST_INFO("size " << n);
        BOOST_TEST(km.ksize(p) == Km::kmalloc_size_roundup(n));
        km.kfree(p);
    }
}

BOOST_AUTO_TEST_CASE(kfree_sensitive_clears_the_object) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    kmem::Kmalloc<Buddy> km(buddy); // NoLock: one per-CPU array, LIFO
    for (std::size_t n : {5u, 100u, 1000u}) {
        BOOST_TEST_CONTEXT("size " << n) {
            auto* p = static_cast<unsigned char*>(km.kmalloc(n, gfp::kernel));
            const std::size_t usable = km.ksize(p);
            std::memset(p, 0xab, usable);
            km.kfree_sensitive(p);
            // The same object comes back first (LIFO per-CPU array): every usable byte was cleared, not only n.
            auto* q = static_cast<unsigned char*>(km.kmalloc(n, gfp::kernel));
            BOOST_REQUIRE(q == p);
            BOOST_TEST(std::count(q, q + usable, 0) == static_cast<long>(usable));
            km.kfree(q);
            // A plain kfree does not clear (so the check above can tell the two apart).
            auto* r = static_cast<unsigned char*>(km.kmalloc(n, gfp::kernel));
            std::memset(r, 0xab, usable);
            km.kfree(r);
            allow_access(r, usable);
            BOOST_TEST(r[usable - 1] == 0xab);
            auto* again = static_cast<unsigned char*>(km.kmalloc(n, gfp::kernel));
            BOOST_TEST(again == r);
            km.kfree(again);
        }
    }
    // A large allocation is cleared too.
    auto* big = static_cast<unsigned char*>(km.kmalloc(10000, gfp::kernel));
    std::memset(big, 0x77, 16384);
    km.kfree_sensitive(big);
    allow_access(big, 16384);
    BOOST_TEST(std::count(big, big + 16384, 0) == 16384); // pages back on the buddy's lists, bytes untouched
    km.kfree_sensitive(nullptr);
}

BOOST_AUTO_TEST_CASE(power_of_two_classes_are_naturally_aligned) {
    Buddy buddy(kmem::MmapRegion(16 << 20));
    Km km(buddy);
    for (std::size_t i = 0; i < kmem::kmalloc_sizes.size(); ++i) {
        const std::size_t size = kmem::kmalloc_sizes[i];
        const std::size_t align = std::has_single_bit(size) ? std::min(size, page) : 8;
        BOOST_TEST_CONTEXT("kmalloc-" << size) {
            BOOST_TEST(km.cache(static_cast<unsigned>(i)).align() == align);
            std::vector<void*> objs;
            for (int k = 0; k < 100; ++k) {
                void* p = km.kmalloc(size - (k % 3), gfp::kernel);
                BOOST_TEST(addr(p) % align == 0u);
                objs.push_back(p);
            }
            for (void* p : objs) km.kfree(p);
        }
    }
}

BOOST_AUTO_TEST_CASE(kfree_reports_what_it_cannot_free) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    Km km(buddy);
    auto* obj = static_cast<char*>(km.kmalloc(100, gfp::kernel));
    auto* large = static_cast<char*>(km.kmalloc(20000, gfp::kernel));
    const std::uint64_t free_before = buddy.nr_free_pages();
    // An interior pointer of a slab object: the owning cache reports it.
    expect_error(
        km.cache_for(100), ErrorKind::not_object, [&] { km.kfree(obj + 8); }, "Invalid object pointer");
    // An interior pointer of a large allocation.
    expect_error(
        km, ErrorKind::not_object, [&] { km.kfree(large + 4096); }, "free_large_kmalloc");
    expect_error(km, ErrorKind::not_object, [&] { km.kfree(large + 1); });
    // A page from the buddy that kmalloc did not hand out (not compound).
    void* pg = buddy.get_free_pages(gfp::kernel, 1);
    expect_error(
        km, ErrorKind::not_object, [&] { km.kfree(pg); }, "neither a slab object");
    // Outside the page allocator.
    int local = 0;
    expect_error(
        km, ErrorKind::out_of_region, [&] { km.kfree(&local); }, "not inside the page allocator");
    BOOST_TEST(km.ksize(&local) == 0u);
    BOOST_TEST(km.ksize(pg) == 0u);
    // Nothing changed.
    BOOST_TEST(buddy.nr_free_pages() == free_before - 2);
    BOOST_TEST(km.cache_for(100).stats().active_objs == 1u);
    BOOST_TEST(km.validate() == "");
    buddy.free_pages(pg, 1);
    expect_no_error(km, [&] {
        km.kfree(obj);
        km.kfree(large);
    });
    // With a callback the report is delivered and kfree returns.
    CbKm cb(buddy);
    int seen = 0;
    cb.error_policy().set_callback(
        [&](const kmem::UsageError& e) { seen += e.kind == ErrorKind::out_of_region; });
    cb.kfree(&local);
    BOOST_TEST(seen == 1);
    cb.error_policy().set_callback({});
}

BOOST_AUTO_TEST_CASE(runtime_flags_are_checked) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    CbKm km(buddy);
    void* got = reinterpret_cast<void*>(1);
    expect_error(
        km, ErrorKind::invalid_gfp, [&] { got = km.kmalloc(100, kmem::gfp_t(gfp::kernel | gfp::dma32)); },
        "GFP_SLAB_BUG_MASK");
    BOOST_TEST(got == nullptr);
    got = reinterpret_cast<void*>(1);
    expect_error(
        km, ErrorKind::invalid_gfp, [&] { got = km.kmalloc(100000, kmem::gfp_t(gfp::highuser)); },
        "gfp::highmem cannot be used for a slab or kmalloc allocation");
    BOOST_TEST(got == nullptr);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    void* ok = km.kmalloc(100, kmem::gfp_t(gfp::atomic));
    BOOST_TEST(km.ksize(ok) == 128u);
    km.kfree(ok);
}

BOOST_AUTO_TEST_CASE(shrink_and_reports_cover_every_cache) {
    Buddy buddy(kmem::MmapRegion(8 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    {
        Km km(buddy);
        std::vector<void*> objs;
        for (std::size_t n = 1; n <= 8192; n += 37) objs.push_back(km.kmalloc(n, gfp::kernel));
        for (void* p : objs) km.kfree(p);
        BOOST_TEST(km.shrink() > 0u);
        for (const kmem::SlabStats& s : km.stats()) {
            BOOST_TEST(s.num_slabs == 0u);
            BOOST_TEST(s.cpu_objs == 0u);
        }
        const std::string info = kmem::slabinfo(km.stats());
        BOOST_TEST(info.find("kmalloc-96 ") != std::string::npos);
        BOOST_TEST(info.find("kmalloc-8k ") != std::string::npos);
        std::vector<std::size_t> sizes;
        km.for_each_cache([&](Km::cache_type& c) { sizes.push_back(c.object_size()); });
        BOOST_TEST(sizes == std::vector<std::size_t>(kmem::kmalloc_sizes.begin(), kmem::kmalloc_sizes.end()),
                   boost::test_tools::per_element());
    }
    BOOST_TEST(buddy.nr_free_pages() == start); // the caches gave their descriptor pages back
    // Debug flags for every cache (slab_debug=Z): the red zones are checked on each kfree.
    Km debug(buddy, kmem::SlabFlags::red_zone);
    auto* p = static_cast<unsigned char*>(debug.kmalloc(60, gfp::kernel));
    p[64] = 0; // past kmalloc-64's object
    expect_error(
        debug.cache_for(60), ErrorKind::slab_corruption, [&] { debug.kfree(p); }, "Redzone overwritten");
}

BOOST_AUTO_TEST_CASE(pmr_resource_over_kmalloc) {
    Buddy buddy(kmem::MmapRegion(16 << 20));
    buddy.set_warning_stream(nullptr);
    {
        Km km(buddy);
        kmem::MemoryResource<Km> resource(km);
        {
            std::pmr::vector<int> v(&resource);
            for (int i = 0; i < 100000; ++i) v.push_back(i);
            for (int i = 0; i < 100000; ++i) BOOST_REQUIRE(v[static_cast<std::size_t>(i)] == i);
            std::pmr::unordered_map<int, std::pmr::string> m(&resource);
            for (int i = 0; i < 5000; ++i)
                m.emplace(i, std::pmr::string(static_cast<std::size_t>(i % 50 + 20), 'a'));
            for (int i = 0; i < 5000; ++i)
                BOOST_REQUIRE(m.at(i).size() == static_cast<std::size_t>(i % 50 + 20));
            BOOST_TEST(km.stats()[kmem::kmalloc_index(32)].active_objs > 0u);
        }
        // Every alignment up to a page (and beyond) is honoured, for sizes smaller and larger than it.
        for (std::size_t align = 1; align <= 16384; align *= 2) {
            for (std::size_t bytes : {std::size_t{1}, std::size_t{24}, std::size_t{100}, std::size_t{1000},
                                      std::size_t{5000}, std::size_t{20000}}) {
                BOOST_TEST_CONTEXT("align " << align << " bytes " << bytes) {
                    std::vector<void*> got;
                    for (int k = 0; k < 5; ++k) {
                        void* p = resource.allocate(bytes, align);
                        BOOST_TEST(addr(p) % align == 0u);
                        std::memset(p, 0x33, bytes);
                        got.push_back(p);
                    }
                    for (void* p : got) resource.deallocate(p, bytes, align);
                }
            }
        }
        BOOST_CHECK_THROW((void)resource.allocate(Km::kmalloc_max_size * 2, 8), std::bad_alloc);
        BOOST_TEST(resource.is_equal(resource));
        kmem::MemoryResource<Km> other(km);
        BOOST_TEST(!resource.is_equal(other));
        km.shrink();
        for (const kmem::SlabStats& s : km.stats()) BOOST_TEST(s.active_objs == 0u);
    }
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

namespace {
struct Node {
    double value;
    Node* next;
    char tag[16];
};
} // namespace

BOOST_AUTO_TEST_CASE(pmr_resource_over_a_slab_cache) {
    Buddy buddy(kmem::MmapRegion(4 << 20));
    kmem::SlabCache<Node, Buddy> nodes(buddy, "nodes");
    kmem::MemoryResource<kmem::SlabCache<Node, Buddy>> resource(nodes);
    std::vector<void*> got;
    for (int i = 0; i < 1000; ++i) {
        void* p = resource.allocate(sizeof(Node), alignof(Node));
        BOOST_TEST(addr(p) % alignof(Node) == 0u);
        got.push_back(p);
    }
    BOOST_TEST(nodes.stats().active_objs == 1000u);
    void* small = resource.allocate(8, 8); // smaller objects fit too
    resource.deallocate(small, 8, 8);
    // A fixed-size resource: larger objects and larger alignments throw.
    BOOST_CHECK_THROW((void)resource.allocate(sizeof(Node) + 1, alignof(Node)), std::bad_alloc);
    BOOST_CHECK_THROW((void)resource.allocate(sizeof(Node), 64), std::bad_alloc);
    for (void* p : got) resource.deallocate(p, sizeof(Node), alignof(Node));
    BOOST_TEST(nodes.stats().active_objs == 0u);
    // A vector of one Node fits; growing to two Nodes does not.
    std::pmr::vector<Node> v(&resource);
    v.reserve(1);
    v.push_back(Node{1.0, nullptr, "one"});
    BOOST_CHECK_THROW(v.reserve(2), std::bad_alloc);
    BOOST_TEST(v.size() == 1u);
    BOOST_TEST(v[0].value == 1.0);
    BOOST_TEST(nodes.stats().active_objs == 1u);
}

BOOST_AUTO_TEST_SUITE_END()
