/// @file
/// GFP ("get free pages") flags as types — mirrors include/linux/gfp_types.h.
///
/// Every flag is a distinct type, so a request's flags are known to the compiler and a misuse (two zone
/// modifiers, `nofail` with `noretry`, a sleeping request from atomic context, a zone the allocator does not
/// have) is a compile error with one readable sentence.  Flags known only at run time use kmem::gfp_t, which
/// applies the same rules at run time: both read one table of rules (kmem/detail/gfp_rules.hpp), so a rule
/// and its sentence are written once.  Exact allocations (alloc_pages_exact) add two rules: gfp::check_exact
/// and gfp_t::validate_exact.
///
/// @code
///   constexpr auto flags = kmem::gfp::kernel | kmem::gfp::zero;   // type gfp::Flags<0xdc0>
///   static_assert(flags.value == (kmem::gfp::kernel.value | kmem::gfp::zero.value));
///   static_assert(kmem::gfp::may_sleep(flags));
///   kmem::gfp_t dynamic = flags;                                  // runtime form
///   assert(dynamic.validate() == kmem::gfp::Problem::none);
/// @endcode
#pragma once

#include <array>
#include <bit>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace kmem {

/// The zones of the kernel's memory model (enum zone_type in include/linux/mmzone.h), lowest first.
enum class ZoneType : std::uint8_t {
    dma,     ///< ZONE_DMA: memory reachable by legacy DMA devices.
    dma32,   ///< ZONE_DMA32: memory below 4 GiB.
    normal,  ///< ZONE_NORMAL: ordinary memory.
    highmem, ///< ZONE_HIGHMEM: memory not permanently mapped.
    movable, ///< ZONE_MOVABLE: memory that only holds movable allocations.
};

/// The kernel's name of a zone as /proc/buddyinfo prints it ("DMA", "DMA32", "Normal", "HighMem", "Movable").
constexpr std::string_view zone_name(ZoneType z) noexcept {
    constexpr std::array<std::string_view, 5> names{"DMA", "DMA32", "Normal", "HighMem", "Movable"};
    return names[static_cast<std::size_t>(z)];
}

