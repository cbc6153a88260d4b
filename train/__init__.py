# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Masked-LM pretraining of RoBERTa models with LookupFFN layers.

The modules are imported by name (`from train import corpus`) so that
importing the package does not pull in `datasets` or `tokenizers`.
"""
