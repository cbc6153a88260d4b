# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Training metrics: TensorBoard summaries, progress with ETA, and the final plot."""

import collections
import json
import os
import pathlib
import time
from typing import Mapping

import tensorboardX


def format_values(values: Mapping[str, float]) -> str:
  """Formats metrics as `name=value` pairs for a log line."""
  return " ".join(f"{name}={value:.4g}" for name, value in values.items())


class MetricWriter:
  """Writes scalars to TensorBoard event files and to `metrics.jsonl`.

  Both are appended to, so a resumed run continues the history of the run
  it resumes; `history` contains what this process wrote, for the plot.
  """

  def __init__(self, workdir: str | os.PathLike[str]):
    workdir = pathlib.Path(workdir)
    self._writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    self.history: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    record = {"step": step}
    for name, value in values.items():
      self._writer.add_scalar(name, value, step)
      self.history[name].append((step, float(value)))
      record[name] = float(value)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
    self._jsonl.close()


class Progress:
  """Training throughput and the estimated time to the last step."""

  def __init__(self, num_steps: int, start_step: int):
    self._num_steps = num_steps
    self._start_step = start_step
    self._start_time = time.monotonic()
    self._window_time = self._start_time
    self._window_tokens = 0
    self._last_rate = 0.0

  def update(self, step: int, num_tokens: int) -> None:
    del step
    self._window_tokens += num_tokens

  def tokens_per_second(self) -> float:
    """Returns the token rate since the previous call (the first call: since the start)."""
    now = time.monotonic()
    if now > self._window_time and self._window_tokens:
      self._last_rate = self._window_tokens / (now - self._window_time)
    self._window_time = now
    self._window_tokens = 0
    return self._last_rate

  def line(self, step: int) -> str:
    """Returns `step i/n (p%), elapsed, eta` for a progress log line."""
    elapsed = time.monotonic() - self._start_time
    done = step - self._start_step
    remaining = self._num_steps - step
    eta = elapsed / done * remaining if done > 0 else float("nan")
    percent = 100.0 * step / self._num_steps
    return (
        f"step {step}/{self._num_steps} ({percent:.0f}%) elapsed"
        f" {_duration(elapsed)} eta {_duration(eta)}"
    )


def _duration(seconds: float) -> str:
  if seconds != seconds:  # NaN before the first step.
    return "?"
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def plot_history(
    history: Mapping[str, list[tuple[int, float]]], path: str | os.PathLike[str]
) -> None:
  """Plots MLM loss and accuracy against the step, train and eval, to a PNG file."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
  for split, style in (("train", "-"), ("eval", "o-")):
    for axes, metric in ((loss_axes, "mlm_loss"), (accuracy_axes, "mlm_accuracy")):
      points = history.get(f"{split}/{metric}", [])
      if points:
        steps, values = zip(*points)
        axes.plot(steps, values, style, label=split)
  loss_axes.set(xlabel="step", ylabel="MLM loss", title="Masked-LM loss")
  accuracy_axes.set(xlabel="step", ylabel="accuracy on masked tokens", title="Masked-LM accuracy")
  for axes in (loss_axes, accuracy_axes):
    axes.grid(alpha=0.3)
    axes.legend()
  figure.tight_layout()

  # Written under a temporary name and renamed, so the PNG is never partial.
  path = pathlib.Path(path)
  temporary = path.with_name(path.stem + ".tmp.png")
  figure.savefig(temporary, dpi=100)
  plt.close(figure)
  os.replace(temporary, path)
