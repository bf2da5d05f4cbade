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

# pip byte-compiles what it installs, on one core. Here it does not (--no-compile): compileall does, on the other core
# while pip installs the dev requirements (torch and its dependencies are there by then), then on both cores beside the
# extension's build, which is one compiler process for most of its time (compile_dir skips what is up to date). On the
# 2-core CI machine `make install` took 152 s with pip compiling, 98-102 s with compileall after pip, 77-82 s so.
# Files that do not compile are skipped, as pip skips them (torch's py312_intrinsics.py). PYC's argument: compileall's
# worker processes (0: one per core).
PYC = $(PY) -c "import compileall, sys, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, \
	workers=int(sys.argv[1]))"

$(VENV)/.deps: requirements-dev.txt requirements-torch.txt | $(PY)
ifneq ($(HAS_CUDA_TORCH),1)
	$(PY) -m pip install -q --no-compile -r requirements-torch.txt
endif
	$(PYC) 1 & $(PY) -m pip install -q --no-compile -r requirements-dev.txt && wait $$!
	touch $@

$(VENV)/.ext: $(VENV)/.deps setup.py pyproject.toml sencache_kernels/ops.def $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu)
	$(PYC) 0 & $(PY) -m pip install -q --no-build-isolation --no-deps -e . && wait $$!
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
