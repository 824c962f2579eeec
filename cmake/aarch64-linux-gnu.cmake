# cmake/aarch64-linux-gnu.cmake — cross-compiling moe for 64-bit Arm Linux
# with Debian's cross toolchain (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross;
# tools/deps.sh --neon installs them). CMake then compiles kernels_neon.c
# instead of the x86 kernels, and ctest runs the tests under qemu-aarch64.
#
# The library also needs jansson, pcre2, utf8proc and libmicrohttpd built for
# arm64: either Debian multiarch (dpkg --add-architecture arm64, then their
# :arm64 -dev packages), or a separate arm64 root given as CMAKE_SYSROOT, e.g.
#   debootstrap --foreign --arch=arm64 --variant=minbase \
#     --include=libjansson-dev,libpcre2-dev,libutf8proc-dev,libmicrohttpd-dev bookworm /tmp/arm64
#   for d in /tmp/arm64/var/cache/apt/archives/*.deb; do dpkg-deb -x "$d" /tmp/arm64; done
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_SYSROOT=/tmp/arm64
# tools/test_neon.sh needs neither: it builds only the kernel test.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)

if(CMAKE_SYSROOT)
  set(moe_arm64_root ${CMAKE_SYSROOT})
else()
  set(moe_arm64_root /usr/aarch64-linux-gnu)
endif()
# qemu finds the arm64 loader and libraries under the root
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${moe_arm64_root})

# headers and libraries of the target only; programs (pkg-config) of the host
set(CMAKE_FIND_ROOT_PATH ${moe_arm64_root})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# pkg-config reads the arm64 .pc files, not the host's
if(CMAKE_SYSROOT)
  set(ENV{PKG_CONFIG_SYSROOT_DIR} ${CMAKE_SYSROOT})
  set(ENV{PKG_CONFIG_LIBDIR} ${CMAKE_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${CMAKE_SYSROOT}/usr/share/pkgconfig)
elseif(NOT DEFINED ENV{PKG_CONFIG_LIBDIR})
  set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
endif()
