// PerCpuAllocator (include/kmem/percpu.hpp): the per-CPU allocator and the this_cpu operations on one thread.
//
//  * layout: one unit per possible CPU, copies of an area a unit apart (never sharing a cache line), zeroed or
//    value-initialised, aligned in every unit, chunks added when full and unmapped when empty (one kept);
//  * this_cpu operations: each CPU's copy is the one a thread pinned to that CPU updates; read, write, add,
//    sub, inc, dec, add_return, cmpxchg, xchg on every integral size, signed and unsigned, pointers, struct
//    fields; both slot policies and the atomic fallback;
//  * mistakes: every illegal size and alignment, every bad free, a bad configuration; each reported with its
//    kind and nothing changed; reports made after the lock is released (a callback may call back in);
//    AssertOnError aborts with the message;
//  * a model-based randomized run: 300,000 operations of alloc (mixed sizes and alignments), free, rewrite and
//    mistakes against a shadow of the live areas; every area's bytes are checked in every unit, no two areas
//    overlap, the counters match the shadow and check_invariants() holds.  KMEM_SEED=<n> repeats a run.
#include <kmem/percpu.hpp>

#include "support/expect_error.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <array>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using Throwing = kmem::PerCpuAllocator<kmem::policy::ThrowOnError>;
using Calling = kmem::PerCpuAllocator<kmem::policy::CallbackOnError>;
using ThreadThrowing = kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::ThrowOnError>;

std::uintptr_t address(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p);
}

// The CPUs this thread may run on; pins it to one with pin(), restores the original mask when destroyed.
class Affinity {
public:
    Affinity() { ok_ = ::sched_getaffinity(0, sizeof saved_, &saved_) == 0; }
    ~Affinity() {
        if (ok_) ::sched_setaffinity(0, sizeof saved_, &saved_);
    }
    Affinity(const Affinity&) = delete;
    Affinity& operator=(const Affinity&) = delete;
    std::vector<unsigned> cpus() const {
        std::vector<unsigned> out;
        if (!ok_) return out;
        for (unsigned c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &saved_)) out.push_back(c);
        return out;
    }
    bool pin(unsigned cpu) const {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return ::sched_setaffinity(0, sizeof one, &one) == 0 && ::sched_getcpu() == static_cast<int>(cpu);
    }

private:
    cpu_set_t saved_{};
    bool ok_ = false;
};

// Runs `body` in a child process with stderr captured; returns (wait status, stderr text).
template <class Body>
std::pair<int, std::string> in_child(Body body) {
    int fds[2];
    BOOST_REQUIRE(::pipe(fds) == 0);
    std::fflush(stderr);
    const pid_t child = ::fork();
    BOOST_REQUIRE(child >= 0);
    if (child == 0) {
        ::close(fds[0]);
        ::dup2(fds[1], STDERR_FILENO);
        std::signal(SIGABRT, SIG_DFL);
        body();
        ::_exit(0);
    }
    ::close(fds[1]);
    std::string text;
    char buf[512];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
    return {status, text};
}

struct Counters {
    std::uint64_t hits = 0;
    std::int32_t delta = 0;
    std::uint16_t small = 7; // a default member initialiser: alloc_percpu<T> value-initialises every copy
};

} // namespace

BOOST_AUTO_TEST_SUITE(percpu_layout)

