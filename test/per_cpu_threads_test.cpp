// detail::PerCpu<T, Shared>, the per-CPU slots behind the per-CPU page lists: the local try-lock excludes every
// other local or remote locker of the same slot (with restartable sequences where the platform has them, a spin
// lock elsewhere), and remote lock()/lock_all() wait for a holder and then exclude local lockers.
#include <kmem/buddy.hpp>
#include <kmem/detail/per_cpu_sets.hpp>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

struct Counter {
    std::uint64_t value = 0; // plain: only a lock holder touches it
    std::uint64_t local_holds = 0;
};

} // namespace

BOOST_AUTO_TEST_SUITE(per_cpu_slots)

BOOST_AUTO_TEST_CASE(rseq_locking_is_used_where_the_platform_allows_it) {
    kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::SpinLock, kmem::policy::PerCpuPages<>>
        shared(std::uint64_t{64} << 20);
    kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion, kmem::policy::PerCpuPages<>> single(std::uint64_t{64}
                                                                                           << 20);
    BOOST_TEST(!single.pcp_uses_rseq()); // no lock policy: one set and no lock at all
#ifdef KMEM_DETAIL_RSEQ_LOCK
    BOOST_TEST(shared.pcp_uses_rseq() == kmem::detail::rseq_slots_available());
    BOOST_TEST_MESSAGE("per-CPU sets locked with "
                       << (shared.pcp_uses_rseq() ? "restartable sequences" : "a spin lock"));
#else
    BOOST_TEST(!shared.pcp_uses_rseq());
#endif
}

// Four threads take their local slot and increment a plain counter in it while one thread keeps locking every
// slot remotely and reading them all; every increment must be counted exactly once.
BOOST_AUTO_TEST_CASE(local_and_remote_lockers_exclude_each_other) {
    kmem::detail::PerCpu<Counter, true> slots;
    constexpr int threads = 4;
    constexpr int steps = 300000; // each thread, and until the remote locker has done 200 rounds
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> taken{0};
    std::atomic<std::uint64_t> remote_rounds{0};
    std::thread remote([&] {
        while (!done.load(std::memory_order_acquire)) {
            slots.lock_all();
            std::uint64_t sum = 0;
            for (unsigned c = 0; c < slots.size(); ++c) sum += slots[c].value;
            slots.unlock_all();
            (void)sum;
            const unsigned c = static_cast<unsigned>(remote_rounds.fetch_add(1)) % slots.size();
            Counter& one = slots.lock(c); // one slot at a time too, as drain_pages_zone() does
            ++one.value;
            slots.unlock(c);
            std::this_thread::sleep_for(std::chrono::microseconds(5)); // let the local lockers run too
        }
    });
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&] {
            std::uint64_t mine = 0;
            for (int i = 0; i < steps || remote_rounds.load(std::memory_order_relaxed) < 200; ++i) {
                const int c = slots.try_lock_local();
                if (c < 0) continue; // busy: the caller would take the slow path
                Counter& s = slots[static_cast<unsigned>(c)];
                const std::uint64_t v = s.value;
                s.value = v + 1;
                ++s.local_holds;
                slots.unlock_local(static_cast<unsigned>(c));
                ++mine;
            }
            taken.fetch_add(mine);
        });
    for (std::thread& t : pool) t.join();
    done.store(true, std::memory_order_release);
    remote.join();
    std::uint64_t sum = 0, holds = 0;
    for (unsigned c = 0; c < slots.size(); ++c) {
        sum += slots[c].value;
        holds += slots[c].local_holds;
    }
    BOOST_TEST(holds == taken.load());
    BOOST_TEST(sum == taken.load() + remote_rounds.load());
    BOOST_TEST(taken.load() > 0u);
    BOOST_TEST(remote_rounds.load() >= 200u);
    BOOST_TEST_MESSAGE("local holds " << taken.load() << ", remote rounds " << remote_rounds.load()
                                      << (slots.uses_rseq() ? " (rseq)" : " (spin lock)"));
}

BOOST_AUTO_TEST_SUITE_END()
