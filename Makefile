# Two entry points: `make pretrain` runs the main job, `make test` the tests.
# Both create .venv on first use and install the package into it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tiny_lookup.py
WORKDIR ?= workdir/$(basename $(notdir $(CONFIG)))
PYTEST_ARGS ?=

.PHONY: install test pretrain bench clean

# The build tools are installed first because the editable install builds
# without isolation, which lets the extension rebuild on import when a C++
# source changes.
$(VENV)/.installed: pyproject.toml CMakeLists.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "scikit-build-core>=0.10" "nanobind>=2.4" "jax>=0.6"
	# An interrupted configure can leave a build/ that CMake rejects, so a
	# failed install is retried once from a clean build directory.
	$(PY) -m pip install --quiet --no-build-isolation --editable ".[test]" \
	  || (rm -rf build && $(PY) -m pip install --quiet --no-build-isolation --editable ".[test]")
	touch $@

install: $(VENV)/.installed

# The whole suite with 32-bit defaults, then the op tests again under
# JAX_ENABLE_X64=1, where integer and float defaults widen.
test: $(VENV)/.installed
	JAX_ENABLE_X64=0 $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)
	JAX_ENABLE_X64=1 $(PY) -m pytest -n 2 -q $(PYTEST_ARGS) tests/lookup_test.py tests/bh4_transform_test.py

pretrain: $(VENV)/.installed
	$(PY) -m train.main --config=$(CONFIG) --workdir=$(WORKDIR)

bench: $(VENV)/.installed
	$(PY) -m benchmarks.run

clean:
	rm -rf build $(VENV)
