// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0

#include "simd.h"

#include <atomic>
#include <cmath>

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

void AxpyBf16Scalar(int64_t n, float a, const uint16_t* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * Bf16ToFloat(x[i]);
}

float DotBf16Scalar(int64_t n, const float* x, const uint16_t* y) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i] * Bf16ToFloat(y[i]);
    s1 += x[i + 1] * Bf16ToFloat(y[i + 1]);
    s2 += x[i + 2] * Bf16ToFloat(y[i + 2]);
    s3 += x[i + 3] * Bf16ToFloat(y[i + 3]);
  }
  for (; i < n; ++i) s0 += x[i] * Bf16ToFloat(y[i]);
  return (s0 + s1) + (s2 + s3);
}

void MixRowScalar(int64_t n, float a, const float* u, float b,
                  const float* x, const float* bias, float* z) {
  for (int64_t i = 0; i < n; ++i) z[i] = a * u[i] + b * x[i] + bias[i];
}

// Adds the partial sums after the tail, as RowMeanAndVariance documents.
float SumPartials(const float* partial, float tail_sum) {
  for (int j = 0; j < 8; ++j) tail_sum += partial[j];
  return tail_sum;
}

MeanAndVariance RowMeanAndVarianceScalar(int64_t n, const float* x) {
  float partial[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += x[i + j];
  }
  float tail = 0.f;
  for (int64_t k = i; k < n; ++k) tail += x[k];
  const float mean = SumPartials(partial, tail) / static_cast<float>(n);
  float squares[8] = {};
  for (i = 0; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float c = x[i + j] - mean;
      squares[j] += c * c;
    }
  }
  float square_tail = 0.f;
  for (int64_t k = i; k < n; ++k) square_tail += (x[k] - mean) * (x[k] - mean);
  return {mean, SumPartials(squares, square_tail) / static_cast<float>(n)};
}

void NormalizeRowScalar(int64_t n, const float* x, float mean, float inv_std,
                        const float* scale, const float* bias, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = (x[i] - mean) * (inv_std * scale[i]) + bias[i];
  }
}

void ExpNegTwiceAbsScalar(int64_t n, const float* z, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(-2.f * std::fabs(z[i]));
}

#ifdef LOOKUPFFN_HAVE_X86

// Constants of ExpNonPositiveAvx2 and ExpNonPositiveAvx512. ln2 is split
// in two so that x - k ln2 is exact enough, and the Taylor coefficients of
// exp(r) are listed in the order that Horner's rule uses them.
constexpr float kExpMinArgument = -87.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f;
constexpr float kLn2Low = -2.12194440e-4f;
constexpr float kExpTaylor[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                1.0f / 6.0f,   0.5f,          1.0f,
                                1.0f};

// exp(x) for x <= 0 on 8 lanes: x = k ln2 + r with |r| <= ln2 / 2, a degree-6
// Taylor polynomial for exp(r) (error below 2e-7 relative on that range),
// and 2^k built in the exponent bits. Below -87 the result flushes to 0.
__attribute__((target("avx2,fma"))) __m256 ExpNonPositiveAvx2(__m256 x) {
  const __m256 min_x = _mm256_set1_ps(kExpMinArgument);
  const __m256 underflow = _mm256_cmp_ps(x, min_x, _CMP_LT_OQ);
  x = _mm256_max_ps(x, min_x);
  const __m256 k = _mm256_round_ps(
      _mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - k ln2.
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2High), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Low), r);
  __m256 p = _mm256_set1_ps(kExpTaylor[0]);
  for (int i = 1; i < 7; ++i) {
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpTaylor[i]));
  }
  const __m256i exponent = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
  return _mm256_andnot_ps(underflow, result);
}

__attribute__((target("avx2,fma"))) void ExpNegTwiceAbsAvx2(int64_t n,
                                                           const float* z,
                                                           float* out) {
  const __m256 minus_two = _mm256_set1_ps(-2.0f);
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 abs_z = _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(z + i));
    _mm256_storeu_ps(out + i,
                     ExpNonPositiveAvx2(_mm256_mul_ps(minus_two, abs_z)));
  }
  if (i < n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - i)), lane);
    const __m256 abs_z =
        _mm256_andnot_ps(sign_bit, _mm256_maskload_ps(z + i, mask));
    _mm256_maskstore_ps(out + i, mask,
                        ExpNonPositiveAvx2(_mm256_mul_ps(minus_two, abs_z)));
  }
}

