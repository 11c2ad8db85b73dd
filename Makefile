# Set-up and entry points. `make demo` and `make test` work on a fresh clone: they create .venv,
# install the pinned requirements, build the extension, then run the main job / the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv build demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

# ninja rebuilds only what changed; CUDA kernels are compiled when nvcc is found (CORA_BUILD_CUDA=0/1 forces).
build: venv
	$(PY) setup.py build_ext --inplace

demo: build
	$(PY) benchmarks/vocab_scaling.py

test: build
	$(PY) -m pytest -q

clean:
	rm -rf build cora/_C*.so
