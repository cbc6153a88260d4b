// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0

#include "simd.h"

#include <atomic>

#if defined(__x86_64__) || defined(_M_X64)
#define LOOKUPFFN_HAVE_X86 1
#include <immintrin.h>
#endif

namespace lookupffn::simd {
namespace {

void AxpyScalar(int64_t n, float a, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float DotScalar(int64_t n, const float* x, const float* y) {
  // Four partial sums, like the vector version, to shorten the dependency
  // chain; the order is fixed, so the result does not depend on threads.
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i] * y[i];
    s1 += x[i + 1] * y[i + 1];
    s2 += x[i + 2] * y[i + 2];
    s3 += x[i + 3] * y[i + 3];
  }
  for (; i < n; ++i) s0 += x[i] * y[i];
  return (s0 + s1) + (s2 + s3);
}

#ifdef LOOKUPFFN_HAVE_X86

__attribute__((target("avx2,fma"))) void AxpyAvx2(int64_t n, float a,
                                                  const float* x, float* y) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 y0 = _mm256_loadu_ps(y + i);
    __m256 y1 = _mm256_loadu_ps(y + i + 8);
    y0 = _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), y0);
    y1 = _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8), y1);
    _mm256_storeu_ps(y + i, y0);
    _mm256_storeu_ps(y + i + 8, y1);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 y0 = _mm256_loadu_ps(y + i);
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), y0));
  }
  // Tail of fewer than 8 elements: a masked load and store touch only the
  // valid lanes, so nothing past the end of x or y is read or written.
  if (i < n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - i)), lane);
    __m256 y0 = _mm256_maskload_ps(y + i, mask);
    __m256 x0 = _mm256_maskload_ps(x + i, mask);
    _mm256_maskstore_ps(y + i, mask, _mm256_fmadd_ps(va, x0, y0));
  }
}

__attribute__((target("avx2,fma"))) float DotAvx2(int64_t n, const float* x,
                                                 const float* y) {
  __m256 s0 = _mm256_setzero_ps();
  __m256 s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8),
                         _mm256_loadu_ps(y + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
  }
  if (i < n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - i)), lane);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(x + i, mask),
                         _mm256_maskload_ps(y + i, mask), s1);
  }
  const __m256 s = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

bool DetectAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#else

bool DetectAvx2() { return false; }

#endif  // LOOKUPFFN_HAVE_X86

const bool kAvx2Supported = DetectAvx2();
std::atomic<bool> force_scalar{false};

bool UseAvx2() {
  return kAvx2Supported && !force_scalar.load(std::memory_order_relaxed);
}

}  // namespace

void Axpy(int64_t n, float a, const float* x, float* y) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return AxpyAvx2(n, a, x, y);
#endif
  AxpyScalar(n, a, x, y);
}

float Dot(int64_t n, const float* x, const float* y) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return DotAvx2(n, x, y);
#endif
  return DotScalar(n, x, y);
}

const char* ActiveIsa() { return UseAvx2() ? "avx2" : "scalar"; }

bool Avx2Supported() { return kAvx2Supported; }

void ForceScalar(bool force) { force_scalar.store(force); }

}  // namespace lookupffn::simd
