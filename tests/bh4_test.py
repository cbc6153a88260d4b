# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the Walsh-Hadamard transform and the BH4 projection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from lookupffn_jax import bh4


def _init_and_apply(layer, x, seed=0):
  """Returns the parameters of `layer` and its output on `x`, each jitted."""
  params = jax.jit(layer.init)(jax.random.key(seed), x)
  return params, jax.jit(layer.apply)(params, x)


_hadamard = jax.jit(bh4.hadamard_transform)


@pytest.mark.parametrize("n", [1, 2, 4, 16, 128])
def test_hadamard_matches_matrix(n):
  x = jax.random.normal(jax.random.key(n), (3, 2, n))
  expected = np.asarray(x) @ scipy.linalg.hadamard(n) / np.sqrt(n)
  np.testing.assert_allclose(_hadamard(x), expected, rtol=1e-5, atol=1e-5)


def test_hadamard_is_involution():
  # H / sqrt(n) is symmetric and orthogonal, so it is its own inverse.
  x = jax.random.normal(jax.random.key(0), (5, 64))
  twice = _hadamard(_hadamard(x))
  np.testing.assert_allclose(twice, x, rtol=1e-5, atol=1e-5)


def test_hadamard_has_no_matmul():
  jaxpr = jax.make_jaxpr(bh4.hadamard_transform)(jnp.ones((2, 256)))
  assert "dot_general" not in str(jaxpr)


def test_hadamard_keeps_dtype():
  x = jnp.ones((2, 8), jnp.bfloat16)
  assert _hadamard(x).dtype == jnp.bfloat16


def test_hadamard_rejects_non_power_of_two():
  with pytest.raises(ValueError, match="got shape \\(2, 12\\)"):
    bh4.hadamard_transform(jnp.ones((2, 12)))


@pytest.mark.parametrize("n, expected", [(1, 1), (2, 2), (3, 4), (48, 64), (64, 64), (65, 128)])
def test_next_power_of_two(n, expected):
  assert bh4.next_power_of_two(n) == expected


def test_shapes():
  layer = bh4.BH4(out_features=96, block_size=16)
  x = jnp.ones((2, 3, 48))
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]

  # d = 48 pads to D' = 64, and 96 outputs need R = 2 repeats of 64 / 16 = 4
  # blocks each.
  assert shapes["kernel"].shape == (2, 4, 4, 16, 16)
  assert shapes["bias"].shape == (96,)
  assert jax.eval_shape(layer.apply, {"params": shapes}, x).shape == (2, 3, 96)


@pytest.mark.parametrize(
    "in_features, out_features, block_size",
    [(48, 96, 16), (64, 64, 64), (32, 100, 8), (512, 1024, 64), (5, 3, 2)],
)
def test_param_count_formula(in_features, out_features, block_size):
  layer = bh4.BH4(out_features=out_features, block_size=block_size)
  shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, in_features)))
  count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
  assert count == bh4.bh4_param_count(in_features, out_features, block_size)


def test_flops_formula():
  # D' = 512, R = 2: 2 * 4 * (2 * 512 * 64 + 512 * 9).
  assert bh4.bh4_flops(512, 1024, 64) == 561_152


def test_flops_below_dense():
  assert bh4.bh4_flops(512, 1024, 64) < 2 * 512 * 1024


def test_orthogonal_init_is_q_of_gaussian():
  # The same draw as a QR of the standard normal matrix with R's diagonal
  # made positive, the construction of jax.random.orthogonal.
  key = jax.random.key(3)
  gaussian = np.asarray(jax.random.normal(key, (5, 16, 16), jnp.float32), np.float64)
  q, r = np.linalg.qr(gaussian)
  expected = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  np.testing.assert_allclose(
      bh4.orthogonal_blocks_init(key, (5, 16, 16)), expected, atol=2e-5
  )


def test_orthogonal_init_needs_no_lapack():
  # jaxlib's CPU LAPACK QR can deadlock when several calls run at once.
  hlo = jax.jit(
      bh4.orthogonal_blocks_init, static_argnums=(1,)
  ).lower(jax.random.key(0), (2, 4, 8, 8)).as_text()
  assert "lapack" not in hlo.lower()


def test_blocks_orthogonal_at_init():
  layer = bh4.BH4(out_features=32, block_size=8)
  params, _ = _init_and_apply(layer, jnp.ones((1, 32)))
  kernel = params["params"]["kernel"]
  gram = jnp.einsum("...ij,...kj->...ik", kernel, kernel)
  np.testing.assert_allclose(gram, jnp.broadcast_to(jnp.eye(8), gram.shape), atol=1e-5)


def test_norm_kept_at_init():
  # Orthogonal blocks and an orthonormal H keep each token's norm exactly,
  # up to float32 rounding, when d = D' and mix = 1.
  x = jax.random.normal(jax.random.key(1), (64, 128))
  layer = bh4.BH4(out_features=128, block_size=16, mix=1.0)
  _, y = _init_and_apply(layer, x)
  np.testing.assert_allclose(
      jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
  )


@pytest.mark.parametrize("mix", [1.0, 0.7])
def test_variance_kept_at_init(mix):
  # The input has unit variance. With mix = 1 the output variance is 1, and
  # with the identity mix about mix**2 + (1 - mix)**2. With 512 x 256 samples
  # the estimate lands well within 3%.
  x = jax.random.normal(jax.random.key(3), (512, 256))
  layer = bh4.BH4(out_features=512, block_size=32, mix=mix)
  _, y = _init_and_apply(layer, x)
  expected = mix**2 + (1.0 - mix) ** 2
  assert abs(float(jnp.var(y)) / expected - 1.0) < 0.03


