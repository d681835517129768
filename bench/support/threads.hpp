// Threaded benchmark cases: run N threads released together, time them by wall clock, and record how much of
// that time they actually spent on a CPU (below 0.9 the machine was busy and the figure is inflated).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

namespace kmem::bench {

/// Per threaded case, the share of the threads' wall time they spent on a CPU, one figure per iteration.
inline std::map<std::string, std::vector<double>, std::less<>>& cpu_shares() {
    static std::map<std::string, std::vector<double>, std::less<>> shares;
    return shares;
}
/// The median CPU share recorded under `name`, if any.
inline std::optional<double> cpu_share(std::string_view name) {
    const auto it = cpu_shares().find(name);
    if (it == cpu_shares().end() || it->second.empty()) return std::nullopt;
    std::vector<double> v = it->second;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
/// The calling thread's CPU time in seconds.
inline double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// Runs `n` threads, each calling body(thread index) (or body()) once; returns the wall time from the moment all
/// are ready to the last one's end, and records under `key` the CPU share (summed thread CPU time / (n * wall)).
template <class Body>
double run_threads(const std::string& key, unsigned n, Body body) {
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<double> cpu(n, 0.0);
    std::vector<std::thread> pool;
    pool.reserve(n);
    for (unsigned t = 0; t < n; ++t)
        pool.emplace_back([&, t] {
            ready.fetch_add(1, std::memory_order_acq_rel);
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            const double c0 = thread_cpu_seconds();
            if constexpr (std::is_invocable_v<Body&, unsigned>)
                body(t);
            else
                body();
            cpu[t] = thread_cpu_seconds() - c0;
        });
    while (ready.load(std::memory_order_acquire) < n) std::this_thread::yield();
    const auto start = std::chrono::steady_clock::now();
    go.store(true, std::memory_order_release);
    for (std::thread& th : pool) th.join();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double sum = 0;
    for (double c : cpu) sum += c;
    cpu_shares()[key].push_back(wall > 0 ? sum / (n * wall) : 0.0);
    return wall;
}

} // namespace kmem::bench
