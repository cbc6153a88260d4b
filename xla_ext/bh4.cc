// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// The BH4 transform on CPU. For every token and repeat r, starting from the
// zero-padded input a_0:
//
//   v_f = B_{r,f} a_{f-1} (block-diagonal product),  a_f = H v_f,
//
// for f = 1..F, and the output is a_F. Tokens are processed in tiles whose
// working rows stay in cache through all F factors, so each factor costs no
// trip to memory. See bh4.h for the shapes.

#include "bh4.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "batch.h"
#include "hadamard.h"
#include "hash.h"
#include "memory.h"
#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace lookupffn {
namespace {

// Tokens per work item: two tiles of 48 x 512 floats (96 KiB each) stay in
// L2, and 48 is a multiple of the 6-row micro-kernel. Fixed by the shape
// alone, so results do not depend on the thread count.
constexpr int64_t kTokensPerTile = 48;

struct Bh4Shape {
  int64_t tokens;      // M
  int64_t in_width;    // d
  int64_t repeats;     // R
  int64_t factors;     // F
  int64_t num_blocks;  // NB
  int64_t block_size;  // b
  int64_t width() const { return num_blocks * block_size; }  // D'
  int64_t block_elements() const { return block_size * block_size; }
  int64_t factor_elements() const { return num_blocks * block_elements(); }
};

// Returns this thread's scratch buffer of at least `floats` floats, its
// contents left from earlier use. Every tile writes the parts it reads, so
// nothing is cleared. Zeroing a fresh 496 KiB vector per tile of the hash
// kernel took 3% of the 4096-token call.
float* TileScratch(size_t floats) {
  thread_local AlignedVector<float> scratch;
  if (scratch.size() < floats) scratch.resize(floats);
  return scratch.data();
}

// Copies `rows` input rows of width d into a [rows, D'] buffer, zero-padded.
void LoadPadded(const Bh4Shape& s, int64_t rows, const float* x, float* a) {
  const int64_t width = s.width();
  for (int64_t m = 0; m < rows; ++m) {
    std::copy(x + m * s.in_width, x + (m + 1) * s.in_width, a + m * width);
    std::fill(a + m * width + s.in_width, a + (m + 1) * width, 0.f);
  }
}

// Copies tile rows [rows, D'] into a [NB, tokens, b] slice at token `first`.
void StoreByBlock(const Bh4Shape& s, int64_t tokens, int64_t first,
                  int64_t rows, const float* a, float* out) {
  const int64_t b = s.block_size;
  for (int64_t n = 0; n < s.num_blocks; ++n) {
    for (int64_t m = 0; m < rows; ++m) {
      std::memcpy(out + (n * tokens + first + m) * b, a + m * s.width() + n * b,
                  b * sizeof(float));
    }
  }
}

// From this many tokens a forward call folds the Hadamard stages fewer
// than b entries apart into the blocks (see FoldBlocks), which costs a pass
// over the kernel and saves log2(b) of the log2(D') butterfly stages per
// factor and token. Fixed, so a call's results do not depend on threads;
// rows of calls on either side of it may differ in the last bits.
constexpr int64_t kFoldMinTokens = 256;

// The blocks a forward call multiplies by: the kernel's own, or, when
// `folded`, each block W replaced by W H_b / sqrt(D'). H of size D' is
// H_NB (x) H_b in Sylvester order, so multiplying by the folded blocks and
// then running CrossBlockHadamardRows applies B and then H.
struct ForwardBlocks {
  const float* blocks;
  bool folded;
  AlignedVector<float> storage;
};

ForwardBlocks FoldBlocks(const Bh4Shape& s, const float* kernel) {
  ForwardBlocks out;
  out.folded = s.tokens >= kFoldMinTokens;
  if (!out.folded) {
    out.blocks = kernel;
    return out;
  }
  const int64_t b = s.block_size;
  const int64_t count = s.repeats * s.factors * s.num_blocks;
  out.storage.assign(kernel, kernel + count * s.block_elements());
  const float scale = 1.f / std::sqrt(static_cast<float>(s.num_blocks));
  for (int64_t blk = 0; blk < count; ++blk) {
    float* w = out.storage.data() + blk * s.block_elements();
    HadamardRows(b, b, w, b);
    for (int64_t i = 0; i < s.block_elements(); ++i) w[i] *= scale;
  }
  out.blocks = out.storage.data();
  return out;
}

// Applies all F factors of repeat r to one tile. a and v are [rows, D']
// scratch buffers, and a contains the padded input. The result goes to
// `out`, rows out_stride apart, or stays in scratch when out is null.
// Returns a pointer to the result.
float* ForwardTile(const Bh4Shape& s, int64_t rows, const float* blocks_r,
                   bool folded, float* a, float* v, float* out,
                   int64_t out_stride) {
  const int64_t width = s.width();
  for (int64_t f = 0; f < s.factors; ++f) {
    const bool last = f + 1 == s.factors && out != nullptr;
    float* dst = last ? out : v;
    const int64_t dst_stride = last ? out_stride : width;
    BlockDiagonalMultiply(rows, s.num_blocks, s.block_size, a, width,
                          blocks_r + f * s.factor_elements(), dst, dst_stride);
    if (folded) {
      CrossBlockHadamardRows(rows, s.num_blocks, s.block_size, dst,
                             dst_stride);
    } else {
      HadamardRows(rows, width, dst, dst_stride);
    }
    std::swap(a, v);
  }
  return out != nullptr ? out : a;
}

// The BH4 layer's output: z = mix * u + (1 - mix) * x_tiled + bias, where
// x_tiled repeats each input row and both are cut to out_features columns.
struct Mix {
  float mix;
  float rest;  // 1 - mix, rounded from double as jnp does.
  const float* bias;
  int64_t out_features;
};

// Writes columns [r * D', r * D' + columns) of z for one tile from the
// repeat's transform u [rows, D'].
void MixTile(const Bh4Shape& s, const Mix& mix, int64_t rows, int64_t r,
             int64_t columns, const float* u, const float* x, float* z) {
  const int64_t width = s.width();
  const int64_t d = s.in_width;
  const int64_t first = r * width;
  for (int64_t m = 0; m < rows; ++m) {
    const float* u_m = u + m * width;
    const float* x_m = x + m * d;
    float* z_m = z + m * mix.out_features + first;
    const float* bias = mix.bias + first;
    // Column first + c reads input column (first + c) mod d, so the loop
    // walks runs that do not wrap.
    int64_t c = 0;
    int64_t source = first % d;
    while (c < columns) {
      const int64_t run = std::min(columns - c, d - source);
      simd::MixRow(run, mix.mix, u_m + c, mix.rest, x_m + source, bias + c,
                   z_m + c);
      c += run;
      source = 0;
    }
  }
}

// Runs the transform, or with `mix` the whole BH4 layer, on every token.
// Without mix, u is [M, R * D']. With it, u is z [M, out_features].
void Bh4Forward(ffi::ThreadPool& pool, const Bh4Shape& s, const float* x,
                const float* kernel, const Mix* mix, float* u) {
  const int64_t width = s.width();
  const int64_t tiles = (s.tokens + kTokensPerTile - 1) / kTokensPerTile;
  const int64_t out_width =
      mix != nullptr ? mix->out_features : s.repeats * width;
  const ForwardBlocks fb = FoldBlocks(s, kernel);
  // Repeats are separate work items, so a single token still uses R
  // threads, each reading its own repeat's blocks.
  ParallelFor(pool, tiles * s.repeats, [&](int64_t item) {
    const int64_t tile = item / s.repeats;
    const int64_t r = item % s.repeats;
    const int64_t columns =
        mix != nullptr ? std::min(width, mix->out_features - r * width)
                       : width;
    if (columns <= 0) return;
    const int64_t first = tile * kTokensPerTile;
    const int64_t rows = std::min(kTokensPerTile, s.tokens - first);
    float* a = TileScratch(2 * rows * width);
    float* v = a + rows * width;
    const float* x_tile = x + first * s.in_width;
    LoadPadded(s, rows, x_tile, a);
    const float* blocks_r = fb.blocks + r * s.factors * s.factor_elements();
    if (mix == nullptr) {
      ForwardTile(s, rows, blocks_r, fb.folded, a, v,
                  u + first * out_width + r * width, out_width);
    } else {
      const float* transformed =
          ForwardTile(s, rows, blocks_r, fb.folded, a, v, nullptr, 0);
      MixTile(s, *mix, rows, r, columns, transformed, x_tile,
              u + first * out_width);
    }
  });
}

// The LayerNorm in front of the BH4 layer, as flax.linen.LayerNorm with
// use_fast_variance=False computes it: y = (x - mean) * (scale /
// sqrt(var + epsilon)) + bias, with var the mean of (x - mean)^2 over the
// row's d features.
struct Norm {
  const float* scale;
  const float* bias;
  float epsilon;
};

// Writes the normalized rows of x [rows, d] to out [rows, d]. The sums use
// eight partial sums in a fixed order (simd::RowMeanAndVariance).
void NormalizeRows(int64_t rows, int64_t d, const float* x, const Norm& norm,
                   float* out) {
  for (int64_t m = 0; m < rows; ++m) {
    const simd::MeanAndVariance stats = simd::RowMeanAndVariance(d, x + m * d);
    const float inv_std = 1.f / std::sqrt(stats.variance + norm.epsilon);
    simd::NormalizeRow(d, x + m * d, stats.mean, inv_std, norm.scale,
                       norm.bias, out + m * d);
  }
}

// Destination of the hashed layer output: the code and score of every
// table of K consecutive columns of z.
struct HashOutput {
  int64_t code_length;  // K
  int32_t* codes;       // [M, T]
  float* scores;        // [M, T]
};

// Runs Bh4Hash below 2 * kTokensPerTile tokens, where tiles alone would
// leave a thread idle. Each (tile, repeat) is a work item, as in
// Bh4Forward, so a single token still uses R threads. An item normalizes
// its tile, computes the repeat's columns of z and hashes the tables whose
// columns all lie in them. The tables that span two repeats are hashed
// after the loop. Each row and table goes through the same operations as
// on the tiled path, so the results are the same.
void Bh4HashByRepeat(ffi::ThreadPool& pool, const Bh4Shape& s, const float* x,
                     const float* kernel, const Mix& mix, const Norm* norm,
                     const HashOutput& out) {
  static_assert(kFoldMinTokens >= 2 * kTokensPerTile,
                "this path multiplies by the unfolded blocks");
  const int64_t width = s.width();
  const int64_t k = out.code_length;
  const int64_t tables = mix.out_features / k;
  const int64_t tiles = (s.tokens + kTokensPerTile - 1) / kTokensPerTile;
  AlignedVector<float> z(s.tokens * mix.out_features);
  ParallelFor(pool, tiles * s.repeats, [&](int64_t item) {
    const int64_t tile = item / s.repeats;
    const int64_t r = item % s.repeats;
    const int64_t columns = std::min(width, mix.out_features - r * width);
    if (columns <= 0) return;
    const int64_t first = tile * kTokensPerTile;
    const int64_t rows = std::min(kTokensPerTile, s.tokens - first);
    float* a = TileScratch(2 * rows * width + columns +
                           (norm != nullptr ? rows * s.in_width : 0));
    float* v = a + rows * width;
    float* e = v + rows * width;
    const float* x_tile = x + first * s.in_width;
    if (norm != nullptr) {
      float* normalized = e + columns;
      NormalizeRows(rows, s.in_width, x_tile, *norm, normalized);
      x_tile = normalized;
    }
    LoadPadded(s, rows, x_tile, a);
    const float* transformed =
        ForwardTile(s, rows, kernel + r * s.factors * s.factor_elements(),
                    /*folded=*/false, a, v, nullptr, 0);
    float* z_tile = z.data() + first * mix.out_features;
    MixTile(s, mix, rows, r, columns, transformed, x_tile, z_tile);
    // Tables [table_begin, table_end) have all K columns in this repeat.
    const int64_t table_begin = (r * width + k - 1) / k;
    const int64_t table_end = (r * width + columns) / k;
    if (table_begin >= table_end) return;
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t i = (first + m) * tables + table_begin;
      HashToken(table_end - table_begin, k,
                z_tile + m * mix.out_features + table_begin * k, e,
                out.codes + i, out.scores + i);
    }
  });
  // The tables whose columns span two repeats.
  std::vector<float> e(k);
  for (int64_t r = 1; r < s.repeats && r * width < mix.out_features; ++r) {
    if ((r * width) % k == 0) continue;
    const int64_t t = r * width / k;
    for (int64_t n = 0; n < s.tokens; ++n) {
      HashToken(1, k, z.data() + n * mix.out_features + t * k, e.data(),
                out.codes + n * tables + t, out.scores + n * tables + t);
    }
  }
}

