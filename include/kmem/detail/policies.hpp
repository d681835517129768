// Policy-pack helpers (not part of the API): pick the first type in a pack that satisfies a predicate.
#pragma once

#include <type_traits>

namespace kmem::detail {

template <template <class> class Pred, class Default, class... Ps>
struct find_policy {
    using type = Default;
};
template <template <class> class Pred, class Default, class P, class... Ps>
struct find_policy<Pred, Default, P, Ps...> {
    using type = std::conditional_t<Pred<P>::value, P, typename find_policy<Pred, Default, Ps...>::type>;
};
/// The first policy in Ps satisfying Pred, or Default.
template <template <class> class Pred, class Default, class... Ps>
using find_policy_t = typename find_policy<Pred, Default, Ps...>::type;

/// How many policies in Ps satisfy Pred.
template <template <class> class Pred, class... Ps>
inline constexpr int count_policy = (0 + ... + (Pred<Ps>::value ? 1 : 0));

/// Marker used when a required policy is missing.
struct missing_policy {};

} // namespace kmem::detail
