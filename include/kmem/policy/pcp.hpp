/// @file
/// Per-CPU page lists policy: small per-CPU caches of free pages in front of a buddy allocator (the kernel's
/// struct per_cpu_pages, behind rmqueue_pcplist() and free_unref_page()).
///
/// With `policy::PerCpuPages<>` among its policies, a BuddyAllocator keeps freed blocks of order 0 up to
/// PAGE_ALLOC_COSTLY_ORDER (3) on a list of the calling CPU instead of merging them at once, and serves
/// allocations of those orders from that list.  An empty list is refilled with `batch` pages taken from the
/// free lists in one go; a list holding `high` pages or more gives `batch` pages back.  An allocator with a lock
/// keeps one set of lists per CPU, each behind its own spin lock that is only ever try-locked on the hot path
/// (a busy list sends the caller to the free lists, as in the kernel); an allocator without a lock keeps one set.
///
/// `Batch` and `High` of 0 mean "computed as the kernel does": batch from the zone size (zone_batchsize(): a
/// quarter of 1/1024 of the pages, at most 1 MiB, rounded to 2^n - 1), high from zone_highsize(): the low
/// watermark of a zone of that size shared by the CPUs with lists, at least 4 * batch.
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::PerCpuPages<>> buddy(kmem::MmapRegion(64 << 20));
///   kmem::Page* page = buddy.alloc_pages(kmem::gfp::kernel, 0);   // refills this CPU's list, takes one page
///   buddy.free_pages(page, 0);                                    // back on the list, not merged
///   assert(buddy.nr_pcp_pages() == buddy.pcp_batch());
///   buddy.drain_all_pages();                                      // drain_all_pages(): everything merges
///   assert(buddy.nr_free_pages() == buddy.total_pages());
/// @endcode
#pragma once

#include <kmem/policy/category.hpp>

namespace kmem::policy {

/// Per-CPU page lists for orders 0..MaxOrder (struct per_cpu_pages); Batch and High in pages, 0 = computed.
template <unsigned Batch = 0, unsigned High = 0, unsigned MaxOrder = 3>
struct PerCpuPages {
    /// This is a pcp policy.
    using policy_category = pcp_policy_tag;
    static_assert(
        Batch == 0 || High == 0 || High >= Batch,
        "PerCpuPages' High must be at least its Batch, or a list would give back pages it just took.");
    static_assert(MaxOrder <= 8,
                  "PerCpuPages caches orders up to 8 at most (the kernel caches up to order 3).");
    /// Pages moved between a list and the free lists at a time (pcp->batch); 0 = computed from the zone size.
    static constexpr unsigned batch = Batch;
    /// Pages a CPU's lists may hold before `batch` pages go back (pcp->high); 0 = zone_highsize().
    static constexpr unsigned high = High;
    /// The largest order kept on the lists (PAGE_ALLOC_COSTLY_ORDER); larger blocks always go to the free lists.
    static constexpr unsigned max_order = MaxOrder;
};

/// Turns on the kernel's anti-fragmentation: pageblocks with migrate types, free lists per order and type,
/// fallback with pageblock claiming, HIGHATOMIC reserves, and per-CPU lists per type (see free_area.hpp).
/// A request's type comes from its flags (gfp::movable, gfp::reclaimable).  A Node's zones always have it.
struct MigrateTypes {
    /// This is the anti-fragmentation policy.
    using policy_category = migrate_policy_tag;
};

/// True for PerCpuPages<...> instantiations.
template <class P>
inline constexpr bool is_per_cpu_pages = false;
/// True for PerCpuPages<...> instantiations.
template <unsigned B, unsigned H, unsigned M>
inline constexpr bool is_per_cpu_pages<PerCpuPages<B, H, M>> = true;

} // namespace kmem::policy
