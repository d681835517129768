// Tests for include/kmem/gfp.hpp: flag values against the kernel's definitions, flags as types, the rules at
// compile time (through their constexpr forms) and at run time, and runtime flags through a BuddyAllocator.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>

#include <boost/test/unit_test.hpp>

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace gfp = kmem::gfp;
using gfp::Problem;
using kmem::gfp_t;

namespace {

// Every single-bit constant, in bit order.
constexpr auto single_bits = std::tuple{gfp::dma,
                                        gfp::highmem,
                                        gfp::dma32,
                                        gfp::movable,
                                        gfp::reclaimable,
                                        gfp::high,
                                        gfp::io,
                                        gfp::fs,
                                        gfp::zero,
                                        gfp::direct_reclaim,
                                        gfp::kswapd_reclaim,
                                        gfp::write,
                                        gfp::nowarn,
                                        gfp::retry_mayfail,
                                        gfp::nofail,
                                        gfp::noretry,
                                        gfp::memalloc,
                                        gfp::comp,
                                        gfp::nomemalloc,
                                        gfp::hardwall,
                                        gfp::thisnode,
                                        gfp::account};

// Every named constant: the bits, then the composites.
constexpr auto all_constants =
    std::tuple_cat(single_bits, std::tuple{gfp::reclaim, gfp::atomic, gfp::kernel, gfp::kernel_account,
                                           gfp::nowait, gfp::noio, gfp::nofs, gfp::user, gfp::highuser,
                                           gfp::highuser_movable, gfp::transhuge_light, gfp::transhuge});

template <class T, class... Ts>
constexpr bool pairwise_distinct() {
    if constexpr (sizeof...(Ts) == 0)
        return true;
    else
        return (!std::is_same_v<T, Ts> && ...) && pairwise_distinct<Ts...>();
}

template <class... Ts>
constexpr bool distinct_types(const std::tuple<Ts...>&) {
    return pairwise_distinct<std::remove_cvref_t<Ts>...>();
}

// Kernel values (include/linux/gfp_types.h, v6.x numbering; ___GFP_ZEROTAGS etc. unused here).
constexpr std::uint32_t k_gfp_dma = 0x01, k_gfp_highmem = 0x02, k_gfp_dma32 = 0x04, k_gfp_movable = 0x08;
constexpr std::uint32_t k_gfp_reclaimable = 0x10, k_gfp_high = 0x20, k_gfp_io = 0x40, k_gfp_fs = 0x80;
constexpr std::uint32_t k_gfp_zero = 0x100, k_gfp_direct_reclaim = 0x400, k_gfp_kswapd_reclaim = 0x800;
constexpr std::uint32_t k_gfp_nowarn = 0x2000, k_gfp_nofail = 0x8000, k_gfp_noretry = 0x10000;
constexpr std::uint32_t k_gfp_comp = 0x40000, k_gfp_nomemalloc = 0x80000, k_gfp_hardwall = 0x100000;
constexpr std::uint32_t k_gfp_account = 0x400000;
constexpr std::uint32_t k_gfp_reclaim = k_gfp_direct_reclaim | k_gfp_kswapd_reclaim;
constexpr std::uint32_t k_highuser_movable = 0x100cca;
constexpr std::uint32_t k_transhuge_light =
    (k_highuser_movable | k_gfp_comp | k_gfp_nomemalloc | k_gfp_nowarn) & ~k_gfp_reclaim;
constexpr std::uint32_t k_transhuge = k_transhuge_light | k_gfp_direct_reclaim;

// A small addressable allocator for runtime-flag tests.
template <class... Extra>
using SmallBuddy = kmem::BuddyAllocator<4, 4096, kmem::StaticRegion<4096 * 32>, Extra...>;

} // namespace

BOOST_AUTO_TEST_SUITE(gfp_flags)

BOOST_AUTO_TEST_CASE(single_bits_have_kernel_values) {
    static_assert(gfp::dma.value == k_gfp_dma);
    static_assert(gfp::highmem.value == k_gfp_highmem);
    static_assert(gfp::dma32.value == k_gfp_dma32);
    static_assert(gfp::movable.value == k_gfp_movable);
    static_assert(gfp::reclaimable.value == k_gfp_reclaimable);
    static_assert(gfp::high.value == k_gfp_high);
    static_assert(gfp::io.value == k_gfp_io);
    static_assert(gfp::fs.value == k_gfp_fs);
    static_assert(gfp::zero.value == k_gfp_zero);
    static_assert(gfp::direct_reclaim.value == k_gfp_direct_reclaim);
    static_assert(gfp::kswapd_reclaim.value == k_gfp_kswapd_reclaim);
    static_assert(gfp::nowarn.value == k_gfp_nowarn);
    static_assert(gfp::nofail.value == k_gfp_nofail);
    static_assert(gfp::noretry.value == k_gfp_noretry);
    static_assert(gfp::comp.value == k_gfp_comp);
    static_assert(gfp::nomemalloc.value == k_gfp_nomemalloc);
    static_assert(gfp::hardwall.value == k_gfp_hardwall);
    static_assert(gfp::account.value == k_gfp_account);
    // Each bit is one bit, and together they are every defined bit.
    std::uint32_t seen = 0;
    const auto one = [&](auto f) {
        BOOST_TEST(std::has_single_bit(f.value));
        BOOST_TEST((seen & f.value) == 0u);
        seen |= f.value;
    };
    std::apply([&](auto... f) { (one(f), ...); }, single_bits);
    BOOST_TEST(seen == gfp::bits::all);
    BOOST_TEST(std::tuple_size_v<decltype(single_bits)> == 22u);
}

