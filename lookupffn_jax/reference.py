# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Pure-`jnp` reference of the LookupFFN ops.

This is the implementation on every backend other than CPU and the oracle
that tests compare the XLA FFI kernels against, so it follows the math
directly. Shapes are in the names: N tokens, T tables, K code bits (tau in
Zeng et al., arXiv:2403.07221), S = 2**K rows per table, D row width.

For one token and one table with projection z in R^K:

  code  = sum_j [z_j > 0] * 2**(K - 1 - j)          (most significant bit first)
  score = (sum_j |z_j|) * prod_j sigmoid(2 |z_j|)
  y     = sum_t score_t * tables[t, code_t]

The score equals <z, s*> q(s*), where s* = sign(z) is the top code and
q(s) = exp(<z, s>) / sum_s' exp(<z, s'>) is the softmax over all 2**K codes.
"""

import jax
import jax.numpy as jnp


def code_bit_values(code_length: int) -> jax.Array:
  """Returns the integer value of each code bit, most significant first."""
  return 2 ** jnp.arange(code_length - 1, -1, -1, dtype=jnp.int32)


def hash_codes(z_NxTxK: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns the int32 codes and the scores of projections `z`."""
  bits = (z_NxTxK > 0).astype(jnp.int32)
  codes_NxT = jnp.sum(
      bits * code_bit_values(z_NxTxK.shape[-1]), axis=-1, dtype=jnp.int32
  )
  return codes_NxT, hash_scores(z_NxTxK)


def hash_scores(z_NxTxK: jax.Array) -> jax.Array:
  """Returns `(sum_j |z_j|) * prod_j sigmoid(2 |z_j|)` over the last axis."""
  # The product is taken in log space and in at least float32 so that neither it nor
  # its gradient underflows or overflows for |z| up to 1e4, even for bf16 z.
  compute_dtype = jnp.promote_types(z_NxTxK.dtype, jnp.float32)
  abs_z = jnp.abs(z_NxTxK.astype(compute_dtype))
  log_q_top = jnp.sum(jax.nn.log_sigmoid(2.0 * abs_z), axis=-1)
  scores = jnp.sum(abs_z, axis=-1) * jnp.exp(log_q_top)
  return scores.astype(z_NxTxK.dtype)


def gather_rows(codes_NxT: jax.Array, tables_TxSxD: jax.Array) -> jax.Array:
  """Returns `tables[t, codes[n, t]]` as an `[N, T, D]` array."""
  num_tables = tables_TxSxD.shape[0]
  return tables_TxSxD[jnp.arange(num_tables)[None, :], codes_NxT]


def weighted_gather(
    codes_NxT: jax.Array, weights_NxT: jax.Array, tables_TxSxD: jax.Array
) -> jax.Array:
  """Returns `y[n] = sum_t weights[n, t] * tables[t, codes[n, t]]`."""
  # The rows come from a float32 view of bfloat16 tables, which widens each
  # entry exactly. The table gradient, a scatter-add over the tokens, then
  # sums in float32 and is rounded to bfloat16 once, as in the FFI kernel.
  # Summed in bfloat16, 4096 look-ups of one row with weight 1 gave 256.
  compute_dtype = jnp.promote_types(tables_TxSxD.dtype, jnp.float32)
  rows_NxTxD = gather_rows(codes_NxT, tables_TxSxD.astype(compute_dtype))
  return jnp.einsum("nt,ntd->nd", weights_NxT, rows_NxTxD)


def score_surrogate(z_NxTxK: jax.Array, tables_TxSxD: jax.Array) -> jax.Array:
  """Returns the lookup output with gradients of the "score" estimator.

  The codes are integers, so autodiff keeps them fixed: z gets its gradient
  only through the score, and each table only at the selected rows.
  """
  codes_NxT, scores_NxT = hash_codes(z_NxTxK)
  return weighted_gather(codes_NxT, scores_NxT, tables_TxSxD)


def straight_through_surrogate(
    z_NxTxK: jax.Array, tables_TxSxD: jax.Array
) -> jax.Array:
  """Returns the relaxed output whose z-gradient the straight-through estimator uses.

  For each table it sums over the top code s* and its K one-bit neighbours:

    y~_t = sum_{s in {s*} + N1(s*)} <z, s> q(s) tables[t, code(s)]

  with q(s) = exp(<z, s> - log Z) and log Z = sum_j log(2 cosh z_j). For the
  neighbour that flips bit j, <z, s> = sum|z| - 2|z_j| and
  q(s) = q(s*) exp(-2|z_j|).
  """
  compute_dtype = jnp.promote_types(z_NxTxK.dtype, jnp.float32)
  z_NxTxK = z_NxTxK.astype(compute_dtype)
  code_length = z_NxTxK.shape[-1]

  # Candidate codes and sign vectors: index 0 is the top code, index 1 + j
  # flips bit j. The codes and signs are constants for autodiff.
  codes_NxT, _ = hash_codes(jax.lax.stop_gradient(z_NxTxK))
  bit_values_K = code_bit_values(code_length)
  candidate_codes_NxTxC = jnp.concatenate(
      [codes_NxT[..., None], codes_NxT[..., None] ^ bit_values_K], axis=-1
  )
  top_signs_NxTxK = jnp.where(jax.lax.stop_gradient(z_NxTxK) > 0, 1.0, -1.0)
  flips_CxK = jnp.concatenate(
      [jnp.ones((1, code_length)), 1.0 - 2.0 * jnp.eye(code_length)], axis=0
  )
  signs_NxTxCxK = top_signs_NxTxK[..., None, :] * flips_CxK

  # Weights <z, s> q(s) of every candidate. Each term of
  # log q(s) = sum_j (z_j s_j - |z_j| - log(1 + exp(-2|z_j|))) is formed
  # before the sum, so large |z| cancels exactly instead of in the total.
  z_NxTx1xK = z_NxTxK[..., None, :]
  abs_z_NxTx1xK = jnp.abs(z_NxTx1xK)
  inner_NxTxC = jnp.sum(z_NxTx1xK * signs_NxTxCxK, axis=-1)
  log_q_NxTxC = jnp.sum(
      z_NxTx1xK * signs_NxTxCxK
      - abs_z_NxTx1xK
      - jax.nn.softplus(-2.0 * abs_z_NxTx1xK),
      axis=-1,
  )
  weights_NxTxC = inner_NxTxC * jnp.exp(log_q_NxTxC)

  num_tables = tables_TxSxD.shape[0]
  rows_NxTxCxD = tables_TxSxD[
      jnp.arange(num_tables)[None, :, None], candidate_codes_NxTxC
  ]
  return jnp.einsum(
      "ntc,ntcd->nd", weights_NxTxC, rows_NxTxCxD.astype(compute_dtype)
  )


def lookup(
    z_NxTxK: jax.Array, tables_TxSxD: jax.Array, estimator: str = "score"
) -> jax.Array:
  """Returns `sum_t score_t * tables[t, code_t]` with the chosen gradient estimator."""
  if estimator == "score":
    return score_surrogate(z_NxTxK, tables_TxSxD)
  if estimator != "straight_through":
    raise ValueError(
        f"estimator must be 'score' or 'straight_through', got {estimator!r}"
    )

  # Hard forward value and table gradient from the score path; z gradient
  # from the relaxed surrogate, whose value cancels exactly.
  stop = jax.lax.stop_gradient
  hard = score_surrogate(stop(z_NxTxK), tables_TxSxD)
  relaxed = straight_through_surrogate(z_NxTxK, stop(tables_TxSxD))
  return hard + (relaxed - stop(relaxed)).astype(hard.dtype)
