/// @file
/// Reports of the page allocators (not part of the API): the diagnosis of a caller mistake, the /proc/buddyinfo
/// line, the allocation-failure report (warn_alloc), and the invariant check of the page descriptors.
///
/// Reports are built in two steps so that no formatting, stream or user callback ever runs under an allocator's
/// lock: under the lock the allocator records a small value (a Diagnosis: what, which operation, a few numbers;
/// or a FailureSnapshot of the counters), and after releasing it turns the value into text and hands it to the
/// error policy or the warning stream.
#pragma once

#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <string>
#include <string_view>

namespace kmem::detail {

/// The shapes of caller mistake a page allocator diagnoses; each maps to one ErrorKind and one sentence.
enum class Misuse : std::uint8_t {
    none,         ///< No mistake.
    foreign_page, ///< A descriptor that is not in this allocator's table.
    address_unaligned,
    address_outside,
    offset_outside, ///< a = offset, b = region size.
    offset_unaligned,
    offset_unmanaged,
    not_allocated,    ///< get_page on a page that is not allocated: a = pfn.
    split_compound,   ///< a = pfn.
    order_above_max,  ///< a = order, b = MaxOrder, c = pfn.
    wrong_order,      ///< a = pfn, b = allocated order, c = order given.
    bad_refcount,     ///< a = pfn, b = reference count (as signed).
    already_free,     ///< a = pfn, b = order.
    already_free_pcp, ///< a = pfn, b = order.
    put_free,         ///< put_page on a free block: a = pfn, b = order, c = 1 when on a per-CPU list.
    put_inside_free, ///< put_page on a page inside a free block: a = pfn, b = order, c = head pfn, d = 1 on a pcp list.
    tail_page,       ///< a = pfn, b = head pfn.
    inside_free,     ///< a = pfn, b = order, c = head pfn, d = 1 when on a per-CPU list.
    inside_block,    ///< a = pfn, b = order, c = head pfn.
    not_block_start, ///< a = pfn.
    exact_past_end,  ///< a = bytes, b = pfn.
    nofail_order,    ///< a = order.
    nofail_failed,   ///< a = order.
    pcp_parameters,  ///< a = batch, b = high.
};

/// A caller mistake recorded under a lock and reported after it: what, in which operation, and its numbers.
struct Diagnosis {
    Misuse what = Misuse::none;               ///< The mistake, or none.
    std::string_view op;                      ///< The operation that found it ("free_pages").
    std::uint64_t a = 0, b = 0, c = 0, d = 0; ///< The numbers the sentence needs (see Misuse).
    std::uint64_t page_size = 0;              ///< For the alignment sentences.
    /// True when there is a mistake to report.
    explicit operator bool() const noexcept { return what != Misuse::none; }
};

/// The ErrorKind a diagnosis is reported as.
constexpr ErrorKind kind_of(Misuse m) noexcept {
    switch (m) {
    case Misuse::foreign_page:
    case Misuse::address_outside:
    case Misuse::offset_outside:
    case Misuse::offset_unmanaged:
    case Misuse::exact_past_end:
        return ErrorKind::out_of_region;
    case Misuse::address_unaligned:
    case Misuse::offset_unaligned:
        return ErrorKind::misaligned;
    case Misuse::not_allocated:
    case Misuse::bad_refcount:
    case Misuse::put_free:
    case Misuse::put_inside_free:
        return ErrorKind::bad_refcount;
    case Misuse::split_compound:
    case Misuse::tail_page:
    case Misuse::inside_block:
    case Misuse::not_block_start:
        return ErrorKind::not_block_start;
    case Misuse::order_above_max:
        return ErrorKind::order_too_large;
    case Misuse::wrong_order:
        return ErrorKind::wrong_order;
    case Misuse::already_free:
    case Misuse::already_free_pcp:
    case Misuse::inside_free:
        return ErrorKind::double_free;
    case Misuse::nofail_order:
        return ErrorKind::invalid_gfp;
    case Misuse::nofail_failed:
        return ErrorKind::nofail_failed;
    case Misuse::pcp_parameters:
        return ErrorKind::bad_parameter;
    case Misuse::none:
        break;
    }
    return ErrorKind::bad_parameter;
}

/// `v` in lower-case hexadecimal without a prefix.
inline std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
}

