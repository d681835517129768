// A short tour of kmem: a buddy allocator at work, the /proc/buddyinfo table before and after, pages split and
// merged, an offset-only (device memory) region, error detection, the GFP rules checked at compile time, and
// per-CPU page lists, then object caches and kmalloc with their /proc/slabinfo and slabtop tables, and
// vmalloc / kvmalloc with /proc/vmallocinfo, and a node of two zones with its buddyinfo and zoneinfo, zonelist
// fallback and a compaction.
#include <kmem/kmem.hpp>

#include <cstdio>
#include <iostream>
#include <memory_resource>
#include <string>
#include <vector>

namespace {

void heading(const char* title) {
    std::cout << "\n== " << title << " ==\n";
}

template <class Buddy>
void show(const char* when, const Buddy& buddy) {
    std::cout << "  " << when << " (" << buddy.nr_free_pages() << " of " << buddy.total_pages()
              << " pages free)\n  " << buddy.buddyinfo();
}

} // namespace

int main() {
    // 8 MiB of anonymous memory, aligned to the largest block (order 10 = 4 MiB) so the layout is predictable.
    using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::CallbackOnError>;
    Buddy buddy(kmem::MmapRegion(8 << 20, {.alignment = 4 << 20}));
    buddy.set_name("tour");

    heading("1. pages allocated by order");
    std::cout << "  /proc/buddyinfo columns are free blocks of order 0, 1, ... 10 (4 KiB ... 4 MiB)\n";
    show("before", buddy);
    kmem::Page* one = buddy.alloc_pages(kmem::gfp::kernel, 0);
    kmem::Page* eight = buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::zero, 3);
    kmem::Page* big = buddy.alloc_pages(kmem::gfp::kernel, 9);
    for (auto [page, order] : {std::pair{one, 0}, std::pair{eight, 3}, std::pair{big, 9}})
        std::cout << "  alloc_pages(order " << order << ") -> pfn " << buddy.page_to_pfn(page) << ", offset "
                  << buddy.page_offset(page) << ", " << (4096 << order) / 1024 << " KiB\n";
    show("after", buddy);
    std::cout
        << "  The order-0 request split a 4 MiB block in halves ten times: one free block is left at\n"
           "  each order 0..9 and the lowest page is handed out.  The order-3 and order-9 requests took\n"
           "  blocks from those halves without any further splitting.\n";

    heading("2. split and merged back");
    buddy.free_pages(one, 0);
    show("after free_pages(order 0)", buddy);
    std::cout << "  Freeing the order-0 page found its buddy (pfn XOR 1) free and merged, then again at\n"
                 "  orders 1 and 2; the merge stopped at order 3 because the buddy there is still in use.\n";
    buddy.free_pages(eight, 3);
    buddy.free_pages(big, 9);
    show("after freeing everything", buddy);

    heading("3. exact sizes, split_page and compound pages");
    void* five = buddy.alloc_pages_exact(5 * 4096, kmem::gfp::kernel);
    std::cout << "  alloc_pages_exact(5 pages): " << buddy.total_pages() - buddy.nr_free_pages()
              << " pages in use (the 3-page tail of the order-3 block went back at once)\n";
    buddy.free_pages_exact(five, 5 * 4096);
    kmem::Page* four = buddy.alloc_pages(kmem::gfp::kernel, 2);
    buddy.split_page(four, 2);
    buddy.free_pages(four + 1, 0);
    std::cout << "  split_page(order 2) made four order-0 pages; after freeing one of them alone, "
              << buddy.total_pages() - buddy.nr_free_pages() << " pages are in use\n";
    for (int i : {0, 2, 3}) buddy.free_pages(four + i, 0);
    kmem::Page* thp = buddy.alloc_pages(kmem::gfp::kernel | kmem::gfp::comp, 4);
    std::cout << "  gfp::comp order 4: head flag " << thp->test(kmem::PageFlag::head)
              << ", page 7 is a tail: " << thp[7].test(kmem::PageFlag::tail)
              << ", compound_head(page 7) == head: " << (buddy.compound_head(thp + 7) == thp) << "\n";
    buddy.free_pages(thp, 4);
    show("all merged again", buddy);

    heading("4. an offset-only region: 64 GiB of device memory, no host bytes");
    kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion> vram(kmem::OffsetRegion(std::uint64_t{64} << 30));
    auto a = vram.alloc_offset(kmem::gfp::kernel, 10);
    auto b = vram.alloc_offset(kmem::gfp::kernel, 0, {.top_down = true});
    std::cout << "  order-10 block at offset " << *a << ", top-down page at offset " << *b << "\n"
              << "  metadata: " << vram.page_table().metadata_bytes() / (1 << 20) << " MiB of descriptors, "
              << "reserved lazily, outside the managed range\n";
    vram.free_offset(*a, 10);
    vram.free_offset(*b, 0);

    heading("5. mistakes are caught and change nothing");
    buddy.error_policy().set_callback([](const kmem::UsageError& e) {
        std::cout << "  caught " << kmem::to_string(e.kind) << ": " << e.message << "\n";
    });
    kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 1);
    buddy.free_pages(p, 0); // wrong order
    buddy.free_pages(p, 1); // correct
    buddy.free_pages(p, 1); // double free
    std::cout << "  invariants after the mistakes: " << (buddy.check_invariants().empty() ? "hold" : "BROKEN")
              << "\n";

    heading("6. exhaustion: null and a kernel-like report (unless gfp::nowarn)");
    kmem::BuddyAllocator<2, 4096, kmem::MmapRegion> tiny(kmem::MmapRegion(4 * 4096, {.alignment = 4 * 4096}));
    tiny.set_name("tour");
    tiny.set_warning_stream(&std::cout);
    kmem::Page* all = tiny.alloc_pages(kmem::gfp::kernel, 2);
    kmem::Page* none = tiny.alloc_pages(kmem::gfp::kernel, 0);
    std::cout << "  second request returned " << (none == nullptr ? "nullptr" : "a page") << "\n";
    tiny.free_pages(all, 2);

    heading("7. std::pmr on top of the buddy allocator");
    kmem::MemoryResource resource(buddy);
    std::pmr::vector<int> numbers(&resource);
    for (int i = 0; i < 50'000; ++i) numbers.push_back(i);
    std::cout << "  a pmr::vector of 50000 ints lives in " << buddy.total_pages() - buddy.nr_free_pages()
              << " buddy pages\n";

    heading("8. GFP rules are checked by the compiler");
    constexpr auto bad = kmem::gfp::dma | kmem::gfp::highmem;
    std::cout
        << "  buddy.alloc_pages(gfp::dma | gfp::highmem, 0) does not compile; the compiler says:\n    \""
        << kmem::gfp::describe(kmem::gfp::validate(bad.value)) << "\"\n";
    std::cout
        << "  buddy.alloc_pages(gfp::dma, 0) does not compile either: this allocator has no ZONE_DMA.\n"
        << "  buddy.alloc_pages(kmem::atomic_context, gfp::kernel, 0) is rejected: GFP_KERNEL may sleep.\n";
    kmem::gfp_t runtime = kmem::gfp_t(kmem::gfp::kernel) | kmem::gfp::nofail | kmem::gfp::noretry;
    std::cout << "  flags built at run time are checked by the same rules: " << runtime.to_string()
              << " -> \"" << kmem::gfp::describe(runtime.validate()) << "\"\n";

    heading("9. per-CPU page lists: the kernel's fast path for small blocks");
    using PcpBuddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion, kmem::policy::PerCpuPages<31>>;
    PcpBuddy fast(kmem::MmapRegion(8 << 20, {.alignment = 4 << 20}));
    fast.set_name("tour");
    std::cout << "  policy::PerCpuPages<31>: batch " << fast.pcp_batch() << ", high " << fast.pcp_high()
              << " (6 x batch;\n  PerCpuPages<> computes batch from the zone size, as the kernel's "
                 "zone_batchsize() does)\n";
    kmem::Page* q = fast.alloc_pages(kmem::gfp::kernel, 0);
    show("after one order-0 allocation", fast);
    std::cout << "  The empty list was refilled with a batch of " << fast.pcp_batch()
              << " pages in one go; one was handed out, " << fast.nr_pcp_pages() << " wait on the list.\n";
    fast.free_pages(q, 0);
    std::cout << "  After free_pages the page sits on the list unmerged (" << fast.nr_pcp_pages()
              << " pages parked), so the next order-0 pair\n  is a pop and a push, not ten splits and ten "
                 "merges.\n";
    fast.drain_all_pages();
    show("after drain_all_pages()", fast);

    heading("10. object caches (kmem_cache) and kmalloc over the buddy allocator");
    struct Dentry {
        long inode;
        char name[48];
    };
    int constructed = 0;
    kmem::SlabCache<Dentry, decltype(buddy)> dentries(buddy, "dentry", kmem::SlabFlags::hwcache_align,
                                                      [&](Dentry* d) {
                                                          d->inode = -1;
                                                          ++constructed;
                                                      });
    kmem::KmemCache<decltype(buddy)> inodes(buddy, "inode_cache", 600, 0, kmem::SlabFlags::poison);
    std::vector<Dentry*> ds;
    for (int i = 0; i < 100; ++i) ds.push_back(dentries.alloc());
    std::vector<void*> is;
    for (int i = 0; i < 10; ++i) is.push_back(inodes.alloc());
    std::cout << "  100 dentries: the constructor ran " << constructed
              << " times (once per object of each new "
              << "slab),\n  and every dentry arrived constructed (inode " << ds[0]->inode << ").\n";
    kmem::Kmalloc<decltype(buddy)> km(buddy);
    char* name = km.kstrdup("/proc/slabinfo", kmem::gfp::kernel);
    void* buf = km.kmalloc(3000, kmem::gfp::kernel);
    void* large = km.kzalloc(100 * 1024, kmem::gfp::kernel);
    std::cout << "  kmalloc(3000) is served by kmalloc-4k (ksize " << km.ksize(buf)
              << "); kzalloc(100 KiB) by " << km.ksize(large) / 4096 << " compound pages.\n";
    std::vector<kmem::SlabStats> stats = km.stats();
    stats.push_back(dentries.stats());
    stats.push_back(inodes.stats());
    std::cout << kmem::slabinfo(stats) << "\n" << kmem::slabtop(stats, kmem::SlabTopKey::active_objs);
    for (Dentry* d : ds) dentries.free(d);
    for (void* p : is) inodes.free(p);
    km.kfree(large);
    km.kfree(buf);
    km.kfree(name);
    const bool caches_ok = dentries.validate().empty() && inodes.validate().empty() && km.validate().empty();

    heading("11. vmalloc: virtually contiguous memory over scattered pages");
    using Remappable = kmem::BuddyAllocator<6, 4096, kmem::MemfdRegion>; // largest block: 64 pages = 256 KiB
    Remappable pool(kmem::MemfdRegion(4 << 20));
    kmem::VirtualMap<Remappable&> vm(pool);
    auto* ring = static_cast<char*>(vm.vzalloc(1 << 20, "tour_ring_buffer")); // 1 MiB > any buddy block
    ring[(1 << 20) - 1] = 'z';
    kmem::Page* last = vm.vmalloc_to_page(ring + (1 << 20) - 1);
    std::cout
        << "  vzalloc(1 MiB) over a buddy whose largest block is 256 KiB: 256 single pages mapped side by\n"
        << "  side; the last byte is also at region page " << pool.page_offset(last) / 4096
        << "'s own address: '" << static_cast<char*>(pool.page_address(last))[4095] << "'\n"
        << vm.vmallocinfo();
    kmem::Kmalloc<Remappable> km2(pool);
    kmem::KvMalloc kv(km2, vm);
    void* table = kv.kvmalloc(512 * 1024, kmem::gfp::kernel);
    std::cout << "  kvmalloc(512 KiB) came from " << (vm.is_vmalloc_addr(table) ? "vmalloc" : "kmalloc")
              << " (kmalloc's largest is 256 KiB here); kvfree tells them apart by address.\n";
    kv.kvfree(table);
    vm.vfree(ring);
    const bool vmap_ok = vm.check_invariants().empty();

    heading("12. a node with zones: fallback, watermarks, compaction");
    using Node = kmem::Node<10, 4096,
                            kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::dma32, kmem::MmapRegion>,
                                        kmem::ZoneSpec<kmem::ZoneType::normal, kmem::MmapRegion>>,
                            kmem::policy::MutexLock>;
    Node node(kmem::MmapRegion(1 << 20, {.alignment = 1 << 20}),
              kmem::MmapRegion(4 << 20, {.alignment = 4 << 20}));
    node.set_warning_stream(nullptr);
    std::vector<void*> normal_pages;
    while (void* p = node.get_free_pages(kmem::gfp::kernel | kmem::gfp::nowarn, 0)) {
        if (node.zone_of(p) != kmem::ZoneType::normal) {
            std::cout << "  GFP_KERNEL filled ZONE_NORMAL to its low watermark (" << node.nr_free_pages()
                      << " pages"
                      << " free in all), then fell back to ZONE_DMA32 (node page "
                      << node.mem_map().page_offset(node.virt_to_page(p)) / 4096 << ")\n";
            node.free_pages(p, 0);
            break;
        }
        normal_pages.push_back(p);
    }
    for (void* p : normal_pages) node.free_pages(p, 0);
    node.drain_all_pages();
    std::cout << node.buddyinfo() << node.zoneinfo();
    // Anti-fragmentation: unmovable and movable pages are kept in different pageblocks.
    void* kernel_page = node.get_free_pages(kmem::gfp::kernel, 0);
    void* user_page = node.get_free_pages(kmem::gfp::highuser_movable, 0);
    std::cout << "  one GFP_KERNEL page and one GFP_HIGHUSER_MOVABLE page later, /proc/pagetypeinfo:\n"
              << node.pagetypeinfo();
    node.free_pages(kernel_page, 0);
    node.free_pages(user_page, 0);
    // Fragment ZONE_NORMAL with movable pages: fill it, then free every other one.
    node.set_watermarks(kmem::ZoneType::normal, {0, 0, 0});
    std::vector<kmem::MovableHandle> movable;
    while (auto h = node.alloc_movable(kmem::gfp::highuser_movable | kmem::gfp::nowarn, 0)) {
        if (node.zone_of(node.movable_address(h)) != kmem::ZoneType::normal) {
            node.free_movable(h);
            break;
        }
        std::snprintf(static_cast<char*>(node.pin(h).get()), 32, "page %zu", movable.size());
        movable.push_back(h);
    }
    std::vector<kmem::MovableHandle> kept;
    for (std::size_t i = 0; i < movable.size(); ++i) {
        if (i % 2 == 0)
            node.free_movable(movable[i]);
        else
            kept.push_back(movable[i]);
    }
    node.drain_all_pages();
    std::cout << "  ZONE_NORMAL fragmented: " << kept.size()
              << " movable pages kept, every other one freed\n  "
              << node.buddyinfo().substr(node.buddyinfo().find("Node 0, zone   Normal"))
              << "  fragmentation index of order 4: "
              << node.fragmentation_index(kmem::ZoneType::normal, 4) / 1000.0
              << " (towards 1: failure from fragmentation)\n";
    const kmem::CompactResult cr = node.compact_zone(kmem::ZoneType::normal, 4);
    std::cout << "  compact_zone(Normal, order 4): " << cr.pages_moved << " pages moved, "
              << (cr.success ? "an order-4 block is free" : "no order-4 block") << "\n  "
              << node.buddyinfo().substr(node.buddyinfo().find("Node 0, zone   Normal"));
    bool contents_ok = true;
    for (std::size_t i = 0; i < kept.size(); ++i) {
        char want[32];
        std::snprintf(want, sizeof want, "page %zu", 2 * i + 1);
        contents_ok = contents_ok && std::string(static_cast<char*>(node.pin(kept[i]).get())) == want;
        node.free_movable(kept[i]);
    }
    std::cout << "  every moved page kept its content: " << (contents_ok ? "yes" : "NO") << "\n";
    const bool node_ok = contents_ok && cr.success && node.check_invariants().empty();

    return buddy.check_invariants().empty() && fast.check_invariants().empty() && caches_ok && vmap_ok &&
                   node_ok
               ? 0
               : 1;
}
