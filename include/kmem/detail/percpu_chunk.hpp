/// @file
/// The chunks of a per-CPU allocator (mm/percpu.c's struct pcpu_chunk and its area map): the allocation bitmaps
/// (lib/bitmap.c's find_next_bit family), chunk creation (pcpu_create_chunk), and the area allocator
/// (pcpu_find_block_fit, pcpu_alloc_area, pcpu_free_area) with the caller mistakes a free can make.  Not part of
/// the API; used by kmem/percpu.hpp.
#pragma once

#include <kmem/percpu_defs.hpp>
#include <kmem/policy/error.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string>

#include <sys/mman.h>

namespace kmem::detail {

// ----- bitmaps (lib/bitmap.c's find_next_bit family, over 64-bit words) ----------------------------------------

inline bool percpu_test_bit(const std::uint64_t* map, std::size_t bit) noexcept {
    return (map[bit >> 6] >> (bit & 63)) & 1u;
}
// Sets (or clears) bits [bit, bit + n).
inline void percpu_assign_bits(std::uint64_t* map, std::size_t bit, std::size_t n, bool value) noexcept {
    while (n > 0) {
        const std::size_t shift = bit & 63;
        const std::size_t k = std::min<std::size_t>(n, 64 - shift);
        const std::uint64_t mask = (k == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << k) - 1)) << shift;
        if (value)
            map[bit >> 6] |= mask;
        else
            map[bit >> 6] &= ~mask;
        bit += k;
        n -= k;
    }
}
// The first bit at or after `from` (and below `size`) whose value is `value`; `size` when there is none.
inline std::size_t percpu_find_next(const std::uint64_t* map, std::size_t size, std::size_t from,
                                    bool value) noexcept {
    if (from >= size) return size;
    std::size_t w = from >> 6;
    std::uint64_t x = (value ? map[w] : ~map[w]) & (~std::uint64_t{0} << (from & 63));
    for (;;) {
        if (x != 0) return std::min(size, w * 64 + static_cast<std::size_t>(std::countr_zero(x)));
        if (++w * 64 >= size) return size;
        x = value ? map[w] : ~map[w];
    }
}
// One more than the last set bit below `before`, or 0 when bits [0, before) are all clear.
inline std::size_t percpu_find_prev_set(const std::uint64_t* map, std::size_t before) noexcept {
    while (before > 0) {
        const std::size_t w = (before - 1) >> 6;
        const std::size_t top = ((before - 1) & 63) + 1; // bits [0, top) of word w are below `before`
        const std::uint64_t x = map[w] & (top == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << top) - 1));
        if (x != 0) return w * 64 + 64 - static_cast<std::size_t>(std::countl_zero(x));
        before = w * 64;
    }
    return 0;
}

// A caller mistake found under the lock, reported after it.
struct PercpuMisuse {
    ErrorKind kind{};
    bool found = false;
    const void* address = nullptr;
    std::size_t offset = 0; // in the unit
    std::size_t start = 0;  // not_block_start: offset of the enclosing area
    std::size_t size = 0;   // its size
    unsigned unit = 0;      // out_of_region: the unit the address lies in (when inside a chunk)
    bool inside_chunk = false;
};

/// The chunks of a PerCpuAllocator and their area allocator: the unit layout, the chunk list and the counters,
/// with chunk creation and the area search, allocation and free (PerCpuAllocator calls them under its lock).
/// The base of PerCpuAllocator, which sets the layout up; exclusive_ and rseq_ belong to its this_cpu
/// operations and sit beside the unit layout, which those operations read too.
class PercpuChunks {
protected:
    // struct pcpu_chunk: the units, then (after the last unit, in the same mapping) this header and the bitmaps
    // of one unit's granules: alloc_map (1 = in use) and bound_map (1 at the start of each area and just after
    // its end; bit nr_bits is always set), as the kernel keeps them.
    struct Chunk {
        Chunk* next = nullptr;
        std::byte* base = nullptr; // unit 0; unit u at base + u * unit_size
        std::size_t map_bytes = 0;
        std::uint64_t* alloc_map = nullptr;
        std::uint64_t* bound_map = nullptr;
        std::size_t free_bits = 0;   // free granules
        std::size_t contig_hint = 0; // at least the longest free run (exact after a failed scan)
        std::size_t first_free = 0;  // no free granule below it
        std::size_t nr_alloc = 0;    // live areas
    };