/// GFP flags: the bits, their composites, and the rules that govern them (include/linux/gfp_types.h).
namespace gfp {

/// Bit positions, numbered as the kernel numbers the ___GFP_*_BIT enum.
namespace bits {
inline constexpr std::uint32_t dma = 1u << 0;                               ///< ___GFP_DMA
inline constexpr std::uint32_t highmem = 1u << 1;                           ///< ___GFP_HIGHMEM
inline constexpr std::uint32_t dma32 = 1u << 2;                             ///< ___GFP_DMA32
inline constexpr std::uint32_t movable = 1u << 3;                           ///< ___GFP_MOVABLE
inline constexpr std::uint32_t reclaimable = 1u << 4;                       ///< ___GFP_RECLAIMABLE
inline constexpr std::uint32_t high = 1u << 5;                              ///< ___GFP_HIGH
inline constexpr std::uint32_t io = 1u << 6;                                ///< ___GFP_IO
inline constexpr std::uint32_t fs = 1u << 7;                                ///< ___GFP_FS
inline constexpr std::uint32_t zero = 1u << 8;                              ///< ___GFP_ZERO
inline constexpr std::uint32_t direct_reclaim = 1u << 10;                   ///< ___GFP_DIRECT_RECLAIM
inline constexpr std::uint32_t kswapd_reclaim = 1u << 11;                   ///< ___GFP_KSWAPD_RECLAIM
inline constexpr std::uint32_t write = 1u << 12;                            ///< ___GFP_WRITE
inline constexpr std::uint32_t nowarn = 1u << 13;                           ///< ___GFP_NOWARN
inline constexpr std::uint32_t retry_mayfail = 1u << 14;                    ///< ___GFP_RETRY_MAYFAIL
inline constexpr std::uint32_t nofail = 1u << 15;                           ///< ___GFP_NOFAIL
inline constexpr std::uint32_t noretry = 1u << 16;                          ///< ___GFP_NORETRY
inline constexpr std::uint32_t memalloc = 1u << 17;                         ///< ___GFP_MEMALLOC
inline constexpr std::uint32_t comp = 1u << 18;                             ///< ___GFP_COMP
inline constexpr std::uint32_t nomemalloc = 1u << 19;                       ///< ___GFP_NOMEMALLOC
inline constexpr std::uint32_t hardwall = 1u << 20;                         ///< ___GFP_HARDWALL
inline constexpr std::uint32_t thisnode = 1u << 21;                         ///< ___GFP_THISNODE
inline constexpr std::uint32_t account = 1u << 22;                          ///< ___GFP_ACCOUNT
inline constexpr std::uint32_t zone_mask = dma | highmem | dma32 | movable; ///< GFP_ZONEMASK
inline constexpr std::uint32_t reclaim = direct_reclaim | kswapd_reclaim;   ///< __GFP_RECLAIM
inline constexpr std::uint32_t all = (1u << 23) - 1u - (1u << 9);           ///< every defined bit
} // namespace bits

/// A set of GFP flags known at compile time; each distinct set is a distinct type.
template <std::uint32_t Bits>
struct Flags {
    static_assert((Bits & ~bits::all) == 0, "gfp::Flags holds a bit that is not a GFP flag.");
    /// The raw bit mask (the kernel's gfp_t value).
    static constexpr std::uint32_t value = Bits;
    /// True when every bit of `other` is set here.
    template <std::uint32_t Other>
    constexpr bool has(Flags<Other>) const noexcept {
        return (Bits & Other) == Other;
    }
};

/// The union of two flag sets; its type is the type of the union.
template <std::uint32_t A, std::uint32_t B>
constexpr Flags<A | B> operator|(Flags<A>, Flags<B>) noexcept {
    return {};
}
/// The intersection of two flag sets.
template <std::uint32_t A, std::uint32_t B>
constexpr Flags<A & B> operator&(Flags<A>, Flags<B>) noexcept {
    return {};
}
/// The complement of a flag set, restricted to defined bits.
template <std::uint32_t A>
constexpr Flags<~A & bits::all> operator~(Flags<A>) noexcept {
    return {};
}

namespace detail {
template <class T>
struct is_flags : std::false_type {};
template <std::uint32_t B>
struct is_flags<Flags<B>> : std::true_type {};
} // namespace detail

/// Satisfied by the compile-time flag types (gfp::Flags<Bits>).
template <class T>
concept FlagSet = detail::is_flags<std::remove_cvref_t<T>>::value;

// --- the bits, lower-case, each its own type -------------------------------------------------------------
inline constexpr Flags<bits::dma> dma{};                 ///< __GFP_DMA / GFP_DMA: ZONE_DMA only.
inline constexpr Flags<bits::highmem> highmem{};         ///< __GFP_HIGHMEM: ZONE_HIGHMEM allowed.
inline constexpr Flags<bits::dma32> dma32{};             ///< __GFP_DMA32 / GFP_DMA32: ZONE_DMA32 or lower.
inline constexpr Flags<bits::movable> movable{};         ///< __GFP_MOVABLE: the page can be migrated.
inline constexpr Flags<bits::reclaimable> reclaimable{}; ///< __GFP_RECLAIMABLE: a shrinker can free it.
inline constexpr Flags<bits::high> high{};               ///< __GFP_HIGH: high priority, may use reserves.
inline constexpr Flags<bits::io> io{};                   ///< __GFP_IO: may start physical I/O.
inline constexpr Flags<bits::fs> fs{};                   ///< __GFP_FS: may call into the filesystem.
inline constexpr Flags<bits::zero> zero{};               ///< __GFP_ZERO: return zeroed memory.
inline constexpr Flags<bits::direct_reclaim>
    direct_reclaim{}; ///< __GFP_DIRECT_RECLAIM: may sleep to reclaim.
inline constexpr Flags<bits::kswapd_reclaim> kswapd_reclaim{}; ///< __GFP_KSWAPD_RECLAIM: may wake kswapd.
inline constexpr Flags<bits::reclaim> reclaim{};               ///< __GFP_RECLAIM: direct and kswapd reclaim.
inline constexpr Flags<bits::write> write{};                 ///< __GFP_WRITE: the caller will dirty the page.
inline constexpr Flags<bits::nowarn> nowarn{};               ///< __GFP_NOWARN: no failure report.
inline constexpr Flags<bits::retry_mayfail> retry_mayfail{}; ///< __GFP_RETRY_MAYFAIL: retry hard, may fail.
inline constexpr Flags<bits::nofail> nofail{};         ///< __GFP_NOFAIL: the caller cannot handle failure.
inline constexpr Flags<bits::noretry> noretry{};       ///< __GFP_NORETRY: fail fast, no retries.
inline constexpr Flags<bits::memalloc> memalloc{};     ///< __GFP_MEMALLOC: may use all reserves.
inline constexpr Flags<bits::nomemalloc> nomemalloc{}; ///< __GFP_NOMEMALLOC: never use reserves.
inline constexpr Flags<bits::comp> comp{};             ///< __GFP_COMP: build a compound page.
inline constexpr Flags<bits::hardwall> hardwall{};     ///< __GFP_HARDWALL: enforce the cpuset.
inline constexpr Flags<bits::thisnode> thisnode{};     ///< __GFP_THISNODE: no node fallback.
inline constexpr Flags<bits::account> account{};       ///< __GFP_ACCOUNT: charge to the memory cgroup.

// --- the composites, with the kernel's definitions --------------------------------------------------------
inline constexpr auto atomic = high | kswapd_reclaim;        ///< GFP_ATOMIC: cannot sleep, may use reserves.
inline constexpr auto kernel = reclaim | io | fs;            ///< GFP_KERNEL: ordinary kernel allocation.
inline constexpr auto kernel_account = kernel | account;     ///< GFP_KERNEL_ACCOUNT: charged GFP_KERNEL.
inline constexpr auto nowait = kswapd_reclaim;               ///< GFP_NOWAIT: cannot sleep, no reserves.
inline constexpr auto noio = reclaim;                        ///< GFP_NOIO: may reclaim, no I/O.
inline constexpr auto nofs = reclaim | io;                   ///< GFP_NOFS: may reclaim and do I/O, no FS.
inline constexpr auto user = reclaim | io | fs | hardwall;   ///< GFP_USER: for user-space pages.
inline constexpr auto highuser = user | highmem;             ///< GFP_HIGHUSER: user pages, highmem allowed.
inline constexpr auto highuser_movable = highuser | movable; ///< GFP_HIGHUSER_MOVABLE: movable user pages.
inline constexpr auto transhuge_light =
    (highuser_movable | comp | nomemalloc | nowarn) & ~reclaim; ///< GFP_TRANSHUGE_LIGHT
inline constexpr auto transhuge =
    transhuge_light | direct_reclaim; ///< GFP_TRANSHUGE: THP allocation that may compact.
// GFP_DMA and GFP_DMA32 are the bits gfp::dma and gfp::dma32 themselves.

/// The type of a flag constant, e.g. `gfp::type<gfp::kernel>` is the type of gfp::kernel.
template <auto F>
using type = std::remove_cvref_t<decltype(F)>;

/// True when the flags allow the allocator to sleep (gfpflags_allow_blocking: __GFP_DIRECT_RECLAIM is set).
constexpr bool may_sleep(std::uint32_t b) noexcept {
    return (b & bits::direct_reclaim) != 0;
}
/// True when compile-time flags allow blocking.
template <std::uint32_t B>
constexpr bool may_sleep(Flags<B>) noexcept {
    return may_sleep(B);
}

/// The highest zone the flags allow (gfp_zone() in the kernel).  Invalid zone combinations yield normal.
constexpr ZoneType zone_of(std::uint32_t b) noexcept {
    switch (b & bits::zone_mask) {
    case bits::dma:
        return ZoneType::dma;
    case bits::dma32:
        return ZoneType::dma32;
    case bits::highmem:
        return ZoneType::highmem;
    case bits::movable | bits::highmem:
        return ZoneType::movable;
    case bits::movable:
        return ZoneType::movable;
    default:
        return ZoneType::normal;
    }
}

/// The rule a flag set breaks, if any; Problem::none when it is valid.
enum class Problem : std::uint8_t {
    none,                          ///< Valid.
    dma_and_highmem,               ///< __GFP_DMA | __GFP_HIGHMEM.
    dma_and_dma32,                 ///< __GFP_DMA | __GFP_DMA32.
    dma32_and_highmem,             ///< __GFP_DMA32 | __GFP_HIGHMEM.
    movable_and_dma,               ///< __GFP_MOVABLE with __GFP_DMA or __GFP_DMA32.
    movable_and_reclaimable,       ///< __GFP_MOVABLE | __GFP_RECLAIMABLE.
    nofail_without_direct_reclaim, ///< __GFP_NOFAIL without __GFP_DIRECT_RECLAIM.
    nofail_and_noretry,            ///< __GFP_NOFAIL | __GFP_NORETRY.
    unknown_bits,                  ///< A bit that is not a GFP flag.
    exact_compound,                ///< __GFP_COMP on an exact allocation (alloc_pages_exact strips it).
    exact_highmem,                 ///< __GFP_HIGHMEM on an exact allocation (alloc_pages_exact strips it).
    slab_dma32,                    ///< __GFP_DMA32 on a slab or kmalloc allocation (GFP_SLAB_BUG_MASK).
    slab_highmem,                  ///< __GFP_HIGHMEM on a slab or kmalloc allocation (GFP_SLAB_BUG_MASK).
};

} // namespace gfp
} // namespace kmem

