// Tests of the early allocator (include/kmem/memblock.hpp): the memory and reserved lists (sorted, merged,
// trimmed, split), the free-range walks, allocation top-down and bottom-up with alignment in address space and
// range limits, zeroing, the dump text, every reported mistake, the page descriptor table placed in the region,
// and the hand-off to the buddy allocator (every page accounted for, early allocations intact, reserved pages
// never handed out, memblock finished).  The last suite is a model-based randomized test against per-byte shadow
// bitmaps; the seed is printed and KMEM_SEED=<n> repeats a run.
#include <kmem/buddy.hpp>
#include <kmem/mem_map.hpp>
#include <kmem/memblock.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include "support/expect_error.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using kmem::ErrorKind;
using kmem::MemblockRegion;
using kmem::test::expect_error;
using kmem::test::expect_no_error;

using OffsetMemblock = kmem::Memblock<kmem::OffsetRegion, 4096, kmem::policy::ThrowOnError>;
using HostMemblock = kmem::Memblock<kmem::MmapRegion&, 4096, kmem::policy::ThrowOnError>;
using HostMap = kmem::MemMap<kmem::MmapRegion&, 4096>;
using HostBuddy = kmem::BuddyAllocator<10, 4096, HostMap&, kmem::policy::ThrowOnError>;

static_assert(std::ranges::input_range<kmem::FreeMemRanges<false>>);
static_assert(std::ranges::input_range<kmem::FreeMemRanges<true>>);

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
}

// An optional offset as hex, or "none": comparisons of allocation results that print well.
std::string at(std::optional<std::uint64_t> v) {
    return v ? hex(*v) : "none";
}

// "[1000,2000)[3000,4000)": ranges as half-open hex intervals, for comparisons that print well.
template <class Ranges>
std::string show(const Ranges& ranges) {
    std::string s;
    for (const MemblockRegion r : ranges) s += "[" + hex(r.base) + "," + hex(r.end()) + ")";
    return s;
}

} // namespace

BOOST_AUTO_TEST_SUITE(memblock_lists)

BOOST_AUTO_TEST_CASE(add_keeps_memory_sorted_and_merged) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    BOOST_TEST(mb.memory().empty());
    BOOST_TEST(mb.add(0x5000, 0x1000));
    BOOST_TEST(mb.add(0x1000, 0x1000));
    BOOST_TEST(mb.add(0x3000, 0x800));
    BOOST_TEST(show(mb.memory()) == "[1000,2000)[3000,3800)[5000,6000)");
    BOOST_TEST(mb.phys_mem_size() == 0x2800u);
    BOOST_TEST(mb.add(0x2000, 0x1000)); // touches both neighbours: one range
    BOOST_TEST(show(mb.memory()) == "[1000,3800)[5000,6000)");
    BOOST_TEST(mb.add(0x3400, 0x2000)); // overlaps both
    BOOST_TEST(show(mb.memory()) == "[1000,6000)");
    BOOST_TEST(mb.add(0x1800, 0x100)); // inside: nothing changes
    BOOST_TEST(mb.add(0x9000, 0));     // empty: nothing changes
    BOOST_TEST(show(mb.memory()) == "[1000,6000)");
    BOOST_TEST(mb.phys_mem_size() == 0x5000u);
    BOOST_TEST(mb.add(0, 0x100000)); // all of it
    BOOST_TEST(show(mb.memory()) == "[0,100000)");
    BOOST_TEST(mb.phys_mem_size() == 0x100000u);
    BOOST_TEST(mb.reserved().empty());
}

BOOST_AUTO_TEST_CASE(remove_trims_and_splits_memory) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    mb.add(0, 0x10000);
    BOOST_TEST(mb.remove(0x4000, 0x1000)); // split
    BOOST_TEST(show(mb.memory()) == "[0,4000)[5000,10000)");
    BOOST_TEST(mb.remove(0x3000, 0x3000)); // trims both
    BOOST_TEST(show(mb.memory()) == "[0,3000)[6000,10000)");
    BOOST_TEST(mb.remove(0x3000, 0x3000)); // a hole: ignored
    BOOST_TEST(mb.remove(0, 0x1000));      // the head
    BOOST_TEST(mb.remove(0xf000, 0x1000)); // the tail
    BOOST_TEST(show(mb.memory()) == "[1000,3000)[6000,f000)");
    BOOST_TEST(mb.phys_mem_size() == 0xb000u);
    mb.add(0x20000, 0x1000);
    BOOST_TEST(mb.remove(0x2000, 0x1f000)); // several ranges at once: one trimmed, two dropped
    BOOST_TEST(show(mb.memory()) == "[1000,2000)");
    BOOST_TEST(mb.phys_mem_size() == 0x1000u);
}

BOOST_AUTO_TEST_CASE(reserve_and_phys_free) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    mb.add(0, 0x10000);
    BOOST_TEST(mb.reserve(0x2000, 0x2000));
    BOOST_TEST(mb.reserve(0x3000, 0x2000));  // overlaps: merged
    BOOST_TEST(mb.reserve(0x20000, 0x1000)); // need not be memory
    BOOST_TEST(show(mb.reserved()) == "[2000,5000)[20000,21000)");
    BOOST_TEST(mb.reserved_size() == 0x4000u);
    BOOST_TEST(mb.phys_free(0x3000, 0x1000)); // a part: split
    BOOST_TEST(show(mb.reserved()) == "[2000,3000)[4000,5000)[20000,21000)");
    BOOST_TEST(mb.phys_free(0x20000, 0x1000));
    BOOST_TEST(mb.phys_free(0x2000, 0));
    BOOST_TEST(show(mb.reserved()) == "[2000,3000)[4000,5000)");
    BOOST_TEST(mb.reserved_size() == 0x2000u);
    BOOST_TEST(show(mb.memory()) == "[0,10000)"); // reservations never change memory
}

BOOST_AUTO_TEST_CASE(freeing_what_is_not_reserved_is_a_double_free) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    mb.add(0, 0x10000);
    mb.reserve(0x2000, 0x1000);
    mb.reserve(0x4000, 0x1000);
    const auto e = expect_error(
        mb, ErrorKind::double_free, [&] { mb.phys_free(0x2000, 0x3000); }, "[0x3000, 0x4000) is free");
    BOOST_TEST((e && e->operation == "memblock_phys_free"));
    expect_error(mb, ErrorKind::double_free, [&] { mb.phys_free(0x8000, 0x10); });
    expect_error(
        mb, ErrorKind::double_free, [&] { mb.phys_free(0x1fff, 2); }, "[0x1fff, 0x2000) is free");
    BOOST_TEST(show(mb.reserved()) == "[2000,3000)[4000,5000)"); // nothing changed
    expect_no_error(mb, [&] { mb.phys_free(0x2000, 0x1000); });
    expect_error(mb, ErrorKind::double_free, [&] { mb.phys_free(0x2000, 0x1000); });
    BOOST_TEST(show(mb.reserved()) == "[4000,5000)");
}

