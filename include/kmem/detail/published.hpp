// A counter written under a lock and read without one (the kernel's zone_page_state() reads of NR_FREE_PAGES).
#pragma once

#include <atomic>

namespace kmem::detail {

// Writers hold the owner's lock, so an update is a relaxed load and a relaxed store (no read-modify-write: on
// x86-64 it compiles to the same moves as a plain integer); readers without the lock get a recent value, as
// watermark checks want, and no data race.
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
    Published& operator+=(T x) noexcept { return *this = static_cast<T>(load() + x); }
    Published& operator-=(T x) noexcept { return *this = static_cast<T>(load() - x); }
    Published& operator|=(T x) noexcept { return *this = static_cast<T>(load() | x); }
    Published& operator&=(T x) noexcept { return *this = static_cast<T>(load() & x); }

private:
    std::atomic<T> v_{};
};

} // namespace kmem::detail
