# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Corpus readers that return lists of document strings.

`load_corpus(spec)` is the entry point. It reads the documents named by a
`CorpusSpec` (or a config with the same fields) and splits them into training
and validation documents. Every reader returns documents in a deterministic
order: files in sorted glob order, lines and rows in file order.

The default kind, "python_docs", needs no download and ships no third-party
text. It is built from the documentation of the running Python interpreter:
the `pydoc_data.topics` help topics and the module, class and function
docstrings of the public standard library modules.
"""

import ast
import collections.abc
import dataclasses
import gc
import glob
import hashlib
import importlib
import inspect
import json
import os
import pathlib
import sys
import sysconfig
import time
from typing import Any, Iterator, Mapping, Sequence
import warnings

from absl import logging

KINDS = ("python_docs", "text", "jsonl", "hf_disk", "parquet", "arrow")

# Standard library packages and subpackages that hold tests, not docs.
_TEST_PACKAGE_NAMES = frozenset({"test", "tests", "idle_test"})

# Compiled modules left out of the default corpus because importing them
# changes process state: importing readline can write terminal escape codes.
_COMPILED_MODULES_NOT_IMPORTED = frozenset({"readline"})

_DOCUMENTED_NODES = (
    ast.Module,
    ast.ClassDef,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """Source, format and validation split of a corpus.

  Attributes:
    kind: one of `KINDS`.
    paths: files, directories ("hf_disk") or glob patterns, as one string or
      a sequence. Unused for "python_docs".
    text_field: JSONL key or dataset column that contains the document text.
    split_on_blank_lines: for "text", whether each blank-line separated block
      is a document. Otherwise each file is one document.
    dataset_split: split to read when a "hf_disk" path contains a
      `DatasetDict`.
    validation_fraction: fraction of the documents held out for validation,
      in [0, 1).
    seed: seed of the hash that picks the validation documents.
  """

  kind: str = "python_docs"
  paths: str | Sequence[str] | None = ()
  text_field: str = "text"
  split_on_blank_lines: bool = False
  dataset_split: str = "train"
  validation_fraction: float = 0.05
  seed: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"corpus kind must be one of {KINDS}, got {self.kind!r}")
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(
          "validation_fraction must be in [0, 1), got"
          f" {self.validation_fraction}"
      )
    if self.kind != "python_docs" and not self.path_list():
      raise ValueError(
          f"corpus kind {self.kind!r} needs at least one path; set paths to"
          " files, directories or glob patterns"
      )

  def path_list(self) -> list[str]:
    """Returns `paths` as a list of strings, without None or empty strings."""
    if self.paths is None:
      return []
    if isinstance(self.paths, (str, os.PathLike)):
      paths = [self.paths]
    else:
      paths = self.paths
    return [os.fspath(path) for path in paths if path]


def make_corpus_spec(spec: CorpusSpec | Mapping[str, Any] | Any) -> CorpusSpec:
  """Builds a `CorpusSpec` from a spec, a mapping or a `ConfigDict`."""
  if isinstance(spec, CorpusSpec):
    return spec
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  if not isinstance(spec, collections.abc.Mapping):
    raise TypeError(
        "corpus spec must be a CorpusSpec, a mapping or a ConfigDict, got"
        f" {type(spec).__name__}"
    )

  known_fields = {field.name for field in dataclasses.fields(CorpusSpec)}
  unknown_fields = sorted(set(spec) - known_fields)
  if unknown_fields:
    raise ValueError(
        f"unknown corpus spec fields {unknown_fields}; the known fields are"
        f" {sorted(known_fields)}"
    )
  return CorpusSpec(**spec)


def load_corpus(
    spec: CorpusSpec | Mapping[str, Any] | Any,
) -> tuple[list[str], list[str]]:
  """Reads the documents of `spec` and returns `(train_docs, valid_docs)`."""
  spec = make_corpus_spec(spec)
  start_time = time.perf_counter()

  paths = spec.path_list()
  if spec.kind == "python_docs":
    documents = python_docs_documents()
  elif spec.kind == "text":
    documents = read_text_files(paths, spec.split_on_blank_lines)
  elif spec.kind == "jsonl":
    documents = read_jsonl_files(paths, spec.text_field)
  elif spec.kind == "hf_disk":
    documents = read_hf_datasets(paths, spec.text_field, spec.dataset_split)
  elif spec.kind == "parquet":
    documents = read_parquet_files(paths, spec.text_field)
  else:
    documents = read_arrow_files(paths, spec.text_field)

  if not documents:
    raise ValueError(
        f"corpus {spec.kind!r} with paths {paths} contains no documents; check"
        " that the files are not empty"
    )

  train_docs, valid_docs = split_documents(
      documents, spec.validation_fraction, spec.seed
  )
  logging.info(
      "Loaded %d training and %d validation documents (%d and %d characters)"
      " of corpus %r in %.2f s.",
      len(train_docs),
      len(valid_docs),
      sum(map(len, train_docs)),
      sum(map(len, valid_docs)),
      spec.kind,
      time.perf_counter() - start_time,
  )
  return train_docs, valid_docs


def split_documents(
    documents: Sequence[str], validation_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
  """Splits documents into training and validation documents by a hash.

  The documents with the smallest `sha256(seed, text)` form the validation
  split, `round(validation_fraction * len(documents))` of them but at least
  one when the fraction is positive and at least two documents exist. A
  document's side depends on its text, not on its position, so adding a
  document moves no other document across the split. Both splits keep the
  input order.

  Args:
    documents: the documents to split.
    validation_fraction: fraction held out for validation, in [0, 1).
    seed: seed mixed into the hash; a new seed draws a new split.

  Returns:
    `(train_docs, valid_docs)`.
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(
        f"validation_fraction must be in [0, 1), got {validation_fraction}"
    )

  num_valid = round(validation_fraction * len(documents))
  if validation_fraction > 0 and len(documents) >= 2:
    num_valid = min(max(num_valid, 1), len(documents) - 1)

  def split_key(index: int) -> tuple[bytes, int]:
    text = f"{seed}\0{documents[index]}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).digest(), index

  ranked = sorted(range(len(documents)), key=split_key)
  valid_indices = frozenset(ranked[:num_valid])

  train_docs = []
  valid_docs = []
  for index, document in enumerate(documents):
    if index in valid_indices:
      valid_docs.append(document)
    else:
      train_docs.append(document)
  return train_docs, valid_docs


