# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the byte-level BPE tokenizer and its special tokens."""

import os

from pydoc_data import topics
import pytest
import tokenizers
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from train import tokenizer as tokenizer_lib

VOCAB_SIZE = 400


@pytest.fixture(scope="module")
def documents():
  return [topics.topics[name] for name in sorted(topics.topics)[:20]]


@pytest.fixture(scope="module")
def tokenizer(documents):
  return tokenizer_lib.train_tokenizer(documents, VOCAB_SIZE)


def test_special_token_ids(tokenizer):
  for token_id, token in enumerate(tokenizer_lib.SPECIAL_TOKENS):
    assert tokenizer.token_to_id(token) == token_id


def test_special_id_constants():
  ids = (
      tokenizer_lib.BOS_ID,
      tokenizer_lib.PAD_ID,
      tokenizer_lib.EOS_ID,
      tokenizer_lib.UNK_ID,
      tokenizer_lib.MASK_ID,
  )

  assert ids == (0, 1, 2, 3, 4)


def test_vocab_size_exact(tokenizer):
  assert tokenizer.get_vocab_size() == VOCAB_SIZE


def test_round_trip_plain_text(tokenizer):
  text = "Tokenizers split text into bytes, then merge: héllo wörld 日本."

  ids = tokenizer.encode(text, add_special_tokens=False).ids

  assert tokenizer_lib.UNK_ID not in ids
  assert tokenizer.decode(ids) == text


def test_encode_adds_bos_and_eos(tokenizer):
  ids = tokenizer.encode("the value").ids

  assert ids[0] == tokenizer_lib.BOS_ID
  assert ids[-1] == tokenizer_lib.EOS_ID


def test_mask_is_one_token(tokenizer):
  ids = tokenizer.encode(
      "The statement is <mask> here.", add_special_tokens=False
  ).ids

  assert ids.count(tokenizer_lib.MASK_ID) == 1
  assert "<" not in [tokenizer.id_to_token(i) for i in ids]


def test_mask_absorbs_space(tokenizer):
  encoding = tokenizer.encode("is <mask> here", add_special_tokens=False)
  mask_position = encoding.ids.index(tokenizer_lib.MASK_ID)

  # Like RoBERTa's, the space before <mask> belongs to the mask token, so
  # the previous token is "is" without a trailing space token "Ġ".
  assert encoding.tokens[mask_position - 1] == "is"


def test_mask_decodes_back(tokenizer):
  ids = tokenizer.encode("is <mask> here", add_special_tokens=False).ids

  assert tokenizer.decode(ids, skip_special_tokens=False) == "is<mask> here"


def test_training_deterministic(documents, tokenizer):
  retrained = tokenizer_lib.train_tokenizer(documents, VOCAB_SIZE)

  assert retrained.to_str() == tokenizer.to_str()


def test_vocab_below_alphabet(documents):
  with pytest.raises(ValueError, match="at least 261"):
    tokenizer_lib.train_tokenizer(documents, 100)


def test_vocab_too_large_for_corpus():
  with pytest.raises(ValueError, match="only .* tokens at min_frequency 2"):
    tokenizer_lib.train_tokenizer(["tiny corpus tiny corpus"], 5000)


def test_get_tokenizer_saves(tmp_path, documents):
  workdir = tmp_path / "workdir"

  tokenizer_lib.get_tokenizer(workdir, documents, VOCAB_SIZE)

  assert os.path.isfile(workdir / tokenizer_lib.TOKENIZER_FILENAME)


def test_get_tokenizer_reuses(tmp_path, documents):
  first = tokenizer_lib.get_tokenizer(tmp_path, documents, VOCAB_SIZE)

  # Other documents would train another tokenizer, so equality shows reuse.
  second = tokenizer_lib.get_tokenizer(tmp_path, documents[:3], VOCAB_SIZE)

  assert second.to_str() == first.to_str()


def test_reuse_other_vocab_size(tmp_path, documents):
  tokenizer_lib.get_tokenizer(tmp_path, documents, VOCAB_SIZE)

  with pytest.raises(ValueError, match="has 400 tokens but vocab_size is 500"):
    tokenizer_lib.get_tokenizer(tmp_path, documents, 500)


def test_tokenizer_path(tmp_path, tokenizer, documents):
  path = tmp_path / "given.json"
  tokenizer.save(str(path))

  loaded = tokenizer_lib.get_tokenizer(
      tmp_path / "workdir", documents, VOCAB_SIZE, tokenizer_path=path
  )

  assert loaded.to_str() == tokenizer.to_str()
  assert not os.path.exists(tmp_path / "workdir")


def test_tokenizer_path_missing(tmp_path, documents):
  path = tmp_path / "absent.json"

  with pytest.raises(FileNotFoundError, match="absent.json not found"):
    tokenizer_lib.get_tokenizer(
        tmp_path, documents, VOCAB_SIZE, tokenizer_path=path
    )


def test_tokenizer_path_not_json(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text("{not json", encoding="utf-8")

  with pytest.raises(ValueError, match="cannot load tokenizer file"):
    tokenizer_lib.load_tokenizer(path)


def test_wrong_special_tokens(tmp_path, documents):
  other = tokenizers.Tokenizer(models.BPE())
  other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(
      vocab_size=VOCAB_SIZE,
      special_tokens=["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  other.train_from_iterator(documents, trainer)
  path = tmp_path / "other.json"
  other.save(str(path))

  with pytest.raises(ValueError, match="'\\[CLS\\]' at id 0"):
    tokenizer_lib.load_tokenizer(path, VOCAB_SIZE)
