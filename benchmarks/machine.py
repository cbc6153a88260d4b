# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Facts about the machine and software that a result depends on."""

import datetime
import glob
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import jax

from lookupffn_jax import _extension

# CPU flags shown in the header: avx2 and fma enable the SIMD kernels, and
# avx512f shows whether wider vectors are available.
_REPORTED_CPU_FLAGS = ("avx2", "fma", "avx512f")
_SIZE_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30}


def available_cores() -> int:
  """Returns the number of CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not every platform has sched_getaffinity.
    return os.cpu_count() or 1


def _cpuinfo_field(name: str) -> str | None:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == name:
          return value.strip()
  except OSError:
    pass
  return None


def cpu_model() -> str:
  return _cpuinfo_field("model name") or platform.processor() or "unknown"


def _parse_size(text: str) -> int:
  text = text.strip()
  if text and text[-1] in _SIZE_SUFFIXES:
    return int(text[:-1]) * _SIZE_SUFFIXES[text[-1]]
  return int(text)


def cache_sizes() -> dict[str, int]:
  """Returns {"L1d": bytes, "L2": bytes, "L3": bytes} of CPU 0, as Linux reports them.

  A cache missing from /sys is missing from the result. L2 and L3 may be
  shared by several cores.
  """
  sizes = {}
  for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
    try:
      with open(os.path.join(index, "level"), encoding="utf-8") as f:
        level = int(f.read())
      with open(os.path.join(index, "type"), encoding="utf-8") as f:
        kind = f.read().strip()
      with open(os.path.join(index, "size"), encoding="utf-8") as f:
        size = _parse_size(f.read())
    except (OSError, ValueError):
      continue
    if kind == "Instruction":
      continue
    sizes["L1d" if level == 1 else f"L{level}"] = size
  return sizes


def _memory_total_bytes() -> int | None:
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def _package_version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _git_revision() -> str:
  """Returns the checked-out commit, marked when the work tree has changes."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
        text=True, check=True, timeout=10,
    ).stdout.strip()
    # --no-optional-locks keeps `git status` from rewriting the index.
    changes = subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain",
         "--untracked-files=no"],
        cwd=repo, capture_output=True, text=True, check=True, timeout=10,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return f"{commit} with uncommitted changes" if changes else commit


def _kernel_source_digest() -> str:
  """Returns a short SHA-256 of the C++ sources in xla_ext/, or "unknown"."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = sorted(glob.glob(os.path.join(repo, "xla_ext", "*")))
  if not paths:
    return "unknown"
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()[:12]


def describe(threads: int) -> dict[str, Any]:
  """Returns the facts printed in the header of every run."""
  flags = set((_cpuinfo_field("flags") or "").split())
  extension = _extension.load()
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu_model": cpu_model(),
      "cores": available_cores(),
      "cpu_flags": [flag for flag in _REPORTED_CPU_FLAGS if flag in flags],
      "caches": cache_sizes(),
      "memory_bytes": _memory_total_bytes(),
      # Other processes' load when the run started: 1, 5 and 15 minute averages.
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
      "kernel_isa": extension.active_isa() if extension else "extension not loaded",
      "kernel_threads": threads,
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _package_version("jaxlib"),
      "flax": _package_version("flax"),
      "numpy": _package_version("numpy"),
      "torch": _package_version("torch"),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # glibc's malloc settings decide whether large outputs are fresh,
      # page-faulting mappings on every call.
      "allocator_environment": {
          name: value for name, value in sorted(os.environ.items())
          if name.startswith("MALLOC_") or name == "LD_PRELOAD"
      },
      "git_revision": _git_revision(),
      # Ties results to the kernel code even when it is not committed yet.
      "kernel_source_sha256": _kernel_source_digest(),
  }


def format_header(facts: dict[str, Any]) -> str:
  """Formats `describe()` as a Markdown list."""
  caches = ", ".join(
      f"{name} {size // 1024} KiB" for name, size in facts["caches"].items()
  )
  memory = facts["memory_bytes"]
  lines = [
      f"- Date: {facts['date']}",
      f"- CPU: {facts['cpu_model']}, {facts['cores']} cores available"
      f" (flags: {', '.join(facts['cpu_flags']) or 'none of avx2, fma, avx512f'})",
      f"- Caches: {caches or 'unknown'}",
      f"- Memory: {memory / 2**30:.1f} GiB" if memory else "- Memory: unknown",
      "- Load average at start (1, 5, 15 min): " + (
          ", ".join(f"{load:.2f}" for load in facts["load_average"])
          if facts["load_average"] else "unknown"
      ),
      f"- Kernel ISA: {facts['kernel_isa']}; kernel threads: {facts['kernel_threads']}"
      " (XLA's own ops use its thread pool, one thread per core by default)",
      f"- Software: Python {facts['python']}, jax {facts['jax']}, jaxlib"
      f" {facts['jaxlib']}, flax {facts['flax']}, numpy {facts['numpy']}, torch"
      f" {facts['torch']}",
      f"- XLA_FLAGS: {facts['xla_flags'] or '(unset)'}",
      "- Allocator environment: " + (
          " ".join(f"{name}={value}" for name, value in facts["allocator_environment"].items())
          or "(none set: glibc malloc defaults)"
      ),
      f"- Revision: {facts['git_revision']}; SHA-256 of xla_ext/:"
      f" {facts['kernel_source_sha256']}",
  ]
  return "\n".join(lines) + "\n"
