// Benchmarks for kmem::PerCpuAllocator's this_cpu_add (include/kmem/percpu.hpp) against one shared
// std::atomic counter, with 1, 2, 4, ... threads up to the cores this machine has (at most 64).
//
// Cases, each with T threads doing kAdds additions of 1 from a common start; one iteration is the wall time
// until the last thread ends (manual time), so "ns per add" is the time one thread spends per addition while
// all T run, and T / that is the aggregate rate:
//   * percpu/cpu:        PerCpuAllocator<> (policy::CpuSlots): an rseq critical section ending in one plain add
//                        where the platform has restartable sequences;
//   * percpu/cpu_atomic: the same with PerCpuConfig::use_rseq = false: a relaxed fetch_add (lock add) on the
//                        copy of the CPU the thread runs on, uncontended but still a locked instruction;
//   * percpu/thread:     PerCpuAllocator<policy::ThreadSlots>: a relaxed load and store on the thread's own copy;
//   * atomic:            one std::atomic<std::uint64_t>, alignas(64), fetch_add(1, relaxed) from every thread:
//                        the cache line moves between the cores on every addition.
// After every iteration (outside the timed region) the counter's sum must equal the additions made so far: a
// mismatch ends the case with an error, so the loop cannot have been optimised away or lost updates.
//
// The summary gives, per thread count, ns per add of each case and the ratio atomic / per-CPU (how many times
// faster the per-CPU counter is); the target is at least 10x from 2 threads on.  Defaults as every kmem
// benchmark (bench/support/cli.hpp): 5 repetitions, medians.
#include <kmem/percpu.hpp>

#include "support/cli.hpp"
#include "support/report.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::uint64_t kAdds = 4'000'000; // per thread and iteration

using CpuCounters = kmem::PerCpuAllocator<>;
using ThreadCounters = kmem::PerCpuAllocator<kmem::policy::ThreadSlots>;

CpuCounters& cpu_counters() {
    static CpuCounters c;
    return c;
}
CpuCounters& cpu_atomic_counters() {
    static CpuCounters c(kmem::PerCpuConfig{.use_rseq = false});
    return c;
}
ThreadCounters& thread_counters() {
    static ThreadCounters c;
    return c;
}

struct alignas(64) SharedCounter {
    std::atomic<std::uint64_t> value{0};
};

// Runs `threads` threads, each calling add() kAdds times from a common start; returns the wall time.
template <class Add>
double run_threads(unsigned threads, Add add) {
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&] {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            for (std::uint64_t k = 0; k < kAdds; ++k) {
                add();
                benchmark::ClobberMemory(); // every addition is a real update of memory, in every case
            }
        });
    while (ready.load() < threads) std::this_thread::yield();
    const auto start = std::chrono::steady_clock::now();
    go.store(true, std::memory_order_release);
    for (std::thread& t : pool) t.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <class A>
void percpu_add(benchmark::State& st, A& pcpu) {
    const auto threads = static_cast<unsigned>(st.range(0));
    const kmem::PerCpuPtr<std::uint64_t> counter = pcpu.template alloc_percpu<std::uint64_t>();
    if (!counter) return st.SkipWithError("alloc_percpu failed");
    std::uint64_t expected = 0;
    for (auto _ : st) {
        st.SetIterationTime(run_threads(threads, [&] { pcpu.this_cpu_add(counter, 1); }));
        expected += threads * kAdds;
        const std::uint64_t sum = pcpu.sum(counter);
        benchmark::DoNotOptimize(sum);
        if (sum != expected) {
            st.SkipWithError("the per-CPU counter's sum differs from the additions made");
            break;
        }
    }
    st.counters["uses_rseq"] = pcpu.uses_rseq() ? 1 : 0;
    pcpu.free_percpu(counter);
}

void atomic_add(benchmark::State& st) {
    const auto threads = static_cast<unsigned>(st.range(0));
    SharedCounter counter;
    std::uint64_t expected = 0;
    for (auto _ : st) {
        st.SetIterationTime(
            run_threads(threads, [&] { counter.value.fetch_add(1, std::memory_order_relaxed); }));
        expected += threads * kAdds;
        const std::uint64_t sum = counter.value.load();
        benchmark::DoNotOptimize(sum);
        if (sum != expected) {
            st.SkipWithError("the atomic counter differs from the additions made");
            break;
        }
    }
}

// 1, 2, 4, ... up to the cores this machine has (at most 64); 2 is always measured, as the target names it.
std::vector<unsigned> thread_counts() {
    const unsigned hw = std::max(2u, std::min(64u, std::thread::hardware_concurrency()));
    std::vector<unsigned> out;
    for (unsigned t = 1; t <= hw; t *= 2) out.push_back(t);
    if (out.back() != hw) out.push_back(hw);
    return out;
}

