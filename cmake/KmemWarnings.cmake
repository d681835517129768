# kmem_warnings: INTERFACE helper target carrying warning flags and optional
# sanitizer flags.  Every example/test/benchmark links it PRIVATEly.  It is not
# installed or exported, so consumers of kmem::kmem never see these flags.
add_library(kmem_warnings INTERFACE)

if(MSVC)
    target_compile_options(kmem_warnings INTERFACE /W4 $<$<BOOL:${KMEM_WARNINGS_AS_ERRORS}>:/WX>)
else()
    target_compile_options(kmem_warnings INTERFACE
        -Wall -Wextra -Wpedantic
        $<$<BOOL:${KMEM_WARNINGS_AS_ERRORS}>:-Werror>)
endif()

if(KMEM_SANITIZE)
    set(_kmem_san_flags
        "-fsanitize=${KMEM_SANITIZE}" -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_compile_options(kmem_warnings INTERFACE ${_kmem_san_flags})
    target_link_options(kmem_warnings INTERFACE ${_kmem_san_flags})
    unset(_kmem_san_flags)
    message(STATUS "kmem: sanitizers enabled: ${KMEM_SANITIZE}")
endif()
