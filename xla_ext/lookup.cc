// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// XLA FFI handlers for the LookupFFN ops on CPU: the weighted table gather
// and the fused hash-and-gather, forward and backward. The math and its
// pure-jnp oracle are in lookupffn_jax/reference.py; shapes in names follow
// it: N tokens, T tables, K code bits, S = 2^K rows, D row width.
//
// Every operand may carry leading batch dimensions (added by jax.vmap with
// vmap_method="expand_dims"), each of size 1 or B; outputs have size B.

#include "lookup.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "batch.h"
#include "gather.h"
#include "hash.h"
#include "memory.h"
#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lookupffn {
namespace {

// Work granularity. Chunks are fixed by the shape alone, never by the thread
// count, so each output element is computed by the same operations in the
// same order whichever thread runs it.
constexpr int64_t kTokensPerChunk = 32;

// ---------------------------------------------------------------------------
// Kernels on raw pointers, one batch element each.

// Returns the first (token, table) whose code is outside [0, S), or -1.
//
// Each chunk is first checked by a loop without an early exit, which the
// compiler vectorizes. In a single-thread copy of both loops on the 2-core
// AMD EPYC, 512K codes took 72 us that way and 213 us in a loop that stops
// at the first bad code. As unsigned numbers, negative codes are at least
// 2^31, so one comparison with S, capped at 2^31, rejects them too.
int64_t FindBadCode(const GatherShape& s, const int32_t* codes) {
  constexpr int64_t kChunk = 4096;
  const int64_t count = s.tokens * s.tables;
  const uint32_t rows =
      static_cast<uint32_t>(std::min<int64_t>(s.table_rows, int64_t{1} << 31));
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    const int64_t end = std::min(begin + kChunk, count);
    uint32_t any_bad = 0;
    for (int64_t i = begin; i < end; ++i) {
      any_bad |= static_cast<uint32_t>(static_cast<uint32_t>(codes[i]) >= rows);
    }
    if (any_bad == 0) continue;
    for (int64_t i = begin; i < end; ++i) {
      if (static_cast<uint32_t>(codes[i]) >= rows) return i;
    }
  }
  return -1;
}

// Fused forward: codes and scores of z [N, T, K], then the weighted gather.
void LookupForward(ffi::ThreadPool& pool, const GatherShape& s,
                   int64_t code_length, const float* z, TableView tables,
                   float* y, int32_t* codes, float* scores) {
  const int64_t chunks = (s.tokens + kTokensPerChunk - 1) / kTokensPerChunk;
  const int64_t per_token = s.tables * code_length;
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * kTokensPerChunk;
    const int64_t end = std::min(begin + kTokensPerChunk, s.tokens);
    std::vector<float> e(per_token);
    for (int64_t n = begin; n < end; ++n) {
      HashToken(s.tables, code_length, z + n * per_token, e.data(),
                codes + n * s.tables, scores + n * s.tables);
    }
  });
  GatherRows(pool, s, codes, scores, tables, y);
}

// dz of the "score" estimator for one projection, given a = <dy, row>:
// d score / d z_j = sgn_j q (1 + 2 sum|z| sigmoid(-2|z_j|)), with
// sigmoid(-2|z_j|) = e_j / (1 + e_j) and sgn_j = +1 for z_j >= 0, as jax
// differentiates |z|.
void ScoreEstimatorOne(int64_t code_length, const float* z, const float* e,
                       float a, float* dz) {
  const HashTerms h = ComputeHashTerms(code_length, z, e);
  const float scale = a * h.q_top;
  for (int64_t j = 0; j < code_length; ++j) {
    const float sign = z[j] >= 0.f ? 1.f : -1.f;
    dz[j] = sign * scale * (1.f + 2.f * h.abs_sum * e[j] / (1.f + e[j]));
  }
}

