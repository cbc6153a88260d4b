# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of packing, masking and the batch iterators."""

import math
import os

import numpy as np
from pydoc_data import topics
import pytest

from train import input_pipeline
from train import tokenizer as tokenizer_lib

BOS = tokenizer_lib.BOS_ID
PAD = tokenizer_lib.PAD_ID
EOS = tokenizer_lib.EOS_ID
MASK = tokenizer_lib.MASK_ID
FIRST_REGULAR_ID = tokenizer_lib.NUM_SPECIAL_TOKENS
VOCAB_SIZE = 300


def _random_documents(seed, num_documents=40, max_length=50):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, max_length, size=num_documents)
  return [
      rng.integers(FIRST_REGULAR_ID, VOCAB_SIZE, size=n, dtype=np.int32)
      for n in lengths
  ]


def _packed_rows(num_rows=10, max_seq_len=16, seed=0):
  documents = _random_documents(seed, num_documents=4 * num_rows)
  input_ids_NxL, _ = input_pipeline.pack_documents(documents, max_seq_len)
  return input_ids_NxL[:num_rows]


def _assert_batches_equal(batches, expected_batches):
  assert len(batches) == len(expected_batches)
  for batch, expected in zip(batches, expected_batches):
    for key in ("input_ids", "attention_mask", "targets", "weights"):
      np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


@pytest.fixture(scope="module")
def tokenizer():
  documents = [topics.topics[name] for name in sorted(topics.topics)[:20]]
  return tokenizer_lib.train_tokenizer(documents, VOCAB_SIZE)


@pytest.fixture(scope="module")
def masked_batch():
  """Masks 256 rows of 128 tokens with specials and pads among them."""
  rng = np.random.default_rng(0)
  input_ids_BxL = rng.integers(
      FIRST_REGULAR_ID, VOCAB_SIZE, size=(256, 128), dtype=np.int32
  )
  input_ids_BxL[:, 0] = BOS
  input_ids_BxL[:, 60] = EOS
  input_ids_BxL[:, 100:] = PAD
  input_ids_BxL[:, 30] = MASK
  input_ids_BxL[:, 31] = tokenizer_lib.UNK_ID
  masker = input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE)
  return input_ids_BxL, masker(input_ids_BxL, np.random.default_rng(1))


# Tokenizing and packing.


def test_tokenize_literal_special_text(tokenizer):
  (ids,) = input_pipeline.tokenize_documents(tokenizer, ["a </s> b <mask>"])

  assert ids.min() >= FIRST_REGULAR_ID


def test_tokenize_round_trip(tokenizer):
  text = "The value of x is 3."

  (ids,) = input_pipeline.tokenize_documents(tokenizer, [text])

  assert tokenizer.decode(ids.tolist()) == text


def test_tokenize_leaves_tokenizer_unchanged(tokenizer):
  input_pipeline.tokenize_documents(tokenizer, ["a </s> b"])

  ids = tokenizer.encode("a </s>", add_special_tokens=False).ids
  assert EOS in ids


def test_pack_rows_start_with_bos():
  input_ids_NxL, _ = input_pipeline.pack_documents(_random_documents(0), 16)

  assert np.all(input_ids_NxL[:, 0] == BOS)


def test_pack_rows_end_with_eos():
  input_ids_NxL, _ = input_pipeline.pack_documents(_random_documents(0), 16)

  lengths_N = np.sum(input_ids_NxL != PAD, axis=1)
  last_tokens = input_ids_NxL[np.arange(len(lengths_N)), lengths_N - 1]
  assert np.all(last_tokens == EOS)


def test_pack_shape_and_dtype():
  input_ids_NxL, mask_NxL = input_pipeline.pack_documents(
      _random_documents(0), 16
  )

  assert input_ids_NxL.shape[1] == 16
  assert input_ids_NxL.dtype == np.int32
  assert mask_NxL.dtype == np.int32


def test_pack_pads_at_end_only():
  input_ids_NxL, _ = input_pipeline.pack_documents(_random_documents(0), 16)

  is_pad_NxL = input_ids_NxL == PAD
  # Once a row reaches <pad>, every later position is <pad>.
  assert np.all(is_pad_NxL[:, 1:] >= is_pad_NxL[:, :-1])


def test_pack_only_last_rows_short():
  documents = [np.arange(5, 105, dtype=np.int32)]

  input_ids_NxL, _ = input_pipeline.pack_documents(documents, 12)

  lengths_N = np.sum(input_ids_NxL != PAD, axis=1)
  np.testing.assert_array_equal(lengths_N[:-1], 12)
  assert lengths_N[-1] == 100 - 9 * 10 + 2


def test_pack_attention_mask_matches():
  input_ids_NxL, mask_NxL = input_pipeline.pack_documents(
      _random_documents(0), 16
  )

  np.testing.assert_array_equal(mask_NxL, input_ids_NxL != PAD)


