# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Shapes and run settings shared by every benchmark section."""

import dataclasses

from benchmarks import machine

# The LookupFFN shape of `RobertaConfig.small_512`: 128 tables of 256 rows
# (code length 8) and width 512; its dense FFN has 2048 hidden units.
NUM_TABLES = 128
TABLE_SIZE = 256
CODE_LENGTH = 8
WIDTH = 512
DENSE_HIDDEN = 2048
BH4_BLOCK_SIZE = 64

FULL_TOKENS = (1, 8, 64, 512, 4096, 32768)
QUICK_TOKENS = (1, 64, 4096)

# Token count N of the torch comparison.
TORCH_TOKENS = 4096

# (batch, sequence length) of the end-to-end model runs.
FULL_MODEL_BATCHES = ((1, 128), (8, 512))
QUICK_MODEL_BATCHES = ((1, 128),)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How much to measure, set from the command line in `benchmarks.run`."""

  # Token counts N of the op and layer sections.
  tokens: tuple[int, ...] = FULL_TOKENS
  # (batch, sequence length) pairs of the end-to-end section.
  model_batches: tuple[tuple[int, int], ...] = FULL_MODEL_BATCHES
  # Timed repeats of every candidate, interleaved with the others.
  repeats: int = 5
  # Timed repeats in the end-to-end section. At 8 x 512 a repeat is one call
  # of about a second, and load moves single calls by 10% or more: at one
  # revision, runs with five repeats gave speedups 3% apart.
  model_repeats: int = 9
  # Each repeat calls a candidate until at least this many seconds have passed.
  min_repeat_seconds: float = 0.05
  # Cases whose compiled program needs more memory than this are skipped.
  max_memory_bytes: int = 8 * 2**30
  # Threads of the FFI kernels, of torch and of the bandwidth probes.
  threads: int = dataclasses.field(default_factory=machine.available_cores)
  # Seed of every random input.
  seed: int = 0
