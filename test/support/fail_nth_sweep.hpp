/// @file
/// The fail-the-k-th-allocation sweep shared by the fault-injection tests: for k = 1, 2, ... set fail_nth = k on
/// a page allocator's FailPageAlloc policy, run a workload that frees everything it got, and check that every
/// page came back and every invariant holds, until a run sees no injected failure (k is past the workload's last
/// page allocation).  One injected failure may fail at most one request of the workload.
#pragma once

#include <kmem/fault.hpp>

#include <boost/test/unit_test.hpp>

#include <cstdint>

namespace kmem::test {

/// Runs the sweep over `alloc` (a BuddyAllocator or Node with policy::FailPageAlloc).  `workload(k)` runs one
/// pass, frees everything it allocated and returns how many of its requests failed; `settle()` runs after each
/// pass, before the checks (e.g. draining per-CPU lists).  Returns the number of passes.
template <class Alloc, class Workload, class Settle>
int sweep_fail_nth(Alloc& alloc, Workload&& workload, Settle&& settle) {
    const std::uint64_t total = alloc.total_pages();
    int runs = 0;
    for (std::uint64_t k = 1;; ++k) {
        alloc.fault_policy().attr() = FaultAttr{.fail_nth = k};
        alloc.fault_policy().reseed();
        const std::uint64_t nulls = workload(k);
        settle();
        BOOST_TEST_REQUIRE(alloc.check_invariants() == "", "k = " << k);
        BOOST_TEST_REQUIRE(alloc.nr_free_pages() == total, "k = " << k << ": pages lost");
        ++runs;
        if (alloc.fault_policy().failures() == 0) break; // k is past the last page allocation of the workload
        BOOST_TEST_REQUIRE(nulls <= 1u, "one injected failure fails at most one request (k = " << k << ")");
    }
    return runs;
}

} // namespace kmem::test
