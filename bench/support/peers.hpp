/// @file
/// The general-purpose allocators kmem's benchmarks measure beside kmem: glibc, mimalloc, jemalloc and tcmalloc.
/// Each of the last three replaces malloc, so they cannot all be linked into one program: each is loaded at run
/// time by its Debian soname with dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) (its symbols stay out of the
/// program's scope and its own calls bind to itself), and its allocation and free functions are taken with
/// dlsym().  A library that cannot be loaded is kept in the list with the reason, so the program can print a
/// line and skip it.  Every peer, glibc included, is called through the same kind of function pointer, so each
/// pays one indirect call per operation.  The libraries are never unloaded.
///
/// Debian's jemalloc keeps about 2.6 KiB of initial-exec TLS, more than the surplus glibc reserves for libraries
/// loaded later (glibc.rtld.optional_static_tls, 512 bytes by default), and the tunable is read only when the
/// process starts: restart_for_static_tls(), called first in main(), restarts the program once with a larger
/// surplus when that is what keeps jemalloc out.
///
/// @code
///   int main(int argc, char** argv) {
///       kmem::bench::restart_for_static_tls(argv);   // before any thread or allocation that matters
///       ...
///   }
///   for (const kmem::bench::MallocPeer& p : kmem::bench::malloc_peers()) {
///       if (!p.loaded()) {
///           std::printf("%s: skipped (%s)\n", p.name.c_str(), p.missing.c_str());
///           continue;
///       }
///       void* x = p.alloc(64);
///       p.free(x);
///   }
/// @endcode
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

namespace kmem::bench {

/// One malloc-style allocator loaded at run time: its name, where it came from, and its two entry points.
struct MallocPeer {
    std::string name;      ///< Short name used in case names and tables ("glibc", "mimalloc", ...).
    std::string library;   ///< The soname given to dlopen().
    std::string functions; ///< The entry points used, e.g. "mi_malloc/mi_free".
    void* (*alloc)(std::size_t) = nullptr; ///< malloc-like: bytes -> pointer (null on failure).
    void (*free)(void*) = nullptr;         ///< free-like: pointer -> nothing.
    std::string missing;                   ///< Why the peer was skipped; empty when it loaded.

