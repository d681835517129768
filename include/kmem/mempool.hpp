/// @file
/// Memory pools (mm/mempool.c): a reserve of preallocated elements in front of any element source, so that an
/// allocation that may sleep never fails.
///
/// `MemPool<Source, Policies...>` takes `min_nr` elements from its source when it is built (mempool_create) and
/// keeps them in reserve.  An allocation (mempool_alloc) first asks the source without reclaim, then takes an
/// element from the reserve, then asks the source again with the caller's full flags; a caller that may sleep
/// (gfp::direct_reclaim) then waits until another thread frees an element (or five seconds pass, and it tries
/// again), so its allocation never fails.  A free (mempool_free) refills the reserve first and wakes the waiters;
/// once the reserve is full, elements go back to the source.  The source is any type with `P alloc(gfp_t)` and
/// `free(P)` (the MemPoolSource concept); PageSource, PageAddressSource and FunctionSource are ready-made ones,
/// and MemPoolResource makes a pool of fixed-size blocks a std::pmr::memory_resource.
///
/// @code
///   using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
///   Buddy buddy(kmem::MmapRegion(1 << 20));
///   kmem::PagePool<Buddy> pages(4, {buddy, 0});            // mempool_create_page_pool(4, 0)
///   assert(pages.curr_nr() == 4 && buddy.nr_free_pages() == buddy.total_pages() - 4);
///   kmem::Page* page = pages.alloc(kmem::gfp::kernel);     // may sleep: never fails
///   pages.free(page);                                       // the reserve is full: back to the buddy
///
///   struct Heap {                                           // a source of your own: alloc(gfp_t) and free()
///       void* alloc(kmem::gfp_t) { return ::operator new(256, std::nothrow); }
///       void free(void* p) { ::operator delete(p); }
///   };
///   kmem::MemPool<Heap> heap(2, Heap{});
///   kmem::MemPoolResource resource(heap, 256);              // std::pmr over 256-byte elements
///   void* block = resource.allocate(200);
///   resource.deallocate(block, 200);
/// @endcode
#pragma once

#include <kmem/detail/per_cpu_sets.hpp>
#include <kmem/detail/policies.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>

#include <atomic>
#include <bit>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace kmem {

namespace detail {

/// A pointer to an object (or void*): what a mempool element is.
template <class P>
concept ElementPointer = std::is_pointer_v<P> && !std::is_function_v<std::remove_pointer_t<P>>;

/// The element pointer of a source, or void* when S is not a source (so that only the static_assert speaks).
template <class S>
struct element_of {
    using type = void*;
};
template <class S>
requires requires(S& s, gfp_t f) {
    s.alloc(f);
}
struct element_of<S> {
    using type = decltype(std::declval<S&>().alloc(gfp_t{}));
};

/// The mask of every source call of mempool_alloc (mempool_adjust_gfp()): __GFP_NOMEMALLOC, __GFP_NORETRY and
/// __GFP_NOWARN added, and __GFP_NOFAIL dropped, since the pool's own loop is what never fails.
constexpr std::uint32_t mempool_gfp(std::uint32_t b) noexcept {
    return (b | gfp::bits::nomemalloc | gfp::bits::noretry | gfp::bits::nowarn) & ~gfp::bits::nofail;
}
/// The mask of mempool_alloc's first source call: no direct reclaim and no I/O, so it neither sleeps nor waits.
constexpr std::uint32_t mempool_first_pass(std::uint32_t b) noexcept {
    return b & ~(gfp::bits::direct_reclaim | gfp::bits::io);
}

/// The number of elements handed out and not yet freed.  A single-threaded pool keeps a plain count, and a free
/// while it is 0 is caught at once.  A shared pool keeps one count per CPU (the kernel's percpu_counter), each
/// changed under its CPU's slot lock, which is a restartable sequence where rseq is available: the pool's fast
/// path then has no atomic read-modify-write.  A busy slot sends the change to one atomic count instead.  A
/// CPU's count goes below 0 when elements are freed on another CPU than the one that allocated them, so only
/// the sum means something: more frees than allocations are found when it is read.
template <bool Shared>
class ElementCount {
public:
    /// One more element is out.
    void add() noexcept { ++n_; }
    /// One element came back; false (and nothing changes) when none was out.
    bool take() noexcept {
        if (n_ == 0) return false;
        --n_;
        return true;
    }
    /// Elements out now (allocations minus frees).
    std::int64_t get() const noexcept { return static_cast<std::int64_t>(n_); }

private:
    std::uint64_t n_ = 0;
};
template <>
class ElementCount<true> {
public:
    void add() noexcept { change(1); }
    bool take() noexcept {
        change(-1);
        return true;
    }
    std::int64_t get() const noexcept {
        std::int64_t sum = 0;
        slots_.lock_all();
        for (unsigned c = 0; c < slots_.size(); ++c) sum += slots_[c];
        slots_.unlock_all();
        return sum + overflow_.load(std::memory_order_relaxed);
    }

private:
    void change(std::int64_t d) noexcept {
        const int cpu = slots_.try_lock_local();
        if (cpu >= 0) [[likely]] {
            slots_[static_cast<unsigned>(cpu)] += d;
            slots_.unlock_local(static_cast<unsigned>(cpu));
        } else {
            overflow_.fetch_add(d, std::memory_order_relaxed);
        }
    }

