// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// Leading batch dimensions of FFI operands. jax.vmap with
// vmap_method="expand_dims" gives every operand the same number of leading
// dimensions, each of size 1 (not mapped) or B; a handler loops over the
// broadcast batch and reads each operand at its own offset.

#ifndef LOOKUPFFN_XLA_EXT_BATCH_H_
#define LOOKUPFFN_XLA_EXT_BATCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace lookupffn {

using Dims = xla::ffi::Span<const int64_t>;

inline std::string ShapeString(Dims dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims[i]);
  }
  return out + "]";
}

inline int64_t Product(Dims dims, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= dims[i];
  return p;
}

// Leading batch dimensions shared by all operands of one call. Operand i has
// `base_rank` trailing dimensions; its batch dimensions are each 1
// (broadcast) or equal to the largest size among the operands.
class BatchIndexer {
 public:
  xla::ffi::Error Init(const char* op, const std::vector<Dims>& dims,
                  const std::vector<size_t>& base_ranks,
                  const std::vector<const char*>& names) {
    if (dims.empty()) return xla::ffi::Error::Success();
    if (dims[0].size() < base_ranks[0]) {
      return Invalid(op, names[0], dims[0], "has too few dimensions");
    }
    num_batch_dims_ = dims[0].size() - base_ranks[0];
    shape_.assign(num_batch_dims_, 1);
    for (size_t i = 0; i < dims.size(); ++i) {
      if (dims[i].size() != base_ranks[i] + num_batch_dims_) {
        return Invalid(op, names[i], dims[i],
                       "has a different number of batch dimensions");
      }
      for (size_t d = 0; d < num_batch_dims_; ++d) {
        if (dims[i][d] != 1) {
          if (shape_[d] != 1 && shape_[d] != dims[i][d]) {
            return Invalid(op, names[i], dims[i],
                           "has a batch dimension that does not broadcast");
          }
          shape_[d] = dims[i][d];
        }
      }
    }
    size_ = 1;
    for (int64_t d : shape_) size_ *= d;
    strides_.resize(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) {
      const int64_t element = Product(dims[i], num_batch_dims_, dims[i].size());
      strides_[i].assign(num_batch_dims_, 0);
      int64_t stride = element;
      for (size_t d = num_batch_dims_; d-- > 0;) {
        if (dims[i][d] != 1) strides_[i][d] = stride;
        stride *= dims[i][d];
      }
    }
    return xla::ffi::Error::Success();
  }

  int64_t size() const { return size_; }

  // Element offset of operand `operand` for flat batch index `b`.
  int64_t Offset(size_t operand, int64_t b) const {
    int64_t offset = 0;
    for (size_t d = num_batch_dims_; d-- > 0;) {
      offset += (b % shape_[d]) * strides_[operand][d];
      b /= shape_[d];
    }
    return offset;
  }

  // Returns true when `dims` has this batch shape followed by `base`.
  bool IsOutput(Dims dims, const std::vector<int64_t>& base) const {
    if (dims.size() != num_batch_dims_ + base.size()) return false;
    for (size_t d = 0; d < num_batch_dims_; ++d) {
      if (dims[d] != shape_[d]) return false;
    }
    for (size_t d = 0; d < base.size(); ++d) {
      if (dims[num_batch_dims_ + d] != base[d]) return false;
    }
    return true;
  }

  size_t num_batch_dims() const { return num_batch_dims_; }

 private:
  static xla::ffi::Error Invalid(const char* op, const char* name, Dims dims,
                            const char* what) {
    return xla::ffi::Error::InvalidArgument(std::string(op) + ": " + name + " " +
                                       ShapeString(dims) + " " + what);
  }

  size_t num_batch_dims_ = 0;
  std::vector<int64_t> shape_;
  std::vector<std::vector<int64_t>> strides_;
  int64_t size_ = 1;
};

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_BATCH_H_
