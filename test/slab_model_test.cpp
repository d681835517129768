// Model-based randomized tests of KmemCache and Kmalloc: a million random operations in all (alloc, zalloc, free,
// alloc_bulk, free_bulk, shrink, drain, set_tunables on caches; kmalloc, kzalloc, kcalloc, kfree, krealloc,
// kmemdup, kfree_sensitive of random sizes 0..64K on kmalloc) against a shadow model: a map of live pointers to
// their size and the seed of the pattern written into them.
//
// After every allocation the object is checked (inside a slab of its cache, aligned, overlapping no live object,
// zeroed when asked, in the constructed state for a cache with a constructor) and a pattern is written; before
// every free the pattern is checked.  A failed allocation must be one the memory really could not serve.  Every
// few thousand operations validate() must find nothing and stats() must agree with the model (active objects ==
// live objects; active + per-CPU objects == objects handed out of the slabs; slab counts; pages).  At the end
// everything is freed and every page goes back to the buddy allocator.
//
// The seed is printed (--log_level=message) and named in every failure; KMEM_SEED=<n> repeats a run.
// KMEM_SLAB_MODEL_SCALE=<percent> scales the number of operations (default 100).
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::SlabFlags;
using kmem::test::Xoshiro256;

constexpr std::size_t page = 4096;
using Buddy = kmem::BuddyAllocator<10, page, kmem::MmapRegion>;
using Cache = kmem::KmemCache<Buddy, kmem::policy::ThrowOnError>;
using Km = kmem::Kmalloc<Buddy, kmem::policy::ThrowOnError>;

std::uint64_t scaled(std::uint64_t ops) {
    const char* env = std::getenv("KMEM_SLAB_MODEL_SCALE");
    if (env == nullptr || *env == '\0') return ops;
    const unsigned long pct = std::strtoul(env, nullptr, 10);
    return std::max<std::uint64_t>(1000, ops * pct / 100);
}

// The pattern byte at offset i of an object with seed `seed`.
inline unsigned char pattern(std::uint64_t seed, std::size_t i) {
    return static_cast<unsigned char>((seed * 0x9e3779b1u) ^ (i * 131u) ^ (i >> 8));
}
// The offsets that carry the pattern: every byte of a small object, a sample of a large one.
template <class F>
void for_each_sample(std::size_t size, F&& f) {
    if (size <= 512) {
        for (std::size_t i = 0; i < size; ++i) f(i);
        return;
    }
    for (std::size_t i = 0; i < 64; ++i) f(i);
    for (std::size_t i = 64; i < size - 64; i += 61) f(i);
    for (std::size_t i = size - 64; i < size; ++i) f(i);
}
void write_pattern(void* p, std::size_t size, std::uint64_t seed) {
    auto* b = static_cast<unsigned char*>(p);
    for_each_sample(size, [&](std::size_t i) { b[i] = pattern(seed, i); });
}
bool pattern_intact(const void* p, std::size_t size, std::uint64_t seed) {
    const auto* b = static_cast<const unsigned char*>(p);
    bool ok = true;
    for_each_sample(size, [&](std::size_t i) { ok = ok && b[i] == pattern(seed, i); });
    return ok;
}

// The live objects: random access for picking, ordered by address for the overlap check.
struct Live {
    void* p;
    std::size_t size; // bytes asked for (the pattern's length)
    std::size_t span; // bytes the object really covers (object_size or ksize), for the overlap check
    std::uint64_t seed;
};
class Shadow {
public:
    std::size_t size() const noexcept { return live_.size(); }
    bool empty() const noexcept { return live_.empty(); }
    const Live& at(std::size_t i) const { return live_[i]; }
    Live& at(std::size_t i) { return live_[i]; }
    // Adds an object; false when it overlaps a live one (or is already live).
    bool add(const Live& l) {
        const auto a = reinterpret_cast<std::uintptr_t>(l.p);
        auto next = by_addr_.lower_bound(a);
        if (next != by_addr_.end() && next->first < a + l.span) return false;
        if (next != by_addr_.begin()) {
            const Live& prev = live_[std::prev(next)->second];
            if (reinterpret_cast<std::uintptr_t>(prev.p) + prev.span > a) return false;
        }
        by_addr_.emplace_hint(next, a, live_.size());
        live_.push_back(l);
        return true;
    }
    // Removes live object number i (swap with the last).
    Live remove(std::size_t i) {
        const Live out = live_[i];
        by_addr_.erase(reinterpret_cast<std::uintptr_t>(out.p));
        if (i + 1 != live_.size()) {
            live_[i] = live_.back();
            by_addr_[reinterpret_cast<std::uintptr_t>(live_[i].p)] = i;
        }
        live_.pop_back();
        return out;
    }
    // Replaces object i's pointer and extent (krealloc); false on overlap.
    bool move(std::size_t i, void* p, std::size_t size, std::size_t span) {
        Live l = remove(i);
        l.p = p;
        l.size = size;
        l.span = span;
        if (!add(l)) return false;
        // Keep the moved object at a random-access position; its index changed, which is fine for the model.
        return true;
    }

private:
    std::vector<Live> live_;
    std::map<std::uintptr_t, std::size_t> by_addr_;
};

