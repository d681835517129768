/// @file
/// The binary buddy allocator (mm/page_alloc.c): power-of-two blocks of pages over any region.
///
/// Free blocks of each order sit on an intrusive list threaded through their page descriptors; a bitmap of
/// non-empty lists picks the order in O(1); a block's buddy is found by XOR of its page frame number; freeing
/// merges with free buddies up to MaxOrder.  Metadata lives in a side table, never in the region, so the same
/// allocator manages host memory (handing out pointers) and offset-only device memory (handing out offsets).
///
/// `BuddyAllocator<MaxOrder, PageSize, Policies...>`: MaxOrder is the largest order (MAX_PAGE_ORDER, inclusive),
/// PageSize the page size in bytes.  Policies, in any order: one Region type (owned, or borrowed when given as a
/// reference `R&`), a lock policy (policy::NoLock by default), an error policy (policy::AssertOnError by
/// default), a zone (policy::InZone, ZONE_NORMAL by default), and optionally policy::PerCpuPages, which puts
/// per-CPU page lists in front of the free lists (see policy/pcp.hpp).
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> buddy(kmem::MmapRegion(64 << 20));
///   kmem::Page* page = buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::zero, 2);  // 4 zeroed pages
///   static_cast<char*>(buddy.page_address(page))[0] = 'k';   // page_address
///   buddy.free_pages(page, 2);
///   void* one = buddy.get_free_pages(kmem::gfp::kernel, 0);                       // __get_free_pages
///   buddy.free_pages(one, 0);
///   std::cout << buddy.buddyinfo();   // Node 0, zone   Normal      0      0 ...
/// @endcode
#pragma once

#include <kmem/detail/cpu.hpp>
#include <kmem/detail/policies.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/policy/zone.hpp>
#include <kmem/region.hpp>

#include <array>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>

#include <unistd.h>

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
    std::uint64_t start = 0;                   ///< First byte offset the block may cover.
    std::uint64_t end = ~std::uint64_t{0};     ///< One past the last byte offset the block may cover.
    bool top_down = false;                     ///< Take the highest fitting block instead of the lowest.
    // A Placement that restricts nothing and is bottom-up takes the plain O(1) path (any fitting block, from the
    // smallest non-empty order); a restricted window or top_down scans for the lowest / highest fitting block.
};

/// A snapshot of a buddy allocator's counters (/proc/vmstat and /proc/buddyinfo figures).
template <unsigned MaxOrder>
struct BuddyStats {
    std::array<std::uint64_t, MaxOrder + 1> nr_free{}; ///< Free blocks per order (free_area[order].nr_free).
    std::uint64_t free_pages = 0;   ///< Free pages on the free lists (NR_FREE_PAGES; per-CPU lists excluded).
    std::uint64_t pcp_pages = 0;    ///< Pages held on per-CPU page lists (pcp->count summed); 0 without them.
    std::uint64_t total_pages = 0;  ///< Pages managed (managed_pages).
    std::uint64_t allocations = 0;  ///< Successful allocations (pgalloc).
    std::uint64_t frees = 0;        ///< Blocks returned (pgfree).
    std::uint64_t failures = 0;     ///< Allocations that failed (allocstall-like).
};

namespace detail {
template <class P>
struct is_region_policy : std::bool_constant<Region<std::remove_cvref_t<P>>> {};
template <class P>
struct is_lock_policy : std::bool_constant<policy::LockPolicy<P>> {};
template <class P>
struct is_error_policy : std::bool_constant<policy::ErrorPolicy<P>> {};
template <class P>
struct is_zone_policy : std::false_type {};
template <ZoneType Z>
struct is_zone_policy<policy::InZone<Z>> : std::true_type {};
template <class P>
struct is_pcp_policy : std::bool_constant<policy::is_per_cpu_pages<P>> {};
template <class P>
struct is_known_policy : std::bool_constant<is_region_policy<P>::value || is_lock_policy<P>::value ||
                                            is_error_policy<P>::value || is_zone_policy<P>::value ||
                                            is_pcp_policy<P>::value> {};
} // namespace detail

/// The binary buddy allocator over one region (the kernel's zone free_area and __alloc_pages / __free_pages).
template <unsigned MaxOrder, std::size_t PageSize, class... Policies>
class BuddyAllocator {
    static_assert(std::has_single_bit(PageSize) && PageSize >= 64,
                  "BuddyAllocator's PageSize must be a power of two of at least 64 bytes.");
    static_assert(MaxOrder <= 30, "BuddyAllocator's MaxOrder must be at most 30.");
    static_assert((detail::is_known_policy<Policies>::value && ...),
                  "a BuddyAllocator policy must be a Region, a lock policy, an error policy, policy::InZone or "
                  "policy::PerCpuPages.");
    static_assert(detail::count_policy<detail::is_region_policy, Policies...> == 1,
                  "BuddyAllocator needs exactly one Region policy (StaticRegion, SpanRegion, MmapRegion, "
                  "MemfdRegion, OffsetRegion, or a reference to one to borrow it).");
    static_assert(detail::count_policy<detail::is_lock_policy, Policies...> <= 1, "give at most one lock policy.");
    static_assert(detail::count_policy<detail::is_error_policy, Policies...> <= 1, "give at most one error policy.");
    static_assert(detail::count_policy<detail::is_zone_policy, Policies...> <= 1, "give at most one zone policy.");
    static_assert(detail::count_policy<detail::is_pcp_policy, Policies...> <= 1,
                  "give at most one policy::PerCpuPages.");
    using pcp_policy = detail::find_policy_t<detail::is_pcp_policy, policy::PerCpuPages<1, 1, 0>, Policies...>;

public:
    /// The region as given: a region type (owned) or a reference to one (borrowed).
    using region_param = detail::find_policy_t<detail::is_region_policy, detail::missing_policy, Policies...>;
    /// The region type.
    using region_type = std::remove_cvref_t<region_param>;
    /// The lock policy.
    using lock_type = detail::find_policy_t<detail::is_lock_policy, policy::NoLock, Policies...>;
    /// The error policy.
    using error_policy_type = detail::find_policy_t<detail::is_error_policy, policy::AssertOnError, Policies...>;
    /// The largest order (MAX_PAGE_ORDER); orders 0..max_order exist.
    static constexpr unsigned max_order = MaxOrder;
    /// Bytes per page (PAGE_SIZE).
    static constexpr std::size_t page_size = PageSize;
    /// log2(PageSize) (PAGE_SHIFT).
    static constexpr unsigned page_shift = static_cast<unsigned>(std::countr_zero(PageSize));
    /// The zone this allocator's memory belongs to.
    static constexpr ZoneType zone =
        detail::find_policy_t<detail::is_zone_policy, policy::InZone<ZoneType::normal>, Policies...>::zone;
    /// True when the region holds host memory, so pages have addresses.
    static constexpr bool addressable = region_type::addressable;
    /// True when holders of the lock may sleep, so GFP flags with direct reclaim are allowed.
    static constexpr bool may_sleep = lock_type::may_sleep;
    /// True when the allocator keeps per-CPU page lists (policy::PerCpuPages).
    static constexpr bool has_pcp = detail::count_policy<detail::is_pcp_policy, Policies...> == 1;
    /// The largest order served from the per-CPU page lists (PAGE_ALLOC_COSTLY_ORDER); meaningful with has_pcp.
    static constexpr unsigned pcp_max_order = pcp_policy::max_order < MaxOrder ? pcp_policy::max_order : MaxOrder;

