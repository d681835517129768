// Tests of SLUB's debugging in include/kmem/slab.hpp: one planted bug per check, each asserting that the report
// carries the kernel's words (SLAB_POISON: "Poison overwritten"; SLAB_RED_ZONE: "Redzone overwritten" and "Left
// Redzone overwritten"; SLAB_CONSISTENCY_CHECKS: "Object already free"; a foreign object: "Wrong slab cache"; an
// interior pointer: "Invalid object pointer"; SLAB_STORE_USER: "Allocated in" / "Freed in" naming this file and
// function), delivered through policy::CallbackOnError (collected) and policy::ThrowOnError (carried by the
// exception).  Under AddressSanitizer, a child process touching a freed object must die with ASan's report.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include "support/expect_error.hpp"

#include <boost/test/unit_test.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::SlabFlags;
using kmem::test::expect_error;
using kmem::test::expect_no_error;

constexpr std::size_t page = 4096;
using Buddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion>;
using ThrowCache = kmem::KmemCache<Buddy, kmem::policy::ThrowOnError>;
using CbCache = kmem::KmemCache<Buddy, kmem::policy::CallbackOnError>;

// Every report a call made, through either policy.
template <class C, class F>
std::vector<kmem::UsageError> reports(C& c, F&& f) {
    return kmem::test::reported_errors(c, std::forward<F>(f));
}

bool contains(const std::string& text, std::string_view needle) {
    return text.find(needle) != std::string::npos;
}

std::string hex(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%016llx",
                  static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(p)));
    return b;
}

// Runs one planted-bug scenario against a cache of each error policy.  `scenario(cache)` plants the bug and
// returns the reports of the call that should find it; `check` looks at the single report.
template <class Scenario, class Check>
void with_both_sinks(SlabFlags flags, std::size_t size, Scenario scenario, Check check) {
    Buddy buddy(kmem::MmapRegion(2 << 20));
    {
        CbCache c(buddy, "debug_cb", size, 0, flags);
        BOOST_TEST_CONTEXT("CallbackOnError") {
            const std::vector<kmem::UsageError> got = scenario(c);
            BOOST_TEST(got.size() == 1u);
            if (got.size() == 1) check(got.front());
            BOOST_TEST(c.validate() == "");
        }
    }
    {
        ThrowCache c(buddy, "debug_throw", size, 0, flags);
        BOOST_TEST_CONTEXT("ThrowOnError") {
            const std::vector<kmem::UsageError> got = scenario(c);
            BOOST_TEST(got.size() == 1u);
            if (got.size() == 1) check(got.front());
            BOOST_TEST(c.validate() == "");
        }
    }
}

} // namespace

BOOST_AUTO_TEST_SUITE(slab_debug)

BOOST_AUTO_TEST_CASE(debug_objects_carry_poison_and_red_zones) {
    Buddy buddy(kmem::MmapRegion(2 << 20));
    ThrowCache c(buddy, "layout", 30, 0, SlabFlags::poison | SlabFlags::red_zone);
    BOOST_TEST(c.stride() > 30u); // red zones and the free pointer live outside the object
    auto* a = static_cast<unsigned char*>(c.alloc());
    auto* b = static_cast<unsigned char*>(c.alloc());
    // Allocated: active red zones on both sides.
    BOOST_TEST(a[-1] == kmem::slab_poison::red_active);
    BOOST_TEST(a[30] == kmem::slab_poison::red_active);
    c.free(a);
    // Free: poison 0x6b ending in 0xa5, inactive red zones.
    BOOST_TEST(std::count(a, a + 29, kmem::slab_poison::free_byte) == 29);
    BOOST_TEST(a[29] == kmem::slab_poison::end_byte);
    BOOST_TEST(a[-1] == kmem::slab_poison::red_inactive);
    BOOST_TEST(a[30] == kmem::slab_poison::red_inactive);
    // Debug caches have no per-CPU arrays (slabinfo shows limit and batchcount 0).
    BOOST_TEST(c.stats().limit == 0u);
    BOOST_TEST(c.stats().batchcount == 0u);
    BOOST_TEST(c.stats().cpu_objs == 0u);
    BOOST_TEST(c.stats().active_objs == 1u);
    c.free(b);
    BOOST_TEST(c.validate() == "");
    BOOST_TEST(c.destroy());
}

