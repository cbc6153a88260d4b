# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tiny RoBERTa with the dense FFN baseline (d = 128, 512 hidden units).

  make pretrain CONFIG=configs/tiny_dense.py
  # or: python -m train.main --config=configs/tiny_dense.py --workdir=workdir/tiny_dense
"""

from configs import default


def get_config():
  """Returns the tiny dense-FFN config."""
  config = default.get_config()
  config.model = default.model_config("tiny", "dense", vocab_size=config.model.vocab_size)
  return config