def test_pack_keeps_every_token():
  documents = _random_documents(0)

  input_ids_NxL, _ = input_pipeline.pack_documents(documents, 16)

  regular_ids = input_ids_NxL[input_ids_NxL >= FIRST_REGULAR_ID]
  np.testing.assert_array_equal(regular_ids, np.concatenate(documents))


def test_pack_separates_documents():
  documents = [np.array([10, 11]), np.array([12]), np.array([13, 14])]

  input_ids_NxL, _ = input_pipeline.pack_documents(documents, 16)

  expected = [BOS, 10, 11, EOS, 12, EOS, 13, 14, EOS] + [PAD] * 7
  np.testing.assert_array_equal(input_ids_NxL, [expected])


def test_pack_drops_separator_at_edges():
  documents = [np.array([10, 11, 12]), np.array([13, 14, 15])]

  # Pieces hold 3 tokens, so the separator after the first document falls
  # at the start of the second piece and is dropped.
  input_ids_NxL, _ = input_pipeline.pack_documents(documents, 5)

  expected = [[BOS, 10, 11, 12, EOS], [BOS, 13, 14, 15, EOS]]
  np.testing.assert_array_equal(input_ids_NxL, expected)


def test_pack_separator_at_piece_end():
  documents = [np.array([10, 11]), np.array([12, 13, 14])]

  input_ids_NxL, _ = input_pipeline.pack_documents(documents, 5)

  expected = [[BOS, 10, 11, EOS, PAD], [BOS, 12, 13, 14, EOS]]
  np.testing.assert_array_equal(input_ids_NxL, expected)


def test_pack_skips_empty_documents():
  documents = [np.array([10]), np.array([], dtype=np.int32), np.array([11])]

  input_ids_NxL, _ = input_pipeline.pack_documents(documents, 6)

  np.testing.assert_array_equal(input_ids_NxL, [[BOS, 10, EOS, 11, EOS, PAD]])


def test_pack_no_documents():
  input_ids_NxL, mask_NxL = input_pipeline.pack_documents([], 8)

  assert input_ids_NxL.shape == (0, 8)
  assert mask_NxL.shape == (0, 8)


def test_pack_length_too_short():
  with pytest.raises(ValueError, match="at least 3"):
    input_pipeline.pack_documents([np.array([10])], 2)


# Masking.


def test_mask_rate(masked_batch):
  input_ids_BxL, batch = masked_batch
  num_maskable = np.sum(input_ids_BxL >= FIRST_REGULAR_ID)

  rate = batch["weights"].sum() / num_maskable

  assert abs(rate - 0.15) < 0.005


def test_mask_never_selects_specials(masked_batch):
  input_ids_BxL, batch = masked_batch

  assert np.all(batch["weights"][input_ids_BxL < FIRST_REGULAR_ID] == 0)


def test_mask_80_10_10(masked_batch):
  _, batch = masked_batch
  is_target = batch["weights"] == 1
  inputs = batch["input_ids"][is_target]
  targets = batch["targets"][is_target]

  mask_fraction = np.mean(inputs == MASK)
  random_fraction = np.mean((inputs != MASK) & (inputs != targets))
  unchanged_fraction = np.mean(inputs == targets)

  assert abs(mask_fraction - 0.8) < 0.02
  # A random token equals the original with probability 1 / 295, so a few
  # random replacements count as unchanged.
  assert abs(random_fraction - 0.1) < 0.015
  assert abs(unchanged_fraction - 0.1) < 0.015


def test_mask_random_tokens_regular(masked_batch):
  _, batch = masked_batch
  is_target = batch["weights"] == 1
  inputs = batch["input_ids"][is_target]
  targets = batch["targets"][is_target]

  random_tokens = inputs[(inputs != MASK) & (inputs != targets)]

  assert random_tokens.size > 0
  assert random_tokens.min() >= FIRST_REGULAR_ID
  assert random_tokens.max() < VOCAB_SIZE


def test_mask_other_positions_unchanged(masked_batch):
  input_ids_BxL, batch = masked_batch
  is_other = batch["weights"] == 0

  np.testing.assert_array_equal(
      batch["input_ids"][is_other], input_ids_BxL[is_other]
  )


def test_mask_targets_are_inputs(masked_batch):
  input_ids_BxL, batch = masked_batch

  np.testing.assert_array_equal(batch["targets"], input_ids_BxL)


def test_mask_attention_mask(masked_batch):
  input_ids_BxL, batch = masked_batch

  np.testing.assert_array_equal(batch["attention_mask"], input_ids_BxL != PAD)


