// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// Row kernels of the BH4 projection on raw float32 pointers: the
// block-diagonal matrix product and the fast Walsh-Hadamard transform. Both
// have an AVX2/FMA version, used when simd::Avx2Active(), and a scalar one;
// the block products also have an AVX-512 version, used when
// simd::Avx512Active(), with the same FMA chains as the AVX2 one.
// Every output row depends only on its own input row, through operations in
// a fixed order, so a row's result does not depend on how many rows are
// processed together.

#ifndef LOOKUPFFN_XLA_EXT_HADAMARD_H_
#define LOOKUPFFN_XLA_EXT_HADAMARD_H_

#include <cstdint>

namespace lookupffn {

// out[m, n*b + o] = sum_i in[m, n*b + i] * blocks[n, i, o] for rows m,
// blocks n < num_blocks and o < b, summed over i in increasing order.
// blocks is [num_blocks, b, b] row-major; consecutive rows of `in` and `out`
// are `in_stride` and `out_stride` floats apart. in and out must not overlap.
void BlockDiagonalMultiply(int64_t rows, int64_t num_blocks, int64_t block_size,
                           const float* in, int64_t in_stride,
                           const float* blocks, float* out, int64_t out_stride);

// c[i, o] += sum_p a[p, i] * b[p, o] for i, o < n and p < k, summed over p
// in increasing order after the existing value; a and b are [k, n] and c is
// [n, n], all row-major. This is the gradient of a block's entries.
void AddTransposedProduct(int64_t n, int64_t k, const float* a,
                          const float* b, float* c);

// Replaces each of `rows` rows of `width` floats, `stride` floats apart, by
// its orthonormal Walsh-Hadamard transform H x / sqrt(width) (Sylvester
// order). width must be a power of two.
void HadamardRows(int64_t rows, int64_t width, float* data, int64_t stride);

// The butterfly stages of a Walsh-Hadamard transform of width
// num_blocks * block_size whose entries are block_size or more apart,
// without scaling: block J of each row becomes sum_I H[I, J] x_I for the
// Sylvester H of size num_blocks. With the stages fewer than block_size
// apart folded into the blocks of a block-diagonal product, it completes
// the transform, because H of size NB * b is H_NB (x) H_b.
void CrossBlockHadamardRows(int64_t rows, int64_t num_blocks,
                            int64_t block_size, float* data, int64_t stride);

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_HADAMARD_H_
