/// @file
/// The binary buddy allocator (mm/page_alloc.c): power-of-two blocks of pages over any region.
///
/// `BuddyAllocator` is a thin composition of the page allocator's parts: a MemMap (the region and its page
/// descriptors, owned or borrowed), a FreeArea (the per-order free lists, rmqueue_smallest / expand /
/// free_one_page), optionally PcpLists (per-CPU page lists), a lock, an error policy and the reports; the
/// kernel's API (alloc_pages, __get_free_pages, alloc_pages_exact, free_pages ...) comes from PageApi.  Metadata
/// lives in a side table, never in the region, so the same allocator manages host memory (handing out
/// pointers) and offset-only device memory (handing out offsets).
///
/// `BuddyAllocator<MaxOrder, PageSize, Policies...>`: MaxOrder is the largest order (MAX_PAGE_ORDER, inclusive),
/// PageSize the page size in bytes.  Policies, in any order: one Region type (owned, or borrowed when given as a
/// reference `R&`) or a MemMap (owned) / `MemMap&` (borrowed), a lock policy (policy::NoLock by default), an
/// error policy (policy::AssertOnError by default), a zone (policy::InZone, ZONE_NORMAL by default), and
/// optionally policy::PerCpuPages, which puts per-CPU page lists in front of the free lists (see pcp_lists.hpp).
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

#include <kmem/detail/policies.hpp>
#include <kmem/detail/reports.hpp>
#include <kmem/fault.hpp>
#include <kmem/free_area.hpp>
#include <kmem/gfp.hpp>
#include <kmem/mem_map.hpp>
#include <kmem/page.hpp>
#include <kmem/page_api.hpp>
#include <kmem/pcp_lists.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/policy/zone.hpp>
#include <kmem/region.hpp>

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <ostream>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