/// The sentence of a diagnosis (built after the lock is released).
inline std::string describe(const Diagnosis& d) {
    using std::to_string;
    const std::string pfn = "pfn " + to_string(d.a);
    switch (d.what) {
    case Misuse::foreign_page:
        return "the page descriptor does not belong to this allocator";
    case Misuse::address_unaligned:
        return "address 0x" + hex(d.a) + " is not aligned to the page size " + to_string(d.page_size);
    case Misuse::address_outside:
        return "address 0x" + hex(d.a) + " is outside the region managed by this allocator";
    case Misuse::offset_outside:
        return "offset " + to_string(d.a) + " is outside the region of " + to_string(d.b) + " bytes";
    case Misuse::offset_unaligned:
        return "offset " + to_string(d.a) + " is not aligned to the page size " + to_string(d.page_size);
    case Misuse::offset_unmanaged:
        return "offset " + to_string(d.a) + " is outside the region managed by this allocator";
    case Misuse::not_allocated:
        return pfn + " is not allocated";
    case Misuse::split_compound:
        return "cannot split the compound page at " + pfn + "; free it whole";
    case Misuse::order_above_max:
        return "order " + to_string(d.a) + " is above MaxOrder " + to_string(d.b) + " (pfn " +
               to_string(d.c) + ")";
    case Misuse::wrong_order:
        return pfn + " was allocated with order " + to_string(d.b) + " but is freed with order " +
               to_string(d.c);
    case Misuse::bad_refcount:
        return pfn + " has reference count " + std::to_string(static_cast<std::int64_t>(d.b));
    case Misuse::already_free:
        return pfn + " is already free (a free block of order " + to_string(d.b) + ")";
    case Misuse::already_free_pcp:
        return pfn + " is already free (an order-" + to_string(d.b) + " block held on a per-CPU page list)";
    case Misuse::put_free:
        return pfn + " is free (an order-" + to_string(d.b) + " block" +
               (d.c != 0 ? " held on a per-CPU page list" : "") + "): its reference count is already zero";
    case Misuse::put_inside_free:
        return pfn + " is free (inside the free block of order " + to_string(d.b) + " at pfn " +
               to_string(d.c) + (d.d != 0 ? ", held on a per-CPU page list" : "") +
               "): its reference count is already zero";
    case Misuse::tail_page:
        return pfn + " is a tail page of the compound page at pfn " + to_string(d.b);
    case Misuse::inside_free:
        return pfn + " is already free (inside the free block of order " + to_string(d.b) + " at pfn " +
               to_string(d.c) + (d.d != 0 ? ", held on a per-CPU page list)" : ")");
    case Misuse::inside_block:
        return pfn + " is inside the block of order " + to_string(d.b) + " allocated at pfn " +
               to_string(d.c);
    case Misuse::not_block_start:
        return pfn + " does not start an allocated block";
    case Misuse::exact_past_end:
        return to_string(d.a) + " bytes at pfn " + to_string(d.b) + " run past the region";
    case Misuse::nofail_order:
        return "gfp::nofail is only supported up to order 1; order " + to_string(d.a) + " was asked";
    case Misuse::nofail_failed:
        return "a gfp::nofail request of order " + to_string(d.a) +
               " found no free block and this layer has nothing to reclaim";
    case Misuse::pcp_parameters:
        return "per-CPU lists need 1 <= batch <= high (got batch " + to_string(d.a) + ", high " +
               to_string(d.b) + ")";
    case Misuse::none:
        break;
    }
    return {};
}

/// Hands a diagnosis to an error policy as a UsageError (after every lock is released).
template <class ErrorPolicy>
void report(ErrorPolicy& policy, const Diagnosis& d) {
    policy.on_error(UsageError{kind_of(d.what), d.op, describe(d)});
}