def expand_paths(patterns: Sequence[str], want_directories: bool = False):
  """Expands glob patterns into a sorted, duplicate-free list of paths.

  Args:
    patterns: paths or glob patterns; `**` matches across directories.
    want_directories: whether the paths must be directories (saved
      datasets) instead of files.

  Returns:
    The matching paths: each pattern's matches in sorted order, patterns in
    the given order.

  Raises:
    FileNotFoundError: a path does not exist or a pattern matches nothing.
    ValueError: a path is a directory where a file is expected, or the
      other way round.
  """
  expected = "directory" if want_directories else "file"
  paths = []
  for pattern in patterns:
    pattern = os.path.expanduser(pattern)
    if any(char in pattern for char in "*?["):
      matches = sorted(glob.glob(pattern, recursive=True))
      matches = [m for m in matches if os.path.isdir(m) == want_directories]
      if not matches:
        raise FileNotFoundError(
            f"no {expected} matches the corpus pattern {pattern!r}; check the"
            f" pattern, relative patterns start at {os.getcwd()}"
        )
      paths.extend(matches)
      continue

    if not os.path.exists(pattern):
      raise FileNotFoundError(
          f"corpus path {pattern} not found; check the path, relative paths"
          f" start at {os.getcwd()}"
      )
    if os.path.isdir(pattern) != want_directories:
      hint = (
          "pass the directory written by save_to_disk"
          if want_directories
          else f"pass a glob pattern such as {os.path.join(pattern, '*')}"
      )
      raise ValueError(f"corpus path {pattern} is not a {expected}; {hint}")
    paths.append(pattern)

  return list(dict.fromkeys(paths))


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as error:
    raise ValueError(
        f"corpus file {path} is not valid UTF-8 ({error.reason} at byte"
        f" {error.start}); convert it to UTF-8"
    ) from error
  except OSError as error:
    raise OSError(
        f"cannot read corpus file {path}: {error.strerror}; check that it is"
        " a readable file"
    ) from error


