// expect: may sleep \(gfp::direct_reclaim\) but this allocator's lock policy is a non-sleeping spin lock
// Rule: direct reclaim sleeps; a node whose zones use a spin lock serves only requests that cannot sleep.
#include <kmem/policy/lock.hpp>
#include <kmem/zone.hpp>

using Node = kmem::Node<10, 4096, kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::normal, kmem::OffsetRegion>>,
                        kmem::policy::SpinLock>;

kmem::Page* f(Node& node) {
#ifndef KMEM_CONTROL
    return node.alloc_pages(kmem::gfp::kernel, 0);
#else
    return node.alloc_pages(kmem::gfp::atomic, 0);
#endif
}
