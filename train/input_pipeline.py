# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Packed, masked batches for masked-LM pretraining, in numpy.

The steps are:

1. `tokenize_documents`: each document becomes an array of token ids.
2. `pack_documents`: the documents are packed into `[N, max_seq_len]` rows
   that start with `<s>`, end with `</s>` and are padded with `<pad>`.
3. `TokenMasker`: RoBERTa's masking picks the prediction targets of a batch.
4. `TrainIterator` shuffles the training rows every epoch and yields masked
   batches forever, and `EvalBatches` yields the validation rows with the
   same masking every time.

Each batch is a dict of numpy arrays, B rows by L = max_seq_len positions:

* "input_ids": int32 `[B, L]`, the token ids after masking.
* "attention_mask": int32 `[B, L]`, 1 on tokens and 0 on `<pad>`.
* "targets": int32 `[B, L]`, the token ids before masking.
* "weights": float32 `[B, L]`, 1 at the prediction targets and 0 elsewhere.
  A row with no target has all-zero weights, so a loss should divide by
  `max(1, sum(weights))`.

All randomness comes from numpy generators seeded with the seed and the
batch position, so a resumed iterator repeats the batches exactly.
"""

import dataclasses
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import tokenizers

from train import corpus
from train import tokenizer as tokenizer_lib

Batch = dict[str, np.ndarray]

# Tags that keep the random streams of shuffling, training masks and
# evaluation masks apart when they share a seed.
_SHUFFLE_STREAM = 0
_TRAIN_MASK_STREAM = 1
_EVAL_MASK_STREAM = 2


def tokenize_documents(
    tokenizer: tokenizers.Tokenizer, documents: Sequence[str]
) -> list[np.ndarray]:
  """Returns the int32 token ids of each document, without special tokens.

  Text that spells a special token, such as a literal "</s>" in a document,
  is tokenized as plain text, so special ids only come from packing.
  """
  # The flag is set on a copy to leave the caller's tokenizer unchanged.
  plain_text_tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  plain_text_tokenizer.encode_special_tokens = True
  encodings = plain_text_tokenizer.encode_batch(
      list(documents), add_special_tokens=False
  )
  return [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]


def pack_documents(
    token_ids: Sequence[np.ndarray], max_seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Packs tokenized documents into rows of `max_seq_len` tokens.

  The documents are joined into one stream with `</s>` between consecutive
  documents, as in RoBERTa's FULL-SENTENCES packing, and the stream is cut
  into pieces of at most `max_seq_len - 2` tokens. Each row is
  `<s> piece </s>` followed by `<pad>` up to `max_seq_len`. A document can
  continue from one row into the next. A separator that would fall on the
  first or last position of a piece is dropped, since `<s>` and `</s>`
  already mark the row's edges, so that row has one `<pad>` more. Only the
  last row and such rows are padded, and only at the end. Empty documents
  are skipped.

  Args:
    token_ids: token ids of each document, without special tokens.
    max_seq_len: row length, at least 3.

  Returns:
    `(input_ids_NxL, attention_mask_NxL)`, both int32, where the attention
    mask is 1 on tokens and 0 on `<pad>`.
  """
  if max_seq_len < 3:
    raise ValueError(
        f"max_seq_len must be at least 3 (<s>, one token, </s>), got"
        f" {max_seq_len}"
    )
  piece_length = max_seq_len - 2

  # The stream marks separators by position rather than by value, so a
  # document may contain any id.
  parts = []
  separator_parts = []
  for ids in token_ids:
    ids = np.asarray(ids, dtype=np.int32)
    if ids.size == 0:
      continue
    if parts:
      parts.append(np.array([tokenizer_lib.EOS_ID], dtype=np.int32))
      separator_parts.append(np.ones(1, dtype=bool))
    parts.append(ids)
    separator_parts.append(np.zeros(ids.size, dtype=bool))
  if not parts:
    empty = np.zeros((0, max_seq_len), dtype=np.int32)
    return empty, empty.copy()
  stream = np.concatenate(parts)
  is_separator = np.concatenate(separator_parts)

  pieces = []
  start = 0
  while start < stream.size:
    if is_separator[start]:
      start += 1
      continue
    end = min(start + piece_length, stream.size)
    piece_end = end - 1 if is_separator[end - 1] else end
    pieces.append(stream[start:piece_end])
    start = end

  input_ids_NxL = np.full(
      (len(pieces), max_seq_len), tokenizer_lib.PAD_ID, dtype=np.int32
  )
  for row, piece in enumerate(pieces):
    input_ids_NxL[row, 0] = tokenizer_lib.BOS_ID
    input_ids_NxL[row, 1 : piece.size + 1] = piece
    input_ids_NxL[row, piece.size + 1] = tokenizer_lib.EOS_ID
  return input_ids_NxL, attention_mask(input_ids_NxL)


