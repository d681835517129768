/// @file
/// Virtually contiguous memory (mm/vmalloc.c): vmalloc / vzalloc / vfree, vmap / vunmap, vmalloc_to_page,
/// find_vm_area, is_vmalloc_addr and the /proc/vmallocinfo report, over a page allocator whose region is
/// remappable.
///
/// `VirtualMap<Parent, Policies...>` borrows its page allocator (`Parent` given as a reference, `Buddy&`, as
/// DESIGN.md spells borrowing; `Buddy` without the reference owns one).  At construction it reserves a window of
/// address space (the kernel's VMALLOC_START..VMALLOC_END) with mmap(PROT_NONE).  vmalloc(size) takes order-0
/// pages wherever the page allocator has them, takes a range of the window for them plus one guard page, and maps
/// each run of neighbouring pages with one MemfdRegion::map_fixed call, so the area is virtually contiguous while
/// its pages are scattered; the guard page after each area stays PROT_NONE, so running off the end faults.  The
/// same bytes are reachable through the page allocator's own addresses (page_address of each backing page).
/// vmap maps pages the caller already holds; vfree / vunmap put the PROT_NONE reservation back over the area and
/// (vfree) return the pages.  Policies: a lock policy (policy::NoLock by default; a lock here needs a page
/// allocator with a lock too) and an error policy (policy::AssertOnError by default).
/// The options and the area and counter snapshots (VmapOptions, VmArea, VmallocStats, ...) are in
/// kmem/vm_area.hpp, which this header includes.
///
/// @code
///   using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MemfdRegion>;
///   Buddy buddy(kmem::MemfdRegion(16 << 20));
///   kmem::VirtualMap<Buddy&> vm(buddy);
///   char* buf = static_cast<char*>(vm.vzalloc(100 * 4096));     // 100 pages, virtually contiguous, zeroed
///   buf[99 * 4096 + 7] = 'k';
///   kmem::Page* page = vm.vmalloc_to_page(buf + 99 * 4096);
///   assert(static_cast<char*>(buddy.page_address(page))[7] == 'k'); // the same byte through the page
///   assert(vm.is_vmalloc_addr(buf) && vm.find_vm_area(buf)->nr_pages == 100);
///   std::cout << vm.vmallocinfo();   // 0x00007f...-0x00007f...  413696 main@file.cpp:12 pages=100 vmalloc
///   vm.vfree(buf);
///   assert(buddy.nr_free_pages() == buddy.total_pages());
/// @endcode
#pragma once

#include <kmem/detail/policies.hpp>
#include <kmem/detail/reports.hpp>
#include <kmem/detail/va_space.hpp>
#include <kmem/detail/vmap_reports.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/zone.hpp>
#include <kmem/region.hpp>
#include <kmem/scatterlist.hpp>
#include <kmem/vm_area.hpp>

#include <algorithm>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

