/// @file
/// Fault injection (lib/fault-inject.c, mm/fail_page_alloc.c, mm/failslab.c): make a chosen share of
/// allocations fail on purpose, to test that their callers cope.
///
/// `FaultAttr` holds the kernel's knobs (probability, interval, times, space, verbose, and for page and slab
/// allocations min-order, ignore-gfp-wait, ignore-gfp-highmem), and `should_fail()` applies them in the kernel's
/// order.  `policy::FailPageAlloc` (fail_page_alloc) is a policy a BuddyAllocator takes; `policy::FailSlab`
/// (failslab) is one a KmemCache and Kmalloc take.  A __GFP_NOFAIL request is never failed.  The random choice
/// comes from a generator seeded by `FaultAttr::seed`, so a single-threaded run fails the same requests every
/// time; `fail_nth` fails exactly the n-th request that reaches the check (the kernel's per-task fail-nth).
///
/// @code
///   kmem::policy::FailPageAlloc fail;
///   fail.attr().probability = 100;       // every request that passes the filters...
///   fail.attr().times = 2;               // ...but only twice
///   fail.attr().min_order = 1;           // order-0 requests are never failed
///   assert(!fail.should_fail(kmem::gfp::kernel.value, 0));
///   assert(fail.should_fail(kmem::gfp::kernel.value, 2));
///   assert(!fail.should_fail((kmem::gfp::kernel | kmem::gfp::nofail).value, 1)); // NOFAIL is never failed
///   assert(fail.should_fail(kmem::gfp::kernel.value, 3));
///   assert(!fail.should_fail(kmem::gfp::kernel.value, 3));  // times used up
///   assert(fail.failures() == 2);
/// @endcode
#pragma once

#include <kmem/gfp.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/policy/lock.hpp>

#include <cstdint>
#include <cstdio>
#include <random>

namespace kmem {

/// The knobs of one fault-injection point (struct fault_attr and the fail_page_alloc / failslab extras).
struct FaultAttr {
    unsigned probability = 0;     ///< Percent of eligible requests to fail (0..100); 0 turns injection off.
    unsigned interval = 1;        ///< Only every interval-th eligible request may fail (1 = any).
    long times = -1;              ///< Failures left; -1 = no limit (fault_attr.times).
    std::uint64_t space = 0;      ///< Bytes of eligible requests to let through before failing any.
    unsigned verbose = 0;         ///< 1: print one line per injected failure to stderr ("FAULT_INJECTION").
    unsigned min_order = 0;       ///< Page requests below this order are never failed (fail_page_alloc).
    bool ignore_gfp_wait = false; ///< Requests that may sleep (__GFP_DIRECT_RECLAIM) are never failed.
    bool ignore_gfp_highmem = false; ///< __GFP_HIGHMEM requests are never failed (fail_page_alloc).
    std::uint64_t seed = 1;          ///< Seed of the random choice.
    std::uint64_t fail_nth = 0;      ///< When not 0: fail exactly the fail_nth-th request that is checked.
};

/// One fault-injection point: a FaultAttr, its counters and its generator.  Thread-safe (a small spin lock
/// guards the counters; no user code runs under it).
class FaultInjector {
public:
    /// Injection off until attr() is set.
    FaultInjector() = default;
    /// Injection with the knobs `a`.
    explicit FaultInjector(const FaultAttr& a) : attr_(a), rng_(a.seed) {}
    /// The knobs; change them between requests (reseed() after changing seed).
    FaultAttr& attr() noexcept { return attr_; }
    /// The knobs, read-only.
    const FaultAttr& attr() const noexcept { return attr_; }
    /// Restarts the generator from attr().seed and clears the counters.
    void reseed() {
        policy::LockGuard<policy::SpinLock> g(lock_);
        rng_.seed(attr_.seed);
        count_ = checked_ = failures_ = 0;
    }

    /// should_fail_ex(): whether a request of `size` bytes with GFP bits `gfp` fails.  NOFAIL and (with
    /// ignore_gfp_wait) sleeping requests never do; then fail_nth, probability, times, space and interval
    /// apply in the kernel's order.
    bool should_fail(std::uint32_t gfp, std::uint64_t size) {
        if (gfp & gfp::bits::nofail) return false;
        if (attr_.ignore_gfp_wait && (gfp & gfp::bits::direct_reclaim)) return false;
        bool fail = false;
        {
            policy::LockGuard<policy::SpinLock> g(lock_);
            ++checked_;
            if (attr_.fail_nth != 0) {
                fail = checked_ == attr_.fail_nth;
            } else if (attr_.probability != 0 && attr_.times != 0) {
                if (attr_.space > size) {
                    attr_.space -= size;
                } else if (attr_.interval <= 1 || ++count_ % attr_.interval == 0) {
                    fail = std::uniform_int_distribution<unsigned>(0, 99)(rng_) < attr_.probability;
                }
            }
            if (fail) {
                ++failures_;
                if (attr_.times > 0) --attr_.times;
            }
        }
        if (fail && attr_.verbose != 0 && !(gfp & gfp::bits::nowarn))
            std::fprintf(stderr, "FAULT_INJECTION: forcing a failure (request of %llu bytes, gfp 0x%x)\n",
                         static_cast<unsigned long long>(size), gfp);
        return fail;
    }
    /// Failures injected so far.
    std::uint64_t failures() const noexcept { return failures_; }
    /// Requests checked so far.
    std::uint64_t checked() const noexcept { return checked_; }

private:
    FaultAttr attr_;
    std::mt19937_64 rng_{1};
    std::uint64_t count_ = 0, checked_ = 0, failures_ = 0;
    policy::SpinLock lock_;
};

namespace policy {

/// No fault injection (the default): compiles to nothing.
struct NoFaults {
    /// This is a fault-injection policy.
    using policy_category = fault_policy_tag;
    /// Never fails.
    static constexpr bool should_fail(std::uint32_t, unsigned) noexcept { return false; }
    /// Never fails.
    static constexpr bool should_fail_slab(std::uint32_t, std::uint64_t) noexcept { return false; }
};

/// fail_page_alloc for a page allocator: should_fail(gfp, order) checks min_order and ignore-gfp-highmem, then
/// the FaultAttr rules with a size of one block.
class FailPageAlloc : public FaultInjector {
public:
    /// This is a fault-injection policy.
    using policy_category = fault_policy_tag;
    using FaultInjector::FaultInjector;
    /// should_fail_alloc_page(): whether an order-`order` request with GFP bits `gfp` fails.
    bool should_fail(std::uint32_t gfp, unsigned order) {
        if (order < attr().min_order) return false;
        if (attr().ignore_gfp_highmem && (gfp & gfp::bits::highmem)) return false;
        return FaultInjector::should_fail(gfp, std::uint64_t{4096} << order);
    }
    /// Slab requests are not this policy's business.
    static constexpr bool should_fail_slab(std::uint32_t, std::uint64_t) noexcept { return false; }
};

/// failslab for an object cache: should_fail_slab(gfp, object_size) applies the FaultAttr rules.
class FailSlab : public FaultInjector {
public:
    /// This is a fault-injection policy.
    using policy_category = fault_policy_tag;
    using FaultInjector::FaultInjector;
    /// should_failslab(): whether an object allocation of `object_size` bytes with GFP bits `gfp` fails.
    bool should_fail_slab(std::uint32_t gfp, std::uint64_t object_size) {
        return FaultInjector::should_fail(gfp, object_size);
    }
    /// Page requests are not this policy's business.
    static constexpr bool should_fail(std::uint32_t, unsigned) noexcept { return false; }
};

} // namespace policy
} // namespace kmem