// Runs the BH4 layer on every token and hashes its output, so z is never
// stored. Work items are tiles, and each runs all repeats into a [rows,
// out_features] buffer, because a table's K columns may span two repeats.
// With `norm`, the layer's input is the normalized x.
void Bh4Hash(ffi::ThreadPool& pool, const Bh4Shape& s, const float* x,
             const float* kernel, const Mix& mix, const Norm* norm,
             const HashOutput& out) {
  const int64_t width = s.width();
  const int64_t tables = mix.out_features / out.code_length;
  if (s.tokens < 2 * kTokensPerTile) {
    Bh4HashByRepeat(pool, s, x, kernel, mix, norm, out);
    return;
  }
  const int64_t tiles = (s.tokens + kTokensPerTile - 1) / kTokensPerTile;
  const ForwardBlocks fb = FoldBlocks(s, kernel);
  ParallelFor(pool, tiles, [&](int64_t tile) {
    const int64_t first = tile * kTokensPerTile;
    const int64_t rows = std::min(kTokensPerTile, s.tokens - first);
    float* a = TileScratch(2 * rows * width + rows * mix.out_features +
                           mix.out_features +
                           (norm != nullptr ? rows * s.in_width : 0));
    float* v = a + rows * width;
    float* z = v + rows * width;
    float* e = z + rows * mix.out_features;
    const float* x_tile = x + first * s.in_width;
    if (norm != nullptr) {
      float* normalized = e + mix.out_features;
      NormalizeRows(rows, s.in_width, x_tile, *norm, normalized);
      x_tile = normalized;
    }
    for (int64_t r = 0; r < s.repeats; ++r) {
      const int64_t columns = std::min(width, mix.out_features - r * width);
      if (columns <= 0) break;
      LoadPadded(s, rows, x_tile, a);
      const float* transformed =
          ForwardTile(s, rows, fb.blocks + r * s.factors * s.factor_elements(),
                      fb.folded, a, v, nullptr, 0);
      MixTile(s, mix, rows, r, columns, transformed, x_tile, z);
    }
    for (int64_t m = 0; m < rows; ++m) {
      const int64_t i = (first + m) * tables;
      HashToken(tables, out.code_length, z + m * mix.out_features, e,
                out.codes + i, out.scores + i);
    }
  });
}

