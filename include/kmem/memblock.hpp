/// @file
/// The early allocator (mm/memblock.c): what exists and what is taken, as sorted lists of byte ranges, before
/// any page allocator is built; then the hand-off that gives every untaken page to the buddy allocator.
///
/// `Memblock<Region, PageSize, ErrorPolicy>` keeps the kernel's two lists over a region: `memory()` (the ranges
/// that are usable memory, memblock.memory: memblock_add / memblock_remove) and `reserved()` (the ranges taken,
/// memblock.reserved: memblock_reserve / memblock_phys_free).  Both stay sorted and merged.  Early allocations
/// find a free range (memory minus reserved) top-down, or bottom-up after set_bottom_up(true), aligned in address
/// space, and reserve it; the address forms (alloc, zeroed; alloc_raw) need host memory, the offset forms
/// (phys_alloc, phys_alloc_range) work on any region.  Every position is a byte offset from the region's start.
///
/// The hand-off, `std::move(memblock).free_all(map)` (memblock_free_all), marks PG_reserved in a MemMap every
/// page that is not wholly inside a free range (reservations, holes, partial pages), so a BuddyAllocator built
/// over that map, borrowing it, puts exactly the free pages on its free lists.  It consumes the memblock: every
/// later call that would change it is reported, and early allocations stay reserved for good (they are not
/// blocks of the buddy allocator, which reports a free of one as a mistake).  The buddy allocator's own page
/// descriptors can be placed in the region through memblock, as the kernel allocates mem_map from memblock:
/// alloc_mem_map() returns a PageTable in reserved memory of the region, and MemMap takes it.
///
/// Memblock takes no lock: as in the kernel, it runs before other threads (early boot runs on one CPU).
///
/// @code
///   kmem::MmapRegion ram(4 << 20);
///   kmem::Memblock<kmem::MmapRegion&, 4096> memblock(ram);           // borrows the region, as the map will
///   memblock.add(0, ram.size());                                      // memblock_add: all of it is memory
///   memblock.reserve(0, 64 << 10);                                    // memblock_reserve: firmware's 64 KiB
///   auto* boot = static_cast<int*>(memblock.alloc(100 * sizeof(int), 64));   // zeroed, top-down
///   boot[0] = 42;
///   std::cout << memblock.dump();                                     // MEMBLOCK configuration: ...
///   using Map = kmem::MemMap<kmem::MmapRegion&, 4096>;
///   Map map(memblock.alloc_mem_map(), ram);                           // mem_map inside the region
///   kmem::MemblockHandOff done = std::move(memblock).free_all(map);   // memblock_free_all
///   kmem::BuddyAllocator<10, 4096, Map&> buddy(map);                  // reserved pages never reach a free list
///   assert(buddy.nr_free_pages() == done.released_pages && boot[0] == 42);
///   assert(done.released_pages + done.reserved_pages == map.size());
/// @endcode
#pragma once

#include <kmem/detail/policies.hpp>
#include <kmem/mem_map.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace kmem {

/// One range of memblock.memory or memblock.reserved (struct memblock_region): `size` bytes from byte offset
/// `base` of the region.  Also what the free-range walks yield.
struct MemblockRegion {
    std::uint64_t base = 0; ///< The first byte, as an offset from the region's start.
    std::uint64_t size = 0; ///< The length in bytes.
    /// One past the last byte.
    constexpr std::uint64_t end() const noexcept { return base + size; }
    /// Equal when base and size are.
    friend constexpr bool operator==(const MemblockRegion&, const MemblockRegion&) = default;
};

/// What memblock_free_all() handed over: every page of the map is counted in exactly one of the two.
struct MemblockHandOff {
    std::uint64_t released_pages = 0; ///< Pages an allocator built over the map puts on its free lists.
    std::uint64_t reserved_pages = 0; ///< Pages marked PG_reserved: reservations, holes and partial pages.
};

namespace detail {

/// A sorted array of disjoint, non-adjacent byte ranges (struct memblock_type): adding merges with every range
/// it overlaps or touches (memblock_add_range + memblock_merge_regions), removing trims and splits
/// (memblock_remove_range).  O(ranges) per change; a failed allocation of the array changes nothing.
class MemblockType {
public:
    /// Slots kept from the start (INIT_MEMBLOCK_REGIONS).
    static constexpr std::size_t initial_regions = 128;
    /// An empty type called `name` ("memory", "reserved").
    explicit MemblockType(const char* name) : name_(name) { regions_.reserve(initial_regions); }

    /// The ranges, sorted by base.
    std::span<const MemblockRegion> regions() const noexcept { return regions_; }
    /// The sum of the sizes (memblock_type.total_size).
    std::uint64_t total_size() const noexcept { return total_; }
    /// The type's name.
    const char* name() const noexcept { return name_; }

