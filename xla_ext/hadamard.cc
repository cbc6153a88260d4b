// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0

#include "hadamard.h"

#include <cmath>
#include <cstdint>

#include "simd.h"

#if defined(__x86_64__) || defined(_M_X64)
#define LOOKUPFFN_HAVE_X86 1
#include <immintrin.h>
#endif

namespace lookupffn {
namespace {

void BlockDiagonalMultiplyScalar(int64_t rows, int64_t num_blocks,
                                 int64_t block_size, const float* in,
                                 int64_t in_stride, const float* blocks,
                                 float* out, int64_t out_stride) {
  const int64_t b = block_size;
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t n = 0; n < num_blocks; ++n) {
      const float* x = in + m * in_stride + n * b;
      const float* w = blocks + n * b * b;
      float* y = out + m * out_stride + n * b;
      for (int64_t o = 0; o < b; ++o) y[o] = 0.f;
      for (int64_t i = 0; i < b; ++i) {
        const float xi = x[i];
        for (int64_t o = 0; o < b; ++o) y[o] += xi * w[i * b + o];
      }
    }
  }
}

// One butterfly stage: (a, b) -> (a + b, a - b) for entries h apart.
void HadamardStageScalar(int64_t width, int64_t h, float* x) {
  for (int64_t start = 0; start < width; start += 2 * h) {
    for (int64_t j = start; j < start + h; ++j) {
      const float a = x[j];
      const float b = x[j + h];
      x[j] = a + b;
      x[j + h] = a - b;
    }
  }
}

void HadamardRowsScalar(int64_t rows, int64_t width, float* data,
                        int64_t stride) {
  const float scale = 1.f / std::sqrt(static_cast<float>(width));
  for (int64_t m = 0; m < rows; ++m) {
    float* x = data + m * stride;
    for (int64_t j = 0; j < width; ++j) x[j] *= scale;
    for (int64_t h = 1; h < width; h *= 2) HadamardStageScalar(width, h, x);
  }
}

#ifdef LOOKUPFFN_HAVE_X86

