# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of data- and table-parallel training, sharded checkpoints and gradient accumulation.

JAX fixes the number of CPU devices when it starts, so every multi-device
test runs one scenario of this file in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=N. A scenario checks its
results with asserts, and the test shows its output when it fails.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pydoc_data.topics
import pytest

from configs import default
import lookupffn_jax
from lookupffn_jax import layers
from lookupffn_jax import models
from lookupffn_jax import sharding
from train import input_pipeline
from train import partitioning
from train import train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB_SIZE = 320
NUM_TABLES = 8
TABLE_SIZE = 16
HIDDEN_SIZE = 32
SUBPROCESS_TIMEOUT_S = 300
# Tolerances of the parameters after one step. A step moves a parameter by
# up to about the learning rate, 3e-3, and Adam's g / (|g| + 1e-6) magnifies
# rounding differences in gradients near 1e-6 up to a few 1e-6.
PARAMS_RTOL, PARAMS_ATOL = 1e-5, 5e-6
# Tolerances of Adam's moments, 0.1 g and 0.02 g^2, which show gradient
# errors without that magnification.
MOMENTS_RTOL, MOMENTS_ATOL = 1e-4, 1e-9


def tiny_config(**overrides):
  """Returns a training config of a 1-layer LookupFFN model with 8 tables."""
  config = default.get_config()
  config.model = default.model_config(
      "tiny",
      "lookup_bh4",
      vocab_size=VOCAB_SIZE,
      hidden_size=HIDDEN_SIZE,
      num_heads=2,
      num_layers=1,
      num_tables=NUM_TABLES,
      table_size=TABLE_SIZE,
      block_size=8,
      max_seq_len=16,
  )
  config.batch_size = 8
  config.eval_batch_size = 8
  # No warmup, so the first update already moves the parameters.
  config.warmup_steps = 0
  config.learning_rate = 3e-3
  for name, value in overrides.items():
    config[name] = value
  return config


def direct_batch(batch_size: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
  """Returns a masked batch of random tokens, in which row i ends in i % 4 padding tokens."""
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(5, VOCAB_SIZE, size=(batch_size, seq_len), dtype=np.int32)
  for row in range(batch_size):
    num_padding = row % 4
    if num_padding:
      input_ids[row, -num_padding:] = 1
  return input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE)(input_ids, rng)


def create_state(config):
  model = models.RobertaForMaskedLM(train.roberta_config(config.model))
  return train.create_train_state(config, model, jax.random.key(0))


def assert_trees_close(actual, expected, rtol, atol, context=""):
  """Compares two pytrees leaf by leaf, naming the leaf on a mismatch."""
  expected_leaves = jax.tree_util.tree_flatten_with_path(expected)[0]
  actual_leaves = jax.tree_util.tree_leaves(actual)
  assert len(actual_leaves) == len(expected_leaves), context
  for (path, want), got in zip(expected_leaves, actual_leaves):
    np.testing.assert_allclose(
        np.asarray(got),
        np.asarray(want),
        rtol=rtol,
        atol=atol,
        err_msg=f"{context} {jax.tree_util.keystr(path)}",
    )


def run_scenario(name: str, num_devices: int, **kwargs) -> str:
  """Runs `scenario_<name>(**kwargs)` of this file in a subprocess with `num_devices` CPU devices.

  The subprocess compiles with --xla_backend_optimization_level=0, which cuts
  XLA's CPU compile time about threefold. Every scenario, and every run that
  the checkpoint test compares, is compiled with the same flags.
  """
  env = dict(os.environ)
  for variable in (
      partitioning.COORDINATOR_ADDRESS_ENV,
      partitioning.NUM_PROCESSES_ENV,
      partitioning.PROCESS_ID_ENV,
  ):
    env.pop(variable, None)
  env["XLA_FLAGS"] = " ".join([
      env.get("XLA_FLAGS", ""),
      f"--xla_force_host_platform_device_count={num_devices}",
      "--xla_backend_optimization_level=0",
  ]).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
  result = subprocess.run(
      [sys.executable, __file__, name, json.dumps(kwargs)],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=SUBPROCESS_TIMEOUT_S,
      check=False,
  )
  output = result.stdout + result.stderr
  assert result.returncode == 0, f"scenario {name} on {num_devices} devices failed:\n{output[-6000:]}"
  return output


# ---------------------------------------------------------------------------
# Scenarios, run in subprocesses