namespace kmem {

namespace detail {

/// Satisfied by page allocators a VirtualMap can sit on: BuddyAllocator and anything offering the same
/// page-level API (alloc_pages / free_pages at order 0, the memory map, the zone, lock and region types).
template <class A>
concept VmapParent = requires(A& a, const A& ca, Page* p, gfp_t g) {
    typename A::region_type;
    typename A::lock_type;
    { A::page_size } -> std::convertible_to<std::size_t>;
    { A::zone } -> std::convertible_to<ZoneType>;
    { A::may_sleep } -> std::convertible_to<bool>;
    { a.alloc_pages(g, 0u) } -> std::same_as<Page*>;
    a.free_pages(p, 0u);
    { ca.total_pages() } -> std::convertible_to<std::uint64_t>;
    { ca.mem_map().index_of(p) } -> std::convertible_to<std::uint64_t>;
    { ca.mem_map().page_to_pfn(p) } -> std::convertible_to<std::uint64_t>;
    { ca.mem_map().page_offset(p) } -> std::convertible_to<std::uint64_t>;
};

/// True when the first of Args is Self or VmapOptions: VirtualMap's owning constructor must not take those.
template <class Self, class... Args>
inline constexpr bool first_is_self_or_options = false;
template <class Self, class First, class... Rest>
inline constexpr bool first_is_self_or_options<Self, First, Rest...> =
    std::is_same_v<std::remove_cvref_t<First>, Self> ||
    std::is_same_v<std::remove_cvref_t<First>, VmapOptions>;

/// madvise advice that faults page tables in (Linux 5.14); an older kernel answers EINVAL and nothing happens.
#ifdef MADV_POPULATE_WRITE
inline constexpr int madv_populate_read = MADV_POPULATE_READ;
inline constexpr int madv_populate_write = MADV_POPULATE_WRITE;
#else
inline constexpr int madv_populate_read = 22; // the values are part of the Linux ABI
inline constexpr int madv_populate_write = 23;
#endif

/// What a VirtualMap needs to know of its page allocator; for a type that is not one, harmless values, so that
/// only the first static_assert of VirtualMap speaks.
template <class P>
struct vmap_parent_traits {
    static constexpr bool is_page_allocator = false;
    static constexpr bool remappable = true;
    static constexpr bool addressable = true;
    static constexpr std::size_t page_size = 4096;
    static constexpr bool locked = true;
};
template <VmapParent P>
struct vmap_parent_traits<P> {
    static constexpr bool is_page_allocator = true;
    static constexpr bool remappable = P::region_type::remappable;
    static constexpr bool addressable = P::region_type::addressable;
    static constexpr std::size_t page_size = P::page_size;
    static constexpr bool locked = !std::is_same_v<typename P::lock_type, policy::NoLock>;
};

} // namespace detail

/// Virtually contiguous memory over a page allocator on a remappable region (the kernel's vmalloc space): see the
/// file comment.  `Parent` is the page allocator, a reference to borrow it (`VirtualMap<Buddy&>`) or a type to
/// own it; Policies are at most one lock policy and one error policy.  With a lock policy every operation may be
/// called from any thread; the page allocator is called outside VirtualMap's lock, so it needs a lock of its own.
template <class Parent, class... Policies>
class VirtualMap {
    using traits = detail::vmap_parent_traits<std::remove_cvref_t<Parent>>;
    static_assert(
        traits::is_page_allocator,
        "VirtualMap's Parent must be a page allocator such as BuddyAllocator (a reference to borrow "
        "it, VirtualMap<Buddy&>), offering alloc_pages / free_pages and its memory map.");
    static_assert(
        traits::remappable,
        "VirtualMap needs a page allocator whose region is remappable (MemfdRegion): vmalloc maps the "
        "allocator's pages again at new virtual addresses, which this region cannot do.");
    static_assert(
        traits::page_size >= 4096,
        "VirtualMap maps pages with mmap, so its page allocator's PageSize must be at least 4096 bytes "
        "(a multiple of the system page size).");
    using policies = detail::PolicySet<Policies...>;
    static_assert(policies::template only<policy::lock_policy_tag, policy::error_policy_tag>,
                  "a VirtualMap policy must be a lock policy or an error policy.");
    static_assert(policies::unique);

public:
    /// The page allocator type (without reference).
    using parent_type = std::remove_cvref_t<Parent>;
    /// The lock policy.
    using lock_type = typename policies::template get<policy::lock_policy_tag, policy::NoLock>;
    static_assert(policy::LockPolicy<lock_type>, "the lock policy needs lock(), unlock() and may_sleep.");
    static_assert(
        std::is_same_v<lock_type, policy::NoLock> || traits::locked,
        "this VirtualMap has a lock policy but its page allocator has none (policy::NoLock); give the "
        "page allocator a lock policy too, since VirtualMap allocates pages outside its own lock.");
    /// The error policy.
    using error_policy_type =
        typename policies::template get<policy::error_policy_tag, policy::AssertOnError>;
    static_assert(policy::ErrorPolicy<error_policy_type>,
                  "the error policy needs on_error(const UsageError&).");
    /// Bytes per page (PAGE_SIZE), the page allocator's.
    static constexpr std::size_t page_size = traits::page_size;
    /// Bytes of the guard page after each area.
    static constexpr std::size_t guard_size = page_size;

    /// Borrows `parent` and reserves the address space (VirtualMap<Buddy&>).  Throws std::invalid_argument when
    /// the page size is not a multiple of the system's, std::system_error when the reservation fails.
    explicit VirtualMap(parent_type& parent, VmapOptions options = {}) requires std::is_reference_v<Parent>
        : parent_(parent) {
        init(options);
    }
    /// Builds the page allocator it owns (VirtualMap<Buddy>) from `args`, with the default options.
    template <class... Args>
    requires(!std::is_reference_v<Parent> &&
             !detail::first_is_self_or_options<VirtualMap, Args...>) explicit VirtualMap(Args&&... args)
        : parent_(std::forward<Args>(args)...) {
        init({});
    }
    /// Builds the page allocator it owns from `args`, with `options`.
    template <class... Args>
    requires(!std::is_reference_v<Parent>) explicit VirtualMap(VmapOptions options, Args&&... args)
        : parent_(std::forward<Args>(args)...) {
        init(options);
    }
    VirtualMap(const VirtualMap&) = delete;            ///< Not copyable.
    VirtualMap& operator=(const VirtualMap&) = delete; ///< Not copyable.
    /// Unmaps every area and gives the pages of vmalloc areas back to the page allocator.
    ~VirtualMap() {
        window_.reset(); // every mapping inside it goes too
        for (auto& [start, area] : areas_)
            if (area.kind == VmKind::vmalloc)
                for (std::size_t k = 0; k < area.nr_pages; ++k) parent().free_pages(area.pages[k], 0);
    }

    // ----- vmalloc ------------------------------------------------------------------------------------------

