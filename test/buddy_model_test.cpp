// Model-based randomized test of BuddyAllocator: at least 1,000,000 random operations against a shadow model.
//
// Every operation's result is checked against what the model predicts (which order a plain allocation splits,
// which block a placed allocation must return, how many pages a free returns, which error a mistake raises);
// every few thousand operations the full invariants are checked from outside (no overlap between live blocks,
// no two free buddies, free + used == total, per-order counts) and at the end everything is freed and the
// allocator must be back at its initial buddyinfo.  The seed is printed; KMEM_SEED=<n> repeats a run.
#include <kmem/buddy.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::PageFlag;
using kmem::Placement;
using kmem::test::ShadowModel;
using kmem::test::Xoshiro256;

enum class Kind { block, compound, exact, single };

struct Live {
    std::uint64_t pfn;   // first page frame
    unsigned order;      // allocation order (0 for exact / split pages)
    std::uint64_t pages; // pages owned
    std::size_t bytes;   // exact allocations: bytes asked for
    Kind kind;
    int refs;            // references held (get_page adds one)
    std::uint64_t tag;   // content tag (addressable regions)
};

struct Counters {
    std::uint64_t allocations = 0, frees = 0, failures = 0;
    std::uint64_t ops[10] = {};
};

// The lowest (or highest) naturally aligned block of 2^order pages that lies inside a free block and inside the
// page window [lo, hi): computed by walking the page frames from outside.  `none` when nothing fits.
constexpr std::uint64_t none = ~std::uint64_t{0};
template <class A>
std::uint64_t expected_placed(const A& a, unsigned order, std::uint64_t lo, std::uint64_t hi,
                                             bool top_down) {
    const std::uint64_t first = a.page_table().first_pfn();
    const std::uint64_t end = first + a.total_pages();
    const std::uint64_t size = std::uint64_t{1} << order;
    std::uint64_t best = none;
    for (std::uint64_t pfn = first; pfn < end;) {
        const Page* p = a.pfn_to_page(pfn);
        const std::uint64_t len = std::uint64_t{1} << p->order();
        if (p->test(PageFlag::buddy) && p->order() >= order) {
            const std::uint64_t s = std::max(pfn, lo), e = std::min(pfn + len, hi);
            if (e > s && e - s >= size) {
                if (top_down) {
                    const std::uint64_t c = (e - size) & ~(size - 1);
                    if (c >= s && (best == none || c > best)) best = c;
                } else {
                    const std::uint64_t c = (s + size - 1) & ~(size - 1);
                    if (c + size <= e && (best == none || c < best)) best = c;
                }
            }
        }
        pfn += len;
    }
    return best;
}

template <class A>
class ModelRun {
public:
    static constexpr unsigned max_order = A::max_order;
    static constexpr std::size_t ps = A::page_size;

    ModelRun(A& a, std::uint64_t seed) : a_(a), rng_(seed) {}

    void run(std::uint64_t ops, std::uint64_t check_every) {
        a_.set_warning_stream(nullptr);
        const std::string initial = a_.buddyinfo();
        const auto initial_nr_free = kmem::test::nr_free_vector(a_);
        kmem::test::expect_consistent(a_, shadow_);
        for (step_ = 0; step_ < ops; ++step_) {
            const std::uint64_t r = rng_.below(100);
            // Keep the arena between empty and full most of the time: when more than 3/4 is in use, free more.
            const bool crowded = shadow_.used_pages() * 4 > a_.total_pages() * 3;
            if (crowded && !live_.empty() && rng_.percent(40)) free_one();
            else if (live_.empty() || r < 30) alloc_plain();
            else if (r < 36) alloc_placed();
            else if (r < 41) alloc_compound();
            else if (r < 48) alloc_exact();
            else if (r < 84) free_one();
            else if (r < 88) split_one();
            else if (r < 93) take_reference();
            else if (r < 96) free_recently_freed_again();
            else inject_mistake();
            if ((step_ + 1) % check_every == 0) full_check();
            if ((step_ + 1) % 100'000 == 0) { // drain now and then: every block must merge back mid-run too
                while (!live_.empty()) release(live_.size() - 1, true);
                if (a_.buddyinfo() != initial) fail("after draining, buddyinfo is " + a_.buddyinfo());
                full_check();
            }
        }
        full_check();
        // Free everything: the allocator must come back to where it started.
        while (!live_.empty()) release(live_.size() - 1, true);
        BOOST_TEST(shadow_.empty());
        BOOST_TEST(a_.buddyinfo() == initial);
        BOOST_TEST(kmem::test::nr_free_vector(a_) == initial_nr_free, boost::test_tools::per_element());
        BOOST_TEST(a_.nr_free_pages() == a_.total_pages());
        const auto s = a_.stats();
        BOOST_TEST(s.allocations == n_.allocations);
        BOOST_TEST(s.frees == n_.frees);
        BOOST_TEST(s.failures == n_.failures);
        kmem::test::expect_consistent(a_, shadow_);
        BOOST_TEST_MESSAGE("ops: " << ops << ", allocations " << n_.allocations << ", frees " << n_.frees
                                   << ", failures " << n_.failures << ", mistakes caught " << mistakes_);
    }

private:
    // ----- helpers ---------------------------------------------------------------------------------------------
    unsigned random_order() {
        // Mostly small orders, sometimes large: order k with probability ~ 2^-(k+1), capped at max_order.
        const std::uint64_t bits = rng_() | (std::uint64_t{1} << 63);
        const unsigned k = static_cast<unsigned>(std::countr_zero(bits));
        return k > max_order ? static_cast<unsigned>(rng_.below(max_order + 1)) : k;
    }
    Page* page(std::uint64_t pfn) const { return a_.pfn_to_page(pfn); }
    std::uint64_t offset_of(std::uint64_t pfn) const { return a_.page_offset(page(pfn)); }

