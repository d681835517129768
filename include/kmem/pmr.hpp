/// @file
/// std::pmr adapter: makes any kmem allocator a std::pmr::memory_resource.
///
/// The adapter borrows an allocator that offers the byte interface (try_allocate / deallocate) and turns it
/// into the standard protocol: allocation failure throws std::bad_alloc, alignment is honoured (or the request
/// fails), and two resources compare equal only when they are the same object.
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> buddy(kmem::MmapRegion(16 << 20));
///   kmem::MemoryResource resource(buddy);                 // uses gfp::kernel
///   std::pmr::vector<int> v(&resource);
///   v.resize(10'000);                                      // pages come from the buddy allocator
/// @endcode
#pragma once

#include <kmem/gfp.hpp>

#include <cstddef>
#include <memory_resource>
#include <new>

namespace kmem {

/// Satisfied by allocators with kmem's byte interface: try_allocate(flags, bytes, align) returning nullptr on
/// failure, and deallocate(p, bytes, align).
template <class A, class F = gfp::type<gfp::kernel>>
concept ByteAllocator = requires(A& a, F flags, void* p, std::size_t n) {
    { a.try_allocate(flags, n, n) } -> std::same_as<void*>;
    a.deallocate(p, n, n);
};

/// A std::pmr::memory_resource over a borrowed kmem allocator, allocating with GFP flags `Flags`
/// (gfp::kernel by default); the allocator must outlive the resource.
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
        void* p = alloc_->try_allocate(Flags{}, bytes, align);
        if (p == nullptr) throw std::bad_alloc();
        return p;
    }
    void do_deallocate(void* p, std::size_t bytes, std::size_t align) override { alloc_->deallocate(p, bytes, align); }
    bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override { return this == &other; }

    Alloc* alloc_;
};

} // namespace kmem
