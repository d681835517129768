// Unit tests for include/kmem/scatterlist.hpp (SgTable, sg_alloc_table_from_pages, sg_copy_to_buffer /
// sg_copy_from_buffer) and VirtualMap::sg_table():
// - merging of neighbouring page frames, the first entry's offset, the last entry's length, max_segment;
// - walking the entries page by page (for_each_sg_page);
// - copies between a list and a linear buffer, with skip and short buffers;
// - every mistake reported through the allocator's error policy;
// - the scatter list of a vmalloc area: its pages are vmalloc_to_page's, and copying out through the page
//   allocator's addresses gives the bytes written through the area;
// - a randomized check against the definition (seed printed; KMEM_SEED=<n> repeats a run).
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/region.hpp>
#include <kmem/scatterlist.hpp>
#include <kmem/vmap.hpp>

#include "support/expect_error.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <numeric>
#include <set>
#include <string>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::Scatterlist;
using kmem::test::expect_error;

constexpr std::size_t ps = 4096;
using Buddy = kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::ThrowOnError>;
using Table = kmem::SgTable<ps>;

// Eight neighbouring frames (`block`) and two lone pages that neighbour neither it nor each other: every page of
// the allocator is taken, so the descriptors of the sorted pages are consecutive, and the rest is given back.
struct Pages {
    Buddy& buddy;
    std::vector<Page*> kept;
    Page* block = nullptr;
    Page* lone1 = nullptr;
    Page* lone2 = nullptr;
    explicit Pages(Buddy& b) : buddy(b) {
        std::vector<Page*> all;
        while (Page* p = b.alloc_pages(gfp::kernel | gfp::nowarn, 0)) all.push_back(p);
        std::sort(all.begin(), all.end());
        BOOST_REQUIRE(all.size() >= 64u);
        BOOST_REQUIRE(all.back() == all.front() + (all.size() - 1)); // one table, every frame taken
        lone1 = all[10];
        block = all[20];
        lone2 = all[40];
        for (std::size_t k = 0; k < all.size(); ++k) {
            if (k == 10 || k == 40 || (k >= 20 && k < 28))
                kept.push_back(all[k]);
            else
                b.free_pages(all[k], 0);
        }
    }
    ~Pages() {
        for (Page* p : kept) buddy.free_pages(p, 0);
    }
};

std::vector<Scatterlist> entries(const Table& t) {
    return {t.begin(), t.end()};
}

} // namespace

BOOST_AUTO_TEST_SUITE(sg_alloc_table_from_pages)

BOOST_AUTO_TEST_CASE(neighbouring_frames_share_an_entry) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Pages p(buddy);
    const std::vector<Page*> pages{p.block,     p.block + 1, p.block + 2, p.lone1,     p.block + 3,
                                   p.block + 4, p.block + 5, p.block + 6, p.block + 7, p.lone2};
    const std::uint64_t size = 10 * ps - 100 - 50; // starts 100 bytes in, ends 50 bytes before the end
    const auto t = kmem::sg_alloc_table_from_pages(buddy, pages, 100, size);
    BOOST_REQUIRE(t.has_value());
    const std::vector<Scatterlist> want{
        {p.block, 100, 3 * ps - 100}, {p.lone1, 0, ps}, {p.block + 3, 0, 5 * ps}, {p.lone2, 0, ps - 50}};
    BOOST_TEST((entries(*t) == want));
    BOOST_TEST(t->nents() == 4u);
    BOOST_TEST(!t->empty());
    BOOST_TEST(t->total_length() == size);
    // Range-for with structured bindings: (page, offset, length).
    std::uint64_t sum = 0;
    for (auto [page, offset, length] : *t) {
        BOOST_TEST(page != nullptr);
        BOOST_TEST(offset + length <= 8 * ps);
        sum += length;
    }
    BOOST_TEST(sum == size);
}

BOOST_AUTO_TEST_CASE(max_segment_splits_runs) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Pages p(buddy);
    std::vector<Page*> run(8);
    std::iota(run.begin(), run.end(), p.block); // Page* arithmetic: the descriptors are a table
    for (std::uint64_t seg : {3 * ps, 3 * ps + 100, 3 * ps + ps - 1}) {
        const auto t = kmem::sg_alloc_table_from_pages(buddy, run, 0, 8 * ps, seg); // rounded down to 3 pages
        BOOST_REQUIRE(t.has_value());
        const std::vector<Scatterlist> want{
            {p.block, 0, 3 * ps}, {p.block + 3, 0, 3 * ps}, {p.block + 6, 0, 2 * ps}};
        BOOST_TEST((entries(*t) == want));
    }
    const auto one = kmem::sg_alloc_table_from_pages(buddy, run, 7, 8 * ps - 7, ps); // a page per entry
    BOOST_REQUIRE(one.has_value());
    BOOST_TEST(one->nents() == 8u);
    BOOST_TEST((*one)[0].offset == 7u);
    BOOST_TEST((*one)[0].length == ps - 7);
    const auto whole = kmem::sg_alloc_table_from_pages(buddy, run, 0, 8 * ps);
    BOOST_TEST(whole->nents() == 1u);
    BOOST_TEST(Table::max_segment == 0xfffff000u); // SCATTERLIST_MAX_SEGMENT for 4 KiB pages
}