    /// True when both entry points were found.
    bool loaded() const noexcept { return alloc != nullptr && free != nullptr; }
};

namespace detail {

// A function pointer from dlsym()'s object pointer (POSIX guarantees the representation; memcpy keeps
// -Wpedantic quiet about the conversion).
template <class Fn>
Fn function_from(void* sym) noexcept {
    Fn fn = nullptr;
    static_assert(sizeof fn == sizeof sym, "function and object pointers must have the same size");
    std::memcpy(&fn, &sym, sizeof fn);
    return fn;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool under_sanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
inline constexpr bool under_sanitizer = true;
#else
inline constexpr bool under_sanitizer = false;
#endif
#else
inline constexpr bool under_sanitizer = false;
#endif

inline constexpr const char* static_tls_tunable = "glibc.rtld.optional_static_tls";
inline constexpr const char* static_tls_setting = "glibc.rtld.optional_static_tls=16384";

inline std::string dl_error(const char* fallback) {
    const char* e = ::dlerror();
    std::string text = e != nullptr ? std::string(e) : std::string(fallback);
    if (text.find("static TLS") != std::string::npos)
        text += std::string(" (start the program with GLIBC_TUNABLES=") + static_tls_setting + ")";
    return text;
}

// True when `sym` lies in the object `handle` names (not in one of its dependencies).
inline bool defined_in(void* handle, void* sym) {
    ::link_map* lib = nullptr;
    ::link_map* owner = nullptr;
    Dl_info info;
    if (::dlinfo(handle, RTLD_DI_LINKMAP, &lib) != 0) return false;
    if (::dladdr1(sym, &info, reinterpret_cast<void**>(&owner), RTLD_DL_LINKMAP) == 0) return false;
    return lib != nullptr && lib == owner;
}

// Loads `soname` with `mode` and looks up `alloc_sym` / `free_sym` in it (the library first, then its
// dependencies, as dlsym() on a handle does).
inline MallocPeer load_peer(const char* name, const char* soname, int mode, const char* alloc_sym,
                            const char* free_sym) {
    MallocPeer p;
    p.name = name;
    p.library = soname;
    p.functions = std::string(alloc_sym) + "/" + free_sym;
    ::dlerror();
    void* handle = ::dlopen(soname, mode);
    if (handle == nullptr) {
        p.missing = "dlopen " + p.library + ": " + dl_error("not found");
        return p;
    }
    void* a = ::dlsym(handle, alloc_sym);
    void* f = ::dlsym(handle, free_sym);
    if (a == nullptr || f == nullptr) {
        p.missing = "dlsym " + p.functions + " in " + p.library + ": " + dl_error("symbol not found");
        return p;
    }
    // dlsym() on a handle also searches the library's dependencies: make sure both functions are the
    // library's own (a build without them would otherwise measure glibc under another name).
    if (!defined_in(handle, a) || !defined_in(handle, f)) {
        p.missing =
            p.functions + " found in " + p.library + " are not its own (another library defines them)";
        return p;
    }
    p.alloc = function_from<void* (*)(std::size_t)>(a);
    p.free = function_from<void (*)(void*)>(f);
    return p;
}

} // namespace detail

/// The peers, loaded once on first call, in a fixed order: glibc (libc.so.6, already loaded: malloc/free),
/// mimalloc (libmimalloc.so.2: mi_malloc/mi_free), jemalloc (libjemalloc.so.2, Debian's build without a prefix:
/// its own malloc/free, found in its handle) and tcmalloc (libtcmalloc_minimal.so.4: tc_malloc/tc_free).
/// Entries that failed to load have `missing` set.
/// Under AddressSanitizer, ThreadSanitizer or MemorySanitizer the three replacements are skipped: their runtimes
/// refuse RTLD_DEEPBIND (and intercept malloc themselves).
inline const std::vector<MallocPeer>& malloc_peers() {
    static const std::vector<MallocPeer> peers = [] {
        constexpr int mode = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
        std::vector<MallocPeer> v;
        v.push_back(
            detail::load_peer("glibc", "libc.so.6", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD, "malloc", "free"));
        const auto replacement = [&](const char* name, const char* soname, const char* a, const char* f) {
            if (detail::under_sanitizer) {
                MallocPeer p;
                p.name = name;
                p.library = soname;
                p.functions = std::string(a) + "/" + f;
                p.missing = "not loaded under a sanitizer (its runtime refuses RTLD_DEEPBIND)";
                v.push_back(p);
            } else {
                v.push_back(detail::load_peer(name, soname, mode, a, f));
            }
        };
        replacement("mimalloc", "libmimalloc.so.2", "mi_malloc", "mi_free");
        replacement("jemalloc", "libjemalloc.so.2", "malloc", "free");
        replacement("tcmalloc", "libtcmalloc_minimal.so.4", "tc_malloc", "tc_free");
        return v;
    }();
    return peers;
}

/// Restarts the program once (execv() of its own file, as /proc/self/exe names it, with the same arguments) with
/// GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384 added when jemalloc (libjemalloc.so.2) fails to load only
/// because glibc's surplus of static TLS is too small, and the environment does not already set that tunable.
/// Returns normally in every other case (jemalloc loaded, not installed, or the restart failed: it is then
/// reported as skipped by malloc_peers()).  Call it first in main().
inline void restart_for_static_tls(char** argv) {
    if constexpr (detail::under_sanitizer) return; // the replacements are not loaded there
    ::dlerror();
    if (::dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) != nullptr) return; // kept loaded
    const char* err = ::dlerror();
    if (err == nullptr || std::string_view(err).find("static TLS") == std::string_view::npos) return;
    const char* old = std::getenv("GLIBC_TUNABLES");
    if (old != nullptr && std::string_view(old).find(detail::static_tls_tunable) != std::string_view::npos)
        return;
    const std::string tunables = old == nullptr || *old == '\0'
                                     ? detail::static_tls_setting
                                     : std::string(old) + ":" + detail::static_tls_setting;
    if (::setenv("GLIBC_TUNABLES", tunables.c_str(), 1) != 0) return;
    // The program's own file, by its path (so the process keeps its name; /proc/self/exe would be "exe").
    std::string self(4096, '\0');
    const ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
    if (n <= 0) return;
    self.resize(static_cast<std::size_t>(n));
    ::execv(self.c_str(), argv); // returns only on failure
}

/// The peer named `name` when it loaded, else nullptr.
inline const MallocPeer* find_malloc_peer(const std::string& name) {
    for (const MallocPeer& p : malloc_peers())
        if (p.name == name && p.loaded()) return &p;
    return nullptr;
}

} // namespace kmem::bench
