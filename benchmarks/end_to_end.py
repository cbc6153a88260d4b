# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Section "end_to_end": masked-LM inference of the small_512 model per FFN type."""

import logging

import jax
import jax.numpy as jnp

from lookupffn_jax import models

from benchmarks import report
from benchmarks import settings as settings_lib
from benchmarks import timing

_FFN_TYPES = ("dense", "lookup_bh4", "lookup_dense")
_BASELINE = "dense"

# Token ids are drawn above RoBERTa's special ids 0 to 3.
_FIRST_ORDINARY_ID = 4


def _ffn_share_note(seq_len: int) -> str:
  """Returns the FFN's share of the analytic forward FLOPs of each model."""
  shares = []
  for ffn in _FFN_TYPES:
    counts = models.flops_per_token(models.RobertaConfig.small_512(ffn=ffn), seq_len)
    shares.append(
        f"{ffn} {counts['total'] / 1e6:.0f} MFLOP/token, of which FFN"
        f" {100 * counts['ffn'] / counts['total']:.0f}%"
    )
  return f"Analytic forward cost at sequence length {seq_len}: " + "; ".join(shares) + "."


def run(settings: settings_lib.Settings) -> list[report.Table]:
  """Times `jit(model.apply)` of `RobertaForMaskedLM(small_512(ffn))` per batch shape."""
  table = report.Table(
      section="end_to_end",
      title="End to end: RobertaForMaskedLM(RobertaConfig.small_512(ffn)) inference",
      columns=["batch × seq", "ffn", "time per batch", "tokens/s", "speedup vs dense"],
      notes=[
          "Time per call of `jax.jit(model.apply)` with deterministic=True,"
          " returning the float32 logits [batch, seq, 32768]; every token is"
          " real (attention mask of ones). tokens/s = batch × seq / time.",
          "small_512: 4 layers, d=512, 8 heads, vocabulary 32768; dense FFN"
          " hidden 2048; LookupFFN 128 tables of 256 rows, BH4 block 64."
          " The LookupFFN models run the FFI kernels (implementation=\"auto\").",
      ],
  )
  models_by_ffn = {
      ffn: models.RobertaForMaskedLM(models.RobertaConfig.small_512(ffn=ffn))
      for ffn in _FFN_TYPES
  }
  vocab_size = models.RobertaConfig.small_512().vocab_size
  init_ids = jnp.full((1, 8), _FIRST_ORDINARY_ID, jnp.int32)
  params = {
      ffn: jax.jit(model.init)(jax.random.key(settings.seed), init_ids, jnp.ones_like(init_ids))
      for ffn, model in models_by_ffn.items()
  }

  for batch, seq_len in settings.model_batches:
    logging.info("end_to_end: batch %d x %d", batch, seq_len)
    input_ids = jax.random.randint(
        jax.random.key(settings.seed + 1), (batch, seq_len), _FIRST_ORDINARY_ID,
        vocab_size, jnp.int32,
    )
    mask = jnp.ones_like(input_ids)
    candidates = {}
    skipped = {}
    for ffn, model in models_by_ffn.items():
      apply = lambda params, ids, mask, model=model: model.apply(
          params, ids, mask, deterministic=True
      )
      call, needed = timing.compile_within_budget(
          apply, (params[ffn], input_ids, mask), settings.max_memory_bytes
      )
      if call is None:
        skipped[ffn] = needed
      else:
        candidates[ffn] = call

    timings = {}
    if candidates:
      timings = timing.time_interleaved(
          candidates,
          repeats=settings.repeats,
          min_repeat_seconds=settings.min_repeat_seconds,
      )

    num_tokens = batch * seq_len
    for ffn in _FFN_TYPES:
      shape = f"{batch} × {seq_len}"
      record = {"batch": batch, "seq_len": seq_len, "ffn": ffn}
      if ffn not in timings:
        record["skipped_bytes"] = skipped[ffn]
        table.add_row(
            [shape, ffn, report.skipped_cell(skipped[ffn]), "–", "–"], record
        )
        continue
      seconds = timings[ffn].summary
      tokens_per_second = timings[ffn].rate(num_tokens)
      record.update(seconds=seconds.as_dict(), tokens_per_second=tokens_per_second.as_dict())
      speedup_cell = "–"
      if ffn != _BASELINE and _BASELINE in timings:
        speedup = timing.speedup(timings[_BASELINE], timings[ffn])
        record["speedup_vs_dense"] = speedup.as_dict()
        speedup_cell = report.format_ratio(speedup)
      table.add_row(
          [shape, ffn, report.format_seconds(seconds),
           report.format_rate(tokens_per_second, "tokens/s"), speedup_cell],
          record,
      )

  for seq_len in sorted({seq_len for _, seq_len in settings.model_batches}):
    table.notes.append(_ffn_share_note(seq_len))
  return [table]
