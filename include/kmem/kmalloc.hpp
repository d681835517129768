/// @file
/// The kmalloc family (include/linux/slab.h, mm/slab_common.c): general-purpose allocation over generic size
/// classes kmalloc-8 … kmalloc-8k (with kmalloc-96 and kmalloc-192), each a KmemCache over the same page
/// allocator; larger requests get compound pages straight from the page allocator, up to KMALLOC_MAX_SIZE.
///
/// kfree() needs no size: the pointer's page descriptor says whether it is a slab object (PG_slab, whose slab
/// names its cache) or a large allocation (a compound head page, whose order is the size).  A zero-size request
/// returns kmem::zero_size_ptr, which kfree() accepts and which faults when touched (ZERO_SIZE_PTR).
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> pages(kmem::MmapRegion(8 << 20));
///   kmem::Kmalloc<decltype(pages)> km(pages);
///   char* s = static_cast<char*>(km.kmalloc(100, kmem::gfp::kernel));  // served by kmalloc-128
///   assert(km.ksize(s) == 128);
///   int* v = static_cast<int*>(km.kcalloc(1000, sizeof(int), kmem::gfp::kernel)); // 4000 bytes, zeroed
///   assert(v[999] == 0);
///   void* big = km.kmalloc(64 * 1024, kmem::gfp::kernel);             // order-4 compound pages
///   assert(km.ksize(big) == 64 * 1024);
///   km.kfree(big);
///   km.kfree(v);
///   km.kfree(s);
///   assert(km.kmalloc(0, kmem::gfp::kernel) == kmem::zero_size_ptr);
///   std::cout << kmem::slabinfo(km.stats());
/// @endcode
#pragma once

#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/page_api.hpp>
#include <kmem/slab.hpp>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kmem {

/// ZERO_SIZE_PTR: what kmalloc(0) returns; not null, never dereferenceable, accepted by kfree().
inline void* const zero_size_ptr = reinterpret_cast<void*>(std::uintptr_t{16});
/// ZERO_OR_NULL_PTR(): true for nullptr and zero_size_ptr (and the addresses below it).
inline bool zero_or_null_ptr(const void* p) noexcept {
    return reinterpret_cast<std::uintptr_t>(p) <= 16;
}

/// The generic size classes (the kernel's kmalloc_info[]): index → object size.
inline constexpr std::array<std::size_t, 13> kmalloc_sizes{8,   16,  32,   64,   96,   128, 192,
                                                           256, 512, 1024, 2048, 4096, 8192};
/// KMALLOC_MAX_CACHE_SIZE: the largest size served by a kmalloc cache; larger requests get pages.
inline constexpr std::size_t kmalloc_max_cache_size = 8192;

/// kmalloc_index(): the size class serving `size` bytes (1..kmalloc_max_cache_size), as an index into
/// kmalloc_sizes.  Sizes up to 192 go through the kernel's size_index table (so 65..96 is kmalloc-96);
/// larger ones to the next power of two.
constexpr unsigned kmalloc_index(std::size_t size) noexcept {
    // size_index[(size - 1) / 8] for size <= 192 (mm/slab_common.c)
    constexpr std::array<std::uint8_t, 24> small{0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4,
                                                 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6};
    if (size <= 192) return small[(size - 1) / 8];
    return static_cast<unsigned>(std::bit_width(size - 1)) - 1;
}
static_assert(kmalloc_index(1) == 0 && kmalloc_index(8) == 0 && kmalloc_index(9) == 1 &&
                  kmalloc_index(17) == 2 && kmalloc_index(65) == 4 && kmalloc_index(96) == 4 &&
                  kmalloc_index(97) == 5 && kmalloc_index(129) == 6 && kmalloc_index(193) == 7 &&
                  kmalloc_index(256) == 7 && kmalloc_index(257) == 8 && kmalloc_index(8192) == 12,
              "the size-class table must round-trip");
