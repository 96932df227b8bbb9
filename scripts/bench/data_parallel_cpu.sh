#!/usr/bin/env bash
# Data-parallel training on the CPU (issue 14, docs/SCALING.md): the same config and batches trained by one
# process with every core (`--threads C`) and by `--nproc N` processes with C/N threads each, which sum their
# gradients through rank 0 over TCP; alternately, ROUNDS times. Prints the median target tokens/s of the
# logged intervals after the first, per run, and the ratio (N processes / one process).
#
#     scripts/bench/data_parallel_cpu.sh [CONFIG] [STEPS] [ROUNDS] [NPROC]
#
# CONFIG: configs/multi30k.json (its data under data/multi30k: link ../shared/data/multi30k there). STEPS:
# updates per run (40). ROUNDS: 2. NPROC: 2. The binary is target/release/nmt (`cargo build --release`).
# Validation and checkpoints are turned off for the runs; the runs go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-configs/multi30k.json}
STEPS=${2:-40}
ROUNDS=${3:-2}
NPROC=${4:-2}
BIN=target/release/nmt
[ -x "$BIN" ] || { echo "data_parallel_cpu: build $BIN first (cargo build --release)" >&2; exit 1; }
CORES=$(nproc)
W=$(mktemp -d)
python3 - "$CONFIG" "$W/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["train"].update(log_every=10, valid_every=0, checkpoint_every=1_000_000, max_minutes=0)
json.dump(c, open(sys.argv[2], "w"), indent=1)
PY
median() {
  python3 - "$1/metrics.jsonl" <<'PY'
import json, statistics, sys
rates = [json.loads(l)["tgt_tokens_per_sec"] for l in open(sys.argv[1]) if '"train"' in l][1:]
print(round(statistics.median(rates)))
PY
}
echo "$(lscpu | grep 'Model name' | sed 's/  */ /g'), $CORES cores; $(date -u +%FT%TZ); $CONFIG, $STEPS updates"
for round in $(seq "$ROUNDS"); do
  "$BIN" train --config "$W/config.json" --out "$W/one" --max-steps "$STEPS" --force --threads "$CORES" 2>/dev/null
  "$BIN" train --config "$W/config.json" --out "$W/many" --max-steps "$STEPS" --force --nproc "$NPROC" 2>/dev/null
  one=$(median "$W/one")
  many=$(median "$W/many")
  echo "round $round: 1 process x $CORES threads $one tok/s; $NPROC processes x $((CORES / NPROC)) threads $many tok/s; ratio $(python3 -c "print(f'{$many / $one:.2f}')")"
done
rm -rf "$W"
