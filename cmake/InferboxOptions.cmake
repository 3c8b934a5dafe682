# Build switches. INFERBOX_CUDA defaults ON wherever nvcc is found, so CUDA code compiles
# on every machine that can compile it (CI included); everything builds and runs with it OFF.
include(CheckLanguage)

if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc CACHE FILEPATH "CUDA compiler")
endif()
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(_inferbox_cuda_default ON)
else()
  set(_inferbox_cuda_default OFF)
endif()

option(INFERBOX_CUDA "Build the CUDA backend (needs nvcc)" ${_inferbox_cuda_default})
option(INFERBOX_SYSTEMD "Integrate with systemd (sd_notify, journald) through libsystemd" ON)
option(INFERBOX_WERROR "Treat compiler warnings as errors (CI turns this on)" OFF)
option(INFERBOX_BUILD_TESTS "Build the test suite" ON)
# `make fuzz` (scripts/fuzz.sh): a clang build of tests/fuzz's targets with libFuzzer, ASan and
# UBSan. Everything in such a build is instrumented; only the fuzz targets are built from it.
option(INFERBOX_FUZZ "Build the fuzz targets with libFuzzer and sanitizers (clang only)" OFF)
if(INFERBOX_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "INFERBOX_FUZZ needs clang (libFuzzer): -DCMAKE_CXX_COMPILER=clang++")
  endif()
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all
                      -fsanitize=fuzzer-no-link -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

if(INFERBOX_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Hopper (H100/H200) is the box's target; Ampere (A100, sm_80) and Ada (L40S, sm_89)
    # cost a few seconds of compile. Override with -DCMAKE_CUDA_ARCHITECTURES=...
    set(CMAKE_CUDA_ARCHITECTURES 80 89 90)
  endif()
  enable_language(CUDA)
  # CMake 3.25 predates nvcc's C++20 support and knows no flag for it; host and device code
  # share headers written in C++20, so teach it the flag (nvcc >= 12 accepts -std=c++20).
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  set(INFERBOX_CUDA_VERSION "${CUDAToolkit_VERSION_MAJOR}.${CUDAToolkit_VERSION_MINOR}")
else()
  set(INFERBOX_CUDA_VERSION "none")
endif()

# Every target of ours links this for its warning flags; generated protobuf code does not.
add_library(inferbox_warnings INTERFACE)
target_compile_options(inferbox_warnings INTERFACE
  # Designated initializers that leave defaulted members out are intended, not a slip.
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wno-missing-field-initializers>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${INFERBOX_WERROR}>>:-Werror>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${INFERBOX_WERROR}>>:-Werror=all-warnings>)
