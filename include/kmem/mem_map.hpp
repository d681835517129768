/// @file
/// The memory map (the kernel's mem_map with the conversions of include/asm-generic/memory_model.h and
/// include/linux/mm.h): a backing region plus the table of page descriptors that covers its whole pages, and
/// every conversion between a page descriptor, a page frame number, a host address and a byte offset.
///
/// A page allocator either owns its MemMap (it is given a Region type, or a reference to one to borrow the
/// region) or borrows one (it is given `MemMap<...>&`), so that several zones of a node can share one map and an
/// early allocator can mark ranges reserved (PG_reserved, memblock_reserve) before any page reaches a free list:
/// an allocator built over a map leaves reserved pages out of its free lists.
///
/// @code
///   kmem::MemMap<kmem::MmapRegion, 4096> map(kmem::MmapRegion(1 << 20));   // 256 pages and their descriptors
///   map.reserve(0, 8192);                                                 // the first two pages are firmware's
///   kmem::BuddyAllocator<8, 4096, kmem::MemMap<kmem::MmapRegion, 4096>&> buddy(map);
///   assert(buddy.nr_free_pages() == 254);
///   kmem::Page* page = map.virt_to_page(map.region().data());
///   assert(page->test(kmem::PageFlag::reserved) && map.page_address(page) == map.region().data());
/// @endcode
#pragma once

#include <kmem/detail/reports.hpp>
#include <kmem/page.hpp>
#include <kmem/region.hpp>

#include <bit>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace kmem {

/// A region and the page descriptors of its whole pages (mem_map), with the pfn / address / offset conversions.
/// `RegionParam` is a Region type (owned) or a reference to one (borrowed).
template <class RegionParam, std::size_t PageSize>
class MemMap {
public:
    /// The region type.
    using region_type = std::remove_cvref_t<RegionParam>;
    static_assert(Region<region_type>, "MemMap needs a Region type (or a reference to one).");
    static_assert(std::has_single_bit(PageSize) && PageSize >= 64,
                  "MemMap's PageSize must be a power of two of at least 64 bytes.");
    /// Bytes per page (PAGE_SIZE).
    static constexpr std::size_t page_size = PageSize;
    /// log2(PageSize) (PAGE_SHIFT).
    static constexpr unsigned page_shift = static_cast<unsigned>(std::countr_zero(PageSize));
    /// True when the region holds host memory, so pages have addresses.
    static constexpr bool addressable = region_type::addressable;
    /// The index of a page in the table (pfn - first_pfn()).
    using index_type = detail::page_index;

    /// Builds the map over a region constructed from `args` (or bound to one, for a borrowed region).
    template <class... Args>
    explicit MemMap(Args&&... args)
        : region_(std::forward<Args>(args)...), table_(first_pfn_of(region_), page_count_of(region_)) {}
    /// Builds the map over a region constructed from `args` (or bound to one) with its descriptors in `table`,
    /// a table whose descriptors live in caller storage: Memblock::alloc_mem_map() places it inside the region
    /// itself, as the kernel allocates mem_map from memblock.  Throws std::invalid_argument when the table does
    /// not cover exactly the region's whole pages (first_pfn_of() and page_count_of()).
    template <class... Args>
    explicit MemMap(PageTable<PageSize>&& table, Args&&... args)
        : region_(std::forward<Args>(args)...), table_(std::move(table)) {
        if (table_.first_pfn() != first_pfn_of(region_) || table_.size() != page_count_of(region_))
            throw std::invalid_argument(
                "kmem: the page table given to MemMap covers " + std::to_string(table_.size()) +
                " page frames from pfn " + std::to_string(table_.first_pfn()) +
                " but the region's whole pages are " + std::to_string(page_count_of(region_)) + " from pfn " +
                std::to_string(first_pfn_of(region_)));
    }
    MemMap(const MemMap&) = delete;            ///< Not copyable.
    MemMap& operator=(const MemMap&) = delete; ///< Not copyable.

    /// The region.
    const region_type& region() const noexcept { return region_; }
    /// The region, for operations that change it (e.g. map a memfd elsewhere).
    region_type& region() noexcept { return region_; }
    /// The page descriptor table.
    const PageTable<PageSize>& page_table() const noexcept { return table_; }
    /// The first page frame number covered (ARCH_PFN_OFFSET).
    std::uint64_t first_pfn() const noexcept { return table_.first_pfn(); }
    /// The number of page frames covered.
    std::uint64_t size() const noexcept { return table_.size(); }
    /// The descriptor at index `i`.
    Page& operator[](std::uint64_t i) const noexcept { return table_[i]; }
    /// The first descriptor (the table is contiguous).
    Page* pages() const noexcept { return table_.size() == 0 ? nullptr : &table_[0]; }

    /// Marks the pages overlapping the bytes [offset, offset + bytes) of the region PG_reserved
    /// (memblock_reserve), so an allocator built over this map later never hands them out.  Only before an
    /// allocator is built over the map.  Returns the number of pages marked.
    std::uint64_t reserve(std::uint64_t offset, std::uint64_t bytes) noexcept {
        if (bytes == 0 || offset >= region_.size()) return 0;
        const std::uint64_t end = bytes > region_.size() - offset ? region_.size() : offset + bytes;
        const std::uint64_t lo = (region_.base() + offset) >> page_shift;
        const std::uint64_t hi = (region_.base() + end + PageSize - 1) >> page_shift;
        std::uint64_t n = 0;
        for (std::uint64_t pfn = lo; pfn < hi; ++pfn) {
            if (!table_.contains_pfn(pfn)) continue;
            Page& p = table_.pfn_to_page(pfn);
            if (!p.test(PageFlag::reserved)) ++n;
            p.set(PageFlag::reserved);
        }
        reserved_ += n;
        return n;
    }
    /// The number of pages marked reserved.
    std::uint64_t reserved_pages() const noexcept { return reserved_; }

