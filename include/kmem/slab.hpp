/// @file
/// Object caches (the kernel's kmem_cache, mm/slub.c and mm/slab_common.c): caches of same-sized objects kept in
/// slabs carved from pages of a page allocator, with per-CPU object arrays on the hot path and SLUB's debugging.
///
/// `KmemCache<Parent, Policies...>` is the untyped cache (kmem_cache_create: name, object size, alignment, flags,
/// constructor) over a borrowed page allocator with host memory (a BuddyAllocator, later a Zone or Node);
/// `SlabCache<T, Parent, Policies...>` is the typed cache over it.  A slab is a compound page of the cache's
/// order; its head page descriptor carries PG_slab and, in its owner slot, the slab's descriptor, so any pointer
/// finds its slab and its cache in O(1) (virt_to_slab).  Free objects of a slab are chained through a free
/// pointer stored in the object (or after it, when the cache has a constructor or poisons objects), as SLUB
/// does.  Each CPU keeps an array of free objects (SLAB's array_cache, Bonwick's magazine): an allocation pops
/// it and a free pushes it under the CPU's rseq-locked slot, with no lock and no atomic read-modify-write; an
/// empty array is refilled with `batchcount` objects from the slabs, a full one gives `batchcount` back.
/// Policies: a lock policy (NoLock: one thread at a time; SpinLock / MutexLock: any thread, any CPU) and an
/// error policy (how mistakes and debug reports are delivered).
/// The creation flags, CacheConfig, SlabStats and the slabinfo() / slabtop() reports are in kmem/slab_common.hpp,
/// which this header includes.
///
/// @code
///   kmem::BuddyAllocator<10, 4096, kmem::MmapRegion> pages(kmem::MmapRegion(4 << 20));
///   struct Inode { long ino; char name[40]; };
///   kmem::SlabCache<Inode, decltype(pages)> inodes(pages, "inode_cache");
///   Inode* a = inodes.construct(Inode{7, "root"});        // allocate and construct
///   Inode* b = inodes.alloc(kmem::gfp::kernel);            // raw object storage
///   assert(pages.virt_to_page(a)->test(kmem::PageFlag::slab) || pages.virt_to_page(a)->test(kmem::PageFlag::tail));
///   inodes.free(b);
///   inodes.destroy(a);                                     // ~Inode, then free
///   assert(inodes.stats().active_objs <= inodes.stats().num_objs);
///   assert(inodes.destroy());                              // kmem_cache_destroy: every page goes back
///   std::cout << kmem::slabinfo({inodes.stats()});
/// @endcode
#pragma once

#include <kmem/detail/per_cpu_sets.hpp>
#include <kmem/detail/policies.hpp>
#include <kmem/detail/slab_debug.hpp>
#include <kmem/detail/slab_layout.hpp>
#include <kmem/fault.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/shrinker.hpp>
#include <kmem/slab_common.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unistd.h>
#include <utility>
#include <vector>

namespace kmem {

/// What a page allocator must offer to carry slabs: host memory, compound pages, page descriptors.
template <class P>
concept SlabPageSource = requires(P& p, Page* page, const void* addr) {
    { P::addressable } -> std::convertible_to<bool>;
    { P::page_size } -> std::convertible_to<std::size_t>;
    { P::max_order } -> std::convertible_to<unsigned>;
    { p.compound_head(page) } -> std::same_as<Page*>;
    p.free_pages(page, 0u);
    { p.alloc_pages(gfp_t(gfp::kernel), 0u) } -> std::same_as<Page*>;
};

/// An object cache (struct kmem_cache) over a borrowed page allocator `Parent` with host memory.
///
/// Thread safety follows the lock policy: with NoLock one thread at a time uses the cache; with SpinLock or
/// MutexLock any thread may allocate and free (also objects another thread allocated), and the page allocator
/// must be thread-safe too.  Mistakes (a free of a foreign pointer, an interior pointer, a double free caught by
/// the checks) and debug findings are reported through the error policy after every lock is released; the
/// cache is left consistent.
template <class Parent, class... Policies>
class KmemCache : private detail::SlabDebug {
    static_assert(SlabPageSource<Parent>,
                  "a slab cache's Parent must be a page allocator (BuddyAllocator, Zone, Node): alloc_pages, "
                  "free_pages, compound_head, page_size and max_order.");
    static_assert(
        Parent::addressable,
        "a slab cache needs a page allocator over host memory; this one's region is offset-only, so "
        "objects would have no addresses.");
    using policies = detail::PolicySet<Policies...>;
    static_assert(
        policies::template only<policy::lock_policy_tag, policy::error_policy_tag, policy::fault_policy_tag>,
        "a KmemCache policy must be a lock policy, an error policy or a fault-injection policy "
        "(policy::FailSlab).");
    static_assert(policies::unique);

public:
    /// The page allocator type.
    using parent_type = Parent;
    /// The lock policy (NoLock by default).
    using lock_type = typename policies::template get<policy::lock_policy_tag, policy::NoLock>;
    static_assert(policy::LockPolicy<lock_type>, "the lock policy needs lock(), unlock() and may_sleep.");
    /// The error policy (AssertOnError by default).
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    static_assert(policy::ErrorPolicy<error_policy_type>,
                  "the error policy needs on_error(const UsageError&).");
    /// The fault-injection policy (policy::NoFaults by default; policy::FailSlab is failslab).
    using fault_policy_type = typename policies::template get<policy::fault_policy_tag, policy::NoFaults>;
    /// True when several threads may use the cache (a lock policy other than NoLock).
    static constexpr bool shared = !std::is_same_v<lock_type, policy::NoLock>;
    /// Bytes per page of the parent (PAGE_SIZE).
    static constexpr std::size_t page_size = Parent::page_size;
    /// The largest slab order the cache picks when objects allow (slub_max_order, PAGE_ALLOC_COSTLY_ORDER).
    static constexpr unsigned max_slab_order = Parent::max_order < 3 ? Parent::max_order : 3u;