def attention_mask(input_ids: np.ndarray) -> np.ndarray:
  """Returns int32 ones on tokens and zeros on `<pad>`."""
  return (input_ids != tokenizer_lib.PAD_ID).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TokenMasker:
  """RoBERTa's masking of the tokens to predict.

  In each row, `mask_rate` of the maskable positions (every position that
  does not contain a special token such as `<s>` or `<pad>`) become
  prediction targets. The count is
  `floor(mask_rate * num_maskable + u)` with u uniform in [0, 1), so its mean
  is exactly `mask_rate * num_maskable` even in short rows, and the targets
  are drawn without replacement. Each target's input is replaced by `<mask>`
  with probability `mask_token_rate`, by a random regular token (uniform over
  the ids from `NUM_SPECIAL_TOKENS` to `vocab_size - 1`) with probability
  `random_token_rate`, and left unchanged otherwise.

  Attributes:
    vocab_size: number of tokens; random replacements are below it.
    mask_rate: fraction of maskable positions that become targets.
    mask_token_rate: fraction of targets replaced by `<mask>`.
    random_token_rate: fraction of targets replaced by a random token.

  Example:
    masker = TokenMasker(vocab_size=8192)
    batch = masker(input_ids_BxL, np.random.default_rng(0))
  """

  vocab_size: int
  mask_rate: float = 0.15
  mask_token_rate: float = 0.8
  random_token_rate: float = 0.1

  def __post_init__(self):
    if self.vocab_size <= tokenizer_lib.NUM_SPECIAL_TOKENS:
      raise ValueError(
          f"vocab_size must exceed the {tokenizer_lib.NUM_SPECIAL_TOKENS}"
          f" special tokens, got {self.vocab_size}"
      )
    for name in ("mask_rate", "mask_token_rate", "random_token_rate"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    if self.mask_token_rate + self.random_token_rate > 1.0:
      raise ValueError(
          "mask_token_rate + random_token_rate must be at most 1, got"
          f" {self.mask_token_rate} + {self.random_token_rate}"
      )

  def __call__(
      self, input_ids_BxL: np.ndarray, rng: np.random.Generator
  ) -> Batch:
    """Returns the batch dict for `input_ids_BxL`, drawing from `rng`."""
    targets_BxL = np.asarray(input_ids_BxL, dtype=np.int32)
    if targets_BxL.ndim != 2:
      raise ValueError(
          f"input_ids must have shape [batch, length], got {targets_BxL.shape}"
      )
    batch_size, _ = targets_BxL.shape

    # Special ids are exactly those below NUM_SPECIAL_TOKENS, <pad> included.
    maskable_BxL = targets_BxL >= tokenizer_lib.NUM_SPECIAL_TOKENS
    num_maskable_B = maskable_BxL.sum(axis=1)
    num_targets_B = np.floor(
        self.mask_rate * num_maskable_B + rng.random(batch_size)
    ).astype(np.int64)
    num_targets_B = np.minimum(num_targets_B, num_maskable_B)

    # The positions with the smallest random keys become targets, and
    # unmaskable positions get keys above every maskable one.
    keys_BxL = np.where(maskable_BxL, rng.random(targets_BxL.shape), 2.0)
    ranks_BxL = np.argsort(np.argsort(keys_BxL, axis=1), axis=1)
    is_target_BxL = ranks_BxL < num_targets_B[:, None]

    choice_BxL = rng.random(targets_BxL.shape)
    use_mask_BxL = is_target_BxL & (choice_BxL < self.mask_token_rate)
    use_random_BxL = (
        is_target_BxL
        & (choice_BxL >= self.mask_token_rate)
        & (choice_BxL < self.mask_token_rate + self.random_token_rate)
    )
    random_ids_BxL = rng.integers(
        tokenizer_lib.NUM_SPECIAL_TOKENS,
        self.vocab_size,
        size=targets_BxL.shape,
        dtype=np.int32,
    )

    input_ids_BxL = np.where(use_mask_BxL, tokenizer_lib.MASK_ID, targets_BxL)
    input_ids_BxL = np.where(use_random_BxL, random_ids_BxL, input_ids_BxL)
    return {
        "input_ids": input_ids_BxL.astype(np.int32),
        "attention_mask": attention_mask(targets_BxL),
        "targets": targets_BxL,
        "weights": is_target_BxL.astype(np.float32),
    }


def _generator(*entropy: int) -> np.random.Generator:
  return np.random.default_rng([int(value) for value in entropy])


def _check_rows(input_ids_NxL: np.ndarray, name: str) -> np.ndarray:
  input_ids_NxL = np.asarray(input_ids_NxL, dtype=np.int32)
  if input_ids_NxL.ndim != 2:
    raise ValueError(
        f"{name} must have shape [rows, length], got {input_ids_NxL.shape}"
    )
  return input_ids_NxL


def _check_batch_size(batch_size: int) -> None:
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")


class TrainIterator:
  """Infinite iterator over masked training batches.

  Every epoch visits the rows in a new permutation drawn from
  `(seed, epoch)`. Batches run across epoch boundaries, so no row is dropped
  and any number of rows works with any batch size. The masking of a batch
  is drawn from `(seed, epoch, index)` at its first row, so `get_state()`
  and `set_state()` resume exactly the batches an uninterrupted run yields.

  Example:
    train_iter = TrainIterator(input_ids_NxL, 32, TokenMasker(8192), seed=0)
    batch = next(train_iter)
    state = train_iter.get_state()  # Save it with the model checkpoint.
  """

  def __init__(
      self,
      input_ids_NxL: np.ndarray,
      batch_size: int,
      masker: TokenMasker,
      seed: int,
  ):
    """Creates the iterator at the start of epoch 0.

    Args:
      input_ids_NxL: packed rows from `pack_documents`.
      batch_size: rows per batch.
      masker: the masking of each batch.
      seed: seed of the shuffling and the masking.
    """
    self._input_ids_NxL = _check_rows(input_ids_NxL, "input_ids_NxL")
    if self._input_ids_NxL.shape[0] == 0:
      raise ValueError(
          "the training data has no rows; check that the training documents"
          " are not empty"
      )
    _check_batch_size(batch_size)
    self._batch_size = batch_size
    self._masker = masker
    self._seed = seed
    self._epoch = 0
    self._index = 0
    self._permutation_epoch = None
    self._permutation = None

  @property
  def num_rows(self) -> int:
    return self._input_ids_NxL.shape[0]

  @property
  def masker(self) -> TokenMasker:
    return self._masker

  def get_state(self) -> dict[str, np.ndarray]:
    """Returns the position of the next batch as int64 numpy scalars.

    The dict is a pytree of arrays that an orbax checkpoint can store. The
    resumed iterator must have the same rows, batch size, masker and seed.
    """
    return {"epoch": np.int64(self._epoch), "index": np.int64(self._index)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Moves to a position returned by `get_state`."""
    missing = [key for key in ("epoch", "index") if key not in state]
    if missing:
      raise ValueError(
          f"iterator state is missing {missing}, got keys {sorted(state)};"
          " pass a dict returned by get_state"
      )
    epoch = int(np.asarray(state["epoch"]))
    index = int(np.asarray(state["index"]))
    if epoch < 0 or not 0 <= index < self.num_rows:
      raise ValueError(
          f"iterator state epoch={epoch}, index={index} is invalid for"
          f" {self.num_rows} rows; it must come from an iterator over the"
          " same data"
      )
    self._epoch = epoch
    self._index = index

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    if self._permutation_epoch != epoch:
      rng = _generator(self._seed, _SHUFFLE_STREAM, epoch)
      self._permutation = rng.permutation(self.num_rows)
      self._permutation_epoch = epoch
    return self._permutation

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> Batch:
    mask_rng = _generator(
        self._seed, _TRAIN_MASK_STREAM, self._epoch, self._index
    )

    rows = []
    num_needed = self._batch_size
    while num_needed:
      permutation = self._epoch_permutation(self._epoch)
      epoch_rows = permutation[self._index : self._index + num_needed]
      rows.append(epoch_rows)
      num_needed -= epoch_rows.size
      self._index += epoch_rows.size
      if self._index == self.num_rows:
        self._epoch += 1
        self._index = 0
        logging.info("Starting training epoch %d.", self._epoch)

    return self._masker(self._input_ids_NxL[np.concatenate(rows)], mask_rng)


class EvalBatches:
  """Masked validation batches that are the same in every evaluation.

  Each iteration visits the rows once in order, and the masking of batch i
  is drawn from `(seed, i)`, so every evaluation scores the same targets.
  The last batch is filled up to `batch_size` with rows `<s> </s> <pad>...`
  whose weights are all zero, so every batch has the same shape and the
  filler rows still attend to two tokens.
  """

  def __init__(
      self,
      input_ids_NxL: np.ndarray,
      batch_size: int,
      masker: TokenMasker,
      seed: int,
  ):
    self._input_ids_NxL = _check_rows(input_ids_NxL, "input_ids_NxL")
    _check_batch_size(batch_size)
    self._batch_size = batch_size
    self._masker = masker
    self._seed = seed

  @property
  def num_rows(self) -> int:
    return self._input_ids_NxL.shape[0]

  def __len__(self) -> int:
    return -(-self.num_rows // self._batch_size)

  def __iter__(self) -> Iterator[Batch]:
    max_seq_len = self._input_ids_NxL.shape[1]
    for batch_index in range(len(self)):
      start = batch_index * self._batch_size
      input_ids_BxL = self._input_ids_NxL[start : start + self._batch_size]
      num_real_rows = input_ids_BxL.shape[0]

      if num_real_rows < self._batch_size:
        filler_BxL = np.full(
            (self._batch_size - num_real_rows, max_seq_len),
            tokenizer_lib.PAD_ID,
            dtype=np.int32,
        )
        filler_BxL[:, 0] = tokenizer_lib.BOS_ID
        filler_BxL[:, 1] = tokenizer_lib.EOS_ID
        input_ids_BxL = np.concatenate([input_ids_BxL, filler_BxL])

      rng = _generator(self._seed, _EVAL_MASK_STREAM, batch_index)
      yield self._masker(input_ids_BxL, rng)


def token_counts(input_ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """Returns how often each id occurs in `input_ids`, as `[vocab_size]` ints."""
  ids = np.asarray(input_ids).reshape(-1)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(
        f"token ids must be in [0, {vocab_size}), got the range"
        f" [{ids.min()}, {ids.max()}]"
    )
  return np.bincount(ids, minlength=vocab_size)


def most_frequent_token_accuracy(
    train_input_ids: np.ndarray, eval_batches: Iterable[Batch]
) -> float:
  """Returns the accuracy of always predicting the most frequent token.

  The token is the most frequent regular token (not a special token, since
  those are never targets) in the training rows, the smallest id on a tie.
  The accuracy is over the targets of `eval_batches`, weighted by
  "weights". It is the baseline that a masked-LM must beat to show it learns
  more than the unigram mode. Returns NaN if there are no targets.
  """
  ids = np.asarray(train_input_ids).reshape(-1)
  regular_ids = ids[ids >= tokenizer_lib.NUM_SPECIAL_TOKENS]
  if regular_ids.size == 0:
    raise ValueError(
        "the training rows contain no regular tokens to count; check that"
        " the training documents are not empty"
    )
  most_frequent_id = int(np.argmax(np.bincount(regular_ids)))

  num_correct = 0.0
  num_targets = 0.0
  for batch in eval_batches:
    weights_BxL = batch["weights"]
    is_correct_BxL = batch["targets"] == most_frequent_id
    num_correct += float(np.sum(weights_BxL * is_correct_BxL))
    num_targets += float(np.sum(weights_BxL))
  if num_targets == 0:
    return float("nan")
  return num_correct / num_targets


@dataclasses.dataclass
class Datasets:
  """Everything the training loop reads from the input pipeline.

  Attributes:
    tokenizer: the tokenizer of the corpus.
    train_iter: infinite masked training batches.
    eval_batches: masked validation batches, the same in every evaluation.
    train_input_ids: packed training rows, `[N_train, max_seq_len]`.
    valid_input_ids: packed validation rows, `[N_valid, max_seq_len]`.
  """

  tokenizer: tokenizers.Tokenizer
  train_iter: TrainIterator
  eval_batches: EvalBatches
  train_input_ids: np.ndarray
  valid_input_ids: np.ndarray


def create_datasets(
    corpus_spec: corpus.CorpusSpec | Mapping[str, Any] | Any,
    workdir: str | os.PathLike[str],
    *,
    vocab_size: int,
    max_seq_len: int,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    tokenizer_path: str | os.PathLike[str] | None = None,
    masker: TokenMasker | None = None,
    tokenizer_min_frequency: int = 2,
) -> Datasets:
  """Loads the corpus, gets the tokenizer and builds both iterators.

  Args:
    corpus_spec: the corpus to read, see `corpus.load_corpus`.
    workdir: directory for `tokenizer.json`, see `tokenizer.get_tokenizer`.
    vocab_size: number of tokens.
    max_seq_len: row length.
    batch_size: rows per training batch.
    eval_batch_size: rows per validation batch.
    seed: seed of the shuffling and the masking.
    tokenizer_path: an existing `tokenizer.json` to use.
    masker: the masking; RoBERTa's 15% with 80/10/10 if None.
    tokenizer_min_frequency: minimum pair count for a BPE merge when a
      tokenizer is trained.

  Returns:
    The tokenizer, the iterators and the packed rows.
  """
  train_docs, valid_docs = corpus.load_corpus(corpus_spec)
  tokenizer = tokenizer_lib.get_tokenizer(
      workdir, train_docs, vocab_size, tokenizer_path, tokenizer_min_frequency
  )
  if masker is None:
    masker = TokenMasker(vocab_size=vocab_size)

  train_input_ids, _ = pack_documents(
      tokenize_documents(tokenizer, train_docs), max_seq_len
  )
  valid_input_ids, _ = pack_documents(
      tokenize_documents(tokenizer, valid_docs), max_seq_len
  )
  logging.info(
      "Packed %d training and %d validation rows of %d tokens.",
      train_input_ids.shape[0],
      valid_input_ids.shape[0],
      max_seq_len,
  )

  return Datasets(
      tokenizer=tokenizer,
      train_iter=TrainIterator(train_input_ids, batch_size, masker, seed),
      eval_batches=EvalBatches(valid_input_ids, eval_batch_size, masker, seed),
      train_input_ids=train_input_ids,
      valid_input_ids=valid_input_ids,
  )
