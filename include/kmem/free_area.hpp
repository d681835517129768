/// @file
/// The free area of a buddy allocator (the kernel's struct free_area array in struct zone, and the functions of
/// mm/page_alloc.c that work on it): one free list per order threaded through the page descriptors, the count of
/// free blocks per order (nr_free), a bitmap of non-empty orders, and the free page count (NR_FREE_PAGES).
///
/// FreeArea works on a span of page descriptors (the pages one allocator or one zone manages) and knows nothing
/// of regions, locks, flags or errors: callers hold their lock and pass checked arguments.  Its operations carry
/// the kernel's names: rmqueue_smallest() takes a block from the smallest non-empty order and expands it,
/// free_one_page() merges a block with its free buddies and puts it on a list, and free_range() returns a run of
/// pages as the largest aligned blocks.  Placed (range / top-down) allocation mirrors drm_buddy.
///
/// With NrTypes = 4 (`FreeArea<MaxOrder, nr_migrate_types>`) the area is the kernel's anti-fragmentation layout:
/// pageblocks of 2^pageblock_order pages each carry a migrate type (UNMOVABLE, MOVABLE, RECLAIMABLE, HIGHATOMIC;
/// MOVABLE at first), there is one list per order per type (free_list[order][migratetype]), a request takes its
/// type's lists (rmqueue) and, when they are empty, falls back to another type's largest block in the kernel's
/// fallback order, claiming the whole pageblock when at least half of it is free (__rmqueue_fallback); HIGHATOMIC
/// pageblocks are reserved for high-order atomic requests.  With NrTypes = 1 (the default) none of that exists.
///
/// @code
///   kmem::PageTable<4096> table(/*first pfn*/ 0, /*pages*/ 64);
///   kmem::FreeArea<6> area(&table[0], table.first_pfn(), 64);
///   area.init_range(0, 64);                        // one free block of order 6
///   auto i = area.rmqueue_smallest(0);             // split down to one page: orders 0..5 get one block each
///   assert(i == 0 && area.free_pages() == 63 && area.nr_free(5) == 1);
///   area.free_one_page(i, 0);                      // merges all the way back
///   assert(area.nr_free(6) == 1 && area.free_pages() == 64);
/// @endcode
#pragma once

#include <kmem/detail/index_list.hpp>
#include <kmem/detail/published.hpp>
#include <kmem/page.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace kmem {

/// The migrate type of a pageblock and of the free lists (enum migratetype).
enum class MigrateType : std::uint8_t {
    unmovable = 0,   ///< MIGRATE_UNMOVABLE: kernel data that never moves.
    movable = 1,     ///< MIGRATE_MOVABLE: pages that compaction can migrate (__GFP_MOVABLE).
    reclaimable = 2, ///< MIGRATE_RECLAIMABLE: memory a shrinker can free (__GFP_RECLAIMABLE).
    highatomic = 3,  ///< MIGRATE_HIGHATOMIC: a reserve for high-order atomic requests.
};
/// The number of migrate types (MIGRATE_TYPES without CMA and ISOLATE).
inline constexpr unsigned nr_migrate_types = 4;
/// The types kept on per-CPU lists (MIGRATE_PCPTYPES): unmovable, movable, reclaimable.
inline constexpr unsigned nr_pcp_migrate_types = 3;
/// The kernel's name of a migrate type as /proc/pagetypeinfo prints it.
constexpr std::string_view migratetype_name(unsigned mt) noexcept {
    constexpr std::array<std::string_view, nr_migrate_types> names{"Unmovable", "Movable", "Reclaimable",
                                                                   "HighAtomic"};
    return mt < nr_migrate_types ? names[mt] : "Unknown";
}
/// The migrate type of a request (gfp_migratetype): __GFP_MOVABLE -> movable, __GFP_RECLAIMABLE -> reclaimable,
/// otherwise unmovable.
constexpr unsigned gfp_migratetype(std::uint32_t gfp_bits) noexcept {
    return (gfp_bits >> 3) & 3u; // ___GFP_MOVABLE is bit 3, ___GFP_RECLAIMABLE bit 4 (GFP_MOVABLE_SHIFT)
}

