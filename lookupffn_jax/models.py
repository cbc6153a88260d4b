# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A pre-norm RoBERTa masked language model whose FFN is dense or LookupFFN.

`RobertaConfig` sets the model size and the FFN type, `RobertaForMaskedLM`
is the Flax module, and `param_count` and `flops_per_token` give the analytic
size and forward cost of a config.
"""

import dataclasses
import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from lookupffn_jax import bh4 as bh4_lib
from lookupffn_jax import layers
from lookupffn_jax.lookup import ESTIMATORS
from lookupffn_jax.lookup import IMPLEMENTATIONS

FFN_TYPES = ("dense", "lookup_dense", "lookup_bh4")


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
  """Hyperparameters of `RobertaForMaskedLM`.

  The defaults are the `tiny` preset with a dense FFN. `ffn` selects the
  feed-forward block: "dense" (`DenseFFN`), or `LookupFFN` with a dense
  ("lookup_dense") or BH4 ("lookup_bh4") hash projection.
  """

  # Vocabulary size of the tokenizer, which is also the width of the MLM output.
  vocab_size: int = 8192
  # Model width d.
  hidden_size: int = 128
  # Number of encoder layers.
  num_layers: int = 2
  # Number of attention heads, which must divide hidden_size.
  num_heads: int = 4
  # Feed-forward block: "dense", "lookup_dense" or "lookup_bh4".
  ffn: str = "dense"
  # Hidden width of the dense FFN (default: 4 * hidden_size).
  ffn_hidden_size: int | None = None
  # Number of LookupFFN hash tables.
  num_tables: int = 32
  # Rows per LookupFFN table, a power of two from 2 to 65536.
  table_size: int = 256
  # Block size of the BH4 hash projection ("lookup_bh4" only).
  block_size: int = 32
  # Gradient estimator of the look-up: "score" or "straight_through".
  estimator: str = "score"
  # Look-up implementation: "auto", "ffi" or "reference".
  implementation: str = "auto"
  # Maximum number of tokens per sequence.
  max_seq_len: int = 128
  # Dropout rate on the embeddings and on each sublayer output.
  hidden_dropout_rate: float = 0.1
  # Dropout rate on the attention weights.
  attention_dropout_rate: float = 0.1
  # Id of the padding token, 1 in RoBERTa's tokenizer.
  pad_token_id: int = 1
  # Epsilon of every LayerNorm.
  layer_norm_epsilon: float = 1e-5
  # Standard deviation of the normal initializer of embeddings and Dense kernels.
  initializer_stddev: float = 0.02
  # Compute dtype, such as jnp.bfloat16. Softmax and the look-up run in float32.
  dtype: Any = jnp.float32
  # Parameter storage dtype.
  param_dtype: Any = jnp.float32
  # Dtype the LookupFFN tables are read in: float32 or bfloat16.
  table_dtype: Any = jnp.float32
  # Run the layers with `nn.scan`, so their parameters are stacked under one name.
  scan_layers: bool = False
  # Recompute each layer's activations in the backward pass (`nn.remat`).
  remat: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                 "num_tables", "max_seq_len"):
      value = getattr(self, name)
      if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if self.ffn not in FFN_TYPES:
      raise ValueError(f"ffn must be one of {FFN_TYPES}, got {self.ffn!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} must be a multiple of num_heads"
          f" {self.num_heads}"
      )
    if self.ffn_hidden_size is not None and self.ffn_hidden_size < 1:
      raise ValueError(
          f"ffn_hidden_size must be at least 1 or None, got {self.ffn_hidden_size}"
      )
    layers.code_length_for(self.table_size)
    if self.ffn == "lookup_bh4":
      padded = bh4_lib.next_power_of_two(self.hidden_size)
      if not bh4_lib.is_power_of_two(self.block_size) or self.block_size > padded:
        raise ValueError(
            f"block_size must be a power of two of at most {padded} for"
            f" hidden_size {self.hidden_size}, got {self.block_size}"
        )
    if self.estimator not in ESTIMATORS:
      raise ValueError(
          f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}"
      )
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(
          f"implementation must be one of {IMPLEMENTATIONS}, got"
          f" {self.implementation!r}"
      )
    for name in ("hidden_dropout_rate", "attention_dropout_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not 0 <= self.pad_token_id < self.vocab_size:
      raise ValueError(
          f"pad_token_id must be in [0, vocab_size = {self.vocab_size}), got"
          f" {self.pad_token_id}"
      )

  @classmethod
  def tiny(cls, ffn: str = "dense", **overrides) -> "RobertaConfig":
    """Returns a 2-layer, d = 128 model for tests and smoke runs."""
    return cls(ffn=ffn, **overrides)

  @classmethod
  def small_512(cls, ffn: str = "dense", **overrides) -> "RobertaConfig":
    """Returns a 4-layer, d = 512 model with 8 heads of 64 and sequences of 512.

    The dense FFN has 2048 hidden units, LookupFFN 128 tables of 256 rows, and
    the BH4 projection blocks of 64. The vocabulary size of 32768 must match
    the tokenizer, so override it for another one.
    """
    settings = dict(
        vocab_size=32768,
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        ffn_hidden_size=2048,
        num_tables=128,
        table_size=256,
        block_size=64,
        max_seq_len=512,
    )
    settings.update(overrides)
    return cls(ffn=ffn, **settings)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def dense_hidden_size(self) -> int:
    """Hidden width of the dense FFN."""
    return self.ffn_hidden_size or 4 * self.hidden_size

  @property
  def code_length(self) -> int:
    return layers.code_length_for(self.table_size)

  @property
  def num_positions(self) -> int:
    """Rows of the position table: positions start after the padding index."""
    return self.max_seq_len + self.pad_token_id + 1


def _normal_init(config: RobertaConfig):
  return nn.initializers.normal(stddev=config.initializer_stddev)


def _layer_norm(config: RobertaConfig, name: str) -> nn.LayerNorm:
  return layers.layer_norm(
      config.layer_norm_epsilon, config.dtype, config.param_dtype, name
  )


def make_ffn(config: RobertaConfig, name: str = "ffn") -> nn.Module:
  """Builds the pre-norm feed-forward block that `config.ffn` selects."""
  if config.ffn == "dense":
    return layers.DenseFFN(
        hidden_features=config.dense_hidden_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        layer_norm_epsilon=config.layer_norm_epsilon,
        kernel_init=_normal_init(config),
        name=name,
    )
  return layers.LookupFFN(
      num_tables=config.num_tables,
      table_size=config.table_size,
      projection="dense" if config.ffn == "lookup_dense" else "bh4",
      block_size=config.block_size,
      estimator=config.estimator,
      implementation=config.implementation,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      table_dtype=config.table_dtype,
      layer_norm_epsilon=config.layer_norm_epsilon,
      name=name,
  )


# Largest float32 score block [sequences, heads, seq, seq] that attention
# computes at once. Larger batches run in chunks of whole sequences, or of
# the heads of one sequence when a sequence's scores alone exceed it. The
# small_512 model at 8 x 512 tokens has 64 MiB of scores per layer, 1 MiB
# per head. There, on a 2-core AMD EPYC with 32 MiB of L3, chunks of 16 MiB
# (two sequences) ran the attention 1.5x faster than one block. One block
# also took fresh pages on every call: 171,000 page faults per call of the
# model, 40,000 with chunks. Chunks of 2 or 4 MiB (heads of one sequence)
# ran the model without FFN blocks 2% faster than chunks of 16 MiB, while 1
# and 8 MiB were as fast as 16.
ATTENTION_CHUNK_BYTES = 2 * 2**20

# The score budget on every platform other than CPU, where chunks only bound
# memory: many small products in sequence likely run slower there than one
# large one. NOTE: not timed on a GPU or TPU; 1 GiB is a guess.
ACCELERATOR_ATTENTION_CHUNK_BYTES = 2**30


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, max(1, min(limit, n)) + 1) if n % d == 0)


def attention_chunk_shape(
    batch: int, num_heads: int, q_len: int, k_len: int, chunk_bytes: int | None = None
) -> tuple[int, int]:
  """Returns the (sequences, heads) that `dot_product_attention` takes at once.

  `chunk_bytes` is the score budget, `ATTENTION_CHUNK_BYTES` (the CPU's) by
  default. When one sequence's float32 scores fit in it, a chunk
  is all heads of the largest divisor of `batch` sequences that fits.
  Otherwise it is one sequence and the largest divisor of `num_heads` heads
  that fits, 1 when one head alone does not. An empty batch, or one without
  heads, is one chunk.
  """
  if batch < 1 or num_heads < 1:
    return batch, num_heads
  if chunk_bytes is None:
    chunk_bytes = ATTENTION_CHUNK_BYTES
  per_head = max(q_len * k_len * 4, 1)
  fit_heads = chunk_bytes // per_head
  if fit_heads >= num_heads:
    return _largest_divisor_at_most(batch, fit_heads // num_heads), num_heads
  return 1, _largest_divisor_at_most(num_heads, fit_heads)


def _attention_block(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, mask_BxL, dropout_rate, dropout_rng):
  # The logits and the softmax are float32, or float64 for float64 inputs,
  # because bf16, with 8 bits of precision, loses the small terms of a long
  # row's normaliser. Padded keys
  # get the lowest float32 added: exp of it is exactly 0, a row of padding
  # alone stays finite (uniform weights while the logits stay far below
  # 1e31), and XLA fuses the addition into the softmax, which it does not
  # do for a select.
  logits_dtype = jnp.promote_types(q_BxHxLxK.dtype, jnp.float32)
  logits_BxHxLxL = jnp.einsum(
      "bhqk,bhsk->bhqs", q_BxHxLxK, k_BxHxLxK, preferred_element_type=logits_dtype
  )
  lowest = jnp.finfo(jnp.float32).min
  key_bias_Bx1x1xL = jnp.where(mask_BxL.astype(bool), 0.0, lowest)[:, None, None, :]
  logits_BxHxLxL = logits_BxHxLxL + key_bias_Bx1x1xL
  weights_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1)
  if dropout_rng is not None:
    keep_prob = 1.0 - dropout_rate
    keep_BxHxLxL = jax.random.bernoulli(dropout_rng, keep_prob, weights_BxHxLxL.shape)
    weights_BxHxLxL = jnp.where(keep_BxHxLxL, weights_BxHxLxL / keep_prob, 0.0)
  weights_BxHxLxL = weights_BxHxLxL.astype(v_BxHxLxK.dtype)
  return jnp.einsum("bhqs,bhsk->bhqk", weights_BxHxLxL, v_BxHxLxK)


def dot_product_attention(
    q_BxLxHxK: jax.Array,
    k_BxLxHxK: jax.Array,
    v_BxLxHxK: jax.Array,
    mask_BxL: jax.Array,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
  """Returns softmax(q k^T) v over the keys that `mask_BxL` marks as real.

  `q` is expected to be scaled already. `mask_BxL` is nonzero at real keys
  and 0 at padding, and `dropout_rate` is a Python float, static under
  `jax.jit`. On CPU, batches whose scores exceed `ATTENTION_CHUNK_BYTES` run
  through `jax.lax.map` in chunks of the (sequences, heads) that
  `attention_chunk_shape` gives; other platforms use
  `ACCELERATOR_ATTENTION_CHUNK_BYTES`, chosen at lowering time by
  `jax.lax.platform_dependent`. Dropout applies to the attention weights
  when `dropout_rng` is given, and chunk i draws its mask from
  `fold_in(dropout_rng, i)`.
  """
  q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask_BxL = (
      jnp.asarray(a) for a in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask_BxL)
  )
  if q_BxLxHxK.ndim != 4 or k_BxLxHxK.ndim != 4 or v_BxLxHxK.ndim != 4:
    raise ValueError(
        f"q, k and v must have shape [batch, seq, heads, head_dim], got"
        f" {q_BxLxHxK.shape}, {k_BxLxHxK.shape} and {v_BxLxHxK.shape}"
    )
  batch, q_len, num_heads, head_dim = q_BxLxHxK.shape
  k_len = k_BxLxHxK.shape[1]
  if k_BxLxHxK.shape != (batch, k_len, num_heads, head_dim):
    raise ValueError(
        f"k {k_BxLxHxK.shape} must match q {q_BxLxHxK.shape} in batch, heads"
        f" and head_dim: expected {(batch, k_len, num_heads, head_dim)}"
    )
  if v_BxLxHxK.shape[:3] != (batch, k_len, num_heads):
    raise ValueError(
        f"v {v_BxLxHxK.shape} must match k {k_BxLxHxK.shape} in batch, seq and"
        f" heads: expected ({batch}, {k_len}, {num_heads}, any head_dim)"
    )
  if mask_BxL.shape != (batch, k_len):
    raise ValueError(
        f"mask {mask_BxL.shape} must be [batch, number of keys] ="
        f" {(batch, k_len)}"
    )
  if isinstance(dropout_rate, jax.core.Tracer):
    raise TypeError(
        "dropout_rate must be a Python float, not a traced value. Pass it as"
        " a constant, and under jax.jit mark it static (static_argnums or"
        " static_argnames)."
    )
  if not isinstance(dropout_rate, numbers.Real) or isinstance(dropout_rate, bool):
    raise TypeError(
        f"dropout_rate must be a Python float, got {dropout_rate!r} of type"
        f" {type(dropout_rate).__name__}; pass a number in [0, 1)"
    )
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  if dropout_rng is not None and dropout_rate == 0.0:
    dropout_rng = None
  chunked = functools.partial(_chunked_attention, dropout_rate=dropout_rate)
  return jax.lax.platform_dependent(
      q_BxLxHxK,
      k_BxLxHxK,
      v_BxLxHxK,
      mask_BxL,
      dropout_rng,
      cpu=functools.partial(chunked, chunk_bytes=ATTENTION_CHUNK_BYTES),
      default=functools.partial(chunked, chunk_bytes=ACCELERATOR_ATTENTION_CHUNK_BYTES),
  )


def _chunked_attention(
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask_BxL, dropout_rng, *, dropout_rate, chunk_bytes
):
  """Runs `dot_product_attention` on checked operands in chunks of at most `chunk_bytes`."""
  batch, q_len, num_heads, _ = q_BxLxHxK.shape
  k_len = k_BxLxHxK.shape[1]
  chunk_sequences, chunk_heads = attention_chunk_shape(
      batch, num_heads, q_len, k_len, chunk_bytes
  )
  # The block takes heads-first [batch, heads, seq, head_dim] operands,
  # transposed here, outside the chunk loop. XLA fuses these transposes into
  # the ops around them (the projections' bias adds, the copy before the
  # output projection). When the einsums took [batch, seq, heads, head_dim]
  # operands inside the loop, XLA copied q, k and v for every chunk. It also
  # made the product with v write [batch, heads, head_dim, seq], a layout
  # that YNNPACK ran 3.4x slower. At 8 x 512 tokens of the small_512 model
  # on a 2-core AMD EPYC, heads-first operands ran the attention sublayer
  # 1.1x faster and the model without FFN blocks 1.07x faster.
  heads_first = lambda a: jnp.swapaxes(a, 1, 2)
  q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = map(heads_first, (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  if (chunk_sequences, chunk_heads) == (batch, num_heads):
    out_BxHxLxK = _attention_block(
        q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, mask_BxL, dropout_rate, dropout_rng
    )
    return heads_first(out_BxHxLxK)

  # A chunk is either whole sequences or heads of one sequence, so in the
  # heads-first layout each chunk is contiguous and a reshape splits them.
  head_groups = num_heads // chunk_heads
  num_chunks = batch // chunk_sequences * head_groups
  split = lambda a: a.reshape(num_chunks, chunk_sequences, chunk_heads, *a.shape[2:])
  mask_per_chunk = jnp.repeat(mask_BxL, head_groups, axis=0)
  operands = (
      split(q_BxHxLxK),
      split(k_BxHxLxK),
      split(v_BxHxLxK),
      mask_per_chunk.reshape(num_chunks, chunk_sequences, k_len),
  )
  if dropout_rng is not None:
    operands += (jax.vmap(functools.partial(jax.random.fold_in, dropout_rng))(
        jnp.arange(num_chunks)),)

  def one_chunk(chunk_operands):
    q, k, v, mask, *rng = chunk_operands
    return _attention_block(q, k, v, mask, dropout_rate, rng[0] if rng else None)

  out = jax.lax.map(one_chunk, operands)
  return heads_first(out.reshape((batch, num_heads) + out.shape[3:]))


class SelfAttention(nn.Module):
  """Multi-head self-attention over the tokens that `mask_BxL` marks as real."""

  config: RobertaConfig

  @nn.compact
  def __call__(
      self, x_BxLxD: jax.Array, mask_BxL: jax.Array, deterministic: bool
  ) -> jax.Array:
    config = self.config
    dense = functools.partial(
        nn.DenseGeneral,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=_normal_init(config),
    )
    heads = (config.num_heads, config.head_dim)
    q_BxLxHxK = dense(heads, name="query")(x_BxLxD)
    k_BxLxHxK = dense(heads, name="key")(x_BxLxD)
    v_BxLxHxK = dense(heads, name="value")(x_BxLxD)
    q_BxLxHxK = q_BxLxHxK * (1.0 / math.sqrt(config.head_dim))

    dropout_rng = None
    if not deterministic and config.attention_dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    out_BxLxHxK = dot_product_attention(
        q_BxLxHxK,
        k_BxLxHxK,
        v_BxLxHxK,
        mask_BxL,
        config.attention_dropout_rate,
        dropout_rng,
    )
    return dense(config.hidden_size, axis=(-2, -1), name="output")(out_BxLxHxK)


class EncoderLayer(nn.Module):
  """Pre-norm encoder layer: x + Attention(LayerNorm(x)), then x + FFN(x).

  The FFN blocks contain their own input LayerNorm. `__call__` returns
  `(x, None)` so that the layer can be the body of `nn.scan`.
  """

  config: RobertaConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array):
    config = self.config
    dropout = nn.Dropout(config.hidden_dropout_rate, deterministic=self.deterministic)

    h_BxLxD = _layer_norm(config, "attention_layer_norm")(x_BxLxD)
    h_BxLxD = SelfAttention(config, name="attention")(
        h_BxLxD, mask_BxL, self.deterministic
    )
    x_BxLxD = x_BxLxD + dropout(h_BxLxD)

    h_BxLxD = make_ffn(config, name="ffn")(x_BxLxD)
    x_BxLxD = x_BxLxD + dropout(h_BxLxD)
    return x_BxLxD, None


class RobertaForMaskedLM(nn.Module):
  """Pre-norm RoBERTa encoder with a masked-language-model head.

  Position ids follow RoBERTa: real tokens get pad_token_id + 1, + 2, ... in
  order and padding tokens get pad_token_id, so appending padding leaves the
  logits of the real tokens unchanged. The output projection is tied to the
  word embeddings.

  With `config.scan_layers` the layer parameters are stacked along a leading
  axis under "layers"; otherwise they are "layers_0", "layers_1", ...

  Attributes:
    config: the model hyperparameters.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lookupffn_jax import models
    >>> config = models.RobertaConfig.tiny(ffn="lookup_bh4", implementation="reference")
    >>> model = models.RobertaForMaskedLM(config)
    >>> input_ids = jnp.full((2, 16), 5)
    >>> mask = jnp.ones((2, 16), jnp.int32)
    >>> params = model.init(jax.random.key(0), input_ids, mask)
    >>> model.apply(params, input_ids, mask).shape
    (2, 16, 8192)
  """

  config: RobertaConfig

  @nn.compact
  def __call__(
      self,
      input_ids_BxL: jax.Array,
      attention_mask_BxL: jax.Array,
      deterministic: bool = True,
      prediction_positions_BxP: jax.Array | None = None,
  ) -> jax.Array:
    """Returns float32 logits `[batch, seq, vocab_size]`.

    Args:
      input_ids_BxL: integer token ids.
      attention_mask_BxL: 1 at real tokens and 0 at padding.
      deterministic: disables dropout when True; when False, pass a "dropout" rng.
      prediction_positions_BxP: if set, the logits are computed only at these
        positions of each row and have shape `[batch, P, vocab_size]`. Masked-LM
        training needs them only at the masked tokens, and the vocabulary
        projection is most of the model's FLOPs.
    """
    config = self.config
    if input_ids_BxL.ndim != 2 or attention_mask_BxL.shape != input_ids_BxL.shape:
      raise ValueError(
          f"input_ids {input_ids_BxL.shape} and attention_mask"
          f" {attention_mask_BxL.shape} must both have shape [batch, seq]"
      )
    if input_ids_BxL.shape[1] > config.max_seq_len:
      raise ValueError(
          f"sequence length {input_ids_BxL.shape[1]} exceeds max_seq_len"
          f" {config.max_seq_len}; truncate the input or raise max_seq_len"
      )

    x_BxLxD, word_embeddings = self._embed(
        input_ids_BxL, attention_mask_BxL, deterministic
    )
    x_BxLxD = self._encode(x_BxLxD, attention_mask_BxL, deterministic)
    if prediction_positions_BxP is not None:
      x_BxLxD = jnp.take_along_axis(
          x_BxLxD, prediction_positions_BxP[..., None], axis=1
      )
    return self._mlm_head(x_BxLxD, word_embeddings)

  def _embed(self, input_ids_BxL, attention_mask_BxL, deterministic):
    config = self.config
    embed = functools.partial(
        nn.Embed,
        features=config.hidden_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        embedding_init=_normal_init(config),
    )
    word_embeddings = embed(config.vocab_size, name="word_embeddings")
    position_embeddings = embed(config.num_positions, name="position_embeddings")

    mask_BxL = attention_mask_BxL.astype(jnp.int32)
    position_ids_BxL = jnp.cumsum(mask_BxL, axis=-1) * mask_BxL + config.pad_token_id
    x_BxLxD = word_embeddings(input_ids_BxL) + position_embeddings(position_ids_BxL)
    x_BxLxD = _layer_norm(config, "embeddings_layer_norm")(x_BxLxD)
    x_BxLxD = nn.Dropout(config.hidden_dropout_rate)(x_BxLxD, deterministic=deterministic)
    return x_BxLxD, word_embeddings

  def _encode(self, x_BxLxD, attention_mask_BxL, deterministic):
    config = self.config
    layer_cls = EncoderLayer
    if config.remat:
      # The jax.checkpoint docs (jax 0.10) allow prevent_cse=False inside scan,
      # which already keeps CSE from merging the recomputation away.
      layer_cls = nn.remat(layer_cls, prevent_cse=not config.scan_layers)

    if config.scan_layers:
      stack = nn.scan(
          layer_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=nn.broadcast,
          length=config.num_layers,
      )
      x_BxLxD, _ = stack(config, deterministic, name="layers")(
          x_BxLxD, attention_mask_BxL
      )
      return _layer_norm(config, "final_layer_norm")(x_BxLxD)

    for i in range(config.num_layers):
      x_BxLxD, _ = layer_cls(config, deterministic, name=f"layers_{i}")(
          x_BxLxD, attention_mask_BxL
      )
    return _layer_norm(config, "final_layer_norm")(x_BxLxD)

  def _mlm_head(self, x_BxLxD, word_embeddings: nn.Embed):
    config = self.config
    h_BxLxD = nn.Dense(
        config.hidden_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=_normal_init(config),
        name="mlm_dense",
    )(x_BxLxD)
    h_BxLxD = nn.gelu(h_BxLxD, approximate=False)
    h_BxLxD = _layer_norm(config, "mlm_layer_norm")(h_BxLxD)

    logits_BxLxV = word_embeddings.attend(h_BxLxD).astype(jnp.float32)
    bias_V = self.param(
        "mlm_bias", nn.initializers.zeros_init(), (config.vocab_size,), config.param_dtype
    )
    return logits_BxLxV + bias_V.astype(jnp.float32)


# ---------------------------------------------------------------------------
# Analytic size and cost


def _ffn_param_count(config: RobertaConfig) -> int:
  d = config.hidden_size
  layer_norm = 2 * d
  if config.ffn == "dense":
    h = config.dense_hidden_size
    return layer_norm + (d * h + h) + (h * d + d)

  num_projections = config.num_tables * config.code_length
  if config.ffn == "lookup_dense":
    projection = d * num_projections + num_projections
  else:
    projection = bh4_lib.bh4_param_count(d, num_projections, config.block_size)
  tables = config.num_tables * config.table_size * d
  return layer_norm + projection + tables + d


def param_count(config: RobertaConfig) -> int:
  """Returns the number of parameters of `RobertaForMaskedLM(config)`."""
  d = config.hidden_size
  layer_norm = 2 * d
  embeddings = config.vocab_size * d + config.num_positions * d + layer_norm
  attention = 4 * (d * d + d)
  layer = layer_norm + attention + _ffn_param_count(config)
  final_layer_norm = layer_norm
  mlm_head = (d * d + d) + layer_norm + config.vocab_size
  return embeddings + config.num_layers * layer + final_layer_norm + mlm_head


def _ffn_flops(config: RobertaConfig) -> int:
  d = config.hidden_size
  if config.ffn == "dense":
    return 2 * 2 * d * config.dense_hidden_size

  num_projections = config.num_tables * config.code_length
  if config.ffn == "lookup_dense":
    projection = 2 * d * num_projections
  else:
    projection = bh4_lib.bh4_flops(d, num_projections, config.block_size)
  # Each table adds its row scaled by the score, one multiply-add per value.
  gather = 2 * config.num_tables * d
  return projection + gather


def flops_per_token(config: RobertaConfig, seq_len: int | None = None) -> dict[str, int]:
  """Returns the analytic forward FLOPs per token, counting 2 per multiply-add.

  Counted are the matrix products, the BH4 butterflies and the LookupFFN
  weighted gather. Elementwise work (LayerNorm, GELU, softmax, hashing,
  residuals, biases) and the embedding look-ups are not counted. Attention
  costs 8 d^2 for its projections plus 4 * seq_len * d for the scores and the
  weighted sum. A training step costs about three times the forward.

  Args:
    config: the model.
    seq_len: tokens per sequence for the attention scores (default:
      config.max_seq_len).

  Returns:
    A dict with "ffn" and "attention" (summed over layers),
    "embeddings_and_head" (the MLM dense layer and the tied output
    projection) and "total".
  """
  d = config.hidden_size
  seq_len = config.max_seq_len if seq_len is None else seq_len
  counts = {
      "ffn": config.num_layers * _ffn_flops(config),
      "attention": config.num_layers * (2 * 4 * d * d + 2 * 2 * seq_len * d),
      "embeddings_and_head": 2 * d * d + 2 * d * config.vocab_size,
  }
  counts["total"] = sum(counts.values())
  return counts
