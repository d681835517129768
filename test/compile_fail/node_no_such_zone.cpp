// expect: this Node has no zone of that type
// Rule: which zones a node has is part of its type.
#include <kmem/zone.hpp>

using Node = kmem::Node<10, 4096, kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::normal, kmem::OffsetRegion>>>;

std::uint64_t f(Node& node) {
#ifndef KMEM_CONTROL
    return node.zone_allocator_of<kmem::ZoneType::dma>().total_pages();
#else
    return node.zone_allocator_of<kmem::ZoneType::normal>().total_pages();
#endif
}