// dz of the straight-through surrogate for one projection. Candidate c = 0
// is the top code s*, candidate 1 + k flips bit k. With inner_c = <z, s_c>,
// q_c = exp(inner_c - log Z), u_c = q_c <dy, row_c> and t_j = tanh(z_j):
//
//   dz_j = sum_c u_c (s_cj (1 + inner_c) - inner_c t_j)
//        = s*_j (P - 2 u_{1+j} (1 + inner_{1+j})) - t_j R,
//
// where P = sum_c u_c (1 + inner_c) and R = sum_c u_c inner_c, because s_c
// agrees with s* everywhere except at bit k of candidate 1 + k. For the
// neighbours, inner = sum|z| - 2|z_k| and q = q(s*) e_k; and
// tanh(z_j) = sgn_j (1 - e_j) / (1 + e_j).
void StraightThroughOne(int64_t code_length, const float* z, const float* e,
                        const float* dots, float* dz) {
  const HashTerms h = ComputeHashTerms(code_length, z, e);
  const float u_top = dots[0] * h.q_top;
  float p = u_top * (1.f + h.abs_sum);
  float r = u_top * h.abs_sum;
  float flip_terms[kMaxCodeLength];
  for (int64_t k = 0; k < code_length; ++k) {
    const float inner = h.abs_sum - 2.f * std::fabs(z[k]);
    const float u = dots[1 + k] * h.q_top * e[k];
    flip_terms[k] = u * (1.f + inner);
    p += flip_terms[k];
    r += u * inner;
  }
  for (int64_t j = 0; j < code_length; ++j) {
    const float top_sign = z[j] > 0.f ? 1.f : -1.f;
    const float abs_sign = z[j] >= 0.f ? 1.f : -1.f;
    const float tanh_z = abs_sign * (1.f - e[j]) / (1.f + e[j]);
    dz[j] = top_sign * (p - 2.f * flip_terms[j]) - tanh_z * r;
  }
}