def test_mask_dtypes(masked_batch):
  _, batch = masked_batch

  assert batch["input_ids"].dtype == np.int32
  assert batch["attention_mask"].dtype == np.int32
  assert batch["targets"].dtype == np.int32
  assert batch["weights"].dtype == np.float32


def test_mask_short_rows_mean_rate():
  # One maskable token per row: a rounded-down count would never mask it.
  input_ids_BxL = np.tile([BOS, 10, EOS, PAD], (20000, 1)).astype(np.int32)
  masker = input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE)

  batch = masker(input_ids_BxL, np.random.default_rng(0))

  assert abs(batch["weights"].mean() * 4 - 0.15) < 0.01


def test_mask_nothing_maskable():
  input_ids_BxL = np.array([[BOS, EOS, PAD, PAD]], dtype=np.int32)
  masker = input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE, mask_rate=1.0)

  batch = masker(input_ids_BxL, np.random.default_rng(0))

  np.testing.assert_array_equal(batch["weights"], 0)
  np.testing.assert_array_equal(batch["input_ids"], input_ids_BxL)


def test_mask_deterministic():
  input_ids_BxL = _packed_rows()
  masker = input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE)

  first = masker(input_ids_BxL, np.random.default_rng(7))
  second = masker(input_ids_BxL, np.random.default_rng(7))

  _assert_batches_equal([first], [second])


def test_masker_invalid_rates():
  with pytest.raises(ValueError, match="at most 1"):
    input_pipeline.TokenMasker(
        vocab_size=VOCAB_SIZE, mask_token_rate=0.9, random_token_rate=0.2
    )


def test_masker_vocab_too_small():
  with pytest.raises(ValueError, match="vocab_size must exceed"):
    input_pipeline.TokenMasker(vocab_size=5)


# Training iterator.


def _train_iterator(input_ids_NxL, batch_size=4, seed=0):
  masker = input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE)
  return input_pipeline.TrainIterator(input_ids_NxL, batch_size, masker, seed)


def test_train_batch_shape():
  batch = next(_train_iterator(_packed_rows(), batch_size=4))

  assert batch["input_ids"].shape == (4, 16)


def test_train_deterministic():
  rows = _packed_rows()

  iterator_a = _train_iterator(rows)
  iterator_b = _train_iterator(rows)
  first = [next(iterator_a) for _ in range(7)]
  second = [next(iterator_b) for _ in range(7)]

  _assert_batches_equal(first, second)


def test_train_seed_changes_batches():
  rows = _packed_rows()

  first = next(_train_iterator(rows, seed=0))
  second = next(_train_iterator(rows, seed=1))

  assert not np.array_equal(first["input_ids"], second["input_ids"])


def test_train_masks_differ_between_batches():
  # Full rows have the same maskable positions, so equal weights would mean
  # that both batches drew their masks from the same random stream.
  rng = np.random.default_rng(0)
  rows = rng.integers(
      FIRST_REGULAR_ID, VOCAB_SIZE, size=(8, 16), dtype=np.int32
  )
  iterator = _train_iterator(rows, batch_size=4)

  first = next(iterator)
  second = next(iterator)

  assert not np.array_equal(first["weights"], second["weights"])


def test_train_epoch_visits_each_row_once():
  rows = _packed_rows(num_rows=12)
  iterator = _train_iterator(rows, batch_size=4)

  targets = np.concatenate([next(iterator)["targets"] for _ in range(3)])

  assert sorted(map(tuple, targets)) == sorted(map(tuple, rows))


def test_train_epochs_reshuffle():
  rows = _packed_rows(num_rows=12)
  iterator = _train_iterator(rows, batch_size=12)

  first_epoch = next(iterator)["targets"]
  second_epoch = next(iterator)["targets"]

  assert not np.array_equal(first_epoch, second_epoch)


def test_train_state_counts_rows():
  iterator = _train_iterator(_packed_rows(num_rows=10), batch_size=4)

  for _ in range(3):
    next(iterator)

  assert iterator.get_state() == {"epoch": 1, "index": 2}


@pytest.mark.parametrize("num_done", [0, 2, 3, 5])
def test_train_resume_exact(num_done):
  # 10 rows in batches of 4, so resumes fall inside and across epochs.
  rows = _packed_rows(num_rows=10)
  uninterrupted = _train_iterator(rows)
  expected = [next(uninterrupted) for _ in range(num_done + 6)]

  interrupted = _train_iterator(rows)
  for _ in range(num_done):
    next(interrupted)
  state = interrupted.get_state()
  resumed = _train_iterator(rows)
  resumed.set_state(state)

  _assert_batches_equal([next(resumed) for _ in range(6)], expected[num_done:])


def test_train_state_orbax_round_trip(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  rows = _packed_rows(num_rows=10)
  iterator = _train_iterator(rows)
  for _ in range(3):
    next(iterator)
  path = os.fspath(tmp_path / "state")

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, iterator.get_state())
  checkpointer.wait_until_finished()
  resumed = _train_iterator(rows)
  resumed.set_state(checkpointer.restore(path))

  _assert_batches_equal([next(resumed)], [next(iterator)])


