# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Section "torch": the FFI weighted gather against PyTorch's `embedding_bag`.

`torch.nn.functional.embedding_bag` with mode="sum" and per_sample_weights
computes the same sum when the tables are flattened to `[T * S, D]`, table t's
codes are offset by t * S, and each token's T indices form one bag.
"""

import importlib.util
import logging

import numpy as np

import lookupffn_jax

from benchmarks import lookup_op
from benchmarks import report
from benchmarks import settings as settings_lib
from benchmarks import timing


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def run(settings: settings_lib.Settings) -> list[report.Table]:
  """Times the FFI weighted gather, the reference and embedding_bag on the same data."""
  num_tokens = settings_lib.TORCH_TOKENS
  t, s, d = settings_lib.NUM_TABLES, settings_lib.TABLE_SIZE, settings_lib.WIDTH
  table = report.Table(
      section="torch",
      title=(f"Weighted gather at N={num_tokens} tokens: FFI vs PyTorch"
             f" embedding_bag (T={t}, S={s}, D={d}, float32)"),
      columns=["implementation", "time", "FFI speedup", "max abs diff vs FFI"],
  )
  if not torch_available():
    table.notes.append(
        "Not run: torch is not installed (`pip install torch` or the `bench` extra)."
    )
    return [table]
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(settings.threads)
  table.notes += [
      "FFI: `jax.jit(weighted_gather(..., implementation=\"ffi\"))`; reference:"
      " the same with implementation=\"reference\"; torch: `F.embedding_bag(indices,"
      " tables.reshape(T * S, D), offsets, mode=\"sum\", per_sample_weights=weights)`"
      " with int64 indices and offsets, built once outside the timed call.",
      f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU"
      f" capability {torch.backends.cpu.get_cpu_capability()}. FFI speedup ="
      " other time / FFI time, per interleaved round.",
  ]

  logging.info("torch: N=%d", num_tokens)
  tables = lookup_op.make_tables(settings.seed)
  codes, weights = lookupffn_jax.hash_codes(lookup_op.make_projections(num_tokens, settings.seed))

  candidates = {}
  for implementation in ("ffi", "reference"):
    fn = lambda c, w, tb, implementation=implementation: lookupffn_jax.weighted_gather(
        c, w, tb, implementation=implementation
    )
    call, needed = timing.compile_within_budget(
        fn, (codes, weights, tables), settings.max_memory_bytes
    )
    if call is None:
      table.notes.append(f"{implementation}: skipped, needs {report.format_bytes(needed)}.")
    else:
      candidates[implementation] = call

  flat_tables = torch.from_numpy(np.array(tables).reshape(t * s, d))
  row_offsets = np.arange(t, dtype=np.int64) * s
  indices = torch.from_numpy((np.array(codes, np.int64) + row_offsets).reshape(-1))
  bag_offsets = torch.arange(0, num_tokens * t, t, dtype=torch.int64)
  per_sample_weights = torch.from_numpy(np.array(weights).reshape(-1))

  def embedding_bag():
    with torch.inference_mode():
      return F.embedding_bag(
          indices, flat_tables, bag_offsets, mode="sum",
          per_sample_weights=per_sample_weights,
      )

  if "ffi" not in candidates:
    return [table]
  candidates["torch embedding_bag"] = embedding_bag

  timings = timing.time_interleaved(
      candidates,
      repeats=settings.repeats,
      min_repeat_seconds=settings.min_repeat_seconds,
      keep_warmup_outputs=True,
  )
  ffi_output = np.asarray(timings["ffi"].warmup_output)
  for name, result in timings.items():
    output = result.warmup_output
    output = output.numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
    difference = float(np.max(np.abs(output - ffi_output)))
    record = {"implementation": name, "tokens": num_tokens,
              "seconds": result.summary.as_dict(), "max_abs_difference": difference}
    speedup_cell = "–"
    if name != "ffi":
      speedup = timing.speedup(result, timings["ffi"])
      record["ffi_speedup"] = speedup.as_dict()
      speedup_cell = report.format_ratio(speedup)
    table.add_row(
        [name, report.format_seconds(result.summary), speedup_cell, f"{difference:.1e}"],
        record,
    )
  return [table]
