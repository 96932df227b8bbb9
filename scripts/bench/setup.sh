#!/usr/bin/env bash
# Creates a throw-away virtual environment with PyTorch and tokenizers from PyPI
# for scripts/bench/train_vs_pytorch.py. Nothing is installed into the project.
#
#   scripts/bench/setup.sh [VENV_DIR]        (default: /tmp/nmt-bench-venv)
#
# The default PyPI torch wheel on Linux x86_64 pulls the CUDA runtime packages
# (a few GB); the benchmark only uses the CPU. Remove the directory when done.
set -euo pipefail
VENV="${1:-${NMT_BENCH_VENV:-/tmp/nmt-bench-venv}}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install torch tokenizers numpy
"$VENV/bin/python" - <<'PY'
import torch, tokenizers
print(f"torch {torch.__version__}, tokenizers {tokenizers.__version__}, "
      f"threads {torch.get_num_threads()}, MKL-DNN {torch.backends.mkldnn.is_available()}")
PY
echo "venv ready: $VENV/bin/python"
