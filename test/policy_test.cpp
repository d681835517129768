// Tests for include/kmem/policy/: lock policies (concept, may_sleep; the multi-threaded ones are in
// buddy_threads_test.cpp) and error policies (AssertOnError aborts with a message, ThrowOnError, CallbackOnError).
#include <kmem/buddy.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/zone.hpp>

#include "support/expect_error.hpp"

#include <boost/test/unit_test.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

namespace {

// Runs `body` in a child process with stderr captured; returns (wait status, stderr text).
template <class Body>
std::pair<int, std::string> in_child(Body body) {
    int fds[2];
    BOOST_REQUIRE(::pipe(fds) == 0);
    std::fflush(stderr);
    const pid_t child = ::fork();
    BOOST_REQUIRE(child >= 0);
    if (child == 0) {
        ::close(fds[0]);
        ::dup2(fds[1], STDERR_FILENO);
        std::signal(SIGABRT, SIG_DFL); // the test framework's handler must not catch the child's abort
        body();
        ::_exit(0); // not reached when body aborts
    }
    ::close(fds[1]);
    std::string text;
    char buf[512];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
    return {status, text};
}

} // namespace

BOOST_AUTO_TEST_SUITE(lock_policies)

BOOST_AUTO_TEST_CASE(concept_and_may_sleep) {
    static_assert(kmem::policy::LockPolicy<kmem::policy::NoLock>);
    static_assert(kmem::policy::LockPolicy<kmem::policy::SpinLock>);
    static_assert(kmem::policy::LockPolicy<kmem::policy::MutexLock>);
    static_assert(!kmem::policy::LockPolicy<int>);
    static_assert(!kmem::policy::LockPolicy<std::mutex>); // no may_sleep constant
    static_assert(kmem::policy::NoLock::may_sleep);
    static_assert(!kmem::policy::SpinLock::may_sleep);
    static_assert(kmem::policy::MutexLock::may_sleep);
    // An allocator takes its may_sleep from its lock.
    static_assert(kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion>::may_sleep);
    static_assert(!kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::SpinLock>::may_sleep);
    static_assert(kmem::BuddyAllocator<4, 4096, kmem::policy::MutexLock, kmem::OffsetRegion>::may_sleep);
    static_assert(
        std::is_same_v<kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion>::lock_type, kmem::policy::NoLock>);
    BOOST_TEST(true); // compile-time checks above
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(error_policies)

BOOST_AUTO_TEST_CASE(policies_satisfy_the_concept) {
    static_assert(kmem::policy::ErrorPolicy<kmem::policy::AssertOnError>);
    static_assert(kmem::policy::ErrorPolicy<kmem::policy::ThrowOnError>);
    static_assert(kmem::policy::ErrorPolicy<kmem::policy::CallbackOnError>);
    static_assert(!kmem::policy::ErrorPolicy<int>);
    static_assert(std::is_same_v<kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion>::error_policy_type,
                                 kmem::policy::AssertOnError>);
    BOOST_TEST(kmem::to_string(kmem::ErrorKind::double_free) == "double free");
    BOOST_TEST(kmem::to_string(kmem::ErrorKind::wrong_order) == "wrong order");
}

BOOST_AUTO_TEST_CASE(assert_on_error_aborts_with_a_message) {
    auto [status, text] = in_child([] {
        kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion> buddy(kmem::OffsetRegion(1 << 20));
        kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 0);
        buddy.free_pages(p, 0);
        buddy.free_pages(p, 0); // double free: BUG()
    });
    BOOST_TEST(WIFSIGNALED(status));
    BOOST_TEST(WTERMSIG(status) == SIGABRT);
    BOOST_TEST_INFO("stderr: " << text);
    BOOST_TEST(text.find("double free") != std::string::npos);
    BOOST_TEST(text.find("kmem: free_pages:") != std::string::npos);
    BOOST_TEST(text.find("already free") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(assert_on_error_directly) {
    auto [status, text] = in_child([] {
        kmem::policy::AssertOnError policy;
        policy.on_error(
            kmem::UsageError{kmem::ErrorKind::wrong_order, "free_pages", "pfn 7 was allocated with order 1"});
    });
    BOOST_TEST(WIFSIGNALED(status));
    BOOST_TEST(WTERMSIG(status) == SIGABRT);
    BOOST_TEST(text == "kmem: free_pages: wrong order: pfn 7 was allocated with order 1\n");
}

BOOST_AUTO_TEST_CASE(throw_on_error_carries_the_kind) {
    kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError> buddy(
        kmem::OffsetRegion(1 << 20));
    kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 2);
    BOOST_REQUIRE(p != nullptr);
    const auto free_before = buddy.nr_free_pages();
    try {
        buddy.free_pages(p, 1);
        BOOST_FAIL("expected bad_usage");
    } catch (const kmem::bad_usage& e) {
        BOOST_TEST((e.error().kind == kmem::ErrorKind::wrong_order));
        BOOST_TEST(e.error().operation == "free_pages");
        BOOST_TEST(std::string(e.what()).find("kmem: free_pages: ") == 0u);
        BOOST_TEST(std::string(e.what()).find("order 2") != std::string::npos);
    }
    BOOST_TEST(buddy.nr_free_pages() == free_before); // the failed free changed nothing
    buddy.free_pages(p, 2);
    kmem::test::expect_error(buddy, kmem::ErrorKind::double_free, [&] { buddy.free_pages(p, 2); });
    kmem::test::expect_error(buddy, kmem::ErrorKind::misaligned, [&] { buddy.free_offset(12345, 0); });
    BOOST_CHECK_THROW(buddy.free_offset(std::uint64_t{1} << 30, 0),
                      std::invalid_argument); // a bad_usage is one
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(callback_on_error_calls_back_and_goes_on) {
    kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::CallbackOnError> buddy(
        kmem::OffsetRegion(1 << 20));
    kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 1);
    // Each mistake calls the callback once (expect_error installs a capturing one) and the program goes on.
    kmem::test::expect_error(buddy, kmem::ErrorKind::wrong_order, [&] { buddy.free_pages(p, 0); });
    kmem::test::expect_error(buddy, kmem::ErrorKind::not_block_start, [&] { buddy.free_pages(p + 1, 1); });
    kmem::test::expect_no_error(buddy, [&] { buddy.free_pages(p, 1); });
    kmem::test::expect_error(buddy, kmem::ErrorKind::double_free, [&] { buddy.free_pages(p, 1); });
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(callback_on_error_default_prints_without_aborting) {
    auto [status, text] = in_child([] {
        kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::CallbackOnError> buddy(
            kmem::OffsetRegion(1 << 20));
        kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 0);
        buddy.free_pages(p, 0);
        buddy.free_pages(p, 0); // reported, then the program goes on
        std::fprintf(stderr, "still running, %s\n",
                     buddy.check_invariants().empty() ? "consistent" : "broken");
        std::fflush(stderr);
        ::_exit(buddy.nr_free_pages() == buddy.total_pages() ? 7 : 8);
    });
    BOOST_TEST(WIFEXITED(status));
    BOOST_TEST(WEXITSTATUS(status) == 7);
    BOOST_TEST_INFO("stderr: " << text);
    BOOST_TEST(text.find("kmem: free_pages: double free: ") == 0u);
    BOOST_TEST(text.find("still running, consistent\n") != std::string::npos);
    // Replacing the callback with an empty one restores the default print.
    kmem::policy::CallbackOnError policy;
    int calls = 0;
    policy.set_callback([&](const kmem::UsageError&) { ++calls; });
    policy.on_error(kmem::UsageError{kmem::ErrorKind::misaligned, "free_pages", "x"});
    BOOST_TEST(calls == 1);
    policy.set_callback({});
    auto [status2, text2] = in_child([&] {
        policy.on_error(
            kmem::UsageError{kmem::ErrorKind::misaligned, "free_offset", "offset 5 is not aligned"});
    });
    BOOST_TEST(WIFEXITED(status2));
    BOOST_TEST(text2 == "kmem: free_offset: misaligned address: offset 5 is not aligned\n");
    BOOST_TEST(calls == 1);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(zone_policy)

BOOST_AUTO_TEST_CASE(zone_serves_lower_zones_only) {
    using kmem::ZoneType;
    using kmem::policy::zone_serves;
    static_assert(zone_serves(ZoneType::normal, ZoneType::normal));
    static_assert(zone_serves(ZoneType::normal, ZoneType::movable)); // fallback downwards
    static_assert(zone_serves(ZoneType::dma, ZoneType::dma32));
    static_assert(!zone_serves(ZoneType::normal, ZoneType::dma));
    static_assert(!zone_serves(ZoneType::dma32, ZoneType::dma));
    static_assert(kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion>::zone == ZoneType::normal);
    static_assert(
        kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::InZone<ZoneType::dma32>>::zone ==
        ZoneType::dma32);
    kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::InZone<ZoneType::dma32>> buddy(
        kmem::OffsetRegion(1 << 20));
    BOOST_TEST(buddy.buddyinfo().find("zone    DMA32") != std::string::npos);
    kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);
    BOOST_TEST(p != nullptr);
    buddy.free_pages(p, 0);
}

BOOST_AUTO_TEST_SUITE_END()
