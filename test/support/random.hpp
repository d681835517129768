/// @file
/// Seeded, fast pseudo-random numbers for randomized tests (splitmix64 seeding a xoshiro256**), and the seed
/// helper every randomized test uses: the seed comes from the environment variable KMEM_SEED when it is set
/// (decimal or 0x-hex), otherwise from std::random_device, and is printed so that a failing run can be repeated:
///
/// @code
///   const std::uint64_t seed = kmem::test::test_seed();   // prints "seed: 1234 (KMEM_SEED=1234 repeats ...)"
///   BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {           // every failure message names the seed
///       kmem::test::Xoshiro256 rng(seed);
///       ...
///   }
/// @endcode
#pragma once

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstdlib>
#include <random>

namespace kmem::test {

/// splitmix64: a tiny generator used to expand one 64-bit seed into xoshiro's state.
class SplitMix64 {
public:
    explicit constexpr SplitMix64(std::uint64_t seed) noexcept : s_(seed) {}
    /// The next 64 random bits.
    constexpr std::uint64_t next() noexcept {
        std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }

private:
    std::uint64_t s_;
};

/// xoshiro256** (Blackman & Vigna): fast, good-quality, and a UniformRandomBitGenerator.
class Xoshiro256 {
public:
    using result_type = std::uint64_t;
    /// Seeds the state from `seed` through splitmix64.
    explicit constexpr Xoshiro256(std::uint64_t seed) noexcept {
        SplitMix64 sm(seed);
        for (auto& w : s_) w = sm.next();
    }
    static constexpr result_type min() noexcept { return 0; }
    static constexpr result_type max() noexcept { return ~result_type{0}; }
    /// The next 64 random bits.
    constexpr result_type operator()() noexcept {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }
    /// A number in [0, n) (n > 0); the modulo bias is negligible for the small n tests use.
    constexpr std::uint64_t below(std::uint64_t n) noexcept { return (*this)() % n; }
    /// A number in [lo, hi] (inclusive).
    constexpr std::uint64_t between(std::uint64_t lo, std::uint64_t hi) noexcept {
        return lo + below(hi - lo + 1);
    }
    /// True with probability `percent` / 100.
    constexpr bool percent(unsigned percent) noexcept { return below(100) < percent; }

private:
    static constexpr std::uint64_t rotl(std::uint64_t x, int k) noexcept {
        return (x << k) | (x >> (64 - k));
    }
    std::uint64_t s_[4]{};
};

/// The seed for a randomized test: KMEM_SEED from the environment when set, otherwise std::random_device.
/// Prints it with BOOST_TEST_MESSAGE (visible with --log_level=message); wrap the test body in
/// BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) so that every failure names it too.
inline std::uint64_t test_seed() {
    std::uint64_t seed = 0;
    const char* env = std::getenv("KMEM_SEED");
    bool from_env = false;
    if (env != nullptr && *env != '\0') {
        char* end = nullptr;
        seed = std::strtoull(env, &end, 0);
        from_env = end != nullptr && *end == '\0';
        if (!from_env) BOOST_TEST_MESSAGE("KMEM_SEED='" << env << "' is not a number; using a random seed");
    }
    if (!from_env) {
        std::random_device rd;
        seed = (std::uint64_t{rd()} << 32) ^ rd();
    }
    BOOST_TEST_MESSAGE("seed: " << seed << (from_env ? " (from KMEM_SEED)" : " (random)")
                                << "; KMEM_SEED=" << seed << " repeats this run");
    return seed;
}

} // namespace kmem::test
