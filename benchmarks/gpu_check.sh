#!/usr/bin/env bash
# Everything that needs a GPU, in one pass of about 10 minutes on an H200 or H100:
#   bash benchmarks/gpu_check.sh OUT_DIR [E2E_MODELS]
#
# On a machine with a CUDA build of torch, nvcc and the project's Python dependencies, writing logs and results into
# OUT_DIR: builds the extension with CUDA, runs the test files that hold GPU tests (CI runs the rest; pytest-xdist
# and pytest-timeout if present), op microbenchmarks (benchmarks/bench_<op>.py), the end-to-end benchmark on tiny
# configurations in GPU mode (every row: alternation, memory accounting, regional compilation, graph mode over
# inductor's blocks) and then on Wan 2.1 1.3B at its real size (E2E_MODELS to choose others). The real-size models
# have random weights: a step's time does not depend on the weights' values, so nothing is downloaded or loaded.
# The Wan run takes the rows of the targets (E2E_METHODS to choose others; every row of three models takes
# over 15 minutes), and stops starting rounds when the 10 minutes are near (its results are saved after each round).
#
# Python packages the machine lacks (diffusers==0.42.1, cache-dit==1.5.3 for the DBCache rows: both pure Python) travel
# as wheels in .whl/ of the repository (see the device notes): they are installed into /tmp/site first.
#
# Seen on an H100 (2026-11-22, the previous version of this script): build ~50 s, the GPU test files ~150 s with 8
# workers, decision microbenchmark ~30 s. Copy the results into benchmarks/results/ and render them
# (`python benchmarks/e2e.py --render benchmarks/results/e2e_h200.json --readme README.md`).
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [E2E_MODELS]}
models=${2:-wan2.1-1.3b 480p 81f}
budget=${BUDGET_S:-570}  # seconds for the whole script
mkdir -p "$out"
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( budget - $(elapsed) )); }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$out/wheels.log" 2>&1 || { tail -5 "$out/wheels.log"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers',
diffusers.__version__, torch.cuda.get_device_name())" || exit 1

SENCACHE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} python3 -m pip install --no-build-isolation \
  --no-deps -e . > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "build done after $(elapsed) s"

parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
python3 -c "import pytest_timeout" 2>/dev/null && parallel+=(--timeout 200)
# the files with GPU tests (TESTS to choose others, e.g. tests for the whole suite: ~170 s with 8 workers on an H100)
tests=${TESTS:-tests/test_graph.py tests/test_regional_compile.py tests/test_compiled.py tests/test_conditional.py
tests/test_decide_triton.py tests/test_commit.py tests/test_parallel_units.py}
# shellcheck disable=SC2086
timeout 200 python3 -m pytest -q $tests -p no:cacheprovider -rs "${parallel[@]}" > "$out/pytest.log" 2>&1
echo "tests rc=$? after $(elapsed) s"; grep -E "^(FAILED|ERROR)|crashed while| passed| failed" "$out/pytest.log"

# One microbenchmark file per op stem (bench_<op>.py), one JSON each (BENCH_OPS to add delta_norm and commit).
for op in ${BENCH_OPS:-decide conditional}; do
  timeout 60 python3 -m pytest "benchmarks/bench_$op.py" -p no:xdist -p no:cacheprovider --benchmark-only \
    --benchmark-json "$out/bench_$op.json" -q > "$out/bench_$op.log" 2>&1
  echo "microbenchmark $op rc=$? after $(elapsed) s"
done

# Tiny configurations on the GPU: every row, inductor compiling the blocks (a few seconds of timing after them).
PYTHONUNBUFFERED=1 timeout 150 python3 benchmarks/e2e.py --smoke --device cuda --steps 4 --repeats 3 \
  --out "$out/e2e_tiny_cuda.json" > "$out/e2e_tiny_cuda.log" 2>&1
echo "e2e tiny (cuda) rc=$? after $(elapsed) s"; grep -E "^\|.*(SenCache|uncached)" "$out/e2e_tiny_cuda.log"

# Real size: eps=0 overhead in eager and graph mode, the fixed pattern and eps=0 on top of regional compilation, and
# each row's memory. Rounds stop when the budget is near; the set-up (two loops per row, compilation) comes first.
methods=${E2E_METHODS:-SenCache eps=0 eager,SenCache eps=0 graph,SenCache eps=0 graph+regional,SenCache pattern graph+regional}
room=$(( $(left) - 20 ))
if [ "$room" -lt 120 ]; then
  echo "e2e real size skipped: $room s left of the budget"
else
  PYTHONUNBUFFERED=1 timeout "$room" python3 benchmarks/e2e.py --models "$models" --methods "$methods" --steps 4 \
    --repeats 5 --max-seconds $(( room / 3 )) --out "$out/e2e.json" > "$out/e2e.log" 2>&1
  echo "e2e rc=$? after $(elapsed) s (124: cut off by the budget; the rounds measured are in e2e.json)"
  python3 benchmarks/e2e.py --render "$out/e2e.json" 2>/dev/null | grep "^|"
fi

# Issue 18 (opt-in, QUALITY_ALL=1, beyond the budget above; not timed yet): the quality table of every method on the
# reference model, 16 held-out pairs per budget (per-pair values and timelines in quality.json): SenCache (fixed eps,
# searched), its first-order forecast, its target-NFE rows (fixed schedule, planned eps(t)), MagCache, TeaCache,
# FirstBlockCache, cache-dit's DBCache (alone, with TaylorSeer, static step mask) and diffusers' TaylorSeer. The CPU
# ran the same table in two processes (benchmarks/results/quality_cpu_all/).
if [ "${QUALITY_ALL:-0}" = 1 ]; then
  timeout 1200 python3 benchmarks/quality.py --device cuda --methods sencache sencache_forecast sencache_target \
    sencache_planned magcache teacache fbc dbcache dbcache_ts dbcache_mask taylorseer \
    --out "$out/quality_all" > "$out/quality_all.log" 2>&1
  echo "quality (all methods) rc=$? after $(elapsed) s"; grep "^|" "$out/quality_all/quality.md"
fi
