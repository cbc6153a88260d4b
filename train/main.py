# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Pretrains a RoBERTa masked-LM with LookupFFN.

  python -m train.main --config=configs/tiny_lookup.py --workdir=workdir/tiny_lookup
"""

import logging as python_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from train import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and the tokenizer.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(python_logging.Filter):
  """Drops INFO records from orbax and jax, which log every checkpoint file."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or "/jax/" in record.pathname
    return record.levelno >= python_logging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
