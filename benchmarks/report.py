# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Result tables, their Markdown rendering and the JSON file."""

import dataclasses
import json
from typing import Any

from benchmarks.timing import Summary

_TIME_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


@dataclasses.dataclass
class Table:
  """One result table: formatted cells for Markdown, raw numbers for JSON."""

  # Section name, as selected by `--sections`.
  section: str
  title: str
  columns: list[str]
  rows: list[list[str]] = dataclasses.field(default_factory=list)
  # One dict of raw numbers per row, in SI units (seconds, bytes).
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  # Sentences printed under the table: what was measured, what was skipped.
  notes: list[str] = dataclasses.field(default_factory=list)

  def add_row(self, cells: list[str], record: dict[str, Any]) -> None:
    if len(cells) != len(self.columns):
      raise ValueError(
          f"table {self.title!r} has {len(self.columns)} columns, got a row of"
          f" {len(cells)} cells: {cells}"
      )
    self.rows.append(cells)
    self.records.append(record)

  def to_markdown(self) -> str:
    lines = [f"### {self.title}", ""]
    lines.append("| " + " | ".join(self.columns) + " |")
    lines.append("|" + "|".join(" --- " for _ in self.columns) + "|")
    for row in self.rows:
      lines.append("| " + " | ".join(row) + " |")
    if self.notes:
      lines.append("")
      lines.extend(f"- {note}" for note in self.notes)
    return "\n".join(lines) + "\n"

  def to_json(self) -> dict[str, Any]:
    return {
        "section": self.section,
        "title": self.title,
        "notes": self.notes,
        "records": self.records,
    }


def _time_unit(seconds: float) -> tuple[float, str]:
  for scale, unit in _TIME_UNITS:
    if seconds >= scale:
      return scale, unit
  return _TIME_UNITS[-1]


def _significant(value: float) -> str:
  """Formats a value with three significant digits, or all its integer digits from 100 up."""
  if value >= 100:
    return f"{value:.0f}"
  if value >= 10:
    return f"{value:.1f}"
  return f"{value:.2f}"


def format_seconds(summary: Summary) -> str:
  """Formats times as 'median unit (min–max)', all in the median's unit."""
  scale, unit = _time_unit(summary.median)
  median, low, high = (summary.median / scale, summary.min / scale, summary.max / scale)
  return f"{_significant(median)} {unit} ({_significant(low)}–{_significant(high)})"


def format_ratio(summary: Summary) -> str:
  """Formats a speedup as 'median× (min–max)'."""
  return f"{summary.median:.2f}× ({summary.min:.2f}–{summary.max:.2f})"


def format_rate(summary: Summary, unit: str, scale: float = 1.0) -> str:
  """Formats a rate divided by `scale`, such as bytes/s in GB/s with scale 1e9."""
  median, low, high = (summary.median / scale, summary.min / scale, summary.max / scale)
  return f"{_significant(median)} {unit} ({_significant(low)}–{_significant(high)})"


def format_bytes(count: float) -> str:
  """Formats a byte count in binary units: 512 B, 2.00 KiB, 64.0 MiB, 8.25 GiB."""
  for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
    if count >= 1024**power:
      return f"{_significant(count / 1024**power)} {unit}"
  return f"{count:.0f} B"


def skipped_cell(needed_bytes: int) -> str:
  return f"skipped (needs {format_bytes(needed_bytes)})"


def write_json(path: str, machine: dict[str, Any], settings: dict[str, Any],
               tables: list[Table]) -> None:
  document = {
      "machine": machine,
      "settings": settings,
      "tables": [table.to_json() for table in tables],
  }
  with open(path, "w", encoding="utf-8") as f:
    json.dump(document, f, indent=2)
    f.write("\n")
