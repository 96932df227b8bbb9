#!/usr/bin/env bash
# Regenerates the pictures in docs/figures/ and the `nmt explain` excerpts of docs/ARCHITECTURE.md from the
# demo model, which the README's main command trains (`cargo run --release -- train` writes runs/demo).
#
#   scripts/make_guide_figures.sh [RUN]        (default runs/demo)
#
# Environment: NMT, the binary (default target/release/nmt, built first if missing).
# Each excerpt replaces the text between `<!-- BEGIN generated:NAME -->` and `<!-- END generated:NAME -->`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/demo}"
NMT="${NMT:-target/release/nmt}"
GUIDE=docs/ARCHITECTURE.md
FIG=docs/figures
SENTENCE="The old man sees twenty-one small dogs."

[ -x "$NMT" ] || cargo build --release
[ -f "$RUN/config.json" ] || { echo "no trained model in $RUN: run 'cargo run --release -- train' first" >&2; exit 1; }
mkdir -p "$FIG"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# fill NAME FILE: puts FILE's text, as a code block, between NAME's markers in the guide.
fill() {
    local name="$1" file="$2"
    { echo '```text'; cat "$file"; echo '```'; } > "$TMP/block"
    awk -v name="$name" -v block="$TMP/block" '
        $0 == "<!-- BEGIN generated:" name " -->" { print; while ((getline line < block) > 0) print line; skip = 1; next }
        $0 == "<!-- END generated:" name " -->" { skip = 0 }
        !skip { print }
    ' "$GUIDE" > "$TMP/guide" && mv "$TMP/guide" "$GUIDE"
}

# fill_html NAME HTML: puts raw HTML (pictures) between NAME's markers.
fill_html() {
    local name="$1"
    printf '%s\n' "$2" > "$TMP/html"
    awk -v name="$name" -v block="$TMP/html" '
        $0 == "<!-- BEGIN generated:" name " -->" { print; while ((getline line < block) > 0) print line; skip = 1; next }
        $0 == "<!-- END generated:" name " -->" { skip = 0 }
        !skip { print }
    ' "$GUIDE" > "$TMP/guide" && mv "$TMP/guide" "$GUIDE"
}

# §2: the positional encoding at the demo model's width, in both layouts.
"$NMT" inspect positional-encoding --positions 50 --d-model 128 -o "$FIG/positional-encoding.png"
"$NMT" inspect positional-encoding --positions 50 --d-model 128 --layout halves -o "$FIG/positional-encoding-halves.png"

# §11: the demo run's curves.
"$NMT" plot --model "$RUN" -o "$FIG/demo-curves.svg"

# §3, §4, §7, §8, §9: `nmt explain` on the running example, one section of its output per block.
"$NMT" explain --model "$RUN" "$SENTENCE" > "$TMP/explain.txt"
section() { # section N: the lines of section N of the explain output (from "N. " to the next section)
    awk -v n="$1" '
        /^[1-9]\. / { on = (substr($0, 1, 2) == n ".") }
        on { print }
    ' "$TMP/explain.txt" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$TMP/section$1.txt"
    [ -s "$TMP/section$1.txt" ] || { echo "nmt explain printed no section $1" >&2; exit 1; }
    echo "$TMP/section$1.txt"
}
fill explain-pieces "$(section 1)"
fill explain-attention "$(section 2)"
fill explain-heads "$(section 3)"
fill explain-layer "$(section 4)"
fill explain-decoder "$(section 5)"
# §10: the decoding table's header and first four steps, for label smoothing.
awk '/^ *step  reads/ { on = 1 } on && n < 5 { print; n++ }' "$(section 5)" > "$TMP/smoothing.txt"
fill explain-smoothing "$TMP/smoothing.txt"

# §12: the beam's n-best list.
"$NMT" translate --model "$RUN" --nbest 4 "$SENTENCE" > "$TMP/nbest.txt"
fill nbest "$TMP/nbest.txt"

# §7, §8: attention maps of the running example (the demo model has 2 layers: layer 1 is the last).
rm -rf "$FIG/attention"
"$NMT" translate --model "$RUN" --attention "$FIG/attention" --format png "$SENTENCE" > /dev/null
# Keep the maps the guide shows; index.html and the other heads are one command away.
find "$FIG/attention" -type f ! -name 'sentence0-encoder-layer1-head0.png' ! -name 'sentence0-decoder-self-layer1-head0.png' \
    ! -name 'sentence0-alignment.png' -delete
fill_html attention-encoder '![Encoder self-attention of the last layer, head 0, for the running example](figures/attention/sentence0-encoder-layer1-head0.png)'
fill_html attention-decoder '![Masked decoder self-attention of the last layer, head 0: nothing above the diagonal](figures/attention/sentence0-decoder-self-layer1-head0.png)

![The alignment: encoder-decoder attention of the last layer, averaged over the heads; row t is the decoder input while it produces piece t + 1](figures/attention/sentence0-alignment.png)'
echo "updated $FIG and the generated blocks of $GUIDE" >&2
