// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// The gather reads one row slice per (token, table). With T = 128 tables of
// 256 rows of 512 float32 the tables take 64 MB, far more than the caches,
// so a token-by-token loop over whole rows streams from DRAM. These kernels
// instead split the row width into column blocks of kColumnBlock floats and
// visit the tables in groups of kTableGroup. The slices that one group reads
// for one column block (kTableGroup * S * kColumnBlock floats, 2 MB for the
// shape above) stay in cache while a tile of kTokenTile tokens reuses them.
// Each output block is accumulated in registers across a whole group.
//
// The table-gradient scatter sorts the look-ups of a tile of tokens by row,
// then sums each row's block in registers and stores it once per tile, so
// it reads a gradient row back only between tiles.
//
// Work is split into (column block, token tile) tasks for the gather,
// (table group, token tile) tasks for the row dot products and (table
// group, range of column blocks) tasks for the scatter. Every output
// element belongs to one task and is summed in a fixed order, so results
// do not depend on the thread count.

#include "gather.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "memory.h"
#include "parallel.h"
#include "simd.h"

#if defined(__x86_64__) || defined(_M_X64)
#define LOOKUPFFN_HAVE_X86 1
#include <immintrin.h>
#endif

namespace lookupffn {
namespace {

namespace ffi = xla::ffi;

// Floats per column block: 8 AVX2 or 4 AVX-512 registers of accumulators.
constexpr int64_t kColumnBlock = 64;
constexpr int64_t kTableGroup = 32;
constexpr int64_t kTokenTile = 256;

// The forward gather prefetches the row slice it will read this many
// look-ups later into L1, where the rows are in a packed group. In
// benchmarks/ on the 2-core development machine, 16 ran the float32 gather
// about 10% faster than no prefetch, and 4, 24, 31 or a whole token ahead
// were no faster or slower.
constexpr int64_t kPrefetchDistance = 16;

// The gather also prefetches the codes and weights of a group this many
// tokens ahead: 64 bytes of each token's 512-byte row of codes for T = 128.
// Without it, 32% of the perf samples of the 32768-token gather fell on
// the load of the next token's code. On the 2-core AMD EPYC (Zen 4), 8
// tokens ahead ran the float32 gather 1.2x faster at 4096 tokens (13.2 ms
// to 11.1 ms, in one process) and 1.8x at 32768, and the bfloat16 one
// 1.04x and 1.25x. 2, 4 and 16 tokens were about as fast.
constexpr int64_t kCodePrefetchTokens = 8;

// For many tokens per table row, the gather first copies the column block
// of a group of tables into a contiguous buffer. The column blocks of a
// row-major table are D floats apart, so they fall into a fraction of the
// cache sets. Packed, a group's slices fit L2 without conflicts, and each
// is reused by the tokens of a tile. Packing
// costs one pass over the tables per tile of up to kPackedTokenTile tokens,
// so it is used from kPackedMinTokens tokens on, with at least
// kPackedMinTasks tasks. In benchmarks/ on the 2-core development machine
// this ran the 4096-token gather about 1.2x faster with float32 tables and
// 1.6x with bfloat16; tiles of 1024 tokens were slower than no packing.
//
// The gather's buffer takes 1 MiB, or half of L2 where that is more and
// all of L2 where that is less (GatherPackedBytes). The rest of L2, or L3,
// holds the tile's output blocks, 1 MiB for 4096 tokens, also kept
// contiguous. A larger group loads and stores each output block fewer
// times. On a 2-core Xeon with 2 MiB of L2, groups of 1 MiB ran the
// 4096-token float32 gather in 13 to 15 ms. There 256 KiB took 25 ms, 512
// KiB 19 ms and 2 MiB 16 ms, and at 32768 tokens 1 MiB was 1.4x faster than
// 256 KiB. With bfloat16 tables 1 MiB took 9.5 to 10 ms, 512 KiB 11 ms. On
// a 2-core AMD EPYC (Zen 4) with 1 MiB of L2 and 32 MiB of L3, groups of
// 768 KiB or 1 MiB ran it 7% to 10% faster than 512 KiB, with float32 and
// with bfloat16 tables. The output blocks then spill to L3, which is fast
// there (147 GB/s read by 2 threads against 35 GB/s from DRAM). The
// row dot products pack kDotsPackedBytes. The group size changes no
// result: every output element adds the tables in the same order whatever
// the grouping.
int64_t GatherPackedBytes() {
  const int64_t l2 = L2CacheBytes();
  return std::clamp<int64_t>(std::clamp<int64_t>(1 << 20, l2 / 2, l2),
                             128 * 1024, 2 << 20);
}
constexpr int64_t kDotsPackedBytes = 512 * 1024;
constexpr int64_t kPackedTokenTile = 4096;
constexpr int64_t kPackedMinTokens = 2048;
constexpr int64_t kPackedMinTasks = 8;

// With few tokens per table row the AVX-512 gather reads whole chunks of
// kRowChunk floats of each row, 16 registers of accumulators, instead of
// 64-column blocks (UseRowChunks). The rows then come from L3 or DRAM, and a
// chunk of 1 KiB of consecutive lines is fetched faster than the same bytes as
// four 256-byte slices read by different tasks at different times. Each task
// takes kRowTokenTile tokens and one chunk, and prefetches the chunk into L2
// kRowPrefetchDistance look-ups ahead. In one process on the 2-core AMD EPYC
// (Zen 4, 32 MiB of L3), with T = 128 tables of S = 256 rows of 512 entries,
// chunks ran the float32 gather 1.25x to 1.54x faster from 8 to 256 tokens, as
// fast at 384 and 0.69x to 0.87x as fast from 512 to 1536. There the 64 MiB of
// tables do not fit L3, and column blocks reuse the slices that L3 keeps. The
// 32 MiB of bfloat16 tables ran 1.04x to 1.43x faster in chunks at every size
// from 8 to 1536 tokens, with the chunk prefetched 4 look-ups ahead into L1.
// Timed with four sets of tables, so that each call reads them from DRAM, 16
// look-ups ahead into L2 is faster: 1.18x to 1.83x for float32 from 32 to 256
// tokens, and 1.04x to 1.41x for bfloat16 from 32 to 1536. At 8 tokens it was 1
// to 2 us slower.
constexpr int64_t kRowChunk = 256;
constexpr int64_t kRowTokenTile = 32;
constexpr int64_t kRowPrefetchDistance = 16;

// Chunks are used below kPackedMinTokens tokens while each row is read
// about once at most (N <= S), or while the tables take at most
// kRowTableBytes.
//
// NOTE: kRowTableBytes is the L3 size of the AMD EPYC above. The C library
// reports 320 MiB of L3 in that virtual machine, so the limit is a
// constant rather than a query, and it has not been measured on other
// CPUs.
constexpr int64_t kRowTableBytes = int64_t{32} << 20;

#ifdef LOOKUPFFN_HAVE_X86
bool UseRowChunks(const GatherShape& s, int64_t table_bytes) {
  return simd::Avx512Active() && s.tokens < kPackedMinTokens &&
         (s.tokens <= s.table_rows || table_bytes <= kRowTableBytes);
}
#endif

// The scatter's tasks each own the rows of a table group for a range of
// column blocks. Each task reads all of dy, so groups are as large as
// kScatterGroupBytes of rows per column block allows, but there are at
// least kScatterTasks tasks where the tables and column blocks allow it.
// With T=16 tables of S=256 rows of D=64 and 262144 tokens, groups of one
// table (16 tasks) read dy 16 times and took 71 ms, 1.9x as long as the
// earlier row-by-row scatter; groups of four took about 40 ms. The scatter
// sorts and adds the look-ups of kScatterTokenTile tokens at a time.
constexpr int64_t kScatterTasks = 4;
constexpr int64_t kScatterGroupBytes = 512 * 1024;
constexpr int64_t kScatterTokenTile = 4096;

// 64-byte cache lines in one column block of a row.
template <typename TableT>
constexpr int64_t kSliceLines = kColumnBlock * sizeof(TableT) / 64;

template <typename TableT>
const TableT* RowPointer(const GatherShape& s, const TableT* tables,
                         int64_t table, int32_t code) {
  return tables + (table * s.table_rows + code) * s.width;
}

// Packing prefetches the slice of the row this many rows later, past the end of
// a table into the next one of the group, into L2. The slices are D floats
// apart, too far for the hardware prefetcher to follow. This was timed on the
// 2-core AMD EPYC (Zen 4) with four sets of tables, so that each call reads
// them from DRAM. 16 rows into L2 ran the float32 gather 1.15x to 1.2x faster
// than 8 rows into L1 from 2048 to 32768 tokens (11.7 ms to 10.1 ms at 4096),
// and the bfloat16 one 1.1x. A 2-thread copy of the packing alone read 14 GB/s
// the old way and 22 GB/s into L2. On the 2-core Xeon, 8 rows into L1 had run
// the float32 gather 1.15x faster than no prefetch.
constexpr int64_t kPackPrefetchRows = 16;

// Copies the column block at `column` of tables [group, group_end) into
// `packed`, [group_end - group, S, kColumnBlock].
template <typename TableT>
void PackColumnBlock(const GatherShape& s, const TableT* tables, int64_t group,
                     int64_t group_end, int64_t column, TableT* packed) {
  const int64_t rows_end = group_end * s.table_rows;
  for (int64_t t = group; t < group_end; ++t) {
    for (int64_t r = 0; r < s.table_rows; ++r) {
      const int64_t ahead = t * s.table_rows + r + kPackPrefetchRows;
      if (ahead < rows_end) {
        const char* next =
            reinterpret_cast<const char*>(tables + ahead * s.width + column);
        for (int64_t line = 0; line < kSliceLines<TableT>; ++line) {
          __builtin_prefetch(next + 64 * line, /*rw=*/0, /*locality=*/1);
        }
      }
      std::memcpy(packed + ((t - group) * s.table_rows + r) * kColumnBlock,
                  RowPointer(s, tables, t, r) + column,
                  kColumnBlock * sizeof(TableT));
    }
  }
}

void AxpyRow(int64_t n, float a, const float* x, float* y) {
  simd::Axpy(n, a, x, y);
}
void AxpyRow(int64_t n, float a, const uint16_t* x, float* y) {
  simd::AxpyBf16(n, a, x, y);
}

// Gathers columns [column, column + columns) of tokens [begin, end) one row
// at a time, then adds bias[column, column + columns) unless bias is null.
// Used for the last, partial column block and on CPUs without AVX2.
template <typename TableT>
void GatherBlockGeneric(const GatherShape& s, const int32_t* codes,
                        const float* weights, const TableT* tables,
                        const float* bias, int64_t begin, int64_t end,
                        int64_t column, int64_t columns, float* y) {
  for (int64_t n = begin; n < end; ++n) {
    float* y_block = y + n * s.width + column;
    std::memset(y_block, 0, sizeof(float) * columns);
    for (int64_t t = 0; t < s.tables; ++t) {
      const int64_t i = n * s.tables + t;
      AxpyRow(columns, weights[i], RowPointer(s, tables, t, codes[i]) + column,
              y_block);
    }
    if (bias != nullptr) {
      for (int64_t i = 0; i < columns; ++i) y_block[i] += bias[column + i];
    }
  }
}

// The look-ups of tables [group, group_end) by tokens [begin, end), grouped
// by row. With o = (t - group) * (S + 1) + r, the look-ups of row r of
// table t are entries [start[o], start[o + 1]) of token and weight, tokens
// in increasing order.
struct RowBuckets {
  int64_t group;
  std::vector<int64_t> start;  // [G, S + 1]
  std::vector<int64_t> token;  // [G * (end - begin)]
  std::vector<float> weight;   // [G * (end - begin)]
  std::vector<int64_t> next;   // [S], the sort's next entry per row
};

// Sorts the look-ups of tables [group, group_end) by tokens [begin, end) by
// row, a stable counting sort.
void BucketByRow(const GatherShape& s, const int32_t* codes,
                 const float* weights, int64_t group, int64_t group_end,
                 int64_t begin, int64_t end, RowBuckets* b) {
  const int64_t rows = s.table_rows;
  const int64_t tokens = end - begin;
  b->group = group;
  b->start.assign((group_end - group) * (rows + 1), 0);
  b->token.resize((group_end - group) * tokens);
  b->weight.resize((group_end - group) * tokens);
  b->next.resize(rows);
  for (int64_t t = group; t < group_end; ++t) {
    int64_t* start = b->start.data() + (t - group) * (rows + 1);
    for (int64_t n = begin; n < end; ++n) ++start[codes[n * s.tables + t] + 1];
    start[0] = (t - group) * tokens;
    for (int64_t r = 0; r < rows; ++r) start[r + 1] += start[r];
    std::copy(start, start + rows, b->next.begin());
    for (int64_t n = begin; n < end; ++n) {
      const int64_t k = b->next[codes[n * s.tables + t]]++;
      b->token[k] = n;
      b->weight[k] = weights[n * s.tables + t];
    }
  }
}

// Adds to columns [column, column + columns) of the rows of tables
// [group, group_end) weight * dy[token] over each row's bucket, in bucket
// order, one FMA chain per element. With `first` every row starts from
// zero, so rows without look-ups are written as zeros; otherwise rows
// without look-ups are left alone.
void ScatterBucketsGeneric(const GatherShape& s, const RowBuckets& b,
                           const float* dy, int64_t group_end, int64_t column,
                           int64_t columns, bool first, float* dtables) {
  const int64_t rows = s.table_rows;
  for (int64_t t = b.group; t < group_end; ++t) {
    const int64_t* start = b.start.data() + (t - b.group) * (rows + 1);
    for (int64_t r = 0; r < rows; ++r) {
      float* out = dtables + (t * rows + r) * s.width + column;
      if (first) std::fill(out, out + columns, 0.f);
      for (int64_t k = start[r]; k < start[r + 1]; ++k) {
        simd::Axpy(columns, b.weight[k], dy + b.token[k] * s.width + column,
                   out);
      }
    }
  }
}

float DotRow(int64_t n, const float* x, const float* row) {
  return simd::Dot(n, x, row);
}
float DotRow(int64_t n, const float* x, const uint16_t* row) {
  return simd::DotBf16(n, x, row);
}

// Adds the partial dot products over columns [column, column + columns) of
// tokens [begin, end) and tables [group, group_end) to `dots`. Used for the
// last, partial column block and on CPUs without AVX2.
template <typename TableT>
void DotsBlockGeneric(const GatherShape& s, const int32_t* codes,
                      int64_t candidates, const TableT* tables,
                      const float* dy, int64_t group, int64_t group_end,
                      int64_t begin, int64_t end, int64_t column,
                      int64_t columns, float* dots) {
  for (int64_t n = begin; n < end; ++n) {
    const float* dy_block = dy + n * s.width + column;
    for (int64_t t = group; t < group_end; ++t) {
      for (int64_t c = 0; c < candidates; ++c) {
        const int64_t i = (n * s.tables + t) * candidates + c;
        dots[i] += DotRow(columns, dy_block,
                          RowPointer(s, tables, t, codes[i]) + column);
      }
    }
  }
}

#ifdef LOOKUPFFN_HAVE_X86

__attribute__((target("avx2,fma"))) inline __m256 Load8(const float* p) {
  return _mm256_loadu_ps(p);
}

__attribute__((target("avx2,fma"))) inline __m256 Load8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// Prefetches the cache lines of [data, data + bytes) into L1.
//
// These helpers must be inlined. GCC 12 at -O3 otherwise removed every
// call to them from the gather kernels, as if a function that only
// prefetches did nothing: -fno-ipa-modref kept the calls, and so does
// always_inline (checked by counting prefetch instructions in the object
// file).
__attribute__((always_inline)) inline void PrefetchRange(const void* data,
                                                         int64_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  for (uintptr_t line = begin & ~uintptr_t{63}; line < begin + bytes;
       line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
  }
}

// Prefetches the codes and weights of tables [group, group_end) of token
// n + kCodePrefetchTokens, or of the last token before `end`.
__attribute__((always_inline)) inline void PrefetchTokenCodes(
    const GatherShape& s, const int32_t* codes, const float* weights,
    int64_t group, int64_t group_end, int64_t n, int64_t end) {
  const int64_t first =
      std::min(n + kCodePrefetchTokens, end - 1) * s.tables + group;
  PrefetchRange(codes + first, (group_end - group) * sizeof(int32_t));
  PrefetchRange(weights + first, (group_end - group) * sizeof(float));
}

// Prefetches kLines cache lines of the row read `distance` look-ups after
// table t, where codes_n are the current token's codes in tables
// [group, group_end), with the _mm_prefetch hint kHint. Past group_end the
// count goes on in the next token's codes, codes_next. The last token
// passes its own, so it refetches its own rows. row_at(t, code) returns the
// row's first element.
template <int64_t kLines, int kHint, typename RowAt>
__attribute__((always_inline)) inline void PrefetchLookupAhead(
    int64_t t, int64_t distance, int64_t group, int64_t group_end,
    const int32_t* codes_n, const int32_t* codes_next, RowAt row_at) {
  int64_t ahead = t + distance;
  const int32_t* codes_ahead = codes_n;
  if (ahead >= group_end) {
    ahead -= group_end - group;
    codes_ahead = codes_next;
  }
  if (ahead < group_end) {
    const char* next =
        reinterpret_cast<const char*>(row_at(ahead, codes_ahead[ahead]));
    for (int64_t line = 0; line < kLines; ++line) {
      _mm_prefetch(next + 64 * line, static_cast<decltype(_MM_HINT_T0)>(kHint));
    }
  }
}

// One full column block of tokens [begin, end) and tables [group,
// group_end). The block of token begin + i is read from in + i * in_stride
// into 8 registers, or starts from zeros where `in` is null. It gets the
// weighted rows of the group added, then the 64 floats at `bias` unless
// that is null, and is stored to out + i * out_stride. row_at(t, code)
// returns the first element of that row's block, in the tables or in a
// packed copy of the group's blocks. Each row is prefetched kDistance
// look-ups ahead with the _mm_prefetch hint kHint.
template <typename TableT, int kHint, int64_t kDistance, typename RowAt>
__attribute__((target("avx2,fma"))) void GatherGroupAvx2(
    const GatherShape& s, const int32_t* codes, const float* weights,
    int64_t group, int64_t group_end, int64_t begin, int64_t end,
    const float* in, int64_t in_stride, float* out, int64_t out_stride,
    const float* bias, RowAt row_at) {
  for (int64_t n = begin; n < end; ++n) {
    __m256 acc[8];
    for (int k = 0; k < 8; ++k) {
      acc[k] = in == nullptr
                   ? _mm256_setzero_ps()
                   : _mm256_loadu_ps(in + (n - begin) * in_stride + 8 * k);
    }
    const int32_t* codes_n = codes + n * s.tables;
    const float* weights_n = weights + n * s.tables;
    const int32_t* codes_next = codes + std::min(n + 1, end - 1) * s.tables;
    PrefetchTokenCodes(s, codes, weights, group, group_end, n, end);
    for (int64_t t = group; t < group_end; ++t) {
      const TableT* row = row_at(t, codes_n[t]);
      PrefetchLookupAhead<kSliceLines<TableT>, kHint>(
          t, kDistance, group, group_end, codes_n, codes_next, row_at);
      const __m256 w = _mm256_set1_ps(weights_n[t]);
      for (int k = 0; k < 8; ++k) {
        acc[k] = _mm256_fmadd_ps(w, Load8(row + 8 * k), acc[k]);
      }
    }
    float* out_n = out + (n - begin) * out_stride;
    if (bias != nullptr) {
      for (int k = 0; k < 8; ++k) {
        acc[k] = _mm256_add_ps(acc[k], _mm256_loadu_ps(bias + 8 * k));
      }
    }
    for (int k = 0; k < 8; ++k) _mm256_storeu_ps(out_n + 8 * k, acc[k]);
  }
}

__attribute__((target("avx512f,avx2,fma"))) inline __m512 Load16(
    const float* p) {
  return _mm512_loadu_ps(p);
}

__attribute__((target("avx512f,avx2,fma"))) inline __m512 Load16(
    const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// GatherGroupAvx2 with the column block in 4 AVX-512 registers: the same
// FMA chain per output element, so bitwise the same sums, and the same
// prefetch.
template <typename TableT, int kHint, int64_t kDistance, typename RowAt>
__attribute__((target("avx512f,avx2,fma"))) void GatherGroupAvx512(
    const GatherShape& s, const int32_t* codes, const float* weights,
    int64_t group, int64_t group_end, int64_t begin, int64_t end,
    const float* in, int64_t in_stride, float* out, int64_t out_stride,
    const float* bias, RowAt row_at) {
  for (int64_t n = begin; n < end; ++n) {
    __m512 acc[4];
    for (int k = 0; k < 4; ++k) {
      acc[k] = in == nullptr
                   ? _mm512_setzero_ps()
                   : _mm512_loadu_ps(in + (n - begin) * in_stride + 16 * k);
    }
    const int32_t* codes_n = codes + n * s.tables;
    const float* weights_n = weights + n * s.tables;
    const int32_t* codes_next = codes + std::min(n + 1, end - 1) * s.tables;
    PrefetchTokenCodes(s, codes, weights, group, group_end, n, end);
    for (int64_t t = group; t < group_end; ++t) {
      const TableT* row = row_at(t, codes_n[t]);
      PrefetchLookupAhead<kSliceLines<TableT>, kHint>(
          t, kDistance, group, group_end, codes_n, codes_next, row_at);
      const __m512 w = _mm512_set1_ps(weights_n[t]);
      for (int k = 0; k < 4; ++k) {
        acc[k] = _mm512_fmadd_ps(w, Load16(row + 16 * k), acc[k]);
      }
    }
    float* out_n = out + (n - begin) * out_stride;
    if (bias != nullptr) {
      for (int k = 0; k < 4; ++k) {
        acc[k] = _mm512_add_ps(acc[k], _mm512_loadu_ps(bias + 16 * k));
      }
    }
    for (int k = 0; k < 4; ++k) _mm512_storeu_ps(out_n + 16 * k, acc[k]);
  }
}

// Gathers columns [column, column + 16 * kVectors) of tokens [begin, end)
// from whole row chunks, in kVectors AVX-512 registers. Each element is
// the FMA chain over the tables in order from zero, plus bias[column + i]
// unless bias is null, as in the column-block kernels, so the sums are
// bitwise theirs.
template <typename TableT, int kVectors>
__attribute__((target("avx512f,avx2,fma"))) void GatherRowChunkAvx512(
    const GatherShape& s, const int32_t* codes, const float* weights,
    const TableT* tables, const float* bias, int64_t begin, int64_t end,
    int64_t column, float* y) {
  constexpr int64_t kChunkLines = 16 * kVectors * sizeof(TableT) / 64;
  auto chunk_at = [&](int64_t t, int32_t code) {
    return RowPointer(s, tables, t, code) + column;
  };
  for (int64_t n = begin; n < end; ++n) {
    __m512 acc[kVectors];
    for (int k = 0; k < kVectors; ++k) acc[k] = _mm512_setzero_ps();
    const int32_t* codes_n = codes + n * s.tables;
    const float* weights_n = weights + n * s.tables;
    const int32_t* codes_next = codes + std::min(n + 1, end - 1) * s.tables;
    for (int64_t t = 0; t < s.tables; ++t) {
      PrefetchLookupAhead<kChunkLines, _MM_HINT_T1>(
          t, kRowPrefetchDistance, 0, s.tables, codes_n, codes_next, chunk_at);
      const TableT* row = chunk_at(t, codes_n[t]);
      const __m512 w = _mm512_set1_ps(weights_n[t]);
      for (int k = 0; k < kVectors; ++k) {
        acc[k] = _mm512_fmadd_ps(w, Load16(row + 16 * k), acc[k]);
      }
    }
    float* y_n = y + n * s.width + column;
    for (int k = 0; k < kVectors; ++k) {
      if (bias != nullptr) {
        acc[k] = _mm512_add_ps(acc[k], _mm512_loadu_ps(bias + column + 16 * k));
      }
      _mm512_storeu_ps(y_n + 16 * k, acc[k]);
    }
  }
}

// Runs GatherRowChunkAvx512 on columns [column, column + columns), where
// columns is a multiple of kColumnBlock up to kRowChunk.
template <typename TableT>
void GatherRowChunk(const GatherShape& s, const int32_t* codes,
                    const float* weights, const TableT* tables,
                    const float* bias, int64_t begin, int64_t end,
                    int64_t column, int64_t columns, float* y) {
  switch (columns / 16) {
    case 4:
      return GatherRowChunkAvx512<TableT, 4>(s, codes, weights, tables, bias,
                                             begin, end, column, y);
    case 8:
      return GatherRowChunkAvx512<TableT, 8>(s, codes, weights, tables, bias,
                                             begin, end, column, y);
    case 12:
      return GatherRowChunkAvx512<TableT, 12>(s, codes, weights, tables, bias,
                                              begin, end, column, y);
    default:
      return GatherRowChunkAvx512<TableT, 16>(s, codes, weights, tables, bias,
                                              begin, end, column, y);
  }
}

// GatherGroupAvx512 where the CPU supports it, else GatherGroupAvx2.
template <typename TableT, int kHint, int64_t kDistance, typename RowAt>
void GatherGroup(const GatherShape& s, const int32_t* codes,
                 const float* weights, int64_t group, int64_t group_end,
                 int64_t begin, int64_t end, const float* in,
                 int64_t in_stride, float* out, int64_t out_stride,
                 const float* bias, RowAt row_at) {
  if (simd::Avx512Active()) {
    return GatherGroupAvx512<TableT, kHint, kDistance>(
        s, codes, weights, group, group_end, begin, end, in, in_stride, out,
        out_stride, bias, row_at);
  }
  GatherGroupAvx2<TableT, kHint, kDistance>(s, codes, weights, group,
                                            group_end, begin, end, in,
                                            in_stride, out, out_stride, bias,
                                            row_at);
}

// Rows read in place come from L3 or DRAM. Float32 rows are prefetched
// into L2 one token ahead (kTableGroup look-ups), and bfloat16 rows into L1
// kPrefetchDistance look-ups ahead, like the rows of a packed group. On the
// 2-core AMD EPYC (Zen 4), with four sets of tables, the float32 setting
// ran the float32 gather 1.06x to 1.31x faster from 8 to 1536 tokens with
// either kernel. It ran the bfloat16 one 0.89x to 1.33x as fast, slower
// below 256 tokens.
template <typename TableT>
constexpr int kInPlaceHint = _MM_HINT_T0;
template <>
constexpr int kInPlaceHint<float> = _MM_HINT_T1;
template <typename TableT>
constexpr int64_t kInPlaceDistance = kPrefetchDistance;
template <>
constexpr int64_t kInPlaceDistance<float> = kTableGroup;

// GatherGroup over every table group, reading the tables in place and
// accumulating in y. The last group adds the bias block at `bias` unless it
// is null.
template <typename TableT>
void GatherBlockInPlace(const GatherShape& s, const int32_t* codes,
                        const float* weights, const TableT* tables,
                        const float* bias, int64_t begin, int64_t end,
                        int64_t column, float* y) {
  auto table_row = [&](int64_t t, int32_t code) {
    return RowPointer(s, tables, t, code) + column;
  };
  float* y_block = y + begin * s.width + column;
  for (int64_t group = 0; group < s.tables; group += kTableGroup) {
    const int64_t group_end = std::min(group + kTableGroup, s.tables);
    GatherGroup<TableT, kInPlaceHint<TableT>, kInPlaceDistance<TableT>>(
        s, codes, weights, group, group_end, begin, end,
        group == 0 ? nullptr : y_block, s.width, y_block, s.width,
        group_end == s.tables ? bias : nullptr, table_row);
  }
}

// ScatterBucketsGeneric for one full column block: each row's block is
// summed in 8 registers and stored once.
__attribute__((target("avx2,fma"))) void ScatterBucketsAvx2(
    const GatherShape& s, const RowBuckets& b, const float* dy,
    int64_t group_end, int64_t column, bool first, float* dtables) {
  const int64_t rows = s.table_rows;
  for (int64_t t = b.group; t < group_end; ++t) {
    const int64_t* start = b.start.data() + (t - b.group) * (rows + 1);
    const int64_t last = start[rows];
    for (int64_t r = 0; r < rows; ++r) {
      if (!first && start[r] == start[r + 1]) continue;
      float* out = dtables + (t * rows + r) * s.width + column;
      __m256 acc[8];
      for (int k = 0; k < 8; ++k) {
        acc[k] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(out + 8 * k);
      }
      for (int64_t i = start[r]; i < start[r + 1]; ++i) {
        // Fetch the dy block kPrefetchDistance look-ups later.
        if (i + kPrefetchDistance < last) {
          const char* next = reinterpret_cast<const char*>(
              dy + b.token[i + kPrefetchDistance] * s.width + column);
          for (int64_t line = 0; line < kSliceLines<float>; ++line) {
            _mm_prefetch(next + 64 * line, _MM_HINT_T0);
          }
        }
        const __m256 w = _mm256_set1_ps(b.weight[i]);
        const float* g = dy + b.token[i] * s.width + column;
        for (int k = 0; k < 8; ++k) {
          acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(g + 8 * k), acc[k]);
        }
      }
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(out + 8 * k, acc[k]);
    }
  }
}

__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// Partial dot products over one full column block of tokens [begin, end)
// and tables [group, group_end): each token's dy block is loaded once into 8
// registers. row_at(t, code) returns the first element of that row's block,
// in the tables or in a packed copy of the group's blocks.
template <typename TableT, typename RowAt>
__attribute__((target("avx2,fma"))) void DotsGroupAvx2(
    const GatherShape& s, const int32_t* codes, int64_t candidates,
    const float* dy, int64_t group, int64_t group_end, int64_t begin,
    int64_t end, int64_t column, float* dots, RowAt row_at) {
  // Look-ups of one token in this group: (table, candidate) pairs.
  const int64_t per_token = (group_end - group) * candidates;
  for (int64_t n = begin; n < end; ++n) {
    const float* dy_block = dy + n * s.width + column;
    __m256 g[8];
    for (int k = 0; k < 8; ++k) g[k] = _mm256_loadu_ps(dy_block + 8 * k);
    for (int64_t t = group; t < group_end; ++t) {
      for (int64_t c = 0; c < candidates; ++c) {
        const int64_t i = (n * s.tables + t) * candidates + c;
        const TableT* row = row_at(t, codes[i]);
        // As in the gather, fetch the row slice kPrefetchDistance
        // look-ups later.
        int64_t ahead = (t - group) * candidates + c + kPrefetchDistance;
        int64_t ahead_n = n;
        if (ahead >= per_token) {
          ahead -= per_token;
          ahead_n = n + 1;
        }
        if (ahead < per_token && ahead_n < end) {
          const int64_t ahead_t = group + ahead / candidates;
          const int32_t code =
              codes[(ahead_n * s.tables + group) * candidates + ahead];
          const char* next =
              reinterpret_cast<const char*>(row_at(ahead_t, code));
          for (int64_t line = 0; line < kSliceLines<TableT>; ++line) {
            _mm_prefetch(next + 64 * line, _MM_HINT_T0);
          }
        }
        __m256 acc0 = _mm256_mul_ps(g[0], Load8(row));
        __m256 acc1 = _mm256_mul_ps(g[1], Load8(row + 8));
        for (int k = 2; k < 8; k += 2) {
          acc0 = _mm256_fmadd_ps(g[k], Load8(row + 8 * k), acc0);
          acc1 = _mm256_fmadd_ps(g[k + 1], Load8(row + 8 * k + 8), acc1);
        }
        dots[i] += HorizontalSum(_mm256_add_ps(acc0, acc1));
      }
    }
  }
}

#endif  // LOOKUPFFN_HAVE_X86

template <typename TableT>
void RowDotsTyped(ffi::ThreadPool& pool, const GatherShape& s,
                  const int32_t* codes, int64_t candidates,
                  const TableT* tables, const float* dy, float* dots) {
  if (s.tokens == 0 || s.tables == 0) return;
  const bool avx2 = simd::Avx2Active();
  // With many tokens the table groups are packed as in the gather. A task
  // owns the dots of one (table group, token tile) and adds the column
  // blocks in order, so the sums do not depend on the thread count or on
  // the packing.
  const int64_t slice_bytes = s.table_rows * kColumnBlock * sizeof(TableT);
  const bool packed = avx2 && s.tokens >= kPackedMinTokens &&
                      slice_bytes <= kDotsPackedBytes;
  const int64_t group_size =
      packed ? std::max<int64_t>(
                   1, std::min(kDotsPackedBytes / slice_bytes, s.tables))
             : std::max<int64_t>(s.tables, 1);
  const int64_t groups = (s.tables + group_size - 1) / group_size;
  const int64_t tiles =
      packed ? std::max((s.tokens + kPackedTokenTile - 1) / kPackedTokenTile,
                        (kPackedMinTasks + groups - 1) / groups)
             : (s.tokens + kTokenTile - 1) / kTokenTile;
  const int64_t tile_tokens = (s.tokens + tiles - 1) / tiles;

  ParallelFor(pool, groups * tiles, [&](int64_t task) {
    const int64_t group = (task / tiles) * group_size;
    const int64_t group_end = std::min(group + group_size, s.tables);
    const int64_t begin = (task % tiles) * tile_tokens;
    const int64_t end = std::min(begin + tile_tokens, s.tokens);
    if (begin >= end) return;
    for (int64_t n = begin; n < end; ++n) {
      std::fill(dots + (n * s.tables + group) * candidates,
                dots + (n * s.tables + group_end) * candidates, 0.f);
    }
    AlignedVector<TableT> buffer;
    if (packed) {
      buffer.resize((group_end - group) * s.table_rows * kColumnBlock);
    }
    for (int64_t column = 0; column < s.width; column += kColumnBlock) {
      const int64_t columns = std::min(kColumnBlock, s.width - column);
#ifdef LOOKUPFFN_HAVE_X86
      if (avx2 && columns == kColumnBlock) {
        if (packed) {
          PackColumnBlock(s, tables, group, group_end, column, buffer.data());
          DotsGroupAvx2<TableT>(s, codes, candidates, dy, group, group_end,
                                begin, end, column, dots,
                                [&](int64_t t, int32_t code) {
                                  return buffer.data() +
                                         ((t - group) * s.table_rows + code) *
                                             kColumnBlock;
                                });
        } else {
          // Unpacked, the slices of kTableGroup tables stay in cache while
          // the tile's tokens read them.
          for (int64_t g = group; g < group_end; g += kTableGroup) {
            DotsGroupAvx2<TableT>(s, codes, candidates, dy, g,
                                  std::min(g + kTableGroup, group_end), begin,
                                  end, column, dots,
                                  [&](int64_t t, int32_t code) {
                                    return RowPointer(s, tables, t, code) +
                                           column;
                                  });
          }
        }
        continue;
      }
#endif
      DotsBlockGeneric(s, codes, candidates, tables, dy, group, group_end,
                       begin, end, column, columns, dots);
    }
  });
}

template <typename TableT>
void GatherRowsTyped(ffi::ThreadPool& pool, const GatherShape& s,
                     const int32_t* codes, const float* weights,
                     const TableT* tables, const float* bias, float* y) {
  AdviseHugePages(y, sizeof(float) * s.tokens * s.width);
  if (s.tables == 0) {
    // The sum of no rows is zero, and with a bias 0.f + bias, as in every
    // other case.
    std::memset(y, 0, sizeof(float) * s.tokens * s.width);
    if (bias != nullptr) {
      for (int64_t n = 0; n < s.tokens; ++n) {
        for (int64_t i = 0; i < s.width; ++i) y[n * s.width + i] += bias[i];
      }
    }
    return;
  }
  const int64_t column_blocks = (s.width + kColumnBlock - 1) / kColumnBlock;
  const bool avx2 = simd::Avx2Active();
#ifdef LOOKUPFFN_HAVE_X86
  const int64_t slice_bytes = s.table_rows * kColumnBlock * sizeof(TableT);
  const int64_t packed_bytes = GatherPackedBytes();
  if (avx2 && s.tokens >= kPackedMinTokens && slice_bytes <= packed_bytes) {
    const int64_t group_size = std::min(packed_bytes / slice_bytes, s.tables);
    const int64_t tiles = std::max(
        (s.tokens + kPackedTokenTile - 1) / kPackedTokenTile,
        (kPackedMinTasks + column_blocks - 1) / column_blocks);
    const int64_t tile_tokens = (s.tokens + tiles - 1) / tiles;
    // Consecutive tasks share a token tile, so its codes and weights can
    // stay in L3 while the tile's column blocks are gathered. Ordered by
    // column block, the 32768-token float32 gather took 230 to 246 ms on
    // the 2-core AMD EPYC (Zen 4), and 164 to 168 ms in this order. An
    // estimate of why: between two reads of a tile's 4 MiB of codes and
    // weights, the other seven tiles read 28 MiB, most of the 32 MiB L3.
    ParallelFor(pool, column_blocks * tiles, [&](int64_t task) {
      const int64_t column = (task % column_blocks) * kColumnBlock;
      const int64_t columns = std::min(kColumnBlock, s.width - column);
      const int64_t begin = (task / column_blocks) * tile_tokens;
      const int64_t end = std::min(begin + tile_tokens, s.tokens);
      if (begin >= end) return;
      if (columns < kColumnBlock) {
        GatherBlockGeneric(s, codes, weights, tables, bias, begin, end,
                           column, columns, y);
        return;
      }
      // The packed slices and the tile's output blocks, kept contiguous:
      // the blocks of consecutive tokens in y are s.width floats apart and
      // would fall into a fraction of the cache sets. The first group
      // starts from zeros and the last one adds the bias and writes y.
      thread_local AlignedVector<TableT> packed;
      thread_local AlignedVector<float> partial;
      packed.resize(group_size * s.table_rows * kColumnBlock);
      if (group_size < s.tables) partial.resize((end - begin) * kColumnBlock);
      for (int64_t group = 0; group < s.tables; group += group_size) {
        const int64_t group_end = std::min(group + group_size, s.tables);
        PackColumnBlock(s, tables, group, group_end, column, packed.data());
        auto packed_row = [&](int64_t t, int32_t code) {
          return packed.data() +
                 ((t - group) * s.table_rows + code) * kColumnBlock;
        };
        const bool last = group_end == s.tables;
        GatherGroup<TableT, _MM_HINT_T0, kPrefetchDistance>(
            s, codes, weights, group, group_end, begin, end,
            group == 0 ? nullptr : partial.data(), kColumnBlock,
            last ? y + begin * s.width + column : partial.data(),
            last ? s.width : kColumnBlock,
            last && bias != nullptr ? bias + column : nullptr, packed_row);
      }
    });
    return;
  }
#endif
#ifdef LOOKUPFFN_HAVE_X86
  if (UseRowChunks(s, s.tables * s.table_rows * s.width *
                           static_cast<int64_t>(sizeof(TableT)))) {
    // Each task takes one row chunk of a token tile. Columns past the last
    // full column block go to GatherBlockGeneric.
    const int64_t chunks = (s.width + kRowChunk - 1) / kRowChunk;
    const int64_t tiles = (s.tokens + kRowTokenTile - 1) / kRowTokenTile;
    ParallelFor(pool, chunks * tiles, [&](int64_t task) {
      const int64_t column = (task % chunks) * kRowChunk;
      const int64_t columns = std::min(kRowChunk, s.width - column);
      const int64_t full = columns / kColumnBlock * kColumnBlock;
      const int64_t begin = (task / chunks) * kRowTokenTile;
      const int64_t end = std::min(begin + kRowTokenTile, s.tokens);
      if (full > 0) {
        GatherRowChunk(s, codes, weights, tables, bias, begin, end, column,
                       full, y);
      }
      if (full < columns) {
        GatherBlockGeneric(s, codes, weights, tables, bias, begin, end,
                           column + full, columns - full, y);
      }
    });
    return;
  }
#endif
  const int64_t token_tiles = (s.tokens + kTokenTile - 1) / kTokenTile;

  // Consecutive tasks share a column block, so threads running at the same
  // time read the same table slices.
  ParallelFor(pool, column_blocks * token_tiles, [&](int64_t task) {
    const int64_t column = (task / token_tiles) * kColumnBlock;
    const int64_t columns = std::min(kColumnBlock, s.width - column);
    const int64_t begin = (task % token_tiles) * kTokenTile;
    const int64_t end = std::min(begin + kTokenTile, s.tokens);
#ifdef LOOKUPFFN_HAVE_X86
    if (avx2 && columns == kColumnBlock) {
      GatherBlockInPlace(s, codes, weights, tables,
                         bias != nullptr ? bias + column : nullptr, begin,
                         end, column, y);
      return;
    }
#endif
    GatherBlockGeneric(s, codes, weights, tables, bias, begin, end, column,
                       columns, y);
  });
}

}  // namespace

void GatherRows(ffi::ThreadPool& pool, const GatherShape& s,
                const int32_t* codes, const float* weights, TableView tables,
                float* y, const float* bias) {
  if (tables.bf16) {
    GatherRowsTyped(pool, s, codes, weights,
                    static_cast<const uint16_t*>(tables.data), bias, y);
  } else {
    GatherRowsTyped(pool, s, codes, weights,
                    static_cast<const float*>(tables.data), bias, y);
  }
}

void ScatterRows(ffi::ThreadPool& pool, const GatherShape& s,
                 const int32_t* codes, const float* weights, const float* dy,
                 float* dtables) {
  AdviseHugePages(dtables,
                  sizeof(float) * s.tables * s.table_rows * s.width);
  if (s.tables == 0 || s.table_rows == 0 || s.width == 0) return;
  // A task owns the rows of a table group for a range of column blocks. It
  // takes kScatterTokenTile tokens at a time: it sorts their look-ups by
  // row, then adds each row's look-ups in registers and stores the row once
  // per tile. The dy rows of a tile stay in cache while the rows read
  // them. Every element is one FMA chain over the tokens in order, from
  // zero, whatever the tiling and grouping.
  const int64_t column_blocks = (s.width + kColumnBlock - 1) / kColumnBlock;
  const int64_t block_bytes = s.table_rows * kColumnBlock * sizeof(float);
  const int64_t max_group =
      std::clamp<int64_t>(kScatterGroupBytes / block_bytes, 1, s.tables);
  const int64_t groups = std::max(
      (s.tables + max_group - 1) / max_group,
      std::min(s.tables, (kScatterTasks + column_blocks - 1) / column_blocks));
  const int64_t group_size = (s.tables + groups - 1) / groups;
  const int64_t chunks =
      std::min(column_blocks, (kScatterTasks + groups - 1) / groups);
  const int64_t chunk_blocks = (column_blocks + chunks - 1) / chunks;
  const bool avx2 = simd::Avx2Active();

  ParallelFor(pool, groups * chunks, [&](int64_t task) {
    const int64_t group = (task / chunks) * group_size;
    const int64_t group_end = std::min(group + group_size, s.tables);
    const int64_t first_block = (task % chunks) * chunk_blocks;
    const int64_t end_block =
        std::min(first_block + chunk_blocks, column_blocks);
    if (group >= group_end || first_block >= end_block) return;
    RowBuckets buckets;
    // At least one tile, so that rows are zeroed when there are no tokens.
    for (int64_t begin = 0; begin == 0 || begin < s.tokens;
         begin += kScatterTokenTile) {
      const int64_t end = std::min(begin + kScatterTokenTile, s.tokens);
      BucketByRow(s, codes, weights, group, group_end, begin, end, &buckets);
      const bool first = begin == 0;
      for (int64_t block = first_block; block < end_block; ++block) {
        const int64_t column = block * kColumnBlock;
        const int64_t columns = std::min(kColumnBlock, s.width - column);
#ifdef LOOKUPFFN_HAVE_X86
        if (avx2 && columns == kColumnBlock) {
          ScatterBucketsAvx2(s, buckets, dy, group_end, column, first,
                             dtables);
          continue;
        }
#endif
        ScatterBucketsGeneric(s, buckets, dy, group_end, column, columns,
                              first, dtables);
      }
    }
  });
}

void RowDots(ffi::ThreadPool& pool, const GatherShape& s,
             const int32_t* codes, int64_t candidates, TableView tables,
             const float* dy, float* dots) {
  if (tables.bf16) {
    RowDotsTyped(pool, s, codes, candidates,
                 static_cast<const uint16_t*>(tables.data), dy, dots);
  } else {
    RowDotsTyped(pool, s, codes, candidates,
                 static_cast<const float*>(tables.data), dy, dots);
  }
}

}  // namespace lookupffn
