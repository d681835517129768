/// @file
/// Per-CPU page lists (the kernel's struct per_cpu_pages with rmqueue_pcplist(), rmqueue_bulk(),
/// free_unref_page_commit(), free_pcppages_bulk(), drain_local_pages() and drain_all_pages()): small caches of
/// free blocks of order 0 .. PcpMaxOrder in front of a FreeArea, one set per CPU.
///
/// A page allocator built with policy::PerCpuPages (see policy/pcp.hpp) owns one PcpLists and calls it on its hot
/// paths.  A block freed here goes on the hot end of the calling CPU's list for its order, unmerged; an
/// allocation pops the hot end.  An empty list is refilled with `batch` pages taken from the free area under the
/// zone lock, in address order; a set holding `high` pages or more gives `batch` pages back from the cold ends,
/// round robin over the orders, where they merge.  Lock order: a set's lock, then the zone lock; never the
/// reverse.  PcpLists holds no zone state of its own: it is handed the FreeArea and the zone lock it serves.
///
/// @code
///   kmem::PageTable<4096> table(/*first pfn*/ 0, /*pages*/ 64);
///   kmem::FreeArea<6> area(&table[0], 0, 64);
///   area.init_range(0, 64);
///   kmem::PcpLists</*PcpMaxOrder*/ 3, /*Shared*/ false> pcp(/*batch*/ 8, /*high*/ 48);
///   kmem::policy::NoLock zone_lock;
///   const auto cpu = static_cast<unsigned>(pcp.try_lock_local());
///   auto i = pcp.alloc(cpu, area, zone_lock, 0);     // rmqueue_bulk: 8 pages move to the list, one is taken
///   pcp.free(cpu, area, zone_lock, i, 0);            // free_unref_page: back on the hot end, not merged
///   pcp.unlock_local(cpu);
///   assert(pcp.nr_pages() == 8 && area.free_pages() == 56);
///   pcp.drain(cpu, area, zone_lock);                 // drain_local_pages: everything merges again
///   assert(area.free_pages() == 64 && area.nr_free(6) == 1);
/// @endcode
#pragma once

#include <kmem/detail/index_list.hpp>
#include <kmem/detail/per_cpu_sets.hpp>
#include <kmem/free_area.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/watermarks.hpp>

#include <array>
#include <bit>
#include <cstdint>
#include <string>

namespace kmem {

/// The kernel's zone_batchsize(): a quarter of 1/1024 of the zone's pages, at most 1 MiB worth, rounded down to
/// 2^n - 1 (at least 1).
template <std::size_t PageSize>
constexpr unsigned zone_batchsize(std::uint64_t managed_pages) noexcept {
    std::uint64_t batch = managed_pages >> 10;
    if (batch > (std::uint64_t{1} << 20) / PageSize) batch = (std::uint64_t{1} << 20) / PageSize;
    batch /= 4;
    if (batch < 1) batch = 1;
    batch = std::bit_floor(batch + batch / 2) - 1;
    return batch < 1 ? 1u : static_cast<unsigned>(batch);
}

/// The kernel's zone_highsize() (percpu_pagelist_high_fraction 0): the zone's low watermark shared by the CPUs
/// that have lists, and at least 4 * batch.  The low watermark is that of a lone zone of `managed_pages`.
template <std::size_t PageSize>
constexpr unsigned zone_highsize(std::uint64_t managed_pages, unsigned batch, unsigned cpus) noexcept {
    const std::uint64_t low = default_watermarks<PageSize>(managed_pages, managed_pages).low;
    std::uint64_t high = low / (cpus == 0 ? 1 : cpus);
    if (high < std::uint64_t{batch} * 4) high = std::uint64_t{batch} * 4;
    return high > 0xffffffffu ? 0xffffffffu : static_cast<unsigned>(high);
}

/// Per-CPU lists of free blocks of order 0..PcpMaxOrder (struct per_cpu_pages); one set per configured CPU when
/// Shared (the allocator has a lock), one in all otherwise.  With Types = nr_pcp_migrate_types there is one list
/// per order and migrate type (list order * Types + type), as the kernel's NR_PCP_LISTS.
template <unsigned PcpMaxOrder, bool Shared, unsigned Types = 1>
class PcpLists {
public:
    /// The number of migrate types kept apart (1, or MIGRATE_PCPTYPES).
    static constexpr unsigned nr_types = Types;
    /// The number of lists in a set (NR_PCP_LISTS).
    static constexpr unsigned nr_lists = (PcpMaxOrder + 1) * Types;
    /// The order of the blocks on list `k`.
    static constexpr unsigned order_of_list(unsigned k) noexcept { return k / Types; }
    /// One CPU's lists and counters.
    struct Set {
        std::uint32_t count = 0; ///< Pages held (pcp->count).
        unsigned next_spill = 0; ///< The list a bulk free starts from (round robin, as free_pcppages_bulk).
        std::array<detail::IndexList, nr_lists> lists{}; ///< Hot end: frees push, allocations pop.
        std::uint64_t allocations = 0;                   ///< Per-CPU pgalloc events.
        std::uint64_t frees = 0;                         ///< Per-CPU pgfree events.
        std::uint32_t free_count =
            0; ///< Pages freed here lately (pcp->free_count): grows per free, halves per allocation.
        std::uint32_t refills = 0; ///< Refills since the last free here: the length of an allocation streak.
    };
    /// Refills in a row (no free in between) after which an empty list is no longer refilled and requests go
    /// straight to the free area: a CPU that only allocates gains nothing from moving pages through its list.
    static constexpr std::uint32_t refill_streak_limit = 8;
    /// A CPU that has freed more than `free_streak_factor * high` pages with no allocation in between frees
    /// straight to the free area (the kernel's free_count / free_high): parking them would move each page twice.
    static constexpr std::uint32_t free_streak_factor = 4;