    /// Creates a cache (kmem_cache_create).  A size of 0, an alignment that is not a power of two or is above
    /// a page, or an object that does not fit in the parent's largest block is reported (bad_parameter or
    /// bad_alignment); such a cache stays empty and every allocation from it returns nullptr.
    KmemCache(Parent& parent, CacheConfig config) : detail::SlabDebug(std::move(config)), parent_(parent) {
        setup();
    }
    /// kmem_cache_create(name, size, align, flags, ctor) with positional arguments.
    KmemCache(Parent& parent, std::string_view name, std::size_t size, std::size_t align = 0,
              SlabFlags flags = SlabFlags::none, std::function<void(void*)> ctor = {})
        : KmemCache(parent, CacheConfig{std::string(name), size, align, flags, std::move(ctor)}) {}
    KmemCache(const KmemCache&) = delete;            ///< Not copyable.
    KmemCache& operator=(const KmemCache&) = delete; ///< Not copyable.
    /// Returns every slab to the page allocator.  Objects still allocated are reported on stderr ("Slab cache
    /// still has objects") and their slabs are left with the page allocator as allocated: a destructor cannot
    /// make live pointers safe, so it leaks rather than hands their memory out again.
    ~KmemCache() {
        drain_cpu_arrays();
        if (inuse_objects() != 0) {
            detail::print_usage_error(remaining_report("~KmemCache"));
            release_slabs(false);
        } else {
            release_slabs(true);
        }
        release_descriptor_pages();
#ifdef KMEM_DETAIL_SLAB_VALGRIND
        VALGRIND_DESTROY_MEMPOOL(this);
#endif
    }

    // ----- allocation ------------------------------------------------------------------------------------

    /// Allocates one object (kmem_cache_alloc) in its constructed state, or nullptr when the page allocator
    /// has no memory for a new slab.  `flags` pass the slab rules at compile time (gfp::check_slab) and the
    /// parent's rules (zone, may sleep); gfp::zero clears the object (kmem_cache_zalloc).
    template <std::uint32_t B>
    void* alloc(gfp::Flags<B> flags, const SourceLocation& where = SourceLocation::current()) {
        gfp::check_slab(flags);
        if (fault_.should_fail_slab(B, cfg_.size)) [[unlikely]] // should_failslab()
            return nullptr;
        if (!debug_) [[likely]] {
            if (void* p = cpu_pop()) [[likely]]
                return finish_alloc(p, B);
        }
        return alloc_slow(flags, where);
    }
    /// alloc() with gfp::kernel.
    void* alloc(const SourceLocation& where = SourceLocation::current()) {
        return alloc(gfp::kernel, where);
    }
    /// alloc() with flags known at run time: flags breaking a rule (gfp::validate_slab) are reported as
    /// invalid_gfp and the call returns nullptr.
    void* alloc(gfp_t flags, const SourceLocation& where = SourceLocation::current()) {
        if (const gfp::Problem p = flags.validate_slab(); p != gfp::Problem::none) {
            report(UsageError{ErrorKind::invalid_gfp, "kmem_cache_alloc",
                              std::string(gfp::describe(p)) + " (cache " + cfg_.name + ")"});
            return nullptr;
        }
        if (fault_.should_fail_slab(flags.value(), cfg_.size)) [[unlikely]]
            return nullptr;
        if (!debug_) {
            if (void* p = cpu_pop()) return finish_alloc(p, flags.value());
        }
        return alloc_slow(flags, where);
    }
    /// A zeroed object (kmem_cache_zalloc): alloc(flags | gfp::zero).
    template <std::uint32_t B = gfp::kernel.value>
    void* zalloc(gfp::Flags<B> flags = {}, const SourceLocation& where = SourceLocation::current()) {
        return alloc(flags | gfp::zero, where);
    }

    /// Fills `out` with objects (kmem_cache_alloc_bulk): all of them or none.  Returns out.size() or 0.
    template <std::uint32_t B>
    std::size_t alloc_bulk(gfp::Flags<B> flags, std::span<void*> out,
                           const SourceLocation& where = SourceLocation::current()) {
        for (std::size_t i = 0; i < out.size(); ++i) {
            out[i] = alloc(flags, where);
            if (out[i] == nullptr) {
                free_bulk(out.first(i), where);
                std::fill(out.begin(), out.end(), nullptr);
                return 0;
            }
        }
        return out.size();
    }

    // ----- free ------------------------------------------------------------------------------------------

    /// Frees an object (kmem_cache_free).  nullptr is ignored.  A pointer that is not an object of this cache
    /// (outside every slab, from another cache, not the start of an object) or a double free the checks catch
    /// is reported through the error policy and nothing is freed.
    void free(void* object, const SourceLocation& where = SourceLocation::current()) {
        if (object == nullptr) return;
        detail::Slab* s = owning_slab(object, "kmem_cache_free");
        if (s == nullptr) [[unlikely]]
            return;
        free_known(s, object, where);
    }
    /// Frees `object`, whose slab `s` (found with virt_to_slab() and belonging to this cache) the caller has
    /// already looked up: kfree's path.  An interior pointer is still reported (not_object).
    [[gnu::always_inline]] void free_known(detail::Slab* s, void* object,
                                           const SourceLocation& where = SourceLocation::current()) {
        if (object_index(s, object) < 0) [[unlikely]]
            return report_not_object(object, "kfree");
#ifdef KMEM_DETAIL_SLAB_VALGRIND
        VALGRIND_MEMPOOL_FREE(this, object);
#endif
        if (!debug_) [[likely]] {
            if (cpu_push(object)) [[likely]]
                return;
        }
        free_slow(s, object, where);
    }
    /// Frees every object of `objects` (kmem_cache_free_bulk).
    void free_bulk(std::span<void* const> objects, const SourceLocation& where = SourceLocation::current()) {
        for (void* p : objects) free(p, where);
    }

    // ----- maintenance -----------------------------------------------------------------------------------

    /// Gives every empty slab back to the page allocator after emptying the per-CPU arrays
    /// (kmem_cache_shrink); returns the number of pages given back.
    std::uint64_t shrink() {
        const std::uint64_t drained = drain_cpu_arrays();
        const std::uint64_t n = drained + free_empty_slabs(0);
        release_descriptor_pages(); // a cache left without slabs gives its descriptor pages back too
        return n;
    }
    /// A shrinker for this cache, to register with a Node (register_shrinker) so that memory pressure gives its
    /// free memory back: count_objects is the free objects held in per-CPU arrays and empty slabs, scan_objects
    /// runs shrink() (the kernel shrinks slab caches from reclaim through kmem_cache_shrink / cache_reap) and
    /// returns the objects it released.  The cache must outlive the registration.
    Shrinker shrinker() {
        Shrinker s;
        s.name = cfg_.name;
        s.count_objects = [this](const ShrinkControl&) -> std::uint64_t {
            const std::uint64_t n = reclaimable_objects();
            return n == 0 ? shrink_empty : n;
        };
        s.scan_objects = [this](ShrinkControl&) -> std::uint64_t {
            const std::uint64_t before = reclaimable_objects();
            shrink();
            const std::uint64_t after = reclaimable_objects();
            return before > after ? before - after : 0;
        };
        return s;
    }
    /// Empties every CPU's array of free objects into the slabs (drain_cpu_caches / flush_all); returns the
    /// pages of the slabs that became empty beyond min_partial and went back to the page allocator.
    std::uint64_t drain_cpu_arrays() {
        return drain_arrays([] {});
    }
    /// kmem_cache_destroy: when no object is allocated, every slab goes back to the page allocator and true is
    /// returned (the cache may still be used: it grows again).  Otherwise the objects left are reported
    /// (ErrorKind::objects_remain, "Slab cache still has objects") and the cache stays as it was, usable.
    bool destroy() {
        drain_cpu_arrays();
        if (inuse_objects() != 0) {
            report(remaining_report("kmem_cache_destroy"));
            return false;
        }
        release_slabs(true);
        release_descriptor_pages();
        return true;
    }