/// Per-order free lists over a span of page descriptors (struct free_area[MAX_PAGE_ORDER + 1]); with NrTypes =
/// nr_migrate_types, per order and per migrate type, over typed pageblocks (see the file comment).
template <unsigned MaxOrder, unsigned NrTypes = 1>
class FreeArea {
    static_assert(MaxOrder <= 30, "FreeArea's MaxOrder must be at most 30.");
    static_assert(NrTypes == 1 || NrTypes == nr_migrate_types,
                  "FreeArea has one list per order (NrTypes 1) or one per order and migrate type (4).");

public:
    /// The index type of a page within the span (pfn - first_pfn()).
    using index_type = detail::page_index;
    /// The largest order (MAX_PAGE_ORDER).
    static constexpr unsigned max_order = MaxOrder;
    /// The number of migrate types (1: no anti-fragmentation).
    static constexpr unsigned nr_types = NrTypes;
    /// True when pageblocks carry migrate types.
    static constexpr bool typed = NrTypes > 1;
    /// The order of a pageblock (pageblock_order = min(9, MaxOrder)).
    static constexpr unsigned pageblock_order = MaxOrder < 9 ? MaxOrder : 9;

    /// A free area over `count` descriptors starting at `pages`, for page frames from `first_pfn` on; every list
    /// starts empty (pages reach it through init_range() or free_one_page()).
    FreeArea(Page* pages, std::uint64_t first_pfn, std::uint64_t count)
        : pages_(pages), first_pfn_(first_pfn), count_(count) {
        if constexpr (typed) {
            const std::uint64_t blocks = count == 0 ? 0
                                                    : ((first_pfn + count - 1) >> pageblock_order) -
                                                          (first_pfn >> pageblock_order) + 1;
            t_.pageblocks.assign(blocks, static_cast<std::uint8_t>(MigrateType::movable));
            t_.max_highatomic = count / 100 + (std::uint64_t{1} << pageblock_order);
        }
    }
    FreeArea(const FreeArea&) = delete;            ///< Not copyable: the lists point into the descriptors.
    FreeArea& operator=(const FreeArea&) = delete; ///< Not copyable.

    // ----- allocation ----------------------------------------------------------------------------------------

    /// Takes a block of `order` from the smallest non-empty order that has one, splitting the rest onto the
    /// lower lists (__rmqueue_smallest + expand); returns its index or Page::nil.  O(order).
    index_type rmqueue_smallest(unsigned order, unsigned mt = 0) noexcept {
        if constexpr (typed) {
            const std::uint32_t avail = t_.type_mask[mt] & ~((1u << order) - 1u);
            if (avail == 0) return Page::nil;
            const auto cur = static_cast<unsigned>(std::countr_zero(avail));
            const index_type i = del_page_from_free_list(lists_[cur][mt].front(), cur);
            expand(i, order, cur, mt);
            free_pages_ -= std::uint64_t{1} << order;
            publish();
            return i;
        }
        const std::uint32_t avail = mask_ & ~((1u << order) - 1u);
        if (avail == 0) return Page::nil;
        const auto cur = static_cast<unsigned>(std::countr_zero(avail));
        const index_type i = lists_[cur][0].pop_front(pages_);
        detail::PageAccess::set_flags(pages_[i], 0);
        if (lists_[cur][0].empty()) mask_ &= ~(1u << cur);
        --nr_free_[cur];
        // expand(): keep the lower half, free the upper one, down to the requested order.  Orders order..cur-1
        // are empty (cur is the smallest non-empty order), so each upper half becomes a one-block list.
        for (unsigned k = order; k < cur; ++k) {
            const index_type upper = i + (index_type{1} << k);
            set_free_block(upper, k);
            lists_[k][0].reset_to(pages_, upper);
            nr_free_[k] = 1;
        }
        mask_ |= ((1u << cur) - 1u) & ~((1u << order) - 1u);
        free_pages_ -= std::uint64_t{1} << order;
        return i;
    }

    /// Takes a block of `order` for a request of migrate type `mt` (__rmqueue): from the type's own lists, else
    /// from another type's in the kernel's fallback order (__rmqueue_fallback); Page::nil when nothing fits.
    /// Without types this is rmqueue_smallest().
    index_type rmqueue(unsigned order, unsigned mt = 0) noexcept {
        const index_type i = rmqueue_smallest(order, mt);
        if constexpr (typed) {
            if (i == Page::nil && mt < nr_pcp_migrate_types) return rmqueue_fallback(order, mt);
        }
        return i;
    }

