/// @file
/// The values a VirtualMap takes and gives (include/linux/vmalloc.h): its options, what made an area (VM_ALLOC,
/// VM_MAP) and its protection, who asked for it, a snapshot of one area (struct vm_struct, as find_vm_area()
/// returns it) and of the counters.  kmem/vmap.hpp includes it, with VirtualMap itself.
///
/// @code
///   kmem::VmCaller named("ring_buffer");                  // a caller named explicitly
///   assert(named.to_string() == "ring_buffer");
///   kmem::VmCaller here;                                  // the call site: function@file:line
///   assert(here.to_string().find('@') != std::string::npos);
///   kmem::VmArea area;                                    // what find_vm_area() returns
///   area.size = 5 * 4096;                                 // four pages and the guard page
///   area.guard_size = 4096;
///   area.nr_pages = 4;
///   assert(area.usable_size() == 4 * 4096 && area.kind == kmem::VmKind::vmalloc);
///   kmem::VmapOptions options;
///   options.address_space = std::size_t{1} << 30;         // a 1 GiB window (VMALLOC_TOTAL)
///   assert(options.populate);
/// @endcode
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kmem {

/// Options of a VirtualMap, fixed at construction.
struct VmapOptions {
    /// Bytes of address space reserved for areas (VMALLOC_TOTAL), rounded up to whole pages; 0 picks four times
    /// the page allocator's managed bytes, at least 64 MiB.  Areas and their guard pages are carved from it.
    std::size_t address_space = 0;
    /// Fault the page tables of a new area in at vmalloc / vmap time (MADV_POPULATE_WRITE), so that the memory
    /// is mapped when it is returned, as the kernel's is; false leaves the first touch of each page to fault.
    bool populate = true;
};

/// What made an area (the kernel's VM_ALLOC / VM_MAP flags of struct vm_struct).
enum class VmKind : std::uint8_t {
    vmalloc, ///< VM_ALLOC: pages allocated by vmalloc, returned by vfree.
    vmap,    ///< VM_MAP: the caller's pages, mapped by vmap; the caller keeps them.
};

/// The protection of an area's pages (the pgprot_t of vmap: PAGE_KERNEL or PAGE_KERNEL_RO).
enum class VmProt : std::uint8_t {
    read_write, ///< PAGE_KERNEL.
    read_only,  ///< PAGE_KERNEL_RO: a write faults.
};

/// Who asked for an area: shown in vmallocinfo() where the kernel prints the caller's symbol (%pS).  By default it
/// records the call site (function, file and line, filled in by default arguments); a name given explicitly is
/// shown instead.  Pass a string literal to name the caller: `vm.vmalloc(n, "ring_buffer")`.
struct VmCaller {
    /// The name to show (copied when the area is made), or nullptr to show the call site.
    const char* name;
    /// The calling function (__builtin_FUNCTION).
    const char* function;
    /// The calling source file (__builtin_FILE).
    const char* file;
    /// The calling line (__builtin_LINE).
    unsigned line;
    /// Records the call site, and `name` when one is given.
    VmCaller(const char* name = nullptr, const char* function = __builtin_FUNCTION(), // NOLINT: implicit
             const char* file = __builtin_FILE(), unsigned line = __builtin_LINE()) noexcept
        : name(name), function(function), file(file), line(line) {}
    /// The text vmallocinfo() shows: the name, or "function@file:line" with the file's base name.
    std::string to_string() const {
        if (name != nullptr) return name;
        std::string_view f = file == nullptr ? "?" : file;
        if (const auto slash = f.find_last_of('/'); slash != std::string_view::npos)
            f.remove_prefix(slash + 1);
        return std::string(function == nullptr ? "?" : function) + '@' + std::string(f) + ':' +
               std::to_string(line);
    }
};

/// A snapshot of one area (struct vm_struct), as find_vm_area() returns it.
struct VmArea {
    void* addr = nullptr;             ///< The first byte (vm->addr).
    std::size_t size = 0;             ///< Bytes of address space including the guard page (vm->size).
    std::size_t guard_size = 0;       ///< Bytes of the guard page after the mapped pages.
    std::size_t nr_pages = 0;         ///< Pages mapped (vm->nr_pages; for vmap, the caller's pages).
    std::size_t requested = 0;        ///< Bytes asked for: the vmalloc size, or nr_pages pages for vmap.
    VmKind kind = VmKind::vmalloc;    ///< VM_ALLOC or VM_MAP.
    VmProt prot = VmProt::read_write; ///< The protection of the pages.
    std::string caller;               ///< Who asked (VmCaller::to_string()).
    /// The mapped bytes, without the guard page (get_vm_area_size()).
    std::size_t usable_size() const noexcept { return size - guard_size; }
};

/// A snapshot of a VirtualMap's counters (/proc/meminfo's Vmalloc lines and more).
struct VmallocStats {
    std::uint64_t address_space = 0; ///< Bytes of the window (VmallocTotal).
    std::uint64_t address_used = 0;  ///< Bytes of the window held by areas, guard pages included.
    std::uint64_t largest_free = 0; ///< The largest free range of the window in bytes (the old VmallocChunk).
    std::uint64_t vmalloc_areas = 0;  ///< Live areas made by vmalloc.
    std::uint64_t vmap_areas = 0;     ///< Live areas made by vmap.
    std::uint64_t vmalloc_pages = 0;  ///< Pages allocated by vmalloc (vmalloc_nr_pages(); VmallocUsed).
    std::uint64_t vmap_pages = 0;     ///< Caller pages mapped by vmap.
    std::uint64_t allocations = 0;    ///< Successful vmalloc and vmap calls.
    std::uint64_t frees = 0;          ///< Successful vfree and vunmap calls.
    std::uint64_t failures = 0;       ///< vmalloc and vmap calls that returned nullptr for want of memory.
    std::uint64_t leaked_address = 0; ///< Bytes of window lost because the reservation could not be put back.
};

} // namespace kmem