    /// Adds [base, base + size): the ranges it overlaps or touches become one.  `size` > 0.
    void add(std::uint64_t base, std::uint64_t size) {
        const std::uint64_t end = base + size;
        auto first = std::lower_bound(regions_.begin(), regions_.end(), base,
                                      [](const MemblockRegion& r, std::uint64_t b) { return r.end() < b; });
        auto last = first;
        std::uint64_t lo = base, hi = end, absorbed = 0;
        for (; last != regions_.end() && last->base <= end; ++last) {
            lo = std::min(lo, last->base);
            hi = std::max(hi, last->end());
            absorbed += last->size;
        }
        const MemblockRegion merged{lo, hi - lo};
        if (first == last) {
            regions_.insert(first, merged); // strong guarantee: nothing changed if it throws
        } else {
            *first = merged;
            regions_.erase(first + 1, last);
        }
        total_ += merged.size - absorbed;
    }

    /// Removes [base, base + size): ranges are trimmed, and one that contains it is split in two.  Parts not
    /// present are ignored.  `size` > 0.
    void remove(std::uint64_t base, std::uint64_t size) {
        const std::uint64_t end = base + size;
        auto first = std::lower_bound(regions_.begin(), regions_.end(), base,
                                      [](const MemblockRegion& r, std::uint64_t b) { return r.end() <= b; });
        auto last = first;
        std::uint64_t removed = 0;
        for (; last != regions_.end() && last->base < end; ++last) removed += last->size;
        if (first == last) return;
        const MemblockRegion head{first->base, first->base < base ? base - first->base : 0};
        const std::uint64_t back_end = (last - 1)->end();
        const MemblockRegion tail{end, back_end > end ? back_end - end : 0};
        removed -= head.size + tail.size;
        if (last - first == 1 && head.size != 0 && tail.size != 0) { // one range split in two
            const auto at = first - regions_.begin();
            regions_.insert(first + 1, tail); // strong guarantee: nothing changed if it throws
            regions_[static_cast<std::size_t>(at)] = head;
        } else {
            auto out = first;
            if (head.size != 0) *out++ = head;
            if (tail.size != 0) *out++ = tail;
            regions_.erase(out, last);
        }
        total_ -= removed;
    }

    /// The first part of [base, base + size) that no range covers, or {end, 0} when the ranges cover it all.
    MemblockRegion first_gap(std::uint64_t base, std::uint64_t size) const noexcept {
        const std::uint64_t end = base + size;
        auto it = std::lower_bound(regions_.begin(), regions_.end(), base,
                                   [](const MemblockRegion& r, std::uint64_t b) { return r.end() <= b; });
        if (it == regions_.end() || it->base >= end) return {base, size};
        if (it->base > base) return {base, it->base - base};
        if (it->end() >= end) return {end, 0};
        const std::uint64_t gap_end =
            (it + 1 != regions_.end() && (it + 1)->base < end) ? (it + 1)->base : end;
        return {it->end(), gap_end - it->end()};
    }
    /// True when one range contains all of [base, base + size) (memblock_is_region_memory); for `size` 0, when
    /// one range contains `base`.
    bool contains(std::uint64_t base, std::uint64_t size) const noexcept {
        auto it = std::upper_bound(regions_.begin(), regions_.end(), base,
                                   [](std::uint64_t b, const MemblockRegion& r) { return b < r.base; });
        if (it == regions_.begin()) return false;
        --it;
        return base < it->end() && end_of(base, size) <= it->end();
    }
    /// True when some range overlaps [base, base + size) (memblock_overlaps_region).
    bool overlaps(std::uint64_t base, std::uint64_t size) const noexcept {
        if (size == 0) return false;
        auto it = std::lower_bound(regions_.begin(), regions_.end(), base,
                                   [](const MemblockRegion& r, std::uint64_t b) { return r.end() <= b; });
        return it != regions_.end() && it->base < end_of(base, size);
    }

private:
    static std::uint64_t end_of(std::uint64_t base, std::uint64_t size) noexcept {
        return size > std::numeric_limits<std::uint64_t>::max() - base
                   ? std::numeric_limits<std::uint64_t>::max()
                   : base + size;
    }
    std::vector<MemblockRegion> regions_;
    std::uint64_t total_ = 0;
    const char* name_;
};

/// Walks the ranges of `memory` that no range of `reserved` covers, lowest first or (Reverse) highest first,
/// by a memory index and an index of the gaps between reservations (__next_mem_range, __next_mem_range_rev).
/// Each range yielded is maximal.  The lists must not change during the walk.
template <bool Reverse>
class FreeMemRangeIterator {
public:
    using iterator_concept = std::input_iterator_tag;  ///< A single-pass walk.
    using iterator_category = std::input_iterator_tag; ///< A single-pass walk.
    using value_type = MemblockRegion;                 ///< A free range.
    using difference_type = std::ptrdiff_t;            ///< Required by the iterator concepts.
    using reference = const MemblockRegion&;           ///< The current range.
    using pointer = const MemblockRegion*;             ///< The current range.

