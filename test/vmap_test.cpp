// Unit tests for include/kmem/vmap.hpp (VirtualMap: vmalloc, vzalloc, vfree, vmap, vunmap, lookups, reports),
// single-threaded; the threaded ones are in vmap_threads_test.cpp, the scatter lists in scatterlist_test.cpp.
//
// - basics: scattered pages mapped contiguously, both views (the area and page_address of each page) see the
//   same bytes, lookups, the /proc/vmallocinfo and /proc/meminfo formats, counters, destruction.
// - guard pages and protection: touching the guard page after an area, or writing a read-only vmap, kills a
//   child process with SIGSEGV.
// - failures: pages running out midway (everything given back), sizes above the allocator, address space
//   exhausted, warnings and gfp::nowarn.
// - gfp: the type form, the run-time form, zone modifiers honoured or dropped as vmalloc_fix_flags does.
// - mistakes: every caller mistake reported with its kind, nothing changed; a callback may call back in;
//   AssertOnError aborts.
// - model: random vmalloc / vzalloc / vfree / vmap / vunmap / page holding against a shadow model, the contents
//   written and checked through both views, invariants and reports checked along the way; seed printed.
#include <kmem/buddy.hpp>
#include <kmem/page.hpp>
#include <kmem/pmr.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/zone.hpp>
#include <kmem/region.hpp>
#include <kmem/vmap.hpp>

#include "support/expect_error.hpp"
#include "support/random.hpp"

#include <boost/test/unit_test.hpp>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory_resource>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace gfp = kmem::gfp;
using kmem::ErrorKind;
using kmem::Page;
using kmem::VmKind;
using kmem::VmProt;
using kmem::test::expect_error;
using kmem::test::expect_no_error;

constexpr std::size_t ps = 4096;

using Buddy = kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::ThrowOnError>;
using Vm = kmem::VirtualMap<Buddy&, kmem::policy::ThrowOnError>;

std::byte* bytes(void* p) {
    return static_cast<std::byte*>(p);
}

// Takes every page, then frees every other one: whatever is allocated next comes from scattered frames.
std::vector<Page*> fragment(Buddy& buddy) {
    std::vector<Page*> all;
    while (Page* p = buddy.alloc_pages(gfp::kernel | gfp::nowarn, 0)) all.push_back(p);
    std::sort(all.begin(), all.end());
    std::vector<Page*> kept;
    for (std::size_t k = 0; k < all.size(); ++k) {
        if (k % 2 == 0)
            buddy.free_pages(all[k], 0);
        else
            kept.push_back(all[k]);
    }
    return kept;
}

// Runs `body` in a child process with the default SIGSEGV / SIGBUS / SIGABRT actions (the test framework's and
// sanitizers' handlers must not catch them) and no core file; returns the signal that ended it, or -exit code.
template <class Body>
int signal_in_child(Body body) {
    std::fflush(nullptr);
    const pid_t child = ::fork();
    BOOST_REQUIRE(child >= 0);
    if (child == 0) {
        const rlimit no_core{0, 0};
        ::setrlimit(RLIMIT_CORE, &no_core);
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        for (int sig : {SIGSEGV, SIGBUS, SIGABRT}) ::sigaction(sig, &dfl, nullptr);
        ::close(STDERR_FILENO); // AssertOnError's message is not part of this test's output
        body();
        ::_exit(0);
    }
    int status = 0;
    BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
    return WIFSIGNALED(status) ? WTERMSIG(status) : -WEXITSTATUS(status);
}

// Fields of one /proc/vmallocinfo line.
struct InfoLine {
    std::uintptr_t start = 0, end = 0;
    std::size_t size = 0;
    std::string caller;
    std::optional<std::size_t> pages;
    std::string kind;
};
std::vector<InfoLine> parse_vmallocinfo(const std::string& text) {
    static const std::regex line_re(
        R"(0x([0-9a-f]{16})-0x([0-9a-f]{16}) ([ 0-9]{7,}) (\S+)(?: pages=(\d+))? (vmalloc|vmap))");
    std::vector<InfoLine> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        std::smatch m;
        BOOST_TEST_REQUIRE(std::regex_match(line, m, line_re), "unexpected vmallocinfo line: " << line);
        InfoLine l;
        l.start = std::stoull(m[1], nullptr, 16);
        l.end = std::stoull(m[2], nullptr, 16);
        l.size = std::stoull(m[3]);
        l.caller = m[4];
        if (m[5].matched) l.pages = std::stoull(m[5]);
        l.kind = m[6];
        out.push_back(l);
    }
    return out;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(basics)

BOOST_AUTO_TEST_CASE(scattered_pages_are_contiguous_in_the_area_and_both_views_agree) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Vm vm(buddy);
    const std::vector<Page*> kept = fragment(buddy); // 128 free pages, none next to another
    BOOST_REQUIRE(buddy.nr_free_pages() == 128u);
    const std::size_t size = 40 * ps + 123;
    auto* p = bytes(vm.vmalloc(size));
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) % ps == 0u);
    BOOST_TEST(buddy.nr_free_pages() == 128u - 41u);
    BOOST_TEST(vm.nr_vmalloc_pages() == 41u);
    std::set<std::uint64_t> pfns;
    for (std::size_t k = 0; k < 41; ++k) {
        Page* page = vm.vmalloc_to_page(p + k * ps + 5);
        BOOST_REQUIRE(page != nullptr);
        BOOST_TEST(page->test(kmem::PageFlag::block));
        BOOST_TEST((vm.vmalloc_to_pfn(p + k * ps) == buddy.page_to_pfn(page)));
        pfns.insert(buddy.page_to_pfn(page));
        // Write through the area, read through the page's own address; and the other way round.
        p[k * ps + 17] = std::byte(k);
        auto* direct = bytes(buddy.page_address(page));
        BOOST_TEST(int(direct[17]) == int(k));
        direct[ps - 1] = std::byte(200 - k);
        BOOST_TEST(int(p[k * ps + ps - 1]) == int(200 - k));
    }
    BOOST_TEST(pfns.size() == 41u); // distinct pages
    for (auto it = std::next(pfns.begin()); it != pfns.end(); ++it)
        BOOST_TEST(*it - *std::prev(it) >= 2u); // none neighbours another: they really are scattered
    std::memset(p, 0x5a, size);                 // the whole range is writable
    BOOST_TEST(vm.vmalloc_to_page(p + 41 * ps) == nullptr); // the guard page maps nothing
    BOOST_TEST(vm.check_invariants() == "");
    vm.vfree(p);
    BOOST_TEST(buddy.nr_free_pages() == 128u);
    BOOST_TEST(vm.nr_vmalloc_pages() == 0u);
    BOOST_TEST(vm.check_invariants() == "");
    for (Page* k : kept) buddy.free_pages(k, 0);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_CASE(neighbouring_pages_are_mapped_in_runs) {
    // On a fresh allocator order-0 pages come out of each block in address order (the edges of the region hold
    // a few small blocks): far fewer runs than pages, and the area holds the right bytes at every page.
    Buddy buddy(kmem::MemfdRegion(1024 * ps));
    Vm vm(buddy);
    auto* p = bytes(vm.vmalloc(300 * ps));
    BOOST_REQUIRE(p != nullptr);
    std::size_t runs = 1;
    for (std::size_t k = 1; k < 300; ++k)
        runs += buddy.page_to_pfn(vm.vmalloc_to_page(p + k * ps)) !=
                buddy.page_to_pfn(vm.vmalloc_to_page(p + (k - 1) * ps)) + 1;
    BOOST_TEST(runs < 60u);
    for (std::size_t k = 0; k < 300; ++k) {
        std::memcpy(p + k * ps + 8, &k, sizeof k);
        std::size_t seen = 0;
        std::memcpy(&seen, bytes(buddy.page_address(vm.vmalloc_to_page(p + k * ps))) + 8, sizeof seen);
        BOOST_TEST(seen == k);
    }
    vm.vfree(p);
}