    /// Sets the per-CPU array tunables (SLAB's "limit batchcount" line written to /proc/slabinfo): limit in
    /// 1..120, batchcount in 1..limit; others are reported as bad_parameter and nothing changes.
    void set_tunables(unsigned limit, unsigned batchcount) {
        if (limit == 0 || limit > detail::slab_array_max || batchcount == 0 || batchcount > limit)
            return report(UsageError{ErrorKind::bad_parameter, "set_tunables",
                                     "limit must be 1.." + std::to_string(detail::slab_array_max) +
                                         " and batchcount 1..limit; got limit " + std::to_string(limit) +
                                         ", batchcount " + std::to_string(batchcount)});
        // Under every CPU's lock, with the arrays empty: a CPU sees both new values and no array above limit.
        drain_arrays([&] {
            limit_ = limit;
            batch_ = batchcount;
        });
    }

    /// Checks every slab and every invariant (SLUB's validate_slab_cache): list membership matches each slab's
    /// use, free pointers stay inside their slab and reach exactly objects - inuse objects, counters add up,
    /// and with debug flags every free object's poison and red zones are intact.  Returns an empty string when
    /// all holds, else the first problem found.
    std::string validate() const {
        std::string problem;
        policy::LockGuard<lock_type> g(lock_);
        std::uint64_t slabs = 0, inuse = 0;
        const auto walk = [&](const detail::SlabList& l, std::uint8_t kind) {
            std::uint64_t n = 0;
            for (detail::Slab* s = l.head; s != nullptr && problem.empty(); s = s->next, ++n) {
                ++slabs;
                inuse += s->inuse;
                if (s->list != kind) problem = "a slab is on the wrong list";
                if (s->cache != this) problem = "a slab names another cache";
                if (!s->page->test(PageFlag::slab) || s->page->owner() != reinterpret_cast<std::uintptr_t>(s))
                    problem = "a slab's head page does not point back at it";
                const std::uint32_t want = kind == full ? objects_ : kind == empty ? 0u : s->inuse;
                if (s->inuse != want || (kind == partial && (s->inuse == 0 || s->inuse == objects_)))
                    problem = "a slab's use does not match its list";
                std::uint32_t free_count = 0;
                for (void* o = s->freelist; o != nullptr && problem.empty();
                     o = problem.empty() ? get_fp(o) : nullptr) {
                    if (object_index(s, o) < 0)
                        problem = "a free pointer leaves its slab";
                    else if (++free_count > objects_)
                        problem = "a slab's free list loops";
                    else if (debug_) {
                        detail::SlabDiagnosis d;
                        check_free_object(s, o, d, "validate");
                        if (d) problem = std::string(d.what) + " in a free object";
                    }
                }
                if (problem.empty() && free_count != objects_ - s->inuse)
                    problem = "a slab's free list length does not match its use";
            }
            if (problem.empty() && n != l.count) problem = "a list's count does not match its length";
        };
        walk(lists_[partial], partial);
        walk(lists_[full], full);
        walk(lists_[empty], empty);
        if (problem.empty() && slabs != nr_slabs_) problem = "the slab count does not add up";
        if (problem.empty() && inuse != inuse_) problem = "the object count does not add up";
        return problem;
    }

    // ----- information -----------------------------------------------------------------------------------

    /// The cache's name.
    const std::string& name() const noexcept {
        return cfg_.name;
    }
    /// Bytes per object as asked (kmem_cache_size).
    std::size_t object_size() const noexcept {
        return cfg_.size;
    }
    /// Bytes between objects in a slab, with alignment and debug metadata.
    std::size_t stride() const noexcept {
        return stride_;
    }
    /// The alignment objects get.
    std::size_t align() const noexcept {
        return align_;
    }
    /// The slab order (pages per slab = 1 << order).
    unsigned order() const noexcept {
        return order_;
    }
    /// Objects per slab.
    std::uint32_t objects_per_slab() const noexcept {
        return objects_;
    }
    /// The creation flags.
    SlabFlags flags() const noexcept {
        return cfg_.flags;
    }
    /// False when creation was refused (a bad parameter was reported); every allocation then fails.
    bool valid() const noexcept {
        return objects_ != 0;
    }
    /// The page allocator.
    Parent& parent() const noexcept {
        return parent_;
    }
    /// The error policy.
    error_policy_type& error_policy() noexcept {
        return error_;
    }
    /// The fault-injection policy (policy::FailSlab makes object allocations fail on purpose: failslab).
    fault_policy_type& fault_policy() noexcept {
        return fault_;
    }
    /// True when per-CPU arrays are locked with restartable sequences (no locked instruction on the hot path).
    bool uses_rseq() const noexcept {
        return cpus_.uses_rseq();
    }

    /// Free objects that shrink() could give back: those held in per-CPU arrays and in empty slabs.
    std::uint64_t reclaimable_objects() const {
        const SlabStats st = stats();
        return st.cpu_objs + (st.num_slabs - st.active_slabs) * st.objperslab;
    }
    /// The cache's figures for slabinfo() and slabtop().
    SlabStats stats() const {
        SlabStats s;
        s.name = cfg_.name;
        s.objsize = static_cast<std::uint32_t>(stride_);
        s.object_size = static_cast<std::uint32_t>(cfg_.size);
        s.objperslab = objects_;
        s.pagesperslab = 1u << order_;
        s.limit = debug_ ? 0u : limit_.load(std::memory_order_relaxed);
        s.batchcount = debug_ ? 0u : batch_.load(std::memory_order_relaxed);
        s.page_size = page_size;
        std::uint64_t cpu_objs = 0;
        cpus_.lock_all();
        for (unsigned c = 0; c < cpus_.size(); ++c) cpu_objs += cpus_[c].avail;
        cpus_.unlock_all();
        policy::LockGuard<lock_type> g(lock_);
        s.num_slabs = nr_slabs_;
        s.active_slabs = nr_slabs_ - lists_[empty].count;
        s.num_objs = nr_slabs_ * objects_;
        s.cpu_objs = cpu_objs;
        s.active_objs = inuse_ - std::min(inuse_, cpu_objs);
        s.metadata_bytes = nr_slabs_ * sizeof(detail::Slab);
        return s;
    }
    /// Objects handed out to callers or held in per-CPU arrays.
    std::uint64_t inuse_objects() const {
        policy::LockGuard<lock_type> g(lock_);
        return inuse_;
    }
    /// Slabs the cache holds.
    std::uint64_t slab_count() const {
        policy::LockGuard<lock_type> g(lock_);
        return nr_slabs_;
    }