    void fail(const std::string& what) { BOOST_FAIL("step " << step_ << ": " << what); }

    void track(std::uint64_t pfn, unsigned order, std::uint64_t pages, std::size_t bytes, Kind kind) {
        if (!shadow_.insert(pfn, pages))
            fail("allocator handed out pfn " + std::to_string(pfn) + " (+" + std::to_string(pages) +
                 ") which overlaps a live block");
        const std::uint64_t tag = rng_() | 1u;
        if constexpr (A::addressable) { // write a tag into every page; checked when the block is freed
            for (std::uint64_t k = 0; k < pages; ++k)
                std::memcpy(a_.page_address(page(pfn + k)), &tag, sizeof tag);
        }
        live_.push_back(Live{pfn, order, pages, bytes, kind, 1, tag});
    }

    // Checks what a plain allocation of `order` must do to the per-order counts, given the counts before.
    void expect_split(const std::vector<std::uint64_t>& before, unsigned order) {
        unsigned k = order;
        while (k <= max_order && before[k] == 0) ++k;
        for (unsigned j = 0; j <= max_order; ++j) {
            std::uint64_t want = before[j];
            if (j == k) --want;
            else if (j >= order && j < k) ++want;
            if (a_.nr_free(j) != want)
                fail("after an order-" + std::to_string(order) + " allocation nr_free(" + std::to_string(j) +
                     ") is " + std::to_string(a_.nr_free(j)) + ", expected " + std::to_string(want));
        }
    }

    // ----- operations ------------------------------------------------------------------------------------------
    void alloc_plain() {
        ++n_.ops[0];
        const unsigned order = random_order();
        const auto before = kmem::test::nr_free_vector(a_);
        const bool can = a_.largest_free_order() >= static_cast<int>(order);
        bool possible = false;
        for (unsigned k = order; k <= max_order; ++k) possible |= before[k] != 0;
        if (can != possible) fail("largest_free_order() disagrees with nr_free()");
        const std::uint64_t free_before = a_.nr_free_pages();
        Page* p = nullptr;
        switch (rng_.below(3)) {
        case 0: p = a_.alloc_pages(gfp::kernel, order); break;
        case 1: p = a_.alloc_pages(kmem::gfp_t(gfp::atomic | gfp::nowarn), order); break;
        default: {
            auto off = a_.alloc_offset(gfp::nowait, order);
            p = off ? a_.offset_to_page(*off) : nullptr;
            break;
        }
        }
        if (p == nullptr) {
            if (possible) fail("an order-" + std::to_string(order) + " allocation failed with a free block available");
            ++n_.failures;
            return;
        }
        if (!possible) fail("an allocation succeeded with no free block of that order or above");
        ++n_.allocations;
        const std::uint64_t pfn = a_.page_to_pfn(p);
        if (pfn % (std::uint64_t{1} << order) != 0) fail("misaligned block");
        if (a_.nr_free_pages() != free_before - (std::uint64_t{1} << order)) fail("nr_free_pages off after alloc");
        if (!p->test(PageFlag::block) || p->order() != order || p->refcount() != 1) fail("bad head descriptor");
        expect_split(before, order);
        track(pfn, order, std::uint64_t{1} << order, 0, Kind::block);
    }

