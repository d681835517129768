// Unit tests of kmem::MemPool (mm/mempool.c) on one thread, and its model-based randomized test.
//
// - creation: max(1, min_nr) elements taken with the creation flags; a source that runs dry makes the
//   constructor throw std::bad_alloc and create() return nullptr, with every element given back.
// - mempool_alloc's order: the source without reclaim or I/O (and with NOMEMALLOC | NORETRY | NOWARN, without
//   NOFAIL), then the reserve (last in, first out), then the source with the caller's flags; a caller that may
//   sleep on a NoLock pool gets a report instead of a wait; the run-time gfp_t form behaves the same.
// - fault injection: with the source failing every call, exactly min_nr elements are served, then nullptr.
// - mempool_free: the reserve is refilled first (one element for min_nr 0), then the source gets elements.
// - mempool_resize, mempool_alloc_preallocated, mempool_destroy (outstanding elements reported, the reserve
//   back in the source), the mistakes (double free, resize to 0, bad run-time flags).
// - the ready-made sources: PagePool over a BuddyAllocator (offset-only region), PageAddressSource with
//   MemPoolResource (std::pmr, upstream for larger requests), FunctionSource (kernel-style functions).
// - the model: 200,000 random operations (alloc with several flag sets, run-time alloc, preallocated alloc,
//   free, resize, changes of the failure rate) checked call by call against a shadow reserve, outstanding
//   set and source count.  The seed is printed; KMEM_SEED=<n> repeats a run.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/mempool.hpp>
#include <kmem/pmr.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include "support/expect_error.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
namespace bits = kmem::gfp::bits;
using kmem::ErrorKind;
using kmem::test::expect_error;
using kmem::test::expect_no_error;

// An element source for tests: 64-byte heap blocks, a log of every call (flags and result), the blocks it has
// handed out, and fault injection: a failure rate in percent (seeded) and a budget of successes after which
// every call fails.
class TestSource {
public:
    struct Call {
        std::uint32_t flags; // the mask the pool passed
        void* result;        // what the source returned
    };

    explicit TestSource(std::uint64_t seed = 1) : rng_(seed) {}
    TestSource(TestSource&&) = default;
    TestSource& operator=(TestSource&&) = delete;
    ~TestSource() {
        for (void* p : live_) ::operator delete(p);
    }

    void* alloc(kmem::gfp_t flags) {
        void* p = nullptr;
        if (!fails_now()) {
            p = ::operator new(64);
            live_.insert(p);
        }
        calls_.push_back({flags.value(), p});
        return p;
    }
    void free(void* p) {
        if (live_.erase(p) == 1)
            ::operator delete(p);
        else
            ++foreign_frees_;
        freed_.push_back(p);
    }

    void set_failure_percent(unsigned percent) { percent_ = percent; }
    void fail_after(std::size_t successes) { budget_ = static_cast<long long>(successes); }
    void no_budget() { budget_ = -1; }

    std::size_t live() const { return live_.size(); }
    bool owns(void* p) const { return live_.count(p) == 1; }
    const std::vector<Call>& calls() const { return calls_; }
    const std::vector<void*>& freed() const { return freed_; }
    std::size_t foreign_frees() const { return foreign_frees_; }

private:
    bool fails_now() {
        if (budget_ == 0) return true;
        if (percent_ > 0 && rng_.percent(percent_)) return true;
        if (budget_ > 0) --budget_;
        return false;
    }

    kmem::test::Xoshiro256 rng_;
    unsigned percent_ = 0;
    long long budget_ = -1;
    std::set<void*> live_;
    std::vector<Call> calls_;
    std::vector<void*> freed_;
    std::size_t foreign_frees_ = 0;
};

// Pools over a borrowed TestSource, so that the test can look at it.
using Pool = kmem::MemPool<TestSource&, kmem::policy::NoLock, kmem::policy::CallbackOnError>;
using ThrowingPool = kmem::MemPool<TestSource&, kmem::policy::ThrowOnError>;

// What mempool_alloc passes to its source, written out from mm/mempool.c: every call adds NOMEMALLOC, NORETRY
// and NOWARN (and kmem drops NOFAIL); the first call also drops DIRECT_RECLAIM and IO.
constexpr std::uint32_t kAdded = bits::nomemalloc | bits::noretry | bits::nowarn;
constexpr std::uint32_t full_mask(std::uint32_t f) {
    return (f | kAdded) & ~bits::nofail;
}
constexpr std::uint32_t first_mask(std::uint32_t f) {
    return full_mask(f) & ~(bits::direct_reclaim | bits::io);
}
static_assert(first_mask(gfp::kernel.value) ==
              (bits::kswapd_reclaim | bits::fs | bits::nomemalloc | bits::noretry | bits::nowarn));
static_assert(full_mask(gfp::kernel.value) == (gfp::kernel.value | kAdded));
static_assert(first_mask(gfp::atomic.value) == full_mask(gfp::atomic.value));

std::vector<TestSource::Call> calls_since(const TestSource& src, std::size_t from) {
    return {src.calls().begin() + static_cast<std::ptrdiff_t>(from), src.calls().end()};
}

} // namespace

BOOST_AUTO_TEST_SUITE(mempool)

// ----- creation --------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(creation_takes_min_nr_elements_with_the_creation_flags) {
    TestSource src;
    Pool pool(4, src);
    BOOST_TEST(src.live() == 4u);
    BOOST_TEST(pool.min_nr() == 4u);
    BOOST_TEST(pool.curr_nr() == 4u);
    BOOST_TEST(pool.outstanding() == 0u);
    BOOST_REQUIRE(src.calls().size() == 4u);
    for (const auto& c : src.calls()) BOOST_TEST(c.flags == gfp::kernel.value); // passed as given

    TestSource atomic_src;
    Pool atomic_pool(3, atomic_src, gfp::atomic);
    BOOST_REQUIRE(atomic_src.calls().size() == 3u);
    for (const auto& c : atomic_src.calls()) BOOST_TEST(c.flags == gfp::atomic.value);
}