    /// The slab descriptor of the slab holding `p` and belonging to any cache (virt_to_slab), or nullptr when
    /// `p` is not inside a slab of `parent`.
    static detail::Slab* virt_to_slab(Parent& parent, const void* p) noexcept {
        Page* page = parent.virt_to_page(p);
        if (page == nullptr) return nullptr;
        page = parent.compound_head(page);
        if (!page->test(PageFlag::slab)) return nullptr;
        return reinterpret_cast<detail::Slab*>(static_cast<std::uintptr_t>(page->owner()));
    }
    /// Bytes usable in the object at `p` of this cache (ksize for slab objects).
    std::size_t usable_size() const noexcept {
        return cfg_.size;
    }

    /// True when a request of `bytes` with alignment `align` fits an object (kmem::FixedSizeResource asks).
    bool serves(std::size_t bytes, std::size_t align) const noexcept {
        return bytes <= cfg_.size && align <= align_;
    }
    /// Byte interface for kmem::MemoryResource and kmem::FixedSizeResource: requests serves() accepts get an
    /// object; others get nullptr.
    template <std::uint32_t B>
    void* try_allocate(gfp::Flags<B> flags, std::size_t bytes, std::size_t align) {
        if (!serves(bytes, align)) return nullptr;
        return alloc(flags);
    }
    /// Byte interface: frees an object from try_allocate().
    void deallocate(void* p, std::size_t, std::size_t) {
        free(p);
    }

private:
    enum : std::uint8_t { partial = 0, full = 1, empty = 2 };

    // Empties every CPU's array under every CPU's lock, runs `while_locked` still under them, then returns the
    // objects to their slabs; returns the pages of the slabs that went back to the page allocator.
    template <class F>
    std::uint64_t drain_arrays(F&& while_locked) {
        std::vector<void*> objects;
        cpus_.lock_all();
        for (unsigned c = 0; c < cpus_.size(); ++c) {
            detail::SlabCpuArray& a = cpus_[c];
            objects.insert(objects.end(), a.entry.begin(), a.entry.begin() + a.avail);
            a.avail = 0;
        }
        while_locked();
        cpus_.unlock_all();
        if (objects.empty()) return 0;
        return std::uint64_t{put_objects(objects.data(), objects.size(), "kmem_cache_shrink")} << order_;
    }

    // ----- set-up (calculate_sizes / calculate_order) ----------------------------------------------------

    void setup() {
        const std::size_t size = cfg_.size;
        if (size == 0) return report(bad_config("the object size is 0"));
        if (cfg_.align != 0 && (!std::has_single_bit(cfg_.align) || cfg_.align > page_size))
            return report(UsageError{ErrorKind::bad_alignment, "kmem_cache_create",
                                     "cache " + cfg_.name + ": alignment " + std::to_string(cfg_.align) +
                                         " is not a power of two of at most a page"});
        debug_ = any_of(cfg_.flags, slab_debug_flags);
        poison_ = any_of(cfg_.flags, SlabFlags::poison) && !cfg_.ctor;
        red_zone_ = any_of(cfg_.flags, SlabFlags::red_zone);
        store_user_ = any_of(cfg_.flags, SlabFlags::store_user);
        align_ = detail::slab_alignment(cfg_.flags, cfg_.align, size);
        if (size > (page_size << Parent::max_order))
            return report(bad_config("the object is larger than the largest block"));
        // Object layout: [left red zone][object][right red zone][free pointer?][tracks?] rounded to align.
        std::size_t w = (size + 7) & ~std::size_t{7};
        red_left_ = red_zone_ ? std::max<std::size_t>(align_, 8) : 0;
        if (red_zone_ && w == size) w += 8;
        rz_end_ = w;
        if (cfg_.ctor || poison_) {
            fp_offset_ = w;
            w += sizeof(void*);
        } else {
            fp_offset_ = 0;
        }
        if (store_user_) {
            track_offset_ = w;
            w += 2 * sizeof(SlabTrack);
        }
        stride_ = (red_left_ + w + align_ - 1) & ~(align_ - 1);
        // calculate_order: the smallest order that keeps waste within 1/8 of the slab and holds min_objects.
        const unsigned cpus = static_cast<unsigned>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
        std::uint32_t min_objects = 4 * (static_cast<std::uint32_t>(std::bit_width(cpus)) + 1);
        unsigned top = max_slab_order;
        while (top < Parent::max_order && (page_size << top) < stride_) ++top;
        if ((page_size << top) < stride_)
            return report(
                bad_config("the object (with its debug metadata) is larger than the largest block"));
        min_objects =
            std::min<std::uint32_t>(min_objects, static_cast<std::uint32_t>((page_size << top) / stride_));
        std::optional<unsigned> pick;
        for (int pass = 0; pass < 2 && !pick; ++pass)
            for (unsigned o = 0; o <= top && !pick; ++o) {
                const std::size_t slab = page_size << o;
                const std::size_t n = slab / stride_;
                if (n == 0) continue;
                const std::size_t waste = slab - n * stride_;
                if (waste * 8 <= slab && (pass == 1 || n >= min_objects)) pick = o;
            }
        if (!pick) { // nothing within 1/8: the least waste
            double best = 2.0;
            for (unsigned o = 0; o <= top; ++o) {
                const std::size_t slab = page_size << o;
                const std::size_t n = slab / stride_;
                if (n == 0) continue;
                const double frac = static_cast<double>(slab - n * stride_) / static_cast<double>(slab);
                if (frac < best) best = frac, pick = o;
            }
        }
        order_ = *pick;
        const std::size_t slab = page_size << order_;
        objects_ = static_cast<std::uint32_t>(slab / stride_);
        colour_off_ = std::max<std::size_t>(64, align_);
        colours_ = static_cast<std::uint32_t>((slab - objects_ * stride_) / colour_off_) + 1;
        recip_ = (std::uint64_t{1} << 32) / stride_ + 1; // exact for offsets below a slab (stride <= 2^24)
        // The per-CPU array size: SLAB's enable_cpucache for objects above a page (8, or 1 above 128 KiB); for
        // smaller ones up to 256 KiB of objects, 8 to 1024 of them (tcmalloc-sized; SLAB stopped at 120, which a
        // burst of a thousand allocations outruns).
        limit_ = stride_ > 131072 ? 1
                 : stride_ > page_size
                     ? 8
                     : static_cast<unsigned>(std::clamp<std::size_t>(262144 / stride_, 8, 1024));
        batch_ = (limit_ + 1) / 2;
#ifdef KMEM_DETAIL_SLAB_VALGRIND
        VALGRIND_CREATE_MEMPOOL(this, 0, 0);
#endif
    }
    UsageError bad_config(std::string_view why) const {
        return UsageError{ErrorKind::bad_parameter, "kmem_cache_create",
                          "cache " + cfg_.name + " (size " + std::to_string(cfg_.size) +
                              "): " + std::string(why)};
    }