BOOST_AUTO_TEST_CASE(ranges_past_the_region_are_reported) {
    OffsetMemblock mb(0x10000, 0x7000'0000);
    mb.add(0, 0x8000);
    mb.reserve(0x1000, 0x1000);
    const std::uint64_t huge = ~std::uint64_t{0};
    expect_error(
        mb, ErrorKind::out_of_region, [&] { mb.add(0x8000, 0x8001); }, "run past the end of the region");
    expect_error(mb, ErrorKind::out_of_region, [&] { mb.add(1, huge); }); // would wrap past 2^64
    expect_error(mb, ErrorKind::out_of_region, [&] { mb.remove(0x10001, 0); });
    expect_error(mb, ErrorKind::out_of_region, [&] { mb.reserve(0xffff, 2); });
    expect_error(mb, ErrorKind::out_of_region, [&] { mb.reserve(huge, 1); });
    expect_error(mb, ErrorKind::out_of_region, [&] { mb.phys_free(0x1000, huge); });
    BOOST_TEST(show(mb.memory()) == "[0,8000)");
    BOOST_TEST(show(mb.reserved()) == "[1000,2000)");
    expect_no_error(mb, [&] { mb.add(0, 0x10000); }); // exactly the region is fine
    expect_no_error(mb, [&] { mb.reserve(0x10000, 0); });
}

BOOST_AUTO_TEST_CASE(free_ranges_are_memory_minus_reserved) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    BOOST_TEST(show(mb.free_mem_ranges()) == "");
    BOOST_TEST(show(mb.free_mem_ranges_reverse()) == "");
    mb.add(0, 0x4000);
    mb.add(0x6000, 0x4000);
    mb.reserve(0x1000, 0x1000);
    mb.reserve(0x3000, 0x4000); // ends one memory range, starts the next
    mb.reserve(0x9000, 0x3000); // past the end of memory
    BOOST_TEST(show(mb.free_mem_ranges()) == "[0,1000)[2000,3000)[7000,9000)");
    BOOST_TEST(show(mb.free_mem_ranges_reverse()) == "[7000,9000)[2000,3000)[0,1000)");
    mb.reserve(0, 0x1000); // a reservation at 0: the gap before it is empty
    BOOST_TEST(show(mb.free_mem_ranges()) == "[2000,3000)[7000,9000)");
    BOOST_TEST(show(mb.free_mem_ranges_reverse()) == "[7000,9000)[2000,3000)");
    mb.add(0x20000, 0x1000); // memory with no reservation after it
    mb.add(0x30000, 0x1000);
    BOOST_TEST(show(mb.free_mem_ranges()) == "[2000,3000)[7000,9000)[20000,21000)[30000,31000)");
    BOOST_TEST(show(mb.free_mem_ranges_reverse()) == "[30000,31000)[20000,21000)[7000,9000)[2000,3000)");
    mb.reserve(0x1f000, 0x20000); // covers both
    BOOST_TEST(show(mb.free_mem_ranges()) == "[2000,3000)[7000,9000)");
    mb.reserve(0, 0x100000);
    BOOST_TEST(show(mb.free_mem_ranges()) == "");
    BOOST_TEST(show(mb.free_mem_ranges_reverse()) == "");
}

BOOST_AUTO_TEST_CASE(queries) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    BOOST_TEST(mb.start_of_dram() == 0u);
    BOOST_TEST(mb.end_of_dram() == 0u);
    BOOST_TEST(!mb.is_region_memory(0, 1));
    mb.add(0x2000, 0x2000);
    mb.add(0x8000, 0x1000);
    mb.reserve(0x3000, 0x100);
    BOOST_TEST(mb.start_of_dram() == 0x2000u);
    BOOST_TEST(mb.end_of_dram() == 0x9000u);
    BOOST_TEST(mb.is_region_memory(0x2000, 0x2000));
    BOOST_TEST(mb.is_region_memory(0x3fff, 1));
    BOOST_TEST(!mb.is_region_memory(0x3fff, 2));
    BOOST_TEST(!mb.is_region_memory(0x1fff, 2));
    BOOST_TEST(!mb.is_region_memory(0x2000, 0x8000)); // spans a hole
    BOOST_TEST(mb.is_region_reserved(0x2fff, 2));
    BOOST_TEST(mb.is_region_reserved(0x30ff, 1));
    BOOST_TEST(!mb.is_region_reserved(0x3100, 0x1000));
    BOOST_TEST(!mb.is_region_reserved(0x2000, 0x1000));
    BOOST_TEST(!mb.is_region_reserved(0x3000, 0));
}

BOOST_AUTO_TEST_CASE(dump_prints_the_kernel_format) {
    OffsetMemblock mb(std::uint64_t{16} << 20);
    mb.add(0x1000, 0x9e000);
    mb.add(0x100000, 0xf00000);
    mb.reserve(0, 0x1000);
    mb.reserve(0x9f000, 0x1000);
    mb.reserve(0x200000, 0x123);
    const std::string expected =
        "MEMBLOCK configuration:\n"
        " memory size = 0x0000000000f9e000 reserved size = 0x0000000000002123\n"
        " memory.cnt  = 0x2\n"
        " memory[0x0]\t[0x0000000000001000-0x000000000009efff], 0x000000000009e000 "
        "bytes flags: 0x0\n"
        " memory[0x1]\t[0x0000000000100000-0x0000000000ffffff], 0x0000000000f00000 "
        "bytes flags: 0x0\n"
        " reserved.cnt  = 0x3\n"
        " reserved[0x0]\t[0x0000000000000000-0x0000000000000fff], 0x0000000000001000 "
        "bytes flags: 0x0\n"
        " reserved[0x1]\t[0x000000000009f000-0x000000000009ffff], 0x0000000000001000 "
        "bytes flags: 0x0\n"
        " reserved[0x2]\t[0x0000000000200000-0x0000000000200122], 0x0000000000000123 "
        "bytes flags: 0x0\n";
    BOOST_TEST(mb.dump() == expected);
    OffsetMemblock empty(4096);
    BOOST_TEST(empty.dump() == "MEMBLOCK configuration:\n"
                               " memory size = 0x0000000000000000 reserved size = 0x0000000000000000\n"
                               " memory.cnt  = 0x0\n"
                               " reserved.cnt  = 0x0\n");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(memblock_allocation)

BOOST_AUTO_TEST_CASE(top_down_by_default_then_bottom_up) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    mb.add(0, 0x10000);
    BOOST_TEST(!mb.bottom_up());
    BOOST_TEST(at(mb.phys_alloc(0x1000, 0x1000)) == at(0xf000));
    BOOST_TEST(at(mb.phys_alloc(0x100, 0x1000)) == at(0xe000));
    BOOST_TEST(at(mb.phys_alloc(0x10, 0x10)) == at(0xeff0)); // in the tail of 0xe000's page
    mb.set_bottom_up(true);
    BOOST_TEST(mb.bottom_up());
    BOOST_TEST(at(mb.phys_alloc(0x1000, 0x1000)) == at(0));
    BOOST_TEST(at(mb.phys_alloc(0x10, 8)) == at(0x1000));
    BOOST_TEST(at(mb.phys_alloc(0x2000, 0x4000)) == at(0x4000)); // 0x1010.. is not aligned
    BOOST_TEST(at(mb.phys_alloc(0x10, 0x10)) == at(0x1010));
    BOOST_TEST(show(mb.reserved()) == "[0,1020)[4000,6000)[e000,e100)[eff0,10000)");
    BOOST_TEST(show(mb.free_mem_ranges()) == "[1020,4000)[6000,e000)[e100,eff0)");
}

