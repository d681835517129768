// Tests for how BuddyAllocator reports mistakes and oversized requests.
//
// - callback_reentry: the CallbackOnError callback may call back into the allocator (buddyinfo(),
//   nr_free_pages(), check_invariants()) for every kind of mistake, with SpinLock, MutexLock and SpinLock plus
//   per-CPU lists: reports are made after the allocator's locks are released.  A report made under a lock
//   deadlocks; each call runs under a 10 s watchdog that names the case and ends the process.
// - oversized_requests: an allocation above MaxOrder is a failed allocation (WARN_ON_ONCE in the kernel's
//   __alloc_pages), not a caller mistake: even with the default AssertOnError it returns null, counts a failure
//   and warns once unless gfp::nowarn, on every allocation path.
// - put_page_on_a_freed_page: put_page on a page whose count is already 0 is ErrorKind::bad_refcount.
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/expect_error.hpp"

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::test::ErrorExpectation;
using kmem::test::expect_consistent;
using kmem::test::expect_error;
using kmem::test::Snapshot;

constexpr std::size_t ps = 4096;
constexpr unsigned max_order = 4;
constexpr std::uint64_t arena_pages = 64;

// ---------------------------------------------------------------------------------------------------------------
// A host-memory allocator whose mistakes go to a callback, with the given lock (and per-CPU lists when asked).
template <class Lock, class... More>
using CbBuddy =
    kmem::BuddyAllocator<max_order, ps, kmem::MmapRegion, Lock, kmem::policy::CallbackOnError, More...>;

// What the callback saw of the allocator from inside the report.
struct Inside {
    int calls = 0;
    std::string buddyinfo;
    std::uint64_t free_pages = 0;
    std::string invariants;
};

// Triggers every kind of mistake on an allocator of type A (CallbackOnError) whose callback calls back into it;
// each must be reported once, of its kind, the callback must see the allocator as it was, and nothing changes.
template <class A>
void callback_may_reenter(const std::string& setup) {
    A a(kmem::MmapRegion(arena_pages * ps, kmem::MmapOptions{.alignment = ps << max_order}));
    a.set_warning_stream(nullptr);
    Inside inside;
    const auto trigger = [&](const std::string& name, ErrorKind kind, auto&& call) {
        BOOST_TEST_CONTEXT(setup << ": " << name) {
            inside = Inside{};
            const Snapshot<A> before(a);
            expect_error(a, kind, call,
                         ErrorExpectation{.during_report =
                                              [&](const kmem::UsageError&) {
                                                  ++inside.calls;
                                                  inside.buddyinfo = a.buddyinfo();
                                                  inside.free_pages = a.nr_free_pages();
                                                  inside.invariants = a.check_invariants();
                                              },
                                          .watchdog = std::chrono::seconds(10),
                                          .label = setup + ": " + name});
            BOOST_TEST(inside.calls == 1);
            BOOST_TEST(inside.buddyinfo == before.buddyinfo); // the callback sees the allocator unchanged
            BOOST_TEST(inside.free_pages == before.free_pages);
            BOOST_TEST(inside.invariants == "");
            before.expect_unchanged(a);
        }
    };

    Page* p = a.alloc_pages(gfp::atomic, 0);
    BOOST_REQUIRE(p != nullptr);
    a.free_pages(p, 0);
    trigger("double free", ErrorKind::double_free, [&] { a.free_pages(p, 0); });
    trigger("get_page on a free page", ErrorKind::bad_refcount, [&] { a.get_page(p); });
    trigger("put_page on a freed page", ErrorKind::bad_refcount, [&] { a.put_page(p); });

    Page* two = a.alloc_pages(gfp::atomic, 1);
    BOOST_REQUIRE(two != nullptr);
    trigger("wrong order", ErrorKind::wrong_order, [&] { a.free_pages(two, 0); });
    a.free_pages(two, 1);

    Page* four = a.alloc_pages(gfp::atomic, 2);
    BOOST_REQUIRE(four != nullptr);
    trigger("a page inside a block", ErrorKind::not_block_start, [&] { a.free_pages(four + 1, 0); });
    a.free_pages(four, 2);

    Page* comp = a.alloc_pages(gfp::atomic | gfp::comp, 2);
    BOOST_REQUIRE(comp != nullptr);
    trigger("a tail page of a compound page", ErrorKind::not_block_start, [&] { a.free_pages(comp + 2, 0); });
    a.free_pages(comp, 2);

    void* v = a.get_free_pages(gfp::atomic, 0);
    BOOST_REQUIRE(v != nullptr);
    trigger("a misaligned address", ErrorKind::misaligned,
            [&] { a.free_pages(static_cast<char*>(v) + 1, 0); });
    trigger("an address outside the region", ErrorKind::out_of_region,
            [&] { a.free_pages(a.region().data() + arena_pages * ps, 0); });
    a.free_pages(v, 0);

    void* exact = a.alloc_pages_exact(3 * ps, gfp::atomic);
    BOOST_REQUIRE(exact != nullptr);
    a.free_pages_exact(exact, 3 * ps);
    trigger("free_pages_exact twice", ErrorKind::double_free, [&] { a.free_pages_exact(exact, 3 * ps); });

    Page* got = p;
    trigger("run-time flags that break a rule", ErrorKind::invalid_gfp,
            [&] { got = a.alloc_pages(kmem::gfp_t(gfp::dma) | gfp::highmem, 0); });
    BOOST_TEST(got == nullptr);

    if constexpr (A::has_pcp) a.drain_all_pages();
    BOOST_TEST(a.nr_free_pages() == arena_pages);
    expect_consistent(a);
}