    // ----- conversions --------------------------------------------------------------------------------------

    /// The descriptor of the page holding `addr`, or nullptr outside the map (virt_to_page).  O(1).
    Page* virt_to_page(const void* addr) const noexcept requires addressable {
        return pfn_to_page(reinterpret_cast<std::uintptr_t>(addr) >> page_shift);
    }
    /// The address of a page (page_address).  O(1).
    void* page_address(const Page* page) const noexcept requires addressable {
        return reinterpret_cast<void*>(static_cast<std::uintptr_t>(page_to_pfn(page) << page_shift));
    }
    /// The page frame number of a descriptor of this map (page_to_pfn).
    std::uint64_t page_to_pfn(const Page* page) const noexcept { return table_.page_to_pfn(page); }
    /// The descriptor of page frame `pfn`, or nullptr when the map does not cover it (pfn_to_page).
    Page* pfn_to_page(std::uint64_t pfn) const noexcept {
        return table_.contains_pfn(pfn) ? &table_.pfn_to_page(pfn) : nullptr;
    }
    /// The byte offset of a page from the region's start.
    std::uint64_t page_offset(const Page* page) const noexcept {
        return (page_to_pfn(page) << page_shift) - region_.base();
    }
    /// The descriptor of the page at byte offset `offset`, or nullptr outside the map.
    Page* offset_to_page(std::uint64_t offset) const noexcept {
        return offset >= region_.size() ? nullptr : pfn_to_page((region_.base() + offset) >> page_shift);
    }

    // ----- checked lookups (an argument from a caller) ------------------------------------------------------
    // Each returns the page's index, or Page::nil when the argument is bad; the matching diagnose_* call then
    // says why (kept apart so that the common path builds no diagnosis).

    /// The index of `page`, or Page::nil when it is not a descriptor of this map.
    index_type index_of(const Page* page) const noexcept {
        if (page == nullptr || !table_.owns(page)) [[unlikely]]
            return Page::nil;
        return static_cast<index_type>(table_.page_to_pfn(page) - table_.first_pfn());
    }
    /// Why index_of() refused a page.
    static detail::Diagnosis diagnose_page(std::string_view op) noexcept {
        return {detail::Misuse::foreign_page, op};
    }
    /// The index of the page starting at host address `addr`, or Page::nil when `addr` is not page aligned or
    /// not covered.
    index_type index_of_address(const void* addr) const noexcept {
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        if ((a & (PageSize - 1)) != 0 || !table_.contains_pfn(a >> page_shift)) [[unlikely]]
            return Page::nil;
        return static_cast<index_type>((a >> page_shift) - table_.first_pfn());
    }
    /// Why index_of_address() refused `addr`.
    detail::Diagnosis diagnose_address(const void* addr, std::string_view op) const noexcept {
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        if ((a & (PageSize - 1)) != 0) return {detail::Misuse::address_unaligned, op, a, 0, 0, 0, PageSize};
        return {detail::Misuse::address_outside, op, a};
    }
    /// The index of the page starting at byte offset `offset`, or Page::nil when it is outside the region, not
    /// page aligned or not covered.
    index_type index_of_offset(std::uint64_t offset) const noexcept {
        if (offset >= region_.size()) [[unlikely]]
            return Page::nil;
        const std::uint64_t a = region_.base() + offset;
        if ((a & (PageSize - 1)) != 0 || !table_.contains_pfn(a >> page_shift)) [[unlikely]]
            return Page::nil;
        return static_cast<index_type>((a >> page_shift) - table_.first_pfn());
    }
    /// Why index_of_offset() refused `offset`.
    detail::Diagnosis diagnose_offset(std::uint64_t offset, std::string_view op) const noexcept {
        if (offset >= region_.size()) return {detail::Misuse::offset_outside, op, offset, region_.size()};
        if (((region_.base() + offset) & (PageSize - 1)) != 0)
            return {detail::Misuse::offset_unaligned, op, offset, 0, 0, 0, PageSize};
        return {detail::Misuse::offset_unmanaged, op, offset};
    }

    // ----- the pages a map covers ----------------------------------------------------------------------------

    /// The first page frame a map over `r` covers: its first whole page (rounded up without wrapping past 2^64).
    static std::uint64_t first_pfn_of(const region_type& r) noexcept {
        return (r.base() >> page_shift) + ((r.base() & (PageSize - 1)) != 0 ? 1 : 0);
    }
    /// The number of page frames a map over `r` covers: its whole pages.
    static std::uint64_t page_count_of(const region_type& r) noexcept {
        const std::uint64_t first = first_pfn_of(r);
        const std::uint64_t end = (r.base() + r.size()) >> page_shift;
        return end > first ? end - first : 0;
    }

private:
    RegionParam region_;
    PageTable<PageSize> table_;
    std::uint64_t reserved_ = 0;
};

/// True for MemMap types (and references to them): given as a BuddyAllocator policy, the allocator builds
/// (or, for a reference, borrows) that map instead of building one over a region.
template <class T>
inline constexpr bool is_mem_map = false;
/// True for MemMap types.
template <class R, std::size_t P>
inline constexpr bool is_mem_map<MemMap<R, P>> = true;

} // namespace kmem
