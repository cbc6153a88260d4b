# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""LookupFFN for JAX: hash-table feed-forward layers with XLA FFI CPU kernels."""

from lookupffn_jax import _extension
from lookupffn_jax import models
from lookupffn_jax.bh4 import BH4
from lookupffn_jax.bh4 import hadamard_transform
from lookupffn_jax.layers import DenseFFN
from lookupffn_jax.layers import LookupFFN
from lookupffn_jax.lookup import hash_codes
from lookupffn_jax.lookup import lookup
from lookupffn_jax.lookup import weighted_gather

# Registers the CPU custom-call targets now. A failure is only recorded here;
# implementation="auto" warns about it on first use and "ffi" raises.
_extension.load()

__all__ = [
    "hash_codes",
    "lookup",
    "weighted_gather",
    "BH4",
    "DenseFFN",
    "LookupFFN",
    "hadamard_transform",
    "models",
]