BOOST_AUTO_TEST_CASE(one_unit_per_possible_cpu_and_copies_a_unit_apart) {
    Throwing pcpu;
    BOOST_TEST(pcpu.num_possible_cpus() >= 1u);
    BOOST_TEST(pcpu.num_possible_cpus() >= static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_CONF)));
    BOOST_TEST(pcpu.unit_size() == kmem::percpu_default_unit_size);
    kmem::PerCpuPtr<std::uint64_t> p = pcpu.alloc_percpu<std::uint64_t>();
    BOOST_REQUIRE(p);
    unsigned visited = 0;
    for (unsigned cpu : pcpu.possible_cpus()) {
        std::uint64_t* copy = pcpu.per_cpu_ptr(p, cpu);
        BOOST_TEST(*copy == 0u);
        BOOST_TEST(address(copy) - address(pcpu.per_cpu_ptr(p, 0)) == std::size_t{cpu} * pcpu.unit_size());
        BOOST_TEST(address(copy) % alignof(std::uint64_t) == 0u);
        ++visited;
    }
    BOOST_TEST(visited == pcpu.num_possible_cpus());
    BOOST_TEST(pcpu.possible_cpus().size() == pcpu.num_possible_cpus());
    unsigned called = 0;
    pcpu.for_each_possible_cpu([&](unsigned cpu) { BOOST_TEST(cpu == called++); });
    BOOST_TEST(called == pcpu.num_possible_cpus());
    // Units are page multiples: two CPUs' copies never share a cache line (no false sharing).
    BOOST_TEST(pcpu.unit_size() % 4096 == 0u);
    pcpu.free_percpu(p);
    BOOST_TEST(pcpu.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(typed_areas_are_value_initialised_in_every_unit) {
    Throwing pcpu;
    kmem::PerCpuPtr<Counters> c = pcpu.alloc_percpu<Counters>();
    BOOST_REQUIRE(c);
    for (unsigned cpu : pcpu.possible_cpus()) {
        BOOST_TEST(pcpu.per_cpu_ptr(c, cpu)->hits == 0u);
        BOOST_TEST(pcpu.per_cpu_ptr(c, cpu)->small == 7u);
        pcpu.per_cpu_ptr(c, cpu)->hits = 99; // dirty it: the next area in this place must be zero again
        pcpu.per_cpu_ptr(c, cpu)->delta = -1;
    }
    pcpu.free_percpu(c);
    kmem::PerCpuPtr<void> raw = pcpu.alloc_percpu(sizeof(Counters), alignof(Counters));
    BOOST_REQUIRE(raw);
    for (unsigned cpu : pcpu.possible_cpus()) {
        const auto* bytes = static_cast<const unsigned char*>(pcpu.per_cpu_ptr(raw, cpu));
        for (std::size_t i = 0; i < sizeof(Counters); ++i) BOOST_TEST(bytes[i] == 0u);
    }
    pcpu.free_percpu(raw);
}

BOOST_AUTO_TEST_CASE(every_alignment_holds_in_every_unit) {
    Throwing pcpu;
    std::vector<kmem::PerCpuPtr<void>> live;
    for (std::size_t align = 1; align <= kmem::percpu_max_align; align *= 2) {
        live.push_back(pcpu.alloc_percpu(3, 1)); // misalign what follows
        kmem::PerCpuPtr<void> p = pcpu.alloc_percpu(align + 5, align);
        BOOST_REQUIRE(p);
        for (unsigned cpu : pcpu.possible_cpus())
            BOOST_TEST(address(pcpu.per_cpu_ptr(p, cpu)) % align == 0u, "align " << align << " cpu " << cpu);
        live.push_back(p);
    }
    BOOST_TEST(pcpu.check_invariants() == "");
    for (auto p : live) pcpu.free_percpu(p);
    const kmem::PerCpuStats s = pcpu.stats();
    BOOST_TEST(s.areas == 0u);
    BOOST_TEST(s.used_bytes == 0u);
    BOOST_TEST(pcpu.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(chunks_grow_when_full_and_one_empty_chunk_is_kept) {
    Throwing pcpu(kmem::PerCpuConfig{.unit_size = 32768});
    BOOST_TEST(pcpu.stats().chunks == 0u); // nothing mapped before the first allocation
    std::vector<kmem::PerCpuPtr<void>> big;
    for (int i = 0; i < 5; ++i) big.push_back(pcpu.alloc_percpu(32768, 4096)); // one whole unit each
    kmem::PerCpuStats s = pcpu.stats();
    BOOST_TEST(s.chunks == 5u);
    BOOST_TEST(s.areas == 5u);
    BOOST_TEST(s.used_bytes == 5u * 32768);
    BOOST_TEST(s.free_bytes == 0u);
    BOOST_TEST(s.total_bytes == 5u * 32768);
    for (auto p : big) pcpu.free_percpu(p);
    s = pcpu.stats();
    BOOST_TEST(s.chunks == 1u); // pcpu_balance_free(): one empty chunk stays mapped
    BOOST_TEST(s.areas == 0u);
    BOOST_TEST(s.max_areas == 5u);
    BOOST_TEST(s.allocations == 5u);
    BOOST_TEST(s.frees == 5u);
    BOOST_TEST(s.free_bytes + s.used_bytes == s.total_bytes);
    BOOST_TEST(pcpu.check_invariants() == "");
    // Small areas pack into one unit at 4-byte granules.
    std::vector<kmem::PerCpuPtr<void>> small;
    for (int i = 0; i < 100; ++i) small.push_back(pcpu.alloc_percpu(1 + i % 4, 1));
    s = pcpu.stats();
    BOOST_TEST(s.chunks == 1u);
    BOOST_TEST(s.used_bytes == 400u);
    for (int i = 1; i < 100; ++i)
        BOOST_TEST(address(pcpu.per_cpu_ptr(small[i], 0)) - address(pcpu.per_cpu_ptr(small[i - 1], 0)) == 4u);
    for (auto p : small) pcpu.free_percpu(p);
}

BOOST_AUTO_TEST_CASE(areas_reuse_freed_space_first_fit) {
    Throwing pcpu;
    kmem::PerCpuPtr<void> a = pcpu.alloc_percpu(64, 8);
    kmem::PerCpuPtr<void> b = pcpu.alloc_percpu(64, 8);
    kmem::PerCpuPtr<void> c = pcpu.alloc_percpu(64, 8);
    pcpu.free_percpu(b);
    kmem::PerCpuPtr<void> d = pcpu.alloc_percpu(32, 8); // the hole b left
    BOOST_TEST(address(pcpu.per_cpu_ptr(d, 0)) == address(pcpu.per_cpu_ptr(a, 0)) + 64);
    kmem::PerCpuPtr<void> e = pcpu.alloc_percpu(64, 8); // too big for what is left of it: after c
    BOOST_TEST(address(pcpu.per_cpu_ptr(e, 0)) == address(pcpu.per_cpu_ptr(c, 0)) + 64);
    for (auto p : {a, c, d, e}) pcpu.free_percpu(p);
    BOOST_TEST(pcpu.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(null_is_ignored_by_free_percpu) {
    Throwing pcpu;
    kmem::test::expect_no_error(pcpu, [&] { pcpu.free_percpu(kmem::PerCpuPtr<int>{}); });
    kmem::test::expect_no_error(pcpu, [&] { pcpu.free_percpu(kmem::PerCpuPtr<void>(nullptr)); });
    BOOST_TEST(pcpu.stats().frees == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(percpu_this_cpu)

// A thread pinned to a CPU updates that CPU's copy and no other (with rseq and with the atomic fallback).
template <class A>
void pinned_updates_land_on_that_cpu(A& pcpu) {
    Affinity affinity;
    const std::vector<unsigned> cpus = affinity.cpus();
    BOOST_REQUIRE(!cpus.empty());
    kmem::PerCpuPtr<std::uint64_t> p = pcpu.template alloc_percpu<std::uint64_t>();
    std::uint64_t expected_total = 0;
    for (unsigned cpu : cpus) {
        if (cpu >= pcpu.num_possible_cpus() || !affinity.pin(cpu)) continue;
        BOOST_TEST(pcpu.this_cpu_unit() == cpu);
        pcpu.this_cpu_add(p, 1000 + cpu);
        expected_total += 1000 + cpu;
        BOOST_TEST(*pcpu.per_cpu_ptr(p, cpu) == 1000u + cpu);
        BOOST_TEST(pcpu.this_cpu_read(p) == 1000u + cpu);
        BOOST_TEST(pcpu.this_cpu_ptr(p) == pcpu.per_cpu_ptr(p, cpu));
    }
    BOOST_TEST(pcpu.sum(p) == expected_total);
    pcpu.free_percpu(p);
}

BOOST_AUTO_TEST_CASE(a_pinned_thread_updates_its_cpus_copy) {
    Throwing with_rseq;
    pinned_updates_land_on_that_cpu(with_rseq);
    Throwing atomics(kmem::PerCpuConfig{.use_rseq = false});
    BOOST_TEST(!atomics.uses_rseq());
    pinned_updates_land_on_that_cpu(atomics);
#if defined(KMEM_DETAIL_PERCPU_RSEQ)
    BOOST_TEST(with_rseq.uses_rseq() == (__rseq_size != 0));
#else
    BOOST_TEST(!with_rseq.uses_rseq());
#endif
    BOOST_TEST_MESSAGE("this_cpu operations use "
                       << (with_rseq.uses_rseq() ? "restartable sequences" : "relaxed atomics"));
}

template <class A, class T>
void arithmetic_semantics(A& pcpu) {
    kmem::PerCpuPtr<T> p = pcpu.template alloc_percpu<T>();
    BOOST_REQUIRE(p);
    BOOST_TEST(pcpu.this_cpu_read(p) == T{0});
    pcpu.this_cpu_write(p, T{5});
    BOOST_TEST(pcpu.this_cpu_read(p) == T{5});
    pcpu.this_cpu_add(p, T{3});
    pcpu.this_cpu_inc(p);
    pcpu.this_cpu_sub(p, T{2});
    pcpu.this_cpu_dec(p);
    BOOST_TEST(pcpu.sum(p) == T{6}); // the thread may migrate: the copies sum to 6 wherever they went
    BOOST_TEST(pcpu.this_cpu_add_return(p, T{0}) == pcpu.this_cpu_read(p));
    // cmpxchg: the value found comes back; a store only on a match.
    pcpu.this_cpu_write(p, T{10}); // write, not add: whatever this CPU's copy held, it is now 10
    T found = pcpu.this_cpu_cmpxchg(p, T{11}, T{12});
    if (found == T{10}) { // still on the same CPU (the common case): no store happened
        BOOST_TEST(pcpu.this_cpu_read(p) == T{10});
    }
    // Sub below zero wraps like the kernel's unsigned arithmetic; sum() wraps the same way.
    for (unsigned cpu : pcpu.possible_cpus()) *pcpu.per_cpu_ptr(p, cpu) = T{0};
    pcpu.this_cpu_sub(p, T{1});
    BOOST_TEST(pcpu.sum(p) == static_cast<T>(-1));
    pcpu.this_cpu_add(p, T{1});
    BOOST_TEST(pcpu.sum(p) == T{0});
    pcpu.free_percpu(p);
}

// Exact semantics need a fixed CPU: pin to the first allowed CPU.
template <class A, class T>
void exact_semantics(A& pcpu) {
    Affinity affinity;
    const std::vector<unsigned> cpus = affinity.cpus();
    const bool pinned =
        !cpus.empty() && cpus.front() < pcpu.num_possible_cpus() && affinity.pin(cpus.front());
    BOOST_WARN_MESSAGE(pinned || A::per_thread,
                       "could not pin the thread to one CPU: exact per-CPU checks skipped");
    if (!pinned && !A::per_thread) return;
    kmem::PerCpuPtr<T> p = pcpu.template alloc_percpu<T>();
    const unsigned me = pcpu.this_cpu_unit();
    BOOST_TEST(pcpu.this_cpu_add_return(p, T{7}) == T{7});
    BOOST_TEST(pcpu.this_cpu_add_return(p, T{7}) == T{14});
    BOOST_TEST(pcpu.this_cpu_cmpxchg(p, T{13}, T{1}) == T{14}); // mismatch: nothing stored
    BOOST_TEST(*pcpu.per_cpu_ptr(p, me) == T{14});
    BOOST_TEST(pcpu.this_cpu_cmpxchg(p, T{14}, T{1}) == T{14}); // match: stored
    BOOST_TEST(*pcpu.per_cpu_ptr(p, me) == T{1});
    BOOST_TEST(pcpu.this_cpu_xchg(p, T{9}) == T{1});
    BOOST_TEST(pcpu.this_cpu_read(p) == T{9});
    pcpu.this_cpu_sub(p, T{10});
    BOOST_TEST(*pcpu.per_cpu_ptr(p, me) == static_cast<T>(-1));
    for (unsigned cpu : pcpu.possible_cpus())
        if (cpu != me) BOOST_TEST(*pcpu.per_cpu_ptr(p, cpu) == T{0});
    pcpu.free_percpu(p);
}

template <class A>
void every_type(A& pcpu) {
    arithmetic_semantics<A, std::uint8_t>(pcpu);
    arithmetic_semantics<A, std::int8_t>(pcpu);
    arithmetic_semantics<A, std::uint16_t>(pcpu);
    arithmetic_semantics<A, std::int16_t>(pcpu);
    arithmetic_semantics<A, std::uint32_t>(pcpu);
    arithmetic_semantics<A, std::int32_t>(pcpu);
    arithmetic_semantics<A, std::uint64_t>(pcpu);
    arithmetic_semantics<A, std::int64_t>(pcpu);
    exact_semantics<A, std::uint8_t>(pcpu);
    exact_semantics<A, std::int16_t>(pcpu);
    exact_semantics<A, std::uint32_t>(pcpu);
    exact_semantics<A, std::int64_t>(pcpu);
    BOOST_TEST(pcpu.check_invariants() == "");
    BOOST_TEST(pcpu.stats().areas == 0u);
}

BOOST_AUTO_TEST_CASE(operations_on_every_integral_size_with_rseq) {
    Throwing pcpu;
    every_type(pcpu);
}

BOOST_AUTO_TEST_CASE(operations_on_every_integral_size_with_atomics) {
    Throwing pcpu(kmem::PerCpuConfig{.use_rseq = false});
    every_type(pcpu);
}

BOOST_AUTO_TEST_CASE(operations_on_every_integral_size_per_thread) {
    ThreadThrowing pcpu;
    BOOST_TEST(pcpu.owns_slot());
    BOOST_TEST(pcpu.this_cpu_unit() < pcpu.num_possible_cpus() - 1);
    BOOST_TEST(pcpu.this_cpu_unit() == pcpu.this_cpu_unit()); // a thread keeps its slot
    every_type(pcpu);
}

BOOST_AUTO_TEST_CASE(pointers_and_bools_are_read_written_and_exchanged) {
    Throwing pcpu;
    Affinity affinity;
    const std::vector<unsigned> cpus = affinity.cpus();
    BOOST_REQUIRE(!cpus.empty());
    BOOST_REQUIRE(affinity.pin(cpus.front()));
    int x = 0, y = 0;
    kmem::PerCpuPtr<int*> p = pcpu.alloc_percpu<int*>();
    BOOST_TEST(pcpu.this_cpu_read(p) == nullptr);
    pcpu.this_cpu_write(p, &x);
    BOOST_TEST(pcpu.this_cpu_cmpxchg(p, &y, nullptr) == &x);
    BOOST_TEST(pcpu.this_cpu_cmpxchg(p, &x, &y) == &x);
    BOOST_TEST(pcpu.this_cpu_xchg(p, nullptr) == &y);
    kmem::PerCpuPtr<bool> flag = pcpu.alloc_percpu<bool>();
    BOOST_TEST(!pcpu.this_cpu_read(flag));
    pcpu.this_cpu_write(flag, true);
    BOOST_TEST(pcpu.this_cpu_cmpxchg(flag, true, false) == true);
    BOOST_TEST(!*pcpu.per_cpu_ptr(flag, cpus.front()));
    pcpu.free_percpu(p);
    pcpu.free_percpu(flag);
}

BOOST_AUTO_TEST_CASE(struct_fields_through_member) {
    Throwing pcpu;
    kmem::PerCpuPtr<Counters> c = pcpu.alloc_percpu<Counters>();
    kmem::PerCpuPtr<std::uint64_t> hits = c.member(&Counters::hits);
    kmem::PerCpuPtr<std::int32_t> delta = c.member(&Counters::delta);
    for (int i = 0; i < 10; ++i) pcpu.this_cpu_inc(hits);
    pcpu.this_cpu_sub(delta, 4);
    BOOST_TEST(pcpu.sum(hits) == 10u);
    BOOST_TEST(pcpu.sum(delta) == -4);
    std::uint64_t seen = 0;
    for (unsigned cpu : pcpu.possible_cpus()) {
        seen += pcpu.per_cpu_ptr(c, cpu)->hits;
        BOOST_TEST(pcpu.per_cpu_ptr(c, cpu)->small == 7u); // the neighbouring field is untouched
    }
    BOOST_TEST(seen == 10u);
    // The untyped view of the same area, and back.
    kmem::PerCpuPtr<void> raw = c;
    BOOST_TEST(kmem::PerCpuPtr<Counters>(raw) == c);
    pcpu.free_percpu(raw);
    BOOST_TEST(pcpu.stats().areas == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(percpu_mistakes)

template <class A>
void illegal_requests(A& pcpu) {
    const kmem::PerCpuPtr<void> sentinel = pcpu.alloc_percpu(8, 8); // a chunk mapped, counters not all zero
    const kmem::PerCpuStats before = pcpu.stats();
    auto null_after = [&](kmem::ErrorKind kind, std::size_t size, std::size_t align,
                          std::string_view needle) {
        kmem::PerCpuPtr<void> got = sentinel; // a call that returns (CallbackOnError) must return null
        const auto e = kmem::test::expect_error(
            pcpu, kind, [&] { got = pcpu.alloc_percpu(size, align); }, needle);
        if constexpr (kmem::test::ReportsByCallback<A>)
            BOOST_TEST(!got, "alloc_percpu(" << size << ", " << align << ") did not return null");
        else
            BOOST_TEST(got == sentinel); // ThrowOnError: the report left the call, nothing was returned
        if (e) BOOST_TEST(e->operation == "__alloc_percpu");
    };
    null_after(kmem::ErrorKind::bad_parameter, 0, 4, "illegal size 0");
    null_after(kmem::ErrorKind::bad_parameter, kmem::percpu_max_alloc_size + 1, 4, "32768");
    null_after(kmem::ErrorKind::bad_parameter, std::size_t{1} << 40, 8, "illegal size");
    null_after(kmem::ErrorKind::bad_alignment, 8, 0, "illegal alignment 0");
    null_after(kmem::ErrorKind::bad_alignment, 8, 3, "power of two");
    null_after(kmem::ErrorKind::bad_alignment, 8, 24, "power of two");
    null_after(kmem::ErrorKind::bad_alignment, 8, 8192, "4096");
    const kmem::PerCpuStats after = pcpu.stats();
    BOOST_TEST(after.areas == before.areas);
    BOOST_TEST(after.chunks == before.chunks);
    BOOST_TEST(after.failures == before.failures);
    BOOST_TEST(after.allocations == before.allocations);
    BOOST_TEST(after.used_bytes == before.used_bytes);
    pcpu.free_percpu(sentinel);
    // The largest legal requests work.
    kmem::PerCpuPtr<void> max = pcpu.alloc_percpu(kmem::percpu_max_alloc_size, kmem::percpu_max_align);
    BOOST_TEST(max);
    pcpu.free_percpu(max);
    BOOST_TEST(pcpu.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(illegal_sizes_and_alignments_are_reported_and_give_null) {
    Throwing throwing;
    illegal_requests(throwing);
    Calling calling;
    illegal_requests(calling);
}

template <class A>
void bad_frees(A& pcpu) {
    const kmem::PerCpuPtr<void> a = pcpu.alloc_percpu(64, 16);
    const kmem::PerCpuPtr<void> b = pcpu.alloc_percpu(8, 8);
    BOOST_REQUIRE(a);
    BOOST_REQUIRE(b);
    const kmem::PerCpuStats before = pcpu.stats();
    const auto unchanged = [&](const char* what) {
        const kmem::PerCpuStats now = pcpu.stats();
        BOOST_TEST(now.areas == before.areas, what);
        BOOST_TEST(now.used_bytes == before.used_bytes, what);
        BOOST_TEST(now.frees == before.frees, what);
        BOOST_TEST(pcpu.check_invariants() == "", what);
    };
    // Not this allocator's: another allocator's area, or a CPU's copy instead of the per-CPU pointer.
    kmem::PerCpuAllocator<kmem::policy::ThrowOnError> other;
    const kmem::PerCpuPtr<int> foreign = other.alloc_percpu<int>();
    const auto e = kmem::test::expect_error(
        pcpu, kmem::ErrorKind::out_of_region, [&] { pcpu.free_percpu(foreign); }, "not a per-CPU area");
    if (e) BOOST_TEST(e->operation == "free_percpu");
    unchanged("foreign");
    other.free_percpu(foreign);
    const kmem::PerCpuPtr<char> a_bytes(a);
    if (pcpu.num_possible_cpus() > 1) {
        const auto unit1 = a_bytes + static_cast<std::ptrdiff_t>(pcpu.unit_size());
        kmem::test::expect_error(
            pcpu, kmem::ErrorKind::out_of_region, [&] { pcpu.free_percpu(unit1); }, "per_cpu_ptr()");
        unchanged("unit 1");
    }
    // Inside a chunk: not on the 4-byte granule, inside an area, or free space.
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::misaligned, [&] { pcpu.free_percpu(a_bytes + 2); }, "4-byte");
    unchanged("misaligned");
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::not_block_start, [&] { pcpu.free_percpu(a_bytes + 16); }, "area of 64 bytes");
    unchanged("interior");
    pcpu.free_percpu(b);
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::double_free, [&] { pcpu.free_percpu(b); }, "already free");
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::double_free, [&] { pcpu.free_percpu(a_bytes + 4096); }, "already free");
    BOOST_TEST(pcpu.stats().areas == before.areas - 1);
    pcpu.free_percpu(a);
    BOOST_TEST(pcpu.stats().areas == 0u);
    BOOST_TEST(pcpu.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(bad_frees_are_reported_and_change_nothing) {
    Throwing throwing;
    bad_frees(throwing);
    Calling calling;
    bad_frees(calling);
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::CallbackOnError> per_thread;
    bad_frees(per_thread);
}

// A callback that calls back into the allocator would deadlock if the report were made under the lock.
template <class Lock>
void reports_after_unlock() {
    kmem::PerCpuAllocator<Lock, kmem::policy::CallbackOnError> pcpu;
    const kmem::PerCpuPtr<void> a = pcpu.alloc_percpu(16, 4);
    const auto reenter = [&](const kmem::UsageError&) {
        const kmem::PerCpuPtr<void> q = pcpu.alloc_percpu(4, 4);
        BOOST_TEST(q);
        pcpu.free_percpu(q);
        BOOST_TEST(pcpu.check_invariants() == "");
    };
    const kmem::test::ErrorExpectation expect{
        .during_report = reenter, .watchdog = std::chrono::seconds(10), .label = "percpu reentrant report"};
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::not_block_start, [&] { pcpu.free_percpu(kmem::PerCpuPtr<char>(a) + 4); },
        expect);
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::bad_alignment, [&] { (void)pcpu.alloc_percpu(4, 5); }, expect);
    pcpu.free_percpu(a);
    kmem::test::expect_error(
        pcpu, kmem::ErrorKind::double_free, [&] { pcpu.free_percpu(a); }, expect);
    BOOST_TEST(pcpu.stats().areas == 0u);
}

BOOST_AUTO_TEST_CASE(reports_are_made_after_the_lock_is_released) {
    reports_after_unlock<kmem::policy::MutexLock>();
    reports_after_unlock<kmem::policy::SpinLock>();
}

BOOST_AUTO_TEST_CASE(a_bad_configuration_is_reported_and_corrected) {
    BOOST_CHECK_EXCEPTION(Throwing(kmem::PerCpuConfig{.unit_size = 1000}), kmem::bad_usage,
                          [](const kmem::bad_usage& e) {
                              return e.error().kind == kmem::ErrorKind::bad_parameter &&
                                     e.error().message.find("1000") != std::string::npos;
                          });
    BOOST_CHECK_EXCEPTION(
        Throwing(kmem::PerCpuConfig{.unit_size = 65536 + 4}), kmem::bad_usage,
        [](const kmem::bad_usage& e) { return e.error().kind == kmem::ErrorKind::bad_parameter; });
    BOOST_CHECK_NO_THROW(Throwing(kmem::PerCpuConfig{.unit_size = 32768}));
    if (kmem::detail::percpu_possible_cpus() > 1) {
        BOOST_CHECK_EXCEPTION(Throwing(kmem::PerCpuConfig{.units = 1}), kmem::bad_usage,
                              [](const kmem::bad_usage& e) {
                                  return e.error().kind == kmem::ErrorKind::bad_parameter &&
                                         e.error().message.find("possible CPUs") != std::string::npos;
                              });
    }
    // CallbackOnError goes on with a corrected layout (its default callback prints the report).
    Calling corrected(kmem::PerCpuConfig{.unit_size = 1000, .units = 1});
    BOOST_TEST(corrected.unit_size() == 32768u);
    BOOST_TEST(corrected.num_possible_cpus() == kmem::detail::percpu_possible_cpus());
    const kmem::PerCpuPtr<void> p = corrected.alloc_percpu(32768, 4096);
    BOOST_TEST(p);
    corrected.free_percpu(p);
    // More units than CPUs is allowed (spare copies).
    Throwing spare(kmem::PerCpuConfig{.units = kmem::detail::percpu_possible_cpus() + 3});
    BOOST_TEST(spare.num_possible_cpus() == kmem::detail::percpu_possible_cpus() + 3);
    ThreadThrowing slots(kmem::PerCpuConfig{.units = 5});
    BOOST_TEST(slots.num_possible_cpus() == 6u); // five owned slots and the shared one
}

BOOST_AUTO_TEST_CASE(assert_on_error_aborts_with_the_message) {
    const auto [status, text] = in_child([] {
        kmem::PerCpuAllocator<> pcpu;
        (void)pcpu.alloc_percpu(0, 4);
    });
    BOOST_TEST(WIFSIGNALED(status));
    BOOST_TEST((WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT));
    BOOST_TEST(text.find("kmem: __alloc_percpu: parameter out of range: illegal size 0") != std::string::npos,
               text);
    const auto [status2, text2] = in_child([] {
        kmem::PerCpuAllocator<> pcpu;
        const kmem::PerCpuPtr<int> p = pcpu.alloc_percpu<int>();
        pcpu.free_percpu(p);
        pcpu.free_percpu(p);
    });
    BOOST_TEST((WIFSIGNALED(status2) && WTERMSIG(status2) == SIGABRT));
    BOOST_TEST(text2.find("kmem: free_percpu: double free: the per-CPU area") != std::string::npos, text2);
}

BOOST_AUTO_TEST_SUITE_END()

// ----- the model-based randomized run ------------------------------------------------------------------------

namespace {

struct LiveArea {
    kmem::PerCpuPtr<void> p;
    std::size_t size = 0;
    std::size_t rounded = 0; // size rounded up to the 4-byte granule: what the area occupies
    std::size_t align = 0;
    std::uint32_t tag = 0;
};

unsigned char pattern(std::uint32_t tag, unsigned cpu, std::size_t i) {
    return static_cast<unsigned char>(tag * 131u + cpu * 29u + static_cast<unsigned>(i) * 7u + 1u);
}

struct ModelOptions {
    std::uint64_t ops = 300'000;
    std::uint64_t check_every = 2'000;
    std::size_t max_live = 400;
    std::uint64_t seed_salt = 0;
};

// Runs random operations on `pcpu` against a shadow of its live areas; see the file comment.
template <class A>
void run_percpu_model(A& pcpu, const ModelOptions& opt) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        kmem::test::Xoshiro256 rng(seed ^ opt.seed_salt);
        kmem::PerCpuAllocator<kmem::policy::ThrowOnError, kmem::policy::NoLock> other;
        const kmem::PerCpuPtr<void> foreign = other.alloc_percpu(64, 8);
        std::vector<LiveArea> live;
        std::map<std::uintptr_t, std::size_t> by_address; // unit-0 address -> index in `live`
        std::vector<std::uintptr_t> freed;                // unit-0 addresses of areas given back
        std::uint32_t next_tag = 1;
        std::uint64_t used = 0, allocations = 0, frees = 0;
        std::uint64_t mistakes = 0, step = 0;
        const unsigned units = pcpu.num_possible_cpus();

        const auto fail = [&](const std::string& what) {
            BOOST_FAIL("step " << step << ": " << what << " (KMEM_SEED=" << seed << " repeats this run)");
        };
        const auto unit0 = [&](const LiveArea& a) { return address(pcpu.per_cpu_ptr(a.p, 0)); };
        const auto fill = [&](LiveArea& a) {
            a.tag = next_tag++;
            for (unsigned cpu = 0; cpu < units; ++cpu) {
                auto* bytes = static_cast<unsigned char*>(pcpu.per_cpu_ptr(a.p, cpu));
                for (std::size_t i = 0; i < a.size; ++i) bytes[i] = pattern(a.tag, cpu, i);
            }
        };
        const auto verify = [&](const LiveArea& a) {
            for (unsigned cpu = 0; cpu < units; ++cpu) {
                const auto* bytes = static_cast<const unsigned char*>(pcpu.per_cpu_ptr(a.p, cpu));
                for (std::size_t i = 0; i < a.size; ++i)
                    if (bytes[i] != pattern(a.tag, cpu, i))
                        fail("byte " + std::to_string(i) + " of CPU " + std::to_string(cpu) +
                             "'s copy of the " + std::to_string(a.size) + "-byte area tagged " +
                             std::to_string(a.tag) + " was overwritten");
            }
        };
        // The live area containing unit-0 address x, or nullptr.
        const auto containing = [&](std::uintptr_t x) -> const LiveArea* {
            auto it = by_address.upper_bound(x);
            if (it == by_address.begin()) return nullptr;
            --it;
            const LiveArea& a = live[it->second];
            return x < it->first + a.rounded ? &a : nullptr;
        };
        const auto check_counts = [&] {
            const kmem::PerCpuStats s = pcpu.stats();
            if (s.areas != live.size() || s.used_bytes != used || s.allocations != allocations ||
                s.frees != frees || s.free_bytes + s.used_bytes != s.total_bytes || s.units != units)
                fail("stats: areas " + std::to_string(s.areas) + " (model " + std::to_string(live.size()) +
                     "), used " + std::to_string(s.used_bytes) + " (model " + std::to_string(used) +
                     "), allocations " + std::to_string(s.allocations) + " (model " +
                     std::to_string(allocations) + "), frees " + std::to_string(s.frees) + " (model " +
                     std::to_string(frees) + ")");
        };
        const auto remove = [&](std::size_t k) {
            const std::uintptr_t x = unit0(live[k]);
            by_address.erase(x);
            used -= live[k].rounded;
            if (k + 1 != live.size()) {
                live[k] = live.back();
                by_address[unit0(live[k])] = k;
            }
            live.pop_back();
            freed.push_back(x);
            if (freed.size() > 64) freed.erase(freed.begin());
        };
        const auto random_size = [&]() -> std::size_t {
            const auto r = rng.below(100);
            if (r < 60) return rng.between(1, 32);
            if (r < 85) return rng.between(33, 512);
            if (r < 97) return rng.between(513, 4096);
            return rng.between(4097, kmem::percpu_max_alloc_size);
        };
        const auto random_align = [&]() -> std::size_t {
            const auto r = rng.below(100);
            if (r < 50) return std::size_t{1} << rng.below(4);  // 1..8
            if (r < 85) return std::size_t{16} << rng.below(3); // 16..64
            return std::size_t{128} << rng.below(6);            // 128..4096
        };
        // Runs a mistake and checks that exactly one report of an expected kind came and nothing changed.
        const auto mistake = [&](auto&& call, std::initializer_list<kmem::ErrorKind> kinds,
                                 const char* what) {
            const kmem::PerCpuStats before = pcpu.stats();
            const std::vector<kmem::UsageError> errors = kmem::test::reported_errors(pcpu, call);
            bool ok = errors.size() == 1 && !errors.front().message.empty();
            if (ok) ok = std::find(kinds.begin(), kinds.end(), errors.front().kind) != kinds.end();
            if (!ok)
                fail(std::string(what) + ": " +
                     (errors.empty() ? std::string("nothing was reported")
                                     : std::to_string(errors.size()) + " reports, first " +
                                           kmem::test::describe(errors.front())));
            const kmem::PerCpuStats after = pcpu.stats();
            if (after.areas != before.areas || after.used_bytes != before.used_bytes ||
                after.frees != before.frees || after.allocations != before.allocations)
                fail(std::string(what) + " changed the allocator");
            ++mistakes;
        };

        for (step = 0; step < opt.ops; ++step) {
            const auto r = rng.below(100);
            if ((r < 45 && live.size() < opt.max_live) || live.empty()) { // alloc
                LiveArea a;
                a.size = random_size();
                a.align = random_align();
                a.rounded = (a.size + 3) / 4 * 4;
                if (rng.percent(5) && a.size <= 8) { // the typed path now and then
                    a.size = 8;
                    a.rounded = 8;
                    a.align = 8;
                    a.p = pcpu.template alloc_percpu<std::uint64_t>();
                } else {
                    a.p = pcpu.alloc_percpu(a.size, a.align);
                }
                if (!a.p)
                    fail("alloc_percpu(" + std::to_string(a.size) + ", " + std::to_string(a.align) +
                         ") failed");
                ++allocations;
                const std::uintptr_t x = unit0(a);
                for (unsigned cpu = 0; cpu < units; ++cpu) {
                    const auto* bytes = static_cast<const unsigned char*>(pcpu.per_cpu_ptr(a.p, cpu));
                    if (address(bytes) % a.align != 0)
                        fail("an area aligned to " + std::to_string(a.align) + " is not, in CPU " +
                             std::to_string(cpu) + "'s unit");
                    if (address(bytes) - x != std::size_t{cpu} * pcpu.unit_size())
                        fail("CPU " + std::to_string(cpu) + "'s copy is not a unit from CPU 0's");
                    for (std::size_t i = 0; i < a.size; ++i)
                        if (bytes[i] != 0)
                            fail("a new area is not zeroed in CPU " + std::to_string(cpu) + "'s unit");
                }
                const auto next = by_address.lower_bound(x);
                if (next != by_address.end() && next->first < x + a.rounded)
                    fail("a new area overlaps a live one that starts after it");
                if (next != by_address.begin()) {
                    const auto prev = std::prev(next);
                    if (prev->first + live[prev->second].rounded > x)
                        fail("a new area overlaps a live one that starts before it");
                }
                fill(a);
                by_address[x] = live.size();
                live.push_back(a);
                used += a.rounded;
            } else if (r < 85) { // free
                const std::size_t k = rng.below(live.size());
                verify(live[k]);
                pcpu.free_percpu(live[k].p);
                ++frees;
                remove(k);
            } else if (r < 93) { // rewrite every copy
                LiveArea& a = live[rng.below(live.size())];
                verify(a);
                fill(a);
            } else { // a mistake
                switch (rng.below(5)) {
                case 0: {
                    static constexpr std::size_t sizes[] = {0, kmem::percpu_max_alloc_size + 1,
                                                            std::size_t{1} << 20};
                    static constexpr std::size_t aligns[] = {0, 3, 12, 8192, std::size_t{1} << 20};
                    kmem::PerCpuPtr<void> got;
                    if (rng.percent(50))
                        mistake([&] { got = pcpu.alloc_percpu(sizes[rng.below(3)], 8); },
                                {kmem::ErrorKind::bad_parameter}, "an illegal size");
                    else
                        mistake([&] { got = pcpu.alloc_percpu(8, aligns[rng.below(5)]); },
                                {kmem::ErrorKind::bad_alignment}, "an illegal alignment");
                    if (got) fail("an illegal request gave an area");
                    break;
                }
                case 1: { // inside a live area
                    const LiveArea& a = live[rng.below(live.size())];
                    if (a.rounded < 8) break;
                    const auto k = static_cast<std::ptrdiff_t>(4 * rng.between(1, a.rounded / 4 - 1));
                    mistake([&] { pcpu.free_percpu(kmem::PerCpuPtr<char>(a.p) + k); },
                            {kmem::ErrorKind::not_block_start}, "a free inside an area");
                    break;
                }
                case 2: { // off the granule
                    const LiveArea& a = live[rng.below(live.size())];
                    const auto k = static_cast<std::ptrdiff_t>(rng.between(1, 3));
                    mistake([&] { pcpu.free_percpu(kmem::PerCpuPtr<char>(a.p) + k); },
                            {kmem::ErrorKind::misaligned}, "a misaligned free");
                    break;
                }
                case 3: { // an address given back before: free space again, or inside a newer area
                    if (freed.empty()) break;
                    const std::uintptr_t x = freed[rng.below(freed.size())];
                    const LiveArea* in = containing(x);
                    if (in != nullptr && unit0(*in) == x) break; // a live area starts there now: no mistake
                    const auto delta = static_cast<std::ptrdiff_t>(x - unit0(live.front()));
                    const kmem::PerCpuPtr<char> bad = kmem::PerCpuPtr<char>(live.front().p) + delta;
                    if (in != nullptr)
                        mistake([&] { pcpu.free_percpu(bad); }, {kmem::ErrorKind::not_block_start},
                                "a free of a reused address inside a newer area");
                    else // its chunk may have been unmapped since
                        mistake([&] { pcpu.free_percpu(bad); },
                                {kmem::ErrorKind::double_free, kmem::ErrorKind::out_of_region},
                                "a double free");
                    break;
                }
                default:
                    mistake([&] { pcpu.free_percpu(foreign); }, {kmem::ErrorKind::out_of_region},
                            "a free of another allocator's area");
                    break;
                }
            }
            if (step % 97 == 0) check_counts();
            if ((step + 1) % opt.check_every == 0) {
                for (const LiveArea& a : live) verify(a);
                if (const std::string problem = pcpu.check_invariants(); !problem.empty()) fail(problem);
                check_counts();
            }
        }
        for (const LiveArea& a : live) verify(a);
        while (!live.empty()) {
            pcpu.free_percpu(live.back().p);
            ++frees;
            remove(live.size() - 1);
        }
        check_counts();
        const kmem::PerCpuStats s = pcpu.stats();
        BOOST_TEST(s.areas == 0u);
        BOOST_TEST(s.used_bytes == 0u);
        BOOST_TEST(s.chunks <= 1u);
        BOOST_TEST(pcpu.check_invariants() == "");
        BOOST_TEST(mistakes > 0u);
        BOOST_TEST_MESSAGE(opt.ops << " operations, " << allocations << " allocations, " << mistakes
                                   << " mistakes, at most " << s.max_areas << " live areas");
        other.free_percpu(foreign);
    }
}

} // namespace

BOOST_AUTO_TEST_SUITE(percpu_model)

BOOST_AUTO_TEST_CASE(random_operations_per_cpu) {
    // Small units (32 KiB, the largest area) so that several chunks come and go.
    kmem::PerCpuAllocator<kmem::policy::ThrowOnError, kmem::policy::NoLock> pcpu(
        kmem::PerCpuConfig{.unit_size = 32768});
    run_percpu_model(pcpu, {.ops = 300'000});
}

BOOST_AUTO_TEST_CASE(random_operations_per_thread_with_callbacks) {
    kmem::PerCpuAllocator<kmem::policy::ThreadSlots, kmem::policy::CallbackOnError> pcpu(
        kmem::PerCpuConfig{.unit_size = 65536, .units = 7});
    run_percpu_model(pcpu, {.ops = 100'000, .max_live = 600, .seed_salt = 0x9e3779b9});
}

BOOST_AUTO_TEST_SUITE_END()