std::string key(const char* kind, unsigned threads) {
    return std::string(kind) + "/add/t" + std::to_string(threads);
}

void register_all() {
    using kmem::bench::add;
    for (unsigned t : thread_counts()) {
        const auto units = static_cast<double>(kAdds); // ns per add, per thread
        add(key("percpu/cpu", t), units, [](benchmark::State& s) { percpu_add(s, cpu_counters()); })
            ->Arg(t)
            ->UseManualTime()
            ->Iterations(3);
        add(key("percpu/cpu_atomic", t), units,
            [](benchmark::State& s) { percpu_add(s, cpu_atomic_counters()); })
            ->Arg(t)
            ->UseManualTime()
            ->Iterations(3);
        add(key("percpu/thread", t), units, [](benchmark::State& s) { percpu_add(s, thread_counters()); })
            ->Arg(t)
            ->UseManualTime()
            ->Iterations(3);
        add(key("atomic", t), units, atomic_add)->Arg(t)->UseManualTime()->Iterations(3);
    }
}

void print_summary(const kmem::bench::Results& res) {
    using kmem::bench::format_value;
    using kmem::bench::ratio;
    kmem::bench::Verdicts verdicts;
    std::printf(
        "\n==== per-CPU counter (this_cpu_add) vs one shared std::atomic (fetch_add): median ns per add "
        "per thread ====\n");
    double load[3] = {0, 0, 0};
    if (std::FILE* f =
            std::fopen("/proc/loadavg", "r")) { // wall times stretch when other work shares the CPUs
        if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = load[1] = load[2] = 0;
        std::fclose(f);
    }
    std::printf("this_cpu operations use %s here; %u hardware threads; load average %.2f %.2f %.2f\n",
                cpu_counters().uses_rseq() ? "restartable sequences" : "relaxed atomics (no rseq)",
                std::thread::hardware_concurrency(), load[0], load[1], load[2]);
    const kmem::bench::Table table({{"threads", 8, true},
                                    {"atomic", 9},
                                    {"percpu", 9},
                                    {"atomic/percpu", 14},
                                    {"pc-atomic", 10},
                                    {"per-thread", 11},
                                    {"atomic/thread", 14},
                                    {"pc scaling", 11},
                                    {"target", 8},
                                    {"result", 0, true, 2}},
                                   112);
    table.header("-- ns per add (each thread); ratios: how many times faster than the shared atomic --");
    const auto cpu1 = res.ns(key("percpu/cpu", 1));
    bool serialised = false;
    for (unsigned t : thread_counts()) {
        const auto atomic = res.ns(key("atomic", t));
        const auto cpu = res.ns(key("percpu/cpu", t));
        const auto thread = res.ns(key("percpu/thread", t));
        const auto speedup = ratio(atomic, cpu);
        const bool judged = t >= 2;
        // Per-CPU adds share nothing: T threads on T free cores add T times as fast as one.  Much less means
        // the threads took turns on fewer cores (other work), so the shared atomic was hardly contended either.
        const auto scaling = ratio(cpu1, cpu);
        const auto aggregate = scaling ? std::optional<double>(*scaling * t) : std::nullopt;
        if (t >= 2 && aggregate && *aggregate < 0.75 * t) serialised = true;
        table.row({std::to_string(t), format_value(atomic, "%.2f"), format_value(cpu, "%.2f"),
                   format_value(speedup, "%.1fx"), format_value(res.ns(key("percpu/cpu_atomic", t)), "%.2f"),
                   format_value(thread, "%.2f"), format_value(ratio(atomic, thread), "%.1fx"),
                   format_value(aggregate, "%.2fx"), judged ? ">=10x" : "-",
                   judged
                       ? verdicts.judge(speedup ? std::optional<double>(1.0 / *speedup) : std::nullopt, 0.1)
                       : "-"});
    }
    std::printf(
        "\n  atomic: one shared std::atomic fetch_add; percpu: PerCpuAllocator<> this_cpu_add; pc-atomic: "
        "the same with use_rseq = false;\n  per-thread: PerCpuAllocator<policy::ThreadSlots>.  Aggregate "
        "rate = threads / (ns per add) additions per ns.\n");
    std::printf(
        "  pc scaling: per-CPU additions per second at T threads / at 1 thread (T on T free cores).\n");
    if (serialised)
        std::printf(
            "\n  NOTE: the per-CPU counter did not scale with the threads: they took turns on fewer cores "
            "than "
            "there\n  were threads (other work on the machine), so the shared atomic's cache line rarely "
            "moved between\n  cores and its contention cost is not measured; the ratios are not "
            "meaningful for the target.\n");
    kmem::bench::print_footer(verdicts);
}

} // namespace

int main(int argc, char** argv) {
    return kmem::bench::run_main(argc, argv, kmem::bench::standard_defaults(), register_all, print_summary);
}
