# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the LookupFFN and DenseFFN Flax modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookupffn_jax import bh4
from lookupffn_jax import layers
from lookupffn_jax.lookup import lookup


def _lookup_ffn(**overrides) -> layers.LookupFFN:
  settings = dict(num_tables=4, table_size=16, block_size=8, implementation="reference")
  settings.update(overrides)
  return layers.LookupFFN(**settings)


def _param_count(module: nn.Module, x: jax.Array) -> int:
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  return sum(leaf.size for leaf in jax.tree.leaves(shapes))


def _layer_norm_output(module: nn.Module, x: jax.Array) -> jax.Array:
  """Returns the output of the module's own input LayerNorm on `x`."""
  params = jax.jit(module.init)(jax.random.key(0), x)
  apply = jax.jit(lambda params, x: module.apply(params, x, capture_intermediates=True))
  _, state = apply(params, x)
  return state["intermediates"]["layer_norm"]["__call__"][0]


# ---------------------------------------------------------------------------
# LookupFFN


@pytest.mark.parametrize("projection", ["dense", "bh4"])
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3, 5)])
def test_lookup_shapes(projection, batch_shape):
  layer = _lookup_ffn(projection=projection)
  x = jnp.ones(batch_shape + (24,))
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
  y = jax.eval_shape(layer.apply, shapes, x)
  assert y.shape == batch_shape + (24,)


def test_lookup_out_features():
  layer = _lookup_ffn(out_features=40)
  x = jnp.ones((2, 24))
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert shapes["params"]["tables"].shape == (4, 16, 40)
  assert jax.eval_shape(layer.apply, shapes, x).shape == (2, 40)


@pytest.mark.parametrize("out_features", [None, 40])
def test_lookup_param_count_dense(out_features):
  d, num_tables, table_size = 24, 4, 16
  out = out_features or d
  projections = num_tables * 4
  expected = 2 * d + (d * projections + projections) + num_tables * table_size * out + out
  layer = _lookup_ffn(out_features=out_features)
  assert _param_count(layer, jnp.ones((1, d))) == expected


@pytest.mark.parametrize("out_features", [None, 40])
def test_lookup_param_count_bh4(out_features):
  d, num_tables, table_size, block_size = 24, 4, 16, 8
  out = out_features or d
  # d = 24 pads to 32, and 16 projections fit in one repeat: 4 * 32 * 8 + 16.
  projection = 4 * 32 * block_size + 16
  expected = 2 * d + projection + num_tables * table_size * out + out
  layer = _lookup_ffn(projection="bh4", out_features=out_features)
  assert _param_count(layer, jnp.ones((1, d))) == expected


def test_lookup_matches_manual():
  layer = _lookup_ffn()
  x = jax.random.normal(jax.random.key(1), (2, 3, 24)) * 3.0 + 1.0
  params = jax.jit(layer.init)(jax.random.key(2), x)
  p = params["params"]

  mean = x.mean(-1, keepdims=True)
  normed = (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  normed = normed * p["layer_norm"]["scale"] + p["layer_norm"]["bias"]
  z = normed @ p["hash_projection"]["kernel"] + p["hash_projection"]["bias"]
  z = z.reshape(2, 3, 4, 4)
  expected = lookup(z, p["tables"], implementation="reference") + p["bias"]

  actual = jax.jit(layer.apply)(params, x)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_lookup_bias_added():
  layer = _lookup_ffn()
  x = jax.random.normal(jax.random.key(1), (2, 24))
  params = jax.jit(layer.init)(jax.random.key(2), x)
  shifted = jax.tree.map(lambda a: a, params)
  shifted["params"]["bias"] = params["params"]["bias"] + 1.0
  apply = jax.jit(layer.apply)
  np.testing.assert_allclose(apply(shifted, x), apply(params, x) + 1.0, rtol=1e-6)


@pytest.mark.parametrize("table_size", [3, 1, 131072, 0, 48])
def test_table_size_rejected(table_size):
  with pytest.raises(ValueError, match=f"got {table_size}"):
    _lookup_ffn(table_size=table_size)


@pytest.mark.parametrize("table_size, code_length", [(2, 1), (256, 8), (65536, 16)])
def test_table_size_accepted(table_size, code_length):
  assert _lookup_ffn(table_size=table_size).code_length == code_length


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_tables", 0),
        ("out_features", 0),
        ("projection", "sparse"),
        ("estimator", "gumbel"),
        ("implementation", "cuda"),
    ],
)
def test_lookup_invalid_field(field, value):
  with pytest.raises(ValueError, match=f"{field} must .* got {value!r}"):
    _lookup_ffn(**{field: value})