    // pcpu_create_chunk(): maps the units and the metadata behind them; nullptr when mmap fails.
    Chunk* map_chunk() noexcept {
        const std::size_t units_bytes = std::size_t{units_} * unit_size_;
        const std::size_t meta = sizeof(Chunk) + (map_words_ + bound_words_) * sizeof(std::uint64_t);
        const std::size_t total =
            units_bytes + (meta + percpu_max_align - 1) / percpu_max_align * percpu_max_align;
        void* m = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
        if (m == MAP_FAILED) return nullptr;
        auto* base = static_cast<std::byte*>(m);
        Chunk* c = ::new (static_cast<void*>(base + units_bytes)) Chunk{};
        c->base = base;
        c->map_bytes = total;
        c->alloc_map = reinterpret_cast<std::uint64_t*>(c + 1);
        c->bound_map = c->alloc_map + map_words_; // both zero, as mapped
        detail::percpu_assign_bits(c->bound_map, nr_bits_, 1, true);
        c->free_bits = nr_bits_;
        c->contig_hint = nr_bits_;
        return c;
    }
    static void unmap_chunk(Chunk* c) noexcept {
        const std::size_t bytes = c->map_bytes;
        void* base = c->base;
        c->~Chunk();
        ::munmap(base, bytes);
    }

    // pcpu_alloc()'s search: first fit over the chunks whose hint allows the request (pcpu_find_block_fit), then
    // pcpu_alloc_area(); nullptr when no chunk has room.
    std::byte* alloc_locked(std::size_t bits, std::size_t bit_align) noexcept {
        for (Chunk* c = chunks_; c != nullptr; c = c->next) {
            if (c->contig_hint < bits) continue;
            const std::size_t bit = find_fit(c, bits, bit_align);
            if (bit == nr_bits_) continue;
            detail::percpu_assign_bits(c->alloc_map, bit, bits, true);
            detail::percpu_assign_bits(c->bound_map, bit, 1, true);
            detail::percpu_assign_bits(c->bound_map, bit + 1, bits - 1, false);
            detail::percpu_assign_bits(c->bound_map, bit + bits, 1, true);
            c->free_bits -= bits;
            ++c->nr_alloc;
            if (bit == c->first_free)
                c->first_free = detail::percpu_find_next(c->alloc_map, nr_bits_, bit + bits, false);
            ++nr_areas_;
            max_areas_ = std::max(max_areas_, nr_areas_);
            ++allocations_;
            return c->base + bit * percpu_min_alloc_size;
        }
        return nullptr;
    }
    // The first granule of a free run that holds `bits` granules from a multiple of `bit_align`, or nr_bits_.
    // A scan that finds nothing has seen every free run, so it makes the chunk's hint exact.
    std::size_t find_fit(Chunk* c, std::size_t bits, std::size_t bit_align) const noexcept {
        std::size_t longest = 0;
        for (std::size_t at = c->first_free; at < nr_bits_;) {
            const std::size_t start = detail::percpu_find_next(c->alloc_map, nr_bits_, at, false);
            if (start >= nr_bits_) break;
            const std::size_t end = detail::percpu_find_next(c->alloc_map, nr_bits_, start, true);
            longest = std::max(longest, end - start);
            const std::size_t aligned = (start + bit_align - 1) / bit_align * bit_align;
            if (aligned + bits <= end) return aligned;
            at = end;
        }
        c->contig_hint = longest;
        return nr_bits_;
    }

