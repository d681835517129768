// expect: zones are listed lowest first
// Rule: a Node's zones are given in the kernel's zone order (ZONE_DMA first), each type once.
#include <kmem/zone.hpp>

#ifndef KMEM_CONTROL
using Node = kmem::Node<10, 4096,
                        kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::normal, kmem::OffsetRegion>,
                                    kmem::ZoneSpec<kmem::ZoneType::dma32, kmem::OffsetRegion>>>;
#else
using Node = kmem::Node<10, 4096,
                        kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::dma32, kmem::OffsetRegion>,
                                    kmem::ZoneSpec<kmem::ZoneType::normal, kmem::OffsetRegion>>>;
#endif

std::uint64_t f(Node& node) {
    return node.total_pages();
}
