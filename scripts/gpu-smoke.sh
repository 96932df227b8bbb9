#!/usr/bin/env bash
# GPU smoke test (issue 14): trains the demo config on an NVIDIA GPU for a few hundred steps, translates
# (beam, greedy, sampling) and evaluates there, checks that the GPU-trained model translates on the CPU and a
# CPU-trained one on the GPU, runs data-parallel training through NCCL (a world of 1, and one process per GPU
# when there are several), and prints training tokens/s on GPU and CPU side by side.
#
#     bash scripts/gpu-smoke.sh [NMT_BINARY] [STEPS] [WORK_DIR]
#
# NMT_BINARY: an nmt built with `--features cuda`, by default target/cuda/release/nmt, the binary that
# scripts/check-cuda-build.sh builds (on a machine without a GPU, too: then take it to the GPU machine with
# the working tree). STEPS: training steps on each device (300). WORK_DIR: where the runs go (a new temporary
# directory). Each training run also stops after MAX_MINUTES minutes (environment, default 3), so that a slow
# device cannot hold the machine. Run it from anywhere; it works in the repository root. It exits non-zero at
# the first failure.
#
# Libraries: the binary needs the NVIDIA driver's libcuda and CUDA 13's cuBLAS, cuBLASLt, cuRAND, NVRTC and
# runtime. Where no CUDA install provides them, they come from a Python environment's `nvidia-*` packages
# (PyTorch's CUDA 13 wheels install them): this script adds every library folder of python3's `nvidia`
# package to LD_LIBRARY_PATH. No Rust toolchain and no network are needed on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/cuda/release/nmt}
STEPS=${2:-300}
W=${3:-$(mktemp -d)}
MAX_MINUTES=${MAX_MINUTES:-3}
[ -x "$BIN" ] || { echo "gpu-smoke: no nmt binary at $BIN (build one with scripts/check-cuda-build.sh)" >&2; exit 1; }
mkdir -p "$W"

libs=$(python3 - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
)
# The driver's libcuda is usually on the loader's path already; some containers mount it here instead.
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && libs="${libs:+$libs:}$d"
done
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== CUDA libraries the binary resolves"
ldd "$BIN" | grep -E 'libcuda|libcublas|libcurand|libnvrtc|libcudart|libnccl' || echo "(none linked: loaded at run time)"
if ldd "$BIN" | grep 'not found' > /dev/null; then
  echo "gpu-smoke: unresolved libraries:" >&2
  ldd "$BIN" | grep 'not found' >&2
  exit 1
fi

step() { echo; echo "== $*"; }
last_lines() { tr '\r' '\n' | grep -v '^[[:space:]]*$' | tail -n "$1"; }
SENTENCE="The old man sees twenty-one small dogs."
head -n 100 data/demo/test.en > "$W/test100.en"
head -n 100 data/demo/test.de > "$W/test100.de"

step "train the demo config on the GPU, $STEPS steps"
"$BIN" train --config configs/demo.json --device cuda --out "$W/gpu" --max-steps "$STEPS" --max-minutes "$MAX_MINUTES" --force 2>&1 | last_lines 4
# Data-parallel training (docs/SCALING.md): NCCL with a world of 1 through the launcher, and one process per
# GPU when the machine has several.
NGPU=$(nvidia-smi -L | wc -l)
DP_RUNS=""
if ldd "$BIN" | grep libnccl > /dev/null; then
  step "data-parallel through NCCL, a world of 1 (--nproc 1), $STEPS steps"
  "$BIN" train --config configs/demo.json --device cuda --nproc 1 --out "$W/nccl1" --max-steps "$STEPS" --max-minutes "$MAX_MINUTES" --force 2>&1 | last_lines 4
  DP_RUNS="nccl1"
  if [ "$NGPU" -ge 2 ]; then
    step "data-parallel through NCCL on $NGPU GPUs (--nproc $NGPU), $STEPS steps"
    "$BIN" train --config configs/demo.json --device cuda --nproc "$NGPU" --out "$W/nccl$NGPU" --max-steps "$STEPS" --max-minutes "$MAX_MINUTES" --force 2>&1 | last_lines 4
    DP_RUNS="$DP_RUNS nccl$NGPU"
  else
    echo "(one GPU: no world larger than 1 was run)"
  fi
else
  echo "(built without --features nccl: data-parallel training not checked)"
fi

step "the same on the CPU, $STEPS steps"
"$BIN" train --config configs/demo.json --device cpu --out "$W/cpu" --max-steps "$STEPS" --max-minutes "$MAX_MINUTES" --force 2>&1 | last_lines 4

step "translate on the GPU: beam (the run's default), greedy, sampling"
"$BIN" translate --model "$W/gpu" --device cuda "$SENTENCE"
"$BIN" translate --model "$W/gpu" --device cuda --beam 1 --input "$W/test100.en" > "$W/gpu-greedy.txt"
"$BIN" translate --model "$W/gpu" --device cuda --beam 4 --input "$W/test100.en" > "$W/gpu-beam.txt"
"$BIN" translate --model "$W/gpu" --device cuda --sample --sample-seed 3 --input "$W/test100.en" > "$W/gpu-sample.txt"
head -n 3 "$W/gpu-sample.txt"
step "evaluate on the GPU"
"$BIN" eval --model "$W/gpu" --device cuda --src "$W/test100.en" --ref "$W/test100.de" 2>/dev/null | tee "$W/eval-gpu.txt"

