/// @file
/// The page allocation API (the kernel's alloc_pages / __get_free_pages / get_zeroed_page / alloc_pages_exact /
/// free_pages family of include/linux/gfp.h), written once for every page allocator.
///
/// `PageApi<Derived>` is a CRTP base in the style of LLVM's AllocatorBase: it documents the interface, checks
/// GFP flags against the allocator's capabilities (at compile time for gfp::Flags types, at run time for gfp_t),
/// and funnels every typed overload into a few primitives of Derived:
///
/// | primitive                                     | does                                                       |
/// |-----------------------------------------------|------------------------------------------------------------|
/// | `Page* alloc_core(bits, order, Placement)`    | allocate a block; failures counted and reported there      |
/// | `void free_core(index, order, op)`            | validate and free a block given by a caller                |
/// | `Page* alloc_exact_core(bits, bytes)`         | alloc_pages_exact                                          |
/// | `void free_exact_core(index, bytes, op)`      | free_pages_exact                                           |
/// | `void get_page_core / put_page_core(Page*)`   | reference counting                                         |
/// | `void split_page_core(Page*, order)`          | split_page                                                 |
/// | `mem_map()`, `report(Diagnosis)`              | the memory map and the error policy                        |
///
/// and Derived declares `max_order`, `page_size`, `may_sleep` and `zone` (and `addressable`, also given to PageApi).  BuddyAllocator is one
/// such allocator; zones and nodes will be others, offering exactly this API.
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> buddy(kmem::MmapRegion(8 << 20));
///   void* buf = buddy.alloc_pages_exact(3 * 4096, kmem::gfp::kernel);   // 3 pages; the 4th goes back at once
///   assert(buddy.nr_free_pages() == buddy.total_pages() - 3);
///   buddy.free_pages_exact(buf, 3 * 4096);
///   auto off = buddy.alloc_offset(kmem::gfp::kernel, 2);                 // by offset, as device memory is
///   buddy.free_offset(*off, 2);
/// @endcode
#pragma once

#include <kmem/detail/reports.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/zone.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kmem {

/// The smallest order whose block of `PageSize << order` bytes holds `bytes` (the kernel's get_order()).
/// get_order(0) is 0.
template <std::size_t PageSize>
constexpr unsigned get_order(std::uint64_t bytes) noexcept {
    if (bytes <= PageSize) return 0;
    const std::uint64_t pages = (bytes - 1) / PageSize + 1;
    return static_cast<unsigned>(std::bit_width(pages - 1));
}

/// Where in the region a block may be placed: a byte range relative to the region's start, and the direction.
/// Mirrors drm_buddy's range and top-down allocation.
struct Placement {
    std::uint64_t start = 0;               ///< First byte offset the block may cover.
    std::uint64_t end = ~std::uint64_t{0}; ///< One past the last byte offset the block may cover.
    bool top_down = false;                 ///< Take the highest fitting block instead of the lowest.
    /// True when the placement restricts nothing and is bottom-up: such a request takes the plain O(1) path
    /// (any fitting block, from the smallest non-empty order); others scan for the lowest / highest fit.
    constexpr bool unrestricted() const noexcept {
        return !top_down && start == 0 && end == ~std::uint64_t{0};
    }
};

/// The kernel's page allocation API over a page allocator `Derived` (CRTP; see the file comment); `Addressable`
/// is Derived's capability of that name (a template parameter, because Derived is incomplete here).
template <class Derived, bool Addressable>
class PageApi {
public:
    /// True when the allocator's region holds host memory, so the address forms of the API exist.
    static constexpr bool addressable = Addressable;

    // ----- allocation by page ------------------------------------------------------------------------------

