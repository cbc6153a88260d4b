# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the RoBERTa masked language model and its analytic size and cost."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookupffn_jax import _extension
from lookupffn_jax import models

FFN_TYPES = models.FFN_TYPES
SEQ_LEN = 10


def _config(**overrides) -> models.RobertaConfig:
  """Returns a 2-layer model with tiny shapes, so that compiling dominates the test time."""
  settings = dict(
      vocab_size=64,
      hidden_size=32,
      num_heads=2,
      ffn_hidden_size=64,
      num_tables=4,
      table_size=16,
      block_size=8,
      max_seq_len=16,
      implementation="reference",
  )
  settings.update(overrides)
  return models.RobertaConfig.tiny(**settings)


def _inputs(batch: int = 2, seq_len: int = SEQ_LEN, vocab_size: int = 64):
  input_ids = jax.random.randint(jax.random.key(0), (batch, seq_len), 2, vocab_size)
  return input_ids, jnp.ones((batch, seq_len), jnp.int32)


@functools.lru_cache(maxsize=None)
def _params(config: models.RobertaConfig):
  """Returns initial parameters, cached per config because init compiles slowly."""
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs()
  return model.init(jax.random.key(1), input_ids, mask)


def _init(config: models.RobertaConfig):
  return models.RobertaForMaskedLM(config), _params(config)


def _count(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


# Module-level jitted functions keep one compilation cache for all tests. The
# model is a static argument, so equal configs compile once.
@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, input_ids, mask):
  return model.apply(params, input_ids, mask)


def _loss_and_logits(model, params, input_ids, mask):
  logits = model.apply(params, input_ids, mask)
  return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits


# Returns ((loss, logits), grads).
_loss_logits_and_grads = jax.jit(
    jax.value_and_grad(_loss_and_logits, argnums=1, has_aux=True), static_argnums=0
)


def _stack_layers(params, num_layers: int):
  """Converts "layers_0", "layers_1", ... into one "layers" entry for nn.scan."""
  inner = dict(params["params"])
  per_layer = [inner.pop(f"layers_{i}") for i in range(num_layers)]
  inner["layers"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_layer)
  return {"params": inner}


# ---------------------------------------------------------------------------
# Shapes, sizes and costs


@pytest.mark.parametrize("ffn", FFN_TYPES)
def test_logits_shape(ffn):
  config = _config(ffn=ffn)
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs(batch=3)
  shapes = jax.eval_shape(model.init, jax.random.key(0), input_ids, mask)
  logits = jax.eval_shape(model.apply, shapes, input_ids, mask)
  assert logits.shape == (3, SEQ_LEN, 64)
  assert logits.dtype == jnp.float32