BOOST_AUTO_TEST_CASE(min_nr_zero_keeps_one_element) {
    // mempool_init_node() preallocates max(1, min_nr) so that a zero-minimum pool can wake its waiters.
    TestSource src;
    Pool pool(0, src);
    BOOST_TEST(pool.min_nr() == 0u);
    BOOST_TEST(pool.curr_nr() == 1u);
    BOOST_TEST(src.live() == 1u);
}

BOOST_AUTO_TEST_CASE(creation_fails_cleanly) {
    TestSource src;
    src.fail_after(2);
    BOOST_CHECK_THROW(Pool(4, src), std::bad_alloc);
    BOOST_TEST(src.live() == 0u);
    BOOST_TEST(src.freed().size() == 2u); // the two it got went back
    BOOST_TEST(src.foreign_frees() == 0u);

    TestSource src2;
    src2.fail_after(3);
    BOOST_TEST(!Pool::create(5, src2));
    BOOST_TEST(src2.live() == 0u);
    src2.no_budget();
    const auto pool = Pool::create(5, src2);
    BOOST_REQUIRE(pool);
    BOOST_TEST(pool->curr_nr() == 5u);
    BOOST_TEST(src2.live() == 5u);
}

BOOST_AUTO_TEST_CASE(owned_source) {
    kmem::MemPool<TestSource, kmem::policy::NoLock> pool(3, TestSource{});
    BOOST_TEST(pool.source().live() == 3u);
    void* p = pool.alloc(gfp::kernel);
    BOOST_TEST(pool.source().owns(p));
    pool.free(p);
    BOOST_TEST(pool.source().live() == 3u);
    pool.destroy();
    BOOST_TEST(pool.source().live() == 0u);
}

// ----- mempool_alloc ---------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(the_source_comes_first_without_reclaim) {
    TestSource src;
    Pool pool(2, src);
    const std::size_t before = src.calls().size();
    void* p = pool.alloc(gfp::kernel);
    const auto calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 1u);
    BOOST_TEST(calls[0].flags == first_mask(gfp::kernel.value));
    BOOST_TEST(calls[0].result == p);
    BOOST_TEST(pool.curr_nr() == 2u); // the reserve was not touched
    BOOST_TEST(pool.outstanding() == 1u);
    pool.free(p);
    BOOST_TEST(src.freed().back() == p); // the reserve is full: back to the source
}

BOOST_AUTO_TEST_CASE(nofail_is_not_passed_to_the_source) {
    TestSource src;
    Pool pool(1, src);
    const std::size_t before = src.calls().size();
    void* p = pool.alloc(gfp::kernel | gfp::nofail);
    const auto calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 1u);
    BOOST_TEST((calls[0].flags & bits::nofail) == 0u);
    BOOST_TEST(calls[0].flags == first_mask(gfp::kernel.value));
    pool.free(p);
}

BOOST_AUTO_TEST_CASE(the_reserve_serves_when_the_source_fails) {
    // Fault injection at 100 %: the pool still serves exactly min_nr elements, last in first out.
    TestSource src;
    Pool pool(4, src);
    std::vector<void*> reserve(src.calls().size());
    for (std::size_t k = 0; k < reserve.size(); ++k) reserve[k] = src.calls()[k].result;
    src.set_failure_percent(100);
    std::vector<void*> got;
    for (int k = 0; k < 4; ++k) {
        const std::size_t before = src.calls().size();
        void* p = pool.alloc(gfp::atomic);
        BOOST_TEST(calls_since(src, before).size() == 1u); // atomic: the first pass is the only pass
        BOOST_TEST(p == reserve[reserve.size() - 1 - static_cast<std::size_t>(k)]);
        got.push_back(p);
    }
    BOOST_TEST(pool.curr_nr() == 0u);
    const std::size_t before = src.calls().size();
    BOOST_TEST(pool.alloc(gfp::atomic) == nullptr);
    BOOST_TEST(pool.alloc(gfp::nowait) == nullptr);
    BOOST_TEST(calls_since(src, before).size() == 2u);
    const kmem::MemPoolStats s = pool.stats();
    BOOST_TEST(s.reserve_allocs == 4u);
    BOOST_TEST(s.failures == 2u);
    BOOST_TEST(s.outstanding == 4u);
    for (void* p : got) pool.free(p);
    BOOST_TEST(pool.curr_nr() == 4u);
    BOOST_TEST(src.freed().empty());
}

BOOST_AUTO_TEST_CASE(a_caller_that_may_sleep_retries_with_its_full_flags) {
    TestSource src;
    Pool pool(1, src);
    src.set_failure_percent(100);
    void* held = pool.alloc(gfp::kernel); // from the reserve after one failed first pass
    BOOST_TEST(held != nullptr);

    // The reserve is empty: first pass, then the full flags, then (NoLock: nobody can free) a report.
    std::size_t before = src.calls().size();
    void* p = &before;
    expect_error(
        pool, ErrorKind::nofail_failed, [&] { p = pool.alloc(gfp::kernel); }, "policy::NoLock");
    BOOST_TEST(p == nullptr);
    auto calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 2u);
    BOOST_TEST(calls[0].flags == first_mask(gfp::kernel.value));
    BOOST_TEST(calls[1].flags == full_mask(gfp::kernel.value));

    // gfp::noio (GFP_NOIO == __GFP_RECLAIM): the first pass keeps only kswapd reclaim.
    before = src.calls().size();
    expect_error(pool, ErrorKind::nofail_failed, [&] { p = pool.alloc(gfp::noio); });
    calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 2u);
    BOOST_TEST(calls[0].flags == (bits::kswapd_reclaim | kAdded));
    BOOST_TEST(calls[1].flags == (bits::reclaim | kAdded));

    // I/O without direct reclaim: two passes (the first drops __GFP_IO), no wait, no report.
    before = src.calls().size();
    expect_no_error(pool, [&] { p = pool.alloc(gfp::io | gfp::kswapd_reclaim); });
    BOOST_TEST(p == nullptr);
    calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 2u);
    BOOST_TEST(calls[0].flags == (bits::kswapd_reclaim | kAdded));
    BOOST_TEST(calls[1].flags == (bits::kswapd_reclaim | bits::io | kAdded));

    src.set_failure_percent(0);
    pool.free(held);
    BOOST_TEST(pool.curr_nr() == 1u);
}