    /// Allocates 2^order contiguous pages (alloc_pages); returns the first page's descriptor, or nullptr when no
    /// block is free or the order is above MaxOrder.  The flags are checked at compile time against every GFP
    /// rule and this allocator's zone, lock and region.
    template <std::uint32_t B>
    Page* alloc_pages(gfp::Flags<B> flags, unsigned order) {
        check_flags(flags);
        return self().alloc_core(B, order, Placement{});
    }
    /// alloc_pages() with a constant order: an order above MaxOrder, or __GFP_NOFAIL above order 1, is a compile
    /// error.
    template <unsigned Order, std::uint32_t B>
    Page* alloc_pages(gfp::Flags<B> flags) {
        static_assert(Order <= Derived::max_order, "the requested order is above this allocator's MaxOrder.");
        gfp::check_order<Order>(flags);
        check_flags(flags);
        return self().alloc_core(B, Order, Placement{});
    }
    /// alloc_pages() from a call site that declares its context; flags that may sleep are a compile error from
    /// AtomicContext.
    template <CallContext C, std::uint32_t B>
    Page* alloc_pages(C ctx, gfp::Flags<B> flags, unsigned order) {
        gfp::check_context(ctx, flags);
        return alloc_pages(flags, order);
    }
    /// alloc_pages() restricted to a byte range of the region and/or placed top-down (drm_buddy range and
    /// top-down allocation).  O(number of free blocks).
    template <std::uint32_t B>
    Page* alloc_pages(gfp::Flags<B> flags, unsigned order, Placement where) {
        check_flags(flags);
        return self().alloc_core(B, order, where);
    }
    /// alloc_pages() with flags known only at run time; broken rules are reported through the error policy
    /// (ErrorKind::invalid_gfp) and the call returns nullptr.
    Page* alloc_pages(gfp_t flags, unsigned order, std::optional<Placement> where = std::nullopt) {
        if (!runtime_flags_ok(flags, flags.validate(), "alloc_pages")) return nullptr;
        return self().alloc_core(flags.value(), order, where.value_or(Placement{}));
    }

    /// Frees a block allocated with alloc_pages (__free_pages): drops one reference and, if it was the last,
    /// returns the block and merges it with free buddies (with per-CPU page lists, a small block goes on the
    /// calling CPU's list instead, unmerged: free_unref_page).  A bad page, a wrong order or a double free is
    /// reported through the error policy and changes nothing.
    void free_pages(Page* page, unsigned order) {
        const auto i = self().mem_map().index_of(page);
        if (i == Page::nil) [[unlikely]]
            return self().report(self().mem_map().diagnose_page("free_pages"));
        self().free_core(i, order, "free_pages");
    }
    /// Takes one more reference on an allocated block (get_page); a tail page's reference goes to its head.
    /// A page that is not allocated is reported (ErrorKind::bad_refcount) and left alone.
    void get_page(Page* page) { self().get_page_core(page); }
    /// Drops one reference on a block's first page and frees the block when it was the last (put_page); a free
    /// page is reported (ErrorKind::bad_refcount).
    void put_page(Page* page) { self().put_page_core(page); }
    /// Splits an allocated non-compound block of 2^order pages into 2^order independent order-0 pages, each
    /// with its own reference (split_page).
    void split_page(Page* page, unsigned order) { self().split_page_core(page, order); }
    /// The first page of a compound page, or `page` itself (compound_head).
    Page* compound_head(Page* page) const noexcept {
        return page->test(PageFlag::tail) ? &self().mem_map()[detail::PageAccess::head_index(*page)] : page;
    }
    /// The order of a compound page's head, 0 for other pages (compound_order).
    unsigned compound_order(const Page* page) const noexcept {
        return page->test(PageFlag::head) ? page->order() : 0;
    }

    // ----- allocation by address (addressable regions) ----------------------------------------------------

    /// Allocates 2^order pages and returns their address, or nullptr (__get_free_pages).
    template <std::uint32_t B>
    requires addressable void* get_free_pages(gfp::Flags<B> flags, unsigned order) {
        return address_or_null(alloc_pages(flags, order));
    }
    /// __get_free_pages() with run-time flags.
    void* get_free_pages(gfp_t flags, unsigned order) requires addressable {
        return address_or_null(alloc_pages(flags, order));
    }
    /// Allocates one page and returns its address (__get_free_page).
    template <std::uint32_t B>
    requires addressable void* get_free_page(gfp::Flags<B> flags) { return get_free_pages(flags, 0); }
    /// Allocates one zeroed page and returns its address (get_zeroed_page).
    template <std::uint32_t B>
    requires addressable void* get_zeroed_page(gfp::Flags<B> flags) {
        return get_free_pages(flags | gfp::zero, 0);
    }
    /// Frees 2^order pages at `addr` (free_pages(addr, order)); nullptr is ignored, as in the kernel.
    void free_pages(void* addr, unsigned order) requires addressable {
        if (addr == nullptr) return;
        const auto i = self().mem_map().index_of_address(addr);
        if (i == Page::nil) [[unlikely]]
            return self().report(self().mem_map().diagnose_address(addr, "free_pages"));
        self().free_core(i, order, "free_pages");
    }
    /// Frees one page at `addr` (free_page).
    void free_page(void* addr) requires addressable { free_pages(addr, 0); }