namespace kmem {

namespace detail {
struct ZoneAccess; // a Node's door to its zones' primitives (zone.hpp)
} // namespace detail

/// A snapshot of a buddy allocator's counters (/proc/vmstat and /proc/buddyinfo figures).
template <unsigned MaxOrder>
struct BuddyStats {
    std::array<std::uint64_t, MaxOrder + 1> nr_free{}; ///< Free blocks per order (free_area[order].nr_free).
    std::uint64_t free_pages = 0;  ///< Free pages on the free lists (NR_FREE_PAGES; per-CPU lists excluded).
    std::uint64_t pcp_pages = 0;   ///< Pages held on per-CPU page lists (pcp->count summed); 0 without them.
    std::uint64_t total_pages = 0; ///< Pages managed (managed_pages).
    std::uint64_t allocations = 0; ///< Successful allocations (pgalloc).
    std::uint64_t frees = 0;       ///< Blocks returned (pgfree).
    std::uint64_t failures = 0;    ///< Allocations that failed (allocstall-like).
};

/// The binary buddy allocator over one region (the kernel's zone free_area and __alloc_pages / __free_pages).
template <unsigned MaxOrder, std::size_t PageSize, class... Policies>
class BuddyAllocator : public PageApi<BuddyAllocator<MaxOrder, PageSize, Policies...>,
                                      detail::map_of_t<PageSize, Policies...>::addressable> {
    static_assert(std::has_single_bit(PageSize) && PageSize >= 64,
                  "BuddyAllocator's PageSize must be a power of two of at least 64 bytes.");
    static_assert(MaxOrder <= 30, "BuddyAllocator's MaxOrder must be at most 30.");
    using policies = detail::PolicySet<Policies...>;
    static_assert(
        policies::template only<policy::region_policy_tag, policy::lock_policy_tag, policy::error_policy_tag,
                                policy::zone_policy_tag, policy::pcp_policy_tag, policy::fault_policy_tag,
                                policy::migrate_policy_tag>,
        "a BuddyAllocator policy must be a Region, a lock policy, an error policy, policy::InZone, "
        "policy::PerCpuPages, policy::MigrateTypes or a fault-injection policy (policy::FailPageAlloc).");
    static_assert(policies::template count<policy::region_policy_tag> == 1,
                  "BuddyAllocator needs exactly one Region policy (StaticRegion, SpanRegion, MmapRegion, "
                  "MemfdRegion, OffsetRegion, or a reference to one to borrow it).");
    static_assert(policies::unique);
    using pcp_policy = typename policies::template get<policy::pcp_policy_tag, policy::PerCpuPages<1, 1, 0>>;
    using Base = PageApi<BuddyAllocator, detail::map_of_t<PageSize, Policies...>::addressable>;
    friend Base;

public:
    /// The region (or memory map) as given: a type (owned) or a reference (borrowed).
    using region_param = typename policies::template get<policy::region_policy_tag, detail::missing_policy>;
    /// The memory map type: MemMap<region_param, PageSize>, or the MemMap (reference) given.
    using map_param = typename detail::map_for<region_param, PageSize>::type;
    /// The memory map type without reference.
    using map_type = std::remove_cvref_t<map_param>;
    static_assert(map_type::page_size == PageSize, "a borrowed MemMap must have the allocator's PageSize.");
    /// The region type.
    using region_type = typename map_type::region_type;
    /// The lock policy.
    using lock_type = typename policies::template get<policy::lock_policy_tag, policy::NoLock>;
    static_assert(policy::LockPolicy<lock_type>, "the lock policy needs lock(), unlock() and may_sleep.");
    /// The error policy.
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    static_assert(policy::ErrorPolicy<error_policy_type>,
                  "the error policy needs on_error(const UsageError&).");
    /// The fault-injection policy (policy::NoFaults by default; policy::FailPageAlloc is fail_page_alloc).
    using fault_policy_type = typename policies::template get<policy::fault_policy_tag, policy::NoFaults>;
    /// The largest order (MAX_PAGE_ORDER); orders 0..max_order exist.
    static constexpr unsigned max_order = MaxOrder;
    /// Bytes per page (PAGE_SIZE).
    static constexpr std::size_t page_size = PageSize;
    /// log2(PageSize) (PAGE_SHIFT).
    static constexpr unsigned page_shift = static_cast<unsigned>(std::countr_zero(PageSize));
    /// The zone this allocator's memory belongs to.
    static constexpr ZoneType zone =
        policies::template get<policy::zone_policy_tag, policy::InZone<ZoneType::normal>>::zone;
    /// True when the region holds host memory, so pages have addresses.
    static constexpr bool addressable = region_type::addressable;
    /// True when holders of the lock may sleep, so GFP flags with direct reclaim are allowed.
    static constexpr bool may_sleep = lock_type::may_sleep;
    /// True when the allocator keeps per-CPU page lists (policy::PerCpuPages).
    static constexpr bool has_pcp = policies::template count<policy::pcp_policy_tag> == 1;
    /// True when pageblocks carry migrate types (policy::MigrateTypes): free lists per order and type.
    static constexpr bool has_migrate_types = policies::template count<policy::migrate_policy_tag> == 1;
    /// The free area type.
    using area_type = FreeArea<MaxOrder, has_migrate_types ? nr_migrate_types : 1>;
    /// The largest order served from the per-CPU page lists (PAGE_ALLOC_COSTLY_ORDER); meaningful with has_pcp.
    static constexpr unsigned pcp_max_order =
        pcp_policy::max_order < MaxOrder ? pcp_policy::max_order : MaxOrder;
    /// Refills in a row (no free in between) after which an empty per-CPU list is no longer refilled.
    static constexpr unsigned pcp_refill_streak_limit = PcpLists<0, false>::refill_streak_limit;
    /// Pages freed in a row, as a multiple of pcp_high(), after which frees bypass the per-CPU lists.
    static constexpr unsigned pcp_free_streak_factor = PcpLists<0, false>::free_streak_factor;

    /// Builds the allocator over a region constructed from `args` (or bound to it, for a borrowed region or
    /// map); every whole, aligned, unreserved page goes on the free lists as the largest blocks that fit.
    template <class... Args>
    explicit BuddyAllocator(Args&&... args)
        : map_(std::forward<Args>(args)...), area_(map_.pages(), map_.first_pfn(), map_.size()),
          pcp_(initial_batch(), initial_high()) {
        populate();
    }
    BuddyAllocator(const BuddyAllocator&) = delete;            ///< Not copyable.
    BuddyAllocator& operator=(const BuddyAllocator&) = delete; ///< Not copyable.

    // ----- state and reports -------------------------------------------------------------------------------

    /// Free pages on the free lists (nr_free_pages); pages held on per-CPU lists are not counted, as in the
    /// kernel (see nr_pcp_pages()).
    std::uint64_t nr_free_pages() const {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.free_pages();
    }
    /// Pages this allocator manages (zone managed_pages): the whole pages of the region less reserved ones.
    std::uint64_t total_pages() const noexcept { return map_.size() - reserved_; }
    /// Free blocks of `order` (free_area[order].nr_free).
    std::uint64_t nr_free(unsigned order) const {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.nr_free(order);
    }
    /// A snapshot of every counter.
    BuddyStats<MaxOrder> stats() const {
        BuddyStats<MaxOrder> s;
        if constexpr (has_pcp) pcp_.add_counts(s.pcp_pages, s.allocations, s.frees); // vm_event_states
        policy::LockGuard<lock_type> guard(lock_);
        s.nr_free = area_.nr_free_all();
        s.free_pages = area_.free_pages();
        s.total_pages = total_pages();
        s.allocations += allocations_;
        s.frees += frees_;
        s.failures = failures_;
        return s;
    }
    /// Free blocks of `order` on the lists of migrate type `mt` (/proc/pagetypeinfo); with no migrate types,
    /// type 0 holds everything.
    std::uint64_t nr_free(unsigned order, unsigned mt) const {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.nr_free(order, mt);
    }
    /// Pageblocks of migrate type `mt` (the "Number of blocks type" table).
    std::uint64_t nr_pageblocks(unsigned mt) const {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.nr_pageblocks(mt);
    }
    /// The migrate type of the pageblock holding `page` (get_pageblock_migratetype).
    unsigned pageblock_migratetype(const Page* page) const {
        const index_t i = map_.index_of(page);
        if (i == Page::nil) return 0;
        policy::LockGuard<lock_type> guard(lock_);
        return area_.pageblock_type(i);
    }
    /// Allocations that fell back to another migrate type's block, and the pageblocks they claimed.
    std::pair<std::uint64_t, std::uint64_t> fallback_counts() const {
        policy::LockGuard<lock_type> guard(lock_);
        return {area_.fallbacks(), area_.steals()};
    }
    /// Pages in HIGHATOMIC reserve pageblocks (nr_reserved_highatomic).
    std::uint64_t reserved_highatomic() const {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.reserved_highatomic();
    }
    /// Gives one HIGHATOMIC pageblock back to migrate type `mt` (unreserve_highatomic_pageblock); false when
    /// none is reserved.
    bool unreserve_highatomic(unsigned mt = static_cast<unsigned>(MigrateType::movable)) {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.unreserve_highatomic(mt);
    }
    /// The largest order with a free block, or -1 when nothing is free.
    int largest_free_order() const {
        policy::LockGuard<lock_type> guard(lock_);
        return area_.largest_order();
    }
    /// This allocator's line in /proc/buddyinfo: `Node 0, zone   Normal` then one count per order.
    std::string buddyinfo() const {
        std::array<std::uint64_t, MaxOrder + 1> nr;
        {
            policy::LockGuard<lock_type> guard(lock_);
            nr = area_.nr_free_all();
        }
        return detail::buddyinfo_line(node_, zone, nr);
    }
    /// The region.
    const region_type& region() const noexcept { return map_.region(); }
    /// The page descriptor table (mem_map).
    const PageTable<PageSize>& page_table() const noexcept { return map_.page_table(); }
    /// The memory map: region, descriptors and conversions.
    const map_type& mem_map() const noexcept { return map_; }
    /// The error policy, e.g. to install a callback.
    error_policy_type& error_policy() noexcept { return error_; }
    /// The fault-injection policy (set its attr() to make requests fail on purpose).
    fault_policy_type& fault_policy() noexcept { return fault_; }
    /// Names the allocator in failure reports (the kernel prints the task's comm there); default "kmem".
    void set_name(std::string name) { name_ = std::move(name); }
    /// The node id printed by buddyinfo() (default 0).
    void set_node(int node) noexcept { node_ = node; }
    /// Where allocation-failure reports go (default std::clog); nullptr silences them.  Reports are written
    /// after the allocator's lock is released.
    void set_warning_stream(std::ostream* out) noexcept { warn_ = out; }

    // ----- per-CPU page lists (with policy::PerCpuPages) ------------------------------------------------------

    /// Pages held on all per-CPU page lists (the pcp->count of every CPU, summed).
    std::uint64_t nr_pcp_pages() const requires has_pcp { return pcp_.nr_pages(); }
    /// Pages moved between a per-CPU list and the free lists at a time (pcp->batch).
    unsigned pcp_batch() const noexcept requires has_pcp { return pcp_.batch(); }
    /// Pages a CPU's lists may hold before `pcp_batch()` of them go back (pcp->high).
    unsigned pcp_high() const noexcept requires has_pcp { return pcp_.high(); }
    /// True when the per-CPU sets are locked with restartable sequences, so that the hot path has no locked
    /// instruction (x86-64, glibc's rseq registration, membarrier's expedited rseq fence; see design.md).
    bool pcp_uses_rseq() const noexcept requires has_pcp { return pcp_.uses_rseq(); }
    /// The number of per-CPU list sets: one per configured CPU with a lock policy, one without.
    unsigned pcp_sets() const noexcept requires has_pcp { return pcp_.sets(); }
    /// Sets high and batch for every CPU (__zone_set_pageset_high_and_batch, the percpu_pagelist sysctl) and
    /// drains the lists; unless 1 <= batch <= high, reports ErrorKind::bad_parameter and changes nothing.  Not
    /// for concurrent use with allocations.
    void set_pcp_high_and_batch(unsigned high, unsigned batch) requires has_pcp {
        if (batch == 0 || high < batch)
            return report({detail::Misuse::pcp_parameters, "set_pcp_high_and_batch", batch, high});
        drain_all_pages();
        pcp_.set_high_and_batch(high, batch);
    }
    /// Gives every page on the calling CPU's lists back to the free lists, where they merge (drain_local_pages).
    /// Returns the number of pages given back.
    std::uint64_t drain_local_pages() requires has_pcp { return pcp_.drain(pcp_.local_cpu(), area_, lock_); }
    /// Gives every page on every CPU's lists back to the free lists (drain_all_pages); returns how many.
    std::uint64_t drain_all_pages() requires has_pcp {
        std::uint64_t n = 0;
        for (unsigned c = 0; c < pcp_.sets(); ++c) n += pcp_.drain(c, area_, lock_);
        return n;
    }

    /// Checks every invariant (free lists well formed and counted, blocks aligned and inside the table, no two
    /// free buddies of equal order, per-CPU lists well formed and counted, blocks tile the table,
    /// free + per-CPU + used == total); returns the first violation, or an empty string when all hold.
    /// O(pages); for tests and debugging.
    std::string check_invariants() const {
        if constexpr (has_pcp) pcp_.lock_all(); // per-CPU locks before the zone lock, in CPU order
        std::string problem;
        {
            policy::LockGuard<lock_type> guard(lock_);
            problem = check_locked();
        }
        if constexpr (has_pcp) pcp_.unlock_all();
        return problem;
    }

private:
    using index_t = detail::page_index;
    using pcp_type = std::conditional_t<has_pcp,
                                        PcpLists<pcp_max_order, !std::is_same_v<lock_type, policy::NoLock>,
                                                 has_migrate_types ? nr_pcp_migrate_types : 1>,
                                        detail::NoPcpLists>;
    static constexpr std::uint16_t flag(PageFlag f) noexcept { return detail::flag(f); }
    Page& page(index_t i) const noexcept { return map_[i]; }
    std::uint64_t pfn_of(index_t i) const noexcept { return map_.first_pfn() + i; }

    unsigned initial_batch() const noexcept {
        if constexpr (has_pcp)
            return pcp_policy::batch != 0 ? pcp_policy::batch : zone_batchsize<PageSize>(map_.size());
        else
            return 0;
    }
    unsigned initial_high() const noexcept {
        if constexpr (has_pcp)
            return pcp_policy::high != 0 ? pcp_policy::high
                                         : zone_highsize<PageSize>(map_.size(), initial_batch(),
                                                                   pcp_type::sets_on_this_machine());
        else
            return 0;
    }

    // memblock_free_all(): every page that is not reserved goes to the free lists.  A map with no reservation (the
    // common case) is not scanned, so a huge offset-only region does not fault in its whole descriptor table.
    void populate() {
        const std::uint64_t n = map_.size();
        if (map_.reserved_pages() == 0) return area_.init_range(0, n);
        index_t run = 0;
        for (index_t i = 0; i < n; ++i) {
            if (!page(i).test(PageFlag::reserved)) continue;
            ++reserved_;
            if (i > run) area_.init_range(run, i - run);
            run = i + 1;
        }
        if (n > run) area_.init_range(run, n - run);
    }

    // ----- allocation --------------------------------------------------------------------------------------
    Page* alloc_core(std::uint32_t bits, unsigned order, const Placement& where) {
        if (order > MaxOrder) [[unlikely]]
            return order_above_max(bits, order, "alloc_pages");
        if ((bits & gfp::bits::nofail) && order > 1) [[unlikely]] {
            count_failure();
            report({detail::Misuse::nofail_order, "alloc_pages", order});
            return nullptr;
        }
        if (fault_.should_fail(bits, order)) [[unlikely]] { // should_fail_alloc_page(): fails quietly
            count_failure();
            return nullptr;
        }
        const bool placed = !where.unrestricted();
        const unsigned mt = gfp_migratetype(bits);
        index_t i = take_fast(order, where, placed, mt);
        if (i == Page::nil) [[unlikely]] {
            i = alloc_slowpath(bits, order, where, placed);
            if (i == Page::nil) return nullptr;
        }
        return finish_alloc(i, order, bits);
    }
    // A block from the calling CPU's list (rmqueue_pcplist()), else from the free lists; Page::nil when neither
    // has one.
    index_t take_fast(unsigned order, const Placement& where, bool placed, unsigned mt) {
        if constexpr (has_pcp) {
            if (order <= pcp_max_order && !placed) [[likely]] {
                const int cpu = pcp_.try_lock_local();
                if (cpu >= 0) [[likely]] {
                    const index_t i = pcp_.alloc(static_cast<unsigned>(cpu), area_, lock_, order, mt);
                    pcp_.unlock_local(static_cast<unsigned>(cpu));
                    if (i != Page::nil) [[likely]]
                        return i;
                }
            }
        }
        return zone_alloc(order, where, placed, mt);
    }
    // For a zone of a Node (detail::ZoneAccess): the first attempt of an unplaced request, as try_alloc() with no
    // drain and no HIGHATOMIC use, kept small so that the node's fast path inlines it.
    Page* try_alloc_fast(std::uint32_t bits, unsigned order) {
        index_t i = Page::nil;
        const unsigned mt = gfp_migratetype(bits);
        if constexpr (has_pcp) {
            if (order <= pcp_max_order) [[likely]] {
                const int cpu = pcp_.try_lock_local();
                if (cpu >= 0) [[likely]] {
                    i = pcp_.alloc(static_cast<unsigned>(cpu), area_, lock_, order, mt);
                    pcp_.unlock_local(static_cast<unsigned>(cpu));
                }
            }
        }
        if (i == Page::nil) [[unlikely]]
            i = zone_alloc_noinline(order, mt);
        if (i == Page::nil) [[unlikely]]
            return nullptr;
        return finish_alloc(i, order, bits);
    }
    [[gnu::noinline]] index_t zone_alloc_noinline(unsigned order, unsigned mt) {
        return zone_alloc(order, Placement{}, false, mt);
    }
    // For a zone of a Node (detail::ZoneAccess): one attempt, no failure counted or reported, no waiting; with
    // `drain`, pages parked on per-CPU lists are drained and the free lists tried again.
    // With `highatomic` (a high-order request that cannot block: ALLOC_HIGHATOMIC), HIGHATOMIC reserves are
    // tried first and the pageblock of what is taken becomes one (reserve_highatomic_pageblock); with
    // `highatomic_last` (a request that cannot block: ALLOC_NON_BLOCK) they are the last resort (rmqueue_buddy).
    Page* try_alloc(std::uint32_t bits, unsigned order, const Placement& where, bool drain, bool highatomic,
                    bool highatomic_last) {
        const bool placed = !where.unrestricted();
        const unsigned mt = gfp_migratetype(bits);
        index_t i = Page::nil;
        if constexpr (has_migrate_types) {
            if (highatomic && order > 0 && !placed) {
                policy::LockGuard<lock_type> guard(lock_);
                i = area_.rmqueue_smallest(order, static_cast<unsigned>(MigrateType::highatomic));
                if (i != Page::nil) ++allocations_;
            }
        }
        if (i == Page::nil) i = take_fast(order, where, placed, mt);
        if constexpr (has_pcp) {
            if (i == Page::nil && drain) {
                pcp_.lock_all();
                {
                    policy::LockGuard<lock_type> guard(lock_);
                    if (pcp_.drain_all_locked(area_) != 0) i = take_locked(order, where, placed, mt);
                }
                pcp_.unlock_all();
            }
        }
        if constexpr (has_migrate_types) {
            if (i == Page::nil && (highatomic || highatomic_last) && !placed) {
                policy::LockGuard<lock_type> guard(lock_);
                i = area_.rmqueue_smallest(order, static_cast<unsigned>(MigrateType::highatomic));
                if (i != Page::nil) ++allocations_;
            }
        }
        if (i == Page::nil) return nullptr;
        if constexpr (has_migrate_types) {
            if (highatomic && order > 0) {
                policy::LockGuard<lock_type> guard(lock_);
                area_.reserve_highatomic(i);
            }
        }
        return finish_alloc(i, order, bits);
    }
    // Takes a block from the free lists under the zone lock (__rmqueue()).
    index_t zone_alloc(unsigned order, const Placement& where, bool placed, unsigned mt) {
        policy::LockGuard<lock_type> guard(lock_);
        return take_locked(order, where, placed, mt);
    }
    index_t take_locked(unsigned order, const Placement& where, bool placed, unsigned mt) noexcept {
        const index_t i = placed ? take_placed(order, where) : area_.rmqueue(order, mt);
        if (i != Page::nil) ++allocations_;
        return i;
    }
    index_t take_placed(unsigned order, const Placement& where) noexcept {
        const region_type& r = map_.region();
        if (where.start >= r.size()) return Page::nil;
        const std::uint64_t lo = (r.base() + where.start + PageSize - 1) >> page_shift;
        const std::uint64_t end_byte = where.end > r.size() ? r.size() : where.end;
        const std::uint64_t hi = (r.base() + end_byte) >> page_shift;
        return area_.rmqueue_placed(order, lo, hi, where.top_down);
    }

    // __alloc_pages_slowpath(): the free lists had no block.  Pages parked on per-CPU lists are free too: with
    // every set and the zone lock held, drain them all and try again, so the answer is exact (another CPU cannot
    // refill from the drained pages in between).  A __GFP_NOFAIL request on an allocator whose lock lets other
    // threads free then waits for memory and retries until it gets it, as the kernel's slow path loops.
    index_t alloc_slowpath(std::uint32_t bits, unsigned order, const Placement& where, bool placed) {
        constexpr bool others_may_free = !std::is_same_v<lock_type, policy::NoLock>;
        const unsigned mt = gfp_migratetype(bits);
        auto backoff = std::chrono::microseconds(1);
        for (bool first = true;; first = false) {
            index_t i = Page::nil;
            if constexpr (has_pcp) {
                pcp_.lock_all();
                {
                    policy::LockGuard<lock_type> guard(lock_);
                    i = take_locked(order, where, placed, mt);
                    if (i == Page::nil && pcp_.drain_all_locked(area_) != 0)
                        i = take_locked(order, where, placed, mt);
                }
                pcp_.unlock_all();
            } else if (!first) {
                i = zone_alloc(order, where, placed, mt);
            }
            if (i != Page::nil) return i;
            const bool wait = others_may_free && (bits & gfp::bits::nofail);
            if (first) fail(bits, order, wait);
            if (!wait) return Page::nil;
            std::this_thread::sleep_for(backoff); // the kernel's nofail loop waits for reclaim and retries
            if (backoff < std::chrono::milliseconds(1)) backoff *= 2;
        }
    }
    // Counts and reports a failed request (warn_alloc): the text is built and written after the lock is released.
    void fail(std::uint32_t bits, unsigned order, bool will_wait) {
        const bool nofail = (bits & gfp::bits::nofail) != 0;
        const bool warn = warn_ != nullptr && (!(bits & gfp::bits::nowarn) || nofail);
        detail::FailureSnapshot<MaxOrder> snap;
        {
            policy::LockGuard<lock_type> guard(lock_);
            if (!will_wait) ++failures_;
            snap.nr_free = area_.nr_free_all();
            snap.free_pages = area_.free_pages();
            snap.total_pages = total_pages();
            snap.largest_order = area_.largest_order();
        }
        if (warn) *warn_ << detail::warn_alloc_text<MaxOrder>(name_, node_, zone, bits, order, snap);
        if (nofail && !will_wait) report({detail::Misuse::nofail_failed, "alloc_pages", order});
    }
    void count_failure() {
        policy::LockGuard<lock_type> guard(lock_);
        ++failures_;
    }
    // An order above MaxOrder is a failed allocation, not a caller error (the kernel's
    // WARN_ON_ONCE_GFP(order > MAX_PAGE_ORDER, gfp) then NULL): counted, warned about once unless __GFP_NOWARN.
    Page* order_above_max(std::uint32_t bits, unsigned order, std::string_view op) {
        count_failure();
        detail::warn_order_above_max(warn_, warned_order_, name_, op, order, bits, MaxOrder);
        return nullptr;
    }
    // try_allocate() of more bytes than the largest block.
    void oversized(std::uint32_t bits, std::uint64_t bytes) {
        count_failure();
        detail::warn_oversized(warn_, name_, bits, bytes, std::uint64_t{PageSize} << MaxOrder);
    }

    static void mark_allocated(Page& p, unsigned order) noexcept {
        detail::PageAccess::init_block(p, flag(PageFlag::block), order);
        set_page_refcounted(p);
    }
    // The block is the caller's now: set it up outside any lock (prep_new_page()).
    Page* finish_alloc(index_t i, unsigned order, std::uint32_t bits) noexcept {
        Page& head = page(i);
        mark_allocated(head, order);
        if ((bits & gfp::bits::comp) && order > 0) { // prep_compound_page()
            detail::PageAccess::set_flags(head, flag(PageFlag::block) | flag(PageFlag::head));
            for (index_t k = 1; k < (index_t{1} << order); ++k) {
                Page& t = page(i + k);
                detail::PageAccess::head_index(t) = i;
                detail::PageAccess::set_flags(t, flag(PageFlag::tail));
            }
        }
        if constexpr (addressable) {
            if (bits & gfp::bits::zero) std::memset(map_.page_address(&head), 0, PageSize << order);
        }
        return &head;
    }

    // ----- freeing -----------------------------------------------------------------------------------------

    // Frees the block at index i given with `order` by a caller (free_pages, put_page, free_offset).  With
    // per-CPU lists, a valid free of a small block goes on the calling CPU's list (free_unref_page()); a busy
    // list, a larger block or a mistake takes the zone lock, where detail::diagnose_free() diagnoses mistakes,
    // which are reported after the lock is released.
    void free_core(index_t i, unsigned order, std::string_view op, bool put = false) {
        if (!free_to_pcp(i, order)) free_under_lock(i, order, op, put);
    }
    // The part of free_core() under the zone lock: no per-CPU lists, a busy set, a larger block or a mistake.
    void free_under_lock(index_t i, unsigned order, std::string_view op, bool put) {
        bool done;
        {
            policy::LockGuard<lock_type> guard(lock_);
            done = is_allocated_block(page(i), order);
            if (done) [[likely]]
                free_block(i, order);
        }
        if (!done) [[unlikely]]
            free_slowpath(i, order, op, put);
    }
    // The per-CPU part of free_core() (free_unref_page()), also a Node's fast path (detail::ZoneAccess): true
    // when the block was dealt with (a valid free of a small block while the calling CPU's set was free).  The
    // pageblock's migrate type is read before the set is taken, so that the lookup's latency overlaps the lock.
    bool free_to_pcp(index_t i, unsigned order) noexcept {
        if constexpr (has_pcp) {
            if (order <= pcp_max_order) [[likely]] {
                const unsigned mt = area_.pageblock_type(i);
                const int cpu = pcp_.try_lock_local();
                if (cpu >= 0) [[likely]] {
                    Page& p = page(i);
                    if (is_allocated_block(p, order)) [[likely]] {
                        if (!detail::PageAccess::put_testzero(p)) {
                            pcp_.unlock_local(static_cast<unsigned>(cpu));
                        } else if (!pcp_.should_bypass(static_cast<unsigned>(cpu), order)) [[likely]] {
                            pcp_.free(static_cast<unsigned>(cpu), area_, lock_, i, order, mt);
                            pcp_.unlock_local(static_cast<unsigned>(cpu));
                        } else { // a long run of frees: straight to the free lists
                            pcp_.unlock_local(static_cast<unsigned>(cpu));
                            release_bypass(i, order);
                        }
                        return true;
                    }
                    pcp_.unlock_local(static_cast<unsigned>(cpu));
                }
            }
        }
        return false;
    }
    [[gnu::noinline]] void release_bypass(index_t i, unsigned order) noexcept {
        policy::LockGuard<lock_type> guard(lock_);
        release_block(i, order);
    }
    // For a zone of a Node: free_core() when free_to_pcp() said no, out of line.
    [[gnu::noinline]] void free_core_locked(index_t i, unsigned order, std::string_view op, bool put) {
        free_under_lock(i, order, op, put);
    }
    // A free that did not pass the quick check: diagnose it under the lock (it may have become valid meanwhile,
    // e.g. get_page raced with it), free it if it is fine after all, and report the mistake after the lock.
    [[gnu::noinline]] void free_slowpath(index_t i, unsigned order, std::string_view op, bool put) {
        detail::Diagnosis diag;
        {
            policy::LockGuard<lock_type> guard(lock_);
            diag = detail::diagnose_free<MaxOrder>(map_, i, order, op, put);
            if (!diag) free_block(i, order);
        }
        if (diag) report(diag);
    }
    static bool is_allocated_block(const Page& p, unsigned order) noexcept {
        return p.test(PageFlag::block) && p.order() == order && p.refcount() > 0;
    }
    // Drops the reference taken at allocation; frees the block when it was the last.  Zone lock held.
    void free_block(index_t i, unsigned order) noexcept {
        if (detail::PageAccess::put_testzero(page(i))) release_block(i, order);
    }
    // Returns a block whose last reference is gone to the free lists.  Zone lock held.
    void release_block(index_t i, unsigned order) noexcept {
        Page& p = page(i);
        if (p.test(PageFlag::head))
            for (index_t k = 1; k < (index_t{1} << order); ++k) detail::PageAccess::set_flags(page(i + k), 0);
        detail::PageAccess::set_flags(p, 0);
        ++frees_;
        area_.free_one_page(i, order);
    }

    // The index of a page's compound head (the page itself when it is not a tail): references live on heads.
    index_t head_of(index_t i) const noexcept {
        return page(i).test(PageFlag::tail) ? detail::PageAccess::head_index(page(i)) : i;
    }
    void get_page_core(Page* p) {
        detail::Diagnosis diag;
        index_t i = map_.index_of(p);
        if (i == Page::nil) {
            diag = map_.diagnose_page("get_page");
        } else {
            policy::LockGuard<lock_type> guard(lock_);
            i = head_of(i);
            if (!page(i).test(PageFlag::block))
                diag = {detail::Misuse::not_allocated, "get_page", pfn_of(i)};
            else
                kmem::get_page(page(i));
        }
        if (diag) report(diag);
    }
    void put_page_core(Page* p) {
        const index_t i = map_.index_of(p);
        if (i == Page::nil) return report(map_.diagnose_page("put_page"));
        const index_t h = head_of(i);
        free_core(h, page(h).order(), "put_page", true);
    }
    void split_page_core(Page* p, unsigned order) {
        const index_t i = map_.index_of(p);
        detail::Diagnosis diag;
        if (i == Page::nil) {
            diag = map_.diagnose_page("split_page");
        } else {
            policy::LockGuard<lock_type> guard(lock_);
            diag = detail::diagnose_free<MaxOrder>(map_, i, order, "split_page");
            if (!diag && page(i).test(PageFlag::head))
                diag = {detail::Misuse::split_compound, "split_page", pfn_of(i)};
            if (!diag) {
                detail::PageAccess::set_order(page(i),
                                              0); // the first page keeps its references, as in the kernel
                for (index_t k = 1; k < (index_t{1} << order); ++k) mark_allocated(page(i + k), 0);
            }
        }
        if (diag) report(diag);
    }

    // For a Node's compaction (detail::ZoneAccess): the free scanner's next target block (see
    // FreeArea::take_highest_below), set up as an allocation with `bits`.
    Page* take_compaction_target(index_t& cursor, unsigned order, index_t lo, std::uint32_t bits) {
        index_t i;
        {
            policy::LockGuard<lock_type> guard(lock_);
            i = area_.take_highest_below(cursor, order, lo);
            if (i != Page::nil) ++allocations_;
        }
        return i == Page::nil ? nullptr : finish_alloc(i, order, bits);
    }
    // alloc_pages_exact: a block of get_order(bytes), then its unused tail back to the free lists.
    Page* alloc_exact_core(std::uint32_t bits, std::size_t bytes) {
        const unsigned order = get_order<PageSize>(bytes);
        if (order > MaxOrder) return order_above_max(bits, order, "alloc_pages_exact");
        Page* p = alloc_core(bits & ~gfp::bits::comp, order, Placement{});
        return p == nullptr ? nullptr : trim_exact(p, bytes);
    }
    // Makes the first ceil(bytes / PageSize) pages of a fresh block of get_order(bytes) order-0 pages of the
    // caller's and gives the rest back (the tail of alloc_pages_exact / make_alloc_exact).
    Page* trim_exact(Page* p, std::size_t bytes) {
        const std::uint64_t pages = bytes == 0 ? 1 : (std::uint64_t{bytes} - 1) / PageSize + 1;
        const unsigned order = get_order<PageSize>(bytes);
        const auto i = static_cast<index_t>(map_.page_to_pfn(p) - map_.first_pfn());
        for (index_t k = 0; k < pages; ++k)
            mark_allocated(page(i + k), 0); // the caller's pages: no lock needed
        if (pages < (std::uint64_t{1} << order)) {
            policy::LockGuard<lock_type> guard(lock_);
            area_.free_range(i + static_cast<index_t>(pages), (std::uint64_t{1} << order) - pages);
        }
        return p;
    }
    void free_exact_core(index_t i, std::size_t bytes, std::string_view op) {
        const std::uint64_t pages = bytes == 0 ? 1 : (std::uint64_t{bytes} - 1) / PageSize + 1;
        if (pages > map_.size() - i) return report({detail::Misuse::exact_past_end, op, bytes, pfn_of(i)});
        detail::Diagnosis diag;
        {
            policy::LockGuard<lock_type> guard(lock_);
            for (std::uint64_t k = 0; k < pages && !diag;
                 ++k) // check every page first: a bad call changes nothing
                diag = detail::diagnose_free<MaxOrder>(map_, i + static_cast<index_t>(k), 0, op);
            if (!diag)
                for (std::uint64_t k = 0; k < pages; ++k) free_block(i + static_cast<index_t>(k), 0);
        }
        if (diag) report(diag);
    }

    // ----- reports -----------------------------------------------------------------------------------------
    void report(const detail::Diagnosis& d) { detail::report(error_, d); }

    std::string check_locked() const {
        if (std::string problem = area_.check(); !problem.empty()) return problem;
        std::uint64_t pcp_sum = 0;
        if constexpr (has_pcp) {
            if (std::string problem = pcp_.check(map_.pages(), map_.first_pfn(), map_.size(), pcp_sum);
                !problem.empty())
                return problem;
        }
        return detail::check_tiling(map_, area_.free_pages(), pcp_sum, reserved_);
    }

    friend struct detail::ZoneAccess;

    map_param map_;
    area_type area_;
    [[no_unique_address]] pcp_type pcp_;
    mutable lock_type lock_;
    std::uint64_t reserved_ = 0;
    std::uint64_t allocations_ = 0;
    std::uint64_t frees_ = 0;
    std::uint64_t failures_ = 0;
    std::atomic<bool> warned_order_{false};
    [[no_unique_address]] error_policy_type error_;
    [[no_unique_address]] fault_policy_type fault_;
    std::ostream* warn_ = &std::clog;
    std::string name_ = "kmem";
    int node_ = 0;
};

} // namespace kmem
