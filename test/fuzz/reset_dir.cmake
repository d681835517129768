# cmake -DDIR=<path> -P reset_dir.cmake: empties (or creates) the directory DIR.
if(NOT DIR)
    message(FATAL_ERROR "reset_dir.cmake: DIR is not set")
endif()
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}")
