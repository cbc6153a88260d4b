// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// Row kernels over float32 vectors, with an AVX2/FMA version chosen at run
// time where the CPU supports it and a portable scalar version otherwise,
// and the choice of instruction set for every kernel.
// Entry points take plain pointers and a length; any length is valid.

#ifndef LOOKUPFFN_XLA_EXT_SIMD_H_
#define LOOKUPFFN_XLA_EXT_SIMD_H_

#include <cstdint>

namespace lookupffn::simd {

// y[i] += a * x[i] for i in [0, n).
void Axpy(int64_t n, float a, const float* x, float* y);

// Returns sum_i x[i] * y[i] for i in [0, n).
float Dot(int64_t n, const float* x, const float* y);

// The same with x in bfloat16 (the upper 16 bits of a float32), widened
// exactly to float32 before the multiply.
void AxpyBf16(int64_t n, float a, const uint16_t* x, float* y);
float DotBf16(int64_t n, const float* x, const uint16_t* y);

// Returns the float32 value of a bfloat16.
inline float Bf16ToFloat(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float value;
  __builtin_memcpy(&value, &bits, sizeof(value));
  return value;
}

// out[i] = exp(-2 |z[i]|) for i in [0, n), within a few ulp of std::exp.
// These terms give the hash scores and both estimators' gradients without
// further transcendental functions.
void ExpNegTwiceAbs(int64_t n, const float* z, float* out);

// For tables of K = 8 projections z [tables, 8], with e = exp(-2|z|): writes
// the codes and scores of the first 8 * floor(tables / 8) tables, bitwise as
// lookupffn::HashToken's scalar loop does, and returns how many it wrote
// (0 without AVX2).
int64_t HashEightBitTables(int64_t tables, const float* z, const float* e,
                           int32_t* codes, float* scores);

// z[i] = (a * u[i] + b * x[i]) + bias[i] for i in [0, n), two products
// and two additions rounded one at a time, as the scalar expression is.
void MixRow(int64_t n, float a, const float* u, float b, const float* x,
            const float* bias, float* z);

// The mean and the mean square deviation of x[0, n), each summed in 8
// partial sums (x[i] goes to sum i mod 8) that are added after the last
// n mod 8 elements, in order.
struct MeanAndVariance {
  float mean;
  float variance;
};
MeanAndVariance RowMeanAndVariance(int64_t n, const float* x);

// out[i] = (x[i] - mean) * (inv_std * scale[i]) + bias[i] for i in [0, n).
void NormalizeRow(int64_t n, const float* x, float mean, float inv_std,
                  const float* scale, const float* bias, float* out);

// Instruction sets of the kernels, in increasing order. Kernels with an
// AVX-512 version use it where the CPU supports AVX512F, and the others use
// their AVX2 version there.
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Returns the instruction set the kernels use now: "avx512", "avx2" or
// "scalar".
const char* ActiveIsa();

// Returns whether this CPU supports the AVX2/FMA kernels.
bool Avx2Supported();

// Returns whether this CPU supports the AVX-512 kernels (AVX512F, AVX2, FMA).
bool Avx512Supported();

// Returns whether the AVX2/FMA kernels are in use now: supported and allowed
// by SetMaxIsa.
bool Avx2Active();

// Returns whether the AVX-512 kernels are in use now.
bool Avx512Active();

// Caps the instruction set of the kernels at `isa`. kAvx512, the default,
// lets them use the best one this CPU supports. Meant for tests and
// benchmarks.
void SetMaxIsa(Isa isa);

// Calls SetMaxIsa(kScalar) for true and SetMaxIsa(kAvx512) for false.
void ForceScalar(bool force);

}  // namespace lookupffn::simd

#endif  // LOOKUPFFN_XLA_EXT_SIMD_H_
