// Model-based randomized test of kmem::Node: random operations on a two-zone node (ZONE_DMA32 1 MiB + ZONE_NORMAL
// 2 MiB over MmapRegions), with policy::NoLock and policy::MutexLock, checked against a shadow of every live block
// (its kind, zone, order or size, address and content tag):
//
// - alloc_pages (through get_free_pages) with gfp::kernel, gfp::kernel | gfp::dma32, gfp::atomic and
//   gfp::kernel | gfp::zero, orders 0..4; alloc_pages_exact / free_pages_exact; alloc_movable / free_movable
//   (gfp::kernel | gfp::movable and gfp::highuser_movable); frees; compact() and compact_zone() (sometimes with
//   some movable blocks pinned); drain_all_pages();
// - after every allocation: no two live blocks overlap, the block is naturally aligned, it lies in a zone the
//   request allows (a ZONE_DMA32 request in ZONE_DMA32); when the highest allowed zone had room above its low
//   watermark (and no HIGHATOMIC reserve), the fast path must have served it from that zone; when no allowed zone
//   has enough free pages (per-CPU lists included) above its min watermark (less the reserves gfp::atomic may
//   use), it must fail; when one has a page above that (per-CPU lists included: the slow path drains them), an
//   order-0 request must succeed; gfp::zero memory reads as zeroes;
// - every block's content (a tag-derived pattern on each of its pages) is checked before its free, on every full
//   check, and after each compaction (movable blocks through pin()), the direct compaction an order > 0 request
//   may run in its slow path included (the movable blocks it moved went up, within their zone);
// - a compaction moves exactly the movable blocks whose address changed (blocks_moved and pages_moved), each to a
//   higher address in its own zone, never a pinned one; its success is what largest_free_order() says (always,
//   for a full compaction);
// - every 2000 operations: check_invariants() == "", nr_free_and_pcp_pages() + pages held == total_pages(),
//   nr_movable(), the fragmentation index against largest_free_order(), every block's content;
// - every 50000 operations and at the end everything is freed and every page must come back.
//
// The seed is printed; KMEM_SEED=<n> repeats a run.
#include <kmem/gfp.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>
#include <kmem/zone.hpp>

#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace policy = kmem::policy;
using kmem::ZoneType;

constexpr std::size_t page = 4096;
constexpr unsigned max_order = 8;

template <class Lock>
using ModelNode = kmem::Node<max_order, page,
                             kmem::Zones<kmem::ZoneSpec<ZoneType::dma32, kmem::MmapRegion>,
                                         kmem::ZoneSpec<ZoneType::normal, kmem::MmapRegion>>,
                             Lock, policy::ThrowOnError>;

// HIGHATOMIC reserve pages of a zone, where the allocator has such reserves (0 otherwise).
template <class Z>
std::uint64_t reserved_highatomic(const Z& z) {
    if constexpr (requires { z.reserved_highatomic(); })
        return z.reserved_highatomic();
    else
        return 0;
}

// Four words on every page of a block: at 0, at the middle, at the end, and at a tag-dependent offset.
std::size_t tag_offset(std::uint64_t tag) {
    return static_cast<std::size_t>((tag * 8) % (page - 8)) & ~std::size_t{7};
}
void stamp(void* p, std::uint64_t pages, std::uint64_t tag) {
    auto* b = static_cast<unsigned char*>(p);
    for (std::uint64_t k = 0; k < pages; ++k) {
        const std::uint64_t v = tag ^ (k * 0x9e3779b97f4a7c15ull);
        for (const std::size_t off : {std::size_t{0}, page / 2, page - 8, tag_offset(tag)})
            std::memcpy(b + k * page + off, &v, sizeof v);
    }
}
bool intact(const void* p, std::uint64_t pages, std::uint64_t tag) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::uint64_t k = 0; k < pages; ++k) {
        const std::uint64_t v = tag ^ (k * 0x9e3779b97f4a7c15ull);
        for (const std::size_t off : {std::size_t{0}, page / 2, page - 8, tag_offset(tag)}) {
            std::uint64_t got;
            std::memcpy(&got, b + k * page + off, sizeof got);
            if (got != v) return false;
        }
    }
    return true;
}
bool all_zero(const void* p, std::size_t bytes) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < bytes; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, b + i, sizeof w);
        if (w != 0) return false;
    }
    return true;
}

