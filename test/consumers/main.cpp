// Shared by every consumer project in test/consumers/ (find_package,
// add_subdirectory, FetchContent, pkg-config): proves that an out-of-tree
// user can include and use kmem.  Keep it minimal and API-stable.
#include <kmem/kmem.hpp>

int main() {
    kmem::BuddyAllocator<4, 4096, kmem::StaticRegion<64 * 4096>> buddy;
    auto* p = buddy.alloc_pages(kmem::gfp::kernel, 1);
    if (p == nullptr) {
        return 1;
    }
    buddy.free_pages(p, 1);
    return buddy.nr_free_pages() == 64 ? 0 : 1;
}
