/// @file
/// Invariant checkers for buddy allocators, shared by the buddy tests.
///
/// - check_from_outside(a): an independent check that does not trust check_invariants(): it walks every page
///   frame through the public pfn_to_page() and the page flags, and verifies that the blocks tile the range,
///   that every free block is naturally aligned and inside the range, that no two buddies of the same order are
///   both on the free lists, that the per-order counts equal nr_free(order), and that free + used == total.
///   With per-CPU page lists (an allocator whose `has_pcp` is true), a block whose head carries PageFlag::pcp
///   is a free block parked on a per-CPU list: it must be naturally aligned, of an order the lists keep, with
///   reference count 0 and clean inner pages; it is not merged, so it may sit next to a free buddy of its own
///   order.  Its pages are counted apart (OutsideView::pcp_pages, compared with nr_pcp_pages()), and then
///   free + per-CPU + used == total.  Without per-CPU lists a PageFlag::pcp head is a violation.
/// - ShadowModel: the test's own record of the live blocks (first pfn -> page count) in a std::map; inserting
///   an overlapping block fails, so a double hand-out is caught the moment it happens.
/// - check_shadow_allocated(a, shadow): every live block of the shadow is allocated in `a`, neither on a free
///   list nor on a per-CPU list.
/// - expect_consistent(a [, shadow]): all of the above as Boost.Test assertions.
/// - buddyinfo_line(counts): the /proc/buddyinfo line buddyinfo() must print for those per-order counts;
///   parked_blocks(a): the blocks on per-CPU lists, by walking the page flags.
///
/// @code
///   kmem::test::ShadowModel shadow;
///   kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 2);
///   BOOST_TEST(shadow.insert(buddy.page_to_pfn(p), 4));
///   kmem::test::expect_consistent(buddy, shadow);
/// @endcode
#pragma once