    void alloc_placed() {
        ++n_.ops[1];
        const unsigned order = static_cast<unsigned>(rng_.below(max_order + 1));
        const std::uint64_t bytes = a_.region().size();
        // A random window, sometimes not page aligned, sometimes open-ended.
        std::uint64_t s = rng_.below(bytes), e = s + rng_.below(bytes - s + ps) + 1;
        if (rng_.percent(20)) s = 0;
        if (rng_.percent(20)) e = ~std::uint64_t{0};
        if (rng_.percent(50)) s &= ~std::uint64_t{ps - 1};
        const bool top_down = rng_.percent(50);
        const Placement where{.start = s, .end = e, .top_down = top_down};
        // The default Placement (whole region, bottom-up) is a plain allocation: any fitting block, O(1).
        const bool unrestricted = s == 0 && e == Placement{}.end && !top_down;
        const auto counts_before = kmem::test::nr_free_vector(a_);
        const std::uint64_t base = a_.region().base();
        const std::uint64_t lo = s >= bytes ? ~std::uint64_t{0} : (base + s + ps - 1) / ps;
        const std::uint64_t hi = (base + std::min(e, bytes)) / ps;
        const std::uint64_t want = lo < hi ? expected_placed(a_, order, lo, hi, top_down) : none;
        const std::uint64_t free_before = a_.nr_free_pages();
        Page* p = rng_.percent(50) ? a_.alloc_pages(gfp::kernel | gfp::nowarn, order, where)
                                   : a_.alloc_pages(kmem::gfp_t(gfp::kernel), order, where);
        if (p == nullptr) {
            if (want != none) fail("placed allocation failed; pfn " + std::to_string(want) + " fits");
            ++n_.failures;
            return;
        }
        ++n_.allocations;
        const std::uint64_t pfn = a_.page_to_pfn(p);
        if (want == none) fail("placed allocation succeeded where nothing fits");
        if (unrestricted) expect_split(counts_before, order);
        else if (pfn != want)
            fail(std::string(top_down ? "top-down" : "bottom-up") + " placed allocation returned pfn " +
                 std::to_string(pfn) + ", expected " + std::to_string(want) + " in the page window [" +
                 std::to_string(lo) + ", " + std::to_string(hi) + "), order " + std::to_string(order));
        const std::uint64_t off = a_.page_offset(p);
        if (off < s || off + (ps << order) > std::min(e, bytes)) fail("placed block outside its window");
        if (a_.nr_free_pages() != free_before - (std::uint64_t{1} << order)) fail("nr_free_pages off after alloc");
        track(pfn, order, std::uint64_t{1} << order, 0, Kind::block);
    }

    void alloc_compound() {
        ++n_.ops[2];
        const unsigned order = 1 + static_cast<unsigned>(rng_.below(max_order));
        Page* p = a_.alloc_pages(gfp::kernel | gfp::comp | gfp::nowarn, order);
        if (p == nullptr) {
            if (a_.largest_free_order() >= static_cast<int>(order)) fail("compound allocation failed");
            ++n_.failures;
            return;
        }
        ++n_.allocations;
        if (!p->test(PageFlag::head) || a_.compound_order(p) != order) fail("compound head not marked");
        const std::uint64_t last = (std::uint64_t{1} << order) - 1;
        const std::uint64_t k = 1 + rng_.below(last);
        if (!p[k].test(PageFlag::tail) || a_.compound_head(p + k) != p) fail("compound tail not marked");
        track(a_.page_to_pfn(p), order, std::uint64_t{1} << order, 0, Kind::compound);
    }

    void alloc_exact() {
        ++n_.ops[3];
        const std::uint64_t max_bytes = std::uint64_t{ps} << max_order;
        const std::size_t bytes = static_cast<std::size_t>(
            rng_.percent(50) ? rng_.between(1, max_bytes) : rng_.between(1, std::uint64_t{1} << max_order) * ps);
        const std::uint64_t pages = (bytes + ps - 1) / ps;
        const unsigned order = kmem::get_order<ps>(bytes);
        const bool possible = a_.largest_free_order() >= static_cast<int>(order);
        const std::uint64_t free_before = a_.nr_free_pages();
        std::optional<std::uint64_t> off;
        if constexpr (A::addressable) {
            void* p = a_.alloc_pages_exact(bytes, gfp::kernel | gfp::nowarn);
            if (p != nullptr) off = a_.page_offset(a_.virt_to_page(p));
        } else {
            off = a_.alloc_offset_exact(bytes, gfp::kernel | gfp::nowarn);
        }
        if (!off) {
            if (possible) fail("exact allocation of " + std::to_string(bytes) + " bytes failed");
            ++n_.failures;
            return;
        }
        ++n_.allocations;
        if (a_.nr_free_pages() != free_before - pages)
            fail("exact allocation of " + std::to_string(pages) + " pages took " +
                 std::to_string(free_before - a_.nr_free_pages()));
        const std::uint64_t pfn = a_.page_to_pfn(a_.offset_to_page(*off));
        if (pfn % (std::uint64_t{1} << order) != 0) fail("exact allocation not aligned to its power of two");
        track(pfn, 0, pages, bytes, Kind::exact);
    }

