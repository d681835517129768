// expect: asks for a zone this allocator was not built with
// Rule: a request falls back only to lower zones, so gfp::dma on a node whose lowest zone is DMA32 cannot be served.
#include <kmem/zone.hpp>

using Node = kmem::Node<10, 4096,
                        kmem::Zones<kmem::ZoneSpec<kmem::ZoneType::dma32, kmem::OffsetRegion>,
                                    kmem::ZoneSpec<kmem::ZoneType::normal, kmem::OffsetRegion>>>;

kmem::Page* f(Node& node) {
#ifndef KMEM_CONTROL
    return node.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma, 0);
#else
    return node.alloc_pages(kmem::gfp::kernel | kmem::gfp::dma32, 0);
#endif
}
