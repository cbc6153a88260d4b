// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// XLA FFI handlers of the LookupFFN ops on CPU. Each is registered with
// jax.ffi.register_ffi_target under the name in module.cc.

#ifndef LOOKUPFFN_XLA_EXT_LOOKUP_H_
#define LOOKUPFFN_XLA_EXT_LOOKUP_H_

#include <cstdint>

#include "hash.h"
#include "xla/ffi/api/ffi.h"

namespace lookupffn {

// Values of the "estimator" attribute of LookupBwdHandler, in the order of
// lookupffn_jax.lookup.ESTIMATORS.
inline constexpr int32_t kScoreEstimator = 0;
inline constexpr int32_t kStraightThroughEstimator = 1;

// (codes i32[..., N, T], weights f32[..., N, T], tables f32[..., T, S, D])
//   -> y f32[..., N, D]
XLA_FFI_DECLARE_HANDLER_SYMBOL(WeightedGatherFwdHandler);

// The same plus bias f32[..., D] on every output row:
// (codes, weights, tables, bias) -> y f32[..., N, D]
XLA_FFI_DECLARE_HANDLER_SYMBOL(WeightedGatherBiasFwdHandler);

// (codes, weights, tables, dy f32[..., N, D])
//   -> (dweights f32[..., N, T], dtables f32[..., T, S, D])
XLA_FFI_DECLARE_HANDLER_SYMBOL(WeightedGatherBwdHandler);

// (z f32[..., N, T, K], tables f32[..., T, 2^K, D])
//   -> (y f32[..., N, D], codes i32[..., N, T], scores f32[..., N, T])
XLA_FFI_DECLARE_HANDLER_SYMBOL(LookupFwdHandler);

// (z, tables, codes, scores, dy f32[..., N, D]; attribute estimator)
//   -> (dz f32[..., N, T, K], dtables f32[..., T, 2^K, D])
XLA_FFI_DECLARE_HANDLER_SYMBOL(LookupBwdHandler);

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_LOOKUP_H_
