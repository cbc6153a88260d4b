# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of hash_codes, weighted_gather and lookup: FFI kernels against the reference."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lookupffn_jax
from lookupffn_jax import _extension
from lookupffn_jax import reference
from lookupffn_jax.lookup import _ffi_lookup_fwd_call
from lookupffn_jax.lookup import weighted_gather_of_hash

ESTIMATORS = ("score", "straight_through")

ext = _extension.load()
requires_ffi = pytest.mark.skipif(
    ext is None, reason=f"extension not loaded: {_extension.load_error()!r}"
)


def random_inputs(seed, n, t, k, d):
  """Returns (z, tables, dy) with |z| >= 0.05 so codes are not on a boundary."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, t, k)).astype(np.float32)
  z = np.where(np.abs(z) < 0.05, np.copysign(0.05, z), z)
  tables = rng.standard_normal((t, 2**k, d)).astype(np.float32)
  dy = rng.standard_normal((n, d)).astype(np.float32)
  return jnp.asarray(z), jnp.asarray(tables), jnp.asarray(dy)


@functools.partial(jax.jit, static_argnums=(3, 4))
def lookup_and_grads(z, tables, dy, estimator, implementation):
  fn = lambda z, tables: lookupffn_jax.lookup(
      z, tables, estimator=estimator, implementation=implementation
  )
  y, vjp = jax.vjp(fn, z, tables)
  dz, dtables = vjp(dy)
  return y, dz, dtables


def assert_close(actual, expected, rtol=1e-5, name=""):
  """Compares with rtol and an absolute floor of rtol times the largest |expected|."""
  expected = np.asarray(expected)
  scale = float(np.max(np.abs(expected))) if expected.size else 0.0
  np.testing.assert_allclose(
      np.asarray(actual), expected, rtol=rtol, atol=rtol * max(scale, 1.0),
      err_msg=name,
  )


# ---------------------------------------------------------------------------
# hash_codes


def test_hash_codes_example():
  codes, scores = lookupffn_jax.hash_codes(jnp.array([[-0.7, 0.3, 1.5, -2.25]], jnp.float32))
  assert int(codes[0]) == 0b0110
  expected = 4.75 * np.prod(1 / (1 + np.exp(-2 * np.array([0.7, 0.3, 1.5, 2.25]))))
  np.testing.assert_allclose(float(scores[0]), expected, rtol=1e-6)


def test_hash_codes_zero_bits_are_zero():
  codes, _ = lookupffn_jax.hash_codes(jnp.array([[0.0, -0.0, 1.0]], jnp.float32))
  assert int(codes[0]) == 0b001


def test_hash_codes_shapes_and_dtypes():
  codes, scores = lookupffn_jax.hash_codes(jnp.ones((2, 3, 5, 8), jnp.float32))
  assert codes.shape == (2, 3, 5)
  assert codes.dtype == jnp.int32
  assert scores.shape == (2, 3, 5)
  assert scores.dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_hash_scores_finite_for_large_z(dtype):
  z = jnp.array([[1e4, -1e4, 3e3, -1e-3]], dtype=dtype)
  scores, grad = jax.value_and_grad(
      lambda z: lookupffn_jax.hash_codes(z)[1].astype(jnp.float32).sum()
  )(z)
  assert np.isfinite(float(scores))
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_hash_codes_both_outputs_differentiate():
  def loss(z):
    codes, scores = lookupffn_jax.hash_codes(z)
    return jnp.sum(scores * codes.astype(jnp.float32))

  z = jnp.array([[0.5, -1.0], [2.0, 0.25]], jnp.float32)
  grad = jax.grad(loss)(z)
  expected = jax.grad(lambda z: jnp.sum(reference.hash_scores(z) * jnp.array([2.0, 3.0])))(z)
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_hash_codes_rejects_integer_z():
  with pytest.raises(ValueError, match="z must have a floating dtype, got int32"):
    lookupffn_jax.hash_codes(jnp.ones((2, 3), jnp.int32))


# ---------------------------------------------------------------------------
# FFI against the reference


# Every N and D value on small tables, every T and K value at a middle size,
# and the large corners of the grid.
GRID = (
    [(n, 3, 2, d) for n in (0, 1, 7, 63, 65, 1000) for d in (1, 5, 64, 513)]
    + [(65, t, k, 64) for t in (1, 3, 128) for k in (1, 2, 8)]
    + [(1000, 128, 8, 64), (63, 128, 8, 513), (7, 128, 1, 513)]
)


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("n,t,k,d", GRID)
def test_lookup_ffi_matches_reference(n, t, k, d, estimator):
  z, tables, dy = random_inputs(n + 7 * t + 13 * k + d, n, t, k, d)
  y, dz, dtables = lookup_and_grads(z, tables, dy, estimator, "ffi")
  y_ref, dz_ref, dtables_ref = lookup_and_grads(z, tables, dy, estimator, "reference")
  assert_close(y, y_ref, name="y")
  assert_close(dz, dz_ref, rtol=2e-5, name="dz")
  assert_close(dtables, dtables_ref, name="dtables")


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("n,t,k,d", [(65, 3, 2, 64), (63, 40, 8, 513), (5, 1, 1, 7), (0, 2, 2, 3)])
def test_lookup_bf16_tables_ffi_matches_reference(n, t, k, d, estimator):
  z, tables, dy = random_inputs(n + t + d, n, t, k, d)
  tables = tables.astype(jnp.bfloat16)
  y, dz, dtables = lookup_and_grads(z, tables, dy, estimator, "ffi")
  y_ref, dz_ref, dtables_ref = lookup_and_grads(z, tables, dy, estimator, "reference")
  assert y.dtype == jnp.float32
  assert dtables.dtype == jnp.bfloat16
  assert_close(y, y_ref, name="y")
  assert_close(dz, dz_ref, rtol=2e-5, name="dz")
  # Both sum the table gradient in float32 and round once to bfloat16, so
  # they differ by at most one bfloat16 step (2**-8 relative).
  assert_close(dtables.astype(jnp.float32), dtables_ref.astype(jnp.float32), rtol=2**-7, name="dtables")


def _gather_table_gradient(codes, weights, tables, implementation):
  """Returns the gradient of sum(weighted_gather(...)) with respect to tables."""
  return jax.grad(
      lambda tb: lookupffn_jax.weighted_gather(
          codes, weights, tb, implementation=implementation
      ).sum()
  )(tables)


@pytest.mark.parametrize("implementation", ["ffi", "reference"])
def test_bf16_table_gradient_sums_in_float32(implementation):
  # 4096 look-ups of one row with weight 1: a sum kept in bfloat16 stops
  # growing at 256, and one kept in float32 reaches 4096, which bfloat16
  # represents exactly.
  if implementation == "ffi" and ext is None:
    pytest.skip("extension not loaded")
  codes = jnp.zeros((4096, 1), jnp.int32)
  weights = jnp.ones((4096, 1), jnp.float32)
  tables = jnp.zeros((1, 2, 4), jnp.bfloat16)
  dtables = _gather_table_gradient(codes, weights, tables, implementation)
  assert dtables.dtype == jnp.bfloat16
  np.testing.assert_array_equal(dtables[0, 0].astype(jnp.float32), 4096.0)
  np.testing.assert_array_equal(dtables[0, 1].astype(jnp.float32), 0.0)


@requires_ffi
def test_bf16_tables_close_to_float32():
  z, tables, _ = random_inputs(11, 200, 64, 8, 256)
  y32 = lookupffn_jax.lookup(z, tables, implementation="ffi")
  y16 = lookupffn_jax.lookup(z, tables.astype(jnp.bfloat16), implementation="ffi")
  # Each row value rounds with relative error <= 2**-9, and the errors of
  # the 64 summed rows partly cancel.
  relative_error = np.linalg.norm(y16 - y32) / np.linalg.norm(y32)
  assert relative_error < 2**-9


@requires_ffi
@pytest.mark.parametrize("n,t,d", [(0, 3, 5), (1, 1, 1), (63, 3, 513), (1000, 128, 64)])
def test_weighted_gather_ffi_matches_reference(n, t, d):
  rng = np.random.default_rng(n + t + d)
  codes = jnp.asarray(rng.integers(0, 16, (n, t)), jnp.int32)
  weights = jnp.asarray(rng.standard_normal((n, t)), jnp.float32)
  tables = jnp.asarray(rng.standard_normal((t, 16, d)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)

  @functools.partial(jax.jit, static_argnums=0)
  def run(implementation):
    fn = lambda w, tb: lookupffn_jax.weighted_gather(
        codes, w, tb, implementation=implementation
    )
    y, vjp = jax.vjp(fn, weights, tables)
    return (y, *vjp(dy))

  for actual, expected, name in zip(run("ffi"), run("reference"), ("y", "dw", "dt")):
    assert_close(actual, expected, name=name)


@pytest.mark.parametrize("implementation", ["ffi", "reference"])
def test_duplicate_codes_sum_table_gradient(implementation):
  if implementation == "ffi" and ext is None:
    pytest.skip("extension not loaded")
  codes = jnp.array([[1], [1], [1], [3]], jnp.int32)
  weights = jnp.array([[1.0], [2.0], [3.0], [4.0]], jnp.float32)
  tables = jnp.zeros((1, 4, 3), jnp.float32)
  dtables = _gather_table_gradient(codes, weights, tables, implementation)
  np.testing.assert_array_equal(dtables[0, :, 0], [0.0, 6.0, 0.0, 4.0])
  np.testing.assert_array_equal(dtables[0, :, 2], [0.0, 6.0, 0.0, 4.0])


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_lookup_finite_for_large_z(estimator):
  z, tables, dy = random_inputs(0, 9, 4, 8, 16)
  z = z * 1e4
  for implementation in ("ffi", "reference"):
    outputs = lookup_and_grads(z, tables, dy, estimator, implementation)
    for name, x in zip(("y", "dz", "dtables"), outputs):
      assert np.all(np.isfinite(x)), f"{implementation} {name} not finite"


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("n,t,d", [(0, 3, 4), (5, 0, 4), (5, 3, 0), (0, 0, 0)])
def test_lookup_empty_shapes(n, t, d, estimator):
  z, tables, dy = random_inputs(1, n, t, 2, d)
  for implementation in ("ffi", "reference"):
    y, dz, dtables = lookup_and_grads(z, tables, dy, estimator, implementation)
    assert y.shape == (n, d)
    assert dz.shape == z.shape
    assert dtables.shape == tables.shape
    assert not np.any(np.asarray(y))


# The forward gather and the row dot products of dweights pack each table
# group's column block when there are at least 2048 tokens. These shapes give
# several groups and a partial last column block (D = 80): a column block of
# 1024 rows takes 256 KiB in float32 and 128 KiB in bfloat16, the row dot
# products pack 512 KiB and the gather 1 MiB, or half of L2 if that is more.
# Two column blocks make four token tiles of 525 tokens.
PACKED_GATHER_SHAPE = dict(n=2100, t=17, s=1024, d=80)


def _packed_gather_inputs(dtype):
  n, t, s, d = (PACKED_GATHER_SHAPE[key] for key in ("n", "t", "s", "d"))
  rng = np.random.default_rng(5)
  codes = jnp.asarray(rng.integers(0, s, (n, t)), jnp.int32)
  weights = jnp.asarray(rng.standard_normal((n, t)), jnp.float32)
  tables = jnp.asarray(rng.standard_normal((t, s, d)), jnp.float32).astype(dtype)
  return codes, weights, tables


@requires_ffi
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_packed_gather_matches_reference(dtype):
  codes, weights, tables = _packed_gather_inputs(dtype)
  y = lookupffn_jax.weighted_gather(codes, weights, tables, implementation="ffi")
  y_ref = lookupffn_jax.weighted_gather(
      codes, weights, tables, implementation="reference"
  )
  assert_close(y, y_ref, name="y")


@requires_ffi
def test_packed_gather_backward_matches_reference():
  # The row dot products of dweights also pack from 2048 tokens on.
  codes, weights, tables = _packed_gather_inputs(jnp.float32)
  dy = jax.random.normal(
      jax.random.key(6), (codes.shape[0], tables.shape[-1]), jnp.float32
  )
  grads = {}
  for implementation in ("ffi", "reference"):
    fn = lambda w, tb, impl=implementation: lookupffn_jax.weighted_gather(
        codes, w, tb, implementation=impl
    )
    grads[implementation] = jax.vjp(fn, weights, tables)[1](dy)
  assert_close(grads["ffi"][0], grads["reference"][0], rtol=2e-5, name="dweights")
  assert_close(grads["ffi"][1], grads["reference"][1], rtol=2e-5, name="dtables")


def _gather_value_and_grads(codes, weights, tables, dy):
  fn = lambda w, tb: lookupffn_jax.weighted_gather(codes, w, tb, implementation="ffi")
  y, vjp = jax.vjp(fn, weights, tables)
  return (y, *vjp(dy))


@requires_ffi
def test_table_gradient_over_several_token_tiles():
  # The scatter sorts and adds 4096 tokens at a time, so a row's sum goes on
  # from one tile to the next. Rows 0 and 7 are never looked up.
  rng = np.random.default_rng(8)
  n, t, s, d = 9000, 3, 8, 72
  codes = jnp.asarray(rng.integers(1, s - 1, (n, t)), jnp.int32)
  weights = jnp.asarray(rng.standard_normal((n, t)), jnp.float32)
  tables = jnp.asarray(rng.standard_normal((t, s, d)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  dtables = {}
  for implementation in ("ffi", "reference"):
    fn = lambda tb, impl=implementation: lookupffn_jax.weighted_gather(
        codes, weights, tb, implementation=impl
    )
    dtables[implementation] = jax.vjp(fn, tables)[1](dy)[0]
  assert_close(dtables["ffi"], dtables["reference"], rtol=2e-5, name="dtables")
  np.testing.assert_array_equal(dtables["ffi"][:, [0, s - 1]], 0.0)
  try:
    ext.set_max_threads(1)
    one_thread = jax.vjp(
        lambda tb: lookupffn_jax.weighted_gather(
            codes, weights, tb, implementation="ffi"
        ),
        tables,
    )[1](dy)[0]
  finally:
    ext.set_max_threads(0)
  np.testing.assert_array_equal(one_thread, dtables["ffi"])


@requires_ffi
def test_packed_gather_any_thread_count():
  codes, weights, tables = _packed_gather_inputs(jnp.float32)
  dy = jax.random.normal(
      jax.random.key(7), (codes.shape[0], tables.shape[-1]), jnp.float32
  )
  results = []
  try:
    for threads in (1, 2, 3):
      ext.set_max_threads(threads)
      results.append(_gather_value_and_grads(codes, weights, tables, dy))
  finally:
    ext.set_max_threads(0)
  for other in results[1:]:
    for name, a, b in zip(("y", "dweights", "dtables"), results[0], other):
      np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.skipif(
    ext is None or not ext.avx512_supported(), reason="no AVX-512"
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("tokens", [3, 2100], ids=["tiled", "packed"])
def test_gather_avx512_matches_avx2_bitwise(dtype, tokens):
  codes, weights, tables = _packed_gather_inputs(dtype)
  gather = jax.jit(
      functools.partial(lookupffn_jax.weighted_gather, implementation="ffi")
  )
  results = []
  try:
    for isa in ("avx2", "avx512"):
      ext.set_max_isa(isa)
      results.append(np.asarray(gather(codes[:tokens], weights[:tokens], tables)))
  finally:
    ext.set_max_isa("avx512")
  np.testing.assert_array_equal(results[0], results[1])


@requires_ffi
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("tokens", [0, 3, 2100], ids=["empty", "tiled", "packed"])
def test_gather_adds_bias_to_rows(isa, dtype, tokens):
  # The kernel adds the bias as it stores each row's sum: full column blocks
  # in the SIMD kernels, the partial last one (D = 80) in the generic loop.
  # A cap above what the CPU supports runs its best kernels.
  codes, weights, tables = _packed_gather_inputs(dtype)
  codes, weights = codes[:tokens], weights[:tokens]
  bias = jax.random.normal(jax.random.key(8), (tables.shape[-1],), jnp.float32)
  try:
    ext.set_max_isa(isa)
    with_bias = weighted_gather_of_hash(codes, weights, tables, "ffi", bias)
    without = weighted_gather_of_hash(codes, weights, tables, "ffi")
  finally:
    ext.set_max_isa("avx512")
  np.testing.assert_array_equal(with_bias, without + bias)


# Below 2048 tokens the AVX-512 gather reads row chunks of 256 entries while
# N <= S or the tables take at most 32 MiB. D = 656 gives two full chunks,
# a chunk of two 64-column blocks and 16 columns for the generic loop.
@pytest.mark.skipif(
    ext is None or not ext.avx512_supported(), reason="no AVX-512"
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("tokens", [1, 37, 300])
def test_gather_row_chunks_match_avx2_bitwise(dtype, tokens):
  rng = np.random.default_rng(9)
  t, s, d = 6, 40, 656
  codes = jnp.asarray(rng.integers(0, s, (tokens, t)), jnp.int32)
  weights = jnp.asarray(rng.standard_normal((tokens, t)), jnp.float32)
  tables = jnp.asarray(rng.standard_normal((t, s, d)), jnp.float32).astype(dtype)
  bias = jnp.asarray(rng.standard_normal(d), jnp.float32)
  results = {}
  try:
    for isa, threads in (("avx2", 0), ("avx512", 1), ("avx512", 3)):
      ext.set_max_isa(isa)
      ext.set_max_threads(threads)
      results[isa, threads] = np.asarray(
          weighted_gather_of_hash(codes, weights, tables, "ffi", bias)
      )
  finally:
    ext.set_max_isa("avx512")
    ext.set_max_threads(0)
  np.testing.assert_array_equal(results["avx512", 1], results["avx2", 0])
  np.testing.assert_array_equal(results["avx512", 3], results["avx2", 0])
  expected = lookupffn_jax.weighted_gather(
      codes, weights, tables, implementation="reference"
  ) + bias
  assert_close(results["avx512", 1], expected, name="y")


@requires_ffi
def test_gather_bias_without_tables():
  codes = jnp.zeros((4, 0), jnp.int32)
  weights = jnp.zeros((4, 0), jnp.float32)
  tables = jnp.zeros((0, 256, 24), jnp.float32)
  bias = jnp.arange(24, dtype=jnp.float32) - 5.0
  y = weighted_gather_of_hash(codes, weights, tables, "ffi", bias)
  np.testing.assert_array_equal(y, jnp.broadcast_to(bias, (4, 24)))


@requires_ffi
def test_packed_gather_equals_tiled_gather():
  # The first 1000 tokens alone go through the unpacked kernels. The sums run
  # in the same order in both, so the outputs and dweights are bitwise equal.
  codes, weights, tables = _packed_gather_inputs(jnp.float32)
  dy = jax.random.normal(
      jax.random.key(7), (codes.shape[0], tables.shape[-1]), jnp.float32
  )
  y, dweights, _ = _gather_value_and_grads(codes, weights, tables, dy)
  y_tiled, dweights_tiled, _ = _gather_value_and_grads(
      codes[:1000], weights[:1000], tables, dy[:1000]
  )
  np.testing.assert_array_equal(y[:1000], y_tiled)
  np.testing.assert_array_equal(dweights[:1000], dweights_tiled)


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_lookup_same_result_for_any_thread_count(estimator):
  z, tables, dy = random_inputs(2, 300, 16, 4, 100)
  results = []
  try:
    for threads in (1, 2, 3, 0):
      ext.set_max_threads(threads)
      results.append(lookup_and_grads(z, tables, dy, estimator, "ffi"))
  finally:
    ext.set_max_threads(0)
  for other in results[1:]:
    for actual, expected in zip(other, results[0]):
      np.testing.assert_array_equal(actual, expected)


@requires_ffi
@pytest.mark.skipif(ext is not None and not ext.avx2_supported(), reason="no AVX2")
@pytest.mark.parametrize("d", [1, 7, 8, 9, 15, 16, 17, 31, 33])
def test_scalar_and_avx2_kernels_agree(d):
  z, tables, dy = random_inputs(d, 20, 3, 3, d)
  assert ext.active_isa() in ("avx2", "avx512")
  vector = lookup_and_grads(z, tables, dy, "straight_through", "ffi")
  try:
    ext.force_scalar(True)
    assert ext.active_isa() == "scalar"
    scalar = lookup_and_grads(z, tables, dy, "straight_through", "ffi")
  finally:
    ext.force_scalar(False)
  for actual, expected in zip(vector, scalar):
    assert_close(actual, expected)


@requires_ffi
@pytest.mark.parametrize("force_scalar", [False, True], ids=["best", "scalar"])
def test_kernel_hash_of_eight_bit_codes_matches_reference(force_scalar):
  # 8 code bits take the vector path eight tables at a time; 19 tables also
  # leave 3 for the scalar loop.
  z, tables, _ = random_inputs(11, 33, 19, 8, 4)
  try:
    ext.force_scalar(force_scalar)
    _, codes, scores = jax.jit(_ffi_lookup_fwd_call)(z, tables)
  finally:
    ext.force_scalar(False)
  want_codes, want_scores = reference.hash_codes(z)
  np.testing.assert_array_equal(codes, want_codes)
  np.testing.assert_allclose(scores, want_scores, rtol=2e-6, atol=1e-7)


@requires_ffi
def test_set_max_threads_rejects_negative():
  with pytest.raises(ValueError, match="max_threads must be >= 0"):
    ext.set_max_threads(-1)


# ---------------------------------------------------------------------------
# Gradient checks of the reference surrogates


@pytest.mark.parametrize(
    "surrogate", [reference.score_surrogate, reference.straight_through_surrogate]
)
def test_reference_surrogate_gradients(surrogate):
  with jax.enable_x64(True):
    z, tables, _ = random_inputs(3, 4, 3, 3, 5)
    z = jnp.asarray(np.where(np.abs(z) < 0.3, np.copysign(0.3, z), z), jnp.float64)
    tables = tables.astype(jnp.float64)
    check_grads(surrogate, (z, tables), order=1, modes=("rev",), eps=1e-4)


def test_straight_through_moves_gradient_across_bit():
  # With all rows zero except the neighbour that flips bit 0, only the
  # straight-through estimator gives z a gradient.
  z = jnp.array([[[0.5, -0.5]]], jnp.float32)
  tables = jnp.zeros((1, 4, 1), jnp.float32).at[0, 0b11, 0].set(1.0)
  loss = lambda z, estimator: lookupffn_jax.lookup(
      z, tables, estimator=estimator, implementation="reference"
  ).sum()
  assert not np.any(np.asarray(jax.grad(loss)(z, "score")))
  assert np.any(np.asarray(jax.grad(loss)(z, "straight_through")))


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("implementation", ["ffi", "reference"])
@pytest.mark.parametrize("bad_code", [4, -1])
def test_weighted_gather_rejects_out_of_range_code(implementation, bad_code):
  if implementation == "ffi" and ext is None:
    pytest.skip("extension not loaded")
  codes = jnp.array([[0, 1], [2, bad_code]], jnp.int32)
  weights = jnp.ones((2, 2), jnp.float32)
  tables = jnp.ones((2, 4, 3), jnp.float32)
  fn = jax.jit(
      lambda w, tb: lookupffn_jax.weighted_gather(
          codes, w, tb, implementation=implementation
      ).sum()
  )
  with pytest.raises(Exception, match=rf"weighted_gather.*code {bad_code} at token 1, table 1"):
    jax.block_until_ready(fn(weights, tables))
  with pytest.raises(Exception, match=rf"code {bad_code} at token 1, table 1"):
    jax.block_until_ready(jax.grad(fn, argnums=(0, 1))(weights, tables))


@requires_ffi
@pytest.mark.parametrize("bad_code", [-3, 7, -(2**31)])
def test_gather_kernel_reports_first_bad_code(bad_code):
  # The kernel checks the codes in chunks of 4096, so the first bad code
  # sits in the second chunk and a later one in the third.
  codes = np.zeros((3000, 3), np.int32)
  codes[1500, 2] = bad_code
  codes[2900, 0] = 5
  fn = jax.jit(
      lambda c: lookupffn_jax.weighted_gather(
          c, jnp.ones((3000, 3), jnp.float32), jnp.ones((3, 4, 2), jnp.float32),
          implementation="ffi",
      )
  )
  with pytest.raises(Exception, match=rf"code {bad_code} at token 1500, table 2 "):
    jax.block_until_ready(fn(jnp.asarray(codes)))


@requires_ffi
def test_backward_kernel_rejects_bad_code():
  codes = jnp.array([[5]], jnp.int32)
  call = jax.ffi.ffi_call(
      "lookupffn_weighted_gather_bwd",
      (jax.ShapeDtypeStruct((1, 1), jnp.float32), jax.ShapeDtypeStruct((1, 4, 2), jnp.float32)),
  )
  with pytest.raises(Exception, match=r"weighted_gather \(backward\): code 5 at token 0"):
    jax.block_until_ready(call(codes, jnp.ones((1, 1), jnp.float32), jnp.ones((1, 4, 2), jnp.float32), jnp.ones((1, 2), jnp.float32)))


def test_weighted_gather_int64_codes_do_not_wrap():
  with jax.enable_x64(True):
    codes = jnp.array([[2**32 + 1]], jnp.int64)
    with pytest.raises(Exception, match="out of range"):
      jax.block_until_ready(
          lookupffn_jax.weighted_gather(codes, jnp.ones((1, 1), jnp.float32), jnp.ones((1, 4, 2), jnp.float32))
      )


@pytest.mark.parametrize("implementation", ["ffi", "reference"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16])
def test_gather_accepts_unsigned_and_narrow_codes(implementation, dtype):
  if implementation == "ffi" and ext is None:
    pytest.skip("extension not loaded")
  # 256 rows: the largest uint8 code is the last row.
  rng = np.random.default_rng(9)
  codes = rng.integers(0, 128 if dtype == np.int8 else 256, (5, 3)).astype(dtype)
  codes[0, 0] = 127 if dtype == np.int8 else 255
  weights = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
  tables = jnp.asarray(rng.standard_normal((3, 256, 4)), jnp.float32)
  y = lookupffn_jax.weighted_gather(codes, weights, tables, implementation=implementation)
  expected = lookupffn_jax.weighted_gather(
      codes.astype(np.int32), weights, tables, implementation="reference"
  )
  np.testing.assert_array_equal(y, expected)


def test_gather_rejects_wide_numpy_codes():
  # Without 64-bit types JAX would wrap 2**32 + 3 to 3; the host check
  # reports the value instead.
  codes = np.array([[0, 2**32 + 3]], np.int64)
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match=r"code 4294967299 at token 0, table 1 is out of range"):
      lookupffn_jax.weighted_gather(
          codes, jnp.ones((1, 2), jnp.float32), jnp.ones((2, 4, 2), jnp.float32)
      )


def test_weighted_gather_accepts_int64_codes():
  with jax.enable_x64(True):
    codes = jnp.array([[3, 0]], jnp.int64)
    tables = jnp.arange(16, dtype=jnp.float32).reshape(2, 4, 2)
    y = lookupffn_jax.weighted_gather(codes, jnp.ones((1, 2), jnp.float32), tables)
  np.testing.assert_array_equal(y, [[6.0 + 8.0, 7.0 + 9.0]])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(z=jnp.ones((2, 3, 2), jnp.bfloat16)), "z must have dtype float32, got bfloat16"),
        (dict(tables=jnp.ones((3, 4, 5), jnp.float16)), "tables must have dtype float32 or bfloat16, got float16"),
        (dict(tables=jnp.ones((3, 8, 5), jnp.float32)), "tables have 8 rows but code length 2 needs"),
        (dict(tables=jnp.ones((2, 4, 5), jnp.float32)), r"z must have shape \[..., T, K\] with T = 2"),
        (dict(estimator="gumbel"), "estimator must be one of"),
        (dict(implementation="cuda"), "implementation must be one of"),
        (dict(z=jnp.ones((2, 3, 17), jnp.float32), tables=jnp.ones((3, 2**17, 1), jnp.float32)), "from 1 to 16, got 17"),
    ],
)
def test_lookup_rejects_bad_arguments(kwargs, message):
  args = dict(z=jnp.ones((2, 3, 2), jnp.float32), tables=jnp.ones((3, 4, 5), jnp.float32))
  args.update(kwargs)
  z, tables = args.pop("z"), args.pop("tables")
  with pytest.raises(ValueError, match=message):
    lookupffn_jax.lookup(z, tables, **args)


def test_weighted_gather_rejects_float_codes():
  with pytest.raises(ValueError, match="codes must have an integer dtype, got float32"):
    lookupffn_jax.weighted_gather(jnp.ones((2, 3), jnp.float32), jnp.ones((2, 3), jnp.float32), jnp.ones((3, 4, 5), jnp.float32))


def test_weighted_gather_rejects_mismatched_weights():
  with pytest.raises(ValueError, match=r"codes \(2, 3\) and weights \(2, 2\)"):
    lookupffn_jax.weighted_gather(
        jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 2), jnp.float32), jnp.ones((3, 4, 5), jnp.float32)
    )


# ---------------------------------------------------------------------------
# Composition with JAX transformations


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_lookup_under_jit_and_leading_dims(estimator):
  z, tables, _ = random_inputs(4, 24, 3, 2, 6)
  z = z.reshape(2, 3, 4, 3, 2)
  fn = jax.jit(lambda z, tb: lookupffn_jax.lookup(z, tb, estimator=estimator, implementation="ffi"))
  y = fn(z, tables)
  assert y.shape == (2, 3, 4, 6)
  assert_close(y, lookupffn_jax.lookup(z, tables, implementation="reference"))


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_lookup_under_nested_vmap(estimator):
  z, tables, _ = random_inputs(5, 2 * 3 * 4, 3, 2, 6)
  z = z.reshape(2, 3, 4, 3, 2)

  def loss(z, tables, implementation):
    return jnp.sum(lookupffn_jax.lookup(z, tables, estimator=estimator, implementation=implementation) ** 2)

  def per_example_grads(implementation):
    grad_fn = jax.grad(loss, argnums=(0, 1))
    inner = jax.vmap(grad_fn, in_axes=(0, None, None))
    return jax.vmap(inner, in_axes=(0, None, None))(z, tables, implementation)

  for actual, expected in zip(per_example_grads("ffi"), per_example_grads("reference")):
    assert actual.shape == expected.shape
    assert_close(actual, expected, rtol=2e-5)


@requires_ffi
def test_lookup_under_vmap_over_tables():
  z, tables, _ = random_inputs(6, 5, 3, 2, 4)
  stacked_tables = jnp.stack([tables, 2 * tables, -tables])
  fn = lambda tb, implementation: lookupffn_jax.lookup(z, tb, implementation=implementation)
  y = jax.vmap(lambda tb: fn(tb, "ffi"))(stacked_tables)
  y_ref = jax.vmap(lambda tb: fn(tb, "reference"))(stacked_tables)
  assert_close(y, y_ref)


@requires_ffi
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_lookup_under_scan_and_checkpoint(estimator):
  num_layers, t, k, d = 3, 4, 3, 8
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((10, d)), jnp.float32)
  projections = jnp.asarray(rng.standard_normal((num_layers, d, t * k)), jnp.float32)
  tables = jnp.asarray(0.1 * rng.standard_normal((num_layers, t, 2**k, d)), jnp.float32)

  def model(params, implementation):
    def layer(x, layer_params):
      projection, layer_tables = layer_params
      z = (x @ projection).reshape(-1, t, k)
      y = lookupffn_jax.lookup(z, layer_tables, estimator=estimator, implementation=implementation)
      return x + y, None

    x_out, _ = jax.lax.scan(jax.checkpoint(layer), x, params)
    return jnp.sum(x_out**2)

  def grads(implementation):
    return jax.jit(jax.grad(model), static_argnums=1)((projections, tables), implementation)

  for actual, expected in zip(grads("ffi"), grads("reference")):
    assert_close(actual, expected, rtol=1e-4)


@requires_ffi
def test_auto_lowers_to_ffi_on_cpu_only():
  fn = jax.jit(lambda z, tb: lookupffn_jax.lookup(z, tb))
  args = (jax.ShapeDtypeStruct((4, 3, 2), jnp.float32), jax.ShapeDtypeStruct((3, 4, 5), jnp.float32))
  ours = [
      jax.export.DisabledSafetyCheck.custom_call(name)
      for name in ext.registrations()
  ]
  export = lambda platform: jax.export.export(
      fn, platforms=[platform], disabled_checks=ours
  )(*args).mlir_module()
  cpu_text = export("cpu")
  cuda_text = export("cuda")
  assert "custom_call @lookupffn_lookup_fwd" in cpu_text
  assert "@lookupffn_" not in cuda_text


def test_auto_falls_back_with_one_warning_without_extension():
  script = textwrap.dedent(
      """
      import sys, warnings
      sys.modules["lookupffn_jax._lookup_ext"] = None  # Makes the import fail.
      import jax.numpy as jnp
      import lookupffn_jax
      z, tables = jnp.ones((2, 3, 2), jnp.float32), jnp.ones((3, 4, 5), jnp.float32)
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lookupffn_jax.lookup(z, tables)
        lookupffn_jax.lookup(z, tables)
      messages = [str(w.message) for w in caught if "extension" in str(w.message)]
      assert len(messages) == 1, messages
      assert "_lookup_ext" in messages[0], messages
      try:
        lookupffn_jax.lookup(z, tables, implementation="ffi")
      except RuntimeError as e:
        assert "failed to load" in str(e), e
      else:
        raise AssertionError("implementation='ffi' did not raise")
      print("ok")
      """
  )
  result = subprocess.run(
      [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy()
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "ok"
