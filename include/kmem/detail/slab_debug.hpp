/// @file
/// SLUB's debugging (mm/slub.c: init_object, check_object, set_track and the "BUG <cache>" report): poison and
/// red zones written and checked, allocation and free sites recorded (SLAB_STORE_USER), and the findings turned
/// into SLUB's report text after the cache lock is released.  Not part of the API; used by kmem/slab.hpp.
#pragma once

#include <kmem/detail/cpu.hpp>
#include <kmem/detail/slab_layout.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/slab_common.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

namespace kmem::detail {

// A 64-bit value for "which thread": std::hash of the thread id.
inline std::uint64_t thread_tag() noexcept {
    return static_cast<std::uint64_t>(std::hash<std::thread::id>{}(std::this_thread::get_id()));
}
inline std::int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// A finding of a check, made under the cache lock and turned into a report after it is released.
struct SlabDiagnosis {
    ErrorKind kind{};
    const char* op = nullptr;
    const char* what = nullptr; // "Poison overwritten", "Object already free", ...
    const void* object = nullptr;
    const void* first = nullptr;      // first wrong byte (corruption)
    const void* last = nullptr;       // last wrong byte (corruption)
    unsigned found = 0, expected = 0; // the first wrong byte's value and the value it should have
    const void* slab_addr = nullptr;
    std::uint32_t objects = 0, inuse = 0;
    std::string_view other_cache; // the cache an object really belongs to (wrong cache)
    SlabTrack alloc, free;
    bool tracked = false;
    explicit operator bool() const noexcept { return what != nullptr; }
};

inline std::string hex(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%016llx",
                  static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(p)));
    return b;
}
inline std::string track_line(const char* verb, const SlabTrack& t) {
    if (t.when_ns == 0) return std::string(verb) + " in (not recorded)\n";
    char b[512];
    std::snprintf(b, sizeof b, "%s in %s %s:%u age=%lldms cpu=%d thread=%llu\n", verb,
                  t.function != nullptr ? t.function : "?", t.file != nullptr ? t.file : "?", t.line,
                  static_cast<long long>((now_ns() - t.when_ns) / 1'000'000), t.cpu,
                  static_cast<unsigned long long>(t.thread));
    return b;
}
// The report in SLUB's words: the BUG banner naming the cache and the problem, then the details.
inline std::string format_slab_report(std::string_view cache, const SlabDiagnosis& d) {
    std::string m = "\n=============================================================================\n";
    m += "BUG " + std::string(cache) + " (Not tainted): " + d.what + "\n";
    m += "-----------------------------------------------------------------------------\n\n";
    if (d.first != nullptr) {
        char b[160];
        std::snprintf(b, sizeof b, "%s-%s @offset=%lld. First byte 0x%x instead of 0x%x\n",
                      hex(d.first).c_str(), hex(d.last).c_str(),
                      static_cast<long long>(static_cast<const std::byte*>(d.first) -
                                             static_cast<const std::byte*>(d.object)),
                      d.found, d.expected);
        m += b;
    }
    if (!d.other_cache.empty())
        m += "Wrong slab cache. " + std::string(cache) + " but object is from " + std::string(d.other_cache) +
             "\n";
    if (d.tracked) m += track_line("Allocated", d.alloc) + track_line("Freed", d.free);
    if (d.slab_addr != nullptr)
        m += "Slab " + hex(d.slab_addr) + " objects=" + std::to_string(d.objects) +
             " used=" + std::to_string(d.inuse) + "\n";
    if (d.object != nullptr) m += "Object " + hex(d.object) + "\n";
    return m;
}

/// SlabLayout with SLUB's per-object debugging (init_object, check_object, set_track): poison and red zones
/// written and checked, allocation and free sites recorded.  KmemCache's base: its alloc_debug / free_debug
/// (alloc_debug_processing / free_debug_processing) and validate() call these under the cache lock.
class SlabDebug : public SlabLayout {
protected:
    using SlabLayout::SlabLayout;

    // init_object: red zones and, for a free object, poison.
    void init_debug(void* object, unsigned char red, bool is_free) const noexcept {
        auto* p = static_cast<unsigned char*>(object);
        if (red_zone_) {
            std::memset(p - red_left_, red, red_left_);
            std::memset(p + cfg_.size, red, rz_end_ - cfg_.size);
        }
        if (poison_ && is_free) {
            std::memset(p, slab_poison::free_byte, cfg_.size - 1);
            p[cfg_.size - 1] = slab_poison::end_byte;
        }
    }
    // check_bytes_and_report: the first and last byte of [from, from + n) that are not `value`.
    static bool check_bytes(detail::SlabDiagnosis& d, const void* object, const unsigned char* from,
                            std::size_t n, unsigned char value, const char* what) noexcept {
        const unsigned char* bad = nullptr;
        const unsigned char* last = nullptr;
        for (std::size_t i = 0; i < n; ++i)
            if (from[i] != value) {
                if (bad == nullptr) bad = from + i;
                last = from + i;
            }
        if (bad == nullptr) return true;
        if (!d) {
            d.kind = ErrorKind::slab_corruption;
            d.what = what;
            d.object = object;
            d.first = bad;
            d.last = last;
            d.found = *bad;
            d.expected = value;
        }
        return false;
    }
    // check_object for an object that should be free: red zones inactive, poison intact.
    bool check_free_object(const detail::Slab* s, const void* object, detail::SlabDiagnosis& d,
                           const char* op) const noexcept {
        const auto* p = static_cast<const unsigned char*>(object);
        bool ok = true;
        if (red_zone_) {
            ok = check_bytes(d, object, p - red_left_, red_left_, slab_poison::red_inactive,
                             "Left Redzone overwritten") &&
                 ok;
            ok = check_bytes(d, object, p + cfg_.size, rz_end_ - cfg_.size, slab_poison::red_inactive,
                             "Right Redzone overwritten") &&
                 ok;
        }
        if (poison_) {
            ok = check_bytes(d, object, p, cfg_.size - 1, slab_poison::free_byte, "Poison overwritten") && ok;
            ok = check_bytes(d, object, p + cfg_.size - 1, 1, slab_poison::end_byte, "Poison overwritten") &&
                 ok;
        }
        if (!ok) fill_context(d, s, object, op);
        return ok;
    }
    void fill_context(detail::SlabDiagnosis& d, const detail::Slab* s, const void* object,
                      const char* op) const noexcept {
        d.op = op;
        d.object = object;
        d.slab_addr = s->s_mem - s->colour;
        d.objects = objects_;
        d.inuse = s->inuse;
        if (store_user_) {
            const SlabTrack* t = tracks(const_cast<void*>(object));
            d.alloc = t[0];
            d.free = t[1];
            d.tracked = true;
        }
    }
    void set_track(void* object, int which, const SourceLocation& where) const noexcept {
        SlabTrack& t = tracks(object)[which];
        t.file = where.file_name();
        t.function = where.function_name();
        t.line = where.line();
        t.cpu = detail::current_cpu();
        t.thread = detail::thread_tag();
        t.when_ns = detail::now_ns();
    }
    bool on_freelist(const detail::Slab* s, const void* object) const noexcept {
        std::uint32_t n = 0;
        for (void* o = s->freelist; o != nullptr && n <= objects_; o = get_fp(o), ++n)
            if (o == object) return true;
        return false;
    }
};

} // namespace kmem::detail