// A failing check: names the seed, the step and what went wrong, and stops the test case.
[[noreturn]] void model_failure(std::uint64_t seed, std::uint64_t step, const std::string& what) {
    BOOST_FAIL("KMEM_SEED=" << seed << " step " << step << ": " << what);
    std::abort(); // not reached: BOOST_FAIL throws
}

// How many blocks of `order` the buddy could hand out now (every free block of that order or above, split).
std::uint64_t blocks_of(const Buddy& buddy, unsigned order) {
    std::uint64_t n = 0;
    for (unsigned o = order; o <= Buddy::max_order; ++o) n += buddy.nr_free(o) << (o - order);
    return n;
}

struct CacheRun {
    const char* label;
    std::size_t size;
    std::size_t align;
    SlabFlags flags;
    bool ctor;
    std::size_t pages; // the buddy's region, in pages: small enough that the cache runs it dry now and then
    std::uint64_t ops;
};

constexpr unsigned char ctor_byte = 0xc5;

void run_cache_model(const CacheRun& run, std::uint64_t seed, std::uint64_t salt) {
    Xoshiro256 rng(seed ^ salt);
    Buddy buddy(kmem::MmapRegion(run.pages * page));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t total = buddy.total_pages();
    std::uint64_t ctor_calls = 0;
    std::function<void(void*)> ctor;
    if (run.ctor)
        ctor = [&ctor_calls, size = run.size](void* p) {
            ++ctor_calls;
            std::memset(p, ctor_byte, size);
        };
    std::uint64_t step = 0;
    const auto require = [&](bool ok, const char* what) {
        if (!ok) [[unlikely]]
            model_failure(seed, step, std::string(run.label) + ": " + what);
    };
    {
        kmem::CacheConfig cfg;
        cfg.name = run.label;
        cfg.size = run.size;
        cfg.align = run.align;
        cfg.flags = run.flags;
        cfg.ctor = ctor;
        Cache c(buddy, cfg);
        require(c.valid(), "the cache is not valid");
        const std::uint32_t per_slab = c.objects_per_slab();
        const unsigned order = c.order();
        const std::size_t align = c.align();
        Shadow live;
        std::uint64_t next_seed = 1;
        std::uint64_t failures = 0, max_slabs = 0;

        // An object the cache just handed out: check it, then write its pattern.
        const auto take = [&](void* p, bool zeroed) {
            require(p != nullptr, "null object");
            require(reinterpret_cast<std::uintptr_t>(p) % align == 0, "misaligned object");
            const kmem::detail::Slab* s = Cache::virt_to_slab(buddy, p);
            require(s != nullptr && s->cache == &c, "the object is not in a slab of its cache");
            const auto* b = static_cast<const unsigned char*>(p);
            if (zeroed) {
                require(std::all_of(b, b + run.size, [](unsigned char x) { return x == 0; }),
                        "a zeroed object is not zero");
            } else if (run.ctor) {
                require(std::all_of(b, b + run.size, [](unsigned char x) { return x == ctor_byte; }),
                        "an object is not in its constructed state");
            }
            const Live l{p, run.size, run.size, next_seed++};
            write_pattern(p, l.size, l.seed);
            require(live.add(l), "the object overlaps a live object");
        };
        // Before a free: the pattern must be intact; a cache with a constructor gets the constructed state back.
        const auto release = [&](std::size_t i) {
            const Live l = live.remove(i);
            require(pattern_intact(l.p, l.size, l.seed),
                    "an object's contents changed while it was allocated");
            if (run.ctor) std::memset(l.p, ctor_byte, run.size);
            return l.p;
        };
        // A failed allocation of `want` objects must be one the memory could not serve.
        const auto check_failure = [&](std::size_t want) {
            ++failures;
            const kmem::SlabStats s = c.stats();
            const std::uint64_t free_objs = s.num_objs - live.size();
            const std::uint64_t blocks = blocks_of(buddy, order);
            require(free_objs < want, "an allocation failed while its cache had free objects");
            require(free_objs + (blocks == 0 ? 0 : (blocks - 1) * per_slab) < want,
                    "an allocation failed while the buddy had room for the slabs");
        };
        const auto check_state = [&] {
            require(c.validate().empty(), ("validate(): " + c.validate()).c_str());
            const kmem::SlabStats s = c.stats();
            require(s.active_objs == live.size(), "stats().active_objs differs from the live objects");
            require(s.active_objs + s.cpu_objs == c.inuse_objects(),
                    "active_objs + cpu_objs differs from the objects out of the slabs");
            require(s.num_objs == s.num_slabs * per_slab, "num_objs != num_slabs * objperslab");
            require(s.active_objs <= s.num_objs, "more active objects than objects");
            require(s.active_slabs <= s.num_slabs, "more active slabs than slabs");
            require(s.num_slabs - s.active_slabs <= 5, "more empty slabs kept than min_partial");
            require(s.objperslab == per_slab && s.pagesperslab == (1u << order), "the geometry changed");
            max_slabs = std::max(max_slabs, s.num_slabs);
            const std::uint64_t slab_pages = s.num_slabs << order;
            const std::uint64_t desc_pages = total - buddy.nr_free_pages() - slab_pages;
            require(buddy.nr_free_pages() + slab_pages <= total,
                    "the slabs hold more pages than the buddy gave");
            require(desc_pages <= (max_slabs + 62) / 63, "more descriptor pages than slabs need");
            if (run.ctor) {
                require(ctor_calls % per_slab == 0, "the constructor ran for part of a slab");
                require(ctor_calls / per_slab >= s.num_slabs, "a slab's objects were not constructed");
            }
            require(buddy.check_invariants().empty(), "the buddy's invariants broke");
        };

        const auto began = std::chrono::steady_clock::now();
        // Phases of growth and shrinkage, so that the cache reaches exhaustion and empties again.
        bool growing = true;
        const std::uint64_t ops = scaled(run.ops);
        std::vector<void*> bulk;
        for (step = 0; step < ops; ++step) {
            if (step % 20000 == 0) growing = true;
            if (growing && live.size() > 20 && rng.percent(1)) growing = false;
            if (!growing && live.size() < 10) growing = true;
            const unsigned alloc_pct = growing ? 62 : 35;
            const std::uint64_t r = rng.below(1000);
            if (r < alloc_pct * 10 - 50) { // alloc
                const int how = static_cast<int>(rng.below(3));
                void* p = how == 0   ? c.alloc(gfp::kernel)
                          : how == 1 ? c.alloc()
                                     : c.alloc(kmem::gfp_t(gfp::atomic | gfp::nowarn));
                if (p == nullptr) {
                    check_failure(1);
                    growing = false;
                } else {
                    take(p, false);
                }
            } else if (r < alloc_pct * 10) { // zalloc
                if (!run.ctor) {
                    void* p = rng.percent(50) ? c.zalloc() : c.alloc(kmem::gfp_t(gfp::kernel | gfp::zero));
                    if (p == nullptr) {
                        check_failure(1);
                        growing = false;
                    } else {
                        take(p, true);
                    }
                }
            } else if (r < 900) { // free
                if (!live.empty()) c.free(release(rng.below(live.size())));
            } else if (r < 940) { // alloc_bulk
                bulk.assign(rng.between(1, 3 * per_slab + 5), reinterpret_cast<void*>(1));
                const std::uint64_t before = c.stats().active_objs;
                const std::size_t got = c.alloc_bulk(gfp::kernel, bulk);
                if (got == 0) {
                    require(std::all_of(bulk.begin(), bulk.end(), [](void* p) { return p == nullptr; }),
                            "a failed alloc_bulk left objects in its output");
                    require(c.stats().active_objs == before, "a failed alloc_bulk kept objects");
                    check_failure(bulk.size());
                    growing = false;
                } else {
                    require(got == bulk.size(), "alloc_bulk returned a partial count");
                    for (void* p : bulk) take(p, false);
                }
            } else if (r < 980) { // free_bulk
                bulk.clear();
                const std::size_t n = std::min<std::size_t>(live.size(), rng.between(1, 2 * per_slab));
                for (std::size_t k = 0; k < n; ++k) bulk.push_back(release(rng.below(live.size())));
                c.free_bulk(bulk);
            } else if (r < 988) { // shrink
                const std::uint64_t slabs = c.slab_count();
                const std::uint64_t given = c.shrink();
                const kmem::SlabStats s = c.stats();
                require(given == (slabs - s.num_slabs) << order,
                        "shrink() miscounted the pages it gave back");
                require(s.cpu_objs == 0 && s.num_slabs == s.active_slabs,
                        "shrink() left free objects or slabs");
            } else if (r < 996) { // drain
                c.drain_cpu_arrays();
                require(c.stats().cpu_objs == 0, "drain_cpu_arrays() left objects");
            } else if (!kmem::any_of(run.flags,
                                     kmem::slab_debug_flags)) { // set_tunables (not for debug caches:
                                                                // they have no per-CPU arrays)
                const unsigned limit = static_cast<unsigned>(rng.between(1, 120));
                c.set_tunables(limit, static_cast<unsigned>(rng.between(1, limit)));
                require(c.stats().limit == limit, "set_tunables did not take");
            }
            if (step % 2500 == 0) check_state();
        }
        check_state();
        BOOST_TEST_MESSAGE(run.label << ": " << ops << " operations, " << failures << " failed allocations, "
                                     << max_slabs << " slabs at most, "
                                     << std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::steady_clock::now() - began)
                                            .count()
                                     << " ms");
        if (ops >= 50'000) BOOST_TEST(failures > 0u, run.label << ": the run never exhausted the buddy");
        while (!live.empty()) c.free(release(live.size() - 1));
        check_state();
        require(c.destroy(), "destroy() found objects");
        require(buddy.nr_free_pages() == total, "destroy() did not give every page back");
    }
    require(buddy.nr_free_pages() == total, "pages lost");
}