    /// Allocates `size` bytes of virtually contiguous memory (vmalloc, GFP_KERNEL): ceil(size / PageSize) order-0
    /// pages from the page allocator, mapped in a fresh range of the window with a guard page after it.  Returns
    /// nullptr when pages or address space run out (everything taken is given back, and the kernel's "vmalloc
    /// error" report goes to the warning stream); size 0 is a caller mistake (ErrorKind::bad_parameter).
    void* vmalloc(std::size_t size, VmCaller caller = {}) { return vmalloc(size, gfp::kernel, caller); }
    /// vmalloc() with GFP flags (__vmalloc): the flags are checked at compile time by every GFP rule and, for the
    /// page allocations, by the page allocator (e.g. sleeping flags under a spin lock).  gfp::zero zeroes the
    /// area; gfp::nowarn silences the failure report.  A zone modifier the page allocator's zone serves is
    /// honoured (gfp::dma32 on a ZONE_DMA32 allocator is vmalloc_32); any other is dropped, as the kernel's
    /// vmalloc_fix_flags() drops unsupported bits, with its "Unexpected gfp" line on the warning stream.
    template <std::uint32_t B>
    void* vmalloc(std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        gfp::check(flags);
        if constexpr (gfp::validate(B) != gfp::Problem::none) { // the check above has said why: nothing more
            return nullptr;
        } else {
            constexpr std::uint32_t page_bits = page_flags(B);
            return vmalloc_core(size, B, caller,
                                [this] { return parent().alloc_pages(gfp::Flags<page_bits>{}, 0); });
        }
    }
    /// vmalloc() with flags known at run time: a broken GFP rule, or sleeping flags for a page allocator whose
    /// lock cannot sleep, is reported (ErrorKind::invalid_gfp) and the call returns nullptr.
    void* vmalloc(std::size_t size, gfp_t flags, VmCaller caller = {}) {
        std::string why;
        if (const gfp::Problem p = flags.validate(); p != gfp::Problem::none)
            why = std::string(gfp::describe(p));
        else if (!parent_type::may_sleep && flags.may_sleep())
            why =
                "these GFP flags may sleep but the page allocator's lock policy is a non-sleeping spin lock.";
        if (!why.empty()) {
            error_.on_error(UsageError{ErrorKind::invalid_gfp, op_name(flags.value()),
                                       "mode:" + flags.to_string() + ": " + why});
            return nullptr;
        }
        const std::uint32_t page_bits = page_flags(flags.value());
        return vmalloc_core(size, flags.value(), caller, [this, page_bits] {
            return parent().alloc_pages(gfp_t::from_bits(page_bits), 0);
        });
    }
    /// Allocates `size` bytes of zeroed virtually contiguous memory (vzalloc).
    void* vzalloc(std::size_t size, VmCaller caller = {}) {
        return vmalloc(size, gfp::kernel | gfp::zero, caller);
    }
    /// vzalloc() with GFP flags (__vmalloc with __GFP_ZERO), e.g. gfp::atomic under a spin lock.
    template <std::uint32_t B>
    void* vzalloc(std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        return vmalloc(size, flags | gfp::zero, caller);
    }
    /// Allocates an array of `n` elements of `size` bytes (vmalloc_array); nullptr when n * size overflows.
    void* vmalloc_array(std::size_t n, std::size_t size, VmCaller caller = {}) {
        std::size_t bytes = 0;
        if (__builtin_mul_overflow(n, size, &bytes)) return nullptr;
        return vmalloc(bytes, caller);
    }
    /// A zeroed vmalloc_array (vcalloc).
    void* vcalloc(std::size_t n, std::size_t size, VmCaller caller = {}) {
        std::size_t bytes = 0;
        if (__builtin_mul_overflow(n, size, &bytes)) return nullptr;
        return vzalloc(bytes, caller);
    }
    /// Frees an area made by vmalloc (vfree): puts the PROT_NONE reservation back over it and returns its pages
    /// to the page allocator; nullptr is ignored.  An area made by vmap is unmapped and its pages stay the
    /// caller's, as the kernel's vfree does for them.  An address that does not start a live area is reported
    /// (out_of_region, not_block_start, misaligned or double_free) and nothing changes.
    void vfree(const void* addr) { release(addr, "vfree"); }

    /// Byte interface for kmem::MemoryResource (the generic pmr adapter, for large buffers): vmalloc(bytes,
    /// flags) for alignments up to a page (areas are page-aligned); nullptr for larger alignments.
    template <std::uint32_t B>
    void* try_allocate(gfp::Flags<B> flags, std::size_t bytes, std::size_t align) {
        if (align > page_size) return nullptr;
        return vmalloc(bytes == 0 ? 1 : bytes, flags, VmCaller("pmr"));
    }
    /// Byte interface: frees an area from try_allocate() (vfree).
    void deallocate(void* p, std::size_t, std::size_t) { vfree(p); }

    // ----- vmap ---------------------------------------------------------------------------------------------

    /// Maps the caller's pages, in order, at consecutive addresses of a fresh range of the window (vmap); the
    /// pages stay the caller's (the mapping holds no reference: unmap before freeing them).  A page may appear
    /// more than once.  Returns nullptr when the window has no room or there are more pages than the allocator
    /// manages; no pages, a null page or a foreign page is reported (bad_parameter / out_of_region).
    void* vmap(std::span<Page* const> pages, VmProt prot = VmProt::read_write, VmCaller caller = {}) {
        detail::VmDiagnosis diag;
        if (pages.empty()) diag = {detail::VmMisuse::zero_size, "vmap"};
        for (std::size_t k = 0; k < pages.size() && !diag; ++k) {
            if (pages[k] == nullptr)
                diag = {detail::VmMisuse::null_page, "vmap", k, pages.size()};
            else if (parent().mem_map().index_of(pages[k]) == Page::nil)
                diag = {detail::VmMisuse::foreign_page, "vmap", k, pages.size()};
        }
        if (diag) return report(diag), nullptr;
        if (pages.size() > parent().total_pages())
            return count_failure(), nullptr; // the kernel's totalram check
        Node node;
        try {
            node = make_node(pages.size(), pages.size() * page_size, VmKind::vmap, prot, caller);
        } catch (const std::bad_alloc&) {
            return fail(gfp::kernel.value, pages.size() * page_size, "vm_struct allocation failed"), nullptr;
        }
        std::copy(pages.begin(), pages.end(), node.mapped().pages.get());
        return install(std::move(node), gfp::kernel.value, false);
    }
    /// Removes a mapping made by vmap (vunmap); the pages stay the caller's.  nullptr is ignored.  An area made
    /// by vmalloc is refused (ErrorKind::bad_parameter: its pages would never be freed); other bad addresses are
    /// reported as vfree reports them.
    void vunmap(const void* addr) { release(addr, "vunmap"); }