#include <kmem/detail/gfp_rules.hpp> // the one table of rules, read by everything below

namespace kmem {
namespace gfp {

/// The first rule the flags break (the same rules the compile-time checks enforce), or Problem::none.
constexpr Problem validate(std::uint32_t b) noexcept {
    return detail::first_broken(b, detail::Scope::every);
}

/// The first rule flags for an exact allocation break, or Problem::none: the rules of validate(), then those
/// of alloc_pages_exact() in the kernel (no __GFP_COMP, no __GFP_HIGHMEM), reported as
/// Problem::exact_compound and Problem::exact_highmem.
constexpr Problem validate_exact(std::uint32_t b) noexcept {
    const Problem p = validate(b);
    return p != Problem::none ? p : detail::first_broken(b, detail::Scope::exact);
}

/// The first rule flags for a slab or kmalloc allocation break, or Problem::none: the rules of validate(), then
/// the kernel's GFP_SLAB_BUG_MASK (no __GFP_DMA32, no __GFP_HIGHMEM), reported as Problem::slab_dma32 and
/// Problem::slab_highmem.
constexpr Problem validate_slab(std::uint32_t b) noexcept {
    const Problem p = validate(b);
    return p != Problem::none ? p : detail::first_broken(b, detail::Scope::slab);
}

/// The one-sentence explanation of a Problem; the compile-time checks print the same sentences.
constexpr std::string_view describe(Problem p) noexcept {
    if (p == Problem::none) return "the GFP flags are valid.";
    const std::string_view s = detail::sentence_of(p);
    return s.empty() ? "unknown problem." : s;
}

/// @cond KMEM_INTERNAL
// A C++20 static_assert message must be a string literal, so each rule's sentence is repeated here as one
// and, where the check is defined, compared with the sentence in detail::rules.  Only for the checks below.
#define KMEM_GFP_RULE_ASSERT(broken, problem, sentence)                                                      \
    static_assert(::kmem::gfp::detail::sentence_of(problem) == std::string_view(sentence),                   \
                  "this sentence differs from the one in kmem/detail/gfp_rules.hpp for " #problem);          \
    static_assert((broken) != (problem), sentence)
/// @endcond

/// The compile-time form of validate(): the first rule the flags break is a static_assert with the sentence
/// describe() returns.
template <std::uint32_t B>
constexpr void check(Flags<B>) noexcept {
    constexpr Problem broken = validate(B);
    KMEM_GFP_RULE_ASSERT(broken, Problem::unknown_bits, "the mask holds a bit that is not a GFP flag.");
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::dma_and_highmem,
        "gfp::dma and gfp::highmem name two different zones; a request may name one zone modifier.");
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::dma_and_dma32,
        "gfp::dma and gfp::dma32 name two different zones; a request may name one zone modifier.");
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::dma32_and_highmem,
        "gfp::dma32 and gfp::highmem name two different zones; a request may name one zone modifier.");
    KMEM_GFP_RULE_ASSERT(broken, Problem::movable_and_dma,
                         "gfp::movable cannot be combined with gfp::dma or gfp::dma32; movable memory lives "
                         "in ZONE_MOVABLE or ZONE_HIGHMEM.");
    KMEM_GFP_RULE_ASSERT(broken, Problem::movable_and_reclaimable,
                         "gfp::movable and gfp::reclaimable pick two different migrate types; use one.");
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::nofail_without_direct_reclaim,
        "gfp::nofail needs gfp::direct_reclaim: an allocation that may not fail must be allowed to sleep.");
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::nofail_and_noretry,
        "gfp::nofail and gfp::noretry contradict each other: one never fails, the other fails fast.");
    static_assert(detail::count(detail::Scope::every) == 8,
                  "each rule of scope `every` in detail/gfp_rules.hpp needs its KMEM_GFP_RULE_ASSERT here.");
}