BOOST_AUTO_TEST_CASE(the_second_pass_can_succeed) {
    // A source that fails only calls without direct reclaim: the reserve serves first; once it is empty, the
    // second pass (the caller's full flags) gets the element from the source.
    struct NeedsReclaim {
        std::vector<void*> live;
        std::vector<std::uint32_t> seen;
        void* alloc(kmem::gfp_t f) {
            seen.push_back(f.value());
            if (!f.may_sleep()) return nullptr;
            live.push_back(::operator new(16));
            return live.back();
        }
        void free(void* p) {
            live.erase(std::find(live.begin(), live.end(), p));
            ::operator delete(p);
        }
    };
    NeedsReclaim src;
    kmem::MemPool<NeedsReclaim&, kmem::policy::NoLock> pool(2, src);
    void* r1 = pool.alloc(gfp::kernel); // the reserve serves before the second pass
    void* r2 = pool.alloc(gfp::atomic);
    BOOST_TEST(pool.curr_nr() == 0u);
    BOOST_TEST(src.seen.size() == 4u); // creation's two, one first pass each
    src.seen.clear();
    void* p = pool.alloc(gfp::kernel);
    BOOST_REQUIRE(src.seen.size() == 2u);
    BOOST_TEST(src.seen[0] == first_mask(gfp::kernel.value));
    BOOST_TEST(src.seen[1] == full_mask(gfp::kernel.value));
    BOOST_TEST(p == src.live.back());
    BOOST_TEST(pool.curr_nr() == 0u);
    pool.free(p); // refills the reserve
    pool.free(r1);
    pool.free(r2); // the reserve is full: back to the source
    BOOST_TEST(pool.curr_nr() == 2u);
    BOOST_TEST(src.live.size() == 2u);
    // Without direct reclaim the reserve serves.
    void* q = pool.alloc(gfp::atomic);
    BOOST_TEST(pool.curr_nr() == 1u);
    pool.free(q);
    BOOST_TEST(pool.curr_nr() == 2u);
}

BOOST_AUTO_TEST_CASE(run_time_flags_behave_like_compile_time_flags) {
    TestSource src;
    Pool pool(1, src);
    std::size_t before = src.calls().size();
    void* p = pool.alloc(kmem::gfp_t(gfp::kernel));
    auto calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 1u);
    BOOST_TEST(calls[0].flags == first_mask(gfp::kernel.value));
    pool.free(p);

    src.set_failure_percent(100);
    before = src.calls().size();
    p = pool.alloc(kmem::gfp_t(gfp::nofs)); // from the reserve
    BOOST_TEST(p != nullptr);
    BOOST_TEST(calls_since(src, before).size() == 1u);
    expect_error(pool, ErrorKind::nofail_failed,
                 [&] { BOOST_TEST(pool.alloc(kmem::gfp_t(gfp::nofs)) == nullptr); });
    pool.free(p);
}

BOOST_AUTO_TEST_CASE(bad_run_time_flags_are_reported) {
    TestSource src;
    Pool pool(1, src);
    const std::size_t before = src.calls().size();
    void* p = &pool;
    expect_error(
        pool, ErrorKind::invalid_gfp, [&] { p = pool.alloc(kmem::gfp_t(gfp::kernel | gfp::zero)); },
        "gfp::zero");
    BOOST_TEST(p == nullptr);
    expect_error(
        pool, ErrorKind::invalid_gfp,
        [&] { p = pool.alloc(kmem::gfp_t::from_bits(bits::dma | bits::highmem)); }, "zone modifier");
    BOOST_TEST(p == nullptr);
    expect_error(pool, ErrorKind::invalid_gfp, [&] { p = pool.alloc(kmem::gfp_t::from_bits(1u << 30)); });
    BOOST_TEST(src.calls().size() == before); // the source was never asked
    BOOST_TEST(pool.outstanding() == 0u);
}

BOOST_AUTO_TEST_CASE(call_site_context) {
    TestSource src;
    Pool pool(1, src);
    void* p = pool.alloc(kmem::atomic_context, gfp::atomic);
    void* q = pool.alloc(kmem::process_context, gfp::kernel);
    BOOST_TEST(p != nullptr);
    BOOST_TEST(q != nullptr);
    pool.free(p);
    pool.free(q);
}

BOOST_AUTO_TEST_CASE(alloc_preallocated_only_takes_the_reserve) {
    TestSource src;
    Pool pool(2, src);
    const std::size_t before = src.calls().size();
    void* a = pool.alloc_preallocated();
    void* b = pool.alloc_preallocated();
    BOOST_TEST(pool.alloc_preallocated() == nullptr);
    BOOST_TEST(src.calls().size() == before);
    BOOST_TEST(a != nullptr);
    BOOST_TEST(b != nullptr);
    BOOST_TEST(a != b);
    BOOST_TEST(pool.outstanding() == 2u);
    pool.free(a);
    pool.free(b);
    BOOST_TEST(pool.curr_nr() == 2u);
}

