# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of bh4_transform: the C++ kernel against the jnp reference.

Every input is float32, so the file also runs with JAX_ENABLE_X64=1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import linen as nn

from lookupffn_jax import _extension
from lookupffn_jax import bh4
from lookupffn_jax.lookup import _ffi_lookup_fwd_call
from lookupffn_jax.lookup import lookup

ext = _extension.load()
requires_ffi = pytest.mark.skipif(
    ext is None, reason=f"extension not loaded: {_extension.load_error()!r}"
)


def _transform_inputs(seed, tokens, in_features, kernel_shape):
  kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (tokens, in_features), jnp.float32)
  # Blocks scaled to keep the values near 1 through the factors.
  kernel = jax.random.normal(kk, kernel_shape, jnp.float32)
  kernel = kernel / np.float32(np.sqrt(kernel_shape[-1]))
  repeats, _, num_blocks, block_size, _ = kernel_shape
  du = jax.random.normal(
      kg, (tokens, repeats * num_blocks * block_size), jnp.float32
  )
  return x, kernel, du


@jax.jit
def _ffi_value_and_grads(x, kernel, du):
  fn = lambda x, k: bh4.bh4_transform(x, k, implementation="ffi")
  u, vjp = jax.vjp(fn, x, kernel)
  return (u,) + vjp(du)


@jax.jit
def _reference_value_and_grads(x, kernel, du):
  fn = lambda x, k: bh4.bh4_transform(x, k, implementation="reference")
  u, vjp = jax.vjp(fn, x, kernel)
  return (u,) + vjp(du)


def _assert_close(actual, expected, rtol=2e-5):
  for name, a, e in zip(("u", "dx", "dkernel"), actual, expected):
    scale = max(float(jnp.max(jnp.abs(e), initial=0.0)), 1.0)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=name)


def _assert_same_for_thread_counts(fn, inputs):
  """Checks that `fn(*inputs)` is bitwise the same with 1, 2 and 3 threads."""
  results = []
  try:
    for threads in (1, 2, 3):
      ext.set_max_threads(threads)
      results.append(jax.device_get(fn(*inputs)))
  finally:
    ext.set_max_threads(0)
  for other in results[1:]:
    for a, b in zip(results[0], other):
      np.testing.assert_array_equal(a, b)


# (tokens, d, [R, F, NB, b, b]): the 6-row micro-kernel and its tails,
# 16- and 8-column strips, the scalar path for b < 8, widths below 8 and
# padded inputs, several tiles of 48 tokens, more than one backward step of
# 384 tokens, exactly one tile and one step, F = 1, D' = 1 and d = 0. From
# 256 tokens the forward folds the Hadamard stages within a block into the
# blocks: the cases from 260 tokens run that path for NB = 2, 4, 8 and 16.
# The butterflies run three stages per pass from D' = 64: D' = 2048 and
# 4096 add passes after the first and end with two stages or none left.
TRANSFORM_CASES = [
    (1, 512, (2, 4, 8, 64, 64)),
    (7, 500, (2, 4, 8, 64, 64)),
    (100, 64, (1, 4, 4, 16, 16)),
    (13, 40, (3, 4, 8, 8, 8)),
    (5, 3, (2, 4, 1, 4, 4)),
    (9, 16, (1, 2, 4, 4, 4)),
    (4, 2, (2, 3, 2, 1, 1)),
    (49, 128, (1, 4, 1, 128, 128)),
    (800, 32, (1, 4, 2, 16, 16)),
    (48, 16, (2, 1, 2, 8, 8)),
    (384, 8, (1, 3, 4, 2, 2)),
    (300, 512, (2, 4, 8, 64, 64)),
    (260, 256, (1, 4, 16, 16, 16)),
    (3, 1, (3, 2, 1, 1, 1)),
    (5, 0, (1, 4, 2, 8, 8)),
    (3, 2000, (1, 2, 32, 64, 64)),
    (2, 4096, (1, 1, 64, 64, 64)),
]


@requires_ffi
@pytest.mark.parametrize("tokens,in_features,kernel_shape", TRANSFORM_CASES)
def test_transform_ffi_matches_reference(tokens, in_features, kernel_shape):
  x, kernel, du = _transform_inputs(0, tokens, in_features, kernel_shape)
  _assert_close(
      _ffi_value_and_grads(x, kernel, du), _reference_value_and_grads(x, kernel, du)
  )


@requires_ffi
def test_transform_ffi_matches_dense_matrices():
  x, kernel, _ = _transform_inputs(1, 6, 12, (2, 4, 4, 4, 4))
  hadamard = scipy.linalg.hadamard(16) / 4.0
  expected = []
  for repeat in range(2):
    u = np.pad(np.asarray(x), [(0, 0), (0, 4)])
    for factor in range(4):
      u = u @ scipy.linalg.block_diag(*np.asarray(kernel[repeat, factor])) @ hadamard
    expected.append(u)
  np.testing.assert_allclose(
      bh4.bh4_transform(x, kernel, implementation="ffi"),
      np.concatenate(expected, axis=-1),
      rtol=1e-5,
      atol=1e-5,
  )


