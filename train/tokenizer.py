# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Byte-level BPE tokenizer with RoBERTa's special tokens.

The tokenizer is a Hugging Face `tokenizers.Tokenizer` set up like RoBERTa's:
no normalizer, a byte-level pre-tokenizer without a prefix space, a
byte-level decoder, and the special tokens `<s> <pad> </s> <unk> <mask>`
with ids 0 to 4. Because every byte is in the initial alphabet, `<unk>` is
never produced. As in RoBERTa, `<mask>` absorbs the space before it, so
"the <mask>." encodes as ["the", "<mask>", "."] and a word predicted at the
mask carries its own leading space.

`Tokenizer.encode(text)` wraps the tokens in `<s> ... </s>` like RoBERTa's
tokenizer, and `encode(text, add_special_tokens=False)` returns the bare
tokens.
"""

import os
from typing import Iterable, Sequence

from absl import logging
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS_ID = 0  # <s>, the first token of every packed sequence.
PAD_ID = 1  # <pad>
EOS_ID = 2  # </s>, ends a sequence and separates documents.
UNK_ID = 3  # <unk>
MASK_ID = 4  # <mask>
# Special tokens have the ids below this; every id at or above it is a
# regular token.
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)

TOKENIZER_FILENAME = "tokenizer.json"

# The 256 byte tokens of the initial alphabet plus the special tokens.
MIN_VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


def _special_added_tokens() -> list[tokenizers.AddedToken]:
  added_tokens = []
  for token in SPECIAL_TOKENS:
    lstrip = token == "<mask>"
    added_tokens.append(
        tokenizers.AddedToken(
            token, lstrip=lstrip, rstrip=False, normalized=False, special=True
        )
    )
  return added_tokens


def train_tokenizer(
    documents: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> tokenizers.Tokenizer:
  """Trains a byte-level BPE tokenizer on `documents`.

  Args:
    documents: the training documents.
    vocab_size: number of tokens, special tokens and the 256 byte tokens
      included.
    min_frequency: minimum number of occurrences of a pair to be merged.

  Returns:
    A tokenizer with exactly `vocab_size` tokens.

  Raises:
    ValueError: `vocab_size` is below `MIN_VOCAB_SIZE`, or the documents do
      not contain enough frequent pairs to learn `vocab_size` tokens.
  """
  if vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(
        f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes and"
        f" {NUM_SPECIAL_TOKENS} special tokens), got {vocab_size}"
    )

  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.RobertaProcessing(
      (SPECIAL_TOKENS[EOS_ID], EOS_ID),
      (SPECIAL_TOKENS[BOS_ID], BOS_ID),
      add_prefix_space=False,
  )
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      min_frequency=min_frequency,
      special_tokens=_special_added_tokens(),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tokenizer.train_from_iterator(documents, trainer)

  # The trainer stops early when no pair occurs `min_frequency` times. A
  # smaller vocabulary than requested would not match the model's embedding
  # table, and a reused tokenizer could not be checked against the config.
  if tokenizer.get_vocab_size() != vocab_size:
    raise ValueError(
        f"the training documents contain enough frequent pairs for only"
        f" {tokenizer.get_vocab_size()} tokens at min_frequency"
        f" {min_frequency}, but vocab_size is {vocab_size}; lower the"
        " vocabulary size (config.model.vocab_size) or the minimum pair"
        " count (config.tokenizer_min_frequency), or use a larger corpus"
    )
  check_tokenizer(tokenizer, vocab_size, "the trained tokenizer")
  return tokenizer


def check_tokenizer(
    tokenizer: tokenizers.Tokenizer, vocab_size: int | None, source: str
) -> None:
  """Raises ValueError unless the special tokens and vocabulary size match.

  Args:
    tokenizer: the tokenizer to check.
    vocab_size: the expected number of tokens, or None to skip that check.
    source: where the tokenizer comes from, for the error message.
  """
  actual_vocab_size = tokenizer.get_vocab_size()
  if vocab_size is not None and actual_vocab_size != vocab_size:
    raise ValueError(
        f"{source} has {actual_vocab_size} tokens but vocab_size is"
        f" {vocab_size}; set vocab_size to {actual_vocab_size}, or delete"
        " the tokenizer file to train a new one"
    )

  for token_id, token in enumerate(SPECIAL_TOKENS):
    actual_token = tokenizer.id_to_token(token_id)
    if actual_token != token:
      raise ValueError(
          f"{source} has token {actual_token!r} at id {token_id}, but id"
          f" {token_id} must be {token!r}; the special tokens must be"
          f" {SPECIAL_TOKENS} with ids 0 to {NUM_SPECIAL_TOKENS - 1}. Train"
          " a new tokenizer"
      )

  special_tokens = {
      added.content
      for added in tokenizer.get_added_tokens_decoder().values()
      if added.special
  }
  missing = [token for token in SPECIAL_TOKENS if token not in special_tokens]
  if missing:
    raise ValueError(
        f"{source} does not mark {missing} as special tokens, so text could"
        " be split inside them; train a new tokenizer"
    )


def load_tokenizer(
    path: str | os.PathLike[str], vocab_size: int | None = None
) -> tokenizers.Tokenizer:
  """Loads a `tokenizer.json` file and checks it with `check_tokenizer`."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"tokenizer file {path} not found; pass the path of a tokenizer.json"
        " file, or leave the path unset to train a tokenizer"
    )
  try:
    tokenizer = tokenizers.Tokenizer.from_file(path)
  except Exception as error:  # The Rust library raises plain Exceptions.
    raise ValueError(
        f"cannot load tokenizer file {path}: {error}; pass a tokenizer.json"
        " written by tokenizers"
    ) from error
  check_tokenizer(tokenizer, vocab_size, f"tokenizer file {path}")
  return tokenizer


