// Copyright 2026 The lookupffn-jax Authors.
// SPDX-License-Identifier: Apache-2.0
//
// XLA FFI handlers of the BH4 transform on CPU, registered with
// jax.ffi.register_ffi_target under the names in module.cc. The math and its
// pure-jnp oracle are lookupffn_jax.bh4.bh4_transform with
// implementation="reference".
//
// Shapes: M tokens of input width d; a kernel of R repeats, each of F
// factors, each of NB blocks of b x b; D' = NB * b, a power of two >= d.

#ifndef LOOKUPFFN_XLA_EXT_BH4_H_
#define LOOKUPFFN_XLA_EXT_BH4_H_

#include "xla/ffi/api/ffi.h"

namespace lookupffn {

// (x f32[..., M, d], kernel f32[..., R, F, NB, b, b]) -> u f32[..., M, R*D']
XLA_FFI_DECLARE_HANDLER_SYMBOL(Bh4FwdHandler);

// The BH4 layer: (x, kernel, bias f32[..., out]; attributes mix, rest)
//   -> z f32[..., M, out] = mix * u[:, :out] + rest * x_tiled + bias,
// where x_tiled repeats each row of x and is cut to out columns.
XLA_FFI_DECLARE_HANDLER_SYMBOL(Bh4MixFwdHandler);

// The BH4 layer hashed: (x, kernel, bias; attributes mix, rest)
//   -> (codes i32[..., M, T], scores f32[..., M, T]), the hash of z above
// split into T tables of out / T columns each.
XLA_FFI_DECLARE_HANDLER_SYMBOL(Bh4HashHandler);

// The same hash of LayerNorm(x): (x, kernel, bias, norm_scale f32[..., d],
// norm_bias f32[..., d]; attributes epsilon, mix, rest) -> (codes, scores).
XLA_FFI_DECLARE_HANDLER_SYMBOL(NormBh4HashHandler);

// (x, kernel, du f32[..., M, R*D'])
//   -> (dx f32[..., M, d], dkernel f32[..., R, F, NB, b, b])
XLA_FFI_DECLARE_HANDLER_SYMBOL(Bh4BwdHandler);

}  // namespace lookupffn

#endif  // LOOKUPFFN_XLA_EXT_BH4_H_
