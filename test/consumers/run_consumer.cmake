# Driver for one consumer test (see CMakeLists.txt next to this file).
#   cmake -DMODE=install|cmake|pkg_config -DCXX=... -DGENERATOR=... -DBUILD_TYPE=...
#         -DKMEM_SOURCE_DIR=... -DKMEM_BINARY_DIR=... -DPREFIX=...
#         -DCONSUMER_DIR=... -DWORK_DIR=... -P run_consumer.cmake
cmake_minimum_required(VERSION 3.25)

function(step what)
    message(STATUS "[consumer] ${what}: ${ARGN}")
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "[consumer] ${what} FAILED (exit ${rc})\n${out}\n${err}")
    endif()
    set(step_output "${out}" PARENT_SCOPE)
endfunction()

if(MODE STREQUAL "install")
    file(REMOVE_RECURSE "${PREFIX}")
    step("install" "${CMAKE_COMMAND}" --install "${KMEM_BINARY_DIR}" --prefix "${PREFIX}")
    foreach(f include/kmem/kmem.hpp)
        if(NOT EXISTS "${PREFIX}/${f}")
            message(FATAL_ERROR "[consumer] install did not produce ${PREFIX}/${f}")
        endif()
    endforeach()
    return()
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

if(MODE STREQUAL "pkg_config")
    if(DEFINED ENV{PKG_CONFIG})
        set(pkg_config "$ENV{PKG_CONFIG}")
    else()
        set(pkg_config pkg-config)
    endif()
    set(ENV{PKG_CONFIG_PATH} "${PREFIX}/share/pkgconfig")
    step("pkg-config" "${pkg_config}" --cflags --libs kmem)
    string(STRIP "${step_output}" pc_flags)
    message(STATUS "[consumer] pkg-config flags: ${pc_flags}")
    separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
    set(exe "${WORK_DIR}/consumer")
    step("compile" "${CXX}" "${KMEM_SOURCE_DIR}/test/consumers/main.cpp" -o "${exe}" ${pc_flags})
else()
    set(args -S "${CONSUMER_DIR}" -B "${WORK_DIR}"
        "-DCMAKE_CXX_COMPILER=${CXX}"
        "-DKMEM_SOURCE_DIR=${KMEM_SOURCE_DIR}"
        "-DCMAKE_PREFIX_PATH=${PREFIX}"
        # Must find *our* prefix, not some kmem installed on the system.
        "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF")
    if(GENERATOR)
        list(APPEND args -G "${GENERATOR}")
    endif()
    if(BUILD_TYPE)
        list(APPEND args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
    else()
        set(BUILD_TYPE Debug)
    endif()
    step("configure" "${CMAKE_COMMAND}" ${args})
    step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}" --config "${BUILD_TYPE}")
    set(exe "")
    foreach(cand "${WORK_DIR}/consumer" "${WORK_DIR}/${BUILD_TYPE}/consumer"
                 "${WORK_DIR}/consumer.exe" "${WORK_DIR}/${BUILD_TYPE}/consumer.exe")
        if(EXISTS "${cand}")
            set(exe "${cand}")
            break()
        endif()
    endforeach()
    if(NOT exe)
        message(FATAL_ERROR "[consumer] build produced no `consumer` executable in ${WORK_DIR}")
    endif()
endif()

step("run" "${exe}")
message(STATUS "[consumer] OK")