def _train_step_on_mesh(config, mesh_axes, batch, key, grad_accum_steps=1):
  """Runs one sharded training step and returns the new state, its shardings and the metrics."""
  mesh = sharding.make_mesh(mesh_axes)
  state, state_shardings = partitioning.create_train_state(lambda: create_state(config), mesh)
  replicated = partitioning.replicated(mesh)
  step_fn = partitioning.jit_on_mesh(
      lambda state, batch, key: train.train_step(
          state, batch, key, grad_accum_steps=grad_accum_steps
      ),
      mesh,
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated),
  )
  new_state, metrics = step_fn(state, partitioning.put_batch(batch, mesh), key)
  return new_state, state_shardings, metrics


def scenario_data_parallel_step(cases):
  """Checks that one step on each mesh matches the single-device step on the same batch.

  Each case is `[mesh_axes, grad_accum_steps, dropout]`. The single-device
  step takes the whole batch at once. Dropout masks come from the same keys
  on any mesh, so cases with dropout compare equal too.
  """
  batch = direct_batch(8, 16, seed=1)
  key = jax.random.key(2)
  # Compiled for one device: arrays without shardings stay on device 0.
  single_device_step = jax.jit(train.train_step, static_argnames="grad_accum_steps")

  for mesh_axes, grad_accum_steps, dropout in cases:
    context = f"mesh {mesh_axes}, grad_accum_steps {grad_accum_steps}, dropout {dropout}:"
    config = tiny_config()
    if not dropout:
      config.model.hidden_dropout_rate = 0.0
      config.model.attention_dropout_rate = 0.0
    assert jax.device_count() == np.prod(list(mesh_axes.values())), (context, jax.devices())
    expected_state, expected_metrics = single_device_step(create_state(config), batch, key)
    state, _, metrics = _train_step_on_mesh(config, mesh_axes, batch, key, grad_accum_steps)

    np.testing.assert_allclose(
        metrics["loss"], expected_metrics["loss"], rtol=1e-5, err_msg=context
    )
    assert_trees_close(state.params, expected_state.params, PARAMS_RTOL, PARAMS_ATOL, context)
    assert_trees_close(
        state.opt_state, expected_state.opt_state, MOMENTS_RTOL, MOMENTS_ATOL, context
    )

    tables_size = mesh_axes.get("tables", 1)
    want_spec = P("tables", None, None)
    tables = state.params["layers_0"]["ffn"]["tables"]
    assert tables.sharding.spec == want_spec, (context, tables.sharding)
    shard_shape = tables.addressable_shards[0].data.shape
    assert shard_shape == (NUM_TABLES // tables_size, TABLE_SIZE, HIDDEN_SIZE), (
        context,
        shard_shape,
    )
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
      if jax.tree_util.keystr(path).endswith("['tables']"):
        assert leaf.sharding.spec == want_spec, (context, jax.tree_util.keystr(path))
    kernel = state.params["layers_0"]["attention"]["query"]["kernel"]
    assert kernel.sharding.is_fully_replicated, (context, kernel.sharding)
    print(context, "matches the single-device step")


def _custom_call_operand_shapes(hlo_text: str, target: str) -> list[list[tuple[int, ...]]]:
  """Returns the operand shapes of each custom call to `target` in compiled HLO text."""
  shapes = []
  for line in hlo_text.splitlines():
    if f'custom_call_target="{target}"' not in line:
      continue
    constraints = re.search(r"operand_layout_constraints=\{(.*?)\}, api_version", line)
    assert constraints, line
    operands = re.findall(r"[a-z]+\d*\[([\d,]*)\]", constraints.group(1))
    shapes.append([tuple(int(d) for d in dims.split(",") if d) for dims in operands])
  return shapes