// Tokens per step of the backward pass: eight tiles. Each step keeps every
// block product's input and output gradient for its tokens (12 MiB for
// R = 2, F = 4, D' = 512), then adds their products to the kernel gradient.
constexpr int64_t kTokensPerStep = 8 * kTokensPerTile;

// Within a step, each tile runs every repeat in order and sums the repeats'
// input gradients in that order. The kernel gradient adds the steps in order
// and, within a step, the tokens in order. So nothing depends on the thread
// count.
void Bh4Backward(ffi::ThreadPool& pool, const Bh4Shape& s, const float* x,
                 const float* kernel, const float* du, float* dx,
                 float* dkernel) {
  const int64_t width = s.width();
  const int64_t b = s.block_size;
  const int64_t num_factor_blocks = s.repeats * s.factors * s.num_blocks;
  // The input gradient of a block product multiplies by each block's
  // transpose.
  AlignedVector<float> transposed(num_factor_blocks * s.block_elements());
  for (int64_t blk = 0; blk < num_factor_blocks; ++blk) {
    const float* w = kernel + blk * s.block_elements();
    float* wt = transposed.data() + blk * s.block_elements();
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t o = 0; o < b; ++o) wt[o * b + i] = w[i * b + o];
    }
  }
  std::fill(dkernel, dkernel + num_factor_blocks * s.block_elements(), 0.f);

  // inputs and dv are [R, F, NB, step tokens, b] for the current step.
  const int64_t step_capacity = std::min(kTokensPerStep, s.tokens);
  AlignedVector<float> inputs(num_factor_blocks * step_capacity * b);
  AlignedVector<float> dv(inputs.size());

  for (int64_t step = 0; step < s.tokens; step += kTokensPerStep) {
    const int64_t step_tokens = std::min(kTokensPerStep, s.tokens - step);
    const int64_t slice = s.num_blocks * step_tokens * b;  // one (r, f)
    const int64_t tiles = (step_tokens + kTokensPerTile - 1) / kTokensPerTile;
    ParallelFor(pool, tiles, [&](int64_t tile) {
      const int64_t first = tile * kTokensPerTile;
      const int64_t rows = std::min(kTokensPerTile, step_tokens - first);
      const int64_t token = step + first;
      float* scratch = TileScratch(2 * rows * width);
      for (int64_t r = 0; r < s.repeats; ++r) {
        float* a = scratch;
        float* v = a + rows * width;
        LoadPadded(s, rows, x + token * s.in_width, a);
        for (int64_t f = 0; f < s.factors; ++f) {
          const int64_t rf = r * s.factors + f;
          StoreByBlock(s, step_tokens, first, rows, a,
                       inputs.data() + rf * slice);
          BlockDiagonalMultiply(rows, s.num_blocks, b, a, width,
                                kernel + rf * s.factor_elements(), v, width);
          HadamardRows(rows, width, v, width);
          std::swap(a, v);
        }

        // a_F's gradient is du; H is symmetric and orthonormal, so the
        // gradient of v_f is H times that of a_f.
        float* g = a;
        for (int64_t m = 0; m < rows; ++m) {
          std::memcpy(g + m * width,
                      du + (token + m) * s.repeats * width + r * width,
                      width * sizeof(float));
        }
        for (int64_t f = s.factors - 1; f >= 0; --f) {
          const int64_t rf = r * s.factors + f;
          HadamardRows(rows, width, g, width);
          StoreByBlock(s, step_tokens, first, rows, g, dv.data() + rf * slice);
          BlockDiagonalMultiply(rows, s.num_blocks, b, g, width,
                                transposed.data() + rf * s.factor_elements(),
                                v, width);
          std::swap(g, v);
        }

        for (int64_t m = 0; m < rows; ++m) {
          float* dx_m = dx + (token + m) * s.in_width;
          const float* g_m = g + m * width;
          if (r == 0) {
            std::copy(g_m, g_m + s.in_width, dx_m);
          } else {
            for (int64_t i = 0; i < s.in_width; ++i) dx_m[i] += g_m[i];
          }
        }
      }
    });
    // dkernel[r, f, n] += inputs[r, f, n]^T dv[r, f, n], one block a task.
    ParallelFor(pool, num_factor_blocks, [&](int64_t blk) {
      const int64_t offset = blk * step_tokens * b;
      AddTransposedProduct(b, step_tokens, inputs.data() + offset,
                           dv.data() + offset,
                           dkernel + blk * s.block_elements());
    });
  }
}