BOOST_AUTO_TEST_CASE(vzalloc_zeroes_dirty_pages) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    auto* dirty = bytes(vm.vmalloc(64 * ps));
    BOOST_REQUIRE(dirty != nullptr);
    std::memset(dirty, 0xa5, 64 * ps);
    vm.vfree(dirty); // every page of the allocator is dirty now
    auto* z = bytes(vm.vzalloc(64 * ps - 10));
    BOOST_REQUIRE(z != nullptr);
    BOOST_TEST(std::all_of(z, z + 64 * ps, [](std::byte b) { return b == std::byte{0}; }));
    vm.vfree(z);
    auto* c = bytes(vm.vcalloc(16, ps));
    BOOST_REQUIRE(c != nullptr);
    BOOST_TEST(std::all_of(c, c + 16 * ps, [](std::byte b) { return b == std::byte{0}; }));
    vm.vfree(c);
    auto* z2 = bytes(vm.vzalloc(3 * ps, gfp::nowait)); // the flag form: may not sleep
    BOOST_REQUIRE(z2 != nullptr);
    BOOST_TEST(std::all_of(z2, z2 + 3 * ps, [](std::byte b) { return b == std::byte{0}; }));
    vm.vfree(z2);
}

BOOST_AUTO_TEST_CASE(lookups_and_find_vm_area) {
    Buddy buddy(kmem::MemfdRegion(128 * ps));
    Vm vm(buddy);
    int marker = 0;
    BOOST_TEST(!vm.is_vmalloc_addr(&marker));
    BOOST_TEST(!vm.owns(&marker));
    BOOST_TEST(vm.vmalloc_to_page(&marker) == nullptr);
    BOOST_TEST(!vm.find_vm_area(&marker).has_value());
    BOOST_TEST(!vm.vmalloc_to_pfn(&marker).has_value());
    BOOST_TEST(!vm.is_vmalloc_addr(buddy.region().data())); // the allocator's own addresses are not vmalloc's
    const unsigned line = __LINE__ + 1;
    auto* p = bytes(vm.vmalloc(5 * ps + 1));
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(vm.is_vmalloc_addr(p));
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) >= vm.vmalloc_start());
    BOOST_TEST(reinterpret_cast<std::uintptr_t>(p) + 7 * ps <= vm.vmalloc_end());
    for (std::size_t off : {std::size_t{0}, 6 * ps - 1}) BOOST_TEST(vm.owns(p + off));
    BOOST_TEST(!vm.owns(p + 6 * ps)); // the guard page
    BOOST_TEST(vm.is_vmalloc_addr(p + 6 * ps));
    for (std::size_t off : {std::size_t{0}, 3 * ps + 5, 6 * ps, 7 * ps - 1}) { // guard page included
        const auto area = vm.find_vm_area(p + off);
        BOOST_REQUIRE(area.has_value());
        BOOST_TEST(area->addr == p);
        BOOST_TEST(area->size == 7 * ps);
        BOOST_TEST(area->guard_size == ps);
        BOOST_TEST(area->usable_size() == 6 * ps);
        BOOST_TEST(area->nr_pages == 6u);
        BOOST_TEST(area->requested == 5 * ps + 1);
        BOOST_TEST((area->kind == VmKind::vmalloc));
        BOOST_TEST((area->prot == VmProt::read_write));
        BOOST_TEST(area->caller ==
                   "test_method@vmap_test.cpp:" + std::to_string(line)); // the call site, by default
    }
    BOOST_TEST(!vm.find_vm_area(p + 7 * ps).has_value());
    vm.vfree(p);
    BOOST_TEST(!vm.owns(p));
    BOOST_TEST(!vm.find_vm_area(p).has_value());
    BOOST_TEST(vm.vmalloc_to_page(p) == nullptr);
    BOOST_TEST(vm.is_vmalloc_addr(p)); // still inside the window
}

BOOST_AUTO_TEST_CASE(vmallocinfo_and_meminfo_formats) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Vm vm(buddy, {.address_space = std::size_t{16} << 20});
    BOOST_TEST(vm.vmallocinfo() == "");
    auto* a = bytes(vm.vmalloc(16 * ps, "ring_buffer"));
    auto* b = bytes(vm.vzalloc(1));
    std::vector<Page*> pages{buddy.alloc_pages(gfp::kernel, 0), buddy.alloc_pages(gfp::kernel, 0)};
    auto* c = bytes(vm.vmap(pages, VmProt::read_write, "fb_map"));
    BOOST_REQUIRE((a && b && c));
    const std::string info = vm.vmallocinfo();
    const std::vector<InfoLine> lines = parse_vmallocinfo(info);
    BOOST_REQUIRE(lines.size() == 3u);
    BOOST_TEST(std::is_sorted(lines.begin(), lines.end(),
                              [](const InfoLine& x, const InfoLine& y) { return x.start < y.start; }));
    std::map<std::uintptr_t, InfoLine> by_start;
    for (const InfoLine& l : lines) by_start[l.start] = l;
    const InfoLine& la = by_start.at(reinterpret_cast<std::uintptr_t>(a));
    BOOST_TEST(la.size == 69632u); // 16 pages + the guard page, as the kernel counts it
    BOOST_TEST(la.end == la.start + 69632u);
    BOOST_TEST(la.caller == "ring_buffer");
    BOOST_TEST((la.pages == std::optional<std::size_t>(16)));
    BOOST_TEST(la.kind == "vmalloc");
    const InfoLine& lb = by_start.at(reinterpret_cast<std::uintptr_t>(b));
    BOOST_TEST(lb.size == 8192u);
    BOOST_TEST((lb.pages == std::optional<std::size_t>(1)));
    BOOST_TEST(lb.caller.rfind("test_method@vmap_test.cpp:", 0) == 0u);
    const InfoLine& lc = by_start.at(reinterpret_cast<std::uintptr_t>(c));
    BOOST_TEST(lc.size == 3 * ps);
    BOOST_TEST(!lc.pages.has_value()); // the kernel prints pages= for vmalloc areas only
    BOOST_TEST(lc.kind == "vmap");
    BOOST_TEST(lc.caller == "fb_map");
    // The exact text of one line, as s_show() prints it.
    char expect[80];
    std::snprintf(expect, sizeof expect, "0x%016llx-0x%016llx   69632 ring_buffer pages=16 vmalloc\n",
                  static_cast<unsigned long long>(la.start), static_cast<unsigned long long>(la.end));
    BOOST_TEST(info.find(expect) != std::string::npos);

    const kmem::VmallocStats s = vm.stats();
    BOOST_TEST(s.address_space == std::uint64_t{16} << 20);
    BOOST_TEST(s.address_used == (17u + 2u + 3u) * ps);
    BOOST_TEST(s.vmalloc_areas == 2u);
    BOOST_TEST(s.vmap_areas == 1u);
    BOOST_TEST(s.vmalloc_pages == 17u);
    BOOST_TEST(s.vmap_pages == 2u);
    BOOST_TEST(s.allocations == 3u);
    BOOST_TEST(s.frees == 0u);
    BOOST_TEST(s.failures == 0u);
    BOOST_TEST(s.largest_free <= s.address_space - s.address_used);
    BOOST_TEST(s.largest_free >= s.address_space - s.address_used - 22 * ps);
    std::ostringstream want;
    want << "VmallocTotal:   " << std::string(3, ' ') << "16384 kB\n"
         << "VmallocUsed:    " << std::string(6, ' ') << "68 kB\n";
    BOOST_TEST(vm.meminfo().rfind(want.str(), 0) == 0u, vm.meminfo());
    BOOST_TEST(vm.meminfo().find("VmallocChunk:   ") != std::string::npos);

    vm.vunmap(c);
    vm.vfree(b);
    vm.vfree(a);
    BOOST_TEST(vm.vmallocinfo() == "");
    BOOST_TEST(vm.stats().address_used == 0u);
    BOOST_TEST(vm.stats().frees == 3u);
    BOOST_TEST(vm.stats().largest_free == std::uint64_t{16} << 20); // merged back into one range
    for (Page* p : pages) buddy.free_pages(p, 0);
}

