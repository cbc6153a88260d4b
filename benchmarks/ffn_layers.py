# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Section "layers": the LookupFFN layer against the dense FFN it replaces."""

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

import lookupffn_jax
from lookupffn_jax import models

from benchmarks import report
from benchmarks import settings as settings_lib
from benchmarks import timing



@dataclasses.dataclass(frozen=True)
class _Layer:
  key: str  # Name in the JSON records.
  label: str  # Name in the Markdown tables.
  module: nn.Module
  ffn: str  # The `RobertaConfig.ffn` that builds this layer.
  # For the forward, the tables are stored in this dtype, as for inference.
  # The forward + backward keeps the float32 master copy and casts it in the
  # module, as in training.
  stored_table_dtype: Any = None


_LAYERS = (
    _Layer(
        "dense_ffn",
        "DenseFFN",
        lookupffn_jax.DenseFFN(hidden_features=settings_lib.DENSE_HIDDEN),
        "dense",
    ),
    _Layer(
        "lookup_ffn_dense",
        "LookupFFN dense proj.",
        lookupffn_jax.LookupFFN(
            num_tables=settings_lib.NUM_TABLES,
            table_size=settings_lib.TABLE_SIZE,
            projection="dense",
        ),
        "lookup_dense",
    ),
    _Layer(
        "lookup_ffn_bh4",
        "LookupFFN BH4 proj.",
        lookupffn_jax.LookupFFN(
            num_tables=settings_lib.NUM_TABLES,
            table_size=settings_lib.TABLE_SIZE,
            projection="bh4",
            block_size=settings_lib.BH4_BLOCK_SIZE,
        ),
        "lookup_bh4",
    ),
    _Layer(
        "lookup_ffn_bh4_bf16",
        "LookupFFN BH4 proj., bf16 tables",
        lookupffn_jax.LookupFFN(
            num_tables=settings_lib.NUM_TABLES,
            table_size=settings_lib.TABLE_SIZE,
            projection="bh4",
            block_size=settings_lib.BH4_BLOCK_SIZE,
            table_dtype=jnp.bfloat16,
        ),
        "lookup_bh4",
        stored_table_dtype=jnp.bfloat16,
    ),
)
_BASELINE = _LAYERS[0]


def _forward_fn(module: nn.Module):
  return module.apply


def _forward_backward_fn(module: nn.Module):
  def loss(params, x, dy):
    return jnp.sum(module.apply(params, x) * dy)

  return jax.grad(loss, argnums=(0, 1))


def _store_tables(params: dict, dtype: Any) -> dict:
  """Returns `params` with the LookupFFN tables cast to `dtype`."""
  if dtype is None:
    return params
  inner = dict(params["params"])
  inner["tables"] = inner["tables"].astype(dtype)
  return {**params, "params": inner}


def _describe_layers(params: dict[str, dict]) -> list[str]:
  """Returns one note per layer with its parameter bytes and analytic FLOPs."""
  notes = []
  for layer in _LAYERS:
    config = models.RobertaConfig.small_512(ffn=layer.ffn)
    flops = models.flops_per_token(config)["ffn"] // config.num_layers
    stored = _store_tables(params[layer.key], layer.stored_table_dtype)
    param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(stored))
    notes.append(
        f"{layer.label}: {report.format_bytes(param_bytes)} of parameters"
        " in the forward,"
        f" {flops / 1e6:.2f} MFLOP per token forward (`models.flops_per_token`)."
    )
  return notes