def scenario_table_parallel_lookup():
  """Checks LookupFFN on meshes of 2 devices against one device, and the per-device shapes."""
  assert jax.device_count() == 2, jax.devices()
  x = jax.random.normal(jax.random.key(0), (4, 6, HIDDEN_SIZE))
  # Random weights make every output element matter to the gradient.
  weights = jax.random.normal(jax.random.key(2), (4, 6, HIDDEN_SIZE))
  num_tokens = 4 * 6
  code_length = TABLE_SIZE.bit_length() - 1

  for implementation in ("ffi", "reference"):
    layer = layers.LookupFFN(
        num_tables=NUM_TABLES,
        table_size=TABLE_SIZE,
        projection="bh4",
        block_size=8,
        implementation=implementation,
    )
    params = layer.init(jax.random.key(1), x)

    def loss(params, x, layer=layer):
      return jnp.sum(weights * jnp.cos(layer.apply(params, x)))

    forward = jax.jit(layer.apply)
    gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
    expected_y = forward(params, x)
    expected_grads = gradient(params, x)

    for mesh_axes, tables_per_device, tokens_per_device in (
        ({"data": 1, "tables": 2}, NUM_TABLES // 2, num_tokens),
        ({"data": 2, "tables": 1}, NUM_TABLES, num_tokens // 2),
    ):
      context = f"{implementation} on mesh {mesh_axes}:"
      mesh = sharding.make_mesh(mesh_axes)
      sharded_params = jax.device_put(params, sharding.tree_shardings(params, mesh))
      with jax.set_mesh(mesh):
        y = forward(sharded_params, x)
        grads = gradient(sharded_params, x)
        hlo_text = gradient.lower(sharded_params, x).compile().as_text()
      np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-6, err_msg=context)
      assert_trees_close(grads, expected_grads, 1e-4, 1e-6, context)

      if implementation == "reference":
        assert "lookupffn_lookup_fwd" not in hlo_text, context
        continue
      forward_calls = _custom_call_operand_shapes(hlo_text, "lookupffn_lookup_fwd")
      assert forward_calls, f"{context} no lookupffn_lookup_fwd custom call in the HLO"
      for z_shape, tables_shape in forward_calls:
        assert z_shape == (tokens_per_device, tables_per_device, code_length), (context, z_shape)
        assert tables_shape == (tables_per_device, TABLE_SIZE, HIDDEN_SIZE), (
            context,
            tables_shape,
        )
      backward_calls = _custom_call_operand_shapes(hlo_text, "lookupffn_lookup_bwd")
      assert backward_calls, f"{context} no lookupffn_lookup_bwd custom call in the HLO"
      for operand_shapes in backward_calls:
        assert operand_shapes[0] == (tokens_per_device, tables_per_device, code_length), (
            context,
            operand_shapes,
        )
        assert operand_shapes[1] == (tables_per_device, TABLE_SIZE, HIDDEN_SIZE), (
            context,
            operand_shapes,
        )
      print(context, "custom calls see operands of shapes", forward_calls, backward_calls)


def scenario_train(workdir, corpus_dir, mesh, num_train_steps, check_restore_step=None):
  """Runs `train_and_evaluate` on `mesh`, resuming from the latest checkpoint in `workdir`.

  With `check_restore_step`, first checks that this checkpoint restores into
  the shardings of `mesh`.
  """
  if check_restore_step is not None:
    _check_sharded_restore(workdir, check_restore_step, mesh)
  config = tiny_config(num_train_steps=num_train_steps, checkpoint_every_steps=2)
  config.corpus.kind = "text"
  config.corpus.paths = (str(pathlib.Path(corpus_dir) / "*.txt"),)
  config.mesh.data, config.mesh.tables = mesh["data"], mesh["tables"]
  config.eval_every_steps = num_train_steps
  config.num_eval_batches = 1
  summary = train.train_and_evaluate(config, workdir)
  assert summary["step"] == num_train_steps, summary
  print("summary", json.dumps(summary))


def _check_sharded_restore(workdir, step, mesh):
  """Restores a checkpoint into `mesh` and checks that the tables come back split."""
  config = tiny_config()
  mesh = sharding.make_mesh(mesh)
  target, _ = partitioning.create_train_state(lambda: create_state(config), mesh)
  checkpointer = train.Checkpointer(pathlib.Path(workdir) / "checkpoints", 5)
  state, _ = checkpointer.restore(step, target)
  checkpointer.close()
  assert int(state.step) == step, int(state.step)
  tables_size = mesh.shape["tables"]
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path)
    if name.endswith("['tables']"):
      assert leaf.sharding.spec == P("tables", None, None), (name, leaf.sharding)
      shard_shape = leaf.addressable_shards[0].data.shape
      assert shard_shape[0] == NUM_TABLES // tables_size, (name, shard_shape)
    else:
      assert leaf.sharding.is_fully_replicated, (name, leaf.sharding)
  print("restored step", step, "with the tables split", tables_size, "ways")