@requires_ffi
def test_transform_ffi_zero_tokens():
  x, kernel, du = _transform_inputs(0, 0, 16, (1, 4, 2, 8, 8))
  u, dx, dkernel = _ffi_value_and_grads(x, kernel, du)
  assert u.shape == (0, 16)
  assert dx.shape == (0, 16)
  np.testing.assert_array_equal(dkernel, np.zeros_like(kernel))


@requires_ffi
def test_transform_same_result_for_any_thread_count():
  inputs = _transform_inputs(2, 500, 512, (2, 4, 8, 64, 64))
  _assert_same_for_thread_counts(_ffi_value_and_grads, inputs)


@requires_ffi
@pytest.mark.parametrize("tokens", [50, 300])
def test_transform_scalar_and_avx2_kernels_agree(tokens):
  x, kernel, du = _transform_inputs(3, tokens, 256, (2, 4, 4, 64, 64))
  try:
    # The kernels check the setting on every call, so one compiled program
    # serves both.
    ext.force_scalar(True)
    scalar = jax.device_get(_ffi_value_and_grads(x, kernel, du))
  finally:
    ext.force_scalar(False)
  _assert_close(_ffi_value_and_grads(x, kernel, du), scalar)


requires_avx512 = pytest.mark.skipif(
    ext is None or not ext.avx512_supported(), reason="no AVX-512"
)


def _avx2_and_avx512(fn, inputs):
  """Returns `fn(*inputs)` with the kernels capped at AVX2, then at AVX-512."""
  results = []
  try:
    for isa in ("avx2", "avx512"):
      ext.set_max_isa(isa)
      assert ext.active_isa() == isa
      results.append(jax.device_get(fn(*inputs)))
  finally:
    ext.set_max_isa("avx512")
  return results


@requires_avx512
@pytest.mark.parametrize(
    "tokens, kernel_shape",
    [
        # Rows left over after groups of six: 1 to 5, none, and a fold of
        # the Hadamard stages from 256 tokens on.
        (1, (2, 4, 8, 64, 64)),
        (2, (1, 4, 4, 64, 64)),
        (11, (2, 4, 8, 64, 64)),
        (15, (1, 4, 2, 128, 128)),
        (12, (1, 4, 8, 32, 32)),
        (300, (1, 4, 4, 64, 64)),
        # Folded, 8 blocks: the cross-block butterflies run 16 lanes wide.
        (300, (1, 4, 8, 64, 64)),
        # Blocks of 16 take one vector of 16 per strip, blocks of 8 the
        # AVX2 kernels.
        (7, (1, 4, 8, 16, 16)),
        (9, (1, 4, 4, 8, 8)),
    ],
)
def test_transform_avx512_matches_avx2_bitwise(tokens, kernel_shape):
  # The block products run the same FMA chains with 16 or 8 lanes.
  width = kernel_shape[2] * kernel_shape[3]
  inputs = _transform_inputs(6, tokens, width, kernel_shape)
  avx2, avx512 = _avx2_and_avx512(_ffi_value_and_grads, inputs)
  for name, a, b in zip(("u", "dx", "dkernel"), avx2, avx512):
    np.testing.assert_array_equal(a, b, err_msg=name)


def test_set_max_isa_rejects_unknown_name():
  if ext is None:
    pytest.skip("extension not loaded")
  with pytest.raises(ValueError, match="isa must be 'avx512', 'avx2' or 'scalar', got 'sse'"):
    ext.set_max_isa("sse")


@requires_ffi
def test_transform_rows_independent_of_batch():
  # Row 0 alone and inside a tile of 100 rows goes through the same
  # operations in the same order, and so does it among 300 or 1000 rows,
  # where the call folds the blocks.
  x, kernel, _ = _transform_inputs(4, 1000, 512, (2, 4, 8, 64, 64))
  full = bh4.bh4_transform(x[:100], kernel, implementation="ffi")
  alone = bh4.bh4_transform(x[:1], kernel, implementation="ffi")
  np.testing.assert_array_equal(full[:1], alone)
  folded = bh4.bh4_transform(x, kernel, implementation="ffi")
  folded_fewer = bh4.bh4_transform(x[:300], kernel, implementation="ffi")
  np.testing.assert_array_equal(folded[:1], folded_fewer[:1])


@requires_ffi
def test_transform_under_vmap():
  x, kernel, du = _transform_inputs(5, 3 * 10, 24, (2, 4, 2, 16, 16))
  x, du = x.reshape(3, 10, 24), du.reshape(3, 10, 64)
  kernels = jnp.stack([kernel, 2 * kernel, -kernel])
  mapped = jax.vmap(_ffi_value_and_grads)
  expected = jax.vmap(_reference_value_and_grads)
  # Mapped over x only, then over x and the kernel.
  _assert_close(
      jax.vmap(_ffi_value_and_grads, in_axes=(0, None, 0))(x, kernel, du),
      jax.vmap(_reference_value_and_grads, in_axes=(0, None, 0))(x, kernel, du),
  )
  _assert_close(mapped(x, kernels, du), expected(x, kernels, du))