    // Frees live_[i] (drops one reference; the block is released at zero).
    void release(std::size_t i, bool all_refs) {
        Live& l = live_[i];
        do {
            if constexpr (A::addressable) { // the tags must have survived: nobody else wrote there
                for (std::uint64_t k = 0; k < l.pages; ++k) {
                    std::uint64_t got = 0;
                    std::memcpy(&got, a_.page_address(page(l.pfn + k)), sizeof got);
                    if (got != l.tag) fail("page " + std::to_string(l.pfn + k) + " was overwritten while allocated");
                }
            }
            const std::uint64_t free_before = a_.nr_free_pages();
            const std::uint64_t frees_before = a_.stats().frees;
            Page* head = page(l.pfn);
            const bool last = l.refs == 1;
            switch (l.kind) {
            case Kind::exact:
                if constexpr (A::addressable) a_.free_pages_exact(a_.page_address(head), l.bytes);
                else a_.free_offset_exact(offset_of(l.pfn), l.bytes);
                break;
            case Kind::compound:
                if (rng_.percent(50)) a_.put_page(head + rng_.below(l.pages)); // via any page, tails included
                else a_.free_pages(head, l.order);
                break;
            default:
                switch (rng_.below(3)) {
                case 0: a_.free_pages(head, l.order); break;
                case 1: a_.free_offset(offset_of(l.pfn), l.order); break;
                default: a_.put_page(head); break;
                }
            }
            --l.refs;
            const std::uint64_t returned = last ? l.pages : 0;
            const std::uint64_t freed_blocks = last ? (l.kind == Kind::exact ? l.pages : 1) : 0;
            if (a_.nr_free_pages() != free_before + returned)
                fail("free returned " + std::to_string(a_.nr_free_pages() - free_before) + " pages, expected " +
                     std::to_string(returned));
            if (a_.stats().frees != frees_before + freed_blocks) fail("stats().frees off");
            n_.frees += freed_blocks;
        } while (all_refs && l.refs > 0);
        if (l.refs == 0) {
            shadow_.erase(l.pfn);
            recently_freed_.push_back({l.pfn, l.order});
            if (recently_freed_.size() > 16) recently_freed_.erase(recently_freed_.begin());
            live_[i] = live_.back();
            live_.pop_back();
        }
    }

    void free_one() {
        ++n_.ops[4];
        release(rng_.below(live_.size()), false);
    }

    void split_one() {
        ++n_.ops[5];
        const std::size_t i = rng_.below(live_.size());
        Live l = live_[i];
        if (l.kind != Kind::block || l.order == 0 || l.refs != 1) return;
        const std::uint64_t free_before = a_.nr_free_pages();
        a_.split_page(page(l.pfn), l.order);
        if (a_.nr_free_pages() != free_before) fail("split_page changed nr_free_pages");
        shadow_.erase(l.pfn);
        live_[i] = live_.back();
        live_.pop_back();
        for (std::uint64_t k = 0; k < l.pages; ++k) {
            const Page* p = page(l.pfn + k);
            if (!p->test(PageFlag::block) || p->order() != 0 || p->refcount() != 1) fail("split page not order 0");
            shadow_.insert(l.pfn + k, 1);
            live_.push_back(Live{l.pfn + k, 0, 1, 0, Kind::single, 1, l.tag});
        }
    }

    void take_reference() {
        ++n_.ops[6];
        Live& l = live_[rng_.below(live_.size())];
        if (l.kind == Kind::exact) return; // exact allocations are freed page by page
        a_.get_page(page(l.pfn));
        ++l.refs;
        if (page(l.pfn)->refcount() != l.refs) fail("refcount does not match the references taken");
    }

    template <class F>
    void expect_mistake(ErrorKind kind, const char* what, F&& f) {
        const std::string info = a_.buddyinfo();
        const std::uint64_t free_before = a_.nr_free_pages(), frees_before = a_.stats().frees;
        try {
            f();
            fail(std::string(what) + ": no error raised");
        } catch (const kmem::bad_usage& e) {
            if (e.error().kind != kind)
                fail(std::string(what) + ": expected '" + std::string(kmem::to_string(kind)) + "', got '" +
                     std::string(kmem::to_string(e.error().kind)) + "'");
        }
        if (a_.buddyinfo() != info || a_.nr_free_pages() != free_before || a_.stats().frees != frees_before)
            fail(std::string(what) + " changed the allocator");
        ++mistakes_;
    }