BOOST_AUTO_TEST_CASE(alignment_applies_to_the_address) {
    // A device range at 0x12345: offsets are aligned so that base + offset is.
    OffsetMemblock mb(0x100000, 0x12345);
    mb.add(0, 0x100000);
    const auto top = mb.phys_alloc(0x100, 0x1000);
    BOOST_REQUIRE(top.has_value());
    BOOST_TEST((0x12345 + *top) % 0x1000 == 0u);
    // The highest address aligned to 0x1000 with 0x100 bytes below the end, 0x112345, is 0x112000.
    BOOST_TEST(*top == 0x112000u - 0x12345);
    mb.set_bottom_up(true);
    const auto low = mb.phys_alloc(0x100, 0x1000);
    BOOST_TEST(at(low) == at(0x13000 - 0x12345));
    const auto any = mb.phys_alloc(0x10, 1);
    BOOST_TEST(at(any) == at(0));
}

BOOST_AUTO_TEST_CASE(range_limits_and_the_current_limit) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    mb.add(0, 0x10000);
    BOOST_TEST(mb.current_limit() == OffsetMemblock::alloc_anywhere);
    BOOST_TEST(at(mb.phys_alloc_range(0x1000, 0x1000, 0x2000, 0x6000)) == at(0x5000));
    mb.set_bottom_up(true);
    BOOST_TEST(at(mb.phys_alloc_range(0x1000, 0x1000, 0x2000, 0x6000)) == at(0x2000));
    BOOST_TEST(at(mb.phys_alloc_range(0x3000, 0x1000, 0x2000, 0x6000)) == "none"); // 0x3000..0x5000 is free
    BOOST_TEST(at(mb.phys_alloc_range(0x2000, 0x1000, 0x2000, 0x6000)) == at(0x3000));
    BOOST_TEST(at(mb.phys_alloc_range(0x100, 1, 0x9000, 0x9000)) == "none"); // an empty range
    mb.set_bottom_up(false);
    mb.set_current_limit(0x8000);
    BOOST_TEST(mb.current_limit() == 0x8000u);
    BOOST_TEST(at(mb.phys_alloc(0x1000, 0x1000)) == at(0x7000)); // accessible: the limit
    BOOST_TEST(at(mb.phys_alloc_range(0x1000, 0x1000, 0, OffsetMemblock::alloc_accessible)) == at(0x6000));
    BOOST_TEST(at(mb.phys_alloc_range(0x1000, 0x1000, 0, OffsetMemblock::alloc_anywhere)) ==
               at(0xf000)); // an explicit end is not capped by the limit
    BOOST_TEST(at(mb.phys_alloc_range(0x1000, 0x1000, 0, 0x12345678)) == at(0xe000));
    const std::string before = mb.dump();
    BOOST_TEST(at(mb.phys_alloc(0x4000, 1)) == "none"); // below the limit only 0..0x2000 is left
    BOOST_TEST(mb.dump() == before);                    // a failure changes nothing
    BOOST_TEST(at(mb.phys_alloc(0x2000, 1)) == at(0));
}

BOOST_AUTO_TEST_CASE(allocation_mistakes_are_reported) {
    OffsetMemblock mb(std::uint64_t{1} << 20);
    mb.add(0, 0x10000);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.phys_alloc(0, 8); }, "0 bytes");
    expect_error(
        mb, ErrorKind::bad_alignment, [&] { mb.phys_alloc(8, 0); }, "alignment 0");
    expect_error(
        mb, ErrorKind::bad_alignment, [&] { mb.phys_alloc_range(8, 24, 0, 0x10000); }, "alignment 24");
    BOOST_TEST(mb.reserved().empty());
}

BOOST_AUTO_TEST_CASE(callback_policy_reports_and_goes_on) {
    kmem::Memblock<kmem::OffsetRegion, 4096, kmem::policy::CallbackOnError> mb(0x10000);
    mb.add(0, 0x10000);
    std::vector<ErrorKind> seen;
    mb.error_policy().set_callback([&](const kmem::UsageError& e) { seen.push_back(e.kind); });
    BOOST_TEST(!mb.add(0x8000, 0x9000));
    BOOST_TEST(!mb.phys_free(0, 0x10));
    BOOST_TEST(at(mb.phys_alloc(0x10, 3)) == "none");
    BOOST_TEST((seen == std::vector<ErrorKind>{ErrorKind::out_of_region, ErrorKind::double_free,
                                               ErrorKind::bad_alignment}));
    BOOST_TEST(show(mb.memory()) == "[0,10000)");
    BOOST_TEST(mb.reserved().empty());
    BOOST_TEST(at(mb.phys_alloc(0x10, 0x10)) == at(0xfff0));
}