@requires_ffi
def test_transform_under_vmap_of_kernel_only():
  x, kernel, du = _transform_inputs(8, 6, 24, (2, 4, 2, 16, 16))
  kernels = jnp.stack([kernel, -2 * kernel])
  _assert_close(
      jax.vmap(_ffi_value_and_grads, in_axes=(None, 0, None))(x, kernels, du),
      jax.vmap(_reference_value_and_grads, in_axes=(None, 0, None))(x, kernels, du),
  )


@requires_ffi
def test_transform_under_nested_vmap():
  x, kernel, du = _transform_inputs(9, 2 * 3 * 4, 16, (1, 4, 2, 8, 8))
  x, du = x.reshape(2, 3, 4, 16), du.reshape(2, 3, 4, 16)
  nested = lambda fn: jax.vmap(jax.vmap(fn, in_axes=(0, None, 0)), in_axes=(0, None, 0))
  _assert_close(
      nested(_ffi_value_and_grads)(x, kernel, du),
      nested(_reference_value_and_grads)(x, kernel, du),
  )


@requires_ffi
def test_transform_jacrev():
  # jacrev maps the backward over the output cotangent alone.
  x, kernel, _ = _transform_inputs(10, 3, 8, (1, 2, 2, 4, 4))
  jacobians = {
      impl: jax.jacrev(
          lambda x, k, impl=impl: bh4.bh4_transform(x, k, implementation=impl),
          argnums=(0, 1),
      )(x, kernel)
      for impl in ("ffi", "reference")
  }
  for got, want in zip(jacobians["ffi"], jacobians["reference"]):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@requires_ffi
def test_transform_gradient_of_unmapped_kernel_sums_over_vmap():
  x, kernel, _ = _transform_inputs(6, 8, 16, (1, 4, 2, 8, 8))
  loss = lambda k, impl: jnp.sum(
      jax.vmap(lambda x: bh4.bh4_transform(x, k, implementation=impl))(
          x.reshape(2, 4, 16)
      )
      ** 2
  )
  np.testing.assert_allclose(
      jax.grad(loss)(kernel, "ffi"), jax.grad(loss)(kernel, "reference"),
      rtol=2e-5, atol=2e-5,
  )


def test_transform_auto_uses_reference_for_bfloat16():
  x, kernel, _ = _transform_inputs(7, 3, 16, (1, 4, 2, 8, 8))
  u = bh4.bh4_transform(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert u.dtype == jnp.bfloat16


@requires_ffi
def test_transform_ffi_rejects_bfloat16():
  x, kernel, _ = _transform_inputs(7, 3, 16, (1, 4, 2, 8, 8))
  with pytest.raises(ValueError, match="needs float32 operands, got bfloat16"):
    bh4.bh4_transform(x.astype(jnp.bfloat16), kernel, implementation="ffi")


@pytest.mark.parametrize(
    "x_shape,kernel_shape,message",
    [
        ((2, 8), (1, 4, 2, 4, 8), r"kernel must have shape \[R, F, NB, b, b\]"),
        ((2, 8), (4, 2, 4, 4), r"kernel must have shape"),
        ((2, 8), (1, 4, 3, 4, 4), r"NB \* b a power of two, got 3 \* 4 = 12"),
        ((2, 8), (1, 0, 2, 4, 4), r"every dimension of kernel must be at least 1"),
        ((2, 9), (1, 4, 2, 4, 4), r"d <= NB \* b = 8, got \(2, 9\)"),
    ],
)
def test_transform_rejects_bad_shapes(x_shape, kernel_shape, message):
  with pytest.raises(ValueError, match=message):
    bh4.bh4_transform(jnp.ones(x_shape), jnp.ones(kernel_shape))


@pytest.mark.parametrize("implementation", ["auto", "reference"])
def test_transform_rejects_integer_inputs(implementation):
  x, kernel = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4, 1, 4, 4), jnp.int32)
  with pytest.raises(ValueError, match="x must have a floating dtype, got int32"):
    bh4.bh4_transform(x, kernel, implementation=implementation)


def test_transform_rejects_unknown_implementation():
  with pytest.raises(ValueError, match="got 'cuda'"):
    bh4.bh4_transform(jnp.ones((1, 4)), jnp.ones((1, 4, 1, 4, 4)), implementation="cuda")


# ---------------------------------------------------------------------------
# bh4_projection: the whole layer, mix * BH4(x) + (1 - mix) * x_tiled + bias.


def _projection_inputs(seed, tokens, in_features, kernel_shape, out_features):
  x, kernel, _ = _transform_inputs(seed, tokens, in_features, kernel_shape)
  kb, kg = jax.random.split(jax.random.key(seed + 1000))
  bias = jax.random.normal(kb, (out_features,), jnp.float32)
  dz = jax.random.normal(kg, (tokens, out_features), jnp.float32)
  return x, kernel, bias, dz