struct Options {
    std::uint64_t ops = 200'000;
    unsigned target_percent = 90; // allocations outweigh frees while fewer pages than this are held
    std::uint64_t check_every = 2000;
    std::uint64_t settle_every = 50'000;
    std::uint64_t pressure_every =
        0; // the last pressure_ops of every pressure_every operations: gfp::atomic only
    std::uint64_t pressure_ops = 0;
};

template <class N>
class Model {
public:
    Model(N& node, std::uint64_t seed, Options opt) : n_(node), rng_(seed), opt_(opt) {}

    void run() {
        n_.set_warning_stream(nullptr);
        total_ = n_.total_pages();
        full_check();
        for (step_ = 0; step_ < opt_.ops; ++step_) {
            one_step();
            if ((step_ + 1) % opt_.check_every == 0) full_check();
            if ((step_ + 1) % opt_.settle_every == 0) settle();
        }
        settle();
        BOOST_TEST_MESSAGE(opt_.ops << " operations: " << allocations_ << " allocations (" << fast_predicted_
                                    << " predicted in the highest zone, " << fail_predicted_
                                    << " predicted to fail), " << failures_ << " failures, " << zeroed_
                                    << " zeroed, " << compactions_ << " compactions moved " << moved_blocks_
                                    << " blocks (" << pinned_skips_
                                    << " pinned skips), direct compaction moved " << moved_direct_ << ", "
                                    << fallbacks_ << " in a lower zone");
        BOOST_TEST(allocations_ > opt_.ops / 4);
        BOOST_TEST(fast_predicted_ > 0u);
        BOOST_TEST(fail_predicted_ > 0u);
        BOOST_TEST(moved_blocks_ > 0u);
        BOOST_TEST(zeroed_ > 0u);
        BOOST_TEST(fallbacks_ > 0u);
    }

private:
    enum class Kind { pages, exact, movable };
    struct Live {
        Kind kind;
        void* addr;
        kmem::MovableHandle h;
        unsigned order;    // pages and movable: the order; exact: the order of the block it came from
        std::size_t bytes; // exact: the size asked for
        std::uint64_t npages;
        ZoneType zone;
        std::uint64_t tag;
    };
    struct ZoneView {
        std::uint64_t free = 0, pcp = 0, reserved_ht = 0;
        int largest = -1;
        kmem::Watermarks wm;
    };

    [[noreturn]] void fail(const std::string& what) {
        BOOST_FAIL("step " << step_ << ": " << what << "\n" << n_.buddyinfo());
        throw 0; // not reached
    }
    void expect(bool ok, const std::string& what) {
        if (!ok) fail(what);
    }

    template <ZoneType Z>
    ZoneView view_of() const {
        const auto& z = n_.template zone_allocator_of<Z>();
        return {z.nr_free_pages(), z.nr_pcp_pages(), reserved_highatomic(z), z.largest_free_order(),
                n_.watermarks(Z)};
    }
    ZoneView view(ZoneType z) const {
        return z == ZoneType::dma32 ? view_of<ZoneType::dma32>() : view_of<ZoneType::normal>();
    }
    static std::string name(std::optional<ZoneType> z) {
        return z ? std::string(kmem::zone_name(*z)) : std::string("no zone");
    }
    std::uint64_t held_pages() const {
        std::uint64_t n = 0;
        for (const Live& l : live_) n += l.npages;
        return n;
    }

