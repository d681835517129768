// Tests for include/kmem/region.hpp: the Region concept and capabilities, each region type's geometry and
// system behaviour (alignment, populate, memfd views and sharing across fork), and a BuddyAllocator over
// each.
#include <kmem/buddy.hpp>
#include <kmem/region.hpp>

#include <boost/test/unit_test.hpp>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace {

constexpr std::size_t page = 4096;

std::uintptr_t addr(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p);
}

// True when every page of [p, p + n) is resident (mincore).
bool resident(const std::byte* p, std::size_t n) {
    std::vector<unsigned char> vec((n + page - 1) / page);
    if (::mincore(const_cast<std::byte*>(p), n, vec.data()) != 0) return false;
    for (unsigned char v : vec)
        if ((v & 1u) == 0) return false;
    return true;
}

// Takes every block of `order` the allocator has, as addresses; checks each lies inside [lo, hi).
template <class Buddy>
std::vector<void*> take_all(Buddy& buddy, unsigned order, std::uintptr_t lo, std::uintptr_t hi) {
    std::vector<void*> out;
    while (void* p = buddy.get_free_pages(kmem::gfp::kernel, order)) {
        BOOST_REQUIRE(addr(p) >= lo);
        BOOST_REQUIRE(addr(p) + (page << order) <= hi);
        BOOST_REQUIRE(addr(p) % (page << order) == 0u);
        out.push_back(p);
    }
    return out;
}

// The line starting with `field` in /proc/self/smaps for the mapping that contains `p` ("" when not found).
std::string smaps_line(const void* p, const std::string& field) {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
        unsigned long lo = 0, hi = 0;
        char dash = 0;
        std::istringstream head(line);
        if (line.find(':') > line.find(' ') && (head >> std::hex >> lo >> dash >> hi) && dash == '-') {
            inside = addr(p) >= lo && addr(p) < hi;
            continue;
        }
        if (inside && line.rfind(field, 0) == 0) return line;
    }
    return "";
}
std::string vm_flags(const void* p) {
    return smaps_line(p, "VmFlags:");
}
// Kilobytes of the mapping containing `p` backed by transparent huge pages.
long anon_huge_kb(const void* p) {
    std::istringstream in(smaps_line(p, "AnonHugePages:").substr(14));
    long kb = -1;
    in >> kb;
    return kb;
}
// The selected value of a THP sysfs setting, e.g. "madvise" from "always [madvise] never" ("" when absent).
std::string thp_setting(const char* name) {
    std::ifstream f(std::string("/sys/kernel/mm/transparent_hugepage/") + name);
    std::string all;
    std::getline(f, all);
    const auto open = all.find('['), close = all.find(']');
    return open == std::string::npos || close == std::string::npos ? ""
                                                                   : all.substr(open + 1, close - open - 1);
}

// True when `make` throws std::invalid_argument whose what() contains every one of `parts`; reports what it saw.
bool rejects(const std::function<void()>& make, std::initializer_list<std::string> parts) {
    try {
        make();
    } catch (const std::invalid_argument& e) {
        const std::string what = e.what();
        for (const auto& part : parts) {
            if (what.find(part) == std::string::npos) {
                BOOST_TEST_MESSAGE("message \"" << what << "\" lacks \"" << part << "\"");
                return false;
            }
        }
        return true;
    } catch (const std::exception& e) {
        BOOST_TEST_MESSAGE("threw another exception: " << e.what());
        return false;
    }
    BOOST_TEST_MESSAGE("did not throw");
    return false;
}

// Region look-alikes for the concept test: an addressable claim without data() is not a Region.
struct NoData {
    static constexpr bool addressable = true;
    static constexpr bool remappable = false;
    std::uint64_t size() const { return 0; }
    std::uint64_t base() const { return 0; }
};
struct Offsets {
    static constexpr bool addressable = false;
    static constexpr bool remappable = false;
    std::uint64_t size() const { return 0; }
    std::uint64_t base() const { return 0; }
};

} // namespace

BOOST_AUTO_TEST_SUITE(region_concept)