// C[MR, 8 NV] = A[MR, k] B[k, 8 NV] for MR <= 6 and NV <= 2; A's rows are
// a_stride apart, B's and C's rows b_stride and c_stride. Each C entry is
// one FMA chain over k in increasing order. The accumulators are named
// variables rather than an array, because GCC keeps an array of vectors in
// memory and stores it on every iteration.
template <int MR, int NV>
__attribute__((target("avx2,fma"))) inline void MicroKernelAvx2(
    int64_t k, const float* a, int64_t a_stride, const float* b,
    int64_t b_stride, float* c, int64_t c_stride) {
  static_assert(1 <= MR && MR <= 6 && 1 <= NV && NV <= 2);
  const __m256 zero = _mm256_setzero_ps();
  __m256 c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero,
         c21 = zero, c30 = zero, c31 = zero, c40 = zero, c41 = zero,
         c50 = zero, c51 = zero;
  for (int64_t p = 0; p < k; ++p) {
    const float* b_p = b + p * b_stride;
    const __m256 b0 = _mm256_loadu_ps(b_p);
    const __m256 b1 = NV > 1 ? _mm256_loadu_ps(b_p + 8) : zero;
#define LOOKUPFFN_ROW(i)                                             \
  if constexpr (MR > i) {                                            \
    const __m256 a_i = _mm256_broadcast_ss(a + i * a_stride + p);    \
    c##i##0 = _mm256_fmadd_ps(a_i, b0, c##i##0);                     \
    if constexpr (NV > 1) c##i##1 = _mm256_fmadd_ps(a_i, b1, c##i##1); \
  }
    LOOKUPFFN_ROW(0)
    LOOKUPFFN_ROW(1)
    LOOKUPFFN_ROW(2)
    LOOKUPFFN_ROW(3)
    LOOKUPFFN_ROW(4)
    LOOKUPFFN_ROW(5)
#undef LOOKUPFFN_ROW
  }
#define LOOKUPFFN_STORE(i)                                                 \
  if constexpr (MR > i) {                                                  \
    _mm256_storeu_ps(c + i * c_stride, c##i##0);                           \
    if constexpr (NV > 1) _mm256_storeu_ps(c + i * c_stride + 8, c##i##1); \
  }
  LOOKUPFFN_STORE(0)
  LOOKUPFFN_STORE(1)
  LOOKUPFFN_STORE(2)
  LOOKUPFFN_STORE(3)
  LOOKUPFFN_STORE(4)
  LOOKUPFFN_STORE(5)
#undef LOOKUPFFN_STORE
}

// Six rows by 16 columns keeps 12 accumulators in flight, enough to cover
// the FMA latency on current x86 cores with 16 vector registers.
constexpr int64_t kMicroRows = 6;

template <int NV>
__attribute__((target("avx2,fma"))) void ColumnStripAvx2(
    int64_t rows, int64_t k, const float* a, int64_t a_stride, const float* b,
    int64_t b_stride, float* c, int64_t c_stride) {
  int64_t m = 0;
  for (; m + kMicroRows <= rows; m += kMicroRows) {
    MicroKernelAvx2<kMicroRows, NV>(k, a + m * a_stride, a_stride, b, b_stride,
                                    c + m * c_stride, c_stride);
  }
  a += m * a_stride;
  c += m * c_stride;
  switch (rows - m) {
    case 5: return MicroKernelAvx2<5, NV>(k, a, a_stride, b, b_stride, c, c_stride);
    case 4: return MicroKernelAvx2<4, NV>(k, a, a_stride, b, b_stride, c, c_stride);
    case 3: return MicroKernelAvx2<3, NV>(k, a, a_stride, b, b_stride, c, c_stride);
    case 2: return MicroKernelAvx2<2, NV>(k, a, a_stride, b, b_stride, c, c_stride);
    case 1: return MicroKernelAvx2<1, NV>(k, a, a_stride, b, b_stride, c, c_stride);
    default: return;
  }
}

// Needs block_size to be a multiple of 8.
__attribute__((target("avx2,fma"))) void BlockDiagonalMultiplyAvx2(
    int64_t rows, int64_t num_blocks, int64_t block_size, const float* in,
    int64_t in_stride, const float* blocks, float* out, int64_t out_stride) {
  const int64_t b = block_size;
  for (int64_t n = 0; n < num_blocks; ++n) {
    const float* x = in + n * b;
    const float* w = blocks + n * b * b;
    float* y = out + n * b;
    // One strip of the block's columns at a time, so that strip of w (b x 16
    // floats) stays in L1 while every row passes over it.
    int64_t o = 0;
    for (; o + 16 <= b; o += 16) {
      ColumnStripAvx2<2>(rows, b, x, in_stride, w + o, b, y + o, out_stride);
    }
    if (o < b) {
      ColumnStripAvx2<1>(rows, b, x, in_stride, w + o, b, y + o, out_stride);
    }
  }
}

// Needs width to be a multiple of 8. The first three butterfly stages
// (entries 1, 2 and 4 apart) run inside each vector of 8.
__attribute__((target("avx2,fma"))) void HadamardRowsAvx2(int64_t rows,
                                                         int64_t width,
                                                         float* data,
                                                         int64_t stride) {
  const __m256 scale = _mm256_set1_ps(1.f / std::sqrt(static_cast<float>(width)));
  for (int64_t m = 0; m < rows; ++m) {
    float* x = data + m * stride;
    for (int64_t j = 0; j < width; j += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), scale);
      // Each stage adds the partner lane p to lanes of the first half of a
      // pair and subtracts the lane from p in the second half.
      __m256 p = _mm256_permute_ps(v, 0xB1);
      v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
      p = _mm256_permute_ps(v, 0x4E);
      v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
      p = _mm256_permute2f128_ps(v, v, 0x01);
      v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
      _mm256_storeu_ps(x + j, v);
    }
    for (int64_t h = 8; h < width; h *= 2) {
      for (int64_t start = 0; start < width; start += 2 * h) {
        for (int64_t j = start; j < start + h; j += 8) {
          const __m256 a = _mm256_loadu_ps(x + j);
          const __m256 b = _mm256_loadu_ps(x + j + h);
          _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
          _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
        }
      }
    }
  }
}

#endif  // LOOKUPFFN_HAVE_X86

}  // namespace

void BlockDiagonalMultiply(int64_t rows, int64_t num_blocks, int64_t block_size,
                           const float* in, int64_t in_stride,
                           const float* blocks, float* out,
                           int64_t out_stride) {
#ifdef LOOKUPFFN_HAVE_X86
  if (simd::Avx2Active() && block_size % 8 == 0) {
    return BlockDiagonalMultiplyAvx2(rows, num_blocks, block_size, in,
                                     in_stride, blocks, out, out_stride);
  }
#endif
  BlockDiagonalMultiplyScalar(rows, num_blocks, block_size, in, in_stride,
                              blocks, out, out_stride);
}

void HadamardRows(int64_t rows, int64_t width, float* data, int64_t stride) {
#ifdef LOOKUPFFN_HAVE_X86
  if (simd::Avx2Active() && width % 8 == 0) {
    return HadamardRowsAvx2(rows, width, data, stride);
  }
#endif
  HadamardRowsScalar(rows, width, data, stride);
}

}  // namespace lookupffn