def test_lookup_bh4_block_size_rejected():
  with pytest.raises(ValueError, match="block_size must be a power of two, got 12"):
    _lookup_ffn(projection="bh4", block_size=12)


@pytest.mark.parametrize("epsilon", [1e-5, 1.0])
def test_lookup_layer_norm_large_mean(epsilon):
  # Deviations from the mean 40001.5 are +-1.5 and +-0.5 with variance 1.25.
  # E[x^2] - E[x]^2 would lose them to float32 rounding.
  x = jnp.array([[40000.0, 40001.0, 40002.0, 40003.0]])
  layer = _lookup_ffn(layer_norm_epsilon=epsilon)
  expected = np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25 + epsilon)
  np.testing.assert_allclose(_layer_norm_output(layer, x)[0], expected, atol=1e-4)


def test_lookup_layer_norm_default_values():
  x = jnp.array([[40000.0, 40001.0, 40002.0, 40003.0]])
  normed = _layer_norm_output(_lookup_ffn(), x)
  np.testing.assert_allclose(normed[0], [-1.342, -0.447, 0.447, 1.342], atol=1e-3)


@pytest.mark.parametrize("projection", ["dense", "bh4"])
def test_lookup_bf16(projection):
  layer = _lookup_ffn(projection=projection, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 5, 24))
  params = jax.jit(layer.init)(jax.random.key(2), x)

  def loss(params):
    return jnp.sum(layer.apply(params, x).astype(jnp.float32) ** 2)

  y = jax.jit(layer.apply)(params, x)
  grads = jax.jit(jax.grad(loss))(params)
  assert y.dtype == jnp.bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["params"]["tables"]).sum()) > 0.0
  assert float(jnp.abs(grads["params"]["hash_projection"]["bias"]).sum()) > 0.0


def test_lookup_bf16_params():
  layer = _lookup_ffn(projection="bh4", param_dtype=jnp.bfloat16)
  x = jnp.ones((2, 24))
  params = jax.jit(layer.init)(jax.random.key(0), x)
  assert params["params"]["tables"].dtype == jnp.bfloat16
  # As in nn.Dense, dtype=None promotes float32 input and bfloat16 params.
  assert jax.jit(layer.apply)(params, x).dtype == jnp.float32


