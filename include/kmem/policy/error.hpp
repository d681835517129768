/// @file
/// Error policies: what an allocator does when a caller makes a mistake (a bad free, a wrong order...).
///
/// The allocator detects the mistake, leaves its state untouched, builds a kmem::UsageError and hands it to its
/// error policy: AssertOnError prints and aborts (like the kernel's BUG()), ThrowOnError throws
/// kmem::bad_usage, CallbackOnError calls a function of yours and lets the program go on (like WARN()).
///
/// @code
///   kmem::policy::CallbackOnError on_error;
///   int seen = 0;
///   on_error.set_callback([&](const kmem::UsageError& e) { seen += e.kind == kmem::ErrorKind::double_free; });
///   on_error.on_error(kmem::UsageError{kmem::ErrorKind::double_free, "free_pages", "page already free"});
///   assert(seen == 1);
/// @endcode
#pragma once

#include <kmem/policy/category.hpp>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace kmem {

/// The kind of caller mistake an allocator detected.
enum class ErrorKind {
    out_of_region,   ///< The address or page is not inside the allocator's region.
    misaligned,      ///< The address is not aligned to a page.
    not_block_start, ///< The page is inside an allocated block but is not its first page.
    wrong_order,     ///< The order given to free does not match the order allocated.
    double_free,     ///< The block is already free.
    order_too_large, ///< The order exceeds the allocator's MaxOrder.
    invalid_gfp,     ///< The runtime GFP flags break a rule (see gfp::Problem) or cannot be honoured.
    nofail_failed,   ///< A __GFP_NOFAIL request could not be satisfied and this layer cannot reclaim.
    bad_refcount,    ///< get_page or put_page on a page that holds no reference (a free page).
    not_addressable, ///< A host-address operation on a region that holds no host memory.
    bad_alignment, ///< The requested alignment is not a power of two (or is more than the allocator can give).
    bad_parameter, ///< A tuning parameter is out of range (e.g. per-CPU list batch and high).
    slab_corruption, ///< A slab debug check found memory overwritten (SLUB's "Poison overwritten", "Redzone overwritten").
    wrong_cache, ///< An object was freed to a cache it does not belong to (SLUB's "Wrong slab cache").
    not_object,  ///< A pointer inside a slab is not the start of an object (SLUB's "Invalid object pointer").
    objects_remain, ///< A cache was destroyed while objects were still allocated ("Slab cache still has objects").
};

/// A short name for an ErrorKind ("double free", "wrong order", ...).
constexpr std::string_view to_string(ErrorKind k) noexcept {
    switch (k) {
    case ErrorKind::out_of_region:
        return "address outside the region";
    case ErrorKind::misaligned:
        return "misaligned address";
    case ErrorKind::not_block_start:
        return "not the start of an allocated block";
    case ErrorKind::wrong_order:
        return "wrong order";
    case ErrorKind::double_free:
        return "double free";
    case ErrorKind::order_too_large:
        return "order above MaxOrder";
    case ErrorKind::invalid_gfp:
        return "invalid GFP flags";
    case ErrorKind::nofail_failed:
        return "__GFP_NOFAIL allocation failed";
    case ErrorKind::bad_refcount:
        return "reference count underflow";
    case ErrorKind::not_addressable:
        return "region is not addressable";
    case ErrorKind::bad_alignment:
        return "bad alignment";
    case ErrorKind::bad_parameter:
        return "parameter out of range";
    case ErrorKind::slab_corruption:
        return "slab corruption";
    case ErrorKind::wrong_cache:
        return "wrong slab cache";
    case ErrorKind::not_object:
        return "not an object";
    case ErrorKind::objects_remain:
        return "objects remain";
    }
    return "unknown error";
}

/// A detected caller mistake: which kind, in which operation, and a full sentence describing it.
struct UsageError {
    ErrorKind kind;             ///< What went wrong.
    std::string_view operation; ///< The allocator operation that detected it, e.g. "free_pages".
    std::string message;        ///< A full sentence with the details (addresses, orders).
};

/// The exception ThrowOnError throws; carries the UsageError.
class bad_usage : public std::invalid_argument {
public:
    /// Wraps `e`; what() returns its message prefixed with the operation.
    explicit bad_usage(UsageError e)
        : std::invalid_argument("kmem: " + std::string(e.operation) + ": " + e.message),
          error_(std::move(e)) {}
    /// The detected mistake.
    const UsageError& error() const noexcept { return error_; }

private:
    UsageError error_;
};

namespace detail {
// Prints "kmem: <operation>: <kind>: <message>" to stderr: the report of AssertOnError and CallbackOnError.
inline void print_usage_error(const UsageError& e) noexcept {
    const std::string_view kind = to_string(e.kind);
    std::fprintf(stderr, "kmem: %.*s: %.*s: %s\n", static_cast<int>(e.operation.size()), e.operation.data(),
                 static_cast<int>(kind.size()), kind.data(), e.message.c_str());
}
} // namespace detail

namespace policy {

/// Satisfied by error policies: on_error(const UsageError&) is called for every detected mistake.
template <class P>
concept ErrorPolicy = requires(P& p, const UsageError& e) {
    p.on_error(e);
};

/// Prints the error to stderr and aborts, like the kernel's BUG(); the default policy.
struct AssertOnError {
    /// This is a error policy.
    using policy_category = error_policy_tag;
    /// Prints "kmem: <operation>: <kind>: <message>" (the kind as to_string(ErrorKind) names it, e.g.
    /// "double free") and calls std::abort().
    [[noreturn]] void on_error(const UsageError& e) const noexcept {
        detail::print_usage_error(e);
        std::abort();
    }
};

/// Throws kmem::bad_usage; the allocator is unchanged when the exception leaves it.
struct ThrowOnError {
    /// This is a error policy.
    using policy_category = error_policy_tag;
    /// Throws kmem::bad_usage(e).
    [[noreturn]] void on_error(const UsageError& e) const { throw bad_usage(e); }
};

/// Calls a user callback (by default: print to stderr, like WARN()) and lets the caller go on.
class CallbackOnError {
public:
    /// This is a error policy.
    using policy_category = error_policy_tag;
    /// The callback type.
    using Callback = std::function<void(const UsageError&)>;
    /// Replaces the callback; an empty callback restores the default (print to stderr).
    void set_callback(Callback cb) { cb_ = std::move(cb); }
    /// Calls the callback, or prints "kmem: <operation>: <kind>: <message>" to stderr when none is set.
    void on_error(const UsageError& e) const {
        if (cb_) {
            cb_(e);
            return;
        }
        detail::print_usage_error(e);
    }

private:
    Callback cb_;
};

} // namespace policy
} // namespace kmem