def test_mix_zero_tiles_input():
  layer = bh4.BH4(out_features=5, block_size=2, mix=0.0)
  x = jnp.array([[1.0, 2.0]])
  _, y = _init_and_apply(layer, x)
  np.testing.assert_allclose(y, [[1.0, 2.0, 1.0, 2.0, 1.0]])


def test_bias_added():
  layer = bh4.BH4(out_features=4, block_size=2, mix=0.0)
  x = jnp.zeros((1, 4))
  params = {"params": {"bias": jnp.arange(4.0), "kernel": jnp.zeros((1, 4, 2, 2, 2))}}
  np.testing.assert_allclose(layer.apply(params, x), [[0.0, 1.0, 2.0, 3.0]])


@pytest.mark.parametrize("implementation", ["reference", "auto"])
def test_matches_dense_composition(implementation):
  # Checks the vectorised repeats against an explicit product of matrices.
  in_features, out_features, block_size = 8, 12, 4
  layer = bh4.BH4(
      out_features=out_features, block_size=block_size, implementation=implementation
  )
  x = jax.random.normal(jax.random.key(5), (3, in_features))
  params, y = _init_and_apply(layer, x)
  kernel = np.asarray(params["params"]["kernel"])

  hadamard = scipy.linalg.hadamard(8) / np.sqrt(8)
  outputs = []
  for repeat in range(kernel.shape[0]):
    u = np.asarray(x)
    for factor in range(4):
      blocks = scipy.linalg.block_diag(*kernel[repeat, factor])
      u = (u @ blocks) @ hadamard
    outputs.append(u)
  projected = np.concatenate(outputs, axis=-1)[:, :out_features]
  x_tiled = np.tile(np.asarray(x), (1, 2))[:, :out_features]
  expected = 0.7 * projected + 0.3 * x_tiled

  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_bf16_compute():
  layer = bh4.BH4(out_features=16, block_size=4, dtype=jnp.bfloat16)
  x = jnp.ones((2, 16))
  params, y = _init_and_apply(layer, x)
  assert params["params"]["kernel"].dtype == jnp.float32
  assert y.dtype == jnp.bfloat16


def test_bf16_params():
  layer = bh4.BH4(out_features=16, block_size=4, param_dtype=jnp.bfloat16)
  params, y = _init_and_apply(layer, jnp.ones((2, 16)))
  assert params["params"]["kernel"].dtype == jnp.bfloat16
  # As in nn.Dense, dtype=None promotes float32 input and bfloat16 params.
  assert y.dtype == jnp.float32


def test_gradient_finite():
  layer = bh4.BH4(out_features=24, block_size=4)
  x = jax.random.normal(jax.random.key(0), (2, 10))
  params, _ = _init_and_apply(layer, x)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2)))(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("block_size", [0, 3, 48])
def test_block_size_not_power_of_two(block_size):
  with pytest.raises(ValueError, match=f"got {block_size}"):
    bh4.BH4(out_features=8, block_size=block_size)


def test_block_size_above_padded_width():
  layer = bh4.BH4(out_features=8, block_size=64)
  with pytest.raises(ValueError, match="block_size 64 is larger"):
    jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 20)))


def test_hadamard_rejects_integers():
  with pytest.raises(ValueError, match="floating dtype, got int32"):
    bh4.hadamard_transform(jnp.arange(4, dtype=jnp.int32))


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(out_features=None), "out_features must be an integer of at least 1, got None"),
        (dict(out_features=10.0), "out_features must be an integer of at least 1, got 10.0"),
        (dict(out_features=8, block_size=16.0), "block_size must be a power of two, got 16.0"),
        (dict(out_features=8, block_size=True), "block_size must be a power of two, got True"),
    ],
)
def test_module_rejects_bad_settings(settings, message):
  with pytest.raises(ValueError, match=message):
    bh4.BH4(**settings)


@pytest.mark.parametrize("shape", [(), (3, 0)])
def test_module_rejects_inputs_without_features(shape):
  layer = bh4.BH4(out_features=8, block_size=1)
  with pytest.raises(ValueError, match=r"d >= 1 features"):
    layer.init(jax.random.key(0), jnp.zeros(shape))


def test_module_ffi_with_bfloat16_compute():
  # The kernel runs in float32 and the output is cast back.
  x = jax.random.normal(jax.random.key(0), (3, 32))
  outputs = {}
  for implementation in ("ffi", "reference"):
    layer = bh4.BH4(
        out_features=48, block_size=8, dtype=jnp.bfloat16, implementation=implementation
    )
    params = layer.init(jax.random.key(1), x)
    outputs[implementation] = layer.apply(params, x)
  assert outputs["ffi"].dtype == jnp.bfloat16
  np.testing.assert_allclose(
      outputs["ffi"].astype(jnp.float32), outputs["reference"].astype(jnp.float32),
      rtol=5e-2, atol=5e-2,
  )


def test_module_rejects_unknown_implementation():
  with pytest.raises(ValueError, match="got 'fast'"):
    bh4.BH4(out_features=8, implementation="fast")