// ---------------------------------------------------------------------------------------------------------------
// The default error policy (AssertOnError): a caller mistake would abort, an oversized request must not.
template <std::size_t PageSize>
using Plain = kmem::BuddyAllocator<10, PageSize, kmem::MmapRegion>;

// Runs `request` (which must fail: null / nullopt) on a fresh allocator whose warnings go to a string; checks that
// exactly one failure was counted and nothing else changed, and returns what was written.
template <class A, class Request>
std::string oversized(Request request) {
    A a(kmem::MmapRegion(arena_pages * A::page_size));
    std::ostringstream out;
    a.set_warning_stream(&out);
    const Snapshot<A> before(a);
    const std::uint64_t failures = a.stats().failures;
    BOOST_TEST(request(a));
    BOOST_TEST(a.stats().failures == failures + 1);
    before.expect_unchanged(a);
    return out.str();
}

// One byte more than the largest block: order MaxOrder + 1.
template <class A>
constexpr std::size_t above_largest = (std::size_t{A::page_size} << A::max_order) + 1;

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(callback_reentry)

BOOST_AUTO_TEST_CASE(spin_lock) {
    callback_may_reenter<CbBuddy<kmem::policy::SpinLock>>("SpinLock");
}

BOOST_AUTO_TEST_CASE(mutex_lock) {
    callback_may_reenter<CbBuddy<kmem::policy::MutexLock>>("MutexLock");
}