// ExpNonPositiveAvx2 on 16 lanes, operation for operation, so each lane
// gets the bits the AVX2 version gives it.
__attribute__((target("avx512f,avx2,fma"))) __m512 ExpNonPositiveAvx512(
    __m512 x) {
  const __m512 min_x = _mm512_set1_ps(kExpMinArgument);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, min_x, _CMP_LT_OQ);
  x = _mm512_max_ps(x, min_x);
  const __m512 k = _mm512_roundscale_ps(
      _mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2High), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Low), r);
  __m512 p = _mm512_set1_ps(kExpTaylor[0]);
  for (int i = 1; i < 7; ++i) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpTaylor[i]));
  }
  const __m512i exponent = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  const __m512 result = _mm512_mul_ps(p, _mm512_castsi512_ps(exponent));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), result);
}

__attribute__((target("avx512f,avx2,fma"))) void ExpNegTwiceAbsAvx512(
    int64_t n, const float* z, float* out) {
  const __m512 minus_two = _mm512_set1_ps(-2.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 abs_z = _mm512_abs_ps(_mm512_loadu_ps(z + i));
    _mm512_storeu_ps(out + i,
                     ExpNonPositiveAvx512(_mm512_mul_ps(minus_two, abs_z)));
  }
  if (i < n) {
    // Masked lanes are neither read nor written.
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 abs_z = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, z + i));
    _mm512_mask_storeu_ps(out + i, mask,
                          ExpNonPositiveAvx512(_mm512_mul_ps(minus_two, abs_z)));
  }
}

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

__attribute__((target("avx2,fma"))) void MixRowAvx2(
    int64_t n, float a, const float* u, float b, const float* x,
    const float* bias, float* z) {
  const __m256 va = _mm256_set1_ps(a);
  const __m256 vb = _mm256_set1_ps(b);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 mixed = _mm256_add_ps(_mm256_mul_ps(va, _mm256_loadu_ps(u + i)),
                                       _mm256_mul_ps(vb, _mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(z + i, _mm256_add_ps(mixed, _mm256_loadu_ps(bias + i)));
  }
  MixRowScalar(n - i, a, u + i, b, x + i, bias + i, z + i);
}

__attribute__((target("avx2,fma"))) MeanAndVariance RowMeanAndVarianceAvx2(
    int64_t n, const float* x) {
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(x + i));
  float partial[8];
  _mm256_storeu_ps(partial, sum);
  float tail = 0.f;
  for (int64_t k = i; k < n; ++k) tail += x[k];
  const float mean = SumPartials(partial, tail) / static_cast<float>(n);
  const __m256 vmean = _mm256_set1_ps(mean);
  __m256 squares = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 c = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmean);
    squares = _mm256_add_ps(squares, _mm256_mul_ps(c, c));
  }
  _mm256_storeu_ps(partial, squares);
  float square_tail = 0.f;
  for (int64_t k = i; k < n; ++k) square_tail += (x[k] - mean) * (x[k] - mean);
  return {mean, SumPartials(partial, square_tail) / static_cast<float>(n)};
}

__attribute__((target("avx2,fma"))) void NormalizeRowAvx2(
    int64_t n, const float* x, float mean, float inv_std, const float* scale,
    const float* bias, float* out) {
  const __m256 vmean = _mm256_set1_ps(mean);
  const __m256 vinv = _mm256_set1_ps(inv_std);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 factor = _mm256_mul_ps(vinv, _mm256_loadu_ps(scale + i));
    const __m256 centered = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmean);
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_mul_ps(centered, factor),
                                            _mm256_loadu_ps(bias + i)));
  }
  NormalizeRowScalar(n - i, x + i, mean, inv_std, scale + i, bias + i, out + i);
}

// Widens 8 bfloat16 values to float32 by moving them to the upper halves.
__attribute__((target("avx2,fma"))) inline __m256 LoadBf16x8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

__attribute__((target("avx2,fma"))) void AxpyBf16Avx2(int64_t n, float a,
                                                      const uint16_t* x,
                                                      float* y) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 y0 = _mm256_loadu_ps(y + i);
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, LoadBf16x8(x + i), y0));
  }
  for (; i < n; ++i) y[i] += a * Bf16ToFloat(x[i]);
}

__attribute__((target("avx2,fma"))) float DotBf16Avx2(int64_t n,
                                                     const float* x,
                                                     const uint16_t* y) {
  __m256 s0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), LoadBf16x8(y + i), s0);
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float sum = _mm_cvtss_f32(h);
  for (; i < n; ++i) sum += x[i] * Bf16ToFloat(y[i]);
  return sum;
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

