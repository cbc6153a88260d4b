# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Section "end_to_end": masked-LM inference of the small_512 model per FFN type."""

import logging

import jax
import jax.numpy as jnp
from flax import linen as nn

from lookupffn_jax import layers
from lookupffn_jax import models

from benchmarks import report
from benchmarks import settings as settings_lib
from benchmarks import timing

# name: (RobertaConfig.small_512 ffn, table dtype). The bfloat16 model
# stores its tables in bfloat16, as for inference.
_MODELS = {
    "dense": ("dense", jnp.float32),
    "lookup_bh4": ("lookup_bh4", jnp.float32),
    "lookup_bh4_bf16": ("lookup_bh4", jnp.bfloat16),
    "lookup_dense": ("lookup_dense", jnp.float32),
    "without_ffn": ("dense", jnp.float32),
}
_BASELINE = "dense"
# The dense model with the output of every FFN block (its LayerNorm
# included) replaced by zeros, which XLA then leaves out: the time of
# everything else. Its speedup over dense bounds what any FFN can give.
_WITHOUT_FFN = "without_ffn"

# The MLM head modes: logits at every position, or only at the masked
# positions (15%, as in pretraining), as a fill-mask or evaluation pass
# computes them with `prediction_positions_BxP`.
_MODES = ("all positions", "15% positions")
_MASKED_PERCENT = 15

# Token ids are drawn above RoBERTa's special ids 0 to 3.
_FIRST_ORDINARY_ID = 4


def _ffn_share_note(seq_len: int) -> str:
  """Returns the FFN's share of the analytic forward FLOPs of each model."""
  shares = []
  for ffn in ("dense", "lookup_bh4", "lookup_dense"):
    counts = models.flops_per_token(models.RobertaConfig.small_512(ffn=ffn), seq_len)
    shares.append(
        f"{ffn} {counts['total'] / 1e6:.0f} MFLOP/token, of which FFN"
        f" {100 * counts['ffn'] / counts['total']:.0f}%"
    )
  return (
      f"Analytic forward cost at sequence length {seq_len}, logits at every"
      " position: " + "; ".join(shares) + "."
  )


def _zero_ffn(next_fun, args, kwargs, context):
  """Interceptor that makes every `DenseFFN` call return zeros."""
  if isinstance(context.module, layers.DenseFFN) and context.method_name == "__call__":
    return jnp.zeros_like(args[0])
  return next_fun(*args, **kwargs)


def _apply_fn(model, name):
  """Returns the inference call of `model`, the `name` entry of `_MODELS`."""

  def apply(params, ids, mask, positions):
    def forward():
      return model.apply(
          params, ids, mask, deterministic=True, prediction_positions_BxP=positions
      )

    if name != _WITHOUT_FFN:
      return forward()
    with nn.intercept_methods(_zero_ffn):
      return forward()

  return apply


