# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the pretraining loop: schedule, weight decay, steps, checkpoints, resume."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pydoc_data.topics
import pytest

from configs import default
from lookupffn_jax import models
from train import input_pipeline
from train import train

VOCAB_SIZE = 320


def tiny_config(corpus_dir: pathlib.Path, **overrides):
  """Returns a config small enough to train a few dozen steps in seconds."""
  config = default.get_config()
  config.model = default.model_config(
      "tiny",
      "lookup_bh4",
      vocab_size=VOCAB_SIZE,
      hidden_size=32,
      num_heads=2,
      num_layers=2,
      num_tables=8,
      table_size=16,
      block_size=8,
      max_seq_len=32,
  )
  config.corpus.kind = "text"
  config.corpus.paths = (str(corpus_dir / "*.txt"),)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 12
  config.warmup_steps = 2
  config.learning_rate = 3e-3
  config.log_every_steps = 4
  config.eval_every_steps = 6
  config.num_eval_batches = 2
  config.checkpoint_every_steps = 6
  for name, value in overrides.items():
    config[name] = value
  return config


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """Writes 40 real English documents: help topics that ship with Python."""
  directory = tmp_path_factory.mktemp("corpus")
  topics = sorted(pydoc_data.topics.topics.items())[:40]
  for index, (_, text) in enumerate(topics):
    (directory / f"{index:03d}.txt").write_text(text[:3000])
  return directory


def params_of(workdir: pathlib.Path, config, step: int):
  """Restores the parameters saved at `step` in `workdir`."""
  model = models.RobertaForMaskedLM(train.roberta_config(config.model))
  target = train.create_train_state(config, model, jax.random.key(0))
  checkpointer = train.Checkpointer(workdir / "checkpoints", 5)
  state, _ = checkpointer.restore(step, target)
  checkpointer.close()
  return state.params


# ---------------------------------------------------------------------------
# Schedule and optimizer