def run(settings: settings_lib.Settings) -> list[report.Table]:
  """Times the forward and forward + backward of each layer over the token grid."""
  width = settings_lib.WIDTH
  shape = (
      f"d={width}; DenseFFN hidden {settings_lib.DENSE_HIDDEN}; LookupFFN"
      f" T={settings_lib.NUM_TABLES}, S={settings_lib.TABLE_SIZE}, BH4 block"
      f" {settings_lib.BH4_BLOCK_SIZE}"
  )
  speedup_columns = [f"speedup {layer.label.removeprefix('LookupFFN ')}"
                     for layer in _LAYERS if layer is not _BASELINE]
  columns = ["tokens N", *(layer.label for layer in _LAYERS), *speedup_columns]
  speedup_note = (
      "Speedup = DenseFFN time / LookupFFN time, per interleaved round. Both"
      " blocks include their input LayerNorm; LookupFFN runs the FFI kernels"
      " (implementation=\"auto\" on CPU), the BH4 projection included."
      " \"bf16 tables\" is the BH4 layer with table_dtype=bfloat16: its"
      " forward reads tables stored in bfloat16, its forward + backward"
      " casts the float32 master copy."
  )
  forward = report.Table(
      section="layers",
      title=f"FFN layer forward: LookupFFN vs DenseFFN ({shape})",
      columns=columns,
      notes=["Time per call of `jax.jit(module.apply)` on x of shape [N, d].",
             speedup_note],
  )
  forward_backward = report.Table(
      section="layers",
      title=f"FFN layer forward + backward: LookupFFN vs DenseFFN ({shape})",
      columns=columns,
      notes=["Time per call of `jax.jit(jax.grad(loss, argnums=(0, 1)))`,"
             " gradients with respect to the parameters and x, with"
             " loss = sum(apply(params, x) * dy).", speedup_note],
  )

  key = jax.random.key(settings.seed)
  params = {
      layer.key: jax.jit(layer.module.init)(key, jnp.zeros((1, width), jnp.float32))
      for layer in _LAYERS
  }
  forward.notes += _describe_layers(params)
  forward_params = {
      layer.key: _store_tables(params[layer.key], layer.stored_table_dtype)
      for layer in _LAYERS
  }

  for num_tokens in settings.tokens:
    x = jax.random.normal(jax.random.key(settings.seed + 1), (num_tokens, width))
    dy = jax.random.normal(jax.random.key(settings.seed + 2), (num_tokens, width))
    for table, mode, make_fn, layer_params, args in (
        (forward, "forward", _forward_fn, forward_params, (x,)),
        (forward_backward, "forward+backward", _forward_backward_fn, params,
         (x, dy)),
    ):
      logging.info("layers: %s N=%d", mode, num_tokens)
      _time_row(table, num_tokens, make_fn, layer_params, args, settings)

  return [forward, forward_backward]


def _time_row(table, num_tokens, make_fn, params, args, settings) -> None:
  """Times every layer on one case, interleaved, and adds the row."""
  candidates = {}
  skipped = {}
  for layer in _LAYERS:
    call, needed = timing.compile_within_budget(
        make_fn(layer.module), (params[layer.key], *args), settings.max_memory_bytes
    )
    if call is None:
      skipped[layer.key] = needed
    else:
      candidates[layer.key] = call

  timings = {}
  if candidates:
    timings = timing.time_interleaved(
        candidates,
        repeats=settings.repeats,
        min_repeat_seconds=settings.min_repeat_seconds,
    )

  cells = [str(num_tokens)]
  record = {"tokens": num_tokens}
  for layer in _LAYERS:
    if layer.key in timings:
      summary = timings[layer.key].summary
      cells.append(report.format_seconds(summary))
      record[f"{layer.key}_seconds"] = summary.as_dict()
    else:
      cells.append(report.skipped_cell(skipped[layer.key]))
      record[f"{layer.key}_skipped_bytes"] = skipped[layer.key]

  for layer in _LAYERS:
    if layer is _BASELINE:
      continue
    if layer.key in timings and _BASELINE.key in timings:
      speedup = timing.speedup(timings[_BASELINE.key], timings[layer.key])
      cells.append(report.format_ratio(speedup))
      record[f"{layer.key}_speedup"] = speedup.as_dict()
    else:
      cells.append("–")
  table.add_row(cells, record)