    mutable PerCpu<std::int64_t, true> slots_;
    std::atomic<std::int64_t> overflow_{0};
};

/// The pool's wait queue (pool->wait): callers that may sleep wait here for a freed element.  A single-threaded
/// pool (policy::NoLock) has nobody to wait for, so it has no condition variable.
template <bool Shared>
struct MemPoolWait {
    std::size_t waiters = 0; ///< Always 0.
};
template <>
struct MemPoolWait<true> {
    std::condition_variable_any cv; ///< Signalled when the reserve gets an element.
    std::size_t waiters = 0;        ///< Callers waiting now (waitqueue_active); under the pool lock.
};

struct mempool_fill_tag {};

/// A source that says the size and alignment of its elements (PageAddressSource does).
template <class S>
concept SizedSource = requires(const S& s) {
    { s.element_size() } -> std::convertible_to<std::size_t>;
    { s.element_align() } -> std::convertible_to<std::size_t>;
};

} // namespace detail

/// Satisfied by element sources of a MemPool (mempool_alloc_t and mempool_free_t): `alloc(gfp_t)` returns an
/// object pointer, nullptr when it has no element, and `free(pointer)` takes one back.  A source may also offer
/// `alloc(gfp::Flags<B>)`, which the pool then calls with compile-time flags so the source checks them at
/// compile time (PageSource does).  A shared pool calls its source from several threads at once, without
/// holding its lock, so the source must be thread-safe then.
template <class S>
concept MemPoolSource = requires(S& s, gfp_t flags) {
    { s.alloc(flags) } -> detail::ElementPointer;
    s.free(s.alloc(flags));
};

/// A snapshot of a pool's counters.
struct MemPoolStats {
    std::size_t min_nr = 0;           ///< Elements the reserve guarantees (pool->min_nr).
    std::size_t curr_nr = 0;          ///< Elements in the reserve now (pool->curr_nr).
    std::uint64_t outstanding = 0;    ///< Elements handed out and not yet freed.
    std::uint64_t reserve_allocs = 0; ///< Allocations served from the reserve.
    std::uint64_t reserve_frees = 0;  ///< Frees that went into the reserve.
    std::uint64_t waits = 0;          ///< Times a caller slept waiting for an element.
    std::uint64_t failures = 0;       ///< Allocations that returned nullptr.
    std::size_t waiters = 0;          ///< Callers waiting now.
};

/// A memory pool (struct mempool / mempool_t): `min_nr` preallocated elements of `Source` in reserve.
///
/// Source is the element source, owned (a type) or borrowed (a reference `S&`).  Policies, in any order: a lock
/// policy (policy::MutexLock by default; policy::SpinLock also lets callers wait; with policy::NoLock the pool
/// serves one thread and cannot wait) and an error policy (policy::AssertOnError by default).  The pool never
/// holds its lock while it calls the source or the error policy, and never sleeps holding it.
template <class Source, class... Policies>
class MemPool {
public:
    /// The source type, without reference.
    using source_type = std::remove_cvref_t<Source>;
    static_assert(
        MemPoolSource<source_type>,
        "a MemPool source needs `P alloc(kmem::gfp_t)` returning an object pointer (nullptr when it "
        "has none) and `free(P)`; see kmem::MemPoolSource.");

private:
    using policies = detail::PolicySet<Policies...>;
    static_assert(policies::template only<policy::lock_policy_tag, policy::error_policy_tag>,
                  "a MemPool policy must be a lock policy (policy::NoLock, SpinLock, MutexLock) or an error "
                  "policy (policy::AssertOnError, ThrowOnError, CallbackOnError).");
    static_assert(policies::unique);

public:
    /// The element pointer the source hands out (void* for memory, Page* for a PageSource).
    using pointer = typename detail::element_of<source_type>::type;
    /// The lock policy.
    using lock_type = typename policies::template get<policy::lock_policy_tag, policy::MutexLock>;
    static_assert(policy::LockPolicy<lock_type>, "the lock policy needs lock(), unlock() and may_sleep.");
    /// The error policy.
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    static_assert(policy::ErrorPolicy<error_policy_type>,
                  "the error policy needs on_error(const UsageError&).");
    /// True when several threads may use the pool, so a caller that may sleep can wait for another's free.
    static constexpr bool shared = !std::is_same_v<lock_type, policy::NoLock>;
    /// How long a caller waits for a freed element before it asks the source again (io_schedule_timeout(5*HZ)).
    static constexpr std::chrono::milliseconds default_wait_timeout{5000};

