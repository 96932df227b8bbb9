#!/usr/bin/env bash
# Download the Multi30k corpus (Task 1, raw text, en/de/fr) from its official repository, multi30k/dataset
# on GitHub, into DIR (default data/multi30k), with the split names nmt's configs use:
# train, valid, test2016, test2017, test2017mscoco, test2018.
#
#   bash scripts/fetch_multi30k.sh [DIR]
#
# The data is for non-commercial research and educational use; cite Elliott et al. (2016) and (2017).
set -euo pipefail
dir=${1:-data/multi30k}
base=https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw
mkdir -p "$dir"
for pair in train:train val:valid test_2016_flickr:test2016 test_2017_flickr:test2017 \
            test_2017_mscoco:test2017mscoco test_2018_flickr:test2018; do
  upstream=${pair%%:*}
  ours=${pair##*:}
  for lang in en de fr; do
    out="$dir/$ours.$lang"
    if [ -s "$out" ]; then continue; fi
    echo "fetching $upstream.$lang -> $out" >&2
    curl -fsSL "$base/$upstream.$lang.gz" | gunzip > "$out.tmp"
    mv "$out.tmp" "$out"
  done
done
wc -l "$dir"/*.en >&2