    // ----- lookups --------------------------------------------------------------------------------------------

    /// True when `addr` lies in this VirtualMap's address space, whether or not an area is mapped there
    /// (is_vmalloc_addr: a range check, no lock); kvfree uses it to tell vmalloc memory from kmalloc memory.
    bool is_vmalloc_addr(const void* addr) const noexcept {
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        return a >= vmalloc_start() && a < vmalloc_end();
    }
    /// True when `addr` is inside the mapped pages of a live area.  O(log areas).
    bool owns(const void* addr) const {
        policy::LockGuard<lock_type> guard(lock_);
        const auto it = containing(reinterpret_cast<std::uintptr_t>(addr));
        return it != areas_.end() &&
               reinterpret_cast<std::uintptr_t>(addr) - it->first < mapped_bytes(it->second);
    }
    /// The page mapped at `addr` (vmalloc_to_page), or nullptr when no live area maps a page there (outside the
    /// window, in a guard page, or freed).  O(log areas).
    Page* vmalloc_to_page(const void* addr) const {
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        policy::LockGuard<lock_type> guard(lock_);
        const auto it = containing(a);
        if (it == areas_.end() || a - it->first >= mapped_bytes(it->second)) return nullptr;
        return it->second.pages[(a - it->first) / page_size];
    }
    /// The page frame number mapped at `addr` (vmalloc_to_pfn), or std::nullopt where vmalloc_to_page() gives
    /// nullptr.
    std::optional<std::uint64_t> vmalloc_to_pfn(const void* addr) const {
        const Page* p = vmalloc_to_page(addr);
        if (p == nullptr) return std::nullopt;
        return parent().mem_map().page_to_pfn(p);
    }
    /// A snapshot of the live area whose address range (guard page included) holds `addr` (find_vm_area), or
    /// std::nullopt.
    std::optional<VmArea> find_vm_area(const void* addr) const {
        policy::LockGuard<lock_type> guard(lock_);
        const auto it = containing(reinterpret_cast<std::uintptr_t>(addr));
        if (it == areas_.end()) return std::nullopt;
        return snapshot(it->first, it->second);
    }
    /// The scatter list of the `size` bytes at `addr`, which must lie in the mapped pages of one live area: the
    /// pages behind them, neighbouring frames merged (sg_alloc_table_from_pages of the area's vmalloc_to_page
    /// pages).  A range outside one area, or size 0, is reported (out_of_region / bad_parameter) and gives
    /// std::nullopt, as does a table that cannot be allocated.
    std::optional<SgTable<page_size>>
    sg_table(const void* addr, std::size_t size,
             std::uint64_t max_segment = SgTable<page_size>::max_segment) const {
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        std::vector<Page*> pages;
        detail::VmDiagnosis diag;
        try {
            policy::LockGuard<lock_type> guard(lock_);
            const auto it = containing(a);
            if (size == 0) {
                diag = {detail::VmMisuse::zero_size, "sg_table"};
            } else if (it == areas_.end() || a - it->first >= mapped_bytes(it->second) ||
                       size > mapped_bytes(it->second) - (a - it->first)) {
                diag = {detail::VmMisuse::range_outside, "sg_table", a, size};
            } else {
                const std::size_t first = (a - it->first) / page_size;
                const std::size_t last = (a - it->first + size - 1) / page_size;
                pages.assign(it->second.pages.get() + first, it->second.pages.get() + last + 1);
            }
        } catch (const std::bad_alloc&) {
            return std::nullopt;
        }
        if (diag) return report(diag), std::nullopt;
        try {
            auto [table, why] = detail::build_sg_table<page_size>(
                pages, a % page_size, size, max_segment,
                [this](const Page* p) { return parent().mem_map().page_to_pfn(p); });
            if (!table) error_.on_error(UsageError{ErrorKind::bad_parameter, "sg_table", std::move(why)});
            return std::move(table);
        } catch (const std::bad_alloc&) {
            return std::nullopt;
        }
    }

    // ----- reports and state ------------------------------------------------------------------------------

