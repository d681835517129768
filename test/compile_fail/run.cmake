# Driver for one compile-fail test.  Invoked as
#   cmake -DCXX=<compiler> -DSOURCE=<snippet.cpp> -DINCLUDE_DIR=<dir>
#         -DMODE=fail|control [-DEXTRA_FLAGS=<;-list>] -P run.cmake
#
# MODE=fail:    compilation must FAIL and its output must match the regex
#               given on the snippet's first line: `// expect: <regex>`.
# MODE=control: compilation with -DKMEM_CONTROL must SUCCEED.
cmake_minimum_required(VERSION 3.21)

foreach(var IN ITEMS CXX SOURCE INCLUDE_DIR MODE)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run.cmake: -D${var}=... is required")
    endif()
endforeach()
if(NOT EXISTS "${SOURCE}")
    message(FATAL_ERROR "run.cmake: snippet not found: ${SOURCE}")
endif()

set(flags -std=c++20 -fsyntax-only "-I${INCLUDE_DIR}" ${EXTRA_FLAGS})
if(MODE STREQUAL "control")
    list(APPEND flags -DKMEM_CONTROL)
elseif(NOT MODE STREQUAL "fail")
    message(FATAL_ERROR "run.cmake: MODE must be 'fail' or 'control', got '${MODE}'")
endif()

# Read the expectation from the first line.
file(STRINGS "${SOURCE}" first_line LIMIT_COUNT 1)
if(NOT first_line MATCHES "^[ \t]*//[ \t]*expect:[ \t]*(.*[^ \t])[ \t]*$")
    message(FATAL_ERROR
        "${SOURCE}: first line must be `// expect: <regex>`, got:\n  ${first_line}")
endif()
set(expect "${CMAKE_MATCH_1}")

execute_process(
    COMMAND "${CXX}" ${flags} "${SOURCE}"
    RESULT_VARIABLE rc
    OUTPUT_VARIABLE out
    ERROR_VARIABLE out
    TIMEOUT 110)

if(NOT rc MATCHES "^-?[0-9]+$")
    message(FATAL_ERROR "${SOURCE}: compiler did not run to completion: ${rc}\n${out}")
endif()

# First ~30 lines of the diagnostics, for failure reports.
string(REPLACE ";" "\\;" _esc "${out}")
string(REPLACE "\n" ";" _lines "${_esc}")
list(LENGTH _lines _n)
if(_n GREATER 30)
    list(SUBLIST _lines 0 30 _lines)
    set(_more "\n  ... (${_n} lines total)")
else()
    set(_more "")
endif()
list(JOIN _lines "\n  " head)
set(cmdline "${CXX} ${flags} ${SOURCE}")
string(REPLACE ";" " " cmdline "${cmdline}")

if(MODE STREQUAL "control")
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR
            "CONTROL FAILED: ${SOURCE} should compile with -DKMEM_CONTROL but did not (exit ${rc}).\n"
            "Command: ${cmdline}\n"
            "Diagnostics:\n  ${head}${_more}")
    endif()
    message(STATUS "OK: control build of ${SOURCE} compiles")
    return()
endif()

if(rc EQUAL 0)
    message(FATAL_ERROR
        "UNEXPECTED SUCCESS: ${SOURCE} compiled but was expected to fail.\n"
        "Expected diagnostic regex: ${expect}\n"
        "Command: ${cmdline}\n"
        "Output:\n  ${head}${_more}")
endif()
if(NOT out MATCHES "${expect}")
    message(FATAL_ERROR
        "WRONG DIAGNOSTIC: ${SOURCE} failed to compile (exit ${rc}) but the output does not match.\n"
        "Expected diagnostic regex: ${expect}\n"
        "Command: ${cmdline}\n"
        "Actual diagnostics (first 30 lines):\n  ${head}${_more}")
endif()
message(STATUS "OK: ${SOURCE} failed to compile as expected (matched: ${expect})")