BOOST_AUTO_TEST_CASE(vmalloc_array_overflow_and_size_limits) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    std::ostringstream warnings;
    vm.set_warning_stream(&warnings);
    BOOST_TEST(vm.vmalloc_array(std::size_t{1} << 40, std::size_t{1} << 40) == nullptr); // overflow: quietly
    BOOST_TEST(vm.vcalloc(std::size_t{1} << 33, std::size_t{1} << 33) == nullptr);
    BOOST_TEST(warnings.str() == "");
    void* arr = vm.vmalloc_array(100, 40);
    BOOST_REQUIRE(arr != nullptr);
    BOOST_TEST(vm.find_vm_area(arr)->requested == 4000u);
    vm.vfree(arr);
    BOOST_TEST(vm.vmalloc(65 * ps) == nullptr); // more than the allocator manages
    BOOST_TEST(warnings.str().find("vmalloc error: size 266240, exceeds total pages") != std::string::npos);
    BOOST_TEST(vm.vmalloc(~std::size_t{0}) == nullptr);
    BOOST_TEST(vm.stats().failures == 2u);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_CASE(owned_allocator_options_and_destruction) {
    using OwnedVm = kmem::VirtualMap<kmem::BuddyAllocator<8, ps, kmem::MemfdRegion>>;
    OwnedVm owned(kmem::MemfdRegion(32 * ps));
    BOOST_TEST(owned.stats().address_space == std::uint64_t{64} << 20); // the minimum default
    void* p = owned.vmalloc(3 * ps);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(owned.parent().nr_free_pages() == 29u);
    owned.vfree(p);
    OwnedVm sized(kmem::VmapOptions{.address_space = 1 << 20, .populate = false},
                  kmem::MemfdRegion(1024 * ps));
    BOOST_TEST(sized.stats().address_space == std::uint64_t{1} << 20);
    auto* q = bytes(sized.vmalloc(10 * ps)); // not populated: the first touch of each page faults it in
    BOOST_REQUIRE(q != nullptr);
    q[9 * ps] = std::byte{7};
    BOOST_TEST(int(bytes(sized.parent().page_address(sized.vmalloc_to_page(q + 9 * ps)))[0]) == 7);
    sized.vfree(q);
    BOOST_TEST(OwnedVm(kmem::MemfdRegion(32768 * ps)).stats().address_space ==
               4u * 32768u * ps); // 4x managed

    // Destroying a VirtualMap gives the pages of its live vmalloc areas back and leaves vmap pages alone.
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Page* mine = buddy.alloc_pages(gfp::kernel, 0);
    {
        Vm vm(buddy);
        BOOST_REQUIRE(vm.vmalloc(20 * ps) != nullptr);
        BOOST_REQUIRE(vm.vzalloc(ps) != nullptr);
        Page* one[] = {mine};
        BOOST_REQUIRE(vm.vmap(one) != nullptr);
        BOOST_TEST(buddy.nr_free_pages() == 64u - 22u);
    }
    BOOST_TEST(buddy.nr_free_pages() == 63u);
    buddy.free_pages(mine, 0);
    BOOST_TEST(buddy.check_invariants() == "");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(guard_and_protection)

BOOST_AUTO_TEST_CASE(touching_the_guard_page_faults) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    auto* p = bytes(vm.vmalloc(3 * ps));
    auto* next = bytes(vm.vmalloc(ps)); // another area: the guard page must separate them
    BOOST_REQUIRE((p && next));
    volatile std::byte* v = p;
    BOOST_TEST(signal_in_child([&] { v[3 * ps - 1] = std::byte{1}; }) == 0); // the last byte is fine
    BOOST_TEST(signal_in_child([&] { v[3 * ps] = std::byte{1}; }) == SIGSEGV);
    BOOST_TEST(signal_in_child([&] { (void)v[4 * ps - 1]; }) == SIGSEGV);
    volatile std::byte* w = next;
    BOOST_TEST(signal_in_child([&] { (void)w[-1]; }) == SIGSEGV); // the page before `next` is p's guard page
    vm.vfree(p);
    BOOST_TEST(signal_in_child([&] { (void)v[0]; }) == SIGSEGV); // freed: reserved PROT_NONE again
    vm.vfree(next);
}

