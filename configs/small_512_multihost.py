# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""RoBERTa-small LookupFFN (128 tables of 256 rows, BH4) trained across several hosts.

The model and optimizer are those of configs/small_512_lookup_bh4_128.py.
The batch is split over the "data" mesh axis, and each LookupFFN's 128
tables are split in halves over a "tables" axis of 2 devices. The 256
sequences of a step run as 4 micro-batches of 64. The total device count
must be even, and 64 must be a multiple of the "data" size (the device
count / 2).

Every host runs the same command with the same workdir on a shared file
system. Process 0 runs the coordinator at JAX_COORDINATOR_ADDRESS (its own
address and a free port, reachable from the other hosts), and each process
sets its own JAX_PROCESS_ID from 0 to JAX_NUM_PROCESSES - 1. On host 0 of 2:

  JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
  python -m train.main --config=configs/small_512_multihost.py \\
      --workdir=/shared/workdir/small_512_multihost \\
      --config.corpus.kind=parquet --config.corpus.paths=/data/wiki/*.parquet

and the same with JAX_PROCESS_ID=1 on host 1. On Slurm, Open MPI or Cloud
TPU, add `--config.initialize_distributed=True` in place of the three
variables and jax finds the processes itself. A single host runs the config
without the variables.
"""

from configs import default


def get_config():
  """Returns the multi-host RoBERTa-small LookupFFN config."""
  config = default.small_512_config("lookup_bh4", num_tables=128)
  config.mesh.data = -1
  config.mesh.tables = 2
  config.grad_accum_steps = 4
  return config
