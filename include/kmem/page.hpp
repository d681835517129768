/// @file
/// Page frames: the compact descriptor kept for every page an allocator manages (the kernel's struct page),
/// and the side table that holds them outside the managed range.
///
/// A descriptor is 16 bytes: flags (buddy, head, tail, reserved, slab, block, pcp), an order, a reference count with
/// get_page / put_page semantics, and one 64-bit word that is the free-list link while the page is free, the
/// head's index for a compound tail, and the owner slot (the owning cache, for slab) while it is allocated.
///
/// @code
///   kmem::PageTable<4096> table(/*first pfn*/ 256, /*pages*/ 1024);
///   kmem::Page& p = table.pfn_to_page(300);
///   assert(table.page_to_pfn(&p) == 300);
///   kmem::set_page_refcounted(p);          // refcount 1
///   kmem::get_page(p);                     // refcount 2
///   assert(!kmem::put_page_testzero(p));   // back to 1
/// @endcode
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include <sys/mman.h>

namespace kmem {

namespace detail {
struct PageAccess;
} // namespace detail

/// Page flags (the kernel's PG_* bits that this layer uses).
enum class PageFlag : std::uint16_t {
    buddy = 1u << 0,    ///< PG_buddy: the first page of a free block on a free list; order() is its order.
    head = 1u << 1,     ///< PG_head: the first page of a compound page (__GFP_COMP).
    tail = 1u << 2,     ///< A tail page of a compound page; compound_head() finds the head.
    reserved = 1u << 3, ///< PG_reserved: never handed to the buddy allocator (memblock reservations).
    slab = 1u << 4,     ///< PG_slab: the page belongs to a slab; owner() is the cache.
    block = 1u << 5,    ///< The first page of an allocated block; order() is the order it was allocated with.
    pcp =
        1u << 6, ///< The first page of a free block held on a per-CPU page list (page->pcp_list); not merged.
};

/// The descriptor of one page frame (struct page), at most 16 bytes; lives in a PageTable, never in the region.
class Page {
public:
    /// The "no page" index used by free-list links.
    static constexpr std::uint32_t nil = 0xffffffffu;

    /// True when flag `f` is set (PageBuddy(), PageHead(), PageTail(), PageReserved(), PageSlab()).
    bool test(PageFlag f) const noexcept { return (flags_ & static_cast<std::uint16_t>(f)) != 0; }
    /// Sets flag `f` (SetPageReserved(), __SetPageSlab() ...).
    void set(PageFlag f) noexcept {
        flags_ = static_cast<std::uint16_t>(flags_ | static_cast<std::uint16_t>(f));
    }
    /// Clears flag `f`.
    void clear(PageFlag f) noexcept {
        flags_ = static_cast<std::uint16_t>(flags_ & ~static_cast<std::uint16_t>(f));
    }
    /// All flags as a mask of PageFlag bits.
    std::uint16_t flags() const noexcept { return flags_; }
    /// The order of the block this page heads (buddy_order() for free pages, compound_order() for heads).
    unsigned order() const noexcept { return order_; }
    /// The reference count (page_ref_count()); 0 for free pages.
    int refcount() const noexcept {
        return std::atomic_ref<const std::int32_t>(refcount_).load(std::memory_order_relaxed);
    }
    /// The owner slot (page->slab_cache): any 64-bit value, meaningful only while the page is allocated.
    std::uint64_t owner() const noexcept { return (std::uint64_t{hi_} << 32) | lo_; }
    /// Sets the owner slot; only for allocated pages (the slot doubles as the free-list link).
    void set_owner(std::uint64_t v) noexcept {
        lo_ = static_cast<std::uint32_t>(v);
        hi_ = static_cast<std::uint32_t>(v >> 32);
    }

private:
    friend struct detail::PageAccess;
    friend void set_page_refcounted(Page&) noexcept;
    friend void get_page(Page&) noexcept;
    friend bool put_page_testzero(Page&) noexcept;