    // pcpu_free_area() after pcpu_chunk_addr_search(), with the checks the kernel leaves to WARN()s.
    detail::PercpuMisuse free_locked(const std::byte* addr, Chunk*& spare) noexcept {
        detail::PercpuMisuse bad;
        bad.address = addr;
        Chunk* c = chunks_;
        for (; c != nullptr; c = c->next) {
            if (addr >= c->base && addr < c->base + unit_size_) break;
            if (addr >= c->base && addr < c->base + std::size_t{units_} * unit_size_) {
                bad.inside_chunk = true;
                bad.unit = static_cast<unsigned>(static_cast<std::size_t>(addr - c->base) / unit_size_);
            }
        }
        if (c == nullptr) {
            bad.found = true;
            bad.kind = ErrorKind::out_of_region;
            return bad;
        }
        const std::size_t offset = static_cast<std::size_t>(addr - c->base);
        bad.offset = offset;
        if (offset % percpu_min_alloc_size != 0) {
            bad.found = true;
            bad.kind = ErrorKind::misaligned;
            return bad;
        }
        const std::size_t bit = offset / percpu_min_alloc_size;
        if (!detail::percpu_test_bit(c->alloc_map, bit)) {
            bad.found = true;
            bad.kind = ErrorKind::double_free;
            return bad;
        }
        if (!detail::percpu_test_bit(c->bound_map, bit)) { // inside an area: find its start
            std::size_t start = bit;
            while (!detail::percpu_test_bit(c->bound_map, start)) --start;
            bad.found = true;
            bad.kind = ErrorKind::not_block_start;
            bad.start = start * percpu_min_alloc_size;
            bad.size = (detail::percpu_find_next(c->bound_map, nr_bits_ + 1, start + 1, true) - start) *
                       percpu_min_alloc_size;
            return bad;
        }
        const std::size_t end = detail::percpu_find_next(c->bound_map, nr_bits_ + 1, bit + 1, true);
        detail::percpu_assign_bits(c->alloc_map, bit, end - bit, false);
        c->free_bits += end - bit;
        --c->nr_alloc;
        c->first_free = std::min(c->first_free, bit);
        const std::size_t run_start = detail::percpu_find_prev_set(c->alloc_map, bit);
        const std::size_t run_end = detail::percpu_find_next(c->alloc_map, nr_bits_, end, true);
        c->contig_hint = std::max(c->contig_hint, run_end - run_start);
        --nr_areas_;
        ++frees_;
        if (c->nr_alloc == 0) { // keep one empty chunk; unmap any other (after the lock is released)
            for (Chunk* other = chunks_; other != nullptr; other = other->next) {
                if (other == c || other->nr_alloc != 0) continue;
                unlink(c);
                spare = c;
                break;
            }
        }
        return bad;
    }
    void unlink(Chunk* c) noexcept {
        for (Chunk** link = &chunks_; *link != nullptr; link = &(*link)->next) {
            if (*link == c) {
                *link = c->next;
                --nr_chunks_;
                return;
            }
        }
    }
    std::string chunk_problem(const Chunk* c, const std::string& what) const {
        char addr[32];
        std::snprintf(addr, sizeof addr, "%p", static_cast<const void*>(c->base));
        return "per-CPU chunk at " + std::string(addr) + ": " + what;
    }

    std::size_t unit_size_ = percpu_default_unit_size;
    std::size_t nr_bits_ = 0;     // granules per unit
    std::size_t map_words_ = 0;   // words of alloc_map
    std::size_t bound_words_ = 0; // words of bound_map (nr_bits_ + 1 bits)
    unsigned units_ = 1;
    unsigned exclusive_ = 0; // ThreadSlots: units owned by one thread; unit exclusive_ is the shared one
    bool rseq_ = false;
    Chunk* chunks_ = nullptr;
    std::uint64_t nr_chunks_ = 0;
    std::uint64_t nr_areas_ = 0;
    std::uint64_t max_areas_ = 0;
    std::uint64_t allocations_ = 0;
    std::uint64_t frees_ = 0;
    std::uint64_t failures_ = 0;
};

} // namespace kmem::detail
