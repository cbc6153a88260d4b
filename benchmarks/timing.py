# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Interleaved wall-clock timing of candidates that compute the same thing.

On a shared machine the load changes while a benchmark runs. Timing the
candidates in alternation (A, B, A, B, ...) exposes them to the same load, and
the ratio of the two times within one round cancels most of it, so speedups
are taken per round and then summarised.
"""

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax

# Calibration stops doubling the number of calls once they take this long.
_CALIBRATION_LIMIT_SECONDS = 1.0
_MAX_CALLS_PER_REPEAT = 100_000

# After each repeat the next one waits, untimed, for this fraction of the
# repeat's length, at most _MAX_SETTLE_SECONDS. A call can return before the
# memory it used is released: XLA frees a program's temporaries after its
# outputs are ready, and unmapping the gigabytes that the reference lookup
# gradient allocates at 4096 tokens took about 0.13 s. Without the wait that
# work ran during the next candidate's repeat and tripled the time of the
# 60 ms call that followed it.
_SETTLE_FRACTION = 0.5
_MAX_SETTLE_SECONDS = 0.3


@dataclasses.dataclass(frozen=True)
class Summary:
  """Median, minimum and maximum of a sample."""

  median: float
  min: float
  max: float

  @classmethod
  def of(cls, values: Sequence[float]) -> "Summary":
    if not values:
      raise ValueError("cannot summarise an empty sample")
    return cls(statistics.median(values), min(values), max(values))

  def scaled(self, factor: float) -> "Summary":
    """Returns the summary of every value multiplied by a positive `factor`."""
    if factor <= 0:
      raise ValueError(f"factor must be positive, got {factor}")
    return Summary(self.median * factor, self.min * factor, self.max * factor)

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call of one candidate, one value per repeat."""

  seconds: tuple[float, ...]
  calls_per_repeat: int
  # The output of the last warmup call, kept only on request.
  warmup_output: Any = None

  @property
  def summary(self) -> Summary:
    return Summary.of(self.seconds)

  def rate(self, amount: float) -> Summary:
    """Summarises `amount / seconds` over repeats, such as bytes or tokens per second."""
    return Summary.of([amount / s for s in self.seconds])


def block(outputs: Any) -> Any:
  """Waits until every JAX array in `outputs` is computed."""
  return jax.block_until_ready(outputs)


def _run_calls(fn: Callable[[], Any], calls: int) -> float:
  """Returns the seconds per call of `calls` calls, each waited for."""
  start = time.perf_counter()
  for _ in range(calls):
    block(fn())
  return (time.perf_counter() - start) / calls


def _calls_per_repeat(
    fn: Callable[[], Any], min_repeat_seconds: float, last_call_seconds: float
) -> int:
  """Returns how many calls of `fn` take about `min_repeat_seconds`.

  A candidate whose last warmup call already took that long gets one call
  per repeat without being called again here.
  """
  if last_call_seconds >= min_repeat_seconds:
    return 1
  calls = 1
  while True:
    start = time.perf_counter()
    for _ in range(calls):
      block(fn())
    elapsed = time.perf_counter() - start
    if elapsed >= min(min_repeat_seconds / 4, _CALIBRATION_LIMIT_SECONDS):
      break
    calls *= 2
  per_call = elapsed / calls
  return max(1, min(_MAX_CALLS_PER_REPEAT, math.ceil(min_repeat_seconds / per_call)))


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    min_repeat_seconds: float,
    warmup: int = 1,
    keep_warmup_outputs: bool = False,
) -> dict[str, Timing]:
  """Times each zero-argument candidate, alternating between them.

  Every candidate is first called `warmup` times (compiling it if needed) and
  calibrated so that one repeat lasts at least `min_repeat_seconds`. Then each
  of `repeats` rounds runs one repeat of every candidate, starting from a
  different candidate in each round. Each call is waited for before the next
  starts, so a time is the latency of a synchronous call, dispatch included.
  After each repeat the loop pauses, untimed, for half the repeat's length
  (at most 0.3 s), so that memory released late by one candidate is not
  released during the next one's repeat.

  Returns:
    {name: Timing}, in the order of `candidates`. With `keep_warmup_outputs`
    (which needs `warmup` >= 1), each Timing contains its candidate's last
    warmup output, for checking results without another call.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  if warmup < 1 and keep_warmup_outputs:
    raise ValueError(f"keep_warmup_outputs needs warmup >= 1, got {warmup}")
  names = list(candidates)

  calls = {}
  warmup_outputs = {}
  for name in names:
    last_call_seconds = 0.0
    output = None
    for _ in range(warmup):
      start = time.perf_counter()
      output = block(candidates[name]())
      last_call_seconds = time.perf_counter() - start
    if keep_warmup_outputs:
      warmup_outputs[name] = output
    output = None  # Frees a large output before the next candidate runs.
    calls[name] = _calls_per_repeat(
        candidates[name], min_repeat_seconds, last_call_seconds
    )

  seconds = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      per_call = _run_calls(candidates[name], calls[name])
      seconds[name].append(per_call)
      time.sleep(min(_MAX_SETTLE_SECONDS, _SETTLE_FRACTION * per_call * calls[name]))
  return {
      name: Timing(tuple(seconds[name]), calls[name], warmup_outputs.get(name))
      for name in names
  }


def speedup(baseline: Timing, candidate: Timing) -> Summary:
  """Summarises baseline time / candidate time over rounds (> 1: candidate faster).

  Both timings must come from one `time_interleaved` call, so that repeat i
  of each ran in the same round.
  """
  if len(baseline.seconds) != len(candidate.seconds):
    raise ValueError(
        f"timings have {len(baseline.seconds)} and {len(candidate.seconds)}"
        " repeats; time them together with time_interleaved"
    )
  return Summary.of([b / c for b, c in zip(baseline.seconds, candidate.seconds)])


def compile_within_budget(
    fn: Callable[..., Any], args: Sequence[Any], max_memory_bytes: int
) -> tuple[Callable[[], Any] | None, int | None]:
  """Compiles `jax.jit(fn)` for `args`, unless it needs too much memory.

  The memory need is XLA's own estimate for the compiled program: arguments,
  outputs and temporaries.

  Returns:
    `(call, bytes)`: a zero-argument function running the compiled program on
    `args`, or None when `bytes` exceeds `max_memory_bytes`. `bytes` is None
    when the backend reports no estimate, and the program is then kept.
  """
  compiled = jax.jit(fn).lower(*args).compile()
  stats = compiled.memory_analysis()
  needed = None
  if stats is not None:
    needed = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
  if needed is not None and needed > max_memory_bytes:
    return None, needed
  return (lambda: compiled(*args)), needed