    /// Builds the pool and takes max(1, min_nr) elements from `source` with `flags` (mempool_init; the kernel
    /// also keeps one element for a pool of min_nr 0).  When the source cannot give them all, they go back and
    /// the constructor throws std::bad_alloc; create() is the form that returns nullptr instead.
    template <gfp::FlagSet F = gfp::type<gfp::kernel>>
    explicit MemPool(std::size_t min_nr, Source source, F flags = {})
        : MemPool(detail::mempool_fill_tag{}, min_nr, static_cast<Source&&>(source), flags) {
        if (curr_nr() < reserve_target(min_nr)) throw std::bad_alloc();
    }

    /// Builds a pool on the heap (mempool_create / mempool_create_node with `flags`): nullptr when memory for
    /// the pool or its reserve cannot be had, with nothing taken from the source.
    template <gfp::FlagSet F = gfp::type<gfp::kernel>>
    static std::unique_ptr<MemPool> create(std::size_t min_nr, Source source, F flags = {}) {
        std::unique_ptr<MemPool> pool(new (std::nothrow) MemPool(detail::mempool_fill_tag{}, min_nr,
                                                                 static_cast<Source&&>(source), flags));
        if (pool && pool->curr_nr() < reserve_target(min_nr)) pool.reset();
        return pool;
    }

    MemPool(const MemPool&) = delete;            ///< Not copyable.
    MemPool& operator=(const MemPool&) = delete; ///< Not copyable.

    /// Returns the reserve to the source (mempool_exit).  Unless destroy() ran, elements still out are reported
    /// as destroy() reports them; a report that throws (policy::ThrowOnError) is printed instead, as a
    /// destructor cannot throw.
    ~MemPool() {
        try {
            destroy();
        } catch (const bad_usage& e) {
            detail::print_usage_error(e.error());
        }
    }

    // ----- allocation ----------------------------------------------------------------------------------------

    /// Allocates an element (mempool_alloc): the source without reclaim or I/O, then the reserve, then the
    /// source with the caller's flags; each source call adds gfp::nomemalloc | gfp::noretry | gfp::nowarn (and
    /// drops gfp::nofail).  With gfp::direct_reclaim the caller then waits for a freed element, waking every
    /// wait_timeout() to ask the source again, so the call never fails (a pool with policy::NoLock cannot wait:
    /// it reports ErrorKind::nofail_failed and returns nullptr); without it, nullptr.  gfp::zero is a compile
    /// error: an element from the reserve is not cleared.
    template <std::uint32_t B>
    pointer alloc(gfp::Flags<B> flags) {
        gfp::check(flags);
        static_assert(!(B & gfp::bits::zero),
                      "gfp::zero cannot be used with mempool_alloc: an element taken from the reserve is not "
                      "cleared; clear it yourself.");
        constexpr std::uint32_t full = detail::mempool_gfp(B);
        constexpr std::uint32_t first = detail::mempool_first_pass(full);
        if (pointer e = source().alloc(gfp::Flags<first>{}); e != nullptr) [[likely]] {
            outstanding_.add();
            return e;
        }
        return alloc_slow(B, first != full, [this] { return source().alloc(gfp::Flags<full>{}); });
    }
    /// alloc() from a call site that declares its context: flags that may sleep are a compile error from
    /// kmem::atomic_context.
    template <CallContext C, std::uint32_t B>
    pointer alloc(C ctx, gfp::Flags<B> flags) {
        gfp::check_context(ctx, flags);
        return alloc(flags);
    }
    /// alloc() with flags known at run time: flags that break a GFP rule, or hold gfp::zero, are reported
    /// (ErrorKind::invalid_gfp) and the call returns nullptr.
    pointer alloc(gfp_t flags) {
        std::string_view why;
        if (const gfp::Problem p = flags.validate(); p != gfp::Problem::none)
            why = gfp::describe(p);
        else if (flags.has(gfp::zero))
            why = "gfp::zero cannot be used with mempool_alloc: an element taken from the reserve is not "
                  "cleared.";
        if (!why.empty()) {
            report(ErrorKind::invalid_gfp, "mempool_alloc",
                   "mode:" + flags.to_string() + ": " + std::string(why));
            return nullptr;
        }
        const gfp_t full = gfp_t::from_bits(detail::mempool_gfp(flags.value()));
        const gfp_t first = gfp_t::from_bits(detail::mempool_first_pass(full.value()));
        if (pointer e = source().alloc(first); e != nullptr) [[likely]] {
            outstanding_.add();
            return e;
        }
        return alloc_slow(flags.value(), first != full, [this, full] { return source().alloc(full); });
    }

    /// Takes an element from the reserve only, never from the source and never waiting
    /// (mempool_alloc_preallocated); nullptr when the reserve is empty.
    pointer alloc_preallocated() {
        pointer e = nullptr;
        {
            policy::LockGuard<lock_type> guard(lock_);
            if (curr_nr_.load(std::memory_order_relaxed) > 0) e = remove_element();
        }
        if (e != nullptr) outstanding_.add();
        return e;
    }

