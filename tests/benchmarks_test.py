# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Smoke test of the benchmark suite: every fast section runs and reports."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import end_to_end
from benchmarks import run
from lookupffn_jax import models


def test_benchmark_sections_run(tmp_path):
  output = tmp_path / "results.json"
  run.main([
      "--tokens", "8",
      "--repeats", "1",
      "--min-repeat-ms", "1",
      "--sections", "lookup_fwd,lookup_bwd,layers,roofline",
      "--json", str(output),
  ])
  results = json.loads(output.read_text())
  assert results["machine"]["cores"] >= 1
  assert len(results["tables"]) >= 4


def test_model_repeats_default():
  assert run.settings_from_args(run.parse_args([])).model_repeats == 9
  assert run.settings_from_args(run.parse_args(["--repeats", "3"])).model_repeats == 3
  assert run.settings_from_args(run.parse_args(["--quick"])).model_repeats == 3


def test_without_ffn_model_drops_ffn_blocks():
  model = models.RobertaForMaskedLM(models.RobertaConfig.tiny())
  ids = jnp.arange(4, 20, dtype=jnp.int32).reshape(2, 8)
  mask = jnp.ones_like(ids)
  params = model.init(jax.random.key(0), ids, mask)
  # With zero output weights and bias every DenseFFN block adds exactly 0.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.zeros_like(leaf)
      if "'ffn'" in jax.tree_util.keystr(path) and "'output'" in jax.tree_util.keystr(path)
      else leaf,
      params,
  )
  dense = end_to_end._apply_fn(model, "dense")
  without_ffn = end_to_end._apply_fn(model, "without_ffn")
  got = without_ffn(params, ids, mask, None)
  np.testing.assert_allclose(got, dense(zeroed, ids, mask, None), rtol=1e-6, atol=1e-6)
  assert not np.allclose(got, dense(params, ids, mask, None), atol=1e-3)
