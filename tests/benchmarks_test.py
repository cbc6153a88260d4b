# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Smoke test of the benchmark suite: every fast section runs and reports."""

import json

from benchmarks import run


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