    FreeMemRangeIterator() = default; ///< An exhausted walk.
    /// A walk over `memory` minus `reserved`, positioned on its first range.
    FreeMemRangeIterator(const MemblockType& memory, const MemblockType& reserved) noexcept
        : mem_(&memory), res_(&reserved), done_(false) {
        if constexpr (Reverse) {
            a_ = memory.regions().size();
            b_ = reserved.regions().size() + 1;
        }
        advance();
    }
    /// The current free range.
    reference operator*() const noexcept { return cur_; }
    /// The current free range.
    pointer operator->() const noexcept { return &cur_; }
    /// Moves to the next free range.
    FreeMemRangeIterator& operator++() noexcept {
        advance();
        return *this;
    }
    /// Moves to the next free range.
    void operator++(int) noexcept { advance(); }
    /// True when the walk is over.
    friend bool operator==(const FreeMemRangeIterator& it, std::default_sentinel_t) noexcept {
        return it.done_;
    }

private:
    // Gap g lies between reservation g - 1 and reservation g: [end of g - 1 (or 0), base of g (or the top)).
    MemblockRegion gap(std::size_t g) const noexcept {
        const auto r = res_->regions();
        const std::uint64_t lo = g == 0 ? 0 : r[g - 1].end();
        const std::uint64_t hi = g < r.size() ? r[g].base : std::numeric_limits<std::uint64_t>::max();
        return {lo, hi - lo};
    }
    void advance() noexcept {
        if (mem_ == nullptr) return;
        const auto m = mem_->regions();
        const std::size_t gaps = res_->regions().size() + 1;
        if constexpr (!Reverse) {
            for (; a_ < m.size(); ++a_) {
                for (; b_ < gaps; ++b_) {
                    const MemblockRegion g = gap(b_);
                    if (g.base >= m[a_].end()) break; // this gap starts past the memory range: next range
                    if (m[a_].base < g.end()) {
                        cur_ = {std::max(m[a_].base, g.base), 0};
                        cur_.size = std::min(m[a_].end(), g.end()) - cur_.base;
                        if (m[a_].end() <= g.end())
                            ++a_; // the range that ends first moves on
                        else
                            ++b_;
                        return;
                    }
                }
            }
        } else {
            a_ = std::min(a_, m.size()); // (defensive: the lists must not change during a walk)
            b_ = std::min(b_, gaps);
            for (; a_ > 0; --a_) {
                const MemblockRegion& r = m[a_ - 1];
                for (; b_ > 0; --b_) {
                    const MemblockRegion g = gap(b_ - 1);
                    if (g.end() <= r.base) break; // this gap ends below the memory range: next range
                    if (r.end() > g.base) {
                        cur_ = {std::max(r.base, g.base), 0};
                        cur_.size = std::min(r.end(), g.end()) - cur_.base;
                        if (r.base >= g.base)
                            --a_; // the range that starts last moves on
                        else
                            --b_;
                        return;
                    }
                }
            }
        }
        done_ = true;
    }

    const MemblockType* mem_ = nullptr;
    const MemblockType* res_ = nullptr;
    std::size_t a_ = 0; // memory index (Reverse: one past it)
    std::size_t b_ = 0; // gap index (Reverse: one past it)
    MemblockRegion cur_{};
    bool done_ = true;
};

/// False, but only once T is known: a static_assert on it fires only when the template is used.
template <class>
inline constexpr bool dependent_false = false;

} // namespace detail

/// The free ranges of a Memblock (memory minus reserved) as a range for a range-for loop, lowest first or
/// (Reverse) highest first: the kernel's for_each_free_mem_range and for_each_free_mem_range_reverse.
template <bool Reverse>
class FreeMemRanges {
public:
    /// The walk's iterator.
    using iterator = detail::FreeMemRangeIterator<Reverse>;
    /// The ranges of `memory` that `reserved` does not cover.
    FreeMemRanges(const detail::MemblockType& memory, const detail::MemblockType& reserved) noexcept
        : mem_(&memory), res_(&reserved) {}
    /// Positioned on the first free range.
    iterator begin() const noexcept { return iterator(*mem_, *res_); }
    /// The end of the walk.
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    const detail::MemblockType* mem_;
    const detail::MemblockType* res_;
};

