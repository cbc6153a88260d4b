// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0

#include "hadamard.h"

#include <algorithm>
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

void AddTransposedProductScalar(int64_t n, int64_t k, const float* a,
                                const float* b, float* c) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < n; ++o) {
      float sum = c[i * n + o];
      for (int64_t p = 0; p < k; ++p) sum += a[p * n + i] * b[p * n + o];
      c[i * n + o] = sum;
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

void CrossBlockHadamardRowsScalar(int64_t rows, int64_t num_blocks,
                                  int64_t block_size, float* data,
                                  int64_t stride) {
  const int64_t width = num_blocks * block_size;
  for (int64_t m = 0; m < rows; ++m) {
    float* x = data + m * stride;
    for (int64_t h = block_size; h < width; h *= 2) {
      HadamardStageScalar(width, h, x);
    }
  }
}

#ifdef LOOKUPFFN_HAVE_X86

// C[MR, 8 NV] = A[MR, k] B[k, 8 NV] for MR <= 6 and NV <= 2, or C += A B
// when Accumulate. A(i, p) is a[i * a_stride + p * a_step]; B's and C's
// rows are b_stride and c_stride apart. Each C entry is one FMA chain over
// p in increasing order. The accumulators are named variables rather than
// an array, because GCC keeps an array of vectors in memory and stores it on
// every iteration.
template <int MR, int NV, bool Accumulate = false>
__attribute__((target("avx2,fma"))) inline void MicroKernelAvx2(
    int64_t k, const float* a, int64_t a_stride, int64_t a_step,
    const float* b, int64_t b_stride, float* c, int64_t c_stride) {
  static_assert(1 <= MR && MR <= 6 && 1 <= NV && NV <= 2);
  const __m256 zero = _mm256_setzero_ps();
  __m256 c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero,
         c21 = zero, c30 = zero, c31 = zero, c40 = zero, c41 = zero,
         c50 = zero, c51 = zero;
#define LOOKUPFFN_LOAD(i)                                                   \
  if constexpr (Accumulate && MR > i) {                                     \
    c##i##0 = _mm256_loadu_ps(c + i * c_stride);                            \
    if constexpr (NV > 1) c##i##1 = _mm256_loadu_ps(c + i * c_stride + 8);  \
  }
  LOOKUPFFN_LOAD(0)
  LOOKUPFFN_LOAD(1)
  LOOKUPFFN_LOAD(2)
  LOOKUPFFN_LOAD(3)
  LOOKUPFFN_LOAD(4)
  LOOKUPFFN_LOAD(5)
#undef LOOKUPFFN_LOAD
  for (int64_t p = 0; p < k; ++p) {
    const float* a_p = a + p * a_step;
    const float* b_p = b + p * b_stride;
    const __m256 b0 = _mm256_loadu_ps(b_p);
    const __m256 b1 = NV > 1 ? _mm256_loadu_ps(b_p + 8) : zero;
#define LOOKUPFFN_ROW(i)                                               \
  if constexpr (MR > i) {                                              \
    const __m256 a_i = _mm256_broadcast_ss(a_p + i * a_stride);        \
    c##i##0 = _mm256_fmadd_ps(a_i, b0, c##i##0);                       \
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

// One row of C[1, 8 NV] = A[1, k] B[k, 8 NV] for NV <= 8, with the same FMA
// chains as MicroKernelAvx2. Up to 8 independent chains hide most of the
// FMA latency when fewer than six rows are left, such as for a single token.
template <int NV>
__attribute__((target("avx2,fma"))) inline void RowKernelAvx2(
    int64_t k, const float* a, const float* b, int64_t b_stride, float* c) {
  static_assert(1 <= NV && NV <= 8);
  const __m256 zero = _mm256_setzero_ps();
  __m256 c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero,
         c6 = zero, c7 = zero;
  for (int64_t p = 0; p < k; ++p) {
    const float* b_p = b + p * b_stride;
    const __m256 a_p = _mm256_broadcast_ss(a + p);
#define LOOKUPFFN_COLUMN(j) \
  if constexpr (NV > j) c##j = _mm256_fmadd_ps(a_p, _mm256_loadu_ps(b_p + 8 * j), c##j);
    LOOKUPFFN_COLUMN(0)
    LOOKUPFFN_COLUMN(1)
    LOOKUPFFN_COLUMN(2)
    LOOKUPFFN_COLUMN(3)
    LOOKUPFFN_COLUMN(4)
    LOOKUPFFN_COLUMN(5)
    LOOKUPFFN_COLUMN(6)
    LOOKUPFFN_COLUMN(7)
#undef LOOKUPFFN_COLUMN
  }
#define LOOKUPFFN_STORE(j) \
  if constexpr (NV > j) _mm256_storeu_ps(c + 8 * j, c##j);
  LOOKUPFFN_STORE(0)
  LOOKUPFFN_STORE(1)
  LOOKUPFFN_STORE(2)
  LOOKUPFFN_STORE(3)
  LOOKUPFFN_STORE(4)
  LOOKUPFFN_STORE(5)
  LOOKUPFFN_STORE(6)
  LOOKUPFFN_STORE(7)
#undef LOOKUPFFN_STORE
}

// Six rows by 16 columns keeps 12 accumulators in flight, enough to cover
// the FMA latency on current x86 cores with 16 vector registers.
constexpr int64_t kMicroRows = 6;

// Needs block_size to be a multiple of 8. Rows go through the 6 x 16
// kernel in groups of six, one strip of 16 columns at a time, so that strip
// of the block (b x 16 floats) stays in L1 while the rows pass over it.
// Of the rows left over, 3 or 4 go through the 3- or 4-row kernel, 5 through
// the 4-row one and the one-row kernel, and a pair after a group of six
// makes two groups of four. Timed alone on the 2-core development machine
// (four factors of 8 blocks of 64 x 64), 8 rows took 21.6 us as 4 + 4 and
// 24.7 us as 6 + 2 with the one-row kernel. 10 rows took 26 us instead of
// 36 us. One or two rows go through the one-row kernel, 64 columns at a
// time, which ran them faster than the 1- and 2-row 16-column kernels.
__attribute__((target("avx2,fma"))) void BlockDiagonalMultiplyAvx2(
    int64_t rows, int64_t num_blocks, int64_t block_size, const float* in,
    int64_t in_stride, const float* blocks, float* out, int64_t out_stride) {
  const int64_t b = block_size;
  int64_t grouped = rows - rows % kMicroRows;
  if (rows % kMicroRows == 2 && grouped >= kMicroRows) grouped -= kMicroRows;
  // Rows [grouped, strip_end) take the 4- and 3-row kernels: 3, 4 or 8 of
  // them, or 4 of 5.
  const int64_t left = rows - grouped;
  int64_t strip_end = grouped;
  if (left == 5) {
    strip_end += 4;
  } else if (left >= 3) {
    strip_end += left;
  }
  for (int64_t n = 0; n < num_blocks; ++n) {
    const float* x = in + n * b;
    const float* w = blocks + n * b * b;
    float* y = out + n * b;
    for (int64_t o = 0; o < b; o += 16) {
      const bool full = o + 16 <= b;
      for (int64_t m = 0; m < grouped; m += kMicroRows) {
        const float* a = x + m * in_stride;
        float* c = y + m * out_stride + o;
        if (full) {
          MicroKernelAvx2<kMicroRows, 2>(b, a, in_stride, 1, w + o, b, c,
                                         out_stride);
        } else {
          MicroKernelAvx2<kMicroRows, 1>(b, a, in_stride, 1, w + o, b, c,
                                         out_stride);
        }
      }
      for (int64_t m = grouped; m < strip_end;) {
        const float* a = x + m * in_stride;
        float* c = y + m * out_stride + o;
        if (strip_end - m >= 4) {
          if (full) {
            MicroKernelAvx2<4, 2>(b, a, in_stride, 1, w + o, b, c, out_stride);
          } else {
            MicroKernelAvx2<4, 1>(b, a, in_stride, 1, w + o, b, c, out_stride);
          }
          m += 4;
        } else {
          if (full) {
            MicroKernelAvx2<3, 2>(b, a, in_stride, 1, w + o, b, c, out_stride);
          } else {
            MicroKernelAvx2<3, 1>(b, a, in_stride, 1, w + o, b, c, out_stride);
          }
          m += 3;
        }
      }
    }
    for (int64_t m = strip_end; m < rows; ++m) {
      const float* a = x + m * in_stride;
      float* c = y + m * out_stride;
      int64_t o = 0;
      for (; o + 64 <= b; o += 64) RowKernelAvx2<8>(b, a, w + o, b, c + o);
      switch ((b - o) / 8) {
        case 7: RowKernelAvx2<7>(b, a, w + o, b, c + o); break;
        case 6: RowKernelAvx2<6>(b, a, w + o, b, c + o); break;
        case 5: RowKernelAvx2<5>(b, a, w + o, b, c + o); break;
        case 4: RowKernelAvx2<4>(b, a, w + o, b, c + o); break;
        case 3: RowKernelAvx2<3>(b, a, w + o, b, c + o); break;
        case 2: RowKernelAvx2<2>(b, a, w + o, b, c + o); break;
        case 1: RowKernelAvx2<1>(b, a, w + o, b, c + o); break;
        default: break;
      }
    }
  }
}

// Needs n to be a multiple of 8. C is cut into 6 x 16 tiles, each
// accumulated in registers over all k rows of A and B.
__attribute__((target("avx2,fma"))) void AddTransposedProductAvx2(
    int64_t n, int64_t k, const float* a, const float* b, float* c) {
  for (int64_t o = 0; o < n; o += 16) {
    const bool full = o + 16 <= n;
    int64_t i = 0;
    for (; i + kMicroRows <= n; i += kMicroRows) {
      if (full) {
        MicroKernelAvx2<kMicroRows, 2, true>(k, a + i, 1, n, b + o, n,
                                             c + i * n + o, n);
      } else {
        MicroKernelAvx2<kMicroRows, 1, true>(k, a + i, 1, n, b + o, n,
                                             c + i * n + o, n);
      }
    }
    for (; i < n; ++i) {
      if (full) {
        MicroKernelAvx2<1, 2, true>(k, a + i, 1, n, b + o, n, c + i * n + o, n);
      } else {
        MicroKernelAvx2<1, 1, true>(k, a + i, 1, n, b + o, n, c + i * n + o, n);
      }
    }
  }
}

// C[MR, 16 NV] = A[MR, k] B[k, 16 NV] for MR <= 6 and NV <= 4, or C += A B
// when Accumulate, with the arguments of MicroKernelAvx2. Each C entry is
// one FMA chain over p in increasing order, as there, so both kernels give
// bitwise the same C.
template <int MR, int NV, bool Accumulate = false>
__attribute__((target("avx512f,avx2,fma"))) inline void MicroKernelAvx512(
    int64_t k, const float* a, int64_t a_stride, int64_t a_step,
    const float* b, int64_t b_stride, float* c, int64_t c_stride) {
  static_assert(1 <= MR && MR <= 6 && 1 <= NV && NV <= 4);
  const __m512 zero = _mm512_setzero_ps();
#define LOOKUPFFN_DECLARE(i) \
  __m512 c##i##0 = zero, c##i##1 = zero, c##i##2 = zero, c##i##3 = zero;
  LOOKUPFFN_DECLARE(0)
  LOOKUPFFN_DECLARE(1)
  LOOKUPFFN_DECLARE(2)
  LOOKUPFFN_DECLARE(3)
  LOOKUPFFN_DECLARE(4)
  LOOKUPFFN_DECLARE(5)
#undef LOOKUPFFN_DECLARE
#define LOOKUPFFN_LOAD(i, j)                                         \
  if constexpr (Accumulate && MR > i && NV > j) {                    \
    c##i##j = _mm512_loadu_ps(c + i * c_stride + 16 * j);            \
  }
#define LOOKUPFFN_LOAD_ROW(i) \
  LOOKUPFFN_LOAD(i, 0) LOOKUPFFN_LOAD(i, 1) LOOKUPFFN_LOAD(i, 2) LOOKUPFFN_LOAD(i, 3)
  LOOKUPFFN_LOAD_ROW(0)
  LOOKUPFFN_LOAD_ROW(1)
  LOOKUPFFN_LOAD_ROW(2)
  LOOKUPFFN_LOAD_ROW(3)
  LOOKUPFFN_LOAD_ROW(4)
  LOOKUPFFN_LOAD_ROW(5)
#undef LOOKUPFFN_LOAD_ROW
#undef LOOKUPFFN_LOAD
  for (int64_t p = 0; p < k; ++p) {
    const float* a_p = a + p * a_step;
    const float* b_p = b + p * b_stride;
    const __m512 b0 = _mm512_loadu_ps(b_p);
    const __m512 b1 = NV > 1 ? _mm512_loadu_ps(b_p + 16) : zero;
    const __m512 b2 = NV > 2 ? _mm512_loadu_ps(b_p + 32) : zero;
    const __m512 b3 = NV > 3 ? _mm512_loadu_ps(b_p + 48) : zero;
#define LOOKUPFFN_ROW(i)                                               \
  if constexpr (MR > i) {                                              \
    const __m512 a_i = _mm512_set1_ps(a_p[i * a_stride]);              \
    c##i##0 = _mm512_fmadd_ps(a_i, b0, c##i##0);                       \
    if constexpr (NV > 1) c##i##1 = _mm512_fmadd_ps(a_i, b1, c##i##1); \
    if constexpr (NV > 2) c##i##2 = _mm512_fmadd_ps(a_i, b2, c##i##2); \
    if constexpr (NV > 3) c##i##3 = _mm512_fmadd_ps(a_i, b3, c##i##3); \
  }
    LOOKUPFFN_ROW(0)
    LOOKUPFFN_ROW(1)
    LOOKUPFFN_ROW(2)
    LOOKUPFFN_ROW(3)
    LOOKUPFFN_ROW(4)
    LOOKUPFFN_ROW(5)
#undef LOOKUPFFN_ROW
  }
#define LOOKUPFFN_STORE(i, j)                                        \
  if constexpr (MR > i && NV > j) {                                  \
    _mm512_storeu_ps(c + i * c_stride + 16 * j, c##i##j);            \
  }
#define LOOKUPFFN_STORE_ROW(i) \
  LOOKUPFFN_STORE(i, 0) LOOKUPFFN_STORE(i, 1) LOOKUPFFN_STORE(i, 2) LOOKUPFFN_STORE(i, 3)
  LOOKUPFFN_STORE_ROW(0)
  LOOKUPFFN_STORE_ROW(1)
  LOOKUPFFN_STORE_ROW(2)
  LOOKUPFFN_STORE_ROW(3)
  LOOKUPFFN_STORE_ROW(4)
  LOOKUPFFN_STORE_ROW(5)
#undef LOOKUPFFN_STORE_ROW
#undef LOOKUPFFN_STORE
}

// MicroKernelAvx512<MR, NV> for 1 <= mr <= 6 and 1 <= nv <= 4 known at run
// time.
template <bool Accumulate = false>
__attribute__((target("avx512f,avx2,fma"))) void MicroKernelAvx512Any(
    int mr, int nv, int64_t k, const float* a, int64_t a_stride,
    int64_t a_step, const float* b, int64_t b_stride, float* c,
    int64_t c_stride) {
#define LOOKUPFFN_CASE(MR, NV)                                               \
  case 4 * (MR - 1) + NV - 1:                                                \
    return MicroKernelAvx512<MR, NV, Accumulate>(k, a, a_stride, a_step, b, \
                                                 b_stride, c, c_stride);
#define LOOKUPFFN_CASES(MR) \
  LOOKUPFFN_CASE(MR, 1) LOOKUPFFN_CASE(MR, 2) LOOKUPFFN_CASE(MR, 3) LOOKUPFFN_CASE(MR, 4)
  switch (4 * (mr - 1) + nv - 1) {
    LOOKUPFFN_CASES(1)
    LOOKUPFFN_CASES(2)
    LOOKUPFFN_CASES(3)
    LOOKUPFFN_CASES(4)
    LOOKUPFFN_CASES(5)
    LOOKUPFFN_CASES(6)
    default: break;
  }
#undef LOOKUPFFN_CASES
#undef LOOKUPFFN_CASE
}

// Needs block_size to be a multiple of 16. Rows go through the 6 x 64
// kernel in groups of six, one strip of up to 64 columns at a time, and the
// rows left over through one kernel of that many rows. Six rows keep 24
// accumulators in the 32 registers. One row still has 4 chains of 16
// lanes, as many lanes in flight as the AVX2 one-row kernel's 8 chains.
__attribute__((target("avx512f,avx2,fma"))) void BlockDiagonalMultiplyAvx512(
    int64_t rows, int64_t num_blocks, int64_t block_size, const float* in,
    int64_t in_stride, const float* blocks, float* out, int64_t out_stride) {
  const int64_t b = block_size;
  for (int64_t n = 0; n < num_blocks; ++n) {
    const float* x = in + n * b;
    const float* w = blocks + n * b * b;
    float* y = out + n * b;
    for (int64_t o = 0; o < b; o += 64) {
      const int nv = static_cast<int>(std::min<int64_t>(4, (b - o) / 16));
      int64_t m = 0;
      for (; m + kMicroRows <= rows; m += kMicroRows) {
        const float* a = x + m * in_stride;
        float* c = y + m * out_stride + o;
        if (nv == 4) {
          MicroKernelAvx512<kMicroRows, 4>(b, a, in_stride, 1, w + o, b, c,
                                           out_stride);
        } else {
          MicroKernelAvx512Any(kMicroRows, nv, b, a, in_stride, 1, w + o, b,
                               c, out_stride);
        }
      }
      if (m < rows) {
        MicroKernelAvx512Any(static_cast<int>(rows - m), nv, b,
                             x + m * in_stride, in_stride, 1, w + o, b,
                             y + m * out_stride + o, out_stride);
      }
    }
  }
}

// Needs n to be a multiple of 16. C is cut into 6 x 64 tiles (narrower in
// the last strip), each accumulated in registers over all k rows of A and B.
__attribute__((target("avx512f,avx2,fma"))) void AddTransposedProductAvx512(
    int64_t n, int64_t k, const float* a, const float* b, float* c) {
  for (int64_t o = 0; o < n; o += 64) {
    const int nv = static_cast<int>(std::min<int64_t>(4, (n - o) / 16));
    for (int64_t i = 0; i < n; i += kMicroRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kMicroRows, n - i));
      MicroKernelAvx512Any<true>(mr, nv, k, a + i, 1, n, b + o, n,
                                 c + i * n + o, n);
    }
  }
}

// The butterfly stages of one row with entries first_h, 2 first_h, ...
// apart, first_h a multiple of 8, one pass over the row each.
__attribute__((target("avx2,fma"))) void ButterflyStagesAvx2(int64_t width,
                                                            int64_t first_h,
                                                            float* x) {
  for (int64_t h = first_h; h < width; h *= 2) {
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

// The butterflies of 8 vectors v0..v7 of type V with ADD and SUB: pairs 1
// apart, then 2, then 4, as HadamardStageScalar orders them. A macro rather
// than a template over the vector type, so that each expansion inherits the
// instruction set of the function it is in.
#define LOOKUPFFN_BUTTERFLY_NETWORK8(V, ADD, SUB)               \
  do {                                                          \
    const V s0 = ADD(v0, v1), d0 = SUB(v0, v1);                 \
    const V s1 = ADD(v2, v3), d1 = SUB(v2, v3);                 \
    const V s2 = ADD(v4, v5), d2 = SUB(v4, v5);                 \
    const V s3 = ADD(v6, v7), d3 = SUB(v6, v7);                 \
    const V t0 = ADD(s0, s1), t2 = SUB(s0, s1);                 \
    const V t1 = ADD(d0, d1), t3 = SUB(d0, d1);                 \
    const V t4 = ADD(s2, s3), t6 = SUB(s2, s3);                 \
    const V t5 = ADD(d2, d3), t7 = SUB(d2, d3);                 \
    v0 = ADD(t0, t4);                                           \
    v1 = ADD(t1, t5);                                           \
    v2 = ADD(t2, t6);                                           \
    v3 = ADD(t3, t7);                                           \
    v4 = SUB(t0, t4);                                           \
    v5 = SUB(t1, t5);                                           \
    v6 = SUB(t2, t6);                                           \
    v7 = SUB(t3, t7);                                           \
  } while (false)

// The vectors are separate arguments rather than an array, which GCC would
// keep in memory.
__attribute__((target("avx2,fma"))) inline void ButterflyNetwork8(
    __m256& v0, __m256& v1, __m256& v2, __m256& v3, __m256& v4, __m256& v5,
    __m256& v6, __m256& v7) {
  LOOKUPFFN_BUTTERFLY_NETWORK8(__m256, _mm256_add_ps, _mm256_sub_ps);
}

// Scales a vector of 8 and runs the butterfly stages with entries 1, 2 and
// 4 apart inside it. Each stage adds the partner lane p to lanes of the
// first half of a pair and subtracts the lane from p in the second half.
__attribute__((target("avx2,fma"))) inline __m256 ScaleAndButterflyLanes(
    __m256 v, __m256 scale) {
  v = _mm256_mul_ps(v, scale);
  __m256 p = _mm256_permute_ps(v, 0xB1);
  v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
  p = _mm256_permute_ps(v, 0x4E);
  v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
  p = _mm256_permute2f128_ps(v, v, 0x01);
  return _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
}

// Loads 8 vectors `step` floats apart from x, runs ButterflyNetwork8 on
// them and stores them back. With kLanesFirst, each vector first gets
// ScaleAndButterflyLanes.
template <bool kLanesFirst>
__attribute__((target("avx2,fma"))) inline void Butterfly8At(float* x,
                                                            int64_t step,
                                                            __m256 scale) {
  __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + step),
         v2 = _mm256_loadu_ps(x + 2 * step), v3 = _mm256_loadu_ps(x + 3 * step),
         v4 = _mm256_loadu_ps(x + 4 * step), v5 = _mm256_loadu_ps(x + 5 * step),
         v6 = _mm256_loadu_ps(x + 6 * step), v7 = _mm256_loadu_ps(x + 7 * step);
  if constexpr (kLanesFirst) {
    v0 = ScaleAndButterflyLanes(v0, scale);
    v1 = ScaleAndButterflyLanes(v1, scale);
    v2 = ScaleAndButterflyLanes(v2, scale);
    v3 = ScaleAndButterflyLanes(v3, scale);
    v4 = ScaleAndButterflyLanes(v4, scale);
    v5 = ScaleAndButterflyLanes(v5, scale);
    v6 = ScaleAndButterflyLanes(v6, scale);
    v7 = ScaleAndButterflyLanes(v7, scale);
  }
  ButterflyNetwork8(v0, v1, v2, v3, v4, v5, v6, v7);
  _mm256_storeu_ps(x, v0);
  _mm256_storeu_ps(x + step, v1);
  _mm256_storeu_ps(x + 2 * step, v2);
  _mm256_storeu_ps(x + 3 * step, v3);
  _mm256_storeu_ps(x + 4 * step, v4);
  _mm256_storeu_ps(x + 5 * step, v5);
  _mm256_storeu_ps(x + 6 * step, v6);
  _mm256_storeu_ps(x + 7 * step, v7);
}

// The butterfly stages with entries h, 2h and 4h apart of one row of
// `width` floats, all three in registers: one pass over the row instead of
// three. h must be a multiple of 8 and width of 8h.
__attribute__((target("avx2,fma"))) void ButterflyThreeStagesAvx2(
    int64_t width, int64_t h, float* x) {
  for (int64_t start = 0; start < width; start += 8 * h) {
    for (int64_t c = start; c < start + h; c += 8) {
      Butterfly8At<false>(x + c, h, _mm256_setzero_ps());
    }
  }
}

// Needs width to be a multiple of 8. The stages run in the order of
// HadamardRowsScalar, three at a time in registers. Where width is a
// multiple of 64, the first pass runs the stages 1 to 32 apart on 64
// floats at a time. Each later pass runs three more, so width 512 takes two
// passes over the row instead of seven.
__attribute__((target("avx2,fma"))) void HadamardRowsAvx2(int64_t rows,
                                                         int64_t width,
                                                         float* data,
                                                         int64_t stride) {
  const __m256 scale = _mm256_set1_ps(1.f / std::sqrt(static_cast<float>(width)));
  for (int64_t m = 0; m < rows; ++m) {
    float* x = data + m * stride;
    int64_t h = 8;
    if (width % 64 == 0) {
      for (int64_t c = 0; c < width; c += 64) {
        Butterfly8At<true>(x + c, 8, scale);
      }
      h = 64;
    } else {
      for (int64_t j = 0; j < width; j += 8) {
        _mm256_storeu_ps(x + j, ScaleAndButterflyLanes(_mm256_loadu_ps(x + j), scale));
      }
    }
    for (; 8 * h <= width; h *= 8) ButterflyThreeStagesAvx2(width, h, x);
    ButterflyStagesAvx2(width, h, x);
  }
}

// The butterflies of NB = 8 blocks, all three stages in registers.
__attribute__((target("avx2,fma"))) void CrossBlockHadamard8Avx2(
    int64_t rows, int64_t block_size, float* data, int64_t stride) {
  for (int64_t m = 0; m < rows; ++m) {
    ButterflyThreeStagesAvx2(8 * block_size, block_size, data + m * stride);
  }
}

// CrossBlockHadamard8Avx2 with 16 lanes: the same additions per lane, so
// bitwise the same rows. Needs block_size to be a multiple of 16.
__attribute__((target("avx512f,avx2,fma"))) void CrossBlockHadamard8Avx512(
    int64_t rows, int64_t block_size, float* data, int64_t stride) {
  const int64_t b = block_size;
  for (int64_t m = 0; m < rows; ++m) {
    float* x = data + m * stride;
    for (int64_t c = 0; c < b; c += 16) {
      float* p = x + c;
      __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + b),
             v2 = _mm512_loadu_ps(p + 2 * b), v3 = _mm512_loadu_ps(p + 3 * b),
             v4 = _mm512_loadu_ps(p + 4 * b), v5 = _mm512_loadu_ps(p + 5 * b),
             v6 = _mm512_loadu_ps(p + 6 * b), v7 = _mm512_loadu_ps(p + 7 * b);
      LOOKUPFFN_BUTTERFLY_NETWORK8(__m512, _mm512_add_ps, _mm512_sub_ps);
      _mm512_storeu_ps(p, v0);
      _mm512_storeu_ps(p + b, v1);
      _mm512_storeu_ps(p + 2 * b, v2);
      _mm512_storeu_ps(p + 3 * b, v3);
      _mm512_storeu_ps(p + 4 * b, v4);
      _mm512_storeu_ps(p + 5 * b, v5);
      _mm512_storeu_ps(p + 6 * b, v6);
      _mm512_storeu_ps(p + 7 * b, v7);
    }
  }
}

// Any NB, with block_size a multiple of 8: one pass per stage.
__attribute__((target("avx2,fma"))) void CrossBlockHadamardRowsAvx2(
    int64_t rows, int64_t num_blocks, int64_t block_size, float* data,
    int64_t stride) {
  if (num_blocks == 8) {
    return CrossBlockHadamard8Avx2(rows, block_size, data, stride);
  }
  const int64_t width = num_blocks * block_size;
  for (int64_t m = 0; m < rows; ++m) {
    ButterflyStagesAvx2(width, block_size, data + m * stride);
  }
}

#endif  // LOOKUPFFN_HAVE_X86

}  // namespace

void BlockDiagonalMultiply(int64_t rows, int64_t num_blocks, int64_t block_size,
                           const float* in, int64_t in_stride,
                           const float* blocks, float* out,
                           int64_t out_stride) {
#ifdef LOOKUPFFN_HAVE_X86
  if (simd::Avx512Active() && block_size % 16 == 0) {
    return BlockDiagonalMultiplyAvx512(rows, num_blocks, block_size, in,
                                       in_stride, blocks, out, out_stride);
  }
  if (simd::Avx2Active() && block_size % 8 == 0) {
    return BlockDiagonalMultiplyAvx2(rows, num_blocks, block_size, in,
                                     in_stride, blocks, out, out_stride);
  }
#endif
  BlockDiagonalMultiplyScalar(rows, num_blocks, block_size, in, in_stride,
                              blocks, out, out_stride);
}

void AddTransposedProduct(int64_t n, int64_t k, const float* a,
                          const float* b, float* c) {
#ifdef LOOKUPFFN_HAVE_X86
  if (simd::Avx512Active() && n % 16 == 0) {
    return AddTransposedProductAvx512(n, k, a, b, c);
  }
  if (simd::Avx2Active() && n % 8 == 0) {
    return AddTransposedProductAvx2(n, k, a, b, c);
  }
#endif
  AddTransposedProductScalar(n, k, a, b, c);
}

void HadamardRows(int64_t rows, int64_t width, float* data, int64_t stride) {
#ifdef LOOKUPFFN_HAVE_X86
  if (simd::Avx2Active() && width % 8 == 0) {
    return HadamardRowsAvx2(rows, width, data, stride);
  }
#endif
  HadamardRowsScalar(rows, width, data, stride);
}

void CrossBlockHadamardRows(int64_t rows, int64_t num_blocks,
                            int64_t block_size, float* data, int64_t stride) {
#ifdef LOOKUPFFN_HAVE_X86
  if (simd::Avx512Active() && num_blocks == 8 && block_size % 16 == 0) {
    return CrossBlockHadamard8Avx512(rows, block_size, data, stride);
  }
  if (simd::Avx2Active() && block_size % 8 == 0) {
    return CrossBlockHadamardRowsAvx2(rows, num_blocks, block_size, data,
                                      stride);
  }
#endif
  CrossBlockHadamardRowsScalar(rows, num_blocks, block_size, data, stride);
}

}  // namespace lookupffn
