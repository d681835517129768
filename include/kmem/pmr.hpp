/// @file
/// std::pmr adapter: makes any kmem allocator a std::pmr::memory_resource.
///
/// The adapter borrows an allocator that offers the byte interface (try_allocate / deallocate) and turns it
/// into the standard protocol: allocation failure throws std::bad_alloc, alignment is honoured (or the request
/// fails), and two resources compare equal only when they are the same object.  An alignment that is not a power
/// of two is a caller mistake: it is reported as ErrorKind::bad_alignment through the allocator's error policy,
/// and allocate() then throws std::bad_alloc (deallocate() frees nothing).
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> buddy(kmem::MmapRegion(16 << 20));
///   kmem::MemoryResource resource(buddy);                 // uses gfp::kernel
///   std::pmr::vector<int> v(&resource);
///   v.resize(10'000);                                      // pages come from the buddy allocator
/// @endcode
#pragma once

#include <kmem/gfp.hpp>
#include <kmem/policy/error.hpp>

#include <bit>
#include <cstddef>
#include <memory_resource>
#include <new>
#include <string>
#include <string_view>

namespace kmem {

namespace detail {
// A power of two (std::has_single_bit without -mpopcnt is a libgcc call on every pmr request).
constexpr bool is_pow2(std::size_t a) noexcept {
    return a != 0 && (a & (a - 1)) == 0;
}
} // namespace detail

/// Satisfied by allocators with kmem's byte interface: try_allocate(flags, bytes, align) returning nullptr on
/// failure, and deallocate(p, bytes, align).
template <class A, class F = gfp::type<gfp::kernel>>
concept ByteAllocator = requires(A& a, F flags, void* p, std::size_t n) {
    { a.try_allocate(flags, n, n) } -> std::same_as<void*>;
    a.deallocate(p, n, n);
};

/// A std::pmr::memory_resource over a borrowed kmem allocator, allocating with GFP flags `Flags`
/// (gfp::kernel by default); the allocator must outlive the resource.
///
/// An alignment that is not a power of two (std::pmr requires one) is reported as a kmem::UsageError of kind
/// ErrorKind::bad_alignment to the allocator's error policy (its error_policy(); policy::AssertOnError for an
/// allocator without one).  When the policy returns (policy::CallbackOnError), allocate() throws std::bad_alloc
/// and deallocate() leaves the memory alone rather than free a block of a guessed size.
template <class Alloc, class Flags = gfp::type<gfp::kernel>>
requires ByteAllocator<Alloc, Flags>
class MemoryResource final : public std::pmr::memory_resource {
public:
    /// Borrows `alloc`.
    explicit MemoryResource(Alloc& alloc) noexcept : alloc_(&alloc) {}
    /// The allocator behind the resource.
    Alloc& allocator() const noexcept { return *alloc_; }

private:
    void* do_allocate(std::size_t bytes, std::size_t align) override {
        if (!detail::is_pow2(align)) {
            report_bad_alignment("do_allocate", bytes, align, "nothing was allocated");
            throw std::bad_alloc(); // the policy returned: pmr has no null result
        }
        void* p = alloc_->try_allocate(Flags{}, bytes, align);
        if (p == nullptr) throw std::bad_alloc();
        return p;
    }
    void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
        if (!detail::is_pow2(align)) {
            // The block's order follows from the alignment; with a wrong one, freeing would free a wrong order.
            report_bad_alignment("do_deallocate", bytes, align, "nothing was freed");
            return;
        }
        alloc_->deallocate(p, bytes, align);
    }
    bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
        return this == &other;
    }

    // Hands ErrorKind::bad_alignment to the allocator's error policy (AssertOnError when it has none).
    void report_bad_alignment(std::string_view operation, std::size_t bytes, std::size_t align,
                              const char* outcome) const {
        const UsageError e{ErrorKind::bad_alignment, operation,
                           "The alignment " + std::to_string(align) + " given for " + std::to_string(bytes) +
                               " bytes is not a power of two, as std::pmr requires; " + outcome + "."};
        if constexpr (requires(Alloc & a) { a.error_policy().on_error(e); })
            alloc_->error_policy().on_error(e);
        else
            policy::AssertOnError{}.on_error(e);
    }

    Alloc* alloc_;
};

/// Satisfied by fixed-size allocators (object caches, pools): serves(bytes, align) says whether a request is
/// theirs, on top of the byte interface.
template <class A, class F = gfp::type<gfp::kernel>>
concept FixedSizeAllocator = ByteAllocator<A, F> && requires(const A& a, std::size_t n) {
    { a.serves(n, n) } -> std::convertible_to<bool>;
};

/// A std::pmr::memory_resource over a borrowed fixed-size kmem allocator (a SlabCache, a KmemCache, a MemPool):
/// requests it serves (size and alignment) come from it, every other request goes to `upstream` (the default
/// resource unless given), as std::pmr pools pass large requests upstream.  Memory from the allocator that
/// runs out throws std::bad_alloc; it is not retried upstream, so deallocation can tell the two apart by size.
template <class Alloc, class Flags = gfp::type<gfp::kernel>>
requires FixedSizeAllocator<Alloc, Flags>
class FixedSizeResource final : public std::pmr::memory_resource {
public:
    /// Borrows `alloc` and `upstream`.
    explicit FixedSizeResource(
        Alloc& alloc, std::pmr::memory_resource* upstream = std::pmr::get_default_resource()) noexcept
        : alloc_(&alloc), upstream_(upstream) {}
    /// The allocator behind the resource.
    Alloc& allocator() const noexcept { return *alloc_; }
    /// The resource other sizes go to.
    std::pmr::memory_resource* upstream_resource() const noexcept { return upstream_; }

private:
    void* do_allocate(std::size_t bytes, std::size_t align) override {
        if (!alloc_->serves(bytes, align)) return upstream_->allocate(bytes, align);
        void* p = alloc_->try_allocate(Flags{}, bytes, align);
        if (p == nullptr) throw std::bad_alloc();
        return p;
    }
    void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
        if (!alloc_->serves(bytes, align)) return upstream_->deallocate(p, bytes, align);
        alloc_->deallocate(p, bytes, align);
    }
    bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
        return this == &other;
    }

    Alloc* alloc_;
    std::pmr::memory_resource* upstream_;
};

} // namespace kmem
