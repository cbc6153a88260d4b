# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Every config file loads, builds its model and documents its command."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from lookupffn_jax import models
from train import train

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAMES = sorted(
    path.stem for path in CONFIG_DIR.glob("*.py") if path.stem != "__init__"
)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds_model(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  model_config = train.roberta_config(config.model)
  model = models.RobertaForMaskedLM(model_config)
  ids = jnp.ones((1, 8), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids))
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert num_params == models.param_count(model_config)
  assert "python -m train.main" in module.__doc__ or "make pretrain" in module.__doc__
  assert 0 <= config.warmup_steps < config.num_train_steps


def test_small_512_configs_match_paper_setup():
  for name in CONFIG_NAMES:
    if not name.startswith("small_512"):
      continue
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model.max_seq_len == 512, name
    assert config.batch_size == 256, name
    assert config.num_train_steps == 250_000, name
    assert config.warmup_steps == 10_000, name
    assert config.learning_rate == 1e-4, name
    assert (config.adam_b1, config.adam_b2, config.adam_eps) == (0.9, 0.98, 1e-6), name
    assert config.weight_decay == 0.01, name