    /// Takes the lowest (or, with `top_down`, the highest) naturally aligned block of `order` lying inside the
    /// page frames [lo_pfn, hi_pfn), splitting the free block it comes from (drm_buddy's range and top-down
    /// allocation); returns its index or Page::nil.  O(free blocks).
    index_type rmqueue_placed(unsigned order, std::uint64_t lo_pfn, std::uint64_t hi_pfn,
                              bool top_down) noexcept {
        if (hi_pfn <= lo_pfn) return Page::nil;
        const std::uint64_t size = std::uint64_t{1} << order;
        bool found = false;
        std::uint64_t best = 0; // pfn of the chosen block
        index_type from = 0;
        unsigned from_order = 0;
        for (unsigned k = order; k <= MaxOrder; ++k) {
            for (unsigned t = 0; t < NrTypes; ++t) {
                list(k, t).walk(pages_, count_, [&](index_type b) {
                    const std::uint64_t bs = first_pfn_ + b, be = bs + (std::uint64_t{1} << k);
                    const std::uint64_t s = bs > lo_pfn ? bs : lo_pfn, e = be < hi_pfn ? be : hi_pfn;
                    if (e <= s || e - s < size) return true;
                    std::uint64_t cand;
                    if (top_down) {
                        cand = (e - size) & ~(size - 1);
                        if (cand < s || (found && cand <= best)) return true;
                    } else {
                        cand = (s + size - 1) & ~(size - 1);
                        if (cand + size > e || (found && cand >= best)) return true;
                    }
                    found = true;
                    best = cand;
                    from = b;
                    from_order = k;
                    return true;
                });
            }
        }
        if (!found) return Page::nil;
        const unsigned from_type = list_type(from);
        del_page_from_free_list(from, from_order);
        index_type blk = from;
        const auto target = static_cast<index_type>(best - first_pfn_);
        for (unsigned k = from_order; k > order;) { // split towards the target, freeing the other halves
            --k;
            const index_type upper = blk + (index_type{1} << k);
            if (target >= upper) {
                add_to_free_list(blk, k, from_type);
                blk = upper;
            } else {
                add_to_free_list(upper, k, from_type);
            }
        }
        free_pages_ -= size;
        publish();
        return blk;
    }

    /// Compaction's free scanner (isolate_freepages): scanning down from page `cursor` (exclusive) to `lo`, finds
    /// the highest free block that holds a naturally aligned block of `order` at or above `lo`, takes that block
    /// (the rest stays free) and moves `cursor` down to it; Page::nil when there is none.  The cursor only moves
    /// down, so one compaction pass scans each page once.
    index_type take_highest_below(index_type& cursor, unsigned order, index_type lo) noexcept {
        const index_type size = index_type{1} << order;
        while (cursor > lo) {
            const index_type k = cursor - 1;
            const Page& p = pages_[k];
            if (!is_free_head(p)) {
                cursor = k;
                continue;
            }
            const unsigned bo = p.order(); // k heads a free block [k, k + 2^bo)
            if (bo < order) {
                cursor = k;
                continue;
            }
            const index_type top = k + (index_type{1} << bo) - size;
            if (top < lo) return Page::nil;
            const unsigned from_type = list_type(k);
            del_page_from_free_list(k, bo);
            index_type blk = k;
            for (unsigned o = bo; o > order;) { // split towards the top, freeing the lower halves
                --o;
                const index_type upper = blk + (index_type{1} << o);
                add_to_free_list(blk, o, from_type);
                blk = upper;
            }
            free_pages_ -= size;
            publish();
            cursor = top;
            return top;
        }
        return Page::nil;
    }

    // ----- freeing -------------------------------------------------------------------------------------------

    /// Returns the block of `order` at index `i` (not on any list) and merges it with its free buddies up to
    /// MaxOrder (__free_one_page).  O(MaxOrder).
    void free_one_page(index_type i, unsigned order) noexcept {
        free_pages_ += std::uint64_t{1} << order;
        const unsigned mt = pageblock_type(i); // get_pfnblock_migratetype() of the freed page
        std::uint64_t pfn = first_pfn_ + i;
        while (order < MaxOrder) {
            const std::uint64_t buddy_pfn = pfn ^ (std::uint64_t{1} << order); // __find_buddy_pfn
            const std::uint64_t b = buddy_pfn - first_pfn_;
            if (b >= count_) break;
            const Page& bp = pages_[b];
            if (!(detail::PageAccess::load_flags(bp) & detail::flag(PageFlag::buddy)) || bp.order() != order)
                break;             // page_is_buddy()
            if constexpr (typed) { // a HIGHATOMIC pageblock does not merge with a pageblock of another type
                if (order >= pageblock_order) {
                    const unsigned bmt = pageblock_type(static_cast<index_type>(b));
                    if (bmt != mt && (!mergeable(mt) || !mergeable(bmt))) break;
                }
            }
            del_page_from_free_list(static_cast<index_type>(b), order);
            pfn &= buddy_pfn;
            ++order;
        }
        add_to_free_list(static_cast<index_type>(pfn - first_pfn_), order, mt);
        publish();
    }