BOOST_AUTO_TEST_CASE(poison_overwritten_is_found_by_the_next_allocation) {
    with_both_sinks(
        SlabFlags::poison, 64,
        [](auto& c) {
            auto* keep = static_cast<unsigned char*>(c.alloc());
            auto* a = static_cast<unsigned char*>(c.alloc());
            c.free(a);
            a[13] = 0x00; // use after free
            void* got = nullptr;
            auto errs = reports(c, [&] { got = c.alloc(); });
            // The object is handed out (CallbackOnError) or counted as allocated (ThrowOnError); either way it is
            // the one that was freed, and freeing it puts the cache back in order.
            if (got != nullptr) BOOST_TEST(got == a);
            a[13] = 0x6b;
            c.free(a);
            c.free(keep);
            return errs;
        },
        [](const kmem::UsageError& e) {
            BOOST_TEST((e.kind == ErrorKind::slab_corruption));
            BOOST_TEST(e.operation == "kmem_cache_alloc");
            BOOST_TEST(contains(e.message, "Poison overwritten"), e.message);
            BOOST_TEST(contains(e.message, "(Not tainted): Poison overwritten"), e.message);
            BOOST_TEST(contains(e.message, "@offset=13. First byte 0x0 instead of 0x6b"), e.message);
            BOOST_TEST(contains(e.message, "BUG debug_"), e.message);
        });
}

BOOST_AUTO_TEST_CASE(right_red_zone_overwritten_is_found_at_free) {
    with_both_sinks(
        SlabFlags::red_zone, 40,
        [](auto& c) {
            auto* a = static_cast<unsigned char*>(c.alloc());
            a[40] = 'x'; // one byte past the object
            auto errs = reports(c, [&] { c.free(a); });
            return errs;
        },
        [](const kmem::UsageError& e) {
            BOOST_TEST((e.kind == ErrorKind::slab_corruption));
            BOOST_TEST(e.operation == "kmem_cache_free");
            BOOST_TEST(contains(e.message, "Redzone overwritten"), e.message);
            BOOST_TEST(contains(e.message, "Right Redzone overwritten"), e.message);
            BOOST_TEST(contains(e.message, "@offset=40. First byte 0x78 instead of 0xcc"), e.message);
        });
}

BOOST_AUTO_TEST_CASE(left_red_zone_overwritten_is_found_at_free) {
    with_both_sinks(
        SlabFlags::red_zone, 40,
        [](auto& c) {
            auto* a = static_cast<unsigned char*>(c.alloc());
            a[-1] = 'y'; // one byte before the object
            auto errs = reports(c, [&] { c.free(a); });
            return errs;
        },
        [](const kmem::UsageError& e) {
            BOOST_TEST((e.kind == ErrorKind::slab_corruption));
            BOOST_TEST(contains(e.message, "Left Redzone overwritten"), e.message);
            BOOST_TEST(contains(e.message, "@offset=-1. First byte 0x79 instead of 0xcc"), e.message);
        });
}

BOOST_AUTO_TEST_CASE(red_zone_of_a_free_object_is_checked_at_allocation) {
    with_both_sinks(
        SlabFlags::red_zone | SlabFlags::poison, 24,
        [](auto& c) {
            auto* a = static_cast<unsigned char*>(c.alloc());
            c.free(a);
            a[24] = 0; // after the free: the inactive right red zone
            void* got = nullptr;
            auto errs = reports(c, [&] { got = c.alloc(); });
            if (got != nullptr) BOOST_TEST(got == a);
            a[24] = kmem::slab_poison::red_active;
            c.free(a);
            return errs;
        },
        [](const kmem::UsageError& e) {
            BOOST_TEST(contains(e.message, "Right Redzone overwritten"), e.message);
            BOOST_TEST(contains(e.message, "instead of 0xbb"), e.message);
        });
}

BOOST_AUTO_TEST_CASE(double_free_is_found_with_consistency_checks) {
    for (SlabFlags flags :
         {SlabFlags::consistency_checks, SlabFlags::consistency_checks | SlabFlags::red_zone,
          SlabFlags::consistency_checks | SlabFlags::poison, SlabFlags::red_zone}) {
        BOOST_TEST_CONTEXT("flags " << static_cast<unsigned>(flags)) {
            with_both_sinks(
                flags, 48,
                [](auto& c) {
                    auto* keep = c.alloc();
                    auto* a = c.alloc();
                    c.free(a);
                    const kmem::SlabStats before = c.stats();
                    auto errs = reports(c, [&] { c.free(a); });
                    BOOST_TEST(c.stats().active_objs == before.active_objs); // nothing was freed twice
                    c.free(keep);
                    return errs;
                },
                [](const kmem::UsageError& e) {
                    BOOST_TEST((e.kind == ErrorKind::double_free));
                    BOOST_TEST(contains(e.message, "Object already free"), e.message);
                    BOOST_TEST(contains(e.message, "Slab 0x"), e.message);
                });
        }
    }
}

