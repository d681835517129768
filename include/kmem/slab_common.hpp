/// @file
/// What object caches have in common (mm/slab_common.c, include/linux/slab.h and include/linux/poison.h): the
/// SLAB_* creation flags and kmem_cache_create's arguments (CacheConfig), SLUB's debug byte values and track
/// records (SlabTrack, with the SourceLocation they record), and the /proc/slabinfo and slabtop reports over a
/// cache's figures (SlabStats).  kmem/slab.hpp includes it, with the caches themselves.
///
/// @code
///   kmem::SlabStats s;                      // a cache's figures, as KmemCache::stats() gives them
///   s.name = "dentry";
///   s.active_objs = 30;
///   s.num_objs = s.objperslab = 64;
///   s.objsize = 64;
///   s.pagesperslab = 1;
///   s.active_slabs = s.num_slabs = 1;
///   s.page_size = 4096;
///   assert(kmem::slabinfo({s}).starts_with("slabinfo - version: 2.1\n"));
///   assert(s.total_bytes() == 4096 && s.active_bytes() == 30 * 64);
///   std::cout << kmem::slabtop({s}, kmem::SlabTopKey::active_objs);
///   kmem::CacheConfig config;               // kmem_cache_create's arguments
///   config.name = "dentry";
///   config.size = 40;
///   config.flags = kmem::SlabFlags::poison | kmem::SlabFlags::red_zone;
///   assert(kmem::any_of(config.flags, kmem::slab_debug_flags));
/// @endcode
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace kmem {

/// A call site: file, function and line, captured by a defaulted argument as std::source_location::current()
/// does (which clang before 15 cannot offer with libstdc++); the slab debug code records it (SLAB_STORE_USER).
class SourceLocation {
public:
    /// The location of the call whose default argument this is.
    static constexpr SourceLocation current(const char* file = __builtin_FILE(),
                                            const char* function = __builtin_FUNCTION(),
                                            std::uint32_t line = __builtin_LINE()) noexcept {
        SourceLocation l;
        l.file_ = file;
        l.function_ = function;
        l.line_ = line;
        return l;
    }
    /// The source file.
    constexpr const char* file_name() const noexcept { return file_; }
    /// The function.
    constexpr const char* function_name() const noexcept { return function_; }
    /// The line.
    constexpr std::uint32_t line() const noexcept { return line_; }

private:
    const char* file_ = "";
    const char* function_ = "";
    std::uint32_t line_ = 0;
};

/// Cache creation flags (SLAB_* in include/linux/slab.h); combine with `|`.
enum class SlabFlags : std::uint32_t {
    none = 0,                ///< No flag.
    hwcache_align = 1u << 0, ///< SLAB_HWCACHE_ALIGN: align objects on a cache line (halved for small ones).
    poison = 1u << 1,        ///< SLAB_POISON: fill free objects with 0x6b (end 0xa5), check on allocation.
    red_zone = 1u << 2,      ///< SLAB_RED_ZONE: guard bytes around objects (0xbb free, 0xcc allocated).
    store_user = 1u << 3,    ///< SLAB_STORE_USER: record the allocation and free site of each object.
    consistency_checks = 1u << 4, ///< SLAB_CONSISTENCY_CHECKS: check every free (double free, list walks).
};
/// Both sets of flags.
constexpr SlabFlags operator|(SlabFlags a, SlabFlags b) noexcept {
    return static_cast<SlabFlags>(static_cast<std::uint32_t>(a) | static_cast<std::uint32_t>(b));
}
/// The flags in both sets.
constexpr SlabFlags operator&(SlabFlags a, SlabFlags b) noexcept {
    return static_cast<SlabFlags>(static_cast<std::uint32_t>(a) & static_cast<std::uint32_t>(b));
}
/// True when `f` holds any flag of `mask`.
constexpr bool any_of(SlabFlags f, SlabFlags mask) noexcept {
    return (f & mask) != SlabFlags::none;
}
/// Every debug flag (SLAB_DEBUG_FLAGS): a cache with any of them takes the checked slow path on every call.
inline constexpr SlabFlags slab_debug_flags =
    SlabFlags::poison | SlabFlags::red_zone | SlabFlags::store_user | SlabFlags::consistency_checks;

/// SLUB's debug byte values (include/linux/poison.h).
namespace slab_poison {
inline constexpr unsigned char free_byte = 0x6b;    ///< POISON_FREE: the bytes of a free object.
inline constexpr unsigned char end_byte = 0xa5;     ///< POISON_END: the last byte of a free object.
inline constexpr unsigned char red_inactive = 0xbb; ///< SLUB_RED_INACTIVE: red zone of a free object.
inline constexpr unsigned char red_active = 0xcc;   ///< SLUB_RED_ACTIVE: red zone of an allocated object.
} // namespace slab_poison

/// Where and when an object was last allocated or freed (SLUB's struct track, kept with SLAB_STORE_USER).
struct SlabTrack {
    const char* file = nullptr;     ///< Source file of the call (SourceLocation).
    const char* function = nullptr; ///< Function of the call.
    std::uint32_t line = 0;         ///< Line of the call.
    int cpu = -1;                   ///< The CPU the call ran on.
    std::uint64_t thread = 0;       ///< A hash of the calling thread's id.
    std::int64_t when_ns = 0;       ///< steady_clock time of the call in nanoseconds; 0 when never recorded.
};

/// One cache's figures, as a line of /proc/slabinfo (version 2.1) reports them.
struct SlabStats {
    std::string name;                 ///< The cache's name.
    std::uint64_t active_objs = 0;    ///< Objects allocated (including those held in per-CPU arrays).
    std::uint64_t num_objs = 0;       ///< Objects in all slabs.
    std::uint32_t objsize = 0;        ///< Bytes per object as allocated (stride, with debug metadata).
    std::uint32_t objperslab = 0;     ///< Objects per slab.
    std::uint32_t pagesperslab = 0;   ///< Pages per slab (1 << order).
    std::uint32_t limit = 0;          ///< Per-CPU array capacity (tunables limit).
    std::uint32_t batchcount = 0;     ///< Objects moved per refill or flush (tunables batchcount).
    std::uint64_t active_slabs = 0;   ///< Slabs holding at least one allocated object.
    std::uint64_t num_slabs = 0;      ///< Slabs in the cache.
    std::uint64_t cpu_objs = 0;       ///< Free objects waiting in per-CPU arrays.
    std::uint32_t object_size = 0;    ///< The size asked for at creation (kmem_cache_size).
    std::uint64_t page_size = 0;      ///< Bytes per page.
    std::uint64_t metadata_bytes = 0; ///< Bytes of slab descriptors in use (struct slab), outside the slabs.
    /// Bytes the cache holds in pages.
    std::uint64_t total_bytes() const noexcept { return num_slabs * pagesperslab * page_size; }
    /// Bytes of those pages in use by allocated objects (active_objs * objsize).
    std::uint64_t active_bytes() const noexcept { return active_objs * objsize; }
};

/// The /proc/slabinfo text (version 2.1): the two header lines, then one line per cache.
inline std::string slabinfo(std::span<const SlabStats> caches) {
    std::string out = "slabinfo - version: 2.1\n"
                      "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : "
                      "tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> "
                      "<sharedavail>\n";
    char line[256];
    for (const SlabStats& s : caches) {
        std::snprintf(line, sizeof line,
                      "%-17s %6llu %6llu %6u %4u %4u : tunables %4u %4u %4u : slabdata %6llu %6llu %6u\n",
                      s.name.c_str(), static_cast<unsigned long long>(s.active_objs),
                      static_cast<unsigned long long>(s.num_objs), s.objsize, s.objperslab, s.pagesperslab,
                      s.limit, s.batchcount, 0u, static_cast<unsigned long long>(s.active_slabs),
                      static_cast<unsigned long long>(s.num_slabs), 0u);
        out += line;
    }
    return out;
}
/// slabinfo() for a braced list of caches' stats().
inline std::string slabinfo(std::initializer_list<SlabStats> caches) {
    return slabinfo(std::span<const SlabStats>(caches.begin(), caches.size()));
}

/// The key a slabtop() summary is sorted by (slabtop's -s option).
enum class SlabTopKey {
    active_objs, ///< 'a': active objects.
    num_objs,    ///< 'o': objects.
    objsize,     ///< 's': object size.
    num_slabs,   ///< 'l': slabs.
    cache_size,  ///< 'c': bytes held (the default of slabtop).
    name,        ///< 'n': name.
};

/// A slabtop-like summary: totals, then one line per cache sorted by `key` (largest first; names A to Z).
inline std::string slabtop(std::span<const SlabStats> caches, SlabTopKey key = SlabTopKey::cache_size) {
    std::vector<const SlabStats*> rows;
    std::uint64_t objs = 0, active = 0, slabs = 0, active_slabs = 0, bytes = 0, active_bytes = 0;
    for (const SlabStats& s : caches) {
        rows.push_back(&s);
        objs += s.num_objs;
        active += s.active_objs;
        slabs += s.num_slabs;
        active_slabs += s.active_slabs;
        bytes += s.total_bytes();
        active_bytes += s.active_bytes();
    }
    const auto value = [key](const SlabStats* s) -> std::uint64_t {
        switch (key) {
        case SlabTopKey::active_objs:
            return s->active_objs;
        case SlabTopKey::num_objs:
            return s->num_objs;
        case SlabTopKey::objsize:
            return s->objsize;
        case SlabTopKey::num_slabs:
            return s->num_slabs;
        case SlabTopKey::cache_size:
            return s->total_bytes();
        case SlabTopKey::name:
            return 0;
        }
        return 0;
    };
    std::stable_sort(rows.begin(), rows.end(), [&](const SlabStats* a, const SlabStats* b) {
        return key == SlabTopKey::name ? a->name < b->name : value(a) > value(b);
    });
    const auto pct = [](std::uint64_t part, std::uint64_t whole) {
        return whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole);
    };
    char line[256];
    std::string out;
    std::snprintf(line, sizeof line, " Active / Total Objects (%% used)    : %llu / %llu (%.1f%%)\n",
                  static_cast<unsigned long long>(active), static_cast<unsigned long long>(objs),
                  pct(active, objs));
    out += line;
    std::snprintf(line, sizeof line, " Active / Total Slabs (%% used)      : %llu / %llu (%.1f%%)\n",
                  static_cast<unsigned long long>(active_slabs), static_cast<unsigned long long>(slabs),
                  pct(active_slabs, slabs));
    out += line;
    std::snprintf(line, sizeof line, " Active / Total Caches (%% used)     : %zu / %zu (%.1f%%)\n",
                  static_cast<std::size_t>(std::count_if(
                      rows.begin(), rows.end(), [](const SlabStats* s) { return s->active_objs > 0; })),
                  rows.size(),
                  pct(static_cast<std::uint64_t>(std::count_if(
                          rows.begin(), rows.end(), [](const SlabStats* s) { return s->active_objs > 0; })),
                      rows.size()));
    out += line;
    std::snprintf(line, sizeof line, " Active / Total Size (%% used)       : %.2fK / %.2fK (%.1f%%)\n",
                  static_cast<double>(active_bytes) / 1024.0, static_cast<double>(bytes) / 1024.0,
                  pct(active_bytes, bytes));
    out += line;
    out += "\n  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME\n";
    for (const SlabStats* s : rows) {
        std::snprintf(line, sizeof line, "%6llu %6llu %3.0f%% %7.2fK %6llu %8u %9lluK %s\n",
                      static_cast<unsigned long long>(s->num_objs),
                      static_cast<unsigned long long>(s->active_objs), pct(s->active_objs, s->num_objs),
                      static_cast<double>(s->objsize) / 1024.0, static_cast<unsigned long long>(s->num_slabs),
                      s->objperslab, static_cast<unsigned long long>(s->total_bytes() / 1024),
                      s->name.c_str());
        out += line;
    }
    return out;
}
/// slabtop() for a braced list of caches' stats().
inline std::string slabtop(std::initializer_list<SlabStats> caches, SlabTopKey key = SlabTopKey::cache_size) {
    return slabtop(std::span<const SlabStats>(caches.begin(), caches.size()), key);
}

/// Settings of a cache (the arguments of kmem_cache_create, as a configuration struct).
struct CacheConfig {
    std::string name;                  ///< Shown in slabinfo and in reports.
    std::size_t size = 0;              ///< Bytes per object (object_size); at least 1.
    std::size_t align = 0;             ///< Alignment of objects (a power of two; 0 = the default of 8).
    SlabFlags flags = SlabFlags::none; ///< SLAB_* flags.
    std::function<void(void*)> ctor;   ///< Constructor: runs once per object when its slab is populated.
    unsigned min_partial = 5; ///< Empty slabs kept for reuse before slabs go back (SLUB's min_partial).
    std::uint8_t tag = 0;     ///< A number for the cache's owner, copied into every slab descriptor
                              ///< (Kmalloc: the size class, so kfree dispatches without a data load).
};

} // namespace kmem