    /// Every live area as /proc/vmallocinfo lists it, by address: "0x<start>-0x<end> <size> <caller>
    /// [pages=<n>] vmalloc|vmap", where the range and size include the guard page and pages= appears for vmalloc
    /// areas, as in the kernel.
    std::string vmallocinfo() const {
        std::vector<VmArea> areas;
        {
            policy::LockGuard<lock_type> guard(lock_);
            areas.reserve(areas_.size());
            for (const auto& [start, area] : areas_) areas.push_back(snapshot(start, area));
        }
        std::string out;
        for (const VmArea& v : areas) out += vmallocinfo_line(v);
        return out;
    }
    /// One /proc/vmallocinfo line for `area` (s_show() in mm/vmalloc.c), newline included.
    static std::string vmallocinfo_line(const VmArea& area) {
        char buf[96];
        const auto start = reinterpret_cast<std::uintptr_t>(area.addr);
        std::snprintf(buf, sizeof buf, "0x%016llx-0x%016llx %7llu", static_cast<unsigned long long>(start),
                      static_cast<unsigned long long>(start + area.size),
                      static_cast<unsigned long long>(area.size));
        std::string line = buf;
        line += ' ' + area.caller;
        if (area.kind == VmKind::vmalloc) line += " pages=" + std::to_string(area.nr_pages);
        line += area.kind == VmKind::vmalloc ? " vmalloc\n" : " vmap\n";
        return line;
    }
    /// The Vmalloc lines of /proc/meminfo: VmallocTotal, VmallocUsed (vmalloc's pages) and VmallocChunk (the
    /// largest free range, as kernels before 5.3 computed it), in kB.
    std::string meminfo() const {
        const VmallocStats s = stats();
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "VmallocTotal:   %8llu kB\nVmallocUsed:    %8llu kB\nVmallocChunk:   %8llu kB\n",
                      static_cast<unsigned long long>(s.address_space >> 10),
                      static_cast<unsigned long long>(s.vmalloc_pages * page_size >> 10),
                      static_cast<unsigned long long>(s.largest_free >> 10));
        return buf;
    }
    /// A snapshot of the counters.
    VmallocStats stats() const {
        policy::LockGuard<lock_type> guard(lock_);
        VmallocStats s = counters_;
        s.address_space = vmalloc_end() - vmalloc_start();
        s.address_used = s.address_space - va_.free_bytes() - s.leaked_address;
        s.largest_free = va_.largest();
        return s;
    }
    /// Pages allocated by vmalloc and not yet freed (vmalloc_nr_pages()).
    std::uint64_t nr_vmalloc_pages() const {
        policy::LockGuard<lock_type> guard(lock_);
        return counters_.vmalloc_pages;
    }
    /// The first address of the window (VMALLOC_START).
    std::uintptr_t vmalloc_start() const noexcept { return window_start_; }
    /// One past the last address of the window (VMALLOC_END).
    std::uintptr_t vmalloc_end() const noexcept { return window_end_; }

    /// Checks every invariant: areas aligned, inside the window and apart; the free ranges consistent, outside
    /// every area, and with the areas (and areas being made or freed) tiling the window; the counters equal to
    /// what the areas hold; every page of a vmalloc area a page of the allocator, allocated (PG block, order 0,
    /// referenced) and in no other vmalloc area.  Returns the first violation, or "".  O(pages log pages).
    std::string check_invariants() const {
        policy::LockGuard<lock_type> guard(lock_);
        if (std::string problem = va_.check(); !problem.empty()) return problem;
        const auto hex = [](std::uintptr_t v) { return "0x" + detail::hex(v); };
        std::uintptr_t used = 0, last_end = window_start_;
        VmallocStats count;
        std::vector<const Page*> vmalloc_pages;
        const auto& free_ranges = va_.ranges();
        for (const auto& [start, area] : areas_) {
            const std::uintptr_t end = start + extent(area);
            if (start % page_size != 0) return "the area at " + hex(start) + " is not page aligned";
            if (start < last_end)
                return "the area at " + hex(start) + " overlaps the area or window before it";
            if (end > window_end_) return "the area at " + hex(start) + " runs past the window";
            if (area.nr_pages == 0 || !area.pages) return "the area at " + hex(start) + " has no pages";
            auto f = free_ranges.upper_bound(start);
            if (f != free_ranges.begin() && std::prev(f)->first + std::prev(f)->second > start)
                return "the area at " + hex(start) + " overlaps a free range of the window";
            if (f != free_ranges.end() && f->first < end)
                return "the area at " + hex(start) + " overlaps a free range of the window";
            used += end - start;
            last_end = end;
            if (area.kind == VmKind::vmalloc) {
                ++count.vmalloc_areas;
                count.vmalloc_pages += area.nr_pages;
                for (std::size_t k = 0; k < area.nr_pages; ++k) {
                    const Page* p = area.pages[k];
                    if (parent().mem_map().index_of(p) == Page::nil)
                        return "page " + std::to_string(k) + " of the area at " + hex(start) +
                               " is not a page of the allocator";
                    if (!p->test(PageFlag::block) || p->order() != 0 || p->refcount() <= 0)
                        return "page " + std::to_string(k) + " of the area at " + hex(start) +
                               " is not an allocated order-0 page";
                    vmalloc_pages.push_back(p);
                }
            } else {
                ++count.vmap_areas;
                count.vmap_pages += area.nr_pages;
            }
        }
        std::sort(vmalloc_pages.begin(), vmalloc_pages.end());
        if (std::adjacent_find(vmalloc_pages.begin(), vmalloc_pages.end()) != vmalloc_pages.end())
            return "a page belongs to two vmalloc areas (or twice to one)";
        if (count.vmalloc_areas != counters_.vmalloc_areas || count.vmap_areas != counters_.vmap_areas)
            return "the area counts differ from the areas";
        if (count.vmalloc_pages != counters_.vmalloc_pages || count.vmap_pages != counters_.vmap_pages)
            return "the page counts differ from the areas";
        if (used + va_.free_bytes() + in_transit_ + counters_.leaked_address != window_end_ - window_start_)
            return "areas + free ranges + areas in transit + leaked != the window";
        return {};
    }

