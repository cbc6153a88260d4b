# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Section "roofline": the FFI kernels against measured machine limits.

The gather kernels are memory-bound, so they are compared with memory
bandwidth. The BH4 kernel is compute-bound, so it is compared with XLA's own
float32 matrix product on the same machine.

The bandwidth probes are numpy loops, run in Python threads (numpy releases
the GIL in reductions and copies):

* read: `np.max` over float32 data, a SIMD reduction that does one compare per
  element loaded. Cache probes reread one array many times through a view with
  a zero stride on its outer axis, so the whole loop runs inside numpy.
* copy: `np.copyto` of one array into another, counted as bytes read plus
  bytes written.

They give a practical ceiling for streaming reads, not the hardware peak.
"""

import concurrent.futures
import logging
import resource
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib import stride_tricks

import lookupffn_jax
from lookupffn_jax import bh4

from benchmarks import lookup_op
from benchmarks import machine
from benchmarks import report
from benchmarks import settings as settings_lib
from benchmarks import timing

_FLOAT32_BYTES = 4
_INT32_BYTES = 4
_MIN_DRAM_PROBE_BYTES = 256 * 2**20
# Bytes each thread reads per call of a cache probe; large against the cost of
# starting the threads.
_CACHE_PROBE_BYTES_PER_THREAD = 256 * 2**20
# Token counts below this are dominated by call overhead (see the op sections).
_MIN_ROOFLINE_TOKENS = 64


def _run_threads(executor, tasks: list[Callable[[], object]]) -> None:
  """Runs each task on its own thread (the first on the calling thread)."""
  futures = [executor.submit(task) for task in tasks[1:]]
  tasks[0]()
  for future in futures:
    future.result()


def _repeated_view(array: np.ndarray, passes: int) -> np.ndarray:
  """Returns a read-only `[passes, n]` view whose every row is `array`."""
  return stride_tricks.as_strided(
      array, (passes, array.size), (0, array.itemsize), writeable=False
  )


def _read_probe(executor, bytes_per_thread: int, threads: int):
  """Returns (call, bytes read per call) for repeated reads of per-thread arrays."""
  arrays = [np.ones(bytes_per_thread // _FLOAT32_BYTES, np.float32) for _ in range(threads)]
  passes = max(1, _CACHE_PROBE_BYTES_PER_THREAD // bytes_per_thread)
  views = [_repeated_view(array, passes) for array in arrays]
  tasks = [lambda view=view: np.max(view) for view in views]
  return (lambda: _run_threads(executor, tasks)), passes * threads * arrays[0].nbytes


def _copy_probe(executor, bytes_per_thread: int, threads: int):
  """Returns (call, bytes read and written per call) for per-thread array copies."""
  sources = [np.ones(bytes_per_thread // _FLOAT32_BYTES, np.float32) for _ in range(threads)]
  targets = [np.ones_like(source) for source in sources]
  tasks = [
      lambda source=source, target=target: np.copyto(target, source)
      for source, target in zip(sources, targets)
  ]
  return (lambda: _run_threads(executor, tasks)), 2 * threads * sources[0].nbytes


def _probe_sizes(settings: settings_lib.Settings) -> tuple[list[tuple], list[str]]:
  """Returns the probes to run and notes on the ones left out.

  Each probe is (name, kind, bytes per thread with one thread, bytes per
  thread with `settings.threads` threads). Cache probes use half the cache,
  so the array stays resident next to everything else.
  """
  caches = machine.cache_sizes()
  l3_bytes = caches.get("L3")
  dram_bytes = max(_MIN_DRAM_PROBE_BYTES, 8 * (l3_bytes or 0))
  probes = [("dram_read", "read", dram_bytes, dram_bytes // settings.threads),
            ("dram_copy", "copy", dram_bytes, dram_bytes // settings.threads)]
  notes = []
  if l3_bytes:
    probes.append(("l3_read", "read", l3_bytes // 2, l3_bytes // (2 * settings.threads)))
  else:
    notes.append("The L3 size is unknown, so there is no L3 probe.")
  if "L2" in caches:
    probes.append(("l2_read", "read", caches["L2"] // 2, caches["L2"] // 2))
  else:
    notes.append("The L2 size is unknown, so there is no L2 probe.")
  return probes, notes


def _make_probe(executor, kind: str, bytes_per_thread: int, threads: int):
  make = _read_probe if kind == "read" else _copy_probe
  return make(executor, bytes_per_thread, threads)


def measure_bandwidth(settings: settings_lib.Settings, executor) -> report.Table:
  """Measures DRAM, L3 and L2 bandwidth with 1 and `settings.threads` threads."""
  probes, notes = _probe_sizes(settings)
  table = report.Table(
      section="roofline",
      title="Memory bandwidth measured with numpy",
      columns=["probe", "threads", "bytes per thread", "bandwidth"],
      notes=[
          "read: np.max over float32 arrays (cache probes reread one array per"
          " thread through a zero-stride view); copy: np.copyto, counting"
          " bytes read plus bytes written. GB/s are 1e9 bytes per second.",
          *notes,
      ],
  )
  for name, kind, single_bytes, per_thread_bytes in probes:
    for threads in sorted({1, settings.threads}):
      logging.info("roofline: %s with %d threads", name, threads)
      bytes_per_thread = single_bytes if threads == 1 else per_thread_bytes
      call, bytes_per_call = _make_probe(executor, kind, bytes_per_thread, threads)
      result = timing.time_interleaved(
          {name: call},
          repeats=settings.repeats,
          min_repeat_seconds=settings.min_repeat_seconds,
      )[name]
      rate = result.rate(bytes_per_call)
      table.add_row(
          [name.replace("_", " "), str(threads), report.format_bytes(bytes_per_thread),
           report.format_rate(rate, "GB/s", 1e9)],
          {"probe": name, "threads": threads, "bytes_per_thread": bytes_per_thread,
           "bytes_per_second": rate.as_dict()},
      )
  return table


def _gather_forward_bytes(n: int, t: int, d: int, k: int) -> int:
  del k
  return (n * t * d + n * d) * _FLOAT32_BYTES + n * t * (_INT32_BYTES + _FLOAT32_BYTES)


def _lookup_forward_bytes(n: int, t: int, d: int, k: int) -> int:
  rows_and_output = (n * t * d + n * d) * _FLOAT32_BYTES
  projections = n * t * k * _FLOAT32_BYTES
  codes_and_scores = n * t * (_INT32_BYTES + _FLOAT32_BYTES)
  return rows_and_output + projections + codes_and_scores


def _gather_backward_bytes(n: int, t: int, d: int, k: int) -> int:
  del k
  s = settings_lib.TABLE_SIZE
  weight_gradient = n * t * d * _FLOAT32_BYTES  # rows read for <dy, row>
  table_gradient = (2 * n * t * d + t * s * d) * _FLOAT32_BYTES  # rows updated, zeroing
  cotangent = 2 * n * d * _FLOAT32_BYTES  # dy, read by both loops
  small = n * t * (_INT32_BYTES + 2 * _FLOAT32_BYTES)  # codes, weights, dweights
  return weight_gradient + table_gradient + cotangent + small


def _minor_page_faults_per_call(call: Callable[[], Any], calls: int = 5) -> float:
  """Returns the process's minor page faults per call of `call`, all threads counted."""
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    timing.block(call())
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def _fill_table_shaped(value):
  """Returns a new [T, S, D] float32 array filled with `value`, like a fresh dtables."""
  shape = (settings_lib.NUM_TABLES, settings_lib.TABLE_SIZE, settings_lib.WIDTH)
  return jnp.full(shape, value, jnp.float32)