BOOST_AUTO_TEST_CASE(wrong_cache_and_invalid_pointer_are_named) {
    with_both_sinks(
        SlabFlags::consistency_checks, 48,
        [](auto& c) {
            // An object of another cache over the same buddy.
            kmem::KmemCache<Buddy, kmem::policy::ThrowOnError> other(c.parent(), "other_cache", 48);
            void* foreign = other.alloc();
            auto errs = reports(c, [&] { c.free(foreign); });
            other.free(foreign);
            return errs;
        },
        [](const kmem::UsageError& e) {
            BOOST_TEST((e.kind == ErrorKind::wrong_cache));
            BOOST_TEST(contains(e.message, "Wrong slab cache"), e.message);
            BOOST_TEST(contains(e.message, "but object is from other_cache"), e.message);
        });
    with_both_sinks(
        SlabFlags::consistency_checks | SlabFlags::red_zone, 48,
        [](auto& c) {
            auto* a = static_cast<char*>(c.alloc());
            auto errs = reports(c, [&] { c.free(a + 16); });
            c.free(a);
            return errs;
        },
        [](const kmem::UsageError& e) {
            BOOST_TEST((e.kind == ErrorKind::not_object));
            BOOST_TEST(contains(e.message, "Invalid object pointer"), e.message);
        });
}

BOOST_AUTO_TEST_CASE(store_user_names_the_allocation_and_free_sites) {
    int alloc_line = 0, free_line = 0;
    with_both_sinks(
        SlabFlags::store_user | SlabFlags::consistency_checks, 64,
        [&](auto& c) {
            auto* keep = c.alloc();
            alloc_line = __LINE__ + 1;
            void* a = c.alloc();
            free_line = __LINE__ + 1;
            c.free(a);
            auto errs = reports(c, [&] { c.free(a); });
            c.free(keep);
            return errs;
        },
        [&](const kmem::UsageError& e) {
            BOOST_TEST((e.kind == ErrorKind::double_free));
            BOOST_TEST(contains(e.message, "Object already free"), e.message);
            // "Allocated in <function> <file>:<line> age=... cpu=... thread=...", then "Freed in ...".
            const std::size_t allocated = e.message.find("Allocated in ");
            const std::size_t freed = e.message.find("Freed in ");
            BOOST_REQUIRE(allocated != std::string::npos);
            BOOST_REQUIRE(freed != std::string::npos);
            BOOST_TEST(allocated < freed);
            const std::string alloc_text =
                e.message.substr(allocated, e.message.find('\n', allocated) - allocated);
            const std::string free_text = e.message.substr(freed, e.message.find('\n', freed) - freed);
            BOOST_TEST(contains(alloc_text, "slab_debug_test.cpp:" + std::to_string(alloc_line)), alloc_text);
            BOOST_TEST(contains(free_text, "slab_debug_test.cpp:" + std::to_string(free_line)), free_text);
            // The function of the call site: the lambda's call operator inside this test case.
            BOOST_TEST(contains(alloc_text, "operator()"), alloc_text);
            BOOST_TEST(contains(alloc_text, " age="), alloc_text);
            BOOST_TEST(contains(alloc_text, " cpu="), alloc_text);
            BOOST_TEST(!contains(alloc_text, "(not recorded)"), alloc_text);
        });
    // The sites of a direct call (not through a lambda) name the test's own function.
    Buddy buddy(kmem::MmapRegion(1 << 20));
    CbCache c(buddy, "sites", 32, 0, SlabFlags::store_user | SlabFlags::red_zone);
    auto* p = static_cast<unsigned char*>(c.alloc());
    const int line = __LINE__ - 1;
    p[32] = 0;
    const auto e = expect_error(
        c, ErrorKind::slab_corruption, [&] { c.free(p); }, "Redzone overwritten");
    BOOST_REQUIRE(e.has_value());
    BOOST_TEST(contains(e->message, "Allocated in test_method"), e->message);
    BOOST_TEST(contains(e->message, "slab_debug_test.cpp:" + std::to_string(line)), e->message);
    BOOST_TEST(contains(e->message, "Freed in (not recorded)"), e->message); // never freed before
    BOOST_TEST(contains(e->message, "Object " + hex(p)), e->message);
}