// ----- mempool_free ----------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(free_refills_the_reserve_first) {
    TestSource src;
    Pool pool(3, src);
    src.set_failure_percent(100);
    std::vector<void*> out;
    for (int k = 0; k < 3; ++k) out.push_back(pool.alloc(gfp::atomic));
    src.set_failure_percent(0);
    for (int k = 0; k < 2; ++k) out.push_back(pool.alloc(gfp::atomic)); // from the source
    BOOST_TEST(pool.curr_nr() == 0u);
    BOOST_TEST(pool.outstanding() == 5u);
    BOOST_TEST(src.live() == 5u);
    // Free the source's two first: they refill the reserve, whoever they came from.
    pool.free(out[4]);
    pool.free(out[3]);
    BOOST_TEST(pool.curr_nr() == 2u);
    BOOST_TEST(src.freed().empty());
    pool.free(out[0]);
    BOOST_TEST(pool.curr_nr() == 3u);
    BOOST_TEST(src.freed().empty());
    pool.free(out[1]); // reserve full
    pool.free(out[2]);
    BOOST_TEST(pool.curr_nr() == 3u);
    BOOST_REQUIRE(src.freed().size() == 2u);
    BOOST_TEST(src.freed()[0] == out[1]);
    BOOST_TEST(src.freed()[1] == out[2]);
    BOOST_TEST(src.live() == 3u);
    BOOST_TEST(pool.stats().reserve_frees == 3u);
    pool.free(nullptr); // ignored, as in the kernel
    BOOST_TEST(pool.outstanding() == 0u);
}

BOOST_AUTO_TEST_CASE(a_zero_minimum_pool_keeps_one_freed_element) {
    TestSource src;
    Pool pool(0, src);
    src.set_failure_percent(100);
    void* only = pool.alloc(gfp::atomic);
    BOOST_TEST(only != nullptr);
    BOOST_TEST(pool.curr_nr() == 0u);
    BOOST_TEST(pool.alloc(gfp::atomic) == nullptr);
    pool.free(only); // curr_nr 0 on a zero-minimum pool: kept
    BOOST_TEST(pool.curr_nr() == 1u);
    BOOST_TEST(src.freed().empty());
    src.set_failure_percent(0);
    void* a = pool.alloc(gfp::atomic);
    pool.free(a); // the reserve already holds one: to the source
    BOOST_TEST(src.freed().back() == a);
    BOOST_TEST(pool.curr_nr() == 1u);
}

BOOST_AUTO_TEST_CASE(a_free_with_nothing_out_is_a_double_free) {
    // NoLock: the count is exact at every free, so the mistake is caught at once and changes nothing.
    TestSource src;
    Pool pool(2, src);
    void* p = pool.alloc(gfp::kernel);
    pool.free(p);
    int stranger = 0;
    expect_error(
        pool, ErrorKind::double_free, [&] { pool.free(&stranger); }, "double free");
    BOOST_TEST(src.foreign_frees() == 0u); // left alone
    BOOST_TEST(pool.curr_nr() == 2u);
    BOOST_TEST(pool.outstanding() == 0u);
}

BOOST_AUTO_TEST_CASE(a_shared_pool_finds_extra_frees_at_destroy) {
    // A shared pool counts per CPU, with no check on the free path (as in the kernel): the extra free reaches
    // the source, and destroy() reports that more elements came back than went out.
    using SharedPool = kmem::MemPool<TestSource&, kmem::policy::MutexLock, kmem::policy::CallbackOnError>;
    TestSource src;
    SharedPool pool(2, src);
    void* p = pool.alloc(gfp::kernel);
    BOOST_TEST(pool.outstanding() == 1u);
    pool.free(p);
    expect_no_error(pool, [&] { pool.free(p); });
    BOOST_TEST(src.foreign_frees() == 1u);
    BOOST_TEST(pool.outstanding() == 0u);
    expect_error(
        pool, ErrorKind::double_free, [&] { pool.destroy(); }, "1 more element was freed");
    BOOST_TEST(src.live() == 0u);
}

// ----- mempool_resize --------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(resize_grows_and_shrinks) {
    TestSource src;
    Pool pool(2, src);
    std::size_t before = src.calls().size();
    BOOST_TEST(pool.resize(5));
    auto calls = calls_since(src, before);
    BOOST_REQUIRE(calls.size() == 3u);
    for (const auto& c : calls) BOOST_TEST(c.flags == gfp::kernel.value); // mempool_resize uses GFP_KERNEL
    BOOST_TEST(pool.min_nr() == 5u);
    BOOST_TEST(pool.curr_nr() == 5u);

    // Shrinking frees the top of the reserve.
    std::vector<void*> reserve;
    for (const auto& c : src.calls()) reserve.push_back(c.result);
    BOOST_TEST(pool.resize(2));
    BOOST_TEST(pool.min_nr() == 2u);
    BOOST_TEST(pool.curr_nr() == 2u);
    BOOST_REQUIRE(src.freed().size() == 3u);
    BOOST_TEST(src.freed()[0] == reserve[4]);
    BOOST_TEST(src.freed()[1] == reserve[3]);
    BOOST_TEST(src.freed()[2] == reserve[2]);
    BOOST_TEST(src.live() == 2u);

    // Growing when the source runs dry: min_nr changes at once, later frees fill the reserve.
    src.fail_after(1);
    BOOST_TEST(pool.resize(6, gfp::atomic));
    BOOST_TEST(src.calls().back().flags == gfp::atomic.value);
    BOOST_TEST(pool.min_nr() == 6u);
    BOOST_TEST(pool.curr_nr() == 3u);
    src.no_budget();
    std::vector<void*> out;
    for (int k = 0; k < 5; ++k) out.push_back(pool.alloc(gfp::atomic)); // all from the source
    BOOST_TEST(pool.curr_nr() == 3u);
    for (void* p : out) pool.free(p);
    BOOST_TEST(pool.curr_nr() == 6u); // three refilled the reserve
    BOOST_TEST(src.live() == 6u);
}

