# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny RoBERTa with LookupFFN (32 tables x 256, dense hash projection).

The model has 2 layers of width 128 and trains for 1200 steps of 32
sequences of 128 tokens on the default corpus. At this width a BH4
projection costs as many FLOPs as a dense one and runs slower under XLA on
CPU, so this config uses the dense projection. The
configs/small_512_lookup_bh4_*.py configs use BH4.

The main job, about 10 minutes on a 2-core CPU:

  make pretrain
  # or: python -m train.main --config=configs/tiny_lookup.py --workdir=workdir/tiny_lookup
"""

from configs import default


def get_config():
  """Returns the tiny LookupFFN config."""
  return default.get_config()
