/// @file
/// Policy categories: the tags a policy type names in its `using policy_category = ...;` member, so that an
/// allocator's policy pack is sorted, checked and looked up by category (one Region, at most one lock policy ...).
///
/// A new kind of policy (fault injection, slab debugging) is one new tag here; each tag carries the sentence
/// shown when an allocator is given two policies of its kind.
///
/// @code
///   // A lock policy of your own says so with `using policy_category = kmem::policy::lock_policy_tag;`.
///   static_assert(std::is_same_v<kmem::policy::SpinLock::policy_category, kmem::policy::lock_policy_tag>);
///   static_assert(std::is_same_v<kmem::policy::PerCpuPages<>::policy_category, kmem::policy::pcp_policy_tag>);
/// @endcode
#pragma once

#include <type_traits>

namespace kmem::policy {

/// The category of backing memory: a Region (owned), a `Region&` (borrowed), a MemMap or a `MemMap&`.
struct region_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give exactly one Region (or MemMap) policy.");
        return true;
    }
};
/// The category of lock policies (NoLock, SpinLock, MutexLock).
struct lock_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give at most one lock policy.");
        return true;
    }
};
/// The category of error policies (AssertOnError, ThrowOnError, CallbackOnError).
struct error_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give at most one error policy.");
        return true;
    }
};
/// The category of zone policies (InZone).
struct zone_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give at most one zone policy.");
        return true;
    }
};
/// The category of per-CPU page list policies (PerCpuPages).
struct pcp_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give at most one policy::PerCpuPages.");
        return true;
    }
};
/// The category of per-CPU slot policies (CpuSlots, ThreadSlots in kmem/percpu.hpp): which copy a this_cpu
/// operation works on.
struct percpu_slot_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1,
                      "give at most one per-CPU slot policy (policy::CpuSlots or policy::ThreadSlots).");
        return true;
    }
};
/// The category of the anti-fragmentation policy (MigrateTypes in kmem/policy/pcp.hpp).
struct migrate_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give policy::MigrateTypes at most once.");
        return true;
    }
};
/// The category of fault-injection policies (FailPageAlloc, FailSlab, NoFaults in kmem/fault.hpp).
struct fault_policy_tag {
    /// Fires when a pack holds two of them.
    template <int N>
    static constexpr bool check_count() {
        static_assert(N <= 1, "give at most one fault-injection policy.");
        return true;
    }
};

} // namespace kmem::policy
