/// @file
/// kvmalloc (mm/util.c): memory that is physically contiguous when it can be and virtually contiguous when it
/// cannot: kmalloc first, then vmalloc.  kvfree tells the two apart by address (is_vmalloc_addr).
///
/// `KvMalloc<KmallocT, VmapT>` borrows a Kmalloc and a VirtualMap (normally over the same page allocator on a
/// memfd region).  Above one page the kmalloc attempt is made the kernel's way (kmalloc_gfp_adjust): quietly
/// (__GFP_NOWARN), without hard retries (__GFP_NORETRY unless __GFP_RETRY_MAYFAIL), and without __GFP_NOFAIL,
/// since the vmalloc fallback carries that promise.  A caller that cannot sleep gets nullptr instead of the
/// fallback (vmalloc may sleep).  Requests of a page or less never fall back.
///
/// @code
///   using Buddy = kmem::BuddyAllocator<6, 4096, kmem::MemfdRegion>;   // largest block: 256 KiB
///   Buddy buddy(kmem::MemfdRegion(8 << 20));
///   kmem::Kmalloc<Buddy> km(buddy);
///   kmem::VirtualMap<Buddy&> vm(buddy);
///   kmem::KvMalloc kv(km, vm);
///   void* small = kv.kvmalloc(100, kmem::gfp::kernel);          // kmalloc-128
///   void* huge = kv.kvzalloc(1 << 20, kmem::gfp::kernel);       // above KMALLOC_MAX_SIZE: vmalloc
///   assert(!vm.is_vmalloc_addr(small) && vm.is_vmalloc_addr(huge));
///   assert(kv.kvmalloc(1 << 20, kmem::gfp::atomic) == nullptr);  // cannot sleep: no vmalloc fallback
///   kv.kvfree(huge);
///   kv.kvfree(small);
/// @endcode
#pragma once

#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/vmap.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

namespace kmem {

/// kmalloc_gfp_adjust(): the flags of kvmalloc's kmalloc attempt for a request above one page: __GFP_NOWARN,
/// __GFP_NORETRY unless __GFP_RETRY_MAYFAIL, and no __GFP_NOFAIL.
constexpr std::uint32_t kvmalloc_kmalloc_bits(std::uint32_t b) noexcept {
    b |= gfp::bits::nowarn;
    if (!(b & gfp::bits::retry_mayfail)) b |= gfp::bits::noretry;
    return b & ~gfp::bits::nofail;
}

/// kvmalloc / kvzalloc / kvmalloc_array / kvcalloc / kvrealloc / kvfree over a borrowed Kmalloc and VirtualMap.
template <class KmallocT, class VmapT>
class KvMalloc {
public:
    /// Borrows both allocators; they must outlive this object.
    KvMalloc(KmallocT& km, VmapT& vm) noexcept : km_(km), vm_(vm) {}

    /// kvmalloc: kmalloc (adjusted above a page: quiet, no hard retries, no nofail), then, when that fails and
    /// the flags allow sleeping, vmalloc with the caller's own flags.  nullptr when neither can give it.
    template <std::uint32_t B>
    void* kvmalloc(std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        gfp::check_slab(flags);
        if (size <= page_size) return km_.kmalloc(size, flags);
        if (void* p = km_.kmalloc(size, gfp::Flags<kvmalloc_kmalloc_bits(B)>{})) return p;
        if constexpr (!gfp::may_sleep(B)) {
            return nullptr; // non-sleeping allocations are not supported by vmalloc
        } else {
            if (size > static_cast<std::size_t>(std::numeric_limits<int>::max())) return nullptr; // INT_MAX
            return vm_.vmalloc(size, flags, caller);
        }
    }
    /// kvzalloc: kvmalloc with gfp::zero.
    template <std::uint32_t B>
    void* kvzalloc(std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        return kvmalloc(size, flags | gfp::zero, caller);
    }
    /// kvmalloc_array: n * size bytes, nullptr on overflow.
    template <std::uint32_t B>
    void* kvmalloc_array(std::size_t n, std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        std::size_t bytes;
        if (__builtin_mul_overflow(n, size, &bytes)) return nullptr;
        return kvmalloc(bytes, flags, caller);
    }
    /// kvcalloc: kvmalloc_array with gfp::zero.
    template <std::uint32_t B>
    void* kvcalloc(std::size_t n, std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        return kvmalloc_array(n, size, flags | gfp::zero, caller);
    }
    /// kvrealloc: `p` resized to `size` keeping its bytes (the same pointer when it already holds them);
    /// nullptr and `p` untouched when memory is short; size 0 frees `p` and returns zero_size_ptr.
    template <std::uint32_t B>
    void* kvrealloc(void* p, std::size_t size, gfp::Flags<B> flags, VmCaller caller = {}) {
        if (size == 0) {
            kvfree(p);
            return zero_size_ptr;
        }
        const std::size_t old = usable_size(p);
        if (old >= size) return p;
        void* q = kvmalloc(size, flags, caller);
        if (q == nullptr) return nullptr;
        if (old != 0) std::memcpy(q, p, old);
        kvfree(p);
        return q;
    }
    /// kvfree: vfree for a vmalloc address, kfree for anything else (nullptr and zero_size_ptr included).
    void kvfree(const void* p) {
        if (vm_.is_vmalloc_addr(p))
            vm_.vfree(p);
        else
            km_.kfree(const_cast<void*>(p));
    }
    /// kvfree_sensitive: clears `len` bytes, then kvfree.
    void kvfree_sensitive(const void* p, std::size_t len) {
        if (zero_or_null_ptr(p)) return;
        volatile unsigned char* b = static_cast<volatile unsigned char*>(const_cast<void*>(p));
        for (std::size_t i = 0; i < len; ++i) b[i] = 0;
        kvfree(p);
    }
    /// The bytes usable at `p`: ksize() for kmalloc memory, the mapped size for a vmalloc area; 0 for nullptr.
    std::size_t usable_size(const void* p) const {
        if (zero_or_null_ptr(p)) return 0;
        if (vm_.is_vmalloc_addr(p)) {
            const auto area = vm_.find_vm_area(p);
            return area ? area->usable_size() : 0;
        }
        return km_.ksize(p);
    }
    /// True when `p` came from the vmalloc fallback (is_vmalloc_addr).
    bool is_vmalloc_addr(const void* p) const noexcept { return vm_.is_vmalloc_addr(p); }

private:
    static constexpr std::size_t page_size = KmallocT::page_size;
    KmallocT& km_;
    VmapT& vm_;
};

} // namespace kmem