    /// True when a request of `bytes` with alignment `align` fits an element (kmem::FixedSizeResource asks);
    /// only for pools of memory whose source says its element size and alignment.
    bool serves(std::size_t bytes,
                std::size_t align) const noexcept requires detail::SizedSource<source_type> &&
        (!std::is_same_v<std::remove_cv_t<std::remove_pointer_t<pointer>>, Page>) {
        return bytes <= source().element_size() && align <= source().element_align();
    }
    /// Byte interface for kmem::FixedSizeResource (the generic pmr adapter): an element when serves() accepts
    /// the request, else nullptr.
    template <std::uint32_t B>
    void* try_allocate(gfp::Flags<B> flags, std::size_t bytes,
                       std::size_t align) requires detail::SizedSource<source_type> &&
        (!std::is_same_v<std::remove_cv_t<std::remove_pointer_t<pointer>>, Page>) {
        return serves(bytes, align) ? static_cast<void*>(alloc(flags)) : nullptr;
    }
    /// Byte interface: returns an element from try_allocate().
    void deallocate(void* p, std::size_t, std::size_t) requires detail::SizedSource<source_type> &&
        (!std::is_same_v<std::remove_cv_t<std::remove_pointer_t<pointer>>, Page>) {
        free(static_cast<pointer>(p));
    }

    /// Returns an element (mempool_free): into the reserve while it holds fewer than min_nr (one for a pool
    /// of min_nr 0), waking the callers waiting for one; otherwise back to the source.  nullptr is ignored.  On a
    /// policy::NoLock pool, a free while no element is out is reported (ErrorKind::double_free) and changes
    /// nothing; a shared pool counts per CPU and finds more frees than allocations in destroy().
    void free(pointer element) {
        if (element == nullptr) return;
        if (!outstanding_.take()) [[unlikely]] {
            report(ErrorKind::double_free, "mempool_free",
                   "an element was freed while no element of this pool is allocated (a double free, or an "
                   "element of another pool); it was left alone.");
            return;
        }
        // The caller got the element through some synchronisation with the thread that allocated it, so this
        // reads a reserve count from after that allocation (the kernel's smp_wmb / smp_rmb pair): a free that
        // is owed to the reserve always sees the reserve short.
        const std::size_t curr = curr_nr_.load(std::memory_order_relaxed);
        if (curr < reserve_target(min_nr_.load(std::memory_order_relaxed))) [[unlikely]] {
            bool added = false;
            bool wake = false;
            {
                policy::LockGuard<lock_type> guard(lock_);
                if (!destroyed_ && curr_nr_.load(std::memory_order_relaxed) <
                                       reserve_target(min_nr_.load(std::memory_order_relaxed))) {
                    add_element(element);
                    ++reserve_frees_;
                    added = true;
                    wake = wait_.waiters > 0;
                }
            }
            if (added) {
                if constexpr (shared) {
                    if (wake) wait_.cv.notify_all();
                }
                return;
            }
        }
        source().free(element);
    }

    // ----- size ------------------------------------------------------------------------------------------------

    /// Changes min_nr (mempool_resize).  Shrinking returns the extra reserve elements to the source.  Growing
    /// takes elements from the source with `flags` until the reserve holds new_min_nr or the source has none;
    /// later frees fill the rest.  Returns false when memory for the larger reserve cannot be had, or after
    /// destroy() (nothing changes then).  A new_min_nr of 0 is reported (ErrorKind::bad_parameter): the kernel
    /// BUG()s on it.
    template <gfp::FlagSet F = gfp::type<gfp::kernel>>
    bool resize(std::size_t new_min_nr, F flags = {}) {
        gfp::check(flags);
        if (new_min_nr == 0) {
            report(ErrorKind::bad_parameter, "mempool_resize",
                   "the new min_nr is 0; a pool is resized to at least one element.");
            return false;
        }
        std::unique_lock<lock_type> guard(lock_);
        if (destroyed_) return false;
        if (new_min_nr <= min_nr_.load(std::memory_order_relaxed)) {
            while (new_min_nr < curr_nr_.load(std::memory_order_relaxed)) {
                pointer e = remove_element();
                guard.unlock();
                source().free(e);
                guard.lock();
            }
            min_nr_.store(new_min_nr, std::memory_order_relaxed);
            return true;
        }
        guard.unlock();
        std::unique_ptr<pointer[]> bigger(new (std::nothrow) pointer[new_min_nr]);
        if (!bigger) return false;
        guard.lock();
        if (destroyed_) return false;
        if (new_min_nr <= min_nr_.load(std::memory_order_relaxed))
            return true; // raced: another resize did it
        const std::size_t curr = curr_nr_.load(std::memory_order_relaxed);
        for (std::size_t k = 0; k < curr; ++k) bigger[k] = elements_[k];
        elements_.swap(bigger);
        min_nr_.store(new_min_nr, std::memory_order_relaxed);
        while (curr_nr_.load(std::memory_order_relaxed) < min_nr_.load(std::memory_order_relaxed)) {
            guard.unlock();
            pointer e = source().alloc(flags);
            if (e == nullptr) return true;
            guard.lock();
            if (curr_nr_.load(std::memory_order_relaxed) < min_nr_.load(std::memory_order_relaxed)) {
                add_element(e);
                if (wait_.waiters > 0) {
                    if constexpr (shared) wait_.cv.notify_all();
                }
            } else {
                guard.unlock();
                source().free(e); // raced with frees that filled the reserve
                return true;
            }
        }
        return true;
    }