#include <kmem/buddy.hpp>
#include <kmem/page.hpp>

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstdio>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kmem::test {

/// True for allocator types with per-CPU page lists (BuddyAllocator with policy::PerCpuPages); false for every
/// other type, including allocators that have no `has_pcp` member at all.
template <class A>
constexpr bool has_pcp_lists() noexcept {
    if constexpr (requires { A::has_pcp; })
        return static_cast<bool>(A::has_pcp);
    else
        return false;
}

/// Free blocks per order and the page totals as seen from outside the allocator.
struct OutsideView {
    std::vector<std::uint64_t>
        nr_free; ///< Free blocks per order (on the free lists), counted by walking the page frames.
    std::uint64_t free_pages = 0; ///< Pages in free blocks on the free lists (PG_buddy heads).
    std::uint64_t pcp_pages = 0; ///< Pages in free blocks parked on per-CPU page lists (PageFlag::pcp heads).
    std::uint64_t used_pages = 0; ///< Pages in allocated blocks.
    std::string error;            ///< The first violation found; empty when none.
};

/// Walks every block of `a` through pfn_to_page() and the page flags (never through check_invariants())
/// and returns what it saw; `error` names the first broken invariant.  The flags of pages inside free blocks
/// (on the free lists or on per-CPU lists) are checked too when the allocator has at most `inner_limit` pages
/// (so a 64 GiB table is not faulted in).  Not for use while other threads allocate or free.
template <class A>
OutsideView walk_from_outside(const A& a, std::uint64_t inner_limit = std::uint64_t{1} << 20) {
    OutsideView v;
    v.nr_free.assign(A::max_order + 1, 0);
    const std::uint64_t first = a.page_table().first_pfn();
    const std::uint64_t end = first + a.total_pages();
    const auto fail = [&](std::string msg) {
        if (v.error.empty()) v.error = std::move(msg);
    };
    for (std::uint64_t pfn = first; pfn < end && v.error.empty();) {
        const Page* p = a.pfn_to_page(pfn);
        if (p == nullptr) {
            fail("pfn_to_page(" + std::to_string(pfn) + ") is null inside the managed range");
            break;
        }
        if (a.page_to_pfn(p) != pfn)
            fail("page_to_pfn(pfn_to_page(" + std::to_string(pfn) + ")) does not round-trip");
        const unsigned k = p->order();
        const std::uint64_t len = std::uint64_t{1} << k;
        const std::string at = "pfn " + std::to_string(pfn);
        if (k > A::max_order) fail(at + " has order " + std::to_string(k) + " above MaxOrder");
        if (pfn + len > end)
            fail(at + " heads a block of order " + std::to_string(k) + " that runs past the range");
        if (!v.error.empty()) break;
        const bool is_free = p->test(PageFlag::buddy);
        const bool is_pcp = p->test(PageFlag::pcp);
        if (is_free && is_pcp) fail(at + " is both on a free list (PG_buddy) and on a per-CPU list");
        if (is_pcp && !is_free) {
            if constexpr (!has_pcp_lists<A>()) {
                fail(at + " carries the per-CPU list flag but the allocator has no per-CPU lists");
            } else {
                if (p->flags() != static_cast<std::uint16_t>(PageFlag::pcp))
                    fail(at + ": block on a per-CPU list has other flags too (" + std::to_string(p->flags()) +
                         ")");
                if (k > A::pcp_max_order)
                    fail(at + ": block of order " + std::to_string(k) +
                         " on a per-CPU list, above pcp_max_order " + std::to_string(A::pcp_max_order));
                if (pfn % len != 0)
                    fail(at + ": per-CPU block of order " + std::to_string(k) + " is not naturally aligned");
                if (p->refcount() != 0)
                    fail(at + ": per-CPU block has refcount " + std::to_string(p->refcount()));
                // Not merged on purpose: its buddy may be free (PG_buddy) or on a per-CPU list too.
                for (std::uint64_t q = pfn + 1; a.total_pages() <= inner_limit && q < pfn + len; ++q)
                    if (a.pfn_to_page(q)->flags() != 0) {
                        fail("pfn " + std::to_string(q) + " inside the per-CPU block at " + at +
                             " has flags " + std::to_string(a.pfn_to_page(q)->flags()));
                        break;
                    }
            }
            v.pcp_pages += len;
        } else if (is_free) {
            if (p->test(PageFlag::block)) fail(at + " is both a free and an allocated block");
            if (pfn % len != 0)
                fail(at + ": free block of order " + std::to_string(k) + " is not naturally aligned");
            if (p->refcount() != 0) fail(at + ": free block has refcount " + std::to_string(p->refcount()));
            if (k < A::max_order) { // two buddies never both on the free lists: they would have merged
                const std::uint64_t bud = pfn ^ len;
                const Page* b = a.pfn_to_page(bud);
                if (b != nullptr && b->test(PageFlag::buddy) && b->order() == k)
                    fail(at + " and its buddy pfn " + std::to_string(bud) + " are both free at order " +
                         std::to_string(k));
            }
            for (std::uint64_t q = pfn + 1; a.total_pages() <= inner_limit && q < pfn + len; ++q)
                if (a.pfn_to_page(q)->flags() != 0) {
                    fail("pfn " + std::to_string(q) + " inside the free block at " + at + " has flags " +
                         std::to_string(a.pfn_to_page(q)->flags()));
                    break;
                }
            ++v.nr_free[k];
            v.free_pages += len;
        } else if (p->test(PageFlag::block)) {
            if (p->refcount() <= 0)
                fail(at + ": allocated block has refcount " + std::to_string(p->refcount()));
            v.used_pages += len;
        } else {
            fail(at +
                 " is neither a free block (PG_buddy), a block on a per-CPU list nor an allocated block");
        }
        pfn += len;
    }
    if (v.error.empty()) {
        for (unsigned k = 0; k <= A::max_order; ++k)
            if (v.nr_free[k] != a.nr_free(k))
                fail("nr_free(" + std::to_string(k) + ") is " + std::to_string(a.nr_free(k)) + " but " +
                     std::to_string(v.nr_free[k]) + " free blocks of that order were found");
        if (v.free_pages != a.nr_free_pages())
            fail("nr_free_pages() is " + std::to_string(a.nr_free_pages()) + " but the free blocks hold " +
                 std::to_string(v.free_pages));
        if constexpr (has_pcp_lists<A>()) {
            if (v.pcp_pages != a.nr_pcp_pages())
                fail("nr_pcp_pages() is " + std::to_string(a.nr_pcp_pages()) +
                     " but the per-CPU blocks hold " + std::to_string(v.pcp_pages));
        }
        if (v.free_pages + v.pcp_pages + v.used_pages != a.total_pages())
            fail("free " + std::to_string(v.free_pages) + " + per-CPU " + std::to_string(v.pcp_pages) +
                 " + used " + std::to_string(v.used_pages) + " != total " + std::to_string(a.total_pages()));
    }
    return v;
}

/// The first violation check_from_outside finds, or an empty string.
template <class A>
std::string check_from_outside(const A& a) {
    return walk_from_outside(a).error;
}

/// The test's record of live blocks: first pfn -> number of pages.  insert() refuses an overlapping block.
class ShadowModel {
public:
    /// Records [pfn, pfn + pages); false (and nothing recorded) when it overlaps a live block.
    bool insert(std::uint64_t pfn, std::uint64_t pages) {
        if (pages == 0) return false;
        auto next = blocks_.lower_bound(pfn);
        if (next != blocks_.end() && next->first < pfn + pages) return false;
        if (next != blocks_.begin()) {
            auto prev = std::prev(next);
            if (prev->first + prev->second > pfn) return false;
        }
        blocks_.emplace_hint(next, pfn, pages);
        used_ += pages;
        return true;
    }
    /// Forgets the block that starts at `pfn`; false when there is none.
    bool erase(std::uint64_t pfn) {
        auto it = blocks_.find(pfn);
        if (it == blocks_.end()) return false;
        used_ -= it->second;
        blocks_.erase(it);
        return true;
    }
    /// Pages in the block that starts at `pfn`, or 0.
    std::uint64_t pages_at(std::uint64_t pfn) const {
        auto it = blocks_.find(pfn);
        return it == blocks_.end() ? 0 : it->second;
    }
    /// True when some live block covers `pfn`.
    bool covers(std::uint64_t pfn) const {
        auto it = blocks_.upper_bound(pfn);
        if (it == blocks_.begin()) return false;
        --it;
        return it->first + it->second > pfn;
    }
    /// Pages in live blocks.
    std::uint64_t used_pages() const noexcept { return used_; }
    /// Number of live blocks.
    std::size_t size() const noexcept { return blocks_.size(); }
    bool empty() const noexcept { return blocks_.empty(); }
    /// The live blocks, ordered by first pfn.
    const std::map<std::uint64_t, std::uint64_t>& blocks() const noexcept { return blocks_; }
    /// Re-verifies from scratch that no two live blocks overlap; empty string when they don't.
    std::string check_no_overlap() const {
        std::uint64_t end = 0;
        bool any = false;
        std::uint64_t sum = 0;
        for (const auto& [pfn, pages] : blocks_) {
            if (any && pfn < end)
                return "live block at pfn " + std::to_string(pfn) + " overlaps the previous one";
            end = pfn + pages;
            any = true;
            sum += pages;
        }
        if (sum != used_) return "shadow page count is out of step";
        return {};
    }
    void clear() noexcept {
        blocks_.clear();
        used_ = 0;
    }

private:
    std::map<std::uint64_t, std::uint64_t> blocks_;
    std::uint64_t used_ = 0;
};

/// Checks, from outside, that every live block of `shadow` is really allocated in `a`: no page of it is
/// inside a free block, on the free lists or on a per-CPU list (the shadow's blocks may be sub-ranges of
/// allocator blocks, e.g. after split_page).
template <class A>
std::string check_shadow_allocated(const A& a, const ShadowModel& shadow) {
    for (const auto& [pfn, pages] : shadow.blocks()) {
        const Page* head = a.pfn_to_page(pfn);
        if (head == nullptr) return "live block at pfn " + std::to_string(pfn) + " is outside the allocator";
        if (head->test(PageFlag::buddy))
            return "live block at pfn " + std::to_string(pfn) + " is on a free list";
        if (head->test(PageFlag::pcp))
            return "live block at pfn " + std::to_string(pfn) + " is on a per-CPU page list";
        if (!head->test(PageFlag::block) && !head->test(PageFlag::tail) && !head->test(PageFlag::head)) {
            // An inner page of a bigger allocated block: find the block that covers it.
            bool inside_allocated = false;
            for (unsigned k = 1; k <= A::max_order && !inside_allocated; ++k) {
                const std::uint64_t h = pfn & ~((std::uint64_t{1} << k) - 1);
                const Page* hp = a.pfn_to_page(h);
                if (hp == nullptr) break;
                if (hp->order() >= k && hp->test(PageFlag::buddy))
                    return "live block at pfn " + std::to_string(pfn) + " lies inside a free block";
                if (hp->order() >= k && hp->test(PageFlag::pcp))
                    return "live block at pfn " + std::to_string(pfn) +
                           " lies inside a block on a per-CPU page list";
                if (hp->order() >= k && hp->test(PageFlag::block)) inside_allocated = true;
            }
            if (!inside_allocated) return "live block at pfn " + std::to_string(pfn) + " is not allocated";
        }
    }
    return {};
}

/// Asserts that `a` is consistent: check_invariants() is empty and the outside walk finds no violation.
template <class A>
void expect_consistent(const A& a) {
    BOOST_TEST(a.check_invariants() == "");
    BOOST_TEST(check_from_outside(a) == "");
}

/// Pages on the per-CPU lists of `a` (nr_pcp_pages()), or 0 for an allocator without them.
template <class A>
std::uint64_t pcp_pages_of(const A& a) {
    if constexpr (has_pcp_lists<A>())
        return a.nr_pcp_pages();
    else
        return 0;
}

/// expect_consistent(a) plus the shadow: no overlap, every live block allocated, and
/// nr_free_pages() + nr_pcp_pages() == total_pages() - shadow.used_pages() (no per-CPU term without them).
template <class A>
void expect_consistent(const A& a, const ShadowModel& shadow) {
    expect_consistent(a);
    BOOST_TEST(shadow.check_no_overlap() == "");
    BOOST_TEST(check_shadow_allocated(a, shadow) == "");
    BOOST_TEST(a.nr_free_pages() + pcp_pages_of(a) + shadow.used_pages() == a.total_pages());
}

/// Free blocks per order for a fresh allocator over pfns [first, first + count): the largest naturally
/// aligned blocks that fit, computed here independently of the allocator.
inline std::vector<std::uint64_t> expected_initial_nr_free(std::uint64_t first, std::uint64_t count,
                                                           unsigned max_order) {
    std::vector<std::uint64_t> out(max_order + 1, 0);
    std::uint64_t pfn = first;
    const std::uint64_t end = first + count;
    while (pfn < end) {
        unsigned k = 0;
        while (k < max_order && pfn % (std::uint64_t{2} << k) == 0 && pfn + (std::uint64_t{2} << k) <= end)
            ++k;
        ++out[k];
        pfn += std::uint64_t{1} << k;
    }
    return out;
}

/// nr_free(order) for every order, as a vector (for BOOST_TEST collection comparisons).
template <class A>
std::vector<std::uint64_t> nr_free_vector(const A& a) {
    std::vector<std::uint64_t> out;
    for (unsigned k = 0; k <= A::max_order; ++k) out.push_back(a.nr_free(k));
    return out;
}

/// A snapshot of everything a failed call must leave unchanged (per-CPU list pages included; 0 without them).
template <class A>
struct Snapshot {
    std::string buddyinfo;
    std::uint64_t free_pages;
    std::uint64_t pcp_pages;
    std::uint64_t frees;
    std::uint64_t allocations;
    explicit Snapshot(const A& a)
        : buddyinfo(a.buddyinfo()), free_pages(a.nr_free_pages()), pcp_pages(pcp_pages_of(a)),
          frees(a.stats().frees), allocations(a.stats().allocations) {}
    /// Asserts that `a` still matches the snapshot and is consistent.
    void expect_unchanged(const A& a) const {
        BOOST_TEST(a.buddyinfo() == buddyinfo);
        BOOST_TEST(a.nr_free_pages() == free_pages);
        BOOST_TEST(pcp_pages_of(a) == pcp_pages);
        BOOST_TEST(a.stats().frees == frees);
        BOOST_TEST(a.stats().allocations == allocations);
        BOOST_TEST(a.check_invariants() == "");
        BOOST_TEST(check_from_outside(a) == "");
    }
};

/// The buddyinfo() line for the given per-order free block counts: "Node 0, zone   Normal      4 ..." then a
/// newline, as /proc/buddyinfo prints it.
inline std::string buddyinfo_line(const std::vector<unsigned>& counts, const char* zone = "Normal",
                                  int node = 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "Node %d, zone %8s ", node, zone);
    std::string s = buf;
    for (unsigned c : counts) {
        std::snprintf(buf, sizeof buf, "%6u ", c);
        s += buf;
    }
    return s + "\n";
}

/// Blocks parked on per-CPU lists as (index, order) pairs, index = pfn - first pfn, in address order.
using Parked = std::vector<std::pair<std::uint64_t, unsigned>>;

/// The blocks of `a` parked on per-CPU lists (PageFlag::pcp heads), found by walking the page flags; empty for an
/// allocator without the lists.  Not for use while other threads allocate or free.
template <class A>
Parked parked_blocks(const A& a) {
    Parked out;
    const std::uint64_t first = a.page_table().first_pfn();
    for (std::uint64_t i = 0; i < a.total_pages();) {
        const Page* p = a.pfn_to_page(first + i);
        if (p->test(PageFlag::pcp)) out.emplace_back(i, p->order());
        i += std::uint64_t{1} << p->order();
    }
    return out;
}

} // namespace kmem::test