def _projection_value_and_grads(implementation, mix=0.7):
  @jax.jit
  def value_and_grads(x, kernel, bias, dz):
    fn = lambda x, k, b: bh4.bh4_projection(
        x, k, b, mix=mix, implementation=implementation
    )
    z, vjp = jax.vjp(fn, x, kernel, bias)
    return (z,) + vjp(dz)

  return value_and_grads


_ffi_projection = _projection_value_and_grads("ffi")
_reference_projection = _projection_value_and_grads("reference")


def _assert_projection_close(actual, expected, rtol=2e-5):
  for name, a, e in zip(("z", "dx", "dkernel", "dbias"), actual, expected):
    scale = max(float(jnp.max(jnp.abs(e), initial=0.0)), 1.0)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=name)


# (tokens, d, kernel shape, out_features). The cases cover the LookupFFN
# shape and out_features below D' or cut inside the last repeat. They also
# cover out_features that is not a multiple of d or is below d, and a kernel
# with more repeats than out_features uses. Token counts are 1, several
# tiles of 48, and 300, where the blocks are folded.
PROJECTION_CASES = [
    (100, 512, (2, 4, 8, 64, 64), 1024),
    (300, 512, (2, 4, 8, 64, 64), 1000),
    (7, 512, (2, 4, 8, 64, 64), 700),
    (5, 48, (2, 4, 4, 16, 16), 96),
    (1, 3, (3, 2, 1, 4, 4), 10),
    (50, 100, (1, 4, 8, 16, 16), 128),
    (9, 16, (1, 4, 4, 4, 4), 5),
    (3, 16, (3, 4, 4, 4, 4), 20),
    (97, 1, (2, 1, 1, 1, 1), 2),
]


@requires_ffi
@pytest.mark.parametrize(
    "tokens,in_features,kernel_shape,out_features", PROJECTION_CASES
)
def test_projection_ffi_matches_reference(
    tokens, in_features, kernel_shape, out_features
):
  inputs = _projection_inputs(11, tokens, in_features, kernel_shape, out_features)
  _assert_projection_close(_ffi_projection(*inputs), _reference_projection(*inputs))


@requires_ffi
@pytest.mark.parametrize("mix", [0.0, 0.25, 1.0])
def test_projection_ffi_matches_reference_for_any_mix(mix):
  inputs = _projection_inputs(12, 20, 24, (2, 4, 2, 16, 16), 40)
  _assert_projection_close(
      _projection_value_and_grads("ffi", mix)(*inputs),
      _projection_value_and_grads("reference", mix)(*inputs),
  )


@requires_ffi
def test_projection_ffi_zero_tokens():
  x, kernel, bias, dz = _projection_inputs(13, 0, 16, (1, 4, 2, 8, 8), 16)
  z, dx, dkernel, dbias = _ffi_projection(x, kernel, bias, dz)
  assert z.shape == (0, 16)
  assert dx.shape == (0, 16)
  np.testing.assert_array_equal(dkernel, np.zeros_like(kernel))
  np.testing.assert_array_equal(dbias, np.zeros_like(bias))


@requires_ffi
def test_projection_same_result_for_any_thread_count():
  inputs = _projection_inputs(14, 300, 512, (2, 4, 8, 64, 64), 1000)
  _assert_same_for_thread_counts(_ffi_projection, inputs)


@requires_ffi
def test_projection_keeps_batch_shape():
  x, kernel, bias, _ = _projection_inputs(15, 2 * 3 * 5, 24, (2, 4, 2, 16, 16), 40)
  x = x.reshape(2, 3, 5, 24)
  z = bh4.bh4_projection(x, kernel, bias, mix=0.7, implementation="ffi")
  expected = bh4.bh4_projection(x, kernel, bias, mix=0.7, implementation="reference")
  assert z.shape == (2, 3, 5, 40)
  np.testing.assert_allclose(z, expected, rtol=2e-5, atol=2e-5)


@requires_ffi
@pytest.mark.parametrize(
    "in_axes",
    [(0, None, None, 0), (None, 0, None, None), (None, None, 0, None), (0, 0, 0, 0)],
    ids=["x", "kernel", "bias", "all"],
)
def test_projection_under_vmap(in_axes):
  x, kernel, bias, dz = _projection_inputs(16, 3 * 6, 24, (2, 4, 2, 16, 16), 40)
  stacked = {
      "x": x.reshape(3, 6, 24),
      "kernel": jnp.stack([kernel, 2 * kernel, -kernel]),
      "bias": jnp.stack([bias, -bias, 3 * bias]),
      "dz": dz.reshape(3, 6, 40),
  }
  plain = {"x": x[:6], "kernel": kernel, "bias": bias, "dz": dz[:6]}
  args = [
      stacked[name] if axis == 0 else plain[name]
      for name, axis in zip(("x", "kernel", "bias", "dz"), in_axes)
  ]
  _assert_projection_close(
      jax.vmap(_ffi_projection, in_axes=in_axes)(*args),
      jax.vmap(_reference_projection, in_axes=in_axes)(*args),
  )