    /// Returns the reserve to the source (mempool_destroy / mempool_exit).  Elements still out are reported
    /// (ErrorKind::objects_remain): they stay allocated in the source.  Afterwards the pool keeps no reserve:
    /// frees go to the source, an allocation the source cannot serve returns nullptr at once, and resize() does
    /// nothing.  A second call reports nothing again.
    void destroy() {
        std::unique_lock<lock_type> guard(lock_);
        const bool again = destroyed_;
        destroyed_ = true;
        min_nr_.store(0, std::memory_order_relaxed);
        while (curr_nr_.load(std::memory_order_relaxed) > 0) {
            pointer e = remove_element();
            guard.unlock();
            source().free(e);
            guard.lock();
        }
        guard.unlock();
        if (again) return;
        const std::int64_t out = outstanding_.get();
        if (out > 0)
            report(ErrorKind::objects_remain, "mempool_destroy",
                   std::to_string(out) + (out == 1 ? " element" : " elements") + " allocated from the pool " +
                       (out == 1 ? "was" : "were") +
                       " not freed before the pool was destroyed; the source keeps " +
                       (out == 1 ? "it" : "them") + " allocated.");
        else if (out < 0)
            report(
                ErrorKind::double_free, "mempool_destroy",
                std::to_string(-out) + " more " + (out == -1 ? "element was" : "elements were") +
                    " freed to the pool than were allocated from it (a double free, or an element of another "
                    "pool).");
    }

    // ----- state -------------------------------------------------------------------------------------------------

    /// Elements the reserve guarantees (pool->min_nr).
    std::size_t min_nr() const noexcept { return min_nr_.load(std::memory_order_relaxed); }
    /// Elements in the reserve now (pool->curr_nr).
    std::size_t curr_nr() const noexcept { return curr_nr_.load(std::memory_order_relaxed); }
    /// Elements handed out and not yet freed (0 when more were freed).  On a shared pool this sums the per-CPU
    /// counts, briefly locking each CPU's.
    std::uint64_t outstanding() const noexcept {
        const std::int64_t n = outstanding_.get();
        return n > 0 ? static_cast<std::uint64_t>(n) : 0;
    }
    /// A snapshot of every counter.
    MemPoolStats stats() const {
        MemPoolStats s;
        s.outstanding = outstanding(); // before the pool lock: the per-CPU counts have their own
        policy::LockGuard<lock_type> guard(lock_);
        s.min_nr = min_nr_.load(std::memory_order_relaxed);
        s.curr_nr = curr_nr_.load(std::memory_order_relaxed);
        s.reserve_allocs = reserve_allocs_;
        s.reserve_frees = reserve_frees_;
        s.waits = waits_;
        s.failures = failures_;
        s.waiters = wait_.waiters;
        return s;
    }
    /// Callers waiting for an element now (waitqueue_active()).
    std::size_t nr_waiters() const {
        policy::LockGuard<lock_type> guard(lock_);
        return wait_.waiters;
    }
    /// How long a waiting caller sleeps before it asks the source again (default 5 s, the kernel's 5*HZ).
    std::chrono::nanoseconds wait_timeout() const {
        policy::LockGuard<lock_type> guard(lock_);
        return wait_timeout_;
    }
    /// Changes wait_timeout(); values below 1 ms are raised to 1 ms.
    void set_wait_timeout(std::chrono::nanoseconds t) {
        policy::LockGuard<lock_type> guard(lock_);
        wait_timeout_ = t < std::chrono::milliseconds(1) ? std::chrono::milliseconds(1) : t;
    }
    /// The source.
    source_type& source() noexcept { return source_; }
    /// The source.
    const source_type& source() const noexcept { return source_; }
    /// The error policy, e.g. to install a callback.
    error_policy_type& error_policy() noexcept { return error_; }

private:
    template <std::uint32_t B>
    MemPool(detail::mempool_fill_tag, std::size_t min_nr, Source&& source, gfp::Flags<B> flags)
        : source_(static_cast<Source&&>(source)) {
        gfp::check(flags);
        min_nr_.store(min_nr, std::memory_order_relaxed);
        const std::size_t target = reserve_target(min_nr);
        elements_.reset(new (std::nothrow) pointer[target]);
        if (!elements_) return;
        while (curr_nr_.load(std::memory_order_relaxed) < target) {
            pointer e = source_.alloc(flags);
            if (e == nullptr) { // mempool_init_node(): give back what we got
                while (curr_nr_.load(std::memory_order_relaxed) > 0) source_.free(remove_element());
                return;
            }
            add_element(e);
        }
    }