    std::uint32_t lo_ = 0;    // next free block / compound head index / owner low half
    std::uint32_t hi_ = 0;    // previous free block / owner high half
    std::uint16_t flags_ = 0; // PageFlag bits
    std::uint8_t order_ = 0;  // block order
    std::uint8_t spare_ = 0;  // reserved for later layers (migrate type)
    std::int32_t refcount_ = 0;
};
static_assert(sizeof(Page) <= 16, "a page descriptor must stay within 16 bytes.");

/// Sets the reference count of a newly allocated page to 1 (set_page_refcounted).
inline void set_page_refcounted(Page& p) noexcept {
    std::atomic_ref<std::int32_t>(p.refcount_).store(1, std::memory_order_relaxed);
}
/// Takes one more reference on an allocated page (get_page).
inline void get_page(Page& p) noexcept {
    std::atomic_ref<std::int32_t>(p.refcount_).fetch_add(1, std::memory_order_relaxed);
}
/// Drops one reference; true when it was the last one and the page must be freed (put_page_testzero).
/// The allocators' put_page() calls this and frees the page.
inline bool put_page_testzero(Page& p) noexcept {
    return std::atomic_ref<std::int32_t>(p.refcount_).fetch_sub(1, std::memory_order_acq_rel) == 1;
}
/// The reference count (page_ref_count).
inline int page_ref_count(const Page& p) noexcept {
    return p.refcount();
}

namespace detail {

/// The index of a page descriptor in its table (pfn - first pfn); Page::nil is "no page".  One type for every
/// list link and every walk, so no layer converts between widths.
using page_index = std::uint32_t;

/// The allocator layers' access to a descriptor's fields (not part of the API).  Flags are read and written with
/// relaxed atomics wherever they may change outside the zone lock (per-CPU paths, the preparation of a new
/// block), because merging under the zone lock reads a neighbouring block's flags; on the machines we target a
/// relaxed load or store is a plain move.
struct PageAccess {
    static std::uint32_t& next(Page& p) noexcept { return p.lo_; }
    static std::uint32_t next(const Page& p) noexcept { return p.lo_; }
    static std::uint32_t& prev(Page& p) noexcept { return p.hi_; }
    static std::uint32_t prev(const Page& p) noexcept { return p.hi_; }
    static std::uint32_t& head_index(Page& p) noexcept { return p.lo_; }
    static std::uint32_t head_index(const Page& p) noexcept { return p.lo_; }
    static void set_order(Page& p, unsigned order) noexcept { p.order_ = static_cast<std::uint8_t>(order); }
    /// The spare byte, kept for the migrate type of the zone layer's anti-fragmentation.
    static std::uint8_t& migratetype(Page& p) noexcept { return p.spare_; }
    static void set_flags(Page& p, std::uint16_t f) noexcept {
        std::atomic_ref<std::uint16_t>(p.flags_).store(f, std::memory_order_relaxed);
    }
    static std::uint16_t load_flags(const Page& p) noexcept {
        return std::atomic_ref<std::uint16_t>(const_cast<std::uint16_t&>(p.flags_))
            .load(std::memory_order_relaxed);
    }
    /// Drops the last reference without a locked instruction when the caller holds the only one: a holder of the
    /// only reference has no one to race with (get_page needs a reference), so a load and a store suffice.
    static bool put_testzero(Page& p) noexcept {
        std::atomic_ref<std::int32_t> ref(p.refcount_);
        if (ref.load(std::memory_order_acquire) == 1) {
            ref.store(0, std::memory_order_relaxed);
            return true;
        }
        return ref.fetch_sub(1, std::memory_order_acq_rel) == 1;
    }
    static void clear_refcount(Page& p) noexcept {
        std::atomic_ref<std::int32_t>(p.refcount_).store(0, std::memory_order_relaxed);
    }
    static void init_block(Page& p, std::uint16_t f, unsigned order) noexcept {
        set_flags(p, f);
        p.order_ = static_cast<std::uint8_t>(order);
        p.lo_ = 0;
        p.hi_ = 0;
    }
};

/// A PageFlag as a mask.
constexpr std::uint16_t flag(PageFlag f) noexcept {
    return static_cast<std::uint16_t>(f);
}

} // namespace detail

/// The side table of page descriptors for a contiguous range of page frame numbers (the kernel's mem_map).
/// Memory comes from an anonymous private mapping, so untouched descriptors of a huge range cost nothing.
template <std::size_t PageSize>
class PageTable {
public:
    /// A table for `count` page frames starting at page frame number `first_pfn`; descriptors start zeroed.
    PageTable(std::uint64_t first_pfn, std::uint64_t count) : first_(first_pfn), count_(count) {
        if (count >= Page::nil)
            throw std::length_error("kmem: a page table holds at most 2^32-1 page frames");
        bytes_ = static_cast<std::size_t>(count) * sizeof(Page);
        if (bytes_ == 0) return;
        void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        pages_ = static_cast<Page*>(p);
    }
    /// A table for `count` page frames starting at `first_pfn` whose descriptors live in caller storage, as
    /// the kernel's mem_map lives in memory taken from memblock (see Memblock::alloc_mem_map()).  The
    /// descriptors are constructed zeroed in `storage`, which must hold `count` descriptors, be aligned for
    /// them and outlive the table; the table does not free it.  Throws std::length_error for 2^32-1 frames or
    /// more, std::invalid_argument when `storage` is too small or misaligned.
    PageTable(std::uint64_t first_pfn, std::uint64_t count, std::span<std::byte> storage)
        : first_(first_pfn), count_(count), owned_(false) {
        if (count >= Page::nil)
            throw std::length_error("kmem: a page table holds at most 2^32-1 page frames");
        bytes_ = static_cast<std::size_t>(count) * sizeof(Page);
        if (storage.size() < bytes_)
            throw std::invalid_argument("kmem: the storage for " + std::to_string(count) +
                                        " page descriptors holds " + std::to_string(storage.size()) +
                                        " bytes but they need " + std::to_string(bytes_));
        if (reinterpret_cast<std::uintptr_t>(storage.data()) % alignof(Page) != 0)
            throw std::invalid_argument("kmem: the storage for page descriptors is not aligned to " +
                                        std::to_string(alignof(Page)) + " bytes");
        if (bytes_ == 0) return;
        auto* first = reinterpret_cast<Page*>(storage.data());
        std::uninitialized_value_construct_n(first, static_cast<std::size_t>(count));
        pages_ = std::launder(first);
    }
    PageTable(const PageTable&) = delete;            ///< Not copyable.
    PageTable& operator=(const PageTable&) = delete; ///< Not copyable.
    /// Moves the table.
    PageTable(PageTable&& o) noexcept
        : pages_(std::exchange(o.pages_, nullptr)), first_(o.first_), count_(std::exchange(o.count_, 0)),
          bytes_(std::exchange(o.bytes_, 0)), owned_(o.owned_) {}
    /// Unmaps the descriptors (a table in caller storage leaves the storage alone).
    ~PageTable() {
        if (pages_ != nullptr && owned_) ::munmap(pages_, bytes_);
    }
    /// The first page frame number covered.
    std::uint64_t first_pfn() const noexcept { return first_; }
    /// Number of page frames covered.
    std::uint64_t size() const noexcept { return count_; }
    /// True when `pfn` is covered (pfn_valid).
    bool contains_pfn(std::uint64_t pfn) const noexcept { return pfn - first_ < count_; }
    /// The descriptor of page frame `pfn` (pfn_to_page); `pfn` must be covered.
    Page& pfn_to_page(std::uint64_t pfn) const noexcept { return pages_[pfn - first_]; }
    /// The page frame number of a descriptor from this table (page_to_pfn).
    std::uint64_t page_to_pfn(const Page* p) const noexcept {
        return first_ + static_cast<std::uint64_t>(p - pages_);
    }
    /// True when `p` points into this table.
    bool owns(const Page* p) const noexcept {
        return p >= pages_ && p < pages_ + count_ &&
               (reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(pages_)) %
                       sizeof(Page) ==
                   0;
    }
    /// The descriptor at index `i` (pfn - first_pfn()).
    Page& operator[](std::uint64_t i) const noexcept { return pages_[i]; }
    /// Bytes of descriptor memory reserved (16 per page frame at most).
    std::size_t metadata_bytes() const noexcept { return bytes_; }
    /// True when the descriptors live in caller storage (the placing constructor), false for the table's own
    /// anonymous mapping.
    bool in_caller_storage() const noexcept { return !owned_; }

private:
    Page* pages_ = nullptr;
    std::uint64_t first_ = 0;
    std::uint64_t count_ = 0;
    std::size_t bytes_ = 0;
    bool owned_ = true; // the table mapped its descriptors itself and unmaps them
};

} // namespace kmem