/// The compile-time form of validate_exact(), for the flags of an exact allocation (alloc_pages_exact() and
/// alloc_pages_exact_nid() in the kernel, which WARN on __GFP_COMP and __GFP_HIGHMEM): check(), then a
/// static_assert each for gfp::comp and gfp::highmem (which gfp::highuser and its relatives include).
template <std::uint32_t B>
constexpr void check_exact(Flags<B> flags) noexcept {
    check(flags);
    constexpr Problem broken = validate_exact(B); // a rule of check() comes first and is reported there
    KMEM_GFP_RULE_ASSERT(broken, Problem::exact_compound,
                         "gfp::comp cannot be used for an exact allocation: the block is split into single "
                         "pages, so it is never a compound page.");
    KMEM_GFP_RULE_ASSERT(broken, Problem::exact_highmem,
                         "gfp::highmem cannot be used for an exact allocation: its pages must be permanently "
                         "mapped (note that gfp::highuser includes gfp::highmem).");
    static_assert(detail::count(detail::Scope::exact) == 2,
                  "each rule of scope `exact` in detail/gfp_rules.hpp needs its KMEM_GFP_RULE_ASSERT here.");
}

/// The compile-time form of validate_slab(), for the flags of a slab or kmalloc allocation: check(), then a
/// static_assert each for gfp::dma32 and gfp::highmem (the kernel's GFP_SLAB_BUG_MASK).
template <std::uint32_t B>
constexpr void check_slab(Flags<B> flags) noexcept {
    check(flags);
    constexpr Problem broken = validate_slab(B);
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::slab_dma32,
        "gfp::dma32 cannot be used for a slab or kmalloc allocation (GFP_SLAB_BUG_MASK); use "
        "gfp::dma, or allocate pages.");
    KMEM_GFP_RULE_ASSERT(
        broken, Problem::slab_highmem,
        "gfp::highmem cannot be used for a slab or kmalloc allocation (GFP_SLAB_BUG_MASK): slab "
        "memory must be permanently mapped (note that gfp::highuser includes gfp::highmem).");
    static_assert(detail::count(detail::Scope::slab) == 2,
                  "each rule of scope `slab` in detail/gfp_rules.hpp needs its KMEM_GFP_RULE_ASSERT here.");
}