BOOST_AUTO_TEST_CASE(resize_to_zero_is_reported) {
    TestSource src;
    Pool pool(3, src);
    bool ok = true;
    expect_error(
        pool, ErrorKind::bad_parameter, [&] { ok = pool.resize(0); }, "min_nr");
    BOOST_TEST(!ok);
    BOOST_TEST(pool.min_nr() == 3u);
    BOOST_TEST(pool.curr_nr() == 3u);

    ThrowingPool throwing(2, src);
    BOOST_CHECK_THROW(throwing.resize(0), kmem::bad_usage);
    BOOST_TEST(throwing.min_nr() == 2u);
}

// ----- mempool_destroy -------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(destroy_returns_the_reserve_and_reports_what_is_out) {
    TestSource src;
    Pool pool(3, src);
    void* a = pool.alloc(gfp::kernel);
    void* b = pool.alloc(gfp::kernel);
    BOOST_TEST(src.live() == 5u);
    expect_error(
        pool, ErrorKind::objects_remain, [&] { pool.destroy(); }, "2 elements");
    BOOST_TEST(pool.curr_nr() == 0u);
    BOOST_TEST(src.live() == 2u); // exactly the outstanding ones
    // After destroy: frees go to the source, and an allocation the source cannot serve fails at once.
    pool.free(a);
    pool.free(b);
    BOOST_TEST(src.live() == 0u);
    BOOST_TEST(pool.curr_nr() == 0u);
    src.set_failure_percent(100);
    expect_no_error(pool, [&] { BOOST_TEST(pool.alloc(gfp::kernel) == nullptr); });
    src.set_failure_percent(0);
    void* c = pool.alloc(gfp::kernel);
    expect_no_error(pool, [&] { pool.destroy(); }); // a second destroy() reports nothing again
    BOOST_TEST(!pool.resize(4));                    // a destroyed pool is not refilled
    BOOST_TEST(pool.curr_nr() == 0u);
    pool.free(c);
    BOOST_TEST(src.live() == 0u);
}

BOOST_AUTO_TEST_CASE(nothing_leaks_at_destroy) {
    TestSource src;
    {
        Pool pool(8, src);
        std::vector<void*> out;
        for (int k = 0; k < 20; ++k) out.push_back(pool.alloc(gfp::kernel));
        for (void* p : out) pool.free(p);
        expect_no_error(pool, [&] { pool.destroy(); });
    }
    BOOST_TEST(src.live() == 0u);
    BOOST_TEST(src.foreign_frees() == 0u);
}

BOOST_AUTO_TEST_CASE(the_destructor_reports_what_is_out) {
    TestSource src;
    std::vector<kmem::UsageError> reports;
    void* leaked = nullptr;
    {
        Pool pool(2, src);
        pool.error_policy().set_callback([&](const kmem::UsageError& e) { reports.push_back(e); });
        leaked = pool.alloc(gfp::kernel);
    }
    BOOST_REQUIRE(reports.size() == 1u);
    BOOST_TEST((reports[0].kind == ErrorKind::objects_remain));
    BOOST_TEST(reports[0].message.find("1 element ") != std::string::npos);
    BOOST_TEST(src.live() == 1u);
    BOOST_TEST(src.owns(leaked));
    {
        // ThrowOnError: a destructor cannot throw, so the report is printed and the reserve still returned.
        ThrowingPool pool(2, src);
        leaked = pool.alloc(gfp::kernel);
    }
    BOOST_TEST(src.live() == 2u);
}

// ----- ready-made sources ----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(page_pool_over_a_buddy_allocator) {
    // 64 pages of device memory, order-1 elements: 8 in reserve, then 24 more from the buddy, then nothing.
    using Buddy = kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::MutexLock,
                                       kmem::policy::ThrowOnError>;
    Buddy buddy(std::uint64_t{64} * 4096);
    {
        kmem::PagePool<Buddy, kmem::policy::ThrowOnError> pool(8, {buddy, 1});
        BOOST_TEST(buddy.nr_free_pages() == 64u - 16u);
        BOOST_TEST(pool.source().order() == 1u);
        std::set<kmem::Page*> out;
        for (;;) {
            kmem::Page* p = pool.alloc(gfp::atomic);
            if (p == nullptr) break;
            BOOST_TEST(out.insert(p).second);
            BOOST_TEST(buddy.page_offset(p) % (2 * 4096) == 0u);
        }
        BOOST_TEST(out.size() == 32u);
        BOOST_TEST(buddy.nr_free_pages() == 0u);
        BOOST_TEST(pool.stats().reserve_allocs == 8u);
        for (kmem::Page* p : out) pool.free(p);
        BOOST_TEST(pool.curr_nr() == 8u);
        BOOST_TEST(buddy.nr_free_pages() == 64u - 16u);
        BOOST_TEST(buddy.check_invariants().empty());
    }
    BOOST_TEST(buddy.nr_free_pages() == 64u); // the destructor gave the reserve back
    BOOST_TEST(buddy.check_invariants().empty());
}