// ---------------------------------------------------------------------------
// Shape checks and handlers.

bool IsPowerOfTwo(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

ffi::Error Invalid(const char* op, const std::string& message) {
  return ffi::Error::InvalidArgument(std::string(op) + ": " + message);
}

// Reads M, d from x [..., M, d] and R, F, NB, b from kernel
// [..., R, F, NB, b, b].
ffi::Error ReadBh4Shape(const char* op, Dims x, Dims kernel, Bh4Shape* s) {
  const size_t xr = x.size();
  const size_t kr = kernel.size();
  s->tokens = x[xr - 2];
  s->in_width = x[xr - 1];
  s->repeats = kernel[kr - 5];
  s->factors = kernel[kr - 4];
  s->num_blocks = kernel[kr - 3];
  s->block_size = kernel[kr - 2];
  if (kernel[kr - 1] != s->block_size) {
    return Invalid(op, "kernel " + ShapeString(kernel) +
                           " must end in square blocks [..., b, b]");
  }
  if (s->repeats < 1 || s->factors < 1 || s->num_blocks < 1 ||
      !IsPowerOfTwo(s->width())) {
    return Invalid(op, "kernel " + ShapeString(kernel) +
                           " must have R, F, NB >= 1 and NB * b a power of two");
  }
  if (s->in_width > s->width()) {
    return Invalid(op, "x " + ShapeString(x) + " is wider than the kernel's " +
                           std::to_string(s->width()) + " columns (NB * b)");
  }
  return ffi::Error::Success();
}

// Checks the batch dimensions of every operand, x and kernel first, and
// reads the shape from those two.
ffi::Error ReadOperands(const char* op, const std::vector<Dims>& dims,
                        const std::vector<size_t>& base_ranks,
                        const std::vector<const char*>& names,
                        BatchIndexer* batch, Bh4Shape* s) {
  if (auto e = batch->Init(op, dims, base_ranks, names); e.failure()) {
    return e;
  }
  return ReadBh4Shape(op, dims[0], dims[1], s);
}

ffi::Error Bh4ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> kernel,
                          ffi::ResultBuffer<ffi::F32> u) {
  constexpr const char* kOp = "bh4_transform";
  BatchIndexer batch;
  Bh4Shape s;
  if (auto e = ReadOperands(kOp, {x.dimensions(), kernel.dimensions()}, {2, 5},
                            {"x", "kernel"}, &batch, &s);
      e.failure()) {
    return e;
  }
  if (!batch.IsOutput(u->dimensions(), {s.tokens, s.repeats * s.width()})) {
    return Invalid(kOp, "output shape " + ShapeString(u->dimensions()));
  }
  AdviseResultHugePages(u);
  for (int64_t i = 0; i < batch.size(); ++i) {
    Bh4Forward(pool, s, x.typed_data() + batch.Offset(0, i),
               kernel.typed_data() + batch.Offset(1, i), nullptr,
               u->typed_data() + i * s.tokens * s.repeats * s.width());
  }
  return ffi::Error::Success();
}