def test_prediction_positions_select_logits():
  config = _config(ffn="lookup_dense")
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs(batch=2)
  params = model.init(jax.random.key(0), input_ids, mask)
  positions = jnp.array([[0, 3, 3], [5, 1, 2]], jnp.int32)
  all_logits = model.apply(params, input_ids, mask)
  selected = model.apply(params, input_ids, mask, prediction_positions_BxP=positions)
  assert selected.shape == (2, 3, 64)
  np.testing.assert_allclose(
      selected, jnp.take_along_axis(all_logits, positions[..., None], axis=1), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("ffn", FFN_TYPES)
@pytest.mark.parametrize("preset", ["tiny", "small_512"])
def test_param_count_matches(preset, ffn, scan_layers):
  config = getattr(models.RobertaConfig, preset)(ffn=ffn, scan_layers=scan_layers)
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs(batch=1, seq_len=8, vocab_size=config.vocab_size)
  shapes = jax.eval_shape(model.init, jax.random.key(0), input_ids, mask)
  assert _count(shapes) == models.param_count(config)


def test_tables_shape():
  config = _config(ffn="lookup_bh4")
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs()
  shapes = jax.eval_shape(model.init, jax.random.key(0), input_ids, mask)
  assert shapes["params"]["layers_1"]["ffn"]["tables"].shape == (4, 16, 32)
  assert shapes["params"]["position_embeddings"]["embedding"].shape == (18, 32)


def test_flops_small_512_dense():
  flops = models.flops_per_token(models.RobertaConfig.small_512(ffn="dense"))
  # 4 layers * 2 * 2 * 512 * 2048.
  assert flops["ffn"] == 16_777_216
  # 4 layers * (8 * 512^2 + 4 * 512 * 512).
  assert flops["attention"] == 12_582_912
  # 2 * 512^2 + 2 * 512 * 32768.
  assert flops["embeddings_and_head"] == 34_078_720
  assert flops["total"] == 63_438_848


def test_flops_small_512_lookup():
  dense_projection = models.flops_per_token(models.RobertaConfig.small_512(ffn="lookup_dense"))
  bh4_projection = models.flops_per_token(models.RobertaConfig.small_512(ffn="lookup_bh4"))
  # 4 layers * (2 * 512 * 1024 + 2 * 128 * 512).
  assert dense_projection["ffn"] == 4_718_592
  # 4 layers * (2 * 4 * (2 * 512 * 64 + 512 * 9) + 2 * 128 * 512).
  assert bh4_projection["ffn"] == 2_768_896


def test_flops_total_is_sum():
  flops = models.flops_per_token(_config(ffn="lookup_bh4"))
  parts = flops["ffn"] + flops["attention"] + flops["embeddings_and_head"]
  assert flops["total"] == parts


def test_flops_attention_scales_with_seq_len():
  config = _config()
  short = models.flops_per_token(config, seq_len=8)["attention"]
  long = models.flops_per_token(config, seq_len=16)["attention"]
  assert long - short == config.num_layers * 4 * 8 * config.hidden_size


# ---------------------------------------------------------------------------
# Behaviour


# LookupFFN is covered through "lookup_bh4", and "lookup_dense" differs only
# in its per-token projection.
@pytest.mark.parametrize("ffn", ["dense", "lookup_bh4"])
def test_padding_appended(ffn):
  model, params = _init(_config(ffn=ffn))
  input_ids, mask = _inputs()
  padded_ids = jnp.pad(input_ids, ((0, 0), (0, 5)), constant_values=1)
  padded_mask = jnp.pad(mask, ((0, 0), (0, 5)))

  logits = _apply(model, params, input_ids, mask)
  padded_logits = _apply(model, params, padded_ids, padded_mask)
  np.testing.assert_allclose(padded_logits[:, :SEQ_LEN], logits, rtol=1e-5, atol=1e-5)


def test_padding_prepended():
  # Position ids count real tokens only, so left padding moves no position.
  model, params = _init(_config(ffn="lookup_bh4"))
  input_ids, mask = _inputs()
  padded_ids = jnp.pad(input_ids, ((0, 0), (3, 0)), constant_values=1)
  padded_mask = jnp.pad(mask, ((0, 0), (3, 0)))

  logits = _apply(model, params, input_ids, mask)
  padded_logits = _apply(model, params, padded_ids, padded_mask)
  np.testing.assert_allclose(padded_logits[:, 3:], logits, rtol=1e-5, atol=1e-5)


def test_padding_masked_in_attention():
  # Changing the id under a padding position must not change real tokens.
  model, params = _init(_config(ffn="dense"))
  input_ids, mask = _inputs()
  mask = mask.at[:, -2:].set(0)
  other_ids = input_ids.at[:, -2:].set(7)

  logits = _apply(model, params, input_ids, mask)
  other_logits = _apply(model, params, other_ids, mask)
  np.testing.assert_allclose(other_logits[:, :-2], logits[:, :-2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "batch, heads, seq_len, expected",
    [
        (8, 8, 512, (1, 2)),  # small_512 at 8 x 512: 1 MiB of scores per head
        (1, 8, 512, (1, 2)),
        (2, 6, 512, (1, 2)),
        (2, 3, 512, (1, 1)),  # no divisor of 3 heads fits two heads
        (3, 8, 1024, (1, 1)),  # one head alone exceeds the budget
        (6, 8, 128, (3, 8)),  # 4 sequences fit, and 3 divides the batch
        (64, 4, 128, (8, 4)),
        (7, 2, 128, (7, 2)),  # the whole batch fits
        (0, 8, 512, (0, 8)),
        (4, 0, 512, (4, 0)),
    ],
)
def test_attention_chunk_shape(batch, heads, seq_len, expected):
  assert models.attention_chunk_shape(batch, heads, seq_len, seq_len) == expected


def test_attention_chunk_shape_budget():
  assert models.attention_chunk_shape(8, 8, 512, 512, chunk_bytes=2**30) == (8, 8)
  assert models.attention_chunk_shape(8, 8, 512, 512, chunk_bytes=2**24) == (2, 8)


@pytest.mark.parametrize("platform, chunked", [("cpu", True), ("cuda", False), ("tpu", False)])
def test_attention_chunks_only_on_cpu(platform, chunked):
  # small_512 at 8 x 512 has 64 MiB of scores per layer: chunks of 2 MiB on
  # CPU, one block within the 1 GiB of other platforms. Lowering for a
  # platform needs no device of that kind.
  q = jax.ShapeDtypeStruct((8, 512, 8, 64), jnp.float32)
  mask = jax.ShapeDtypeStruct((8, 512), jnp.int32)
  lowered = jax.jit(models.dot_product_attention).trace(q, q, q, mask).lower(
      lowering_platforms=(platform,)
  )
  assert ("stablehlo.while" in lowered.as_text()) == chunked


def _naive_attention(q, k, v, mask):
  logits = jnp.einsum("bqhk,bshk->bhqs", q, k)
  logits = jnp.where(mask[:, None, None, :] > 0, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  weights = jnp.where(jnp.isnan(weights), 1.0 / mask.shape[1], weights)
  return jnp.einsum("bhqs,bshk->bqhk", weights, v)


def _attention_operands(batch=6, seq_len=12, heads=2, head_dim=4):
  q, k, v = (
      jax.random.normal(jax.random.key(i), (batch, seq_len, heads, head_dim))
      for i in range(3)
  )
  mask = jnp.ones((batch, seq_len), jnp.int32)
  mask = mask.at[0, 7:].set(0).at[3, 1:].set(0).at[4].set(0)  # row 4 is all padding
  return q, k, v, mask


@pytest.mark.parametrize(
    "chunk_bytes", [2**30, 2 * 2 * 12 * 12 * 4, 2 * 12 * 12 * 4, 1]
)
def test_attention_chunks_match_naive(monkeypatch, chunk_bytes):
  # 2**30 runs the batch of 6 at once and 2 * 2 * 12 * 12 * 4 in chunks of
  # 2 sequences. 2 * 12 * 12 * 4 runs one sequence at a time, and 1 byte one
  # head of one sequence at a time.
  monkeypatch.setattr(models, "ATTENTION_CHUNK_BYTES", chunk_bytes)
  q, k, v, mask = _attention_operands()

  def loss(fn, q, k, v):
    return jnp.sum(jnp.sin(fn(q, k, v, mask)))

  out = jax.jit(models.dot_product_attention)(q, k, v, mask)
  np.testing.assert_allclose(out, _naive_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)
  # A row of padding alone gives every key the same weight.
  np.testing.assert_allclose(out[4], jnp.broadcast_to(v[4].mean(0), out[4].shape), atol=1e-6)

  grads = jax.grad(functools.partial(loss, models.dot_product_attention), (0, 1, 2))(q, k, v)
  naive_grads = jax.grad(functools.partial(loss, _naive_attention), (0, 1, 2))(q, k, v)
  # The naive softmax of a row of padding alone is NaN, and so are its
  # gradients. The other rows do not depend on it.
  for grad, naive_grad in zip(grads, naive_grads):
    np.testing.assert_allclose(
        np.delete(grad, 4, axis=0), np.delete(naive_grad, 4, axis=0), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 5, 3), (2, 5, 3), (2, 5, 3), (2, 5)), "must have shape"),
        (((2, 5, 3, 4), (2, 6, 3, 8), (2, 6, 3, 4), (2, 6)), "must match q"),
        (((2, 5, 3, 4), (2, 6, 3, 4), (2, 5, 3, 4), (2, 6)), "must match k"),
        (
            ((2, 5, 3, 4), (2, 6, 3, 4), (2, 6, 3, 4), (2, 5)),
            r"must be \[batch, number of keys\]",
        ),
    ],
)
def test_attention_rejects_bad_shapes(shapes, message):
  q, k, v, mask = (jnp.ones(shape) for shape in shapes)
  with pytest.raises(ValueError, match=message):
    models.dot_product_attention(q, k, v, mask)