// A random request size in 0..64K: mostly small, some up to a page and two, some large, a few zero.
std::size_t random_size(Xoshiro256& rng) {
    const std::uint64_t r = rng.below(100);
    if (r < 3) return 0;
    if (r < 60) return rng.between(1, 256);
    if (r < 85) return rng.between(257, 8192);
    return rng.between(8193, 65536);
}

void run_kmalloc_model(std::uint64_t seed, std::uint64_t requested_ops) {
    Buddy buddy(kmem::MmapRegion(std::size_t{2} << 20));
    buddy.set_warning_stream(nullptr);
    const std::uint64_t total = buddy.total_pages();
    std::uint64_t step = 0;
    const auto require = [&](bool ok, const char* what) {
        if (!ok) [[unlikely]]
            model_failure(seed, step, std::string("kmalloc: ") + what);
    };
    const std::uint64_t salted = seed ^ 0xa110c;
    Xoshiro256 rng(salted);
    {
        Km km(buddy);
        Shadow live;
        std::uint64_t next_seed = 1, failures = 0, large_pages = 0;
        std::array<std::uint64_t, kmem::kmalloc_sizes.size()> per_class{};

        const auto is_large = [](std::size_t size) { return size > kmem::kmalloc_max_cache_size; };
        // Counts an object by where it really lives: its usable size (ksize) names its class or its pages.
        const auto account = [&](std::size_t usable, int sign) {
            if (is_large(usable))
                large_pages += static_cast<std::uint64_t>(sign) * (usable / page);
            else
                per_class[kmem::kmalloc_index(usable)] += static_cast<std::uint64_t>(sign);
        };
        // A request of `size` bytes failed: its size class (or the buddy, for a large one) had no room.
        const auto check_failure = [&](std::size_t size) {
            ++failures;
            if (is_large(size)) {
                const unsigned order =
                    static_cast<unsigned>(std::countr_zero(Km::kmalloc_size_roundup(size) / page));
                require(blocks_of(buddy, order) == 0, "a large kmalloc failed while the buddy had a block");
                return;
            }
            Km::cache_type& c = km.cache_for(size);
            const kmem::SlabStats s = c.stats();
            require(s.num_objs == per_class[kmem::kmalloc_index(size)],
                    "a kmalloc failed while its cache had room");
            require(blocks_of(buddy, c.order()) <= 1, "a kmalloc failed while the buddy had room for a slab");
        };
        // A new allocation of `size` bytes at p: checks, then the pattern.
        // `in_place`: krealloc kept the object, whose usable size is then `in_place` (its old ksize).
        const auto take = [&](void* p, std::size_t size, bool zeroed, std::size_t in_place = 0) {
            if (size == 0) {
                require(p == kmem::zero_size_ptr, "kmalloc(0) did not return ZERO_SIZE_PTR");
                return;
            }
            require(p != nullptr && !kmem::zero_or_null_ptr(p), "null object");
            const std::size_t usable = km.ksize(p);
            require(
                usable == (in_place != 0 ? in_place : Km::kmalloc_size_roundup(size)),
                ("ksize() " + std::to_string(usable) + " for " + std::to_string(size) + " bytes").c_str());
            const std::size_t natural = std::has_single_bit(usable) ? std::min(usable, page) : 8;
            require(reinterpret_cast<std::uintptr_t>(p) % natural == 0, "not naturally aligned");
            if (zeroed) {
                bool zero = true;
                const auto* b = static_cast<const unsigned char*>(p);
                for_each_sample(size, [&](std::size_t i) { zero = zero && b[i] == 0; });
                require(zero, "zeroed memory is not zero");
            }
            const Live l{p, size, usable, next_seed++};
            write_pattern(p, size, l.seed);
            require(live.add(l), "the object overlaps a live object");
            account(usable, +1);
        };
        const auto release = [&](std::size_t i) {
            const Live l = live.remove(i);
            require(pattern_intact(l.p, l.size, l.seed),
                    "an object's contents changed while it was allocated");
            account(l.span, -1);
            return l.p;
        };
        const auto check_state = [&] {
            const std::string problem = km.validate();
            require(problem.empty(), ("validate(): " + problem).c_str());
            const std::vector<kmem::SlabStats> stats = km.stats();
            std::uint64_t slab_pages = 0;
            for (std::size_t i = 0; i < stats.size(); ++i) {
                const kmem::SlabStats& s = stats[i];
                require(s.active_objs == per_class[i], "a cache's active_objs differs from the live objects");
                require(s.active_objs + s.cpu_objs == km.cache(static_cast<unsigned>(i)).inuse_objects(),
                        "active_objs + cpu_objs differs from the objects out of the slabs");
                require(s.num_objs == s.num_slabs * s.objperslab, "num_objs != num_slabs * objperslab");
                slab_pages += s.num_slabs * s.pagesperslab;
            }
            require(buddy.nr_free_pages() + slab_pages + large_pages <= total,
                    "slabs and large allocations hold more pages than the buddy gave");
            require(buddy.check_invariants().empty(), "the buddy's invariants broke");
        };

        bool growing = true;
        const std::uint64_t ops = scaled(requested_ops);
        std::vector<unsigned char> src;
        for (step = 0; step < ops; ++step) {
            if (growing && live.size() > 50 && rng.below(1000) < 3) growing = false;
            if (!growing && live.size() < 20) growing = true;
            const std::uint64_t r = rng.below(100);
            const unsigned allocs = growing ? 55 : 30;
            if (r < allocs) { // kmalloc / kzalloc / kcalloc / kmemdup
                const std::size_t size = random_size(rng);
                const std::uint64_t how = rng.below(10);
                void* p;
                bool zeroed = false;
                if (how < 5) {
                    p = km.kmalloc(size, gfp::kernel);
                } else if (how < 6) {
                    p = km.kmalloc(size, kmem::gfp_t(gfp::atomic | gfp::nowarn));
                } else if (how < 8) {
                    p = km.kzalloc(size, gfp::kernel);
                    zeroed = true;
                } else if (how < 9) {
                    const std::size_t n = size == 0 ? 0 : rng.between(1, std::min<std::size_t>(size, 16));
                    p = km.kcalloc(n, size / std::max<std::size_t>(n, 1), gfp::kernel);
                    const std::size_t bytes = n * (size / std::max<std::size_t>(n, 1));
                    if (p != nullptr)
                        take(p, bytes, true);
                    else
                        check_failure(bytes);
                    continue;
                } else {
                    src.resize(size);
                    const std::uint64_t s = next_seed;
                    for (std::size_t i = 0; i < size; ++i) src[i] = pattern(s, i);
                    p = km.kmemdup(src.data(), size, gfp::kernel);
                    if (p != nullptr && size != 0)
                        require(std::memcmp(p, src.data(), size) == 0, "kmemdup did not copy");
                }
                if (p == nullptr) {
                    check_failure(size);
                    growing = false;
                } else {
                    take(p, size, zeroed);
                }
            } else if (r < 85) { // kfree / kfree_sensitive
                if (!live.empty()) {
                    void* p = release(rng.below(live.size()));
                    if (rng.percent(5))
                        km.kfree_sensitive(p);
                    else
                        km.kfree(p);
                }
                if (rng.percent(2)) km.kfree(rng.percent(50) ? nullptr : kmem::zero_size_ptr);
            } else if (r < 99) { // krealloc
                if (live.empty()) continue;
                const std::size_t i = rng.below(live.size());
                const Live old = live.at(i);
                require(pattern_intact(old.p, old.size, old.seed), "an object changed before krealloc");
                const std::size_t size = random_size(rng);
                const bool zero = rng.percent(20);
                void* q = zero ? km.krealloc(old.p, size, gfp::kernel | gfp::zero)
                               : km.krealloc(old.p, size, gfp::kernel);
                if (size == 0) {
                    require(q == kmem::zero_size_ptr, "krealloc(p, 0) did not return ZERO_SIZE_PTR");
                    live.remove(i);
                    account(old.span, -1);
                    continue;
                }
                if (q == nullptr) {
                    require(pattern_intact(old.p, old.size, old.seed),
                            "a failed krealloc changed the object");
                    check_failure(size);
                    growing = false;
                    continue;
                }
                if (km.ksize(old.p) >= size && q != old.p)
                    require(false, "krealloc moved an object that fit");
                // The bytes both sizes share were kept.
                const std::size_t kept = std::min(old.size, size);
                bool same = true;
                const auto* b = static_cast<const unsigned char*>(q);
                for_each_sample(old.size, [&](std::size_t k) {
                    same = same && (k >= kept || b[k] == pattern(old.seed, k));
                });
                require(same, "krealloc lost the object's bytes");
                if (zero && q != old.p) {
                    bool tail_zero = true;
                    for (std::size_t k = old.span; k < size; k += 7) // beyond the old usable size
                        tail_zero = tail_zero && b[k] == 0;
                    require(tail_zero, "krealloc with gfp::zero left a dirty tail");
                }
                account(old.span, -1);
                live.remove(i);
                take(q, size, false, q == old.p ? old.span : 0);
            } else { // shrink
                km.shrink();
                for (const kmem::SlabStats& s : km.stats())
                    require(s.cpu_objs == 0, "shrink() left objects in arrays");
            }
            if (step % 4000 == 0) check_state();
        }
        check_state();
        BOOST_TEST_MESSAGE("kmalloc: " << ops << " operations, " << failures << " failed allocations");
        if (ops >= 100'000) BOOST_TEST(failures > 0u, "kmalloc: the run never exhausted the buddy");
        while (!live.empty()) km.kfree(release(live.size() - 1));
        check_state();
        km.shrink();
        for (const kmem::SlabStats& s : km.stats()) require(s.num_slabs == 0, "shrink() kept a slab");
        require(large_pages == 0, "the model lost track of a large allocation");
    }
    require(buddy.nr_free_pages() == total, "pages lost after the caches went away");
}

} // namespace