BOOST_AUTO_TEST_CASE(debug_cache_stays_consistent_through_many_reports) {
    // A mix of mistakes on one cache, each reported, none corrupting the cache's lists or counts.
    Buddy buddy(kmem::MmapRegion(4 << 20));
    const std::uint64_t start = buddy.nr_free_pages();
    {
        CbCache c(buddy, "battered", 100, 0, kmem::slab_debug_flags);
        std::vector<void*> objs;
        for (int i = 0; i < 300; ++i) objs.push_back(c.alloc());
        int reported = 0;
        c.error_policy().set_callback([&](const kmem::UsageError&) { ++reported; });
        for (int i = 0; i < 300; i += 3) {
            c.free(objs[static_cast<std::size_t>(i)]);
            c.free(objs[static_cast<std::size_t>(i)]);                             // double free
            c.free(static_cast<char*>(objs[static_cast<std::size_t>(i + 1)]) + 4); // interior
        }
        BOOST_TEST(reported == 200);
        BOOST_TEST(c.validate() == "");
        BOOST_TEST(c.stats().active_objs == 200u);
        c.error_policy().set_callback({});
        for (int i = 0; i < 300; ++i)
            if (i % 3 != 0) expect_no_error(c, [&] { c.free(objs[static_cast<std::size_t>(i)]); });
        BOOST_TEST(c.validate() == "");
        BOOST_TEST(c.destroy());
    }
    BOOST_TEST(buddy.nr_free_pages() == start);
}

#ifdef KMEM_DETAIL_SLAB_ASAN
namespace {
// Forks; the child runs `touch` with its stderr sent back through a pipe.  Returns the child's stderr and sets
// `status` to its wait status.
template <class F>
std::string in_child(F touch, int& status) {
    int fds[2];
    BOOST_REQUIRE(::pipe(fds) == 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    BOOST_REQUIRE(pid >= 0);
    if (pid == 0) {
        ::dup2(fds[1], 2);
        ::close(fds[0]);
        touch();
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    ::waitpid(pid, &status, 0);
    return out;
}
} // namespace

BOOST_AUTO_TEST_CASE(address_sanitizer_sees_use_after_free_of_objects) {
    Buddy buddy(kmem::MmapRegion(1 << 20));
    kmem::KmemCache<Buddy> c(buddy, "asan", 64);
    auto* live = static_cast<volatile unsigned char*>(c.alloc());
    auto* freed = static_cast<volatile unsigned char*>(c.alloc());
    c.free(const_cast<unsigned char*>(freed));
    // A read of a freed object.
    int status = 0;
    std::string err = in_child([&] { std::printf("%d\n", freed[10]); }, status);
    BOOST_TEST(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), err);
    BOOST_TEST((contains(err, "use-after-poison") || contains(err, "heap-use-after-free")), err);
    // A write.
    err = in_child([&] { freed[0] = 1; }, status);
    BOOST_TEST(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), err);
    BOOST_TEST((contains(err, "use-after-poison") || contains(err, "heap-use-after-free")), err);
    // Control: the live object is fine, and a freed object allocated again is too.
    err = in_child([&] { live[10] = live[11]; }, status);
    BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 0), err);
    auto* again = static_cast<volatile unsigned char*>(c.alloc());
    BOOST_TEST(again == freed);
    err = in_child([&] { again[10] = again[11]; }, status);
    BOOST_TEST((WIFEXITED(status) && WEXITSTATUS(status) == 0), err);
    // Objects of a slab never handed out are poisoned too.
    c.free(const_cast<unsigned char*>(again));
    c.free(const_cast<unsigned char*>(live));
    c.drain_cpu_arrays();
    // A neighbour of `live` in its one-page slab, free now (pick the side inside the slab).
    const std::uintptr_t slab_base = reinterpret_cast<std::uintptr_t>(live) & ~std::uintptr_t{page - 1};
    volatile unsigned char* other = reinterpret_cast<std::uintptr_t>(live) - slab_base >= c.stride()
                                        ? live - c.stride()
                                        : live + c.stride();
    err = in_child([&] { std::printf("%d\n", other[16]); }, status);
    BOOST_TEST(!(WIFEXITED(status) && WEXITSTATUS(status) == 0), err);
    BOOST_TEST(contains(err, "use-after-poison"), err);
}
#endif

BOOST_AUTO_TEST_SUITE_END()