BOOST_AUTO_TEST_CASE(alloc_zeroes_and_alloc_raw_does_not) {
    kmem::MmapRegion ram(std::size_t{1} << 20);
    std::memset(ram.data(), 0xab, ram.size());
    HostMemblock mb(ram);
    mb.add(0, ram.size());
    auto* z = static_cast<unsigned char*>(mb.alloc(1000, 64));
    BOOST_REQUIRE(z != nullptr);
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(z) % 64 == 0u);
    BOOST_TEST((z >= reinterpret_cast<unsigned char*>(ram.data()) &&
                z + 1000 <= reinterpret_cast<unsigned char*>(ram.data()) + ram.size()));
    BOOST_TEST(std::all_of(z, z + 1000, [](unsigned char c) { return c == 0; }));
    auto* r = static_cast<unsigned char*>(mb.alloc_raw(500, 8));
    BOOST_REQUIRE(r != nullptr);
    BOOST_TEST(std::all_of(r, r + 500, [](unsigned char c) { return c == 0xab; }));
    BOOST_TEST(r + 500 <= z); // top-down: below the first one
    BOOST_TEST(mb.is_region_reserved(
        static_cast<std::uint64_t>(z - reinterpret_cast<unsigned char*>(ram.data())), 1000));
    BOOST_TEST(z - (r + 500) == 4); // 500 bytes aligned to 8 below an address aligned to 64
    BOOST_TEST(mb.reserved_size() == 1500u);
    BOOST_TEST(mb.reserved().size() == 2u);
}

BOOST_AUTO_TEST_CASE(alloc_from_prefers_above_its_minimum) {
    kmem::MmapRegion ram(std::size_t{1} << 20);
    HostMemblock mb(ram);
    mb.add(0, ram.size());
    mb.set_bottom_up(true);
    std::byte* const base = ram.data();
    auto* p = static_cast<std::byte*>(mb.alloc_from(0x1000, 0x1000, 0x80000));
    BOOST_TEST(p == base + 0x80000);
    mb.reserve(0x81000, ram.size() - 0x81000); // nothing left above the minimum
    auto* q = static_cast<std::byte*>(mb.alloc_from(0x1000, 0x1000, 0x80000));
    BOOST_TEST(q == base); // retried without the lower limit
    BOOST_TEST(mb.alloc_from(0x100000, 0x1000, 0x80000) == nullptr);
}

BOOST_AUTO_TEST_CASE(free_gives_early_memory_back) {
    kmem::MmapRegion ram(std::size_t{1} << 20);
    HostMemblock mb(ram);
    mb.add(0, ram.size());
    void* p = mb.alloc(0x3000, 0x1000);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(mb.reserved_size() == 0x3000u);
    BOOST_TEST(mb.free(static_cast<std::byte*>(p) + 0x1000, 0x1000)); // the middle page
    BOOST_TEST(mb.reserved().size() == 2u);
    BOOST_TEST(mb.free(p, 0x1000));
    BOOST_TEST(mb.free(nullptr, 0x1000));
    expect_error(mb, ErrorKind::double_free, [&] { mb.free(p, 0x1000); });
    int outside = 0;
    expect_error(
        mb, ErrorKind::out_of_region, [&] { mb.free(&outside, sizeof outside); }, "outside the region");
    BOOST_TEST(mb.free(static_cast<std::byte*>(p) + 0x2000, 0x1000));
    BOOST_TEST(mb.reserved().empty());
    BOOST_TEST(mb.alloc(0x3000, 0x1000) == p); // the same place again
}

BOOST_AUTO_TEST_CASE(alignment_on_an_unaligned_span) {
    std::vector<std::byte> buffer(20000);
    kmem::SpanRegion span(std::span<std::byte>(buffer).subspan(3, 10000));
    kmem::Memblock<kmem::SpanRegion, 256, kmem::policy::ThrowOnError> mb(span);
    mb.add(0, span.size());
    for (const std::uint64_t align : {1u, 2u, 16u, 64u, 256u}) {
        void* p = mb.alloc(100, align);
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) % align == 0u);
        BOOST_TEST((static_cast<std::byte*>(p) >= span.data() &&
                    static_cast<std::byte*>(p) + 100 <= span.data() + span.size()));
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(memblock_hand_off)

BOOST_AUTO_TEST_CASE(placed_page_tables_are_checked) {
    alignas(16) std::byte storage[16 * 10 + 16];
    BOOST_CHECK_THROW((kmem::PageTable<4096>(0, 11, std::span<std::byte>(storage, 16 * 10))),
                      std::invalid_argument);
    BOOST_CHECK_THROW((kmem::PageTable<4096>(0, 10, std::span<std::byte>(storage + 1, 16 * 10))),
                      std::invalid_argument);
    kmem::PageTable<4096> table(5, 10, std::span<std::byte>(storage, sizeof storage));
    BOOST_TEST(table.in_caller_storage());
    BOOST_TEST(table.size() == 10u);
    BOOST_TEST(static_cast<void*>(&table[0]) == static_cast<void*>(storage));
    BOOST_TEST(table.pfn_to_page(7).flags() == 0u);
    kmem::PageTable<4096> moved(std::move(table));
    BOOST_TEST(moved.in_caller_storage());
    BOOST_TEST(!kmem::PageTable<4096>(0, 4).in_caller_storage());
    // A MemMap checks that the table covers exactly the region's whole pages.
    kmem::StaticRegion<4096 * 8> region;
    const std::uint64_t first = region.base() >> 12;
    BOOST_CHECK_THROW(
        (kmem::MemMap<kmem::StaticRegion<4096 * 8>&, 4096>(kmem::PageTable<4096>(first, 7), region)),
        std::invalid_argument);
    BOOST_CHECK_THROW(
        (kmem::MemMap<kmem::StaticRegion<4096 * 8>&, 4096>(kmem::PageTable<4096>(first + 1, 8), region)),
        std::invalid_argument);
    kmem::MemMap<kmem::StaticRegion<4096 * 8>&, 4096> map(kmem::PageTable<4096>(first, 8), region);
    BOOST_TEST(map.size() == 8u);
}