    /// Builds the allocator over a region constructed from `args` (or bound to it, for a borrowed region);
    /// every whole, aligned page of the region goes on the free lists as the largest blocks that fit.
    template <class... Args>
    explicit BuddyAllocator(Args&&... args)
        : region_(std::forward<Args>(args)...), table_(first_pfn(region_), page_count(region_)) {
        populate();
        if constexpr (has_pcp) setup_pcp();
    }
    BuddyAllocator(const BuddyAllocator&) = delete;            ///< Not copyable.
    BuddyAllocator& operator=(const BuddyAllocator&) = delete; ///< Not copyable.

    // ----- allocation by page ------------------------------------------------------------------------------

    /// Allocates 2^order contiguous pages (alloc_pages); returns the first page's descriptor, or nullptr when no
    /// block is free.  The flags are checked at compile time against every GFP rule and this allocator's zone,
    /// lock and region.
    template <std::uint32_t B>
    Page* alloc_pages(gfp::Flags<B> flags, unsigned order) {
        check_flags(flags);
        return alloc_checked(B, order, Placement{});
    }
    /// alloc_pages() with a constant order: an order above MaxOrder, or __GFP_NOFAIL above order 1, is a compile
    /// error.
    template <unsigned Order, std::uint32_t B>
    Page* alloc_pages(gfp::Flags<B> flags) {
        static_assert(Order <= MaxOrder, "the requested order is above this allocator's MaxOrder.");
        gfp::check_order<Order>(flags);
        check_flags(flags);
        return alloc_checked(B, Order, Placement{});
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
        return alloc_checked(B, order, where);
    }
    /// alloc_pages() with flags known only at run time; broken rules are reported through the error policy
    /// (ErrorKind::invalid_gfp) and the call returns nullptr.
    Page* alloc_pages(gfp_t flags, unsigned order, std::optional<Placement> where = std::nullopt) {
        if (!runtime_flags_ok(flags, "alloc_pages")) return nullptr;
        return alloc_checked(flags.value(), order, where.value_or(Placement{}));
    }

    /// Frees a block allocated with alloc_pages (__free_pages): drops one reference and, if it was the last,
    /// returns the block and merges it with free buddies (with policy::PerCpuPages, a block of order up to
    /// pcp_max_order goes on the calling CPU's list instead, unmerged: free_unref_page).  A bad page, a wrong
    /// order or a double free is reported through the error policy and changes nothing.
    void free_pages(Page* page, unsigned order) {
        const index_t i = index_of(page, "free_pages");
        if (i != Page::nil) release(i, order, "free_pages");
    }
    /// Takes one more reference on an allocated block (get_page); a tail page's reference goes to its head.
    /// A page that is not allocated is reported (ErrorKind::bad_refcount) and left alone.
    void get_page(Page* page) {
        policy::LockGuard<lock_type> guard(lock_);
        const index_t i = head_index_of(page, "get_page");
        if (i == Page::nil) return;
        if (!table_[i].test(PageFlag::block)) {
            report(ErrorKind::bad_refcount, "get_page", "pfn " + std::to_string(pfn_of(i)) + " is not allocated");
            return;
        }
        kmem::get_page(table_[i]);
    }
    /// Drops one reference on a block's first page and frees the block when it was the last (put_page).
    void put_page(Page* page) {
        const index_t i = head_index_of(page, "put_page");
        if (i != Page::nil) release(i, table_[i].order_, "put_page");
    }

    /// Splits an allocated non-compound block of 2^order pages into 2^order independent order-0 pages, each
    /// with its own reference (split_page).
    void split_page(Page* page, unsigned order) {
        policy::LockGuard<lock_type> guard(lock_);
        const std::uint64_t i = index_of(page, "split_page");
        if (i == Page::nil || !validate_allocated(i, order, "split_page")) return;
        if (table_[i].test(PageFlag::head)) {
            report(ErrorKind::not_block_start, "split_page", "cannot split the compound page at pfn " +
                                                                 std::to_string(pfn_of(i)) + "; free it whole");
            return;
        }
        table_[i].order_ = 0; // the first page keeps its references (get_page holders), as in the kernel
        for (std::uint64_t k = 1; k < (std::uint64_t{1} << order); ++k) mark_allocated(i + k, 0);
    }

    /// The first page of a compound page, or `page` itself (compound_head).
    Page* compound_head(Page* page) const noexcept {
        return page->test(PageFlag::tail) ? &table_[page->lo_] : page;
    }
    /// The order of a compound page's head, 0 for other pages (compound_order).
    unsigned compound_order(const Page* page) const noexcept {
        return page->test(PageFlag::head) ? page->order() : 0;
    }

    // ----- allocation by address (addressable regions) ----------------------------------------------------

    /// Allocates 2^order pages and returns their address, or nullptr (__get_free_pages).
    template <std::uint32_t B>
        requires addressable
    void* get_free_pages(gfp::Flags<B> flags, unsigned order) {
        return address_or_null(alloc_pages(flags, order));
    }
    /// __get_free_pages() with run-time flags.
    void* get_free_pages(gfp_t flags, unsigned order)
        requires addressable
    {
        return address_or_null(alloc_pages(flags, order));
    }
    /// Allocates one page and returns its address (__get_free_page).
    template <std::uint32_t B>
        requires addressable
    void* get_free_page(gfp::Flags<B> flags) {
        return get_free_pages(flags, 0);
    }
    /// Allocates one zeroed page and returns its address (get_zeroed_page).
    template <std::uint32_t B>
        requires addressable
    void* get_zeroed_page(gfp::Flags<B> flags) {
        return get_free_pages(flags | gfp::zero, 0);
    }
    /// Frees 2^order pages at `addr` (free_pages(addr, order)); nullptr is ignored, as in the kernel.
    void free_pages(void* addr, unsigned order)
        requires addressable
    {
        if (addr == nullptr) return;
        const index_t i = index_of_address(addr, "free_pages");
        if (i != Page::nil) release(i, order, "free_pages");
    }
    /// Frees one page at `addr` (free_page).
    void free_page(void* addr)
        requires addressable
    {
        free_pages(addr, 0);
    }

    /// Allocates exactly ceil(bytes / PageSize) contiguous pages and returns the unused tail of the power-of-two
    /// block at once (alloc_pages_exact); each page is then an order-0 page.  Returns nullptr on failure.
    template <std::uint32_t B>
        requires addressable
    void* alloc_pages_exact(std::size_t bytes, gfp::Flags<B> flags) {
        check_flags(flags);
        return address_or_null(alloc_exact(B, bytes));
    }
    /// Frees memory from alloc_pages_exact (free_pages_exact); `bytes` must be the size asked for.
    void free_pages_exact(void* addr, std::size_t bytes)
        requires addressable
    {
        policy::LockGuard<lock_type> guard(lock_);
        const std::uint64_t i = index_of_address(addr, "free_pages_exact");
        if (i != Page::nil) free_exact(i, bytes);
    }

    // ----- allocation by offset (any region, the form offset-only regions use) ----------------------------

    /// Allocates 2^order pages and returns the byte offset of the block from the region's start, or
    /// std::nullopt (for device memory: the offset is the block's device address minus base()).
    template <std::uint32_t B>
    std::optional<std::uint64_t> alloc_offset(gfp::Flags<B> flags, unsigned order, Placement where = {}) {
        Page* p = alloc_pages(flags, order, where);
        if (p == nullptr) return std::nullopt;
        return page_offset(p);
    }
    /// Frees the block of 2^order pages at byte offset `offset` (free_pages by offset).
    void free_offset(std::uint64_t offset, unsigned order) {
        const index_t i = index_of_offset(offset, "free_offset");
        if (i != Page::nil) release(i, order, "free_offset");
    }
    /// Allocates exactly ceil(bytes / PageSize) pages by offset (alloc_pages_exact for offset-only regions).
    template <std::uint32_t B>
    std::optional<std::uint64_t> alloc_offset_exact(std::size_t bytes, gfp::Flags<B> flags) {
        check_flags(flags);
        Page* p = alloc_exact(B, bytes);
        if (p == nullptr) return std::nullopt;
        return page_offset(p);
    }
    /// Frees pages from alloc_offset_exact.
    void free_offset_exact(std::uint64_t offset, std::size_t bytes) {
        policy::LockGuard<lock_type> guard(lock_);
        const std::uint64_t i = index_of_offset(offset, "free_offset_exact");
        if (i != Page::nil) free_exact(i, bytes);
    }

