/// @file
/// The caller mistakes a VirtualMap diagnoses (vfree / vunmap / vmap of a bad address or page, which the kernel
/// WARNs about in mm/vmalloc.c): recorded under its lock as a small value and turned into a sentence after it is
/// released.  Not part of the API; used by kmem/vmap.hpp.
#pragma once

#include <kmem/detail/reports.hpp>
#include <kmem/policy/error.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace kmem::detail {

/// The caller mistakes a VirtualMap diagnoses (under its lock; reported after it).
enum class VmMisuse : std::uint8_t {
    none,
    zero_size,         ///< vmalloc(0) / vmap of no pages.
    outside,           ///< a = address, b = window start, c = window end.
    inside_area,       ///< a = address, b = area start, c = area end (guard included), d = 1 for vmap.
    misaligned,        ///< a = address, b = page size.
    no_area,           ///< a = address.
    vunmap_of_vmalloc, ///< a = address, b = pages.
    null_page,         ///< a = index, b = count.
    foreign_page,      ///< a = index, b = count.
    range_outside,     ///< a = address, b = bytes.
};

/// A mistake recorded under the lock: what, the operation, and its numbers.
struct VmDiagnosis {
    VmMisuse what = VmMisuse::none;           ///< The mistake, or none.
    std::string_view op;                      ///< The operation ("vfree").
    std::uint64_t a = 0, b = 0, c = 0, d = 0; ///< The numbers of the sentence (see VmMisuse).
    /// True when there is a mistake.
    explicit operator bool() const noexcept { return what != VmMisuse::none; }
};

/// The ErrorKind of a VmMisuse.
constexpr ErrorKind kind_of(VmMisuse m) noexcept {
    switch (m) {
    case VmMisuse::outside:
    case VmMisuse::foreign_page:
    case VmMisuse::range_outside:
        return ErrorKind::out_of_region;
    case VmMisuse::inside_area:
        return ErrorKind::not_block_start;
    case VmMisuse::misaligned:
        return ErrorKind::misaligned;
    case VmMisuse::no_area:
        return ErrorKind::double_free;
    case VmMisuse::zero_size:
    case VmMisuse::vunmap_of_vmalloc:
    case VmMisuse::null_page:
    case VmMisuse::none:
        break;
    }
    return ErrorKind::bad_parameter;
}

/// The sentence of a VmDiagnosis (built after the lock is released).
inline std::string describe(const VmDiagnosis& d) {
    using std::to_string;
    const auto at = [](std::uint64_t v) { return "0x" + hex(v); };
    switch (d.what) {
    case VmMisuse::zero_size:
        return d.op == "vmap" ? "no pages were given; vmap maps at least one page."
                              : "a size of 0 bytes was asked; an area holds at least one byte.";
    case VmMisuse::outside:
        return "address " + at(d.a) + " is outside this VirtualMap's address space " + at(d.b) + "-" +
               at(d.c) + ", so neither vmalloc nor vmap returned it.";
    case VmMisuse::inside_area:
        return "address " + at(d.a) + " is inside the " + (d.d != 0 ? "vmap" : "vmalloc") + " area " +
               at(d.b) + "-" + at(d.c) +
               " (guard page included) but is not its start; pass the address that " +
               (d.d != 0 ? "vmap" : "vmalloc") + " returned.";
    case VmMisuse::misaligned:
        return "address " + at(d.a) + " is not aligned to the page size " + to_string(d.b) +
               ", so no area starts there.";
    case VmMisuse::no_area:
        return "no area starts at address " + at(d.a) + ": it was freed already, or never allocated.";
    case VmMisuse::vunmap_of_vmalloc:
        return "the area at " + at(d.a) +
               " was allocated by vmalloc; free it with vfree, since vunmap would leave " + "its " +
               to_string(d.b) + " pages allocated.";
    case VmMisuse::null_page:
        return "page " + to_string(d.a) + " of " + to_string(d.b) + " is a null pointer.";
    case VmMisuse::foreign_page:
        return "page " + to_string(d.a) + " of " + to_string(d.b) +
               " is not a page descriptor of this VirtualMap's page allocator.";
    case VmMisuse::range_outside:
        return "the " + to_string(d.b) + " bytes at " + at(d.a) +
               " are not inside the mapped pages of one vmalloc or vmap area.";
    case VmMisuse::none:
        break;
    }
    return {};
}

} // namespace kmem::detail