    /// The page allocator.
    parent_type& parent() noexcept { return parent_; }
    /// The page allocator.
    const parent_type& parent() const noexcept { return parent_; }
    /// The page allocator's memory map (so that sg_alloc_table_from_pages and sg_copy_* accept a VirtualMap).
    decltype(auto) mem_map() const noexcept { return parent().mem_map(); }
    /// The error policy, e.g. to install a callback.
    error_policy_type& error_policy() noexcept { return error_; }
    /// Names this VirtualMap in failure reports (the kernel prints the task's comm); default "kmem".
    void set_name(std::string name) { name_ = std::move(name); }
    /// Where failure reports and the "Unexpected gfp" line go (default std::clog); nullptr silences them.
    /// Written after the lock is released.
    void set_warning_stream(std::ostream* out) noexcept { warn_ = out; }

private:
    /// One live area (struct vm_struct / vmap_area).
    struct Area {
        std::size_t nr_pages = 0;
        std::size_t requested = 0;
        std::unique_ptr<Page*[]> pages;
        VmKind kind = VmKind::vmalloc;
        VmProt prot = VmProt::read_write;
        std::string caller;
    };
    using area_map = std::map<std::uintptr_t, Area>;
    using Node = typename area_map::node_type;

    static std::size_t mapped_bytes(const Area& a) noexcept { return a.nr_pages * page_size; }
    static std::size_t extent(const Area& a) noexcept { return mapped_bytes(a) + guard_size; }

    // The flags of the page allocations: no __GFP_ZERO (the area is cleared through its mapping), a zone modifier
    // only when the page allocator's zone serves it (vmalloc_fix_flags), and __GFP_NOWARN (vmalloc reports its
    // own failure, as __vmalloc_area_node does).
    static constexpr std::uint32_t page_flags(std::uint32_t bits) noexcept {
        std::uint32_t p = bits & ~gfp::bits::zero;
        if (!zone_served(bits)) p &= ~gfp::bits::zone_mask;
        return p | gfp::bits::nowarn;
    }
    static constexpr bool zone_served(std::uint32_t bits) noexcept {
        if constexpr (traits::is_page_allocator)
            return policy::zone_serves(parent_type::zone, gfp::zone_of(bits));
        else
            return true;
    }
    static std::string_view op_name(std::uint32_t bits) noexcept {
        return (bits & gfp::bits::zero) ? "vzalloc" : "vmalloc";
    }

    void init(const VmapOptions& options) {
        const auto sys_page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        if (page_size % sys_page != 0)
            throw std::invalid_argument(
                "kmem: VirtualMap: the page allocator's page size " + std::to_string(page_size) +
                " is not a multiple of the system page size " + std::to_string(sys_page));
        populate_ = options.populate;
        std::size_t bytes = options.address_space;
        if (bytes == 0) {
            const std::uint64_t managed = parent().total_pages() * page_size;
            const std::uint64_t want =
                managed > std::numeric_limits<std::size_t>::max() / 8 ? managed : 4 * managed;
            bytes =
                static_cast<std::size_t>(want < (std::uint64_t{64} << 20) ? std::uint64_t{64} << 20 : want);
        }
        bytes = detail::round_up_to_page("VirtualMap address space", bytes, page_size);
        const std::size_t pad = page_size > sys_page ? page_size : 0;
        if (bytes > std::numeric_limits<std::size_t>::max() - pad)
            detail::throw_too_large("VirtualMap address space", bytes,
                                    "with alignment padding it does not fit");
        void* p = ::mmap(nullptr, bytes + pad, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) detail::throw_errno("kmem: VirtualMap: reserving the address space failed");
        const auto raw = reinterpret_cast<std::uintptr_t>(p);
        const std::uintptr_t start = (raw + page_size - 1) & ~std::uintptr_t{page_size - 1};
        if (start != raw) ::munmap(p, start - raw);
        if (raw + bytes + pad > start + bytes)
            ::munmap(reinterpret_cast<void*>(start + bytes), raw + bytes + pad - (start + bytes));
        window_ = detail::Mapping(reinterpret_cast<void*>(start), bytes);
        window_start_ = start;
        window_end_ = start + bytes;
        va_.init(start, bytes);
    }

    // A detached area record (a map node, so that publishing it under the lock allocates nothing).
    static Node make_node(std::size_t nr_pages, std::size_t requested, VmKind kind, VmProt prot,
                          const VmCaller& caller) {
        area_map m;
        Area& a = m[0];
        a.nr_pages = nr_pages;
        a.requested = requested;
        a.pages = std::make_unique<Page*[]>(nr_pages);
        a.kind = kind;
        a.prot = prot;
        a.caller = caller.to_string();
        return m.extract(m.begin());
    }