    // ----- byte interface (used by the pmr adapter) --------------------------------------------------------

    /// Allocates at least `bytes` aligned to `align` (the block is naturally aligned to its size); nullptr on
    /// failure.  Never throws for exhaustion.
    template <std::uint32_t B>
        requires addressable
    void* try_allocate(gfp::Flags<B> flags, std::size_t bytes, std::size_t align) {
        const std::uint64_t need = bytes > align ? bytes : align;
        const unsigned order = get_order<PageSize>(need);
        if (order > MaxOrder || bytes > (std::uint64_t{PageSize} << MaxOrder)) {
            note_oversized(B, need);
            return nullptr;
        }
        return get_free_pages(flags, order);
    }
    /// Returns memory from try_allocate with the same size and alignment.
    void deallocate(void* p, std::size_t bytes, std::size_t align)
        requires addressable
    {
        free_pages(p, get_order<PageSize>(bytes > align ? bytes : align));
    }

    // ----- conversions ---------------------------------------------------------------------------------------

    /// The descriptor of the page holding address `addr`, or nullptr when it is outside the region
    /// (virt_to_page).  O(1).
    Page* virt_to_page(const void* addr) const noexcept
        requires addressable
    {
        const std::uint64_t pfn = reinterpret_cast<std::uintptr_t>(addr) >> page_shift;
        return table_.contains_pfn(pfn) ? &table_.pfn_to_page(pfn) : nullptr;
    }
    /// The address of a page (page_address).  O(1).
    void* page_address(const Page* page) const noexcept
        requires addressable
    {
        return reinterpret_cast<void*>(static_cast<std::uintptr_t>(page_to_pfn(page) << page_shift));
    }
    /// The page frame number of a page (page_to_pfn): its address (or device address) divided by PageSize.
    std::uint64_t page_to_pfn(const Page* page) const noexcept { return table_.page_to_pfn(page); }
    /// The descriptor of page frame `pfn`, or nullptr when it is not managed here (pfn_to_page).
    Page* pfn_to_page(std::uint64_t pfn) const noexcept {
        return table_.contains_pfn(pfn) ? &table_.pfn_to_page(pfn) : nullptr;
    }
    /// The byte offset of a page from the region's start (base()).
    std::uint64_t page_offset(const Page* page) const noexcept {
        return (page_to_pfn(page) << page_shift) - region_.base();
    }
    /// The descriptor of the page at byte offset `offset` from the region's start, or nullptr outside it.
    Page* offset_to_page(std::uint64_t offset) const noexcept {
        return pfn_to_page((region_.base() + offset) >> page_shift);
    }

    // ----- state and reports -------------------------------------------------------------------------------

    /// Free pages on the free lists (nr_free_pages); pages held on per-CPU lists are not counted, as in the
    /// kernel (see nr_pcp_pages()).
    std::uint64_t nr_free_pages() const {
        policy::LockGuard<lock_type> guard(lock_);
        return free_pages_;
    }
    /// Pages this allocator manages (zone managed_pages).
    std::uint64_t total_pages() const noexcept { return table_.size(); }
    /// Free blocks of `order` (free_area[order].nr_free).
    std::uint64_t nr_free(unsigned order) const {
        policy::LockGuard<lock_type> guard(lock_);
        return order <= MaxOrder ? nr_free_[order] : 0;
    }
    /// A snapshot of every counter.
    BuddyStats<MaxOrder> stats() const {
        BuddyStats<MaxOrder> s;
        if constexpr (has_pcp) {
            for (unsigned c = 0; c < pcp_count_; ++c) { // per-CPU event counters (vm_event_states)
                PcpSet& set = pcp_[c];
                policy::LockGuard<pcp_lock_type> g(set.lock);
                s.pcp_pages += set.count;
                s.allocations += set.allocations;
                s.frees += set.frees;
            }
        }
        policy::LockGuard<lock_type> guard(lock_);
        s.nr_free = nr_free_;
        s.free_pages = free_pages_;
        s.total_pages = table_.size();
        s.allocations += allocations_;
        s.frees += frees_;
        s.failures = failures_;
        return s;
    }
    // ----- per-CPU page lists (with policy::PerCpuPages) ------------------------------------------------------

    /// Pages held on all per-CPU page lists (the pcp->count of every CPU, summed).
    std::uint64_t nr_pcp_pages() const
        requires has_pcp
    {
        std::uint64_t n = 0;
        for (unsigned c = 0; c < pcp_count_; ++c) {
            policy::LockGuard<pcp_lock_type> g(pcp_[c].lock);
            n += pcp_[c].count;
        }
        return n;
    }
    /// Pages moved between a per-CPU list and the free lists at a time (pcp->batch).
    unsigned pcp_batch() const noexcept
        requires has_pcp
    {
        return pcp_batch_;
    }
    /// Pages a CPU's lists may hold before `pcp_batch()` of them go back (pcp->high).
    unsigned pcp_high() const noexcept
        requires has_pcp
    {
        return pcp_high_;
    }
    /// The number of per-CPU list sets: one per configured CPU with a lock policy, one without.
    unsigned pcp_sets() const noexcept
        requires has_pcp
    {
        return pcp_count_;
    }
    /// Sets high and batch for every CPU (__zone_set_pageset_high_and_batch, the percpu_pagelist sysctl) and
    /// drains the lists; throws std::invalid_argument unless 1 <= batch <= high.  Not for concurrent use with
    /// allocations.
    void set_pcp_high_and_batch(unsigned high, unsigned batch)
        requires has_pcp
    {
        if (batch == 0 || high < batch)
            throw std::invalid_argument("kmem: per-CPU lists need 1 <= batch <= high (got batch " +
                                        std::to_string(batch) + ", high " + std::to_string(high) + ")");
        drain_all_pages();
        pcp_high_ = high;
        pcp_batch_ = batch;
    }
    /// Gives every page on the calling CPU's lists back to the free lists, where they merge (drain_local_pages).
    /// Returns the number of pages given back.
    std::uint64_t drain_local_pages()
        requires has_pcp
    {
        return drain_set(local_pcp());
    }
    /// Gives every page on every CPU's lists back to the free lists (drain_all_pages); returns how many.
    std::uint64_t drain_all_pages()
        requires has_pcp
    {
        std::uint64_t n = 0;
        for (unsigned c = 0; c < pcp_count_; ++c) n += drain_set(pcp_[c]);
        return n;
    }

    /// The largest order with a free block, or -1 when nothing is free.
    int largest_free_order() const {
        policy::LockGuard<lock_type> guard(lock_);
        return largest_free_order_locked();
    }
    /// This allocator's line in /proc/buddyinfo: `Node 0, zone   Normal` then one count per order.
    std::string buddyinfo() const {
        policy::LockGuard<lock_type> guard(lock_);
        return buddyinfo_locked();
    }
    /// The region.
    const region_type& region() const noexcept { return region_; }
    /// The page descriptor table (mem_map).
    const PageTable<PageSize>& page_table() const noexcept { return table_; }
    /// The error policy, e.g. to install a callback.
    error_policy_type& error_policy() noexcept { return error_; }
    /// Names the allocator in failure reports (the kernel prints the task's comm there); default "kmem".
    void set_name(std::string name) { name_ = std::move(name); }
    /// The node id printed by buddyinfo() (default 0).
    void set_node(int node) noexcept { node_ = node; }
    /// Where allocation-failure reports go (default std::clog); nullptr silences them.
    void set_warning_stream(std::ostream* out) noexcept { warn_ = out; }