    /// Allocates exactly ceil(bytes / PageSize) contiguous pages and returns the unused tail of the power-of-two
    /// block at once (alloc_pages_exact); each page is then an order-0 page.  Returns nullptr on failure.  An
    /// exact allocation is neither compound nor highmem: gfp::comp or gfp::highmem is a compile error.
    template <std::uint32_t B>
    requires addressable void* alloc_pages_exact(std::size_t bytes, gfp::Flags<B> flags) {
        gfp::check_exact(flags);
        check_flags(flags);
        return address_or_null(self().alloc_exact_core(B, bytes));
    }
    /// alloc_pages_exact() with run-time flags: broken rules, gfp::comp and gfp::highmem included, are reported
    /// (ErrorKind::invalid_gfp) and the call returns nullptr.
    void* alloc_pages_exact(std::size_t bytes, gfp_t flags) requires addressable {
        if (!runtime_flags_ok(flags, flags.validate_exact(), "alloc_pages_exact")) return nullptr;
        return address_or_null(self().alloc_exact_core(flags.value(), bytes));
    }
    /// Frees memory from alloc_pages_exact (free_pages_exact); `bytes` must be the size asked for.
    void free_pages_exact(void* addr, std::size_t bytes) requires addressable {
        const auto i = self().mem_map().index_of_address(addr);
        if (i == Page::nil) [[unlikely]]
            return self().report(self().mem_map().diagnose_address(addr, "free_pages_exact"));
        self().free_exact_core(i, bytes, "free_pages_exact");
    }

    // ----- allocation by offset (any region, the form offset-only regions use) ----------------------------

    /// Allocates 2^order pages and returns the byte offset of the block from the region's start, or
    /// std::nullopt (for device memory: the offset is the block's device address minus base()).
    template <std::uint32_t B>
    std::optional<std::uint64_t> alloc_offset(gfp::Flags<B> flags, unsigned order, Placement where = {}) {
        Page* p = alloc_pages(flags, order, where);
        if (p == nullptr) return std::nullopt;
        return self().mem_map().page_offset(p);
    }
    /// Frees the block of 2^order pages at byte offset `offset` (free_pages by offset).
    void free_offset(std::uint64_t offset, unsigned order) {
        const auto i = self().mem_map().index_of_offset(offset);
        if (i == Page::nil) [[unlikely]]
            return self().report(self().mem_map().diagnose_offset(offset, "free_offset"));
        self().free_core(i, order, "free_offset");
    }
    /// Allocates exactly ceil(bytes / PageSize) pages by offset (alloc_pages_exact for offset-only regions).
    template <std::uint32_t B>
    std::optional<std::uint64_t> alloc_offset_exact(std::size_t bytes, gfp::Flags<B> flags) {
        gfp::check_exact(flags);
        check_flags(flags);
        Page* p = self().alloc_exact_core(B, bytes);
        if (p == nullptr) return std::nullopt;
        return self().mem_map().page_offset(p);
    }
    /// Frees pages from alloc_offset_exact.
    void free_offset_exact(std::uint64_t offset, std::size_t bytes) {
        const auto i = self().mem_map().index_of_offset(offset);
        if (i == Page::nil) [[unlikely]]
            return self().report(self().mem_map().diagnose_offset(offset, "free_offset_exact"));
        self().free_exact_core(i, bytes, "free_offset_exact");
    }

    // ----- byte interface (used by the pmr adapter) --------------------------------------------------------

    /// Allocates at least `bytes` aligned to `align` (the block is naturally aligned to its size); nullptr on
    /// failure, including a size above the largest block.  Never throws for exhaustion.
    template <std::uint32_t B>
    requires addressable void* try_allocate(gfp::Flags<B> flags, std::size_t bytes, std::size_t align) {
        const std::uint64_t need = bytes > align ? bytes : align;
        const unsigned order = get_order<Derived::page_size>(need);
        if (order > Derived::max_order) {
            check_flags(flags);
            self().oversized(B, need);
            return nullptr;
        }
        return get_free_pages(flags, order);
    }
    /// Returns memory from try_allocate with the same size and alignment.
    void deallocate(void* p, std::size_t bytes, std::size_t align) requires addressable {
        free_pages(p, get_order<Derived::page_size>(bytes > align ? bytes : align));
    }

