/// @file
/// An intrusive doubly linked list threaded through page descriptors by 32-bit page-table index (the kernel's
/// list_head in struct page, as used by free_area[].free_list and per_cpu_pages.lists).  Not part of the API.
///
/// A list is two indices (head, tail); each member page's descriptor holds its `next` and `prev` indices, so a
/// list costs 8 bytes whatever it holds and a page is on at most one list.  Operations take the descriptor array
/// (the table span the indices refer to), so one list type serves the buddy free lists, the per-CPU page lists
/// and, later, slab partial lists.
#pragma once

#include <kmem/page.hpp>

#include <cstdint>

namespace kmem::detail {

/// A doubly linked list of pages by index: head is the hot end (push_front / pop_front), tail the cold end.
class IndexList {
public:
    /// True when the list holds no page.
    bool empty() const noexcept { return head_ == Page::nil; }
    /// The first page's index, or Page::nil.
    page_index front() const noexcept { return head_; }
    /// The last page's index, or Page::nil.
    page_index back() const noexcept { return tail_; }

    /// Puts page `i` at the head (list_add).
    void push_front(Page* pages, page_index i) noexcept {
        Page& p = pages[i];
        PageAccess::next(p) = head_;
        PageAccess::prev(p) = Page::nil;
        (head_ != Page::nil ? PageAccess::prev(pages[head_]) : tail_) = i;
        head_ = i;
    }
    /// Puts page `i` at the tail (list_add_tail).
    void push_back(Page* pages, page_index i) noexcept {
        Page& p = pages[i];
        PageAccess::next(p) = Page::nil;
        PageAccess::prev(p) = tail_;
        (tail_ != Page::nil ? PageAccess::next(pages[tail_]) : head_) = i;
        tail_ = i;
    }
    /// Removes and returns the head; the list must not be empty.
    page_index pop_front(Page* pages) noexcept {
        const page_index i = head_;
        const page_index next = PageAccess::next(pages[i]);
        head_ = next;
        (next != Page::nil ? PageAccess::prev(pages[next]) : tail_) = Page::nil;
        return i;
    }
    /// Removes and returns the tail; the list must not be empty.
    page_index pop_back(Page* pages) noexcept {
        const page_index i = tail_;
        const page_index prev = PageAccess::prev(pages[i]);
        tail_ = prev;
        (prev != Page::nil ? PageAccess::next(pages[prev]) : head_) = Page::nil;
        return i;
    }
    /// Removes page `i`, which must be on this list (list_del).
    void remove(Page* pages, page_index i) noexcept {
        Page& p = pages[i];
        const page_index next = PageAccess::next(p), prev = PageAccess::prev(p);
        (prev != Page::nil ? PageAccess::next(pages[prev]) : head_) = next;
        (next != Page::nil ? PageAccess::prev(pages[next]) : tail_) = prev;
    }
    /// Makes the list hold exactly page `i` (a list that was empty; used by expand()).
    void reset_to(Page* pages, page_index i) noexcept {
        PageAccess::next(pages[i]) = Page::nil;
        PageAccess::prev(pages[i]) = Page::nil;
        head_ = tail_ = i;
    }

    /// Calls `visit(index)` for every page from head to tail, stopping early when it returns false; at most
    /// `limit` steps (a guard against a corrupted, cyclic list).  Returns the number of pages visited.
    template <class Visit>
    std::uint64_t walk(const Page* pages, std::uint64_t limit, Visit visit) const {
        std::uint64_t n = 0;
        for (page_index i = head_; i != Page::nil && n <= limit; i = PageAccess::next(pages[i])) {
            ++n;
            if (!visit(i)) break;
        }
        return n;
    }

private:
    page_index head_ = Page::nil;
    page_index tail_ = Page::nil;
};

} // namespace kmem::detail