    /// Returns the pages [i, i + count) as the largest naturally aligned blocks, merging each (the tail of
    /// alloc_pages_exact, __free_pages_core on a range).
    void free_range(index_type i, std::uint64_t count) noexcept {
        while (count > 0) {
            const unsigned k = largest_fit(i, count);
            free_one_page(i, k);
            i += index_type{1} << k;
            count -= std::uint64_t{1} << k;
        }
    }

    /// Puts the pages [i, i + count), none of them on a list, on the free lists as the largest aligned blocks in
    /// address order, without merging (memblock_free_all handing memory to the buddy allocator at boot).
    void init_range(index_type i, std::uint64_t count) noexcept {
        while (count > 0) {
            const unsigned k = largest_fit(i, count);
            set_free_block(i, k);
            const unsigned mt = pageblock_type(i);
            detail::PageAccess::migratetype(pages_[i]) = static_cast<std::uint8_t>(mt);
            list(k, mt).push_back(pages_, i);
            note_added(k, mt);
            free_pages_ += std::uint64_t{1} << k;
            i += index_type{1} << k;
            count -= std::uint64_t{1} << k;
        }
        publish();
    }

    // ----- state ---------------------------------------------------------------------------------------------

    /// Free blocks of `order` (free_area[order].nr_free); 0 above MaxOrder.
    std::uint64_t nr_free(unsigned order) const noexcept { return order <= MaxOrder ? nr_free_[order] : 0; }
    /// Free blocks of every order.
    const std::array<std::uint64_t, MaxOrder + 1>& nr_free_all() const noexcept { return nr_free_; }
    /// Free pages on the lists (NR_FREE_PAGES).
    std::uint64_t free_pages() const noexcept { return free_pages_; }
    /// The bitmap of non-empty orders (bit k set when list k holds a block).
    std::uint32_t order_mask() const noexcept { return mask_; }
    /// Free pages on the lists, readable without the owner's lock (a recent value, for watermark checks).
    std::uint64_t free_pages_relaxed() const noexcept requires typed { return t_.pub_free.load(); }
    /// The bitmap of non-empty orders, readable without the owner's lock.
    std::uint32_t order_mask_relaxed() const noexcept requires typed { return t_.pub_mask.load(); }
    /// The largest order with a free block, or -1 when nothing is free.
    int largest_order() const noexcept {
        return mask_ == 0 ? -1 : static_cast<int>(std::bit_width(mask_) - 1);
    }
    /// The free list of `order` and migrate type `mt` (free_area[order].free_list[mt]).
    const detail::IndexList& list(unsigned order, unsigned mt = 0) const noexcept {
        return lists_[order][mt];
    }
    /// Free blocks of `order` on the lists of migrate type `mt` (what /proc/pagetypeinfo prints).
    std::uint64_t nr_free(unsigned order, unsigned mt) const noexcept {
        if constexpr (typed)
            return order <= MaxOrder && mt < NrTypes ? t_.nr_free_type[order][mt] : 0;
        else
            return mt == 0 ? nr_free(order) : 0;
    }
    /// The migrate type of the pageblock holding page `i` (get_pageblock_migratetype); 0 without types.
    unsigned pageblock_type(index_type i) const noexcept {
        if constexpr (typed)
            return pageblock_type_at(pageblock_of(i));
        else
            return (void)i, 0u;
    }
    /// Pageblocks of migrate type `mt` ("Number of blocks type" in /proc/pagetypeinfo).
    std::uint64_t nr_pageblocks(unsigned mt) const noexcept {
        std::uint64_t n = 0;
        if constexpr (typed)
            for (std::uint64_t pb = 0; pb < t_.pageblocks.size(); ++pb) n += pageblock_type_at(pb) == mt;
        else
            n = mt == 0 ? (count_ == 0 ? 0
                                       : ((first_pfn_ + count_ - 1) >> pageblock_order) -
                                             (first_pfn_ >> pageblock_order) + 1)
                        : 0;
        return n;
    }
    /// Free pages on HIGHATOMIC lists, readable without the lock (nr_free_highatomic): requests that may not
    /// use reserves leave them out of their watermark check.
    std::uint64_t free_highatomic_relaxed() const noexcept requires typed { return t_.pub_highatomic.load(); }
    /// Fallback allocations that took another type's block (the mm_page_alloc_extfrag events), and those that
    /// claimed its pageblock.
    std::uint64_t fallbacks() const noexcept {
        if constexpr (typed)
            return t_.fallbacks;
        else
            return 0;
    }
    /// Pageblocks claimed by fallback allocations.
    std::uint64_t steals() const noexcept {
        if constexpr (typed)
            return t_.steals;
        else
            return 0;
    }