    // ----- conversions ---------------------------------------------------------------------------------------

    /// The descriptor of the page holding address `addr`, or nullptr when it is outside the region
    /// (virt_to_page).  O(1).
    Page* virt_to_page(const void* addr) const noexcept requires addressable {
        return self().mem_map().virt_to_page(addr);
    }
    /// The address of a page (page_address).  O(1).
    void* page_address(const Page* page) const noexcept requires addressable {
        return self().mem_map().page_address(page);
    }
    /// The page frame number of a page (page_to_pfn): its address (or device address) divided by PageSize.
    std::uint64_t page_to_pfn(const Page* page) const noexcept { return self().mem_map().page_to_pfn(page); }
    /// The descriptor of page frame `pfn`, or nullptr when it is not managed here (pfn_to_page).
    Page* pfn_to_page(std::uint64_t pfn) const noexcept { return self().mem_map().pfn_to_page(pfn); }
    /// The byte offset of a page from the region's start (base()).
    std::uint64_t page_offset(const Page* page) const noexcept { return self().mem_map().page_offset(page); }
    /// The descriptor of the page at byte offset `offset` from the region's start, or nullptr outside it.
    Page* offset_to_page(std::uint64_t offset) const noexcept {
        return self().mem_map().offset_to_page(offset);
    }

protected:
    PageApi() = default;

    /// The compile-time GFP checks: every rule of gfp::check, then this allocator's zone, lock and region.
    template <std::uint32_t B>
    static constexpr void check_flags(gfp::Flags<B> flags) noexcept {
        gfp::check(flags);
        static_assert(
            policy::zone_serves(Derived::zone, gfp::zone_of(B)),
            "the GFP zone modifier asks for a zone this allocator was not built with (e.g. gfp::dma on "
            "a ZONE_NORMAL allocator, or on a Node without ZONE_DMA: requests fall back only to lower "
            "zones); "
            "add that zone (policy::InZone, or a ZoneSpec of the Node) or drop the modifier.");
        static_assert(Derived::may_sleep || !gfp::may_sleep(B),
                      "these GFP flags may sleep (gfp::direct_reclaim) but this allocator's lock policy is a "
                      "non-sleeping spin lock; use gfp::atomic or gfp::nowait, or a sleeping lock.");
        static_assert(addressable || !(B & gfp::bits::zero),
                      "gfp::zero needs host memory to clear, but this allocator's region is offset-only.");
    }

private:
    Derived& self() noexcept { return static_cast<Derived&>(*this); }
    const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }

    void* address_or_null(Page* p) const noexcept {
        if constexpr (addressable)
            return p == nullptr ? nullptr : page_address(p);
        else
            return nullptr;
    }

    static std::string kernel_zone_name(ZoneType z) { // "ZONE_NORMAL", as the kernel's enum spells it
        std::string n = "ZONE_";
        for (char c : zone_name(z)) n += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
        return n;
    }
    // The run-time form of check_flags(): `problem` is what the flags' own rules found.
    bool runtime_flags_ok(gfp_t flags, gfp::Problem problem, std::string_view op) {
        std::string why;
        if (problem != gfp::Problem::none) {
            why = std::string(gfp::describe(problem));
        } else if (!policy::zone_serves(Derived::zone, flags.zone())) {
            why = "the flags ask for " + kernel_zone_name(flags.zone()) + " but this allocator manages " +
                  kernel_zone_name(Derived::zone) + ".";
        } else if (!Derived::may_sleep && flags.may_sleep()) {
            why = "these GFP flags may sleep but this allocator's lock policy is a non-sleeping spin lock.";
        } else if (!addressable && flags.has(gfp::zero)) {
            why = "gfp::zero needs host memory to clear, but this allocator's region is offset-only.";
        } else {
            return true;
        }
        self().error_policy().on_error(
            UsageError{ErrorKind::invalid_gfp, op, "mode:" + flags.to_string() + ": " + why});
        return false;
    }
};

} // namespace kmem