BOOST_AUTO_TEST_CASE(every_page_is_accounted_for_on_an_offset_region) {
    // Memory with holes and edges inside pages; reservations inside pages; a base that is not page aligned.
    constexpr std::uint64_t base = 0x10000 + 0x800;
    constexpr std::uint64_t size = 64 * 4096;
    OffsetMemblock mb(size, base);
    mb.add(0x100, 20 * 4096);            // starts inside the first (partial) page
    mb.add(24 * 4096 + 0x10, 30 * 4096); // a hole of 4 pages, an edge inside a page
    mb.add(60 * 4096, 4 * 4096);         // the last, partial page
    mb.reserve(5 * 4096 + 0x7ff, 2);     // two bytes across a page boundary (absolute)
    mb.reserve(30 * 4096, 3 * 4096 + 1);
    const auto early = mb.phys_alloc(5000, 64); // top-down: inside the last memory range
    BOOST_REQUIRE(early.has_value());
    using Map = kmem::MemMap<kmem::OffsetRegion, 4096>;
    Map map(size, base);
    // Expected: a page is released when all its bytes are memory and none is reserved.
    std::vector<bool> expect_free(map.size());
    std::uint64_t expected_released = 0;
    for (std::uint64_t i = 0; i < map.size(); ++i) {
        const std::uint64_t off = ((map.first_pfn() + i) << 12) - base;
        expect_free[i] = mb.is_region_memory(off, 4096) && !mb.is_region_reserved(off, 4096);
        expected_released += expect_free[i];
    }
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(mb.finished());
    BOOST_TEST(done.released_pages == expected_released);
    BOOST_TEST(done.released_pages + done.reserved_pages == map.size());
    BOOST_TEST(map.reserved_pages() == done.reserved_pages);
    for (std::uint64_t i = 0; i < map.size(); ++i)
        BOOST_TEST(map[i].test(kmem::PageFlag::reserved) == !expect_free[i], "page " << i);
    kmem::BuddyAllocator<10, 4096, Map&, kmem::policy::ThrowOnError> buddy(map);
    BOOST_TEST(buddy.nr_free_pages() == expected_released);
    BOOST_TEST(buddy.total_pages() == expected_released);
    BOOST_TEST(buddy.check_invariants() == "");
    std::vector<std::uint64_t> taken;
    while (const auto off = buddy.alloc_offset(kmem::gfp::kernel | kmem::gfp::nowarn, 0))
        taken.push_back(*off);
    BOOST_TEST(taken.size() == expected_released);
    for (const std::uint64_t off : taken) {
        const kmem::Page* p = map.offset_to_page(off);
        BOOST_TEST(expect_free[map.page_to_pfn(p) - map.first_pfn()], "offset " << off << " was handed out");
    }
    for (const std::uint64_t off : taken) buddy.free_offset(off, 0);
    BOOST_TEST(buddy.nr_free_pages() == expected_released);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(host_memory_with_the_page_table_inside) {
    kmem::MmapRegion ram(std::size_t{8} << 20); // 2048 pages
    HostMemblock mb(ram);
    mb.add(0, std::uint64_t{6} << 20);
    mb.add(std::uint64_t{7} << 20, std::uint64_t{1} << 20); // a hole of 256 pages
    mb.reserve(0, 10000);                                   // firmware, ending inside page 2
    // Early allocations, with recognisable contents.
    auto* a = static_cast<unsigned char*>(mb.alloc(5000, 64)); // top-down
    mb.set_bottom_up(true);
    auto* b = static_cast<unsigned char*>(mb.alloc(3 * 4096 + 1, 4096));
    auto* c = static_cast<unsigned char*>(mb.alloc_raw(100, 8));
    BOOST_REQUIRE((a != nullptr && b != nullptr && c != nullptr));
    std::memset(a, 0xa1, 5000);
    std::memset(b, 0xb2, 3 * 4096 + 1);
    std::memset(c, 0xc3, 100);
    // The buddy allocator's page descriptors, from memblock, inside the region (bottom-up now: low).
    kmem::PageTable<4096> table = mb.alloc_mem_map();
    BOOST_TEST(table.in_caller_storage());
    const auto table_at = reinterpret_cast<std::byte*>(&table[0]);
    BOOST_TEST((table_at >= ram.data() && table_at + table.metadata_bytes() <= ram.data() + ram.size()));
    const auto table_off = static_cast<std::uint64_t>(table_at - ram.data());
    BOOST_TEST(mb.is_region_reserved(table_off, table.metadata_bytes()));
    BOOST_TEST(table.metadata_bytes() == 2048u * sizeof(kmem::Page));
    HostMap map(std::move(table), ram);
    BOOST_TEST(map.size() == 2048u);
    BOOST_TEST(map.page_table().in_caller_storage());

    std::vector<bool> expect_free(map.size());
    std::uint64_t expected_released = 0;
    for (std::uint64_t i = 0; i < map.size(); ++i) {
        expect_free[i] = mb.is_region_memory(i * 4096, 4096) && !mb.is_region_reserved(i * 4096, 4096);
        expected_released += expect_free[i];
    }
    BOOST_TEST(expected_released < 2048u - 256u - 3u); // the hole, the firmware and the early allocations
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(done.released_pages == expected_released);
    BOOST_TEST(done.released_pages + done.reserved_pages == map.size());

    HostBuddy buddy(map);
    BOOST_TEST(buddy.nr_free_pages() == expected_released);
    BOOST_TEST(buddy.total_pages() == expected_released);
    BOOST_TEST(buddy.check_invariants() == "");
    const std::string initial = buddy.buddyinfo();

    // Take everything the buddy allocator has and scribble over it: early memory and descriptors must survive.
    std::vector<std::pair<void*, unsigned>> taken;
    for (unsigned order = 10;; order = order == 0 ? 0 : order - 1) {
        void* p = buddy.get_free_pages(kmem::gfp::kernel | kmem::gfp::nowarn, order);
        if (p == nullptr) {
            if (order == 0) break;
            continue;
        }
        std::memset(p, 0xee, std::size_t{4096} << order);
        taken.emplace_back(p, order);
        const auto i = static_cast<std::uint64_t>(static_cast<std::byte*>(p) - ram.data()) / 4096;
        for (std::uint64_t k = 0; k < (std::uint64_t{1} << order); ++k)
            BOOST_TEST(expect_free[i + k], "page " << i + k << " was handed out");
    }
    BOOST_TEST(buddy.nr_free_pages() == 0u);
    BOOST_TEST(std::all_of(a, a + 5000, [](unsigned char x) { return x == 0xa1; }));
    BOOST_TEST(std::all_of(b, b + 3 * 4096 + 1, [](unsigned char x) { return x == 0xb2; }));
    BOOST_TEST(std::all_of(c, c + 100, [](unsigned char x) { return x == 0xc3; }));
    BOOST_TEST(buddy.check_invariants() == ""); // the descriptors inside the region are intact

    // An early allocation is not a block of the buddy allocator: freeing it there is a mistake.
    expect_error(buddy, ErrorKind::not_block_start, [&] { buddy.free_pages(b, 0); });
    for (const auto& [p, order] : taken) buddy.free_pages(p, order);
    BOOST_TEST(buddy.nr_free_pages() == expected_released);
    BOOST_TEST(buddy.buddyinfo() == initial);
    BOOST_TEST(buddy.check_invariants() == "");
    BOOST_TEST(std::all_of(b, b + 3 * 4096 + 1, [](unsigned char x) { return x == 0xb2; }));
}

BOOST_AUTO_TEST_CASE(a_large_offset_region_hands_off_cheaply) {
    // 1 GiB of device memory: memory is everything, a few reservations; nothing is walked page by page except
    // the reserved ranges (and the buddy allocator's own scan of the reserved flags).
    const std::uint64_t size = std::uint64_t{1} << 30;
    OffsetMemblock mb(size);
    mb.add(0, size);
    mb.reserve(0, 1 << 20);
    const auto fw = mb.phys_alloc(3 << 20, 1 << 20);
    BOOST_REQUIRE(fw.has_value());
    BOOST_TEST(*fw == size - (3 << 20));
    kmem::MemMap<kmem::OffsetRegion, 4096> map(size);
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(done.reserved_pages == 256u + 768u);
    BOOST_TEST(done.released_pages == size / 4096 - 1024);
    kmem::BuddyAllocator<10, 4096, kmem::MemMap<kmem::OffsetRegion, 4096>&> buddy(map);
    BOOST_TEST(buddy.nr_free_pages() == done.released_pages);
    BOOST_TEST(buddy.largest_free_order() == 10);
}

BOOST_AUTO_TEST_CASE(memblock_is_finished_after_the_hand_off) {
    OffsetMemblock mb(0x40000);
    mb.add(0, 0x40000);
    mb.reserve(0, 0x1000);
    kmem::MemMap<kmem::OffsetRegion, 4096> map(0x40000);
    BOOST_TEST(!mb.finished());
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(done.released_pages == 63u);
    // Reads still work (the kernel keeps memblock for debugfs with ARCH_KEEP_MEMBLOCK) ...
    BOOST_TEST(mb.finished());
    BOOST_TEST(show(mb.reserved()) == "[0,1000)");
    BOOST_TEST(mb.phys_mem_size() == 0x40000u);
    // ... every change is reported and does nothing.
    const char* ended = "ended by memblock_free_all";
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.add(0, 0x1000); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.remove(0, 0x1000); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.reserve(0x2000, 0x1000); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.phys_free(0, 0x1000); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.phys_alloc(0x1000, 0x1000); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.phys_alloc_range(0x1000, 0x1000, 0, 0x8000); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.set_bottom_up(true); }, ended);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { mb.set_current_limit(0x1000); }, ended);
    const auto again = expect_error(
        mb, ErrorKind::bad_parameter, [&] { (void)std::move(mb).free_all(map); }, ended);
    BOOST_TEST((again && again->operation == "memblock_free_all"));
    BOOST_TEST(!mb.bottom_up());
    BOOST_TEST(show(mb.reserved()) == "[0,1000)");
    BOOST_TEST(map.reserved_pages() == 1u);

    kmem::MmapRegion ram(0x40000);
    HostMemblock host(ram);
    host.add(0, ram.size());
    HostMap host_map(ram);
    std::move(host).free_all(host_map);
    expect_error(
        host, ErrorKind::bad_parameter, [&] { host.alloc(8, 8); }, ended);
    expect_error(
        host, ErrorKind::bad_parameter, [&] { host.alloc_raw(8, 8); }, ended);
    expect_error(
        host, ErrorKind::bad_parameter, [&] { host.alloc_from(8, 8, 0x1000); }, ended);
    expect_error(
        host, ErrorKind::bad_parameter, [&] { host.free(ram.data(), 8); }, ended);
    expect_error(
        host, ErrorKind::bad_parameter, [&] { (void)host.alloc_mem_map(); }, ended);
    BOOST_TEST(host.reserved().empty());
}