    void free_recently_freed_again() {
        ++n_.ops[7];
        if (recently_freed_.empty()) return;
        const auto recent = recently_freed_[rng_.below(recently_freed_.size())];
        const std::uint64_t pfn = recent.first;
        const unsigned order = recent.second;
        // Only when no live block covers any of its pages is this exactly a double free.
        for (std::uint64_t k = 0; k < (std::uint64_t{1} << order); ++k)
            if (shadow_.covers(pfn + k)) return;
        expect_mistake(ErrorKind::double_free, "double free", [&] { a_.free_pages(page(pfn), order); });
    }

    void inject_mistake() {
        ++n_.ops[8];
        const Live& l = live_[rng_.below(live_.size())];
        Page* head = page(l.pfn);
        switch (rng_.below(4)) {
        case 0:
            if (l.kind == Kind::exact) return;
            expect_mistake(ErrorKind::wrong_order, "wrong order", [&] {
                a_.free_pages(head, l.order == max_order ? l.order - 1 : l.order + 1);
            });
            break;
        case 1:
            if (l.pages < 2 || l.kind == Kind::exact) return;
            expect_mistake(ErrorKind::not_block_start, "interior page",
                           [&] { a_.free_pages(head + 1 + rng_.below(l.pages - 1), 0); });
            break;
        case 2:
            expect_mistake(ErrorKind::order_too_large, "order too large",
                           [&] { a_.free_pages(head, max_order + 1 + static_cast<unsigned>(rng_.below(8))); });
            break;
        default:
            expect_mistake(ErrorKind::misaligned, "misaligned offset",
                           [&] { a_.free_offset(offset_of(l.pfn) + 1 + rng_.below(ps - 1), l.order); });
        }
    }

    void full_check() {
        const std::string inv = a_.check_invariants();
        if (!inv.empty()) fail("check_invariants: " + inv);
        const std::string out = kmem::test::check_from_outside(a_);
        if (!out.empty()) fail("outside check: " + out);
        const std::string ov = shadow_.check_no_overlap();
        if (!ov.empty()) fail("shadow: " + ov);
        const std::string al = kmem::test::check_shadow_allocated(a_, shadow_);
        if (!al.empty()) fail("shadow vs allocator: " + al);
        if (a_.nr_free_pages() + shadow_.used_pages() != a_.total_pages())
            fail("nr_free_pages " + std::to_string(a_.nr_free_pages()) + " + used " +
                 std::to_string(shadow_.used_pages()) + " != total " + std::to_string(a_.total_pages()));
    }

    A& a_;
    Xoshiro256 rng_;
    ShadowModel shadow_;
    std::vector<Live> live_;
    std::vector<std::pair<std::uint64_t, unsigned>> recently_freed_;
    Counters n_;
    std::uint64_t step_ = 0;
    std::uint64_t mistakes_ = 0;
};

} // namespace

BOOST_AUTO_TEST_SUITE(buddy_model)

BOOST_AUTO_TEST_CASE(one_million_operations_on_an_offset_region) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        // 3000 pages at an unaligned base: partial pages at both ends, small blocks at the edges.
        using A = kmem::BuddyAllocator<8, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError>;
        A a(std::uint64_t{3000} * 4096, std::uint64_t{37} * 4096 + 100);
        BOOST_TEST(a.total_pages() == 2999u);
        const auto t0 = std::chrono::steady_clock::now();
        ModelRun<A>(a, seed).run(1'000'000, 2000);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        BOOST_TEST_MESSAGE("1,000,000 operations in " << ms.count() << " ms");
    }
}

BOOST_AUTO_TEST_CASE(contents_survive_on_an_addressable_region) {
    const std::uint64_t seed = kmem::test::test_seed() ^ 0x5eed;
    BOOST_TEST_CONTEXT("KMEM_SEED^0x5eed=" << seed) {
        // Small pages (256 bytes) so that tagging every page stays cheap; region not aligned to the largest block.
        using A = kmem::BuddyAllocator<6, 256, kmem::MmapRegion, kmem::policy::ThrowOnError>;
        A a(std::size_t{1000} * 256);
        ModelRun<A>(a, seed).run(200'000, 2000);
    }
}

BOOST_AUTO_TEST_SUITE_END()