    // ----- HIGHATOMIC reserves -------------------------------------------------------------------------------

    /// Makes the pageblock holding page `i` a HIGHATOMIC reserve, moving its free blocks to the HIGHATOMIC lists
    /// (reserve_highatomic_pageblock); at most 1 % of the span plus one pageblock is reserved.  False when it
    /// was not (no types, limit reached, already reserved).
    bool reserve_highatomic(index_type i) noexcept {
        if constexpr (typed) {
            const std::uint64_t pb = pageblock_of(i);
            if (pageblock_type_at(pb) == ht || t_.reserved_highatomic + pageblock_pages() > t_.max_highatomic)
                return false;
            claim_pageblock(pb, ht);
            t_.reserved_highatomic += pageblock_pages();
            publish();
            return true;
        } else {
            return (void)i, false;
        }
    }
    /// Gives one HIGHATOMIC pageblock back to migrate type `mt` (unreserve_highatomic_pageblock, when direct
    /// reclaim makes no progress); false when none is reserved.
    bool unreserve_highatomic(unsigned mt) noexcept {
        if constexpr (typed) {
            for (std::uint64_t pb = 0; pb < t_.pageblocks.size(); ++pb) {
                if (pageblock_type_at(pb) != ht) continue;
                claim_pageblock(pb, mt);
                t_.reserved_highatomic -= pageblock_pages();
                publish();
                return true;
            }
        }
        return (void)mt, false;
    }
    /// Pages in HIGHATOMIC pageblocks (zone->nr_reserved_highatomic).
    std::uint64_t reserved_highatomic() const noexcept {
        if constexpr (typed)
            return t_.reserved_highatomic;
        else
            return 0;
    }
    /// The first descriptor of the span.
    Page* pages() const noexcept { return pages_; }
    /// The page frame number of the span's first page.
    std::uint64_t first_pfn() const noexcept { return first_pfn_; }
    /// The number of pages in the span.
    std::uint64_t span_pages() const noexcept { return count_; }