BOOST_AUTO_TEST_CASE(the_hand_off_refuses_a_map_over_another_region) {
    OffsetMemblock mb(0x40000, 0x100000);
    mb.add(0, 0x40000);
    kmem::MemMap<kmem::OffsetRegion, 4096> elsewhere(0x40000, 0x200000);
    kmem::MemMap<kmem::OffsetRegion, 4096> shorter(0x30000, 0x100000);
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { (void)std::move(mb).free_all(elsewhere); }, "same region");
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { (void)std::move(mb).free_all(shorter); }, "same region");
    BOOST_TEST(!mb.finished());
    BOOST_TEST(elsewhere.reserved_pages() == 0u);
    kmem::MemMap<kmem::OffsetRegion, 4096> same(0x40000,
                                                0x100000); // an equal offset range is the same region
    BOOST_TEST(std::move(mb).free_all(same).released_pages == 64u);
}

BOOST_AUTO_TEST_CASE(the_hand_off_refuses_descriptors_in_free_memory) {
    kmem::MmapRegion ram(std::size_t{1} << 20);
    HostMemblock mb(ram);
    mb.add(0, ram.size());
    kmem::PageTable<4096> table = mb.alloc_mem_map();
    const auto off = static_cast<std::uint64_t>(reinterpret_cast<std::byte*>(&table[0]) - ram.data());
    const std::uint64_t bytes = table.metadata_bytes();
    HostMap map(std::move(table), ram);
    BOOST_TEST(mb.phys_free(off, bytes)); // a mistake memblock cannot see ... until the hand-off
    expect_error(
        mb, ErrorKind::bad_parameter, [&] { (void)std::move(mb).free_all(map); }, "page descriptors");
    BOOST_TEST(!mb.finished());
    BOOST_TEST(map.reserved_pages() == 0u);
    BOOST_TEST(mb.reserve(off, bytes));
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(done.reserved_pages == 1u); // 256 descriptors of 16 bytes: one page
    HostBuddy buddy(map);
    BOOST_TEST(buddy.nr_free_pages() == 255u);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(an_owned_region_is_borrowed_by_the_map) {
    kmem::Memblock<kmem::StaticRegion<64 * 4096>, 4096, kmem::policy::ThrowOnError> mb;
    mb.add(0, mb.region().size());
    auto* word = static_cast<std::uint64_t*>(mb.alloc(sizeof(std::uint64_t), 8));
    BOOST_REQUIRE(word != nullptr);
    *word = 0x1234;
    using Map = kmem::MemMap<kmem::StaticRegion<64 * 4096>&, 4096>;
    Map map(mb.alloc_mem_map(), mb.region());
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(done.reserved_pages == 1u); // top-down: the word and the 1 KiB table share the top page
    kmem::BuddyAllocator<6, 4096, Map&, kmem::policy::ThrowOnError> buddy(map);
    BOOST_TEST(buddy.nr_free_pages() == 63u);
    std::vector<void*> pages;
    while (void* p = buddy.get_free_pages(kmem::gfp::kernel | kmem::gfp::nowarn | kmem::gfp::zero, 0))
        pages.push_back(p);
    BOOST_TEST(pages.size() == 63u);
    BOOST_TEST(*word == 0x1234u);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
// Model-based randomized test: random operations against two per-byte shadow bitmaps (memory, reserved).  After
// every operation the lists must be exactly the runs of the bitmaps and the free walks the runs of
// memory & !reserved; every allocation must return what a brute-force search of the bitmaps predicts (lowest or
// highest aligned fit); every mistake must be reported and change nothing.  Each round ends with the hand-off,
// checked page by page, and a buddy allocator over the map that must hand out exactly the free pages.
// ---------------------------------------------------------------------------------------------------------------

namespace {

constexpr std::size_t model_page = 64;
using ModelMemblock = kmem::Memblock<kmem::OffsetRegion, model_page, kmem::policy::ThrowOnError>;

class ShadowMemblock {
public:
    ShadowMemblock(std::uint64_t size, std::uint64_t base) : mem_(size), res_(size), base_(base) {}
    std::uint64_t size() const noexcept { return mem_.size(); }
    void set(std::vector<std::uint8_t>& v, std::uint64_t b, std::uint64_t s, std::uint8_t x) {
        std::fill(v.begin() + static_cast<std::ptrdiff_t>(b), v.begin() + static_cast<std::ptrdiff_t>(b + s),
                  x);
    }
    std::vector<std::uint8_t> mem_, res_;

    static std::string runs(const std::vector<std::uint8_t>& v) {
        std::string s;
        for (std::uint64_t i = 0; i < v.size();) {
            if (!v[i]) {
                ++i;
                continue;
            }
            std::uint64_t j = i;
            while (j < v.size() && v[j]) ++j;
            s += "[" + hex(i) + "," + hex(j) + ")";
            i = j;
        }
        return s;
    }
    std::vector<std::uint8_t> free_bytes() const {
        std::vector<std::uint8_t> f(mem_.size());
        for (std::size_t i = 0; i < f.size(); ++i) f[i] = mem_[i] && !res_[i];
        return f;
    }
    std::uint64_t count(const std::vector<std::uint8_t>& v) const {
        return static_cast<std::uint64_t>(std::count(v.begin(), v.end(), std::uint8_t{1}));
    }
    bool all(const std::vector<std::uint8_t>& v, std::uint64_t b, std::uint64_t s) const {
        return std::all_of(v.begin() + static_cast<std::ptrdiff_t>(b),
                           v.begin() + static_cast<std::ptrdiff_t>(b + s),
                           [](std::uint8_t x) { return x != 0; });
    }

    // The brute-force answer of an allocation: the lowest (bottom-up) or highest aligned offset whose bytes are all
    // free, inside [start, end) (end 0: the current limit), by trying every aligned offset.
    std::optional<std::uint64_t> expect_alloc(std::uint64_t size, std::uint64_t align, std::uint64_t start,
                                              std::uint64_t end, std::uint64_t limit, bool bottom_up) const {
        if (end == 0) end = limit;
        end = std::min<std::uint64_t>(end, mem_.size());
        if (start >= end || end - start < size) return std::nullopt;
        const std::vector<std::uint8_t> f = free_bytes();
        std::vector<std::uint64_t> prefix(f.size() + 1, 0);
        for (std::size_t i = 0; i < f.size(); ++i) prefix[i + 1] = prefix[i] + f[i];
        const auto fits = [&](std::uint64_t a) { return prefix[a + size] - prefix[a] == size; };
        std::optional<std::uint64_t> best;
        for (std::uint64_t a = start; a + size <= end; ++a) {
            if ((base_ + a) % align != 0 || !fits(a)) continue;
            if (bottom_up) return a;
            best = a;
        }
        return best;
    }

private:
    std::uint64_t base_;
};

struct ModelStats {
    std::uint64_t allocs = 0, failed_allocs = 0, frees = 0, mistakes = 0;
};

// One round: `ops` random operations on a fresh memblock, then the hand-off.
void run_memblock_round(kmem::test::Xoshiro256& rng, std::uint64_t size, std::uint64_t base, int ops,
                        ModelStats& stats) {
    ModelMemblock mb(size, base);
    ShadowMemblock shadow(size, base);
    if (rng.percent(50)) { // start with all of it as memory, as a machine with one RAM range does
        mb.add(0, size);
        shadow.set(shadow.mem_, 0, size, 1);
    }
    std::uint64_t limit = ModelMemblock::alloc_anywhere;
    bool bottom_up = false;
    const auto pos = [&] { // positions: often aligned to 16 or a page, so that ranges touch
        const std::uint64_t p = rng.below(size + 1);
        return rng.percent(40) ? p & ~std::uint64_t{15} : rng.percent(30) ? p & ~(model_page - 1) : p;
    };
    const auto len = [&](std::uint64_t at) {
        const std::uint64_t room = size - at;
        const std::uint64_t want = rng.percent(10) ? rng.below(size / 2 + 1) : rng.below(size / 16 + 1);
        return std::min(room, rng.percent(30) ? want & ~std::uint64_t{15} : want);
    };
    const auto expect_reported = [&](ErrorKind kind, auto&& call) {
        const std::vector<kmem::UsageError> errors = kmem::test::reported_errors(mb, call);
        const std::string problem = kmem::test::error_mismatch(errors, kind);
        BOOST_TEST(problem.empty(), problem);
        ++stats.mistakes;
    };
    for (int op = 0; op < ops; ++op) {
        const std::uint64_t kind = rng.below(100);
        if (kind < 18) { // memblock_add
            const std::uint64_t b = pos(), s = len(b);
            BOOST_TEST(mb.add(b, s));
            shadow.set(shadow.mem_, b, s, 1);
        } else if (kind < 24) { // memblock_remove
            const std::uint64_t b = pos(), s = len(b);
            BOOST_TEST(mb.remove(b, s));
            shadow.set(shadow.mem_, b, s, 0);
        } else if (kind < 38) { // memblock_reserve
            const std::uint64_t b = pos(),
                                s = rng.percent(50) ? std::min<std::uint64_t>(len(b), 200) : len(b);
            BOOST_TEST(mb.reserve(b, s));
            shadow.set(shadow.res_, b, s, 1);
        } else if (kind < 56) { // memblock_phys_free: often part of a reservation, sometimes anything
            std::uint64_t b = pos(), s = len(b);
            const auto res = mb.reserved();
            if (!res.empty() && rng.percent(70)) {
                const MemblockRegion r = res[rng.below(res.size())];
                b = rng.percent(50) ? r.base : r.base + rng.below(r.size);
                s = rng.percent(50) ? r.end() - b : 1 + rng.below(r.end() - b);
            }
            if (s == 0 || shadow.all(shadow.res_, b, s)) {
                BOOST_TEST(mb.phys_free(b, s));
                shadow.set(shadow.res_, b, s, 0);
                ++stats.frees;
            } else {
                expect_reported(ErrorKind::double_free, [&] { mb.phys_free(b, s); });
            }
        } else if (kind < 92) { // memblock_phys_alloc_range / memblock_phys_alloc
            const std::uint64_t sz = 1 + rng.below(rng.percent(80) ? 300 : size / 4);
            const std::uint64_t align = std::uint64_t{1} << rng.below(9);
            std::uint64_t start = 0, end = ModelMemblock::alloc_accessible;
            if (rng.percent(50)) {
                start = rng.below(size);
                end = rng.percent(20) ? ModelMemblock::alloc_anywhere : start + rng.below(size - start + 1);
            }
            if (rng.percent(10)) {
                bottom_up = !bottom_up;
                mb.set_bottom_up(bottom_up);
            }
            const std::optional<std::uint64_t> want =
                shadow.expect_alloc(sz, align, start, end, limit, bottom_up);
            const std::optional<std::uint64_t> got = (start == 0 && end == ModelMemblock::alloc_accessible)
                                                         ? mb.phys_alloc(sz, align)
                                                         : mb.phys_alloc_range(sz, align, start, end);
            BOOST_TEST((got == want), "allocation of "
                                          << sz << " aligned " << align << " in [" << start << ", " << end
                                          << ") " << (bottom_up ? "bottom-up" : "top-down") << ": got "
                                          << (got ? std::to_string(*got) : "none") << ", expected "
                                          << (want ? std::to_string(*want) : "none"));
            if (got) {
                BOOST_TEST((base + *got) % align == 0u);
                shadow.set(shadow.res_, *got, sz, 1);
                ++stats.allocs;
            } else {
                ++stats.failed_allocs;
            }
        } else if (kind < 94) { // memblock_set_current_limit
            limit = rng.percent(30) ? ModelMemblock::alloc_anywhere : rng.below(size + 1);
            mb.set_current_limit(limit);
        } else { // mistakes: they are reported and change nothing
            const std::uint64_t b = rng.below(size + 1);
            const std::uint64_t s = size - b + 1 + rng.below(size);
            switch (rng.below(5)) {
            case 0:
                expect_reported(ErrorKind::out_of_region, [&] { mb.add(b, s); });
                break;
            case 1:
                expect_reported(ErrorKind::out_of_region, [&] { mb.reserve(b, s); });
                break;
            case 2:
                expect_reported(ErrorKind::out_of_region, [&] { mb.remove(b, s); });
                break;
            case 3:
                expect_reported(ErrorKind::bad_alignment, [&] { mb.phys_alloc(8, 3 + 2 * rng.below(20)); });
                break;
            default:
                expect_reported(ErrorKind::bad_parameter, [&] { mb.phys_alloc(0, 8); });
                break;
            }
        }
        // The lists are exactly the runs of the bitmaps, the totals their counts, the walks the free runs.
        const std::string want_free = ShadowMemblock::runs(shadow.free_bytes());
        BOOST_TEST(show(mb.memory()) == ShadowMemblock::runs(shadow.mem_), "after operation " << op);
        BOOST_TEST(show(mb.reserved()) == ShadowMemblock::runs(shadow.res_), "after operation " << op);
        BOOST_TEST(mb.phys_mem_size() == shadow.count(shadow.mem_));
        BOOST_TEST(mb.reserved_size() == shadow.count(shadow.res_));
        BOOST_TEST(show(mb.free_mem_ranges()) == want_free, "after operation " << op);
        std::vector<MemblockRegion> reverse;
        for (const MemblockRegion r : mb.free_mem_ranges_reverse()) reverse.push_back(r);
        std::reverse(reverse.begin(), reverse.end());
        BOOST_TEST(show(reverse) == want_free, "after operation " << op);
        if (!mb.memory().empty()) {
            BOOST_TEST(mb.start_of_dram() == mb.memory().front().base);
            BOOST_TEST(mb.end_of_dram() == mb.memory().back().end());
        }
    }

    // The hand-off: a page is released exactly when all its bytes are free.
    using Map = kmem::MemMap<kmem::OffsetRegion, model_page>;
    Map map(size, base);
    const std::vector<std::uint8_t> f = shadow.free_bytes();
    std::vector<bool> page_free(map.size());
    std::uint64_t released = 0;
    for (std::uint64_t i = 0; i < map.size(); ++i) {
        const std::uint64_t off = (map.first_pfn() + i) * model_page - base;
        page_free[i] = shadow.all(f, off, model_page);
        released += page_free[i];
    }
    const kmem::MemblockHandOff done = std::move(mb).free_all(map);
    BOOST_TEST(done.released_pages == released);
    BOOST_TEST(done.released_pages + done.reserved_pages == map.size());
    for (std::uint64_t i = 0; i < map.size(); ++i)
        BOOST_TEST(map[i].test(kmem::PageFlag::reserved) == !page_free[i], "page " << i);
    expect_reported(ErrorKind::bad_parameter, [&] { mb.phys_alloc(8, 8); });

    kmem::BuddyAllocator<3, model_page, Map&, kmem::policy::ThrowOnError> buddy(map);
    BOOST_TEST(buddy.nr_free_pages() == released);
    BOOST_TEST(buddy.check_invariants() == "");
    std::vector<std::uint64_t> taken;
    while (const auto off = buddy.alloc_offset(kmem::gfp::kernel | kmem::gfp::nowarn, 0)) {
        BOOST_TEST(shadow.all(f, *off, model_page), "offset " << *off << " was handed out");
        taken.push_back(*off);
    }
    BOOST_TEST(taken.size() == released);
    for (const std::uint64_t off : taken) buddy.free_offset(off, 0);
    BOOST_TEST(buddy.nr_free_pages() == released);
    BOOST_TEST(buddy.check_invariants() == "");
}

} // namespace

BOOST_AUTO_TEST_SUITE(memblock_model)

BOOST_AUTO_TEST_CASE(random_operations_against_shadow_bitmaps) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        kmem::test::Xoshiro256 rng(seed);
        ModelStats stats;
        // Regions of about 6 KiB at bases that are not page aligned (partial pages at both ends).
        for (int round = 0; round < 5; ++round) {
            const std::uint64_t size = 4096 + rng.below(4096);
            const std::uint64_t base = 0x100000 * (1 + rng.below(16)) + rng.below(4 * model_page);
            run_memblock_round(rng, size, base, 1200, stats);
        }
        BOOST_TEST_MESSAGE("allocations: " << stats.allocs << " (" << stats.failed_allocs
                                           << " failed), frees: " << stats.frees
                                           << ", mistakes: " << stats.mistakes);
        BOOST_TEST(stats.allocs > 300u); // the mix exercises every path
        BOOST_TEST(stats.failed_allocs > 50u);
        BOOST_TEST(stats.frees > 250u);
        BOOST_TEST(stats.mistakes > 80u);
    }
}

BOOST_AUTO_TEST_SUITE_END()
