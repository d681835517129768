// A small program for memcheck: built with -DKMEM_VALGRIND, slab.hpp tells valgrind which objects are allocated
// (mempool client requests) and marks free objects inaccessible, so a use after kmem_cache_free / kfree is an
// "Invalid read" or "Invalid write" although the memory still belongs to a slab.
//
//   slab_uaf clean   every access is to a live object: memcheck must find nothing
//   slab_uaf read    reads a freed cache object              (expect "Invalid read of size 1")
//   slab_uaf write   writes a freed cache object             (expect "Invalid write of size 1")
//   slab_uaf kfree   reads a kfree'd kmalloc object          (expect "Invalid read of size 1")
//
// test/valgrind/CMakeLists.txt runs each under `valgrind --error-exitcode=99`.
#include <kmem/buddy.hpp>
#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/region.hpp>
#include <kmem/slab.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;

// Touches byte 10 of `p`: a read, or a write.
void touch(void* p, bool write) {
    auto* b = static_cast<volatile unsigned char*>(p);
    if (write)
        b[10] = 0x5a;
    else
        std::printf("byte: %d\n", b[10]);
}

} // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "clean";
    if (mode != "clean" && mode != "read" && mode != "write" && mode != "kfree") {
        std::fprintf(stderr, "usage: %s clean|read|write|kfree\n", argv[0]);
        return 2;
    }
    Buddy buddy(kmem::MmapRegion(2 << 20));
    {
        kmem::KmemCache<Buddy> cache(buddy, "uaf", 64);
        std::vector<unsigned char*> objs;
        for (int i = 0; i < 200; ++i) {
            auto* p = static_cast<unsigned char*>(cache.alloc(kmem::gfp::kernel));
            std::memset(p, i, 64);
            objs.push_back(p);
        }
        unsigned sum = 0;
        for (unsigned char* p : objs) sum += p[63];
        unsigned char* victim = objs[17];
        for (std::size_t i = 0; i < objs.size(); i += 2) cache.free(objs[i]);
        cache.free(victim);
        if (mode == "read" || mode == "write") touch(victim, mode == "write");
        for (std::size_t i = 1; i < objs.size(); i += 2)
            if (objs[i] != victim) cache.free(objs[i]);
        // Allocated again, an object is usable once more.
        auto* again = static_cast<unsigned char*>(cache.zalloc());
        again[0] = 1;
        sum += again[0] + again[63];
        cache.free(again);
        cache.shrink();
        std::printf("sum: %u\n", sum);
    }
    {
        kmem::Kmalloc<Buddy> km(buddy);
        auto* s = static_cast<char*>(km.kmalloc(100, kmem::gfp::kernel));
        std::strcpy(s, "still here");
        char* t = km.kstrdup(s, kmem::gfp::kernel);
        km.kfree(s);
        if (mode == "kfree") touch(s, false);
        std::printf("%s\n", t);
        km.kfree(t);
    }
    return 0;
}