@requires_ffi
def test_projection_jacrev():
  x, kernel, bias, _ = _projection_inputs(17, 3, 6, (2, 2, 2, 4, 4), 12)
  jacobians = {
      impl: jax.jacrev(
          lambda x, k, b, impl=impl: bh4.bh4_projection(
              x, k, b, mix=0.6, implementation=impl
          ),
          argnums=(0, 1, 2),
      )(x, kernel, bias)
      for impl in ("ffi", "reference")
  }
  for got, want in zip(jacobians["ffi"], jacobians["reference"]):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_projection_auto_uses_reference_for_bfloat16_bias():
  x, kernel, bias, _ = _projection_inputs(18, 4, 16, (1, 4, 2, 8, 8), 16)
  z = bh4.bh4_projection(x, kernel, bias.astype(jnp.bfloat16), mix=0.7)
  assert z.dtype == jnp.float32
  expected = bh4.bh4_projection(
      x, kernel, bias.astype(jnp.bfloat16), mix=0.7, implementation="reference"
  )
  np.testing.assert_array_equal(z, expected)


@pytest.mark.parametrize(
    "bias_shape,message",
    [
        ((17,), r"1 <= out_features <= R \* D' = 16, got \(17,\)"),
        ((0,), r"got \(0,\)"),
        ((2, 8), r"bias must have shape \[out_features\]"),
    ],
)
def test_projection_rejects_bad_bias(bias_shape, message):
  with pytest.raises(ValueError, match=message):
    bh4.bh4_projection(
        jnp.ones((2, 16)), jnp.ones((1, 4, 2, 8, 8)), jnp.ones(bias_shape), mix=0.7
    )


def test_projection_rejects_empty_input_width():
  with pytest.raises(ValueError, match=r"at least one feature, got shape \(2, 0\)"):
    bh4.bh4_projection(
        jnp.ones((2, 0)), jnp.ones((1, 4, 2, 8, 8)), jnp.ones(16), mix=0.7
    )


@pytest.mark.parametrize("mix", [jnp.float32(0.7), True, "0.7", float("nan")])
def test_projection_rejects_array_mix(mix):
  with pytest.raises(ValueError, match="mix must be a finite Python float"):
    bh4.bh4_projection(
        jnp.ones((2, 16)), jnp.ones((1, 4, 2, 8, 8)), jnp.ones(16), mix=mix
    )


def test_projection_ffi_rejects_bfloat16_bias():
  with pytest.raises(
      ValueError, match="needs float32 operands, got float32, float32, bfloat16"
  ):
    bh4.bh4_projection(
        jnp.ones((2, 16), jnp.float32),
        jnp.ones((1, 4, 2, 8, 8), jnp.float32),
        jnp.ones(16, jnp.bfloat16),
        mix=0.7,
        implementation="ffi",
    )


# ---------------------------------------------------------------------------
# bh4_hash_codes and bh4_lookup: the layer's output hashed without storing it.

# (tokens, d, kernel shape, out_features, T): the LookupFFN shape below and
# above the 256 tokens from which the blocks are folded, tables of 3
# columns that span two repeats of D' = 4, K = 1, and K = 16.
HASH_CASES = [
    (100, 512, (2, 4, 8, 64, 64), 1024, 128),
    (300, 512, (2, 4, 8, 64, 64), 1024, 128),
    (7, 3, (3, 2, 1, 4, 4), 12, 4),
    (50, 24, (1, 4, 2, 16, 16), 32, 32),
    (5, 32, (1, 4, 4, 8, 8), 32, 2),
]