/// The early allocator over one region (the kernel's struct memblock and mm/memblock.c): sorted, merged lists
/// of memory and reserved ranges, early allocations top-down or bottom-up, and the hand-off to the buddy
/// allocator (memblock_free_all).  `RegionParam` is a Region type (owned) or a reference to one (borrowed);
/// `PageSize` is the page size of the MemMap it hands over to; the one optional policy is an error policy
/// (policy::AssertOnError by default).  Positions are byte offsets from the region's start; alignment applies to
/// the address (region base + offset).  Not thread-safe, as in the kernel.
template <class RegionParam, std::size_t PageSize, class... Policies>
class Memblock {
public:
    /// The region type.
    using region_type = std::remove_cvref_t<RegionParam>;
    static_assert(Region<region_type>, "Memblock needs a Region type (or a reference to one).");
    static_assert(std::has_single_bit(PageSize) && PageSize >= 64,
                  "Memblock's PageSize must be a power of two of at least 64 bytes.");

private:
    using policies = detail::PolicySet<Policies...>;
    static_assert(
        policies::template only<policy::error_policy_tag>,
        "a Memblock policy must be an error policy (AssertOnError, ThrowOnError or CallbackOnError); "
        "memblock takes no lock, as it runs before other threads.");
    static_assert(policies::unique);

public:
    /// The error policy.
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    static_assert(policy::ErrorPolicy<error_policy_type>,
                  "the error policy needs on_error(const UsageError&).");
    /// Bytes per page (PAGE_SIZE) of the map the memory is handed to.
    static constexpr std::size_t page_size = PageSize;
    /// log2(PageSize) (PAGE_SHIFT).
    static constexpr unsigned page_shift = static_cast<unsigned>(std::countr_zero(PageSize));
    /// True when the region holds host memory, so early allocations have addresses and can be zeroed.
    static constexpr bool addressable = region_type::addressable;
    /// An upper limit meaning "no limit" (MEMBLOCK_ALLOC_ANYWHERE); the initial current_limit().
    static constexpr std::uint64_t alloc_anywhere = ~std::uint64_t{0};
    /// An upper limit meaning "up to current_limit()" (MEMBLOCK_ALLOC_ACCESSIBLE).
    static constexpr std::uint64_t alloc_accessible = 0;
    /// The alignment of the page descriptors alloc_mem_map() places (SMP_CACHE_BYTES).
    static constexpr std::uint64_t mem_map_align = 64;

    /// Starts with no memory and no reservation over a region constructed from `args` (or bound to one, for a
    /// borrowed region); memblock_add() says which parts of it are memory.  Allocation is top-down.
    template <class... Args>
    explicit Memblock(Args&&... args) : region_(std::forward<Args>(args)...) {}
    Memblock(const Memblock&) = delete;            ///< Not copyable.
    Memblock& operator=(const Memblock&) = delete; ///< Not copyable.

    // ----- memory and reservations ----------------------------------------------------------------------

    /// Adds [base, base + size) to the usable memory (memblock_add); it merges with the memory it overlaps or
    /// touches.  A range past the region's end is reported (ErrorKind::out_of_region) and changes nothing.
    /// Returns false when a mistake was reported.  O(ranges).
    bool add(std::uint64_t base, std::uint64_t size) {
        if (!usable("memblock_add") || !inside(base, size, "memblock_add")) return false;
        if (size != 0) memory_.add(base, size);
        return true;
    }
    /// Removes [base, base + size) from the usable memory (memblock_remove); parts that are not memory are
    /// ignored; reservations stay.  A range past the region's end is reported (ErrorKind::out_of_region).
    bool remove(std::uint64_t base, std::uint64_t size) {
        if (!usable("memblock_remove") || !inside(base, size, "memblock_remove")) return false;
        if (size != 0) memory_.remove(base, size);
        return true;
    }
    /// Marks [base, base + size) as taken (memblock_reserve): it is never allocated and its pages never reach a
    /// free list.  It may overlap other reservations and need not be memory.  A range past the region's end is
    /// reported (ErrorKind::out_of_region).
    bool reserve(std::uint64_t base, std::uint64_t size) {
        if (!usable("memblock_reserve") || !inside(base, size, "memblock_reserve")) return false;
        if (size != 0) reserved_.add(base, size);
        return true;
    }
    /// Gives [base, base + size) back (memblock_phys_free), e.g. an early allocation that is no longer needed.
    /// Every byte of it must be reserved: otherwise ErrorKind::double_free is reported and nothing changes.
    bool phys_free(std::uint64_t base, std::uint64_t size) {
        return free_range(base, size, "memblock_phys_free");
    }
    /// Gives back `size` bytes at host address `ptr` (memblock_free); nullptr is ignored.
    template <bool A = addressable>
    bool free(void* ptr, std::uint64_t size) {
        static_assert(A, "memblock free() takes a host address, but this Memblock's region is offset-only; "
                         "use phys_free() with an offset.");
        if constexpr (A) {
            if (ptr == nullptr) return true;
            const auto a = reinterpret_cast<std::uintptr_t>(ptr);
            if (a < region_.base() || a - region_.base() > region_.size()) {
                if (!usable("memblock_free")) return false;
                report(ErrorKind::out_of_region, "memblock_free",
                       "address 0x" + hex(a) + " is outside the region of this memblock");
                return false;
            }
            return free_range(a - region_.base(), size, "memblock_free");
        } else {
            return false;
        }
    }