    // The slab holding `object` when it is one of this cache's objects; otherwise reports why and returns null.
    [[gnu::always_inline]] detail::Slab* owning_slab(void* object, const char* op) {
        Page* page = parent_.virt_to_page(object);
        if (page != nullptr) [[likely]] {
            page = parent_.compound_head(page);
            if (page->test(PageFlag::slab)) [[likely]] {
                auto* s = reinterpret_cast<detail::Slab*>(static_cast<std::uintptr_t>(page->owner()));
                if (s->cache == this) [[likely]]
                    return s;
            }
        }
        report_foreign(object, op);
        return nullptr;
    }
    [[gnu::noinline]] void report_foreign(void* object, const char* op) {
        Page* page = parent_.virt_to_page(object);
        if (page == nullptr) {
            report(
                UsageError{ErrorKind::out_of_region, op,
                           detail::hex(object) + " is not inside the page allocator of cache " + cfg_.name});
            return;
        }
        page = parent_.compound_head(page);
        if (!page->test(PageFlag::slab)) {
            report(UsageError{ErrorKind::not_object, op,
                              "Attempt to free object(" + detail::hex(object) + ") outside of slab (cache " +
                                  cfg_.name + ")"});
            return;
        }
        auto* s = reinterpret_cast<detail::Slab*>(static_cast<std::uintptr_t>(page->owner()));
        {
            detail::SlabDiagnosis d;
            d.kind = ErrorKind::wrong_cache;
            d.what = "Wrong slab cache";
            d.object = object;
            d.other_cache = static_cast<const KmemCache*>(s->cache)->cfg_.name;
            report(UsageError{ErrorKind::wrong_cache, op, detail::format_slab_report(cfg_.name, d)});
        }
    }
    // free_known() when the local array is busy (put the object straight on its slab) or the cache debugs.
    [[gnu::noinline]] void free_slow(detail::Slab* s, void* object, const SourceLocation& where) {
        if (!debug_) {
            put_objects(&object, 1, "kmem_cache_free");
            return;
        }
        free_debug(s, object, where);
    }
    [[gnu::noinline]] void report_not_object(const void* object, const char* op) {
        report(UsageError{ErrorKind::not_object, op,
                          "BUG " + cfg_.name + " (Not tainted): Invalid object pointer " +
                              detail::hex(object) + " (not the start of an object)"});
    }

    // ----- per-CPU arrays --------------------------------------------------------------------------------

    void* cpu_pop() noexcept {
        return cpus_.pop_local();
    }
    // Pushes a free object on the local array; a full array first gives its oldest `batch` objects back.
    bool cpu_push(void* object) {
        mark_free(object);
        if (cpus_.push_local(object, limit_)) [[likely]]
            return true;
        return cpu_push_slow(object);
    }
    [[gnu::noinline]] bool cpu_push_slow(void* object) {
        const int cpu = cpus_.try_lock_local();
        if (cpu < 0) [[unlikely]]
            return false;
        detail::SlabCpuArray& a = cpus_[static_cast<unsigned>(cpu)];
        if (a.avail < limit_) {
            a.entry[a.avail++] = object;
            cpus_.unlock_local(static_cast<unsigned>(cpu));
            return true;
        }
        std::array<void*, detail::slab_array_max> out; // cache_flusharray
        const unsigned n = batch_;
        std::copy_n(a.entry.begin(), n, out.begin());
        std::copy(a.entry.begin() + n, a.entry.begin() + a.avail, a.entry.begin());
        a.avail -= n;
        a.entry[a.avail++] = object;
        cpus_.unlock_local(static_cast<unsigned>(cpu));
        put_objects(out.data(), n, "kmem_cache_free");
        return true;
    }
    void mark_free([[maybe_unused]] void* object) const noexcept {
#if defined(KMEM_DETAIL_SLAB_ASAN) || defined(KMEM_DETAIL_SLAB_VALGRIND)
        detail::mark_noaccess(object, cfg_.size);
#endif
    }

    void* finish_alloc(void* p, std::uint32_t bits) const noexcept {
#if defined(KMEM_DETAIL_SLAB_ASAN) || defined(KMEM_DETAIL_SLAB_VALGRIND)
        detail::mark_defined(p, cfg_.size);
#ifdef KMEM_DETAIL_SLAB_VALGRIND
        VALGRIND_MEMPOOL_ALLOC(const_cast<KmemCache*>(this), p, cfg_.size);
        (void)VALGRIND_MAKE_MEM_DEFINED(p, cfg_.size);
#endif
#endif
        if (bits & gfp::bits::zero) std::memset(p, 0, cfg_.size);
        return p;
    }

    // ----- the slow paths --------------------------------------------------------------------------------

    template <class F>
    static auto page_flags(F flags) noexcept {
        if constexpr (std::is_same_v<F, gfp_t>)
            return gfp_t::from_bits((flags.value() & ~gfp::bits::zero) | gfp::bits::comp);
        else
            return gfp::Flags<(F::value & ~gfp::bits::zero) | gfp::bits::comp>{};
    }
    static std::uint32_t bits_of(gfp_t f) noexcept {
        return f.value();
    }
    template <std::uint32_t B>
    static constexpr std::uint32_t bits_of(gfp::Flags<B>) noexcept {
        return B;
    }

