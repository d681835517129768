/// @file
/// The free area of a buddy allocator (the kernel's struct free_area array in struct zone, and the functions of
/// mm/page_alloc.c that work on it): one free list per order threaded through the page descriptors, the count of
/// free blocks per order (nr_free), a bitmap of non-empty orders, and the free page count (NR_FREE_PAGES).
///
/// FreeArea works on a span of page descriptors (the pages one allocator or one zone manages) and knows nothing
/// of regions, locks, flags or errors: callers hold their lock and pass checked arguments.  Its operations carry
/// the kernel's names: rmqueue_smallest() takes a block from the smallest non-empty order and expands it,
/// free_one_page() merges a block with its free buddies and puts it on a list, and free_range() returns a run of
/// pages as the largest aligned blocks.  Placed (range / top-down) allocation mirrors drm_buddy.  Every list is
/// reached through list(order), the one place a migrate-type dimension will be added.
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
#include <kmem/page.hpp>

#include <array>
#include <bit>
#include <cstdint>
#include <string>

namespace kmem {

/// Per-order free lists over a span of page descriptors (struct free_area[MAX_PAGE_ORDER + 1]).
template <unsigned MaxOrder>
class FreeArea {
    static_assert(MaxOrder <= 30, "FreeArea's MaxOrder must be at most 30.");

public:
    /// The index type of a page within the span (pfn - first_pfn()).
    using index_type = detail::page_index;
    /// The largest order (MAX_PAGE_ORDER).
    static constexpr unsigned max_order = MaxOrder;

    /// A free area over `count` descriptors starting at `pages`, for page frames from `first_pfn` on; every list
    /// starts empty (pages reach it through init_range() or free_one_page()).
    FreeArea(Page* pages, std::uint64_t first_pfn, std::uint64_t count) noexcept
        : pages_(pages), first_pfn_(first_pfn), count_(count) {}
    FreeArea(const FreeArea&) = delete;            ///< Not copyable: the lists point into the descriptors.
    FreeArea& operator=(const FreeArea&) = delete; ///< Not copyable.

    // ----- allocation ----------------------------------------------------------------------------------------

    /// Takes a block of `order` from the smallest non-empty order that has one, splitting the rest onto the
    /// lower lists (__rmqueue_smallest + expand); returns its index or Page::nil.  O(order).
    index_type rmqueue_smallest(unsigned order) noexcept {
        const std::uint32_t avail = mask_ & ~((1u << order) - 1u);
        if (avail == 0) return Page::nil;
        const auto cur = static_cast<unsigned>(std::countr_zero(avail));
        const index_type i = lists_[cur].pop_front(pages_);
        detail::PageAccess::set_flags(pages_[i], 0);
        if (lists_[cur].empty()) mask_ &= ~(1u << cur);
        --nr_free_[cur];
        // expand(): keep the lower half, free the upper one, down to the requested order.  Orders order..cur-1
        // are empty (cur is the smallest non-empty order), so each upper half becomes a one-block list.
        for (unsigned k = order; k < cur; ++k) {
            const index_type upper = i + (index_type{1} << k);
            set_free_block(upper, k);
            lists_[k].reset_to(pages_, upper);
            nr_free_[k] = 1;
        }
        mask_ |= ((1u << cur) - 1u) & ~((1u << order) - 1u);
        free_pages_ -= std::uint64_t{1} << order;
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
            list(k).walk(pages_, count_, [&](index_type b) {
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
        if (!found) return Page::nil;
        del_page_from_free_list(from, from_order);
        index_type blk = from;
        const auto target = static_cast<index_type>(best - first_pfn_);
        for (unsigned k = from_order; k > order;) { // split towards the target, freeing the other halves
            --k;
            const index_type upper = blk + (index_type{1} << k);
            if (target >= upper) {
                add_to_free_list(blk, k);
                blk = upper;
            } else {
                add_to_free_list(upper, k);
            }
        }
        free_pages_ -= size;
        return blk;
    }

    // ----- freeing -------------------------------------------------------------------------------------------

    /// Returns the block of `order` at index `i` (not on any list) and merges it with its free buddies up to
    /// MaxOrder (__free_one_page).  O(MaxOrder).
    void free_one_page(index_type i, unsigned order) noexcept {
        free_pages_ += std::uint64_t{1} << order;
        std::uint64_t pfn = first_pfn_ + i;
        while (order < MaxOrder) {
            const std::uint64_t buddy_pfn = pfn ^ (std::uint64_t{1} << order); // __find_buddy_pfn
            const std::uint64_t b = buddy_pfn - first_pfn_;
            if (b >= count_) break;
            const Page& bp = pages_[b];
            if (!(detail::PageAccess::load_flags(bp) & detail::flag(PageFlag::buddy)) || bp.order() != order)
                break; // page_is_buddy()
            del_page_from_free_list(static_cast<index_type>(b), order);
            pfn &= buddy_pfn;
            ++order;
        }
        add_to_free_list(static_cast<index_type>(pfn - first_pfn_), order);
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
            list(k).push_back(pages_, i);
            mask_ |= 1u << k;
            ++nr_free_[k];
            free_pages_ += std::uint64_t{1} << k;
            i += index_type{1} << k;
            count -= std::uint64_t{1} << k;
        }
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
    /// The largest order with a free block, or -1 when nothing is free.
    int largest_order() const noexcept {
        return mask_ == 0 ? -1 : static_cast<int>(std::bit_width(mask_) - 1);
    }
    /// The free list of `order` (free_area[order].free_list).
    const detail::IndexList& list(unsigned order) const noexcept { return lists_[order]; }
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
        std::uint64_t free_sum = 0;
        for (unsigned k = 0; k <= MaxOrder; ++k) {
            std::string problem;
            index_type prev = Page::nil;
            const std::uint64_t count = list(k).walk(pages_, count_, [&](index_type b) {
                problem = check_free_block(b, k, prev);
                prev = b;
                return problem.empty();
            });
            if (!problem.empty()) return problem;
            if (count > count_) return "free list " + std::to_string(k) + " has a cycle";
            if (prev != list(k).back()) return "free list " + std::to_string(k) + " has a wrong tail";
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
        return {};
    }

private:
    detail::IndexList& list(unsigned order) noexcept { return lists_[order]; }

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
    void add_to_free_list(index_type i, unsigned order) noexcept {
        set_free_block(i, order);
        list(order).push_front(pages_, i);
        mask_ |= 1u << order;
        ++nr_free_[order];
    }
    index_type del_page_from_free_list(index_type i, unsigned order) noexcept {
        list(order).remove(pages_, i);
        detail::PageAccess::set_flags(pages_[i], 0);
        if (list(order).empty()) mask_ &= ~(1u << order);
        --nr_free_[order];
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
            if (bud < count_ && pages_[bud].test(PageFlag::buddy) && pages_[bud].order() == k)
                return at() + " and its buddy are both free at order " + std::to_string(k);
        }
        return {};
    }

    Page* pages_;
    std::uint64_t first_pfn_;
    std::uint64_t count_;
    std::array<detail::IndexList, MaxOrder + 1> lists_{};
    std::array<std::uint64_t, MaxOrder + 1> nr_free_{};
    std::uint32_t mask_ = 0;
    std::uint64_t free_pages_ = 0;
};

} // namespace kmem
