// Multi-threaded tests of the per-CPU page lists of BuddyAllocator (policy::PerCpuPages) with the SpinLock and
// MutexLock policies: four threads allocate, stamp, check and free blocks of order 0..4 while draining now and
// then; nothing may be handed out twice, lost or left unmerged.  Bounded (50,000 steps per thread) so that the
// ThreadSanitizer run stays short.  The seed is printed; KMEM_SEED=<n> repeats a run.
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/region.hpp>

#include "support/buddy_checker.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::Page;
using kmem::PageFlag;
using kmem::test::check_from_outside;

constexpr std::uint64_t MiB = std::uint64_t{1} << 20;
constexpr std::size_t ps = 4096;

// Four threads share one allocator with per-CPU lists; each does `iterations` random alloc/free steps on blocks
// of order 0..4, stamps every page of a block and checks the stamp before freeing (a block handed out twice would
// be overwritten by its second owner), and now and then drains its CPU's lists (thread 0 drains all of them).
template <class Buddy, class Flags>
void pcp_stress(Buddy& buddy, Flags flags, std::uint64_t seed, int iterations) {
    buddy.set_warning_stream(nullptr);
    const std::string initial = buddy.buddyinfo();
    std::atomic<int> corrupted{0};
    std::atomic<int> failed{0};
    std::atomic<int> bad_descriptor{0};
    std::atomic<int> not_zeroed{0};
    std::latch start(4); // all four begin together, so they really contend
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            start.arrive_and_wait();
            kmem::test::Xoshiro256 rng(seed + t);
            struct Held {
                unsigned char* p;
                unsigned order;
                unsigned char stamp;
            };
            std::vector<Held> held;
            const auto release = [&](std::size_t k) {
                const Held h = held[k];
                for (std::size_t off = 0; off < (ps << h.order); off += ps / 2)
                    if (h.p[off] != h.stamp) corrupted.fetch_add(1);
                if (rng.percent(25))
                    buddy.put_page(buddy.virt_to_page(h.p));
                else
                    buddy.free_pages(h.p, h.order);
                held[k] = held.back();
                held.pop_back();
            };
            for (int i = 0; i < iterations; ++i) {
                if (rng.below(512) == 0) buddy.drain_local_pages();
                if (t == 0 && rng.below(2048) == 0) buddy.drain_all_pages();
                if (held.size() < 32 && (held.empty() || rng.percent(50))) {
                    const auto order = static_cast<unsigned>(rng.below(5));
                    const bool zero = rng.percent(5);
                    auto* p =
                        static_cast<unsigned char*>(zero ? buddy.get_free_pages(flags | gfp::zero, order)
                                                         : buddy.get_free_pages(flags, order));
                    if (p == nullptr) {
                        failed.fetch_add(1);
                        continue;
                    }
                    const Page* d = buddy.virt_to_page(p);
                    if (!d->test(PageFlag::block) || d->order() != order || d->refcount() != 1)
                        bad_descriptor.fetch_add(1);
                    if (zero && !std::all_of(p, p + (ps << order), [](unsigned char c) { return c == 0; }))
                        not_zeroed.fetch_add(1);
                    const auto stamp = static_cast<unsigned char>(rng() | 1u);
                    for (std::size_t off = 0; off < (ps << order); off += ps / 2) p[off] = stamp;
                    held.push_back({p, order, stamp});
                } else {
                    release(rng.below(held.size()));
                }
            }
            while (!held.empty()) release(held.size() - 1);
        });
    }
    for (auto& th : threads) th.join();
    BOOST_TEST(corrupted.load() == 0);
    BOOST_TEST(failed.load() == 0); // 4 x 32 blocks of at most 16 pages fit easily
    BOOST_TEST(bad_descriptor.load() == 0);
    BOOST_TEST(not_zeroed.load() == 0);
    BOOST_TEST(buddy.check_invariants() == "");
    BOOST_TEST(check_from_outside(buddy) == "");
    const auto s = buddy.stats();
    BOOST_TEST(s.allocations == s.frees);
    BOOST_TEST(s.allocations > 0u);
    BOOST_TEST(s.pcp_pages == buddy.nr_pcp_pages());
    BOOST_TEST(s.free_pages + s.pcp_pages == buddy.total_pages());
    BOOST_TEST(buddy.drain_all_pages() == s.pcp_pages);
    BOOST_TEST(buddy.nr_pcp_pages() == 0u);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_TEST(buddy.buddyinfo() == initial); // everything merged back
    BOOST_TEST(buddy.check_invariants() == "");
}

} // namespace

BOOST_AUTO_TEST_SUITE(pcp_threads)

BOOST_AUTO_TEST_CASE(spin_lock_with_per_cpu_lists_under_four_threads) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        using A = kmem::BuddyAllocator<10, ps, kmem::MmapRegion, kmem::policy::SpinLock,
                                       kmem::policy::PerCpuPages<>>;
        A buddy(kmem::MmapRegion(64 * MiB));
        BOOST_TEST(buddy.pcp_batch() == 3u);
        pcp_stress(buddy, gfp::atomic, seed, 50'000);
    }
}

BOOST_AUTO_TEST_CASE(mutex_lock_with_per_cpu_lists_under_four_threads) {
    const std::uint64_t seed = kmem::test::test_seed() ^ 0x3c3c;
    BOOST_TEST_CONTEXT("KMEM_SEED^0x3c3c=" << seed) {
        using A = kmem::BuddyAllocator<10, ps, kmem::MmapRegion, kmem::policy::MutexLock,
                                       kmem::policy::PerCpuPages<16, 96>>;
        A buddy(kmem::MmapRegion(32 * MiB));
        pcp_stress(buddy, gfp::kernel, seed, 50'000);
    }
}

BOOST_AUTO_TEST_SUITE_END()