// Reads out_features from the bias and checks it against the kernel.
ffi::Error ReadOutFeatures(const char* op, const Bh4Shape& s, Dims bias,
                           int64_t* out_features) {
  *out_features = bias[bias.size() - 1];
  if (*out_features > s.repeats * s.width() ||
      (*out_features > 0 && s.in_width < 1)) {
    return Invalid(op, "bias " + ShapeString(bias) +
                           " must have at most R * D' = " +
                           std::to_string(s.repeats * s.width()) +
                           " features, and x at least one");
  }
  return ffi::Error::Success();
}

ffi::Error Bh4MixForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> kernel,
                             ffi::Buffer<ffi::F32> bias, float mix, float rest,
                             ffi::ResultBuffer<ffi::F32> z) {
  constexpr const char* kOp = "bh4_projection";
  BatchIndexer batch;
  Bh4Shape s;
  if (auto e = ReadOperands(
          kOp, {x.dimensions(), kernel.dimensions(), bias.dimensions()},
          {2, 5, 1}, {"x", "kernel", "bias"}, &batch, &s);
      e.failure()) {
    return e;
  }
  int64_t out_features;
  if (auto e = ReadOutFeatures(kOp, s, bias.dimensions(), &out_features);
      e.failure()) {
    return e;
  }
  if (!batch.IsOutput(z->dimensions(), {s.tokens, out_features})) {
    return Invalid(kOp, "output shape " + ShapeString(z->dimensions()));
  }
  AdviseResultHugePages(z);
  for (int64_t i = 0; i < batch.size(); ++i) {
    const Mix m{mix, rest, bias.typed_data() + batch.Offset(2, i),
                out_features};
    Bh4Forward(pool, s, x.typed_data() + batch.Offset(0, i),
               kernel.typed_data() + batch.Offset(1, i), &m,
               z->typed_data() + i * s.tokens * out_features);
  }
  return ffi::Error::Success();
}