// mempool_create_slab_pool: a KmemCache is a source as it is.  The reserve keeps serving when the cache's page
// allocator is exhausted, and every object goes back to the cache.
BOOST_AUTO_TEST_CASE(slab_pool_serves_from_its_reserve_when_the_pages_run_out) {
    using Buddy = kmem::BuddyAllocator<4, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
    Buddy buddy(kmem::MmapRegion(16 * 4096));
    kmem::KmemCache<Buddy, kmem::policy::MutexLock> cache(buddy, "bio", 1024);
    {
        kmem::MemPool<kmem::KmemCache<Buddy, kmem::policy::MutexLock>&> pool(4, cache);
        BOOST_TEST(pool.curr_nr() == 4u);
        std::vector<void*> out;
        while (void* p = pool.alloc(gfp::atomic)) {
            std::memset(p, 0x33, 1024);
            out.push_back(p);
        }
        BOOST_TEST(buddy.nr_free_pages() < (1u << cache.order()), "no room for another slab");
        BOOST_TEST(pool.stats().reserve_allocs == 4u, "and the last four came from the reserve");
        BOOST_TEST(cache.validate() == "");
        for (void* p : out) pool.free(p);
        BOOST_TEST(pool.curr_nr() == 4u);
    }
    cache.shrink(); // objects freed into the per-CPU arrays go back to their slabs
    BOOST_TEST(cache.inuse_objects() == 0u);
    BOOST_TEST(cache.destroy());
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

// mempool_create_kmalloc_pool: elements of one size from kmalloc.
BOOST_AUTO_TEST_CASE(kmalloc_pool) {
    using Buddy = kmem::BuddyAllocator<6, 4096, kmem::MmapRegion>;
    Buddy buddy(kmem::MmapRegion(1 << 20));
    kmem::Kmalloc<Buddy> km(buddy);
    {
        kmem::KmallocPool<kmem::Kmalloc<Buddy>, kmem::policy::NoLock> pool(3, {km, 200});
        BOOST_TEST(pool.curr_nr() == 3u);
        void* p = pool.alloc(gfp::kernel);
        BOOST_REQUIRE(p != nullptr);
        BOOST_TEST(km.ksize(p) == 256u, "200 bytes come from kmalloc-256");
        pool.free(p);
        BOOST_TEST(km.cache_for(200).stats().active_objs == 3u, "three in the reserve");
    }
    km.shrink();
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_CASE(page_pool_order_above_max_is_reported) {
    using Buddy = kmem::BuddyAllocator<4, 4096, kmem::OffsetRegion, kmem::policy::CallbackOnError>;
    Buddy buddy(std::uint64_t{64} * 4096);
    buddy.set_warning_stream(nullptr); // creation asks with GFP_KERNEL, so the buddy would warn
    expect_error(
        buddy, ErrorKind::order_too_large, [&] { kmem::PageSource<Buddy> source(buddy, 5); }, "MaxOrder 4");
    expect_error(buddy, ErrorKind::order_too_large, [&] {
        BOOST_TEST(!(kmem::PagePool<Buddy>::create(1, {buddy, 9})));
    }); // and no pool
}

BOOST_AUTO_TEST_CASE(pmr_resource_over_a_page_address_pool) {
    using Buddy = kmem::BuddyAllocator<6, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
    Buddy buddy(kmem::MmapRegion(std::size_t{64} * 4096));
    using Pool4k = kmem::MemPool<kmem::PageAddressSource<Buddy>, kmem::policy::CallbackOnError>;
    Pool4k pool(4, {buddy, 0});
    kmem::MemPoolResource resource(pool, std::pmr::new_delete_resource());
    BOOST_TEST(resource.block_size() == 4096u);
    BOOST_TEST(resource.block_align() == 4096u);

    void* small = resource.allocate(100, 8);
    BOOST_TEST(buddy.virt_to_page(small) != nullptr); // from the pool, inside the region
    void* page = resource.allocate(4096, 4096);
    BOOST_TEST(buddy.virt_to_page(page) != nullptr);
    void* big = resource.allocate(8192, 8); // too large: upstream
    BOOST_TEST(buddy.virt_to_page(big) == nullptr);
    void* aligned = resource.allocate(64, 8192); // too aligned: upstream
    BOOST_TEST(buddy.virt_to_page(aligned) == nullptr);
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(aligned) % 8192 == 0u);
    BOOST_TEST(pool.outstanding() == 2u);
    resource.deallocate(big, 8192, 8);
    resource.deallocate(aligned, 64, 8192);
    resource.deallocate(page, 4096, 4096);
    resource.deallocate(small, 100, 8);
    BOOST_TEST(pool.outstanding() == 0u);

    // A container on top.
    {
        std::pmr::vector<char> v(&resource);
        v.assign(3000, 'k'); // one element
        BOOST_TEST(pool.outstanding() == 1u);
        v.resize(100'000); // upstream
    }
    BOOST_TEST(pool.outstanding() == 0u);

    BOOST_TEST(resource.is_equal(resource));
    kmem::MemPoolResource other(pool, std::pmr::new_delete_resource());
    BOOST_TEST(!resource.is_equal(other));

    // No upstream: larger requests throw; an alignment that is not a power of two is reported.
    kmem::MemPoolResource<Pool4k> strict(pool);
    BOOST_CHECK_THROW(static_cast<void>(strict.allocate(8192)), std::bad_alloc);
    std::size_t three = 3; // not a constant expression: clang warns about a literal non-power-of-two
    expect_error(pool, ErrorKind::bad_alignment,
                 [&] { BOOST_CHECK_THROW(static_cast<void>(strict.allocate(64, three)), std::bad_alloc); });
    int dummy = 0;
    expect_error(
        pool, ErrorKind::bad_parameter, [&] { strict.deallocate(&dummy, 8192, 8); }, "upstream");
    expect_error(pool, ErrorKind::bad_alignment, [&] { strict.deallocate(&dummy, 64, 12); });
    BOOST_TEST(pool.outstanding() == 0u);
}

BOOST_AUTO_TEST_CASE(pmr_resource_that_may_not_sleep_throws_when_exhausted) {
    using Buddy = kmem::BuddyAllocator<2, 4096, kmem::MmapRegion, kmem::policy::MutexLock>;
    Buddy buddy(kmem::MmapRegion(std::size_t{4} * 4096));
    kmem::MemPool<kmem::PageAddressSource<Buddy>> pool(1, {buddy, 0});
    kmem::MemPoolResource<decltype(pool), gfp::type<gfp::atomic>> resource(pool);
    std::vector<void*> got;
    for (int k = 0; k < 4; ++k)
        got.push_back(resource.allocate(4096, 4096)); // 3 from the buddy + the reserve
    BOOST_TEST(buddy.nr_free_pages() == 0u);
    BOOST_CHECK_THROW(static_cast<void>(resource.allocate(4096, 4096)), std::bad_alloc);
    for (void* p : got) resource.deallocate(p, 4096, 4096);
    BOOST_TEST(buddy.nr_free_pages() == 3u);
}

BOOST_AUTO_TEST_CASE(function_source_as_mempool_create_takes_it) {
    struct Data {
        int allocs = 0;
        int frees = 0;
        std::uint32_t last_flags = 0;
    } data;
    auto alloc_fn = [](kmem::gfp_t flags, void* pool_data) -> void* {
        auto* d = static_cast<Data*>(pool_data);
        ++d->allocs;
        d->last_flags = flags.value();
        return ::operator new(32);
    };
    auto free_fn = [](void* element, void* pool_data) {
        ++static_cast<Data*>(pool_data)->frees;
        ::operator delete(element);
    };
    {
        kmem::MemPool<kmem::FunctionSource, kmem::policy::NoLock> pool(2, {alloc_fn, free_fn, &data});
        BOOST_TEST(data.allocs == 2);
        BOOST_TEST(pool.source().pool_data() == &data);
        void* p = pool.alloc(gfp::nofs);
        BOOST_TEST(data.last_flags == first_mask(gfp::nofs.value));
        pool.free(p);
        BOOST_TEST(data.frees == 1);
    }
    BOOST_TEST(data.frees == 3);
}

// ----- the model -------------------------------------------------------------------------------------------

namespace {

// One random run against a shadow: the reserve as a stack of element pointers (the pool's reserve is last in,
// first out), the elements out, min_nr, and the source's log.  Every call the pool makes to the source is
// checked (its flags and how the pool used the result).
class MempoolModel {
public:
    explicit MempoolModel(std::uint64_t seed) : rng_(seed), src_(seed ^ 0x9e3779b97f4a7c15ull) {}

    void run(int ops) {
        Pool pool(min_nr_, src_);
        for (std::size_t k = 0; k < src_.calls().size(); ++k) reserve_.push_back(src_.calls()[k].result);
        check(pool, "creation");
        for (int i = 0; i < ops; ++i) {
            const std::uint64_t dice = rng_.below(100);
            if (dice < 30)
                typed_alloc(pool);
            else if (dice < 38)
                runtime_alloc(pool);
            else if (dice < 42)
                preallocated(pool);
            else if (dice < 82)
                free_one(pool);
            else if (dice < 87)
                resize(pool);
            else if (dice < 90)
                src_.set_failure_percent(static_cast<unsigned>(rng_.below(5) * 25)); // 0, 25, 50, 75, 100 %
            else
                free_one(pool);
            check(pool, "operation " + std::to_string(i));
            if (failed_) return;
        }
        while (!out_.empty()) free_at(pool, 0);
        check(pool, "freeing everything");
        expect_no_error(pool, [&] { pool.destroy(); });
        BOOST_TEST(src_.live() == 0u);
        BOOST_TEST(src_.foreign_frees() == 0u);
    }

private:
    static std::size_t target(std::size_t min_nr) { return min_nr > 0 ? min_nr : 1; }

    void fail(const std::string& what) {
        if (!failed_) BOOST_ERROR(what);
        failed_ = true;
    }

    // The pool's answer to an allocation with mask `f`, given the source calls it made.
    void expect_alloc(std::uint32_t f, void* got, const std::vector<TestSource::Call>& calls,
                      const std::vector<kmem::UsageError>& reports) {
        const std::uint32_t full = full_mask(f);
        const std::uint32_t first = first_mask(f);
        void* want = nullptr;
        std::size_t want_calls = 1;
        bool want_report = false;
        if (calls.empty()) return fail("alloc made no source call");
        if (calls[0].flags != first) return fail("first pass flags " + gfp::to_string(calls[0].flags));
        if (calls[0].result != nullptr) {
            want = calls[0].result;
        } else if (!reserve_.empty()) {
            want = reserve_.back();
            reserve_.pop_back();
        } else if (first != full) {
            want_calls = 2;
            if (calls.size() < 2) return fail("no second pass");
            if (calls[1].flags != full) return fail("second pass flags " + gfp::to_string(calls[1].flags));
            want = calls[1].result;
            want_report = want == nullptr && gfp::may_sleep(f);
        }
        if (calls.size() != want_calls) return fail("alloc made " + std::to_string(calls.size()) + " calls");
        if (got != want) return fail("alloc returned another element than the model's");
        if (reports.size() != (want_report ? 1u : 0u)) return fail("unexpected reports from alloc");
        if (want_report && reports[0].kind != ErrorKind::nofail_failed) return fail("wrong report kind");
        if (got != nullptr) out_.push_back(got);
    }

    template <std::uint32_t B>
    void alloc_with(Pool& pool, gfp::Flags<B> flags) {
        const std::size_t before = src_.calls().size();
        void* got = nullptr;
        const auto reports = kmem::test::reported_errors(pool, [&] { got = pool.alloc(flags); });
        expect_alloc(B, got, calls_since(src_, before), reports);
    }

    void typed_alloc(Pool& pool) {
        switch (rng_.below(5)) {
        case 0:
            return alloc_with(pool, gfp::atomic);
        case 1:
            return alloc_with(pool, gfp::nowait);
        case 2:
            return alloc_with(pool, gfp::kernel); // NoLock: a report instead of a wait when all fails
        case 3:
            return alloc_with(pool, gfp::noio);
        default:
            return alloc_with(pool, gfp::io | gfp::kswapd_reclaim);
        }
    }

    void runtime_alloc(Pool& pool) {
        static constexpr std::uint32_t masks[] = {gfp::atomic.value, gfp::nofs.value,
                                                  gfp::kernel.value | bits::nofail,
                                                  gfp::nowait.value | bits::high};
        const std::uint32_t f = masks[rng_.below(4)];
        const std::size_t before = src_.calls().size();
        void* got = nullptr;
        const auto reports =
            kmem::test::reported_errors(pool, [&] { got = pool.alloc(kmem::gfp_t::from_bits(f)); });
        expect_alloc(f, got, calls_since(src_, before), reports);
    }

    void preallocated(Pool& pool) {
        const std::size_t before = src_.calls().size();
        void* got = pool.alloc_preallocated();
        if (src_.calls().size() != before) return fail("alloc_preallocated called the source");
        void* want = nullptr;
        if (!reserve_.empty()) {
            want = reserve_.back();
            reserve_.pop_back();
        }
        if (got != want) return fail("alloc_preallocated returned another element than the model's");
        if (got != nullptr) out_.push_back(got);
    }

    void free_at(Pool& pool, std::size_t k) {
        void* p = out_[k];
        out_[k] = out_.back();
        out_.pop_back();
        const std::size_t freed_before = src_.freed().size();
        pool.free(p);
        if (reserve_.size() < target(min_nr_)) {
            reserve_.push_back(p);
            if (src_.freed().size() != freed_before) fail("a free owed to the reserve went to the source");
        } else if (src_.freed().size() != freed_before + 1 || src_.freed().back() != p) {
            fail("a free past a full reserve did not go to the source");
        }
    }

    void free_one(Pool& pool) {
        if (out_.empty()) return typed_alloc(pool);
        free_at(pool, rng_.below(out_.size()));
    }

    void resize(Pool& pool) {
        const std::size_t n = rng_.below(9); // 0 is a reported mistake
        const std::size_t calls_before = src_.calls().size();
        const std::size_t freed_before = src_.freed().size();
        bool ok = false;
        const auto reports = kmem::test::reported_errors(pool, [&] { ok = pool.resize(n); });
        if (n == 0) {
            if (ok || reports.size() != 1u || reports[0].kind != ErrorKind::bad_parameter)
                fail("resize(0) was not reported");
            return;
        }
        if (!ok || !reports.empty()) return fail("resize failed or reported");
        if (n <= min_nr_) {
            std::vector<void*> expect_freed;
            while (reserve_.size() > n) {
                expect_freed.push_back(reserve_.back());
                reserve_.pop_back();
            }
            const std::vector<void*> freed(src_.freed().begin() + static_cast<std::ptrdiff_t>(freed_before),
                                           src_.freed().end());
            if (freed != expect_freed) fail("shrinking freed other elements than the top of the reserve");
            if (src_.calls().size() != calls_before) fail("shrinking called alloc");
        } else {
            for (const auto& c : calls_since(src_, calls_before)) {
                if (c.flags != gfp::kernel.value) fail("resize did not use GFP_KERNEL");
                if (c.result != nullptr) reserve_.push_back(c.result);
            }
            const auto calls = calls_since(src_, calls_before);
            const bool stopped_on_failure = !calls.empty() && calls.back().result == nullptr;
            if (!stopped_on_failure && reserve_.size() != n) fail("growing did not fill the reserve");
            if (reserve_.size() > n) fail("growing overfilled the reserve");
        }
        min_nr_ = n;
    }

    void check(const Pool& pool, const std::string& when) {
        if (pool.curr_nr() != reserve_.size())
            fail(when + ": curr_nr " + std::to_string(pool.curr_nr()) + ", model " +
                 std::to_string(reserve_.size()));
        if (pool.outstanding() != out_.size()) fail(when + ": outstanding differs from the model");
        if (pool.min_nr() != min_nr_) fail(when + ": min_nr differs from the model");
        if (src_.live() != reserve_.size() + out_.size())
            fail(when + ": the source's count is not reserve + out");
    }

    kmem::test::Xoshiro256 rng_;
    TestSource src_;
    std::size_t min_nr_ = 4;
    std::vector<void*> reserve_;
    std::vector<void*> out_;
    bool failed_ = false;
};

} // namespace

BOOST_AUTO_TEST_CASE(model_200k_operations) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        MempoolModel model(seed);
        model.run(200'000);
    }
}

BOOST_AUTO_TEST_SUITE_END()

// The generic pmr adapter over a MemPool of memory: blocks from the pool, other sizes upstream.
BOOST_AUTO_TEST_CASE(fixed_size_resource_over_a_page_address_pool) {
    using Buddy = kmem::BuddyAllocator<6, 4096, kmem::MmapRegion>;
    Buddy buddy(kmem::MmapRegion(1 << 20));
    kmem::MemPool<kmem::PageAddressSource<Buddy>, kmem::policy::NoLock> pool(4, {buddy, 0});
    std::pmr::monotonic_buffer_resource upstream_buffer;
    kmem::FixedSizeResource<decltype(pool)> resource(pool, &upstream_buffer);
    BOOST_TEST(pool.serves(4096, 4096));
    BOOST_TEST(!pool.serves(4097, 8));
    void* a = resource.allocate(3000, 64);
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(a) % 4096 == 0u);
    BOOST_TEST(buddy.virt_to_page(a) != nullptr, "served by the pool's pages");
    void* b = resource.allocate(10'000, 8); // too large: upstream
    BOOST_TEST(buddy.virt_to_page(b) == nullptr);
    resource.deallocate(b, 10'000, 8);
    resource.deallocate(a, 3000, 64);
    BOOST_TEST(pool.curr_nr() == 4u);
}
