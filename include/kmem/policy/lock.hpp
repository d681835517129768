/// @file
/// Lock policies: how an allocator serialises its callers (the kernel's zone->lock is a spinlock).
///
/// A lock policy is a type with lock(), unlock() and a `may_sleep` constant; `may_sleep == false` declares that
/// code holding it must not sleep, so GFP flags that may sleep are rejected at compile time.
///
/// @code
///   kmem::policy::SpinLock lock;
///   {
///       kmem::policy::LockGuard guard(lock);   // critical section
///   }
///   static_assert(!kmem::policy::SpinLock::may_sleep);
/// @endcode
#pragma once

#include <kmem/policy/category.hpp>

#include <atomic>
#include <concepts>
#include <mutex>

namespace kmem::policy {

/// Satisfied by lock policies: lock(), unlock() and a bool `may_sleep` saying whether holders may sleep.
template <class L>
concept LockPolicy = requires(L& l) {
    l.lock();
    l.unlock();
    { L::may_sleep } -> std::convertible_to<bool>;
};

/// No locking: the allocator is used by one thread at a time (the caller's responsibility).
struct NoLock {
    /// This is a lock policy.
    using policy_category = lock_policy_tag;
    /// Nothing is held, so nothing forbids sleeping.
    static constexpr bool may_sleep = true;
    /// Does nothing.
    void lock() noexcept {}
    /// Does nothing.
    void unlock() noexcept {}
    /// Always succeeds.
    bool try_lock() noexcept { return true; }
};

/// A test-and-test-and-set spin lock (spinlock_t); holders must not sleep, so sleeping GFP flags are rejected.
class SpinLock {
public:
    /// This is a lock policy.
    using policy_category = lock_policy_tag;
    /// A spin lock holder may not sleep.
    static constexpr bool may_sleep = false;
    /// Spins until the lock is acquired (spin_lock).
    void lock() noexcept {
        for (;;) {
            if (!locked_.exchange(true, std::memory_order_acquire)) return;
            while (locked_.load(std::memory_order_relaxed)) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
            }
        }
    }
    /// Releases the lock (spin_unlock).
    void unlock() noexcept {
        locked_.store(false, std::memory_order_release);
    }
    /// Takes the lock if it is free, without spinning (spin_trylock); true when taken.
    bool try_lock() noexcept {
        return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
    }

private:
    std::atomic<bool> locked_{false};
};

/// A sleeping mutex (struct mutex); holders may sleep.
class MutexLock {
public:
    /// This is a lock policy.
    using policy_category = lock_policy_tag;
    /// A mutex holder may sleep.
    static constexpr bool may_sleep = true;
    /// Blocks until the mutex is acquired (mutex_lock).
    void lock() { m_.lock(); }
    /// Releases the mutex (mutex_unlock).
    void unlock() { m_.unlock(); }
    /// Takes the mutex if it is free, without blocking (mutex_trylock); true when taken.
    bool try_lock() { return m_.try_lock(); }

private:
    std::mutex m_;
};

/// RAII guard for any lock policy (the kernel's guard(spinlock)).
template <LockPolicy L>
class LockGuard {
public:
    /// Acquires `l` for the guard's lifetime.
    explicit LockGuard(L& l) : l_(l) { l_.lock(); }
    /// Releases the lock.
    ~LockGuard() { l_.unlock(); }
    LockGuard(const LockGuard&) = delete;            ///< Not copyable.
    LockGuard& operator=(const LockGuard&) = delete; ///< Not copyable.

private:
    L& l_;
};

} // namespace kmem::policy