def scenario_grad_accumulation():
  """Checks k micro-batches against one step on the whole batch, without dropout."""
  config = tiny_config()
  config.model.hidden_dropout_rate = 0.0
  config.model.attention_dropout_rate = 0.0
  state = create_state(config)
  step = jax.jit(train.train_step, static_argnames="grad_accum_steps")
  key = jax.random.key(0)
  # With 2 micro-batches, rows 0 and 2 form the first and rows 1 and 3 the
  # second: 16 targets against 2, so the mean of the two micro-batch means
  # is not the mean over all 18 targets.
  batch = direct_batch(4, 16, seed=5)
  batch["weights"][:] = 0.0
  batch["weights"][[0, 2], :8] = 1.0
  batch["weights"][[1, 3], 0] = 1.0

  expected_state, expected = step(state, batch, key)
  for grad_accum_steps in (2, 4):
    context = f"grad_accum_steps {grad_accum_steps}:"
    new_state, metrics = step(state, batch, key, grad_accum_steps=grad_accum_steps)
    for name in ("loss", "accuracy", "grad_norm", "num_tokens", "num_targets_skipped"):
      np.testing.assert_allclose(
          metrics[name], expected[name], rtol=1e-5, err_msg=f"{context} {name}"
      )
    assert_trees_close(
        new_state.params, expected_state.params, PARAMS_RTOL, PARAMS_ATOL, context
    )
    assert_trees_close(
        new_state.opt_state, expected_state.opt_state, MOMENTS_RTOL, MOMENTS_ATOL, context
    )

  micro_batch_losses = [
      float(step(state, {name: value[rows] for name, value in batch.items()}, key)[1]["loss"])
      for rows in ([0, 2], [1, 3])
  ]
  assert abs(np.mean(micro_batch_losses) - float(expected["loss"])) > 1e-3, micro_batch_losses
  print("grad accumulation gives the mean over all targets")


# ---------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """Writes 40 real English documents: help topics that ship with Python."""
  directory = tmp_path_factory.mktemp("corpus")
  topics = sorted(pydoc_data.topics.topics.items())[:40]
  for index, (_, text) in enumerate(topics):
    (directory / f"{index:03d}.txt").write_text(text[:3000])
  return directory


def test_data_parallel_step_on_2_devices():
  output = run_scenario("data_parallel_step", 2, cases=[[{"data": 2, "tables": 1}, 1, True]])
  assert "matches the single-device step" in output


def test_data_and_table_parallel_step_on_4_devices():
  cases = [[{"data": 4, "tables": 1}, 1, True], [{"data": 2, "tables": 2}, 2, False]]
  output = run_scenario("data_parallel_step", 4, cases=cases)
  assert output.count("matches the single-device step") == 2


def test_table_parallel_lookup_ffn_on_2_devices():
  output = run_scenario("table_parallel_lookup", 2)
  assert output.count("custom calls see") == 2


def _params_at(workdir: pathlib.Path, step: int):
  checkpointer = train.Checkpointer(workdir / "checkpoints", 5)
  state, data_state = checkpointer.restore(step, create_state(tiny_config()))
  checkpointer.close()
  return state.params, data_state


