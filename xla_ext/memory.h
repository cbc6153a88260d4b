// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// Page hints for large output buffers, the L2 size and cache-line-aligned
// scratch vectors.

#ifndef LOOKUPFFN_XLA_EXT_MEMORY_H_
#define LOOKUPFFN_XLA_EXT_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace lookupffn {

// Outputs from this size on get the hint of AdviseHugePages.
constexpr size_t kHugePageMinBytes = size_t{8} << 20;

// Asks Linux to back the whole 2 MiB pages inside [data, data + bytes) with
// transparent huge pages, before a kernel first writes them. XLA frees its
// buffers after each run, and glibc maps an allocation above 32 MiB afresh
// on every call. Each 4 KiB page then costs a page fault on first touch. A
// 64 MiB table gradient took 16384 faults and about 17 ms on the 2-core
// development machine. With the hint it takes one fault per 2 MiB page, 32
// in all. The hint changes
// no value and is ignored where transparent huge pages are off. A failure
// is ignored too.
inline void AdviseHugePages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugePageMinBytes) return;
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)data;
  (void)bytes;
#endif
}

// Calls AdviseHugePages on the whole of an XLA FFI result buffer, before
// a kernel first writes it. XLA maps large outputs afresh on every call too:
// the [32768, 1024] output of the BH4 transform took about 62,000 page
// faults per call without the hint.
template <typename Result>
void AdviseResultHugePages(Result& result) {
  AdviseHugePages(result->untyped_data(), result->size_bytes());
}

// Returns the bytes of one core's L2 cache as the C library reports it, or
// `fallback` where it reports none.
inline int64_t L2CacheBytes(int64_t fallback = int64_t{1} << 20) {
#if defined(__linux__) && defined(_SC_LEVEL2_CACHE_SIZE)
  static const int64_t bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (bytes > 0) return bytes;
#endif
  return fallback;
}

// Bytes of a cache line, and of an AVX-512 register.
constexpr size_t kCacheLineBytes = 64;

// An allocator that starts every block on a cache line. glibc returns large
// blocks 16 bytes past a page boundary, so in a plain vector each 64-byte
// AVX-512 load, and every second 32-byte AVX2 load, spans two cache lines.
// On a 2-core AMD EPYC (Zen 4) a single-thread copy of the gather's loop
// over a packed table group took 1.76 ms per column block of 4096 tokens
// from an aligned buffer and 2.2 ms from a vector's.
template <typename T>
struct CacheAlignedAllocator {
  using value_type = T;

  CacheAlignedAllocator() = default;
  template <typename U>
  CacheAlignedAllocator(const CacheAlignedAllocator<U>&) {}

  T* allocate(size_t n) {
    return static_cast<T*>(
        ::operator new(n * sizeof(T), std::align_val_t{kCacheLineBytes}));
  }
  void deallocate(T* p, size_t) {
    ::operator delete(p, std::align_val_t{kCacheLineBytes});
  }

  template <typename U>
  bool operator==(const CacheAlignedAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const CacheAlignedAllocator<U>&) const {
    return false;
  }
};

// A vector whose data starts on a cache line, for buffers that SIMD
// kernels load in full vectors.
template <typename T>
using AlignedVector = std::vector<T, CacheAlignedAllocator<T>>;

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_MEMORY_H_
