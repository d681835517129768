// expect: gfp::Flags holds a bit that is not a GFP flag
// Rule: a compile-time flag set holds only defined GFP bits (bit 9 and bits 23+ are not flags).
#include <kmem/gfp.hpp>

#ifndef KMEM_CONTROL
constexpr kmem::gfp::Flags<(1u << 9)> bad{};
#else
constexpr kmem::gfp::Flags<(1u << 8)> bad{};
#endif

static_assert(bad.value != 0);