    template <class AllocPage>
    void* vmalloc_core(std::size_t size, std::uint32_t bits, const VmCaller& caller, AllocPage&& alloc_page) {
        const std::string_view op = op_name(bits);
        if (size == 0) return report({detail::VmMisuse::zero_size, op}), nullptr;
        if (!zone_served(bits) && (bits & gfp::bits::zone_mask) != 0) unexpected_gfp(bits);
        const std::uint64_t nr = size > std::numeric_limits<std::size_t>::max() - (page_size - 1)
                                     ? std::numeric_limits<std::uint64_t>::max()
                                     : (size + page_size - 1) / page_size;
        if (nr > parent().total_pages()) return fail(bits, size, "exceeds total pages"), nullptr;
        Node node;
        try {
            node = make_node(static_cast<std::size_t>(nr), size, VmKind::vmalloc, VmProt::read_write, caller);
        } catch (const std::bad_alloc&) {
            return fail(bits, size, "vm_struct allocation failed"), nullptr;
        }
        Page** pages = node.mapped().pages.get();
        for (std::size_t k = 0; k < nr; ++k) { // order-0 pages wherever they are (vm_area_alloc_pages)
            pages[k] = alloc_page();
            if (pages[k] == nullptr) [[unlikely]] {
                for (std::size_t j = 0; j < k; ++j) parent().free_pages(pages[j], 0);
                return fail(bits, size,
                            "failed to allocate pages (" + std::to_string(k) + " of " + std::to_string(nr) +
                                " allocated, all given back)"),
                       nullptr;
            }
        }
        return install(std::move(node), bits, (bits & gfp::bits::zero) != 0);
    }

    // Reserves address space for the node's pages and a guard page, maps them, publishes the area.  On failure
    // everything is undone: the range is reserved PROT_NONE again and given back, vmalloc's pages are freed.
    void* install(Node node, std::uint32_t bits, bool zero) {
        Area& area = node.mapped();
        const std::size_t len = extent(area);
        std::uintptr_t start = 0;
        {
            detail::VaSpace::Nodes spare; // destroyed after the lock is released
            policy::LockGuard<lock_type> guard(lock_);
            start = va_.take(len, spare);
            if (start != 0) in_transit_ += len;
        }
        if (start == 0) {
            give_back_pages(area);
            fail(bits, area.requested,
                 "vmap allocation for size " + std::to_string(len) +
                     " failed: use VmapOptions::address_space to increase size");
            return nullptr;
        }
        const int err = map_area(start, area);
        if (err != 0) {
            const bool restored = reserve_again(start, mapped_bytes(area));
            return_range(start, len, restored);
            give_back_pages(area);
            fail(bits, area.requested, std::string("failed to map pages: ") + std::strerror(err));
            return nullptr;
        }
        if (zero) std::memset(reinterpret_cast<void*>(start), 0, mapped_bytes(area));
        node.key() = start;
        {
            policy::LockGuard<lock_type> guard(lock_);
            in_transit_ -= len;
            (area.kind == VmKind::vmalloc ? counters_.vmalloc_areas : counters_.vmap_areas) += 1;
            (area.kind == VmKind::vmalloc ? counters_.vmalloc_pages : counters_.vmap_pages) += area.nr_pages;
            ++counters_.allocations;
            areas_.insert(std::move(node));
        }
        return reinterpret_cast<void*>(start);
    }

    // Maps the area's pages at `start`: one map_fixed per run of neighbouring frames.  Returns 0 or an errno.
    int map_area(std::uintptr_t start, const Area& area) {
        const auto& map = parent().mem_map();
        const auto& region = map.region();
        try {
            for (std::size_t i = 0; i < area.nr_pages;) {
                std::size_t j = i + 1;
                while (j < area.nr_pages &&
                       map.page_to_pfn(area.pages[j]) == map.page_to_pfn(area.pages[j - 1]) + 1)
                    ++j;
                region.map_fixed(reinterpret_cast<void*>(start + i * page_size),
                                 map.page_offset(area.pages[i]), (j - i) * page_size);
                i = j;
            }
        } catch (const std::system_error& e) {
            return e.code().value() != 0 ? e.code().value() : ENOMEM;
        } catch (const std::invalid_argument&) {
            return EINVAL;
        }
        void* at = reinterpret_cast<void*>(start);
        if (area.prot == VmProt::read_only && ::mprotect(at, mapped_bytes(area), PROT_READ) != 0)
            return errno;
        if (populate_) // best effort: without it (an older kernel) the first touch of each page faults
            (void)::madvise(at, mapped_bytes(area),
                            area.prot == VmProt::read_only ? detail::madv_populate_read
                                                           : detail::madv_populate_write);
        return 0;
    }
    // Puts the PROT_NONE reservation back over [start, start + bytes) (replacing the area's mappings).
    static bool reserve_again(std::uintptr_t start, std::size_t bytes) noexcept {
        void* at = reinterpret_cast<void*>(start);
        if (::mmap(at, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) !=
            MAP_FAILED)
            return true;
        ::munmap(at,
                 bytes); // the pages must not stay mapped; the range is lost to the window (leaked_address)
        return false;
    }
    // Gives a range that was in transit back to the window (or counts it lost).
    void return_range(std::uintptr_t start, std::size_t len, bool restored) noexcept {
        detail::VaSpace::Nodes spare;
        bool have_nodes = true;
        if (restored) {
            try {
                spare = detail::VaSpace::Nodes::one();
            } catch (const std::bad_alloc&) {
                have_nodes = false;
            }
        }
        policy::LockGuard<lock_type> guard(lock_);
        in_transit_ -= len;
        if (restored && have_nodes)
            va_.give(start, len, spare);
        else
            counters_.leaked_address += len;
    }
    void give_back_pages(const Area& area) {
        if (area.kind != VmKind::vmalloc) return;
        for (std::size_t k = 0; k < area.nr_pages; ++k) parent().free_pages(area.pages[k], 0);
    }

