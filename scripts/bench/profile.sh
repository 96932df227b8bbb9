#!/usr/bin/env bash
# A perf profile of `nmt train`'s updates: starts the run, waits until WARMUP updates are logged (so that
# learning the BPE vocabulary and the first updates stay out of the profile), then records the process
# with `perf record` until it exits, and writes flat reports (self time by symbol and by library).
#
#   scripts/bench/profile.sh [CONFIG] [STEPS] [OUT_DIR]
#
# Defaults: configs/multi30k.json, 10 recorded updates, /tmp/nmt-profile; relative paths are taken from
# the repository root. Environment:
#   NMT         the binary (default ${CARGO_TARGET_DIR:-target}/release/nmt)
#   THREADS     RAYON_NUM_THREADS for nmt (default 2)
#   WARMUP      updates before recording starts (default 3)
#   DATA_DIR    where the config's training files are (default: as train_vs_pytorch.py resolves them)
#   CALL_GRAPH  perf's --call-graph mode (default fp, i.e. `perf record -g`; release builds have no frame
#               pointers, so call chains are short; "dwarf" gives full chains and much larger files)
# The config is the benchmark's (train_vs_pytorch.py --write-config): log_every 1, no validation.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG="${1:-configs/multi30k.json}"
STEPS="${2:-10}"
OUT="${3:-/tmp/nmt-profile}"
NMT="${NMT:-${CARGO_TARGET_DIR:-target}/release/nmt}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-3}"
CALL_GRAPH="${CALL_GRAPH:-fp}"

if ! command -v perf >/dev/null 2>&1; then
    echo "perf is not installed: on Debian, apt-get install linux-perf (or use the per-phase timers of"
    echo "cargo bench --bench train -- $CONFIG $STEPS)"
    exit 1
fi
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo 0)
if [ "$(id -u)" != 0 ] && [ "$paranoid" -gt 2 ]; then
    echo "perf_event_paranoid is $paranoid: this machine does not let a user profile (sysctl kernel.perf_event_paranoid=2)"
    exit 1
fi
[ -x "$NMT" ] || { echo "$NMT is not an executable: cargo build --release, or set NMT"; exit 1; }

mkdir -p "$OUT"
data_args=()
[ -n "${DATA_DIR:-}" ] && data_args=(--data-dir "$DATA_DIR")
python3 scripts/bench/train_vs_pytorch.py --config "$CONFIG" --steps $((WARMUP + STEPS)) "${data_args[@]}" \
    --write-config "$OUT/config.json"
src=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["train_src"])' "$OUT/config.json")
tgt=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["train_tgt"])' "$OUT/config.json")

RAYON_NUM_THREADS="$THREADS" "$NMT" train --config "$OUT/config.json" --out "$OUT/run" \
    --max-steps $((WARMUP + STEPS)) --force --train-src "$src" --train-tgt "$tgt" >"$OUT/train.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' INT TERM
echo "nmt train (pid $pid): waiting for $WARMUP updates before recording"
while kill -0 "$pid" 2>/dev/null; do
    n=$(grep -c '"kind":"train"' "$OUT/run/metrics.jsonl" 2>/dev/null || true)
    [ "${n:-0}" -ge "$WARMUP" ] && break
    sleep 0.2
done
kill -0 "$pid" 2>/dev/null || { echo "nmt train ended before recording started:"; tail "$OUT/train.log"; exit 1; }
perf record --call-graph "$CALL_GRAPH" -o "$OUT/perf.data" -p "$pid" 2>"$OUT/perf-record.log" || true
wait "$pid" || { echo "nmt train failed:"; tail "$OUT/train.log"; exit 1; }

# (The sed drops the empty IPC columns perf prints where the CPU has no such counters, e.g. in a VM.)
tidy() { grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//'; }
perf report -i "$OUT/perf.data" --stdio --no-children -g none --sort symbol --percent-limit 0.5 2>/dev/null \
    | tidy >"$OUT/report-symbols.txt" || true
perf report -i "$OUT/perf.data" --stdio --no-children -g none --sort dso 2>/dev/null | tidy >"$OUT/report-dso.txt" || true
perf report -i "$OUT/perf.data" --stdio --children --percent-limit 2 2>/dev/null >"$OUT/report-callers.txt" || true
echo "updates $((WARMUP + 1))..$((WARMUP + STEPS)) of $CONFIG, $THREADS threads, $(lscpu | sed -n 's/^Model name: *//p')"
echo "top symbols by self time ($OUT/report-symbols.txt; by library: report-dso.txt; with callers: report-callers.txt):"
grep -E '^ +[0-9.]+%' "$OUT/report-symbols.txt" | head -30
