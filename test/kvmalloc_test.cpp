// kvmalloc: kmalloc first (with the kernel's flag adjustments above a page), then vmalloc for callers that may
// sleep; kvfree tells the two apart by address.
#include <kmem/buddy.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/kvmalloc.hpp>
#include <kmem/vmap.hpp>

#include <boost/test/unit_test.hpp>

#include <cstring>
#include <vector>

namespace {

using Buddy = kmem::BuddyAllocator<6, 4096, kmem::MemfdRegion>; // largest block 256 KiB: KMALLOC_MAX_SIZE

struct Fixture {
    Buddy buddy{kmem::MemfdRegion(8 << 20)};
    kmem::Kmalloc<Buddy> km{buddy};
    kmem::VirtualMap<Buddy&> vm{buddy};
    kmem::KvMalloc<kmem::Kmalloc<Buddy>, kmem::VirtualMap<Buddy&>> kv{km, vm};
    std::uint64_t start = buddy.nr_free_pages();
    bool all_back() {
        km.shrink();
        return buddy.nr_free_pages() == start || buddy.nr_free_pages() == buddy.total_pages();
    }
};

} // namespace

static_assert(kmem::kvmalloc_kmalloc_bits(kmem::gfp::kernel.value) ==
              (kmem::gfp::kernel | kmem::gfp::nowarn | kmem::gfp::noretry).value);
static_assert(kmem::kvmalloc_kmalloc_bits((kmem::gfp::kernel | kmem::gfp::retry_mayfail).value) ==
              (kmem::gfp::kernel | kmem::gfp::retry_mayfail | kmem::gfp::nowarn).value);
static_assert(kmem::kvmalloc_kmalloc_bits((kmem::gfp::kernel | kmem::gfp::nofail).value) ==
                  (kmem::gfp::kernel | kmem::gfp::nowarn | kmem::gfp::noretry).value,
              "the kmalloc attempt drops __GFP_NOFAIL: the vmalloc fallback carries it");

BOOST_FIXTURE_TEST_CASE(small_requests_are_kmalloc, Fixture) {
    void* p = kv.kvmalloc(100, kmem::gfp::kernel);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(!vm.is_vmalloc_addr(p));
    BOOST_TEST(km.ksize(p) == 128u);
    BOOST_TEST(kv.usable_size(p) == 128u);
    void* page = kv.kvmalloc(4096, kmem::gfp::kernel);
    BOOST_TEST(!vm.is_vmalloc_addr(page));
    kv.kvfree(page);
    kv.kvfree(p);
    kv.kvfree(nullptr);
    kv.kvfree(kmem::zero_size_ptr);
    BOOST_TEST(all_back());
}

BOOST_FIXTURE_TEST_CASE(large_requests_use_contiguous_pages_while_they_last, Fixture) {
    void* p = kv.kvmalloc(64 * 1024, kmem::gfp::kernel);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(!vm.is_vmalloc_addr(p)); // a 64 KiB block was free: kmalloc served it
    BOOST_TEST(kv.usable_size(p) == 64u * 1024);
    kv.kvfree(p);
    BOOST_TEST(all_back());
}

BOOST_FIXTURE_TEST_CASE(above_kmalloc_max_size_falls_back_to_vmalloc, Fixture) {
    auto* p = static_cast<unsigned char*>(kv.kvzalloc(1 << 20, kmem::gfp::kernel));
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(vm.is_vmalloc_addr(p));
    BOOST_TEST(kv.usable_size(p) == std::size_t{1} << 20);
    bool zero = true;
    for (std::size_t i = 0; i < (1u << 20); ++i) zero = zero && p[i] == 0;
    BOOST_TEST(zero);
    std::memset(p, 0x5a, 1 << 20);
    kv.kvfree(p);
    BOOST_TEST(vm.stats().vmalloc_areas == 0u);
    BOOST_TEST(all_back());
}

BOOST_FIXTURE_TEST_CASE(fragmented_memory_falls_back_even_below_kmalloc_max_size, Fixture) {
    // Take every page, then free every other one: no block above order 0 is left, yet half the pages are free.
    std::vector<void*> pages;
    while (void* p = buddy.get_free_page(kmem::gfp::kernel | kmem::gfp::nowarn)) pages.push_back(p);
    for (std::size_t i = 0; i < pages.size(); i += 2) buddy.free_page(pages[i]);
    void* p = kv.kvmalloc(32 * 1024, kmem::gfp::kernel);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(vm.is_vmalloc_addr(p),
               "kmalloc could not get an order-3 block, vmalloc used eight single pages");
    std::memset(p, 1, 32 * 1024);
    kv.kvfree(p);
    for (std::size_t i = 1; i < pages.size(); i += 2) buddy.free_page(pages[i]);
    BOOST_TEST(all_back());
}

BOOST_FIXTURE_TEST_CASE(callers_that_cannot_sleep_get_no_fallback, Fixture) {
    BOOST_TEST(kv.kvmalloc(1 << 20, kmem::gfp::atomic) == nullptr);
    BOOST_TEST(kv.kvmalloc(1 << 20, kmem::gfp::nowait) == nullptr);
    BOOST_TEST(vm.stats().vmalloc_areas == 0u);
    void* small = kv.kvmalloc(2000, kmem::gfp::atomic); // kmalloc still serves them
    BOOST_TEST(small != nullptr);
    kv.kvfree(small);
}

BOOST_FIXTURE_TEST_CASE(array_calloc_realloc, Fixture) {
    BOOST_TEST(kv.kvmalloc_array(SIZE_MAX / 2, 4, kmem::gfp::kernel) == nullptr);
    auto* v = static_cast<int*>(kv.kvcalloc(100'000, sizeof(int), kmem::gfp::kernel)); // 400 KB: vmalloc
    BOOST_REQUIRE(v != nullptr);
    BOOST_TEST(vm.is_vmalloc_addr(v));
    for (int i = 0; i < 100'000; ++i) v[i] = i;
    auto* w = static_cast<int*>(kv.kvrealloc(v, 600'000 * sizeof(int), kmem::gfp::kernel));
    BOOST_REQUIRE(w != nullptr);
    bool kept = true;
    for (int i = 0; i < 100'000; ++i) kept = kept && w[i] == i;
    BOOST_TEST(kept);
    BOOST_TEST(kv.kvrealloc(w, 10, kmem::gfp::kernel) == w); // already holds it
    BOOST_TEST(kv.kvrealloc(w, 0, kmem::gfp::kernel) == kmem::zero_size_ptr);
    auto* s = static_cast<char*>(kv.kvmalloc(10, kmem::gfp::kernel));
    std::memcpy(s, "kvrealloc", 10);
    auto* t = static_cast<char*>(kv.kvrealloc(s, 300'000, kmem::gfp::kernel));
    BOOST_REQUIRE(t != nullptr);
    BOOST_TEST(std::strcmp(t, "kvrealloc") == 0);
    BOOST_TEST(vm.is_vmalloc_addr(t));
    kv.kvfree_sensitive(t, 300'000);
    BOOST_TEST(all_back());
}
