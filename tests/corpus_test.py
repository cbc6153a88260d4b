# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Tests of the corpus readers and the default Python documentation corpus."""

import hashlib
import json
import os
import subprocess
import sys

import ml_collections
import pyarrow
import pyarrow.ipc
import pyarrow.parquet
import pytest

from train import corpus

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return str(path)


def _digest(documents):
  return hashlib.sha256("\0".join(documents).encode()).hexdigest()


@pytest.fixture(scope="module")
def python_docs():
  return corpus.load_corpus({"kind": "python_docs"})


# Text files.


def test_text_glob_one_document_per_file(tmp_path):
  _write(tmp_path / "b.txt", "second file\n")
  _write(tmp_path / "a.txt", "first file\n\nstill first\n")
  _write(tmp_path / "c.md", "not matched")

  documents = corpus.read_text_files([str(tmp_path / "*.txt")])

  assert documents == ["first file\n\nstill first", "second file"]


def test_text_recursive_glob(tmp_path):
  _write(tmp_path / "x" / "deep" / "a.txt", "deep")
  _write(tmp_path / "top.txt", "top")

  documents = corpus.read_text_files([str(tmp_path / "**" / "*.txt")])

  assert documents == ["top", "deep"]


def test_text_blank_line_split(tmp_path):
  path = _write(
      tmp_path / "a.txt",
      "one\nline two\n\n\n  \ntwo\n\nthree\n   \n",
  )

  documents = corpus.read_text_files([path], split_on_blank_lines=True)

  assert documents == ["one\nline two", "two", "three"]


def test_text_skips_empty_file(tmp_path):
  _write(tmp_path / "a.txt", "")
  _write(tmp_path / "b.txt", "text")

  documents = corpus.read_text_files([str(tmp_path / "*.txt")])

  assert documents == ["text"]


def test_text_missing_path(tmp_path):
  missing = str(tmp_path / "missing.txt")

  with pytest.raises(FileNotFoundError, match="missing.txt") as error:
    corpus.read_text_files([missing])

  assert "check the path" in str(error.value)


def test_text_glob_matches_nothing(tmp_path):
  pattern = str(tmp_path / "*.nothing")

  with pytest.raises(FileNotFoundError, match=r"\*\.nothing"):
    corpus.read_text_files([pattern])


def test_text_directory_rejected(tmp_path):
  with pytest.raises(ValueError, match="glob pattern"):
    corpus.read_text_files([str(tmp_path)])


def test_text_invalid_utf8(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"ok \xff\xfe bad")

  with pytest.raises(ValueError, match="bad.txt is not valid UTF-8"):
    corpus.read_text_files([str(path)])


# JSON Lines.


def test_jsonl_text_field(tmp_path):
  lines = [
      json.dumps({"body": "first", "id": 1}),
      "",
      json.dumps({"body": "second", "id": 2}),
  ]
  path = _write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")

  documents = corpus.read_jsonl_files([path], "body")

  assert documents == ["first", "second"]


def test_jsonl_skips_null(tmp_path):
  lines = [json.dumps({"text": None}), json.dumps({"text": "kept"})]
  path = _write(tmp_path / "a.jsonl", "\n".join(lines))

  assert corpus.read_jsonl_files([path], "text") == ["kept"]


def test_jsonl_missing_field(tmp_path):
  lines = [json.dumps({"text": "ok"}), json.dumps({"body": "no text"})]
  path = _write(tmp_path / "a.jsonl", "\n".join(lines))

  with pytest.raises(ValueError, match="a.jsonl:2: missing text field") as e:
    corpus.read_jsonl_files([path], "text")

  assert "['body']" in str(e.value)


def test_jsonl_invalid_json(tmp_path):
  path = _write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": \n')

  with pytest.raises(ValueError, match="a.jsonl:2: invalid JSON"):
    corpus.read_jsonl_files([path], "text")


def test_jsonl_non_string_field(tmp_path):
  path = _write(tmp_path / "a.jsonl", '{"text": 3}\n')

  with pytest.raises(ValueError, match="a.jsonl:1: text field 'text'"):
    corpus.read_jsonl_files([path], "text")


def test_jsonl_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="none.jsonl"):
    corpus.read_jsonl_files([str(tmp_path / "none.jsonl")], "text")


# Hugging Face datasets, Parquet and Arrow.