BOOST_AUTO_TEST_CASE(pages_walks_each_page) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Pages p(buddy);
    const std::vector<Page*> pages{p.lone1, p.block, p.block + 1, p.block + 2};
    const auto t = kmem::sg_alloc_table_from_pages(buddy, pages, ps - 10, 2 * ps + 30);
    BOOST_REQUIRE(t.has_value());
    BOOST_TEST(t->nents() == 2u);
    std::vector<Scatterlist> pieces;
    for (Scatterlist piece : t->pages()) pieces.push_back(piece);
    const std::vector<Scatterlist> want{
        {p.lone1, ps - 10, 10}, {p.block, 0, ps}, {p.block + 1, 0, ps}, {p.block + 2, 0, 20}};
    BOOST_TEST((pieces == want));
    BOOST_TEST(std::distance(t->pages().begin(), t->pages().end()) == 4);
    const Table empty;
    BOOST_TEST(empty.nents() == 0u);
    BOOST_TEST((empty.begin() == empty.end()));
    BOOST_TEST((empty.pages().begin() == empty.pages().end()));
}

BOOST_AUTO_TEST_CASE(copies_to_and_from_a_buffer) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Pages p(buddy);
    const std::vector<Page*> pages{p.block + 5, p.block + 6, p.lone2, p.block};
    const std::size_t size = 4 * ps - 300;
    const auto t = kmem::sg_alloc_table_from_pages(buddy, pages, 200, size);
    BOOST_REQUIRE(t.has_value());
    std::vector<unsigned char> src(size);
    for (std::size_t k = 0; k < size; ++k) src[k] = static_cast<unsigned char>(k * 7 + 3);
    BOOST_TEST(kmem::sg_copy_from_buffer(buddy, *t, src.data(), src.size()) == size);
    // Byte k of the buffer is byte (200 + k) of the concatenated pages.
    for (std::size_t k : {std::size_t{0}, ps - 201, ps - 200, 2 * ps, size - 1}) {
        const std::size_t at = 200 + k;
        const auto* page = static_cast<unsigned char*>(buddy.page_address(pages[at / ps]));
        BOOST_TEST(page[at % ps] == src[k]);
    }
    std::vector<unsigned char> back(size + 100, 0);
    BOOST_TEST(kmem::sg_copy_to_buffer(buddy, *t, back.data(), back.size()) == size); // a longer buffer
    BOOST_TEST(std::equal(src.begin(), src.end(), back.begin()));
    std::vector<unsigned char> part(1000);
    BOOST_TEST(kmem::sg_copy_to_buffer(buddy, *t, part.data(), part.size(), ps) == 1000u); // skip
    BOOST_TEST(std::equal(part.begin(), part.end(), src.begin() + ps));
    BOOST_TEST(kmem::sg_copy_to_buffer(buddy, *t, part.data(), part.size(), size - 10) == 10u);
    BOOST_TEST(kmem::sg_copy_to_buffer(buddy, *t, part.data(), part.size(), size) == 0u);
    const unsigned char patch[3] = {1, 2, 3};
    BOOST_TEST(kmem::sg_copy_from_buffer(buddy, *t, patch, 3, ps - 201) == 3u); // straddles two entries
    BOOST_TEST(kmem::sg_copy_to_buffer(buddy, *t, back.data(), size) == size);
    BOOST_TEST(int(back[ps - 201]) == 1);
    BOOST_TEST(int(back[ps - 200]) == 2);
    BOOST_TEST(int(back[ps - 199]) == 3);
}