    // ----- allocation -----------------------------------------------------------------------------------

    /// Chooses where later allocations look first: bottom-up (lowest free address) when true, top-down (highest,
    /// the default) when false (memblock_set_bottom_up).
    void set_bottom_up(bool enable) {
        if (usable("memblock_set_bottom_up")) bottom_up_ = enable;
    }
    /// True when allocations are bottom-up (memblock_bottom_up).
    bool bottom_up() const noexcept { return bottom_up_; }
    /// Sets the upper limit of allocations that ask for alloc_accessible (memblock_set_current_limit); an offset.
    void set_current_limit(std::uint64_t limit) {
        if (usable("memblock_set_current_limit")) limit_ = limit;
    }
    /// The current allocation limit (memblock_get_current_limit); alloc_anywhere when there is none.
    std::uint64_t current_limit() const noexcept { return limit_; }

    /// Reserves `size` bytes aligned to `align` (a power of two) inside [start, end) and returns the offset
    /// (memblock_phys_alloc_range); the memory is not cleared.  `end` alloc_accessible means current_limit().
    /// Returns std::nullopt when no free range fits.  A size of 0 (ErrorKind::bad_parameter) or an alignment
    /// that is not a power of two (ErrorKind::bad_alignment) is reported.  O(ranges).
    std::optional<std::uint64_t> phys_alloc_range(std::uint64_t size, std::uint64_t align,
                                                  std::uint64_t start, std::uint64_t end) {
        if (!alloc_args_ok(size, align, "memblock_phys_alloc_range")) return std::nullopt;
        return alloc_range_nid(size, align, start, end);
    }
    /// phys_alloc_range() anywhere below current_limit() (memblock_phys_alloc).
    std::optional<std::uint64_t> phys_alloc(std::uint64_t size, std::uint64_t align) {
        if (!alloc_args_ok(size, align, "memblock_phys_alloc")) return std::nullopt;
        return alloc_range_nid(size, align, 0, alloc_accessible);
    }
    /// Allocates `size` zeroed bytes aligned to `align` below current_limit() and returns their address, or
    /// nullptr (memblock_alloc).  Mistakes are reported as for phys_alloc_range().
    template <bool A = addressable>
    void* alloc(std::uint64_t size, std::uint64_t align) {
        static_assert(A, "memblock alloc() returns zeroed host memory, but this Memblock's region is "
                         "offset-only; use phys_alloc() for an offset.");
        return alloc_internal<A>(size, align, 0, alloc_accessible, true, "memblock_alloc");
    }
    /// alloc() without clearing the memory (memblock_alloc_raw).
    template <bool A = addressable>
    void* alloc_raw(std::uint64_t size, std::uint64_t align) {
        static_assert(A,
                      "memblock alloc_raw() returns host memory, but this Memblock's region is offset-only; "
                      "use phys_alloc() for an offset.");
        return alloc_internal<A>(size, align, 0, alloc_accessible, false, "memblock_alloc_raw");
    }
    /// alloc() preferring memory at or above offset `min_addr`, and anywhere below current_limit() when none
    /// is free there (memblock_alloc_from).
    template <bool A = addressable>
    void* alloc_from(std::uint64_t size, std::uint64_t align, std::uint64_t min_addr) {
        static_assert(A, "memblock alloc_from() returns zeroed host memory, but this Memblock's region is "
                         "offset-only; use phys_alloc_range() for an offset.");
        return alloc_internal<A>(size, align, min_addr, alloc_accessible, true, "memblock_alloc_from");
    }