    // ----- the shadow of addresses ------------------------------------------------------------------------------
    void insert_span(const Live& l) {
        const auto a = reinterpret_cast<std::uintptr_t>(l.addr);
        const std::uint64_t bytes = l.npages * page;
        auto next = spans_.lower_bound(a);
        if (next != spans_.end() && next->first < a + bytes)
            fail("a new block at " + hex(a) + " overlaps the live block at " + hex(next->first));
        if (next != spans_.begin()) {
            auto prev = std::prev(next);
            if (prev->first + prev->second > a)
                fail("a new block at " + hex(a) + " overlaps the live block at " + hex(prev->first));
        }
        spans_.emplace(a, bytes);
    }
    void erase_span(const Live& l) {
        if (spans_.erase(reinterpret_cast<std::uintptr_t>(l.addr)) != 1) fail("the shadow lost a block");
    }
    void rebuild_spans() {
        spans_.clear();
        for (const Live& l : live_) insert_span(l);
    }
    static std::string hex(std::uintptr_t a) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(a));
        return buf;
    }

    // ----- predictions ------------------------------------------------------------------------------------------
    // The request may use zones up to `top`; `atomic` says it may dig into the reserves of gfp::atomic.
    struct Prediction {
        // The fast path serves it from `top`.
        bool fast_top = false;
        // No allowed zone passes its min watermark, even with the per-CPU lists drained.
        bool must_fail = false;
        // Order 0, and an allowed zone has a page above min (per-CPU lists included).
        bool must_succeed = false;
    };
    Prediction predict(ZoneType top, unsigned order, bool atomic) const {
        Prediction p;
        const std::int64_t need = (std::int64_t{1} << order) - 1;
        const ZoneView t = view(top);
        p.fast_top = t.reserved_ht == 0 &&
                     static_cast<std::int64_t>(t.free) - need > static_cast<std::int64_t>(t.wm.low) &&
                     (order == 0 || t.largest >= static_cast<int>(order));
        p.must_fail = true;
        for (const ZoneType z : {ZoneType::dma32, ZoneType::normal}) {
            if (z > top) continue;
            const ZoneView v = view(z);
            std::int64_t min = static_cast<std::int64_t>(v.wm.min);
            if (atomic) {
                min -= min / 2;
                min -= min / 4;
            }
            if (static_cast<std::int64_t>(v.free + v.pcp) - need > min) {
                p.must_fail = false;
                if (order == 0 && v.reserved_ht == 0) p.must_succeed = true; // the slow path drains the lists
            }
        }
        return p;
    }

    // After an allocation attempt: the slow path of an order > 0 request compacts (direct compaction), so movable
    // blocks may have moved -- up, within their zone, with their content.
    void refresh_movable() {
        bool any = false;
        for (Live& l : live_) {
            if (l.kind != Kind::movable) continue;
            void* now = n_.movable_address(l.h);
            if (now == l.addr) continue;
            if (n_.zone_of(now) != l.zone) fail("direct compaction moved a block to another zone");
            if (now < l.addr) fail("direct compaction moved a block down");
            l.addr = now;
            auto pin = n_.pin(l.h);
            if (pin.get() != now || !intact(now, l.npages, l.tag))
                fail("a movable block lost its content in direct compaction");
            any = true;
            ++moved_direct_;
        }
        if (any) rebuild_spans();
    }

    // Checks a new block and records it.
    void accept(Live l, ZoneType top, const Prediction& pr, bool zeroed) {
        refresh_movable();
        const std::optional<ZoneType> z = n_.zone_of(l.addr);
        if (!z) fail("a block outside every zone");
        if (*z > top) fail("a request for zones up to " + name(top) + " got " + name(z));
        if (pr.fast_top && *z != top)
            fail("the fast path should have served an order-" + std::to_string(l.order) + " request from " +
                 name(top) + " (above its low watermark) but it came from " + name(z));
        if (pr.must_fail)
            fail("an order-" + std::to_string(l.order) + " request succeeded with no zone above min");
        const auto a = reinterpret_cast<std::uintptr_t>(l.addr);
        if (a % (page << l.order) != 0)
            fail("a block of order " + std::to_string(l.order) + " at " + hex(a) +
                 " is not naturally aligned");
        if (zeroed) {
            if (!all_zero(l.addr, l.npages * page)) fail("gfp::zero memory is not zeroed");
            ++zeroed_;
        }
        if (*z != top) ++fallbacks_;
        if (pr.fast_top) ++fast_predicted_;
        l.zone = *z;
        l.tag = (++seq_ << 8) | (static_cast<std::uint64_t>(l.kind) << 4) | l.order;
        if (l.kind == Kind::movable) {
            auto pin = n_.pin(l.h);
            if (pin.get() != l.addr) fail("pin() and movable_address() disagree");
            stamp(pin.get(), l.npages, l.tag);
        } else {
            stamp(l.addr, l.npages, l.tag);
        }
        insert_span(l);
        live_.push_back(l);
        ++allocations_;
    }
    void refused(const Prediction& pr, unsigned order) {
        refresh_movable();
        if (pr.fast_top) fail("an order-" + std::to_string(order) + " request failed with room above low");
        if (pr.must_succeed)
            fail("an order-0 request failed with a page free above min (on a per-CPU list?)");
        if (pr.must_fail) ++fail_predicted_;
        ++failures_;
    }

    // ----- operations -------------------------------------------------------------------------------------------
    unsigned random_order() {
        const std::uint64_t r = rng_.below(100);
        return r < 45 ? 0u : r < 65 ? 1u : r < 80 ? 2u : r < 93 ? 3u : 4u;
    }

    template <class F>
    void alloc_pages_with(F flags, unsigned order) {
        constexpr bool atomic = !gfp::may_sleep(F{}) && (F::value & gfp::bits::high) != 0;
        const ZoneType top = (F::value & gfp::bits::dma32) ? ZoneType::dma32 : ZoneType::normal;
        const Prediction pr = predict(top, order, atomic);
        void* p = n_.get_free_pages(flags, order);
        if (p == nullptr) return refused(pr, order);
        accept(Live{Kind::pages, p, {}, order, 0, std::uint64_t{1} << order, top, 0}, top, pr,
               (F::value & gfp::bits::zero) != 0);
    }
    template <class F>
    void alloc_exact_with(F flags, std::size_t bytes) {
        constexpr bool atomic = !gfp::may_sleep(F{}) && (F::value & gfp::bits::high) != 0;
        const ZoneType top = (F::value & gfp::bits::dma32) ? ZoneType::dma32 : ZoneType::normal;
        const unsigned order = kmem::get_order<page>(bytes);
        const Prediction pr = predict(top, order, atomic);
        void* p = n_.alloc_pages_exact(bytes, flags);
        if (p == nullptr) return refused(pr, order);
        accept(Live{Kind::exact, p, {}, order, bytes, (bytes + page - 1) / page, top, 0}, top, pr,
               (F::value & gfp::bits::zero) != 0);
    }
    template <class F>
    void alloc_movable_with(F flags, unsigned order) {
        const Prediction pr = predict(ZoneType::normal, order, false);
        const kmem::MovableHandle h = n_.alloc_movable(flags, order);
        if (!h) return refused(pr, order);
        accept(Live{Kind::movable, n_.movable_address(h), h, order, 0, std::uint64_t{1} << order,
                    ZoneType::normal, 0},
               ZoneType::normal, pr, false);
    }

    // Non-blocking requests only (they fail at once): pages and exact allocations with gfp::atomic.
    void allocate_atomic() {
        if (rng_.percent(70)) return alloc_pages_with(gfp::atomic, rng_.percent(50) ? 0u : random_order());
        alloc_exact_with(gfp::atomic, 1 + rng_.below(std::uint64_t{12} * page));
    }

    void allocate() {
        const std::uint64_t r = rng_.below(100);
        const unsigned order = random_order();
        if (r < 60) {
            switch (rng_.below(4)) {
            case 0:
                return alloc_pages_with(gfp::kernel, order);
            case 1:
                return alloc_pages_with(gfp::kernel | gfp::dma32, order);
            case 2:
                return alloc_pages_with(gfp::atomic, order);
            default:
                return alloc_pages_with(gfp::kernel | gfp::zero, order);
            }
        }
        if (r < 80) {
            const std::size_t bytes = 1 + rng_.below(std::uint64_t{12} * page);
            switch (rng_.below(4)) {
            case 0:
                return alloc_exact_with(gfp::kernel, bytes);
            case 1:
                return alloc_exact_with(gfp::kernel | gfp::dma32, bytes);
            case 2:
                return alloc_exact_with(gfp::atomic, bytes);
            default:
                return alloc_exact_with(gfp::kernel | gfp::zero, bytes);
            }
        }
        const unsigned morder = std::min(order, 3u);
        if (rng_.percent(70))
            alloc_movable_with(gfp::kernel | gfp::movable, morder);
        else
            alloc_movable_with(gfp::highuser_movable, morder);
    }

    // Frees live_[i] after checking its content.
    void release(std::size_t i) {
        const Live l = live_[i];
        if (l.kind == Kind::movable) {
            auto pin = n_.pin(l.h);
            if (pin.get() != l.addr) fail("a movable block moved without the model seeing a compaction");
            if (!intact(pin.get(), l.npages, l.tag)) fail("a movable block lost its content");
        } else if (!intact(l.addr, l.npages, l.tag)) {
            fail("a block of order " + std::to_string(l.order) + " in " + name(l.zone) + " lost its content");
        }
        erase_span(l);
        live_[i] = live_.back();
        live_.pop_back();
        const std::uint64_t before = n_.nr_free_and_pcp_pages();
        switch (l.kind) {
        case Kind::pages:
            n_.free_pages(l.addr, l.order);
            break;
        case Kind::exact:
            n_.free_pages_exact(l.addr, l.bytes);
            break;
        case Kind::movable:
            n_.free_movable(l.h);
            break;
        }
        if (n_.nr_free_and_pcp_pages() != before + l.npages)
            fail("a free of " + std::to_string(l.npages) + " pages gave back " +
                 std::to_string(n_.nr_free_and_pcp_pages() - before));
    }

    // compact() or compact_zone(), sometimes with a few movable blocks pinned.
    void compaction() {
        std::vector<std::pair<void*, std::size_t>> movable; // (address before, index)
        for (std::size_t i = 0; i < live_.size(); ++i)
            if (live_[i].kind == Kind::movable) movable.emplace_back(live_[i].addr, i);
        std::vector<typename N::Pin> pins;
        std::vector<bool> pinned(live_.size(), false);
        if (rng_.percent(30))
            for (const auto& [addr, i] : movable)
                if (rng_.percent(20)) {
                    pins.push_back(n_.pin(live_[i].h));
                    pinned[i] = true;
                }
        const bool whole = rng_.percent(40);
        const ZoneType zone = rng_.percent(50) ? ZoneType::normal : ZoneType::dma32;
        const int order = static_cast<int>(rng_.below(6)) - 1; // -1 (everything) .. 4
        const kmem::CompactResult r = whole ? n_.compact(order) : n_.compact_zone(zone, order);
        ++compactions_;
        std::uint64_t moved = 0, pages_moved = 0, pinned_in_scope = 0;
        for (const auto& [before, i] : movable) {
            Live& l = live_[i];
            if (pinned[i] && (whole || l.zone == zone)) ++pinned_in_scope;
            void* now = n_.movable_address(l.h);
            if (now == before) continue;
            if (pinned[i]) fail("compaction moved a pinned block");
            if (!whole && l.zone != zone) fail("compact_zone() moved a block of another zone");
            if (n_.zone_of(now) != l.zone) fail("compaction moved a block to another zone");
            if (now < before) fail("compaction moved a block down");
            if (reinterpret_cast<std::uintptr_t>(now) % (page << l.order) != 0)
                fail("compaction moved a block to a misaligned place");
            l.addr = now;
            ++moved;
            pages_moved += l.npages;
        }
        pins.clear();
        if (r.blocks_moved != moved)
            fail("compaction says " + std::to_string(r.blocks_moved) + " blocks moved, " +
                 std::to_string(moved) + " did");
        if (r.pages_moved != pages_moved) fail("compaction's pages_moved is off");
        if (r.blocks_pinned > pinned_in_scope) fail("compaction counted more pinned blocks than were pinned");
        // success: a free block of the order exists afterwards, or a full compaction (order -1) ran to its end.
        bool any = order < 0;
        for (const ZoneType z : {ZoneType::dma32, ZoneType::normal})
            if ((whole || z == zone) && view(z).largest >= order) any = true;
        if (r.success != any)
            fail(std::string("compaction's success is not what largest_free_order() says: ") +
                 (whole ? "compact(" : "compact_zone(" + name(zone) + ", ") + std::to_string(order) +
                 ") success " + std::to_string(r.success) + ", largest free orders " +
                 std::to_string(view(ZoneType::dma32).largest) + " " +
                 std::to_string(view(ZoneType::normal).largest));
        moved_blocks_ += moved;
        pinned_skips_ += r.blocks_pinned;
        rebuild_spans();
        for (const auto& [before, i] : movable) {
            const Live& l = live_[i];
            auto pin = n_.pin(l.h);
            if (pin.get() != l.addr || !intact(pin.get(), l.npages, l.tag))
                fail("a movable block lost its content in a compaction");
        }
    }

    void drain() {
        n_.drain_all_pages();
        if (n_.nr_free_pages() != n_.nr_free_and_pcp_pages())
            fail("drain_all_pages() left pages on the lists");
    }

    // In a pressure phase only gfp::atomic requests are made, until the node is exhausted; at its end blocks are
    // freed down to the target again, so that no blocking request meets an exhausted node.
    bool pressure() const {
        return opt_.pressure_every != 0 &&
               step_ % opt_.pressure_every >= opt_.pressure_every - opt_.pressure_ops;
    }
    void one_step() {
        if (opt_.pressure_every != 0 && step_ % opt_.pressure_every == 0 && step_ != 0)
            while (!live_.empty() && held_pages() * 100 >= total_ * opt_.target_percent)
                release(rng_.below(live_.size()));
        const std::uint64_t held = held_pages();
        const bool room = held * 100 < total_ * (pressure() ? 100 : opt_.target_percent);
        const std::uint64_t r = rng_.below(1000);
        if (r < 4) return compaction();
        if (r < 8) return drain();
        if (r < 20) { // check a random block
            if (live_.empty()) return;
            const Live& l = live_[rng_.below(live_.size())];
            if (l.kind == Kind::movable) {
                auto pin = n_.pin(l.h);
                expect(pin.get() == l.addr && intact(pin.get(), l.npages, l.tag), "a movable block changed");
            } else {
                expect(intact(l.addr, l.npages, l.tag), "a block changed");
            }
            return;
        }
        if (live_.empty() || rng_.below(100) < (pressure() ? 75u : room ? 58u : 30u))
            return pressure() ? allocate_atomic() : allocate();
        release(rng_.below(live_.size()));
    }

    void full_check() {
        const std::string inv = n_.check_invariants();
        if (!inv.empty()) fail("check_invariants: " + inv);
        const std::uint64_t held = held_pages();
        if (n_.nr_free_and_pcp_pages() + held != total_)
            fail("free " + std::to_string(n_.nr_free_and_pcp_pages()) + " + held " + std::to_string(held) +
                 " != total " + std::to_string(total_));
        std::uint64_t movables = 0;
        for (const Live& l : live_) {
            if (l.kind == Kind::movable) {
                ++movables;
                if (n_.movable_address(l.h) != l.addr) fail("a movable block moved behind the model's back");
            }
            if (!intact(l.addr, l.npages, l.tag)) fail("a live block lost its content");
            if (n_.zone_of(l.addr) != l.zone) fail("a live block changed zone");
        }
        if (n_.nr_movable() != movables) fail("nr_movable() is off");
        for (const ZoneType z : {ZoneType::dma32, ZoneType::normal}) {
            const int largest = view(z).largest;
            for (unsigned o = 0; o <= max_order; ++o) {
                const int fi = n_.fragmentation_index(z, o);
                if ((fi == -1000) != (largest >= static_cast<int>(o)))
                    fail("fragmentation_index(" + name(z) + ", " + std::to_string(o) + ") is " +
                         std::to_string(fi) + " with the largest free order " + std::to_string(largest));
                if (fi < -1000 || fi > 1000) fail("fragmentation_index out of range");
            }
        }
    }

    // Frees everything (in random order), drains, and every page must be back.
    void settle() {
        while (!live_.empty()) release(rng_.below(live_.size()));
        drain();
        if (n_.nr_free_pages() != total_)
            fail("after freeing everything " + std::to_string(n_.nr_free_pages()) + " of " +
                 std::to_string(total_) + " pages are free");
        if (!spans_.empty()) fail("the shadow still holds blocks");
        if (n_.nr_movable() != 0) fail("movable blocks remain");
        full_check();
    }

    N& n_;
    kmem::test::Xoshiro256 rng_;
    Options opt_;
    std::uint64_t total_ = 0, step_ = 0, seq_ = 0;
    std::vector<Live> live_;
    std::map<std::uintptr_t, std::uint64_t> spans_; // address -> bytes of every live block
    std::uint64_t allocations_ = 0, failures_ = 0, fast_predicted_ = 0, fail_predicted_ = 0, zeroed_ = 0,
                  compactions_ = 0, moved_blocks_ = 0, pinned_skips_ = 0, fallbacks_ = 0, moved_direct_ = 0;
};