#undef KMEM_GFP_RULE_ASSERT

/// The compile-time rule on order: __GFP_NOFAIL is supported only up to order 1 (the kernel warns above it).
template <unsigned Order, std::uint32_t B>
constexpr void check_order(Flags<B>) noexcept {
    static_assert(!(B & bits::nofail) || Order <= 1,
                  "gfp::nofail is only supported up to order 1; a larger request that may not fail can "
                  "deadlock the allocator.");
}

/// The kernel's names for the composites, longest first, then the single bits (as %pGg prints them).
inline constexpr std::array<std::pair<std::uint32_t, std::string_view>, 34> names{{
    {transhuge.value, "GFP_TRANSHUGE"},
    {transhuge_light.value, "GFP_TRANSHUGE_LIGHT"},
    {highuser_movable.value, "GFP_HIGHUSER_MOVABLE"},
    {highuser.value, "GFP_HIGHUSER"},
    {user.value, "GFP_USER"},
    {kernel_account.value, "GFP_KERNEL_ACCOUNT"},
    {kernel.value, "GFP_KERNEL"},
    {nofs.value, "GFP_NOFS"},
    {atomic.value, "GFP_ATOMIC"},
    {noio.value, "GFP_NOIO"},
    {nowait.value, "GFP_NOWAIT"},
    {bits::dma, "GFP_DMA"},
    {bits::dma32, "GFP_DMA32"},
    {bits::highmem, "__GFP_HIGHMEM"},
    {bits::movable, "__GFP_MOVABLE"},
    {bits::reclaimable, "__GFP_RECLAIMABLE"},
    {bits::high, "__GFP_HIGH"},
    {bits::io, "__GFP_IO"},
    {bits::fs, "__GFP_FS"},
    {bits::zero, "__GFP_ZERO"},
    {bits::direct_reclaim, "__GFP_DIRECT_RECLAIM"},
    {bits::kswapd_reclaim, "__GFP_KSWAPD_RECLAIM"},
    {bits::write, "__GFP_WRITE"},
    {bits::nowarn, "__GFP_NOWARN"},
    {bits::retry_mayfail, "__GFP_RETRY_MAYFAIL"},
    {bits::nofail, "__GFP_NOFAIL"},
    {bits::noretry, "__GFP_NORETRY"},
    {bits::memalloc, "__GFP_MEMALLOC"},
    {bits::comp, "__GFP_COMP"},
    {bits::nomemalloc, "__GFP_NOMEMALLOC"},
    {bits::hardwall, "__GFP_HARDWALL"},
    {bits::thisnode, "__GFP_THISNODE"},
    {bits::account, "__GFP_ACCOUNT"},
    {0u, ""},
}};

