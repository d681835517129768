/// @file
/// Backing regions: the memory (or the mere range of offsets) a page-level allocator manages.
///
/// A region says how many bytes it spans, where it starts (a host address or a device offset), whether it is
/// addressable (host memory that can be read and written) and whether it is remappable (its pages can be mapped
/// again at other addresses, as VirtualMap will do).  Allocators keep their metadata outside the region, so an
/// offset-only region (GPU VRAM, file space, an ID range) works exactly like host memory, handing out offsets.
///
/// @code
///   kmem::MmapRegion heap(64 << 20, {.populate = false, .thp = kmem::ThpAdvice::huge});
///   kmem::OffsetRegion vram(std::uint64_t{16} << 30);       // 16 GiB of device memory, no host bytes
///   assert(vram.size() == std::uint64_t{16} << 30 && heap.data() != nullptr);
///   static_assert(kmem::Region<kmem::MmapRegion> && kmem::MmapRegion::addressable);
///   static_assert(kmem::Region<kmem::OffsetRegion> && !kmem::OffsetRegion::addressable);
/// @endcode
#pragma once

#include <bit>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include <sys/mman.h>
#include <unistd.h>

namespace kmem {

/// Satisfied by backing regions: size() and base() in bytes, and the `addressable` / `remappable` capabilities;
/// an addressable region also has data(), the host address of its first byte.
template <class R>
concept Region = requires(const R& r) {
    { r.size() } -> std::same_as<std::uint64_t>;
    { r.base() } -> std::same_as<std::uint64_t>;
    { R::addressable } -> std::convertible_to<bool>;
    { R::remappable } -> std::convertible_to<bool>;
}
&&(!R::addressable || requires(const R& r) {
    { r.data() } -> std::same_as<std::byte*>;
});

/// True when region type R holds host memory that can be read and written.
template <Region R>
inline constexpr bool is_addressable_v = R::addressable;
/// True when region type R can map its pages again at other addresses.
template <Region R>
inline constexpr bool is_remappable_v = R::remappable;

/// A buffer inside the region object itself: no system call, no heap (the kernel's static early buffers).
template <std::size_t Bytes, std::size_t Align = 4096>
class StaticRegion {
    static_assert(Bytes > 0, "StaticRegion needs at least one byte.");
    static_assert(std::has_single_bit(Align), "StaticRegion alignment must be a power of two.");

public:
    static constexpr bool addressable = true;              ///< Host memory.
    static constexpr bool remappable = false;              ///< Part of an object; cannot be mapped elsewhere.
    StaticRegion() = default;                              ///< The buffer is left uninitialised.
    StaticRegion(const StaticRegion&) = delete;            ///< Not copyable: allocators point into it.
    StaticRegion& operator=(const StaticRegion&) = delete; ///< Not copyable.
    /// The first byte.
    std::byte* data() const noexcept { return const_cast<std::byte*>(storage_); }
    /// Bytes in the buffer.
    std::uint64_t size() const noexcept { return Bytes; }
    /// Host address of the first byte.
    std::uint64_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(storage_); }

private:
    alignas(Align) std::byte storage_[Bytes];
};

/// Caller memory: a span the caller owns and keeps alive for the allocator's lifetime.
class SpanRegion {
public:
    static constexpr bool addressable = true; ///< Host memory.
    static constexpr bool remappable = false; ///< Arbitrary memory cannot be remapped.
    /// Manages `memory`; it need not be page-aligned (the allocator uses the aligned pages inside it).
    explicit SpanRegion(std::span<std::byte> memory) noexcept : mem_(memory) {}
    /// The first byte.
    std::byte* data() const noexcept { return mem_.data(); }
    /// Bytes in the span.
    std::uint64_t size() const noexcept { return mem_.size(); }
    /// Host address of the first byte.
    std::uint64_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(mem_.data()); }

private:
    std::span<std::byte> mem_;
};

