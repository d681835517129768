/// @file
/// The small arena the per-CPU page list tests share (pcp_lists_test.cpp, pcp_mistakes_test.cpp): 64 pages of
/// 4 KiB, MaxOrder 4 (four order-4 blocks), batch 4 and high 12, so that every refill and spill can be worked out
/// by hand; the allocator types over it; and the index helpers the tests use to name pages.
///
/// @code
///   using namespace kmem::test::pcp_arena;
///   OffPcp a(arena_bytes);
///   kmem::Page* p = a.alloc_pages(kmem::gfp::kernel, 0);   // page 0; pages 1..3 wait on the list
///   BOOST_TEST(idx(a, p) == 0u);
///   BOOST_TEST(a.nr_pcp_pages() == 3u);
/// @endcode
#pragma once

#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include <cstddef>
#include <cstdint>

namespace kmem::test::pcp_arena {

constexpr std::uint64_t MiB = std::uint64_t{1} << 20;
constexpr std::uint64_t GiB = std::uint64_t{1} << 30;
constexpr std::size_t ps = 4096;          ///< Page size.
constexpr unsigned max_order = 4;         ///< Blocks of 1..16 pages.
constexpr std::uint64_t arena_pages = 64; ///< Four order-4 blocks.
constexpr std::uint64_t arena_bytes = arena_pages * ps;
constexpr unsigned test_batch = 4; ///< pcp->batch of the arena's lists.
constexpr unsigned test_high = 12; ///< pcp->high of the arena's lists.

/// The arena's lists: orders 0..3 (PAGE_ALLOC_COSTLY_ORDER) on them.
using Lists = kmem::policy::PerCpuPages<test_batch, test_high>;
/// Offset-only, throwing on mistakes.
using OffPcp = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError, Lists>;
/// Host memory (mmap), throwing on mistakes.
using MemPcp = kmem::BuddyAllocator<max_order, ps, kmem::MmapRegion, kmem::policy::ThrowOnError, Lists>;
/// Offset-only, reporting mistakes to a callback.
using CbPcp = kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::CallbackOnError, Lists>;

/// mmap options aligning the region to the largest block, so its layout (and buddyinfo) is deterministic.
inline kmem::MmapOptions aligned() {
    return kmem::MmapOptions{.alignment = ps << max_order};
}

/// The page's index in the allocator (pfn - first pfn); equal to the pfn for an OffsetRegion at base 0.
template <class A>
std::uint64_t idx(const A& a, const Page* p) {
    return a.page_to_pfn(p) - a.page_table().first_pfn();
}
/// The descriptor of the page at `index` (pfn - first pfn).
template <class A>
Page* at(const A& a, std::uint64_t index) {
    return a.pfn_to_page(a.page_table().first_pfn() + index);
}

} // namespace kmem::test::pcp_arena