def test_train_invalid_state():
  iterator = _train_iterator(_packed_rows(num_rows=10))

  with pytest.raises(ValueError, match="index=10 is invalid for 10 rows"):
    iterator.set_state({"epoch": 0, "index": 10})


def test_train_state_missing_key():
  iterator = _train_iterator(_packed_rows(num_rows=10))

  with pytest.raises(ValueError, match=r"missing \['index'\]"):
    iterator.set_state({"epoch": 0})


def test_train_no_rows():
  with pytest.raises(ValueError, match="no rows"):
    _train_iterator(np.zeros((0, 16), dtype=np.int32))


def test_train_invalid_batch_size():
  with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
    _train_iterator(_packed_rows(), batch_size=0)


# Evaluation batches.


def _eval_batches(input_ids_NxL, batch_size=4, seed=0):
  masker = input_pipeline.TokenMasker(vocab_size=VOCAB_SIZE)
  return input_pipeline.EvalBatches(input_ids_NxL, batch_size, masker, seed)


def test_eval_same_every_time():
  eval_batches = _eval_batches(_packed_rows(num_rows=10))

  _assert_batches_equal(list(eval_batches), list(eval_batches))


def test_eval_visits_rows_in_order():
  rows = _packed_rows(num_rows=10)

  batches = list(_eval_batches(rows))

  targets = np.concatenate([batch["targets"] for batch in batches])
  np.testing.assert_array_equal(targets[:10], rows)


def test_eval_fills_last_batch():
  batches = list(_eval_batches(_packed_rows(num_rows=10)))
  filler = batches[-1]

  assert len(batches) == 3
  assert filler["input_ids"].shape == (4, 16)
  np.testing.assert_array_equal(filler["weights"][2:], 0)
  np.testing.assert_array_equal(filler["attention_mask"][2:].sum(axis=1), 2)


def test_eval_no_rows():
  eval_batches = _eval_batches(np.zeros((0, 16), dtype=np.int32))

  assert len(eval_batches) == 0
  assert not list(eval_batches)


# Baseline accuracy.


def test_most_frequent_token_accuracy():
  train_input_ids = np.array([[BOS, 7, 7, 8, EOS, PAD, PAD, PAD]])
  batch = {
      "targets": np.array([[7, 8, 7, 9]]),
      "weights": np.array([[1.0, 1.0, 0.0, 1.0]]),
  }

  accuracy = input_pipeline.most_frequent_token_accuracy(
      train_input_ids, [batch]
  )

  assert accuracy == pytest.approx(1 / 3)


def test_most_frequent_ignores_specials():
  # <pad> is the most frequent id, but it is never a target.
  train_input_ids = np.array([[BOS, 8, EOS, PAD, PAD, PAD]])
  batch = {"targets": np.array([[8, 9]]), "weights": np.array([[1.0, 1.0]])}

  accuracy = input_pipeline.most_frequent_token_accuracy(
      train_input_ids, [batch]
  )

  assert accuracy == pytest.approx(0.5)


def test_most_frequent_no_targets():
  batch = {"targets": np.array([[8]]), "weights": np.array([[0.0]])}

  accuracy = input_pipeline.most_frequent_token_accuracy(
      np.array([[BOS, 8, EOS]]), [batch]
  )

  assert math.isnan(accuracy)


def test_token_counts():
  counts = input_pipeline.token_counts(np.array([[0, 5, 5, 2]]), vocab_size=6)

  np.testing.assert_array_equal(counts, [1, 0, 1, 0, 0, 2])


# Everything together.


def test_create_datasets(tmp_path):
  text = "\n\n".join(
      topics.topics[name] for name in sorted(topics.topics)[:20]
  )
  (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
  spec = {
      "kind": "text",
      "paths": str(tmp_path / "corpus.txt"),
      "split_on_blank_lines": True,
      "validation_fraction": 0.1,
  }

  datasets = input_pipeline.create_datasets(
      spec,
      tmp_path / "workdir",
      vocab_size=VOCAB_SIZE,
      max_seq_len=32,
      batch_size=8,
      eval_batch_size=16,
      seed=0,
  )

  assert os.path.isfile(tmp_path / "workdir" / "tokenizer.json")
  assert next(datasets.train_iter)["input_ids"].shape == (8, 32)
  assert next(iter(datasets.eval_batches))["input_ids"].shape == (16, 32)
  assert datasets.valid_input_ids.shape[0] > 0
  baseline = input_pipeline.most_frequent_token_accuracy(
      datasets.train_input_ids, datasets.eval_batches
  )
  assert 0.0 < baseline < 0.5