namespace detail {
[[noreturn]] inline void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Throws std::invalid_argument: "kmem: <who> of <requested> bytes is too large: <why>".
[[noreturn]] inline void throw_too_large(const char* who, std::size_t requested, const std::string& why) {
    throw std::invalid_argument(std::string("kmem: ") + who + " of " + std::to_string(requested) +
                                " bytes is too large: " + why);
}

// `bytes` rounded up to a multiple of `page` (a power of two); throws std::invalid_argument naming `who` and the
// size requested when the rounded size does not fit in size_t (it would wrap to a small number, even to 0).
inline std::size_t round_up_to_page(const char* who, std::size_t bytes, std::size_t page) {
    if (bytes > std::numeric_limits<std::size_t>::max() - (page - 1))
        throw_too_large(who, bytes,
                        "rounded up to whole pages of " + std::to_string(page) +
                            " bytes it does not fit in size_t");
    return (bytes + page - 1) & ~(page - 1);
}

// The surplus map_anonymous maps so that it can trim the mapping to a start aligned to `align`.
constexpr std::size_t alignment_padding(std::size_t align) noexcept {
    return align > 4096 ? align : 0;
}

/// Owns one mmap'd range and unmaps it on destruction.
class Mapping {
public:
    Mapping() = default;
    Mapping(void* p, std::size_t n) noexcept : p_(static_cast<std::byte*>(p)), n_(n) {}
    Mapping(Mapping&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    Mapping& operator=(Mapping&& o) noexcept {
        if (this != &o) {
            reset();
            p_ = std::exchange(o.p_, nullptr);
            n_ = std::exchange(o.n_, 0);
        }
        return *this;
    }
    ~Mapping() { reset(); }
    void reset() noexcept {
        if (p_ != nullptr) ::munmap(p_, n_);
        p_ = nullptr;
        n_ = 0;
    }
    std::byte* data() const noexcept { return p_; }
    std::size_t size() const noexcept { return n_; }

private:
    std::byte* p_ = nullptr;
    std::size_t n_ = 0;
};

/// Maps `bytes` of anonymous memory aligned to `align` (a power of two, at least the system page size).
/// `advice` (an madvise value, or 0 for none) is given before MAP_POPULATE faults the pages in, so that
/// MADV_HUGEPAGE can back the populated range with huge pages.  Throws std::invalid_argument when `bytes` plus
/// the alignment padding does not fit in size_t, std::system_error when mmap or madvise fails.
inline Mapping map_anonymous(std::size_t bytes, std::size_t align, int extra_flags, int advice = 0) {
    if (bytes > std::numeric_limits<std::size_t>::max() - alignment_padding(align))
        throw_too_large("anonymous mapping", bytes,
                        "with the padding to align it to " + std::to_string(align) +
                            " bytes it does not fit in size_t");
    const std::size_t len = bytes + alignment_padding(align);
    void* p =
        ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw_errno("kmem: mmap of an anonymous region failed");
    auto addr = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t start = align > 4096 ? (addr + align - 1) & ~(std::uintptr_t{align} - 1) : addr;
    if (start != addr) ::munmap(p, start - addr);
    const std::uintptr_t end = start + bytes;
    if (addr + len > end) ::munmap(reinterpret_cast<void*>(end), addr + len - end);
    Mapping map(reinterpret_cast<void*>(start), bytes); // owns the range from here on, also if we throw
    if (advice != 0 && ::madvise(reinterpret_cast<void*>(start), bytes, advice) != 0 &&
        errno != EINVAL) // EINVAL: e.g. the kernel was built without THP; the advice is only advice.
        throw_errno("kmem: madvise for transparent huge pages failed");
    if ((extra_flags & MAP_POPULATE) != 0) {
        // MAP_POPULATE on the trimmed range: fault every page in now.
        if (::madvise(reinterpret_cast<void*>(start), bytes, MADV_WILLNEED) != 0)
            throw_errno("kmem: madvise");
        for (std::uintptr_t q = start; q < end; q += 4096) *reinterpret_cast<volatile char*>(q) = 0;
    }
    return map;
}
} // namespace detail

/// Transparent-hugepage advice for an MmapRegion (madvise MADV_HUGEPAGE / MADV_NOHUGEPAGE).
enum class ThpAdvice {
    none,   ///< Leave the system default.
    huge,   ///< MADV_HUGEPAGE: back the region with huge pages where possible.
    nohuge, ///< MADV_NOHUGEPAGE: never use huge pages.
};

/// Options for MmapRegion.
struct MmapOptions {
    bool populate = false;           ///< Fault every page in at construction (MAP_POPULATE).
    ThpAdvice thp = ThpAdvice::none; ///< Transparent-hugepage advice.
    std::size_t alignment = 0; ///< Alignment of the start (a power of two); 0 means the system page size.
};

/// Anonymous private memory from mmap, unmapped on destruction.
class MmapRegion {
public:
    static constexpr bool addressable = true; ///< Host memory.
    static constexpr bool remappable = false; ///< Anonymous private pages have no file to map again.
    /// Maps `bytes` (rounded up to the system page size).  Throws std::invalid_argument when `bytes` is zero,
    /// the alignment is not a power of two, or `bytes` is too large to round up to whole pages and align within
    /// size_t (the message names the size requested); std::system_error when mmap or madvise fails.
    explicit MmapRegion(std::size_t bytes, MmapOptions opts = {}) {
        if (bytes == 0) throw std::invalid_argument("kmem: MmapRegion needs a size above zero");
        if (opts.alignment != 0 && !std::has_single_bit(opts.alignment))
            throw std::invalid_argument("kmem: MmapRegion alignment must be a power of two");
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t requested = bytes;
        bytes = detail::round_up_to_page("MmapRegion", bytes, page);
        if (bytes > std::numeric_limits<std::size_t>::max() - detail::alignment_padding(opts.alignment))
            detail::throw_too_large("MmapRegion", requested,
                                    "with the padding to align it to " + std::to_string(opts.alignment) +
                                        " bytes it does not fit in size_t");
        // The THP advice goes in before the pages are populated, or populate would fault in small pages.
        const int advice = opts.thp == ThpAdvice::huge     ? MADV_HUGEPAGE
                           : opts.thp == ThpAdvice::nohuge ? MADV_NOHUGEPAGE
                                                           : 0;
        map_ = detail::map_anonymous(bytes, opts.alignment, opts.populate ? MAP_POPULATE : 0, advice);
    }
    /// The first byte.
    std::byte* data() const noexcept { return map_.data(); }
    /// Bytes mapped.
    std::uint64_t size() const noexcept { return map_.size(); }
    /// Host address of the first byte.
    std::uint64_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(map_.data()); }

private:
    detail::Mapping map_;
};