// dz for z [N, T, K] under either estimator. The row dot products come
// first, for all tokens at once from the tiled RowDots; the "score"
// estimator needs <dy, row> of the top code, the straight-through one also
// those of the K one-bit neighbours.
void ProjectionGradient(ffi::ThreadPool& pool, const GatherShape& s,
                        int64_t code_length, int32_t estimator, const float* z,
                        TableView tables, const int32_t* codes,
                        const float* dy, float* dz) {
  const int64_t candidates = estimator == kScoreEstimator ? 1 : code_length + 1;
  std::vector<int32_t> candidate_codes;
  const int32_t* dot_codes = codes;
  if (candidates > 1) {
    candidate_codes.resize(s.tokens * s.tables * candidates);
    for (int64_t i = 0; i < s.tokens * s.tables; ++i) {
      int32_t* out = candidate_codes.data() + i * candidates;
      out[0] = codes[i];
      for (int64_t k = 0; k < code_length; ++k) {
        out[1 + k] = codes[i] ^ (1 << (code_length - 1 - k));
      }
    }
    dot_codes = candidate_codes.data();
  }
  std::vector<float> dots(s.tokens * s.tables * candidates);
  RowDots(pool, s, dot_codes, candidates, tables, dy, dots.data());

  const int64_t chunks = (s.tokens + kTokensPerChunk - 1) / kTokensPerChunk;
  const int64_t per_token = s.tables * code_length;
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    const int64_t begin = chunk * kTokensPerChunk;
    const int64_t end = std::min(begin + kTokensPerChunk, s.tokens);
    std::vector<float> e(per_token);
    for (int64_t n = begin; n < end; ++n) {
      const float* z_n = z + n * per_token;
      simd::ExpNegTwiceAbs(per_token, z_n, e.data());
      for (int64_t t = 0; t < s.tables; ++t) {
        const int64_t i = n * s.tables + t;
        const float* z_i = z_n + t * code_length;
        const float* e_i = e.data() + t * code_length;
        const float* dots_i = dots.data() + i * candidates;
        float* dz_i = dz + i * code_length;
        if (estimator == kScoreEstimator) {
          ScoreEstimatorOne(code_length, z_i, e_i, dots_i[0], dz_i);
        } else {
          StraightThroughOne(code_length, z_i, e_i, dots_i, dz_i);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Shape checks.

ffi::Error OutOfRange(const char* op, const GatherShape& s,
                      const int32_t* codes, int64_t bad) {
  return ffi::Error::InvalidArgument(
      std::string(op) + ": code " + std::to_string(codes[bad]) + " at token " +
      std::to_string(bad / s.tables) + ", table " +
      std::to_string(bad % s.tables) + " is out of range for tables with " +
      std::to_string(s.table_rows) + " rows; codes must be in [0, " +
      std::to_string(s.table_rows) + ")");
}

// Tables may be float32 or bfloat16; the kernels accumulate in float32.
ffi::Error CheckTableType(const char* op, const ffi::AnyBuffer& tables) {
  const ffi::DataType type = tables.element_type();
  if (type == ffi::DataType::F32 || type == ffi::DataType::BF16) {
    return ffi::Error::Success();
  }
  return ffi::Error::InvalidArgument(
      std::string(op) + ": tables must be float32 or bfloat16, got XLA type " +
      std::to_string(static_cast<int>(type)));
}

// A view of the tables that starts `offset` elements into the buffer.
TableView ViewAt(const ffi::AnyBuffer& tables, int64_t offset) {
  const bool bf16 = tables.element_type() == ffi::DataType::BF16;
  const char* base = static_cast<const char*>(tables.untyped_data());
  return {base + offset * (bf16 ? 2 : 4), bf16};
}

ffi::Error ShapeMismatch(const char* op, const std::string& what) {
  return ffi::Error::InvalidArgument(std::string(op) + ": " + what);
}

// Reads N, T from codes-like [..., N, T] and S, D from tables [..., T, S, D].
ffi::Error ReadGatherShape(const char* op, Dims codes, Dims tables,
                           GatherShape* s) {
  const size_t cr = codes.size();
  const size_t tr = tables.size();
  s->tokens = codes[cr - 2];
  s->tables = codes[cr - 1];
  s->table_rows = tables[tr - 2];
  s->width = tables[tr - 1];
  if (tables[tr - 3] != s->tables) {
    return ShapeMismatch(op, "codes " + ShapeString(codes) + " and tables " +
                                 ShapeString(tables) +
                                 " disagree on the number of tables");
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// Handlers.

// Gathers for weighted_gather, and with `bias` adds it to every output row
// as each row's sum is stored, the same single addition as XLA's y + bias.
ffi::Error RunWeightedGather(const char* op, ffi::ThreadPool& pool,
                             ffi::Buffer<ffi::S32> codes,
                             ffi::Buffer<ffi::F32> weights,
                             ffi::AnyBuffer tables,
                             const ffi::Buffer<ffi::F32>* bias,
                             ffi::ResultBuffer<ffi::F32>& y) {
  if (auto e = CheckTableType(op, tables); e.failure()) return e;
  std::vector<Dims> dims = {codes.dimensions(), weights.dimensions(),
                            tables.dimensions()};
  std::vector<size_t> ranks = {2, 2, 3};
  std::vector<const char*> names = {"codes", "weights", "tables"};
  if (bias != nullptr) {
    dims.push_back(bias->dimensions());
    ranks.push_back(1);
    names.push_back("bias");
  }
  BatchIndexer batch;
  if (auto e = batch.Init(op, dims, ranks, names); e.failure()) return e;
  GatherShape s;
  if (auto e = ReadGatherShape(op, codes.dimensions(), tables.dimensions(), &s);
      e.failure()) {
    return e;
  }
  if (bias != nullptr && dims[3][dims[3].size() - 1] != s.width) {
    return ShapeMismatch(op, "bias " + ShapeString(dims[3]) +
                                 " must have D = " + std::to_string(s.width) +
                                 " entries");
  }
  if (!batch.IsOutput(y->dimensions(), {s.tokens, s.width})) {
    return ShapeMismatch(op, "output shape " + ShapeString(y->dimensions()));
  }
  for (int64_t b = 0; b < batch.size(); ++b) {
    const int32_t* c = codes.typed_data() + batch.Offset(0, b);
    if (int64_t bad = FindBadCode(s, c); bad >= 0) {
      return OutOfRange(op, s, c, bad);
    }
    float* y_b = y->typed_data() + b * s.tokens * s.width;
    GatherRows(pool, s, c, weights.typed_data() + batch.Offset(1, b),
               ViewAt(tables, batch.Offset(2, b)), y_b,
               bias != nullptr ? bias->typed_data() + batch.Offset(3, b)
                               : nullptr);
  }
  return ffi::Error::Success();
}

ffi::Error WeightedGatherForwardImpl(ffi::ThreadPool pool,
                                     ffi::Buffer<ffi::S32> codes,
                                     ffi::Buffer<ffi::F32> weights,
                                     ffi::AnyBuffer tables,
                                     ffi::ResultBuffer<ffi::F32> y) {
  return RunWeightedGather("weighted_gather", pool, codes, weights, tables,
                           nullptr, y);
}

ffi::Error WeightedGatherBiasForwardImpl(ffi::ThreadPool pool,
                                         ffi::Buffer<ffi::S32> codes,
                                         ffi::Buffer<ffi::F32> weights,
                                         ffi::AnyBuffer tables,
                                         ffi::Buffer<ffi::F32> bias,
                                         ffi::ResultBuffer<ffi::F32> y) {
  return RunWeightedGather("weighted_gather (with bias)", pool, codes, weights,
                           tables, &bias, y);
}

ffi::Error WeightedGatherBackwardImpl(
    ffi::ThreadPool pool, ffi::Buffer<ffi::S32> codes,
    ffi::Buffer<ffi::F32> weights, ffi::AnyBuffer tables,
    ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dweights,
    ffi::ResultBuffer<ffi::F32> dtables) {
  constexpr const char* kOp = "weighted_gather (backward)";
  if (auto e = CheckTableType(kOp, tables); e.failure()) return e;
  BatchIndexer batch;
  if (auto e = batch.Init(
          kOp,
          {codes.dimensions(), weights.dimensions(), tables.dimensions(),
           dy.dimensions()},
          {2, 2, 3, 2}, {"codes", "weights", "tables", "output gradient"});
      e.failure()) {
    return e;
  }
  GatherShape s;
  if (auto e = ReadGatherShape(kOp, codes.dimensions(), tables.dimensions(), &s);
      e.failure()) {
    return e;
  }
  if (!batch.IsOutput(dweights->dimensions(), {s.tokens, s.tables}) ||
      !batch.IsOutput(dtables->dimensions(), {s.tables, s.table_rows, s.width})) {
    return ShapeMismatch(kOp, "unexpected gradient shapes");
  }
  AdviseResultHugePages(dweights);
  for (int64_t b = 0; b < batch.size(); ++b) {
    const int32_t* c = codes.typed_data() + batch.Offset(0, b);
    if (int64_t bad = FindBadCode(s, c); bad >= 0) {
      return OutOfRange(kOp, s, c, bad);
    }
    const float* w = weights.typed_data() + batch.Offset(1, b);
    const TableView table = ViewAt(tables, batch.Offset(2, b));
    const float* g = dy.typed_data() + batch.Offset(3, b);
    RowDots(pool, s, c, 1, table, g,
            dweights->typed_data() + b * s.tokens * s.tables);
    ScatterRows(pool, s, c, w, g,
                  dtables->typed_data() +
                      b * s.tables * s.table_rows * s.width);
  }
  return ffi::Error::Success();
}

ffi::Error CheckLookupShapes(const char* op, Dims z, Dims tables,
                             GatherShape* s, int64_t* code_length) {
  const size_t zr = z.size();
  const size_t tr = tables.size();
  s->tokens = z[zr - 3];
  s->tables = z[zr - 2];
  *code_length = z[zr - 1];
  s->table_rows = tables[tr - 2];
  s->width = tables[tr - 1];
  if (tables[tr - 3] != s->tables) {
    return ShapeMismatch(op, "z " + ShapeString(z) + " and tables " +
                                 ShapeString(tables) +
                                 " disagree on the number of tables");
  }
  if (*code_length < 1 || *code_length > kMaxCodeLength ||
      s->table_rows != (int64_t{1} << *code_length)) {
    return ShapeMismatch(
        op, "code length " + std::to_string(*code_length) + " must be from 1 to " +
                std::to_string(kMaxCodeLength) + " with 2^K table rows, got " +
                std::to_string(s->table_rows) + " rows");
  }
  return ffi::Error::Success();
}

ffi::Error LookupForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z,
                             ffi::AnyBuffer tables,
                             ffi::ResultBuffer<ffi::F32> y,
                             ffi::ResultBuffer<ffi::S32> codes,
                             ffi::ResultBuffer<ffi::F32> scores) {
  constexpr const char* kOp = "lookup";
  if (auto e = CheckTableType(kOp, tables); e.failure()) return e;
  BatchIndexer batch;
  if (auto e = batch.Init(kOp, {z.dimensions(), tables.dimensions()}, {3, 3},
                          {"z", "tables"});
      e.failure()) {
    return e;
  }
  GatherShape s;
  int64_t code_length;
  if (auto e = CheckLookupShapes(kOp, z.dimensions(), tables.dimensions(), &s,
                                 &code_length);
      e.failure()) {
    return e;
  }
  if (!batch.IsOutput(y->dimensions(), {s.tokens, s.width}) ||
      !batch.IsOutput(codes->dimensions(), {s.tokens, s.tables}) ||
      !batch.IsOutput(scores->dimensions(), {s.tokens, s.tables})) {
    return ShapeMismatch(kOp, "unexpected output shapes");
  }
  AdviseResultHugePages(codes);
  AdviseResultHugePages(scores);
  for (int64_t b = 0; b < batch.size(); ++b) {
    const int64_t nt = b * s.tokens * s.tables;
    LookupForward(pool, s, code_length, z.typed_data() + batch.Offset(0, b),
                  ViewAt(tables, batch.Offset(1, b)),
                  y->typed_data() + b * s.tokens * s.width,
                  codes->typed_data() + nt, scores->typed_data() + nt);
  }
  return ffi::Error::Success();
}

ffi::Error LookupBackwardImpl(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z, ffi::AnyBuffer tables,
    ffi::Buffer<ffi::S32> codes, ffi::Buffer<ffi::F32> scores,
    ffi::Buffer<ffi::F32> dy, int32_t estimator, ffi::ResultBuffer<ffi::F32> dz,
    ffi::ResultBuffer<ffi::F32> dtables) {
  constexpr const char* kOp = "lookup (backward)";
  if (auto e = CheckTableType(kOp, tables); e.failure()) return e;
  if (estimator != kScoreEstimator && estimator != kStraightThroughEstimator) {
    return ffi::Error::InvalidArgument(std::string(kOp) + ": estimator " +
                                       std::to_string(estimator) +
                                       " must be 0 (score) or 1 "
                                       "(straight_through)");
  }
  BatchIndexer batch;
  if (auto e = batch.Init(kOp,
                          {z.dimensions(), tables.dimensions(),
                           codes.dimensions(), scores.dimensions(),
                           dy.dimensions()},
                          {3, 3, 2, 2, 2},
                          {"z", "tables", "codes", "scores", "output gradient"});
      e.failure()) {
    return e;
  }
  GatherShape s;
  int64_t code_length;
  if (auto e = CheckLookupShapes(kOp, z.dimensions(), tables.dimensions(), &s,
                                 &code_length);
      e.failure()) {
    return e;
  }
  if (!batch.IsOutput(dz->dimensions(), {s.tokens, s.tables, code_length}) ||
      !batch.IsOutput(dtables->dimensions(), {s.tables, s.table_rows, s.width})) {
    return ShapeMismatch(kOp, "unexpected gradient shapes");
  }
  AdviseResultHugePages(dz);
  for (int64_t b = 0; b < batch.size(); ++b) {
    const float* z_b = z.typed_data() + batch.Offset(0, b);
    const TableView table = ViewAt(tables, batch.Offset(1, b));
    const int32_t* c = codes.typed_data() + batch.Offset(2, b);
    const float* w = scores.typed_data() + batch.Offset(3, b);
    const float* g = dy.typed_data() + batch.Offset(4, b);
    if (int64_t bad = FindBadCode(s, c); bad >= 0) {
      return OutOfRange(kOp, s, c, bad);
    }
    ProjectionGradient(pool, s, code_length, estimator, z_b, table, c, g,
                       dz->typed_data() + b * s.tokens * s.tables * code_length);
    ScatterRows(pool, s, c, w, g,
                  dtables->typed_data() +
                      b * s.tables * s.table_rows * s.width);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WeightedGatherFwdHandler, WeightedGatherForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // codes
                                  .Arg<ffi::Buffer<ffi::F32>>()  // weights
                                  .Arg<ffi::AnyBuffer>()  // tables
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(WeightedGatherBiasFwdHandler,
                              WeightedGatherBiasForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // codes
                                  .Arg<ffi::Buffer<ffi::F32>>()  // weights
                                  .Arg<ffi::AnyBuffer>()         // tables
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(WeightedGatherBwdHandler,
                              WeightedGatherBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()  // codes
                                  .Arg<ffi::Buffer<ffi::F32>>()  // weights
                                  .Arg<ffi::AnyBuffer>()  // tables
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dweights
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dtables
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LookupFwdHandler, LookupForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::AnyBuffer>()  // tables
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::S32>>()  // codes
                                  .Ret<ffi::Buffer<ffi::F32>>()  // scores
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LookupBwdHandler, LookupBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::AnyBuffer>()  // tables
                                  .Arg<ffi::Buffer<ffi::S32>>()  // codes
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scores
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Attr<int32_t>("estimator")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dtables
);

}  // namespace lookupffn
