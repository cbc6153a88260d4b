# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Runs the CPU benchmark suite and prints Markdown tables.

  python -m benchmarks.run                      # everything, several minutes
  python -m benchmarks.run --quick              # fewer sizes and repeats, about a minute
  python -m benchmarks.run --sections lookup_fwd,roofline --repeats 11
  python -m benchmarks.run --json results.json --markdown results.md
  python -m benchmarks.run --update-doc docs/benchmarks.md

Progress goes to stderr, results to stdout. docs/benchmarks.md describes the
method and contains the latest results.
"""

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from typing import Callable

from lookupffn_jax import _extension

from benchmarks import end_to_end
from benchmarks import ffn_layers
from benchmarks import lookup_op
from benchmarks import machine
from benchmarks import report
from benchmarks import roofline
from benchmarks import settings as settings_lib
from benchmarks import torch_gather

SECTIONS: dict[str, Callable[[settings_lib.Settings], list[report.Table]]] = {
    "lookup_fwd": lookup_op.run_forward,
    "lookup_bwd": lookup_op.run_backward,
    "layers": ffn_layers.run,
    "end_to_end": end_to_end.run,
    "roofline": roofline.run,
    "torch": torch_gather.run,
}

DOC_BEGIN = "<!-- benchmark results: begin -->"
DOC_END = "<!-- benchmark results: end -->"

_QUICK_REPEATS = 3
_QUICK_MIN_REPEAT_SECONDS = 0.02


def _parse_positive_ints(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(part) for part in text.split(",") if part.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}"
    ) from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
  return values


def _parse_sections(text: str) -> tuple[str, ...]:
  names = tuple(part.strip() for part in text.split(",") if part.strip())
  unknown = [name for name in names if name not in SECTIONS]
  if unknown or not names:
    raise argparse.ArgumentTypeError(
        f"unknown section(s) {unknown or text!r}; choose from {', '.join(SECTIONS)}"
    )
  return names


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.run",
      description="Benchmarks the LookupFFN CPU kernels, layers and models.",
  )
  parser.add_argument(
      "--quick", action="store_true",
      help=f"token counts {','.join(map(str, settings_lib.QUICK_TOKENS))}, batch"
      f" 1x128 only, {_QUICK_REPEATS} repeats of at least"
      f" {_QUICK_MIN_REPEAT_SECONDS * 1e3:.0f} ms (each can still be overridden)",
  )
  parser.add_argument(
      "--sections", type=_parse_sections, default=tuple(SECTIONS),
      help=f"comma-separated sections to run, in the order given, from:"
      f" {','.join(SECTIONS)} (default: all, in that order)",
  )

  parser.add_argument(
      "--repeats", type=int,
      help="timed repeats per candidate (default:"
      f" {settings_lib.Settings.repeats}, and {settings_lib.Settings.model_repeats}"
      " in end_to_end)",
  )
  parser.add_argument(
      "--min-repeat-ms", type=float,
      help="minimum milliseconds per repeat; fast calls are repeated to fill it"
      f" (default: {settings_lib.Settings.min_repeat_seconds * 1e3:.0f})",
  )
  parser.add_argument(
      "--tokens", type=_parse_positive_ints,
      help="comma-separated token counts N of the op, layer and roofline sections"
      f" (default: {','.join(map(str, settings_lib.FULL_TOKENS))})",
  )
  parser.add_argument(
      "--threads", type=int, default=machine.available_cores(),
      help="threads of the FFI kernels, torch and the bandwidth probes"
      " (default: every available core)",
  )
  parser.add_argument(
      "--max-memory-gb", type=float, default=8.0,
      help="skip a case whose compiled program needs more GiB than this, by"
      " XLA's estimate (default: 8)",
  )
  parser.add_argument(
      "--max-isa", choices=("avx512", "avx2", "scalar"), default="avx512",
      help="cap the instruction set of the FFI kernels; avx512, the default,"
      " runs the best one the CPU supports",
  )
  parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")

  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  parser.add_argument(
      "--markdown", metavar="PATH", help="also write the header and tables as Markdown"
  )
  parser.add_argument(
      "--update-doc", metavar="PATH",
      help=f"replace the text between the lines {DOC_BEGIN!r} and {DOC_END!r}"
      " in this Markdown file with the header and tables",
  )
  args = parser.parse_args(argv)

  if args.repeats is not None and args.repeats < 1:
    parser.error(f"--repeats must be at least 1, got {args.repeats}")
  if args.threads < 1:
    parser.error(f"--threads must be at least 1, got {args.threads}")
  if args.min_repeat_ms is not None and args.min_repeat_ms <= 0:
    parser.error(f"--min-repeat-ms must be positive, got {args.min_repeat_ms}")
  if args.max_memory_gb <= 0:
    parser.error(f"--max-memory-gb must be positive, got {args.max_memory_gb}")
  return args


def settings_from_args(args: argparse.Namespace) -> settings_lib.Settings:
  quick = args.quick
  default_repeats = _QUICK_REPEATS if quick else settings_lib.Settings.repeats
  default_model_repeats = (
      _QUICK_REPEATS if quick else settings_lib.Settings.model_repeats
  )
  default_seconds = (
      _QUICK_MIN_REPEAT_SECONDS if quick else settings_lib.Settings.min_repeat_seconds
  )
  return settings_lib.Settings(
      tokens=args.tokens or (settings_lib.QUICK_TOKENS if quick else settings_lib.FULL_TOKENS),
      model_batches=(
          settings_lib.QUICK_MODEL_BATCHES if quick else settings_lib.FULL_MODEL_BATCHES
      ),
      repeats=args.repeats or default_repeats,
      model_repeats=args.repeats or default_model_repeats,
      min_repeat_seconds=(
          args.min_repeat_ms / 1e3 if args.min_repeat_ms else default_seconds
      ),
      max_memory_bytes=int(args.max_memory_gb * 2**30),
      threads=args.threads,
      seed=args.seed,
  )


def _configure_kernels(threads: int, max_isa: str) -> None:
  extension = _extension.require()
  extension.set_max_threads(threads)
  extension.set_max_isa(max_isa)


def _render(header: str, command: str, tables: list[report.Table],
            section_seconds: dict[str, float]) -> str:
  timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in section_seconds.items())
  parts = [header, f"- Command: `{command}`", f"- Wall time per section: {timings or '–'}", ""]
  parts += [table.to_markdown() for table in tables]
  return "\n".join(parts)


def _replace_results(text: str, results: str, path: str) -> str:
  """Returns `text` with the lines between DOC_BEGIN and DOC_END replaced."""
  begin = text.find(DOC_BEGIN)
  end = text.find(DOC_END)
  if begin < 0 or end < begin:
    raise ValueError(
        f"{path} must contain a line {DOC_BEGIN!r} followed by a line"
        f" {DOC_END!r}; add them around the results"
    )
  return text[:begin + len(DOC_BEGIN)] + "\n\n" + results.strip() + "\n\n" + text[end:]


def update_doc(path: str, results: str | None) -> None:
  """Replaces the results between the markers in `path`; None only checks the markers."""
  with open(path, encoding="utf-8") as f:
    text = _replace_results(f.read(), results or "", path)
  if results is None:
    return
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def main(argv: list[str]) -> None:
  logging.basicConfig(
      level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
      stream=sys.stderr,
  )
  args = parse_args(argv)
  if args.update_doc:
    try:
      update_doc(args.update_doc, None)  # Fails now, not after the run.
    except (OSError, ValueError) as e:
      raise SystemExit(f"python -m benchmarks.run: error: {e}") from None
  settings = settings_from_args(args)
  _configure_kernels(settings.threads, args.max_isa)

  command = shlex.join(["python", "-m", "benchmarks.run", *argv])
  facts = machine.describe(settings.threads)
  header = machine.format_header(facts)
  print(header)
  print(f"- Command: `{command}`\n", flush=True)

  tables: list[report.Table] = []
  section_seconds: dict[str, float] = {}
  for name in args.sections:
    logging.info("section %s: start", name)
    start = time.perf_counter()
    new_tables = SECTIONS[name](settings)
    section_seconds[name] = time.perf_counter() - start
    logging.info("section %s: done in %.0f s", name, section_seconds[name])
    for table in new_tables:
      print(table.to_markdown(), flush=True)
    tables += new_tables

    # Written after every section, so an interrupted run keeps what it measured.
    rendered = _render(header, command, tables, section_seconds)
    if args.markdown:
      with open(args.markdown, "w", encoding="utf-8") as f:
        f.write(rendered)
    if args.update_doc:
      update_doc(args.update_doc, rendered)
    if args.json:
      run_settings = dataclasses.asdict(settings)
      run_settings.update(command=command, max_isa=args.max_isa,
                          section_seconds=section_seconds)
      report.write_json(args.json, facts, run_settings, tables)

  print("- Wall time per section: " + ", ".join(
      f"{name} {seconds:.0f} s" for name, seconds in section_seconds.items()))


if __name__ == "__main__":
  main(sys.argv[1:])
