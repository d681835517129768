// A counter written under a lock and read without one (the kernel's zone_page_state() reads of NR_FREE_PAGES).
#pragma once

#include <atomic>

namespace kmem::detail {

// Writers hold the owner's lock and publish a whole value with a relaxed store (on x86-64 the same move as a
// plain integer); readers without the lock get a recent value, as watermark checks want, and no data race.
template <class T>
class Published {
public:
    constexpr Published() noexcept = default;
    Published(const Published&) = delete;
    Published& operator=(const Published&) = delete;

    operator T() const noexcept { return v_.load(std::memory_order_relaxed); }
    T load() const noexcept { return v_.load(std::memory_order_relaxed); }
    Published& operator=(T x) noexcept {
        v_.store(x, std::memory_order_relaxed);
        return *this;
    }

private:
    std::atomic<T> v_{};
};

} // namespace kmem::detail