BOOST_AUTO_TEST_CASE(mistakes_are_reported) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Buddy other(kmem::MemfdRegion(16 * ps));
    Pages p(buddy);
    Page* foreign = other.alloc_pages(gfp::kernel, 0);
    const std::vector<Page*> two{p.block, p.block + 1};
    const auto fails = [&](ErrorKind kind, auto call, const char* needle) {
        auto e = expect_error(
            buddy, kind, [&] { BOOST_TEST(!call().has_value()); }, needle);
        if (e) BOOST_TEST(e->operation == "sg_alloc_table_from_pages");
    };
    fails(
        ErrorKind::bad_parameter, [&] { return kmem::sg_alloc_table_from_pages(buddy, {}, 0, 1); },
        "no pages");
    const std::vector<Page*> with_null{p.block, nullptr};
    fails(
        ErrorKind::bad_parameter,
        [&] { return kmem::sg_alloc_table_from_pages(buddy, with_null, 0, 2 * ps); },
        "page 1 of 2 is a null pointer");
    const std::vector<Page*> with_foreign{foreign, p.block};
    fails(
        ErrorKind::out_of_region,
        [&] { return kmem::sg_alloc_table_from_pages(buddy, with_foreign, 0, 2 * ps); }, "page 0 of 2");
    fails(
        ErrorKind::bad_parameter, [&] { return kmem::sg_alloc_table_from_pages(buddy, two, ps, ps); },
        "not inside the first page");
    fails(
        ErrorKind::bad_parameter, [&] { return kmem::sg_alloc_table_from_pages(buddy, two, 0, 0); },
        "0 bytes");
    fails(
        ErrorKind::bad_parameter, [&] { return kmem::sg_alloc_table_from_pages(buddy, two, 0, 2 * ps + 1); },
        "need 3 pages but 2 were given");
    fails(
        ErrorKind::bad_parameter, [&] { return kmem::sg_alloc_table_from_pages(buddy, two, 10, ps - 10); },
        "need 1 page but 2 were given");
    fails(
        ErrorKind::bad_parameter,
        [&] { return kmem::sg_alloc_table_from_pages(buddy, two, 0, 2 * ps, ps - 1); }, "maximum segment");
    fails(
        ErrorKind::bad_parameter,
        [&] { return kmem::sg_alloc_table_from_pages(buddy, two, 0, ~std::uint64_t{0}); }, "were given");
    other.free_pages(foreign, 0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(vmalloc_areas)

BOOST_AUTO_TEST_CASE(the_list_of_an_area_holds_its_pages_and_bytes) {
    Buddy buddy(kmem::MemfdRegion(512 * ps));
    kmem::VirtualMap<Buddy&, kmem::policy::ThrowOnError> vm(buddy);
    // Scatter the free pages so that the area's pages form many short runs.
    std::vector<Page*> all;
    while (Page* q = buddy.alloc_pages(gfp::kernel | gfp::nowarn, 0)) all.push_back(q);
    std::sort(all.begin(), all.end());
    std::vector<Page*> kept;
    for (std::size_t k = 0; k < all.size(); ++k) {
        if (k % 5 < 3)
            buddy.free_pages(all[k], 0);
        else
            kept.push_back(all[k]);
    }
    const std::size_t size = 100 * ps;
    auto* area = static_cast<unsigned char*>(vm.vmalloc(size));
    BOOST_REQUIRE(area != nullptr);
    for (std::size_t k = 0; k < size; ++k) area[k] = static_cast<unsigned char>(k ^ (k >> 12));
    const std::size_t start = 1234, len = size - 1234 - 777;
    const auto t = vm.sg_table(area + start, len);
    BOOST_REQUIRE(t.has_value());
    BOOST_TEST(t->nents() > 10u); // runs of at most three neighbouring frames
    BOOST_TEST(t->total_length() == len);
    BOOST_TEST((*t)[0].offset == start % ps);
    std::size_t k = start / ps;
    for (Scatterlist piece : t->pages()) BOOST_TEST(piece.page == vm.vmalloc_to_page(area + ps * k++));
    BOOST_TEST(k == (start + len - 1) / ps + 1);
    for (const Scatterlist& sg : *t) BOOST_TEST(sg.length <= 3 * ps);
    // Copying out through the page allocator's addresses gives the bytes written through the area.
    std::vector<unsigned char> out(len);
    BOOST_TEST(kmem::sg_copy_to_buffer(vm, *t, out.data(), len) == len);
    BOOST_TEST(std::equal(out.begin(), out.end(), area + start));
    // The free function accepts the VirtualMap too (its pages, its error policy).
    std::vector<Page*> pages;
    for (std::size_t i = 0; i < 100; ++i) pages.push_back(vm.vmalloc_to_page(area + i * ps));
    const auto same = kmem::sg_alloc_table_from_pages(vm, pages, 0, size);
    BOOST_REQUIRE(same.has_value());
    BOOST_TEST(same->total_length() == size);
    expect_error(vm, ErrorKind::bad_parameter,
                 [&] { (void)kmem::sg_alloc_table_from_pages(vm, pages, 0, 1); });
    // A segment limit applies to the area's list as well.
    const auto small = vm.sg_table(area, size, ps);
    BOOST_REQUIRE(small.has_value());
    BOOST_TEST(small->nents() == 100u);
    vm.vfree(area);
    for (Page* q : kept) buddy.free_pages(q, 0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(randomized)

BOOST_AUTO_TEST_CASE(tables_match_their_definition) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        kmem::test::Xoshiro256 rng(seed);
        Buddy buddy(kmem::MemfdRegion(1024 * ps));
        std::vector<std::pair<Page*, unsigned>> blocks; // a pool of pages with runs of every length
        while (Page* b = buddy.alloc_pages(gfp::kernel | gfp::nowarn, static_cast<unsigned>(rng.below(4))))
            blocks.push_back({b, static_cast<unsigned>(b->order())});
        std::vector<Page*> pool;
        for (auto [b, order] : blocks)
            for (unsigned k = 0; k < (1u << order); ++k) pool.push_back(b + k);
        std::vector<unsigned char> data, back;
        for (int round = 0; round < 3000; ++round) {
            // Pages: stretches of neighbours from the pool, random jumps, sometimes a page twice.
            std::vector<Page*> pages;
            const std::size_t n = rng.between(1, 40);
            std::size_t at = rng.below(pool.size());
            while (pages.size() < n) {
                if (rng.percent(30)) at = rng.below(pool.size());
                if (rng.percent(5) && !pages.empty()) {
                    pages.push_back(pages.back());
                    continue;
                }
                pages.push_back(pool[at]);
                at = (at + 1) % pool.size();
            }
            const std::size_t offset = rng.percent(50) ? 0 : rng.below(ps);
            const std::size_t last = rng.between(1, ps);
            const std::uint64_t size = n == 1 ? std::max<std::uint64_t>(1, last > offset ? last - offset : 1)
                                              : (n - 1) * ps - offset + last;
            const std::uint64_t max_segment = rng.percent(50) ? Table::max_segment : rng.between(1, 6) * ps;
            const auto t = kmem::sg_alloc_table_from_pages(buddy, pages, offset, size, max_segment);
            BOOST_REQUIRE(t.has_value());
            // Definition: the pages in order, each entry a run of neighbours no longer than max_segment, runs
            // maximal, the first entry at `offset`, the bytes adding up to `size`.
            std::vector<Page*> seen;
            for (Scatterlist piece : t->pages()) seen.push_back(piece.page);
            BOOST_TEST_REQUIRE((seen == pages));
            BOOST_TEST_REQUIRE(t->total_length() == size);
            BOOST_TEST_REQUIRE((*t)[0].offset == offset);
            const std::uint64_t seg_pages = max_segment / ps;
            for (std::size_t e = 0; e < t->nents(); ++e) {
                const Scatterlist& sg = (*t)[e];
                const std::uint64_t span = (std::uint64_t{sg.offset} + sg.length + ps - 1) / ps;
                BOOST_TEST_REQUIRE(span <= seg_pages);
                if (e > 0) BOOST_TEST_REQUIRE(sg.offset == 0u);
                if (e + 1 < t->nents()) {
                    BOOST_TEST_REQUIRE((sg.offset + sg.length) % ps == 0u); // only the last entry ends early
                    const bool neighbour =
                        buddy.page_to_pfn((*t)[e + 1].page) == buddy.page_to_pfn(sg.page) + span;
                    BOOST_TEST_REQUIRE((!neighbour || span == seg_pages)); // maximal runs
                }
            }
            // Copies: what goes in through the list comes out of the pages' addresses, and back.
            if (std::adjacent_find(pages.begin(), pages.end()) == pages.end() &&
                std::set<Page*>(pages.begin(), pages.end()).size() == pages.size()) {
                data.resize(size);
                for (auto& c : data) c = static_cast<unsigned char>(rng());
                BOOST_TEST_REQUIRE(kmem::sg_copy_from_buffer(buddy, *t, data.data(), size) == size);
                const std::size_t probe = rng.below(size);
                const std::size_t pos = offset + probe;
                BOOST_TEST_REQUIRE(static_cast<unsigned char*>(
                                       buddy.page_address(pages[pos / ps]))[pos % ps] == data[probe]);
                back.assign(size, 0);
                BOOST_TEST_REQUIRE(kmem::sg_copy_to_buffer(buddy, *t, back.data(), size) == size);
                BOOST_TEST_REQUIRE((back == data));
            }
        }
        for (auto [b, order] : blocks) buddy.free_pages(b, order);
        BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    }
}

BOOST_AUTO_TEST_SUITE_END()