@pytest.mark.parametrize("rate", [1.0, -0.5])
def test_attention_rejects_dropout_rate(rate):
  q, k, v, mask = _attention_operands()
  with pytest.raises(ValueError, match=f"dropout_rate must be in \\[0, 1\\), got {rate}"):
    models.dot_product_attention(q, k, v, mask, rate, jax.random.key(0))


@pytest.mark.parametrize("rate", ["0.1", None, True])
def test_attention_rejects_rate_type(rate):
  q, k, v, mask = _attention_operands()
  with pytest.raises(TypeError, match="dropout_rate must be a Python float, got"):
    models.dot_product_attention(q, k, v, mask, rate, jax.random.key(0))


def test_attention_accepts_lists():
  q, k, v, mask = _attention_operands(batch=2, seq_len=3, heads=1, head_dim=2)
  out = models.dot_product_attention(q.tolist(), k.tolist(), v.tolist(), mask.tolist())
  np.testing.assert_allclose(out, models.dot_product_attention(q, k, v, mask), rtol=1e-6)


def test_attention_float64_logits():
  with jax.enable_x64(True):
    q, k, v = (
        jax.random.normal(jax.random.key(i), (2, 12, 2, 4), jnp.float64) for i in range(3)
    )
    mask = jnp.ones((2, 12), jnp.int32)
    out = models.dot_product_attention(q, k, v, mask)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, _naive_attention(q, k, v, mask), rtol=1e-12, atol=1e-13)


