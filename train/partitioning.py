# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Multi-process start-up, the device mesh and the placement of state and batches.

The training loop calls `initialize_distributed` before any other JAX call,
then `create_mesh` from `config.mesh` and `create_train_state`, which
initialises the state directly in its shardings. Each batch goes through
`put_batch`, and the steps are compiled by `jit_on_mesh`, so that `LookupFFN`
is traced under the mesh. `lookupffn_jax.sharding` defines which arrays are split over which
mesh axis.
"""

import os
from typing import Any, Callable, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from lookupffn_jax import sharding

# Environment variables read by `initialize_distributed`. jax 0.10.2 reads
# JAX_COORDINATOR_ADDRESS itself, but not the process count or id.
COORDINATOR_ADDRESS_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _int_from_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name} must be an integer, got {value!r}") from None


def initialize_distributed(force: bool = False) -> bool:
  """Calls `jax.distributed.initialize` when the job runs as several processes.

  It initialises when JAX_COORDINATOR_ADDRESS is set, passing
  JAX_NUM_PROCESSES and JAX_PROCESS_ID where set, or when `force` is True,
  in which case jax detects the missing values itself on Slurm, Open MPI,
  Kubernetes (with the `kubernetes` package) and Cloud TPU. It must run
  before any other JAX call in the process, and it does nothing when the
  distributed runtime is already initialised.

  Returns:
    Whether the process runs under the distributed runtime.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = os.environ.get(COORDINATOR_ADDRESS_ENV) or None
  if coordinator_address is None and not force:
    return False

  num_processes = _int_from_env(NUM_PROCESSES_ENV)
  process_id = _int_from_env(PROCESS_ID_ENV)
  logging.info(
      "Initialising jax.distributed: coordinator %s, %s processes, process id %s.",
      coordinator_address or "(auto-detected)",
      num_processes if num_processes is not None else "(auto-detected)",
      process_id if process_id is not None else "(auto-detected)",
  )
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
  )
  logging.info(
      "Process %d of %d sees %d local and %d global devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )
  return True


def create_mesh(mesh_config: Mapping[str, int] | ml_collections.ConfigDict):
  """Builds the ("data", "tables") mesh over all devices of all processes."""
  axis_sizes = dict(mesh_config.items())
  mesh = sharding.make_mesh(axis_sizes)
  logging.info("Device mesh: %s over %d processes.", dict(mesh.shape), jax.process_count())
  return mesh


def check_batch_sizes(mesh, batch_size: int, eval_batch_size: int, grad_accum_steps: int):
  """Raises ValueError unless every micro-batch splits evenly over "data"."""
  data_size = mesh.shape.get(sharding.DATA_AXIS, 1)
  for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if value < 1:
      raise ValueError(f"{name} must be at least 1, got {value}")
  if grad_accum_steps < 1 or batch_size % grad_accum_steps:
    raise ValueError(
        f"grad_accum_steps must be a positive divisor of batch_size {batch_size},"
        f" got {grad_accum_steps}"
    )
  micro_batch_size = batch_size // grad_accum_steps
  if micro_batch_size % data_size:
    raise ValueError(
        f"the micro-batch of {micro_batch_size} sequences (batch_size"
        f" {batch_size} / grad_accum_steps {grad_accum_steps}) must be a"
        f" multiple of the {data_size} devices of mesh axis 'data'"
    )
  if eval_batch_size % data_size:
    raise ValueError(
        f"eval_batch_size {eval_batch_size} must be a multiple of the"
        f" {data_size} devices of mesh axis 'data'"
    )


def create_train_state(create_fn: Callable[[], Any], mesh) -> tuple[Any, Any]:
  """Runs `create_fn` so that every array of its result is born in its sharding.

  Returns:
    `(state, shardings)`: the state, with the LookupFFN tables and their
    optimizer moments split over "tables" and everything else replicated,
    and the matching tree of `NamedSharding`s.
  """
  abstract_state = jax.eval_shape(create_fn)
  shardings = sharding.tree_shardings(abstract_state, mesh)
  state = jax.jit(create_fn, out_shardings=shardings)()
  return state, shardings


def put_batch(batch: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Places a global batch, the same in every process, split over "data".

  Each process copies only the rows of its own devices, so this also works
  when the mesh spans several processes.
  """
  batch_sharding = sharding.batch_sharding(mesh)
  return {
      name: jax.make_array_from_callback(
          np.shape(value), batch_sharding, lambda index, value=value: value[index]
      )
      for name, value in batch.items()
  }


def jit_on_mesh(fn: Callable, mesh, **jit_kwargs) -> Callable:
  """Returns `jax.jit(fn, **jit_kwargs)` that traces and runs under `jax.set_mesh(mesh)`."""
  jitted = jax.jit(fn, **jit_kwargs)

  def run(*args):
    with jax.set_mesh(mesh):
      return jitted(*args)

  return run


def replicated(mesh):
  """Returns the sharding that puts a full copy on every device of `mesh`."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def primary_process_first(fn: Callable[[], Any], name: str) -> Any:
  """Runs `fn` in process 0, then in the other processes, and returns its result.

  The training loop creates the datasets this way, so that process 0 trains
  and writes `tokenizer.json` once and the others load it from a shared
  workdir instead of writing the same file at the same time.
  """
  if jax.process_count() == 1:
    return fn()
  # NOTE: this branch has not run with several processes yet. Every process
  # must reach `sync_global_devices` with the same name, or all of them hang.
  if jax.process_index() == 0:
    result = fn()
    multihost_utils.sync_global_devices(name)
    return result
  multihost_utils.sync_global_devices(name)
  return fn()