def test_hf_disk_dataset(tmp_path):
  datasets = pytest.importorskip("datasets")
  dataset = datasets.Dataset.from_dict(
      {"content": ["alpha", None, "beta"], "label": [0, 1, 2]}
  )
  dataset.save_to_disk(str(tmp_path / "saved"))

  documents = corpus.read_hf_datasets([str(tmp_path / "saved")], "content")

  assert documents == ["alpha", "beta"]


def test_hf_disk_dataset_dict(tmp_path):
  datasets = pytest.importorskip("datasets")
  dataset_dict = datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"text": ["train doc"]}),
      "validation": datasets.Dataset.from_dict({"text": ["valid doc"]}),
  })
  dataset_dict.save_to_disk(str(tmp_path / "saved"))

  documents = corpus.read_hf_datasets(
      [str(tmp_path / "saved")], "text", dataset_split="validation"
  )

  assert documents == ["valid doc"]


def test_hf_disk_missing_split(tmp_path):
  datasets = pytest.importorskip("datasets")
  datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"text": ["doc"]}),
  }).save_to_disk(str(tmp_path / "saved"))

  with pytest.raises(ValueError, match="no split 'test'"):
    corpus.read_hf_datasets([str(tmp_path / "saved")], "text", "test")


def test_hf_disk_missing_column(tmp_path):
  datasets = pytest.importorskip("datasets")
  datasets.Dataset.from_dict({"body": ["doc"]}).save_to_disk(
      str(tmp_path / "saved")
  )

  with pytest.raises(ValueError, match="no column 'text'"):
    corpus.read_hf_datasets([str(tmp_path / "saved")], "text")


def test_hf_disk_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing_saved"):
    corpus.read_hf_datasets([str(tmp_path / "nothing_saved")], "text")


def test_hf_disk_not_a_dataset(tmp_path):
  (tmp_path / "empty").mkdir()

  with pytest.raises(ValueError, match="not a dataset written by"):
    corpus.read_hf_datasets([str(tmp_path / "empty")], "text")


def test_parquet_column(tmp_path):
  table = pyarrow.table({"text": ["p1", "p2"], "n": [1, 2]})
  pyarrow.parquet.write_table(table, str(tmp_path / "b.parquet"))
  pyarrow.parquet.write_table(
      pyarrow.table({"text": ["p0"], "n": [0]}), str(tmp_path / "a.parquet")
  )

  documents = corpus.read_parquet_files([str(tmp_path / "*.parquet")], "text")

  assert documents == ["p0", "p1", "p2"]


def test_parquet_missing_column(tmp_path):
  path = str(tmp_path / "a.parquet")
  pyarrow.parquet.write_table(pyarrow.table({"body": ["x"]}), path)

  with pytest.raises(ValueError, match="a.parquet has no column 'text'"):
    corpus.read_parquet_files([path], "text")


def test_parquet_invalid_file(tmp_path):
  path = _write(tmp_path / "a.parquet", "not parquet")

  with pytest.raises(ValueError, match="cannot read Parquet file"):
    corpus.read_parquet_files([path], "text")


def test_arrow_file_format(tmp_path):
  table = pyarrow.table({"text": ["f1", "f2"]})
  path = str(tmp_path / "a.arrow")
  with pyarrow.ipc.new_file(path, table.schema) as writer:
    writer.write_table(table)

  assert corpus.read_arrow_files([path], "text") == ["f1", "f2"]


def test_arrow_stream_format(tmp_path):
  table = pyarrow.table({"text": ["s1", "s2"]})
  path = str(tmp_path / "a.arrow")
  with pyarrow.ipc.new_stream(path, table.schema) as writer:
    writer.write_table(table)

  assert corpus.read_arrow_files([path], "text") == ["s1", "s2"]


def test_arrow_invalid_file(tmp_path):
  path = _write(tmp_path / "a.arrow", "not arrow")

  with pytest.raises(ValueError, match="cannot read Arrow file"):
    corpus.read_arrow_files([path], "text")


# Specs and the split.


def test_load_corpus_jsonl_spec(tmp_path):
  lines = [json.dumps({"text": f"document {i}"}) for i in range(20)]
  _write(tmp_path / "a.jsonl", "\n".join(lines))
  spec = {
      "kind": "jsonl",
      "paths": str(tmp_path / "*.jsonl"),
      "validation_fraction": 0.25,
  }

  train_docs, valid_docs = corpus.load_corpus(spec)

  assert len(valid_docs) == 5
  assert len(train_docs) == 15
  assert sorted(train_docs + valid_docs) == sorted(
      f"document {i}" for i in range(20)
  )