def test_attention_rejects_traced_rate():
  q, k, v, mask = _attention_operands()
  with pytest.raises(TypeError, match="not a traced value"):
    jax.jit(models.dot_product_attention)(q, k, v, mask, 0.5, jax.random.key(0))
  attend = lambda rate: models.dot_product_attention(q, k, v, mask, rate, jax.random.key(0))
  with pytest.raises(TypeError, match="not a traced value"):
    jax.grad(lambda rate: jnp.sum(attend(rate)))(0.1)


def test_attention_bf16_logits_float32():
  # The logits here reach 78. Rounded to bf16 before the softmax they put
  # the output 0.041 off. In float32 only the inputs, the weights and the
  # output are rounded, 0.009 off.
  q, k, v, mask = _attention_operands()
  q = q * 8.0
  q16, k16, v16 = (a.astype(jnp.bfloat16) for a in (q, k, v))
  out = models.dot_product_attention(q16, k16, v16, mask)
  exact = _naive_attention(*(a.astype(jnp.float32) for a in (q16, k16, v16)), mask)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.delete(out.astype(jnp.float32), 4, axis=0),
      np.delete(exact, 4, axis=0),
      atol=0.02,
  )


def test_attention_empty_batch():
  q, k, v, mask = (a[:0] for a in _attention_operands())
  assert models.dot_product_attention(q, k, v, mask).shape == (0, 12, 2, 4)


def test_attention_no_heads(monkeypatch):
  monkeypatch.setattr(models, "ATTENTION_CHUNK_BYTES", 1)
  q, k, v, mask = _attention_operands(heads=0)
  assert models.dot_product_attention(q, k, v, mask).shape == (6, 12, 0, 4)


@pytest.mark.parametrize("chunk_bytes", [2**30, 2 * 12 * 12 * 4, 1])
def test_attention_dropout(monkeypatch, chunk_bytes):
  monkeypatch.setattr(models, "ATTENTION_CHUNK_BYTES", chunk_bytes)
  q, k, v, mask = _attention_operands()
  attend = jax.jit(models.dot_product_attention, static_argnums=4)

  first = attend(q, k, v, mask, 0.5, jax.random.key(1))
  np.testing.assert_array_equal(attend(q, k, v, mask, 0.5, jax.random.key(1)), first)
  assert not np.allclose(attend(q, k, v, mask, 0.5, jax.random.key(2)), first)
  # Rate 0 ignores the key, and every chunk draws its own mask.
  np.testing.assert_array_equal(
      attend(q, k, v, mask, 0.0, jax.random.key(1)), attend(q, k, v, mask, 0.0, None)
  )
  assert not np.allclose(first[1], first[2])
  # Dropout rescales the kept weights, so the output keeps its mean.
  wide_q, wide_k, wide_v = (
      jax.random.normal(jax.random.key(i), (2, 64, 2, 4)) for i in range(3)
  )
  wide_mask = jnp.ones((2, 64), jnp.int32)
  dropped = attend(wide_q, wide_k, wide_v, wide_mask, 0.5, jax.random.key(3))
  undropped = attend(wide_q, wide_k, wide_v, wide_mask, 0.0, None)
  np.testing.assert_allclose(dropped.mean(), undropped.mean(), atol=0.05)