BOOST_AUTO_TEST_CASE(every_region_satisfies_the_concept_with_its_capabilities) {
    static_assert(kmem::Region<kmem::StaticRegion<4096>>);
    static_assert(kmem::Region<kmem::SpanRegion>);
    static_assert(kmem::Region<kmem::MmapRegion>);
    static_assert(kmem::Region<kmem::MemfdRegion>);
    static_assert(kmem::Region<kmem::OffsetRegion>);

    static_assert(kmem::is_addressable_v<kmem::StaticRegion<4096>> &&
                  !kmem::is_remappable_v<kmem::StaticRegion<4096>>);
    static_assert(kmem::is_addressable_v<kmem::SpanRegion> && !kmem::is_remappable_v<kmem::SpanRegion>);
    static_assert(kmem::is_addressable_v<kmem::MmapRegion> && !kmem::is_remappable_v<kmem::MmapRegion>);
    static_assert(kmem::is_addressable_v<kmem::MemfdRegion> && kmem::is_remappable_v<kmem::MemfdRegion>);
    static_assert(!kmem::is_addressable_v<kmem::OffsetRegion> && !kmem::is_remappable_v<kmem::OffsetRegion>);

    // Not regions: no size/base, or an addressable claim without data().
    static_assert(!kmem::Region<NoData>);
    static_assert(kmem::Region<Offsets>);
    static_assert(!kmem::Region<int>);
    static_assert(!kmem::Region<std::vector<std::byte>>);

    // The allocator's capabilities follow the region's.
    static_assert(kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>::addressable);
    static_assert(!kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>::addressable);
    BOOST_TEST(kmem::OffsetRegion(1).size() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(static_region)

BOOST_AUTO_TEST_CASE(size_and_alignment) {
    auto r = std::make_unique<kmem::StaticRegion<12345, 8192>>();
    BOOST_TEST(r->size() == 12345u);
    BOOST_TEST(addr(r->data()) % 8192u == 0u);
    BOOST_TEST(r->base() == addr(r->data()));
    BOOST_TEST(addr(r->data()) >= addr(r.get()));
    BOOST_TEST(addr(r->data()) + r->size() <= addr(r.get()) + sizeof(*r));
    std::memset(r->data(), 0x11, r->size()); // the whole buffer is writable
    static_assert(sizeof(kmem::StaticRegion<4096, 64>) == 4096);
    static_assert(alignof(kmem::StaticRegion<100, 512>) == 512);
}

BOOST_AUTO_TEST_CASE(buddy_over_a_static_region) {
    using Buddy =
        kmem::BuddyAllocator<3, 4096, kmem::StaticRegion<4096 * 24, 4096 * 8>>; // aligned to order 3
    auto buddy = std::make_unique<Buddy>();
    buddy->set_warning_stream(nullptr);
    BOOST_TEST(buddy->total_pages() == 24u);
    BOOST_TEST(buddy->nr_free(3) == 3u); // 24 aligned pages = three order-3 blocks
    const auto lo = addr(buddy->region().data());
    auto all = take_all(*buddy, 0, lo, lo + 24 * page);
    BOOST_TEST(all.size() == 24u);
    for (void* p : all) buddy->free_pages(p, 0);
    BOOST_TEST(buddy->nr_free(3) == 3u);
    BOOST_TEST(buddy->check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(span_region)

BOOST_AUTO_TEST_CASE(unaligned_span_uses_only_whole_aligned_pages) {
    std::vector<std::byte> buffer(20 * page);
    // Start 100 bytes past a page boundary, end 300 bytes past one: pages [first, last) are the whole ones.
    const std::uintptr_t raw = addr(buffer.data());
    const std::uintptr_t start = ((raw + page - 1) & ~(page - 1)) + 100;
    const std::size_t length = 11 * page + 200; // ends at boundary + 11 pages + 300 bytes
    std::span<std::byte> span(buffer.data() + (start - raw), length);
    BOOST_REQUIRE(start % page != 0u);
    // Whole pages inside [start, start + length): from the next boundary after start to the last boundary.
    const std::uintptr_t first_page = (start + page - 1) / page;
    const std::uintptr_t end_page = (start + length) / page;
    const std::uint64_t expected = end_page - first_page;
    BOOST_TEST(expected == 10u);

    kmem::BuddyAllocator<10, 4096, kmem::SpanRegion> buddy{kmem::SpanRegion(span)};
    BOOST_TEST(buddy.region().data() == span.data());
    BOOST_TEST(buddy.region().size() == length);
    BOOST_TEST(buddy.total_pages() == expected);
    BOOST_TEST(buddy.nr_free_pages() == expected);
    BOOST_TEST(buddy.page_table().first_pfn() == first_page);

    buddy.set_warning_stream(nullptr);
    auto all = take_all(buddy, 0, start, start + length);
    BOOST_TEST(all.size() == expected);
    std::set<void*> distinct(all.begin(), all.end());
    BOOST_TEST(distinct.size() == all.size());
    // Fill every page; the bytes before the first page and after the last are untouched.
    std::memset(buffer.data(), 0x77, buffer.size());
    for (void* p : all) std::memset(p, 0xee, page);
    BOOST_TEST(std::to_integer<int>(*span.data()) == 0x77);
    BOOST_TEST(std::to_integer<int>(span.back()) == 0x77);
    BOOST_TEST(buddy.check_invariants() == "");
    for (void* p : all) buddy.free_pages(p, 0);
    BOOST_TEST(buddy.nr_free_pages() == expected);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(span_smaller_than_a_page_manages_nothing) {
    std::vector<std::byte> buffer(3 * page);
    const std::uintptr_t raw = addr(buffer.data());
    const std::uintptr_t start = ((raw + page - 1) & ~(page - 1)) + 1;
    std::span<std::byte> span(buffer.data() + (start - raw),
                              page); // straddles a boundary, holds no whole page
    kmem::BuddyAllocator<10, 4096, kmem::SpanRegion> buddy{kmem::SpanRegion(span)};
    buddy.set_warning_stream(nullptr);
    BOOST_TEST(buddy.total_pages() == 0u);
    BOOST_TEST(buddy.get_free_pages(kmem::gfp::kernel, 0) == nullptr);
    BOOST_TEST(buddy.largest_free_order() == -1);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(mmap_region)

BOOST_AUTO_TEST_CASE(size_is_rounded_up_to_the_page_size) {
    const auto sys_page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    kmem::MmapRegion r(5000);
    BOOST_TEST(r.size() == ((5000 + sys_page - 1) / sys_page) * sys_page);
    BOOST_TEST(r.base() % sys_page == 0u);
    BOOST_TEST(r.base() == addr(r.data()));
    std::memset(r.data(), 0x3c, r.size());
    kmem::MmapRegion exact(3 * sys_page);
    BOOST_TEST(exact.size() == 3 * sys_page);
}

BOOST_AUTO_TEST_CASE(bad_arguments_throw) {
    BOOST_CHECK_THROW(kmem::MmapRegion(0), std::invalid_argument);
    BOOST_CHECK_THROW(kmem::MmapRegion(page, {.alignment = 3 * page}), std::invalid_argument);
    BOOST_CHECK_THROW(kmem::MemfdRegion(0), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(sizes_that_overflow_when_rounded_or_aligned_are_rejected_with_the_size_requested) {
    // Rounded up to whole pages, SIZE_MAX used to wrap to 0 and fail in mmap with "Invalid argument".
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    const auto sys_page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    BOOST_TEST(rejects([] { kmem::MmapRegion r(max); },
                       {"kmem: MmapRegion of 18446744073709551615 bytes is too large", "whole pages"}));
    BOOST_TEST(rejects([&] { kmem::MmapRegion r(max - sys_page + 2); },
                       {"MmapRegion of " + std::to_string(max - sys_page + 2) + " bytes is too large"}));
    // Whole pages already, but the padding that aligns the start does not fit.
    const std::size_t top_pages = max & ~(sys_page - 1);
    BOOST_TEST(rejects([&] { kmem::MmapRegion r(top_pages, {.alignment = std::size_t{2} << 20}); },
                       {"MmapRegion of " + std::to_string(top_pages) + " bytes is too large", "2097152"}));
    BOOST_TEST(rejects([&] { (void)kmem::detail::map_anonymous(top_pages, std::size_t{2} << 20, 0); },
                       {"too large"}));
    BOOST_TEST(rejects([] { kmem::MemfdRegion r(max); },
                       {"kmem: MemfdRegion of 18446744073709551615 bytes is too large", "whole pages"}));
    // Page-rounded fine, but longer than any file can be (ftruncate used to fail with "Invalid argument").
    BOOST_TEST(rejects([] { kmem::MemfdRegion r(std::size_t{1} << 63); },
                       {"MemfdRegion of 9223372036854775808 bytes is too large", "off_t"}));
    // Large sizes that do fit are still mmap's to refuse: a system_error, not a caller mistake.
    BOOST_CHECK_THROW(kmem::MmapRegion{top_pages}, std::system_error);
}

BOOST_AUTO_TEST_CASE(alignment_option_aligns_the_base) {
    for (std::size_t align :
         {std::size_t{1} << 16, std::size_t{2} << 20, std::size_t{4} << 20, std::size_t{64} << 20}) {
        BOOST_TEST_INFO("alignment " << align);
        kmem::MmapRegion r(3 * page, {.alignment = align});
        BOOST_TEST(r.base() % align == 0u);
        BOOST_TEST(r.size() == 3 * page);
        std::memset(r.data(), 1, r.size());
    }
    // An alignment below the page size is the page size.
    kmem::MmapRegion small(page, {.alignment = 64});
    BOOST_TEST(small.base() % page == 0u);
}

BOOST_AUTO_TEST_CASE(alignment_trims_the_surplus_mapping) {
    // The over-allocation used to align must be unmapped: the pages just before and after are not ours.
    kmem::MmapRegion r(4 * page, {.alignment = std::size_t{2} << 20});
    std::vector<unsigned char> vec(4);
    BOOST_TEST(::mincore(r.data(), r.size(), vec.data()) == 0);
    unsigned char v = 0;
    errno = 0;
    BOOST_TEST(::mincore(r.data() + r.size(), page, &v) == -1); // no mapping right after the region
    BOOST_TEST(errno == ENOMEM);
}

BOOST_AUTO_TEST_CASE(populate_faults_every_page_in) {
    constexpr std::size_t bytes = 64 * page;
    kmem::MmapRegion populated(bytes, {.populate = true});
    BOOST_TEST(resident(populated.data(), bytes));
    // Without populate, an untouched private anonymous mapping has no resident pages.
    kmem::MmapRegion lazy(bytes);
    std::vector<unsigned char> vec(bytes / page);
    BOOST_REQUIRE(::mincore(lazy.data(), bytes, vec.data()) == 0);
    std::size_t in = 0;
    for (unsigned char v : vec) in += v & 1u;
    BOOST_TEST(in == 0u);
}

BOOST_AUTO_TEST_CASE(thp_advice_is_accepted) {
    kmem::MmapRegion huge(
        std::size_t{4} << 20,
        {.populate = true, .thp = kmem::ThpAdvice::huge, .alignment = std::size_t{2} << 20});
    BOOST_TEST(huge.base() % (std::size_t{2} << 20) == 0u);
    BOOST_TEST(resident(huge.data(), huge.size()));
    kmem::MmapRegion nohuge(std::size_t{4} << 20, {.thp = kmem::ThpAdvice::nohuge});
    std::memset(nohuge.data(), 0, nohuge.size());
    // The kernel records the advice: smaps lists "hg" / "nh" in the mapping's VmFlags (when THP is built in).
    if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
        BOOST_TEST(vm_flags(huge.data()).find(" hg") != std::string::npos, vm_flags(huge.data()));
        BOOST_TEST(vm_flags(nohuge.data()).find(" nh") != std::string::npos, vm_flags(nohuge.data()));
    }
    kmem::MmapRegion plain(std::size_t{4} << 20);
    BOOST_TEST(vm_flags(plain.data()).find(" hg") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(populate_after_thp_advice_gets_huge_pages) {
    // The advice must be given before the pages are populated; populated first, they are small pages.
    const std::string enabled = thp_setting("enabled"), defrag = thp_setting("defrag");
    if ((enabled != "always" && enabled != "madvise") ||
        (defrag != "always" && defrag != "madvise" && defrag != "defer+madvise")) {
        BOOST_TEST_MESSAGE("THP not available for madvised regions (enabled=" << enabled << ", defrag="
                                                                              << defrag << "); skipped");
        return;
    }
    kmem::MmapRegion huge(
        std::size_t{8} << 20,
        {.populate = true, .thp = kmem::ThpAdvice::huge, .alignment = std::size_t{2} << 20});
    BOOST_TEST(anon_huge_kb(huge.data()) > 0);
    kmem::MmapRegion nohuge(
        std::size_t{8} << 20,
        {.populate = true, .thp = kmem::ThpAdvice::nohuge, .alignment = std::size_t{2} << 20});
    BOOST_TEST(anon_huge_kb(nohuge.data()) == 0);
}

BOOST_AUTO_TEST_CASE(move_transfers_the_mapping) {
    kmem::MmapRegion a(2 * page);
    std::byte* p = a.data();
    p[0] = std::byte{42};
    kmem::MmapRegion b(std::move(a));
    BOOST_TEST(b.data() == p);
    BOOST_TEST(std::to_integer<int>(b.data()[0]) == 42);
    BOOST_TEST(a.data() == nullptr); // NOLINT(bugprone-use-after-move): moved-from is empty
    BOOST_TEST(a.size() == 0u);      // NOLINT(bugprone-use-after-move)
}

BOOST_AUTO_TEST_CASE(borrowed_region) {
    kmem::MmapRegion region(std::size_t{1} << 20, {.alignment = std::size_t{1} << 20});
    {
        kmem::BuddyAllocator<10, 4096, kmem::MmapRegion&> buddy(region);
        static_assert(std::is_same_v<decltype(buddy)::region_type, kmem::MmapRegion>);
        BOOST_TEST(&buddy.region() == &region);
        BOOST_TEST(buddy.total_pages() == 256u);
        void* p = buddy.get_free_pages(kmem::gfp::kernel, 8);
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(addr(p) >= region.base());
        BOOST_TEST(addr(p) + (page << 8) <= region.base() + region.size());
        std::memset(p, 0x44, page << 8);
        buddy.free_pages(p, 8);
        BOOST_TEST(buddy.check_invariants() == "");
    }
    // The allocator is gone; the borrowed region is still mapped and keeps its bytes.
    BOOST_TEST(region.data() != nullptr);
    std::size_t count = 0;
    for (std::size_t i = 0; i < region.size(); ++i) count += std::to_integer<int>(region.data()[i]) == 0x44;
    BOOST_TEST(count == (page << 8));
}

BOOST_AUTO_TEST_CASE(metadata_lives_outside_the_region) {
    constexpr std::size_t bytes = std::size_t{8} << 20;
    kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> buddy(
        kmem::MmapRegion(bytes, {.alignment = std::size_t{4} << 20}));
    buddy.set_warning_stream(nullptr);
    const auto& region = buddy.region();
    const auto lo = region.base(), hi = region.base() + region.size();
    // The descriptor table is not inside the managed range.
    const auto table_lo = addr(&buddy.page_table()[0]);
    const auto table_hi = table_lo + buddy.page_table().metadata_bytes();
    BOOST_TEST((table_hi <= lo || table_lo >= hi));
    BOOST_TEST((addr(&buddy) + sizeof(buddy) <= lo || addr(&buddy) >= hi));

    // Take every page in a mix of orders, then overwrite the whole region.
    std::vector<std::pair<void*, unsigned>> blocks;
    for (unsigned order : {9u, 3u, 0u, 10u, 1u, 0u}) {
        for (int k = 0; k < 5; ++k)
            if (void* p = buddy.get_free_pages(kmem::gfp::kernel, order)) blocks.emplace_back(p, order);
    }
    for (unsigned order = 0; order <= 10; ++order)
        while (void* p = buddy.get_free_pages(kmem::gfp::kernel, order)) blocks.emplace_back(p, order);
    BOOST_TEST(buddy.nr_free_pages() == 0u);
    std::uint64_t pages = 0;
    for (auto [p, order] : blocks) pages += std::uint64_t{1} << order;
    BOOST_TEST(pages == buddy.total_pages());
    BOOST_TEST(pages == bytes / page);
    std::memset(region.data(), 0xa5, region.size());
    std::memset(region.data(), 0x00, region.size() / 2); // and again, with another pattern in half of it
    BOOST_TEST(buddy.check_invariants() == "");
    for (auto [p, order] : blocks) buddy.free_pages(p, order);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_TEST(buddy.nr_free(10) == 2u);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(memfd_region)

BOOST_AUTO_TEST_CASE(map_gives_a_second_view_of_the_same_bytes) {
    kmem::MemfdRegion region(16 * page, "kmem-test");
    BOOST_TEST(region.size() == 16 * page);
    BOOST_TEST(region.fd() >= 0);
    kmem::MemfdMapping view = region.map(4 * page, 8 * page);
    BOOST_REQUIRE(view.data() != nullptr);
    BOOST_TEST(view.size() == 8 * page);
    BOOST_TEST(view.data() != region.data() + 4 * page); // a different address ...
    std::memcpy(region.data() + 4 * page + 10, "through the region", 19);
    BOOST_TEST(std::memcmp(view.data() + 10, "through the region", 19) == 0); // ... with the same bytes
    std::memcpy(view.data() + 7 * page, "through the view", 17);
    BOOST_TEST(std::memcmp(region.data() + 11 * page, "through the view", 17) == 0);
    // The view outlives neither the bytes nor the region's own mapping: moving it keeps it valid.
    kmem::MemfdMapping moved = std::move(view);
    BOOST_TEST(std::memcmp(moved.data() + 10, "through the region", 19) == 0);
}

BOOST_AUTO_TEST_CASE(map_fixed_over_a_reserved_range) {
    kmem::MemfdRegion region(8 * page);
    for (std::size_t i = 0; i < region.size(); ++i) region.data()[i] = static_cast<std::byte>(i / page);
    // Reserve 4 pages of address space with no access, as VirtualMap would.
    void* at = ::mmap(nullptr, 4 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    BOOST_REQUIRE(at != MAP_FAILED);
    auto* base = static_cast<std::byte*>(at);
    region.map_fixed(base + page, 5 * page, 2 * page); // region pages 5 and 6 at reserved pages 1 and 2
    BOOST_TEST(std::to_integer<int>(base[page]) == 5);
    BOOST_TEST(std::to_integer<int>(base[2 * page + 100]) == 6);
    base[page + 1] = std::byte{0x99};
    BOOST_TEST(std::to_integer<int>(region.data()[5 * page + 1]) == 0x99);
    // The pages around the view are still reserved, not accessible.
    unsigned char v = 0;
    BOOST_TEST(::mincore(base, page, &v) == 0); // still mapped (PROT_NONE)
    BOOST_TEST(::munmap(at, 4 * page) == 0);
}

BOOST_AUTO_TEST_CASE(invalid_view_ranges_throw) {
    kmem::MemfdRegion region(4 * page);
    BOOST_CHECK_THROW(region.map(0, 0), std::invalid_argument);               // empty
    BOOST_CHECK_THROW(region.map(100, page), std::invalid_argument);          // unaligned offset
    BOOST_CHECK_THROW(region.map(0, page + 1), std::invalid_argument);        // unaligned length
    BOOST_CHECK_THROW(region.map(5 * page, page), std::invalid_argument);     // starts past the end
    BOOST_CHECK_THROW(region.map(3 * page, 2 * page), std::invalid_argument); // runs past the end
    BOOST_CHECK_THROW(region.map(4 * page, page), std::invalid_argument);     // starts at the end
    BOOST_CHECK_THROW(region.map(page, ~std::size_t{0} & ~(page - 1)),
                      std::invalid_argument); // huge: no overflow
    BOOST_CHECK_THROW(region.map_fixed(nullptr, 0, 5 * page), std::invalid_argument);
    kmem::MemfdMapping whole = region.map(0, 4 * page); // the whole region is fine
    BOOST_TEST(whole.size() == 4 * page);
}

BOOST_AUTO_TEST_CASE(shared_with_a_child_process) {
    kmem::MemfdRegion region(4 * page);
    std::memset(region.data(), 0, region.size());
    const pid_t child = ::fork();
    BOOST_REQUIRE(child >= 0);
    if (child == 0) {
        // The child writes through the inherited shared mapping and through its own mapping of the fd.
        for (std::size_t i = 0; i < page; ++i) region.data()[i] = static_cast<std::byte>(i * 7 + 3);
        void* own = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_SHARED, region.fd(), 3 * page);
        if (own == MAP_FAILED) ::_exit(2);
        std::memcpy(own, "written by the child", 21);
        ::_exit(0);
    }
    int status = 0;
    BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
    BOOST_REQUIRE(WIFEXITED(status));
    BOOST_REQUIRE(WEXITSTATUS(status) == 0);
    bool same = true;
    for (std::size_t i = 0; i < page; ++i)
        same = same && region.data()[i] == static_cast<std::byte>(i * 7 + 3);
    BOOST_TEST(same);
    BOOST_TEST(std::memcmp(region.data() + 3 * page, "written by the child", 21) == 0);
}

BOOST_AUTO_TEST_CASE(buddy_pages_are_remappable) {
    kmem::BuddyAllocator<4, 4096, kmem::MemfdRegion> buddy(kmem::MemfdRegion(64 * page));
    static_assert(kmem::is_remappable_v<decltype(buddy)::region_type>);
    kmem::Page* pg = buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::zero, 2);
    BOOST_REQUIRE(pg != nullptr);
    const std::uint64_t offset = buddy.page_offset(pg);
    BOOST_TEST(static_cast<std::byte*>(buddy.page_address(pg)) == buddy.region().data() + offset);
    std::memcpy(buddy.page_address(pg), "block", 6);
    kmem::MemfdMapping alias = buddy.region().map(offset, 4 * page);
    BOOST_TEST(std::memcmp(alias.data(), "block", 6) == 0);
    buddy.free_pages(pg, 2);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(moved_region_keeps_fd_and_mapping) {
    kmem::MemfdRegion a(2 * page);
    const int fd = a.fd();
    std::byte* p = a.data();
    kmem::MemfdRegion b(std::move(a));
    BOOST_TEST(b.fd() == fd);
    BOOST_TEST(b.data() == p);
    BOOST_TEST(a.fd() == -1); // NOLINT(bugprone-use-after-move)
    kmem::MemfdMapping view = b.map(0, page);
    view.data()[0] = std::byte{1};
    BOOST_TEST(std::to_integer<int>(p[0]) == 1);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(offset_region)

BOOST_AUTO_TEST_CASE(sixty_four_gib_of_device_memory_at_a_nonzero_base) {
    constexpr std::uint64_t size = std::uint64_t{64} << 30;
    constexpr std::uint64_t base = std::uint64_t{1} << 40; // a device address
    constexpr kmem::OffsetRegion vram(size, base);
    static_assert(vram.size() == size && vram.base() == base);
    kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion> buddy(vram);
    const std::uint64_t pages = size / page;
    BOOST_TEST(buddy.total_pages() == pages);
    BOOST_TEST(buddy.nr_free_pages() == pages);
    BOOST_TEST(buddy.nr_free(10) == pages >> 10);
    BOOST_TEST(buddy.page_table().first_pfn() == base / page);

    auto big = buddy.alloc_offset(kmem::gfp::kernel, 10);
    auto small = buddy.alloc_offset(kmem::gfp::kernel, 0, {.top_down = true});
    BOOST_REQUIRE(big.has_value());
    BOOST_REQUIRE(small.has_value());
    BOOST_TEST(*big == 0u);
    BOOST_TEST(*small == size - page); // the last page of the range
    kmem::Page* pg = buddy.offset_to_page(*small);
    BOOST_REQUIRE(pg != nullptr);
    BOOST_TEST(buddy.page_to_pfn(pg) == (base + *small) / page);
    BOOST_TEST(buddy.page_offset(pg) == *small);
    BOOST_TEST(buddy.nr_free_pages() == pages - 1024 - 1);
    buddy.free_offset(*big, 10);
    buddy.free_offset(*small, 0);
    BOOST_TEST(buddy.nr_free_pages() == pages);
    BOOST_TEST(buddy.nr_free(10) == pages >> 10);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(a_range_that_wraps_past_2_to_the_64_is_rejected) {
    constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    BOOST_TEST(rejects([] { kmem::OffsetRegion r(1 << 20, ~0ull - 99); },
                       {"kmem: OffsetRegion of 1048576 bytes at base 18446744073709551516 wraps past 2^64"}));
    BOOST_TEST(rejects([] { kmem::OffsetRegion r(100, max - 99); }, {"wraps"})); // ends at exactly 2^64
    BOOST_TEST(rejects([] { kmem::OffsetRegion r(max, 1); }, {"wraps"}));
    BOOST_TEST(rejects([] { kmem::OffsetRegion r(2, max); }, {"wraps"}));
    // Ranges whose end fits in 64 bits are accepted, and still at compile time.
    constexpr kmem::OffsetRegion top(100, max - 100);
    static_assert(top.size() == 100 && top.base() == max - 100);
    constexpr kmem::OffsetRegion everything(max);
    static_assert(everything.size() == max && everything.base() == 0);
    BOOST_CHECK_NO_THROW(kmem::OffsetRegion(0, max));
}

BOOST_AUTO_TEST_CASE(unaligned_base_uses_whole_pages) {
    // [100, 100 + 1 MiB): whole pages are 1 .. 255.
    kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion> buddy(kmem::OffsetRegion(1 << 20, 100));
    BOOST_TEST(buddy.total_pages() == 255u);
    BOOST_TEST(buddy.page_table().first_pfn() == 1u);
    auto off = buddy.alloc_offset(kmem::gfp::kernel, 0);
    BOOST_REQUIRE(off.has_value());
    BOOST_TEST((100 + *off) % page ==
               0u); // offsets are relative to base(), device addresses are page aligned
    buddy.free_offset(*off, 0);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()