def test_checkpoint_resumes_on_fewer_devices(corpus_dir, tmp_path):
  four_devices_dir = tmp_path / "four_devices"
  train_kwargs = dict(corpus_dir=str(corpus_dir), num_train_steps=4)
  run_scenario(
      "train", 4, workdir=str(four_devices_dir), mesh={"data": 2, "tables": 2}, **train_kwargs
  )
  expected, expected_data = _params_at(four_devices_dir, 4)

  for num_devices, mesh in ((1, {"data": -1, "tables": 1}), (2, {"data": 1, "tables": 2})):
    # Keep the checkpoint of step 2 only, as if the 4-device run had stopped there.
    workdir = tmp_path / f"resumed_on_{num_devices}"
    shutil.copytree(four_devices_dir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    output = run_scenario(
        "train",
        num_devices,
        workdir=str(workdir),
        mesh=mesh,
        check_restore_step=2,
        **train_kwargs,
    )
    assert "restored step 2" in output

    resumed, resumed_data = _params_at(workdir, 4)
    assert resumed_data == expected_data, num_devices
    assert_trees_close(resumed, expected, 1e-4, 1e-5, f"resumed on {num_devices} devices:")


def test_grad_accumulation_matches_one_step():
  output = run_scenario("grad_accumulation", 1)
  assert "mean over all targets" in output


def test_grad_accumulation_rejects_indivisible_batch():
  state = jax.eval_shape(lambda: create_state(tiny_config()))
  batch = direct_batch(6, 16, seed=0)
  with pytest.raises(ValueError, match="grad_accum_steps must be a positive divisor of the batch size 6, got 4"):
    train.train_step(state, batch, jax.random.key(0), grad_accum_steps=4)


# ---------------------------------------------------------------------------
# Single-device checks of the mesh, the specs and the start-up


def test_make_mesh_resolves_minus_one():
  mesh = sharding.make_mesh({"data": -1, "tables": 1})
  assert dict(mesh.shape) == {"data": jax.device_count(), "tables": 1}


@pytest.mark.parametrize(
    "axis_sizes, message",
    [
      ({"model": 1}, r"unknown mesh axes \['model'\]"),
      ({"data": -1, "tables": -1}, "at most one -1"),
      ({"data": 0}, "must be positive"),
      ({"data": 3}, "has 3 devices but 1 are available"),
    ],
)
def test_make_mesh_rejects_invalid_sizes(axis_sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(axis_sizes, devices=jax.devices()[:1])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_tree_partition_specs_split_tables_and_moments(scan_layers):
  config = tiny_config()
  config.model.scan_layers = scan_layers
  state = jax.eval_shape(lambda: create_state(config))
  mesh = jax.sharding.AbstractMesh((1, 2), ("data", "tables"))
  specs = sharding.tree_partition_specs(state, mesh)

  split = []
  for path, spec in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, P)
  )[0]:
    name = jax.tree_util.keystr(path)
    if name.endswith("['tables']"):
      split.append(name)
      expected = P(None, "tables", None, None) if scan_layers else P("tables", None, None)
      assert spec == expected, name
    else:
      assert spec == P(), name
  # The parameters and Adam's first and second moments of the one layer.
  assert len(split) == 3, split


def test_tree_partition_specs_reject_indivisible_tables():
  state = jax.eval_shape(lambda: create_state(tiny_config()))
  mesh = jax.sharding.AbstractMesh((1, 3), ("data", "tables"))
  with pytest.raises(ValueError, match=r"has 8 tables, which is not a multiple of the 3 devices"):
    sharding.tree_partition_specs(state, mesh)


def test_sharded_lookup_without_mesh_is_lookup():
  z = jax.random.normal(jax.random.key(0), (5, NUM_TABLES, 4))
  tables = jax.random.normal(jax.random.key(1), (NUM_TABLES, TABLE_SIZE, 3))
  np.testing.assert_array_equal(
      sharding.sharded_lookup(z, tables), lookupffn_jax.lookup(z, tables)
  )


def test_sharded_lookup_rejects_indivisible_batch():
  mesh = jax.sharding.AbstractMesh((2, 1), ("data", "tables"))
  z = jnp.zeros((3, NUM_TABLES, 4))
  tables = jnp.zeros((NUM_TABLES, TABLE_SIZE, 3))
  with pytest.raises(ValueError, match=r"first axis of z \(3, 8, 4\) must be a multiple of the 2"):
    sharding.sharded_lookup(z, tables, mesh=mesh)


def test_check_batch_sizes_names_micro_batch():
  mesh = jax.sharding.AbstractMesh((4, 1), ("data", "tables"))
  with pytest.raises(ValueError, match=r"micro-batch of 6 sequences .* multiple of the 4 devices"):
    partitioning.check_batch_sizes(mesh, 24, 8, 4)
  with pytest.raises(ValueError, match="eval_batch_size 6 must be a multiple of the 4"):
    partitioning.check_batch_sizes(mesh, 8, 6, 1)


def test_initialize_distributed_reads_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  for variable in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(variable, raising=False)

  assert not partitioning.initialize_distributed()
  assert calls == []

  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert partitioning.initialize_distributed()
  assert calls == [
      {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
  ]

  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  monkeypatch.delenv("JAX_PROCESS_ID")
  assert partitioning.initialize_distributed(force=True)
  assert calls[-1] == {"coordinator_address": None, "num_processes": None, "process_id": None}

  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_PROCESS_ID", "one")
  with pytest.raises(ValueError, match="JAX_PROCESS_ID must be an integer, got 'one'"):
    partitioning.initialize_distributed()


if __name__ == "__main__":
  globals()[f"scenario_{sys.argv[1]}"](**json.loads(sys.argv[2]))
