# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""BH4: a projection built from block-diagonal matrices and Hadamard transforms.

BH4 replaces a dense `d x out_features` projection. The input is zero-padded
to D' = next power of two of d, and each of R = ceil(out_features / D')
independent repeats computes

  u = H B_4 H B_3 H B_2 H B_1 x

where every B_j is block diagonal with D' / b learned b x b blocks and H is the
orthonormal Walsh-Hadamard transform, applied in O(D' log D') by butterflies.
The repeats are concatenated and truncated to out_features.

Here B_j x is the row-vector product x @ blockdiag(kernel[r, j]), so B_j as
a column-vector matrix is the transpose of that block-diagonal matrix.

`bh4_transform` computes the repeats. Like the ops in `lookupffn_jax.lookup`
it has an "ffi" implementation, a C++ kernel from `xla_ext/bh4.cc` that keeps
a tile of tokens in cache through all factors, and a "reference" one in
`jnp`; "auto" picks the kernel on CPU for float32 inputs.
"""

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import dtypes
from flax.typing import Dtype, Initializer

from lookupffn_jax import _extension
from lookupffn_jax import reference
from lookupffn_jax.lookup import ESTIMATORS
from lookupffn_jax.lookup import MAX_CODE_LENGTH
from lookupffn_jax.lookup import check_table_dtype
from lookupffn_jax.lookup import check_table_rows
from lookupffn_jax.lookup import hash_codes
from lookupffn_jax.lookup import lookup
from lookupffn_jax.lookup import weighted_gather_of_hash

NUM_FACTORS = 4
IMPLEMENTATIONS = ("auto", "ffi", "reference")


def next_power_of_two(n: int) -> int:
  """Returns the smallest power of two that is >= n (and >= 1)."""
  return 1 << max(n - 1, 0).bit_length()


def is_power_of_two(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def _is_int(value: Any) -> bool:
  """Returns whether `value` is an integer and not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_floating(name: str, x: jax.Array) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"{name} must have a floating dtype, got {x.dtype}; cast it with"
        f" {name}.astype(jnp.float32)"
    )


