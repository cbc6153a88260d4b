# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""LookupFFN for JAX: hash-table feed-forward layers with XLA FFI CPU kernels."""

from lookupffn_jax.lookup import hash_codes
from lookupffn_jax.lookup import lookup
from lookupffn_jax.lookup import weighted_gather

__all__ = [
    "hash_codes",
    "lookup",
    "weighted_gather",
]
