# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Hash codes, the weighted table look-up, and the fused LookupFFN op.

Each op has two implementations with the same values and gradients:

* "ffi": XLA FFI custom calls from `xla_ext/lookup.cc`, registered for CPU.
* "reference": the pure-`jnp` code in `lookupffn_jax.reference`.

`implementation="auto"` picks between them at lowering time with
`jax.lax.platform_dependent`, so a program lowered for GPU or TPU contains only
the reference and never names the CPU custom-call targets.
"""

import functools
import math
import jax
import jax.numpy as jnp
import numpy as np

from lookupffn_jax import _extension
from lookupffn_jax import reference

ESTIMATORS = ("score", "straight_through")
IMPLEMENTATIONS = ("auto", "ffi", "reference")
MAX_CODE_LENGTH = 16

# Every FFI call accepts leading batch dimensions of size 1 or B on each
# operand, so "expand_dims" maps `vmap` onto one call without copying
# unbatched tables.
_VMAP_METHOD = "expand_dims"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_float32(name: str, x: jax.Array) -> None:
  if x.dtype != jnp.float32:
    raise ValueError(
        f"{name} must have dtype float32, got {x.dtype}; cast it with"
        f" {name}.astype(jnp.float32)"
    )


TABLE_DTYPES = (jnp.float32, jnp.bfloat16)


def check_table_dtype(tables: jax.Array) -> None:
  """Raises ValueError unless `tables` are float32 or bfloat16."""
  if tables.dtype not in TABLE_DTYPES:
    raise ValueError(
        f"tables must have dtype float32 or bfloat16, got {tables.dtype}; cast"
        " them with tables.astype(jnp.float32)"
    )


def check_table_rows(table_size: int, code_length: int) -> None:
  """Raises ValueError unless tables of `table_size` rows fit K-bit codes."""
  if table_size != 2**code_length:
    raise ValueError(
        f"tables have {table_size} rows but code length {code_length} needs"
        f" 2**{code_length} = {2**code_length}"
    )


def _as_int32_codes(op_name: str, codes: jax.Array, table_size: int) -> jax.Array:
  """Casts integer codes to int32 without letting a wide value wrap into range.

  Codes of a dtype wider than int32 are range-checked here, before the cast,
  and int32 codes later by the kernel or the reference path.
  """
  if not jnp.issubdtype(codes.dtype, jnp.integer):
    raise ValueError(
        f"codes must have an integer dtype, got {codes.dtype}; pass the int32"
        " codes returned by hash_codes"
    )
  if codes.dtype == jnp.int32:
    return codes
  info = jnp.iinfo(codes.dtype)
  if info.min >= jnp.iinfo(jnp.int32).min and info.max <= jnp.iinfo(jnp.int32).max:
    # int8, int16, uint8 and uint16 fit int32 exactly. Compared in their own
    # dtype, a bound such as 256 would not even be representable.
    return codes.astype(jnp.int32)
  _check_codes_in_range(op_name, codes, table_size)
  # Values outside int32 would wrap on a plain cast, so they are clipped to
  # the nearest out-of-range value first and still fail the range check.
  # An unsigned dtype has no -1 and needs no lower bound.
  clipped = jnp.clip(codes, None if info.min == 0 else -1, table_size)
  return clipped.astype(jnp.int32)


def _check_host_codes(op_name: str, codes, table_size: int) -> None:
  """Raises ValueError for host codes out of range before JAX converts them.

  With 64-bit types disabled, jnp.asarray turns a NumPy int64 array into
  int32 and wraps its values, so 2**32 + 3 would read row 3. The first code
  out of range is reported as the kernels report it.
  """
  if isinstance(codes, jax.Array) or jax.config.jax_enable_x64:
    return
  host = np.asarray(codes)
  if host.dtype.kind not in "iu" or host.size == 0 or np.can_cast(host.dtype, np.int32):
    return
  bad = (host < 0) | (host >= table_size)
  if not bad.any():
    return
  flat = int(np.argmax(bad.reshape(-1)))
  num_tables = max(host.shape[-1], 1) if host.ndim else 1
  _raise_if_out_of_range(
      op_name, table_size, True, host.reshape(-1)[flat],
      flat // num_tables, flat % num_tables,
  )


def _raise_if_out_of_range(op_name, table_size, any_bad, bad_code, token, table):
  if any_bad:
    raise ValueError(
        f"{op_name}: code {int(bad_code)} at token {int(token)}, table"
        f" {int(table)} is out of range for tables with {table_size} rows;"
        f" codes must be in [0, {table_size})"
    )


def _check_codes_in_range(op_name: str, codes_NxT: jax.Array, table_size: int):
  """Raises at run time, from a host callback, if any code is out of range."""
  if codes_NxT.size == 0:
    return
  bad_NxT = (codes_NxT < 0) | (codes_NxT >= table_size)
  first = jnp.argmax(bad_NxT.reshape(-1))
  num_tables = max(codes_NxT.shape[-1], 1)
  jax.debug.callback(
      functools.partial(_raise_if_out_of_range, op_name, table_size),
      jnp.any(bad_NxT),
      codes_NxT.reshape(-1)[first],
      first // num_tables,
      first % num_tables,
  )


# ---------------------------------------------------------------------------
# hash_codes


def hash_codes(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Hashes projections to table codes and their differentiable scores.

  Bit j of a code is 1 where `z[..., j] > 0`, most significant bit first, so
  z = [-0.7, 0.3, 1.5, -2.25] gives code 0b0110 = 6. The score is
  `(sum_j |z_j|) * prod_j sigmoid(2 |z_j|)`, computed in log space.

  Args:
    z: floating `[..., T, K]` projections, K (code length) from 1 to 30.

  Returns:
    `(codes, scores)`: int32 codes `[..., T]` and scores `[..., T]` of
    z's dtype. Only the scores carry a gradient.
  """
  z = jnp.asarray(z)
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise ValueError(f"z must have a floating dtype, got {z.dtype}")
  if z.ndim < 1 or not 1 <= z.shape[-1] <= 30:
    raise ValueError(
        f"z must have shape [..., T, K] with code length K from 1 to 30, got"
        f" shape {z.shape}"
    )
  return reference.hash_codes(z)