def hadamard_transform(x: jax.Array) -> jax.Array:
  """Applies the orthonormal Walsh-Hadamard transform to the last axis of `x`.

  Equals `x @ H / sqrt(n)` with H the Sylvester-ordered Hadamard matrix of
  size n = x.shape[-1] (`scipy.linalg.hadamard(n)`), which is symmetric, so it
  is also `H x / sqrt(n)` for each vector. It runs log2(n) butterfly stages
  of n additions or subtractions each and never forms H.

  Args:
    x: floating `[..., n]` with n a power of two.

  Returns:
    An array with the shape and dtype of `x`.
  """
  _check_floating("x", x)
  n = x.shape[-1]
  if not is_power_of_two(n):
    raise ValueError(
        "hadamard_transform requires the size of the last axis to be a power of"
        f" two, got shape {x.shape}. Zero-pad the last axis to {next_power_of_two(n)}."
    )
  batch_shape = x.shape[:-1]

  # Stage with half-width h pairs entry i with entry i + h inside every block
  # of 2h entries: (a, b) -> (a + b, a - b).
  half_width = 1
  while half_width < n:
    pairs = x.reshape(batch_shape + (n // (2 * half_width), 2, half_width))
    first, second = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([first + second, first - second], axis=-2).reshape(x.shape)
    half_width *= 2

  return x * jnp.asarray(1.0 / math.sqrt(n), dtype=x.dtype)


def _reference_bh4_transform(x_MxD, kernel_RxFxNxBxB):
  """Computes the BH4 repeats of `x_MxD` in jnp: no truncation, mix or bias."""
  repeats, num_factors, num_blocks, block_size, _ = kernel_RxFxNxBxB.shape
  padded = num_blocks * block_size
  num_tokens, in_features = x_MxD.shape
  x_padded_MxD = jnp.pad(x_MxD, [(0, 0), (0, padded - in_features)])
  # The repeat and block axes lead, so each block multiply is one batched
  # matmul over all M tokens. XLA on CPU ran that about twice as fast as the
  # same product with the token axes first (measured on the 2-core
  # development machine).
  u_RxMxD = jnp.broadcast_to(x_padded_MxD, (repeats, num_tokens, padded))
  for factor in range(num_factors):
    u_RxNxMxB = u_RxMxD.reshape(
        repeats, num_tokens, num_blocks, block_size
    ).transpose(0, 2, 1, 3)
    u_RxNxMxB = jnp.einsum(
        "rnmi,rnio->rnmo", u_RxNxMxB, kernel_RxFxNxBxB[:, factor]
    )
    u_RxMxD = hadamard_transform(
        u_RxNxMxB.transpose(0, 2, 1, 3).reshape(repeats, num_tokens, padded)
    )
  return u_RxMxD.transpose(1, 0, 2).reshape(num_tokens, repeats * padded)


# Every FFI call accepts leading batch dimensions of size 1 or B on each
# operand, so "expand_dims" maps `vmap` onto one call.
_VMAP_METHOD = "expand_dims"


def _ffi_bh4_fwd_call(x_MxD, kernel_RxFxNxBxB):
  repeats, _, num_blocks, block_size, _ = kernel_RxFxNxBxB.shape[-5:]
  out_shape = x_MxD.shape[:-1] + (repeats * num_blocks * block_size,)
  return jax.ffi.ffi_call(
      "lookupffn_bh4_fwd",
      jax.ShapeDtypeStruct(out_shape, jnp.float32),
      vmap_method=_VMAP_METHOD,
  )(x_MxD, kernel_RxFxNxBxB)


@jax.custom_vjp
def _ffi_bh4_transform(x_MxD, kernel_RxFxNxBxB):
  return _ffi_bh4_fwd_call(x_MxD, kernel_RxFxNxBxB)


def _ffi_bh4_transform_fwd(x_MxD, kernel_RxFxNxBxB):
  u = _ffi_bh4_fwd_call(x_MxD, kernel_RxFxNxBxB)
  return u, (x_MxD, kernel_RxFxNxBxB)


def _ffi_bh4_transform_bwd(residuals, du):
  x_MxD, kernel_RxFxNxBxB = residuals
  return jax.ffi.ffi_call(
      "lookupffn_bh4_bwd",
      (
          jax.ShapeDtypeStruct(x_MxD.shape, jnp.float32),
          jax.ShapeDtypeStruct(kernel_RxFxNxBxB.shape, jnp.float32),
      ),
      vmap_method=_VMAP_METHOD,
  )(x_MxD, kernel_RxFxNxBxB, du)


_ffi_bh4_transform.defvjp(_ffi_bh4_transform_fwd, _ffi_bh4_transform_bwd)


def _check_transform_args(x, kernel, implementation, *others):
  """Validates the BH4 operands and returns the implementation to run.

  `others` are further operands that must be float32 for the kernel.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
    )
  _check_floating("x", x)
  _check_floating("kernel", kernel)
  if kernel.ndim != 5 or kernel.shape[-1] != kernel.shape[-2]:
    raise ValueError(
        "kernel must have shape [R, F, NB, b, b] of square b x b blocks, got"
        f" {kernel.shape}"
    )
  if min(kernel.shape) < 1:
    raise ValueError(
        f"every dimension of kernel must be at least 1, got {kernel.shape}"
    )
  _, _, num_blocks, block_size, _ = kernel.shape
  padded = num_blocks * block_size
  if not is_power_of_two(padded):
    raise ValueError(
        f"kernel {kernel.shape} must have NB * b a power of two, got"
        f" {num_blocks} * {block_size} = {padded}"
    )
  if x.ndim < 1 or x.shape[-1] > padded:
    raise ValueError(
        f"x must have shape [..., d] with d <= NB * b = {padded}, got {x.shape}"
    )
  operands = (x, kernel) + others
  float32 = all(a.dtype == jnp.float32 for a in operands)
  if implementation == "ffi" and not float32:
    dtypes_text = ", ".join(str(a.dtype) for a in operands)
    raise ValueError(
        f"implementation='ffi' needs float32 operands, got {dtypes_text}; cast"
        " them with .astype(jnp.float32) or pass implementation='reference'"
    )
  if implementation == "auto" and not float32:
    return "reference"
  return implementation


def bh4_transform(
    x: jax.Array, kernel: jax.Array, *, implementation: str = "auto"
) -> jax.Array:
  """Applies the BH4 repeats of `kernel` to `x`: `H B_F ... H B_1 x` per repeat.

  The input is zero-padded to D' = NB * b columns. For f = 0, 1, ..., F - 1,
  repeat r multiplies the row vector on the right by the block-diagonal
  matrix of `kernel[r, f]` (`u @ blockdiag(kernel[r, f])`) and then by the
  orthonormal Hadamard matrix. The repeats are concatenated.

  From 256 tokens per call the "ffi" forward folds the Hadamard stages
  within each block into the blocks, a pass over the kernel that saves
  log2(b) of the log2(D') butterfly stages. A row's result is the same for
  any thread count and any other rows in the call, except that rows of
  calls below and above 256 tokens may differ in the last bits.

  Args:
    x: floating `[..., d]` with d <= D'.
    kernel: floating `[R, F, NB, b, b]` blocks, NB * b a power of two.
    implementation: "auto", "ffi" or "reference". "ffi" runs the C++ kernel
      and needs float32 and CPU; "auto" uses it on CPU for float32 `x` and
      `kernel`, and the reference otherwise.

  Returns:
    `[..., R * D']` of the promoted dtype of x and kernel.
  """
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  implementation = _check_transform_args(x, kernel, implementation)
  repeats, _, num_blocks, block_size, _ = kernel.shape
  padded = num_blocks * block_size

  batch_shape = x.shape[:-1]
  x_MxD = x.reshape(math.prod(batch_shape), x.shape[-1])
  u = _extension.dispatch(
      implementation,
      _ffi_bh4_transform,
      _reference_bh4_transform,
      x_MxD,
      kernel,
  )
  return u.reshape(batch_shape + (repeats * padded,))


def _tile_columns(x_MxD, out_features):
  """Repeats the columns of `x_MxD` and cuts them to `out_features`."""
  copies = -(-out_features // x_MxD.shape[-1])
  return jnp.tile(x_MxD, (1, copies))[:, :out_features]


def _reference_bh4_projection(x_MxD, kernel_RxFxNxBxB, bias_O, mix):
  out_features = bias_O.shape[-1]
  projected = _reference_bh4_transform(x_MxD, kernel_RxFxNxBxB)[:, :out_features]
  return mix * projected + (1.0 - mix) * _tile_columns(x_MxD, out_features) + bias_O


def _ffi_bh4_projection_call(x_MxD, kernel_RxFxNxBxB, bias_O, mix):
  out_shape = x_MxD.shape[:-1] + bias_O.shape[-1:]
  return jax.ffi.ffi_call(
      "lookupffn_bh4_mix_fwd",
      jax.ShapeDtypeStruct(out_shape, jnp.float32),
      vmap_method=_VMAP_METHOD,
  )(
      x_MxD,
      kernel_RxFxNxBxB,
      bias_O,
      mix=np.float32(mix),
      rest=np.float32(1.0 - mix),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ffi_bh4_projection(x_MxD, kernel_RxFxNxBxB, bias_O, mix):
  return _ffi_bh4_projection_call(x_MxD, kernel_RxFxNxBxB, bias_O, mix)


def _ffi_bh4_projection_fwd(x_MxD, kernel_RxFxNxBxB, bias_O, mix):
  z = _ffi_bh4_projection_call(x_MxD, kernel_RxFxNxBxB, bias_O, mix)
  return z, (x_MxD, kernel_RxFxNxBxB, bias_O)


def _ffi_bh4_projection_bwd(mix, residuals, dz_MxO):
  x_MxD, kernel_RxFxNxBxB, bias_O = residuals
  num_tokens, in_features = x_MxD.shape[-2:]
  repeats, _, num_blocks, block_size, _ = kernel_RxFxNxBxB.shape[-5:]
  out_features = dz_MxO.shape[-1]
  # Under vmap the residuals and dz may have leading batch dimensions.
  lead = dz_MxO.shape[:-2]
  du = jnp.pad(
      mix * dz_MxO,
      [(0, 0)] * (dz_MxO.ndim - 1)
      + [(0, repeats * num_blocks * block_size - out_features)],
  )
  dx_MxD, dkernel = _ffi_bh4_transform_bwd((x_MxD, kernel_RxFxNxBxB), du)
  # x_tiled column c is x column c mod d, so its gradient folds dz back.
  copies = -(-out_features // in_features)
  folded = jnp.pad(
      dz_MxO,
      [(0, 0)] * (dz_MxO.ndim - 1) + [(0, copies * in_features - out_features)],
  ).reshape(lead + (num_tokens, copies, in_features))
  dx_MxD = dx_MxD + (1.0 - mix) * folded.sum(axis=-2)
  dbias = dz_MxO.sum(axis=-2)
  return dx_MxD, dkernel, dbias.reshape(bias_O.shape)


_ffi_bh4_projection.defvjp(_ffi_bh4_projection_fwd, _ffi_bh4_projection_bwd)


def _check_projection_args(x, kernel, bias, mix):
  """Validates the operands of `bh4_projection` beyond `_check_transform_args`."""
  _check_floating("bias", bias)
  if not isinstance(mix, numbers.Real) or isinstance(mix, bool) or not math.isfinite(mix):
    raise ValueError(
        f"mix must be a finite Python float, got {mix!r}; pass float(mix)"
    )
  repeats, _, num_blocks, block_size, _ = kernel.shape
  width = repeats * num_blocks * block_size
  if bias.ndim != 1 or not 1 <= bias.shape[0] <= width:
    raise ValueError(
        "bias must have shape [out_features] with 1 <= out_features <= R * D'"
        f" = {width}, got {bias.shape}"
    )
  if x.shape[-1] < 1:
    raise ValueError(f"x must have at least one feature, got shape {x.shape}")


def bh4_projection(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    *,
    mix: float,
    implementation: str = "auto",
) -> jax.Array:
  """Computes the BH4 layer: `mix * BH4(x) + (1 - mix) * x_tiled + bias`.

  BH4(x) is `bh4_transform(x, kernel)` cut to out_features = bias.shape[-1]
  columns, and x_tiled repeats `x` along its last axis, cut the same way.
  The "ffi" implementation writes the sum from the kernel's cache-resident
  tiles, so the `[..., R * D']` transform is never stored.

  Args:
    x: floating `[..., d]` with 1 <= d <= D'.
    kernel: floating `[R, F, NB, b, b]` blocks, NB * b a power of two.
    bias: floating `[out_features]` with out_features <= R * D'.
    mix: weight of BH4(x), a Python float.
    implementation: "auto", "ffi" or "reference", as for `bh4_transform`.

  Returns:
    `[..., out_features]` of the promoted dtype of x, kernel and bias.
  """
  x, kernel, bias = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias)
  implementation = _check_transform_args(x, kernel, implementation, bias)
  _check_projection_args(x, kernel, bias, mix)

  batch_shape = x.shape[:-1]
  x_MxD = x.reshape(math.prod(batch_shape), x.shape[-1])
  z = _extension.dispatch(
      implementation,
      lambda x, k, b: _ffi_bh4_projection(x, k, b, float(mix)),
      functools.partial(_reference_bh4_projection, mix=float(mix)),
      x_MxD,
      kernel,
      bias,
  )
  return z.reshape(batch_shape + bias.shape)


def _with_gradient_of(fused, unfused):
  """Returns `fused`, differentiated as `unfused`, which computes the same values.

  Without differentiation only `fused` runs. Under `jax.grad` the forward
  pass runs `unfused` and keeps its residuals for the backward pass.
  """
  fn = jax.custom_vjp(fused)
  fn.defvjp(lambda *args: jax.vjp(unfused, *args), lambda vjp, ct: vjp(ct))
  return fn


def _split_tables(z, num_tables):
  """Reshapes `[..., T * K]` projections to `[..., T, K]`."""
  return z.reshape(z.shape[:-1] + (num_tables, z.shape[-1] // num_tables))


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """Normalizes the last axis of `x` as `flax.linen.LayerNorm` does without fast variance.

  Computes `(x - mean) * (rsqrt(var + epsilon) * scale) + bias` with var the
  mean of `(x - mean)**2`, the operations of the LayerNorm that `LookupFFN`
  runs (`use_fast_variance=False`).
  """
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


def _ffi_bh4_hash_codes(x_MxD, kernel, bias_O, *norm_arrays, epsilon, mix, num_tables):
  out_shape = x_MxD.shape[:-1] + (num_tables,)
  target = "lookupffn_norm_bh4_hash" if norm_arrays else "lookupffn_bh4_hash"
  attributes = dict(mix=np.float32(mix), rest=np.float32(1.0 - mix))
  if norm_arrays:
    attributes["epsilon"] = np.float32(epsilon)
  return jax.ffi.ffi_call(
      target,
      (
          jax.ShapeDtypeStruct(out_shape, jnp.int32),
          jax.ShapeDtypeStruct(out_shape, jnp.float32),
      ),
      vmap_method=_VMAP_METHOD,
  )(x_MxD, kernel, bias_O, *norm_arrays, **attributes)


def _reference_bh4_hash_codes(x_MxD, kernel, bias_O, *norm_arrays, epsilon, mix, num_tables):
  if norm_arrays:
    x_MxD = layer_norm(x_MxD, *norm_arrays, epsilon)
  z = _reference_bh4_projection(x_MxD, kernel, bias_O, mix)
  return reference.hash_codes(_split_tables(z, num_tables))


def _check_num_tables(num_tables, out_features):
  if (
      not _is_int(num_tables)
      or num_tables < 1
      or out_features % num_tables
      or out_features // num_tables > MAX_CODE_LENGTH
  ):
    raise ValueError(
        f"num_tables must divide out_features = {out_features} into tables of"
        f" 1 to {MAX_CODE_LENGTH} projections, got {num_tables!r}"
    )


def _check_norm(norm, x, implementation):
  """Returns the arrays and epsilon of `norm`, `(scale, bias, epsilon)` or None."""
  if norm is None:
    return (), 0.0
  if not isinstance(norm, (tuple, list)) or len(norm) != 3:
    raise ValueError(f"norm must be None or (scale, bias, epsilon), got {norm!r}")
  scale, bias, epsilon = norm
  scale, bias = jnp.asarray(scale), jnp.asarray(bias)
  if scale.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
    raise ValueError(
        f"norm scale {scale.shape} and bias {bias.shape} must both have shape"
        f" [d] = {x.shape[-1:]}, the width of x"
    )
  if implementation == "ffi" and (scale.dtype, bias.dtype) != (jnp.float32,) * 2:
    raise ValueError(
        f"implementation='ffi' needs float32 norm scale and bias, got"
        f" {scale.dtype} and {bias.dtype}"
    )
  if not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not epsilon >= 0:
    raise ValueError(f"norm epsilon must be a non-negative float, got {epsilon!r}")
  return (scale, bias), float(epsilon)


def bh4_hash_codes(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    *,
    mix: float,
    num_tables: int,
    norm: tuple[jax.Array, jax.Array, float] | None = None,
    implementation: str = "auto",
) -> tuple[jax.Array, jax.Array]:
  """Hashes the BH4 layer's output: `hash_codes` of `bh4_projection`, split into tables.

  The "ffi" implementation hashes each tile of z while it is in cache, so
  the `[..., out_features]` projections are never stored. Without `norm`,
  its codes and scores are bitwise those that `lookup`'s kernel computes
  from the "ffi" `bh4_projection` output.

  Args:
    x, kernel, bias, mix, implementation: as for `bh4_projection`.
    num_tables: number of tables T. T must divide out_features into
      K = out_features / T projections per table, K from 1 to 16.
    norm: `(scale, bias, epsilon)` of a LayerNorm (see `layer_norm`) that the
      layer applies to x first, each `[d]`, or None. The "ffi" kernel
      normalizes each tile itself, so a forward pass is one kernel call.

  Returns:
    `(codes, scores)`: int32 `[..., T]` and float32 `[..., T]`. Only the
    scores carry a gradient, computed through the stored projections.
  """
  x, kernel, bias = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias)
  implementation = _check_transform_args(x, kernel, implementation, bias)
  _check_projection_args(x, kernel, bias, mix)
  _check_num_tables(num_tables, bias.shape[-1])
  norm_arrays, epsilon = _check_norm(norm, x, implementation)
  if implementation == "auto" and any(a.dtype != jnp.float32 for a in norm_arrays):
    implementation = "reference"
  mix = float(mix)

  def unfused(x, kernel, bias, *norm_arrays):
    if norm_arrays:
      x = layer_norm(x, *norm_arrays, epsilon)
    z = bh4_projection(x, kernel, bias, mix=mix, implementation=implementation)
    return hash_codes(_split_tables(z, num_tables))

  if implementation == "reference":
    return unfused(x, kernel, bias, *norm_arrays)
  batch_shape = x.shape[:-1]
  static = dict(epsilon=epsilon, mix=mix, num_tables=num_tables)

  def fused(x, kernel, bias, *norm_arrays):
    codes, scores = _extension.dispatch(
        implementation,
        functools.partial(_ffi_bh4_hash_codes, **static),
        functools.partial(_reference_bh4_hash_codes, **static),
        x.reshape(math.prod(batch_shape), x.shape[-1]),
        kernel,
        bias,
        *norm_arrays,
    )
    return (
        codes.reshape(batch_shape + (num_tables,)),
        scores.reshape(batch_shape + (num_tables,)),
    )

  return _with_gradient_of(fused, unfused)(x, kernel, bias, *norm_arrays)


def bh4_lookup(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    tables: jax.Array,
    *,
    mix: float,
    norm: tuple[jax.Array, jax.Array, float] | None = None,
    output_bias: jax.Array | None = None,
    estimator: str = "score",
    implementation: str = "auto",
) -> jax.Array:
  """Looks up `tables` with the BH4 layer's output as projections.

  Equals `lookup(bh4_projection(x, kernel, bias, mix=mix), tables)` with the
  projections split into T = tables.shape[0] tables, and has its gradient.
  Without differentiation the "ffi" implementation runs `bh4_hash_codes`
  and a weighted gather, which never store the projections.

  Args:
    x, kernel, bias, mix: as for `bh4_projection`.
    tables: float32 or bfloat16 `[T, 2**K, D]` with T * K = out_features.
    norm: as for `bh4_hash_codes`: a LayerNorm applied to x first, or None.
    output_bias: float32 `[D]` added to the result, or None. The "ffi"
      gather adds it in the kernel.
    estimator, implementation: as for `lookup`.

  Returns:
    float32 `[..., D]`.
  """
  x, kernel, bias, tables = map(jnp.asarray, (x, kernel, bias, tables))
  implementation = _check_transform_args(x, kernel, implementation, bias)
  _check_projection_args(x, kernel, bias, mix)
  if tables.ndim != 3:
    raise ValueError(f"tables must have shape [T, S, D], got {tables.shape}")
  num_tables = tables.shape[0]
  _check_num_tables(num_tables, bias.shape[-1])
  # The fused path never calls `lookup`, so its checks run here.
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  check_table_dtype(tables)
  check_table_rows(tables.shape[1], bias.shape[-1] // num_tables)
  norm_arrays, epsilon = _check_norm(norm, x, implementation)
  mix = float(mix)
  # The optional arrays follow x, kernel, bias and tables: the output bias,
  # then the LayerNorm's scale and bias.
  extra = norm_arrays
  if output_bias is not None:
    output_bias = jnp.asarray(output_bias)
    if output_bias.shape != tables.shape[-1:] or output_bias.dtype != jnp.float32:
      raise ValueError(
          f"output_bias must be float32 [D] = {tables.shape[-1:]}, got"
          f" {output_bias.dtype} {output_bias.shape}"
      )
    extra = (output_bias,) + norm_arrays

  def split_extra(extra):
    if output_bias is None:
      return None, extra
    return extra[0], extra[1:]

  def unfused(x, kernel, bias, tables, *extra):
    output_bias, norm_arrays = split_extra(extra)
    if norm_arrays:
      x = layer_norm(x, *norm_arrays, epsilon)
    z = bh4_projection(x, kernel, bias, mix=mix, implementation=implementation)
    y = lookup(
        _split_tables(z, num_tables),
        tables,
        estimator=estimator,
        implementation=implementation,
    )
    return y if output_bias is None else y + output_bias

  if implementation == "reference":
    return unfused(x, kernel, bias, tables, *extra)

  def fused(x, kernel, bias, tables, *extra):
    output_bias, norm_arrays = split_extra(extra)
    norm_now = (*norm_arrays, epsilon) if norm_arrays else None
    codes, scores = bh4_hash_codes(
        x,
        kernel,
        bias,
        mix=mix,
        num_tables=num_tables,
        norm=norm_now,
        implementation=implementation,
    )
    lead = codes.shape[:-1]
    y = weighted_gather_of_hash(
        codes.reshape(-1, num_tables),
        scores.reshape(-1, num_tables),
        tables,
        implementation,
        output_bias,
    )
    return y.reshape(lead + tables.shape[-1:])

  return _with_gradient_of(fused, unfused)(x, kernel, bias, tables, *extra)


def _householder_orthogonal(gaussian: jax.Array) -> jax.Array:
  """Returns the Q of the QR decomposition of each trailing square matrix.

  Q is scaled column by column so that R has a positive diagonal, which
  makes Q uniform on the orthogonal group (Haar) when the input is standard
  normal. The decomposition is Householder's, in jnp: b reflections, each
  an O(b^2) update, all under one `fori_loop`.
  """
  size = gaussian.shape[-1]
  rows = jnp.arange(size)

  def reflect(k, carry):
    r, q = carry
    # The reflection maps column k of r, from row k down, onto alpha e_k.
    x = jnp.where(rows >= k, r[..., :, k], 0.0)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    x_k = jnp.take(x, k, axis=-1)[..., None]
    alpha = -jnp.where(x_k >= 0, 1.0, -1.0) * norm
    v = x - alpha * (rows == k)
    v_norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
    v = v / jnp.where(v_norm > 0, v_norm, 1.0)
    r = r - 2.0 * v[..., :, None] * jnp.einsum("...i,...ij->...j", v, r)[..., None, :]
    q = q - 2.0 * jnp.einsum("...ij,...j->...i", q, v)[..., :, None] * v[..., None, :]
    return r, q

  identity = jnp.broadcast_to(jnp.eye(size, dtype=gaussian.dtype), gaussian.shape)
  r, q = jax.lax.fori_loop(0, size, reflect, (gaussian, identity))
  signs = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) >= 0, 1.0, -1.0)
  return q * signs[..., None, :]


def orthogonal_blocks_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
  """Draws each trailing `[b, b]` matrix uniformly from the orthogonal group.

  An orthogonal block followed by the orthonormal Hadamard transform keeps the
  norm of every vector, so BH4 at initialisation keeps the input variance.

  The draw is the Q of a standard normal matrix, as in
  `jax.random.orthogonal`, but from a jnp Householder decomposition: on CPU
  jaxlib 0.10's LAPACK QR can deadlock when XLA runs several of its calls at
  once, as it does when a model with several BH4 layers is initialised under
  `jax.jit`.
  """
  if len(shape) < 2 or shape[-1] != shape[-2]:
    raise ValueError(f"orthogonal_blocks_init requires shape [..., b, b], got {shape}")
  # At least float32: the decomposition is not accurate in bfloat16.
  draw_dtype = jnp.promote_types(dtype, jnp.float32)
  gaussian = jax.random.normal(key, shape, draw_dtype)
  return _householder_orthogonal(gaussian).astype(dtype)


def bh4_flops(in_features: int, out_features: int, block_size: int) -> int:
  """Returns the FLOPs per token of the BH4 transform, counting 2 per multiply-add.

  With D' = next_power_of_two(in_features) and R = ceil(out_features / D'):

    R * 4 * (2 * D' * block_size + D' * log2(D'))

  The first term is the block-diagonal multiply and the second the butterfly
  additions of one Hadamard transform. The O(out_features) elementwise work of
  the normalisation, identity mix and bias is left out, as a dense count leaves
  out its bias. A dense projection costs 2 * in_features * out_features.
  """
  padded = next_power_of_two(in_features)
  repeats = -(-out_features // padded)
  per_factor = 2 * padded * block_size + padded * int(math.log2(padded))
  return repeats * NUM_FACTORS * per_factor


def bh4_param_count(in_features: int, out_features: int, block_size: int) -> int:
  """Returns the number of BH4 parameters: R * 4 * D' * block_size + out_features."""
  padded = next_power_of_two(in_features)
  repeats = -(-out_features // padded)
  return repeats * NUM_FACTORS * padded * block_size + out_features


class BH4(nn.Module):
  """Block-diagonal and Hadamard projection, mixed with the identity.

  Computes `mix * BH4(x) + (1 - mix) * x_tiled + bias`, where x_tiled repeats
  the input along its last axis and truncates it to out_features. See the
  module docstring for BH4(x).

  For input width d, D' = next_power_of_two(d) and R = ceil(out_features / D'),
  the forward pass costs `R * 4 * (2 * D' * block_size + D' * log2(D'))` FLOPs
  per token (see `bh4_flops`), against `2 * d * out_features` for a dense
  projection. For d = 512, out_features = 1024 and block_size = 64 that is
  561,152 against 1,048,576. It has `R * 4 * D' * block_size + out_features`
  parameters.

  With the default orthogonal blocks each block multiply followed by a Hadamard
  transform keeps the norm of every vector, so for mix = 1 and d = D' the
  output at initialisation has the input's variance. At a random
  initialisation BH4(x) is nearly uncorrelated with x, so with 0 < mix < 1 the
  output variance is about mix**2 + (1 - mix)**2 times that of the input
  (0.58 for mix = 0.7).

  Attributes:
    out_features: number of output features.
    block_size: side b of each square block, a power of two that is at most D'.
    mix: weight of BH4(x) against the tiled input.
    dtype: the dtype of the computation (default: inferred from input and params).
    param_dtype: the dtype of the parameters.
    kernel_init: initializer for the `[R, 4, D' / b, b, b]` blocks.
    bias_init: initializer for the bias.
    implementation: `bh4_transform` implementation, "auto", "ffi" or
      "reference". "ffi" with another compute dtype than float32 runs the
      kernel in float32 and casts its output back.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lookupffn_jax import BH4
    >>> layer = BH4(out_features=96, block_size=16)
    >>> x = jnp.ones((2, 48))
    >>> params = layer.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, params)
    {'params': {'bias': (96,), 'kernel': (2, 4, 4, 16, 16)}}
    >>> layer.apply(params, x).shape
    (2, 96)
  """

  out_features: int
  block_size: int = 64
  mix: float = 0.7
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = orthogonal_blocks_init
  bias_init: Initializer = nn.initializers.zeros_init()
  implementation: str = "auto"

  def __post_init__(self):
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(
          f"implementation must be one of {IMPLEMENTATIONS}, got"
          f" {self.implementation!r}"
      )
    if not _is_int(self.out_features) or self.out_features < 1:
      raise ValueError(
          f"out_features must be an integer of at least 1, got {self.out_features!r}"
      )
    if not _is_int(self.block_size) or not is_power_of_two(self.block_size):
      raise ValueError(
          f"block_size must be a power of two, got {self.block_size!r}"
      )
    super().__post_init__()

  @nn.compact
  def kernel_and_bias(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    """Returns the `[R, 4, D' / b, b, b]` blocks and the bias for input width d.

    Creates them at initialisation. `LookupFFN` calls this to run the
    projection fused with its look-up; `__call__` calls it too.
    """
    if not _is_int(in_features) or in_features < 1:
      raise ValueError(
          f"x must have shape [..., d] with d >= 1 features, got d = {in_features!r}"
      )
    padded = next_power_of_two(in_features)
    block_size = self.block_size
    if block_size > padded:
      raise ValueError(
          f"block_size {block_size} is larger than the padded input width"
          f" {padded} (input width {in_features}); use a block_size of at most"
          f" {padded}"
      )
    num_blocks = padded // block_size
    repeats = -(-self.out_features // padded)
    kernel = self.param(
        "kernel",
        self.kernel_init,
        (repeats, NUM_FACTORS, num_blocks, block_size, block_size),
        self.param_dtype,
    )
    bias = self.param("bias", self.bias_init, (self.out_features,), self.param_dtype)
    return kernel, bias

  def __call__(self, x: jax.Array) -> jax.Array:
    """Projects `x` of shape `[..., d]` to `[..., out_features]`."""
    if x.ndim < 1 or x.shape[-1] < 1:
      raise ValueError(
          f"x must have shape [..., d] with d >= 1 features, got {x.shape}"
      )
    kernel, bias = self.kernel_and_bias(x.shape[-1])
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.implementation == "ffi" and x.dtype != jnp.float32:
      # The kernel computes in float32, as `lookup` does for LookupFFN.
      return bh4_projection(
          x.astype(jnp.float32),
          kernel.astype(jnp.float32),
          bias.astype(jnp.float32),
          mix=self.mix,
          implementation="ffi",
      ).astype(x.dtype)
    return bh4_projection(
        x, kernel, bias, mix=self.mix, implementation=self.implementation
    )