static_assert(
    [] {
        for (std::size_t s = 1; s <= kmalloc_max_cache_size; ++s) {
            const std::size_t c = kmalloc_sizes[kmalloc_index(s)];
            if (c < s) return false; // the class holds the request
            if (kmalloc_index(s) > 0 && kmalloc_sizes[kmalloc_index(s) - 1] >= s)
                return false; // and is the smallest
        }
        return true;
    }(),
    "every size maps to the smallest class that holds it");

/// The kmalloc family over one page allocator: thirteen generic caches and the large-allocation path.
///
/// Policies are those of KmemCache (a lock policy, an error policy) and apply to every generic cache; each
/// cache has its own error policy object (reach them with for_each_cache()), and this object has one for the
/// mistakes kfree() finds outside any cache.
template <class Parent, class... Policies>
class Kmalloc {
public:
    /// The cache type of the size classes.
    using cache_type = KmemCache<Parent, Policies...>;
    /// The error policy type.
    using error_policy_type = typename cache_type::error_policy_type;
    /// Bytes per page.
    static constexpr std::size_t page_size = Parent::page_size;
    /// KMALLOC_MAX_SIZE: the largest request kmalloc serves (the page allocator's largest block).
    static constexpr std::size_t kmalloc_max_size = page_size << Parent::max_order;
    /// The smallest alignment every kmalloc object has (ARCH_KMALLOC_MINALIGN); power-of-two sizes up to a
    /// page are naturally aligned.
    static constexpr std::size_t min_align = 8;

    /// Creates the generic caches over `parent` (create_kmalloc_caches); `flags` are added to each (for
    /// instance SlabFlags::red_zone to debug every kmalloc cache, as slab_debug=Z does).
    explicit Kmalloc(Parent& parent, SlabFlags flags = SlabFlags::none, std::string_view prefix = "kmalloc-")
        : parent_(parent) {
        for (std::size_t i = 0; i < kmalloc_sizes.size(); ++i) {
            const std::size_t size = kmalloc_sizes[i];
            const std::size_t align = std::has_single_bit(size) ? std::min(size, page_size) : min_align;
            caches_[i].emplace(parent, CacheConfig{std::string(prefix) + size_name(size),
                                                   size,
                                                   align,
                                                   flags,
                                                   {},
                                                   5,
                                                   static_cast<std::uint8_t>(i)});
        }
        if (any_of(flags, SlabFlags::red_zone)) class_align_ = min_align; // the left red zone shifts objects
    }
    Kmalloc(const Kmalloc&) = delete;            ///< Not copyable.
    Kmalloc& operator=(const Kmalloc&) = delete; ///< Not copyable.

    // ----- allocation ------------------------------------------------------------------------------------