template <class N>
void run_model(Options opt, std::uint64_t salt) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        const kmem::MmapOptions aligned{.alignment = page << max_order};
        N node(kmem::MmapRegion(std::size_t{1} << 20, aligned),
               kmem::MmapRegion(std::size_t{2} << 20, aligned));
        const auto t0 = std::chrono::steady_clock::now();
        Model<N>(node, seed ^ salt, opt).run();
        BOOST_TEST_MESSAGE(opt.ops << " operations in "
                                   << std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::steady_clock::now() - t0)
                                          .count()
                                   << " ms");
    }
}

} // namespace

BOOST_AUTO_TEST_SUITE(zone_model)

// No lock: nothing to wait for, so the node is run close to exhaustion (failures are cheap).
BOOST_AUTO_TEST_CASE(two_hundred_fifty_thousand_operations_without_a_lock) {
    run_model<ModelNode<policy::NoLock>>({.ops = 250'000, .target_percent = 95}, 0);
}

// A mutex: a failing gfp::kernel request waits max_reclaim_retries rounds for other threads (kswapd runs, with
// nothing to reclaim), so the node is kept at about half full, except in pressure phases of gfp::atomic requests
// only, which run it dry.
BOOST_AUTO_TEST_CASE(two_hundred_thousand_operations_with_a_mutex) {
    run_model<ModelNode<policy::MutexLock>>(
        {.ops = 200'000, .target_percent = 50, .pressure_every = 10'000, .pressure_ops = 1500}, 0x2d0e);
}

BOOST_AUTO_TEST_SUITE_END()
