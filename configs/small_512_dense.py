# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""RoBERTa-small at sequence length 512 with the dense FFN (2048 hidden units).

The baseline of the LookupFFN configs: 4 layers, d = 512, 8 heads of 64,
250k steps of 256 sequences, AdamW (0.9, 0.98, 1e-6, weight decay 0.01),
peak learning rate 1e-4 after 10k warmup steps, then linear decay.

  python -m train.main --config=configs/small_512_dense.py \\
      --workdir=workdir/small_512_dense \\
      --config.corpus.kind=parquet --config.corpus.paths=/data/wiki/*.parquet
"""

from configs import default


def get_config():
  """Returns the RoBERTa-small dense-FFN config."""
  return default.small_512_config("dense")