    /// Checks every invariant (free lists well formed and counted, blocks aligned and inside the table, no two
    /// free buddies of equal order, per-CPU lists well formed and counted, blocks tile the table,
    /// free + per-CPU + used == total); returns the first violation,
    /// or an empty string when all hold.  O(pages); for tests and debugging.
    std::string check_invariants() const {
        if constexpr (has_pcp) { // per-CPU locks before the zone lock, in CPU order, as everywhere else
            for (unsigned c = 0; c < pcp_count_; ++c) pcp_[c].lock.lock();
        }
        std::string problem;
        {
            policy::LockGuard<lock_type> guard(lock_);
            problem = check_locked();
        }
        if constexpr (has_pcp) {
            for (unsigned c = pcp_count_; c-- > 0;) pcp_[c].lock.unlock();
        }
        return problem;
    }

private:
    using index_t = std::uint64_t;

    // ----- compile-time and run-time flag checks -----------------------------------------------------------
    template <std::uint32_t B>
    static constexpr void check_flags(gfp::Flags<B> flags) noexcept {
        gfp::check(flags);
        static_assert(policy::zone_serves(zone, gfp::zone_of(B)),
                      "the GFP zone modifier asks for a zone this allocator was not built with (e.g. gfp::dma on "
                      "a ZONE_NORMAL allocator); add policy::InZone for that zone or drop the modifier.");
        static_assert(may_sleep || !gfp::may_sleep(B),
                      "these GFP flags may sleep (gfp::direct_reclaim) but this allocator's lock policy is a "
                      "non-sleeping spin lock; use gfp::atomic or gfp::nowait, or a sleeping lock.");
        static_assert(addressable || !(B & gfp::bits::zero),
                      "gfp::zero needs host memory to clear, but this allocator's region is offset-only.");
    }

    bool runtime_flags_ok(gfp_t flags, std::string_view op) {
        const auto problem = flags.validate();
        std::string why;
        if (problem != gfp::Problem::none) {
            why = std::string(gfp::describe(problem));
        } else if (!policy::zone_serves(zone, flags.zone())) {
            why = "the flags ask for " + kernel_zone_name(flags.zone()) + " but this allocator manages " +
                  kernel_zone_name(zone) + ".";
        } else if (!may_sleep && flags.may_sleep()) {
            why = "these GFP flags may sleep but this allocator's lock policy is a non-sleeping spin lock.";
        } else if (!addressable && flags.has(gfp::zero)) {
            why = "gfp::zero needs host memory to clear, but this allocator's region is offset-only.";
        } else {
            return true;
        }
        report(ErrorKind::invalid_gfp, op, "mode:" + flags.to_string() + ": " + why);
        return false;
    }

    int largest_free_order_locked() const noexcept {
        return free_mask_ == 0 ? -1 : static_cast<int>(std::bit_width(free_mask_) - 1);
    }
    static std::string kernel_zone_name(ZoneType z) { // "ZONE_NORMAL", as the kernel's enum spells it
        std::string n = "ZONE_";
        for (char c : zone_name(z)) n += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
        return n;
    }

    // ----- region geometry --------------------------------------------------------------------------------
    static std::uint64_t first_pfn(const region_type& r) noexcept {
        return (r.base() + PageSize - 1) >> page_shift;
    }
    static std::uint64_t page_count(const region_type& r) noexcept {
        const std::uint64_t first = first_pfn(r);
        const std::uint64_t end = (r.base() + r.size()) >> page_shift;
        return end > first ? end - first : 0;
    }
    std::uint64_t pfn_of(index_t i) const noexcept { return table_.first_pfn() + i; }

    void populate() {
        const std::uint64_t first = table_.first_pfn();
        const std::uint64_t n = table_.size();
        std::array<std::uint32_t, MaxOrder + 1> last = nils<MaxOrder + 1>(); // lists start in address order
        for (index_t i = 0; i < n;) {
            const std::uint64_t pfn = first + i;
            unsigned order = MaxOrder;
            while (order > 0 && (((pfn & ((std::uint64_t{1} << order) - 1)) != 0) || i + (std::uint64_t{1} << order) > n))
                --order;
            append(i, order, last);
            free_pages_ += std::uint64_t{1} << order;
            i += std::uint64_t{1} << order;
        }
    }

    // ----- free lists --------------------------------------------------------------------------------------
    void push(index_t i, unsigned order) noexcept {
        Page& p = table_[i];
        const std::uint32_t head = free_head_[order];
        p.flags_ = flag(PageFlag::buddy);
        p.order_ = static_cast<std::uint8_t>(order);
        p.lo_ = head;
        p.hi_ = Page::nil;
        if (head != Page::nil) table_[head].hi_ = static_cast<std::uint32_t>(i);
        free_head_[order] = static_cast<std::uint32_t>(i);
        free_mask_ |= 1u << order;
        ++nr_free_[order];
    }
    void append(index_t i, unsigned order, std::array<std::uint32_t, MaxOrder + 1>& last) noexcept {
        Page& p = table_[i];
        p.flags_ = flag(PageFlag::buddy);
        p.order_ = static_cast<std::uint8_t>(order);
        p.lo_ = Page::nil;
        p.hi_ = last[order];
        if (last[order] != Page::nil)
            table_[last[order]].lo_ = static_cast<std::uint32_t>(i);
        else
            free_head_[order] = static_cast<std::uint32_t>(i);
        last[order] = static_cast<std::uint32_t>(i);
        free_mask_ |= 1u << order;
        ++nr_free_[order];
    }
    index_t pop(unsigned order) noexcept {
        const index_t i = free_head_[order];
        Page& p = table_[i];
        const std::uint32_t next = p.lo_;
        free_head_[order] = next;
        if (next != Page::nil)
            table_[next].hi_ = Page::nil;
        else
            free_mask_ &= ~(1u << order);
        p.flags_ = 0;
        --nr_free_[order];
        return i;
    }
    void unlink(index_t i, unsigned order) noexcept {
        Page& p = table_[i];
        const std::uint32_t next = p.lo_, prev = p.hi_;
        if (prev != Page::nil) {
            table_[prev].lo_ = next;
        } else {
            free_head_[order] = next;
            if (next == Page::nil) free_mask_ &= ~(1u << order);
        }
        if (next != Page::nil) table_[next].hi_ = prev;
        p.flags_ = 0;
        --nr_free_[order];
    }

    // ----- allocation --------------------------------------------------------------------------------------
    // Page flags are written with relaxed atomic stores wherever they may change outside the zone lock (the
    // per-CPU paths and the preparation of a new block), because __free_one_page() under the zone lock reads
    // the flags of a neighbouring block to see whether it is a free buddy.  Relaxed loads and stores are plain
    // moves on the machines we target.
    static void store_flags(Page& p, std::uint16_t f) noexcept {
        std::atomic_ref<std::uint16_t>(p.flags_).store(f, std::memory_order_relaxed);
    }
    static std::uint16_t load_flags(const Page& p) noexcept {
        return std::atomic_ref<std::uint16_t>(const_cast<std::uint16_t&>(p.flags_)).load(std::memory_order_relaxed);
    }
    static constexpr std::uint16_t flag(PageFlag f) noexcept { return static_cast<std::uint16_t>(f); }

    void mark_allocated(index_t i, unsigned order) noexcept {
        Page& p = table_[i];
        store_flags(p, flag(PageFlag::block));
        p.order_ = static_cast<std::uint8_t>(order);
        p.lo_ = 0;
        p.hi_ = 0;
        set_page_refcounted(p);
    }

