# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Pre-norm feed-forward blocks: `LookupFFN` and the dense baseline `DenseFFN`."""

import math
import numbers

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.typing import Dtype, Initializer

from lookupffn_jax import bh4 as bh4_lib
from lookupffn_jax import sharding as sharding_lib
from lookupffn_jax.lookup import ESTIMATORS
from lookupffn_jax.lookup import IMPLEMENTATIONS
from lookupffn_jax.lookup import MAX_CODE_LENGTH

PROJECTIONS = ("dense", "bh4")
MIN_TABLE_SIZE = 2
MAX_TABLE_SIZE = 2**MAX_CODE_LENGTH


def layer_norm(
    epsilon: float, dtype: Dtype | None, param_dtype: Dtype, name: str | None = None
) -> nn.LayerNorm:
  """Returns the LayerNorm that every module in this package uses.

  It subtracts the mean before squaring. Flax's default fast variance,
  E[x^2] - E[x]^2, cancels catastrophically in float32 for rows with a large
  mean, such as [40000, 40001, 40002, 40003].
  """
  return nn.LayerNorm(
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      use_fast_variance=False,
      name=name,
  )


def code_length_for(table_size: int) -> int:
  """Returns log2(table_size), raising ValueError unless it is a valid table size."""
  if (
      not isinstance(table_size, numbers.Integral)
      or not MIN_TABLE_SIZE <= table_size <= MAX_TABLE_SIZE
      or not bh4_lib.is_power_of_two(table_size)
  ):
    raise ValueError(
        f"table_size must be a power of two from {MIN_TABLE_SIZE} to"
        f" {MAX_TABLE_SIZE}, got {table_size!r}"
    )
  return int(math.log2(table_size))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _compute_dtype(dtype: Dtype | None, x: jax.Array, param_dtype: Dtype) -> Dtype:
  """Returns `dtype`, or the promoted input and parameter dtype when it is None."""
  if dtype is not None:
    return dtype
  return jnp.result_type(x.dtype, param_dtype)