def _kernel_calls(num_tokens: int, seed: int, tables: jax.Array):
  """Returns {kernel: (function, args, bytes per call as f(N, T, D, K))} for N tokens."""
  z = lookup_op.make_projections(num_tokens, seed)
  codes, weights = lookupffn_jax.hash_codes(z)
  dy = lookup_op.make_cotangent(num_tokens, seed)

  def gather(codes, weights, tables):
    return lookupffn_jax.weighted_gather(codes, weights, tables, implementation="ffi")

  def gather_backward(codes, weights, tables, dy):
    # The forward's output is unused, so XLA removes its custom call and only
    # the backward runs. `_check_backward_only` checks this in the compiled
    # program.
    _, vjp = jax.vjp(lambda w, t: gather(codes, w, t), weights, tables)
    return vjp(dy)

  def lookup(z, tables):
    return lookupffn_jax.lookup(z, tables, implementation="ffi")

  return {
      "weighted_gather forward": (gather, (codes, weights, tables), _gather_forward_bytes),
      "lookup forward": (lookup, (z, tables), _lookup_forward_bytes),
      "weighted_gather backward": (gather_backward, (codes, weights, tables, dy),
                                   _gather_backward_bytes),
  }


def run(settings: settings_lib.Settings) -> list[report.Table]:
  """Measures the bandwidth probes, then each FFI kernel's bytes/s against them."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=settings.threads) as executor:
    bandwidth = measure_bandwidth(settings, executor)
    kernels = _measure_kernels(settings, executor)
  return [bandwidth, kernels, _measure_bh4(settings)]


# The XLA matrix product that sets the compute reference: the first GEMM of
# DenseFFN on 4096 tokens.
_MATMUL_SHAPE = (4096, settings_lib.WIDTH, settings_lib.DENSE_HIDDEN)


def _measure_bh4(settings: settings_lib.Settings) -> report.Table:
  """Times the BH4 kernel's forward and backward against an XLA matmul, in FLOP/s."""
  width = settings_lib.WIDTH
  out_features = settings_lib.NUM_TABLES * settings_lib.CODE_LENGTH
  block = settings_lib.BH4_BLOCK_SIZE
  repeats = -(-out_features // width)
  kernel_shape = (repeats, bh4.NUM_FACTORS, width // block, block, block)
  forward_flops = bh4.bh4_flops(width, out_features, block)
  m, k, n = _MATMUL_SHAPE
  table = report.Table(
      section="roofline",
      title=(
          "BH4 kernel: achieved FLOP/s against XLA's float32 matmul (d=512,"
          f" {out_features} outputs, block {block})"
      ),
      columns=["pass", "tokens N", "time", "GFLOP per call", "achieved",
               "% of XLA matmul"],
      notes=[
          f"The reference is `jnp.dot` of [{m}, {k}] by [{k}, {n}] under jit,"
          " XLA's own GEMM (the first product of DenseFFN), timed in the same"
          " interleaved rounds.",
          f"Forward FLOPs are `bh4_flops`: {forward_flops / 1e3:.0f} kFLOP per"
          " token (block products and butterflies, 2 per multiply-add). The"
          " backward (`jax.vjp`, input and kernel gradients, no forward)"
          " recomputes the forward in tiles, then runs the transposed products"
          " and the kernel-gradient products: counted as 3 times the forward.",
      ],
  )
  keys = jax.random.split(jax.random.key(settings.seed), 4)
  lhs = jax.random.normal(keys[0], (m, k), jnp.float32)
  rhs = jax.random.normal(keys[1], (k, n), jnp.float32)
  kernel = jax.random.normal(keys[2], kernel_shape, jnp.float32) / block**0.5
  matmul, _ = timing.compile_within_budget(jnp.dot, (lhs, rhs), settings.max_memory_bytes)

  def forward(x, kernel):
    return bh4.bh4_transform(x, kernel, implementation="ffi")

  def backward(x, kernel, du):
    return jax.vjp(forward, x, kernel)[1](du)

  for num_tokens in settings.tokens:
    if num_tokens < _MIN_ROOFLINE_TOKENS:
      continue
    x = jax.random.normal(keys[3], (num_tokens, width), jnp.float32)
    du = jnp.ones((num_tokens, repeats * width), jnp.float32)
    for name, fn, args, flops in (
        ("forward", forward, (x, kernel), forward_flops * num_tokens),
        ("backward", backward, (x, kernel, du), 3 * forward_flops * num_tokens),
    ):
      logging.info("roofline: bh4 %s N=%d", name, num_tokens)
      call, _ = timing.compile_within_budget(fn, args, settings.max_memory_bytes)
      if call is None or matmul is None:
        continue
      timings = timing.time_interleaved(
          {name: call, "matmul": matmul},
          repeats=settings.repeats,
          min_repeat_seconds=settings.min_repeat_seconds,
      )
      rate = timings[name].rate(flops)
      fraction = timing.speedup(timings["matmul"], timings[name]).scaled(
          flops / (2 * m * k * n)
      )
      table.add_row(
          [name, str(num_tokens), report.format_seconds(timings[name].summary),
           f"{flops / 1e9:.2f}", report.format_rate(rate, "GFLOP/s", 1e9),
           f"{100 * fraction.median:.0f}% ({100 * fraction.min:.0f}–"
           f"{100 * fraction.max:.0f})"],
          {"pass": name, "tokens": num_tokens, "flops_per_call": flops,
           "seconds": timings[name].summary.as_dict(),
           "flops_per_second": rate.as_dict(),
           "matmul_flops_per_second": timings["matmul"].rate(2 * m * k * n).as_dict(),
           "fraction_of_matmul": fraction.as_dict()},
      )
  return table


def _measure_kernels(settings: settings_lib.Settings, executor) -> report.Table:
  """Times each kernel interleaved with the multithreaded DRAM and L3 read probes."""
  t, s, d, k = (settings_lib.NUM_TABLES, settings_lib.TABLE_SIZE, settings_lib.WIDTH,
                settings_lib.CODE_LENGTH)
  probes = {}
  for name, kind, _, per_thread_bytes in _probe_sizes(settings)[0]:
    if name in ("dram_read", "l3_read"):
      probes[name] = _make_probe(executor, kind, per_thread_bytes, settings.threads)

  kernels = report.Table(
      section="roofline",
      title=f"FFI kernels: achieved bytes/s (T={t}, S={s}, K={k}, D={d}, float32)",
      columns=["kernel", "tokens N", "time", "bytes per call", "achieved",
               "% of DRAM read", "% of L3 read", "page faults per call"],
      notes=[
          "Bytes are logical traffic. Forward: table rows read (N·T·D·4) plus"
          " output written (N·D·4), plus codes and weights read (N·T·8); the"
          " lookup forward also reads z (N·T·K·4) and writes codes and scores"
          " (N·T·8).",
          "Backward (dweights and dtables only, no forward): rows read for"
          " dweights (N·T·D·4), rows read and written by the dtables"
          " accumulation (2·N·T·D·4), zeroing dtables (T·S·D·4), dy read"
          " twice (2·N·D·4), codes, weights and dweights (N·T·12).",
          f"The tables are {report.format_bytes(t * s * d * 4)}; a row read"
          " that hits a cache counts like one from DRAM, so a kernel can exceed"
          " 100% of the DRAM figure.",
          f"The percentages compare with the {settings.threads}-thread DRAM and"
          " L3 read probes, timed in the same interleaved rounds as the kernel"
          " (median, min–max over rounds), so a change in load moves both. A"
          " probe evicts the tables from the caches, so the first call of each"
          " kernel repeat starts cold.",
          f"Token counts below {_MIN_ROOFLINE_TOKENS} are left out: call"
          " overhead dominates them.",
          "\"fill a new [T, S, D] array\" is no kernel: it is `jnp.full` of the"
          " dtables shape under jit, the cost of producing a fresh output of that"
          " size. Page faults per call are the process's minor faults"
          " (getrusage), one per 4 KiB page first touched in a newly mapped"
          " buffer.",
      ],
  )

  def time_kernel(name, num_tokens, call, bytes_per_call):
    timings = timing.time_interleaved(
        {name: call, **{probe: probe_call for probe, (probe_call, _) in probes.items()}},
        repeats=settings.repeats,
        min_repeat_seconds=settings.min_repeat_seconds,
    )
    result = timings[name]
    rate = result.rate(bytes_per_call)
    record = {"kernel": name, "tokens": num_tokens, "seconds": result.summary.as_dict(),
              "bytes_per_call": bytes_per_call, "bytes_per_second": rate.as_dict()}
    fraction_cells = []
    for probe in ("dram_read", "l3_read"):
      if probe not in probes:
        fraction_cells.append("–")
        continue
      # (kernel bytes / kernel time) / (probe bytes / probe time), per round.
      fraction = timing.speedup(timings[probe], result).scaled(
          bytes_per_call / probes[probe][1]
      )
      record[f"fraction_of_{probe}"] = fraction.as_dict()
      record[f"{probe}_bytes_per_second"] = timings[probe].rate(probes[probe][1]).as_dict()
      fraction_cells.append(
          f"{100 * fraction.median:.0f}% ({100 * fraction.min:.0f}–{100 * fraction.max:.0f})"
      )
    faults = _minor_page_faults_per_call(call)
    record["minor_page_faults_per_call"] = faults
    kernels.add_row(
        [name, "–" if num_tokens is None else str(num_tokens),
         report.format_seconds(result.summary), report.format_bytes(bytes_per_call),
         report.format_rate(rate, "GB/s", 1e9), *fraction_cells, f"{faults:.0f}"],
        record,
    )

  logging.info("roofline: fill of a [T, S, D] output")
  fill_call, _ = timing.compile_within_budget(
      _fill_table_shaped, (np.float32(1.0),), settings.max_memory_bytes
  )
  if fill_call is not None:
    time_kernel("fill a new [T, S, D] array", None, fill_call, t * s * d * _FLOAT32_BYTES)

  tables = lookup_op.make_tables(settings.seed)
  for num_tokens in settings.tokens:
    if num_tokens < _MIN_ROOFLINE_TOKENS:
      continue
    for name, (fn, args, count_bytes) in _kernel_calls(num_tokens, settings.seed, tables).items():
      logging.info("roofline: %s N=%d", name, num_tokens)
      call, _ = timing.compile_within_budget(fn, args, settings.max_memory_bytes)
      if call is None:
        continue
      if name == "weighted_gather backward":
        _check_backward_only(fn, args, kernels)
      time_kernel(name, num_tokens, call, count_bytes(num_tokens, t, d, k))
  return kernels


def _check_backward_only(fn, args, table: report.Table) -> None:
  """Adds a note to `table` if the backward program still runs the forward kernel."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  note = ("NOTE: the compiled backward program still calls the forward kernel,"
          " so its time includes the forward.")
  if "lookupffn_weighted_gather_fwd" in hlo and note not in table.notes:
    table.notes.append(note)
