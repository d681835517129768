// libFuzzer target for BuddyAllocator (include/kmem/buddy.hpp), checked against a shadow model.
//
// The input is decoded into a small arena and a sequence of operations on a
// BuddyAllocator<6, 4096, SpanRegion, ErrorPolicy>, through its public API only.  The model records, for every
// page, the live block it belongs to (first page, order, compound or not, reference count) and the tag the
// fuzzer stamped into each live page.  From the set of free pages it derives what the allocator must do: an
// allocation succeeds exactly when a naturally aligned run of 2^order free pages exists (the free blocks are
// the maximal aligned free runs, because no two free buddies of one order may coexist), a placed allocation
// returns the lowest (or, top-down, the highest) such run inside the window, and a caller mistake is reported
// through the error policy as the kind the model predicts and changes nothing.  After every operation it
// compares the free blocks per order, the page descriptors of every page, the counters, the largest free
// order and the stamps of every live page; every 16 operations (and at the end) check_invariants() must be
// empty; at the end every block is freed and the allocator must be back to its first state.  Any mismatch
// prints one line and executes __builtin_trap().
//
// Input format (a missing byte reads as 0):
//   byte 0   arena pages: 64 + b % 193                      (64..256 pages of 4 KiB)
//   byte 1   the region's first page within a 64-page aligned buffer: b % 64 (so every alignment occurs)
//   byte 2   bits 0-1: the region starts 0, 0, 64 or 2048 bytes into that page (a partial first page is not
//            managed); bit 2: ThrowOnError instead of CallbackOnError
//   then records of 4 bytes [op, a, b, c]; op % 16 selects (see Runner::step):
//     0,1 alloc   2 alloc in a window   3 alloc top-down in a window   4,5 free a live block correctly
//     6 free any page with any order   7 get_page   8 put_page   9 split_page   10 alloc_pages_exact
//     11 free_pages_exact   12 bad arguments   13 free with a wrong order   14 free twice   15 check now
//
// KMEM_FUZZ_TRACE=1 in the environment prints every operation (useful with a crash file as the only input).
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#define KMEM_FUZZ_CHECK(cond, ...)                                                                           \
    do {                                                                                                     \
        if (!(cond)) [[unlikely]] {                                                                          \
            std::fprintf(stderr, "buddy_fuzz: check failed at line %d: %s\n  ", __LINE__, #cond);            \
            std::fprintf(stderr, __VA_ARGS__);                                                               \
            std::fputc('\n', stderr);                                                                        \
            std::fflush(stderr);                                                                             \
            __builtin_trap();                                                                                \
        }                                                                                                    \
    } while (0)

// The model's own loops (the page-by-page comparisons, the search for free runs, the zero and stamp checks)
// are left out of libFuzzer's coverage instrumentation: their comparisons would cost most of the time and add
// only noise to the feedback, which should come from the allocator.
#if defined(__clang__)
#define KMEM_FUZZ_UNTRACED __attribute__((no_sanitize("coverage")))
#else
#define KMEM_FUZZ_UNTRACED
#endif

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::PageFlag;
using kmem::Placement;

constexpr std::size_t ps = 4096;
constexpr unsigned max_order = 6;
constexpr std::uint64_t block_pages = std::uint64_t{1} << max_order;
constexpr std::uint64_t min_pages = 64;
constexpr std::uint64_t max_pages = 256;
constexpr std::size_t invariant_period = 16;

// The backing memory, aligned to the largest block so that byte 1 of the input chooses the alignment.
alignas(ps << max_order) unsigned char arena[(max_pages + block_pages + 1) * ps];

const bool trace = std::getenv("KMEM_FUZZ_TRACE") != nullptr;

// The name of an error kind, or "no error" (kmem::to_string's names are string literals).
const char* kind_name(std::optional<ErrorKind> k) noexcept {
    return k ? kmem::to_string(*k).data() : "no error";
}

// Bytes of the input, read front to back; 0 once they run out.
class Input {
public:
    Input(const std::uint8_t* data, std::size_t size) noexcept : p_(data), n_(size) {}
    std::uint8_t byte() noexcept {
        if (n_ == 0) return 0;
        --n_;
        return *p_++;
    }
    bool empty() const noexcept { return n_ == 0; }

private:
    const std::uint8_t* p_;
    std::size_t n_;
};

// One live block of the model.
struct Block {
    unsigned order = 0;
    bool compound = false; // __GFP_COMP and order > 0: a head and tail pages
    int refs = 1;
};

// The live blocks by the index of their first page (a flat table: the arena has at most 256 pages).
class Blocks {
public:
    explicit Blocks(std::uint64_t pages = 0) : slot_(pages) {}
    KMEM_FUZZ_UNTRACED bool contains(std::uint64_t i) const noexcept { return slot_[i].has_value(); }
    KMEM_FUZZ_UNTRACED Block& at(std::uint64_t i) {
        KMEM_FUZZ_CHECK(contains(i), "the model has no live block at page %llu",
                        static_cast<unsigned long long>(i));
        return *slot_[i];
    }
    KMEM_FUZZ_UNTRACED const Block& at(std::uint64_t i) const { return const_cast<Blocks*>(this)->at(i); }
    void insert(std::uint64_t i, Block b) {
        if (contains(i)) erase(i);
        ++count_;
        used_ += std::uint64_t{1} << b.order;
        slot_[i] = b;
    }
    void erase(std::uint64_t i) {
        used_ -= std::uint64_t{1} << at(i).order;
        slot_[i].reset();
        --count_;
    }
    void set_order(std::uint64_t i, unsigned order) {
        used_ -= (std::uint64_t{1} << at(i).order) - (std::uint64_t{1} << order);
        slot_[i]->order = order;
    }
    bool empty() const noexcept { return count_ == 0; }
    std::size_t size() const noexcept { return count_; }
    std::uint64_t used_pages() const noexcept { return used_; }
    // The first page of the k-th live block in address order (k < size()).
    KMEM_FUZZ_UNTRACED std::uint64_t nth(std::size_t k) const {
        for (std::uint64_t i = 0; i < slot_.size(); ++i)
            if (slot_[i] && k-- == 0) return i;
        __builtin_trap();
    }

private:
    std::vector<std::optional<Block>> slot_;
    std::size_t count_ = 0;
    std::uint64_t used_ = 0;
};

template <class ErrorPolicy>
class Runner {
public:
    using Buddy = kmem::BuddyAllocator<max_order, ps, kmem::SpanRegion, ErrorPolicy>;
    static constexpr bool throws = std::is_same_v<ErrorPolicy, kmem::policy::ThrowOnError>;

    Runner(unsigned char* start, std::size_t bytes)
        : base_(reinterpret_cast<std::uintptr_t>(start)), size_(bytes),
          buddy_(kmem::SpanRegion(std::span<std::byte>(reinterpret_cast<std::byte*>(start), bytes))) {
        first_ = (base_ + ps - 1) / ps;
        const std::uint64_t end = (base_ + size_) / ps;
        n_ = end > first_ ? end - first_ : 0;
        head_.assign(n_, -1);
        free_head_.assign(n_, -1);
        blocks_ = Blocks(n_);
        tag_.assign(n_, 0);
        buddy_.set_warning_stream(nullptr);
        if constexpr (!throws)
            buddy_.error_policy().set_callback([this](const kmem::UsageError& e) { note(e); });
        KMEM_FUZZ_CHECK(buddy_.total_pages() == n_, "total_pages() %llu, expected %llu",
                        ull(buddy_.total_pages()), ull(n_));
        initial_ = buddy_.buddyinfo();
        verify();
        check_invariants();
    }

    void run(Input& in) {
        std::size_t ops = 0;
        while (!in.empty()) {
            const std::uint8_t op = in.byte(), a = in.byte(), b = in.byte(), c = in.byte();
            step(op, a, b, c);
            verify();
            if (++ops % invariant_period == 0) check_invariants();
        }
        check_invariants();
        release_everything();
    }

private:
    static unsigned long long ull(std::uint64_t v) noexcept { return static_cast<unsigned long long>(v); }

    // ----- the error policy's reports ------------------------------------------------------------------------
    struct Reported {
        int count = 0;
        ErrorKind kind = ErrorKind::out_of_region;
        std::string message;
    };
    void note(const kmem::UsageError& e) {
        ++reported_.count;
        reported_.kind = e.kind;
        reported_.message = e.message;
    }
    template <class F>
    void call(F&& f) {
        reported_ = {};
        if constexpr (throws) {
            try {
                f();
            } catch (const kmem::bad_usage& e) {
                note(e.error());
            }
        } else {
            f();
        }
    }
    // After call(): exactly the predicted report (or the `also` accepted one), or none.
    void expect(std::optional<ErrorKind> want, const char* what,
                std::optional<ErrorKind> also = std::nullopt) {
        if (!want) {
            KMEM_FUZZ_CHECK(reported_.count == 0, "%s: unexpected error report (%s): %s", what,
                            kind_name(reported_.kind), reported_.message.c_str());
            return;
        }
        KMEM_FUZZ_CHECK(reported_.count == 1, "%s: expected one report of %s, got %d", what, kind_name(want),
                        reported_.count);
        KMEM_FUZZ_CHECK(reported_.kind == *want || (also && reported_.kind == *also),
                        "%s: expected %s, reported %s: %s", what, kind_name(want), kind_name(reported_.kind),
                        reported_.message.c_str());
    }

    // ----- geometry --------------------------------------------------------------------------------------------
    Page* page(std::uint64_t i) const { return buddy_.pfn_to_page(first_ + i); }
    std::uintptr_t address(std::uint64_t i) const { return static_cast<std::uintptr_t>((first_ + i) * ps); }
    std::uint64_t offset(std::uint64_t i) const { return (first_ + i) * ps - base_; }
    std::uint64_t index_of(const Page* p) const { return buddy_.page_to_pfn(p) - first_; }
    long long trace_index(const Page* p) const {
        return p == nullptr ? -1 : static_cast<long long>(index_of(p));
    }

    // ----- the model -------------------------------------------------------------------------------------------
    KMEM_FUZZ_UNTRACED bool is_free(std::uint64_t i) const { return head_[i] < 0; }
    KMEM_FUZZ_UNTRACED bool run_free(std::uint64_t i, std::uint64_t count) const {
        for (std::uint64_t k = 0; k < count; ++k)
            if (!is_free(i + k)) return false;
        return true;
    }
    // The order of the free block starting at page i (the largest aligned free run there), or -1.
    KMEM_FUZZ_UNTRACED int free_block_order(std::uint64_t i) const {
        if (!is_free(i)) return -1;
        int best = -1;
        for (unsigned k = 0; k <= max_order; ++k) {
            const std::uint64_t len = std::uint64_t{1} << k;
            if ((first_ + i) % len != 0 || i + len > n_ || !run_free(i, len)) break;
            best = static_cast<int>(k);
        }
        return best;
    }
    // The lowest (or highest) page index whose aligned run of 2^order free pages lies in pfns [lo, hi).
    KMEM_FUZZ_UNTRACED std::optional<std::uint64_t> find_run(unsigned order, std::uint64_t lo,
                                                             std::uint64_t hi, bool top_down) const {
        const std::uint64_t len = std::uint64_t{1} << order;
        std::optional<std::uint64_t> found;
        std::uint64_t c = (lo + len - 1) / len * len;
        for (; c + len <= hi; c += len) {
            if (!run_free(c - first_, len)) continue;
            found = c - first_;
            if (!top_down) break;
        }
        return found;
    }
    std::optional<std::uint64_t> find_run(unsigned order) const {
        return find_run(order, first_, first_ + n_, false);
    }

    // The offset of the first non-zero byte of the `bytes` bytes from page i on, or `bytes`.
    KMEM_FUZZ_UNTRACED std::size_t nonzero_byte(std::uint64_t i, std::size_t bytes) const {
        const auto* mem = reinterpret_cast<const unsigned char*>(address(i));
        for (std::size_t k = 0; k < bytes;
             k += sizeof(std::uint64_t)) { // bytes is a multiple of the page size
            std::uint64_t word = 0;
            std::memcpy(&word, mem + k, sizeof word);
            if (word != 0) {
                while (mem[k] == 0) ++k;
                return k;
            }
        }
        return bytes;
    }
    KMEM_FUZZ_UNTRACED void stamp(std::uint64_t i) {
        tag_[i] = ++serial_ * 0x9e3779b97f4a7c15ull ^ i;
        std::memcpy(reinterpret_cast<void*>(address(i)), &tag_[i], sizeof tag_[i]);
    }
    KMEM_FUZZ_UNTRACED void add_block(std::uint64_t i, unsigned order, bool compound) {
        const std::uint64_t len = std::uint64_t{1} << order;
        for (std::uint64_t k = 0; k < len; ++k) {
            KMEM_FUZZ_CHECK(is_free(i + k), "page %llu of a new block at %llu (order %u) is already in use",
                            ull(i + k), ull(i), order);
            head_[i + k] = static_cast<std::int64_t>(i);
            stamp(i + k);
        }
        blocks_.insert(i, Block{order, compound && order > 0, 1});
    }
    void drop_block(std::uint64_t i) {
        const Block b = blocks_.at(i);
        for (std::uint64_t k = 0; k < (std::uint64_t{1} << b.order); ++k) head_[i + k] = -1;
        blocks_.erase(i);
    }
    // One reference dropped on the live block headed by i; freed at zero.
    void put_ref(std::uint64_t i) {
        if (--blocks_.at(i).refs == 0) drop_block(i);
    }
    std::optional<std::uint64_t> pick_block(std::uint8_t k) const {
        if (blocks_.empty()) return std::nullopt;
        return blocks_.nth(k % blocks_.size());
    }

    // What freeing page i with `order` must report: nothing for the head of a live block of that order; a
    // double free for a free page; not_block_start for a tail or inner page.
    std::optional<ErrorKind> release_error(std::uint64_t i, unsigned order) const {
        if (order > max_order) return ErrorKind::order_too_large;
        if (blocks_.contains(i))
            return blocks_.at(i).order == order ? std::nullopt : std::optional{ErrorKind::wrong_order};
        if (is_free(i)) return ErrorKind::double_free;
        return ErrorKind::not_block_start; // a tail page or a page inside a block
    }
    std::optional<ErrorKind> address_error(std::uintptr_t addr) const {
        if (addr % ps != 0) return ErrorKind::misaligned;
        if (addr / ps < first_ || addr / ps >= first_ + n_) return ErrorKind::out_of_region;
        return std::nullopt;
    }
    std::optional<ErrorKind> offset_error(std::uint64_t off) const {
        if (off >= size_) return ErrorKind::out_of_region;
        return address_error(static_cast<std::uintptr_t>(base_ + off));
    }

    // ----- operations ------------------------------------------------------------------------------------------
    template <class F>
    static void with_flags(unsigned variant, F&& f) {
        switch (variant % 4) {
        case 0:
            f(gfp::kernel);
            break;
        case 1:
            f(gfp::kernel | gfp::comp);
            break;
        case 2:
            f(gfp::kernel | gfp::zero);
            break;
        default:
            f(gfp::kernel | gfp::comp | gfp::zero);
            break;
        }
    }

    // Checks a fresh block against the prediction and records it.
    void took(Page* p, unsigned order, bool compound, bool zero, std::optional<std::uint64_t> expected,
              bool exact_place, const char* what) {
        if (p == nullptr) {
            KMEM_FUZZ_CHECK(!expected, "%s(order %u) failed but the aligned run at page %llu is free", what,
                            order, ull(expected.value_or(0)));
            return;
        }
        KMEM_FUZZ_CHECK(expected, "%s(order %u) returned a block but no aligned free run exists", what,
                        order);
        const std::uint64_t i = index_of(p);
        KMEM_FUZZ_CHECK(i < n_ && page(i) == p, "%s returned a page outside the table", what);
        KMEM_FUZZ_CHECK((first_ + i) % (std::uint64_t{1} << order) == 0,
                        "%s(order %u): pfn %llu is misaligned", what, order, ull(first_ + i));
        KMEM_FUZZ_CHECK(!exact_place || i == *expected, "%s(order %u) placed at page %llu, expected %llu",
                        what, order, ull(i), ull(*expected));
        KMEM_FUZZ_CHECK(buddy_.page_address(p) == reinterpret_cast<void*>(address(i)) &&
                            buddy_.page_offset(p) == offset(i) && buddy_.offset_to_page(offset(i)) == p &&
                            buddy_.virt_to_page(reinterpret_cast<void*>(address(i))) == p,
                        "%s: address / offset conversions disagree for page %llu", what, ull(i));
        if (zero) {
            const std::size_t at = nonzero_byte(i, ps << order);
            KMEM_FUZZ_CHECK(at == ps << order, "%s(gfp::zero, order %u): byte %zu is not zero", what, order,
                            at);
        }
        add_block(i, order, compound);
    }

    // Ops 0, 1: alloc_pages and friends without a window; order 7 is above MaxOrder, which is a failed
    // allocation (nullptr, as in the kernel), not a caller mistake.
    void op_alloc(std::uint8_t a, std::uint8_t b, std::uint8_t c) {
        const unsigned order = a % (max_order + 2);
        const std::optional<std::uint64_t> run = order > max_order ? std::nullopt : find_run(order);
        with_flags(b, [&](auto flags) {
            constexpr std::uint32_t bits = decltype(flags)::value;
            const bool comp = (bits & gfp::bits::comp) != 0, zero = (bits & gfp::bits::zero) != 0;
            Page* p = nullptr;
            const char* what = "alloc_pages";
            call([&] {
                switch (c % 5) {
                case 0:
                    p = buddy_.alloc_pages(flags, order);
                    break;
                case 1:
                    what = "alloc_pages(gfp_t)";
                    p = buddy_.alloc_pages(kmem::gfp_t(flags), order);
                    break;
                case 2: {
                    what = "get_free_pages";
                    void* addr = buddy_.get_free_pages(flags, order);
                    p = addr == nullptr ? nullptr : buddy_.virt_to_page(addr);
                    KMEM_FUZZ_CHECK(addr == nullptr || buddy_.page_address(p) == addr,
                                    "get_free_pages address");
                    break;
                }
                case 3: {
                    what = "alloc_offset";
                    const auto off = buddy_.alloc_offset(flags, order);
                    p = off ? buddy_.offset_to_page(*off) : nullptr;
                    KMEM_FUZZ_CHECK(!off || buddy_.page_offset(p) == *off, "alloc_offset offset");
                    break;
                }
                default:
                    what = "alloc_pages(gfp_t, Placement{})";
                    p = buddy_.alloc_pages(kmem::gfp_t(flags), order, Placement{});
                    break;
                }
            });
            if (trace)
                std::fprintf(stderr, "%s order %u comp %d zero %d -> page %lld\n", what, order, comp, zero,
                             trace_index(p));
            expect(std::nullopt, what);
            took(p, order, comp, zero, run, false, what);
        });
    }

    // Ops 2, 3: allocation restricted to a byte window of the region, bottom-up or top-down.
    void op_alloc_placed(bool top_down, std::uint8_t a, std::uint8_t b, std::uint8_t c) {
        const unsigned order = a % (max_order + 1);
        Placement where;
        where.top_down = top_down;
        where.start = (std::uint64_t{b} * size_) >> 8;
        if (c & 1) where.start += 1 + (std::uint64_t{a} << 4);
        if (c == 254) where.start = size_ + ps;
        where.end = c == 255 ? ~std::uint64_t{0} : where.start + ((std::uint64_t{c} >> 1) + 1) * (ps / 2);
        // The window in page frame numbers: whole pages whose bytes lie in [start, min(end, size)).
        std::optional<std::uint64_t> run;
        if (where.start < size_) {
            const std::uint64_t lo = (base_ + where.start + ps - 1) / ps;
            const std::uint64_t end = where.end < size_ ? where.end : size_;
            const std::uint64_t hi = (base_ + end) / ps;
            if (hi > lo) run = find_run(order, lo, hi, top_down);
        }
        const unsigned flag_variant = ((a >> 3) & 1u) | (((a >> 4) & 1u) << 1);
        with_flags(flag_variant, [&](auto flags) {
            constexpr std::uint32_t bits = decltype(flags)::value;
            const bool comp = (bits & gfp::bits::comp) != 0, zero = (bits & gfp::bits::zero) != 0;
            Page* p = nullptr;
            call([&] {
                switch ((a >> 5) % 3) {
                case 0:
                    p = buddy_.alloc_pages(flags, order, where);
                    break;
                case 1: {
                    const auto off = buddy_.alloc_offset(flags, order, where);
                    p = off ? buddy_.offset_to_page(*off) : nullptr;
                    break;
                }
                default:
                    p = buddy_.alloc_pages(kmem::gfp_t(flags), order, where);
                    break;
                }
            });
            if (trace)
                std::fprintf(stderr,
                             "alloc_pages order %u window [%llu, %llu) top_down %d comp %d -> page %lld\n",
                             order, ull(where.start), ull(where.end), top_down, comp, trace_index(p));
            expect(std::nullopt, "alloc_pages(Placement)");
            took(p, order, comp, zero, run, true, "alloc_pages(Placement)");
        });
    }

    // Frees page i with `order` through one of the free entry points; checks the report against the model and
    // updates the model.  `method`: 0 by page, 1 by address, 2 by offset.
    void release(std::uint64_t i, unsigned order, unsigned method) {
        const std::optional<ErrorKind> err = release_error(i, order);
        const char* what = method == 0   ? "free_pages(Page*)"
                           : method == 1 ? "free_pages(void*)"
                                         : "free_offset";
        if (trace)
            std::fprintf(stderr, "%s page %llu order %u (expect %s)\n", what, ull(i), order, kind_name(err));
        call([&] {
            switch (method) {
            case 0:
                buddy_.free_pages(page(i), order);
                break;
            case 1:
                buddy_.free_pages(reinterpret_cast<void*>(address(i)), order);
                break;
            default:
                buddy_.free_offset(offset(i), order);
                break;
            }
        });
        expect(err, what);
        if (!err) put_ref(i);
    }

    // Ops 4, 5: a correct free of a live block, by page, address, offset or put_page (on the head or a tail).
    void op_free(std::uint8_t a, std::uint8_t b, std::uint8_t c) {
        const auto h = pick_block(a);
        if (!h) return;
        const Block blk = blocks_.at(*h);
        switch (b % 6) {
        case 0:
            release(*h, blk.order, 0);
            break;
        case 1:
            release(*h, blk.order, 1);
            break;
        case 2:
            release(*h, blk.order, 2);
            break;
        case 3:
            put(*h);
            break;
        case 4:
            put(blk.compound ? *h + c % (std::uint64_t{1} << blk.order) : *h);
            break;
        default:
            if (blk.order == 0) {
                if (trace) std::fprintf(stderr, "free_page page %llu\n", ull(*h));
                call([&] { buddy_.free_page(reinterpret_cast<void*>(address(*h))); });
                expect(std::nullopt, "free_page");
                put_ref(*h);
            } else {
                release(*h, blk.order, 1);
            }
            break;
        }
    }

    // get_page on page i: a reference on the block's head when i is the head or a compound tail.
    void get(std::uint64_t i) {
        std::optional<std::uint64_t> target;
        if (!is_free(i)) {
            const auto h = static_cast<std::uint64_t>(head_[i]);
            if (h == i || blocks_.at(h).compound) target = h;
        }
        if (trace) std::fprintf(stderr, "get_page page %llu (valid %d)\n", ull(i), target.has_value());
        call([&] { buddy_.get_page(page(i)); });
        expect(target ? std::nullopt : std::optional{ErrorKind::bad_refcount}, "get_page");
        if (target) ++blocks_.at(*target).refs;
    }
    // put_page on page i: drops a reference on the block's head when i is the head or a compound tail.
    void put(std::uint64_t i) {
        std::optional<std::uint64_t> target;
        std::optional<ErrorKind> err, also;
        if (is_free(i)) {
            // "A free page is reported (ErrorKind::bad_refcount)"; a page inside a free block, not its first
            // page, is also accepted as a double free (what free_pages reports for it).
            err = ErrorKind::bad_refcount;
            if (free_head_[i] < 0) also = ErrorKind::double_free;
        } else {
            const auto h = static_cast<std::uint64_t>(head_[i]);
            if (h == i || blocks_.at(h).compound)
                target = h;
            else
                err = ErrorKind::not_block_start;
        }
        if (trace) std::fprintf(stderr, "put_page page %llu (expect %s)\n", ull(i), kind_name(err));
        call([&] { buddy_.put_page(page(i)); });
        expect(err, "put_page", also);
        if (target) put_ref(*target);
    }
    std::uint64_t pick_page_for_refs(std::uint8_t a, std::uint8_t b, std::uint8_t c) const {
        if (b & 1 || blocks_.empty()) return a % n_;
        const std::uint64_t h = *pick_block(a);
        return h + c % (std::uint64_t{1} << blocks_.at(h).order);
    }

    // Op 9: split_page of a live block, sometimes with a wrong order; a compound page cannot be split.
    void op_split(std::uint8_t a, std::uint8_t b) {
        const auto h = pick_block(a);
        if (!h) return;
        const Block blk = blocks_.at(*h);
        const unsigned order = (b & 1) ? blk.order : b % (max_order + 2);
        std::optional<ErrorKind> err = release_error(*h, order);
        if (!err && blk.compound) err = ErrorKind::not_block_start;
        if (trace)
            std::fprintf(stderr, "split_page page %llu order %u (expect %s)\n", ull(*h), order,
                         kind_name(err));
        call([&] { buddy_.split_page(page(*h), order); });
        expect(err, "split_page");
        if (err) return;
        blocks_.set_order(*h, 0); // the first page keeps its references
        for (std::uint64_t k = 1; k < (std::uint64_t{1} << order); ++k) {
            head_[*h + k] = static_cast<std::int64_t>(*h + k);
            blocks_.insert(*h + k, Block{0, false, 1});
        }
    }

    // Op 10: alloc_pages_exact / alloc_offset_exact; more than 64 pages (order 7) fails.
    void op_alloc_exact(std::uint8_t a, std::uint8_t b, std::uint8_t c) {
        const std::uint64_t want_pages = a % (block_pages + 3);
        const std::size_t bytes =
            want_pages == 0 ? (b & 1)
                            : static_cast<std::size_t>(want_pages * ps - (std::uint64_t{b} * 16) % ps);
        const std::uint64_t pages = bytes == 0 ? 1 : (bytes - 1) / ps + 1;
        unsigned order = 0;
        while ((std::uint64_t{1} << order) < pages) ++order;
        const std::optional<std::uint64_t> run = order > max_order ? std::nullopt : find_run(order);
        Page* p = nullptr;
        const bool zero = (c % 3) == 1;
        call([&] {
            switch (c % 3) {
            case 0: {
                void* addr = buddy_.alloc_pages_exact(bytes, gfp::kernel);
                p = addr == nullptr ? nullptr : buddy_.virt_to_page(addr);
                break;
            }
            case 1: {
                void* addr = buddy_.alloc_pages_exact(bytes, gfp::kernel | gfp::zero);
                p = addr == nullptr ? nullptr : buddy_.virt_to_page(addr);
                break;
            }
            default: {
                const auto off = buddy_.alloc_offset_exact(bytes, gfp::kernel);
                p = off ? buddy_.offset_to_page(*off) : nullptr;
                break;
            }
            }
        });
        if (trace)
            std::fprintf(stderr, "alloc_pages_exact %zu bytes (order %u) -> page %lld\n", bytes, order,
                         trace_index(p));
        expect(std::nullopt, "alloc_pages_exact");
        if (p == nullptr) {
            KMEM_FUZZ_CHECK(!run, "alloc_pages_exact(%zu) failed but the aligned run at page %llu is free",
                            bytes, ull(run.value_or(0)));
            return;
        }
        KMEM_FUZZ_CHECK(run, "alloc_pages_exact(%zu) succeeded but no aligned free run of order %u exists",
                        bytes, order);
        const std::uint64_t i = index_of(p);
        KMEM_FUZZ_CHECK(i < n_ && (first_ + i) % (std::uint64_t{1} << order) == 0,
                        "alloc_pages_exact(%zu): page %llu is not aligned to order %u", bytes, ull(i), order);
        if (zero) {
            const std::size_t at = nonzero_byte(i, pages * ps);
            KMEM_FUZZ_CHECK(at == pages * ps, "alloc_pages_exact(gfp::zero): byte %zu is not zero", at);
        }
        for (std::uint64_t k = 0; k < pages; ++k) add_block(i + k, 0, false); // each page is an order-0 page
        exact_.push_back({i, bytes});
        if (exact_.size() > 32) exact_.pop_front();
    }

    // free_pages_exact / free_offset_exact of `bytes` at page i (+ `skew` bytes): all pages must be live
    // order-0 pages, or nothing changes.
    void free_exact(std::uint64_t i, std::size_t bytes, std::uint64_t skew, bool by_offset) {
        const std::uint64_t pages = bytes == 0 ? 1 : (bytes - 1) / ps + 1;
        std::optional<ErrorKind> err = by_offset
                                           ? offset_error(offset(i) + skew)
                                           : address_error(static_cast<std::uintptr_t>(address(i) + skew));
        if (!err && i + pages > n_) err = ErrorKind::out_of_region;
        for (std::uint64_t k = 0; !err && k < pages; ++k) err = release_error(i + k, 0);
        if (trace)
            std::fprintf(stderr, "free_pages_exact page %llu +%llu, %zu bytes (expect %s)\n", ull(i),
                         ull(skew), bytes, kind_name(err));
        call([&] {
            if (by_offset)
                buddy_.free_offset_exact(offset(i) + skew, bytes);
            else
                buddy_.free_pages_exact(reinterpret_cast<void*>(address(i) + skew), bytes);
        });
        expect(err, "free_pages_exact");
        if (!err)
            for (std::uint64_t k = 0; k < pages; ++k) put_ref(i + k);
    }
    // Op 11: frees a recorded exact allocation (sometimes one already freed, or with a wrong size or address).
    void op_free_exact(std::uint8_t a, std::uint8_t b, std::uint8_t c) {
        const bool by_offset = c & 1;
        if (exact_.empty() || b % 7 == 5) {
            free_exact(a % n_, (std::size_t{c} * ps) / 4, 0, by_offset);
            return;
        }
        const std::size_t k = a % exact_.size();
        const auto [i, bytes] = exact_[k];
        switch (b % 7) {
        case 3:
            free_exact(i, bytes + ps, 0, by_offset);
            break;
        case 4:
            free_exact(i, bytes >= ps ? bytes - ps : 0, 0, by_offset);
            break;
        case 6:
            free_exact(i, bytes, 8, by_offset);
            break;
        default:
            free_exact(i, bytes, 0, by_offset);
            if (b % 7 == 0) exact_.erase(exact_.begin() + static_cast<std::ptrdiff_t>(k));
            break;
        }
    }

    // Op 12: arguments that are wrong in themselves.
    void op_bad_arguments(std::uint8_t a, std::uint8_t b) {
        const unsigned order = b % (max_order + 1);
        const char* what = "bad argument";
        std::optional<ErrorKind> err = ErrorKind::out_of_region;
        Page bogus;
        call([&] {
            switch (a % 10) {
            case 0:
                what = "free_pages(nullptr)";
                err.reset();
                buddy_.free_pages(static_cast<void*>(nullptr), order);
                break;
            case 1:
                what = "free_pages(Page* nullptr)";
                buddy_.free_pages(static_cast<Page*>(nullptr), order);
                break;
            case 2:
                what = "free_pages(foreign Page*)";
                buddy_.free_pages(&bogus, order);
                break;
            case 3:
                what = "free_pages(misaligned)";
                err = ErrorKind::misaligned;
                buddy_.free_pages(reinterpret_cast<void*>(address(b % n_) + 1 + b), order);
                break;
            case 4:
                what = "free_pages(below the region)";
                buddy_.free_pages(reinterpret_cast<void*>((first_ - 1 - b % 4) * ps), order);
                break;
            case 5:
                what = "free_pages(above the region)";
                buddy_.free_pages(reinterpret_cast<void*>((first_ + n_ + b % 4) * ps), order);
                break;
            case 6:
                what = "free_offset(past the end)";
                buddy_.free_offset(size_ + b, order);
                break;
            case 7: {
                what = "alloc_pages(gfp_t with a zone this allocator lacks)";
                err = ErrorKind::invalid_gfp;
                Page* p = b & 1 ? buddy_.alloc_pages(kmem::gfp_t(gfp::kernel) | kmem::gfp_t(gfp::dma), order)
                                : buddy_.alloc_pages(kmem::gfp_t(gfp::kernel) | kmem::gfp_t(gfp::dma32),
                                                     order, Placement{0, size_, true});
                KMEM_FUZZ_CHECK(p == nullptr, "%s returned a page", what);
                break;
            }
            case 8:
                what = "get_page / put_page / split_page(nullptr)";
                if (b % 3 == 0)
                    buddy_.get_page(nullptr);
                else if (b % 3 == 1)
                    buddy_.put_page(nullptr);
                else
                    buddy_.split_page(nullptr, order);
                break;
            default:
                what = "free_offset(misaligned)";
                err = offset_error(offset(b % n_) + 1 + b);
                buddy_.free_offset(offset(b % n_) + 1 + b, order);
                break;
            }
        });
        if (trace) std::fprintf(stderr, "%s (expect %s)\n", what, kind_name(err));
        expect(err, what);
    }

    void step(std::uint8_t op, std::uint8_t a, std::uint8_t b, std::uint8_t c) {
        switch (op % 16) {
        case 0:
        case 1:
            op_alloc(a, b, c);
            break;
        case 2:
            op_alloc_placed(false, a, b, c);
            break;
        case 3:
            op_alloc_placed(true, a, b, c);
            break;
        case 4:
        case 5:
            op_free(a, b, c);
            break;
        case 6:
            release(a % n_, b % (max_order + 2), c % 3);
            break;
        case 7:
            get(pick_page_for_refs(a, b, c));
            break;
        case 8:
            put(pick_page_for_refs(a, b, c));
            break;
        case 9:
            op_split(a, b);
            break;
        case 10:
            op_alloc_exact(a, b, c);
            break;
        case 11:
            op_free_exact(a, b, c);
            break;
        case 12:
            op_bad_arguments(a, b);
            break;
        case 13: { // a wrong order on a live block
            const auto h = pick_block(a);
            if (!h) break;
            const unsigned order = blocks_.at(*h).order;
            release(*h, (order + 1 + b % (max_order + 1)) % (max_order + 2), c % 3);
            break;
        }
        case 14: { // the same block freed twice (the second free is a mistake unless references remain)
            const auto h = pick_block(a);
            if (!h) break;
            const unsigned order = blocks_.at(*h).order;
            release(*h, order, b % 3);
            release(*h, order, c % 3);
            break;
        }
        default:
            check_invariants();
            break;
        }
    }

    // ----- checks ------------------------------------------------------------------------------------------------
    void check_invariants() const {
        const std::string problem = buddy_.check_invariants();
        KMEM_FUZZ_CHECK(problem.empty(), "check_invariants(): %s", problem.c_str());
    }

    // The allocator's state against the model: every page descriptor, the free blocks per order, the counters,
    // the largest free order and the stamps of the live pages.
    KMEM_FUZZ_UNTRACED void verify() {
        std::fill(free_head_.begin(), free_head_.end(), -1);
        std::uint64_t free_pages = 0;
        std::vector<std::uint64_t> nr_free(max_order + 1, 0);
        int largest = -1;
        for (std::uint64_t i = 0; i < n_;) {
            const Page* p = page(i);
            KMEM_FUZZ_CHECK(p != nullptr, "pfn_to_page(%llu) is null", ull(first_ + i));
            if (is_free(i)) {
                const int k = free_block_order(i);
                const std::uint64_t len = std::uint64_t{1} << k;
                KMEM_FUZZ_CHECK(p->test(PageFlag::buddy) && p->order() == static_cast<unsigned>(k),
                                "page %llu should head a free block of order %d (flags %#x, order %u)",
                                ull(i), k, p->flags(), p->order());
                for (std::uint64_t j = 0; j < len; ++j) {
                    const Page* q = page(i + j);
                    KMEM_FUZZ_CHECK(
                        q->refcount() == 0 && !q->test(PageFlag::block) && !q->test(PageFlag::tail) &&
                            !q->test(PageFlag::head) && (j == 0 || !q->test(PageFlag::buddy)),
                        "free page %llu has flags %#x, refcount %d", ull(i + j), q->flags(), q->refcount());
                }
                free_head_[i] = k;
                ++nr_free[static_cast<unsigned>(k)];
                free_pages += len;
                if (k > largest) largest = k;
                i += len;
                continue;
            }
            KMEM_FUZZ_CHECK(blocks_.contains(i), "page %llu is neither free nor the head of a live block",
                            ull(i));
            const Block& b = blocks_.at(i);
            const std::uint64_t len = std::uint64_t{1} << b.order;
            KMEM_FUZZ_CHECK(
                p->test(PageFlag::block) && !p->test(PageFlag::buddy) && p->order() == b.order &&
                    p->refcount() == b.refs && p->test(PageFlag::head) == b.compound &&
                    buddy_.compound_order(p) == (b.compound ? b.order : 0u),
                "live block at page %llu (order %u, refs %d, compound %d): flags %#x, order %u, refcount %d",
                ull(i), b.order, b.refs, b.compound, p->flags(), p->order(), p->refcount());
            for (std::uint64_t j = 0; j < len; ++j) {
                const Page* q = page(i + j);
                if (j > 0) {
                    if (b.compound)
                        KMEM_FUZZ_CHECK(q->test(PageFlag::tail) &&
                                            buddy_.compound_head(const_cast<Page*>(q)) == p,
                                        "page %llu should be a tail of the compound page at %llu (flags %#x)",
                                        ull(i + j), ull(i), q->flags());
                    else
                        KMEM_FUZZ_CHECK(!q->test(PageFlag::block) && !q->test(PageFlag::buddy) &&
                                            !q->test(PageFlag::tail) && !q->test(PageFlag::head),
                                        "page %llu inside the block at %llu has flags %#x", ull(i + j),
                                        ull(i), q->flags());
                }
                std::uint64_t t = 0;
                std::memcpy(&t, reinterpret_cast<const void*>(address(i + j)), sizeof t);
                KMEM_FUZZ_CHECK(t == tag_[i + j], "the stamp of live page %llu changed", ull(i + j));
            }
            i += len;
        }
        KMEM_FUZZ_CHECK(buddy_.nr_free_pages() == free_pages, "nr_free_pages() %llu, model %llu",
                        ull(buddy_.nr_free_pages()), ull(free_pages));
        KMEM_FUZZ_CHECK(buddy_.total_pages() == n_, "total_pages() changed");
        for (unsigned k = 0; k <= max_order; ++k)
            KMEM_FUZZ_CHECK(buddy_.nr_free(k) == nr_free[k], "nr_free(%u) %llu, model %llu", k,
                            ull(buddy_.nr_free(k)), ull(nr_free[k]));
        KMEM_FUZZ_CHECK(buddy_.largest_free_order() == largest, "largest_free_order() %d, model %d",
                        buddy_.largest_free_order(), largest);
        const auto s = buddy_.stats();
        KMEM_FUZZ_CHECK(s.free_pages == free_pages && s.total_pages == n_, "stats() free %llu total %llu",
                        ull(s.free_pages), ull(s.total_pages));
        for (unsigned k = 0; k <= max_order; ++k)
            KMEM_FUZZ_CHECK(s.nr_free[k] == nr_free[k], "stats().nr_free[%u] %llu, model %llu", k,
                            ull(s.nr_free[k]), ull(nr_free[k]));
        const std::uint64_t used = blocks_.used_pages();
        KMEM_FUZZ_CHECK(buddy_.nr_free_pages() + used == buddy_.total_pages(),
                        "free %llu + used %llu != total %llu", ull(buddy_.nr_free_pages()), ull(used),
                        ull(buddy_.total_pages()));
    }

    // Frees every live block (dropping every reference); the allocator must be back to its first state.
    void release_everything() {
        while (!blocks_.empty()) {
            const std::uint64_t h = blocks_.nth(0);
            release(h, blocks_.at(h).order, 0);
        }
        verify();
        check_invariants();
        KMEM_FUZZ_CHECK(buddy_.nr_free_pages() == n_, "after freeing everything %llu of %llu pages are free",
                        ull(buddy_.nr_free_pages()), ull(n_));
        KMEM_FUZZ_CHECK(buddy_.buddyinfo() == initial_, "free lists did not merge back:\n  %s  was\n  %s",
                        buddy_.buddyinfo().c_str(), initial_.c_str());
    }

    std::uintptr_t base_;
    std::uint64_t size_;
    std::uint64_t first_ = 0;
    std::uint64_t n_ = 0;
    Buddy buddy_;
    std::string initial_;
    std::vector<std::int64_t> head_; // per page: the head of its live block, or -1 when free
    std::vector<int> free_head_;     // per page: the order of the free block it heads, or -1 (from verify())
    std::vector<std::uint64_t> tag_; // per live page: the stamp written into its first bytes
    Blocks blocks_;
    struct Exact {
        std::uint64_t first;
        std::size_t bytes;
    };
    std::deque<Exact> exact_; // recorded exact allocations, possibly freed since
    std::uint64_t serial_ = 0;
    Reported reported_;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in(data, size);
    const std::uint64_t pages = min_pages + in.byte() % (max_pages - min_pages + 1);
    const std::uint64_t first_page = in.byte() % block_pages;
    const std::uint8_t flags = in.byte();
    constexpr std::size_t sub_page[4] = {0, 0, 64, 2048};
    unsigned char* start = arena + first_page * ps + sub_page[flags & 3];
    const std::size_t bytes = pages * ps;
    std::memset(start, 0xa5, bytes); // so that gfp::zero has something to clear
    if (flags & 4) {
        Runner<kmem::policy::ThrowOnError> r(start, bytes);
        r.run(in);
    } else {
        Runner<kmem::policy::CallbackOnError> r(start, bytes);
        r.run(in);
    }
    return 0;
}