    /// Lists with `batch` and `high` (pages); high is raised to batch when below it.
    PcpLists(unsigned batch, unsigned high) : batch_(batch), high_(high < batch ? batch : high) {}

    /// The number of sets.
    unsigned sets() const noexcept { return sets_.size(); }
    /// The number of sets an instance has on this machine (the configured CPUs when Shared, else 1).
    static unsigned sets_on_this_machine() noexcept {
        return detail::PerCpu<Set, Shared>::slots_on_this_machine();
    }
    /// Pages moved between a list and the free area at a time (pcp->batch).
    unsigned batch() const noexcept { return batch_; }
    /// Pages a set may hold before `batch` go back (pcp->high).
    unsigned high() const noexcept { return high_; }
    /// Sets high and batch (the caller has drained every set and holds no set lock).
    void set_high_and_batch(unsigned high, unsigned batch) noexcept {
        high_ = high;
        batch_ = batch;
    }

    /// Locks the calling CPU's set if free (pcp_spin_trylock); its number, or -1 when busy.
    int try_lock_local() noexcept { return sets_.try_lock_local(); }
    /// Locks set `cpu`, waiting.
    Set& lock(unsigned cpu) noexcept { return sets_.lock(cpu); }
    /// Releases set `cpu` taken by lock().
    void unlock(unsigned cpu) noexcept { sets_.unlock(cpu); }
    /// Releases the set taken by try_lock_local().
    void unlock_local(unsigned cpu) noexcept { sets_.unlock_local(cpu); }
    /// True when sets are locked with restartable sequences (no locked instruction on the hot path).
    bool uses_rseq() const noexcept { return sets_.uses_rseq(); }
    /// Locks every set in CPU order.
    void lock_all() const noexcept { sets_.lock_all(); }
    /// Releases every set taken by lock_all().
    void unlock_all() const noexcept { sets_.unlock_all(); }
    /// The calling CPU's set number.
    unsigned local_cpu() const noexcept { return sets_.local_slot(); }
    /// Set `cpu` (its lock held).
    Set& set(unsigned cpu) noexcept { return sets_[cpu]; }
    /// Set `cpu`, read-only (its lock held).
    const Set& set(unsigned cpu) const noexcept { return sets_[cpu]; }

    /// __rmqueue_pcplist(): pops a block of `order` from set `cpu` (locked by the caller), refilling the list from
    /// `area` under `zone_lock` when it is empty (rmqueue_bulk); Page::nil when nothing is free there.
    template <class Area, class ZoneLock>
    [[gnu::always_inline]] detail::page_index alloc(unsigned cpu, Area& area, ZoneLock& zone_lock,
                                                    unsigned order, unsigned mt = 0) noexcept {
        Set& s = sets_[cpu];
        if constexpr (Types == 1) mt = 0;
        detail::IndexList& list = s.lists[order * Types + mt];
        s.free_count >>= 1;
        if (list.empty()) [[unlikely]]
            return refill_and_pop(s, area, zone_lock, order, mt);
        ++s.allocations;
        s.count -= 1u << order;
        return list.pop_front(area.pages());
    }