BOOST_AUTO_TEST_CASE(composites_equal_kernel_definitions) {
    static_assert(gfp::kernel.value == 0xcc0);
    static_assert(gfp::atomic.value == 0x820);
    static_assert(gfp::nowait.value == 0x800);
    static_assert(gfp::noio.value == 0xc00);
    static_assert(gfp::nofs.value == 0xc40);
    static_assert(gfp::user.value == 0x100cc0);
    static_assert(gfp::highuser.value == 0x100cc2);
    static_assert(gfp::highuser_movable.value == 0x100cca);
    static_assert(gfp::kernel_account.value == 0x400cc0);
    static_assert(gfp::reclaim.value == 0xc00);
    static_assert(gfp::transhuge_light.value == k_transhuge_light);
    static_assert(gfp::transhuge.value == k_transhuge);
    // The same at run time, so a failure shows the values.
    BOOST_TEST(gfp::transhuge_light.value == 0x1c20cau);
    BOOST_TEST(gfp::transhuge.value == 0x1c24cau);
    BOOST_TEST(gfp::kernel.value == 0xcc0u);
    BOOST_TEST(gfp::atomic.value == 0x820u);
}

BOOST_AUTO_TEST_CASE(each_constant_is_its_own_type) {
    static_assert(distinct_types(single_bits));
    // Composites are distinct from each other and from the bits, except where the kernel's definitions
    // coincide: GFP_NOIO is __GFP_RECLAIM and GFP_NOWAIT is __GFP_KSWAPD_RECLAIM.
    static_assert(std::is_same_v<gfp::type<gfp::noio>, gfp::type<gfp::reclaim>>);
    static_assert(std::is_same_v<gfp::type<gfp::nowait>, gfp::type<gfp::kswapd_reclaim>>);
    static_assert(distinct_types(
        std::tuple_cat(single_bits, std::tuple{gfp::reclaim, gfp::atomic, gfp::kernel, gfp::kernel_account,
                                               gfp::nofs, gfp::user, gfp::highuser, gfp::highuser_movable,
                                               gfp::transhuge_light, gfp::transhuge})));
    static_assert(std::is_same_v<gfp::type<gfp::kernel>, gfp::Flags<0xcc0>>);
    static_assert(gfp::FlagSet<decltype(gfp::kernel)>);
    static_assert(!gfp::FlagSet<std::uint32_t>);
    static_assert(!gfp::FlagSet<gfp_t>);
    BOOST_TEST(true); // everything above is checked at compile time
}

BOOST_AUTO_TEST_CASE(operators_yield_the_type_of_the_result) {
    static_assert(std::is_same_v<decltype(gfp::kernel | gfp::zero), gfp::Flags<0xdc0>>);
    static_assert(std::is_same_v<decltype(gfp::kernel & gfp::io), gfp::Flags<gfp::bits::io>>);
    static_assert(std::is_same_v<decltype(gfp::kernel & gfp::zero), gfp::Flags<0>>);
    static_assert(std::is_same_v<decltype(~gfp::kernel), gfp::Flags<gfp::bits::all & ~0xcc0u>>);
    static_assert(std::is_same_v<decltype(~~gfp::kernel), gfp::type<gfp::kernel>>);
    static_assert((gfp::kernel | gfp::zero).has(gfp::zero));
    static_assert(gfp::kernel.has(gfp::reclaim) && gfp::kernel.has(gfp::io | gfp::fs));
    static_assert(!gfp::kernel.has(gfp::zero) && !gfp::atomic.has(gfp::reclaim));
    static_assert(gfp::kernel.has(gfp::Flags<0>{}));
    BOOST_TEST((gfp::kernel | gfp::zero).value == 0xdc0u);
}

BOOST_AUTO_TEST_CASE(may_sleep_follows_direct_reclaim) {
    static_assert(gfp::may_sleep(gfp::kernel) && gfp::may_sleep(gfp::noio) && gfp::may_sleep(gfp::nofs));
    static_assert(gfp::may_sleep(gfp::user) && gfp::may_sleep(gfp::transhuge));
    static_assert(!gfp::may_sleep(gfp::atomic) && !gfp::may_sleep(gfp::nowait));
    static_assert(!gfp::may_sleep(gfp::transhuge_light) && !gfp::may_sleep(gfp::kswapd_reclaim));
    static_assert(gfp::may_sleep(gfp::direct_reclaim));
    BOOST_TEST(gfp::may_sleep(0x400u));
    BOOST_TEST(!gfp::may_sleep(0xbffu));
}