# ---------------------------------------------------------------------------
# weighted_gather


def _ffi_weighted_gather_fwd_call(codes_NxT, weights_NxT, tables_TxSxD):
  out_shape = codes_NxT.shape[:-1] + tables_TxSxD.shape[-1:]
  return jax.ffi.ffi_call(
      "lookupffn_weighted_gather_fwd",
      jax.ShapeDtypeStruct(out_shape, jnp.float32),
      vmap_method=_VMAP_METHOD,
  )(codes_NxT, weights_NxT, tables_TxSxD)


@jax.custom_vjp
def _ffi_weighted_gather(codes_NxT, weights_NxT, tables_TxSxD):
  return _ffi_weighted_gather_fwd_call(codes_NxT, weights_NxT, tables_TxSxD)


def _ffi_weighted_gather_fwd(codes_NxT, weights_NxT, tables_TxSxD):
  y_NxD = _ffi_weighted_gather_fwd_call(codes_NxT, weights_NxT, tables_TxSxD)
  return y_NxD, (codes_NxT, weights_NxT, tables_TxSxD)


def _ffi_weighted_gather_bwd(residuals, dy_NxD):
  codes_NxT, weights_NxT, tables_TxSxD = residuals
  dweights, dtables_f32 = jax.ffi.ffi_call(
      "lookupffn_weighted_gather_bwd",
      (
          jax.ShapeDtypeStruct(weights_NxT.shape, jnp.float32),
          jax.ShapeDtypeStruct(tables_TxSxD.shape, jnp.float32),
      ),
      vmap_method=_VMAP_METHOD,
  )(codes_NxT, weights_NxT, tables_TxSxD, dy_NxD)
  # The kernel accumulates in float32 and the cotangent takes the tables' dtype.
  return None, dweights, dtables_f32.astype(tables_TxSxD.dtype)


_ffi_weighted_gather.defvjp(_ffi_weighted_gather_fwd, _ffi_weighted_gather_bwd)


def _reference_weighted_gather(codes_NxT, weights_NxT, tables_TxSxD):
  _check_codes_in_range("weighted_gather", codes_NxT, tables_TxSxD.shape[1])
  return reference.weighted_gather(codes_NxT, weights_NxT, tables_TxSxD)


def _ffi_weighted_gather_with_bias(codes_NxT, weights_NxT, tables_TxSxD, bias_D):
  out_shape = codes_NxT.shape[:-1] + tables_TxSxD.shape[-1:]
  return jax.ffi.ffi_call(
      "lookupffn_weighted_gather_bias_fwd",
      jax.ShapeDtypeStruct(out_shape, jnp.float32),
      vmap_method=_VMAP_METHOD,
  )(codes_NxT, weights_NxT, tables_TxSxD, bias_D)


