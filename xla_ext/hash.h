// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// The hash of LookupFFN on CPU: the sign code and score of a projection
// z[0..K), as lookupffn_jax.lookup.hash_codes defines them. Shared by the
// look-up kernels and by the BH4 kernel, which hashes its output tiles.

#ifndef LOOKUPFFN_XLA_EXT_HASH_H_
#define LOOKUPFFN_XLA_EXT_HASH_H_

#include <cmath>
#include <cstdint>

#include "simd.h"

namespace lookupffn {

// Largest code length K. Tables then have 2^16 rows.
inline constexpr int64_t kMaxCodeLength = 16;

// Terms of one projection z[0..K), given e_j = exp(-2|z_j|): sum_j |z_j| and
// q(s*) = prod_j sigmoid(2|z_j|) = 1 / prod_j (1 + e_j). Each factor is in
// (1, 2], so the product stays finite for K <= 16.
struct HashTerms {
  float abs_sum;
  float q_top;
};

inline HashTerms ComputeHashTerms(int64_t code_length, const float* z,
                                  const float* e) {
  float abs_sum = 0.f;
  float denominator = 1.f;
  for (int64_t j = 0; j < code_length; ++j) {
    abs_sum += std::fabs(z[j]);
    denominator *= 1.f + e[j];
  }
  return {abs_sum, 1.f / denominator};
}

// Returns the code of z[0..K): bit K - 1 - j is set where z_j > 0.
inline int32_t Code(int64_t code_length, const float* z) {
  int32_t bits = 0;
  for (int64_t j = 0; j < code_length; ++j) {
    bits = (bits << 1) | (z[j] > 0.f ? 1 : 0);
  }
  return bits;
}

// Writes the code and score of each of one token's `tables` projections,
// z [tables, K]. e is scratch of tables * K floats.
inline void HashToken(int64_t tables, int64_t code_length, const float* z,
                      float* e, int32_t* codes, float* scores) {
  simd::ExpNegTwiceAbs(tables * code_length, z, e);
  int64_t t = 0;
  if (code_length == 8) t = simd::HashEightBitTables(tables, z, e, codes, scores);
  for (; t < tables; ++t) {
    const float* z_t = z + t * code_length;
    const HashTerms h = ComputeHashTerms(code_length, z_t, e + t * code_length);
    codes[t] = Code(code_length, z_t);
    scores[t] = h.abs_sum * h.q_top;
  }
}

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_HASH_H_
