// expect: alloc_movable needs __GFP_MOVABLE
// Rule: only memory allocated as movable may be relocated by compaction.
#include <kmem/region.hpp>
#include <kmem/zone.hpp>

using Node = kmem::Node<10, 4096, kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::normal, kmem::MmapRegion>>>;

kmem::MovableHandle f(Node& node) {
#ifndef KMEM_CONTROL
    return node.alloc_movable(kmem::gfp::kernel, 0);
#else
    return node.alloc_movable(kmem::gfp::kernel | kmem::gfp::movable, 0);
#endif
}