    Page* alloc_checked(std::uint32_t bits, unsigned order, const Placement& where) {
        const bool placed = where.top_down || where.start != 0 || where.end != Placement{}.end;
        if (order > MaxOrder || ((bits & gfp::bits::nofail) && order > 1)) [[unlikely]] {
            {
                policy::LockGuard<lock_type> guard(lock_);
                ++failures_;
            }
            if (order > MaxOrder)
                report(ErrorKind::order_too_large, "alloc_pages",
                       "order " + std::to_string(order) + " is above MaxOrder " + std::to_string(MaxOrder));
            else
                report(ErrorKind::invalid_gfp, "alloc_pages",
                       "gfp::nofail is only supported up to order 1; order " + std::to_string(order) + " was asked");
            return nullptr;
        }
        if constexpr (has_pcp) { // rmqueue_pcplist()
            if (order <= pcp_max_order && !placed) [[likely]] {
                const index_t i = pcp_alloc(order);
                if (i != Page::nil) [[likely]] return finish_alloc(i, order, bits);
            }
        }
        index_t i = zone_alloc(order, where, placed);
        if constexpr (has_pcp) { // pages parked on per-CPU lists are free too: drain them and try once more
            if (i == Page::nil && drain_all_pages() != 0) i = zone_alloc(order, where, placed);
        }
        if (i == Page::nil) [[unlikely]] {
            {
                policy::LockGuard<lock_type> guard(lock_);
                ++failures_;
                if (!(bits & gfp::bits::nowarn) || (bits & gfp::bits::nofail)) warn_alloc(bits, order);
            }
            if (bits & gfp::bits::nofail)
                report(ErrorKind::nofail_failed, "alloc_pages",
                       "a gfp::nofail request of order " + std::to_string(order) +
                           " found no free block and this layer has nothing to reclaim");
            return nullptr;
        }
        return finish_alloc(i, order, bits);
    }
    // Takes a block from the free lists under the zone lock (__rmqueue()).
    index_t zone_alloc(unsigned order, const Placement& where, bool placed) {
        policy::LockGuard<lock_type> guard(lock_);
        const index_t i = placed ? take_placed(order, where) : take(order);
        if (i != Page::nil) {
            ++allocations_;
            free_pages_ -= std::uint64_t{1} << order;
        }
        return i;
    }
    // The block is the caller's now: set it up outside any lock (prep_new_page()).
    Page* finish_alloc(index_t i, unsigned order, std::uint32_t bits) noexcept {
        prep_new_page(i, order, bits);
        if constexpr (addressable) {
            if (bits & gfp::bits::zero) std::memset(page_address(&table_[i]), 0, PageSize << order);
        }
        return &table_[i];
    }

    index_t take(unsigned order) noexcept {
        const std::uint32_t avail = free_mask_ & ~((1u << order) - 1u);
        if (avail == 0) return Page::nil;
        const unsigned cur = static_cast<unsigned>(std::countr_zero(avail));
        const index_t i = pop(cur);
        // expand(): keep the lower half, free the upper one, down to the requested order.  The lists of orders
        // order..cur-1 are empty (cur is the lowest non-empty order), so each half becomes a one-entry list.
        for (unsigned k = order; k < cur; ++k) {
            const index_t upper = i + (index_t{1} << k);
            Page& p = table_[upper];
            p.flags_ = flag(PageFlag::buddy);
            p.order_ = static_cast<std::uint8_t>(k);
            p.lo_ = Page::nil;
            p.hi_ = Page::nil;
            free_head_[k] = static_cast<std::uint32_t>(upper);
            nr_free_[k] = 1;
        }
        free_mask_ |= ((1u << cur) - 1u) & ~((1u << order) - 1u);
        return i;
    }

    index_t take_placed(unsigned order, const Placement& where) noexcept {
        const std::uint64_t first = table_.first_pfn();
        const std::uint64_t base = region_.base();
        const std::uint64_t size = std::uint64_t{1} << order;
        // The placement window in page frame numbers (whole pages only).
        const std::uint64_t lo = where.start >= region_.size() ? ~std::uint64_t{0} : (base + where.start + PageSize - 1) >> page_shift;
        const std::uint64_t end_byte = where.end > region_.size() ? region_.size() : where.end;
        const std::uint64_t hi = (base + end_byte) >> page_shift;
        if (lo == ~std::uint64_t{0} || hi <= lo) return Page::nil;
        bool found = false;
        std::uint64_t best = 0; // chosen pfn of the target block
        index_t best_block = 0;
        unsigned best_order = 0;
        for (unsigned k = order; k <= MaxOrder; ++k) {
            for (std::uint32_t b = free_head_[k]; b != Page::nil; b = table_[b].lo_) {
                const std::uint64_t bs = first + b, be = bs + (std::uint64_t{1} << k);
                const std::uint64_t s = bs > lo ? bs : lo, e = be < hi ? be : hi;
                if (e <= s || e - s < size) continue;
                std::uint64_t cand;
                if (where.top_down) {
                    cand = (e - size) & ~(size - 1);
                    if (cand < s) continue;
                    if (found && cand <= best) continue;
                } else {
                    cand = (s + size - 1) & ~(size - 1);
                    if (cand + size > e) continue;
                    if (found && cand >= best) continue;
                }
                found = true;
                best = cand;
                best_block = b;
                best_order = k;
            }
        }
        if (!found) return Page::nil;
        unlink(best_block, best_order);
        index_t blk = best_block;
        const index_t target = best - first;
        for (unsigned k = best_order; k > order;) {
            --k;
            const index_t upper = blk + (index_t{1} << k);
            if (target >= upper) {
                push(blk, k);
                blk = upper;
            } else {
                push(upper, k);
            }
        }
        return blk;
    }

    void prep_new_page(index_t i, unsigned order, std::uint32_t bits) noexcept {
        mark_allocated(i, order);
        if ((bits & gfp::bits::comp) && order > 0) { // prep_compound_page()
            store_flags(table_[i], flag(PageFlag::block) | flag(PageFlag::head));
            for (index_t k = 1; k < (index_t{1} << order); ++k) {
                Page& t = table_[i + k];
                t.lo_ = static_cast<std::uint32_t>(i);
                store_flags(t, flag(PageFlag::tail));
            }
        }
    }

    // ----- freeing -----------------------------------------------------------------------------------------
    index_t index_of(const Page* page, std::string_view op) {
        if (page == nullptr || !table_.owns(page)) {
            report(ErrorKind::out_of_region, op, "the page descriptor does not belong to this allocator");
            return Page::nil;
        }
        return table_.page_to_pfn(page) - table_.first_pfn();
    }
    // The index of a page's compound head (the page itself when it is not a tail): references live on heads.
    index_t head_index_of(const Page* page, std::string_view op) {
        const index_t i = index_of(page, op);
        return i != Page::nil && page->test(PageFlag::tail) ? index_t{page->lo_} : i;
    }
    index_t index_of_address(const void* addr, std::string_view op) {
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        return index_of_byte(a, op, [a] { return "address 0x" + hex(a); });
    }
    index_t index_of_offset(std::uint64_t offset, std::string_view op) {
        if (offset >= region_.size()) {
            report(ErrorKind::out_of_region, op,
                   "offset " + std::to_string(offset) + " is outside the region of " + std::to_string(region_.size()) +
                       " bytes");
            return Page::nil;
        }
        return index_of_byte(region_.base() + offset, op, [offset] { return "offset " + std::to_string(offset); });
    }
    // `what` builds the description of the argument, only when there is an error to report.
    template <class Describe>
    index_t index_of_byte(std::uint64_t a, std::string_view op, Describe what) {
        if ((a & (PageSize - 1)) != 0) {
            report(ErrorKind::misaligned, op, what() + " is not aligned to the page size " + std::to_string(PageSize));
            return Page::nil;
        }
        const std::uint64_t pfn = a >> page_shift;
        if (!table_.contains_pfn(pfn)) {
            report(ErrorKind::out_of_region, op, what() + " is outside the region managed by this allocator");
            return Page::nil;
        }
        return pfn - table_.first_pfn();
    }