/// A view of part of a MemfdRegion mapped at another address; unmapped when destroyed.
class MemfdMapping {
public:
    MemfdMapping() = default; ///< An empty mapping.
    /// First byte of the view.
    std::byte* data() const noexcept { return map_.data(); }
    /// Length of the view in bytes.
    std::size_t size() const noexcept { return map_.size(); }

private:
    friend class MemfdRegion;
    explicit MemfdMapping(detail::Mapping m) noexcept : map_(std::move(m)) {}
    detail::Mapping map_;
};

/// Shared memory backed by a memfd: shareable with other processes (pass fd()) and remappable (map()).
class MemfdRegion {
public:
    static constexpr bool addressable = true; ///< Host memory.
    static constexpr bool remappable = true; ///< Any page range can be mapped again with map() / map_fixed().
    /// Creates a memfd of `bytes` (rounded up to the page size) and maps it shared.  Throws
    /// std::invalid_argument when `bytes` is zero or too large (rounded up to whole pages it does not fit in
    /// size_t, or a file cannot be that long: above the largest off_t); the message names the size requested.
    /// Throws std::system_error when memfd_create, ftruncate or mmap fails.
    explicit MemfdRegion(std::size_t bytes, const char* name = "kmem") {
        if (bytes == 0) throw std::invalid_argument("kmem: MemfdRegion needs a size above zero");
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t requested = bytes;
        bytes = detail::round_up_to_page("MemfdRegion", bytes, page);
        constexpr auto max_file = static_cast<std::size_t>(std::numeric_limits<off_t>::max());
        if (bytes > max_file)
            detail::throw_too_large("MemfdRegion", requested,
                                    "a memfd holds at most " + std::to_string(max_file) +
                                        " bytes (the largest off_t)");
        fd_ = ::memfd_create(name, MFD_CLOEXEC);
        if (fd_ < 0) detail::throw_errno("kmem: memfd_create failed");
        if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
            const int e = errno;
            ::close(fd_);
            throw std::system_error(e, std::generic_category(), "kmem: ftruncate of the memfd failed");
        }
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
        if (p == MAP_FAILED) {
            const int e = errno;
            ::close(fd_);
            throw std::system_error(e, std::generic_category(), "kmem: mmap of the memfd failed");
        }
        map_ = detail::Mapping(p, bytes);
    }
    MemfdRegion(MemfdRegion&& o) noexcept
        : map_(std::move(o.map_)), fd_(std::exchange(o.fd_, -1)) {} ///< Moves.
    MemfdRegion& operator=(MemfdRegion&&) = delete;                 ///< Not assignable.
    /// Unmaps and closes the memfd (other mappings and other processes keep the pages alive).
    ~MemfdRegion() {
        map_.reset();
        if (fd_ >= 0) ::close(fd_);
    }
    /// The first byte of the primary mapping.
    std::byte* data() const noexcept { return map_.data(); }
    /// Bytes in the region.
    std::uint64_t size() const noexcept { return map_.size(); }
    /// Host address of the first byte of the primary mapping.
    std::uint64_t base() const noexcept { return reinterpret_cast<std::uintptr_t>(map_.data()); }
    /// The memfd; another process that receives it (fork, SCM_RIGHTS) can mmap the same pages.
    int fd() const noexcept { return fd_; }
    /// Maps `length` bytes starting at byte `offset` of the region at a new address; both page-aligned.
    MemfdMapping map(std::uint64_t offset, std::size_t length) const {
        check_range(offset, length);
        void* p =
            ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, static_cast<off_t>(offset));
        if (p == MAP_FAILED) detail::throw_errno("kmem: mmap of a memfd view failed");
        return MemfdMapping(detail::Mapping(p, length));
    }
    /// Maps `length` bytes at byte `offset` over the caller's address range `at` (MAP_FIXED); the caller owns
    /// `at` (for instance a range reserved by VirtualMap) and unmaps it.
    void map_fixed(void* at, std::uint64_t offset, std::size_t length) const {
        check_range(offset, length);
        if (::mmap(at, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_,
                   static_cast<off_t>(offset)) == MAP_FAILED)
            detail::throw_errno("kmem: fixed mmap of a memfd view failed");
    }