    /// Called for a block of `order` whose last reference was just dropped, set `cpu` locked: true when it should
    /// bypass the set and go straight to the free area (a long run of frees, see free_streak_factor); ends an
    /// allocation streak.
    bool should_bypass(unsigned cpu, unsigned order) noexcept {
        Set& s = sets_[cpu];
        s.refills = 0;
        if (s.free_count >= free_streak_factor * high_) [[unlikely]]
            return true;
        s.free_count += 1u << order;
        return false;
    }

    /// free_unref_page_commit(): puts the block of `order` at index `i` (no longer referenced) on the hot end of
    /// set `cpu` (locked by the caller); at `high` pages, `batch` pages go back to `area` under `zone_lock`.  `mt`
    /// is the block's pageblock migrate type (get_pfnblock_migratetype()), looked up by the caller before it took
    /// the set so that the lookup overlaps the lock; ignored with one type.
    template <class Area, class ZoneLock>
    [[gnu::always_inline]] void free(unsigned cpu, Area& area, ZoneLock& zone_lock, detail::page_index i,
                                     unsigned order, unsigned mt = 0) noexcept {
        Set& s = sets_[cpu];
        Page* pages = area.pages();
        if (pages[i].test(PageFlag::head))
            for (detail::page_index k = 1; k < (detail::page_index{1} << order); ++k)
                detail::PageAccess::set_flags(pages[i + k], 0);
        link(s, pages, i, order);
        if constexpr (Types == 1)
            mt = 0;
        else if (mt >= Types) // HIGHATOMIC pages go on the movable list (free_unref_page)
            mt = static_cast<unsigned>(MigrateType::movable);
        s.lists[order * Types + mt].push_front(pages, i);
        ++s.frees;
        if (s.count >= high_) [[unlikely]]
            spill_batch(s, area, zone_lock);
    }

    /// drain_pages_zone(): gives every page of set `cpu` back to `area`; returns how many.  Takes the set's lock,
    /// then the zone lock.
    template <class Area, class ZoneLock>
    std::uint64_t drain(unsigned cpu, Area& area, ZoneLock& zone_lock) {
        Set& s = sets_.lock(cpu);
        const std::uint64_t n = s.count;
        if (n != 0) {
            policy::LockGuard<ZoneLock> guard(zone_lock);
            spill(s, area, n);
        }
        sets_.unlock(cpu);
        return n;
    }
    /// Gives every set's pages back to `area` while the caller holds every set lock and the zone lock (the exact
    /// last pass of an allocation that would otherwise fail); returns how many.
    template <class Area>
    std::uint64_t drain_all_locked(Area& area) noexcept {
        std::uint64_t n = 0;
        for (unsigned c = 0; c < sets_.size(); ++c) {
            n += sets_[c].count;
            spill(sets_[c], area, sets_[c].count);
        }
        return n;
    }

    /// Pages held on every set (each set locked in turn).
    std::uint64_t nr_pages() const noexcept {
        std::uint64_t n = 0;
        for (unsigned c = 0; c < sets_.size(); ++c) {
            n += sets_.lock(c).count;
            sets_.unlock(c);
        }
        return n;
    }
    /// Adds every set's held pages, allocation and free events to the three counters (each set locked in turn).
    void add_counts(std::uint64_t& pages, std::uint64_t& allocations, std::uint64_t& frees) const noexcept {
        for (unsigned c = 0; c < sets_.size(); ++c) {
            const Set& s = sets_.lock(c);
            pages += s.count;
            allocations += s.allocations;
            frees += s.frees;
            sets_.unlock(c);
        }
    }