/// A zone's line in /proc/buddyinfo: `Node 0, zone   Normal` and the free block count of every order.
template <std::size_t N>
std::string buddyinfo_line(int node, ZoneType zone, const std::array<std::uint64_t, N>& nr_free) {
    char buf[64];
    const std::string_view name = zone_name(zone);
    std::snprintf(buf, sizeof buf, "Node %d, zone %8.*s ", node, static_cast<int>(name.size()), name.data());
    std::string out = buf;
    for (const std::uint64_t n : nr_free) {
        std::snprintf(buf, sizeof buf, "%6llu ", static_cast<unsigned long long>(n));
        out += buf;
    }
    out += '\n';
    return out;
}

/// The counters an allocation-failure report prints, copied under the lock.
template <unsigned MaxOrder>
struct FailureSnapshot {
    std::array<std::uint64_t, MaxOrder + 1> nr_free{}; ///< Free blocks per order.
    std::uint64_t free_pages = 0;                      ///< Free pages on the free lists.
    std::uint64_t total_pages = 0;                     ///< Pages managed.
    int largest_order = -1;                            ///< Largest order with a free block.
};

/// The kernel's warn_alloc() text for a failed request of `order` with flags `bits`: the failure line, the
/// buddyinfo line and the free page summary.
template <unsigned MaxOrder>
std::string warn_alloc_text(std::string_view name, int node, ZoneType zone, std::uint32_t bits,
                            unsigned order, const FailureSnapshot<MaxOrder>& s) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%#x", bits);
    std::string out(name);
    out += ": page allocation failure: order:" + std::to_string(order) + ", mode:" + buf + '(' +
           gfp::to_string(bits) + "), nodemask=(null)\n";
    out += buddyinfo_line(node, zone, s.nr_free);
    out += std::string(name) + ": free pages: " + std::to_string(s.free_pages) + " of " +
           std::to_string(s.total_pages) + ", largest free order: " + std::to_string(s.largest_order) + '\n';
    return out;
}

/// Writes the warning for a request above MaxOrder to `warn`, once per allocator (`warned`), unless there is no
/// stream or the flags carry __GFP_NOWARN (the kernel's WARN_ON_ONCE_GFP(order > MAX_PAGE_ORDER)).
inline void warn_order_above_max(std::ostream* warn, std::atomic<bool>& warned, std::string_view name,
                                 std::string_view op, unsigned order, std::uint32_t bits,
                                 unsigned max_order) {
    if (warn == nullptr || (bits & gfp::bits::nowarn) || warned.exchange(true)) return;
    char mode[48];
    std::snprintf(mode, sizeof mode, "%#x", bits);
    *warn << name << ": " << op << ": page allocation failure: order:" << order << ", mode:" << mode << '('
          << gfp::to_string(bits) << "): the order is above MaxOrder " << max_order << " (warned once)\n";
}
/// Writes the warning for a byte-size request above the largest block (`largest` bytes) to `warn`, unless there
/// is no stream or the flags carry __GFP_NOWARN.
inline void warn_oversized(std::ostream* warn, std::string_view name, std::uint32_t bits, std::uint64_t bytes,
                           std::uint64_t largest) {
    if (warn == nullptr || (bits & gfp::bits::nowarn)) return;
    *warn << name << ": allocation of " << bytes << " bytes is above the largest block (" << largest
          << " bytes)\n";
}