// Checks the operands of the hash targets and runs Bh4Hash. norm_scale and
// norm_bias are null for the target without a LayerNorm.
ffi::Error RunBh4Hash(const char* op, ffi::ThreadPool& pool,
                      ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                      ffi::Buffer<ffi::F32> bias,
                      const ffi::Buffer<ffi::F32>* norm_scale,
                      const ffi::Buffer<ffi::F32>* norm_bias, float epsilon,
                      float mix, float rest, ffi::ResultBuffer<ffi::S32>& codes,
                      ffi::ResultBuffer<ffi::F32>& scores) {
  std::vector<Dims> dims = {x.dimensions(), kernel.dimensions(),
                            bias.dimensions()};
  std::vector<size_t> ranks = {2, 5, 1};
  std::vector<const char*> names = {"x", "kernel", "bias"};
  if (norm_scale != nullptr) {
    dims.push_back(norm_scale->dimensions());
    dims.push_back(norm_bias->dimensions());
    ranks.insert(ranks.end(), {1, 1});
    names.insert(names.end(), {"norm_scale", "norm_bias"});
  }
  BatchIndexer batch;
  Bh4Shape s;
  if (auto e = ReadOperands(op, dims, ranks, names, &batch, &s); e.failure()) {
    return e;
  }
  if (norm_scale != nullptr) {
    for (size_t k = 3; k < 5; ++k) {
      if (dims[k][dims[k].size() - 1] != s.in_width) {
        return Invalid(op, std::string(names[k]) + " " + ShapeString(dims[k]) +
                               " must have d = " + std::to_string(s.in_width) +
                               " entries, the width of x");
      }
    }
  }
  int64_t out_features;
  if (auto e = ReadOutFeatures(op, s, bias.dimensions(), &out_features);
      e.failure()) {
    return e;
  }
  const Dims code_dims = codes->dimensions();
  const int64_t tables = code_dims[code_dims.size() - 1];
  if (tables < 1 || out_features % tables != 0 ||
      out_features / tables > kMaxCodeLength) {
    return Invalid(op, "codes " + ShapeString(code_dims) +
                           " must split the " + std::to_string(out_features) +
                           " features into tables of 1 to " +
                           std::to_string(kMaxCodeLength) + " columns");
  }
  if (!batch.IsOutput(code_dims, {s.tokens, tables}) ||
      !batch.IsOutput(scores->dimensions(), {s.tokens, tables})) {
    return Invalid(op, "unexpected output shapes");
  }
  AdviseResultHugePages(codes);
  AdviseResultHugePages(scores);
  for (int64_t i = 0; i < batch.size(); ++i) {
    const Mix m{mix, rest, bias.typed_data() + batch.Offset(2, i),
                out_features};
    Norm norm{};
    if (norm_scale != nullptr) {
      norm = {norm_scale->typed_data() + batch.Offset(3, i),
              norm_bias->typed_data() + batch.Offset(4, i), epsilon};
    }
    const HashOutput out{out_features / tables,
                         codes->typed_data() + i * s.tokens * tables,
                         scores->typed_data() + i * s.tokens * tables};
    Bh4Hash(pool, s, x.typed_data() + batch.Offset(0, i),
            kernel.typed_data() + batch.Offset(1, i), m,
            norm_scale != nullptr ? &norm : nullptr, out);
  }
  return ffi::Error::Success();
}

