#!/usr/bin/env bash
# The GPU benchmark of issue 18 (bench/gpu_suite.py): one command, one JSON file.
#
#   bench/gpu_suite.sh [--out FILE] [driver options]   # GPU machine: $OUT/gpu_suite.json when OUT is set
#   bench/gpu_suite.sh --smoke                         # CPU, tiny models: proves the script runs end to end
#
# The GPU image has torch but not the project's other packages. When the Python in use cannot
# import diffusers, the wheels that bench/gpu_wheelhouse.sh put in .whl/ are installed into
# $GPU_SUITE_SITE (no index, no dependencies) and put first on PYTHONPATH. The driver gets a
# hard time limit ($GPU_SUITE_TIMEOUT seconds, SIGTERM), so the whole command stays within
# 8 minutes; it rewrites its JSON after every row, so a stop keeps what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SITE=${GPU_SUITE_SITE:-/tmp/site}
LIMIT=${GPU_SUITE_TIMEOUT:-450}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
  shopt -s nullglob
  wheels=(.whl/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_suite: $PYTHON has no diffusers and .whl/ holds no wheels: run bench/gpu_wheelhouse.sh first" >&2
    exit 2
  fi
  started=$(date +%s)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_suite: installed ${#wheels[@]} wheels into $SITE in $(( $(date +%s) - started )) s"
fi

log=()
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  log=(tee "$OUT/gpu_suite.log")
fi
status=0
if [ ${#log[@]} -gt 0 ]; then
  timeout --signal=TERM --kill-after=20 "$LIMIT" "$PYTHON" -u bench/gpu_suite.py "$@" 2>&1 | "${log[@]}" || status=$?
else
  timeout --signal=TERM --kill-after=20 "$LIMIT" "$PYTHON" -u bench/gpu_suite.py "$@" || status=$?
fi
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "gpu_suite: the driver reached its ${LIMIT} s limit; the JSON holds every row measured before it" >&2
  exit 3
fi
exit $status
