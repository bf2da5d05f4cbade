# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv (if absent), install the pinned
# dev dependencies, build the C++ extension, then run. On a machine whose python already has a CUDA build of torch,
# the venv sees it (--system-site-packages) and torch/triton are not reinstalled.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HAS_CUDA_TORCH := $(shell $(PYTHON) -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null && echo 1)

.PHONY: demo test install bench lint clean

$(PY):
ifeq ($(HAS_CUDA_TORCH),1)
	$(PYTHON) -m venv --system-site-packages $(VENV)
else
	$(PYTHON) -m venv $(VENV)
endif

# pip byte-compiles what it installs on one core; compileall does it on all of them (--no-compile, then compile_dir:
# the dependencies' install took 134 s with pip compiling, 52 s + 37 s this way on the 2-core CI machine). Files that do
# not compile are skipped, as pip skips them (torch's py312_intrinsics.py).
$(VENV)/.deps: requirements-dev.txt requirements-torch.txt | $(PY)
ifneq ($(HAS_CUDA_TORCH),1)
	$(PY) -m pip install -q --no-compile -r requirements-torch.txt
endif
	$(PY) -m pip install -q --no-compile -r requirements-dev.txt
	$(PY) -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	touch $@

$(VENV)/.ext: $(VENV)/.deps setup.py pyproject.toml sencache_kernels/ops.def $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.ext

demo: install
	$(PY) -m sencache.demo

# The suite in TEST_JOBS worker processes (pytest-xdist), a test module per worker at a time (module fixtures, the
# two-rank context-parallel tests); TEST_JOBS=0 runs it in this process.
TEST_JOBS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=15 tests

bench: install
	$(PY) -m pytest -q benchmarks --benchmark-only

lint: install
	$(PY) -m ruff check sencache sencache_kernels tests benchmarks

clean:
	rm -rf build *.egg-info sencache_kernels/_C*.so $(VENV)
