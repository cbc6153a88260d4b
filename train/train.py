# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Masked-LM pretraining of `RobertaForMaskedLM`: optimizer, steps and the loop.

`train_step` and `eval_step` are pure functions of the state and a batch.
`train_and_evaluate(config, workdir)` runs the whole job: data, training,
periodic evaluation and checkpoints, then the final summary and plot.
"""

import dataclasses
import functools
import itertools
import json
import os
import pathlib
import time
from typing import Any, Iterable, Mapping

from absl import logging
import flax
from flax.training import train_state as train_state_lib
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from lookupffn_jax import models
from lookupffn_jax import sharding
from train import input_pipeline
from train import metrics as metrics_lib
from train import partitioning

# Parameter names that get weight decay: Dense and BH4 kernels and the
# LookupFFN tables. Biases, LayerNorm and embeddings get none.
DECAYED_PARAM_NAMES = frozenset({"kernel", "tables"})


class TrainState(train_state_lib.TrainState):
  """Parameters and optimizer state; `step` counts the updates applied."""


def roberta_config(model_config: ml_collections.ConfigDict | Mapping[str, Any]):
  """Builds a `RobertaConfig` from the `model` field of a training config."""
  fields = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
  known = {field.name for field in dataclasses.fields(models.RobertaConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(
        f"unknown model config fields {unknown}; the fields of RobertaConfig"
        f" are {sorted(known)}"
    )
  for name in ("dtype", "param_dtype", "table_dtype"):
    if name in fields:
      fields[name] = jnp.dtype(fields[name])
  return models.RobertaConfig(**fields)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Returns the linear-warmup, linear-decay schedule.

  With peak rate `lr`, W = `warmup_steps` and S = `num_train_steps`, the rate
  applied by update number s (0-based) is `lr * s / W` for s <= W and
  `lr * (S - s) / (S - W)` after it: 0 at s = 0, `lr / W` at s = 1, `lr` at
  s = W, `lr * (S - W - 1) / (S - W)` at s = W + 1, and `lr / (S - W)` at the
  last update s = S - 1.
  """
  if not 0 <= config.warmup_steps < config.num_train_steps:
    raise ValueError(
        f"warmup_steps must be in [0, num_train_steps = {config.num_train_steps}),"
        f" got {config.warmup_steps}"
    )
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  decay = optax.linear_schedule(
      config.learning_rate, 0.0, config.num_train_steps - config.warmup_steps
  )
  return optax.join_schedules([warmup, decay], [config.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
  """Returns a tree of bools over `params`: True where weight decay applies."""

  def decays(path, _):
    return getattr(path[-1], "key", None) in DECAYED_PARAM_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns AdamW with the schedule, the decay mask and optional clipping."""
  adamw = optax.adamw(
      learning_rate_schedule(config),
      b1=config.adam_b1,
      b2=config.adam_b2,
      eps=config.adam_eps,
      weight_decay=config.weight_decay,
      mask=weight_decay_mask,
  )
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
  return adamw


def create_train_state(
    config: ml_collections.ConfigDict, model: models.RobertaForMaskedLM, init_key: jax.Array
) -> TrainState:
  """Initialises the parameters and the optimizer."""
  max_seq_len = model.config.max_seq_len
  input_ids = jnp.ones((1, max_seq_len), jnp.int32)
  params = model.init(init_key, input_ids, jnp.ones_like(input_ids), deterministic=True)["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=create_optimizer(config))


def mlm_sums(logits_BxLxV, targets_BxL, weights_BxL) -> dict[str, jax.Array]:
  """Returns the summed cross-entropy, correct predictions and target count."""
  # The softmax runs in float32 whatever the compute dtype.
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxLxV.astype(jnp.float32), targets_BxL
  )
  correct = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
  return {
      "loss_sum": jnp.sum(cross_entropy * weights_BxL),
      "correct_sum": jnp.sum(correct * weights_BxL),
      "num_targets": jnp.sum(weights_BxL),
  }


def max_targets_per_row(max_seq_len: int, mask_rate: float) -> int:
  """Returns the most targets `TokenMasker` can pick in one row.

  The masker picks floor(mask_rate * n + u) of a row's n <= max_seq_len
  maskable tokens, with u in [0, 1), so never more than this.
  """
  return min(max_seq_len, int(mask_rate * max_seq_len) + 1)


def _logits_and_targets(state, params, batch, num_predictions, deterministic, rngs=None):
  """Runs the model and returns (logits, targets, weights) at the prediction positions.

  With `num_predictions` = P, the logits are computed only at the P
  highest-weight positions of each row, which hold all its targets when P is
  at least the row's target count; otherwise at every position.
  """
  positions_BxP = None
  targets, weights = batch["targets"], batch["weights"]
  if num_predictions is not None:
    _, positions_BxP = jax.lax.top_k(weights, num_predictions)
    targets = jnp.take_along_axis(targets, positions_BxP, axis=1)
    weights = jnp.take_along_axis(weights, positions_BxP, axis=1)
  logits = state.apply_fn(
      {"params": params},
      batch["input_ids"],
      batch["attention_mask"],
      deterministic=deterministic,
      prediction_positions_BxP=positions_BxP,
      rngs=rngs,
  )
  return logits, targets, weights


def _split_micro_batches(batch: Mapping[str, jax.Array], num_micro_batches: int):
  """Splits each `[B, ...]` array into `[num_micro_batches, B / num_micro_batches, ...]`.

  Micro-batch i takes rows i, i + k, i + 2k, ... for k micro-batches, so on a
  batch split over "data" in contiguous blocks each device keeps its own rows
  of every micro-batch and the split moves no data between devices.
  """

  def split(x):
    rows_per_micro_batch = x.shape[0] // num_micro_batches
    x = x.reshape((rows_per_micro_batch, num_micro_batches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return {name: split(value) for name, value in batch.items()}


def _accumulate_gradients(grad_fn, params, batch, step_key, grad_accum_steps: int):
  """Returns `grad_fn`'s MLM sums and gradients added up over the micro-batches of `batch`.

  `grad_fn(params, micro_batch, key)` returns `((loss_sum, sums), grads)`.
  Micro-batch i gets the dropout key `fold_in(step_key, i)`.

  NOTE: on a mesh with a "data" axis, XLA all-reduces the gradients inside
  the loop, once per micro-batch (seen in the compiled HLO, jax 0.10.2 on
  CPU). Adding per-device sums under `shard_map` and reducing once would cut
  this k-fold, but each device would then draw dropout masks for its own rows,
  so the masks would depend on the device count.
  """
  micro_batches = _split_micro_batches(batch, grad_accum_steps)

  def accumulate(totals, micro_batch_and_index):
    micro_batch, index = micro_batch_and_index
    (_, sums), grads = grad_fn(params, micro_batch, jax.random.fold_in(step_key, index))
    return jax.tree_util.tree_map(lambda total, x: total + x, totals, (sums, grads)), None

  # Gradients add up in at least float32, whatever the parameter dtype.
  first_micro_batch = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
  (_, sums_shapes), _ = jax.eval_shape(grad_fn, params, first_micro_batch, step_key)
  zeros = (
      jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), sums_shapes),
      jax.tree_util.tree_map(
          lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params
      ),
  )
  (sums, grad_sums), _ = jax.lax.scan(
      accumulate, zeros, (micro_batches, jnp.arange(grad_accum_steps))
  )
  return sums, grad_sums


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    dropout_key: jax.Array,
    num_predictions: int | None = None,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """Applies one AdamW update on `batch` and returns the new state and metrics.

  `num_predictions` (static) limits the MLM head to that many positions per
  row, see `max_targets_per_row`; None computes it everywhere.

  `grad_accum_steps` (static) = k runs the batch as k micro-batches of B / k
  rows, one after another, and adds up their summed losses, target counts and
  gradients before the one update. The update is that of the mean loss over
  all targets of the batch, so k trades time for memory and changes nothing
  else except the dropout masks: micro-batch i draws them from its own key.
  """
  batch_size = batch["input_ids"].shape[0]
  if grad_accum_steps < 1 or batch_size % grad_accum_steps:
    raise ValueError(
        f"grad_accum_steps must be a positive divisor of the batch size"
        f" {batch_size}, got {grad_accum_steps}"
    )
  # One dropout key per step, so a resumed run draws the same masks.
  step_key = jax.random.fold_in(dropout_key, state.step)

  def loss_sum_fn(params, micro_batch, key):
    logits, targets, weights = _logits_and_targets(
        state, params, micro_batch, num_predictions, False, {"dropout": key}
    )
    sums = mlm_sums(logits, targets, weights)
    return sums["loss_sum"], sums

  grad_fn = jax.value_and_grad(loss_sum_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, sums), grad_sums = grad_fn(state.params, batch, step_key)
  else:
    sums, grad_sums = _accumulate_gradients(
        grad_fn, state.params, batch, step_key, grad_accum_steps
    )

  # The loss is the mean over all targets of the batch. A batch without
  # targets gives loss 0 rather than 0 / 0.
  num_targets = jnp.maximum(sums["num_targets"], 1.0)
  grads = jax.tree_util.tree_map(
      lambda g, p: (g / num_targets).astype(p.dtype), grad_sums, state.params
  )
  new_state = state.apply_gradients(grads=grads)
  metrics = {
      "loss": sums["loss_sum"] / num_targets,
      "accuracy": sums["correct_sum"] / num_targets,
      "grad_norm": optax.tree.norm(grads),
      "num_tokens": jnp.sum(batch["attention_mask"]),
      "num_targets_skipped": jnp.sum(batch["weights"]) - sums["num_targets"],
  }
  return new_state, metrics


def eval_step(
    state: TrainState, batch: Mapping[str, jax.Array], num_predictions: int | None = None
) -> dict[str, jax.Array]:
  """Returns the summed MLM loss, correct predictions and targets of `batch`."""
  logits, targets, weights = _logits_and_targets(
      state, state.params, batch, num_predictions, True
  )
  return mlm_sums(logits, targets, weights)


def evaluate(eval_step_fn, state: TrainState, batches: Iterable[Mapping[str, np.ndarray]]):
  """Returns the MLM loss and accuracy over all targets of `batches`."""
  totals = {"loss_sum": 0.0, "correct_sum": 0.0, "num_targets": 0.0}
  for batch in batches:
    sums = jax.device_get(eval_step_fn(state, batch))
    for name in totals:
      totals[name] += float(sums[name])
  num_targets = max(totals["num_targets"], 1.0)
  return {
      "mlm_loss": totals["loss_sum"] / num_targets,
      "mlm_accuracy": totals["correct_sum"] / num_targets,
      "num_targets": totals["num_targets"],
  }


# ---------------------------------------------------------------------------
# Checkpoints


def _shape_mismatches(saved_tree: Any, target_tree: Any) -> list[str]:
  """Lists the parameters whose saved shape differs from the target's."""
  saved = {
      jax.tree_util.keystr(path): tuple(leaf.shape)
      for path, leaf in jax.tree_util.tree_flatten_with_path(saved_tree)[0]
      if hasattr(leaf, "shape")
  }
  mismatches = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(target_tree)[0]:
    name = jax.tree_util.keystr(path)
    if name not in saved:
      mismatches.append(f"{name}: missing from the checkpoint, model expects {tuple(leaf.shape)}")
    elif saved[name] != tuple(leaf.shape):
      mismatches.append(f"{name}: checkpoint has {saved[name]}, model expects {tuple(leaf.shape)}")
  return mismatches


class Checkpointer:
  """Saves and restores the train state and the input position with orbax.

  Orbax writes each step into a temporary directory and renames it when the
  write is complete, so a killed run leaves no partial checkpoint visible.
  """

  def __init__(self, directory: str | os.PathLike[str], keep: int):
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
        },
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
            # Saving synchronously keeps the write from racing with the next
            # step, which donates and overwrites the state buffers.
            enable_async_checkpointing=False,
        ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, data_state: Mapping[str, Any]) -> None:
    """Saves `state` and the input position `data_state` as checkpoint `step`."""
    data_json = {name: int(value) for name, value in data_state.items()}
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_json)
        ),
        force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores `step` into the structure of `target`.

    Raises:
      ValueError: naming every parameter whose saved shape differs from the
        target's.
    """
    saved_state = self._manager.item_metadata(step)["state"]
    mismatches = _shape_mismatches(
        {"params": saved_state["params"]}, {"params": target.params}
    )
    if mismatches:
      raise ValueError(
          f"checkpoint step {step} in {self._manager.directory} does not fit"
          " the model: " + "; ".join(mismatches) + ". Use the config the"
          " checkpoint was written with, or a new workdir."
      )
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["data"])

  def close(self):
    self._manager.close()


# ---------------------------------------------------------------------------
# The loop


class _DiscardingWriter:
  """Takes the place of `MetricWriter` in processes other than 0, which write no metrics."""

  def __init__(self):
    self.history: dict[str, list[tuple[int, float]]] = {}

  def write(self, step: int, values: Mapping[str, float]) -> None:
    del step, values

  def close(self) -> None:
    pass


def _write_json_atomically(path: pathlib.Path, content: Mapping[str, Any]) -> None:
  temporary = path.with_suffix(path.suffix + ".tmp")
  temporary.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
  os.replace(temporary, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains the configured model, resuming from the latest checkpoint in `workdir`.

  Returns the summary that is also written to `workdir/summary.json`.

  With several processes (see `partitioning.initialize_distributed`) every
  process runs this with the same config and workdir. All of them build the
  same global batches and save checkpoints together, and only process 0
  writes the metrics, the summary and the plot.
  """
  # Before any other JAX call, which would start a single-process backend.
  partitioning.initialize_distributed(config.initialize_distributed)
  is_primary = jax.process_index() == 0
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  model_config = roberta_config(config.model)
  model = models.RobertaForMaskedLM(model_config)
  logging.info("Model config: %s", model_config)
  mesh = partitioning.create_mesh(config.mesh)
  partitioning.check_batch_sizes(
      mesh, config.batch_size, config.eval_batch_size, config.grad_accum_steps
  )
  # Checks the schedule fields before the corpus and tokenizer take time.
  schedule = learning_rate_schedule(config)
  if config.checkpoint_every_steps < 1:
    raise ValueError(
        f"checkpoint_every_steps must be at least 1, got {config.checkpoint_every_steps}"
    )

  # Data.
  datasets = partitioning.primary_process_first(
      lambda: input_pipeline.create_datasets(
          config.corpus,
          workdir_path,
          vocab_size=model_config.vocab_size,
          max_seq_len=model_config.max_seq_len,
          batch_size=config.batch_size,
          eval_batch_size=config.eval_batch_size,
          seed=config.seed,
          tokenizer_path=config.tokenizer_path or None,
          tokenizer_min_frequency=config.tokenizer_min_frequency,
      ),
      name="create_datasets",
  )
  num_eval_batches = config.num_eval_batches or len(datasets.eval_batches)
  eval_batches = lambda: itertools.islice(datasets.eval_batches, num_eval_batches)
  baseline_accuracy = input_pipeline.most_frequent_token_accuracy(
      datasets.train_input_ids, eval_batches()
  )
  sharded_eval_batches = lambda: (partitioning.put_batch(b, mesh) for b in eval_batches())

  # State, created in its shardings and restored from the latest checkpoint
  # if there is one.
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  state, state_shardings = partitioning.create_train_state(
      lambda: create_train_state(config, model, init_key), mesh
  )
  logging.info(
      "Parameters: %d; FLOPs per token: %s",
      models.param_count(model_config),
      models.flops_per_token(model_config),
  )
  checkpointer = Checkpointer(workdir_path / "checkpoints", config.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(latest, state)
    datasets.train_iter.set_state(data_state)
    logging.info("Resumed from the checkpoint of step %d.", latest)

  num_predictions = max_targets_per_row(
      model_config.max_seq_len, datasets.train_iter.masker.mask_rate
  )
  replicated = partitioning.replicated(mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  train_step_fn = partitioning.jit_on_mesh(
      functools.partial(
          train_step,
          num_predictions=num_predictions,
          grad_accum_steps=config.grad_accum_steps,
      ),
      mesh,
      in_shardings=(state_shardings, batch_sharding, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0,
  )
  eval_step_fn = partitioning.jit_on_mesh(
      functools.partial(eval_step, num_predictions=num_predictions),
      mesh,
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=replicated,
  )
  writer = metrics_lib.MetricWriter(workdir_path) if is_primary else _DiscardingWriter()
  progress = metrics_lib.Progress(config.num_train_steps, int(state.step))

  step = int(state.step)
  eval_metrics = None
  while step < config.num_train_steps:
    batch = partitioning.put_batch(next(datasets.train_iter), mesh)
    learning_rate = float(schedule(step))
    state, metrics = train_step_fn(state, batch, dropout_key)
    step += 1

    loss = float(metrics["loss"])
    if not np.isfinite(loss):
      raise FloatingPointError(
          f"the training loss is {loss} at step {step}; lower learning_rate"
          f" (now {config.learning_rate}) or set grad_clip_norm, then resume"
          f" from the last checkpoint in {workdir_path / 'checkpoints'}"
      )
    progress.update(step, int(metrics["num_tokens"]))

    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      values = {
          "train/mlm_loss": loss,
          "train/mlm_accuracy": float(metrics["accuracy"]),
          "train/grad_norm": float(metrics["grad_norm"]),
          "train/learning_rate": learning_rate,
          "train/tokens_per_second": progress.tokens_per_second(),
      }
      writer.write(step, values)
      logging.info("%s %s", progress.line(step), metrics_lib.format_values(values))

    if step % config.eval_every_steps == 0 or step == config.num_train_steps:
      eval_metrics = evaluate(eval_step_fn, state, sharded_eval_batches())
      writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items() if k != "num_targets"})
      logging.info("step %d eval %s", step, metrics_lib.format_values(eval_metrics))

    if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
      checkpointer.save(step, state, datasets.train_iter.get_state())

  # Final evaluation (already done at the last step unless a resumed run
  # had no step left), summary and plot.
  final = eval_metrics
  if final is None:
    final = evaluate(eval_step_fn, state, sharded_eval_batches())
  summary = {
      "step": step,
      "eval_mlm_loss": final["mlm_loss"],
      "eval_mlm_accuracy": final["mlm_accuracy"],
      "eval_num_targets": final["num_targets"],
      "most_frequent_token_accuracy": baseline_accuracy,
      "ffn": model_config.ffn,
      "mesh": dict(mesh.shape),
      "param_count": models.param_count(model_config),
      "train_tokens_per_second": progress.tokens_per_second(),
  }
  writer.close()
  if is_primary:
    _write_json_atomically(workdir_path / "summary.json", summary)
    metrics_lib.plot_history(writer.history, workdir_path / "metrics.png")
  checkpointer.close()
  logging.info(
      "Done: step %d, eval MLM loss %.4f, eval MLM accuracy %.4f (most frequent"
      " token: %.4f); summary in %s",
      step,
      final["mlm_loss"],
      final["mlm_accuracy"],
      baseline_accuracy,
      workdir_path / "summary.json",
  )
  return summary