def weighted_gather_of_hash(
    codes_NxT: jax.Array,
    weights_NxT: jax.Array,
    tables_TxSxD: jax.Array,
    implementation: str,
    bias_D: jax.Array | None = None,
) -> jax.Array:
  """Runs `weighted_gather` on `[N, T]` codes from a hash, which are in range.

  It skips the host callback that checks the codes on the reference path.
  With implementation="auto" that callback is traced into the CPU program
  as well and costs about 0.1 ms per call (measured at N = 1 on the 2-core
  development machine). A float32 `bias_D` is added to every output row, in
  the kernel on the "ffi" path, which then has no gradient: `bh4_lookup`
  calls it only where no gradient is taken.
  """
  if bias_D is None:
    return _extension.dispatch(
        implementation,
        _ffi_weighted_gather,
        reference.weighted_gather,
        codes_NxT,
        weights_NxT,
        tables_TxSxD,
    )
  return _extension.dispatch(
      implementation,
      _ffi_weighted_gather_with_bias,
      lambda *args: reference.weighted_gather(*args[:3]) + args[3],
      codes_NxT,
      weights_NxT,
      tables_TxSxD,
      bias_D,
  )


def weighted_gather(
    codes: jax.Array,
    weights: jax.Array,
    tables: jax.Array,
    *,
    implementation: str = "auto",
) -> jax.Array:
  """Sums weighted table rows: `y[n] = sum_t weights[n, t] * tables[t, codes[n, t]]`.

  Differentiable in `weights` and `tables`; the table gradient sums the
  contributions of tokens that share a row. An out-of-range code raises a
  runtime error that names the op and the value.

  NOTE: the reference path checks the codes in a host callback, and with
  implementation="auto" that callback runs on CPU too, about 0.1 ms per
  call. On CPU, implementation="ffi" checks them in the kernel alone.

  Args:
    codes: integer `[..., T]` row indices in `[0, S)`, of any integer dtype.
      A code out of range raises an error, however wide its dtype.
    weights: float32 `[..., T]`.
    tables: float32 or bfloat16 `[T, S, D]`; bfloat16 rows are widened to
      float32 before they are added.
    implementation: "auto", "ffi" or "reference" (see the module docstring).

  Returns:
    float32 `[..., D]`.
  """
  _check_choice("implementation", implementation, IMPLEMENTATIONS)
  weights, tables = jnp.asarray(weights), jnp.asarray(tables)
  _check_float32("weights", weights)
  check_table_dtype(tables)
  if tables.ndim != 3:
    raise ValueError(f"tables must have shape [T, S, D], got {tables.shape}")
  num_tables, table_size, width = tables.shape
  _check_host_codes("weighted_gather", codes, table_size)
  codes = jnp.asarray(codes)
  if codes.ndim < 1 or codes.shape != weights.shape or codes.shape[-1] != num_tables:
    raise ValueError(
        f"codes {codes.shape} and weights {weights.shape} must both have shape"
        f" [..., T] with T = {num_tables} tables"
    )
  codes = _as_int32_codes("weighted_gather", codes, table_size)

  batch_shape = codes.shape[:-1]
  num_tokens = math.prod(batch_shape)
  codes_NxT = codes.reshape(num_tokens, num_tables)
  weights_NxT = weights.reshape(num_tokens, num_tables)
  y_NxD = _extension.dispatch(
      implementation,
      _ffi_weighted_gather,
      _reference_weighted_gather,
      codes_NxT,
      weights_NxT,
      tables,
  )
  return y_NxD.reshape(batch_shape + (width,))


# ---------------------------------------------------------------------------
# lookup


def _ffi_lookup_fwd_call(z_NxTxK, tables_TxSxD):
  leading = z_NxTxK.shape[:-2]
  return jax.ffi.ffi_call(
      "lookupffn_lookup_fwd",
      (
          jax.ShapeDtypeStruct(leading + tables_TxSxD.shape[-1:], jnp.float32),
          jax.ShapeDtypeStruct(z_NxTxK.shape[:-1], jnp.int32),
          jax.ShapeDtypeStruct(z_NxTxK.shape[:-1], jnp.float32),
      ),
      vmap_method=_VMAP_METHOD,
  )(z_NxTxK, tables_TxSxD)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _ffi_lookup(z_NxTxK, tables_TxSxD, estimator):
  del estimator  # Only the backward depends on it.
  y_NxD, _, _ = _ffi_lookup_fwd_call(z_NxTxK, tables_TxSxD)
  return y_NxD