    // cache_alloc_refill: takes a batch from the slabs (growing the cache when they are all full), keeps one,
    // and puts the rest on the local array.
    template <class F>
    [[gnu::noinline]] void* alloc_slow(F flags, const SourceLocation& where) {
        if (!valid()) return nullptr;
        if (debug_) return alloc_debug(flags, where);
        std::array<void*, detail::slab_array_max> got;
        std::size_t n = take_objects(got.data(), batch_);
        if (n == 0) n = grow_and_take(flags, got.data(), batch_);
        if (n == 0) return nullptr;
        void* p = got[--n];
        if (n != 0) {
            std::size_t kept = 0;
            const int cpu = cpus_.try_lock_local();
            if (cpu >= 0) {
                detail::SlabCpuArray& a = cpus_[static_cast<unsigned>(cpu)];
                const unsigned limit = limit_; // may have dropped below avail (set_tunables) since a push
                kept = a.avail < limit ? std::min<std::size_t>(n, limit - a.avail) : 0;
                for (std::size_t i = 0; i < kept; ++i) {
                    a.entry[a.avail++] = got[n - 1 - i];
                    mark_free(got[n - 1 - i]);
                }
                cpus_.unlock_local(static_cast<unsigned>(cpu));
            }
            if (kept < n) put_objects(got.data(), n - kept, "kmem_cache_alloc");
        }
        return finish_alloc(p, bits_of(flags));
    }

    // Grows the cache by one slab and takes up to `want` objects; under memory pressure first empties the
    // per-CPU arrays and tries the slabs again.
    template <class F>
    std::size_t grow_and_take(F flags, void** out, std::size_t want) {
        if (grow(flags)) {
            if (const std::size_t n = take_objects(out, want)) return n;
        }
        drain_cpu_arrays(); // memory is short: free objects parked on other CPUs come first
        if (const std::size_t n = take_objects(out, want)) return n;
        if (grow(flags)) return take_objects(out, want);
        return 0;
    }

    // Takes up to `want` objects from partial, then empty slabs, under the cache lock.
    std::size_t take_objects(void** out, std::size_t want) {
        policy::LockGuard<lock_type> g(lock_);
        std::size_t n = 0;
        while (n < want) {
            detail::Slab* s = lists_[partial].head != nullptr ? lists_[partial].head : lists_[empty].head;
            if (s == nullptr) break;
            while (n < want && s->freelist != nullptr) {
                void* o = s->freelist;
                s->freelist = get_fp(o);
                ++s->inuse;
                out[n++] = o;
            }
            relist(s);
        }
        inuse_ += n;
        return n;
    }

    // Moves a slab to the list its use calls for.
    void relist(detail::Slab* s) noexcept {
        const std::uint8_t want = s->inuse == 0 ? empty : s->inuse == objects_ ? full : partial;
        if (s->list == want) return;
        lists_[s->list].remove(s);
        s->list = want;
        lists_[want].push(s);
    }

    // Returns objects to their slabs (free_block); empty slabs beyond min_partial go back to the page allocator
    // after the lock is released.
    std::size_t put_objects(void* const* objects, std::size_t n, const char* op) {
        std::array<Page*, detail::slab_array_max + 1> release{};
        std::size_t nr_release = 0;
        detail::SlabDiagnosis d;
        {
            policy::LockGuard<lock_type> g(lock_);
            for (std::size_t i = 0; i < n; ++i) {
                void* o = objects[i];
                auto* s = reinterpret_cast<detail::Slab*>(
                    static_cast<std::uintptr_t>(parent_.compound_head(parent_.virt_to_page(o))->owner()));
                if (o == s->freelist) [[unlikely]] { // SLUB's naive double-free check: the list's head again
                    if (!d) {
                        d.kind = ErrorKind::double_free;
                        d.what = "Object already free";
                        d.object = o;
                        d.op = op;
                    }
                    continue;
                }
                set_fp(o, s->freelist);
                s->freelist = o;
                --s->inuse;
                --inuse_;
                relist(s);
            }
            while (lists_[empty].count > cfg_.min_partial && nr_release < release.size())
                release[nr_release++] = unlink_slab(lists_[empty].head);
        }
        for (std::size_t i = 0; i < nr_release; ++i) free_slab_pages(release[i]);
        if (d) report(UsageError{d.kind, op, detail::format_slab_report(cfg_.name, d)});
        return nr_release;
    }

    // Takes a slab off its list and returns its descriptor to the free descriptors (under the lock); the caller
    // frees the pages after the lock.
    Page* unlink_slab(detail::Slab* s) noexcept {
        lists_[s->list].remove(s);
        --nr_slabs_;
        Page* page = s->page;
        s->next = free_desc_;
        free_desc_ = s;
        return page;
    }
    // PG_slab changes with a relaxed atomic store, outside the page allocator's lock: its merge reads a
    // neighbouring block's flags under that lock (see design.md, per-CPU page lists).
    static void set_slab_flag(Page& p, bool on) noexcept {
        const auto f = static_cast<std::uint16_t>(detail::PageAccess::load_flags(p));
        const auto bit = static_cast<std::uint16_t>(detail::flag(PageFlag::slab));
        detail::PageAccess::set_flags(p, static_cast<std::uint16_t>(on ? f | bit : f & ~bit));
    }
    void free_slab_pages(Page* page) {
#ifdef KMEM_DETAIL_SLAB_ASAN
        detail::mark_defined(parent_.page_address(page), page_size << order_);
#endif
#ifdef KMEM_DETAIL_SLAB_VALGRIND
        (void)VALGRIND_MAKE_MEM_UNDEFINED(parent_.page_address(page), page_size << order_);
#endif
        set_slab_flag(*page, false);
        page->set_owner(0);
        parent_.free_pages(page, order_);
    }

    std::uint64_t free_empty_slabs(unsigned keep) {
        std::vector<Page*> release;
        {
            policy::LockGuard<lock_type> g(lock_);
            while (lists_[empty].count > keep) release.push_back(unlink_slab(lists_[empty].head));
        }
        for (Page* p : release) free_slab_pages(p);
        return release.size() << order_;
    }