    /// kmalloc: `size` bytes from the smallest class holding them, or pages above kmalloc_max_cache_size;
    /// zero_size_ptr for 0 bytes; nullptr when memory is short or `size` is above kmalloc_max_size.
    template <std::uint32_t B>
    void* kmalloc(std::size_t size, gfp::Flags<B> flags,
                  const SourceLocation& where = SourceLocation::current()) {
        gfp::check_slab(flags);
        if (size - 1 < kmalloc_max_cache_size) [[likely]]
            return caches_[kmalloc_index(size)]->alloc(flags, where);
        if (size == 0) return zero_size_ptr;
        return kmalloc_large(size, flags);
    }
    /// kmalloc with flags known at run time; flags breaking a rule (gfp::validate_slab) are reported
    /// (invalid_gfp) and the call returns nullptr.
    void* kmalloc(std::size_t size, gfp_t flags, const SourceLocation& where = SourceLocation::current()) {
        if (const gfp::Problem p = flags.validate_slab(); p != gfp::Problem::none) {
            error_.on_error(UsageError{ErrorKind::invalid_gfp, "kmalloc", std::string(gfp::describe(p))});
            return nullptr;
        }
        if (size - 1 < kmalloc_max_cache_size) return caches_[kmalloc_index(size)]->alloc(flags, where);
        if (size == 0) return zero_size_ptr;
        return kmalloc_large(size, flags);
    }
    /// kzalloc: kmalloc with gfp::zero.
    template <std::uint32_t B>
    void* kzalloc(std::size_t size, gfp::Flags<B> flags,
                  const SourceLocation& where = SourceLocation::current()) {
        return kmalloc(size, flags | gfp::zero, where);
    }
    /// kmalloc_array: n * size bytes, or nullptr when the product overflows.
    template <std::uint32_t B>
    void* kmalloc_array(std::size_t n, std::size_t size, gfp::Flags<B> flags,
                        const SourceLocation& where = SourceLocation::current()) {
        std::size_t bytes;
        if (__builtin_mul_overflow(n, size, &bytes)) return nullptr;
        return kmalloc(bytes, flags, where);
    }
    /// kcalloc: kmalloc_array with gfp::zero.
    template <std::uint32_t B>
    void* kcalloc(std::size_t n, std::size_t size, gfp::Flags<B> flags,
                  const SourceLocation& where = SourceLocation::current()) {
        return kmalloc_array(n, size, flags | gfp::zero, where);
    }
    /// krealloc: `p` resized to `new_size`, keeping its bytes.  The same pointer when its class still holds
    /// new_size; nullptr (and `p` untouched) when memory is short; new_size 0 frees `p` and returns
    /// zero_size_ptr.  With gfp::zero, bytes beyond the old usable size come back zeroed.
    template <std::uint32_t B>
    void* krealloc(void* p, std::size_t new_size, gfp::Flags<B> flags,
                   const SourceLocation& where = SourceLocation::current()) {
        if (new_size == 0) {
            kfree(p);
            return zero_size_ptr;
        }
        const std::size_t old = zero_or_null_ptr(p) ? 0 : ksize(p);
        if (old >= new_size) return p;
        void* q = kmalloc(new_size, flags, where);
        if (q == nullptr) return nullptr;
        if (old != 0) std::memcpy(q, p, old);
        kfree(p);
        return q;
    }
    /// kmemdup: a kmalloc'd copy of `len` bytes at `src`.
    template <std::uint32_t B>
    void* kmemdup(const void* src, std::size_t len, gfp::Flags<B> flags,
                  const SourceLocation& where = SourceLocation::current()) {
        void* p = kmalloc(len, flags, where);
        if (p != nullptr && len != 0) std::memcpy(p, src, len);
        return p;
    }
    /// kstrdup: a kmalloc'd copy of a NUL-terminated string; nullptr for nullptr.
    template <std::uint32_t B>
    char* kstrdup(const char* s, gfp::Flags<B> flags,
                  const SourceLocation& where = SourceLocation::current()) {
        if (s == nullptr) return nullptr;
        return static_cast<char*>(kmemdup(s, std::strlen(s) + 1, flags, where));
    }

    // ----- free and size ---------------------------------------------------------------------------------