    // Checks that index i heads an allocated block of `order`; reports and returns false otherwise.
    bool validate_allocated(index_t i, unsigned order, std::string_view op) {
        const Page& p = table_[i];
        if (p.test(PageFlag::block) && p.order_ == order && order <= MaxOrder && p.refcount() > 0) [[likely]]
            return true;
        const std::string at = "pfn " + std::to_string(pfn_of(i));
        if (order > MaxOrder) {
            report(ErrorKind::order_too_large, op,
                   "order " + std::to_string(order) + " is above MaxOrder " + std::to_string(MaxOrder) + " (" + at + ")");
            return false;
        }
        if (p.test(PageFlag::block)) {
            if (p.order_ != order) {
                report(ErrorKind::wrong_order, op,
                       at + " was allocated with order " + std::to_string(p.order_) + " but is freed with order " +
                           std::to_string(order));
                return false;
            }
            if (p.refcount() <= 0) {
                report(ErrorKind::bad_refcount, op, at + " has reference count " + std::to_string(p.refcount()));
                return false;
            }
            return true;
        }
        if (p.test(PageFlag::buddy)) {
            report(ErrorKind::double_free, op, at + " is already free (a free block of order " +
                                                   std::to_string(p.order_) + ")");
            return false;
        }
        if (p.test(PageFlag::pcp)) {
            report(ErrorKind::double_free, op, at + " is already free (an order-" + std::to_string(p.order_) +
                                                   " block held on a per-CPU page list)");
            return false;
        }
        if (p.test(PageFlag::tail)) {
            report(ErrorKind::not_block_start, op,
                   at + " is a tail page of the compound page at pfn " + std::to_string(pfn_of(p.lo_)));
            return false;
        }
        // An interior page: find the block that contains it to say which mistake this is.
        for (unsigned k = 1; k <= MaxOrder; ++k) {
            const std::uint64_t head_pfn = pfn_of(i) & ~((std::uint64_t{1} << k) - 1);
            if (!table_.contains_pfn(head_pfn)) break;
            const Page& h = table_.pfn_to_page(head_pfn);
            if (h.order_ < k) continue;
            if (h.test(PageFlag::buddy) || h.test(PageFlag::pcp)) {
                report(ErrorKind::double_free, op,
                       at + " is already free (inside the free block of order " + std::to_string(h.order_) +
                           " at pfn " + std::to_string(head_pfn) +
                           (h.test(PageFlag::pcp) ? ", held on a per-CPU page list)" : ")"));
                return false;
            }
            if (h.test(PageFlag::block)) {
                report(ErrorKind::not_block_start, op,
                       at + " is inside the block of order " + std::to_string(h.order_) + " allocated at pfn " +
                           std::to_string(head_pfn));
                return false;
            }
        }
        report(ErrorKind::not_block_start, op, at + " does not start an allocated block");
        return false;
    }

    // Frees the block at index i given with `order` by a caller (free_pages, put_page, free_offset).  With
    // per-CPU lists, a valid free of a small block goes on the calling CPU's list (free_unref_page()); a busy
    // list, a larger block or a mistake takes the zone lock, where validate_allocated() reports mistakes.
    void release(index_t i, unsigned order, std::string_view op) {
        if constexpr (has_pcp) {
            if (order <= pcp_max_order) [[likely]] {
                PcpSet& s = local_pcp();
                if (s.lock.try_lock()) [[likely]] {
                    Page& p = table_[i];
                    if (p.test(PageFlag::block) && p.order_ == order && p.refcount() > 0) [[likely]] {
                        if (put_page_testzero(p)) pcp_free(s, i, order);
                        s.lock.unlock();
                        return;
                    }
                    s.lock.unlock();
                }
            }
        }
        policy::LockGuard<lock_type> guard(lock_);
        if (validate_allocated(i, order, op)) free_block(i, order);
    }

    // Drops the reference taken at allocation; frees the block when it was the last.
    void free_block(index_t i, unsigned order) noexcept {
        Page& p = table_[i];
        if (!put_page_testzero(p)) return;
        if (p.test(PageFlag::head))
            for (index_t k = 1; k < (index_t{1} << order); ++k) table_[i + k].flags_ = 0;
        p.flags_ = 0;
        ++frees_;
        free_pages_ += std::uint64_t{1} << order;
        merge_and_push(i, order);
    }

    void merge_and_push(index_t i, unsigned order) noexcept {
        const std::uint64_t first = table_.first_pfn();
        const std::uint64_t n = table_.size();
        std::uint64_t pfn = first + i;
        while (order < MaxOrder) { // __free_one_page(): merge while the buddy is a free block of the same order
            const std::uint64_t buddy_pfn = pfn ^ (std::uint64_t{1} << order);
            const index_t b = buddy_pfn - first;
            if (b >= n) break;
            const Page& bp = table_[b];
            if (!(load_flags(bp) & flag(PageFlag::buddy)) || bp.order_ != order) break; // page_is_buddy()
            unlink(b, order);
            pfn &= buddy_pfn;
            ++order;
        }
        push(pfn - first, order);
    }

    Page* alloc_exact(std::uint32_t bits, std::size_t bytes) {
        const std::uint64_t pages = bytes == 0 ? 1 : (std::uint64_t{bytes} - 1) / PageSize + 1;
        const unsigned order = get_order<PageSize>(bytes);
        if (order > MaxOrder) {
            report(ErrorKind::order_too_large, "alloc_pages_exact",
                   std::to_string(bytes) + " bytes need order " + std::to_string(order) + ", above MaxOrder " +
                       std::to_string(MaxOrder));
            return nullptr;
        }
        Page* p = alloc_checked(bits & ~gfp::bits::comp, order, Placement{});
        if (p == nullptr) return nullptr;
        policy::LockGuard<lock_type> guard(lock_);
        const index_t i = table_.page_to_pfn(p) - table_.first_pfn();
        for (index_t k = 0; k < pages; ++k) mark_allocated(i + k, 0);
        free_range(i + pages, (index_t{1} << order) - pages);
        return p;
    }
    // Returns [i, i+count) to the free lists as the largest aligned blocks (the tail of alloc_pages_exact).
    void free_range(index_t i, std::uint64_t count) noexcept {
        while (count > 0) {
            unsigned k = static_cast<unsigned>(std::countr_zero(pfn_of(i) | (std::uint64_t{1} << MaxOrder)));
            while ((std::uint64_t{1} << k) > count) --k;
            free_pages_ += std::uint64_t{1} << k;
            merge_and_push(i, k);
            i += std::uint64_t{1} << k;
            count -= std::uint64_t{1} << k;
        }
    }
    void free_exact(index_t i, std::size_t bytes) {
        const std::uint64_t pages = bytes == 0 ? 1 : (std::uint64_t{bytes} - 1) / PageSize + 1;
        if (i + pages > table_.size()) {
            report(ErrorKind::out_of_region, "free_pages_exact", std::to_string(bytes) + " bytes at pfn " +
                                                                    std::to_string(pfn_of(i)) + " run past the region");
            return;
        }
        for (index_t k = 0; k < pages; ++k) // check every page first, so a bad call changes nothing
            if (!validate_allocated(i + k, 0, "free_pages_exact")) return;
        for (index_t k = 0; k < pages; ++k) free_block(i + k, 0);
    }

