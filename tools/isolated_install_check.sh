#!/usr/bin/env bash
# An isolated `pip install .`, as a new user types it, into a fresh virtual environment; then the installed
# package's build_info() and `sencache --help`, run outside the repository.
#
#   bash tools/isolated_install_check.sh [WORK_DIR]
#
# Checks that the build picks the ops it can build (on a machine with nvcc but no GPU: the CPU ops, as the one
# line in the build log says) and that the installed extension loads and was compiled against the torch it runs
# with. Slow and large, so it is a script and not a test: pip puts the newest allowed torch (a CUDA build, about
# 3 GB with its nvidia libraries) into the build environment and again into the new venv: the pip install took
# 558 s on the 2-core dev CPU while another job kept it busy (2026-12-02).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/sencache_isolated.XXXXXX)}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK/src"
# The working tree without ignored files (no .venv, build/ or compiled extension), so the build starts clean.
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - ) | tar -xf - -C "$WORK/src"
"$PYTHON" -m venv "$WORK/venv"
start=$(date +%s)
# -v shows the build's own output; keep its log and print the line that says what was built.
MAX_JOBS=${MAX_JOBS:-2} "$WORK/venv/bin/pip" install -v "$WORK/src" > "$WORK/pip.log" 2>&1 \
  || { tail -40 "$WORK/pip.log"; echo "FAILED: isolated pip install (log: $WORK/pip.log)"; exit 1; }
echo "pip install . took $(( $(date +%s) - start )) s"
grep -m1 "sencache: building the" "$WORK/pip.log"
cd "$WORK"  # import the installed package, not the source tree
"$WORK/venv/bin/python" - <<'PY'
import sencache_kernels as sk

info = sk.build_info()
print(info)
assert info.extension, "the compiled extension did not load"
assert info.built_against_torch == info.torch, "extension compiled against another torch than the one running"
assert info.cuda_ops == (info.build_message or "").startswith("sencache: building the CPU and CUDA ops")
PY
"$WORK/venv/bin/sencache" --help > /dev/null
echo "OK: isolated install in $WORK"
