/// @file
/// The one way tests check a mistake that an allocator reports through its error policy.
///
/// - expect_error(a, kind, call): runs `call` and asserts that `a` reported exactly one mistake, of `kind`, with a
///   non-empty message.  With policy::ThrowOnError the report is the kmem::bad_usage that leaves the call; with
///   policy::CallbackOnError a capturing callback is installed for the call (and the default callback, which
///   prints, is back afterwards: CallbackOnError offers no way to read the one it had).  Returns the report (or
///   std::nullopt when there was not exactly one) for further checks, e.g. of `operation`.
/// - expect_error(a, kind, call, "needle"): the message must also contain "needle".
/// - expect_error(a, kind, call, ErrorExpectation{...}): with `during_report`, a function run inside the report
///   (CallbackOnError: inside the callback, where it may call back into the allocator; ThrowOnError: on the caught
///   report); with `watchdog`, the call runs on another thread and the process ends with a message naming `label`
///   when it has not returned in time (a report made while the allocator holds its lock deadlocks).
/// - expect_no_error(a, call): asserts that `call` reports nothing.
/// - reported_errors() and error_mismatch(): the same without assertions, for randomized runs that report through
///   their own failure path (see model_runner.hpp).
///
/// Failures name the line of the expect_error call.  AssertOnError allocators abort on a report: test those in a
/// child process (policy_test.cpp) instead.
///
/// @code
///   kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError> a(64 * 4096);
///   kmem::Page* p = a.alloc_pages(kmem::gfp::kernel, 0);
///   a.free_pages(p, 0);
///   kmem::test::expect_error(a, kmem::ErrorKind::double_free, [&] { a.free_pages(p, 0); });
///   kmem::Page* q = a.alloc_pages(kmem::gfp::kernel, 2);
///   kmem::test::expect_error(a, kmem::ErrorKind::wrong_order, [&] { a.free_pages(q, 3); }, "order 2");
/// @endcode
#pragma once

#include <kmem/policy/error.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <concepts>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace kmem::test {

/// An allocator whose error policy throws kmem::bad_usage.
template <class A>
concept ReportsByThrowing = std::same_as<typename A::error_policy_type, kmem::policy::ThrowOnError>;
/// An allocator whose error policy calls a callback and lets the caller go on.
template <class A>
concept ReportsByCallback = std::same_as<typename A::error_policy_type, kmem::policy::CallbackOnError>;

/// A function given each report as it is made.
using ErrorHook = std::function<void(const UsageError&)>;

/// Where expect_error was called from (filled in by default arguments at the call site).
struct CallSite {
    const char* file; ///< The calling source file.
    unsigned line;    ///< The calling line.
    CallSite(const char* f = __builtin_FILE(), unsigned l = __builtin_LINE()) noexcept : file(f), line(l) {}
};

/// What else expect_error checks or does beyond the kind.
struct ErrorExpectation {
    std::string_view message_contains{};   ///< The message must contain this (when not empty).
    ErrorHook during_report{};             ///< Run inside each report (see the file comment).
    std::chrono::milliseconds watchdog{0}; ///< When > 0: run the call on a thread, exit(1) if it hangs.
    std::string label{};                   ///< Names the call in the watchdog's message.
};

/// Runs `body` on another thread and returns its result; when it has not returned after `limit`, prints
/// "<label>: ... did not return" to stderr and ends the process with std::_Exit(1) (the thread may be stuck in a
/// deadlock, so nothing can be joined or unwound).  Exceptions from `body` are rethrown here.
template <class Body>
auto finish_or_exit(std::string_view label, std::chrono::milliseconds limit, Body&& body) {
    using R = std::invoke_result_t<Body&>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<Body>(body));
    std::future<R> done = task->get_future();
    std::thread([task] { (*task)(); }).detach();
    if (done.wait_for(limit) != std::future_status::ready) {
        std::fprintf(stderr, "%.*s: the call did not return within %lld ms (a deadlock?); exiting\n",
                     static_cast<int>(label.size()), label.data(), static_cast<long long>(limit.count()));
        std::fflush(stderr);
        std::_Exit(1);
    }
    return done.get();
}