@pytest.mark.parametrize("implementation", ["reference", "ffi"])
def test_lookup_bf16_tables_keep_float32_master(implementation):
  layer32 = _lookup_ffn(implementation=implementation)
  layer16 = _lookup_ffn(implementation=implementation, table_dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(3), (6, 24))
  params = jax.jit(layer32.init)(jax.random.key(4), x)
  loss = lambda layer: jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))
  grads = jax.jit(loss(layer16))(params)
  y16 = jax.jit(layer16.apply)(params, x)
  y32 = jax.jit(layer32.apply)(params, x)
  assert params["params"]["tables"].dtype == jnp.float32
  assert grads["params"]["tables"].dtype == jnp.float32
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(y16, y32, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("projection", ["dense", "bh4"])
def test_lookup_ffi_matches_reference(projection):
  # With projection="bh4" both the projection and the look-up run as FFI
  # kernels. For this seed no projection lies within rounding of 0, so both
  # paths pick the same codes and agree to float32 rounding.
  x = jax.random.normal(jax.random.key(5), (2, 7, 24))
  layers_by_impl = {
      impl: _lookup_ffn(projection=projection, implementation=impl)
      for impl in ("reference", "ffi")
  }
  params = jax.jit(layers_by_impl["reference"].init)(jax.random.key(6), x)
  results = {}
  for impl, layer in layers_by_impl.items():
    loss = lambda p, x, layer=layer: jnp.sum(layer.apply(p, x) ** 2)
    results[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  reference, ffi = results["reference"], results["ffi"]
  for got, want in zip(jax.tree.leaves(ffi), jax.tree.leaves(reference)):
    scale = max(float(jnp.max(jnp.abs(want))), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def _custom_call_targets(fn, *args) -> set[str]:
  hlo = jax.jit(fn).lower(*args).as_text()
  return {
      target
      for target in (
          "lookupffn_norm_bh4_hash",
          "lookupffn_weighted_gather_bias_fwd",
          "lookupffn_bh4_hash",
          "lookupffn_bh4_mix_fwd",
          "lookupffn_lookup_fwd",
      )
      if target in hlo
  }


def test_lookup_bh4_forward_is_two_kernel_calls():
  layer = _lookup_ffn(projection="bh4", implementation="ffi")
  x = jax.random.normal(jax.random.key(7), (3, 5, 24))
  params = jax.jit(layer.init)(jax.random.key(8), x)
  assert _custom_call_targets(layer.apply, params, x) == {
      "lookupffn_norm_bh4_hash",
      "lookupffn_weighted_gather_bias_fwd",
  }
  # The gradient needs the projections, so it runs the unfused kernels.
  loss = lambda p: jnp.sum(layer.apply(p, x) ** 2)
  assert _custom_call_targets(jax.grad(loss), params) == {
      "lookupffn_bh4_mix_fwd",
      "lookupffn_lookup_fwd",
  }
  reference = _lookup_ffn(projection="bh4").apply(params, x)
  np.testing.assert_allclose(layer.apply(params, x), reference, rtol=1e-4, atol=1e-5)


def test_lookup_bh4_forward_has_no_host_callback():
  # The codes come from the hash, so the gather skips the reference path's
  # range check, a host callback on every call.
  layer = _lookup_ffn(projection="bh4", implementation="auto")
  x = jnp.ones((2, 24))
  params = jax.jit(layer.init)(jax.random.key(10), x)
  assert "callback" not in str(jax.make_jaxpr(layer.apply)(params, x))


def test_lookup_bh4_bfloat16_compute_runs_unfused():
  layer = _lookup_ffn(projection="bh4", implementation="ffi", dtype=jnp.bfloat16)
  x = jnp.ones((2, 24))
  params = jax.jit(layer.init)(jax.random.key(9), x)
  assert _custom_call_targets(layer.apply, params, x) == {
      "lookupffn_bh4_mix_fwd",
      "lookupffn_lookup_fwd",
  }


def test_lookup_table_dtype_rejected():
  with pytest.raises(ValueError, match="table_dtype must be float32 or bfloat16, got"):
    _lookup_ffn(table_dtype=jnp.float16)


@pytest.mark.parametrize("estimator", ["score", "straight_through"])
def test_lookup_projection_gets_gradient(estimator):
  layer = _lookup_ffn(estimator=estimator)
  x = jax.random.normal(jax.random.key(1), (6, 24))
  params = jax.jit(layer.init)(jax.random.key(2), x)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2)))(params)
  kernel_grad = grads["params"]["hash_projection"]["kernel"]
  assert float(jnp.abs(kernel_grad).sum()) > 0.0


def test_lookup_bh4_projection_used():
  layer = _lookup_ffn(projection="bh4")
  shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 24)))
  assert shapes["params"]["hash_projection"]["kernel"].shape == (1, 4, 4, 8, 8)


