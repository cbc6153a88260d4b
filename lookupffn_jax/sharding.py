# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Data- and table-parallel placement of LookupFFN models on a device mesh.

A mesh built by `make_mesh` has two axes:

* "data": the batch is split over it. Each device stores a copy of every
  parameter, except that the LookupFFN tables are split over "tables".
* "tables": the T tables of every LookupFFN, and their optimizer moments, are
  split over it along T. Each device looks up only its own tables, with the
  z slices that select rows in them, and a `psum` over "tables" adds the
  partial outputs.

`LookupFFN` calls `sharded_lookup`. Under `jax.set_mesh(mesh)` with either axis
it runs `lookup` inside `jax.shard_map`, so the CPU custom call runs once per
device on that device's shard and never receives a gathered input. Without such a
mesh it is `lookup`.

Example::

  mesh = make_mesh({"data": -1, "tables": 2})
  params = jax.device_put(params, tree_shardings(params, mesh))
  input_ids, mask = jax.device_put((input_ids, mask), batch_sharding(mesh))
  with jax.set_mesh(mesh):
    logits = jax.jit(model.apply)({"params": params}, input_ids, mask)
"""

import math
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lookupffn_jax.lookup import lookup

DATA_AXIS = "data"
TABLES_AXIS = "tables"
MESH_AXES = (DATA_AXIS, TABLES_AXIS)
# The parameter name of the LookupFFN tables, `[..., T, S, D]` with T third
# from last (a leading layer axis is added by `nn.scan`).
TABLES_PARAM_NAME = "tables"


def make_mesh(
    axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """Builds a mesh with axes ("data", "tables") over `devices` (default: all).

  Args:
    axis_sizes: the size of "data" and of "tables". A missing axis has size
      1, and one axis may be -1 to take all devices left by the other.
    devices: the devices of the mesh, in every process (default:
      `jax.devices()`).

  Returns:
    A mesh with `AxisType.Auto` axes, so that XLA partitions everything
    outside `shard_map` from the shardings of the inputs. "tables" is the
    minor axis, so the devices of one table group are adjacent, which puts
    them in one process when its size divides the devices per process.
  """
  devices = list(jax.devices() if devices is None else devices)
  unknown = sorted(set(axis_sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
  sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
  if any(size == 0 or size < -1 for size in sizes) or sizes.count(-1) > 1:
    raise ValueError(
        f"mesh axis sizes must be positive, with at most one -1, got"
        f" {dict(zip(MESH_AXES, sizes))}"
    )

  known = math.prod(size for size in sizes if size != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
          f"the mesh {dict(zip(MESH_AXES, sizes))} needs a device count that is"
          f" a multiple of {known}, got {len(devices)} devices"
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"the mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices"
        f" but {len(devices)} are available; set one axis to -1 to use them all"
    )
  return jax.make_mesh(
      tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(sizes), devices=devices
  )


def _axis_size(mesh, axis: str) -> int:
  return mesh.shape[axis] if axis in mesh.axis_names else 1


def lookup_partition_specs(z_ndim: int, mesh) -> tuple[P, P, P]:
  """Returns the partition specs of z `[B, ..., T, K]`, tables `[T, S, D]` and y `[B, ..., D]`.

  The first axis of z and y is split over "data", and the T axis of z and of
  the tables over "tables". An axis missing from `mesh` splits nothing.
  """
  data = DATA_AXIS if DATA_AXIS in mesh.axis_names else None
  tables = TABLES_AXIS if TABLES_AXIS in mesh.axis_names else None
  if z_ndim == 2:
    # A single token [T, K] has no batch axis to split.
    return P(tables, None), P(tables, None, None), P(None)
  middle = (None,) * (z_ndim - 3)
  return (
      P(data, *middle, tables, None),
      P(tables, None, None),
      P(data, *middle, None),
  )


def splits_lookup(mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> bool:
  """Returns whether `mesh` (default: the one set with `jax.set_mesh`) splits the look-up.

  That is, whether it has a "data" or a "tables" axis, so that
  `sharded_lookup` runs `lookup` per shard.
  """
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  return bool(set(MESH_AXES) & set(mesh.axis_names))


def sharded_lookup(
    z: jax.Array,
    tables: jax.Array,
    *,
    estimator: str = "score",
    implementation: str = "auto",
    mesh: Mesh | jax.sharding.AbstractMesh | None = None,
) -> jax.Array:
  """Runs `lookup` on each device's shard of z and of the tables, then sums over "tables".

  Takes the same arguments as `lookup` plus `mesh` (default: the mesh set
  with `jax.set_mesh`). Where the mesh has neither a "data" nor a "tables"
  axis, this is `lookup`.

  Raises:
    ValueError: if the first axis of z is not a multiple of the "data" size,
      or T is not a multiple of the "tables" size.
  """
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  # `lookup` also raises its errors for inputs of the wrong rank.
  if not splits_lookup(mesh) or z.ndim < 2 or tables.ndim != 3:
    return lookup(z, tables, estimator=estimator, implementation=implementation)

  data_size = _axis_size(mesh, DATA_AXIS)
  tables_size = _axis_size(mesh, TABLES_AXIS)
  if z.ndim > 2 and z.shape[0] % data_size:
    raise ValueError(
        f"the first axis of z {z.shape} must be a multiple of the {data_size}"
        f" devices of mesh axis {DATA_AXIS!r}; change the batch size"
    )
  if tables.shape[0] % tables_size:
    raise ValueError(
        f"the {tables.shape[0]} tables must be a multiple of the {tables_size}"
        f" devices of mesh axis {TABLES_AXIS!r}; change num_tables or the mesh"
    )

  def lookup_own_tables(z_shard, tables_shard):
    y_shard = lookup(
        z_shard, tables_shard, estimator=estimator, implementation=implementation
    )
    if TABLES_AXIS in mesh.axis_names:
      y_shard = jax.lax.psum(y_shard, TABLES_AXIS)
    return y_shard

  z_spec, tables_spec, y_spec = lookup_partition_specs(z.ndim, mesh)
  # z enters whole on every device of a table group, so that XLA does not
  # carry the split of its T axis back into the hash projection and the
  # layers before it. In the backward pass this gathers dz over "tables".
  z_whole_spec = P(*z_spec[:-2], None, None)
  z = jax.lax.with_sharding_constraint(z, NamedSharding(mesh, z_whole_spec))
  # NOTE: check_vma=False because `jax.ffi.ffi_call` in jax 0.10.2 gives its
  # results no varying mesh axes and rejects operands whose varying axes
  # differ, as z and the tables do here. The psum makes y equal over
  # "tables", as the replicated out_specs state, and the tests compare the
  # gradients with the unsharded ones.
  return jax.shard_map(
      lookup_own_tables,
      mesh=mesh,
      in_specs=(z_spec, tables_spec),
      out_specs=y_spec,
      check_vma=False,
  )(z, tables)


def tables_partition_spec(ndim: int) -> P:
  """Returns the spec that splits the T axis of `[..., T, S, D]` tables over "tables"."""
  return P(*((None,) * (ndim - 3)), TABLES_AXIS, None, None)


def tree_partition_specs(tree: Any, mesh) -> Any:
  """Returns a partition spec per leaf: LookupFFN tables over "tables", all else replicated.

  `tree` is parameters, optimizer state or a whole train state, with arrays
  or `jax.ShapeDtypeStruct`s as leaves. A leaf counts as tables when its last
  path key is "tables" and it has at least 3 axes, which also matches the
  Adam moments of the tables.

  Raises:
    ValueError: naming a tables leaf whose T is not a multiple of the
      "tables" size.
  """
  tables_size = _axis_size(mesh, TABLES_AXIS)

  def spec(path, leaf):
    ndim = getattr(leaf, "ndim", 0)
    is_tables = getattr(path[-1], "key", None) == TABLES_PARAM_NAME and ndim >= 3
    if not is_tables or TABLES_AXIS not in mesh.axis_names:
      return P()
    num_tables = leaf.shape[-3]
    if num_tables % tables_size:
      raise ValueError(
          f"{jax.tree_util.keystr(path)} has {num_tables} tables, which is not"
          f" a multiple of the {tables_size} devices of mesh axis"
          f" {TABLES_AXIS!r}; change num_tables or the mesh"
      )
    return tables_partition_spec(ndim)

  return jax.tree_util.tree_map_with_path(spec, tree)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """Returns a `NamedSharding` per leaf of `tree`, following `tree_partition_specs`."""
  return jax.tree_util.tree_map(
      lambda spec: NamedSharding(mesh, spec),
      tree_partition_specs(tree, mesh),
      is_leaf=lambda x: isinstance(x, P),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Returns the sharding that splits the first axis of a batch array over "data"."""
  return NamedSharding(mesh, P(DATA_AXIS if DATA_AXIS in mesh.axis_names else None))