@requires_ffi
@pytest.mark.parametrize("tokens,in_features,kernel_shape,out_features,num_tables", HASH_CASES)
def test_hash_codes_equal_lookup_kernel_hash(
    tokens, in_features, kernel_shape, out_features, num_tables
):
  x, kernel, bias, _ = _projection_inputs(
      19, tokens, in_features, kernel_shape, out_features
  )
  codes, scores = bh4.bh4_hash_codes(
      x, kernel, bias, mix=0.7, num_tables=num_tables, implementation="ffi"
  )
  # The look-up kernel hashes z the same way and returns its codes and
  # scores for the backward pass.
  z = bh4.bh4_projection(x, kernel, bias, mix=0.7, implementation="ffi")
  z = z.reshape(tokens, num_tables, out_features // num_tables)
  code_length = z.shape[-1]
  tables = jnp.zeros((num_tables, 2**code_length, 1), jnp.float32)
  _, want_codes, want_scores = _ffi_lookup_fwd_call(z, tables)
  np.testing.assert_array_equal(codes, want_codes)
  np.testing.assert_array_equal(scores, want_scores)


@requires_ffi
@pytest.mark.parametrize("tokens,in_features,kernel_shape,out_features,num_tables", HASH_CASES)
def test_hash_codes_match_reference(
    tokens, in_features, kernel_shape, out_features, num_tables
):
  x, kernel, bias, _ = _projection_inputs(
      20, tokens, in_features, kernel_shape, out_features
  )
  hashed = {
      impl: bh4.bh4_hash_codes(
          x, kernel, bias, mix=0.7, num_tables=num_tables, implementation=impl
      )
      for impl in ("ffi", "reference")
  }
  # A projection within rounding of 0 may take either sign, so the codes
  # are compared where every projection is clear of 0.
  z = bh4.bh4_projection(x, kernel, bias, mix=0.7, implementation="reference")
  clear = jnp.all(
      jnp.abs(z.reshape(tokens, num_tables, -1)) > 1e-4, axis=-1
  )
  assert float(jnp.mean(clear)) > 0.9
  np.testing.assert_array_equal(
      jnp.where(clear, hashed["ffi"][0], 0), jnp.where(clear, hashed["reference"][0], 0)
  )
  np.testing.assert_allclose(hashed["ffi"][1], hashed["reference"][1], rtol=1e-4, atol=1e-5)


@requires_ffi
@pytest.mark.parametrize("case", [HASH_CASES[2], (8, 512, (2, 4, 8, 64, 64), 1024, 128)])
def test_hash_codes_same_for_thread_counts(case):
  # Below 96 tokens the repeats run on separate threads, and tables whose
  # columns span two repeats (the first case) are hashed after both.
  tokens, in_features, kernel_shape, out_features, num_tables = case
  x, kernel, bias, _ = _projection_inputs(
      29, tokens, in_features, kernel_shape, out_features
  )
  hash_codes = jax.jit(
      functools.partial(
          bh4.bh4_hash_codes, mix=0.7, num_tables=num_tables, implementation="ffi"
      )
  )
  _assert_same_for_thread_counts(hash_codes, (x, kernel, bias))


@requires_avx512
@pytest.mark.parametrize("tokens", [1, 8, 100, 300])
def test_hash_codes_avx512_matches_avx2(tokens):
  x, kernel, bias, _ = _projection_inputs(30, tokens, 512, (2, 4, 8, 64, 64), 1024)
  hash_codes = jax.jit(
      functools.partial(bh4.bh4_hash_codes, mix=0.7, num_tables=128, implementation="ffi")
  )
  avx2, avx512 = _avx2_and_avx512(hash_codes, (x, kernel, bias))
  np.testing.assert_array_equal(avx2[0], avx512[0])
  np.testing.assert_array_equal(avx2[1], avx512[1])


@requires_ffi
def test_hash_codes_rows_independent_of_batch():
  # Below 96 tokens each repeat is a work item that hashes the tables within
  # its columns. From 96 on the kernel hashes tile by tile. A row's codes and
  # scores are the same either way.
  x, kernel, bias, _ = _projection_inputs(28, 100, 512, (2, 4, 8, 64, 64), 1024)
  hash_rows = lambda rows: bh4.bh4_hash_codes(
      x[:rows], kernel, bias, mix=0.7, num_tables=128, implementation="ffi"
  )
  (codes_1, scores_1), (codes_100, scores_100) = hash_rows(1), hash_rows(100)
  np.testing.assert_array_equal(codes_1, codes_100[:1])
  np.testing.assert_array_equal(scores_1, scores_100[:1])


@requires_ffi
def test_hash_scores_gradient_matches_reference():
  x, kernel, bias, _ = _projection_inputs(21, 9, 24, (2, 4, 2, 16, 16), 40)
  grads = {
      impl: jax.grad(
          lambda x, k, b, impl=impl: jnp.sum(
              bh4.bh4_hash_codes(
                  x, k, b, mix=0.7, num_tables=10, implementation=impl
              )[1]
              ** 2
          ),
          argnums=(0, 1, 2),
      )(x, kernel, bias)
      for impl in ("ffi", "reference")
  }
  for got, want in zip(grads["ffi"], grads["reference"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _lookup_inputs(seed, tokens, in_features, kernel_shape, num_tables, code_length):
  out_features = num_tables * code_length
  x, kernel, bias, _ = _projection_inputs(
      seed, tokens, in_features, kernel_shape, out_features
  )
  tables = 0.1 * jax.random.normal(
      jax.random.key(seed + 2000), (num_tables, 2**code_length, 16), jnp.float32
  )
  return x, kernel, bias, tables


@requires_ffi
@pytest.mark.parametrize("table_dtype", [jnp.float32, jnp.bfloat16])
def test_bh4_lookup_equals_unfused_kernels(table_dtype):
  x, kernel, bias, tables = _lookup_inputs(22, 60, 48, (2, 4, 4, 16, 16), 16, 8)
  tables = tables.astype(table_dtype)
  y = jax.jit(
      lambda *args: bh4.bh4_lookup(*args, mix=0.7, implementation="ffi")
  )(x, kernel, bias, tables)
  z = bh4.bh4_projection(x, kernel, bias, mix=0.7, implementation="ffi")
  want = lookup(z.reshape(60, 16, 8), tables, implementation="ffi")
  np.testing.assert_array_equal(y, want)


def _assert_vjp_matches_reference(make_fn, args, dy, names):
  """Compares value and VJP of `make_fn("ffi")` and `make_fn("reference")`.

  Returns the "ffi" value.
  """
  results = {}
  for impl in ("ffi", "reference"):
    y, vjp = jax.vjp(make_fn(impl), *args)
    results[impl] = (y,) + vjp(dy)
  for name, got, want in zip(names, results["ffi"], results["reference"]):
    scale = max(float(jnp.max(jnp.abs(want))), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
  return results["ffi"][0]


@requires_ffi
@pytest.mark.parametrize("estimator", ["score", "straight_through"])
def test_bh4_lookup_gradient_matches_reference(estimator):
  x, kernel, bias, tables = _lookup_inputs(23, 30, 24, (2, 4, 2, 16, 16), 10, 4)
  dy = jax.random.normal(jax.random.key(24), (30, 16), jnp.float32)
  _assert_vjp_matches_reference(
      lambda impl: lambda *args: bh4.bh4_lookup(
          *args, mix=0.7, estimator=estimator, implementation=impl
      ),
      (x, kernel, bias, tables),
      dy,
      ("y", "dx", "dkernel", "dbias", "dtables"),
  )


@requires_ffi
def test_bh4_lookup_under_vmap():
  x, kernel, bias, tables = _lookup_inputs(25, 3 * 8, 24, (2, 4, 2, 16, 16), 10, 4)
  x = x.reshape(3, 8, 24)
  biases = jnp.stack([bias, -bias, 2 * bias])
  mapped = {
      impl: jax.vmap(
          lambda x, b, impl=impl: bh4.bh4_lookup(
              x, kernel, b, tables, mix=0.7, implementation=impl
          )
      )(x, biases)
      for impl in ("ffi", "reference")
  }
  np.testing.assert_allclose(mapped["ffi"], mapped["reference"], rtol=1e-4, atol=1e-4)


def _norm_params(seed, width):
  ks, kb = jax.random.split(jax.random.key(seed))
  scale = 1.0 + 0.1 * jax.random.normal(ks, (width,), jnp.float32)
  bias = 0.1 * jax.random.normal(kb, (width,), jnp.float32)
  return scale, bias


def test_layer_norm_matches_flax():
  x = 3.0 + jax.random.normal(jax.random.key(29), (4, 24), jnp.float32)
  scale, bias = _norm_params(30, 24)
  module = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)
  want = module.apply({"params": {"scale": scale, "bias": bias}}, x)
  np.testing.assert_allclose(bh4.layer_norm(x, scale, bias, 1e-5), want, rtol=1e-6, atol=1e-6)


@requires_ffi
@pytest.mark.parametrize("tokens", [5, 100, 300])
def test_hash_codes_with_norm_match_reference(tokens):
  # 5 tokens normalize all rows before the transform, 100 and 300 normalize
  # each tile, and 300 also folds the blocks.
  x, kernel, bias, _ = _projection_inputs(31, tokens, 500, (2, 4, 8, 64, 64), 1024)
  x = 2.0 + 3.0 * x
  norm = (*_norm_params(32, 500), 1e-5)
  hashed = {
      impl: bh4.bh4_hash_codes(
          x, kernel, bias, mix=0.7, num_tables=128, norm=norm, implementation=impl
      )
      for impl in ("ffi", "reference")
  }
  z = bh4.bh4_projection(
      bh4.layer_norm(x, *norm), kernel, bias, mix=0.7, implementation="reference"
  )
  clear = jnp.all(jnp.abs(z.reshape(tokens, 128, 8)) > 1e-3, axis=-1)
  assert float(jnp.mean(clear)) > 0.9
  np.testing.assert_array_equal(
      jnp.where(clear, hashed["ffi"][0], 0), jnp.where(clear, hashed["reference"][0], 0)
  )
  np.testing.assert_allclose(hashed["ffi"][1], hashed["reference"][1], rtol=1e-4, atol=1e-4)


@requires_ffi
def test_bh4_lookup_with_norm_gradient_matches_reference():
  x, kernel, bias, tables = _lookup_inputs(33, 30, 24, (2, 4, 2, 16, 16), 10, 4)
  scale, norm_bias = _norm_params(34, 24)
  dy = jax.random.normal(jax.random.key(35), (30, 16), jnp.float32)
  _assert_vjp_matches_reference(
      lambda impl: lambda x, s, b: bh4.bh4_lookup(
          x, kernel, bias, tables, mix=0.7, norm=(s, b, 1e-5), implementation=impl
      ),
      (x, scale, norm_bias),
      dy,
      ("y", "dx", "dscale", "dbias"),
  )


@requires_ffi
def test_bh4_lookup_with_norm_under_vmap():
  x, kernel, bias, tables = _lookup_inputs(36, 3 * 8, 24, (2, 4, 2, 16, 16), 10, 4)
  scales = jnp.stack([_norm_params(37 + i, 24)[0] for i in range(3)])
  norm_bias = _norm_params(40, 24)[1]
  mapped = {
      impl: jax.vmap(
          lambda x, s, impl=impl: bh4.bh4_lookup(
              x, kernel, bias, tables, mix=0.7, norm=(s, norm_bias, 1e-5),
              implementation=impl,
          )
      )(x.reshape(3, 8, 24), scales)
      for impl in ("ffi", "reference")
  }
  np.testing.assert_allclose(mapped["ffi"], mapped["reference"], rtol=1e-4, atol=1e-4)


@requires_ffi
def test_bh4_lookup_with_output_bias_matches_reference():
  x, kernel, bias, tables = _lookup_inputs(42, 20, 24, (2, 4, 2, 16, 16), 10, 4)
  output_bias = jax.random.normal(jax.random.key(43), (16,), jnp.float32)
  dy = jax.random.normal(jax.random.key(44), (20, 16), jnp.float32)
  y = _assert_vjp_matches_reference(
      lambda impl: lambda x, b: bh4.bh4_lookup(
          x, kernel, bias, tables, mix=0.7, output_bias=b, implementation=impl
      ),
      (x, output_bias),
      dy,
      ("y", "dx", "doutput_bias"),
  )
  # The kernel adds the bias after the sum, as y + bias does.
  y_without = bh4.bh4_lookup(x, kernel, bias, tables, mix=0.7, implementation="ffi")
  np.testing.assert_array_equal(y, y_without + output_bias)


@pytest.mark.parametrize("implementation", ["auto", "ffi", "reference"])
@pytest.mark.parametrize(
    "tables_shape,dtype,settings,message",
    [
        ((10, 32, 16), jnp.float32, {}, "tables have 32 rows but code length 4 needs"),
        ((10, 16, 16), jnp.float16, {}, "tables must have dtype float32 or bfloat16"),
        ((10, 16, 16), jnp.float32, {"estimator": "bogus"}, "estimator must be one of"),
    ],
    ids=["rows", "dtype", "estimator"],
)
def test_bh4_lookup_checks_tables_on_every_path(
    implementation, tables_shape, dtype, settings, message
):
  # Without differentiation the fused path never calls `lookup`, so
  # bh4_lookup must check what `lookup` checks.
  x, kernel, bias, _ = _lookup_inputs(46, 3, 24, (2, 4, 2, 16, 16), 10, 4)
  tables = jnp.ones(tables_shape, dtype)
  with pytest.raises(ValueError, match=message):
    bh4.bh4_lookup(
        x, kernel, bias, tables, mix=0.7, implementation=implementation, **settings
    )


def test_bh4_lookup_rejects_bad_output_bias():
  x, kernel, bias, tables = _lookup_inputs(45, 2, 24, (2, 4, 2, 16, 16), 10, 4)
  with pytest.raises(ValueError, match=r"output_bias must be float32 \[D\] = \(16,\)"):
    bh4.bh4_lookup(x, kernel, bias, tables, mix=0.7, output_bias=jnp.ones(8))


@pytest.mark.parametrize(
    "norm,message",
    [
        ((jnp.ones(16),) * 2, r"norm must be None or \(scale, bias, epsilon\)"),
        ((jnp.ones(8), jnp.ones(16), 1e-5), r"norm scale \(8,\) and bias \(16,\)"),
        ((jnp.ones(16), jnp.ones(16), -1.0), "non-negative float, got -1.0"),
        ((jnp.ones(16), jnp.ones(16), float("nan")), "non-negative float, got nan"),
    ],
)
def test_hash_codes_reject_bad_norm(norm, message):
  x, kernel, bias, _ = _projection_inputs(41, 2, 16, (1, 4, 2, 8, 8), 16)
  with pytest.raises(ValueError, match=message):
    bh4.bh4_hash_codes(x, kernel, bias, mix=0.7, num_tables=2, norm=norm)


@pytest.mark.parametrize(
    "num_tables,message",
    [(3, "got 3"), (0, "got 0"), (1, "into tables of 1 to 16 projections, got 1")],
)
def test_hash_codes_reject_bad_num_tables(num_tables, message):
  x, kernel, bias, _ = _projection_inputs(26, 2, 32, (1, 4, 4, 8, 8), 32)
  with pytest.raises(ValueError, match=message):
    bh4.bh4_hash_codes(x, kernel, bias, mix=0.7, num_tables=num_tables)


def test_bh4_lookup_rejects_unsplittable_tables():
  x, kernel, bias, _ = _projection_inputs(27, 2, 32, (1, 4, 4, 8, 8), 32)
  with pytest.raises(ValueError, match="num_tables must divide out_features = 32"):
    bh4.bh4_lookup(x, kernel, bias, jnp.ones((5, 64, 4), jnp.float32), mix=0.7)