// Transposes the 8 x 8 block of rows r[0..8) in place.
__attribute__((target("avx2,fma"))) void Transpose8x8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]);
  const __m256 t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]);
  const __m256 t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]);
  const __m256 t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]);
  const __m256 t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44);
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44);
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Eight tables per step, one a lane: after a transpose, vector j contains bit
// j of every table, and the sums and products run over j in the scalar
// order, so every result is bitwise the scalar one.
__attribute__((target("avx2,fma"))) int64_t HashEightBitTablesAvx2(
    int64_t tables, const float* z, const float* e, int32_t* codes,
    float* scores) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 zero = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= tables; t += 8) {
    __m256 zt[8];
    __m256 et[8];
    for (int j = 0; j < 8; ++j) {
      zt[j] = _mm256_loadu_ps(z + (t + j) * 8);
      et[j] = _mm256_loadu_ps(e + (t + j) * 8);
    }
    Transpose8x8(zt);
    Transpose8x8(et);
    __m256 abs_sum = _mm256_andnot_ps(sign_bit, zt[0]);
    __m256 denominator = _mm256_add_ps(one, et[0]);
    __m256i code = _mm256_srli_epi32(
        _mm256_castps_si256(_mm256_cmp_ps(zt[0], zero, _CMP_GT_OQ)), 31);
    for (int j = 1; j < 8; ++j) {
      abs_sum = _mm256_add_ps(abs_sum, _mm256_andnot_ps(sign_bit, zt[j]));
      denominator = _mm256_mul_ps(denominator, _mm256_add_ps(one, et[j]));
      const __m256i bit = _mm256_srli_epi32(
          _mm256_castps_si256(_mm256_cmp_ps(zt[j], zero, _CMP_GT_OQ)), 31);
      code = _mm256_or_si256(_mm256_slli_epi32(code, 1), bit);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + t), code);
    _mm256_storeu_ps(scores + t,
                     _mm256_mul_ps(abs_sum, _mm256_div_ps(one, denominator)));
  }
  return t;
}

bool DetectAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool DetectAvx512() {
  __builtin_cpu_init();
  return DetectAvx2() && __builtin_cpu_supports("avx512f");
}

#else

bool DetectAvx2() { return false; }
bool DetectAvx512() { return false; }

#endif  // LOOKUPFFN_HAVE_X86

const bool kAvx2Supported = DetectAvx2();
const bool kAvx512Supported = DetectAvx512();
std::atomic<Isa> max_isa{Isa::kAvx512};

bool UseAvx2() {
  return kAvx2Supported &&
         max_isa.load(std::memory_order_relaxed) >= Isa::kAvx2;
}

bool UseAvx512() {
  return kAvx512Supported &&
         max_isa.load(std::memory_order_relaxed) >= Isa::kAvx512;
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

void ExpNegTwiceAbs(int64_t n, const float* z, float* out) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx512()) return ExpNegTwiceAbsAvx512(n, z, out);
  if (UseAvx2()) return ExpNegTwiceAbsAvx2(n, z, out);
#endif
  ExpNegTwiceAbsScalar(n, z, out);
}

void AxpyBf16(int64_t n, float a, const uint16_t* x, float* y) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return AxpyBf16Avx2(n, a, x, y);
#endif
  AxpyBf16Scalar(n, a, x, y);
}

float DotBf16(int64_t n, const float* x, const uint16_t* y) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return DotBf16Avx2(n, x, y);
#endif
  return DotBf16Scalar(n, x, y);
}

void MixRow(int64_t n, float a, const float* u, float b, const float* x,
            const float* bias, float* z) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return MixRowAvx2(n, a, u, b, x, bias, z);
#endif
  MixRowScalar(n, a, u, b, x, bias, z);
}

MeanAndVariance RowMeanAndVariance(int64_t n, const float* x) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return RowMeanAndVarianceAvx2(n, x);
#endif
  return RowMeanAndVarianceScalar(n, x);
}

void NormalizeRow(int64_t n, const float* x, float mean, float inv_std,
                  const float* scale, const float* bias, float* out) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return NormalizeRowAvx2(n, x, mean, inv_std, scale, bias, out);
#endif
  NormalizeRowScalar(n, x, mean, inv_std, scale, bias, out);
}

int64_t HashEightBitTables(int64_t tables, const float* z, const float* e,
                           int32_t* codes, float* scores) {
#ifdef LOOKUPFFN_HAVE_X86
  if (UseAvx2()) return HashEightBitTablesAvx2(tables, z, e, codes, scores);
#endif
  return 0;
}

bool Avx2Active() { return UseAvx2(); }

bool Avx512Active() { return UseAvx512(); }

const char* ActiveIsa() {
  if (UseAvx512()) return "avx512";
  return UseAvx2() ? "avx2" : "scalar";
}

bool Avx2Supported() { return kAvx2Supported; }

bool Avx512Supported() { return kAvx512Supported; }

void SetMaxIsa(Isa isa) { max_isa.store(isa); }

void ForceScalar(bool force) {
  SetMaxIsa(force ? Isa::kScalar : Isa::kAvx512);
}

}  // namespace lookupffn::simd
