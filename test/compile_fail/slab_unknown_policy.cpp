// expect: a KmemCache policy must be a lock policy, an error policy or a fault-injection policy
// Rule: a cache's policies are a lock policy and an error policy; a zone or per-CPU page policy belongs to the
// page allocator.
#include <kmem/buddy.hpp>
#include <kmem/slab.hpp>

using Buddy = kmem::BuddyAllocator<10, 4096, kmem::MmapRegion>;
#ifndef KMEM_CONTROL
using Cache = kmem::KmemCache<Buddy, kmem::policy::InZone<kmem::ZoneType::normal>>;
#else
using Cache = kmem::KmemCache<Buddy, kmem::policy::MutexLock, kmem::policy::ThrowOnError>;
#endif

std::size_t f(const Cache& cache) {
    return cache.object_size();
}
