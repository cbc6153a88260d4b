# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""RoBERTa-small at sequence length 512 with LookupFFN: 64 tables of 256 rows, a dense hash projection.

Same model and optimizer as configs/small_512_dense.py with the FFN replaced.

  python -m train.main --config=configs/small_512_lookup_dense_64.py \\
      --workdir=workdir/small_512_lookup_dense_64 \\
      --config.corpus.kind=parquet --config.corpus.paths=/data/wiki/*.parquet
"""

from configs import default


def get_config():
  """Returns the RoBERTa-small LookupFFN config with 64 tables."""
  return default.small_512_config("lookup_dense", num_tables=64)