BOOST_AUTO_TEST_CASE(zone_of_picks_the_highest_allowed_zone) {
    using kmem::ZoneType;
    static_assert(gfp::zone_of(gfp::kernel.value) == ZoneType::normal);
    static_assert(gfp::zone_of(gfp::dma.value) == ZoneType::dma);
    static_assert(gfp::zone_of((gfp::kernel | gfp::dma32).value) == ZoneType::dma32);
    static_assert(gfp::zone_of(gfp::highuser.value) == ZoneType::highmem);
    static_assert(gfp::zone_of(gfp::highuser_movable.value) == ZoneType::movable);
    static_assert(gfp::zone_of((gfp::kernel | gfp::movable).value) == ZoneType::movable);
    // Invalid zone combinations fall back to normal.
    BOOST_TEST((gfp::zone_of((gfp::dma | gfp::highmem).value) == ZoneType::normal));
    BOOST_TEST((gfp::zone_of((gfp::dma | gfp::dma32).value) == ZoneType::normal));
    BOOST_TEST(kmem::zone_name(ZoneType::dma) == "DMA");
    BOOST_TEST(kmem::zone_name(ZoneType::dma32) == "DMA32");
    BOOST_TEST(kmem::zone_name(ZoneType::normal) == "Normal");
    BOOST_TEST(kmem::zone_name(ZoneType::highmem) == "HighMem");
    BOOST_TEST(kmem::zone_name(ZoneType::movable) == "Movable");
}