    /// Allocates the page descriptor table of the region's whole pages inside the region (the kernel's
    /// alloc_node_mem_map, which takes mem_map from memblock), reserved like any early allocation, with zeroed
    /// descriptors; give it to MemMap's constructor.  Throws std::bad_alloc when no free range holds it (after
    /// memblock_free_all, that is reported first).
    template <bool A = addressable>
    PageTable<PageSize> alloc_mem_map() {
        static_assert(A,
                      "alloc_mem_map() places page descriptors in host memory, but this Memblock's region is "
                      "offset-only; its MemMap keeps them in their own mapping.");
        using Map = MemMap<region_type, PageSize>;
        const std::uint64_t first = Map::first_pfn_of(region_);
        const std::uint64_t count = Map::page_count_of(region_);
        if (!usable("alloc_mem_map")) throw std::bad_alloc();
        if (count == 0) return PageTable<PageSize>(first, 0);
        if constexpr (A) {
            const std::uint64_t bytes = count * sizeof(Page);
            void* p = alloc_internal<A>(bytes, mem_map_align, 0, alloc_accessible, false, "alloc_mem_map");
            if (p == nullptr) throw std::bad_alloc();
            return PageTable<PageSize>(first, count, std::span<std::byte>(static_cast<std::byte*>(p), bytes));
        } else {
            throw std::bad_alloc();
        }
    }

    // ----- state and reports -----------------------------------------------------------------------------

    /// The usable memory ranges, sorted and merged (memblock.memory; for_each_mem_region).
    std::span<const MemblockRegion> memory() const noexcept { return memory_.regions(); }
    /// The reserved ranges, sorted and merged (memblock.reserved; for_each_reserved_mem_region).
    std::span<const MemblockRegion> reserved() const noexcept { return reserved_.regions(); }
    /// The free ranges, memory minus reserved, lowest first (for_each_free_mem_range); the lists must not
    /// change during the walk.
    FreeMemRanges<false> free_mem_ranges() const noexcept { return {memory_, reserved_}; }
    /// The free ranges, highest first (for_each_free_mem_range_reverse).
    FreeMemRanges<true> free_mem_ranges_reverse() const noexcept { return {memory_, reserved_}; }
    /// Bytes of memory (memblock_phys_mem_size).
    std::uint64_t phys_mem_size() const noexcept { return memory_.total_size(); }
    /// Bytes reserved (memblock_reserved_size).
    std::uint64_t reserved_size() const noexcept { return reserved_.total_size(); }
    /// The offset of the lowest memory, 0 when there is none (memblock_start_of_DRAM).
    std::uint64_t start_of_dram() const noexcept { return memory().empty() ? 0 : memory().front().base; }
    /// One past the highest memory, 0 when there is none (memblock_end_of_DRAM).
    std::uint64_t end_of_dram() const noexcept { return memory().empty() ? 0 : memory().back().end(); }
    /// True when [base, base + size) lies wholly inside memory (memblock_is_region_memory).
    bool is_region_memory(std::uint64_t base, std::uint64_t size) const noexcept {
        return memory_.contains(base, size);
    }
    /// True when [base, base + size) overlaps a reservation (memblock_is_region_reserved).
    bool is_region_reserved(std::uint64_t base, std::uint64_t size) const noexcept {
        return reserved_.overlaps(base, size);
    }
    /// The kernel's memblock_dump_all() text: the two sizes, then each list's count and ranges, addresses as
    /// offsets printed like %pa ("0x%016llx"), `end` inclusive:
    /// ` memory[0x0]\t[0x0000000000000000-0x00000000003fffff], 0x0000000000400000 bytes flags: 0x0`.
    std::string dump() const {
        std::string out = "MEMBLOCK configuration:\n";
        out += " memory size = " + pa(memory_.total_size()) +
               " reserved size = " + pa(reserved_.total_size()) + '\n';
        dump_type(out, memory_);
        dump_type(out, reserved_);
        return out;
    }
    /// True once free_all() has handed the memory over; every later call that would change memblock is then
    /// reported (ErrorKind::bad_parameter) and does nothing.
    bool finished() const noexcept { return finished_; }
    /// The region.
    const region_type& region() const noexcept { return region_; }
    /// The region, e.g. for a MemMap that borrows it (`MemMap<R&, PageSize> map(memblock.region())`).
    region_type& region() noexcept { return region_; }
    /// The error policy, e.g. to install a callback.
    error_policy_type& error_policy() noexcept { return error_; }

    // ----- the hand-off ----------------------------------------------------------------------------------

