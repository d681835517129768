/// @file
/// The model-based randomized runner for buddy allocators, with or without per-CPU page lists.
///
/// run_model(a, options) drives `a` through `options.ops` random operations and checks every result against a
/// model of what the allocator must do:
///
/// - the shadow (ShadowModel): every live block, so a block handed out twice is caught at once; every page of a
///   live block carries a tag (addressable regions) that must survive until the block is freed;
/// - the free lists: which order a plain allocation splits (nr_free() per order before and after), which block a
///   placed (range / top-down) allocation must return, how many pages every free gives back;
/// - with per-CPU page lists (an allocator whose `has_pcp` is true): the lists themselves.  A free pushes on the
///   hot end of its order's list; a refill's blocks sit behind the hot ones (known as a set, learnt by walking
///   the page flags right after the refill).  From this the model predicts which block an allocation served from
///   a list returns, how many blocks a refill takes, when a free spills and how many pages go back (round robin
///   over the orders), when an allocation needs the drain-and-retry and whether it then succeeds, what
///   drain_local_pages() / drain_all_pages() give back, and nr_pcp_pages() after every call.  The model knows one
///   set of lists, so a pcp run needs an allocator without a lock policy (pcp_sets() == 1);
/// - stats() (allocations, frees, failures) after every operation;
/// - mistakes (double free, wrong order, a page inside a block, order above MaxOrder, a misaligned offset, and
///   with the lists a free / put_page / get_page of a block parked on a list): each must be reported, of the
///   right kind (through reported_errors(), see expect_error.hpp), and change nothing.  The allocator's error
///   policy must be ThrowOnError or CallbackOnError.
///
/// Every `check_every` operations the whole state is checked from outside (check_invariants(), the page-flag walk
/// of buddy_checker.hpp, the shadow, the lists against the model); every `settle_every` operations and at the end
/// everything is freed (and the lists drained) and the allocator must be back at its initial buddyinfo.
///
/// The seed comes from test_seed() (KMEM_SEED repeats a run), XORed with `options.seed_salt`; a failure names
/// the step and the KMEM_SEED that repeats it.
///
/// @code
///   using A = kmem::BuddyAllocator<8, 4096, kmem::OffsetRegion, kmem::policy::ThrowOnError>;
///   A a(std::uint64_t{3000} * 4096, std::uint64_t{37} * 4096 + 100);
///   kmem::test::run_model(a, {.ops = 1'000'000});
/// @endcode
#pragma once

#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/page.hpp>

#include "buddy_checker.hpp"
#include "expect_error.hpp"
#include "random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iterator>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kmem::test {

/// How long and how run_model() runs.
struct ModelOptions {
    std::uint64_t ops = 100'000;          ///< Random operations.
    std::uint64_t check_every = 2000;     ///< A full check from outside every this many operations.
    std::uint64_t settle_every = 100'000; ///< Free everything (and drain) every this many operations.
    std::uint64_t seed_salt = 0;          ///< XORed into the seed, so that two runs in one test differ.
};

namespace detail {
// Orders kept on per-CPU lists (pcp_max_order + 1), or 0 without the lists.
template <class A>
constexpr unsigned pcp_lists_of() noexcept {
    if constexpr (has_pcp_lists<A>())
        return A::pcp_max_order + 1;
    else
        return 0;
}
} // namespace detail

/// The runner behind run_model(); see the file comment.
template <class A>
class ModelRunner {
public:
    static constexpr bool pcp = has_pcp_lists<A>();
    static constexpr unsigned max_order = A::max_order;
    static constexpr std::size_t page_size = A::page_size;
    static constexpr unsigned lists =
        detail::pcp_lists_of<A>(); // orders on the per-CPU lists; 0 without them
    static constexpr unsigned top_order =
        pcp && max_order > 5 ? 5 : max_order; // plain allocations ask 0..top

    ModelRunner(A& a, std::uint64_t seed)
        : a_(a), rng_(seed), first_(a.page_table().first_pfn()), end_(first_ + a.total_pages()) {
        if constexpr (pcp) {
            batch_ = a.pcp_batch();
            high_ = a.pcp_high();
        }
    }

    void run(const ModelOptions& opt) {
        a_.set_warning_stream(nullptr);
        if constexpr (pcp) {
            if (a_.pcp_sets() != 1)
                fail(
                    "the model knows one set of per-CPU lists; run it on an allocator without a lock policy");
        }
        const std::string initial = a_.buddyinfo();
        const auto initial_nr_free = nr_free_vector(a_);
        full_check();
        for (step_ = 0; step_ < opt.ops; ++step_) {
            if constexpr (pcp)
                step_with_lists();
            else
                step_without_lists();
            expect_counters();
            if ((step_ + 1) % opt.check_every == 0) full_check();
            if ((step_ + 1) % opt.settle_every ==
                0) { // everything back mid-run too: every block must merge back
                settle();
                if (a_.buddyinfo() != initial)
                    fail("after freeing everything, buddyinfo is " + a_.buddyinfo());
                full_check();
            }
        }
        full_check();
        settle();
        BOOST_TEST(shadow_.empty());
        BOOST_TEST(a_.buddyinfo() == initial);
        BOOST_TEST(nr_free_vector(a_) == initial_nr_free, boost::test_tools::per_element());
        BOOST_TEST(a_.nr_free_pages() == a_.total_pages());
        const auto s = a_.stats();
        BOOST_TEST(s.allocations == allocations_);
        BOOST_TEST(s.frees == frees_);
        BOOST_TEST(s.failures == failures_);
        full_check();
        if constexpr (pcp) {
            BOOST_TEST_MESSAGE("ops " << opt.ops << ": allocations " << allocations_ << " (from a list "
                                      << served_ << ", refills " << refills_ << ", drain-and-retry "
                                      << retries_ << ", past an allocation streak " << streak_zone_
                                      << "), frees " << frees_ << " (spills " << spills_
                                      << ", past a free streak " << bypassed_ << "), failures " << failures_
                                      << ", mistakes caught " << mistakes_);
            // every path of the lists was taken
            BOOST_TEST(served_ > 0u);
            BOOST_TEST(refills_ > 0u);
            BOOST_TEST(spills_ > 0u);
            BOOST_TEST(retries_ > 0u);
        } else {
            BOOST_TEST_MESSAGE("ops " << opt.ops << ": allocations " << allocations_ << ", frees " << frees_
                                      << ", failures " << failures_ << ", mistakes caught " << mistakes_);
        }
    }

private:
    enum class Kind { block, compound, exact, single };
    struct Live {
        std::uint64_t pfn;   // first page frame
        unsigned order;      // allocation order (0 for exact / split pages)
        std::uint64_t pages; // pages owned
        std::size_t bytes;   // exact allocations: bytes asked for
        Kind kind;
        int refs;          // references held (get_page adds one)
        std::uint64_t tag; // content tag (addressable regions)
    };
    using Scan = std::array<std::vector<std::uint64_t>, lists>;
    static constexpr std::uint64_t none = ~std::uint64_t{0};

