// Policy packs (not part of the API): PolicySet<Policies...> sorts an allocator's policy arguments into
// categories, checks the pack, and looks each category up with its default.
//
// A policy type declares its category with a member `using policy_category = <tag>;` (one of the tags below,
// or a new one: a new category is one tag, not an edit of every allocator).  A tag carries the sentence shown
// when a pack holds two policies of its kind.  Regions and memory maps are recognised by their concepts, since
// users write their own Region types.  Concepts still check each policy's shape where the allocator uses it.
#pragma once

#include <kmem/mem_map.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/region.hpp>

#include <cstddef>
#include <type_traits>

namespace kmem::detail {

/// Marker for an unrecognised policy argument.
struct unknown_policy_tag {
    template <int>
    static constexpr bool check_count() {
        return true;
    }
};

template <class P, class = void>
struct declared_category {
    using type = unknown_policy_tag;
};
template <class P>
struct declared_category<P, std::void_t<typename P::policy_category>> {
    using type = typename P::policy_category;
};

/// The category of policy argument P (a reference counts as the type it refers to).
template <class P>
using category_of =
    std::conditional_t<Region<std::remove_cvref_t<P>> || is_mem_map<std::remove_cvref_t<P>>,
                       policy::region_policy_tag, typename declared_category<std::remove_cvref_t<P>>::type>;

template <class Tag, class Default, class... Ps>
struct find_category {
    using type = Default;
};
template <class Tag, class Default, class P, class... Ps>
struct find_category<Tag, Default, P, Ps...> {
    using type = std::conditional_t<std::is_same_v<category_of<P>, Tag>, P,
                                    typename find_category<Tag, Default, Ps...>::type>;
};

template <class C, class... Allowed>
inline constexpr bool one_of = (false || ... || std::is_same_v<C, Allowed>);

/// Marker used when a required policy is missing.
struct missing_policy {};

/// An allocator's policy arguments sorted by category.
template <class... Policies>
struct PolicySet {
    /// How many policies of category Tag the pack holds.
    template <class Tag>
    static constexpr int count = (0 + ... + (std::is_same_v<category_of<Policies>, Tag> ? 1 : 0));
    /// The policy of category Tag (as given, reference included), or Default.
    template <class Tag, class Default>
    using get = typename find_category<Tag, Default, Policies...>::type;
    /// True when every policy belongs to one of the Allowed categories.
    template <class... Allowed>
    static constexpr bool only = (true && ... && one_of<category_of<Policies>, Allowed...>);
    /// Checks that no category appears twice; a violation is a static_assert with the category's sentence.
    static constexpr bool unique =
        (true && ... && category_of<Policies>::template check_count<count<category_of<Policies>>>());
};

/// The memory map type an allocator uses for its region policy: MemMap<R, PageSize> for a Region (or `R&`, owned
/// map over a borrowed region), the MemMap itself (or `MemMap&`, borrowed) when one is given.
template <class RegionOrMap, std::size_t PageSize>
struct map_for {
    using type = MemMap<RegionOrMap, PageSize>;
};
template <class R, std::size_t PageSize>
requires is_mem_map<std::remove_cvref_t<R>>
struct map_for<R, PageSize> {
    using type = R;
};
template <std::size_t PageSize>
struct map_for<missing_policy, PageSize> {
    struct type { // no region given: only the allocator's static_assert should speak
        static constexpr bool addressable = false;
        static constexpr std::size_t page_size = PageSize;
        using region_type = OffsetRegion;
    };
};
/// The memory map (without reference) of an allocator with these policies.
template <std::size_t PageSize, class... Policies>
using map_of_t = std::remove_cvref_t<
    typename map_for<typename PolicySet<Policies...>::template get<policy::region_policy_tag, missing_policy>,
                     PageSize>::type>;

} // namespace kmem::detail
