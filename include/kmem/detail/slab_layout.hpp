/// @file
/// The layout of a slab cache (mm/slab.h's struct slab, the fixed fields of struct kmem_cache and SLUB's object
/// layout in mm/slub.c): slab descriptors and their lists, the per-CPU object array, the cache's settings and
/// geometry, and the helpers that find an object, its free pointer and its tracks.  Not part of the API; used by
/// kmem/slab.hpp.
#pragma once

#include <kmem/detail/per_cpu_sets.hpp>
#include <kmem/page.hpp>
#include <kmem/slab_common.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#define KMEM_DETAIL_SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KMEM_DETAIL_SLAB_ASAN 1
#endif
#endif
#ifdef KMEM_DETAIL_SLAB_ASAN
#include <sanitizer/asan_interface.h>
#endif
// Valgrind's client requests cost a few nanoseconds each even outside valgrind: they are compiled in only when
// KMEM_VALGRIND is defined (build the program that runs under memcheck with -DKMEM_VALGRIND).
#if defined(KMEM_VALGRIND) && __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define KMEM_DETAIL_SLAB_VALGRIND 1
#endif

namespace kmem::detail {

// The descriptor of one slab (the kernel's struct slab).  It lives outside the slab, in descriptor pages the
// cache takes from its page allocator; the head page's owner slot points at it.
struct Slab {
    Slab* next = nullptr; // list links (the node's partial, full or free list)
    Slab* prev = nullptr;
    void* freelist = nullptr;    // first free object on this slab, chained through free pointers
    std::byte* s_mem = nullptr;  // first object slot (after the colour offset)
    const void* cache = nullptr; // the owning cache (KmemCache*)
    Page* page = nullptr;        // head page of the slab
    std::uint32_t inuse = 0;     // objects handed out (to callers or to per-CPU arrays)
    std::uint32_t colour = 0;    // colour offset in bytes
    std::uint8_t list = 0;       // which list it is on (SlabList kind)
    std::uint8_t tag = 0;        // the cache's CacheConfig::tag (kmalloc's size class)
};

// An intrusive list of slab descriptors with its length.
struct SlabList {
    Slab* head = nullptr;
    std::uint64_t count = 0;
    void push(Slab* s) noexcept {
        s->prev = nullptr;
        s->next = head;
        if (head != nullptr) head->prev = s;
        head = s;
        ++count;
    }
    void remove(Slab* s) noexcept {
        if (s->prev != nullptr)
            s->prev->next = s->next;
        else
            head = s->next;
        if (s->next != nullptr) s->next->prev = s->prev;
        s->next = s->prev = nullptr;
        --count;
    }
};

// Memory-checker annotations of object state (no-ops without AddressSanitizer or valgrind).
inline void mark_noaccess([[maybe_unused]] const void* p, [[maybe_unused]] std::size_t n) noexcept {
#ifdef KMEM_DETAIL_SLAB_ASAN
    ASAN_POISON_MEMORY_REGION(p, n);
#endif
#ifdef KMEM_DETAIL_SLAB_VALGRIND
    (void)VALGRIND_MAKE_MEM_NOACCESS(p, n);
#endif
}
inline void mark_defined([[maybe_unused]] const void* p, [[maybe_unused]] std::size_t n) noexcept {
#ifdef KMEM_DETAIL_SLAB_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#endif
#ifdef KMEM_DETAIL_SLAB_VALGRIND
    (void)VALGRIND_MAKE_MEM_DEFINED(p, n);
#endif
}

// The per-CPU array of free objects (SLAB's struct array_cache; a magazine).
inline constexpr unsigned slab_array_max = 1024;
using SlabCpuArray = PtrStack<slab_array_max>;

// The kernel's calculate_alignment(): HWCACHE_ALIGN gives a cache line, halved while the object fits in half.
constexpr std::size_t slab_alignment(SlabFlags flags, std::size_t align, std::size_t size) noexcept {
    std::size_t a = align == 0 ? 8 : align;
    if (any_of(flags, SlabFlags::hwcache_align)) {
        std::size_t line = 64;
        while (size <= line / 2) line /= 2;
        a = std::max(a, line);
    }
    return std::max<std::size_t>(a, 8);
}

/// A cache's settings and object layout: the fields of struct kmem_cache fixed at creation (KmemCache's setup()
/// fills them in: calculate_sizes / calculate_order), the per-CPU array tunables and the debug switches, with
/// the helpers that find objects, their free pointers and their tracks.  The base of KmemCache, through
/// SlabDebug.
class SlabLayout {
protected:
    /// A cache made with `config`; KmemCache sets the geometry up.
    explicit SlabLayout(CacheConfig config) : cfg_(std::move(config)) {}

    // ----- object geometry -------------------------------------------------------------------------------

    void* get_fp(const void* object) const noexcept {
        void* next;
        const auto* at = static_cast<const std::byte*>(object) + fp_offset_;
        detail::mark_defined(at, sizeof next);
        std::memcpy(&next, at, sizeof next);
        return next;
    }
    void set_fp(void* object, void* next) const noexcept {
        auto* at = static_cast<std::byte*>(object) + fp_offset_;
        detail::mark_defined(at, sizeof next);
        std::memcpy(at, &next, sizeof next);
    }
    void* object_at(const detail::Slab* s, std::uint32_t i) const noexcept {
        return s->s_mem + std::size_t{i} * stride_ + red_left_;
    }
    // The index of the object starting at `p` in slab `s`, or -1 when `p` is not an object start of `s`.
    std::int64_t object_index(const detail::Slab* s, const void* p) const noexcept {
        const auto off = static_cast<std::uint64_t>(static_cast<const std::byte*>(p) - s->s_mem) - red_left_;
        const std::uint64_t i = (off * recip_) >> 32;
        return (i < objects_ && i * stride_ == off) ? static_cast<std::int64_t>(i) : -1;
    }
    SlabTrack* tracks(void* object) const noexcept {
        return reinterpret_cast<SlabTrack*>(static_cast<std::byte*>(object) + track_offset_);
    }

    CacheConfig cfg_;
    // Geometry (fixed at creation).
    std::size_t align_ = 8, stride_ = 0, red_left_ = 0, rz_end_ = 0, fp_offset_ = 0, track_offset_ = 0;
    std::size_t colour_off_ = 64;
    std::uint64_t recip_ = 0;
    std::uint32_t objects_ = 0, colours_ = 1;
    unsigned order_ = 0;
    std::atomic<unsigned> limit_{1}, batch_{1}; // changed by set_tunables under every CPU's lock
    bool debug_ = false, poison_ = false, red_zone_ = false, store_user_ = false;
};

} // namespace kmem::detail