    /// Checks the lists: each block on list k has PG_buddy and order k, a zero reference count, correct back
    /// links, natural alignment, lies inside the span, and has no free buddy of the same order; nr_free, the
    /// bitmap and the free page count agree with the lists.  Returns the first violation, or "".  O(free blocks).
    std::string check() const {
        std::uint64_t free_sum = 0, highatomic_sum = 0;
        for (unsigned k = 0; k <= MaxOrder; ++k) {
            std::uint64_t count = 0;
            for (unsigned t = 0; t < NrTypes; ++t) {
                std::string problem;
                index_type prev = Page::nil;
                const std::uint64_t n = list(k, t).walk(pages_, count_, [&](index_type b) {
                    problem = check_free_block(b, k, prev);
                    if (problem.empty() && typed && list_type(b) != t)
                        problem = "free block at pfn " + std::to_string(first_pfn_ + b) + " is on the " +
                                  std::string(migratetype_name(t)) + " list but records type " +
                                  std::string(migratetype_name(list_type(b)));
                    prev = b;
                    return problem.empty();
                });
                if (!problem.empty()) return problem;
                if (n > count_) return "free list " + std::to_string(k) + " has a cycle";
                if (prev != list(k, t).back()) return "free list " + std::to_string(k) + " has a wrong tail";
                if constexpr (typed) {
                    if (n != t_.nr_free_type[k][t])
                        return "nr_free[" + std::to_string(k) + "][" + std::string(migratetype_name(t)) +
                               "] is " + std::to_string(t_.nr_free_type[k][t]) + " but the list holds " +
                               std::to_string(n);
                    if (((t_.type_mask[t] >> k) & 1u) != (n != 0 ? 1u : 0u))
                        return "the " + std::string(migratetype_name(t)) + " bitmap disagrees with list " +
                               std::to_string(k);
                    if (t == ht) highatomic_sum += n << k;
                }
                count += n;
            }
            if (count != nr_free_[k])
                return "nr_free[" + std::to_string(k) + "] is " + std::to_string(nr_free_[k]) +
                       " but the list holds " + std::to_string(count);
            if (((mask_ >> k) & 1u) != (count != 0 ? 1u : 0u))
                return "the free-list bitmap disagrees with list " + std::to_string(k);
            free_sum += count << k;
        }
        if (free_sum != free_pages_)
            return "free pages counted " + std::to_string(free_sum) + " but recorded " +
                   std::to_string(free_pages_);
        if constexpr (typed) {
            if (highatomic_sum != t_.free_highatomic)
                return "HIGHATOMIC free pages counted " + std::to_string(highatomic_sum) + " but recorded " +
                       std::to_string(t_.free_highatomic);
        }
        return {};
    }

private:
    static constexpr unsigned ht = static_cast<unsigned>(MigrateType::highatomic);
    // A free block's head, read while allocations elsewhere prepare their pages outside the lock: PG_buddy
    // changes only under the lock, so once it is seen the order is stable.
    static bool is_free_head(const Page& p) noexcept {
        return (detail::PageAccess::load_flags(p) & detail::flag(PageFlag::buddy)) != 0;
    }
    // Pageblock types change under the lock and are read without it by per-CPU frees (relaxed, as the kernel's
    // get_pfnblock_migratetype).
    unsigned pageblock_type_at(std::uint64_t pb) const noexcept {
        return std::atomic_ref<std::uint8_t>(const_cast<std::uint8_t&>(t_.pageblocks[pb]))
            .load(std::memory_order_relaxed);
    }
    void set_pageblock_type(std::uint64_t pb, unsigned mt) noexcept {
        std::atomic_ref<std::uint8_t>(t_.pageblocks[pb])
            .store(static_cast<std::uint8_t>(mt), std::memory_order_relaxed);
    }
    void publish() noexcept {
        if constexpr (typed) {
            t_.pub_mask = mask_;
            t_.pub_free = free_pages_;
            t_.pub_highatomic = t_.free_highatomic;
        }
    }
    detail::IndexList& list(unsigned order, unsigned mt = 0) noexcept { return lists_[order][mt]; }
    static constexpr bool mergeable(unsigned mt) noexcept { return mt < nr_pcp_migrate_types; }
    static constexpr std::uint64_t pageblock_pages() noexcept { return std::uint64_t{1} << pageblock_order; }
    std::uint64_t pageblock_of(index_type i) const noexcept {
        return ((first_pfn_ + i) >> pageblock_order) - (first_pfn_ >> pageblock_order);
    }
    // The type of the list a free block head is on.
    unsigned list_type(index_type i) const noexcept {
        if constexpr (typed)
            return detail::PageAccess::migratetype(const_cast<Page&>(pages_[i]));
        else
            return (void)i, 0u;
    }
    void note_added(unsigned order, unsigned mt) noexcept {
        mask_ |= 1u << order;
        ++nr_free_[order];
        if constexpr (typed) {
            t_.type_mask[mt] |= 1u << order;
            ++t_.nr_free_type[order][mt];
            if (mt == ht) t_.free_highatomic += std::uint64_t{1} << order;
        }
    }
    // expand(): the upper halves of a block of order `high` split down to `low` go on the lists of type `mt`.
    void expand(index_type i, unsigned low, unsigned high, unsigned mt) noexcept {
        while (high > low) {
            --high;
            add_to_free_list(i + (index_type{1} << high), high, mt);
        }
    }
    // The first page index of pageblock `pb` and one past its last (clipped to the span).
    std::pair<index_type, index_type> pageblock_span(std::uint64_t pb) const noexcept {
        const std::uint64_t start_pfn = ((first_pfn_ >> pageblock_order) + pb) << pageblock_order;
        const std::uint64_t lo = start_pfn < first_pfn_ ? 0 : start_pfn - first_pfn_;
        const std::uint64_t hi = std::min<std::uint64_t>(start_pfn + pageblock_pages() - first_pfn_, count_);
        return {static_cast<index_type>(lo), static_cast<index_type>(hi)};
    }
    // Free pages on the lists inside pageblock `pb` (the free part of prep_move_freepages_block).
    std::uint64_t free_in_pageblock(std::uint64_t pb) const noexcept {
        const auto [lo, hi] = pageblock_span(pb);
        std::uint64_t n = 0;
        for (index_type k = lo; k < hi;) {
            const Page& p = pages_[k];
            if (is_free_head(p)) {
                n += std::uint64_t{1} << p.order();
                k += index_type{1} << p.order();
            } else {
                ++k;
            }
        }
        return n;
    }
    // Sets pageblock `pb`'s type and moves its free blocks to that type's lists (move_freepages_block).
    void claim_pageblock(std::uint64_t pb, unsigned mt) noexcept {
        if constexpr (typed) {
            set_pageblock_type(pb, mt);
            const auto [lo, hi] = pageblock_span(pb);
            for (index_type k = lo; k < hi;) {
                const Page& p = pages_[k];
                if (is_free_head(p)) {
                    const unsigned order = p.order();
                    if (list_type(k) != mt) {
                        del_page_from_free_list(k, order);
                        add_to_free_list(k, order, mt);
                    }
                    k += index_type{1} << order;
                } else {
                    ++k;
                }
            }
        }
    }
    // __rmqueue_fallback(): the largest block of a fallback type, claiming its pageblock for `start` when the
    // block is at least half a pageblock or the request is not movable and half the pageblock is free
    // (try_to_claim_block); a movable request that cannot claim takes the smallest fallback block instead.
    index_type rmqueue_fallback(unsigned order, unsigned start) noexcept {
        static constexpr std::array<std::array<unsigned, 2>, nr_pcp_migrate_types> fallbacks{{
            {2, 1}, // UNMOVABLE -> RECLAIMABLE, MOVABLE
            {2, 0}, // MOVABLE -> RECLAIMABLE, UNMOVABLE
            {0, 1}, // RECLAIMABLE -> UNMOVABLE, MOVABLE
        }};
        const auto find = [&](unsigned o) -> int {
            for (const unsigned t : fallbacks[start])
                if (!list(o, t).empty()) return static_cast<int>(t);
            return -1;
        };
        for (int co = static_cast<int>(MaxOrder); co >= static_cast<int>(order); --co) {
            int ft = find(static_cast<unsigned>(co));
            if (ft < 0) continue;
            const bool can_claim = static_cast<unsigned>(co) >= pageblock_order / 2 ||
                                   start == static_cast<unsigned>(MigrateType::unmovable) ||
                                   start == static_cast<unsigned>(MigrateType::reclaimable);
            if (!can_claim && start == static_cast<unsigned>(MigrateType::movable) &&
                static_cast<unsigned>(co) > order) { // find_smallest
                for (unsigned o = order; o <= MaxOrder; ++o) {
                    ft = find(o);
                    if (ft >= 0) {
                        co = static_cast<int>(o);
                        break;
                    }
                }
            }
            const auto cur = static_cast<unsigned>(co);
            const index_type i = del_page_from_free_list(list(cur, static_cast<unsigned>(ft)).front(), cur);
            ++t_.fallbacks;
            unsigned into = static_cast<unsigned>(ft);
            if (can_claim) {
                if (cur >= pageblock_order) { // the block covers whole pageblocks: they are the request's now
                    for (std::uint64_t pb = pageblock_of(i);
                         pb <= pageblock_of(i + (index_type{1} << cur) - 1); ++pb)
                        set_pageblock_type(pb, start);
                    into = start;
                    ++t_.steals;
                } else {
                    const std::uint64_t pb = pageblock_of(i);
                    if (free_in_pageblock(pb) + (std::uint64_t{1} << cur) >= pageblock_pages() / 2) {
                        claim_pageblock(pb, start);
                        into = start;
                        ++t_.steals;
                    }
                }
            }
            expand(i, order, cur, into);
            free_pages_ -= std::uint64_t{1} << order;
            publish();
            return i;
        }
        return Page::nil;
    }