/// Why index `i` of `map` does not head an allocated block of `order` (what free_pages / put_page / split_page
/// were given; `putting` for put_page), or no diagnosis when it does.  Called under the zone lock; O(MaxOrder)
/// for an interior page, whose enclosing block is found by aligning its pfn down order by order.
template <unsigned MaxOrder, class Map>
Diagnosis diagnose_free(const Map& map, page_index i, unsigned order, std::string_view op,
                        bool putting = false) noexcept {
    const Page& p = map[i];
    if (p.test(PageFlag::block) && p.order() == order && order <= MaxOrder && p.refcount() > 0) [[likely]]
        return {};
    const std::uint64_t pfn = map.first_pfn() + i;
    if (order > MaxOrder) return {Misuse::order_above_max, op, order, MaxOrder, pfn};
    if (p.test(PageFlag::block)) {
        if (p.order() != order) return {Misuse::wrong_order, op, pfn, p.order(), order};
        if (p.refcount() <= 0)
            return {Misuse::bad_refcount, op, pfn, static_cast<std::uint64_t>(p.refcount())};
        return {};
    }
    // `putting`: the caller is put_page, and a free page has no reference to drop: bad_refcount, not double_free.
    if (p.test(PageFlag::buddy) || p.test(PageFlag::pcp)) {
        if (putting) return {Misuse::put_free, op, pfn, p.order(), p.test(PageFlag::pcp) ? 1u : 0u};
        return {p.test(PageFlag::buddy) ? Misuse::already_free : Misuse::already_free_pcp, op, pfn,
                p.order()};
    }
    if (p.test(PageFlag::tail))
        return {Misuse::tail_page, op, pfn, map.first_pfn() + PageAccess::head_index(p)};
    for (unsigned k = 1; k <= MaxOrder; ++k) { // an interior page: which block holds it?
        const std::uint64_t head_pfn = pfn & ~((std::uint64_t{1} << k) - 1);
        const Page* h = map.pfn_to_page(head_pfn);
        if (h == nullptr) break;
        if (h->order() < k) continue;
        if (h->test(PageFlag::buddy) || h->test(PageFlag::pcp))
            return {putting ? Misuse::put_inside_free : Misuse::inside_free,
                    op,
                    pfn,
                    h->order(),
                    head_pfn,
                    h->test(PageFlag::pcp) ? 1u : 0u};
        if (h->test(PageFlag::block)) return {Misuse::inside_block, op, pfn, h->order(), head_pfn};
    }
    return {Misuse::not_block_start, op, pfn};
}

/// Checks that the blocks of `map` tile it: every page is reserved (and nothing else) or inside exactly one free,
/// parked or allocated block whose other pages carry no flags (compound tails point at their head); the pages
/// counted agree with `free_pages` (free lists), `pcp_pages` (per-CPU lists) and `reserved`.  Returns the first
/// violation, or "".  O(pages).
template <class Map>
std::string check_tiling(const Map& map, std::uint64_t free_pages, std::uint64_t pcp_pages,
                         std::uint64_t reserved) {
    const std::uint64_t first = map.first_pfn();
    const std::uint64_t n = map.size();
    std::uint64_t used = 0, parked = 0, seen_reserved = 0;
    for (std::uint64_t i = 0; i < n;) {
        const Page& p = map[i];
        const auto at = [&] { return "pfn " + std::to_string(first + i); };
        if (p.test(PageFlag::reserved)) {
            if (p.flags() != flag(PageFlag::reserved)) return at() + " is reserved but has other flags";
            ++seen_reserved;
            ++i;
            continue;
        }
        const std::uint64_t len = std::uint64_t{1} << p.order();
        if (!p.test(PageFlag::buddy) && !p.test(PageFlag::block) && !p.test(PageFlag::pcp))
            return at() + " starts no block";
        if (i + len > n) return at() + " block runs past the table";
        for (std::uint64_t k = 1; k < len; ++k) {
            const Page& t = map[i + k];
            const bool ok = p.test(PageFlag::head)
                                ? (t.flags() == flag(PageFlag::tail) && PageAccess::head_index(t) == i)
                                : t.flags() == 0;
            if (!ok)
                return "pfn " + std::to_string(first + i + k) + " inside the block at " + at() +
                       " has flags " + std::to_string(t.flags());
        }
        if (p.test(PageFlag::block)) used += len;
        if (p.test(PageFlag::pcp)) parked += len;
        i += len;
    }
    if (seen_reserved != reserved)
        return std::to_string(seen_reserved) + " pages are reserved but " + std::to_string(reserved) +
               " were at start";
    if (parked != pcp_pages)
        return std::to_string(parked) + " pages carry the pcp flag but the per-CPU lists hold " +
               std::to_string(pcp_pages);
    if (used + free_pages + pcp_pages + seen_reserved != n) return "free + per-CPU + used != total";
    return {};
}

} // namespace kmem::detail
