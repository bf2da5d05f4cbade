#!/usr/bin/env bash
# Everything that needs a GPU, in one pass: `bash benchmarks/gpu_check.sh OUT_DIR [E2E_MODELS]`.
#
# On a machine with a CUDA build of torch, nvcc and the project's Python dependencies: builds the extension with CUDA,
# runs the test suite (its GPU tests included; pytest-xdist and pytest-timeout if present), the op microbenchmarks
# (benchmarks/bench_<op>.py) and the end-to-end benchmark, writing logs and results into OUT_DIR. Seen on an H100
# (2026-11-22): build ~50 s, the GPU test files ~150 s with 8 workers, decision microbenchmark ~30 s, e2e ~4-5 min
# for LTX-Video and CogVideoX-2B together; Wan 2.1 1.3B took 31-38 s per method (8 methods) at --steps 6. Copy the
# results into benchmarks/results/ and render them (`python benchmarks/e2e.py --render ... --readme README.md`).
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [E2E_MODELS]}
models=${2:-}
mkdir -p "$out"
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

SENCACHE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} python3 -m pip install --no-build-isolation \
  --no-deps -e . > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "build done after $(elapsed)"

parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
python3 -c "import pytest_timeout" 2>/dev/null && parallel+=(--timeout 300)
# test_cuda_sources downloads CUDA torch headers; a GPU machine compiles the sources for real above
python3 -m pytest -q tests --deselect tests/test_cuda_sources.py -p no:cacheprovider -rs "${parallel[@]}" \
  > "$out/pytest.log" 2>&1
echo "tests rc=$? after $(elapsed)"; grep -E "^(FAILED|ERROR)|crashed while| passed| failed" "$out/pytest.log"

# One microbenchmark file per op stem (bench_<op>.py), one JSON each.
for op in decide delta_norm commit conditional; do
  python3 -m pytest "benchmarks/bench_$op.py" -p no:xdist -p no:cacheprovider --benchmark-only \
    --benchmark-json "$out/bench_$op.json" -q > "$out/bench_$op.log" 2>&1
  echo "microbenchmark $op rc=$? after $(elapsed)"
done

python3 benchmarks/e2e.py --steps 6 --repeats 3 ${models:+--models "$models"} --out "$out/e2e.json" \
  > "$out/e2e.log" 2>&1
echo "e2e rc=$? after $(elapsed)"; grep "^|" "$out/e2e.log"