    // The reserve's size goal: min_nr, and one element for a pool of min_nr 0 (so its waiters can be woken).
    static constexpr std::size_t reserve_target(std::size_t min_nr) noexcept {
        return min_nr > 0 ? min_nr : 1;
    }

    // Pool lock held (or no other user yet).
    void add_element(pointer e) noexcept {
        const std::size_t curr = curr_nr_.load(std::memory_order_relaxed);
        elements_[curr] = e;
        curr_nr_.store(curr + 1, std::memory_order_relaxed);
    }
    pointer remove_element() noexcept {
        const std::size_t curr = curr_nr_.load(std::memory_order_relaxed) - 1;
        curr_nr_.store(curr, std::memory_order_relaxed);
        return elements_[curr];
    }

    // mempool_alloc() after its first source call failed: the reserve, then the source with the full flags,
    // then (a caller that may sleep) wait for a freed element and go round again.
    template <class Retry>
    [[gnu::noinline]] pointer alloc_slow(std::uint32_t bits, bool retry_with_full_flags, Retry&& retry) {
        enum class Next { take, retry, fail, cannot_wait };
        bool tried_full = !retry_with_full_flags;
        for (;;) {
            pointer e = nullptr;
            Next next = Next::retry;
            {
                std::unique_lock<lock_type> guard(lock_);
                if (curr_nr_.load(std::memory_order_relaxed) > 0) {
                    e = remove_element();
                    ++reserve_allocs_;
                    next = Next::take;
                } else if (!tried_full) {
                    next = Next::retry; // the first pass had no reclaim: try the source with every flag now
                } else if (!gfp::may_sleep(bits) || destroyed_) {
                    ++failures_; // (after destroy() no free refills the reserve: waiting would never end)
                    next = Next::fail;
                } else if constexpr (!shared) {
                    ++failures_;
                    next = Next::cannot_wait;
                } else {
                    ++waits_;
                    ++wait_.waiters;
                    wait_.cv.wait_for(guard, wait_timeout_); // io_schedule_timeout(5*HZ): woken or not, retry
                    --wait_.waiters;
                }
            }
            switch (next) {
            case Next::take:
                outstanding_.add();
                return e;
            case Next::fail:
                return nullptr;
            case Next::cannot_wait:
                report(
                    ErrorKind::nofail_failed, "mempool_alloc",
                    "mode:" + gfp::to_string(bits) +
                        ": the reserve is empty and the source has no element; a caller that may sleep would "
                        "wait for another thread's free, but with policy::NoLock no other thread uses the "
                        "pool.");
                return nullptr;
            case Next::retry:
                break;
            }
            tried_full = true;
            if (pointer got = retry(); got != nullptr) {
                outstanding_.add();
                return got;
            }
        }
    }

    void report(ErrorKind kind, std::string_view op, std::string message) {
        error_.on_error(UsageError{kind, op, std::move(message)});
    }

    Source source_;
    mutable lock_type lock_;
    detail::MemPoolWait<shared> wait_;
    std::unique_ptr<pointer[]> elements_; // the reserve: at least max(1, min_nr) slots; curr_nr_ in use
    std::atomic<std::size_t> curr_nr_{0};
    std::atomic<std::size_t> min_nr_{0};
    detail::ElementCount<shared> outstanding_;
    std::uint64_t reserve_allocs_ = 0;
    std::uint64_t reserve_frees_ = 0;
    std::uint64_t waits_ = 0;
    std::uint64_t failures_ = 0;
    std::chrono::nanoseconds wait_timeout_ = default_wait_timeout;
    bool destroyed_ = false;
    [[no_unique_address]] error_policy_type error_;
};

// ----- ready-made sources ------------------------------------------------------------------------------------

/// A page source over any page allocator with the kernel's page API (a BuddyAllocator; zones later): blocks of
/// 2^order pages as Page descriptors (mempool_alloc_pages / mempool_free_pages).  Works for offset-only
/// regions too.  Borrows the allocator.  Compile-time flags reach the allocator's compile-time checks.
template <class Allocator>
class PageSource {
    static_assert(
        requires(Allocator & a, gfp_t f, Page* p, unsigned o) {
            { a.alloc_pages(f, o) } -> std::same_as<Page*>;
            a.free_pages(p, o);
        },
        "PageSource needs a page allocator with alloc_pages(gfp, order) and free_pages(Page*, order).");

public:
    /// Blocks of 2^order pages from `allocator`.  An order above the allocator's max_order is reported
    /// (ErrorKind::order_too_large) through the allocator's error policy; every allocation then fails.
    PageSource(Allocator& allocator, unsigned order) : alloc_(&allocator), order_(order) {
        if constexpr (requires { Allocator::max_order; }) {
            if (order > Allocator::max_order)
                allocator.error_policy().on_error(UsageError{
                    ErrorKind::order_too_large, "mempool_create_page_pool",
                    "the pool's order " + std::to_string(order) + " is above the allocator's MaxOrder " +
                        std::to_string(Allocator::max_order) + "; no element can be allocated."});
        }
    }
    /// Allocates a block (alloc_pages) with compile-time flags, checked against the allocator at compile time.
    template <std::uint32_t B>
    Page* alloc(gfp::Flags<B> flags) {
        return alloc_->alloc_pages(flags, order_);
    }
    /// Allocates a block (alloc_pages) with run-time flags.
    Page* alloc(gfp_t flags) { return alloc_->alloc_pages(flags, order_); }
    /// Frees a block (__free_pages).
    void free(Page* page) { alloc_->free_pages(page, order_); }
    /// The order of every block.
    unsigned order() const noexcept { return order_; }
    /// The page allocator.
    Allocator& allocator() const noexcept { return *alloc_; }

private:
    Allocator* alloc_;
    unsigned order_;
};