    /// kfree: frees anything kmalloc returned; nullptr and zero_size_ptr are ignored.  A pointer outside the
    /// page allocator, into a page that is neither a slab nor a large kmalloc, or not the start of an object,
    /// is reported through the error policy and nothing is freed.
    void kfree(void* p, const SourceLocation& where = SourceLocation::current()) {
        if (zero_or_null_ptr(p)) return;
        Page* page = parent_.virt_to_page(p);
        if (page == nullptr) [[unlikely]]
            return report_kfree(p, nullptr);
        page = parent_.compound_head(page);
        if (page->test(PageFlag::slab)) [[likely]] {
            auto* s = reinterpret_cast<detail::Slab*>(static_cast<std::uintptr_t>(page->owner()));
            // The slab's size class names the cache; a slab of some other cache fails the check.  One branch per
            // class, each with the cache at a constant offset from `this`: the branch is predicted, so the
            // per-CPU array's address does not wait for the chain of loads from the pointer to its slab (and
            // the next allocation does not wait for it either).  Through a loaded cache pointer a pair costs
            // about three times as much.
            if (free_to_class(s, p, where, std::make_index_sequence<kmalloc_sizes.size()>{})) [[likely]]
                return;
            return report_kfree(p, s);
        }
        if (!page->test(PageFlag::head) || parent_.page_address(page) != p) [[unlikely]]
            return report_kfree(p, page);
        parent_.free_pages(page, page->order());
    }
    /// kfree_sensitive: clears the whole usable size (ksize) before freeing, so secrets do not linger.
    void kfree_sensitive(void* p) {
        if (zero_or_null_ptr(p)) return;
        const std::size_t n = ksize(p);
        volatile unsigned char* b = static_cast<volatile unsigned char*>(p);
        for (std::size_t i = 0; i < n; ++i) b[i] = 0;
        kfree(p);
    }
    /// ksize: the usable size of a kmalloc'd object (its class size, or the pages of a large allocation);
    /// 0 for nullptr, zero_size_ptr and pointers kmalloc did not return.
    std::size_t ksize(const void* p) const noexcept {
        if (zero_or_null_ptr(p)) return 0;
        Page* page = parent_.virt_to_page(p);
        if (page == nullptr) return 0;
        page = parent_.compound_head(page);
        if (page->test(PageFlag::slab)) {
            const auto* s = reinterpret_cast<const detail::Slab*>(static_cast<std::uintptr_t>(page->owner()));
            return static_cast<const cache_type*>(s->cache)->object_size();
        }
        return page->test(PageFlag::head) ? page_size << page->order() : 0;
    }
    /// kmalloc_size_roundup: the size kmalloc really gives for a request of `size` (0 stays 0; sizes above
    /// kmalloc_max_size are returned as they are, since such a request fails).
    static constexpr std::size_t kmalloc_size_roundup(std::size_t size) noexcept {
        if (size == 0) return 0;
        if (size <= kmalloc_max_cache_size) return kmalloc_sizes[kmalloc_index(size)];
        if (size > kmalloc_max_size) return size;
        return std::bit_ceil((size + page_size - 1) / page_size) * page_size;
    }

    // ----- byte interface (kmem::MemoryResource) ---------------------------------------------------------

    /// Byte interface for kmem::MemoryResource: `bytes` with alignment `align` (a power of two).  Alignments up
    /// to a page come from the size classes (a class that is a power of two is naturally aligned), larger
    /// ones from the page allocator's aligned path.
    template <std::uint32_t B>
    void* try_allocate(gfp::Flags<B> flags, std::size_t bytes, std::size_t align) {
        // Classes from kmalloc-16 up sit at multiples of 16 (and from kmalloc-32 up of 32: kmalloc-96 and -192
        // objects are 96 and 192 bytes apart from a page-aligned, cache-line-coloured start).
        if (align <= min_align) [[likely]]
            return kmalloc(bytes == 0 ? 1 : bytes, flags);
        if (align <= class_align_) [[likely]]
            return kmalloc(bytes < align ? align : bytes, flags);
        if (align > page_size) return parent_.try_allocate(flags, bytes, align);
        std::size_t size = std::max(bytes, align);
        if (size <= kmalloc_max_cache_size && (kmalloc_sizes[kmalloc_index(size)] & (size - 1)) != 0)
            size = std::bit_ceil(size); // kmalloc-96 and -192 are not aligned beyond 32 and 64
        return kmalloc(size, flags);
    }
    /// Byte interface: frees memory from try_allocate().
    void deallocate(void* p, std::size_t bytes, std::size_t align) {
        if (align > page_size) return parent_.deallocate(p, bytes, align);
        kfree(p);
    }

    // ----- information -----------------------------------------------------------------------------------