    // ----- per-CPU page lists (struct per_cpu_pages) ---------------------------------------------------------
    // One set of lists per CPU (one in all without a lock policy).  A set's lock is taken before the zone lock,
    // never after; the hot paths only try-lock it and fall back to the free lists when it is busy.
    using pcp_lock_type =
        std::conditional_t<std::is_same_v<lock_type, policy::NoLock>, policy::NoLock, policy::SpinLock>;
    static constexpr bool pcp_per_cpu = !std::is_same_v<lock_type, policy::NoLock>;
    static constexpr unsigned pcp_lists = pcp_max_order + 1;
    struct alignas(64) PcpSet {
        pcp_lock_type lock;
        std::uint32_t count = 0;          // pages held (pcp->count)
        unsigned next_spill = 0;          // the list a bulk free starts from (round robin, as free_pcppages_bulk)
        std::array<std::uint32_t, pcp_lists> head = nils<pcp_lists>(); // hot end: frees push, allocations pop
        std::array<std::uint32_t, pcp_lists> tail = nils<pcp_lists>(); // cold end: bulk frees take from here
        std::uint64_t allocations = 0;    // per-CPU pgalloc events
        std::uint64_t frees = 0;          // per-CPU pgfree events
    };

    // zone_batchsize(): a quarter of 1/1024 of the pages, capped at 1 MiB, rounded down to 2^n - 1.
    static unsigned zone_batchsize(std::uint64_t managed) noexcept {
        std::uint64_t batch = managed >> 10;
        if (batch > (std::uint64_t{1} << 20) / PageSize) batch = (std::uint64_t{1} << 20) / PageSize;
        batch /= 4;
        if (batch < 1) batch = 1;
        batch = std::bit_floor(batch + batch / 2) - 1;
        return batch < 1 ? 1u : static_cast<unsigned>(batch);
    }
    void setup_pcp() {
        unsigned cpus = 1;
        if constexpr (pcp_per_cpu) {
            const long n = ::sysconf(_SC_NPROCESSORS_CONF);
            cpus = n > 0 ? static_cast<unsigned>(n) : 1u;
        }
        pcp_ = std::make_unique<PcpSet[]>(cpus);
        pcp_count_ = cpus;
        pcp_batch_ = pcp_policy::batch != 0 ? pcp_policy::batch : zone_batchsize(table_.size());
        pcp_high_ = pcp_policy::high != 0 ? pcp_policy::high : 6 * pcp_batch_;
        if (pcp_high_ < pcp_batch_) pcp_high_ = pcp_batch_;
    }
    PcpSet& local_pcp() const noexcept {
        if constexpr (pcp_per_cpu) {
            // CPU numbers are below the configured count, so the division is only a guard (and costs
            // tens of cycles when taken).
            const int cpu = detail::current_cpu();
            unsigned c = cpu > 0 ? static_cast<unsigned>(cpu) : 0u;
            if (c >= pcp_count_) [[unlikely]]
                c %= pcp_count_;
            return pcp_[c];
        } else {
            return pcp_[0];
        }
    }
    void pcp_link(PcpSet& s, index_t i, unsigned order, bool at_head) noexcept {
        Page& p = table_[i];
        const auto idx = static_cast<std::uint32_t>(i);
        p.order_ = static_cast<std::uint8_t>(order);
        if (at_head) {
            const std::uint32_t head = s.head[order];
            p.lo_ = head;
            p.hi_ = Page::nil;
            (head != Page::nil ? table_[head].hi_ : s.tail[order]) = idx;
            s.head[order] = idx;
        } else {
            const std::uint32_t tail = s.tail[order];
            p.lo_ = Page::nil;
            p.hi_ = tail;
            (tail != Page::nil ? table_[tail].lo_ : s.head[order]) = idx;
            s.tail[order] = idx;
        }
        store_flags(p, flag(PageFlag::pcp));
        s.count += 1u << order;
    }
    index_t pcp_pop_head(PcpSet& s, unsigned order) noexcept {
        const std::uint32_t i = s.head[order];
        const std::uint32_t next = table_[i].lo_;
        s.head[order] = next;
        (next != Page::nil ? table_[next].hi_ : s.tail[order]) = Page::nil;
        s.count -= 1u << order;
        return i;
    }
    index_t pcp_pop_tail(PcpSet& s, unsigned order) noexcept {
        const std::uint32_t i = s.tail[order];
        const std::uint32_t prev = table_[i].hi_;
        s.tail[order] = prev;
        (prev != Page::nil ? table_[prev].lo_ : s.head[order]) = Page::nil;
        s.count -= 1u << order;
        return i;
    }
    // __rmqueue_pcplist(): a block from this CPU's list, refilled with a batch from the free lists when empty.
    // Returns nil when the list is busy or nothing is free; the caller then tries the free lists.
    index_t pcp_alloc(unsigned order) {
        PcpSet& s = local_pcp();
        if (!s.lock.try_lock()) [[unlikely]]
            return Page::nil;
        if (s.head[order] == Page::nil) [[unlikely]]
            pcp_refill(s, order);
        index_t i = Page::nil;
        if (s.head[order] != Page::nil) [[likely]] {
            i = pcp_pop_head(s, order);
            ++s.allocations;
        }
        s.lock.unlock();
        return i;
    }
    // rmqueue_bulk(): batch >> order blocks (at least 2), in address order, under the zone lock.
    void pcp_refill(PcpSet& s, unsigned order) {
        const unsigned want = (pcp_batch_ >> order) > 2u ? pcp_batch_ >> order : 2u;
        policy::LockGuard<lock_type> guard(lock_);
        for (unsigned n = 0; n < want; ++n) {
            const index_t i = take(order);
            if (i == Page::nil) break;
            free_pages_ -= std::uint64_t{1} << order;
            pcp_link(s, i, order, false);
        }
    }
    // free_unref_page_commit(): the freed block goes on the hot end of this CPU's list; at `high` pages, a
    // batch goes back to the free lists.
    void pcp_free(PcpSet& s, index_t i, unsigned order) {
        if (table_[i].test(PageFlag::head))
            for (index_t k = 1; k < (index_t{1} << order); ++k) store_flags(table_[i + k], 0);
        pcp_link(s, i, order, true);
        ++s.frees;
        if (s.count >= pcp_high_) [[unlikely]] {
            policy::LockGuard<lock_type> guard(lock_);
            pcp_spill(s, pcp_batch_);
        }
    }
    // free_pcppages_bulk(): at least `pages` pages (or all there are) from the cold ends, round robin over the
    // orders, merged into the free lists.  The set's lock and the zone lock are held.
    void pcp_spill(PcpSet& s, std::uint64_t pages) noexcept {
        std::uint64_t done = 0;
        while (done < pages && s.count > 0) {
            unsigned o = s.next_spill;
            while (s.tail[o] == Page::nil) o = (o + 1) % pcp_lists; // count > 0: some list is not empty
            s.next_spill = (o + 1) % pcp_lists;
            const index_t i = pcp_pop_tail(s, o);
            table_[i].flags_ = 0;
            free_pages_ += std::uint64_t{1} << o;
            merge_and_push(i, o);
            done += std::uint64_t{1} << o;
        }
    }
    std::uint64_t drain_set(PcpSet& s) {
        policy::LockGuard<pcp_lock_type> g(s.lock);
        const std::uint64_t n = s.count;
        if (n == 0) return 0;
        policy::LockGuard<lock_type> guard(lock_);
        pcp_spill(s, n);
        return n;
    }

