// The GFP rules, written once (not part of the API): one table that both the run-time checks
// (gfp::validate, gfp::validate_exact, gfp::describe) and the compile-time checks (gfp::check,
// gfp::check_exact) read.
//
// Each rule is a gfp::Problem code, a test over the raw mask that is true when the rule is broken, and the
// one sentence that explains it.  The run-time checks walk the table and report the first broken rule.  A
// C++20 static_assert message must be a string literal, so the compile-time checks repeat each sentence as a
// literal and check it against this table where they are defined: the two cannot drift apart.
//
// This file is part of <kmem/gfp.hpp>, which includes it once gfp::bits and gfp::Problem are declared;
// include that header, not this one.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kmem::gfp::detail {

/// Which requests a rule governs.
enum class Scope : std::uint8_t {
    every, ///< Every request (gfp::validate, gfp::check).
    exact, ///< Exact allocations only, on top of the rules for every request (alloc_pages_exact).
    slab,  ///< Slab and kmalloc allocations, on top of the rules for every request (GFP_SLAB_BUG_MASK).
};

/// A rule's test over a raw mask: broken when every bit of `all` is set, at least one bit of `any` is set
/// (when `any` is not 0), and no bit of `none` is set.
struct BitTest {
    std::uint32_t all = 0;  ///< Bits that must all be set for the rule to be broken.
    std::uint32_t any = 0;  ///< Bits of which one must be set (ignored when 0).
    std::uint32_t none = 0; ///< Bits that must all be clear.
    /// True when mask `b` breaks the rule.
    constexpr bool operator()(std::uint32_t b) const noexcept {
        return (b & all) == all && (any == 0 || (b & any) != 0) && (b & none) == 0;
    }
};

/// One GFP rule: its code, the requests it governs, when it is broken, and the sentence that explains it.
struct Rule {
    Problem code;              ///< What validate() returns when this rule is the first one broken.
    Scope scope;               ///< Which requests the rule governs.
    BitTest broken;            ///< True for a mask that breaks the rule.
    std::string_view sentence; ///< The one readable sentence: describe() returns it, static_assert prints it.
};

/// Every rule, in the order the run-time checks try them (the unknown-bits rule first).
inline constexpr std::array rules{
    Rule{Problem::unknown_bits,
         Scope::every,
         {.any = ~bits::all},
         "the mask holds a bit that is not a GFP flag."},
    Rule{Problem::dma_and_highmem,
         Scope::every,
         {.all = bits::dma | bits::highmem},
         "gfp::dma and gfp::highmem name two different zones; a request may name one zone modifier."},
    Rule{Problem::dma_and_dma32,
         Scope::every,
         {.all = bits::dma | bits::dma32},
         "gfp::dma and gfp::dma32 name two different zones; a request may name one zone modifier."},
    Rule{Problem::dma32_and_highmem,
         Scope::every,
         {.all = bits::dma32 | bits::highmem},
         "gfp::dma32 and gfp::highmem name two different zones; a request may name one zone modifier."},
    Rule{Problem::movable_and_dma,
         Scope::every,
         {.all = bits::movable, .any = bits::dma | bits::dma32},
         "gfp::movable cannot be combined with gfp::dma or gfp::dma32; movable memory lives in ZONE_MOVABLE "
         "or ZONE_HIGHMEM."},
    Rule{Problem::movable_and_reclaimable,
         Scope::every,
         {.all = bits::movable | bits::reclaimable},
         "gfp::movable and gfp::reclaimable pick two different migrate types; use one."},
    Rule{Problem::nofail_without_direct_reclaim,
         Scope::every,
         {.all = bits::nofail, .none = bits::direct_reclaim},
         "gfp::nofail needs gfp::direct_reclaim: an allocation that may not fail must be allowed to sleep."},
    Rule{Problem::nofail_and_noretry,
         Scope::every,
         {.all = bits::nofail | bits::noretry},
         "gfp::nofail and gfp::noretry contradict each other: one never fails, the other fails fast."},
    // alloc_pages_exact() WARNs on __GFP_COMP and __GFP_HIGHMEM and strips them (mm/page_alloc.c).
    Rule{Problem::exact_compound,
         Scope::exact,
         {.all = bits::comp},
         "gfp::comp cannot be used for an exact allocation: the block is split into single pages, so it is "
         "never a compound page."},
    Rule{Problem::exact_highmem,
         Scope::exact,
         {.all = bits::highmem},
         "gfp::highmem cannot be used for an exact allocation: its pages must be permanently mapped (note "
         "that gfp::highuser includes gfp::highmem)."},
    // Slab objects live in permanently mapped memory: __GFP_DMA32 and __GFP_HIGHMEM are in GFP_SLAB_BUG_MASK
    // (mm/slab.h) and the kernel BUG()s on them.
    Rule{Problem::slab_dma32,
         Scope::slab,
         {.all = bits::dma32},
         "gfp::dma32 cannot be used for a slab or kmalloc allocation (GFP_SLAB_BUG_MASK); use gfp::dma, or "
         "allocate pages."},
    Rule{Problem::slab_highmem,
         Scope::slab,
         {.all = bits::highmem},
         "gfp::highmem cannot be used for a slab or kmalloc allocation (GFP_SLAB_BUG_MASK): slab memory must "
         "be permanently mapped (note that gfp::highuser includes gfp::highmem)."},
};

/// The first rule of `scope` that mask `b` breaks, or Problem::none.
constexpr Problem first_broken(std::uint32_t b, Scope scope) noexcept {
    for (const Rule& r : rules)
        if (r.scope == scope && r.broken(b)) return r.code;
    return Problem::none;
}

/// The table's sentence for `p`, or an empty view when no rule has that code.
constexpr std::string_view sentence_of(Problem p) noexcept {
    for (const Rule& r : rules)
        if (r.code == p) return r.sentence;
    return {};
}

/// How many rules govern `scope`; the compile-time checks hold one static_assert per rule and compare counts.
constexpr std::size_t count(Scope scope) noexcept {
    std::size_t n = 0;
    for (const Rule& r : rules) n += r.scope == scope ? 1u : 0u;
    return n;
}

/// The table is well formed: every Problem but none has at most one rule (exactly one, up to the last code
/// in the table), the empty mask breaks nothing, every rule can be broken, every sentence ends with a full
/// stop and no two sentences are the same.
constexpr bool well_formed() noexcept {
    for (std::size_t i = 0; i < rules.size(); ++i) {
        const Rule& r = rules[i];
        if (r.code == Problem::none || r.sentence.empty() || r.sentence.back() != '.') return false;
        // `all` and the lowest bit of `any` break the rule; no flags at all break none.
        const std::uint32_t witness = r.broken.all | (r.broken.any & (0u - r.broken.any));
        if (r.broken(0u) || !r.broken(witness)) return false;
        for (std::size_t j = i + 1; j < rules.size(); ++j)
            if (rules[j].code == r.code || rules[j].sentence == r.sentence) return false;
    }
    // The codes are numbered densely from none, so one rule per code means the last code is rules.size().
    for (const Rule& r : rules)
        if (static_cast<std::size_t>(r.code) > rules.size()) return false;
    return true;
}
static_assert(well_formed(), "detail::rules: each gfp::Problem needs one rule with its own sentence.");

} // namespace kmem::gfp::detail