    // The largest order whose naturally aligned block starts at index i and fits in `count` pages.
    unsigned largest_fit(index_type i, std::uint64_t count) const noexcept {
        auto k = static_cast<unsigned>(std::countr_zero((first_pfn_ + i) | (std::uint64_t{1} << MaxOrder)));
        while ((std::uint64_t{1} << k) > count) --k;
        return k;
    }
    void set_free_block(index_type i, unsigned order) noexcept {
        detail::PageAccess::set_flags(pages_[i], detail::flag(PageFlag::buddy)); // __SetPageBuddy
        detail::PageAccess::set_order(pages_[i], order);                         // set_buddy_order
    }
    void add_to_free_list(index_type i, unsigned order, unsigned mt = 0) noexcept {
        set_free_block(i, order);
        if constexpr (typed) detail::PageAccess::migratetype(pages_[i]) = static_cast<std::uint8_t>(mt);
        list(order, mt).push_front(pages_, i);
        note_added(order, mt);
    }
    index_type del_page_from_free_list(index_type i, unsigned order) noexcept {
        const unsigned mt = list_type(i);
        list(order, mt).remove(pages_, i);
        detail::PageAccess::set_flags(pages_[i], 0);
        --nr_free_[order];
        if constexpr (typed) {
            if (list(order, mt).empty()) t_.type_mask[mt] &= ~(1u << order);
            if (nr_free_[order] == 0) mask_ &= ~(1u << order);
            --t_.nr_free_type[order][mt];
            if (mt == ht) t_.free_highatomic -= std::uint64_t{1} << order;
        } else {
            if (list(order).empty()) mask_ &= ~(1u << order);
        }
        return i;
    }
    std::string check_free_block(index_type b, unsigned k, index_type prev) const {
        const auto at = [&] { return "free block at pfn " + std::to_string(first_pfn_ + b); };
        if (b >= count_) return "free list " + std::to_string(k) + " links outside the table";
        const Page& p = pages_[b];
        if (!p.test(PageFlag::buddy) || p.order() != k)
            return at() + " is on list " + std::to_string(k) + " without PG_buddy of that order";
        if (detail::PageAccess::prev(p) != prev) return at() + " has a broken back link";
        if (((first_pfn_ + b) & ((std::uint64_t{1} << k) - 1)) != 0)
            return at() + " is not aligned to its order";
        if (b + (std::uint64_t{1} << k) > count_) return at() + " runs past the table";
        if (p.refcount() != 0) return at() + " has a non-zero reference count";
        if (k < MaxOrder) {
            const std::uint64_t bud = ((first_pfn_ + b) ^ (std::uint64_t{1} << k)) - first_pfn_;
            if (bud < count_ && pages_[bud].test(PageFlag::buddy) && pages_[bud].order() == k) {
                const unsigned a = pageblock_type(b), c = pageblock_type(static_cast<index_type>(bud));
                const bool kept_apart = k >= pageblock_order && a != c && (!mergeable(a) || !mergeable(c));
                if (!kept_apart) return at() + " and its buddy are both free at order " + std::to_string(k);
            }
        }
        return {};
    }