step "the GPU-trained model on the CPU"
"$BIN" eval --model "$W/gpu" --device cpu --src "$W/test100.en" --ref "$W/test100.de" 2>/dev/null | tee "$W/eval-cpu.txt"
"$BIN" translate --model "$W/gpu" --device cpu --beam 1 --input "$W/test100.en" > "$W/cpu-greedy.txt"
"$BIN" translate --model "$W/gpu" --device cpu --beam 4 --input "$W/test100.en" > "$W/cpu-beam.txt"
step "nmt explain on the GPU and on the CPU"
"$BIN" explain --model "$W/gpu" --device cuda --json "$SENTENCE" > "$W/explain-gpu.json"
"$BIN" explain --model "$W/gpu" --device cpu --json "$SENTENCE" > "$W/explain-cpu.json"
step "the CPU-trained model on the GPU"
"$BIN" translate --model "$W/cpu" --device cuda "$SENTENCE"

step "summary"
python3 - "$W" "$STEPS" $DP_RUNS <<'EOF'
import json, statistics, sys
w, steps, dp_runs = sys.argv[1], sys.argv[2], sys.argv[3:]
def same(a, b):
    x, y = open(f"{w}/{a}").read().splitlines(), open(f"{w}/{b}").read().splitlines()
    return sum(p == q for p, q in zip(x, y)), max(len(x), len(y))
def speed(run):
    lines = [json.loads(l) for l in open(f"{w}/{run}/metrics.jsonl")]
    rates = [l["tgt_tokens_per_sec"] for l in lines if l.get("kind") == "train"][1:]  # the first interval warms up
    return statistics.median(rates) if rates else float("nan")
gpu, cpu = speed("gpu"), speed("cpu")
done = {r: json.loads(open(f"{w}/{r}/metrics.jsonl").read().splitlines()[-1]).get("step") for r in ["gpu", "cpu"]}
print(f"training, target tokens/s (median of the logged intervals after the first; steps run: {done}):")
print(f"  GPU {gpu:,.0f}   CPU {cpu:,.0f}   GPU / CPU {gpu / cpu:.2f}")
failed = False
for kind in ["greedy", "beam"]:
    n, total = same(f"gpu-{kind}.txt", f"cpu-{kind}.txt")
    print(f"GPU-trained model, {kind} outputs identical on GPU and CPU: {n} / {total}")
    # Float sums run in another order on the GPU, so a near tie can go the other way; a few may differ.
    failed |= n < 0.9 * total
for d in ["gpu", "cpu"]:
    print(f"eval of the GPU-trained model on {d.upper()}:", " | ".join(open(f"{w}/eval-{d}.txt").read().split("\n")))
def last_loss(run):
    """(step, loss, which): the last validation's loss, or the last logged training loss without one"""
    lines = [json.loads(l) for l in open(f"{w}/{run}/metrics.jsonl")]
    valid = [l for l in lines if l.get("kind") == "valid"]
    if valid:
        return valid[-1]["step"], valid[-1]["valid_loss"], "valid loss"
    train = [l for l in lines if l.get("kind") == "train"]
    return (train[-1]["step"], train[-1]["loss"], "training loss") if train else (None, float("nan"), "no loss")
def walk(a, b, path="$"):
    """(largest relative difference of the numbers, paths whose text or structure differs)"""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return 0.0, [path]
        parts = [walk(a[k], b[k], f"{path}.{k}") for k in a]
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return 0.0, [path]
        parts = [walk(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) / max(1.0, abs(b)), []
    else:
        return 0.0, ([] if a == b else [path])
    return max([p[0] for p in parts], default=0.0), [x for p in parts for x in p[1]]
diff, differ = walk(json.load(open(f"{w}/explain-gpu.json")), json.load(open(f"{w}/explain-cpu.json")))
print(f"nmt explain, GPU vs CPU: largest relative difference {diff:.1e}; text that differs at {differ[:5] or 'no path'}")
failed |= diff > 1e-2 or len(differ) > 0
base_step, base_loss, which = last_loss("gpu")
for run in dp_runs:
    step_, loss, _ = last_loss(run)
    print(f"data-parallel {run}: {speed(run):,.0f} target tokens/s; {which} {loss:.3f} at step {step_} "
          f"(one GPU without NCCL: {base_loss:.3f} at step {base_step})")
    # The same batches and the same gradient: only dropout masks (several ranks) and float order differ.
    if step_ != base_step or not abs(loss - base_loss) <= 0.05 * base_loss:
        print(f"gpu-smoke: data-parallel run {run} does not train like the single-GPU run")
        failed = True
sys.exit("gpu-smoke: failed (see above)" if failed else 0)
EOF
echo "gpu-smoke: OK (runs in $W)"