def read_text_files(
    patterns: Sequence[str], split_on_blank_lines: bool = False
) -> list[str]:
  """Reads UTF-8 text files as documents.

  Args:
    patterns: paths or glob patterns of the files.
    split_on_blank_lines: whether each block of lines between blank lines is
      a document. Otherwise each file is one document.

  Returns:
    The stripped, non-empty documents in file order.
  """
  documents = []
  for path in expand_paths(patterns):
    text = _read_text(path)
    if split_on_blank_lines:
      blocks = _split_on_blank_lines(text)
    else:
      blocks = [text.strip()]
    documents.extend(block for block in blocks if block)
  return documents


def _split_on_blank_lines(text: str) -> list[str]:
  blocks = []
  lines = []
  for line in text.splitlines():
    if line.strip():
      lines.append(line)
    elif lines:
      blocks.append("\n".join(lines).strip())
      lines = []
  if lines:
    blocks.append("\n".join(lines).strip())
  return blocks


def read_jsonl_files(patterns: Sequence[str], text_field: str) -> list[str]:
  """Reads JSON Lines files with one document per line in `text_field`.

  Blank lines and documents whose field is null are skipped. A line that is
  not a JSON object, lacks the field or has a non-string value raises a
  ValueError naming the file and the line.
  """
  documents = []
  num_null = 0
  for path in expand_paths(patterns):
    text = _read_text(path)
    for line_number, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_number}"

      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(
            f"{where}: invalid JSON ({error.msg}); each line must be one JSON"
            " object"
        ) from error
      if not isinstance(record, dict):
        raise ValueError(
            f"{where}: expected a JSON object, got {type(record).__name__}"
        )
      if text_field not in record:
        raise ValueError(
            f"{where}: missing text field {text_field!r}, the line has keys"
            f" {sorted(record)}; set text_field to the key that contains the"
            " document text"
        )

      value = record[text_field]
      if value is None:
        num_null += 1
        continue
      documents.append(_check_text_value(value, where, text_field))

  if num_null:
    logging.warning(
        "Skipped %d JSONL lines whose %r field is null.", num_null, text_field
    )
  return documents


def _check_text_value(value: Any, where: str, text_field: str) -> str:
  if not isinstance(value, str):
    raise ValueError(
        f"{where}: text field {text_field!r} must be a string, got"
        f" {type(value).__name__}"
    )
  return value


def _column_documents(
    values: Sequence[Any], where: str, text_field: str
) -> list[str]:
  documents = []
  num_null = 0
  for value in values:
    if value is None:
      num_null += 1
      continue
    documents.append(_check_text_value(value, where, text_field))
  if num_null:
    logging.warning(
        "Skipped %d rows of %s whose %r column is null.",
        num_null,
        where,
        text_field,
    )
  return documents


def _check_column(names: Sequence[str], where: str, text_field: str) -> None:
  if text_field not in names:
    raise ValueError(
        f"{where} has no column {text_field!r}, its columns are"
        f" {list(names)}; set text_field to the column that contains the"
        " document text"
    )


def read_hf_datasets(
    paths: Sequence[str], text_field: str, dataset_split: str = "train"
) -> list[str]:
  """Reads Hugging Face datasets written by `save_to_disk`.

  Args:
    paths: directories or glob patterns of saved `Dataset`s or
      `DatasetDict`s.
    text_field: column that contains the document text.
    dataset_split: split to read from a `DatasetDict`.

  Returns:
    The non-null rows of `text_field`, in row order.
  """
  import datasets  # pylint: disable=g-import-not-at-top  # Slow to import.

  documents = []
  for path in expand_paths(paths, want_directories=True):
    try:
      dataset = datasets.load_from_disk(path)
    except FileNotFoundError as error:
      raise ValueError(
          f"{path} is not a dataset written by save_to_disk ({error}); pass"
          " the directory that save_to_disk wrote"
      ) from error

    where = path
    if isinstance(dataset, datasets.DatasetDict):
      if dataset_split not in dataset:
        raise ValueError(
            f"dataset {path} has no split {dataset_split!r}, its splits are"
            f" {list(dataset)}; set dataset_split to one of them"
        )
      dataset = dataset[dataset_split]
      where = f"{path} (split {dataset_split!r})"

    _check_column(dataset.column_names, where, text_field)
    documents.extend(
        _column_documents(list(dataset[text_field]), where, text_field)
    )
  return documents


