/// @file
/// Zones and nodes (mm/page_alloc.c, mm/vmscan.c, mm/compaction.c): GFP flags that pick a zone, watermarks and
/// reserves, reclaim through shrinkers, a kswapd thread, and compaction of movable memory.
///
/// A `Node` holds up to five zones, each a buddy allocator over its own region with a zone type (ZONE_DMA,
/// ZONE_DMA32, ZONE_NORMAL, ZONE_HIGHMEM, ZONE_MOVABLE).  A request's zone modifier picks the highest zone it
/// allows (gfp_zone) and falls back downward through the node's zones, as the kernel's zonelist does; which
/// zones a node has is part of its type, so a zone modifier no zone of the node can serve (gfp::dma on a node
/// without ZONE_DMA) is a compile error.  What a zone means is the user's choice of region: DMA32 can be memory
/// below 4 GiB (an MmapRegion created with MAP_32BIT), DMA a pinned or device-visible buffer, MOVABLE a region
/// that only holds movable (compactable) data, HIGHMEM an offset-only or shared-memory region.
///
/// The allocation path is the kernel's: the fast path takes a page from the first zone above its low
/// watermark; the slow path wakes kswapd, retries against the min watermark (less half for gfp::high, less
/// another quarter for a caller that cannot block, none for __GFP_MEMALLOC), and, when the caller may block
/// (gfp::direct_reclaim), drains the per-CPU lists, runs the shrinkers, compacts, waits for other threads to
/// free, and retries as __GFP_NORETRY, __GFP_RETRY_MAYFAIL and __GFP_NOFAIL say.  Frees go back to the zone
/// that owns the page.  The whole PageApi (alloc_pages, get_free_pages, alloc_pages_exact, free_pages, get_page
/// ...) works on a node; the node's page index space is its zones' pages one after another.
///
/// @code
///   using Node = kmem::Node<10, 4096,
///                           kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::dma32, kmem::MmapRegion>,
///                                       kmem::ZoneSpec<kmem::ZoneType::normal, kmem::MmapRegion>>,
///                           kmem::policy::MutexLock>;
///   Node node(kmem::MmapRegion(4 << 20), kmem::MmapRegion(16 << 20));
///   void* a = node.get_free_pages(kmem::gfp::kernel, 0);   // from ZONE_NORMAL
///   void* b = node.get_free_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);   // ZONE_DMA32 or below
///   assert(node.zone_of(a) == kmem::ZoneType::normal && node.zone_of(b) == kmem::ZoneType::dma32);
///   node.free_pages(a, 0);
///   node.free_pages(b, 0);
///   std::cout << node.buddyinfo();   // one line per zone
/// @endcode
#pragma once

#include <kmem/buddy.hpp>
#include <kmem/detail/policies.hpp>
#include <kmem/detail/reports.hpp>
#include <kmem/fault.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/page_api.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/policy/zone.hpp>
#include <kmem/shrinker.hpp>
#include <kmem/watermarks.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace kmem {

/// One zone of a Node: its type and the region type it manages (a zone of pg_data_t->node_zones).
template <ZoneType Z, class RegionT>
struct ZoneSpec {
    /// The zone type.
    static constexpr ZoneType type = Z;
    /// The region type (owned by the zone).
    using region_type = RegionT;
};

/// The zones of a Node, lowest first (ZONE_DMA before ZONE_NORMAL), as the kernel numbers them.
template <class... Specs>
struct Zones {};

/// A movable allocation (a page of __GFP_MOVABLE memory that compaction may relocate): an id the node maps to
/// the block's current place.  Touch the memory through Node::pin(), which keeps it in place while pinned.
class MovableHandle {
public:
    MovableHandle() noexcept = default;
    /// True when the handle refers to an allocation.
    explicit operator bool() const noexcept { return id_ != nil; }
    /// The id (an index into the node's table).
    std::uint32_t id() const noexcept { return id_; }
    /// Handles are equal when they name the same allocation.
    friend bool operator==(MovableHandle, MovableHandle) noexcept = default;

private:
    template <unsigned, std::size_t, class, class...>
    friend class Node;
    static constexpr std::uint32_t nil = 0xffffffffu;
    explicit MovableHandle(std::uint32_t id) noexcept : id_(id) {}
    std::uint32_t id_ = nil;
};

/// What one compaction run did (compact_zone's result and the compaction vmstat counters).
struct CompactResult {
    std::uint64_t pages_moved = 0;   ///< Pages migrated (compact_migrate_scanned pages that moved).
    std::uint64_t blocks_moved = 0;  ///< Movable blocks migrated.
    std::uint64_t blocks_pinned = 0; ///< Movable blocks skipped because they were pinned.
    /// True when a free block of the requested order exists afterwards (COMPACT_SUCCESS), or when a full
    /// compaction (order -1) ran until the scanners met (COMPACT_COMPLETE).
    bool success = false;
};

/// A snapshot of a node's counters (/proc/vmstat figures).
struct NodeStats {
    std::uint64_t allocations = 0;      ///< Successful allocations (pgalloc), every zone.
    std::uint64_t failures = 0;         ///< Requests that failed.
    std::uint64_t fallbacks = 0;        ///< Allocations served by a lower zone than the one asked for.
    std::uint64_t slowpath = 0;         ///< Requests that entered the slow path (allocstall-like).
    std::uint64_t direct_reclaim = 0;   ///< Direct reclaim passes (allocstall).
    std::uint64_t reclaimed_pages = 0;  ///< Pages freed by shrinkers, direct and kswapd (pgsteal-like).
    std::uint64_t kswapd_wakeups = 0;   ///< Times kswapd was woken (pageoutrun-like).
    std::uint64_t kswapd_reclaimed = 0; ///< Pages kswapd's shrinker passes freed.
    std::uint64_t compactions = 0;      ///< Compaction runs (compact_stall + manual runs).
    std::uint64_t pages_migrated = 0;   ///< Pages moved by compaction (pgmigrate_success).
    std::uint64_t waits = 0;            ///< Times a request waited for another thread to free memory.
};

namespace detail {

// Reclaim state of the calling thread (current->reclaim_state and PF_MEMALLOC): while a thread runs shrinkers,
// pages it frees to a node are counted as reclaimed, and its own allocations neither recurse into reclaim nor
// stop at watermarks.
struct ReclaimState {
    std::uint64_t reclaimed = 0;
};
inline constinit thread_local ReclaimState* current_reclaim = nullptr;

// A Node's door to its zones' BuddyAllocator primitives.
struct ZoneAccess {
    template <class B>
    static Page* try_alloc(B& b, std::uint32_t bits, unsigned order, const Placement& where, bool drain,
                           bool highatomic = false, bool highatomic_last = false) {
        return b.try_alloc(bits, order, where, drain, highatomic, highatomic_last);
    }
    template <class B>
    static Page* try_alloc_fast(B& b, std::uint32_t bits, unsigned order) {
        return b.try_alloc_fast(bits, order);
    }
    template <class B>
    static void free_core(B& b, page_index i, unsigned order, std::string_view op, bool put) {
        b.free_core(i, order, op, put);
    }
    template <class B>
    static bool free_to_pcp(B& b, page_index i, unsigned order) noexcept {
        return b.free_to_pcp(i, order);
    }
    template <class B>
    static void free_core_locked(B& b, page_index i, unsigned order, std::string_view op, bool put) {
        b.free_core_locked(i, order, op, put);
    }
    template <class B>
    static Page* trim_exact(B& b, Page* p, std::size_t bytes) {
        return b.trim_exact(p, bytes);
    }
    template <class B>
    static void free_exact_core(B& b, page_index i, std::size_t bytes, std::string_view op) {
        b.free_exact_core(i, bytes, op);
    }
    template <class B>
    static void get_page_core(B& b, Page* p) {
        b.get_page_core(p);
    }
    template <class B>
    static void put_page_core(B& b, Page* p) {
        b.put_page_core(p);
    }
    template <class B>
    static void split_page_core(B& b, Page* p, unsigned order) {
        b.split_page_core(p, order);
    }
    template <class B>
    static std::uint64_t free_pages_relaxed(const B& b) noexcept {
        return b.area_.free_pages_relaxed();
    }
    template <class B>
    static std::uint32_t order_mask_relaxed(const B& b) noexcept {
        return b.area_.order_mask_relaxed();
    }
    template <class B>
    static Page* take_compaction_target(B& b, page_index& cursor, unsigned order, page_index lo,
                                        std::uint32_t bits) {
        return b.take_compaction_target(cursor, order, lo, bits);
    }
    template <class B>
    static std::uint64_t free_highatomic_relaxed(const B& b) noexcept {
        return b.area_.free_highatomic_relaxed();
    }
};

// The fragmentation index of a request of `order` over free-block counts (fragmentation_index() of
// mm/vmstat.c), times 1000: -1000 when a block of that order is free, 0 when nothing is free (failure from lack
// of memory), towards 1000 when failure is from fragmentation.
template <std::size_t N>
int fragmentation_index(const std::array<std::uint64_t, N>& nr_free, unsigned order) noexcept {
    std::uint64_t free_pages = 0, blocks = 0, suitable = 0;
    for (unsigned o = 0; o < N; ++o) {
        free_pages += nr_free[o] << o;
        blocks += nr_free[o];
        if (o >= order) suitable += nr_free[o] << (o - order);
    }
    if (blocks == 0) return 0;
    if (suitable != 0) return -1000;
    const std::uint64_t requested = std::uint64_t{1} << order;
    return static_cast<int>(1000 -
                            static_cast<std::int64_t>((1000 + free_pages * 1000 / requested) / blocks));
}

} // namespace detail