def get_tokenizer(
    workdir: str | os.PathLike[str],
    train_documents: Sequence[str],
    vocab_size: int,
    tokenizer_path: str | os.PathLike[str] | None = None,
    min_frequency: int = 2,
) -> tokenizers.Tokenizer:
  """Loads the tokenizer to use, training and saving it if there is none.

  Args:
    workdir: directory for `tokenizer.json`, created if missing.
    train_documents: documents to train on when no tokenizer exists.
    vocab_size: the expected number of tokens.
    tokenizer_path: an existing `tokenizer.json` to use instead of the one
      in `workdir`.
    min_frequency: minimum pair count for a BPE merge when training.

  Returns:
    The tokenizer at `tokenizer_path` if set, else `workdir/tokenizer.json`
    if it exists, else a new tokenizer trained on `train_documents` and saved
    there. A loaded tokenizer must have `vocab_size` tokens and the special
    tokens at ids 0 to 4, or a ValueError names the file.
  """
  if tokenizer_path is not None:
    logging.info("Loading the tokenizer from %s.", tokenizer_path)
    return load_tokenizer(tokenizer_path, vocab_size)

  path = os.path.join(os.fspath(workdir), TOKENIZER_FILENAME)
  if os.path.exists(path):
    logging.info("Reusing the tokenizer in %s.", path)
    return load_tokenizer(path, vocab_size)

  logging.info(
      "Training a byte-level BPE tokenizer with %d tokens on %d documents.",
      vocab_size,
      len(train_documents),
  )
  tokenizer = train_tokenizer(train_documents, vocab_size, min_frequency)

  # Writing to a temporary name first means an interrupted run never leaves
  # a truncated tokenizer.json behind to be reused.
  os.makedirs(os.fspath(workdir), exist_ok=True)
  temporary_path = f"{path}.tmp.{os.getpid()}"
  tokenizer.save(temporary_path)
  os.replace(temporary_path, path)
  logging.info("Saved the tokenizer to %s.", path)
  return tokenizer
