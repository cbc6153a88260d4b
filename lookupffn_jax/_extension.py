# Copyright 2026 The lookupffn-jax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Loads the compiled `_lookup_ext` module and registers its XLA FFI targets."""

import threading
from typing import Callable
import warnings

import jax

_lock = threading.Lock()
_registered = False
_load_error: Exception | None = None
_warned = False
_module = None


def load():
  """Imports the extension and registers its FFI targets for CPU, once per process.

  Returns the extension module, or None when it is missing or fails to load;
  `load_error()` then returns the cause.
  """
  global _registered, _load_error, _module
  with _lock:
    if _registered or _load_error is not None:
      return _module
    try:
      from lookupffn_jax import _lookup_ext  # pylint: disable=g-import-not-at-top

      for name, capsule in _lookup_ext.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    except Exception as e:  # pylint: disable=broad-except
      # Any failure here (missing file, ABI mismatch, registration error)
      # leaves the reference implementation usable.
      _load_error = e
      return None
    _module = _lookup_ext
    _registered = True
    return _module


def load_error() -> Exception | None:
  """Returns why the extension could not be loaded, or None."""
  load()
  return _load_error


def require():
  """Returns the extension module, or raises RuntimeError naming the load failure."""
  module = load()
  if module is None:
    raise RuntimeError(
        "implementation='ffi' needs the compiled extension"
        f" lookupffn_jax._lookup_ext, which failed to load: {_load_error!r}."
        " Reinstall the package with `pip install .` to build it, or pass"
        " implementation='reference'."
    )
  return module


def available_or_warn() -> bool:
  """Returns whether the extension loaded, warning once per process if not."""
  global _warned
  if load() is not None:
    return True
  with _lock:
    if not _warned:
      _warned = True
      warnings.warn(
          "lookupffn_jax: the compiled extension failed to load"
          f" ({_load_error!r}); implementation='auto' uses the pure-jnp"
          " reference on every backend.",
          RuntimeWarning,
          stacklevel=3,
      )
  return False


def dispatch(implementation: str, ffi_fn: Callable, reference_fn: Callable, *args):
  """Runs `ffi_fn` or `reference_fn` on `args`, as `implementation` selects.

  "reference" and "ffi" pick one. "auto" lowers to `ffi_fn` on CPU and to
  `reference_fn` on every other platform through `jax.lax.platform_dependent`.
  When the extension is missing, "auto" warns and uses `reference_fn`
  everywhere.
  """
  if implementation == "reference":
    return reference_fn(*args)
  if implementation == "ffi":
    require()
    return ffi_fn(*args)
  if not available_or_warn():
    return reference_fn(*args)
  return jax.lax.platform_dependent(*args, cpu=ffi_fn, default=reference_fn)