    /// Hands the memory to the page allocator (memblock_free_all) and ends memblock: marks PG_reserved in `map`
    /// (a MemMap over the same region, before any allocator is built over it) every page that is not wholly
    /// inside a free range (reservations, early allocations, holes in the memory, partial pages), so that a
    /// BuddyAllocator borrowing `map` frees exactly the others (the kernel's reserve_bootmem_region and
    /// __free_memory_core).  Returns the split of the map's pages.  A map over another region, or a map whose
    /// page descriptors lie in the region but not in reserved memory (they would be handed out), is reported
    /// (ErrorKind::bad_parameter) and changes nothing; so is a second hand-off.  O(ranges + reserved pages).
    template <class Map>
    MemblockHandOff free_all(Map& map) && {
        static_assert(is_mem_map<std::remove_const_t<Map>>,
                      "memblock free_all() marks reserved pages in a MemMap: pass the MemMap that the buddy "
                      "allocator will borrow.");
        static_assert(!std::is_const_v<Map>,
                      "memblock free_all() marks pages in the MemMap: it cannot be const.");
        static_assert(std::is_same_v<typename Map::region_type, region_type>,
                      "memblock free_all() needs a MemMap over the Memblock's region type.");
        static_assert(Map::page_size == PageSize,
                      "memblock free_all() needs a MemMap with the Memblock's PageSize.");
        if (!usable("memblock_free_all")) return {};
        const auto& r = map.region();
        if (r.base() != region_.base() || r.size() != region_.size()) {
            report(ErrorKind::bad_parameter, "memblock_free_all",
                   "the MemMap covers 0x" + hex(r.size()) + " bytes at 0x" + hex(r.base()) +
                       " but this memblock manages 0x" + hex(region_.size()) + " bytes at 0x" +
                       hex(region_.base()) + "; hand off to a map over the same region");
            return {};
        }
        if (map.size() != 0) { // the descriptors must not lie in memory the buddy allocator will hand out
            const auto t = reinterpret_cast<std::uintptr_t>(map.pages());
            const std::uint64_t t_end = t + map.page_table().metadata_bytes();
            const std::uint64_t lo = std::max<std::uint64_t>(t, region_.base());
            const std::uint64_t hi = std::min<std::uint64_t>(t_end, region_.base() + region_.size());
            if (lo < hi) {
                const MemblockRegion g = reserved_.first_gap(lo - region_.base(), hi - lo);
                if (g.size != 0) {
                    report(ErrorKind::bad_parameter, "memblock_free_all",
                           "the MemMap's page descriptors lie in the region at " + range(g.base, g.size) +
                               ", which memblock does not keep reserved; they would be handed out as free "
                               "pages");
                    return {};
                }
            }
        }
        std::uint64_t pos = 0; // every byte outside the free ranges makes its pages reserved
        for (const MemblockRegion f : free_mem_ranges()) {
            if (f.base > pos) map.reserve(pos, f.base - pos);
            pos = f.end();
        }
        if (pos < region_.size()) map.reserve(pos, region_.size() - pos);
        finished_ = true;
        return {map.size() - map.reserved_pages(), map.reserved_pages()};
    }
    /// free_all() on an lvalue: a compile error, because the hand-off consumes the memblock.
    template <class Map>
    MemblockHandOff free_all(Map&) & {
        static_assert(
            detail::dependent_false<Map>,
            "memblock free_all() ends memblock: call it as std::move(memblock).free_all(map), so that "
            "it is plain that memblock is not used again.");
        return {};
    }

private:
    // ----- checks ----------------------------------------------------------------------------------------
    void report(ErrorKind kind, std::string_view op, std::string message) {
        error_.on_error(UsageError{kind, op, std::move(message)});
    }
    // False (after a report) once memblock has handed its memory over.
    bool usable(std::string_view op) {
        if (!finished_) [[likely]]
            return true;
        report(ErrorKind::bad_parameter, op,
               "memblock was ended by memblock_free_all(): its memory belongs to the page allocator now");
        return false;
    }
    // False (after a report) when [base, base + size) runs past the region.
    bool inside(std::uint64_t base, std::uint64_t size, std::string_view op) {
        if (base <= region_.size() && size <= region_.size() - base) [[likely]]
            return true;
        report(ErrorKind::out_of_region, op,
               "bytes 0x" + hex(size) + " at offset 0x" + hex(base) +
                   " run past the end of the region of 0x" + hex(region_.size()) + " bytes");
        return false;
    }
    bool alloc_args_ok(std::uint64_t size, std::uint64_t align, std::string_view op) {
        if (!usable(op)) return false;
        if (size == 0) {
            report(ErrorKind::bad_parameter, op, "an early allocation of 0 bytes was asked for");
            return false;
        }
        if (!std::has_single_bit(align)) {
            report(ErrorKind::bad_alignment, op,
                   "alignment " + std::to_string(align) + " is not a power of two");
            return false;
        }
        return true;
    }
    bool free_range(std::uint64_t base, std::uint64_t size, std::string_view op) {
        if (!usable(op) || !inside(base, size, op)) return false;
        if (size == 0) return true;
        const MemblockRegion g = reserved_.first_gap(base, size);
        if (g.size != 0) {
            report(ErrorKind::double_free, op,
                   range(base, size) + " is not all reserved: " + range(g.base, g.size) + " is free");
            return false;
        }
        reserved_.remove(base, size);
        return true;
    }