@pytest.mark.parametrize(
    "ffn, estimator", [("lookup_dense", "score"), ("lookup_dense", "straight_through")]
)
def test_ffi_matches_reference(ffn, estimator):
  if _extension.load() is None:
    pytest.skip(f"the FFI extension is not built: {_extension.load_error()!r}")
  reference_config = _config(ffn=ffn, estimator=estimator)
  reference_model, params = _init(reference_config)
  ffi_model = models.RobertaForMaskedLM(
      dataclasses.replace(reference_config, implementation="ffi")
  )
  input_ids, mask = _inputs()

  (_, reference_logits), reference_grads = _loss_logits_and_grads(
      reference_model, params, input_ids, mask
  )
  (_, ffi_logits), ffi_grads = _loss_logits_and_grads(ffi_model, params, input_ids, mask)
  np.testing.assert_allclose(ffi_logits, reference_logits, rtol=1e-5, atol=1e-5)
  for path, ffi_grad in jax.tree_util.tree_leaves_with_path(ffi_grads):
    np.testing.assert_allclose(
        ffi_grad,
        _leaf_at(reference_grads, path),
        rtol=1e-4,
        atol=1e-6,
        err_msg=jax.tree_util.keystr(path),
    )


def _leaf_at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@pytest.mark.parametrize("ffn", ["dense", "lookup_bh4"])
def test_bf16_close_to_f32(ffn):
  # bfloat16 rounds to 8 significant bits, a relative error of up to 2**-9.
  # A 2-layer model stays within 3% relative L2 error of float32, including
  # the few hash bits that flip where a projection is near zero.
  model, params = _init(_config(ffn=ffn))
  bf16_model = models.RobertaForMaskedLM(_config(ffn=ffn, dtype=jnp.bfloat16))
  input_ids, mask = _inputs()

  logits = _apply(model, params, input_ids, mask)
  bf16_logits = _apply(bf16_model, params, input_ids, mask)
  relative_error = jnp.linalg.norm(bf16_logits - logits) / jnp.linalg.norm(logits)
  assert float(relative_error) < 0.03


def test_bf16_gradients_float32():
  params = _params(_config(ffn="lookup_dense"))
  model = models.RobertaForMaskedLM(_config(ffn="lookup_dense", dtype=jnp.bfloat16))
  input_ids, mask = _inputs()
  _, grads = _loss_logits_and_grads(model, params, input_ids, mask)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "scan_layers, remat", [(True, False), (True, True), (False, True)]
)
def test_layer_options_match_plain(scan_layers, remat):
  plain_model, plain_params = _init(_config(ffn="lookup_dense"))
  model = models.RobertaForMaskedLM(
      _config(ffn="lookup_dense", scan_layers=scan_layers, remat=remat)
  )
  params = _stack_layers(plain_params, 2) if scan_layers else plain_params
  input_ids, mask = _inputs()

  (_, plain_logits), plain_grads = _loss_logits_and_grads(
      plain_model, plain_params, input_ids, mask
  )
  (_, logits), grads = _loss_logits_and_grads(model, params, input_ids, mask)
  if scan_layers:
    plain_grads = _stack_layers(plain_grads, 2)

  np.testing.assert_allclose(logits, plain_logits, rtol=1e-5, atol=1e-5)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    np.testing.assert_allclose(
        grad,
        _leaf_at(plain_grads, path),
        rtol=1e-4,
        atol=1e-6,
        err_msg=jax.tree_util.keystr(path),
    )