    Page* pages_;
    std::uint64_t first_pfn_;
    std::uint64_t count_;
    std::array<std::array<detail::IndexList, NrTypes>, MaxOrder + 1> lists_{};
    std::array<std::uint64_t, MaxOrder + 1> nr_free_{};
    std::uint32_t mask_ = 0;
    std::uint64_t free_pages_ = 0;
    // Migrate types (typed only; a plain area holds none of it): per-type bitmaps and counts, the pageblock
    // types, HIGHATOMIC accounting.  Typed areas (a Node's zones) also publish their counts after every change,
    // for watermark checks made without the lock (zone_page_state).
    struct TypedState {
        std::array<std::uint32_t, NrTypes> type_mask{};
        std::array<std::array<std::uint64_t, NrTypes>, MaxOrder + 1> nr_free_type{};
        std::vector<std::uint8_t> pageblocks;
        std::uint64_t free_highatomic = 0;
        detail::Published<std::uint32_t> pub_mask;
        detail::Published<std::uint64_t> pub_free, pub_highatomic;
        std::uint64_t reserved_highatomic = 0, max_highatomic = 0;
        std::uint64_t fallbacks = 0, steals = 0;
    };
    struct NoTypedState {};
    [[no_unique_address]] std::conditional_t<typed, TypedState, NoTypedState> t_;
};

} // namespace kmem