/// Names a mask as the kernel's %pGg does: composites first, then the remaining bits, joined by '|'.
inline std::string to_string(std::uint32_t b) {
    std::string out;
    std::uint32_t rest = b;
    for (const auto& [mask, name] : names) {
        if (mask == 0 || (rest & mask) != mask) continue;
        if (!out.empty()) out += '|';
        out += name;
        rest &= ~mask;
    }
    if (rest != 0 || out.empty()) {
        constexpr char hex[] = "0123456789abcdef";
        std::string h = "0x";
        bool lead = true;
        for (int shift = 28; shift >= 0; shift -= 4) {
            const unsigned nib = (rest >> shift) & 0xfu;
            if (nib == 0 && lead && shift != 0) continue;
            lead = false;
            h += hex[nib];
        }
        if (!out.empty()) out += '|';
        out += h;
    }
    return out;
}

} // namespace gfp

/// GFP flags known only at run time (the kernel's gfp_t); built from any compile-time flag set.
class gfp_t {
public:
    /// The empty mask (0).
    constexpr gfp_t() noexcept = default;
    /// Converts a compile-time flag set; no checks here, they run where the flags are used.
    template <std::uint32_t B>
    constexpr gfp_t(gfp::Flags<B>) noexcept : bits_(B) {} // NOLINT(google-explicit-constructor)
    /// Wraps a raw mask, e.g. one read from a configuration; validate() says whether it is usable.
    static constexpr gfp_t from_bits(std::uint32_t b) noexcept {
        gfp_t g;
        g.bits_ = b;
        return g;
    }
    /// The raw mask.
    constexpr std::uint32_t value() const noexcept { return bits_; }
    /// True when every bit of `other` is set.
    constexpr bool has(gfp_t other) const noexcept { return (bits_ & other.bits_) == other.bits_; }
    /// True when the flags allow sleeping (gfpflags_allow_blocking).
    constexpr bool may_sleep() const noexcept { return gfp::may_sleep(bits_); }
    /// The highest zone these flags allow (gfp_zone).
    constexpr ZoneType zone() const noexcept { return gfp::zone_of(bits_); }
    /// The first rule these flags break, or gfp::Problem::none.
    constexpr gfp::Problem validate() const noexcept { return gfp::validate(bits_); }
    /// The first rule these flags break as the flags of an exact allocation (alloc_pages_exact), or
    /// gfp::Problem::none: the rules of validate(), then gfp::Problem::exact_compound and exact_highmem.
    constexpr gfp::Problem validate_exact() const noexcept { return gfp::validate_exact(bits_); }
    /// The first rule these flags break for a slab or kmalloc allocation, or gfp::Problem::none: the rules of
    /// validate(), then gfp::Problem::slab_dma32 and slab_highmem (GFP_SLAB_BUG_MASK).
    constexpr gfp::Problem validate_slab() const noexcept { return gfp::validate_slab(bits_); }
    /// The flags in the kernel's %pGg spelling, e.g. "GFP_KERNEL|__GFP_ZERO".
    std::string to_string() const { return gfp::to_string(bits_); }
    /// Union.
    friend constexpr gfp_t operator|(gfp_t a, gfp_t b) noexcept { return from_bits(a.bits_ | b.bits_); }
    /// Intersection.
    friend constexpr gfp_t operator&(gfp_t a, gfp_t b) noexcept { return from_bits(a.bits_ & b.bits_); }
    /// Complement within the defined bits.
    friend constexpr gfp_t operator~(gfp_t a) noexcept { return from_bits(~a.bits_ & gfp::bits::all); }
    /// Union in place.
    constexpr gfp_t& operator|=(gfp_t b) noexcept { return *this = *this | b; }
    /// Same mask.
    friend constexpr bool operator==(gfp_t, gfp_t) noexcept = default;

private:
    std::uint32_t bits_ = 0;
};

