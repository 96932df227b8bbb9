#!/usr/bin/env python3
"""Check that a CTranslate2 export of an nmt run decodes and scores like nmt itself.

    python3 scripts/bench/ctranslate2_parity.py RUN CT2_DIR --src FILE [--nmt BINARY] [-n N]

CT2_DIR comes from `scripts/export_ctranslate2.py RUN CT2_DIR` (same checkpoint: pass the same --checkpoint
to both). Not part of `cargo test`: it needs `ctranslate2` and `tokenizers` from PyPI.

Two checks on the first N lines of FILE:

1. Greedy outputs. nmt: `nmt translate --model RUN --beam 1 --nbest 1 --input FILE` (greedy search; --nbest 1
   only adds the score, which for greedy search is the plain sum of log-probabilities). CTranslate2:
   `translate_batch` with `beam_size=1`, `min_decoding_length=0` and `max_decoding_length` = nmt's limit,
   min(source pieces + decode.max_len_extra, model.max_positions - 1), on the pieces of nmt's tokenizer.json
   (the source truncated to max_positions - 1 pieces, as nmt does; CTranslate2 appends </s>). Its output
   pieces are turned into text by the same tokenizer (`decode`, specials skipped). Counted: identical texts.
2. Log-probabilities. CTranslate2's `score_batch` (teacher forcing) on CTranslate2's greedy pieces, summed,
   against nmt's greedy log-probability, for every sentence whose output is identical. An output cut at the
   length limit has no </s> in nmt's sum, so the </s> term of `score_batch` is left out there. nmt prints
   the score with 6 decimals, so differences below 5e-7 are invisible. Also printed: CTranslate2's own
   greedy score (`return_scores`, with `length_penalty=0` so that it is the plain sum rather than the sum
   divided by the length; the penalty does not change which token greedy search picks) against nmt's.

Exit status 0 when every output is identical and the largest log-probability difference is within --tol.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def parse_nbest(text, n):
    out = [None] * n
    for line in text.splitlines():
        parts = line.split(" ||| ")
        if len(parts) != 3:
            raise SystemExit(f"ctranslate2_parity: unexpected nmt --nbest line: {line!r}")
        out[int(parts[0])] = (parts[1], float(parts[2]))
    if any(o is None for o in out):
        raise SystemExit("ctranslate2_parity: nmt printed fewer hypotheses than inputs")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", metavar="RUN", help="nmt run directory")
    ap.add_argument("ct2", metavar="CT2_DIR", help="the exported CTranslate2 model")
    ap.add_argument("--src", required=True, help="source sentences, one per line")
    ap.add_argument("--nmt", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "nmt"),
                    help="the nmt binary (default: target/release/nmt)")
    ap.add_argument("--checkpoint", help="passed to nmt translate; export the same one")
    ap.add_argument("-n", type=int, default=100, help="number of sentences (default 100)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of both engines (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 intra_threads (default 1)")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest accepted log-probability difference")
    ap.add_argument("--show", type=int, default=5, help="print this many differing outputs")
    args = ap.parse_args()

    import ctranslate2
    from tokenizers import Tokenizer

    cfg = json.load(open(os.path.join(args.run, "config.json"), encoding="utf-8"))
    max_positions = cfg["model"]["max_positions"]
    max_len_extra = cfg.get("decode", {}).get("max_len_extra", 50)
    tok = Tokenizer.from_file(os.path.join(args.run, "tokenizer.json"))
    lines = open(args.src, encoding="utf-8").read().splitlines()[: args.n]
    n = len(lines)

    # nmt: greedy outputs and their log-probabilities.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("".join(line + "\n" for line in lines))
        src_file = f.name
    cmd = [args.nmt, "translate", "--model", args.run, "--beam", "1", "--nbest", "1",
           "--batch-size", str(args.batch_size), "--input", src_file]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(src_file)
    if res.returncode != 0:
        raise SystemExit(f"ctranslate2_parity: {' '.join(cmd)} failed:\n{res.stderr}")
    nmt = parse_nbest(res.stdout, n)

    # CTranslate2: the same greedy search, grouped by length limit (translate_batch takes one limit).
    sources = [tok.encode(line, add_special_tokens=False).tokens[: max_positions - 1] for line in lines]
    limits = [min(len(s) + max_len_extra, max_positions - 1) for s in sources]
    translator = ctranslate2.Translator(args.ct2, device="cpu", inter_threads=1, intra_threads=args.threads)
    hyps, ct2_scores = [[] for _ in range(n)], [0.0] * n
    todo = [i for i in range(n) if sources[i]]  # nmt gives an empty input an empty output
    for limit in sorted({limits[i] for i in todo}):
        idx = [i for i in todo if limits[i] == limit]
        results = translator.translate_batch([sources[i] for i in idx], max_batch_size=args.batch_size,
                                             beam_size=1, min_decoding_length=0, max_decoding_length=limit,
                                             return_scores=True, length_penalty=0)
        for i, r in zip(idx, results):
            hyps[i], ct2_scores[i] = r.hypotheses[0], r.scores[0]
    texts = [tok.decode([tok.token_to_id(p) for p in h], skip_special_tokens=True) for h in hyps]

    same = [i for i in range(n) if texts[i] == nmt[i][0]]
    print(f"sentences: {n} (first {n} of {args.src})")
    print(f"identical greedy outputs: {len(same)}/{n}")
    for i in [i for i in range(n) if i not in set(same)][: args.show]:
        print(f"  [{i}] nmt:  {nmt[i][0]}\n  [{i}] ct2:  {texts[i]}")

    # Teacher-forced log-probabilities of the identical outputs.
    scored = [i for i in same if sources[i]]
    tf = translator.score_batch([sources[i] for i in scored], [hyps[i] for i in scored],
                                max_batch_size=args.batch_size)
    diff_tf, diff_greedy, worst, cut = 0.0, 0.0, None, 0
    for i, r in zip(scored, tf):
        lp = r.log_probs  # one per target piece, then </s>
        if len(hyps[i]) >= limits[i]:  # cut at the limit: nmt's sum has no </s> term
            lp, cut = lp[:-1], cut + 1
        d = abs(sum(lp) - nmt[i][1])
        if d > diff_tf:
            diff_tf, worst = d, i
        diff_greedy = max(diff_greedy, abs(ct2_scores[i] - nmt[i][1]))
    print(f"log-probabilities compared: {len(scored)} sentences ({cut} cut at the length limit, without </s>)")
    print(f"max |score_batch sum - nmt greedy log-prob|: {diff_tf:.3g}"
          + (f" (sentence {worst}: nmt {nmt[worst][1]:.6f})" if worst is not None else ""))
    print(f"max |CTranslate2 greedy score - nmt greedy log-prob|: {diff_greedy:.3g}")
    ok = len(same) == n and diff_tf <= args.tol
    print("parity: OK" if ok else "parity: MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