    // ----- reports -----------------------------------------------------------------------------------------
    void report(ErrorKind kind, std::string_view op, std::string message) {
        error_.on_error(UsageError{kind, op, std::move(message)});
    }
    static std::string hex(std::uint64_t v) {
        char buf[24];
        std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
        return buf;
    }
    std::string buddyinfo_locked() const {
        char buf[64];
        std::snprintf(buf, sizeof buf, "Node %d, zone %8.*s ", node_, static_cast<int>(zone_name(zone).size()),
                      zone_name(zone).data());
        std::string out = buf;
        for (unsigned k = 0; k <= MaxOrder; ++k) {
            std::snprintf(buf, sizeof buf, "%6llu ", static_cast<unsigned long long>(nr_free_[k]));
            out += buf;
        }
        out += '\n';
        return out;
    }
    void warn_alloc(std::uint32_t bits, unsigned order) const {
        if (warn_ == nullptr) return;
        char buf[48];
        std::snprintf(buf, sizeof buf, "%#x", bits);
        *warn_ << name_ << ": page allocation failure: order:" << order << ", mode:" << buf << '('
               << gfp::to_string(bits) << "), nodemask=(null)\n"
               << buddyinfo_locked() << name_ << ": free pages: " << free_pages_ << " of " << table_.size()
               << ", largest free order: " << largest_free_order_locked() << '\n';
    }
    void note_oversized(std::uint32_t bits, std::uint64_t bytes) {
        policy::LockGuard<lock_type> guard(lock_);
        ++failures_;
        if (!(bits & gfp::bits::nowarn) && warn_ != nullptr)
            *warn_ << name_ << ": allocation of " << bytes << " bytes is above the largest block ("
                   << (std::uint64_t{PageSize} << MaxOrder) << " bytes)\n";
    }
    void* address_or_null(Page* p) const noexcept {
        if constexpr (addressable) return p == nullptr ? nullptr : page_address(p);
        else return nullptr;
    }

    std::string check_locked() const {
        const std::uint64_t first = table_.first_pfn();
        const std::uint64_t n = table_.size();
        std::uint64_t free_sum = 0;
        for (unsigned k = 0; k <= MaxOrder; ++k) {
            std::uint64_t count = 0;
            std::uint32_t prev = Page::nil;
            for (std::uint32_t b = free_head_[k]; b != Page::nil; b = table_[b].lo_) {
                const Page& p = table_[b];
                const std::string at = "free block at pfn " + std::to_string(first + b);
                if (b >= n) return "free list " + std::to_string(k) + " links outside the table";
                if (!p.test(PageFlag::buddy) || p.order_ != k) return at + " is on list " + std::to_string(k) + " without PG_buddy of that order";
                if (p.hi_ != prev) return at + " has a broken back link";
                if (((first + b) & ((std::uint64_t{1} << k) - 1)) != 0) return at + " is not aligned to its order";
                if (b + (std::uint64_t{1} << k) > n) return at + " runs past the table";
                if (p.refcount() != 0) return at + " has a non-zero reference count";
                if (k < MaxOrder) {
                    const std::uint64_t bud = ((first + b) ^ (std::uint64_t{1} << k)) - first;
                    if (bud < n && table_[bud].test(PageFlag::buddy) && table_[bud].order_ == k)
                        return at + " and its buddy are both free at order " + std::to_string(k);
                }
                if (++count > n) return "free list " + std::to_string(k) + " has a cycle";
                prev = b;
            }
            if (count != nr_free_[k]) return "nr_free[" + std::to_string(k) + "] is " + std::to_string(nr_free_[k]) + " but the list holds " + std::to_string(count);
            if (((free_mask_ >> k) & 1u) != (count != 0 ? 1u : 0u)) return "the free-list bitmap disagrees with list " + std::to_string(k);
            free_sum += count << k;
        }
        if (free_sum != free_pages_) return "free pages counted " + std::to_string(free_sum) + " but recorded " + std::to_string(free_pages_);
        std::uint64_t pcp_sum = 0;
        if constexpr (has_pcp) {
            for (unsigned c = 0; c < pcp_count_; ++c) {
                const PcpSet& s = pcp_[c];
                std::uint64_t pages = 0;
                for (unsigned k = 0; k < pcp_lists; ++k) {
                    std::uint64_t count = 0;
                    std::uint32_t prev = Page::nil;
                    for (std::uint32_t b = s.head[k]; b != Page::nil; b = table_[b].lo_) {
                        if (b >= n) return "per-CPU list " + std::to_string(k) + " of cpu " + std::to_string(c) + " links outside the table";
                        const Page& p = table_[b];
                        const std::string at = "per-CPU block at pfn " + std::to_string(first + b) + " (cpu " + std::to_string(c) + ")";
                        if (!p.test(PageFlag::pcp) || p.order_ != k) return at + " is on list " + std::to_string(k) + " without the pcp flag of that order";
                        if (p.hi_ != prev) return at + " has a broken back link";
                        if (((first + b) & ((std::uint64_t{1} << k) - 1)) != 0) return at + " is not aligned to its order";
                        if (p.refcount() != 0) return at + " has a non-zero reference count";
                        if (++count > n) return "per-CPU list " + std::to_string(k) + " of cpu " + std::to_string(c) + " has a cycle";
                        prev = b;
                    }
                    if (prev != s.tail[k]) return "per-CPU list " + std::to_string(k) + " of cpu " + std::to_string(c) + " has a wrong tail";
                    pages += count << k;
                }
                if (pages != s.count) return "cpu " + std::to_string(c) + " counts " + std::to_string(s.count) + " per-CPU pages but its lists hold " + std::to_string(pages);
                pcp_sum += pages;
            }
        }
        std::uint64_t used = 0, parked = 0;
        for (index_t i = 0; i < n;) { // blocks tile the table: free + used == total
            const Page& p = table_[i];
            const std::uint64_t len = std::uint64_t{1} << p.order_;
            const std::string at = "pfn " + std::to_string(first + i);
            if (!p.test(PageFlag::buddy) && !p.test(PageFlag::block) && !p.test(PageFlag::pcp)) return at + " starts no block";
            if (i + len > n) return at + " block runs past the table";
            for (index_t k = 1; k < len; ++k) {
                const Page& t = table_[i + k];
                const bool ok = p.test(PageFlag::head) ? (t.flags_ == flag(PageFlag::tail) && t.lo_ == i) : t.flags_ == 0;
                if (!ok) return "pfn " + std::to_string(first + i + k) + " inside the block at " + at + " has flags " + std::to_string(t.flags_);
            }
            if (p.test(PageFlag::block)) used += len;
            if (p.test(PageFlag::pcp)) parked += len;
            i += len;
        }
        if (parked != pcp_sum) return std::to_string(parked) + " pages carry the pcp flag but the per-CPU lists hold " + std::to_string(pcp_sum);
        if (used + free_pages_ + pcp_sum != n) return "free + per-CPU + used != total";
        return {};
    }

    region_param region_;
    PageTable<PageSize> table_;
    std::array<std::uint32_t, MaxOrder + 1> free_head_ = nils<MaxOrder + 1>();
    std::array<std::uint64_t, MaxOrder + 1> nr_free_{};
    std::uint32_t free_mask_ = 0;
    std::uint64_t free_pages_ = 0;
    std::uint64_t allocations_ = 0;
    std::uint64_t frees_ = 0;
    std::uint64_t failures_ = 0;
    mutable lock_type lock_;
    std::unique_ptr<PcpSet[]> pcp_;   // per-CPU page lists (with policy::PerCpuPages)
    unsigned pcp_count_ = 0;
    unsigned pcp_batch_ = 0;
    unsigned pcp_high_ = 0;
    [[no_unique_address]] error_policy_type error_;
    std::ostream* warn_ = &std::clog;
    std::string name_ = "kmem";
    int node_ = 0;

    template <std::size_t N>
    static constexpr std::array<std::uint32_t, N> nils() noexcept {
        std::array<std::uint32_t, N> a{};
        a.fill(Page::nil);
        return a;
    }
};

} // namespace kmem
