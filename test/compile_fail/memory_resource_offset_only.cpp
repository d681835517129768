// expect: ByteAllocator.*try_allocate
// Rule: the pmr adapter needs the byte interface, which only an addressable allocator has.
#include <kmem/buddy.hpp>
#include <kmem/pmr.hpp>

#ifndef KMEM_CONTROL
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::OffsetRegion>;
#else
using Buddy = kmem::BuddyAllocator<10, 4096, kmem::StaticRegion<4096 * 4>>;
#endif

std::pmr::memory_resource* f(Buddy& buddy) {
    static kmem::MemoryResource<Buddy> resource(buddy);
    return &resource;
}
