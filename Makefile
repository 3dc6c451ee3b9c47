# Quick start targets. `make run` trains (or demos) on the bundled data; `make test` runs the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastcpu-installed

$(STAMP): pyproject.toml setup.py $(wildcard kernels/*.pyx kernels/*.pxd)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: install run test bench
install: $(STAMP)

run: $(STAMP)
	$(PY) -m fastcpu.demo

test: $(STAMP)
	FASTCPU_REQUIRE_CYTHON=1 $(PY) -m pytest -q tests

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m pytest -q benchmarks --benchmark-only
