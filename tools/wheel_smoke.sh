#!/usr/bin/env bash
# Smoke test of the installed, non-editable wheel in a fresh virtual environment, as a user runs it:
#
#   bash tools/wheel_smoke.sh [WORK_DIR]
#
# 1. builds the wheel from the working tree with this environment's torch (`pip wheel --no-build-isolation`; run it
#    from the dev venv: `.venv/bin/python` is used when present, else $PYTHON or python3);
# 2. makes a fresh venv, installs the torch of requirements-torch.txt there (the CPU wheel on the dev machine: no
#    multi-GB CUDA torch), then the wheel with its declared dependencies (nothing else);
# 3. outside the repository: `sencache --help`, `sencache show` on the shipped profile, build_info() (the extension
#    loads and was compiled against the running torch), and `sencache demo --steps 10 --repeats 1`.
# It took 468 s on the 2-core dev CPU while another job kept it busy (2026-12-02; about 180 s building the wheel and
# 170 s installing torch and the dependencies), too long for the test suite: a script.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/sencache_wheel.XXXXXX)}
if [ -x "$ROOT/.venv/bin/python" ]; then BUILD_PY=$ROOT/.venv/bin/python; else BUILD_PY=${PYTHON:-python3}; fi
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

step "copy the working tree (tracked and untracked, not ignored) to $WORK/src"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf -) | tar -xf - -C "$WORK/src"

step "build the wheel with $("$BUILD_PY" -c 'import torch; print("torch", torch.__version__)')"
MAX_JOBS=${MAX_JOBS:-2} "$BUILD_PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL=$(ls "$WORK"/dist/sencache-*.whl)
unzip -l "$WHEEL" | grep -E "_C\..*\.so|_build_info.json|sencache_profile.safetensors|ops.def" \
  || { echo "FAILED: the wheel lacks the extension, its build record, the profile or ops.def"; exit 1; }

step "fresh venv; torch from requirements-torch.txt, then the wheel and its declared dependencies"
"$BUILD_PY" -m venv "$WORK/venv"
V=$WORK/venv/bin
"$V/pip" install -q "$(grep -E '^torch==' "$ROOT/requirements-torch.txt")"
"$V/pip" install -q "$WHEEL"
"$V/pip" list 2>/dev/null | grep -iE "^(torch|triton|matplotlib|transformers|diffusers|ninja|pybind11) " || true

cd "$WORK/run"  # outside the repository: only the installed package can be imported
step "sencache --help"
"$V/sencache" --help
step "sencache show (shipped profile)"
PROFILE=$("$V/python" -c "from sencache.reference.model import CHECKPOINT_DIR; print(CHECKPOINT_DIR)")/sencache_profile.safetensors
"$V/sencache" show "$PROFILE" | head -8
step "build_info()"
"$V/python" - <<'PY'
import sencache_kernels as sk

info = sk.build_info()
print(info)
assert sk.__file__.startswith(__import__("sys").prefix), f"imported {sk.__file__}, not the installed wheel"
assert info.extension and info.built_against_torch == info.torch, "extension missing or built against another torch"
PY
step "sencache demo --steps 10 --repeats 1"
"$V/sencache" demo --steps 10 --repeats 1 --out "$WORK/run/outputs"
test -s "$WORK/run/outputs/sencache_demo_reference.gif"
step "OK: wheel smoke test passed ($WHEEL)"
