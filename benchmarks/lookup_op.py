# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Sections "lookup_fwd" and "lookup_bwd": the `lookup` op, FFI against reference."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

import lookupffn_jax
from lookupffn_jax.lookup import ESTIMATORS

from benchmarks import report
from benchmarks import settings as settings_lib
from benchmarks import timing

_SHAPE = (
    f"T={settings_lib.NUM_TABLES} tables × S={settings_lib.TABLE_SIZE} rows"
    f" (K={settings_lib.CODE_LENGTH}), D={settings_lib.WIDTH}, float32"
)


def make_tables(seed: int) -> jax.Array:
  """Returns float32 tables `[T, S, D]` scaled like the LookupFFN initializer."""
  shape = (settings_lib.NUM_TABLES, settings_lib.TABLE_SIZE, settings_lib.WIDTH)
  return 0.02 * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def make_projections(num_tokens: int, seed: int) -> jax.Array:
  """Returns standard normal projections `[N, T, K]`, so codes are uniform over rows."""
  shape = (num_tokens, settings_lib.NUM_TABLES, settings_lib.CODE_LENGTH)
  return jax.random.normal(jax.random.key(seed + 1), shape, jnp.float32)


def make_cotangent(num_tokens: int, seed: int) -> jax.Array:
  """Returns a random output cotangent `[N, D]`, so no gradient is trivially zero."""
  shape = (num_tokens, settings_lib.WIDTH)
  return jax.random.normal(jax.random.key(seed + 2), shape, jnp.float32)


def _max_abs_difference(a, b) -> float:
  differences = jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0)),
      a, b,
  )
  return max(jax.tree.leaves(differences))


def _compare(
    table: report.Table,
    num_tokens: int,
    calls: dict[str, tuple],
    settings: settings_lib.Settings,
    extra_cells: list[str],
    extra_record: dict,
) -> None:
  """Times the "ffi" and "reference" calls of one case and adds its row.

  `calls` maps each implementation to the result of
  `timing.compile_within_budget`; an implementation without a call is shown
  as skipped.
  """
  record = {"tokens": num_tokens, **extra_record}
  candidates = {name: call for name, (call, _) in calls.items() if call is not None}
  timings = {}
  if candidates:
    timings = timing.time_interleaved(
        candidates,
        repeats=settings.repeats,
        min_repeat_seconds=settings.min_repeat_seconds,
        keep_warmup_outputs=True,
    )

  cells = [str(num_tokens), *extra_cells]
  for name in ("ffi", "reference"):
    if name in timings:
      summary = timings[name].summary
      record[f"{name}_seconds"] = summary.as_dict()
      cells.append(report.format_seconds(summary))
    else:
      record[f"{name}_skipped_bytes"] = calls[name][1]
      cells.append(report.skipped_cell(calls[name][1]))

  if len(timings) == 2:
    speedup = timing.speedup(timings["reference"], timings["ffi"])
    difference = _max_abs_difference(
        timings["ffi"].warmup_output, timings["reference"].warmup_output
    )
    record.update(ffi_speedup=speedup.as_dict(), max_abs_difference=difference)
    cells += [report.format_ratio(speedup), f"{difference:.1e}"]
  else:
    cells += ["–", "–"]
  table.add_row(cells, record)


def run_forward(settings: settings_lib.Settings) -> list[report.Table]:
  """Times `jit(lookup)` with implementation "ffi" and "reference"."""
  table = report.Table(
      section="lookup_fwd",
      title=f"lookup forward: FFI vs reference ({_SHAPE})",
      columns=["tokens N", "FFI", "reference", "FFI speedup", "max abs diff"],
      notes=[
          "Time per call of `jax.jit(lookup)` (median, min–max over repeats);"
          " FFI speedup = reference time / FFI time, taken per interleaved round.",
      ],
  )
  tables = make_tables(settings.seed)

  for num_tokens in settings.tokens:
    logging.info("lookup_fwd: N=%d", num_tokens)
    z = make_projections(num_tokens, settings.seed)
    calls = {
        implementation: timing.compile_within_budget(
            functools.partial(lookupffn_jax.lookup, implementation=implementation),
            (z, tables),
            settings.max_memory_bytes,
        )
        for implementation in ("ffi", "reference")
    }
    _compare(table, num_tokens, calls, settings, [], {})

  _note_skips(table, settings)
  return [table, _forward_bf16(settings, tables)]