def test_schedule_at_boundary_steps():
  config = default.get_config()
  config.learning_rate, config.warmup_steps, config.num_train_steps = 1e-3, 10, 110
  schedule = train.learning_rate_schedule(config)
  expected = {0: 0.0, 1: 1e-4, 10: 1e-3, 11: 1e-3 * 99 / 100, 109: 1e-3 / 100, 110: 0.0}
  for step, rate in expected.items():
    np.testing.assert_allclose(float(schedule(step)), rate, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")


def test_schedule_rejects_long_warmup():
  config = default.get_config()
  config.warmup_steps, config.num_train_steps = 10, 10
  with pytest.raises(ValueError, match="warmup_steps must be in"):
    train.learning_rate_schedule(config)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_weight_decay_mask_on_model_params(scan_layers):
  model_config = models.RobertaConfig.tiny(
      ffn="lookup_bh4", vocab_size=300, hidden_size=32, num_heads=2, num_tables=4,
      table_size=16, block_size=8, max_seq_len=16, scan_layers=scan_layers,
  )
  model = models.RobertaForMaskedLM(model_config)
  ids = jnp.ones((1, 16), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids)["params"])
  mask = train.weight_decay_mask(params)
  flat = {
      jax.tree_util.keystr(path): value
      for path, value in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  decayed = sorted(name for name, value in flat.items() if value)
  not_decayed = sorted(name for name, value in flat.items() if not value)

  assert any("tables" in name for name in decayed)
  assert any("['hash_projection']['kernel']" in name for name in decayed)
  assert any("kernel" in name for name in decayed if "tables" not in name)
  assert all(name.endswith("['kernel']") or name.endswith("['tables']") for name in decayed)
  assert not any("bias" in name for name in decayed)
  assert not any("scale" in name for name in decayed)
  assert any("embedding" in name for name in not_decayed)


# ---------------------------------------------------------------------------
# Training


def test_one_step_smoke(corpus_dir, tmp_path):
  config = tiny_config(corpus_dir, num_train_steps=1, warmup_steps=0, eval_every_steps=1)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 1
  assert np.isfinite(summary["eval_mlm_loss"])
  for name in ("summary.json", "metrics.png", "tokenizer.json"):
    assert (tmp_path / name).exists(), name
  written = json.loads((tmp_path / "summary.json").read_text())
  for key in ("step", "eval_mlm_loss", "eval_mlm_accuracy", "most_frequent_token_accuracy"):
    assert key in written, key
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_prediction_positions_keep_every_target(corpus_dir, tmp_path):
  config = tiny_config(corpus_dir)
  model_config = train.roberta_config(config.model)
  datasets = input_pipeline.create_datasets(
      config.corpus, tmp_path, vocab_size=VOCAB_SIZE, max_seq_len=model_config.max_seq_len,
      batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=0,
  )
  num_predictions = train.max_targets_per_row(
      model_config.max_seq_len, datasets.train_iter.masker.mask_rate
  )
  model = models.RobertaForMaskedLM(model_config)
  state = train.create_train_state(config, model, jax.random.key(0))
  key = jax.random.key(1)
  for _ in range(20):
    batch = next(datasets.train_iter)
    assert int(np.max(np.sum(batch["weights"], axis=1))) <= num_predictions
  _, everywhere = train.train_step(state, batch, key)
  _, selected = train.train_step(state, batch, key, num_predictions)
  assert float(selected["num_targets_skipped"]) == 0.0
  np.testing.assert_allclose(selected["loss"], everywhere["loss"], rtol=1e-5)
  np.testing.assert_allclose(selected["grad_norm"], everywhere["grad_norm"], rtol=1e-4)


def test_loss_decreases(corpus_dir, tmp_path):
  config = tiny_config(corpus_dir, num_train_steps=40, eval_every_steps=40, log_every_steps=1)
  train.train_and_evaluate(config, str(tmp_path))
  losses = _scalars(tmp_path, "train/mlm_loss")
  assert len(losses) == 40
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def _scalars(workdir: pathlib.Path, name: str) -> list[float]:
  """Returns the values of metric `name` from `workdir/metrics.jsonl`, in step order."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [record[name] for record in records if name in record]


def test_resume_matches_uninterrupted_run(corpus_dir, tmp_path, monkeypatch):
  straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
  config = tiny_config(corpus_dir)
  train.train_and_evaluate(config, str(straight_dir))
  saved_steps = sorted(int(path.name) for path in (straight_dir / "checkpoints").iterdir())
  assert saved_steps == [6, 12]

  # Interrupt a second run right after its checkpoint at step 6, as a kill
  # would, then start it again: it resumes from step 6 and runs to step 12.
  original_save = train.Checkpointer.save

  def save_then_stop(self, step, *args, **kwargs):
    saved = original_save(self, step, *args, **kwargs)
    if step == 6:
      raise _Interrupted()
    return saved

  monkeypatch.setattr(train.Checkpointer, "save", save_then_stop)
  with pytest.raises(_Interrupted):
    train.train_and_evaluate(config, str(resumed_dir))
  monkeypatch.setattr(train.Checkpointer, "save", original_save)
  assert (resumed_dir / "checkpoints" / "6").exists()
  assert not (resumed_dir / "checkpoints" / "12").exists()
  train.train_and_evaluate(config, str(resumed_dir))

  straight = params_of(straight_dir, config, 12)
  resumed = params_of(resumed_dir, config, 12)
  for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(straight)[0], jax.tree_util.tree_leaves(resumed)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))


class _Interrupted(Exception):
  pass


def test_restore_into_other_shapes_names_parameter(corpus_dir, tmp_path):
  config = tiny_config(corpus_dir, num_train_steps=2, warmup_steps=0, checkpoint_every_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  wider = tiny_config(corpus_dir, num_train_steps=4, warmup_steps=0)
  wider.model.num_tables = 4
  with pytest.raises(ValueError, match=r"tables.*checkpoint has \(8, 16, 32\), model expects \(4, 16, 32\)"):
    train.train_and_evaluate(wider, str(tmp_path))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(batch_size=0), "batch_size must be at least 1, got 0"),
        (dict(warmup_steps=12), "warmup_steps must be in"),
        (dict(checkpoint_every_steps=0), "checkpoint_every_steps must be at least 1"),
    ],
)
def test_bad_config_fails_before_data(corpus_dir, tmp_path, overrides, message):
  config = tiny_config(corpus_dir, **overrides)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "tokenizer.json").exists()


def test_non_finite_loss_names_step(corpus_dir, tmp_path):
  config = tiny_config(corpus_dir, num_train_steps=3, warmup_steps=0, learning_rate=1e30)
  config.grad_clip_norm = 0.0
  with pytest.raises(FloatingPointError, match=r"at step [23]"):
    train.train_and_evaluate(config, str(tmp_path))
