# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Default pretraining config: the tiny RoBERTa with LookupFFN on the default corpus.

Run it with

  python -m train.main --config=configs/default.py --workdir=workdir/default

Every field can be overridden on the command line, for example
`--config.num_train_steps=100 --config.model.num_tables=16`.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections

from lookupffn_jax import models


def model_config(preset: str, ffn: str, **overrides) -> ml_collections.ConfigDict:
  """Returns the fields of `RobertaConfig.<preset>(ffn, **overrides)` as a ConfigDict.

  Dtypes become their names ("float32", "bfloat16") so they can be set from
  the command line, and the dense FFN width is filled in.
  """
  config = getattr(models.RobertaConfig, preset)(ffn=ffn, **overrides)
  fields = dataclasses.asdict(config)
  for name in ("dtype", "param_dtype", "table_dtype"):
    if name in fields:
      fields[name] = jnp.dtype(fields[name]).name
  if fields["ffn_hidden_size"] is None:
    fields["ffn_hidden_size"] = 4 * fields["hidden_size"]
  return ml_collections.ConfigDict(fields)


def small_512_config(ffn: str, **model_overrides) -> ml_collections.ConfigDict:
  """Returns the RoBERTa-small pretraining setup at sequence length 512.

  AdamW with betas 0.9/0.98, epsilon 1e-6 and weight decay 0.01, 250k steps
  of 256 sequences, and a peak learning rate of 1e-4 after 10k warmup steps.
  """
  config = get_config()
  config.model = model_config("small_512", ffn, **model_overrides)
  config.batch_size = 256
  config.eval_batch_size = 64
  config.num_train_steps = 250_000
  config.warmup_steps = 10_000
  config.learning_rate = 1e-4
  config.grad_clip_norm = 0.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.num_eval_batches = 100
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  return config


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config."""
  config = ml_collections.ConfigDict()

  # Model: every field of lookupffn_jax.models.RobertaConfig.
  config.model = model_config("tiny", "lookup_dense", vocab_size=8192)

  # Corpus: see train.corpus.CorpusSpec. The default reads the documentation
  # that ships with the running Python interpreter.
  config.corpus = ml_collections.ConfigDict(
      dict(
          kind="python_docs",
          paths=(),
          text_field="text",
          split_on_blank_lines=False,
          dataset_split="train",
          validation_fraction=0.05,
          seed=0,
      )
  )
  # Existing tokenizer.json to use; empty trains one on the training split
  # and saves it in the workdir.
  config.tokenizer_path = ""
  # Minimum count of a byte pair for a BPE merge when training a tokenizer;
  # lower it when a small corpus cannot fill the vocabulary.
  config.tokenizer_min_frequency = 2

  # Sequences per training step.
  config.batch_size = 32
  # Micro-batches per training step: each runs batch_size / grad_accum_steps
  # sequences, and their gradients are added up before the one update.
  config.grad_accum_steps = 1
  # Sequences per evaluation step.
  config.eval_batch_size = 64
  # Number of optimizer steps.
  config.num_train_steps = 1200
  # Seed of the parameters, the dropout, the shuffling and the masking.
  config.seed = 0

  # Device mesh axis sizes, -1 for all devices the other axis leaves: the
  # batch is split over "data", the T tables of each LookupFFN over "tables".
  config.mesh = ml_collections.ConfigDict(dict(data=-1, tables=1))
  # Call jax.distributed.initialize() even without JAX_COORDINATOR_ADDRESS,
  # to let jax detect the processes on Slurm, Open MPI or Cloud TPU.
  config.initialize_distributed = False

  # AdamW with linear warmup from 0 to learning_rate, then linear decay to 0.
  config.learning_rate = 2e-3
  config.warmup_steps = 100
  config.adam_b1 = 0.9
  config.adam_b2 = 0.98
  config.adam_eps = 1e-6
  # Applied to kernels, hash tables and BH4 blocks, never to biases,
  # LayerNorm or embeddings.
  config.weight_decay = 0.01
  # Global gradient norm clip; 0 disables clipping.
  config.grad_clip_norm = 1.0

  # Steps between training-metric log lines and summaries.
  config.log_every_steps = 50
  # Steps between evaluations on the validation split; the last step always
  # evaluates.
  config.eval_every_steps = 400
  # Validation batches per evaluation; 0 evaluates the whole split.
  config.num_eval_batches = 0
  # Steps between checkpoints; the last step is always saved.
  config.checkpoint_every_steps = 400
  # Number of most recent checkpoints kept.
  config.keep_checkpoints = 2

  return config