    // ----- finding and taking a range --------------------------------------------------------------------

    // memblock_find_in_range_node(): the lowest (bottom-up) or highest (top-down) `size` bytes aligned to
    // `align` in a free range inside [start, end).  Alignment applies to the address, region base + offset.
    std::optional<std::uint64_t> find_in_range(std::uint64_t size, std::uint64_t align, std::uint64_t start,
                                               std::uint64_t end) const noexcept {
        if (end == alloc_accessible) end = limit_;
        end = std::min(end, region_.size());
        if (start >= end || end - start < size) return std::nullopt;
        const std::uint64_t b = region_.base();
        const std::uint64_t mask = align - 1;
        if (bottom_up_) {
            for (const MemblockRegion f : free_mem_ranges()) {
                if (f.base >= end) break;
                const std::uint64_t lo = std::max(f.base, start), hi = std::min(f.end(), end);
                if (lo >= hi || b + lo > std::numeric_limits<std::uint64_t>::max() - mask) continue;
                const std::uint64_t cand = ((b + lo + mask) & ~mask) - b;
                if (cand < hi && hi - cand >= size) return cand;
            }
        } else {
            for (const MemblockRegion f : free_mem_ranges_reverse()) {
                if (f.end() <= start) break;
                const std::uint64_t lo = std::max(f.base, start), hi = std::min(f.end(), end);
                if (lo >= hi || hi - lo < size) continue;
                const std::uint64_t cand = ((b + hi - size) & ~mask);
                if (cand >= b + lo) return cand - b;
            }
        }
        return std::nullopt;
    }
    // memblock_alloc_range_nid(): find, then reserve.
    std::optional<std::uint64_t> alloc_range_nid(std::uint64_t size, std::uint64_t align, std::uint64_t start,
                                                 std::uint64_t end) {
        const std::optional<std::uint64_t> found = find_in_range(size, align, start, end);
        if (found) reserved_.add(*found, size);
        return found;
    }
    // memblock_alloc_internal(): below current_limit(), retried without the lower limit; zeroed when asked.
    template <bool A>
    void* alloc_internal(std::uint64_t size, std::uint64_t align, std::uint64_t min_addr,
                         std::uint64_t max_addr, bool zero, std::string_view op) {
        if constexpr (A) {
            if (!alloc_args_ok(size, align, op)) return nullptr;
            if (max_addr > limit_) max_addr = limit_;
            std::optional<std::uint64_t> found = alloc_range_nid(size, align, min_addr, max_addr);
            if (!found && min_addr != 0) found = alloc_range_nid(size, align, 0, max_addr);
            if (!found) return nullptr;
            std::byte* p = region_.data() + *found;
            if (zero) std::memset(p, 0, static_cast<std::size_t>(size));
            return p;
        } else {
            return nullptr;
        }
    }

    // ----- reports ---------------------------------------------------------------------------------------
    static std::string hex(std::uint64_t v) {
        char buf[24];
        std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
        return buf;
    }
    static std::string range(std::uint64_t base, std::uint64_t size) {
        return "[0x" + hex(base) + ", 0x" + hex(base + size) + ")";
    }
    static std::string pa(std::uint64_t v) { // the kernel's %pa of a 64-bit phys_addr_t
        char buf[24];
        std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
        return buf;
    }
    static void dump_type(std::string& out, const detail::MemblockType& type) { // memblock_dump()
        const auto regions = type.regions();
        out += std::string(" ") + type.name() + ".cnt  = 0x" + hex(regions.size()) + '\n';
        for (std::size_t i = 0; i < regions.size(); ++i) {
            const MemblockRegion& r = regions[i];
            out += std::string(" ") + type.name() + "[0x" + hex(i) + "]\t[" + pa(r.base) + '-' +
                   pa(r.end() - 1) + "], " + pa(r.size) + " bytes flags: 0x0\n";
        }
    }

    RegionParam region_;
    detail::MemblockType memory_{"memory"};
    detail::MemblockType reserved_{"reserved"};
    std::uint64_t limit_ = alloc_anywhere;
    bool bottom_up_ = false;
    bool finished_ = false;
    [[no_unique_address]] error_policy_type error_;
};

} // namespace kmem
