# Set-up and entry points. `make demo` and `make test` work on a fresh clone: they create .venv,
# install the pinned requirements, build the extension, install the package (editable) into .venv, then
# run the main job / the test suite. After `make build`, `.venv/bin/cora` is the command line.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv ext build demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

# The extension, in place (cora/_C*.so). ninja rebuilds only what changed; CUDA kernels are compiled when
# nvcc is found (CORA_BUILD_CUDA=0/1 forces).
ext: venv
	$(PY) setup.py build_ext --inplace

# The editable install (cora/ stays the code that runs; .venv/bin/cora and `import cora` from anywhere).
# CORA_PREBUILT_EXT=1: it takes the library `ext` just built instead of compiling it again (setup.py).
# Redone when setup.py changes (entry points, packages); new modules need no reinstall.
$(VENV)/bin/cora: setup.py $(VENV)/.installed | ext
	CORA_PREBUILT_EXT=1 $(PY) -m pip install --no-build-isolation --no-deps --no-index -q -e .
	touch $@

# Triton Inference Server for `cora serve` (cora.serve.server), pinned in requirements.txt on the line
# "# triton-server: ...": the server wheel without its dependencies in $(TRITON)/server, and in $(TRITON)/env
# the Python environment of its model processes: numpy 1.x (the backend stub reads numpy 1's array layout;
# under numpy 2 its outputs come back empty) in front of this environment's packages (a site dir).
TRITON := $(VENV)/triton

$(TRITON)/.installed: requirements.txt $(VENV)/.installed
	rm -rf $(TRITON)
	$(PY) -m pip install -q --no-deps --target $(TRITON)/server $$(sed -n 's/^# triton-server: //p' requirements.txt | cut -d' ' -f1)
	$$($(PY) -c 'import sys; print(sys._base_executable)') -m venv --without-pip $(TRITON)/env
	site=$$($(TRITON)/env/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	$(PY) -m pip install -q --no-deps --target $$site $$(sed -n 's/^# triton-server: //p' requirements.txt | cut -d' ' -f2) && \
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" > $$site/cora-project.pth
	touch $@

build: ext $(VENV)/bin/cora $(TRITON)/.installed

demo: build
	$(PY) benchmarks/vocab_scaling.py

test: build
	$(PY) -m pytest -q

clean:
	rm -rf build dist cora.egg-info cora/_C*.so
