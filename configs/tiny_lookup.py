# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny RoBERTa with LookupFFN (32 tables x 256, BH4 hashing) on the default corpus.

The main job, a few minutes on a 2-core CPU:

  make pretrain
  # or: python -m train.main --config=configs/tiny_lookup.py --workdir=workdir/tiny_lookup
"""

from configs import default


def get_config():
  """Returns the tiny LookupFFN config."""
  return default.get_config()