def test_load_corpus_config_dict(tmp_path):
  _write(tmp_path / "a.txt", "one\n\ntwo\n\nthree")
  config = ml_collections.ConfigDict({
      "kind": "text",
      "paths": [str(tmp_path / "a.txt")],
      "split_on_blank_lines": True,
      "validation_fraction": 0.0,
  })

  train_docs, valid_docs = corpus.load_corpus(config)

  assert train_docs == ["one", "two", "three"]
  assert valid_docs == []


def test_load_corpus_no_documents(tmp_path):
  _write(tmp_path / "a.txt", "  \n")

  with pytest.raises(ValueError, match="contains no documents"):
    corpus.load_corpus({"kind": "text", "paths": str(tmp_path / "a.txt")})


def test_spec_unknown_kind():
  with pytest.raises(ValueError, match="'csv'"):
    corpus.CorpusSpec(kind="csv", paths="a.csv")


def test_spec_unknown_field():
  with pytest.raises(ValueError, match=r"\['path'\]"):
    corpus.make_corpus_spec({"kind": "text", "path": "a.txt"})


def test_spec_needs_paths():
  with pytest.raises(ValueError, match="needs at least one path"):
    corpus.CorpusSpec(kind="jsonl")


@pytest.mark.parametrize("paths", [None, "", [""]])
def test_spec_unset_paths(paths):
  with pytest.raises(ValueError, match="needs at least one path"):
    corpus.CorpusSpec(kind="text", paths=paths)


def test_spec_invalid_fraction():
  with pytest.raises(ValueError, match="validation_fraction"):
    corpus.CorpusSpec(validation_fraction=1.0)


def test_split_keeps_order():
  documents = [f"doc {i}" for i in range(50)]

  train_docs, valid_docs = corpus.split_documents(documents, 0.2, seed=0)

  assert train_docs == [d for d in documents if d in train_docs]
  assert valid_docs == [d for d in documents if d in valid_docs]


def test_split_independent_of_order():
  documents = [f"doc {i}" for i in range(50)]

  _, valid_docs = corpus.split_documents(documents, 0.2, seed=0)
  _, valid_reversed = corpus.split_documents(documents[::-1], 0.2, seed=0)

  assert sorted(valid_docs) == sorted(valid_reversed)


def test_split_depends_on_seed():
  documents = [f"doc {i}" for i in range(50)]

  _, valid_seed0 = corpus.split_documents(documents, 0.2, seed=0)
  _, valid_seed1 = corpus.split_documents(documents, 0.2, seed=1)

  assert valid_seed0 != valid_seed1


def test_split_small_corpus_keeps_both():
  train_docs, valid_docs = corpus.split_documents(["a", "b"], 0.01, seed=0)

  assert len(train_docs) == 1
  assert len(valid_docs) == 1


# The default corpus.


def test_python_docs_size(python_docs):
  train_docs, valid_docs = python_docs
  num_bytes = sum(len(d.encode("utf-8")) for d in train_docs + valid_docs)

  assert num_bytes > 1_000_000
  assert len(train_docs) + len(valid_docs) > 300


def test_python_docs_split_disjoint(python_docs):
  train_docs, valid_docs = python_docs

  assert valid_docs
  assert not set(train_docs) & set(valid_docs)


def test_python_docs_no_duplicates(python_docs):
  train_docs, valid_docs = python_docs
  documents = train_docs + valid_docs

  assert len(set(documents)) == len(documents)


def test_python_docs_has_help_topics(python_docs):
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  train_docs, valid_docs = python_docs
  documents = set(train_docs + valid_docs)

  assert topics.topics["assert"].strip() in documents


def test_python_docs_repeatable(python_docs):
  assert corpus.load_corpus({"kind": "python_docs"}) == python_docs


def test_python_docs_same_in_new_process(python_docs):
  # A new interpreter has a new string hash seed, which would reorder any
  # iteration over a set of strings.
  script = (
      "import hashlib\n"
      "from train import corpus\n"
      "train_docs, valid_docs = corpus.load_corpus({'kind': 'python_docs'})\n"
      "for docs in (train_docs, valid_docs):\n"
      "  print(hashlib.sha256('\\0'.join(docs).encode()).hexdigest())\n"
  )
  environment = dict(os.environ, PYTHONHASHSEED="12345")

  output = subprocess.run(
      [sys.executable, "-c", script],
      cwd=REPO_ROOT,
      env=environment,
      capture_output=True,
      text=True,
      check=True,
      timeout=120,
  ).stdout.split()

  train_docs, valid_docs = python_docs
  assert output[0] == _digest(train_docs)
  assert output[1] == _digest(valid_docs)