    // allocate_slab: pages from the parent (no lock held), a descriptor, the objects laid out and constructed,
    // then the slab joins the empty list.
    template <class F>
    bool grow(F flags) {
        Page* page = parent_.alloc_pages(page_flags(flags), order_);
        if (page == nullptr) return false;
        detail::Slab* s = get_descriptor(flags);
        if (s == nullptr) {
            parent_.free_pages(page, order_);
            return false;
        }
        std::uint32_t colour;
        {
            policy::LockGuard<lock_type> g(lock_);
            colour = colour_next_;
            colour_next_ = colour_next_ + 1 == colours_ ? 0 : colour_next_ + 1;
        }
        auto* base = static_cast<std::byte*>(parent_.page_address(page));
        *s = detail::Slab{};
        s->s_mem = base + std::size_t{colour} * colour_off_;
        s->cache = this;
        s->page = page;
        s->colour = colour * static_cast<std::uint32_t>(colour_off_);
        s->tag = cfg_.tag;
        // Every object: constructor, debug state, then onto the free list in address order.
        for (std::uint32_t i = objects_; i-- > 0;) {
            void* o = object_at(s, i);
            if (cfg_.ctor) cfg_.ctor(o);
            if (debug_) init_debug(o, slab_poison::red_inactive, true);
            set_fp(o, s->freelist);
            s->freelist = o;
        }
#if defined(KMEM_DETAIL_SLAB_ASAN) || defined(KMEM_DETAIL_SLAB_VALGRIND)
        if (!debug_)
            for (std::uint32_t i = 0; i < objects_; ++i) detail::mark_noaccess(object_at(s, i), cfg_.size);
#endif
        page->set_owner(reinterpret_cast<std::uintptr_t>(s));
        set_slab_flag(*page, true);
        policy::LockGuard<lock_type> g(lock_);
        s->list = empty;
        lists_[empty].push(s);
        ++nr_slabs_;
        --desc_out_;
        return true;
    }

    // A free descriptor; a new descriptor page from the parent when none is left.
    template <class F>
    detail::Slab* get_descriptor(F flags) {
        {
            policy::LockGuard<lock_type> g(lock_);
            if (free_desc_ != nullptr) {
                ++desc_out_;
                return std::exchange(free_desc_, free_desc_->next);
            }
        }
        Page* page = parent_.alloc_pages(page_flags(flags), 0);
        if (page == nullptr) return nullptr;
        page->set_owner(0);
        auto* base = static_cast<std::byte*>(parent_.page_address(page));
        // The first slot links the descriptor pages; the others become descriptors.
        constexpr std::size_t slot = (sizeof(detail::Slab) + 15) & ~std::size_t{15};
        const std::size_t n = page_size / slot - 1;
        auto* first = reinterpret_cast<detail::Slab*>(base + slot);
        detail::Slab* chain = nullptr;
        for (std::size_t i = n; i-- > 1;) {
            auto* d = new (base + slot * (i + 1)) detail::Slab{};
            d->next = chain;
            chain = d;
        }
        new (first) detail::Slab{};
        policy::LockGuard<lock_type> g(lock_);
        auto* link = new (base) detail::Slab{};
        link->page = page;
        link->next = desc_pages_;
        desc_pages_ = link;
        // The new descriptors join the free ones; the first is ours.
        if (chain != nullptr) {
            detail::Slab* tail = chain;
            while (tail->next != nullptr) tail = tail->next;
            tail->next = free_desc_;
            free_desc_ = chain;
        }
        ++desc_out_;
        return first;
    }

    void release_slabs(bool free_pages) {
        std::vector<Page*> release;
        {
            policy::LockGuard<lock_type> g(lock_);
            for (std::uint8_t l : {partial, full, empty})
                while (lists_[l].head != nullptr) {
                    detail::Slab* s = lists_[l].head;
                    inuse_ -= s->inuse;
                    const bool live = s->inuse != 0;
                    Page* page = unlink_slab(s);
                    if (free_pages || !live) {
                        release.push_back(page);
                    } else { // leaked: no longer a slab, so no free can reach the descriptor that goes away
                        set_slab_flag(*page, false);
                        page->set_owner(0);
                    }
                }
        }
        for (Page* p : release) free_slab_pages(p);
    }
    void release_descriptor_pages() {
        detail::Slab* pages;
        {
            policy::LockGuard<lock_type> g(lock_);
            // Descriptors still describe live slabs, or a slab being built (grow) holds one.
            if (nr_slabs_ != 0 || desc_out_ != 0) return;
            pages = std::exchange(desc_pages_, nullptr);
            free_desc_ = nullptr;
        }
        while (pages != nullptr) {
            Page* p = pages->page;
            pages = pages->next;
            parent_.free_pages(p, 0);
        }
    }

    UsageError remaining_report(const char* op) const {
        std::string objs;
        std::size_t listed = 0;
        {
            policy::LockGuard<lock_type> g(lock_);
            for (std::uint8_t l : {partial, full})
                for (detail::Slab* s = lists_[l].head; s != nullptr && listed < 16; s = s->next) {
                    std::vector<bool> is_free(objects_);
                    for (void* o = s->freelist; o != nullptr; o = get_fp(o))
                        is_free[static_cast<std::size_t>(object_index(s, o))] = true;
                    for (std::uint32_t i = 0; i < objects_ && listed < 16; ++i)
                        if (!is_free[i]) objs += " " + detail::hex(object_at(s, i)), ++listed;
                }
        }
        return UsageError{ErrorKind::objects_remain, op,
                          "kmem_cache_destroy " + cfg_.name + ": Slab cache still has objects (" +
                              std::to_string(inuse_objects()) + " allocated). Objects remaining on " +
                              "__kmem_cache_shutdown():" + objs};
    }

    // ----- debug (SLUB's alloc_debug_processing / free_debug_processing) --------------------------------

    template <class F>
    void* alloc_debug(F flags, const SourceLocation& where) {
        detail::SlabDiagnosis d;
        void* object = nullptr;
        for (int attempt = 0; attempt < 2 && object == nullptr; ++attempt) {
            {
                policy::LockGuard<lock_type> g(lock_);
                detail::Slab* s = lists_[partial].head != nullptr ? lists_[partial].head : lists_[empty].head;
                if (s != nullptr) {
                    object = s->freelist;
                    detail::mark_defined(static_cast<std::byte*>(object) - red_left_, stride_);
                    check_free_object(s, object, d, "kmem_cache_alloc");
                    s->freelist = get_fp(object);
                    ++s->inuse;
                    ++inuse_;
                    relist(s);
                    init_debug(object, slab_poison::red_active, false);
                    if (store_user_) set_track(object, 0, where);
                }
            }
            if (object == nullptr && !grow(flags)) break;
        }
        if (d) report(UsageError{d.kind, d.op, detail::format_slab_report(cfg_.name, d)});
        return object == nullptr ? nullptr : finish_alloc(object, bits_of(flags));
    }