def _forward_bf16(settings: settings_lib.Settings, tables: jax.Array) -> report.Table:
  """Times the FFI forward with the tables stored in bfloat16 against float32."""
  table = report.Table(
      section="lookup_fwd",
      title=(
          "lookup forward: bfloat16 vs float32 tables, both FFI"
          f" ({_SHAPE.removesuffix(', float32')})"
      ),
      columns=["tokens N", "float32 tables", "bfloat16 tables", "bf16 speedup",
               "max abs diff", "max abs y"],
      notes=[
          "Time per call of `jax.jit(lookup)` with implementation=\"ffi\"; the"
          " bfloat16 tables are a cast copy of the float32 ones, made before"
          " timing. Both sum in float32; the difference is the rounding of"
          " the table entries to bfloat16.",
      ],
  )
  tables_by_dtype = {"float32": tables, "bfloat16": tables.astype(jnp.bfloat16)}
  forward = functools.partial(lookupffn_jax.lookup, implementation="ffi")
  for num_tokens in settings.tokens:
    logging.info("lookup_fwd: bfloat16 tables N=%d", num_tokens)
    z = make_projections(num_tokens, settings.seed)
    candidates = {
        name: timing.compile_within_budget(forward, (z, t), settings.max_memory_bytes)[0]
        for name, t in tables_by_dtype.items()
    }
    timings = timing.time_interleaved(
        candidates,
        repeats=settings.repeats,
        min_repeat_seconds=settings.min_repeat_seconds,
        keep_warmup_outputs=True,
    )
    speedup = timing.speedup(timings["float32"], timings["bfloat16"])
    difference = _max_abs_difference(
        timings["bfloat16"].warmup_output, timings["float32"].warmup_output
    )
    largest = float(np.max(np.abs(np.asarray(timings["float32"].warmup_output))))
    table.add_row(
        [str(num_tokens),
         report.format_seconds(timings["float32"].summary),
         report.format_seconds(timings["bfloat16"].summary),
         report.format_ratio(speedup), f"{difference:.1e}", f"{largest:.1e}"],
        {"tokens": num_tokens,
         "float32_seconds": timings["float32"].summary.as_dict(),
         "bfloat16_seconds": timings["bfloat16"].summary.as_dict(),
         "bf16_speedup": speedup.as_dict(),
         "max_abs_difference": difference,
         "max_abs_output": largest},
    )
  return table


def _gradient_fn(estimator: str, implementation: str):
  def loss(z, tables, dy):
    y = lookupffn_jax.lookup(
        z, tables, estimator=estimator, implementation=implementation
    )
    return jnp.sum(y * dy)

  return jax.grad(loss, argnums=(0, 1))


def run_backward(settings: settings_lib.Settings) -> list[report.Table]:
  """Times `jit(grad)` of a scalar loss of `lookup`, for both estimators."""
  table_bytes = 4 * settings_lib.NUM_TABLES * settings_lib.TABLE_SIZE * settings_lib.WIDTH
  table = report.Table(
      section="lookup_bwd",
      title=f"lookup forward + backward: FFI vs reference ({_SHAPE})",
      columns=["tokens N", "estimator", "FFI", "reference", "FFI speedup",
               "max abs diff"],
      notes=[
          "Time per call of `jax.jit(jax.grad(loss, argnums=(0, 1)))` with"
          " loss = sum(lookup(z, tables) * dy) and a random dy, so each time"
          " contains the forward pass and both gradients. dtables is a dense"
          f" [T, S, D] array of {report.format_bytes(table_bytes)}, written"
          " on every call.",
          "max abs diff is over both gradients, dz and dtables.",
      ],
  )
  tables = make_tables(settings.seed)

  for estimator in ESTIMATORS:
    for num_tokens in settings.tokens:
      logging.info("lookup_bwd: estimator=%s N=%d", estimator, num_tokens)
      z = make_projections(num_tokens, settings.seed)
      dy = make_cotangent(num_tokens, settings.seed)
      calls = {
          implementation: timing.compile_within_budget(
              _gradient_fn(estimator, implementation),
              (z, tables, dy),
              settings.max_memory_bytes,
          )
          for implementation in ("ffi", "reference")
      }
      _compare(table, num_tokens, calls, settings, [estimator], {"estimator": estimator})

  _note_skips(table, settings)
  return [table]


def _note_skips(table: report.Table, settings: settings_lib.Settings) -> None:
  if any(key.endswith("_skipped_bytes") for record in table.records for key in record):
    table.notes.append(
        "A skipped case needs more than"
        f" {report.format_bytes(settings.max_memory_bytes)}"
        " (`--max-memory-gb`) by XLA's memory estimate of the compiled"
        " program; the reference materialises the gathered rows as an"
        " [N, T, D] array (for the straight-through gradient, [N, T, K+1, D])."
    )