    /// Checks every set (the caller holds every set lock): each block has the pcp flag and its list's order, a
    /// zero reference count, correct links and alignment, and the set's count matches its lists.  Adds the pages
    /// held to `parked`; returns the first violation or "".
    std::string check(const Page* pages, std::uint64_t first_pfn, std::uint64_t span,
                      std::uint64_t& parked) const {
        for (unsigned c = 0; c < sets_.size(); ++c) {
            const Set& s = sets_[c];
            std::uint64_t held = 0;
            for (unsigned k = 0; k < nr_lists; ++k) {
                std::string problem;
                detail::page_index prev = Page::nil;
                const auto where = [&] { return " of cpu " + std::to_string(c); };
                const std::uint64_t count = s.lists[k].walk(pages, span, [&](detail::page_index b) {
                    if (b >= span) {
                        problem = "per-CPU list " + std::to_string(k) + where() + " links outside the table";
                        return false;
                    }
                    const Page& p = pages[b];
                    const auto at = [&] {
                        return "per-CPU block at pfn " + std::to_string(first_pfn + b) + " (cpu " +
                               std::to_string(c) + ")";
                    };
                    if (!p.test(PageFlag::pcp) || p.order() != order_of_list(k))
                        problem =
                            at() + " is on list " + std::to_string(k) + " without the pcp flag of that order";
                    else if (detail::PageAccess::prev(p) != prev)
                        problem = at() + " has a broken back link";
                    else if (((first_pfn + b) & ((std::uint64_t{1} << order_of_list(k)) - 1)) != 0)
                        problem = at() + " is not aligned to its order";
                    else if (p.refcount() != 0)
                        problem = at() + " has a non-zero reference count";
                    prev = b;
                    return problem.empty();
                });
                if (!problem.empty()) return problem;
                if (count > span) return "per-CPU list " + std::to_string(k) + where() + " has a cycle";
                if (prev != s.lists[k].back())
                    return "per-CPU list " + std::to_string(k) + where() + " has a wrong tail";
                held += count << order_of_list(k);
            }
            if (held != s.count)
                return "cpu " + std::to_string(c) + " counts " + std::to_string(s.count) +
                       " per-CPU pages but its lists hold " + std::to_string(held);
            parked += held;
        }
        return {};
    }

private:
    static void link(Set& s, Page* pages, detail::page_index i, unsigned order) noexcept {
        detail::PageAccess::set_order(pages[i], order);
        detail::PageAccess::set_flags(pages[i], detail::flag(PageFlag::pcp));
        s.count += 1u << order;
    }
    // alloc() on an empty list, kept out of line so that the hit path stays small enough to inline.
    template <class Area, class ZoneLock>
    [[gnu::noinline]] detail::page_index refill_and_pop(Set& s, Area& area, ZoneLock& zone_lock,
                                                        unsigned order, unsigned mt) noexcept {
        if (s.refills >= refill_streak_limit) return Page::nil; // an allocation streak: use the free area
        ++s.refills;
        refill(s, area, zone_lock, order, mt);
        detail::IndexList& list = s.lists[order * Types + mt];
        if (list.empty()) return Page::nil;
        ++s.allocations;
        s.count -= 1u << order;
        return list.pop_front(area.pages());
    }
    // rmqueue_bulk(): batch >> order blocks (at least 2), in address order, under the zone lock.
    template <class Area, class ZoneLock>
    void refill(Set& s, Area& area, ZoneLock& zone_lock, unsigned order, unsigned mt) noexcept {
        const unsigned want = (batch_ >> order) > 2u ? batch_ >> order : 2u;
        Page* pages = area.pages();
        policy::LockGuard<ZoneLock> guard(zone_lock);
        for (unsigned n = 0; n < want; ++n) {
            const detail::page_index i = area.rmqueue(order, mt);
            if (i == Page::nil) break;
            link(s, pages, i, order);
            s.lists[order * Types + mt].push_back(pages, i);
        }
    }
    // free() at `high` pages: `batch` pages go back under the zone lock (out of line, as refill_and_pop()).
    template <class Area, class ZoneLock>
    [[gnu::noinline]] void spill_batch(Set& s, Area& area, ZoneLock& zone_lock) noexcept {
        policy::LockGuard<ZoneLock> guard(zone_lock);
        spill(s, area, batch_);
    }
    // free_pcppages_bulk(): at least `pages` pages (or all there are) from the cold ends, round robin over the
    // orders, merged into the free area.  The set's lock and the zone lock are held.
    template <class Area>
    static void spill(Set& s, Area& area, std::uint64_t pages) noexcept {
        Page* table = area.pages();
        std::uint64_t done = 0;
        while (done < pages && s.count > 0) {
            unsigned o = s.next_spill;
            while (s.lists[o].empty()) o = (o + 1) % nr_lists; // count > 0: some list is not empty
            s.next_spill = (o + 1) % nr_lists;
            const detail::page_index i = s.lists[o].pop_back(table);
            const unsigned order = order_of_list(o);
            s.count -= 1u << order;
            detail::PageAccess::set_flags(table[i], 0);
            area.free_one_page(i, order);
            done += std::uint64_t{1} << order;
        }
    }

    mutable detail::PerCpu<Set, Shared> sets_; // locking a set to read it is not a change
    unsigned batch_;
    unsigned high_;
};

namespace detail {
/// Stands in for PcpLists in an allocator built without policy::PerCpuPages.
struct NoPcpLists {
    NoPcpLists(unsigned, unsigned) noexcept {}
};
} // namespace detail

} // namespace kmem