def read_parquet_files(patterns: Sequence[str], text_field: str) -> list[str]:
  """Reads the `text_field` column of Parquet files, one document per row."""
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet  # pylint: disable=g-import-not-at-top

  documents = []
  for path in expand_paths(patterns):
    # pyarrow reads the file directly, so unlike `Dataset.from_parquet`
    # nothing is written to the Hugging Face cache.
    try:
      schema = pyarrow.parquet.read_schema(path)
      _check_column(schema.names, path, text_field)
      table = pyarrow.parquet.read_table(path, columns=[text_field])
    except pyarrow.ArrowException as error:
      raise ValueError(
          f"cannot read Parquet file {path}: {error}; check that it is a"
          " Parquet file"
      ) from error
    values = table.column(text_field).to_pylist()
    documents.extend(_column_documents(values, path, text_field))
  return documents


def read_arrow_files(patterns: Sequence[str], text_field: str) -> list[str]:
  """Reads the `text_field` column of Arrow IPC files, one document per row.

  Both the IPC file format (Feather v2) and the stream format are read. The
  `data-*.arrow` files inside a `save_to_disk` directory use the stream
  format.
  """
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.ipc  # pylint: disable=g-import-not-at-top

  documents = []
  for path in expand_paths(patterns):
    try:
      table = _read_arrow_table(path)
    except pyarrow.ArrowException as error:
      raise ValueError(
          f"cannot read Arrow file {path}: {error}; check that it is an Arrow"
          " IPC file or stream"
      ) from error
    _check_column(table.column_names, path, text_field)
    values = table.column(text_field).to_pylist()
    documents.extend(_column_documents(values, path, text_field))
  return documents


def _read_arrow_table(path: str):
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.ipc  # pylint: disable=g-import-not-at-top

  try:
    with pyarrow.memory_map(path) as source:
      return pyarrow.ipc.open_file(source).read_all()
  except pyarrow.ArrowInvalid:
    with pyarrow.memory_map(path) as source:
      return pyarrow.ipc.open_stream(source).read_all()


def python_docs_documents() -> list[str]:
  """Builds the default corpus from the running interpreter's documentation.

  The documents, in this order, are:

  * each `pydoc_data.topics` help topic, by topic name;
  * for each public standard library module (names from
    `sys.stdlib_module_names` that do not start with "_", and their
    submodules, test packages left out), by dotted module name: the module,
    class and function docstrings in source order, joined by blank lines.

  Modules with source files are parsed with `ast`, never imported, so no
  module code runs and `python -OO` does not strip the text. Compiled
  modules (`math`, `itertools`, ...) other than `readline` are imported to
  read the docstrings of their C functions, their classes and the classes'
  public members. A docstring that already appeared earlier is left out, so
  generic texts such as "Return repr(self)." appear once.

  The result depends only on the interpreter's standard library, not on
  what the program did before, so every run of one Python installation gets
  the same corpus. Distributions that package parts of the standard library
  separately (Debian's `python3-tk`) can give a different corpus for the
  same Python version, so the log line states its sha256. Nothing is cached.

  Returns:
    The documents, one per help topic and one per module with docstrings.
  """
  start_time = time.perf_counter()
  seen = set()
  documents = []

  def add_document(texts: Sequence[str]) -> None:
    new_texts = []
    for text in texts:
      text = text.strip()
      if text and text not in seen:
        seen.add(text)
        new_texts.append(text)
    if new_texts:
      documents.append("\n\n".join(new_texts))

  try:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("pydoc_data is not installed, so help topics are left out.")
  else:
    for name in sorted(topics.topics):
      add_document([topics.topics[name]])

  num_skipped = 0
  for module_name, path in _stdlib_modules():
    if path is None:
      texts = _compiled_module_docstrings(module_name)
    else:
      texts = _source_docstrings(path)
    if texts is None:
      num_skipped += 1
      continue
    add_document(texts)

  digest = hashlib.sha256("\0".join(documents).encode()).hexdigest()
  logging.info(
      "Built the Python documentation corpus: %d documents, %d characters,"
      " %d modules skipped, sha256 %s, %.2f s.",
      len(documents),
      sum(map(len, documents)),
      num_skipped,
      digest,
      time.perf_counter() - start_time,
  )
  return documents