    /// The cache of size class `index` (see kmalloc_sizes).
    cache_type& cache(unsigned index) noexcept { return *caches_[index]; }
    /// The cache serving `size` bytes (kmalloc_slab), for 1..kmalloc_max_cache_size.
    cache_type& cache_for(std::size_t size) noexcept { return *caches_[kmalloc_index(size)]; }
    /// Calls f(cache) for every generic cache, smallest first.
    template <class F>
    void for_each_cache(F&& f) {
        for (auto& c : caches_) f(*c);
    }
    /// Every generic cache's figures, smallest first, for slabinfo() and slabtop().
    std::vector<SlabStats> stats() const {
        std::vector<SlabStats> out;
        for (const auto& c : caches_) out.push_back(c->stats());
        return out;
    }
    /// Empties per-CPU arrays and gives empty slabs back in every cache (kmem_cache_shrink on each); returns
    /// the pages given back.
    std::uint64_t shrink() {
        std::uint64_t n = 0;
        for (auto& c : caches_) n += c->shrink();
        return n;
    }
    /// validate() of every cache; empty when all hold, else the first problem prefixed with the cache's name.
    std::string validate() const {
        for (const auto& c : caches_)
            if (std::string p = c->validate(); !p.empty()) return c->name() + ": " + p;
        return {};
    }
    /// The error policy for kfree()'s own reports.
    error_policy_type& error_policy() noexcept { return error_; }
    /// The page allocator.
    Parent& parent() const noexcept { return parent_; }

private:
    template <std::size_t... I>
    [[gnu::always_inline]] bool free_to_class(detail::Slab* s, void* p, const SourceLocation& where,
                                              std::index_sequence<I...>) {
        const unsigned tag = s->tag;
        return ((tag == I && s->cache == &*caches_[I] && (caches_[I]->free_known(s, p, where), true)) || ...);
    }
    // kfree()'s mistakes: outside the page allocator (what == nullptr), another cache's slab, or a page that is
    // neither a slab nor a large kmalloc.
    [[gnu::noinline]] void report_kfree(void* p, const void* what) {
        if (what == nullptr)
            return error_.on_error(UsageError{ErrorKind::out_of_region, "kfree",
                                              detail::hex(p) + " is not inside the page allocator"});
        const Page* page = parent_.compound_head(parent_.virt_to_page(p));
        if (page->test(PageFlag::slab)) {
            const auto* s = static_cast<const detail::Slab*>(what);
            return error_.on_error(UsageError{ErrorKind::wrong_cache, "kfree",
                                              detail::hex(p) + " belongs to slab cache " +
                                                  static_cast<const cache_type*>(s->cache)->name() +
                                                  ", not to a kmalloc cache; free it with that cache"});
        }
        error_.on_error(
            UsageError{ErrorKind::not_object, "kfree",
                       "free_large_kmalloc: " + detail::hex(p) +
                           " is neither a slab object nor the start of a large kmalloc allocation"});
    }
    static std::string size_name(std::size_t size) {
        return size >= 1024 ? std::to_string(size / 1024) + "k" : std::to_string(size);
    }
    template <class F>
    void* kmalloc_large(std::size_t size, F flags) {
        const unsigned order = get_order<page_size>(size); // above max_order the page allocator refuses it
        Page* page;
        if constexpr (std::is_same_v<F, gfp_t>)
            page = parent_.alloc_pages(gfp_t::from_bits(flags.value() | gfp::bits::comp), order);
        else
            page = parent_.alloc_pages(flags | gfp::comp, order);
        return page == nullptr ? nullptr : parent_.page_address(page);
    }

    Parent& parent_;
    std::array<std::optional<cache_type>, kmalloc_sizes.size()> caches_;
    std::size_t class_align_ = 32; // the alignment every class from kmalloc-16 up gives (8 with red zones)
    [[no_unique_address]] error_policy_type error_{};
};

} // namespace kmem