/// A page source handing out addresses (__get_free_pages / free_pages): blocks of 2^order pages of an
/// addressable page allocator, naturally aligned, so a pool of them can back a MemPoolResource.  Borrows the
/// allocator.
template <class Allocator>
class PageAddressSource {
    static_assert(Allocator::addressable,
                  "PageAddressSource hands out addresses, but this allocator's region is offset-only; use "
                  "PageSource, whose elements are Page descriptors.");

public:
    /// Blocks of 2^order pages from `allocator`; an order above max_order is reported as for PageSource.
    PageAddressSource(Allocator& allocator, unsigned order) : alloc_(&allocator), order_(order) {
        if (order > Allocator::max_order)
            allocator.error_policy().on_error(UsageError{
                ErrorKind::order_too_large, "mempool_create_page_pool",
                "the pool's order " + std::to_string(order) + " is above the allocator's MaxOrder " +
                    std::to_string(Allocator::max_order) + "; no element can be allocated."});
    }
    /// Allocates a block and returns its address (__get_free_pages), flags checked at compile time.
    template <std::uint32_t B>
    void* alloc(gfp::Flags<B> flags) {
        return alloc_->get_free_pages(flags, order_);
    }
    /// Allocates a block and returns its address, with run-time flags.
    void* alloc(gfp_t flags) { return alloc_->get_free_pages(flags, order_); }
    /// Frees the block at `addr` (free_pages).
    void free(void* addr) { alloc_->free_pages(addr, order_); }
    /// The size of every element in bytes (PageSize << order).
    std::size_t element_size() const noexcept { return Allocator::page_size << order_; }
    /// The alignment of every element: its size (buddy blocks are naturally aligned).
    std::size_t element_align() const noexcept { return element_size(); }
    /// The order of every block.
    unsigned order() const noexcept { return order_; }
    /// The page allocator.
    Allocator& allocator() const noexcept { return *alloc_; }

private:
    Allocator* alloc_;
    unsigned order_;
};

/// A source made of two functions and their data, as mempool_create(min_nr, alloc_fn, free_fn, pool_data)
/// takes them (mempool_alloc_t / mempool_free_t).
class FunctionSource {
public:
    /// The allocation function: an element or nullptr (mempool_alloc_t).
    using alloc_fn = void* (*)(gfp_t flags, void* pool_data);
    /// The free function (mempool_free_t).
    using free_fn = void (*)(void* element, void* pool_data);
    /// Calls `alloc` and `free` with `pool_data`.
    FunctionSource(alloc_fn alloc, free_fn free, void* pool_data = nullptr) noexcept
        : alloc_(alloc), free_(free), data_(pool_data) {}
    /// Calls the allocation function.
    void* alloc(gfp_t flags) { return alloc_(flags, data_); }
    /// Calls the free function.
    void free(void* element) { free_(element, data_); }
    /// The data given to both functions (pool->pool_data).
    void* pool_data() const noexcept { return data_; }

private:
    alloc_fn alloc_;
    free_fn free_;
    void* data_;
};

/// A source of kmalloc'd elements of one size (mempool_kmalloc / mempool_kfree, mempool_create_kmalloc_pool):
/// borrows a kmem::Kmalloc (or anything with kmalloc(size, flags) and kfree(p)).  A slab pool needs no source
/// type: a `KmemCache&` is one (mempool_alloc_slab / mempool_free_slab).
template <class KmallocT>
class KmallocSource {
public:
    /// Elements of `size` bytes from `km`.
    KmallocSource(KmallocT& km, std::size_t size) noexcept : km_(&km), size_(size) {}
    /// kmalloc(size, flags), flags checked at compile time (the slab rules included).
    template <std::uint32_t B>
    void* alloc(gfp::Flags<B> flags) {
        return km_->kmalloc(size_, flags);
    }
    /// kmalloc(size, flags) with run-time flags.
    void* alloc(gfp_t flags) { return km_->kmalloc(size_, flags); }
    /// kfree(p).
    void free(void* p) { km_->kfree(p); }
    /// The size of every element in bytes.
    std::size_t element_size() const noexcept { return size_; }
    /// The alignment every element has at least (ARCH_KMALLOC_MINALIGN).
    std::size_t element_align() const noexcept { return 8; }

private:
    KmallocT* km_;
    std::size_t size_;
};