private:
    void check_range(std::uint64_t offset, std::size_t length) const {
        const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
        if (length == 0 || offset % page != 0 || length % page != 0 || offset > size() ||
            length > size() - offset)
            throw std::invalid_argument("kmem: memfd view [" + std::to_string(offset) + ", +" +
                                        std::to_string(length) +
                                        ") is empty, unaligned or outside the region");
    }
    detail::Mapping map_;
    int fd_ = -1;
};

/// A range of offsets with no host memory behind it: device memory (GPU VRAM), file space, ID ranges.
class OffsetRegion {
public:
    static constexpr bool addressable = false; ///< No host memory; allocators hand out offsets.
    static constexpr bool remappable = false;  ///< Nothing to map.
    /// A range of `size` bytes starting at device address / offset `base`.  Throws std::invalid_argument when
    /// the range wraps past 2^64, that is when its end, base + size, does not fit in 64 bits.
    explicit constexpr OffsetRegion(std::uint64_t size, std::uint64_t base = 0) : size_(size), base_(base) {
        if (size > std::numeric_limits<std::uint64_t>::max() - base) throw_wrapping_range(size, base);
    }
    /// Bytes in the range.
    constexpr std::uint64_t size() const noexcept { return size_; }
    /// The device address / offset of the first byte.
    constexpr std::uint64_t base() const noexcept { return base_; }

private:
    [[noreturn]] static void throw_wrapping_range(std::uint64_t size, std::uint64_t base) {
        throw std::invalid_argument("kmem: OffsetRegion of " + std::to_string(size) + " bytes at base " +
                                    std::to_string(base) +
                                    " wraps past 2^64: base + size does not fit in 64 bits");
    }
    std::uint64_t size_;
    std::uint64_t base_;
};

} // namespace kmem