    // vfree / vunmap.
    void release(const void* addr, std::string_view op) {
        if (addr == nullptr) return;
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        Node node;
        detail::VmDiagnosis diag;
        {
            policy::LockGuard<lock_type> guard(lock_);
            const auto it = areas_.find(a);
            if (it == areas_.end() || (op == "vunmap" && it->second.kind == VmKind::vmalloc)) {
                diag = diagnose(a, op);
            } else {
                const Area& area = it->second;
                in_transit_ += extent(area);
                (area.kind == VmKind::vmalloc ? counters_.vmalloc_areas : counters_.vmap_areas) -= 1;
                (area.kind == VmKind::vmalloc ? counters_.vmalloc_pages : counters_.vmap_pages) -=
                    area.nr_pages;
                ++counters_.frees;
                node = areas_.extract(it);
            }
        }
        if (diag) return report(diag);
        const Area& area = node.mapped();
        const bool restored = reserve_again(a, mapped_bytes(area)); // unmapped before the pages go back
        return_range(a, extent(area), restored);
        give_back_pages(area);
    } // the record is destroyed here, outside the lock

    // Why `a` does not start an area `op` may release.  Lock held.
    detail::VmDiagnosis diagnose(std::uintptr_t a, std::string_view op) const noexcept {
        if (a < window_start_ || a >= window_end_)
            return {detail::VmMisuse::outside, op, a, window_start_, window_end_};
        const auto it = containing(a);
        if (it != areas_.end()) {
            if (it->first == a) return {detail::VmMisuse::vunmap_of_vmalloc, op, a, it->second.nr_pages};
            return {detail::VmMisuse::inside_area,
                    op,
                    a,
                    it->first,
                    it->first + extent(it->second),
                    it->second.kind == VmKind::vmap ? 1u : 0u};
        }
        if (a % page_size != 0) return {detail::VmMisuse::misaligned, op, a, page_size};
        return {detail::VmMisuse::no_area, op, a};
    }
    // The area whose range (guard page included) holds `a`, or end().  Lock held.
    typename area_map::const_iterator containing(std::uintptr_t a) const noexcept {
        auto it = areas_.upper_bound(a);
        if (it == areas_.begin()) return areas_.end();
        --it;
        return a - it->first < extent(it->second) ? it : areas_.end();
    }
    VmArea snapshot(std::uintptr_t start, const Area& area) const {
        VmArea v;
        v.addr = reinterpret_cast<void*>(start);
        v.size = extent(area);
        v.guard_size = guard_size;
        v.nr_pages = area.nr_pages;
        v.requested = area.requested;
        v.kind = area.kind;
        v.prot = area.prot;
        v.caller = area.caller;
        return v;
    }

    void report(const detail::VmDiagnosis& d) const {
        error_.on_error(UsageError{detail::kind_of(d.what), d.op, detail::describe(d)});
    }
    void count_failure() {
        policy::LockGuard<lock_type> guard(lock_);
        ++counters_.failures;
    }
    // Counts a failed request and writes the kernel's warn_alloc() report for it (after the lock).
    void fail(std::uint32_t bits, std::size_t size, const std::string& why) {
        count_failure();
        if (warn_ == nullptr || (bits & gfp::bits::nowarn)) return;
        char mode[24];
        std::snprintf(mode, sizeof mode, "%#x", bits);
        std::string text = name_ + ": vmalloc error: size " + std::to_string(size) + ", " + why +
                           ", mode:" + mode + '(' + gfp::to_string(bits) + "), nodemask=(null)\n";
        if constexpr (requires(const parent_type& p) { p.buddyinfo(); }) text += parent().buddyinfo();
        *warn_ << text;
    }
    // vmalloc_fix_flags(): the zone modifier is dropped, said once per call (the kernel WARNs).
    void unexpected_gfp(std::uint32_t bits) {
        if (warn_ == nullptr) return;
        const std::uint32_t invalid = bits & gfp::bits::zone_mask;
        const std::uint32_t fixed = bits & ~invalid;
        char buf[48];
        std::string text = name_ + ": Unexpected gfp: ";
        std::snprintf(buf, sizeof buf, "%#x", invalid);
        text += std::string(buf) + " (" + gfp::to_string(invalid) + "). Fixing up to gfp: ";
        std::snprintf(buf, sizeof buf, "%#x", fixed);
        text += std::string(buf) + " (" + gfp::to_string(fixed) +
                "). Fix your code! (this page allocator serves no memory of that zone)\n";
        *warn_ << text;
    }

    Parent parent_; // first: an owned page allocator outlives everything below
    detail::Mapping window_;
    std::uintptr_t window_start_ = 0;
    std::uintptr_t window_end_ = 0;
    bool populate_ = true;
    mutable lock_type lock_;
    detail::VaSpace va_;
    area_map areas_;
    std::uintptr_t in_transit_ = 0; // bytes of window taken from va_ and not (or no longer) in areas_
    VmallocStats counters_;
    [[no_unique_address]] mutable error_policy_type error_; // reports from const lookups (sg_table)
    std::ostream* warn_ = &std::clog;
    std::string name_ = "kmem";
};

} // namespace kmem