class _UserModel(nn.Module):
  """A user's model that uses LookupFFN like nn.Dense."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16)(x)
    x = x + layers.LookupFFN(
        num_tables=4, table_size=8, implementation="reference"
    )(x)
    x = nn.relu(x)
    return nn.Dense(3)(x)


def test_composition_jit_and_grad():
  model = _UserModel()
  x = jax.random.normal(jax.random.key(0), (4, 7, 10))
  params = jax.jit(model.init)(jax.random.key(1), x)

  @jax.jit
  def loss_and_grads(params):
    return jax.value_and_grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(params)

  loss, grads = loss_and_grads(params)
  assert jax.eval_shape(model.apply, params, x).shape == (4, 7, 3)
  assert bool(jnp.isfinite(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert float(jnp.abs(grads["params"]["LookupFFN_0"]["tables"]).sum()) > 0.0
  assert float(jnp.abs(grads["params"]["Dense_0"]["kernel"]).sum()) > 0.0


# ---------------------------------------------------------------------------
# DenseFFN


@pytest.mark.parametrize("hidden_features, out_features", [(None, None), (64, 40)])
def test_dense_shapes_and_params(hidden_features, out_features):
  d = 24
  hidden = hidden_features or 4 * d
  out = out_features or d
  layer = layers.DenseFFN(hidden_features=hidden_features, out_features=out_features)
  x = jnp.ones((2, 3, d))
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
  expected_count = 2 * d + (d * hidden + hidden) + (hidden * out + out)
  assert jax.eval_shape(layer.apply, shapes, x).shape == (2, 3, out)
  assert _param_count(layer, x) == expected_count


def test_dense_matches_manual():
  layer = layers.DenseFFN(hidden_features=32)
  x = jax.random.normal(jax.random.key(1), (3, 8)) + 2.0
  params = jax.jit(layer.init)(jax.random.key(2), x)
  p = params["params"]

  mean = x.mean(-1, keepdims=True)
  normed = (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  h = normed @ p["hidden"]["kernel"] + p["hidden"]["bias"]
  h = jax.nn.gelu(h, approximate=False)
  expected = h @ p["output"]["kernel"] + p["output"]["bias"]

  np.testing.assert_allclose(
      jax.jit(layer.apply)(params, x), expected, rtol=1e-5, atol=1e-6
  )


def test_dense_layer_norm_large_mean():
  x = jnp.array([[40000.0, 40001.0, 40002.0, 40003.0]])
  normed = _layer_norm_output(layers.DenseFFN(hidden_features=8), x)
  np.testing.assert_allclose(normed[0], [-1.342, -0.447, 0.447, 1.342], atol=1e-3)


def test_dense_bf16():
  layer = layers.DenseFFN(hidden_features=32, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 8))
  params = jax.jit(layer.init)(jax.random.key(2), x)
  loss = lambda p: jnp.sum(layer.apply(p, x).astype(jnp.float32))
  grads = jax.jit(jax.grad(loss))(params)
  assert jax.eval_shape(layer.apply, params, x).dtype == jnp.bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("field", ["hidden_features", "out_features"])
def test_dense_invalid_width(field):
  with pytest.raises(ValueError, match=f"{field} must be at least 1 or None, got 0"):
    layers.DenseFFN(**{field: 0})


def test_shared_layer_norm_is_exact_variance():
  assert layers.layer_norm(1e-5, None, jnp.float32).use_fast_variance is False


def test_bh4_next_power_used_for_padding():
  # The BH4 projection pads d = 24 to 32, so a block of 32 is valid.
  layer = _lookup_ffn(projection="bh4", block_size=32)
  shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 24)))
  assert shapes["params"]["hash_projection"]["kernel"].shape == (1, 4, 1, 32, 32)
  assert bh4.next_power_of_two(24) == 32