def _ffi_lookup_fwd(z_NxTxK, tables_TxSxD, estimator):
  del estimator
  y_NxD, codes_NxT, scores_NxT = _ffi_lookup_fwd_call(z_NxTxK, tables_TxSxD)
  return y_NxD, (z_NxTxK, tables_TxSxD, codes_NxT, scores_NxT)


def _ffi_lookup_bwd(estimator, residuals, dy_NxD):
  z_NxTxK, tables_TxSxD, codes_NxT, scores_NxT = residuals
  dz, dtables_f32 = jax.ffi.ffi_call(
      "lookupffn_lookup_bwd",
      (
          jax.ShapeDtypeStruct(z_NxTxK.shape, jnp.float32),
          jax.ShapeDtypeStruct(tables_TxSxD.shape, jnp.float32),
      ),
      vmap_method=_VMAP_METHOD,
  )(
      z_NxTxK,
      tables_TxSxD,
      codes_NxT,
      scores_NxT,
      dy_NxD,
      estimator=np.int32(ESTIMATORS.index(estimator)),
  )
  return dz, dtables_f32.astype(tables_TxSxD.dtype)


_ffi_lookup.defvjp(_ffi_lookup_fwd, _ffi_lookup_bwd)


def lookup(
    z: jax.Array,
    tables: jax.Array,
    *,
    estimator: str = "score",
    implementation: str = "auto",
) -> jax.Array:
  """Looks up one row per table by the sign code of `z` and sums them, weighted by score.

  Per token and table t, with code c_t and score_t from `hash_codes(z)`:
  `y = sum_t score_t * tables[t, c_t]`. The forward pass is exact; the
  estimator only changes the gradient with respect to `z`:

  * "score" (default, as in the published PyTorch code): the codes are held
    fixed and z gets its gradient through the scores alone.
  * "straight_through": z gets the gradient of the relaxed surrogate

        y~_t = sum_{s in {s*} + N1(s*)} <z, s> q(s) tables[t, code(s)]

    over the top code s* = sign(z) and its K one-bit neighbours, where
    q(s) = exp(<z, s>) / sum_s' exp(<z, s'>); for the neighbour that flips
    bit j, <z, s> = sum|z| - 2|z_j| and q(s) = q(s*) exp(-2|z_j|). This lets
    the loss move z across a bit boundary, at the cost of K extra row reads
    per token and table in the backward pass.

  Both estimators give each table the same gradient, `score_t * dy` at row
  c_t, summed over tokens.

  Args:
    z: float32 `[..., T, K]` projections, K (code length) from 1 to 16.
    tables: float32 or bfloat16 `[T, 2**K, D]`. bfloat16 halves the bytes
      read per row; the sum is still accumulated in float32.
    estimator: "score" or "straight_through".
    implementation: "auto", "ffi" or "reference" (see the module docstring).

  Returns:
    float32 `[..., D]`.
  """
  _check_choice("estimator", estimator, ESTIMATORS)
  _check_choice("implementation", implementation, IMPLEMENTATIONS)
  z, tables = jnp.asarray(z), jnp.asarray(tables)
  _check_float32("z", z)
  check_table_dtype(tables)
  if tables.ndim != 3:
    raise ValueError(f"tables must have shape [T, S, D], got {tables.shape}")
  num_tables, table_size, width = tables.shape
  if z.ndim < 2 or z.shape[-2] != num_tables:
    raise ValueError(
        f"z must have shape [..., T, K] with T = {num_tables} tables, got {z.shape}"
    )
  code_length = z.shape[-1]
  if not 1 <= code_length <= MAX_CODE_LENGTH:
    raise ValueError(
        f"code length K = z.shape[-1] must be from 1 to {MAX_CODE_LENGTH}, got"
        f" {code_length}"
    )
  check_table_rows(table_size, code_length)

  batch_shape = z.shape[:-2]
  z_NxTxK = z.reshape(math.prod(batch_shape), num_tables, code_length)
  y_NxD = _extension.dispatch(
      implementation,
      lambda z, tables: _ffi_lookup(z, tables, estimator),
      functools.partial(reference.lookup, estimator=estimator),
      z_NxTxK,
      tables,
  )
  return y_NxD.reshape(batch_shape + (width,))
