# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""CPU benchmarks of the LookupFFN ops, layers and models.

Run them with `python -m benchmarks.run` (add `--help` for the options); the
results and how they were produced are in docs/benchmarks.md.
"""
