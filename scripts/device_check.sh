#!/usr/bin/env bash
# The GPU checks (tests/test_cuda.py) on a machine with CUDA, run from the repository root:
#   bash scripts/device_check.sh        # log in $OUT/test_cuda.log (OUT defaults to /tmp/out)
# The machine needs torch (CUDA), transformers, accelerate, safetensors, timm, pillow, pyyaml, tokenizers and
# pytest; not lmms-eval, fvcore, datasets or submitit (nothing test_cuda.py imports needs them), nor internet.
set -uo pipefail

OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 1

echo "== machine"
nvidia-smi -L || echo "nvidia-smi failed"
python3 - <<'EOF'
import sys

import torch
import transformers

print("python", sys.version.split()[0], "| torch", torch.__version__, "(CUDA", torch.version.cuda, ") | transformers",
      transformers.__version__)
print("cuda available:", torch.cuda.is_available(),
      "| device 0:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import flash_attn
    print("flash_attn", flash_attn.__version__)
except ImportError:
    print("flash_attn not installed (its test is skipped)")
EOF

echo "== install"
# pyproject.toml maps the namespace onto the folders: modbench.models -> models/, modbench.suite -> suite/,
# modbench.tasks -> tasks/, modbench.paper -> results/paper/ (modbench/ holds the namespace's __init__).
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/pip.log" 2>&1; then
    # No install (no setuptools, a read-only environment): the same mapping as links, put on the path.
    # modbench/__init__.py extends the package's __path__ to every `modbench` folder on sys.path.
    echo "pip install -e . failed (tail of $OUT/pip.log below); linking the packages instead"
    tail -n 3 "$OUT/pip.log"
    shim="$(mktemp -d)/modbench"
    mkdir -p "$shim"
    ln -s "$PWD/modbench/__init__.py" "$PWD/modbench/__main__.py" "$shim/"
    ln -s "$PWD/models" "$shim/models"
    ln -s "$PWD/suite" "$shim/suite"
    ln -s "$PWD/tasks" "$shim/tasks"
    ln -s "$PWD/results/paper" "$shim/paper"
    export PYTHONPATH="$(dirname "$shim")${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'EOF' || { echo "modbench does not import; not running the tests"; exit 1; }
import sys

import modbench.models
import modbench.suite.latency  # noqa: F401

print("modbench.models from", modbench.models.__path__[0])
absent = [m for m in ("lmms_eval", "fvcore", "datasets", "submitit") if m in sys.modules]
print("imported but not needed:", absent or "none")
EOF

echo "== tests/test_cuda.py"
# --noconftest: tests/conftest.py writes the fixture benchmarks (tasks/data, not in git) with `datasets` when they
# are missing; test_cuda.py needs none of them (its inputs are its own).
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MODBENCH_TEST_DEVICE="${MODBENCH_TEST_DEVICE:-cuda}" \
    timeout 300 python3 -m pytest -q -p no:cacheprovider --noconftest --durations=10 tests/test_cuda.py 2>&1 \
    | tee "$OUT/test_cuda.log"
status=${PIPESTATUS[0]}
echo "== pytest exit status $status"
exit "$status"