/// A call-site context token: the caller runs in atomic context and must not sleep (in_atomic()).
struct AtomicContext {
    /// Code in this context cannot sleep.
    static constexpr bool may_sleep = false;
};
/// A call-site context token: the caller runs in process context and may sleep.
struct ProcessContext {
    /// Code in this context can sleep.
    static constexpr bool may_sleep = true;
};
/// Token to pass as the first argument of an allocation made from atomic context.
inline constexpr AtomicContext atomic_context{};
/// Token to pass as the first argument of an allocation made from process context.
inline constexpr ProcessContext process_context{};

/// Satisfied by the call-site context tokens (AtomicContext, ProcessContext).
template <class C>
concept CallContext = std::same_as<std::remove_cvref_t<C>, AtomicContext> ||
    std::same_as<std::remove_cvref_t<C>, ProcessContext>;

namespace gfp {
/// The context rule: flags that may sleep cannot be used from a call site declared atomic.
template <CallContext C, std::uint32_t B>
constexpr void check_context(C, Flags<B>) noexcept {
    static_assert(std::remove_cvref_t<C>::may_sleep || !(B & bits::direct_reclaim),
                  "these GFP flags may sleep (gfp::direct_reclaim) but the call site is declared atomic; use "
                  "gfp::atomic or gfp::nowait.");
}
} // namespace gfp

} // namespace kmem