def test_scan_init_stacks_layers():
  config = _config(ffn="dense", scan_layers=True, num_layers=3)
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs()
  shapes = jax.eval_shape(model.init, jax.random.key(0), input_ids, mask)
  assert "layers_0" not in shapes["params"]
  assert shapes["params"]["layers"]["ffn"]["hidden"]["kernel"].shape == (3, 32, 64)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_dropout_applied(scan_layers):
  plain_params = _params(_config(ffn="dense"))
  model = models.RobertaForMaskedLM(_config(ffn="dense", scan_layers=scan_layers))
  params = _stack_layers(plain_params, 2) if scan_layers else plain_params
  input_ids, mask = _inputs()

  @jax.jit
  def train_logits(params, key):
    return model.apply(params, input_ids, mask, deterministic=False, rngs={"dropout": key})

  # Without dropout the two keys would give the same logits.
  first = train_logits(params, jax.random.key(1))
  second = train_logits(params, jax.random.key(2))
  assert not np.allclose(first, second, atol=1e-4)


def test_embeddings_layer_norm_large_mean():
  # Puts [40000, 40001, 40002, 40003] into the embedding sum of token 5.
  config = _config(hidden_size=4, num_heads=2, ffn="dense")
  model = models.RobertaForMaskedLM(config)
  input_ids = jnp.array([[5]])
  mask = jnp.ones((1, 1), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), input_ids, mask)
  inner = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, leaf.dtype), params["params"])
  inner["word_embeddings"] = {
      "embedding": jnp.zeros((64, 4)).at[5].set(jnp.arange(40000.0, 40004.0))
  }
  inner["position_embeddings"] = {"embedding": jnp.zeros((18, 4))}
  inner["embeddings_layer_norm"] = {"scale": jnp.ones(4), "bias": jnp.zeros(4)}

  apply = jax.jit(lambda p: model.apply(p, input_ids, mask, capture_intermediates=True))
  _, state = apply({"params": inner})
  normed = state["intermediates"]["embeddings_layer_norm"]["__call__"][0]
  np.testing.assert_allclose(normed[0, 0], [-1.342, -0.447, 0.447, 1.342], atol=1e-3)


def test_seq_too_long():
  config = _config(max_seq_len=8)
  model = models.RobertaForMaskedLM(config)
  input_ids, mask = _inputs(seq_len=9)
  with pytest.raises(ValueError, match="sequence length 9 exceeds max_seq_len 8"):
    jax.eval_shape(model.init, jax.random.key(0), input_ids, mask)


def test_mask_shape_mismatch():
  model = models.RobertaForMaskedLM(_config())
  input_ids, _ = _inputs()
  with pytest.raises(ValueError, match="must both have shape"):
    jax.eval_shape(model.init, jax.random.key(0), input_ids, jnp.ones((2, 3)))


# ---------------------------------------------------------------------------
# Config


def test_tiny_preset():
  config = models.RobertaConfig.tiny(ffn="lookup_dense")
  assert (config.num_layers, config.hidden_size, config.num_heads) == (2, 128, 4)
  assert (config.max_seq_len, config.num_tables, config.table_size) == (128, 32, 256)
  assert config.ffn == "lookup_dense"


def test_small_512_preset():
  config = models.RobertaConfig.small_512(ffn="lookup_bh4", num_layers=6)
  assert (config.hidden_size, config.num_heads, config.head_dim) == (512, 8, 64)
  assert (config.dense_hidden_size, config.max_seq_len) == (2048, 512)
  assert (config.num_tables, config.table_size, config.block_size) == (128, 256, 64)
  assert config.num_layers == 6


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(ffn="moe"), "ffn must be one of"),
        (dict(hidden_size=30, num_heads=4), "hidden_size 30 must be a multiple"),
        (dict(table_size=3), "table_size must be a power of two .* got 3"),
        (dict(ffn="lookup_bh4", block_size=256), "block_size .* got 256"),
        (dict(pad_token_id=64), "pad_token_id .* got 64"),
        (dict(hidden_dropout_rate=1.0), "hidden_dropout_rate .* got 1.0"),
        (dict(estimator="gumbel"), "estimator must be one of"),
        (dict(implementation="cuda"), "implementation must be one of"),
        (dict(num_layers=0), "num_layers must be at least 1, got 0"),
    ],
)
def test_config_rejected(overrides, message):
  with pytest.raises(ValueError, match=message):
    _config(**overrides)