    void free_debug(detail::Slab* s, void* object, const SourceLocation& where) {
        detail::SlabDiagnosis d;
        Page* release = nullptr;
        {
            policy::LockGuard<lock_type> g(lock_);
            detail::mark_defined(static_cast<std::byte*>(object) - red_left_, stride_);
            const auto* p = static_cast<const unsigned char*>(object);
            bool already_free = false;
            if (red_zone_ && p[cfg_.size] == slab_poison::red_inactive && p[-1] == slab_poison::red_inactive)
                already_free = on_freelist(s, object) || !any_of(cfg_.flags, SlabFlags::consistency_checks);
            else if (any_of(cfg_.flags, SlabFlags::consistency_checks) || poison_)
                already_free = on_freelist(s, object);
            if (already_free) {
                d.kind = ErrorKind::double_free;
                d.what = "Object already free";
                fill_context(d, s, object, "kmem_cache_free");
            } else {
                if (red_zone_) {
                    if (!check_bytes(d, object, p - red_left_, red_left_, slab_poison::red_active,
                                     "Left Redzone overwritten") ||
                        !check_bytes(d, object, p + cfg_.size, rz_end_ - cfg_.size, slab_poison::red_active,
                                     "Right Redzone overwritten"))
                        fill_context(d, s, object, "kmem_cache_free");
                }
                if (store_user_) set_track(object, 1, where);
                init_debug(object, slab_poison::red_inactive, true);
                set_fp(object, s->freelist);
                s->freelist = object;
                --s->inuse;
                --inuse_;
                relist(s);
                if (lists_[empty].count > cfg_.min_partial) release = unlink_slab(lists_[empty].head);
            }
        }
        if (release != nullptr) free_slab_pages(release);
        if (d) report(UsageError{d.kind, "kmem_cache_free", detail::format_slab_report(cfg_.name, d)});
    }

    void report(const UsageError& e) {
        error_.on_error(e);
    }

    Parent& parent_;
    // Per-CPU arrays.
    mutable detail::PerCpu<detail::SlabCpuArray, shared> cpus_;
    // The node (kmem_cache_node): lists and counters under lock_.
    mutable lock_type lock_;
    std::array<detail::SlabList, 3> lists_{};
    std::uint64_t nr_slabs_ = 0, inuse_ = 0;
    std::uint32_t colour_next_ = 0;
    detail::Slab* free_desc_ = nullptr;
    std::uint64_t desc_out_ = 0; // descriptors taken by grow() and not yet on a list (keeps their page)
    detail::Slab* desc_pages_ = nullptr;
    [[no_unique_address]] error_policy_type error_{};
    [[no_unique_address]] fault_policy_type fault_{};
};

/// A typed object cache: KmemCache sized and aligned for T, with T's constructor and destructor on request.
///
/// alloc() / free() hand out raw storage in the cache's constructed state (the constructor given at creation
/// ran once per object when its slab was populated, as kmem_cache_create's ctor); construct() / destroy() give
/// ordinary object lifetime (placement new with arguments, then ~T) for users who want it.
template <class T, class Parent, class... Policies>
class SlabCache {
public:
    /// The untyped cache underneath.
    using cache_type = KmemCache<Parent, Policies...>;

    /// A cache named `name` for objects of type T, with an optional constructor run once per object when its
    /// slab is populated.
    explicit SlabCache(Parent& parent, std::string_view name = "slab_cache",
                       SlabFlags flags = SlabFlags::none, std::function<void(T*)> ctor = {})
        : cache_(parent,
                 CacheConfig{std::string(name), sizeof(T), alignof(T), flags, wrap(std::move(ctor))}) {}

    /// Object storage in the cache's constructed state (kmem_cache_alloc), or nullptr.
    template <std::uint32_t B = gfp::kernel.value>
    T* alloc(gfp::Flags<B> flags = {}, const SourceLocation& where = SourceLocation::current()) {
        return static_cast<T*>(cache_.alloc(flags, where));
    }
    /// Zeroed object storage (kmem_cache_zalloc).
    template <std::uint32_t B = gfp::kernel.value>
    T* zalloc(gfp::Flags<B> flags = {}, const SourceLocation& where = SourceLocation::current()) {
        return static_cast<T*>(cache_.alloc(flags | gfp::zero, where));
    }
    /// Returns object storage (kmem_cache_free); no destructor runs.
    void free(T* object, const SourceLocation& where = SourceLocation::current()) {
        cache_.free(object, where);
    }
    /// Allocates and constructs a T from `args` (new (kmem_cache_alloc()) T(args...)); nullptr when memory is
    /// short.  If T's constructor throws, the storage goes back and the exception propagates.
    template <class... Args>
    T* construct(Args&&... args) {
        void* p = cache_.alloc(gfp::kernel);
        if (p == nullptr) return nullptr;
        try {
            return ::new (p) T(std::forward<Args>(args)...);
        } catch (...) {
            cache_.free(p);
            throw;
        }
    }
    /// Destroys and frees an object made by construct(); nullptr is ignored.
    void destroy(T* object) {
        if (object == nullptr) return;
        object->~T();
        cache_.free(object);
    }
    /// kmem_cache_destroy (see KmemCache::destroy()).
    bool destroy() { return cache_.destroy(); }
    /// kmem_cache_shrink.
    std::uint64_t shrink() { return cache_.shrink(); }
    /// The invariant check (validate_slab_cache); empty when all holds.
    std::string validate() const { return cache_.validate(); }
    /// The figures for slabinfo().
    SlabStats stats() const { return cache_.stats(); }
    /// A shrinker for this cache (KmemCache::shrinker()).
    Shrinker shrinker() { return cache_.shrinker(); }
    /// The untyped cache.
    cache_type& cache() noexcept { return cache_; }
    /// The untyped cache, read-only.
    const cache_type& cache() const noexcept { return cache_; }

    /// True when a request of `bytes` with alignment `align` fits a T (kmem::FixedSizeResource asks).
    bool serves(std::size_t bytes, std::size_t align) const noexcept { return cache_.serves(bytes, align); }
    /// Byte interface for kmem::MemoryResource and kmem::FixedSizeResource: requests serves() accepts get an
    /// object; others get nullptr.
    template <std::uint32_t B>
    void* try_allocate(gfp::Flags<B> flags, std::size_t bytes, std::size_t align) {
        return cache_.try_allocate(flags, bytes, align);
    }
    /// Byte interface: frees an object from try_allocate().
    void deallocate(void* p, std::size_t, std::size_t) { cache_.free(p); }
    /// The error policy (for the pmr adapter's reports).
    auto& error_policy() noexcept { return cache_.error_policy(); }

private:
    static std::function<void(void*)> wrap(std::function<void(T*)> ctor) {
        if (!ctor) return {};
        return [c = std::move(ctor)](void* p) { c(static_cast<T*>(p)); };
    }
    cache_type cache_;
};

} // namespace kmem