def _stdlib_modules() -> list[tuple[str, pathlib.Path | None]]:
  """Returns `(dotted name, source path or None)` sorted by name.

  The path is None for compiled modules.
  """
  stdlib_dir = pathlib.Path(sysconfig.get_paths()["stdlib"])
  modules = []
  for name in sorted(sys.stdlib_module_names):
    if name.startswith("_") or name in _TEST_PACKAGE_NAMES:
      continue

    package_dir = stdlib_dir / name
    if (package_dir / "__init__.py").is_file():
      modules.extend(_package_modules(name, package_dir))
    elif (stdlib_dir / f"{name}.py").is_file():
      modules.append((name, stdlib_dir / f"{name}.py"))
    elif name not in _COMPILED_MODULES_NOT_IMPORTED:
      modules.append((name, None))

  return sorted(modules, key=lambda module: module[0])


def _package_modules(
    name: str, package_dir: pathlib.Path
) -> Iterator[tuple[str, pathlib.Path]]:
  for path in package_dir.rglob("*.py"):
    parts = path.relative_to(package_dir).parts
    if _TEST_PACKAGE_NAMES.intersection(parts[:-1]):
      continue
    module_parts = [name, *parts[:-1]]
    if path.stem != "__init__":
      module_parts.append(path.stem)
    yield ".".join(module_parts), path


def _source_docstrings(path: pathlib.Path) -> list[str] | None:
  """Returns the docstrings of a source file, or None if it cannot be parsed.

  Docstrings of functions nested in functions are left out, because finding
  them means visiting every statement of every function body.
  """
  try:
    source = path.read_bytes()
    tree = _parse_without_gc(source, str(path))
  except (OSError, SyntaxError, ValueError) as error:
    logging.debug("Skipping %s: %s", path, error)
    return None

  texts = []
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, _DOCUMENTED_NODES):
      docstring = ast.get_docstring(node, clean=True)
      if docstring:
        texts.append(docstring)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue

    # Only statement lists can hold class and function definitions, so
    # expressions are not visited. Children are pushed in reverse to pop them
    # in source order.
    children = []
    for field in ("body", "handlers", "orelse", "finalbody", "cases"):
      children.extend(getattr(node, field, ()))
    stack.extend(reversed(children))
  return texts


def _parse_without_gc(source: bytes, filename: str) -> ast.Module:
  # The parser allocates many nodes that can form no garbage cycles, and the
  # cyclic garbage collector would scan them again and again while it runs.
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    return ast.parse(source, filename=filename)
  finally:
    if gc_was_enabled:
      gc.enable()


def _compiled_module_docstrings(name: str) -> list[str] | None:
  """Returns the docstrings of a compiled module, its functions and classes."""
  try:
    with warnings.catch_warnings():
      # Some modules (audioop, nis, ...) warn about their deprecation.
      warnings.simplefilter("ignore")
      module = importlib.import_module(name)
  except ImportError as error:
    logging.debug("Skipping compiled module %s: %s", name, error)
    return None

  texts = [module.__doc__ or ""]
  for member_name, member in sorted(vars(module).items()):
    # A program can replace module attributes, as pytest replaces
    # sys.unraisablehook, so only the module's own C functions count. The
    # originals kept in dunder names such as sys.__unraisablehook__ sort
    # first, so a replaced hook's docstring keeps its place in the corpus.
    if inspect.isbuiltin(member) and member.__self__ is module:
      texts.append(member.__doc__ or "")
    elif member_name.startswith("_"):
      continue
    elif inspect.isclass(member) and member.__module__ == name:
      texts.append(member.__doc__ or "")
      for attribute_name, attribute in sorted(vars(member).items()):
        if not attribute_name.startswith("_"):
          texts.append(_docstring_of(attribute))
  return [inspect.cleandoc(text) for text in texts if text]


def _docstring_of(attribute: Any) -> str:
  if inspect.isroutine(attribute) or inspect.isdatadescriptor(attribute):
    docstring = getattr(attribute, "__doc__", None)
    if isinstance(docstring, str):
      return docstring
  return ""