class LookupFFN(nn.Module):
  """Feed-forward block that replaces the dense MLP with hash-table look-ups.

  Computes LayerNorm -> hash projection to `num_tables * code_length` values
  -> `lookup` (one row per table by the sign code of its projections, weighted
  by score) -> plus a learned bias. The block is pre-norm, so a Transformer
  layer uses it as `x + LookupFFN(...)(x)`.

  `lookup` runs in float32, so the projections are cast to float32 for it and
  its output is cast back to the compute dtype. The tables are read in
  `table_dtype`: bfloat16 halves the bytes per looked-up row while the sum
  stays in float32.

  Under `jax.set_mesh(mesh)` with a "data" or "tables" axis the look-up runs
  on each device's shard, see `lookupffn_jax.sharding`.

  With a float32 BH4 projection and implementation "auto" or "ffi", the
  block runs as `bh4.bh4_lookup` with the LayerNorm and output bias: without
  differentiation that is two CPU kernels that store neither the normalized
  input nor the projections. Its LayerNorm and BH4 submodules own the
  parameters but are not called, so `capture_intermediates` records
  neither.

  Attributes:
    num_tables: number of hash tables T.
    table_size: rows per table, a power of two from 2 to 65536. Each table
      reads code_length = log2(table_size) projections.
    out_features: output width (default: the input width).
    projection: "dense" (`nn.Dense`) or "bh4" (`BH4`) for the hash projection.
    block_size: block size of the BH4 projection; unused by "dense".
    estimator: gradient estimator of `lookup`, "score" or "straight_through".
    implementation: implementation of `lookup` and of the BH4 projection,
      "auto", "ffi" or "reference".
    dtype: the dtype of the computation (default: inferred from input and params).
    param_dtype: the dtype of the parameters.
    table_dtype: the dtype the tables are read in, float32 or bfloat16
      (default: float32). The parameter keeps `param_dtype`, so training
      updates a float32 master copy; for inference, store the tables in
      `table_dtype` to skip the cast.
    layer_norm_epsilon: epsilon of the input LayerNorm.
    tables_init: initializer for the `[T, table_size, out_features]` tables.
    bias_init: initializer for the output bias.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lookupffn_jax import LookupFFN
    >>> layer = LookupFFN(num_tables=8, table_size=16, implementation="reference")
    >>> x = jnp.ones((2, 5, 32))
    >>> params = layer.init(jax.random.key(0), x)
    >>> params["params"]["tables"].shape
    (8, 16, 32)
    >>> layer.apply(params, x).shape
    (2, 5, 32)
  """

  num_tables: int
  table_size: int
  out_features: int | None = None
  projection: str = "dense"
  block_size: int = 64
  estimator: str = "score"
  implementation: str = "auto"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  table_dtype: Dtype | None = None
  layer_norm_epsilon: float = 1e-5
  tables_init: Initializer = nn.initializers.normal(stddev=0.02)
  bias_init: Initializer = nn.initializers.zeros_init()

  def __post_init__(self):
    if self.num_tables < 1:
      raise ValueError(f"num_tables must be at least 1, got {self.num_tables}")
    code_length_for(self.table_size)
    if self.table_dtype is not None and jnp.dtype(self.table_dtype) not in (
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.bfloat16),
    ):
      raise ValueError(
          f"table_dtype must be float32 or bfloat16, got {self.table_dtype}"
      )
    if self.out_features is not None and self.out_features < 1:
      raise ValueError(
          f"out_features must be at least 1 or None, got {self.out_features}"
      )
    _check_choice("projection", self.projection, PROJECTIONS)
    if self.projection == "bh4" and not bh4_lib.is_power_of_two(self.block_size):
      raise ValueError(f"block_size must be a power of two, got {self.block_size}")
    _check_choice("estimator", self.estimator, ESTIMATORS)
    _check_choice("implementation", self.implementation, IMPLEMENTATIONS)
    super().__post_init__()

  @property
  def code_length(self) -> int:
    return code_length_for(self.table_size)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps `x` of shape `[..., d]` to `[..., out_features]`."""
    out_features = self.out_features or x.shape[-1]
    dtype = _compute_dtype(self.dtype, x, self.param_dtype)
    num_projections = self.num_tables * self.code_length

    norm = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, "layer_norm")
    if self.projection == "dense":
      projection = nn.Dense(
          num_projections,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name="hash_projection",
      )
    else:
      projection = bh4_lib.BH4(
          num_projections,
          block_size=self.block_size,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          implementation=self.implementation,
          name="hash_projection",
      )
    # A float32 BH4 projection runs with the LayerNorm and the look-up as
    # `bh4_lookup`, whose kernels never store the normalized input or the
    # projections outside a gradient computation. The LayerNorm and BH4
    # submodules are then not called, so `capture_intermediates` records
    # neither. implementation="reference" and a mesh that splits the look-up
    # (`sharded_lookup`) run the modules one after the other.
    fused = (
        self.projection == "bh4"
        and self.implementation != "reference"
        and x.dtype == jnp.float32
        and jnp.dtype(dtype) == jnp.float32
        and jnp.dtype(self.param_dtype) == jnp.float32
        and not sharding_lib.splits_lookup()
    )
    if fused:
      if self.is_initializing():
        norm(x)  # Creates the LayerNorm's parameters.
      hash_kernel, hash_bias = projection.kernel_and_bias(x.shape[-1])
    else:
      z = projection(norm(x))

    tables_TxSxD = self.param(
        "tables",
        self.tables_init,
        (self.num_tables, self.table_size, out_features),
        self.param_dtype,
    )
    bias = self.param("bias", self.bias_init, (out_features,), self.param_dtype)
    tables_TxSxD = tables_TxSxD.astype(self.table_dtype or jnp.float32)
    if fused:
      norm_params = self.variables["params"]["layer_norm"]
      y = bh4_lib.bh4_lookup(
          x,
          hash_kernel,
          hash_bias,
          tables_TxSxD,
          mix=projection.mix,
          norm=(norm_params["scale"], norm_params["bias"], self.layer_norm_epsilon),
          output_bias=bias,
          estimator=self.estimator,
          implementation=self.implementation,
      )
      return y

    z_TxK = z.reshape(z.shape[:-1] + (self.num_tables, self.code_length))
    y = sharding_lib.sharded_lookup(
        z_TxK.astype(jnp.float32),
        tables_TxSxD,
        estimator=self.estimator,
        implementation=self.implementation,
    )
    return y.astype(dtype) + bias.astype(dtype)


class DenseFFN(nn.Module):
  """Pre-norm Transformer MLP: LayerNorm -> Dense -> GELU -> Dense.

  GELU is the exact (erf) form, as in BERT and RoBERTa. A Transformer layer
  uses the block as `x + DenseFFN(...)(x)`.

  Attributes:
    hidden_features: width of the hidden layer (default: 4 times the input width).
    out_features: output width (default: the input width).
    dtype: the dtype of the computation (default: inferred from input and params).
    param_dtype: the dtype of the parameters.
    layer_norm_epsilon: epsilon of the input LayerNorm.
    kernel_init: initializer for both Dense kernels.
    bias_init: initializer for both Dense biases.

  Example usage::

    >>> import jax, jax.numpy as jnp
    >>> from lookupffn_jax import DenseFFN
    >>> layer = DenseFFN(hidden_features=64)
    >>> x = jnp.ones((2, 5, 16))
    >>> params = layer.init(jax.random.key(0), x)
    >>> params["params"]["hidden"]["kernel"].shape
    (16, 64)
    >>> layer.apply(params, x).shape
    (2, 5, 16)
  """

  hidden_features: int | None = None
  out_features: int | None = None
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  layer_norm_epsilon: float = 1e-5
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  def __post_init__(self):
    for name in ("hidden_features", "out_features"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1 or None, got {value}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps `x` of shape `[..., d]` to `[..., out_features]`."""
    hidden_features = self.hidden_features or 4 * x.shape[-1]
    out_features = self.out_features or x.shape[-1]
    dense_kwargs = dict(
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=self.kernel_init,
        bias_init=self.bias_init,
    )

    h = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, "layer_norm")(x)
    h = nn.Dense(hidden_features, name="hidden", **dense_kwargs)(h)
    h = nn.gelu(h, approximate=False)
    return nn.Dense(out_features, name="output", **dense_kwargs)(h)