/// A pool of page blocks over a page allocator (mempool_create_page_pool): MemPool<PageSource<Allocator>>.
template <class Allocator, class... Policies>
using PagePool = MemPool<PageSource<Allocator>, Policies...>;
/// A pool of kmalloc'd elements (mempool_create_kmalloc_pool): MemPool<KmallocSource<KmallocT>>.
template <class KmallocT, class... Policies>
using KmallocPool = MemPool<KmallocSource<KmallocT>, Policies...>;

// ----- std::pmr ----------------------------------------------------------------------------------------------

/// A std::pmr::memory_resource over a borrowed MemPool of fixed-size blocks, allocating with GFP flags `Flags`
/// (gfp::kernel by default: an allocation waits for a freed element rather than fail).  A request that fits
/// (bytes <= block_size(), alignment <= block_align()) takes one element; a larger or more aligned one goes to
/// the upstream resource, or throws std::bad_alloc when there is none.  A pool allocation that fails (flags
/// that may not sleep) throws std::bad_alloc.  An alignment that is not a power of two is reported
/// (ErrorKind::bad_alignment) through the pool's error policy; allocate() then throws std::bad_alloc and
/// deallocate() frees nothing.  Resources compare equal only to themselves.
template <class Pool, class Flags = gfp::type<gfp::kernel>>
class MemPoolResource final : public std::pmr::memory_resource {
    static_assert(!std::is_same_v<std::remove_cv_t<std::remove_pointer_t<typename Pool::pointer>>, Page>,
                  "MemPoolResource needs a pool whose elements are memory, but this pool hands out Page "
                  "descriptors; build it over PageAddressSource instead of PageSource.");
    static_assert(gfp::FlagSet<Flags>, "MemPoolResource's Flags must be a gfp::Flags type, e.g. "
                                       "kmem::gfp::type<kmem::gfp::kernel>.");

public:
    /// Borrows `pool`, whose elements hold `block_size` bytes aligned to `block_align`; larger requests go to
    /// `upstream` (none: they throw std::bad_alloc).
    MemPoolResource(Pool& pool, std::size_t block_size, std::size_t block_align = alignof(std::max_align_t),
                    std::pmr::memory_resource* upstream = nullptr) noexcept
        : pool_(&pool), size_(block_size), align_(block_align), upstream_(upstream) {}
    /// Borrows `pool`, whose source says its element size and alignment (element_size(), element_align(), as
    /// PageAddressSource does).
    explicit MemPoolResource(Pool& pool, std::pmr::memory_resource* upstream = nullptr) noexcept requires
        detail::SizedSource<typename Pool::source_type>
        : MemPoolResource(pool, pool.source().element_size(), pool.source().element_align(), upstream) {}

    /// The pool behind the resource.
    Pool& pool() const noexcept { return *pool_; }
    /// The resource larger requests go to, or nullptr.
    std::pmr::memory_resource* upstream() const noexcept { return upstream_; }
    /// The bytes one element holds.
    std::size_t block_size() const noexcept { return size_; }
    /// The alignment every element has.
    std::size_t block_align() const noexcept { return align_; }

private:
    bool fits(std::size_t bytes, std::size_t align) const noexcept {
        return bytes <= size_ && align <= align_;
    }

    void* do_allocate(std::size_t bytes, std::size_t align) override {
        if (align == 0 || (align & (align - 1)) != 0) {
            report_bad_alignment("do_allocate", bytes, align, "nothing was allocated");
            throw std::bad_alloc();
        }
        if (fits(bytes, align)) {
            void* p = pool_->alloc(Flags{});
            if (p == nullptr) throw std::bad_alloc();
            return p;
        }
        if (upstream_ == nullptr) throw std::bad_alloc();
        return upstream_->allocate(bytes, align);
    }
    void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
        if (align == 0 || (align & (align - 1)) != 0) {
            report_bad_alignment("do_deallocate", bytes, align, "nothing was freed");
            return;
        }
        if (fits(bytes, align)) return pool_->free(static_cast<typename Pool::pointer>(p));
        if (upstream_ != nullptr) return upstream_->deallocate(p, bytes, align);
        pool_->error_policy().on_error(UsageError{
            ErrorKind::bad_parameter, "do_deallocate",
            std::to_string(bytes) + " bytes aligned to " + std::to_string(align) +
                " do not fit this resource's blocks and it has no upstream resource, so it never allocated "
                "them; nothing was freed."});
    }
    bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
        return this == &other;
    }

    void report_bad_alignment(std::string_view op, std::size_t bytes, std::size_t align,
                              const char* outcome) {
        pool_->error_policy().on_error(
            UsageError{ErrorKind::bad_alignment, op,
                       "The alignment " + std::to_string(align) + " given for " + std::to_string(bytes) +
                           " bytes is not a power of two, as std::pmr requires; " + outcome + "."});
    }

    Pool* pool_;
    std::size_t size_;
    std::size_t align_;
    std::pmr::memory_resource* upstream_;
};

} // namespace kmem