ffi::Error Bh4HashImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                       float mix, float rest,
                       ffi::ResultBuffer<ffi::S32> codes,
                       ffi::ResultBuffer<ffi::F32> scores) {
  return RunBh4Hash("bh4_hash_codes", pool, x, kernel, bias, nullptr, nullptr,
                    0.f, mix, rest, codes, scores);
}

ffi::Error NormBh4HashImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> kernel,
                           ffi::Buffer<ffi::F32> bias,
                           ffi::Buffer<ffi::F32> norm_scale,
                           ffi::Buffer<ffi::F32> norm_bias, float epsilon,
                           float mix, float rest,
                           ffi::ResultBuffer<ffi::S32> codes,
                           ffi::ResultBuffer<ffi::F32> scores) {
  return RunBh4Hash("bh4_hash_codes (with layer norm)", pool, x, kernel, bias,
                    &norm_scale, &norm_bias, epsilon, mix, rest, codes, scores);
}

ffi::Error Bh4BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> kernel,
                           ffi::Buffer<ffi::F32> du,
                           ffi::ResultBuffer<ffi::F32> dx,
                           ffi::ResultBuffer<ffi::F32> dkernel) {
  constexpr const char* kOp = "bh4_transform (backward)";
  BatchIndexer batch;
  Bh4Shape s;
  if (auto e = ReadOperands(
          kOp, {x.dimensions(), kernel.dimensions(), du.dimensions()},
          {2, 5, 2}, {"x", "kernel", "output gradient"}, &batch, &s);
      e.failure()) {
    return e;
  }
  // du may broadcast along batch dimensions, which batch.Init checked, so
  // only its last two dimensions are compared here.
  const Dims du_dims = du.dimensions();
  const size_t du_rank = du_dims.size();
  if (du_dims[du_rank - 2] != s.tokens ||
      du_dims[du_rank - 1] != s.repeats * s.width()) {
    return Invalid(kOp, "output gradient " + ShapeString(du_dims) +
                            " must end in [M, R * D'] = [" +
                            std::to_string(s.tokens) + ", " +
                            std::to_string(s.repeats * s.width()) + "]");
  }
  if (!batch.IsOutput(dx->dimensions(), {s.tokens, s.in_width}) ||
      !batch.IsOutput(dkernel->dimensions(),
                      {s.repeats, s.factors, s.num_blocks, s.block_size,
                       s.block_size})) {
    return Invalid(kOp, "unexpected gradient shapes");
  }
  AdviseResultHugePages(dx);
  const int64_t kernel_size = s.repeats * s.factors * s.factor_elements();
  // The backward allocates its per-step buffers on the calling thread. A
  // failure becomes an error rather than an exception across the C API.
  try {
    for (int64_t i = 0; i < batch.size(); ++i) {
      Bh4Backward(pool, s, x.typed_data() + batch.Offset(0, i),
                  kernel.typed_data() + batch.Offset(1, i),
                  du.typed_data() + batch.Offset(2, i),
                  dx->typed_data() + i * s.tokens * s.in_width,
                  dkernel->typed_data() + i * kernel_size);
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(kOp) +
                          ": out of memory for the per-step buffers (2 * R * F"
                          " * D' * min(M, 384) floats); pass fewer tokens per"
                          " call");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bh4FwdHandler, Bh4ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bh4MixFwdHandler, Bh4MixForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Attr<float>("mix")
                                  .Attr<float>("rest")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // z
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bh4HashHandler, Bh4HashImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Attr<float>("mix")
                                  .Attr<float>("rest")
                                  .Ret<ffi::Buffer<ffi::S32>>()  // codes
                                  .Ret<ffi::Buffer<ffi::F32>>()  // scores
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(NormBh4HashHandler, NormBh4HashImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // norm_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // norm_bias
                                  .Attr<float>("epsilon")
                                  .Attr<float>("mix")
                                  .Attr<float>("rest")
                                  .Ret<ffi::Buffer<ffi::S32>>()  // codes
                                  .Ret<ffi::Buffer<ffi::F32>>()  // scores
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bh4BwdHandler, Bh4BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // du
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dkernel
);

}  // namespace lookupffn