BOOST_AUTO_TEST_SUITE(slab_model)

BOOST_AUTO_TEST_CASE(caches_against_a_shadow_model) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        Xoshiro256 pick(seed);
        // The plain cache's object size varies with the seed.
        constexpr std::array<std::size_t, 8> sizes{8, 24, 64, 100, 200, 500, 1000, 3000};
        const std::size_t size = sizes[pick.below(sizes.size())];
        const SlabFlags hw = pick.percent(30) ? SlabFlags::hwcache_align : SlabFlags::none;
        const CacheRun runs[] = {
            {"plain", size, 0, hw, false, std::max<std::size_t>(48, size * 400 / page), 350'000},
            {"aligned", 72, 128, SlabFlags::none, false, 40, 50'000},
            {"constructed", 80, 0, SlabFlags::none, true, 40, 150'000},
            {"debug", 56, 0, kmem::slab_debug_flags, false, 24, 100'000},
        };
        std::uint64_t salt = 0;
        for (const CacheRun& run : runs) run_cache_model(run, seed, 0x51ab0000 + ++salt);
    }
}

BOOST_AUTO_TEST_CASE(kmalloc_against_a_shadow_model) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        run_kmalloc_model(seed, 350'000);
    }
}

BOOST_AUTO_TEST_SUITE_END()