    // How an allocation of some order is served, predicted before the call.
    enum class Way { hot, cold, refill, zone, retry };
    struct Prediction {
        Way way = Way::zone;
        std::uint64_t m = 0;           // blocks a refill takes
        std::vector<std::uint64_t> nf; // nr_free() per order before
        std::uint64_t free_before = 0;
        std::uint64_t pcp_before = 0;
        bool possible = false;
    };

    // ----- the operation mixes ---------------------------------------------------------------------------------
    void step_without_lists() {
        const std::uint64_t r = rng_.below(100);
        // Keep the arena between empty and full most of the time: when more than 3/4 is in use, free more.
        const bool crowded = shadow_.used_pages() * 4 > a_.total_pages() * 3;
        if (crowded && !live_.empty() && rng_.percent(40))
            free_one();
        else if (live_.empty() || r < 30)
            alloc_random();
        else if (r < 36)
            alloc_placed();
        else if (r < 41)
            alloc_compound();
        else if (r < 48)
            alloc_exact();
        else if (r < 84)
            free_one();
        else if (r < 88)
            split_one();
        else if (r < 93)
            take_reference();
        else if (r < 96)
            free_recently_freed_again();
        else
            mistake_on_live();
    }
    void step_with_lists() {
        // Alternate between a roomy phase and a crowded one, where allocations run into empty free lists.
        const unsigned fill = (step_ / 20'000) % 2 == 0 ? 60 : 97;
        const bool over = shadow_.used_pages() * 100 > a_.total_pages() * fill;
        const std::uint64_t r = rng_.below(1000);
        if (live_.empty())
            alloc_random();
        else if (r < 15)
            drain_local();
        else if (r < 19)
            set_high_and_batch();
        else if (r < 22)
            drain_all();
        else if (r < 50)
            mistake_on_parked();
        else if (r < 65)
            mistake_on_live();
        else if (r < 75)
            free_recently_freed_again();
        else if (r < 100)
            take_reference();
        else if (r < 110)
            split_one();
        else if (r < 120)
            alloc_placed();
        else if (r < 135)
            alloc_exact();
        else if (rng_.percent(over ? 25 : 55))
            alloc_random();
        else
            free_one();
    }

    // ----- helpers ---------------------------------------------------------------------------------------------
    void fail(const std::string& what) { BOOST_FAIL("step " << step_ << ": " << what); }
    Page* page(std::uint64_t pfn) const { return a_.pfn_to_page(pfn); }
    std::uint64_t offset_of(std::uint64_t pfn) const { return a_.page_offset(page(pfn)); }
    static std::uint64_t pages_of(unsigned order) { return std::uint64_t{1} << order; }
    // Flags that may sleep where the allocator allows it, atomic ones otherwise.
    static constexpr auto kernel_flags() noexcept {
        if constexpr (A::may_sleep)
            return gfp::kernel;
        else
            return gfp::atomic;
    }
    unsigned random_order() { // order k with probability ~ 2^-(k+1), capped at top_order
        const std::uint64_t bits = rng_() | (std::uint64_t{1} << 63);
        const auto k = static_cast<unsigned>(std::countr_zero(bits));
        return k > top_order ? static_cast<unsigned>(rng_.below(top_order + 1)) : k;
    }
    // Whether blocks of order k go on the per-CPU lists (never without them).
    static constexpr bool on_lists(unsigned k) noexcept {
        if constexpr (pcp)
            return k < lists;
        else
            return false;
    }
    std::uint64_t blocks_on(unsigned o) const { return hot_[o].size() + cold_[o].size(); }
    std::uint64_t want(unsigned order) const { return (batch_ >> order) > 2u ? batch_ >> order : 2u; }
    // Blocks of order k the free lists can give (each larger block splits into several).
    static std::uint64_t takeable(const std::vector<std::uint64_t>& nf, unsigned k) {
        std::uint64_t n = 0;
        for (unsigned j = k; j <= max_order; ++j) n += nf[j] << (j - k);
        return n;
    }
    static void simulate_take(std::vector<std::uint64_t>& nf, unsigned k) { // take(): lowest order, expand
        unsigned cur = k;
        while (nf[cur] == 0) ++cur;
        --nf[cur];
        for (unsigned j = k; j < cur; ++j) ++nf[j];
    }

    // The lowest (or highest) naturally aligned block of 2^order pages inside a free block and inside the page
    // window [lo, hi), by walking the page frames from outside; `none` when nothing fits.
    std::uint64_t expected_placed(unsigned order, std::uint64_t lo, std::uint64_t hi, bool top_down) const {
        const std::uint64_t size = pages_of(order);
        std::uint64_t best = none;
        for (std::uint64_t pfn = first_; pfn < end_;) {
            const Page* p = page(pfn);
            const std::uint64_t len = pages_of(p->order());
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

    // The parked blocks per order, in address order, by walking the page flags.
    Scan scan() {
        Scan out;
        if constexpr (pcp) {
            for (std::uint64_t pfn = first_; pfn < end_;) {
                const Page* p = page(pfn);
                if (p->test(PageFlag::pcp)) {
                    if (!on_lists(p->order())) fail("a parked block above pcp_max_order");
                    out[p->order()].push_back(pfn);
                }
                pfn += pages_of(p->order());
            }
        }
        return out;
    }
    // Whether an aligned run of 2^k pages that are all free or parked lies in the range: after a full drain
    // these merge into a block of order >= k, so a retried allocation of order k must succeed.
    bool aligned_run_free(unsigned k) const {
        std::vector<char> free(a_.total_pages(), 0);
        for (std::uint64_t pfn = first_; pfn < end_;) {
            const Page* p = page(pfn);
            const std::uint64_t len = pages_of(p->order());
            if (p->test(PageFlag::buddy) || p->test(PageFlag::pcp))
                std::fill_n(free.begin() + static_cast<std::ptrdiff_t>(pfn - first_), len, 1);
            pfn += len;
        }
        const std::uint64_t n = pages_of(k);
        for (std::uint64_t s = (first_ + n - 1) / n * n; s + n <= end_; s += n) {
            bool all = true;
            for (std::uint64_t q = s; q < s + n && all; ++q) all = free[q - first_] != 0;
            if (all) return true;
        }
        return false;
    }

    // free_pcppages_bulk() on the model: at least `pages` pages from the cold ends, round robin from next_spill.
    // A block popped from a refill's part of a list is one of a known set; the walk afterwards says which.
    std::uint64_t spill(std::uint64_t pages) {
        std::array<std::uint64_t, lists> unknown{};
        std::vector<std::uint64_t> known;
        std::uint64_t done = 0;
        while (done < pages && pcp_pages_ > 0) {
            unsigned o = next_spill_;
            while (blocks_on(o) - unknown[o] == 0) o = (o + 1) % lists;
            next_spill_ = (o + 1) % lists;
            if (cold_[o].size() > unknown[o]) {
                ++unknown[o];
            } else {
                known.push_back(hot_[o].back());
                hot_[o].pop_back();
            }
            pcp_pages_ -= pages_of(o);
            done += pages_of(o);
        }
        for (std::uint64_t pfn : known)
            if (page(pfn)->test(PageFlag::pcp))
                fail("pfn " + std::to_string(pfn) + " should have left its list");
        if (std::any_of(unknown.begin(), unknown.end(), [](std::uint64_t n) { return n != 0; })) {
            const Scan now = scan();
            for (unsigned o = 0; o < lists; ++o) {
                if (unknown[o] == 0) continue;
                std::vector<std::uint64_t> gone;
                for (std::uint64_t pfn : cold_[o])
                    if (!std::binary_search(now[o].begin(), now[o].end(), pfn)) gone.push_back(pfn);
                if (gone.size() != unknown[o])
                    fail(std::to_string(gone.size()) + " refilled blocks of order " + std::to_string(o) +
                         " left their list, expected " + std::to_string(unknown[o]));
                for (std::uint64_t pfn : gone) cold_[o].erase(pfn);
            }
        }
        return done;
    }
    void model_drain() {
        if constexpr (pcp) {
            spill(pcp_pages_);
            for (unsigned o = 0; o < lists; ++o)
                if (blocks_on(o) != 0) fail("the model's lists are not empty after a drain");
        }
    }

    void expect_counters() {
        const auto s = a_.stats();
        if constexpr (pcp) {
            if (a_.nr_pcp_pages() != pcp_pages_ || s.pcp_pages != pcp_pages_)
                fail("nr_pcp_pages() is " + std::to_string(a_.nr_pcp_pages()) + ", the model says " +
                     std::to_string(pcp_pages_));
        }
        if (s.allocations != allocations_ || s.frees != frees_ || s.failures != failures_)
            fail("stats(): allocations " + std::to_string(s.allocations) + "/" +
                 std::to_string(allocations_) + ", frees " + std::to_string(s.frees) + "/" +
                 std::to_string(frees_) + ", failures " + std::to_string(s.failures) + "/" +
                 std::to_string(failures_));
        if (s.free_pages != a_.nr_free_pages()) fail("stats().free_pages != nr_free_pages()");
    }

    // Records a new live block: in the shadow (no overlap allowed) and, on addressable regions, a tag in every page.
    void track(std::uint64_t pfn, unsigned order, std::uint64_t pages, std::size_t bytes, Kind kind) {
        if (!shadow_.insert(pfn, pages))
            fail("the allocator handed out pfn " + std::to_string(pfn) + " (+" + std::to_string(pages) +
                 ") which overlaps a live block");
        const std::uint64_t tag = rng_() | 1u;
        if constexpr (A::addressable) { // checked when the block is freed
            for (std::uint64_t k = 0; k < pages; ++k)
                std::memcpy(a_.page_address(page(pfn + k)), &tag, sizeof tag);
        }
        live_.push_back(Live{pfn, order, pages, bytes, kind, 1, tag});
    }

    // ----- allocations -----------------------------------------------------------------------------------------
    // How an allocation of order k (not placed) will be served: from a list (hot end, or a refill's block), by a
    // refill, from the free lists, or only after the drain-and-retry; and whether it can succeed at all.
    Prediction predict(unsigned k) {
        Prediction pr;
        pr.nf = nr_free_vector(a_);
        pr.free_before = a_.nr_free_pages();
        pr.pcp_before = pcp_pages_;
        const std::uint64_t can_take = takeable(pr.nf, k);
        if ((a_.largest_free_order() >= static_cast<int>(k)) != (can_take > 0))
            fail("largest_free_order() disagrees with nr_free()");
        if (on_lists(k)) {
            if constexpr (pcp) {
                free_count_ >>= 1;
                if (!hot_[k].empty())
                    pr.way = Way::hot;
                else if (!cold_[k].empty())
                    pr.way = Way::cold;
                else if (refill_streak_ >= A::pcp_refill_streak_limit) { // an allocation streak: no refill
                    pr.way = can_take > 0 ? Way::zone : Way::retry;
                    ++streak_zone_;
                } else {
                    ++refill_streak_;
                    pr.m = std::min(want(k), can_take);
                    pr.way = pr.m > 0 ? Way::refill : Way::retry;
                }
            }
        } else {
            pr.way = can_take > 0 ? Way::zone : Way::retry;
        }
        pr.possible = pr.way != Way::retry || (pcp && aligned_run_free(k));
        return pr;
    }
    // A predicted allocation failed: it must have been impossible; the drain (if anything was parked) happened.
    void settle_failure(const Prediction& pr, const std::string& what) {
        if (pr.possible) fail(what + " failed" + (pr.way == Way::retry ? " after the drain" : ""));
        ++failures_;
        if (pr.pcp_before != 0) model_drain(); // the drain happened, the retry failed
        if (a_.nr_free_pages() != pr.free_before + pr.pcp_before) fail("a failed " + what + " lost pages");
    }
    // A predicted allocation of order k returned p: check it against the prediction and update the model.
    // `returned` pages went straight back to the free lists (the tail of an exact allocation); the per-order
    // counts are predicted only when it is 0.
    void settle_success(const Prediction& pr, const Page* p, unsigned k, const std::string& what,
                        std::uint64_t returned) {
        if (!pr.possible) fail(what + " succeeded where nothing fits");
        ++allocations_;
        const std::uint64_t pfn = a_.page_to_pfn(p);
        if (pfn % pages_of(k) != 0) fail(what + " returned a misaligned block");
        std::vector<std::uint64_t> nf = pr.nf;
        switch (pr.way) {
        case Way::hot:
        case Way::cold:
        case Way::refill:
            if constexpr (pcp) settle_from_list(pr, pfn, k, what, returned);
            break;
        case Way::zone:
            if (a_.nr_free_pages() != pr.free_before - pages_of(k) + returned)
                fail(what + ": nr_free_pages off");
            simulate_take(nf, k);
            if (returned == 0 && nr_free_vector(a_) != nf)
                fail("after an " + what +
                     " the per-order free counts are not as predicted (which order splits)");
            break;
        case Way::retry:
            ++retries_;
            if (pr.pcp_before == 0) fail("a drain-and-retry with nothing parked");
            model_drain();
            if (a_.nr_free_pages() != pr.free_before + pr.pcp_before - pages_of(k) + returned)
                fail(what + " after a drain: nr_free_pages off");
            break;
        }
    }

    // The list part of settle_success(): served from the hot end, from a refill's blocks, or by a new refill.
    void settle_from_list(const Prediction& pr, std::uint64_t pfn, unsigned k, const std::string& what,
                          std::uint64_t returned) {
        std::vector<std::uint64_t> nf = pr.nf;
        if (pr.way == Way::refill) {
            ++refills_;
            if (a_.nr_free_pages() != pr.free_before - pr.m * pages_of(k) + returned)
                fail("a refill of order " + std::to_string(k) + " took " +
                     std::to_string(pr.free_before + returned - a_.nr_free_pages()) + " pages, expected " +
                     std::to_string(pr.m * pages_of(k)));
            for (std::uint64_t n = 0; n < pr.m; ++n) simulate_take(nf, k);
            if (returned == 0 && nr_free_vector(a_) != nf)
                fail("the free lists after a refill are not as predicted");
            pcp_pages_ += (pr.m - 1) * pages_of(k);
            const Scan now = scan();
            if (now[k].size() != pr.m - 1)
                fail("a refill left " + std::to_string(now[k].size()) + " blocks on the order-" +
                     std::to_string(k) + " list, expected " + std::to_string(pr.m - 1));
            cold_[k].insert(now[k].begin(), now[k].end());
            return;
        }
        if (pr.way == Way::hot) {
            if (pfn != hot_[k].front())
                fail(what + " returned pfn " + std::to_string(pfn) + ", the hot end of the list is " +
                     std::to_string(hot_[k].front()));
            hot_[k].pop_front();
        } else if (cold_[k].erase(pfn) == 0) {
            fail(what + " returned pfn " + std::to_string(pfn) + ", which was not on the list");
        }
        pcp_pages_ -= pages_of(k);
        ++served_;
        if (a_.nr_free_pages() != pr.free_before + returned || (returned == 0 && nr_free_vector(a_) != nf))
            fail(what + " from a list touched the free lists");
    }

    Page* call_alloc(unsigned k, bool comp, bool& zeroed) {
        zeroed = false;
        constexpr auto kernel = kernel_flags();
        switch (rng_.below(A::addressable ? 4 : 3)) {
        case 0:
            return comp ? a_.alloc_pages(kernel | gfp::comp | gfp::nowarn, k)
                        : a_.alloc_pages(kernel | gfp::nowarn, k);
        case 1:
            return a_.alloc_pages(comp ? kmem::gfp_t(gfp::atomic | gfp::comp | gfp::nowarn)
                                       : kmem::gfp_t(gfp::atomic | gfp::nowarn),
                                  k);
        case 2:
            if (!comp) {
                auto off = a_.alloc_offset(gfp::nowait | gfp::nowarn, k);
                return off ? a_.offset_to_page(*off) : nullptr;
            }
            return a_.alloc_pages(gfp::nowait | gfp::comp | gfp::nowarn, k);
        default:
            if constexpr (A::addressable) {
                zeroed = true;
                return comp ? a_.alloc_pages(kernel | gfp::zero | gfp::comp | gfp::nowarn, k)
                            : a_.alloc_pages(kernel | gfp::zero | gfp::nowarn, k);
            }
            return nullptr;
        }
    }

    // An allocation of order k (a compound page with `comp`), through a random one of the allocation calls.
    void alloc(unsigned k, bool comp) {
        const Prediction pr = predict(k);
        bool zeroed = false;
        Page* p = call_alloc(k, comp, zeroed);
        const std::string what =
            std::string(comp ? "compound " : "") + "order-" + std::to_string(k) + " allocation";
        if (p == nullptr) {
            settle_failure(pr, what);
            return;
        }
        settle_success(pr, p, k, what, 0);
        if (!p->test(PageFlag::block) || p->order() != k || p->refcount() != 1 ||
            p->test(PageFlag::head) != comp || p->test(PageFlag::pcp))
            fail("bad head descriptor after an " + what);
        if (comp) {
            const std::uint64_t t = 1 + rng_.below(pages_of(k) - 1);
            if (!p[t].test(PageFlag::tail) || a_.compound_head(p + t) != p || a_.compound_order(p) != k)
                fail("compound tail not marked");
        } else if (k > 0 && p[pages_of(k) - 1].flags() != 0) {
            fail("leftover flags inside a new block");
        }
        if constexpr (A::addressable) {
            auto* bytes = static_cast<unsigned char*>(a_.page_address(p));
            if (zeroed &&
                !std::all_of(bytes, bytes + (page_size << k), [](unsigned char c) { return c == 0; }))
                fail("a gfp::zero block is not zeroed");
        }
        track(a_.page_to_pfn(p), k, pages_of(k), 0, comp ? Kind::compound : Kind::block);
    }
    void alloc_random() {
        const unsigned k = random_order();
        alloc(k, pcp && k > 0 && rng_.percent(15)); // compound pages are of order 1 and above
    }
    void alloc_compound() { alloc(1 + static_cast<unsigned>(rng_.below(max_order)), true); }

    // alloc_pages() restricted to a random window and/or top-down: must return exactly the lowest (highest)
    // fitting block.  Placed allocations bypass the per-CPU lists; when only parked pages could serve one, the
    // model drains the lists first (drain_all_pages()), so that the result stays predictable.
    void alloc_placed() {
        const auto order = static_cast<unsigned>(rng_.below(max_order + 1));
        const std::uint64_t bytes = a_.region().size();
        // A random window, sometimes not page aligned, sometimes open-ended.
        std::uint64_t s = rng_.below(bytes), e = s + rng_.below(bytes - s + page_size) + 1;
        if (rng_.percent(20)) s = 0;
        if (rng_.percent(20)) e = ~std::uint64_t{0};
        if (rng_.percent(50)) s &= ~std::uint64_t{page_size - 1};
        const bool top_down = rng_.percent(50);
        // The default Placement (whole region, bottom-up) is a plain allocation: any fitting block, O(1) (and with
        // per-CPU lists it goes through them; then the model asks for the whole region explicitly instead).
        bool unrestricted = s == 0 && e == Placement{}.end && !top_down;
        if (pcp && unrestricted) {
            e = bytes;
            unrestricted = false;
        }
        const Placement where{.start = s, .end = e, .top_down = top_down};
        const std::uint64_t base = a_.region().base();
        const std::uint64_t lo = s >= bytes ? ~std::uint64_t{0} : (base + s + page_size - 1) / page_size;
        const std::uint64_t hi = (base + std::min(e, bytes)) / page_size;
        std::uint64_t want_pfn = lo < hi ? expected_placed(order, lo, hi, top_down) : none;
        if constexpr (pcp) {
            if (want_pfn == none && pcp_pages_ > 0) {
                drain_all();
                want_pfn = lo < hi ? expected_placed(order, lo, hi, top_down) : none;
            }
        }
        const auto counts_before = nr_free_vector(a_);
        const std::uint64_t free_before = a_.nr_free_pages();
        Page* p = rng_.percent(50) ? a_.alloc_pages(kernel_flags() | gfp::nowarn, order, where)
                                   : a_.alloc_pages(kmem::gfp_t(kernel_flags()), order, where);
        if (p == nullptr) {
            if (want_pfn != none) fail("placed allocation failed; pfn " + std::to_string(want_pfn) + " fits");
            if (a_.nr_free_pages() != free_before) fail("a failed placed allocation changed nr_free_pages");
            ++failures_;
            return;
        }
        ++allocations_;
        const std::uint64_t pfn = a_.page_to_pfn(p);
        if (want_pfn == none) fail("placed allocation succeeded where nothing fits");
        if (unrestricted) {
            std::vector<std::uint64_t> nf = counts_before;
            simulate_take(nf, order);
            if (nr_free_vector(a_) != nf)
                fail("after an unrestricted placed allocation the per-order counts are off");
        } else if (pfn != want_pfn) {
            fail(std::string(top_down ? "top-down" : "bottom-up") + " placed allocation returned pfn " +
                 std::to_string(pfn) + ", expected " + std::to_string(want_pfn) + " in the page window [" +
                 std::to_string(lo) + ", " + std::to_string(hi) + "), order " + std::to_string(order));
        }
        const std::uint64_t off = a_.page_offset(p);
        if (off < s || off + (page_size << order) > std::min(e, bytes))
            fail("placed block outside its window");
        if (a_.nr_free_pages() != free_before - pages_of(order))
            fail("nr_free_pages off after a placed allocation");
        track(pfn, order, pages_of(order), 0, Kind::block);
    }

    // alloc_pages_exact() / alloc_offset_exact(): ceil(bytes / page) order-0 pages at the start of a block of the
    // next power of two (which may come from a per-CPU list); the unused tail goes straight to the free lists.
    void alloc_exact() {
        const std::uint64_t max_bytes = std::uint64_t{page_size} << max_order;
        const auto bytes = static_cast<std::size_t>(
            rng_.percent(50) ? rng_.between(1, max_bytes) : rng_.between(1, pages_of(max_order)) * page_size);
        const std::uint64_t pages = (bytes + page_size - 1) / page_size;
        const unsigned k = kmem::get_order<page_size>(bytes);
        const Prediction pr = predict(k);
        std::optional<std::uint64_t> off;
        if constexpr (A::addressable) {
            void* p = a_.alloc_pages_exact(bytes, kernel_flags() | gfp::nowarn);
            if (p != nullptr) off = a_.page_offset(a_.virt_to_page(p));
        } else {
            off = a_.alloc_offset_exact(bytes, kernel_flags() | gfp::nowarn);
        }
        const std::string what = "exact allocation of " + std::to_string(bytes) + " bytes";
        if (!off) {
            settle_failure(pr, what);
            return;
        }
        const Page* p = a_.offset_to_page(*off);
        settle_success(pr, p, k, what, pages_of(k) - pages);
        for (const std::uint64_t q : {std::uint64_t{0}, pages - 1})
            if (!p[q].test(PageFlag::block) || p[q].order() != 0 || p[q].refcount() != 1)
                fail("page " + std::to_string(q) + " of an " + what + " is not an order-0 page");
        track(a_.page_to_pfn(p), 0, pages, bytes, Kind::exact);
    }

    // ----- frees -----------------------------------------------------------------------------------------------
    // Drops one reference on live_[i] (all of them with all_refs); the last one frees the block.
    void release(std::size_t i, bool all_refs) {
        do {
            Live& l = live_[i];
            Page* head = page(l.pfn);
            if constexpr (A::addressable) { // the tags must have survived: nobody else wrote there
                for (std::uint64_t q = 0; q < l.pages; ++q) {
                    std::uint64_t got = 0;
                    std::memcpy(&got, a_.page_address(head + q), sizeof got);
                    if (got != l.tag)
                        fail("pfn " + std::to_string(l.pfn + q) + " was overwritten while allocated");
                }
            }
            const std::uint64_t free_before = a_.nr_free_pages();
            const bool last = l.refs == 1;
            if (l.kind == Kind::exact) {
                if constexpr (A::addressable)
                    a_.free_pages_exact(a_.page_address(head), l.bytes);
                else
                    a_.free_offset_exact(offset_of(l.pfn), l.bytes);
            } else {
                const std::uint64_t r = rng_.below(4);
                if (r == 0)
                    a_.put_page(l.kind == Kind::compound ? head + rng_.below(l.pages) : head); // any page
                else if (r == 1)
                    a_.free_offset(offset_of(l.pfn), l.order);
                else if (r == 2 && A::addressable) {
                    if constexpr (A::addressable) a_.free_pages(a_.page_address(head), l.order);
                } else
                    a_.free_pages(head, l.order);
            }
            --l.refs;
            if (!last) {
                if (a_.nr_free_pages() != free_before) fail("dropping a reference freed pages");
                if (!head->test(PageFlag::block) || head->refcount() != l.refs) fail("refcount off");
                continue;
            }
            const Live gone = l;
            frees_ += gone.kind == Kind::exact ? gone.pages : 1; // an exact allocation frees page by page
            shadow_.erase(gone.pfn);
            recently_freed_.push_back({gone.pfn, gone.order});
            if (recently_freed_.size() > 16) recently_freed_.erase(recently_freed_.begin());
            live_[i] = live_.back();
            live_.pop_back();
            if (gone.kind != Kind::exact && on_lists(gone.order)) {
                if constexpr (pcp) park(gone.pfn, gone.order, head, free_before);
            } else if (a_.nr_free_pages() != free_before + gone.pages) {
                fail("a free returned " + std::to_string(a_.nr_free_pages() - free_before) +
                     " pages, expected " + std::to_string(gone.pages) + " straight to the free lists");
            }
            return;
        } while (all_refs);
    }
    // A block of order k freed onto its per-CPU list: the hot end; at `high`, a spill of at least `batch` pages.
    void park(std::uint64_t pfn, unsigned k, const Page* head, std::uint64_t free_before) {
        refill_streak_ = 0;
        if (free_count_ >= A::pcp_free_streak_factor * std::uint64_t{high_}) { // a long run of frees
            if (a_.nr_free_pages() != free_before + pages_of(k))
                fail("a free after a long run of frees should go straight to the free lists");
            if (head->test(PageFlag::pcp)) fail("a free after a long run of frees was parked");
            ++bypassed_;
            return;
        }
        free_count_ += pages_of(k);
        hot_[k].push_front(pfn);
        pcp_pages_ += pages_of(k);
        std::uint64_t spilled = 0;
        if (pcp_pages_ >= high_) {
            ++spills_;
            spilled = spill(batch_);
            if (spilled < std::min<std::uint64_t>(batch_, pcp_pages_ + spilled)) fail("spilled too little");
        }
        if (a_.nr_free_pages() != free_before + spilled)
            fail("a free gave " + std::to_string(a_.nr_free_pages() - free_before) +
                 " pages to the free lists, expected " + std::to_string(spilled));
        const bool parked = std::find(hot_[k].begin(), hot_[k].end(), pfn) != hot_[k].end();
        if (parked && (head->flags() != static_cast<std::uint16_t>(PageFlag::pcp) || head->refcount() != 0))
            fail("a freed block on the list lacks the pcp flag alone or has references");
        if (parked && k > 0 && head[pages_of(k) - 1].flags() != 0) fail("a parked block has dirty tails");
    }
    void free_one() { release(rng_.below(live_.size()), false); }

    void take_reference() {
        Live& l = live_[rng_.below(live_.size())];
        if (l.kind == Kind::exact) return; // exact allocations are freed page by page
        Page* head = page(l.pfn);
        a_.get_page(l.kind == Kind::compound && rng_.percent(50) ? head + rng_.below(l.pages) : head);
        ++l.refs;
        if (head->refcount() != l.refs) fail("refcount does not match the references taken");
    }

    void split_one() {
        const std::size_t i = rng_.below(live_.size());
        const Live l = live_[i];
        if (l.kind != Kind::block || l.order == 0 || l.refs != 1) return;
        const std::uint64_t free_before = a_.nr_free_pages();
        a_.split_page(page(l.pfn), l.order);
        if (a_.nr_free_pages() != free_before) fail("split_page changed nr_free_pages");
        shadow_.erase(l.pfn);
        live_[i] = live_.back();
        live_.pop_back();
        for (std::uint64_t q = 0; q < l.pages; ++q) {
            const Page* p = page(l.pfn + q);
            if (!p->test(PageFlag::block) || p->order() != 0 || p->refcount() != 1)
                fail("split page not order 0");
            shadow_.insert(l.pfn + q, 1);
            live_.push_back(Live{l.pfn + q, 0, 1, 0, Kind::single, 1, l.tag});
        }
    }

    // ----- per-CPU list operations -----------------------------------------------------------------------------
    void drain_local() {
        if constexpr (pcp) {
            const std::uint64_t free_before = a_.nr_free_pages();
            const std::uint64_t expect = pcp_pages_;
            const std::uint64_t got = a_.drain_local_pages();
            if (got != expect)
                fail("drain_local_pages() gave back " + std::to_string(got) + ", expected " +
                     std::to_string(expect));
            model_drain();
            if (a_.nr_free_pages() != free_before + expect) fail("drain_local_pages(): nr_free_pages off");
        }
    }
    void drain_all() {
        if constexpr (pcp) {
            const std::uint64_t free_before = a_.nr_free_pages();
            const std::uint64_t expect = pcp_pages_;
            const std::uint64_t got = a_.drain_all_pages();
            if (got != expect)
                fail("drain_all_pages() gave back " + std::to_string(got) + ", expected " +
                     std::to_string(expect));
            model_drain();
            if (a_.nr_free_pages() != free_before + expect) fail("drain_all_pages(): nr_free_pages off");
        }
    }

    void set_high_and_batch() {
        if constexpr (pcp) {
            const std::uint64_t free_before = a_.nr_free_pages();
            if (rng_.percent(20)) { // invalid: nothing happens
                const auto batch = static_cast<unsigned>(rng_.below(2) == 0 ? 0 : rng_.between(2, 40));
                const auto high = static_cast<unsigned>(batch == 0 ? rng_.below(50) : rng_.below(batch));
                bool thrown = false;
                try {
                    a_.set_pcp_high_and_batch(high, batch);
                } catch (const std::invalid_argument&) {
                    thrown = true;
                }
                if (!thrown)
                    fail("set_pcp_high_and_batch(" + std::to_string(high) + ", " + std::to_string(batch) +
                         ") accepted");
                if (a_.pcp_batch() != batch_ || a_.pcp_high() != high_ || a_.nr_free_pages() != free_before)
                    fail("a rejected set_pcp_high_and_batch changed something");
                return;
            }
            const auto batch = static_cast<unsigned>(rng_.between(1, 40));
            const auto high = static_cast<unsigned>(rng_.between(batch, std::uint64_t{batch} * 8));
            const std::uint64_t parked = pcp_pages_;
            a_.set_pcp_high_and_batch(high, batch);
            model_drain();
            batch_ = batch;
            high_ = high;
            if (a_.pcp_batch() != batch || a_.pcp_high() != high) fail("set_pcp_high_and_batch did not take");
            if (a_.nr_free_pages() != free_before + parked) fail("set_pcp_high_and_batch did not drain");
        }
    }

    // ----- mistakes --------------------------------------------------------------------------------------------
    // `f` must report exactly one mistake of `kind` (whose message contains `needle`) and change nothing.
    template <class F>
    void expect_mistake(ErrorKind kind, const char* what, F&& f, std::string_view needle = {}) {
        const std::string info = a_.buddyinfo();
        const std::uint64_t free_before = a_.nr_free_pages();
        const std::string problem = error_mismatch(reported_errors(a_, std::forward<F>(f)), kind, needle);
        if (!problem.empty()) fail(std::string(what) + ": " + problem);
        if (a_.buddyinfo() != info || a_.nr_free_pages() != free_before)
            fail(std::string(what) + " changed the allocator");
        expect_counters();
        ++mistakes_;
    }

    // A block freed a moment ago is freed again: a double free, wherever the block went (free lists, merged into a
    // larger free block, a per-CPU list), unless a live block covers it again.
    void free_recently_freed_again() {
        if (recently_freed_.empty()) return;
        const std::uint64_t pick = rng_.below(recently_freed_.size());
        const std::uint64_t pfn = recently_freed_[pick].first;
        const unsigned order = recently_freed_[pick].second;
        for (std::uint64_t k = 0; k < pages_of(order); ++k)
            if (shadow_.covers(pfn + k)) return;
        expect_mistake(ErrorKind::double_free, "double free", [&] { a_.free_pages(page(pfn), order); });
    }

    void mistake_on_live() {
        const Live& l = live_[rng_.below(live_.size())];
        Page* head = page(l.pfn);
        switch (rng_.below(4)) {
        case 0: {
            if (l.kind == Kind::exact) return;
            const auto other = static_cast<unsigned>((l.order + 1 + rng_.below(max_order)) % (max_order + 1));
            expect_mistake(ErrorKind::wrong_order, "wrong order", [&] { a_.free_pages(head, other); });
            break;
        }
        case 1:
            if (l.pages < 2 || l.kind == Kind::exact) return;
            expect_mistake(ErrorKind::not_block_start, "interior page",
                           [&] { a_.free_pages(head + 1 + rng_.below(l.pages - 1), 0); });
            break;
        case 2:
            expect_mistake(ErrorKind::order_too_large, "order too large", [&] {
                a_.free_pages(head, max_order + 1 + static_cast<unsigned>(rng_.below(8)));
            });
            break;
        default:
            expect_mistake(ErrorKind::misaligned, "misaligned offset", [&] {
                a_.free_offset(offset_of(l.pfn) + 1 + rng_.below(page_size - 1), l.order);
            });
        }
        if (head->refcount() != l.refs) fail("a mistake changed a live block's references");
    }

    void mistake_on_parked() {
        if constexpr (pcp) {
            if (pcp_pages_ == 0) return;
            auto o = static_cast<unsigned>(rng_.below(lists));
            while (blocks_on(o) == 0) o = (o + 1) % lists;
            const std::uint64_t n = rng_.below(blocks_on(o));
            const std::uint64_t pfn =
                n < hot_[o].size()
                    ? hot_[o][n]
                    : *std::next(cold_[o].begin(), static_cast<std::ptrdiff_t>(n - hot_[o].size()));
            Page* p = page(pfn);
            if (!p->test(PageFlag::pcp)) fail("pfn " + std::to_string(pfn) + " should be on a per-CPU list");
            const std::string_view on_list = "per-CPU page list";
            switch (rng_.below(6)) {
            case 0:
                expect_mistake(
                    ErrorKind::double_free, "double free of a parked block", [&] { a_.free_pages(p, o); },
                    on_list);
                break;
            case 1: {
                const auto other = static_cast<unsigned>((o + 1 + rng_.below(max_order)) % (max_order + 1));
                expect_mistake(
                    ErrorKind::double_free, "free of a parked block with another order",
                    [&] { a_.free_pages(p, other); }, on_list);
                break;
            }
            case 2: // put_page on a page whose count is already zero (the kernel's VM_BUG_ON_PAGE in put_page)
                expect_mistake(ErrorKind::bad_refcount, "put_page on a parked block",
                               [&] { a_.put_page(p); });
                break;
            case 3:
                if (o == 0) return;
                expect_mistake(
                    ErrorKind::double_free, "free of a page inside a parked block",
                    [&] { a_.free_pages(p + 1 + rng_.below(pages_of(o) - 1), 0); }, on_list);
                break;
            case 4:
                expect_mistake(ErrorKind::bad_refcount, "get_page on a parked block",
                               [&] { a_.get_page(p); });
                break;
            default:
                expect_mistake(
                    ErrorKind::double_free, "free_offset of a parked block",
                    [&] { a_.free_offset(a_.page_offset(p), o); }, on_list);
            }
            if (!p->test(PageFlag::pcp)) fail("a mistake took pfn " + std::to_string(pfn) + " off its list");
        }
    }

    // ----- whole-state checks ----------------------------------------------------------------------------------
    // Frees every live block (every reference) and drains the lists.
    void settle() {
        while (!live_.empty()) release(live_.size() - 1, true);
        if constexpr (pcp) {
            const std::uint64_t parked = pcp_pages_;
            if (a_.drain_all_pages() != parked)
                fail("drain_all_pages() did not give back what the model holds");
            model_drain();
        }
        expect_counters();
    }

    void full_check() {
        const std::string inv = a_.check_invariants();
        if (!inv.empty()) fail("check_invariants: " + inv);
        const OutsideView v = walk_from_outside(a_);
        if (!v.error.empty()) fail("outside check: " + v.error);
        if (v.pcp_pages != pcp_pages_)
            fail("the walk finds " + std::to_string(v.pcp_pages) + " parked pages");
        if (v.used_pages != shadow_.used_pages())
            fail("the walk finds " + std::to_string(v.used_pages) + " used pages");
        const std::string ov = shadow_.check_no_overlap();
        if (!ov.empty()) fail("shadow: " + ov);
        const std::string al = check_shadow_allocated(a_, shadow_);
        if (!al.empty()) fail("shadow vs allocator: " + al);
        if (a_.nr_free_pages() + pcp_pages_of(a_) + shadow_.used_pages() != a_.total_pages())
            fail("nr_free_pages " + std::to_string(a_.nr_free_pages()) + " + per-CPU " +
                 std::to_string(pcp_pages_of(a_)) + " + used " + std::to_string(shadow_.used_pages()) +
                 " != total " + std::to_string(a_.total_pages()));
        if constexpr (pcp) {
            const Scan now = scan();
            for (unsigned o = 0; o < lists; ++o) {
                std::vector<std::uint64_t> model(hot_[o].begin(), hot_[o].end());
                model.insert(model.end(), cold_[o].begin(), cold_[o].end());
                std::sort(model.begin(), model.end());
                if (model != now[o])
                    fail("the order-" + std::to_string(o) + " list is not what the model holds");
            }
        }
        expect_counters();
    }

    A& a_;
    Xoshiro256 rng_;
    const std::uint64_t first_, end_;
    ShadowModel shadow_;
    std::vector<Live> live_;
    std::vector<std::pair<std::uint64_t, unsigned>> recently_freed_; // (pfn, order), the last 16 frees
    unsigned batch_ = 0, high_ = 0;                                  // the lists' batch and high
    std::uint64_t free_count_ =
        0; // pages freed lately through the lists (grows per free, halves per allocation)
    unsigned refill_streak_ = 0; // refills since the last free through the lists
    std::uint64_t bypassed_ = 0; // frees that went straight to the free lists after a long run of frees
    std::uint64_t streak_zone_ =
        0; // allocations predicted from the free lists after a long allocation streak
    std::array<std::deque<std::uint64_t>, lists> hot_; // freed blocks, front = hot end, in list order
    std::array<std::set<std::uint64_t>, lists> cold_;  // one refill's blocks, behind the hot ones
    std::uint64_t pcp_pages_ = 0;
    unsigned next_spill_ = 0;
    std::uint64_t step_ = 0;
    std::uint64_t allocations_ = 0, frees_ = 0, failures_ = 0, mistakes_ = 0;
    std::uint64_t served_ = 0, refills_ = 0, spills_ = 0, retries_ = 0;
};

/// Runs ModelRunner on `a` (see the file comment) with the seed from test_seed() XORed with opt.seed_salt; every
/// failure names the KMEM_SEED that repeats the run.
template <class A>
void run_model(A& a, const ModelOptions& opt) {
    const std::uint64_t seed = test_seed();
    std::string repeat = "KMEM_SEED=" + std::to_string(seed) + " repeats this run";
    if (opt.seed_salt != 0) {
        char salt[64];
        std::snprintf(salt, sizeof salt, " (the model's seed is KMEM_SEED ^ %#llx)",
                      static_cast<unsigned long long>(opt.seed_salt));
        repeat += salt;
    }
    BOOST_TEST_CONTEXT(repeat) {
        const auto t0 = std::chrono::steady_clock::now();
        ModelRunner<A>(a, seed ^ opt.seed_salt).run(opt);
        const auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        BOOST_TEST_MESSAGE(opt.ops << " operations in " << ms.count() << " ms");
    }
}

} // namespace kmem::test