BOOST_AUTO_TEST_CASE(spin_lock_with_per_cpu_lists) {
    callback_may_reenter<CbBuddy<kmem::policy::SpinLock, kmem::policy::PerCpuPages<>>>(
        "SpinLock + PerCpuPages");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(oversized_requests)

BOOST_AUTO_TEST_CASE(with_nowarn_every_path_fails_quietly) {
    using A = Plain<8192>;
    static_assert(std::is_same_v<A::error_policy_type, kmem::policy::AssertOnError>);
    const unsigned order = A::max_order + 1; // a run-time order
    const auto quiet = gfp::kernel | gfp::nowarn;
    BOOST_TEST(oversized<A>([&](A& a) { return a.alloc_pages(quiet, order) == nullptr; }) == "");
    BOOST_TEST(oversized<A>([&](A& a) { return a.alloc_pages(kmem::gfp_t(quiet), order) == nullptr; }) == "");
    BOOST_TEST(oversized<A>([&](A& a) { return a.get_free_pages(quiet, order) == nullptr; }) == "");
    BOOST_TEST(oversized<A>([&](A& a) { return !a.alloc_offset(quiet, order).has_value(); }) == "");
    BOOST_TEST(oversized<A>([&](A& a) { return a.alloc_pages_exact(above_largest<A>, quiet) == nullptr; }) ==
               "");
    BOOST_TEST(oversized<A>([&](A& a) {
                   return a.try_allocate(quiet, above_largest<A>, A::page_size) == nullptr;
               }) == "");
}

// WARN_ON_ONCE: only the first oversized request of an allocator has to warn, so each path gets an allocator
// type of its own (a page size no other test here uses).
BOOST_AUTO_TEST_CASE(without_nowarn_the_first_request_warns) {
    const unsigned order = 11; // MaxOrder 10 + 1, at run time
    const auto has_order = [](const std::string& text) {
        BOOST_TEST_INFO("warning: '" << text << "'");
        BOOST_TEST(text.find("order:11") != std::string::npos);
    };
    has_order(
        oversized<Plain<4096>>([&](Plain<4096>& a) { return a.alloc_pages(gfp::kernel, order) == nullptr; }));
    has_order(oversized<Plain<2048>>(
        [&](Plain<2048>& a) { return a.alloc_pages(kmem::gfp_t(gfp::kernel), order) == nullptr; }));
    has_order(oversized<Plain<1024>>(
        [&](Plain<1024>& a) { return a.get_free_pages(gfp::kernel, order) == nullptr; }));
    has_order(oversized<Plain<512>>(
        [&](Plain<512>& a) { return !a.alloc_offset(gfp::kernel, order).has_value(); }));
    // The byte interfaces: a warning, whatever its wording.
    BOOST_TEST(oversized<Plain<256>>([](Plain<256>& a) {
                   return a.alloc_pages_exact(above_largest<Plain<256>>, gfp::kernel) == nullptr;
               }) != "");
    BOOST_TEST(oversized<Plain<128>>([](Plain<128>& a) {
                   return a.try_allocate(gfp::kernel, above_largest<Plain<128>>, 128) == nullptr;
               }) != "");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(put_page_on_a_freed_page)

BOOST_AUTO_TEST_CASE(reports_bad_refcount) {
    {
        kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError> a(arena_pages *
                                                                                              ps);
        Page* p = a.alloc_pages(gfp::kernel, 1);
        BOOST_REQUIRE(p != nullptr);
        a.free_pages(p, 1);
        const Snapshot<decltype(a)> before(a);
        expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); });
        expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p + 1); }); // a page inside the free block
        before.expect_unchanged(a);
    }
    {
        // Freed onto a per-CPU list.
        kmem::BuddyAllocator<max_order, ps, kmem::OffsetRegion, kmem::policy::ThrowOnError,
                             kmem::policy::PerCpuPages<4, 12>>
            a(arena_pages * ps);
        Page* p = a.alloc_pages(gfp::kernel, 0);
        BOOST_REQUIRE(p != nullptr);
        a.free_pages(p, 0);
        BOOST_REQUIRE(p->test(kmem::PageFlag::pcp));
        const Snapshot<decltype(a)> before(a);
        expect_error(a, ErrorKind::bad_refcount, [&] { a.put_page(p); });
        before.expect_unchanged(a);
    }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(exact_allocation_flags)

// alloc_pages_exact with run-time flags refuses gfp::comp and gfp::highmem as the compile-time form does
// (the compile-time form is test/compile_fail/exact_*_through_buddy.cpp).
BOOST_AUTO_TEST_CASE(run_time_flags_with_comp_or_highmem_are_refused) {
    kmem::BuddyAllocator<max_order, ps, kmem::MmapRegion, kmem::policy::ThrowOnError> a(
        kmem::MmapRegion(arena_pages * ps));
    a.set_warning_stream(nullptr);
    const Snapshot<decltype(a)> before(a);
    expect_error(
        a, ErrorKind::invalid_gfp,
        [&] { BOOST_TEST(a.alloc_pages_exact(8192, kmem::gfp_t(gfp::kernel | gfp::comp)) == nullptr); },
        "exact allocation");
    before.expect_unchanged(a);
    void* p = a.alloc_pages_exact(3 * ps, kmem::gfp_t(gfp::kernel));
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(a.nr_free_pages() == a.total_pages() - 3);
    a.free_pages_exact(p, 3 * ps);
    BOOST_TEST(a.nr_free_pages() == a.total_pages());
    expect_consistent(a);

    kmem::BuddyAllocator<max_order, ps, kmem::MmapRegion, kmem::policy::ThrowOnError,
                         kmem::policy::InZone<kmem::ZoneType::highmem>>
        high(kmem::MmapRegion(arena_pages * ps));
    expect_error(
        high, ErrorKind::invalid_gfp,
        [&] { BOOST_TEST(high.alloc_pages_exact(8192, kmem::gfp_t(gfp::highuser)) == nullptr); },
        "exact allocation");
    BOOST_TEST(high.nr_free_pages() == high.total_pages());
}

BOOST_AUTO_TEST_SUITE_END()
