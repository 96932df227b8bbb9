#!/usr/bin/env bash
# Runs one cargo-fuzz (libFuzzer) target for a number of seconds; needs a nightly toolchain and
# `cargo install cargo-fuzz`. Targets: config, corpus, checkpoint (see fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh config 600
#
# The working corpus grows in fuzz/corpus/TARGET (ignored by git); the committed seeds are the configs in
# configs/ for `config`, the demo corpus for `corpus`, and fuzz/seeds/checkpoint/ for `checkpoint`.
# A crash leaves its input in fuzz/artifacts/TARGET/ and a non-zero exit.
set -euo pipefail
target=${1:?usage: scripts/fuzz.sh config|corpus|checkpoint SECONDS}
seconds=${2:-600}
root=$(cd "$(dirname "$0")/.." && pwd)
case $target in
  config) seeds=$root/configs ;;
  corpus) seeds=$root/data/demo ;;
  checkpoint) seeds=$root/fuzz/seeds/checkpoint ;;
  *) echo "unknown target $target (config, corpus, checkpoint)" >&2; exit 2 ;;
esac
mkdir -p "$root/fuzz/corpus/$target"
cd "$root"
exec cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "$seeds" -- \
  -max_total_time="$seconds" -max_len=65536 -print_final_stats=1