BOOST_AUTO_TEST_CASE(read_only_vmap_faults_on_write) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    Page* page = buddy.alloc_pages(gfp::kernel, 0);
    bytes(buddy.page_address(page))[100] = std::byte{42};
    Page* pages[] = {page, page};
    auto* ro = bytes(vm.vmap(pages, VmProt::read_only));
    BOOST_REQUIRE(ro != nullptr);
    BOOST_TEST((vm.find_vm_area(ro)->prot == VmProt::read_only));
    BOOST_TEST(int(ro[100]) == 42);
    BOOST_TEST(int(ro[ps + 100]) == 42); // the same page twice
    volatile std::byte* v = ro;
    BOOST_TEST(signal_in_child([&] { (void)v[ps]; }) == 0);
    BOOST_TEST(signal_in_child([&] { v[0] = std::byte{1}; }) == SIGSEGV);
    vm.vunmap(ro);
    buddy.free_pages(page, 0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(vmap_and_vunmap)

BOOST_AUTO_TEST_CASE(maps_caller_pages_in_the_order_given) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    Page* block = buddy.alloc_pages(gfp::kernel, 2); // four neighbours
    Page* lone = buddy.alloc_pages(gfp::kernel, 0);
    std::vector<Page*> pages{block + 3, lone, block, block + 1, block + 2, lone};
    for (std::size_t k = 0; k < 4; ++k) bytes(buddy.page_address(block + k))[0] = std::byte(10 + k);
    bytes(buddy.page_address(lone))[0] = std::byte{99};
    const std::size_t free_before = buddy.nr_free_pages();
    auto* v = bytes(vm.vmap(pages));
    BOOST_REQUIRE(v != nullptr);
    BOOST_TEST(buddy.nr_free_pages() == free_before); // vmap takes no page
    const int want[] = {13, 99, 10, 11, 12, 99};
    for (std::size_t k = 0; k < pages.size(); ++k) {
        BOOST_TEST(int(v[k * ps]) == want[k]);
        BOOST_TEST(vm.vmalloc_to_page(v + k * ps) == pages[k]);
    }
    v[5 * ps + 1] = std::byte{55}; // the last slot is `lone` again
    BOOST_TEST(int(v[ps + 1]) == 55);
    BOOST_TEST(int(bytes(buddy.page_address(lone))[1]) == 55);
    const auto area = vm.find_vm_area(v);
    BOOST_TEST((area->kind == VmKind::vmap));
    BOOST_TEST(area->nr_pages == 6u);
    BOOST_TEST(vm.stats().vmap_pages == 6u);
    BOOST_TEST(vm.check_invariants() == "");
    vm.vunmap(v);
    BOOST_TEST(buddy.nr_free_pages() == free_before); // the pages stay the caller's
    BOOST_TEST(int(bytes(buddy.page_address(lone))[1]) == 55);
    // vfree of a vmap area unmaps it and leaves the pages alone too, as the kernel's vfree does.
    auto* w = vm.vmap(pages);
    BOOST_REQUIRE(w != nullptr);
    vm.vfree(w);
    BOOST_TEST(buddy.nr_free_pages() == free_before);
    BOOST_TEST(vm.stats().vmap_areas == 0u);
    buddy.free_pages(block, 2);
    buddy.free_pages(lone, 0);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_CASE(vmap_of_more_pages_than_managed_fails_quietly) {
    Buddy buddy(kmem::MemfdRegion(8 * ps));
    Vm vm(buddy);
    Page* p = buddy.alloc_pages(gfp::kernel, 0);
    std::vector<Page*> many(9, p);
    BOOST_TEST(vm.vmap(many) == nullptr); // the kernel's count > totalram_pages() check
    BOOST_TEST(vm.stats().failures == 1u);
    many.resize(8);
    void* ok = vm.vmap(many);
    BOOST_TEST(ok != nullptr);
    vm.vunmap(ok);
    buddy.free_pages(p, 0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(failures)

BOOST_AUTO_TEST_CASE(pages_running_out_midway_are_all_given_back) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    std::ostringstream warnings;
    vm.set_warning_stream(&warnings);
    buddy.set_warning_stream(&warnings);
    void* held = vm.vmalloc(40 * ps);
    BOOST_REQUIRE(held != nullptr);
    const std::string info_before = buddy.buddyinfo();
    BOOST_TEST(vm.vmalloc(25 * ps) == nullptr); // 24 pages left: fails at the 25th
    BOOST_TEST(buddy.nr_free_pages() == 24u);
    BOOST_TEST(buddy.buddyinfo() == info_before); // every page given back where it was
    BOOST_TEST(buddy.check_invariants() == "");
    BOOST_TEST(vm.check_invariants() == "");
    BOOST_TEST(vm.stats().vmalloc_areas == 1u);
    BOOST_TEST(vm.stats().address_used == 41u * ps); // the address space too
    const std::string w = warnings.str();
    BOOST_TEST(
        w.find("kmem: vmalloc error: size 102400, failed to allocate pages (24 of 25 allocated, all given "
               "back), mode:0xcc0(GFP_KERNEL), nodemask=(null)\n") == 0u,
        w);
    BOOST_TEST(w.find(info_before) !=
               std::string::npos); // then the buddyinfo line, as warn_alloc shows memory
    BOOST_TEST(w.find("page allocation failure") ==
               std::string::npos); // the page allocations were __GFP_NOWARN
    warnings.str("");
    vm.set_name("driver");
    BOOST_TEST(vm.vmalloc(25 * ps, gfp::kernel | gfp::nowarn) == nullptr);
    BOOST_TEST(warnings.str() == "");
    BOOST_TEST(vm.vzalloc(25 * ps) == nullptr);
    BOOST_TEST(warnings.str().find("driver: vmalloc error: size 102400") == 0u);
    BOOST_TEST(warnings.str().find("mode:0xdc0(GFP_KERNEL|__GFP_ZERO)") != std::string::npos);
    BOOST_TEST(vm.stats().failures == 3u);
    void* rest = vm.vmalloc(24 * ps); // exactly what is left
    BOOST_TEST(rest != nullptr);
    BOOST_TEST(buddy.nr_free_pages() == 0u);
    vm.vfree(rest);
    vm.vfree(held);
    BOOST_TEST(buddy.nr_free_pages() == 64u);
}

BOOST_AUTO_TEST_CASE(address_space_running_out) {
    Buddy buddy(kmem::MemfdRegion(256 * ps));
    Vm vm(buddy, {.address_space = 32 * ps});
    std::ostringstream warnings;
    vm.set_warning_stream(&warnings);
    void* a = vm.vmalloc(15 * ps); // 16 pages of window
    void* b = vm.vmalloc(14 * ps); // 15 more: one left
    BOOST_REQUIRE((a && b));
    const std::size_t free_pages = buddy.nr_free_pages();
    BOOST_TEST(vm.vmalloc(ps) == nullptr); // one page and its guard need two
    BOOST_TEST(buddy.nr_free_pages() == free_pages);
    BOOST_TEST(warnings.str().find("vmalloc error: size 4096, vmap allocation for size 8192 failed: use "
                                   "VmapOptions::address_space to increase size") != std::string::npos,
               warnings.str());
    Page* page = buddy.alloc_pages(gfp::kernel, 0);
    Page* one[] = {page};
    BOOST_TEST(vm.vmap(one) == nullptr);
    vm.vfree(a);
    void* c = vm.vmap(one); // a's range is free again
    BOOST_TEST(c == a);
    BOOST_TEST(vm.check_invariants() == "");
    vm.vunmap(c);
    vm.vfree(b);
    buddy.free_pages(page, 0);
    BOOST_TEST(vm.stats().largest_free == 32u * ps);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(gfp_flags)

BOOST_AUTO_TEST_CASE(type_form_and_runtime_form) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    void* a = vm.vmalloc(ps, gfp::kernel_account);
    void* b = vm.vmalloc(ps, gfp::nofs | gfp::nowarn);
    void* c = vm.vmalloc(ps, kmem::gfp_t(gfp::kernel));
    void* d = vm.vmalloc(2 * ps, kmem::gfp_t(gfp::kernel | gfp::zero));
    BOOST_REQUIRE((a && b && c && d));
    BOOST_TEST(std::all_of(bytes(d), bytes(d) + 2 * ps, [](std::byte x) { return x == std::byte{0}; }));
    BOOST_TEST(vm.nr_vmalloc_pages() == 5u);
    for (void* p : {a, b, c, d}) vm.vfree(p);
    // Broken run-time flags are a caller mistake: reported, nothing allocated.
    expect_error(
        vm, ErrorKind::invalid_gfp,
        [&] { BOOST_TEST(vm.vmalloc(ps, kmem::gfp_t(gfp::dma | gfp::highmem)) == nullptr); },
        "name two different zones");
    const auto e = expect_error(vm, ErrorKind::invalid_gfp, [&] {
        BOOST_TEST(vm.vmalloc(ps, kmem::gfp_t(gfp::zero | gfp::dma32 | gfp::dma)) == nullptr);
    });
    BOOST_TEST(e->operation == "vzalloc");
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_CASE(sleeping_runtime_flags_under_a_spin_lock_are_refused) {
    using SpinBuddy = kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::SpinLock>;
    SpinBuddy buddy(kmem::MemfdRegion(64 * ps));
    kmem::VirtualMap<SpinBuddy&, kmem::policy::SpinLock, kmem::policy::ThrowOnError> vm(buddy);
    void* ok = vm.vmalloc(ps, gfp::atomic);
    BOOST_REQUIRE(ok != nullptr);
    vm.vfree(ok);
    expect_error(
        vm, ErrorKind::invalid_gfp, [&] { BOOST_TEST(vm.vmalloc(ps, kmem::gfp_t(gfp::kernel)) == nullptr); },
        "non-sleeping spin lock");
    void* ok2 = vm.vmalloc(ps, kmem::gfp_t(gfp::nowait));
    BOOST_TEST(ok2 != nullptr);
    vm.vfree(ok2);
}

BOOST_AUTO_TEST_CASE(zone_modifiers_are_honoured_or_dropped) {
    // A ZONE_NORMAL allocator has no DMA memory: vmalloc drops the modifier (vmalloc_fix_flags) and says so.
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Vm vm(buddy);
    std::ostringstream warnings;
    vm.set_warning_stream(&warnings);
    void* a = vm.vmalloc(ps, gfp::kernel | gfp::dma);
    BOOST_REQUIRE(a != nullptr);
    BOOST_TEST(warnings.str() ==
               "kmem: Unexpected gfp: 0x1 (GFP_DMA). Fixing up to gfp: 0xcc0 (GFP_KERNEL). Fix "
               "your code! (this page allocator serves no memory of that zone)\n");
    warnings.str("");
    void* b = vm.vmalloc(ps, kmem::gfp_t(gfp::kernel | gfp::dma32)); // the run-time form does the same
    BOOST_REQUIRE(b != nullptr);
    BOOST_TEST(warnings.str().find("Unexpected gfp: 0x4 (GFP_DMA32)") != std::string::npos);
    warnings.str("");
    void* c = vm.vmalloc(ps, gfp::highuser); // highmem: a normal zone serves it (zonelist fallback)
    BOOST_REQUIRE(c != nullptr);
    BOOST_TEST(warnings.str() == "");
    for (void* p : {a, b, c}) vm.vfree(p);

    // A ZONE_DMA32 allocator serves gfp::dma32: vmalloc_32 keeps the modifier, without a word.
    using Dma32Buddy =
        kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::InZone<kmem::ZoneType::dma32>>;
    Dma32Buddy low(kmem::MemfdRegion(64 * ps));
    kmem::VirtualMap<Dma32Buddy&> vm32(low);
    vm32.set_warning_stream(&warnings);
    void* d = vm32.vmalloc(4 * ps, gfp::kernel | gfp::dma32);
    BOOST_REQUIRE(d != nullptr);
    BOOST_TEST(warnings.str() == "");
    BOOST_TEST(low.nr_free_pages() == 60u);
    vm32.vfree(d);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(mistakes)

BOOST_AUTO_TEST_CASE(every_mistake_is_reported_and_changes_nothing) {
    Buddy buddy(kmem::MemfdRegion(64 * ps));
    Buddy other(kmem::MemfdRegion(8 * ps));
    Vm vm(buddy);
    auto* p = bytes(vm.vmalloc(4 * ps));
    Page* mine = buddy.alloc_pages(gfp::kernel, 0);
    Page* pages[] = {mine};
    auto* m = bytes(vm.vmap(pages));
    BOOST_REQUIRE((p && m));
    const std::string info = vm.vmallocinfo();
    const std::size_t free_pages = buddy.nr_free_pages();
    const auto unchanged = [&] {
        BOOST_TEST(vm.vmallocinfo() == info);
        BOOST_TEST(buddy.nr_free_pages() == free_pages);
        BOOST_TEST(vm.check_invariants() == "");
    };
    int outside = 0;
    auto e = expect_error(
        vm, ErrorKind::out_of_region, [&] { vm.vfree(&outside); }, "outside this VirtualMap");
    BOOST_TEST(e->operation == "vfree");
    expect_error(
        vm, ErrorKind::not_block_start, [&] { vm.vfree(p + ps); }, "inside the vmalloc area");
    expect_error(
        vm, ErrorKind::not_block_start, [&] { vm.vfree(p + 4 * ps); }, "guard page included");
    expect_error(
        vm, ErrorKind::not_block_start, [&] { vm.vunmap(m + 1); }, "inside the vmap area");
    e = expect_error(
        vm, ErrorKind::bad_parameter, [&] { vm.vunmap(p); }, "free it with vfree");
    BOOST_TEST(e->operation == "vunmap");
    unchanged();
    const std::uintptr_t free_addr = vm.vmalloc_end() - 3 * ps; // the window's top is free
    expect_error(vm, ErrorKind::misaligned, [&] { vm.vfree(reinterpret_cast<void*>(free_addr + 8)); });
    expect_error(
        vm, ErrorKind::double_free, [&] { vm.vfree(reinterpret_cast<void*>(free_addr)); }, "no area starts");
    e = expect_error(
        vm, ErrorKind::bad_parameter, [&] { BOOST_TEST(vm.vmalloc(0) == nullptr); }, "0 bytes");
    BOOST_TEST(e->operation == "vmalloc");
    e = expect_error(vm, ErrorKind::bad_parameter, [&] { BOOST_TEST(vm.vzalloc(0) == nullptr); });
    BOOST_TEST(e->operation == "vzalloc");
    expect_error(
        vm, ErrorKind::bad_parameter, [&] { BOOST_TEST(vm.vmap({}) == nullptr); }, "no pages");
    Page* with_null[] = {mine, nullptr};
    expect_error(
        vm, ErrorKind::bad_parameter, [&] { BOOST_TEST(vm.vmap(with_null) == nullptr); },
        "page 1 of 2 is a null pointer");
    Page* foreign[] = {mine, other.alloc_pages(gfp::kernel, 0)};
    expect_error(
        vm, ErrorKind::out_of_region, [&] { BOOST_TEST(vm.vmap(foreign) == nullptr); },
        "page 1 of 2 is not a page descriptor");
    expect_error(
        vm, ErrorKind::out_of_region, [&] { BOOST_TEST(!vm.sg_table(p + 3 * ps, ps + 1)); },
        "not inside the mapped pages");
    expect_error(vm, ErrorKind::bad_parameter, [&] { BOOST_TEST(!vm.sg_table(p, 0)); });
    expect_error(
        vm, ErrorKind::bad_parameter, [&] { BOOST_TEST(!vm.sg_table(p, ps, 100)); }, "maximum segment");
    unchanged();
    expect_no_error(vm, [&] {
        vm.vfree(nullptr); // as in the kernel
        vm.vunmap(nullptr);
    });
    vm.vfree(p);
    expect_error(
        vm, ErrorKind::double_free, [&] { vm.vfree(p); }, "freed already");
    vm.vunmap(m);
    expect_error(vm, ErrorKind::double_free, [&] { vm.vunmap(m); });
    buddy.free_pages(mine, 0);
    other.free_pages(foreign[1], 0);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_CASE(a_report_may_call_back_into_the_map) {
    // Reports are made after the lock is released: a callback that uses the VirtualMap does not deadlock.
    using MBuddy = kmem::BuddyAllocator<10, ps, kmem::MemfdRegion, kmem::policy::MutexLock>;
    using MVm = kmem::VirtualMap<MBuddy&, kmem::policy::MutexLock, kmem::policy::CallbackOnError>;
    MBuddy buddy(kmem::MemfdRegion(64 * ps));
    MVm vm(buddy);
    void* p = vm.vmalloc(2 * ps);
    BOOST_REQUIRE(p != nullptr);
    const auto reenter = [&](const kmem::UsageError&) {
        BOOST_TEST(vm.vmallocinfo().find(" pages=2 vmalloc") != std::string::npos);
        void* q = vm.vmalloc(ps);
        BOOST_TEST(q != nullptr);
        vm.vfree(q);
    };
    for (auto [kind, call] : std::vector<std::pair<ErrorKind, std::function<void()>>>{
             {ErrorKind::not_block_start, [&] { vm.vfree(bytes(p) + 1); }},
             {ErrorKind::bad_parameter, [&] { vm.vunmap(p); }},
             {ErrorKind::bad_parameter, [&] { (void)vm.vmalloc(0); }},
             {ErrorKind::out_of_region, [&] { (void)vm.sg_table(bytes(p) + ps, 2 * ps); }},
             {ErrorKind::invalid_gfp, [&] { (void)vm.vmalloc(1, kmem::gfp_t(gfp::nofail)); }}}) {
        expect_error(vm, kind, call,
                     kmem::test::ErrorExpectation{.during_report = reenter,
                                                  .watchdog = std::chrono::milliseconds(20000),
                                                  .label = "VirtualMap report"});
    }
    vm.vfree(p);
    BOOST_TEST(vm.check_invariants() == "");
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
}

BOOST_AUTO_TEST_CASE(assert_on_error_aborts) {
    using DBuddy = kmem::BuddyAllocator<10, ps, kmem::MemfdRegion>;
    DBuddy buddy(kmem::MemfdRegion(16 * ps));
    kmem::VirtualMap<DBuddy&> vm(buddy);
    void* p = vm.vmalloc(ps);
    BOOST_REQUIRE(p != nullptr);
    BOOST_TEST(signal_in_child([&] { vm.vfree(bytes(p) + 8); }) == SIGABRT);
    BOOST_TEST(signal_in_child([&] { vm.vfree(p); }) == 0);
    vm.vfree(p);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
// The model: random operations against a shadow of every area and every held page.
namespace {

struct ModelArea {
    VmKind kind;
    std::size_t requested;
    std::vector<Page*> pages;
    std::uint64_t tag; // stamps written into the area (vmalloc areas)
};

class VmapModel {
public:
    VmapModel(std::uint64_t seed)
        : rng_(seed), buddy_(kmem::MemfdRegion(total * ps)),
          vm_(buddy_, {.address_space = std::size_t{1} << 30}) {
        vm_.set_warning_stream(nullptr);
        buddy_.set_warning_stream(nullptr);
    }

    void run(int ops) {
        for (int i = 0; i < ops; ++i) {
            const std::uint64_t r = rng_.below(100);
            if (r < 25)
                op_vmalloc();
            else if (r < 45)
                op_vfree();
            else if (r < 55)
                op_vmap();
            else if (r < 62)
                op_vunmap();
            else if (r < 70)
                op_hold();
            else if (r < 75)
                op_release_held();
            else if (r < 85)
                op_check_area();
            else if (r < 90)
                op_sg_table();
            else if (r < 95)
                op_mistake();
            else
                op_lookup_outside();
            if (i % 500 == 0) check_all();
            BOOST_TEST_REQUIRE(!failed_, "the model stopped at operation " << i);
        }
        check_all();
        while (!areas_.empty()) free_area(areas_.begin()->first);
        for (Page* p : held_) buddy_.free_pages(p, 0);
        held_.clear();
        check_all();
        BOOST_TEST(buddy_.nr_free_pages() == buddy_.total_pages());
        BOOST_TEST(vm_.stats().address_used == 0u);
        BOOST_TEST(vm_.stats().largest_free == std::uint64_t{1} << 30);
        BOOST_TEST(counts_[0] > 0u); // every kind of operation really ran
        BOOST_TEST(counts_[1] > 0u);
        BOOST_TEST(counts_[2] > 0u);
        BOOST_TEST(failed_allocs_ > 0u);
    }

private:
    static constexpr std::size_t total = 2048;

    void expect(bool ok, const std::string& what) {
        if (!ok && !failed_) {
            failed_ = true;
            BOOST_ERROR(what);
        }
    }
    std::size_t expected_free() const { return total - vmalloc_pages_ - held_.size(); }

    static std::uint64_t stamp(std::uint64_t tag, std::size_t page, unsigned slot) {
        return kmem::test::SplitMix64(tag ^ (page << 8) ^ slot).next();
    }
    static void put(std::byte* at, std::uint64_t v) { std::memcpy(at, &v, sizeof v); }
    static std::uint64_t get(const std::byte* at) {
        std::uint64_t v;
        std::memcpy(&v, at, sizeof v);
        return v;
    }
    std::byte* direct(Page* p) { return bytes(buddy_.page_address(p)); }

    void op_vmalloc() {
        std::size_t size = 0;
        const std::uint64_t kind = rng_.below(10);
        if (kind == 0)
            size = rng_.between(expected_free() + 1, expected_free() + 64) * ps; // often more than is free
        else
            size = rng_.between(1, 48 * ps);
        const std::size_t nr = (size + ps - 1) / ps;
        const bool zero = rng_.percent(30);
        void* p = nullptr;
        switch (rng_.below(3)) {
        case 0:
            p = zero ? vm_.vzalloc(size) : vm_.vmalloc(size);
            break;
        case 1:
            p = zero ? vm_.vmalloc(size, gfp::kernel | gfp::zero) : vm_.vmalloc(size, gfp::nowait);
            break;
        default:
            p = vm_.vmalloc(size, zero ? kmem::gfp_t(gfp::kernel | gfp::zero) : kmem::gfp_t(gfp::kernel));
            break;
        }
        const bool fits = nr <= expected_free();
        expect((p != nullptr) == fits, "vmalloc of " + std::to_string(nr) + " pages with " +
                                           std::to_string(expected_free()) + " free pages returned " +
                                           (p ? "memory" : "nullptr"));
        if (p == nullptr) {
            ++failed_allocs_;
            expect(buddy_.nr_free_pages() == expected_free(),
                   "a failed vmalloc did not give every page back");
            return;
        }
        ++counts_[0];
        auto* b = bytes(p);
        ModelArea area{VmKind::vmalloc, size, {}, rng_()};
        for (std::size_t k = 0; k < nr; ++k) {
            Page* page = vm_.vmalloc_to_page(b + k * ps + rng_.below(ps));
            expect(page != nullptr && owner_.count(page) == 0, "vmalloc handed out a page that is in use");
            owner_[page] = b;
            area.pages.push_back(page);
        }
        if (zero) {
            for (std::size_t k = 0; k < nr; ++k)
                expect(
                    std::all_of(b + k * ps, b + (k + 1) * ps, [](std::byte x) { return x == std::byte{0}; }),
                    "vzalloc returned a page that is not zero");
        }
        // Stamps: slot 0 written through the area, slot 1 through the page's own address.
        for (std::size_t k = 0; k < nr; ++k) {
            put(b + k * ps, stamp(area.tag, k, 0));
            put(direct(area.pages[k]) + ps - 8, stamp(area.tag, k, 1));
        }
        vmalloc_pages_ += nr;
        areas_[b] = std::move(area);
    }

    void check_contents(std::byte* b, const ModelArea& a) {
        if (a.kind != VmKind::vmalloc) return;
        for (std::size_t k = 0; k < a.pages.size(); ++k) {
            const std::uint64_t s0 = stamp(a.tag, k, 0), s1 = stamp(a.tag, k, 1);
            expect(get(b + k * ps) == s0 && get(direct(a.pages[k])) == s0,
                   "a stamp written through the area differs in one of the two views");
            expect(get(b + k * ps + ps - 8) == s1 && get(direct(a.pages[k]) + ps - 8) == s1,
                   "a stamp written through page_address differs in one of the two views");
        }
    }

    std::byte* pick_area(std::optional<VmKind> kind = std::nullopt) {
        std::vector<std::byte*> candidates;
        for (const auto& [addr, a] : areas_)
            if (!kind || a.kind == *kind) candidates.push_back(addr);
        if (candidates.empty()) return nullptr;
        return candidates[rng_.below(candidates.size())];
    }

    void free_area(std::byte* b) {
        const ModelArea& a = areas_.at(b);
        check_contents(b, a);
        const bool vmalloc = a.kind == VmKind::vmalloc;
        if (vmalloc || rng_.percent(50))
            vm_.vfree(b);
        else
            vm_.vunmap(b);
        if (vmalloc) {
            vmalloc_pages_ -= a.pages.size();
            for (Page* p : a.pages) owner_.erase(p);
        } else {
            for (Page* p : a.pages) --mapped_[p];
        }
        areas_.erase(b);
        freed_.push_back(b);
        expect(!vm_.owns(b) && !vm_.find_vm_area(b), "a freed area is still found");
        expect(buddy_.nr_free_pages() == expected_free(), "vfree did not return exactly the area's pages");
    }

    void op_vfree() {
        if (std::byte* b = pick_area()) {
            ++counts_[1];
            free_area(b);
        }
    }

    void op_vmap() {
        if (held_.empty()) return;
        const std::size_t n = rng_.between(1, 16);
        ModelArea area{VmKind::vmap, n * ps, {}, 0};
        for (std::size_t k = 0; k < n; ++k) area.pages.push_back(held_[rng_.below(held_.size())]);
        const VmProt prot = rng_.percent(25) ? VmProt::read_only : VmProt::read_write;
        auto* b = bytes(vm_.vmap(area.pages, prot));
        expect(b != nullptr, "vmap failed with room to spare");
        if (b == nullptr) return;
        ++counts_[2];
        for (std::size_t k = 0; k < n; ++k) {
            expect(get(b + k * ps) == held_stamp_.at(area.pages[k]), "vmap shows another page's bytes");
            expect(vm_.vmalloc_to_page(b + k * ps + 7) == area.pages[k], "vmalloc_to_page differs for vmap");
            ++mapped_[area.pages[k]];
        }
        if (prot == VmProt::read_write) { // a write through the mapping lands in the page
            const std::size_t k = rng_.below(n);
            const std::uint64_t v = rng_();
            put(b + k * ps + 64, v);
            expect(get(direct(area.pages[k]) + 64) == v, "a write through vmap missed the page");
        }
        areas_[b] = std::move(area);
    }

    void op_vunmap() {
        if (std::byte* b = pick_area(VmKind::vmap)) free_area(b);
    }

    void op_hold() {
        Page* p = buddy_.alloc_pages(gfp::kernel | gfp::nowarn, 0);
        expect((p != nullptr) == (expected_free() > 0), "alloc_pages disagrees with the model's free count");
        if (p == nullptr) return;
        expect(owner_.count(p) == 0, "alloc_pages handed out a page of a vmalloc area");
        const std::uint64_t v = rng_();
        put(direct(p), v);
        held_stamp_[p] = v;
        held_.push_back(p);
    }

    void op_release_held() {
        if (held_.empty()) return;
        const std::size_t k = rng_.below(held_.size());
        Page* p = held_[k];
        if (mapped_[p] != 0) return; // still mapped by a vmap area: the caller must unmap first
        held_[k] = held_.back();
        held_.pop_back();
        held_stamp_.erase(p);
        buddy_.free_pages(p, 0);
    }

    void op_check_area() {
        std::byte* b = pick_area();
        if (b == nullptr) return;
        const ModelArea& a = areas_.at(b);
        check_contents(b, a);
        const auto info = vm_.find_vm_area(b + rng_.below((a.pages.size() + 1) * ps));
        expect(info && info->addr == b && info->nr_pages == a.pages.size() && info->kind == a.kind &&
                   info->requested == a.requested && info->size == (a.pages.size() + 1) * ps,
               "find_vm_area disagrees with the model");
        const std::size_t k = rng_.below(a.pages.size());
        expect(vm_.vmalloc_to_page(b + k * ps + rng_.below(ps)) == a.pages[k], "vmalloc_to_page disagrees");
        expect(vm_.vmalloc_to_page(b + a.pages.size() * ps) == nullptr, "the guard page maps a page");
    }

    void op_sg_table() {
        std::byte* b = pick_area();
        if (b == nullptr) return;
        const ModelArea& a = areas_.at(b);
        const std::size_t bytes_total = a.pages.size() * ps;
        const std::size_t start = rng_.below(bytes_total);
        const std::size_t len = rng_.between(1, bytes_total - start);
        const auto sgt = vm_.sg_table(b + start, len);
        expect(sgt.has_value(), "sg_table failed on a live area");
        if (!sgt) return;
        std::vector<Page*> seen;
        for (const auto& piece : sgt->pages()) seen.push_back(piece.page);
        const std::vector<Page*> want(a.pages.begin() + static_cast<std::ptrdiff_t>(start / ps),
                                      a.pages.begin() +
                                          static_cast<std::ptrdiff_t>((start + len - 1) / ps + 1));
        expect(seen == want, "the scatter list's pages differ from the area's");
        expect(sgt->total_length() == len && (*sgt)[0].offset == start % ps,
               "the scatter list's extent is wrong");
    }

    void op_mistake() {
        std::byte* b = pick_area();
        const std::uint64_t which = rng_.below(4);
        std::vector<kmem::UsageError> errors;
        ErrorKind want = ErrorKind::bad_parameter;
        if (which == 0 && b != nullptr) {
            want = ErrorKind::not_block_start;
            errors = kmem::test::reported_errors(
                vm_, [&] { vm_.vfree(b + 1 + rng_.below(areas_.at(b).pages.size() * ps)); });
        } else if (which == 1 && b != nullptr && areas_.at(b).kind == VmKind::vmalloc) {
            want = ErrorKind::bad_parameter;
            errors = kmem::test::reported_errors(vm_, [&] { vm_.vunmap(b); });
        } else if (which == 2 && !freed_.empty()) {
            std::byte* f = freed_[rng_.below(freed_.size())];
            if (vm_.find_vm_area(f)) return; // reused by a later area: not a mistake
            want = ErrorKind::double_free;
            errors = kmem::test::reported_errors(vm_, [&] { vm_.vfree(f); });
        } else {
            want = ErrorKind::bad_parameter;
            errors = kmem::test::reported_errors(vm_, [&] { (void)vm_.vmalloc(0); });
        }
        const std::string problem = kmem::test::error_mismatch(errors, want);
        expect(problem.empty(), "mistake: " + problem);
    }

    void op_lookup_outside() {
        int local = 0;
        expect(!vm_.is_vmalloc_addr(&local) && vm_.vmalloc_to_page(&local) == nullptr,
               "an address outside the window is taken for a vmalloc address");
        const auto errors = kmem::test::reported_errors(vm_, [&] { vm_.vfree(&local); });
        expect(kmem::test::error_mismatch(errors, ErrorKind::out_of_region).empty(),
               "vfree of a foreign address is not out_of_region");
    }

    void check_all() {
        expect(vm_.check_invariants() == "", "VirtualMap invariant: " + vm_.check_invariants());
        expect(buddy_.check_invariants() == "", "buddy invariant: " + buddy_.check_invariants());
        expect(buddy_.nr_free_pages() == expected_free(),
               "the allocator's free count differs from the model");
        const kmem::VmallocStats s = vm_.stats();
        std::size_t vmalloc_areas = 0, vmap_pages = 0, used = 0;
        for (const auto& [addr, a] : areas_) {
            vmalloc_areas += a.kind == VmKind::vmalloc;
            if (a.kind == VmKind::vmap) vmap_pages += a.pages.size();
            used += (a.pages.size() + 1) * ps;
        }
        expect(s.vmalloc_areas == vmalloc_areas && s.vmap_areas == areas_.size() - vmalloc_areas &&
                   s.vmalloc_pages == vmalloc_pages_ && s.vmap_pages == vmap_pages && s.address_used == used,
               "the counters differ from the model");
        const std::vector<InfoLine> lines = parse_vmallocinfo(vm_.vmallocinfo());
        expect(lines.size() == areas_.size(), "vmallocinfo lists another number of areas");
        for (const InfoLine& l : lines) {
            const auto it = areas_.find(reinterpret_cast<std::byte*>(l.start));
            expect(it != areas_.end(), "vmallocinfo lists an area the model does not know");
            if (it == areas_.end()) continue;
            const ModelArea& a = it->second;
            const bool vmalloc = a.kind == VmKind::vmalloc;
            expect(l.size == (a.pages.size() + 1) * ps && l.kind == (vmalloc ? "vmalloc" : "vmap") &&
                       l.pages == (vmalloc ? std::optional<std::size_t>(a.pages.size()) : std::nullopt),
                   "a vmallocinfo line differs from the model");
        }
        for (const auto& [addr, a] : areas_) check_contents(addr, a);
    }

    kmem::test::Xoshiro256 rng_;
    Buddy buddy_;
    Vm vm_;
    std::map<std::byte*, ModelArea> areas_;
    std::map<Page*, std::byte*> owner_; // page -> vmalloc area holding it
    std::vector<Page*> held_;           // pages the test holds (for vmap)
    std::map<Page*, std::uint64_t> held_stamp_;
    std::map<Page*, int> mapped_; // vmap mappings of each held page
    std::vector<std::byte*> freed_;
    std::size_t vmalloc_pages_ = 0;
    std::size_t failed_allocs_ = 0;
    std::size_t counts_[3] = {};
    bool failed_ = false;
};

} // namespace

BOOST_AUTO_TEST_SUITE(model)

BOOST_AUTO_TEST_CASE(random_operations_against_a_shadow_model) {
    const std::uint64_t seed = kmem::test::test_seed();
    BOOST_TEST_CONTEXT("KMEM_SEED=" << seed) {
        VmapModel model(seed);
        model.run(20'000);
    }
}

BOOST_AUTO_TEST_SUITE_END()

// The generic pmr adapter over VirtualMap: large buffers from vmalloc, page-aligned, freed with vfree.
BOOST_AUTO_TEST_CASE(pmr_memory_resource_over_vmalloc) {
    using PmrBuddy = kmem::BuddyAllocator<4, 4096, kmem::MemfdRegion>; // largest block 64 KiB
    PmrBuddy buddy(kmem::MemfdRegion(8 << 20));
    kmem::VirtualMap<PmrBuddy&> vm(buddy);
    kmem::MemoryResource<kmem::VirtualMap<PmrBuddy&>> resource(vm);
    {
        std::pmr::vector<std::uint64_t> big(&resource);
        big.resize(100'000); // 800 KB: more than any buddy block, contiguous through the mapping
        for (std::size_t i = 0; i < big.size(); ++i) big[i] = i * 3;
        BOOST_TEST(vm.is_vmalloc_addr(big.data()));
        BOOST_TEST(reinterpret_cast<std::uintptr_t>(big.data()) % 4096 == 0u);
        std::uint64_t sum = 0;
        for (std::uint64_t v : big) sum += v;
        BOOST_TEST(sum == 3ull * (99'999ull * 100'000ull / 2));
        BOOST_TEST(vm.stats().vmalloc_areas >= 1u);
    }
    BOOST_TEST(vm.stats().vmalloc_areas == 0u);
    BOOST_TEST(buddy.nr_free_pages() == buddy.total_pages());
    BOOST_CHECK_THROW((void)resource.allocate(4096, 8192), std::bad_alloc); // more than page alignment
}