/// Runs `call` and returns every mistake `a` reported during it, without asserting anything: the bad_usage
/// thrown (ThrowOnError) or each callback call (CallbackOnError; the default callback is back afterwards).
/// `during` is run on each report (inside the callback for CallbackOnError).
template <class A, class Call>
std::vector<UsageError> reported_errors(A& a, Call&& call, const ErrorHook& during = {}) {
    static_assert(ReportsByThrowing<A> || ReportsByCallback<A>,
                  "expect_error needs an allocator whose error policy is policy::ThrowOnError or "
                  "policy::CallbackOnError; AssertOnError aborts, so test it in a child process.");
    std::vector<UsageError> out;
    if constexpr (ReportsByThrowing<A>) {
        try {
            std::forward<Call>(call)();
        } catch (const kmem::bad_usage& e) {
            out.push_back(e.error());
            if (during) during(e.error());
        }
    } else {
        struct Restore {
            A& a;
            ~Restore() { a.error_policy().set_callback({}); }
        } restore{a};
        a.error_policy().set_callback([&out, &during](const UsageError& e) {
            out.push_back(e);
            if (during) during(e);
        });
        std::forward<Call>(call)();
    }
    return out;
}

/// "kind (operation: message)", for failure messages.
inline std::string describe(const UsageError& e) {
    return "'" + std::string(kmem::to_string(e.kind)) + "' (" + std::string(e.operation) + ": " + e.message +
           ")";
}

/// Empty when `errors` is exactly one report of `kind` with a non-empty message containing `needle`; otherwise
/// a sentence saying what differs.
inline std::string error_mismatch(const std::vector<UsageError>& errors, ErrorKind kind,
                                  std::string_view needle = {}) {
    const std::string want = "'" + std::string(kmem::to_string(kind)) + "'";
    if (errors.empty()) return "expected a report of " + want + " but nothing was reported";
    if (errors.size() > 1) {
        std::string s = "expected one report of " + want + " but got " + std::to_string(errors.size()) + ":";
        for (const UsageError& e : errors) s += " " + describe(e);
        return s;
    }
    const UsageError& e = errors.front();
    if (e.kind != kind) return "expected " + want + " but got " + describe(e);
    if (e.message.empty()) return "the report of " + want + " has an empty message";
    if (!needle.empty() && e.message.find(needle) == std::string::npos)
        return "the report " + describe(e) + " does not mention '" + std::string(needle) + "'";
    return {};
}

/// Runs `call` and asserts that `a` reported exactly one mistake, of `kind` (see the file comment).
template <class A, class Call>
std::optional<UsageError> expect_error(A& a, ErrorKind kind, Call&& call, ErrorExpectation expect = {},
                                       CallSite where = {}) {
    std::vector<UsageError> errors;
    if (expect.watchdog.count() > 0) {
        errors =
            finish_or_exit(expect.label.empty() ? std::string("expect_error") : expect.label, expect.watchdog,
                           [&] { return reported_errors(a, call, expect.during_report); });
    } else {
        errors = reported_errors(a, std::forward<Call>(call), expect.during_report);
    }
    const std::string problem = error_mismatch(errors, kind, expect.message_contains);
    BOOST_TEST(problem.empty(), where.file << ":" << where.line << ": " << problem);
    if (errors.size() != 1) return std::nullopt;
    return errors.front();
}

/// expect_error() whose message must also contain `needle`.
template <class A, class Call>
std::optional<UsageError> expect_error(A& a, ErrorKind kind, Call&& call, std::string_view needle,
                                       CallSite where = {}) {
    return expect_error(a, kind, std::forward<Call>(call), ErrorExpectation{.message_contains = needle},
                        where);
}

/// Runs `call` and asserts that `a` reported no mistake during it.
template <class A, class Call>
void expect_no_error(A& a, Call&& call, CallSite where = {}) {
    const std::vector<UsageError> errors = reported_errors(a, std::forward<Call>(call));
    std::string seen;
    for (const UsageError& e : errors) seen += " " + describe(e);
    BOOST_TEST(errors.empty(), where.file << ":" << where.line << ": expected no report but got" << seen);
}

} // namespace kmem::test
