/// @file
/// Umbrella header: includes every public kmem header.
///
/// @code
///   #include <kmem/kmem.hpp>
///   kmem::BuddyAllocator<10, 4096, kmem::StaticRegion<1 << 20>> buddy;
///   kmem::Page* p = buddy.alloc_pages(kmem::gfp::kernel, 0);
///   buddy.free_pages(p, 0);
/// @endcode
#pragma once

#include <kmem/buddy.hpp>
#include <kmem/fault.hpp>
#include <kmem/free_area.hpp>
#include <kmem/gfp.hpp>
#include <kmem/kmalloc.hpp>
#include <kmem/kvmalloc.hpp>
#include <kmem/mem_map.hpp>
#include <kmem/memblock.hpp>
#include <kmem/mempool.hpp>
#include <kmem/page.hpp>
#include <kmem/page_api.hpp>
#include <kmem/pcp_lists.hpp>
#include <kmem/percpu.hpp>
#include <kmem/percpu_defs.hpp>
#include <kmem/pmr.hpp>
#include <kmem/policy/category.hpp>
#include <kmem/policy/error.hpp>
#include <kmem/policy/lock.hpp>
#include <kmem/policy/pcp.hpp>
#include <kmem/policy/zone.hpp>
#include <kmem/region.hpp>
#include <kmem/scatterlist.hpp>
#include <kmem/shrinker.hpp>
#include <kmem/slab.hpp>
#include <kmem/slab_common.hpp>
#include <kmem/vm_area.hpp>
#include <kmem/vmap.hpp>
#include <kmem/watermarks.hpp>
#include <kmem/zone.hpp>

/// The kmem library: the Linux kernel's memory allocators as C++20 templates.
namespace kmem {
/// Policies chosen by template parameter: locking, error handling, zone, per-CPU page lists.
namespace policy {}
} // namespace kmem