def _store_tables(params, dtype):
  """Returns `params` with every LookupFFN `tables` leaf cast to `dtype`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf.astype(dtype)
      if getattr(path[-1], "key", None) == "tables"
      else leaf,
      params,
  )


def _prediction_positions(batch: int, seq_len: int) -> jax.Array:
  """Returns `[batch, P]` evenly spaced positions, P = ceil(15% of seq_len)."""
  count = max(1, -(-_MASKED_PERCENT * seq_len // 100))
  positions = jnp.linspace(0, seq_len - 1, count).astype(jnp.int32)
  return jnp.broadcast_to(positions, (batch, count))


def run(settings: settings_lib.Settings) -> list[report.Table]:
  """Times `jit(model.apply)` of `RobertaForMaskedLM(small_512(ffn))` per batch shape."""
  table = report.Table(
      section="end_to_end",
      title="End to end: RobertaForMaskedLM(RobertaConfig.small_512(ffn)) inference",
      columns=["batch × seq", "MLM head", "model", "time per batch", "tokens/s",
               "speedup vs dense"],
      notes=[
          "Time per call of `jax.jit(model.apply)` with deterministic=True;"
          " every token is real (attention mask of ones). tokens/s = batch ×"
          " seq / time. \"all positions\" returns float32 logits"
          " [batch, seq, 32768]; \"15% positions\" passes"
          " prediction_positions_BxP with ceil(0.15 × seq) positions per"
          " sequence and returns logits for those alone.",
          "small_512: 4 layers, d=512, 8 heads, vocabulary 32768; dense FFN"
          " hidden 2048; LookupFFN 128 tables of 256 rows, BH4 block 64."
          " The LookupFFN models run the FFI kernels (implementation=\"auto\")."
          " lookup_bh4_bf16 is lookup_bh4 with table_dtype=bfloat16 and its"
          " tables stored in bfloat16.",
          "without_ffn is the dense model with the output of every FFN block,"
          " its LayerNorm included, replaced by zeros: the time of the rest"
          " of the model. Its speedup is the most that any FFN could give.",
      ],
  )
  models_by_name = {
      name: models.RobertaForMaskedLM(
          models.RobertaConfig.small_512(ffn=ffn, table_dtype=table_dtype)
      )
      for name, (ffn, table_dtype) in _MODELS.items()
  }
  vocab_size = models.RobertaConfig.small_512().vocab_size
  init_ids = jnp.full((1, 8), _FIRST_ORDINARY_ID, jnp.int32)
  params = {}
  for name, model in models_by_name.items():
    initial = jax.jit(model.init)(
        jax.random.key(settings.seed), init_ids, jnp.ones_like(init_ids)
    )
    table_dtype = _MODELS[name][1]
    params[name] = (
        initial if table_dtype == jnp.float32 else _store_tables(initial, table_dtype)
    )

  for batch, seq_len in settings.model_batches:
    input_ids = jax.random.randint(
        jax.random.key(settings.seed + 1), (batch, seq_len), _FIRST_ORDINARY_ID,
        vocab_size, jnp.int32,
    )
    mask = jnp.ones_like(input_ids)
    for mode in _MODES:
      logging.info("end_to_end: batch %d x %d, %s", batch, seq_len, mode)
      positions = (
          None if mode == "all positions" else _prediction_positions(batch, seq_len)
      )
      _time_case(table, models_by_name, params, input_ids, mask, positions, mode,
                 settings)

  for seq_len in sorted({seq_len for _, seq_len in settings.model_batches}):
    table.notes.append(_ffn_share_note(seq_len))
  return [table]


def _time_case(table, models_by_name, params, input_ids, mask, positions, mode,
               settings) -> None:
  """Times every model on one batch and MLM head mode, interleaved."""
  candidates = {}
  skipped = {}
  for name, model in models_by_name.items():
    apply = _apply_fn(model, name)
    call, needed = timing.compile_within_budget(
        apply, (params[name], input_ids, mask, positions), settings.max_memory_bytes
    )
    if call is None:
      skipped[name] = needed
    else:
      candidates[name] = call

  timings = {}
  if candidates:
    timings = timing.time_interleaved(
        candidates,
        repeats=settings.model_repeats,
        min_repeat_seconds=settings.min_repeat_seconds,
    )

  batch, seq_len = input_ids.shape
  shape = f"{batch} × {seq_len}"
  for name in _MODELS:
    record = {"batch": batch, "seq_len": seq_len, "mlm_head": mode, "model": name}
    if name not in timings:
      record["skipped_bytes"] = skipped[name]
      table.add_row(
          [shape, mode, name, report.skipped_cell(skipped[name]), "–", "–"], record
      )
      continue
    seconds = timings[name].summary
    tokens_per_second = timings[name].rate(batch * seq_len)
    record.update(seconds=seconds.as_dict(), tokens_per_second=tokens_per_second.as_dict())
    speedup_cell = "–"
    if name != _BASELINE and _BASELINE in timings:
      speedup = timing.speedup(timings[_BASELINE], timings[name])
      record["speedup_vs_dense"] = speedup.as_dict()
      speedup_cell = report.format_ratio(speedup)
    table.add_row(
        [shape, mode, name, report.format_seconds(seconds),
         report.format_rate(tokens_per_second, "tokens/s"), speedup_cell],
        record,
    )