BOOST_AUTO_TEST_CASE(valid_composites_pass_validation) {
    const auto one = [](auto f) { BOOST_TEST((gfp::validate(f.value) == Problem::none), f.value); };
    std::apply([&](auto... f) { (one(f), ...); },
               std::tuple{gfp::atomic, gfp::kernel, gfp::kernel_account, gfp::nowait, gfp::noio, gfp::nofs,
                          gfp::user, gfp::highuser, gfp::highuser_movable, gfp::transhuge_light,
                          gfp::transhuge, gfp::kernel | gfp::nofail, gfp::kernel | gfp::dma,
                          gfp::kernel | gfp::dma32, gfp::kernel | gfp::reclaimable, gfp::Flags<0>{}});
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(runtime_gfp_t)

BOOST_AUTO_TEST_CASE(converts_from_every_flag_type) {
    int n = 0;
    const auto one = [&](auto f) {
        BOOST_TEST(gfp_t(f).value() == f.value);
        BOOST_TEST((gfp_t(f) == gfp_t::from_bits(f.value)));
        ++n;
    };
    std::apply([&](auto... f) { (one(f), ...); }, all_constants);
    BOOST_TEST(n == 34);
    constexpr gfp_t k = gfp::kernel;
    static_assert(k.value() == 0xcc0 && k.may_sleep() && k.zone() == kmem::ZoneType::normal);
    BOOST_TEST(gfp_t().value() == 0u);
}

BOOST_AUTO_TEST_CASE(operators_and_queries) {
    gfp_t g = gfp::atomic;
    BOOST_TEST(!g.may_sleep());
    g |= gfp::direct_reclaim;
    BOOST_TEST(g.may_sleep());
    BOOST_TEST(g.has(gfp::high));
    BOOST_TEST(!g.has(gfp::kernel));
    BOOST_TEST((gfp_t(gfp::kernel) | gfp_t(gfp::zero)).value() == 0xdc0u);
    BOOST_TEST(((gfp_t(gfp::kernel) & gfp_t(gfp::io)) == gfp_t(gfp::io)));
    BOOST_TEST((~gfp_t(gfp::kernel)).value() == (gfp::bits::all & ~0xcc0u));
    BOOST_TEST((gfp_t(gfp::dma32).zone() == kmem::ZoneType::dma32));
    BOOST_TEST((gfp_t(gfp::highuser_movable).zone() == kmem::ZoneType::movable));
}

BOOST_AUTO_TEST_CASE(from_bits_keeps_any_mask) {
    const gfp_t g = gfp_t::from_bits(0xdeadbeefu);
    BOOST_TEST(g.value() == 0xdeadbeefu);
    BOOST_TEST((g.validate() == Problem::unknown_bits));
    BOOST_TEST((gfp_t::from_bits(0xcc0).validate() == Problem::none));
    BOOST_TEST((gfp_t::from_bits(1u << 9).validate() == Problem::unknown_bits)); // the hole in the numbering
    BOOST_TEST((gfp_t::from_bits(1u << 23).validate() == Problem::unknown_bits));
}

BOOST_AUTO_TEST_CASE(validate_names_each_broken_rule) {
    struct Case {
        gfp_t flags;
        Problem expected;
    };
    const std::vector<Case> cases{
        {gfp::dma | gfp::highmem, Problem::dma_and_highmem},
        {gfp::kernel | gfp::dma | gfp::dma32, Problem::dma_and_dma32},
        {gfp::kernel | gfp::dma32 | gfp::highmem, Problem::dma32_and_highmem},
        {gfp::kernel | gfp::movable | gfp::dma, Problem::movable_and_dma},
        {gfp::kernel | gfp::movable | gfp::dma32, Problem::movable_and_dma},
        {gfp::kernel | gfp::movable | gfp::reclaimable, Problem::movable_and_reclaimable},
        {gfp::atomic | gfp::nofail, Problem::nofail_without_direct_reclaim},
        {gfp::nofail, Problem::nofail_without_direct_reclaim},
        {gfp::kernel | gfp::nofail | gfp::noretry, Problem::nofail_and_noretry},
        {gfp_t::from_bits(gfp::kernel.value | (1u << 30)), Problem::unknown_bits},
        {gfp::kernel | gfp::nofail, Problem::none},
    };
    for (const auto& c : cases) {
        BOOST_TEST_INFO("flags " << c.flags.to_string());
        BOOST_TEST((c.flags.validate() == c.expected));
        BOOST_TEST((gfp::validate(c.flags.value()) == c.expected));
    }
    // Unknown bits are reported before any other rule.
    BOOST_TEST(
        (gfp_t::from_bits((gfp::dma | gfp::highmem).value | (1u << 9)).validate() == Problem::unknown_bits));
}

BOOST_AUTO_TEST_CASE(describe_gives_one_sentence_per_problem) {
    const std::vector<Problem> all{Problem::none,
                                   Problem::dma_and_highmem,
                                   Problem::dma_and_dma32,
                                   Problem::dma32_and_highmem,
                                   Problem::movable_and_dma,
                                   Problem::movable_and_reclaimable,
                                   Problem::nofail_without_direct_reclaim,
                                   Problem::nofail_and_noretry,
                                   Problem::unknown_bits,
                                   Problem::exact_compound,
                                   Problem::exact_highmem};
    std::vector<std::string_view> seen;
    for (Problem p : all) {
        const std::string_view s = gfp::describe(p);
        BOOST_TEST_INFO("problem " << static_cast<int>(p) << ": " << s);
        BOOST_TEST(s.size() > 20u);
        BOOST_TEST(s.back() == '.');
        BOOST_TEST(s != gfp::describe(static_cast<Problem>(200)));
        for (auto other : seen) BOOST_TEST(s != other);
        seen.push_back(s);
    }
    // The sentences the compile-time checks print (test/compile_fail matches the same text).
    BOOST_TEST(gfp::describe(Problem::dma_and_highmem) ==
               "gfp::dma and gfp::highmem name two different zones; a request may name one zone modifier.");
    BOOST_TEST(
        gfp::describe(Problem::nofail_without_direct_reclaim) ==
        "gfp::nofail needs gfp::direct_reclaim: an allocation that may not fail must be allowed to sleep.");
    BOOST_TEST(gfp::describe(Problem::nofail_and_noretry) ==
               "gfp::nofail and gfp::noretry contradict each other: one never fails, the other fails fast.");
}

BOOST_AUTO_TEST_CASE(validate_exact_adds_the_alloc_pages_exact_rules) {
    struct Case {
        gfp_t flags;
        Problem expected;
    };
    const std::vector<Case> cases{
        {gfp::kernel, Problem::none},
        {gfp::kernel | gfp::zero, Problem::none},
        {gfp::kernel | gfp::dma, Problem::none},
        {gfp::kernel | gfp::dma32, Problem::none},
        {gfp::kernel | gfp::movable, Problem::none},
        {gfp::atomic, Problem::none},
        {gfp::user, Problem::none},
        {gfp::kernel | gfp::comp, Problem::exact_compound},
        {gfp::nowarn | gfp::comp, Problem::exact_compound},
        {gfp::kernel | gfp::highmem, Problem::exact_highmem},
        {gfp::highuser, Problem::exact_highmem},
        {gfp::highuser_movable, Problem::exact_highmem},
        {gfp::transhuge, Problem::exact_compound}, // comp and highmem: the compound rule comes first
        {gfp::highuser | gfp::comp, Problem::exact_compound},
        // The ordinary rules come before the exact ones.
        {gfp::dma | gfp::highmem, Problem::dma_and_highmem},
        {gfp::kernel | gfp::comp | gfp::movable | gfp::reclaimable, Problem::movable_and_reclaimable},
        {gfp::atomic | gfp::comp | gfp::nofail, Problem::nofail_without_direct_reclaim},
        {gfp_t::from_bits(gfp::highuser.value | (1u << 9)), Problem::unknown_bits},
    };
    for (const auto& c : cases) {
        BOOST_TEST_INFO("flags " << c.flags.to_string());
        BOOST_TEST((c.flags.validate_exact() == c.expected));
        BOOST_TEST((gfp::validate_exact(c.flags.value()) == c.expected));
        // validate() knows nothing of the exact rules.
        const bool exact_only = c.expected == Problem::exact_compound || c.expected == Problem::exact_highmem;
        BOOST_TEST((c.flags.validate() == (exact_only ? Problem::none : c.expected)));
    }
    static_assert(gfp_t(gfp::highuser).validate_exact() == Problem::exact_highmem);
    static_assert(gfp::validate_exact((gfp::kernel | gfp::comp).value) == Problem::exact_compound);
    static_assert(gfp::validate_exact(gfp::kernel.value) == Problem::none);
    // The sentences name the flag and the kind of allocation.
    BOOST_TEST(gfp::describe(Problem::exact_compound)
                   .starts_with("gfp::comp cannot be used for an exact allocation"));
    BOOST_TEST(gfp::describe(Problem::exact_highmem)
                   .starts_with("gfp::highmem cannot be used for an exact allocation"));
    BOOST_TEST(gfp::describe(Problem::exact_highmem).find("gfp::highuser") != std::string_view::npos);
}

BOOST_AUTO_TEST_CASE(check_exact_accepts_valid_exact_flags) {
    // The failing side of gfp::check_exact is test/compile_fail/exact_comp.cpp and exact_highmem.cpp.
    gfp::check_exact(gfp::kernel);
    gfp::check_exact(gfp::kernel | gfp::zero | gfp::nowarn);
    gfp::check_exact(gfp::atomic);
    gfp::check_exact(gfp::kernel | gfp::dma32);
    gfp::check_exact(gfp::user | gfp::movable);
    gfp::check(gfp::highuser | gfp::comp); // ordinary flags, only wrong for an exact allocation
    BOOST_TEST(true);                      // everything above is checked at compile time
}

BOOST_AUTO_TEST_CASE(one_table_drives_validate_and_describe) {
    namespace detail = gfp::detail;
    // Every rule the table holds is reported: a mask made to break it is reported with its code (or with the
    // code of an earlier rule it breaks too, since the table's order is the order of the report), through
    // validate() for the ordinary rules and validate_exact() for the exact ones; describe() is its sentence.
    for (std::size_t i = 0; i < detail::rules.size(); ++i) {
        const auto& rule = detail::rules[i];
        const std::uint32_t witness = rule.broken.all | (rule.broken.any & (0u - rule.broken.any));
        BOOST_TEST_INFO("rule " << static_cast<int>(rule.code) << " witness " << gfp::to_string(witness));
        BOOST_TEST(rule.broken(witness));
        BOOST_TEST(!rule.broken(0u));
        const Problem got = rule.scope == detail::Scope::every   ? gfp::validate(witness)
                            : rule.scope == detail::Scope::exact ? gfp::validate_exact(witness)
                                                                 : gfp::validate_slab(witness);
        bool earlier = false;
        for (std::size_t j = 0; j < i; ++j)
            earlier = earlier || (detail::rules[j].code == got && detail::rules[j].broken(witness));
        BOOST_TEST((got == rule.code || earlier));
        BOOST_TEST(gfp::describe(rule.code) == rule.sentence);
    }
    // gfp::nofail | gfp::noretry breaks the direct-reclaim rule first; with direct reclaim, its own.
    BOOST_TEST((gfp::validate((gfp::nofail | gfp::noretry).value) == Problem::nofail_without_direct_reclaim));
    BOOST_TEST((gfp::validate((gfp::nofail | gfp::noretry | gfp::direct_reclaim).value) ==
                Problem::nofail_and_noretry));
    BOOST_TEST(detail::rules.size() == 12u);
    BOOST_TEST(detail::count(detail::Scope::every) == 8u);
    BOOST_TEST(detail::count(detail::Scope::exact) == 2u);
    BOOST_TEST(detail::count(detail::Scope::slab) == 2u);
    BOOST_TEST(detail::sentence_of(Problem::none).empty());
    // The table's order is the order validate() reports: unknown bits first.
    BOOST_TEST((detail::rules.front().code == Problem::unknown_bits));
}

BOOST_AUTO_TEST_CASE(to_string_spells_flags_like_the_kernel) {
    BOOST_TEST(gfp_t(gfp::kernel | gfp::zero).to_string() == "GFP_KERNEL|__GFP_ZERO");
    BOOST_TEST(gfp_t(gfp::atomic).to_string() == "GFP_ATOMIC");
    BOOST_TEST(gfp_t(gfp::kernel).to_string() == "GFP_KERNEL");
    BOOST_TEST(gfp_t(gfp::nowait).to_string() == "GFP_NOWAIT");
    BOOST_TEST(gfp_t(gfp::noio).to_string() == "GFP_NOIO");
    BOOST_TEST(gfp_t(gfp::nofs).to_string() == "GFP_NOFS");
    BOOST_TEST(gfp_t(gfp::user).to_string() == "GFP_USER");
    BOOST_TEST(gfp_t(gfp::highuser_movable).to_string() == "GFP_HIGHUSER_MOVABLE");
    BOOST_TEST(gfp_t(gfp::kernel_account).to_string() == "GFP_KERNEL_ACCOUNT");
    BOOST_TEST(gfp_t(gfp::transhuge).to_string() == "GFP_TRANSHUGE");
    BOOST_TEST(gfp_t(gfp::transhuge_light).to_string() == "GFP_TRANSHUGE_LIGHT");
    BOOST_TEST(gfp_t(gfp::kernel | gfp::dma).to_string() == "GFP_KERNEL|GFP_DMA");
    BOOST_TEST(gfp_t(gfp::nowarn | gfp::comp).to_string() == "__GFP_NOWARN|__GFP_COMP");
    BOOST_TEST(gfp_t(gfp::atomic | gfp::nowarn).to_string() == "GFP_ATOMIC|__GFP_NOWARN");
    // Unknown bits are printed as hex after the names; nothing at all is 0x0.
    BOOST_TEST(gfp_t::from_bits(1u << 9).to_string() == "0x200");
    BOOST_TEST(gfp_t::from_bits(gfp::kernel.value | 0x800000u).to_string() == "GFP_KERNEL|0x800000");
    BOOST_TEST(gfp_t::from_bits(0xf0000000u).to_string() == "0xf0000000");
    BOOST_TEST(gfp_t().to_string() == "0x0");
    BOOST_TEST(gfp::to_string(0x820u) == "GFP_ATOMIC");
}

BOOST_AUTO_TEST_CASE(context_tokens) {
    static_assert(kmem::CallContext<kmem::AtomicContext> && kmem::CallContext<const kmem::ProcessContext&>);
    static_assert(!kmem::CallContext<int>);
    static_assert(!kmem::AtomicContext::may_sleep && kmem::ProcessContext::may_sleep);
    BOOST_TEST(!decltype(kmem::atomic_context)::may_sleep);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(runtime_flags_through_buddy)

BOOST_AUTO_TEST_CASE(bad_flags_throw_and_change_nothing) {
    auto buddy = std::make_unique<SmallBuddy<kmem::policy::ThrowOnError>>();
    buddy->set_warning_stream(nullptr);
    kmem::Page* held = buddy->alloc_pages(gfp::kernel, 1); // some state to preserve
    BOOST_REQUIRE(held != nullptr);
    const auto free_before = buddy->nr_free_pages();
    const auto info_before = buddy->buddyinfo();
    const std::vector<std::pair<gfp_t, Problem>> bad{
        {gfp::dma | gfp::highmem, Problem::dma_and_highmem},
        {gfp::kernel | gfp::dma | gfp::dma32, Problem::dma_and_dma32},
        {gfp::kernel | gfp::movable | gfp::reclaimable, Problem::movable_and_reclaimable},
        {gfp::atomic | gfp::nofail, Problem::nofail_without_direct_reclaim},
        {gfp::kernel | gfp::nofail | gfp::noretry, Problem::nofail_and_noretry},
        {gfp_t::from_bits(1u << 9), Problem::unknown_bits},
    };
    for (const auto& [flags, problem] : bad) {
        BOOST_TEST_INFO("flags " << flags.to_string());
        bool thrown = false;
        try {
            (void)buddy->alloc_pages(flags, 0);
        } catch (const kmem::bad_usage& e) {
            thrown = true;
            BOOST_TEST((e.error().kind == kmem::ErrorKind::invalid_gfp));
            BOOST_TEST(e.error().operation == "alloc_pages");
            BOOST_TEST(e.error().message.find(gfp::describe(problem)) != std::string::npos);
            BOOST_TEST(e.error().message.find(flags.to_string()) != std::string::npos);
        }
        BOOST_TEST(thrown);
        BOOST_TEST(buddy->nr_free_pages() == free_before);
        BOOST_TEST(buddy->buddyinfo() == info_before);
        BOOST_TEST(buddy->check_invariants() == "");
    }
    // get_free_pages with runtime flags goes through the same checks.
    BOOST_CHECK_THROW((void)buddy->get_free_pages(gfp_t(gfp::dma | gfp::highmem), 0), kmem::bad_usage);
    // Valid runtime flags work, including zeroing.
    void* p = buddy->get_free_pages(gfp_t(gfp::kernel), 0);
    BOOST_REQUIRE(p != nullptr);
    std::memset(p, 0x5a, 4096);
    buddy->free_pages(p, 0);
    auto* z = static_cast<unsigned char*>(buddy->get_free_pages(gfp_t(gfp::kernel | gfp::zero), 0));
    BOOST_REQUIRE(z != nullptr);
    BOOST_TEST(z == p); // the same page came back (LIFO order-0 list) and it is zeroed
    for (int i = 0; i < 4096; ++i) BOOST_REQUIRE(z[i] == 0);
    buddy->free_pages(z, 0);
    buddy->free_pages(held, 1);
    BOOST_TEST(buddy->nr_free_pages() == buddy->total_pages());
    BOOST_TEST(buddy->check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(nofail_above_order_one_is_refused_at_run_time) {
    auto buddy = std::make_unique<SmallBuddy<kmem::policy::ThrowOnError>>();
    const auto before = buddy->nr_free_pages();
    try {
        (void)buddy->alloc_pages(gfp_t(gfp::kernel | gfp::nofail), 2);
        BOOST_FAIL("expected bad_usage");
    } catch (const kmem::bad_usage& e) {
        BOOST_TEST((e.error().kind == kmem::ErrorKind::invalid_gfp));
        BOOST_TEST(e.error().message.find("order 1") != std::string::npos);
    }
    BOOST_TEST(buddy->nr_free_pages() == before);
    kmem::Page* one = buddy->alloc_pages(gfp_t(gfp::kernel | gfp::nofail), 1);
    BOOST_TEST(one != nullptr);
    buddy->free_pages(one, 1);
    BOOST_TEST(buddy->check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(callback_sees_the_error_and_alloc_returns_null) {
    auto buddy = std::make_unique<SmallBuddy<kmem::policy::CallbackOnError>>();
    std::vector<kmem::UsageError> seen;
    buddy->error_policy().set_callback([&](const kmem::UsageError& e) { seen.push_back(e); });
    const auto before = buddy->nr_free_pages();
    BOOST_TEST(buddy->alloc_pages(gfp_t(gfp::kernel | gfp::movable | gfp::dma), 0) == nullptr);
    BOOST_TEST(buddy->get_free_pages(gfp_t(gfp::atomic | gfp::nofail), 0) == nullptr);
    BOOST_REQUIRE(seen.size() == 2u);
    BOOST_TEST((seen[0].kind == kmem::ErrorKind::invalid_gfp));
    BOOST_TEST(seen[0].message.find(gfp::describe(Problem::movable_and_dma)) != std::string::npos);
    BOOST_TEST(seen[1].message.find(gfp::describe(Problem::nofail_without_direct_reclaim)) !=
               std::string::npos);
    BOOST_TEST(buddy->nr_free_pages() == before);
    BOOST_TEST(buddy->stats().allocations == 0u);
    BOOST_TEST(buddy->check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(runtime_zone_must_exist) {
    auto normal = std::make_unique<SmallBuddy<kmem::policy::ThrowOnError>>();
    try {
        (void)normal->alloc_pages(gfp_t(gfp::dma), 0);
        BOOST_FAIL("expected bad_usage");
    } catch (const kmem::bad_usage& e) {
        BOOST_TEST((e.error().kind == kmem::ErrorKind::invalid_gfp));
        BOOST_TEST(e.error().message.find("DMA") != std::string::npos);
    }
    BOOST_CHECK_THROW((void)normal->alloc_pages(gfp_t(gfp::kernel | gfp::dma32), 0), kmem::bad_usage);
    BOOST_TEST(normal->nr_free_pages() == normal->total_pages());
    // A request allowing higher zones is served from a lower one (zonelist fallback).
    kmem::Page* hi = normal->alloc_pages(gfp_t(gfp::highuser_movable), 0);
    BOOST_TEST(hi != nullptr);
    normal->free_pages(hi, 0);

    // A ZONE_DMA allocator serves gfp::dma and gfp::dma32 requests (DMA is below DMA32).
    auto dma =
        std::make_unique<SmallBuddy<kmem::policy::ThrowOnError, kmem::policy::InZone<kmem::ZoneType::dma>>>();
    kmem::Page* a = dma->alloc_pages(gfp_t(gfp::kernel | gfp::dma), 0);
    kmem::Page* b = dma->alloc_pages(gfp_t(gfp::kernel | gfp::dma32), 0);
    BOOST_TEST(a != nullptr);
    BOOST_TEST(b != nullptr);
    dma->free_pages(a, 0);
    dma->free_pages(b, 0);
    BOOST_TEST(dma->buddyinfo().find("zone      DMA") != std::string::npos);
    // A ZONE_DMA32 allocator refuses gfp::dma.
    auto dma32 = std::make_unique<
        SmallBuddy<kmem::policy::ThrowOnError, kmem::policy::InZone<kmem::ZoneType::dma32>>>();
    BOOST_CHECK_THROW((void)dma32->alloc_pages(gfp_t(gfp::kernel | gfp::dma), 0), kmem::bad_usage);
    BOOST_TEST(dma32->nr_free_pages() == dma32->total_pages());
}

BOOST_AUTO_TEST_CASE(runtime_sleeping_flags_on_a_spin_lock) {
    auto buddy = std::make_unique<SmallBuddy<kmem::policy::ThrowOnError, kmem::policy::SpinLock>>();
    try {
        (void)buddy->alloc_pages(gfp_t(gfp::kernel), 0);
        BOOST_FAIL("expected bad_usage");
    } catch (const kmem::bad_usage& e) {
        BOOST_TEST((e.error().kind == kmem::ErrorKind::invalid_gfp));
        BOOST_TEST(e.error().message.find("spin lock") != std::string::npos);
    }
    BOOST_TEST(buddy->nr_free_pages() == buddy->total_pages());
    kmem::Page* p = buddy->alloc_pages(gfp_t(gfp::atomic), 0);
    kmem::Page* q = buddy->alloc_pages(gfp_t(gfp::nowait), 0);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(q != nullptr);
    buddy->free_pages(p, 0);
    buddy->free_pages(q, 0);
    BOOST_TEST(buddy->check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(runtime_zero_on_offset_only) {
    kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError> buddy(
        kmem::OffsetRegion(1 << 20));
    try {
        (void)buddy.alloc_pages(gfp_t(gfp::kernel | gfp::zero), 0);
        BOOST_FAIL("expected bad_usage");
    } catch (const kmem::bad_usage& e) {
        BOOST_TEST((e.error().kind == kmem::ErrorKind::invalid_gfp));
        BOOST_TEST(e.error().message.find("offset-only") != std::string::npos);
    }
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    kmem::Page* p = buddy.alloc_pages(gfp_t(gfp::kernel), 3);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(buddy.page_offset(p) % (4096u << 3) == 0u);
    buddy.free_pages(p, 3);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(atomic_context_with_non_sleeping_flags_allocates) {
    kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion> buddy(kmem::OffsetRegion(1 << 20));
    kmem::Page* p = buddy.alloc_pages(kmem::atomic_context, gfp::atomic, 0);
    kmem::Page* q = buddy.alloc_pages(kmem::process_context, gfp::kernel, 0);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(q != nullptr);
    BOOST_TEST(p != q);
    buddy.free_pages(p, 0);
    buddy.free_pages(q, 0);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(slab_rules)

BOOST_AUTO_TEST_CASE(validate_slab_adds_gfp_slab_bug_mask) {
    struct Case {
        gfp_t flags;
        Problem expected;
    };
    const std::vector<Case> cases{
        {gfp::kernel, Problem::none},
        {gfp::kernel | gfp::zero, Problem::none},
        {gfp::atomic, Problem::none},
        {gfp::kernel | gfp::dma, Problem::none}, // kmalloc-dma caches exist: __GFP_DMA is allowed
        {gfp::user, Problem::none},
        {gfp::kernel | gfp::comp, Problem::none}, // only exact allocations refuse __GFP_COMP
        {gfp::kernel | gfp::reclaimable, Problem::none},
        {gfp::kernel | gfp::dma32, Problem::slab_dma32},
        {gfp::dma32, Problem::slab_dma32},
        {gfp::kernel | gfp::highmem, Problem::slab_highmem},
        {gfp::highuser, Problem::slab_highmem},
        {gfp::highuser_movable, Problem::slab_highmem},
        {gfp::transhuge, Problem::slab_highmem},
        // The ordinary rules come before the slab ones.
        {gfp::kernel | gfp::dma32 | gfp::highmem, Problem::dma32_and_highmem},
        {gfp::kernel | gfp::movable | gfp::dma32, Problem::movable_and_dma},
        {gfp::highuser | gfp::nofail | gfp::noretry, Problem::nofail_and_noretry},
        {gfp_t::from_bits(gfp::kernel.value | gfp::dma32.value | (1u << 9)), Problem::unknown_bits},
    };
    for (const auto& c : cases) {
        BOOST_TEST_INFO("flags " << c.flags.to_string());
        BOOST_TEST((c.flags.validate_slab() == c.expected));
        BOOST_TEST((gfp::validate_slab(c.flags.value()) == c.expected));
        // validate() and validate_exact() know nothing of the slab rules.
        const bool slab_only = c.expected == Problem::slab_dma32 || c.expected == Problem::slab_highmem;
        BOOST_TEST((c.flags.validate() == (slab_only ? Problem::none : c.expected)));
        if (slab_only) BOOST_TEST((c.flags.validate_exact() != Problem::slab_dma32));
    }
    static_assert(gfp_t(gfp::highuser).validate_slab() == Problem::slab_highmem);
    static_assert(gfp::validate_slab((gfp::kernel | gfp::dma32).value) == Problem::slab_dma32);
    static_assert(gfp::validate_slab(gfp::kernel.value) == Problem::none);
    // The compile-time form accepts what the run-time one accepts (its failing side: test/compile_fail/slab_*).
    gfp::check_slab(gfp::kernel);
    gfp::check_slab(gfp::atomic | gfp::zero);
    gfp::check_slab(gfp::kernel | gfp::dma);
    // One sentence each, naming the flag, the kind of allocation and the kernel's mask.
    const std::string_view dma32 = gfp::describe(Problem::slab_dma32);
    const std::string_view highmem = gfp::describe(Problem::slab_highmem);
    BOOST_TEST(dma32.starts_with("gfp::dma32 cannot be used for a slab or kmalloc allocation"));
    BOOST_TEST(highmem.starts_with("gfp::highmem cannot be used for a slab or kmalloc allocation"));
    BOOST_TEST(dma32.find("GFP_SLAB_BUG_MASK") != std::string_view::npos);
    BOOST_TEST(highmem.find("GFP_SLAB_BUG_MASK") != std::string_view::npos);
    BOOST_TEST(highmem.find("gfp::highuser") != std::string_view::npos);
    BOOST_TEST(dma32 != highmem);
    BOOST_TEST(dma32.back() == '.');
    BOOST_TEST(highmem.back() == '.');
    BOOST_TEST(dma32 != gfp::describe(Problem::exact_highmem));
    BOOST_TEST(highmem != gfp::describe(Problem::exact_highmem));
}

BOOST_AUTO_TEST_SUITE_END()
