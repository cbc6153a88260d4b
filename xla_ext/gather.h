// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// Cache-tiled kernels of the weighted table gather on raw pointers: the
// forward gather-add, the table-gradient scatter-add and the row dot
// products of the backward pass. Shapes follow lookupffn_jax/reference.py:
// N tokens, T tables, S rows per table, D row width.

#ifndef LOOKUPFFN_XLA_EXT_GATHER_H_
#define LOOKUPFFN_XLA_EXT_GATHER_H_

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace lookupffn {

struct GatherShape {
  int64_t tokens;      // N
  int64_t tables;      // T
  int64_t table_rows;  // S
  int64_t width;       // D
};

// Tables [T, S, D] in float32 or bfloat16 (stored as its upper 16 bits).
struct TableView {
  const void* data;
  bool bf16;
};

// y[n] = sum_t weights[n, t] * tables[t, codes[n, t]], accumulated in
// float32 over t in increasing order, then plus bias [D] in one addition
// unless bias is null. Codes must be in [0, S).
void GatherRows(xla::ffi::ThreadPool& pool, const GatherShape& s,
                const int32_t* codes, const float* weights, TableView tables,
                float* y, const float* bias = nullptr);

// dtables[t, r] = sum of weights[n, t] * dy[n] over the tokens n with
// codes[n, t] == r, added in increasing n from zero; dtables is [T, S, D]
// float32. Codes must be in [0, S).
void ScatterRows(xla::ffi::ThreadPool& pool, const GatherShape& s,
                 const int32_t* codes, const float* weights, const float* dy,
                 float* dtables);

// dots[n, t, c] = <dy[n], tables[t, codes[n, t, c]]> for c < candidates,
// in float32. Codes must be in [0, S).
void RowDots(xla::ffi::ThreadPool& pool, const GatherShape& s,
             const int32_t* codes, int64_t candidates, TableView tables,
             const float* dy, float* dots);

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_GATHER_H_