template <unsigned MaxOrder, std::size_t PageSize, class ZoneList, class... Policies>
class Node;

/// A memory node (pg_data_t): zones lowest first, each a buddy allocator over its own region with per-CPU page
/// lists, watermarks and a shared error policy; the kernel's zonelist fallback, watermark and reserve rules,
/// reclaim (shrinkers, kswapd), blocking semantics and compaction.  MaxOrder and PageSize are the zones'.
/// Policies: a lock policy (policy::NoLock by default; with it there is no kswapd thread and nothing to wait
/// for), an error policy (policy::AssertOnError), a fault-injection policy (fail_page_alloc, applied once per
/// request) and policy::PerCpuPages (on by default, as the kernel always has per-CPU lists).
template <unsigned MaxOrder, std::size_t PageSize, class... Specs, class... Policies>
class Node<MaxOrder, PageSize, Zones<Specs...>, Policies...>
    : public PageApi<Node<MaxOrder, PageSize, Zones<Specs...>, Policies...>,
                     (Specs::region_type::addressable && ...)> {
    static_assert(sizeof...(Specs) >= 1 && sizeof...(Specs) <= 5, "a Node has between one and five zones.");
    static constexpr std::array<ZoneType, sizeof...(Specs)> types{Specs::type...};
    static constexpr bool ascending = [] {
        for (std::size_t k = 1; k < types.size(); ++k)
            if (types[k - 1] >= types[k]) return false;
        return true;
    }();
    static_assert(ascending, "a Node's zones are listed lowest first, each zone type at most once (e.g. "
                             "ZoneSpec<ZoneType::dma32, R>, then ZoneSpec<ZoneType::normal, R>).");
    static_assert((Specs::region_type::addressable && ...) || (!Specs::region_type::addressable && ...),
                  "a Node's zones are either all host memory or all offset-only regions.");
    using policies = detail::PolicySet<Policies...>;
    static_assert(policies::template only<policy::lock_policy_tag, policy::error_policy_tag,
                                          policy::fault_policy_tag, policy::pcp_policy_tag>,
                  "a Node policy must be a lock policy, an error policy, policy::PerCpuPages or a "
                  "fault-injection policy; the zones and their regions go in Zones<ZoneSpec<...>...>.");
    static_assert(policies::unique);
    using Base = PageApi<Node, (Specs::region_type::addressable && ...)>;
    friend Base;
    using index_t = detail::page_index;

public:
    /// The lock policy of every zone.
    using lock_type = typename policies::template get<policy::lock_policy_tag, policy::NoLock>;
    /// The error policy.
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    /// The fault-injection policy (fail_page_alloc).
    using fault_policy_type = typename policies::template get<policy::fault_policy_tag, policy::NoFaults>;
    /// The per-CPU page list policy of every zone.
    using pcp_policy = typename policies::template get<policy::pcp_policy_tag, policy::PerCpuPages<>>;
    /// The buddy allocator of zone type `Spec`.
    template <class Spec>
    using zone_allocator =
        BuddyAllocator<MaxOrder, PageSize, typename Spec::region_type, lock_type, policy::CallbackOnError,
                       policy::InZone<Spec::type>, pcp_policy, policy::MigrateTypes>;
    /// The largest order (MAX_PAGE_ORDER).
    static constexpr unsigned max_order = MaxOrder;
    /// Bytes per page.
    static constexpr std::size_t page_size = PageSize;
    /// True when the zones hold host memory.
    static constexpr bool addressable = (Specs::region_type::addressable && ...);
    /// True when callers may sleep in the allocator (direct reclaim allowed).
    static constexpr bool may_sleep = lock_type::may_sleep;
    /// The lowest zone: a zone modifier must allow it (the PageApi compile-time check), since requests only
    /// fall back downward.
    static constexpr ZoneType zone = types[0];
    /// The number of zones.
    static constexpr unsigned nr_zones = sizeof...(Specs);
    /// True when other threads may free memory while a request waits (a lock policy other than NoLock); then a
    /// kswapd thread runs background reclaim.
    static constexpr bool threaded = !std::is_same_v<lock_type, policy::NoLock>;
    /// Direct reclaim and compaction rounds without progress before a request gives up (MAX_RECLAIM_RETRIES).
    static constexpr unsigned max_reclaim_retries = 16;
    /// Orders above this are "costly" (PAGE_ALLOC_COSTLY_ORDER): without __GFP_RETRY_MAYFAIL or __GFP_NOFAIL
    /// they fail after one reclaim and compaction round.
    static constexpr unsigned costly_order = 3;

    /// Builds the node: one region per zone, in the zones' order, with default watermarks.
    template <class... Regions>
    requires(sizeof...(Regions) == sizeof...(Specs)) explicit Node(Regions&&... regions)
        : zones_(std::forward<Regions>(regions)...) {
        std::uint64_t base = 0, total = 0;
        for_each_zone([&](auto& z) {
            z.base = base;
            base += z.buddy.mem_map().size();
            total += z.buddy.total_pages();
            z.buddy.error_policy().set_callback([this](const UsageError& e) { error_.on_error(e); });
            z.buddy.set_warning_stream(nullptr);
        });
        span_ = base;
        for_each_zone([&](auto& z) {
            z.wmark = default_watermarks<PageSize>(z.buddy.total_pages(), total);
            publish_watermarks(z);
        });
    }
    Node(const Node&) = delete;            ///< Not copyable.
    Node& operator=(const Node&) = delete; ///< Not copyable.
    /// Stops kswapd.  Memory still allocated is not reported (the regions go away with the node).
    ~Node() {
        stop_kswapd();
        for (std::uint32_t c = 0; c * movable_chunk < nr_ids_; ++c) delete chunks_[c].load();
    }

    // ----- zones ---------------------------------------------------------------------------------------------

    /// The buddy allocator of zone `Z` (a compile error when the node has no such zone).
    template <ZoneType Z>
    auto& zone_allocator_of() noexcept {
        static_assert(index_of_type(Z) >= 0, "this Node has no zone of that type.");
        return std::get<static_cast<std::size_t>(index_of_type(Z))>(zones_).buddy;
    }
    /// The zone type of the page at `addr`, or std::nullopt when it is not in any zone.
    std::optional<ZoneType> zone_of(const void* addr) const noexcept requires addressable {
        std::optional<ZoneType> out;
        for_each_zone([&](const auto& z) {
            if (!out && z.buddy.virt_to_page(addr) != nullptr) out = z.type;
        });
        return out;
    }
    /// The zone type of a page descriptor of this node, or std::nullopt.
    std::optional<ZoneType> zone_of(const Page* page) const noexcept {
        std::optional<ZoneType> out;
        for_each_zone([&](const auto& z) {
            if (!out && z.buddy.mem_map().index_of(page) != Page::nil) out = z.type;
        });
        return out;
    }
    /// The watermarks of zone `z` (zeroes when the node has no such zone).
    Watermarks watermarks(ZoneType z) const noexcept {
        Watermarks w;
        for_each_zone([&](const auto& s) {
            if (s.type == z) w = s.wmark;
        });
        return w;
    }
    /// Sets the watermarks of zone `z` (min <= low <= high, all within the zone); reports
    /// ErrorKind::bad_parameter otherwise.  Not for concurrent use with allocations.
    void set_watermarks(ZoneType z, Watermarks w) {
        bool found = false, ok = false;
        for_each_zone([&](auto& s) {
            if (s.type != z) return;
            found = true;
            ok = w.min <= w.low && w.low <= w.high && w.high <= s.buddy.total_pages();
            if (ok) {
                s.wmark = w;
                publish_watermarks(s);
            }
        });
        if (!found || !ok)
            error_.on_error(UsageError{ErrorKind::bad_parameter, "set_watermarks",
                                       found ? "the watermarks must satisfy min <= low <= high <= the zone's "
                                               "managed pages."
                                             : "this node has no zone " + std::string(zone_name(z)) + "."});
    }

    // ----- counters and reports ------------------------------------------------------------------------------

    /// Free pages on every zone's free lists (per-CPU lists excluded, as the kernel's NR_FREE_PAGES).
    std::uint64_t nr_free_pages() const {
        std::uint64_t n = 0;
        for_each_zone([&](const auto& z) { n += z.buddy.nr_free_pages(); });
        return n;
    }
    /// Free pages including those parked on per-CPU lists.
    std::uint64_t nr_free_and_pcp_pages() const {
        std::uint64_t n = 0;
        for_each_zone([&](const auto& z) { n += z.buddy.nr_free_pages() + z.buddy.nr_pcp_pages(); });
        return n;
    }
    /// Pages the node manages (every zone's managed pages).
    std::uint64_t total_pages() const noexcept {
        std::uint64_t n = 0;
        for_each_zone([&](const auto& z) { n += z.buddy.total_pages(); });
        return n;
    }
    /// A snapshot of the node's counters.
    NodeStats stats() const {
        NodeStats s;
        for_each_zone([&](const auto& z) { s.allocations += z.buddy.stats().allocations; });
        s.failures = failures_.load(std::memory_order_relaxed);
        s.fallbacks = fallbacks_.load(std::memory_order_relaxed);
        s.slowpath = slowpath_.load(std::memory_order_relaxed);
        s.direct_reclaim = direct_reclaim_.load(std::memory_order_relaxed);
        s.reclaimed_pages = reclaimed_.load(std::memory_order_relaxed);
        s.kswapd_wakeups = kswapd_wakeups_.load(std::memory_order_relaxed);
        s.kswapd_reclaimed = kswapd_reclaimed_.load(std::memory_order_relaxed);
        s.compactions = compactions_.load(std::memory_order_relaxed);
        s.pages_migrated = migrated_.load(std::memory_order_relaxed);
        s.waits = waits_.load(std::memory_order_relaxed);
        return s;
    }
    /// /proc/buddyinfo for the node: one line per zone, lowest zone first.
    std::string buddyinfo() const {
        std::string out;
        for_each_zone([&](const auto& z) {
            std::array<std::uint64_t, MaxOrder + 1> nr{};
            for (unsigned o = 0; o <= MaxOrder; ++o) nr[o] = z.buddy.nr_free(o);
            out += detail::buddyinfo_line(node_id_, z.type, nr);
        });
        return out;
    }
    /// /proc/zoneinfo for the node: per zone the free pages, watermarks, spanned / present / managed pages,
    /// per-order free blocks and the per-CPU lists' count, high and batch.
    std::string zoneinfo() const {
        std::string out;
        char buf[160];
        for_each_zone([&](const auto& z) {
            const auto st = z.buddy.stats();
            const std::string_view name = zone_name(z.type);
            std::snprintf(buf, sizeof buf, "Node %d, zone %8.*s\n", node_id_, static_cast<int>(name.size()),
                          name.data());
            out += buf;
            const auto line = [&](const char* key, std::uint64_t v) {
                std::snprintf(buf, sizeof buf, "        %-8s %llu\n", key,
                              static_cast<unsigned long long>(v));
                out += buf;
            };
            std::snprintf(buf, sizeof buf, "  pages free     %llu\n",
                          static_cast<unsigned long long>(st.free_pages));
            out += buf;
            line("min", z.wmark.min);
            line("low", z.wmark.low);
            line("high", z.wmark.high);
            line("spanned", z.buddy.mem_map().size());
            line("present", z.buddy.mem_map().size());
            line("managed", st.total_pages);
            out += "        nr_free_pages_per_order";
            for (const std::uint64_t n : st.nr_free) out += ' ' + std::to_string(n);
            out += '\n';
            std::snprintf(buf, sizeof buf, "  pagesets\n    count: %llu\n    high:  %u\n    batch: %u\n",
                          static_cast<unsigned long long>(st.pcp_pages), z.buddy.pcp_high(),
                          z.buddy.pcp_batch());
            out += buf;
        });
        return out;
    }
    /// /proc/pagetypeinfo: the pageblock order, free blocks per order for each zone and migrate type, and the
    /// number of pageblocks of each type per zone.
    std::string pagetypeinfo() const {
        using area_type = typename zone_allocator<std::tuple_element_t<0, std::tuple<Specs...>>>::area_type;
        char buf[96];
        std::string out = "Page block order: " + std::to_string(area_type::pageblock_order) + "\n" +
                          "Pages per block:  " + std::to_string(1u << area_type::pageblock_order) + "\n\n" +
                          "Free pages count per migrate type at order  ";
        for (unsigned o = 0; o <= MaxOrder; ++o) {
            std::snprintf(buf, sizeof buf, "%6u ", o);
            out += buf;
        }
        out += '\n';
        for_each_zone([&](const auto& z) {
            const std::string_view zn = zone_name(z.type);
            for (unsigned mt = 0; mt < nr_migrate_types; ++mt) {
                const std::string_view tn = migratetype_name(mt);
                std::snprintf(buf, sizeof buf, "Node %4d, zone %8.*s, type %12.*s ", node_id_,
                              static_cast<int>(zn.size()), zn.data(), static_cast<int>(tn.size()), tn.data());
                out += buf;
                for (unsigned o = 0; o <= MaxOrder; ++o) {
                    std::snprintf(buf, sizeof buf, "%6llu ",
                                  static_cast<unsigned long long>(z.buddy.nr_free(o, mt)));
                    out += buf;
                }
                out += '\n';
            }
        });
        out += "\nNumber of blocks type  ";
        for (unsigned mt = 0; mt < nr_migrate_types; ++mt) {
            const std::string_view tn = migratetype_name(mt);
            std::snprintf(buf, sizeof buf, "%12.*s ", static_cast<int>(tn.size()), tn.data());
            out += buf;
        }
        out += '\n';
        for_each_zone([&](const auto& z) {
            const std::string_view zn = zone_name(z.type);
            std::snprintf(buf, sizeof buf, "Node %d, zone %8.*s ", node_id_, static_cast<int>(zn.size()),
                          zn.data());
            out += buf;
            for (unsigned mt = 0; mt < nr_migrate_types; ++mt) {
                std::snprintf(buf, sizeof buf, "%12llu ",
                              static_cast<unsigned long long>(z.buddy.nr_pageblocks(mt)));
                out += buf;
            }
            out += '\n';
        });
        return out;
    }
    /// The fragmentation index of a request of `order` in zone `z` (mm/vmstat.c's fragmentation_index), in
    /// thousandths: -1000 when a free block of that order exists, 0 when failure would be from lack of memory,
    /// towards 1000 when it would be from fragmentation.
    int fragmentation_index(ZoneType z, unsigned order) const {
        int out = 0;
        for_each_zone([&](const auto& s) {
            if (s.type != z) return;
            std::array<std::uint64_t, MaxOrder + 1> nr{};
            for (unsigned o = 0; o <= MaxOrder; ++o) nr[o] = s.buddy.nr_free(o);
            out = detail::fragmentation_index(nr, order);
        });
        return out;
    }
    /// /sys/kernel/debug/extfrag/extfrag_index: per zone, the fragmentation index of every order as a
    /// fraction ("-1.000" where the order is available).
    std::string extfrag_index() const {
        std::string out;
        char buf[64];
        for_each_zone([&](const auto& z) {
            const std::string_view name = zone_name(z.type);
            std::snprintf(buf, sizeof buf, "Node %d, zone %8.*s ", node_id_, static_cast<int>(name.size()),
                          name.data());
            out += buf;
            for (unsigned o = 0; o <= MaxOrder; ++o) {
                const int fi = fragmentation_index(z.type, o);
                std::snprintf(buf, sizeof buf, "%s%d.%03d ", fi < 0 ? "-" : "", std::abs(fi) / 1000,
                              std::abs(fi) % 1000);
                out += buf;
            }
            out += '\n';
        });
        return out;
    }
    /// Checks every zone's invariants; returns the first violation (prefixed with the zone), or "".
    std::string check_invariants() const {
        std::string out;
        for_each_zone([&](const auto& z) {
            if (!out.empty()) return;
            if (std::string p = z.buddy.check_invariants(); !p.empty())
                out = std::string(zone_name(z.type)) + ": " + p;
        });
        return out;
    }
    /// The error policy (shared by every zone).
    error_policy_type& error_policy() noexcept { return error_; }
    /// The fault-injection policy (fail_page_alloc), consulted once per request.
    fault_policy_type& fault_policy() noexcept { return fault_; }
    /// Where allocation-failure reports go (default std::clog); nullptr silences them.
    void set_warning_stream(std::ostream* out) noexcept { warn_ = out; }
    /// The node id printed in reports (default 0).
    void set_node(int node) noexcept { node_id_ = node; }
    /// Gives every page on every zone's per-CPU lists back to the free lists (drain_all_pages).
    std::uint64_t drain_all_pages() {
        std::uint64_t n = 0;
        for_each_zone([&](auto& z) { n += z.buddy.drain_all_pages(); });
        return n;
    }

    // ----- reclaim -------------------------------------------------------------------------------------------

    /// Registers a shrinker (register_shrinker); direct reclaim and kswapd call it from now on.  Returns its id.
    std::uint64_t register_shrinker(Shrinker s) {
        auto e = std::make_shared<ShrinkerEntry>();
        e->s = std::move(s);
        if (e->s.batch == 0) e->s.batch = 128;
        std::lock_guard g(shrinker_mtx_);
        e->id = ++shrinker_ids_;
        shrinkers_.push_back(e);
        return e->id;
    }
    /// Unregisters a shrinker (unregister_shrinker) and waits until no reclaim pass is still calling it, so its
    /// state can be destroyed afterwards.  Must not be called from the shrinker itself.  False for an unknown id.
    bool unregister_shrinker(std::uint64_t id) {
        std::shared_ptr<ShrinkerEntry> e;
        {
            std::lock_guard g(shrinker_mtx_);
            auto it = std::find_if(shrinkers_.begin(), shrinkers_.end(),
                                   [&](const auto& p) { return p->id == id; });
            if (it == shrinkers_.end()) return false;
            e = *it;
            shrinkers_.erase(it);
        }
        while (e->users.load(std::memory_order_acquire) != 0) std::this_thread::yield();
        return true;
    }
    /// Runs every shrinker once at `priority` (12 scans least, 0 everything: shrink_slab) without an allocation
    /// behind it; returns the pages that came back to the node (those freed by this thread).
    std::uint64_t shrink_slab(int priority = 0) { return run_shrinkers(0, priority); }
    /// Reclaims until `pages` pages came back or the shrinkers have nothing left (try_to_free_pages, as
    /// drop_caches does with priority 0 last); returns the pages reclaimed.
    std::uint64_t reclaim(std::uint64_t pages) { return direct_reclaim_pass(0, pages, 0, nullptr); }
    /// True while the kswapd thread exists (it starts on the first wake-up and stops with the node).
    bool kswapd_running() const {
        std::lock_guard g(kswapd_mtx_);
        return kswapd_.joinable();
    }
    /// Wakes kswapd when a zone is below its high watermark (wakeup_kswapd); a no-op without a lock policy.
    void wakeup_kswapd() {
        if constexpr (threaded) {
            bool below = false;
            for_each_zone([&](const auto& z) {
                below = below || detail::ZoneAccess::free_pages_relaxed(z.buddy) <
                                     z.mark[2].load(std::memory_order_relaxed);
            });
            if (below) wake_kswapd();
        }
    }
    /// Waits until kswapd has finished its current balancing run (for tests and tools); returns at once when it
    /// is idle or not running.
    void wait_kswapd_idle() {
        std::unique_lock g(kswapd_mtx_);
        kswapd_cv_.wait(g, [&] { return !kswapd_busy_ && !kswapd_wake_; });
    }

    // ----- movable memory and compaction ---------------------------------------------------------------------

    /// Allocates a movable block of 2^order pages (__GFP_MOVABLE memory) and returns its handle, or an empty
    /// handle on failure.  Compaction may move the block; pin() it to touch its memory.  The flags must contain
    /// gfp::movable.
    template <std::uint32_t B>
    MovableHandle alloc_movable(gfp::Flags<B> flags, unsigned order) requires addressable {
        static_assert((B & gfp::bits::movable) != 0,
                      "alloc_movable needs __GFP_MOVABLE in the flags (e.g. gfp::highuser_movable or "
                      "gfp::kernel | gfp::movable): only movable memory may be relocated by compaction.");
        Page* p = this->alloc_pages(flags, order);
        if (p == nullptr) return {};
        const index_t g = node_index(p);
        std::lock_guard lk(movable_mtx_);
        std::uint32_t id;
        if (!free_ids_.empty()) {
            id = free_ids_.back();
            free_ids_.pop_back();
        } else if (nr_ids_ < movable_chunk * movable_chunks) {
            id = nr_ids_++;
            if (id % movable_chunk == 0)
                chunks_[id / movable_chunk].store(new Chunk, std::memory_order_release);
        } else {
            free_core(g, order, "alloc_movable");
            return {};
        }
        MovableEntry& e = slot(id);
        e.index.store(g, std::memory_order_relaxed);
        e.order = order;
        e.state.store(0, std::memory_order_release);
        if (nr_published_.load(std::memory_order_relaxed) < nr_ids_)
            nr_published_.store(nr_ids_, std::memory_order_release);
        return MovableHandle(id);
    }
    /// Frees a movable block; an empty, unknown or pinned handle is reported (ErrorKind::bad_parameter).
    void free_movable(MovableHandle h) requires addressable {
        index_t g = Page::nil;
        unsigned order = 0;
        {
            std::lock_guard lk(movable_mtx_);
            std::int32_t idle = 0;
            if (h && h.id_ < nr_ids_ && slot(h.id_).state.compare_exchange_strong(idle, -2)) {
                MovableEntry& e = slot(h.id_);
                g = e.index.load(std::memory_order_relaxed);
                order = e.order;
                free_ids_.push_back(h.id_);
            }
        }
        if (g == Page::nil)
            return error_.on_error(UsageError{ErrorKind::bad_parameter, "free_movable",
                                              "the handle is empty, already freed, or still pinned."});
        free_core(g, order, "free_movable");
    }
    /// Keeps a movable block in place while it lives and gives its address (a pinned page is not migrated).
    class Pin {
    public:
        Pin(const Pin&) = delete;
        Pin& operator=(const Pin&) = delete;
        /// Takes over another pin.
        Pin(Pin&& o) noexcept : node_(std::exchange(o.node_, nullptr)), id_(o.id_), addr_(o.addr_) {}
        /// Unpins.
        ~Pin() {
            if (node_ != nullptr) node_->slot(id_).state.fetch_sub(1, std::memory_order_release);
        }
        /// The block's address while pinned.
        void* get() const noexcept { return addr_; }

    private:
        friend class Node;
        Pin(Node* n, std::uint32_t id, void* a) noexcept : node_(n), id_(id), addr_(a) {}
        Node* node_;
        std::uint32_t id_;
        void* addr_;
    };
    /// Pins a movable block (waits while compaction is moving it) and returns the pin.  Lock-free.  An empty or
    /// freed handle is reported (ErrorKind::bad_parameter) and gives a pin whose get() is nullptr.
    Pin pin(MovableHandle h) requires addressable {
        if (h && h.id_ < nr_ids_published()) {
            MovableEntry& e = slot(h.id_);
            for (std::int32_t s = e.state.load(std::memory_order_acquire); s != -2;
                 s = e.state.load(std::memory_order_acquire)) {
                if (s >= 0 && e.state.compare_exchange_weak(s, s + 1, std::memory_order_acquire))
                    return Pin(this, h.id_, page_address_of(e.index.load(std::memory_order_relaxed)));
                std::this_thread::yield();
            }
        }
        error_.on_error(UsageError{ErrorKind::bad_parameter, "pin", "the movable handle is empty or freed."});
        return Pin(nullptr, 0, nullptr);
    }
    /// The current address of a movable block without pinning it (valid until the next compaction), or nullptr
    /// for an empty or freed handle.
    void* movable_address(MovableHandle h) requires addressable {
        if (!h || h.id_ >= nr_ids_published()) return nullptr;
        MovableEntry& e = slot(h.id_);
        if (e.state.load(std::memory_order_acquire) == -2) return nullptr;
        return page_address_of(e.index.load(std::memory_order_relaxed));
    }
    /// Movable blocks allocated and not freed.
    std::uint64_t nr_movable() {
        std::lock_guard lk(movable_mtx_);
        return nr_ids_ - free_ids_.size();
    }

    /// Compacts zone `z` until a free block of `order` exists (or, with order < 0, as far as it goes, as
    /// /proc/sys/vm/compact_memory does): movable blocks are taken from the bottom of the zone (the migrate
    /// scanner) and moved into the highest free blocks above them (the free scanner), their contents copied and
    /// their handles updated; pinned blocks stay.  Safe while other threads allocate and free.
    CompactResult compact_zone(ZoneType z, int order = -1) requires addressable {
        CompactResult r;
        for_each_zone([&](auto& s) {
            if (s.type == z) r = compact_one(s, order);
        });
        return r;
    }
    /// Compacts every zone (compact_nodes); returns the summed result (success: some zone has the order).
    CompactResult compact(int order = -1) requires addressable {
        CompactResult r;
        for_each_zone([&](auto& s) {
            const CompactResult one = compact_one(s, order);
            r.pages_moved += one.pages_moved;
            r.blocks_moved += one.blocks_moved;
            r.blocks_pinned += one.blocks_pinned;
            r.success = r.success || one.success;
        });
        return r;
    }

    // ----- the node's memory map (the PageApi's view: zones' pages one after another) ---------------------

    /// The node-wide page map the PageApi works through: index i is page i of the first zone, then the second
    /// zone's pages follow, and so on; offsets are index * PageSize.
    class NodeMap {
    public:
        /// The index of a page of any zone, or Page::nil.
        index_t index_of(const Page* p) const noexcept { return n_->node_index(p); }
        /// Why index_of() refused a page.
        static detail::Diagnosis diagnose_page(std::string_view op) noexcept {
            return {detail::Misuse::foreign_page, op};
        }
        /// The index of the page at `addr`, or Page::nil.
        index_t index_of_address(const void* addr) const noexcept requires addressable {
            index_t out = Page::nil;
            n_->for_each_zone([&](const auto& z) {
                if (out != Page::nil) return;
                const index_t i = z.buddy.mem_map().index_of_address(addr);
                if (i != Page::nil) out = static_cast<index_t>(z.base + i);
            });
            return out;
        }
        /// Why index_of_address() refused `addr`.
        static detail::Diagnosis diagnose_address(const void* addr, std::string_view op) noexcept {
            const auto a = reinterpret_cast<std::uintptr_t>(addr);
            if ((a & (PageSize - 1)) != 0)
                return {detail::Misuse::address_unaligned, op, a, 0, 0, 0, PageSize};
            return {detail::Misuse::address_outside, op, a};
        }
        /// The index of the page at node offset `offset`, or Page::nil.
        index_t index_of_offset(std::uint64_t offset) const noexcept {
            if (offset % PageSize != 0 || offset / PageSize >= n_->span_) return Page::nil;
            return static_cast<index_t>(offset / PageSize);
        }
        /// Why index_of_offset() refused `offset`.
        detail::Diagnosis diagnose_offset(std::uint64_t offset, std::string_view op) const noexcept {
            if (offset / PageSize >= n_->span_)
                return {detail::Misuse::offset_outside, op, offset, n_->span_ * PageSize};
            return {detail::Misuse::offset_unaligned, op, offset, 0, 0, 0, PageSize};
        }
        /// The node offset of a page (index * PageSize).
        std::uint64_t page_offset(const Page* p) const noexcept {
            return std::uint64_t{n_->node_index(p)} * PageSize;
        }
        /// The descriptor at node index `i`.
        Page& operator[](std::uint64_t i) const noexcept { return n_->page_at(static_cast<index_t>(i)); }
        /// virt_to_page over every zone.
        Page* virt_to_page(const void* addr) const noexcept requires addressable {
            Page* out = nullptr;
            n_->for_each_zone([&](const auto& z) {
                if (out == nullptr) out = z.buddy.virt_to_page(addr);
            });
            return out;
        }
        /// page_address of a page of any zone.
        void* page_address(const Page* p) const noexcept requires addressable {
            void* out = nullptr;
            n_->for_each_zone([&](const auto& z) {
                if (out == nullptr && z.buddy.mem_map().index_of(p) != Page::nil)
                    out = z.buddy.page_address(p);
            });
            return out;
        }
        /// page_to_pfn of a page of any zone (the zone's own frame numbers).
        std::uint64_t page_to_pfn(const Page* p) const noexcept {
            std::uint64_t out = 0;
            n_->for_each_zone([&](const auto& z) {
                if (z.buddy.mem_map().index_of(p) != Page::nil) out = z.buddy.page_to_pfn(p);
            });
            return out;
        }
        /// pfn_to_page over every zone.
        Page* pfn_to_page(std::uint64_t pfn) const noexcept {
            Page* out = nullptr;
            n_->for_each_zone([&](const auto& z) {
                if (out == nullptr) out = z.buddy.pfn_to_page(pfn);
            });
            return out;
        }

    private:
        friend class Node;
        explicit NodeMap(const Node* n) noexcept : n_(n) {}
        const Node* n_;
    };
    /// The node-wide map (see NodeMap).
    const NodeMap& mem_map() const noexcept { return map_; }

private:
    template <class Spec>
    struct ZoneState {
        template <class R>
        explicit ZoneState(R&& r) : buddy(std::forward<R>(r)) {}
        ZoneState(ZoneState&&) = delete;
        static constexpr ZoneType type = Spec::type;
        zone_allocator<Spec> buddy;
        Watermarks wmark;
        std::array<std::atomic<std::uint64_t>, 3> mark{}; // min, low, high, read by the allocation path
        std::uint64_t base = 0;                           // the node index of the zone's first page
    };
    // Tuples of non-movable types: built in place from the regions.
    template <class... Z>
    struct ZoneTuple : std::tuple<Z...> {
        template <class... R>
        explicit ZoneTuple(R&&... r) : std::tuple<Z...>(std::forward<R>(r)...) {}
    };

    struct ShrinkerEntry {
        Shrinker s;
        std::uint64_t id = 0;
        std::atomic<unsigned> users{0};
    };
    struct MovableEntry {
        std::atomic<std::int32_t> state{-2}; // pins (>= 0), -1 while compaction moves it, -2 when free
        std::atomic<index_t> index{Page::nil};
        unsigned order = 0;
    };
    // Handles live in chunks that never move, so pin() finds its entry without a lock.
    static constexpr std::uint32_t movable_chunk = 1024, movable_chunks = 4096;
    struct Chunk {
        std::array<MovableEntry, movable_chunk> e;
    };
    MovableEntry& slot(std::uint32_t id) const noexcept {
        return chunks_[id / movable_chunk].load(std::memory_order_acquire)->e[id % movable_chunk];
    }
    std::uint32_t nr_ids_published() const noexcept { return nr_published_.load(std::memory_order_acquire); }

    // Allocation flags of the kernel's get_page_from_freelist (ALLOC_WMARK_*, ALLOC_NO_WATERMARKS ...).
    enum AllocFlags : unsigned {
        alloc_wmark_min = 0,
        alloc_wmark_low = 1,
        alloc_wmark_high = 2,
        alloc_wmark_mask = 3,
        alloc_no_watermarks = 4,
        alloc_min_reserve = 8, // __GFP_HIGH: half the min watermark
        alloc_non_block = 16,  // cannot reclaim: another quarter off
        alloc_highatomic = 32, // a high-order request that cannot block: HIGHATOMIC reserves
        alloc_reserves = alloc_min_reserve | alloc_non_block | alloc_highatomic,
    };

    static constexpr int index_of_type(ZoneType z) noexcept {
        for (std::size_t k = 0; k < types.size(); ++k)
            if (types[k] == z) return static_cast<int>(k);
        return -1;
    }
    // The highest zone index a request allowing zones up to `z` may use (the start of its zonelist walk).
    static constexpr int highest_zone_for(ZoneType z) noexcept {
        int k = -1;
        for (std::size_t i = 0; i < types.size(); ++i)
            if (types[i] <= z) k = static_cast<int>(i);
        return k;
    }
    static constexpr std::array<int, 5> highest_for = {
        highest_zone_for(ZoneType::dma), highest_zone_for(ZoneType::dma32),
        highest_zone_for(ZoneType::normal), highest_zone_for(ZoneType::highmem),
        highest_zone_for(ZoneType::movable)};

    template <class F>
    void for_each_zone(F&& f) {
        std::apply([&](auto&... z) { (f(z), ...); }, static_cast<std::tuple<ZoneState<Specs>...>&>(zones_));
    }
    template <class F>
    void for_each_zone(F&& f) const {
        std::apply([&](const auto&... z) { (f(z), ...); },
                   static_cast<const std::tuple<ZoneState<Specs>...>&>(zones_));
    }
    // Calls f(zone) from zone index `top` down to 0 until it returns non-null (the zonelist walk).
    template <class F>
    Page* walk_down(int top, F&& f) {
        return walk_impl<sizeof...(Specs) - 1>(top, f);
    }
    template <std::size_t K, class F>
    Page* walk_impl(int top, F& f) {
        Page* p = nullptr;
        if (static_cast<int>(K) <= top)
            p = f(std::get<K>(static_cast<std::tuple<ZoneState<Specs>...>&>(zones_)));
        if constexpr (K > 0) {
            if (p == nullptr) p = walk_impl<K - 1>(top, f);
        }
        return p;
    }

    template <class Z>
    static void publish_watermarks(Z& z) noexcept {
        z.mark[0].store(z.wmark.min, std::memory_order_relaxed);
        z.mark[1].store(z.wmark.low, std::memory_order_relaxed);
        z.mark[2].store(z.wmark.high, std::memory_order_relaxed);
    }

    // __zone_watermark_ok(): free pages (per-CPU lists excluded, read without the lock) above the mark less the
    // reserve discounts, and for order > 0 a free block of at least that order.
    template <class Z>
    static bool watermark_ok(const Z& z, unsigned order, unsigned aflags) noexcept {
        if (aflags & alloc_no_watermarks) return true;
        std::int64_t min =
            static_cast<std::int64_t>(z.mark[aflags & alloc_wmark_mask].load(std::memory_order_relaxed));
        if (aflags & alloc_min_reserve) {
            min -= min / 2;
            if (aflags & alloc_non_block) min -= min / 4;
        }
        std::int64_t free = static_cast<std::int64_t>(detail::ZoneAccess::free_pages_relaxed(z.buddy)) -
                            ((std::int64_t{1} << order) - 1);
        if (!(aflags & alloc_reserves)) // HIGHATOMIC reserves are not for ordinary requests
            free -= static_cast<std::int64_t>(detail::ZoneAccess::free_highatomic_relaxed(z.buddy));
        if (free <= min) return false;
        if (order == 0) return true;
        return (detail::ZoneAccess::order_mask_relaxed(z.buddy) >> order) != 0;
    }

    // get_page_from_freelist(): the first zone from the highest allowed down that passes its watermark.
    Page* get_page_from_freelist(std::uint32_t bits, unsigned order, const Placement& where, unsigned aflags,
                                 bool drain) {
        const int top = highest_for[static_cast<unsigned>(gfp::zone_of(bits))];
        return walk_down(top, [&](auto& z) -> Page* {
            // Pages parked on per-CPU lists are free too, but watermark_ok() does not see them: drain first.
            if (drain && !watermark_ok(z, order, aflags)) z.buddy.drain_all_pages();
            if (!watermark_ok(z, order, aflags)) return nullptr;
            Page* p = detail::ZoneAccess::try_alloc(z.buddy, bits, order, where, drain,
                                                    (aflags & alloc_highatomic) != 0,
                                                    (aflags & alloc_non_block) != 0);
            if (p != nullptr && index_of_type(z.type) != top) [[unlikely]]
                fallbacks_.fetch_add(1, std::memory_order_relaxed);
            return p;
        });
    }

    // ----- the PageApi primitives ----------------------------------------------------------------------------

    [[gnu::flatten, gnu::always_inline]] Page* alloc_core(std::uint32_t bits, unsigned order,
                                                          const Placement& where) {
        if (order > MaxOrder) [[unlikely]]
            return order_above_max(bits, order, "alloc_pages");
        if ((bits & gfp::bits::nofail) && order > 1) [[unlikely]]
            return nofail_order(order);
        if (fault_.should_fail(bits, order)) [[unlikely]] {
            count_failure();
            return nullptr;
        }
        // The fast path of get_page_from_freelist(): the preferred zone alone, at the low watermark, through its
        // per-CPU lists.  Anything else (a placement, a fallback zone, a failed watermark) takes the full walk.
        if (where.unrestricted()) [[likely]] {
            const int top = highest_for[static_cast<unsigned>(gfp::zone_of(bits))];
            if (Page* p = alloc_preferred<sizeof...(Specs) - 1>(top, bits, order)) [[likely]]
                return p;
        }
        return alloc_walk(bits, order, where);
    }
    // The preferred zone (index `top`) only, found by a compile-time descent.
    template <std::size_t K>
    Page* alloc_preferred(int top, std::uint32_t bits, unsigned order) {
        if (static_cast<int>(K) == top) {
            auto& z = std::get<K>(static_cast<std::tuple<ZoneState<Specs>...>&>(zones_));
            if (!watermark_ok(z, order, alloc_wmark_low)) [[unlikely]]
                return nullptr;
            return detail::ZoneAccess::try_alloc_fast(z.buddy, bits, order);
        }
        if constexpr (K > 0) return alloc_preferred<K - 1>(top, bits, order);
        return nullptr;
    }
    // The zonelist walk at the low watermark, then the slow path.
    [[gnu::noinline]] Page* alloc_walk(std::uint32_t bits, unsigned order, const Placement& where) {
        if (Page* p = get_page_from_freelist(bits, order, where, alloc_wmark_low, false)) [[likely]]
            return p;
        return alloc_slowpath(bits, order, where);
    }
    [[gnu::noinline]] Page* nofail_order(unsigned order) {
        count_failure();
        detail::report(error_, {detail::Misuse::nofail_order, "alloc_pages", order});
        return nullptr;
    }

    // gfp_to_alloc_flags().
    static unsigned gfp_to_alloc_flags(std::uint32_t bits, unsigned order = 0) noexcept {
        unsigned a = alloc_wmark_min;
        if (bits & gfp::bits::high) a |= alloc_min_reserve;
        if (!(bits & gfp::bits::direct_reclaim) && !(bits & gfp::bits::nomemalloc)) {
            a |= alloc_non_block;
            if (order > 0 && (bits & gfp::bits::high)) a |= alloc_highatomic;
        }
        return a;
    }
    // __gfp_pfmemalloc_flags(): __GFP_MEMALLOC, or a thread inside reclaim (PF_MEMALLOC), ignores watermarks
    // unless __GFP_NOMEMALLOC.
    static bool may_ignore_watermarks(std::uint32_t bits) noexcept {
        if (bits & gfp::bits::nomemalloc) return false;
        return (bits & gfp::bits::memalloc) || detail::current_reclaim != nullptr;
    }

    // __alloc_pages_slowpath().
    [[gnu::noinline]] Page* alloc_slowpath(std::uint32_t bits, unsigned order, const Placement& where) {
        slowpath_.fetch_add(1, std::memory_order_relaxed);
        const unsigned aflags = gfp_to_alloc_flags(bits, order);
        if (bits & gfp::bits::kswapd_reclaim) wake_kswapd();
        if (Page* p = get_page_from_freelist(bits, order, where, aflags, false)) return p;
        if (may_ignore_watermarks(bits))
            if (Page* p = get_page_from_freelist(bits, order, where, aflags | alloc_no_watermarks, true))
                return p;
        const bool can_reclaim =
            may_sleep && (bits & gfp::bits::direct_reclaim) && detail::current_reclaim == nullptr;
        // Pages parked on per-CPU lists are free memory: drain them and retry before reclaim (the kernel drains
        // in __alloc_pages_direct_reclaim; a non-blocking caller gets the drain too, since it takes no sleep).
        if (Page* p = get_page_from_freelist(bits, order, where, aflags, true)) return p;
        if (!can_reclaim) return fail(bits, order);
        const bool nofail = (bits & gfp::bits::nofail) != 0;
        const bool costly = order > costly_order;
        unsigned no_progress = 0;
        auto backoff = std::chrono::microseconds(50);
        const WaiterGuard waiting(threaded ? &waiters_ : nullptr);
        for (;;) {
            const std::uint64_t seq = free_seq_snapshot();
            const std::uint64_t want = std::max<std::uint64_t>(32, std::uint64_t{1} << order);
            const std::uint64_t reclaimed = direct_reclaim_pass(bits, want, order, &where);
            if (Page* p = get_page_from_freelist(bits, order, where, aflags, true)) return p;
            std::uint64_t compacted = 0;
            if constexpr (addressable) {
                if (order > 0) {
                    const int top = highest_for[static_cast<unsigned>(gfp::zone_of(bits))];
                    for_each_zone([&](auto& z) {
                        if (index_of_type(z.type) <= top)
                            compacted += compact_one(z, static_cast<int>(order)).pages_moved;
                    });
                    if (Page* p = get_page_from_freelist(bits, order, where, aflags, true)) return p;
                }
            }
            if ((bits & gfp::bits::noretry) && !nofail) return fail(bits, order);
            if (costly && !(bits & gfp::bits::retry_mayfail) && !nofail) return fail(bits, order);
            no_progress = (reclaimed != 0 || compacted != 0) ? 0 : no_progress + 1;
            if (no_progress > 0) { // unreserve_highatomic_pageblock(): the reserve goes back to this type
                bool given = false;
                for_each_zone(
                    [&](auto& z) { given = given || z.buddy.unreserve_highatomic(gfp_migratetype(bits)); });
                if (given) {
                    no_progress = 0;
                    continue;
                }
            }
            if (no_progress > max_reclaim_retries && !nofail) return fail(bits, order);
            if (!threaded && no_progress > 0) return fail(bits, order); // nobody else can free
            if (no_progress == max_reclaim_retries + 1 && nofail) warn_failure(bits, order, true);
            if (no_progress > 0) {
                wait_for_free(seq, backoff);
                if (backoff < std::chrono::milliseconds(5)) backoff *= 2;
            }
        }
    }

    // warn_alloc() and the failure count; returns nullptr for the caller's convenience.
    [[gnu::noinline]] Page* fail(std::uint32_t bits, unsigned order) {
        count_failure();
        warn_failure(bits, order, false);
        if (bits & gfp::bits::nofail)
            detail::report(error_, {detail::Misuse::nofail_failed, "alloc_pages", order});
        return nullptr;
    }
    void warn_failure(std::uint32_t bits, unsigned order, bool will_wait) {
        const bool nofail = (bits & gfp::bits::nofail) != 0;
        if (warn_ == nullptr || ((bits & gfp::bits::nowarn) && !nofail)) return;
        std::string text;
        char mode[48];
        std::snprintf(mode, sizeof mode, "%#x", bits);
        text = name_ + ": page allocation failure: order:" + std::to_string(order) + ", mode:" + mode + '(' +
               gfp::to_string(bits) + ')' + (will_wait ? " (__GFP_NOFAIL: still trying)" : "") + '\n';
        text += buddyinfo();
        for_each_zone([&](const auto& z) {
            text += std::string(zone_name(z.type)) + " free:" + std::to_string(z.buddy.nr_free_pages()) +
                    " min:" + std::to_string(z.wmark.min) + " low:" + std::to_string(z.wmark.low) +
                    " high:" + std::to_string(z.wmark.high) +
                    " managed:" + std::to_string(z.buddy.total_pages()) + '\n';
        });
        *warn_ << text;
    }
    void count_failure() noexcept { failures_.fetch_add(1, std::memory_order_relaxed); }
    [[gnu::noinline]] Page* order_above_max(std::uint32_t bits, unsigned order, std::string_view op) {
        count_failure();
        detail::warn_order_above_max(warn_, warned_order_, name_, op, order, bits, MaxOrder);
        return nullptr;
    }
    void oversized(std::uint32_t bits, std::uint64_t bytes) {
        count_failure();
        detail::warn_oversized(warn_, name_, bits, bytes, std::uint64_t{PageSize} << MaxOrder);
    }

    [[gnu::flatten, gnu::always_inline]] void free_core(index_t g, unsigned order, std::string_view op,
                                                        bool put = false) {
        with_zone(g, [&](auto& z, index_t i) {
            if (!detail::ZoneAccess::free_to_pcp(z.buddy, i, order)) [[unlikely]]
                detail::ZoneAccess::free_core_locked(z.buddy, i, order, op, put);
            note_free(order);
        });
    }
    Page* alloc_exact_core(std::uint32_t bits, std::size_t bytes) {
        const unsigned order = get_order<PageSize>(bytes);
        if (order > MaxOrder) return order_above_max(bits, order, "alloc_pages_exact");
        Page* p = alloc_core(bits & ~gfp::bits::comp, order, Placement{});
        if (p == nullptr) return nullptr;
        with_zone(node_index(p),
                  [&](auto& z, index_t) { p = detail::ZoneAccess::trim_exact(z.buddy, p, bytes); });
        return p;
    }
    void free_exact_core(index_t g, std::size_t bytes, std::string_view op) {
        with_zone(g, [&](auto& z, index_t i) {
            detail::ZoneAccess::free_exact_core(z.buddy, i, bytes, op);
            note_free(0);
        });
    }
    void get_page_core(Page* p) {
        if (!with_page_zone(p, [&](auto& z) { detail::ZoneAccess::get_page_core(z.buddy, p); }))
            detail::report(error_, {detail::Misuse::foreign_page, "get_page"});
    }
    void put_page_core(Page* p) {
        if (!with_page_zone(p, [&](auto& z) {
                detail::ZoneAccess::put_page_core(z.buddy, p);
                note_free(0);
            }))
            detail::report(error_, {detail::Misuse::foreign_page, "put_page"});
    }
    void split_page_core(Page* p, unsigned order) {
        if (!with_page_zone(p, [&](auto& z) { detail::ZoneAccess::split_page_core(z.buddy, p, order); }))
            detail::report(error_, {detail::Misuse::foreign_page, "split_page"});
    }
    void report(const detail::Diagnosis& d) { detail::report(error_, d); }

    // Calls f(zone, zone index) for the zone holding node index g.
    template <class F>
    void with_zone(index_t g, F&& f) {
        bool done = false;
        for_each_zone([&](auto& z) {
            if (!done && g >= z.base && g - z.base < z.buddy.mem_map().size()) {
                done = true;
                f(z, static_cast<index_t>(g - z.base));
            }
        });
    }
    template <class F>
    bool with_page_zone(Page* p, F&& f) {
        bool done = false;
        for_each_zone([&](auto& z) {
            if (!done && z.buddy.mem_map().index_of(p) != Page::nil) {
                done = true;
                f(z);
            }
        });
        return done;
    }
    index_t node_index(const Page* p) const noexcept {
        index_t out = Page::nil;
        for_each_zone([&](const auto& z) {
            if (out != Page::nil) return;
            const index_t i = z.buddy.mem_map().index_of(p);
            if (i != Page::nil) out = static_cast<index_t>(z.base + i);
        });
        return out;
    }
    Page& page_at(index_t g) const noexcept {
        Page* out = nullptr;
        for_each_zone([&](const auto& z) {
            if (out == nullptr && g >= z.base && g - z.base < z.buddy.mem_map().size())
                out = &z.buddy.mem_map()[g - z.base];
        });
        return *out;
    }
    void* page_address_of(index_t g) const noexcept requires addressable {
        return map_.page_address(&page_at(g));
    }

    // ----- waiting for memory --------------------------------------------------------------------------------

    // After a free: counts reclaimed pages of a thread inside reclaim, and wakes requests waiting for memory.
    void note_free(unsigned order) noexcept {
        if (detail::current_reclaim != nullptr) [[unlikely]]
            detail::current_reclaim->reclaimed += std::uint64_t{1} << order;
        if constexpr (threaded) {
            if (waiters_.load(std::memory_order_seq_cst) != 0) [[unlikely]]
                wake_waiters();
        }
    }
    [[gnu::noinline]] void wake_waiters() noexcept {
        {
            std::lock_guard g(wait_mtx_);
            ++free_seq_;
        }
        wait_cv_.notify_all();
    }
    // A request in the reclaim loop counts as a waiter from its first snapshot to its return, so that no free in
    // between is missed (frees look at the count before they take the wait mutex).
    struct WaiterGuard {
        explicit WaiterGuard(std::atomic<unsigned>* w) noexcept : w_(w) {
            if (w_ != nullptr) w_->fetch_add(1, std::memory_order_seq_cst);
        }
        WaiterGuard(const WaiterGuard&) = delete;
        WaiterGuard& operator=(const WaiterGuard&) = delete;
        ~WaiterGuard() {
            if (w_ != nullptr) w_->fetch_sub(1, std::memory_order_seq_cst);
        }
        std::atomic<unsigned>* w_;
    };
    std::uint64_t free_seq_snapshot() {
        if constexpr (threaded) {
            std::lock_guard g(wait_mtx_);
            return free_seq_;
        } else {
            return 0;
        }
    }
    // Waits (at most `timeout`) for a free after the snapshot `seq` (the kernel's throttling in the retry loop).
    void wait_for_free(std::uint64_t seq, std::chrono::microseconds timeout) {
        if constexpr (threaded) {
            waits_.fetch_add(1, std::memory_order_relaxed);
            std::unique_lock g(wait_mtx_);
            wait_cv_.wait_for(g, timeout, [&] { return free_seq_ != seq; });
        }
    }

    // ----- reclaim -------------------------------------------------------------------------------------------

    // do_shrink_slab() for every registered shrinker, with this thread's reclaim state installed; returns the
    // pages this thread freed meanwhile.  No allocator lock is held while a shrinker runs.
    std::uint64_t run_shrinkers(std::uint32_t bits, int priority) {
        std::vector<std::shared_ptr<ShrinkerEntry>> list;
        {
            std::lock_guard g(shrinker_mtx_);
            list = shrinkers_;
            for (auto& e : list) e->users.fetch_add(1, std::memory_order_relaxed);
        }
        detail::ReclaimState state;
        detail::ReclaimState* const outer = std::exchange(detail::current_reclaim, &state);
        for (auto& e : list) {
            do_shrink(e->s, bits, priority);
            e->users.fetch_sub(1, std::memory_order_release);
        }
        detail::current_reclaim = outer;
        if (outer != nullptr) outer->reclaimed += state.reclaimed;
        reclaimed_.fetch_add(state.reclaimed, std::memory_order_relaxed);
        return state.reclaimed;
    }
    void do_shrink(Shrinker& s, std::uint32_t bits, int priority) {
        ShrinkControl sc{bits, node_id_, 0, 0};
        if (!s.count_objects || !s.scan_objects) return;
        const std::uint64_t freeable = s.count_objects(sc);
        if (freeable == 0 || freeable == shrink_empty) return;
        const unsigned seeks = s.seeks == 0 ? 1 : s.seeks;
        std::uint64_t delta = s.seeks == 0 ? freeable / 2 : (freeable >> priority) * 4 / seeks;
        std::uint64_t total = std::min(delta, 2 * freeable);
        while (total >= s.batch || total >= freeable) {
            if (total == 0) break;
            sc.nr_to_scan = std::min(s.batch, total);
            sc.nr_scanned = sc.nr_to_scan;
            const std::uint64_t ret = s.scan_objects(sc);
            if (ret == shrink_stop) break;
            total -= std::min(total, std::max<std::uint64_t>(sc.nr_scanned, 1));
        }
    }
    // do_try_to_free_pages(): shrinker passes from priority 12 down to 0 until `want` pages came back or the
    // request could be served.
    std::uint64_t direct_reclaim_pass(std::uint32_t bits, std::uint64_t want, unsigned order,
                                      const Placement* where) {
        direct_reclaim_.fetch_add(1, std::memory_order_relaxed);
        const unsigned aflags = gfp_to_alloc_flags(bits);
        std::uint64_t got = 0;
        for (int prio = 12; prio >= 0; --prio) {
            got += run_shrinkers(bits, prio);
            if (got >= want) break;
            if (where != nullptr && can_serve(bits, order, aflags)) break;
        }
        return got;
    }
    bool can_serve(std::uint32_t bits, unsigned order, unsigned aflags) {
        const int top = highest_for[static_cast<unsigned>(gfp::zone_of(bits))];
        bool ok = false;
        for_each_zone([&](const auto& z) {
            if (index_of_type(z.type) <= top && watermark_ok(z, order, aflags)) ok = true;
        });
        return ok;
    }

    // kswapd: started on the first wake-up, balances every zone up to its high watermark with shrinker passes,
    // sleeps when balanced or when a pass made no progress.
    void wake_kswapd() {
        if constexpr (threaded) {
            std::lock_guard g(kswapd_mtx_);
            if (kswapd_stop_) return;
            kswapd_wakeups_.fetch_add(1, std::memory_order_relaxed);
            if (!kswapd_.joinable()) kswapd_ = std::thread([this] { kswapd_main(); });
            kswapd_wake_ = true;
            kswapd_cv_.notify_all();
        }
    }
    void kswapd_main() {
        std::unique_lock g(kswapd_mtx_);
        for (;;) {
            kswapd_cv_.wait(g, [&] { return kswapd_wake_ || kswapd_stop_; });
            if (kswapd_stop_) return;
            kswapd_wake_ = false;
            kswapd_busy_ = true;
            g.unlock();
            balance_node();
            g.lock();
            kswapd_busy_ = false;
            kswapd_cv_.notify_all();
        }
    }
    bool balanced() const noexcept {
        bool ok = true;
        for_each_zone([&](const auto& z) {
            ok = ok &&
                 detail::ZoneAccess::free_pages_relaxed(z.buddy) >= z.mark[2].load(std::memory_order_relaxed);
        });
        return ok;
    }
    // balance_pgdat(): priority from 12 down while some zone is below high and the node is not stopping.
    void balance_node() {
        for (int prio = 12; prio >= 0 && !balanced(); --prio) {
            {
                std::lock_guard g(kswapd_mtx_);
                if (kswapd_stop_) return;
            }
            const std::uint64_t got = run_shrinkers(0, prio);
            kswapd_reclaimed_.fetch_add(got, std::memory_order_relaxed);
        }
    }
    void stop_kswapd() {
        std::thread t;
        {
            std::lock_guard g(kswapd_mtx_);
            kswapd_stop_ = true;
            kswapd_cv_.notify_all();
            t = std::move(kswapd_);
        }
        if (t.joinable()) t.join();
    }

    // ----- compaction ----------------------------------------------------------------------------------------

    // compact_zone(): the migrate scanner walks the zone's movable blocks from the bottom; each moves into the
    // highest free block of its order above it, found by the free scanner walking down from the top of the zone
    // (FreeArea::take_highest_below; it never moves up, so a pass is linear in the zone), until a block of
    // `order` is free or the scanners meet.
    template <class Z>
    CompactResult compact_one(Z& z, int order) requires addressable {
        CompactResult r;
        compactions_.fetch_add(1, std::memory_order_relaxed);
        const auto satisfied = [&] { return order >= 0 && z.buddy.largest_free_order() >= order; };
        std::lock_guard lk(movable_mtx_);
        z.buddy.drain_all_pages(); // free pages on per-CPU lists can merge and be targets
        if (satisfied()) {
            r.success = true;
            return r;
        }
        struct Candidate {
            index_t local;
            std::uint32_t id;
        };
        std::vector<Candidate> cands;
        const std::uint64_t zsize = z.buddy.mem_map().size();
        for (std::uint32_t id = 0; id < nr_ids_; ++id) {
            const MovableEntry& e = slot(id);
            if (e.state.load(std::memory_order_relaxed) == -2) continue;
            const index_t g = e.index.load(std::memory_order_relaxed);
            if (g >= z.base && g - z.base < zsize) cands.push_back({static_cast<index_t>(g - z.base), id});
        }
        std::sort(cands.begin(), cands.end(),
                  [](const Candidate& a, const Candidate& b) { return a.local < b.local; });
        const auto& map = z.buddy.mem_map();
        index_t cursor = static_cast<index_t>(zsize); // the free scanner starts at the top of the zone
        for (const Candidate& c : cands) {
            if (satisfied()) break;
            MovableEntry& e = slot(c.id);
            const unsigned ord = e.order;
            const index_t src_end = c.local + (index_t{1} << ord);
            if (src_end > cursor) break; // the scanners met
            Page* src = &map[c.local];
            std::int32_t idle = 0;
            if (!e.state.compare_exchange_strong(idle, -1, std::memory_order_acquire)) { // pinned: stays
                ++r.blocks_pinned;
                continue;
            }
            Page* dst =
                detail::ZoneAccess::take_compaction_target(z.buddy, cursor, ord, src_end, gfp::bits::movable);
            if (dst == nullptr) { // no free block above the rest
                e.state.store(0, std::memory_order_release);
                break;
            }
            std::memcpy(z.buddy.page_address(dst), z.buddy.page_address(src), PageSize << ord);
            e.index.store(static_cast<index_t>(z.base + map.index_of(dst)), std::memory_order_relaxed);
            e.state.store(0, std::memory_order_release);
            z.buddy.free_pages(src, ord);
            ++r.blocks_moved;
            r.pages_moved += std::uint64_t{1} << ord;
        }
        z.buddy.drain_all_pages();
        r.success = order < 0 || satisfied(); // a full compaction ends complete (COMPACT_COMPLETE)
        migrated_.fetch_add(r.pages_moved, std::memory_order_relaxed);
        return r;
    }

    ZoneTuple<ZoneState<Specs>...> zones_;
    NodeMap map_{this};
    std::uint64_t span_ = 0;
    [[no_unique_address]] error_policy_type error_;
    [[no_unique_address]] fault_policy_type fault_;
    std::ostream* warn_ = &std::clog;
    std::string name_ = "kmem";
    int node_id_ = 0;
    std::atomic<bool> warned_order_{false};
    std::atomic<std::uint64_t> failures_{0}, fallbacks_{0}, slowpath_{0}, direct_reclaim_{0}, reclaimed_{0},
        kswapd_wakeups_{0}, kswapd_reclaimed_{0}, compactions_{0}, migrated_{0}, waits_{0};
    // waiting for frees
    std::atomic<unsigned> waiters_{0};
    std::mutex wait_mtx_;
    std::condition_variable wait_cv_;
    std::uint64_t free_seq_ = 0;
    // shrinkers
    std::mutex shrinker_mtx_;
    std::vector<std::shared_ptr<ShrinkerEntry>> shrinkers_;
    std::uint64_t shrinker_ids_ = 0;
    // kswapd
    mutable std::mutex kswapd_mtx_;
    std::condition_variable kswapd_cv_;
    std::thread kswapd_;
    bool kswapd_wake_ = false, kswapd_busy_ = false, kswapd_stop_ = false;
    // movable blocks
    std::mutex movable_mtx_;
    std::unique_ptr<std::atomic<Chunk*>[]> chunks_ { new std::atomic<Chunk*>[movable_chunks] {} };
    std::uint32_t nr_ids_ = 0;                   // ids handed out so far (movable_mtx_)
    std::atomic<std::uint32_t> nr_published_{0}; // ids whose chunk exists, for lock-free readers
    std::vector<std::uint32_t> free_ids_;
};

} // namespace kmem
