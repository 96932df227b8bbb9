#!/usr/bin/env python3
"""Decoding speed of `nmt translate` against CTranslate2 on the same weights, side by side (issue 15).

    python3 -m venv /tmp/ct2-venv && /tmp/ct2-venv/bin/pip install ctranslate2 tokenizers safetensors numpy
    /tmp/ct2-venv/bin/python scripts/bench/decode_vs_ctranslate2.py --run RUN --src TEST.SRC --ref TEST.REF \\
        [--ct2 CT2_DIR] [--checkpoint PATH|best] [--nmt target/release/nmt] [--limit N] [--rounds 2] \\
        [--threads 2] [--settings greedy:1,greedy:32,beam4:1,beam4:32] [--alpha A] [--keep] [--json FILE]

Run it from the repository root, on a quiet machine: nothing else heavy at the same time.

What it does
------------
1. The CTranslate2 model: `--ct2 DIR` if given (it must come from the same checkpoint), else
   `scripts/export_ctranslate2.py RUN TMP/ct2` (float32; `--checkpoint` is passed to the exporter and to
   `nmt translate`). The first `--limit` lines of `--src` and `--ref` are the test set.
2. `--rounds` rounds. In each round: one `nmt translate` of an empty input file (nmt's start-up and model
   load, see below), then for every setting in `--settings`, `nmt translate` and then CTranslate2, each in
   its own process, on the same input file. A setting is SEARCH:BATCH with SEARCH `greedy` (beam 1) or
   `beamK` (beam K).
3. Per run: sentences/s, target tokens/s, BLEU; then the medians over the rounds and the ratio nmt / CT2.
   The last lines are a markdown table for docs/PERFORMANCE.md (CPU model from lscpu, date, command).

The two sides
-------------
nmt: `nmt translate --model RUN --beam K --batch-size B --input SRC` with stdout to a file, and
RAYON_NUM_THREADS = CANDLE_NUM_THREADS = --threads (`nmt translate` has no thread option: its gemm and
rayon work use rayon's global pool, which reads RAYON_NUM_THREADS, and candle's element-wise pool reads the
same variable; `nmt train` sets both from train.threads in src/ops/cpu.rs). Length penalty: nmt's GNMT
((5 + |Y|) / 6)^alpha with alpha from `--alpha`, else the run's decode.alpha (0.6 unless set); the length
limit is nmt's own, min(source pieces + decode.max_len_extra, model.max_positions - 1).

CTranslate2: `Translator(CT2_DIR, device="cpu", intra_threads=--threads, inter_threads=1)`, then, on the
source lines read from the file: tokenization with nmt's tokenizer.json (`tokenizers`, pieces, no special
tokens, truncated to max_positions - 1 as nmt does; CTranslate2 appends </s> itself), `translate_batch`
with `beam_size=K`, `max_batch_size=B`, `num_hypotheses=1`, `min_decoding_length=0`,
`length_penalty=alpha`, detokenization with the same tokenizer (`decode`, specials skipped) and the output
written to a file. The batches are nmt's: the non-empty inputs sorted by decreasing piece count (stable),
cut into chunks of B (src/decode/mod.rs `translate_ids`); each chunk is one `translate_batch` call, so both
engines decode exactly the same batches. `translate_batch` takes one `max_decoding_length` per call: it is
the chunk's largest nmt limit (that of its longest source), and every output is then cut to its own
sentence's limit, which makes greedy outputs equal nmt's cut outputs; an output that runs past its own
limit inside a chunk with a longer source costs CTranslate2 those extra steps (the count of cut outputs is
printed per run; on a well-trained model it is 0).
The length penalty is NOT the same formula: CTranslate2 ranks finished hypotheses by
log-prob / |Y|^length_penalty, nmt by log-prob / ((5 + |Y|) / 6)^alpha; the two agree only at alpha 0.
Beam outputs, and so BLEU under beam search, can therefore differ. CTranslate2 also ends a beam search on
its own criterion (`patience` 1, early exit). Greedy outputs should be identical (see ctranslate2_parity.py).

Timing
------
Wall time from text to text, outside any warm-up: every run is a fresh process.
- CT2: `time.perf_counter()` inside its worker process, from after the Translator is built (model load
  excluded; it is printed apart as `load`) to the output file written: reading the source file,
  tokenization, translation, detokenization, writing.
- nmt: the subprocess's wall time minus nmt's load time. nmt cannot report its own translation time, so
  each round first runs `nmt translate` on an empty input file (process start, reading config.json,
  tokenizer.json and the checkpoint, nothing decoded), three times; the median is subtracted from that
  round's nmt runs (a warning is printed where it is over half of a run's wall time: too few sentences;
  where it exceeds the wall time, the run's figures are nan). The raw wall time (load included) is printed too. Thread-pool start-up and first-call costs
  stay on nmt's side, as they stay on CT2's (its threads start with the Translator, before the clock, so
  this favours CT2 by at most a few ms).

Definitions
-----------
- sentences/s = input lines / time (empty lines included; both engines give them an empty output).
- target tokens/s = pieces of the output texts / time, where the pieces are counted by encoding each output
  line again with tokenizer.json (no `</s>`). The same count for both engines, from their texts.
- BLEU: `nmt score --hyp OUT --ref REF --json` on both engines' outputs (sacreBLEU's corpus BLEU, 13a,
  mixed case; nmt's implementation is checked against sacreBLEU).
- median: over the rounds, per engine and setting; ratio = median nmt / median CT2 (> 1: nmt faster).
- identical: the number of sentences where nmt's and CT2's output texts are equal (last round); all of them
  are expected under greedy search, not under beam search (the length penalties differ).

Not part of `cargo test` or CI. Only ratios measured in one run on one machine carry over.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from nmt_text import read_lines  # beside this script, so on sys.path when it runs

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROG = "decode_vs_ctranslate2"


def die(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(1)


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return "unknown CPU"


def parse_settings(text):
    settings = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(greedy|beam(\d+)):(\d+)\s*", item)
        if not m:
            die(f"--settings: {item!r} is not greedy:BATCH or beamK:BATCH")
        beam = 1 if m.group(1) == "greedy" else int(m.group(2))
        batch = int(m.group(3))
        if beam < 1 or batch < 1:
            die(f"--settings: {item!r}: beam and batch must be at least 1")
        settings.append({"name": ("greedy" if beam == 1 else f"beam {beam}") + f", batch {batch}",
                         "beam": beam, "batch": batch})
    return settings


# --------------------------------------------------------------------------------------------------
# CTranslate2 worker: its own process, so that every run starts cold and its threads are gone when nmt runs


def ct2_worker(spec_path):
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    import ctranslate2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(spec["tokenizer"])
    t0 = time.perf_counter()
    translator = ctranslate2.Translator(spec["ct2"], device="cpu", inter_threads=1, intra_threads=spec["threads"])
    load = time.perf_counter() - t0

    t0 = time.perf_counter()
    lines = read_lines(spec["src"])
    max_src = spec["max_positions"] - 1
    sources = [tok.encode(line, add_special_tokens=False).tokens[:max_src] for line in lines]
    limits = [min(len(s) + spec["max_len_extra"], max_src) for s in sources]
    order = sorted((i for i in range(len(sources)) if sources[i]), key=lambda i: -len(sources[i]))  # stable
    hyps = [[] for _ in sources]
    cut = 0
    B = spec["batch"]
    for start in range(0, len(order), B):
        chunk = order[start:start + B]
        results = translator.translate_batch([sources[i] for i in chunk], max_batch_size=B, beam_size=spec["beam"],
                                             num_hypotheses=1, min_decoding_length=0,
                                             max_decoding_length=max(limits[i] for i in chunk),
                                             length_penalty=spec["length_penalty"])
        for i, r in zip(chunk, results):
            h = r.hypotheses[0]
            if len(h) > limits[i]:
                h, cut = h[: limits[i]], cut + 1
            hyps[i] = h
    texts = [tok.decode([tok.token_to_id(p) for p in h], skip_special_tokens=True) for h in hyps]
    write_lines(spec["out"], texts)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"load_s": load, "time_s": elapsed, "cut": cut, "version": ctranslate2.__version__}))


# --------------------------------------------------------------------------------------------------
# The driver


def run_nmt(args, src, out, beam, batch, env):
    cmd = [args.nmt, "translate", "--model", args.run, "--beam", str(beam), "--batch-size", str(batch),
           "--input", src]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.alpha is not None:
        cmd += ["--alpha", str(args.alpha)]
    with open(out, "w", encoding="utf-8") as f:
        t0 = time.perf_counter()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=env)
        wall = time.perf_counter() - t0
    if res.returncode != 0:
        die(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return wall


def run_ct2(work, spec):
    path = os.path.join(work, "ct2_spec.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--ct2-worker", path],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        die(f"CTranslate2 worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bleu(args, hyp, ref):
    res = subprocess.run([args.nmt, "score", "--hyp", hyp, "--ref", ref, "--json"], capture_output=True, text=True)
    if res.returncode != 0:
        die(f"nmt score failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout)["bleu"]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--ct2-worker":
        ct2_worker(sys.argv[2])
        return

    default_nmt = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release", "nmt")
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="nmt run directory")
    ap.add_argument("--src", required=True, help="source sentences, one per line")
    ap.add_argument("--ref", required=True, help="reference translations, one per line (for BLEU)")
    ap.add_argument("--ct2", help="an existing CTranslate2 export of RUN (default: export into the work directory)")
    ap.add_argument("--checkpoint", help="weights for nmt and the export (PATH or best; default: the latest)")
    ap.add_argument("--nmt", default=default_nmt, help="the nmt binary (default: target/release/nmt)")
    ap.add_argument("--limit", type=int, default=0, help="use the first N sentences (default: all)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations per setting (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both engines (default 2)")
    ap.add_argument("--settings", default="greedy:1,greedy:32,beam4:1,beam4:32",
                    help="comma-separated SEARCH:BATCH, SEARCH greedy or beamK (default: all four)")
    ap.add_argument("--alpha", type=float, help="nmt's GNMT alpha and CT2's length_penalty (default: decode.alpha)")
    ap.add_argument("--work", help="work directory (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (outputs, export)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    args = ap.parse_args()

    if args.rounds < 1:
        die("--rounds must be at least 1")
    if not os.access(args.nmt, os.X_OK):
        die(f"nmt binary not found: {args.nmt} (cargo build --release, or --nmt PATH)")
    settings = parse_settings(args.settings)
    try:
        from tokenizers import Tokenizer
        import ctranslate2
    except ImportError as e:
        die(f"{e.name} is not installed (pip install ctranslate2 tokenizers safetensors numpy, in a venv)")

    cfg = json.load(open(os.path.join(args.run, "config.json"), encoding="utf-8"))
    decode = cfg.get("decode", {})
    alpha = args.alpha if args.alpha is not None else decode.get("alpha", 0.6)
    tok_path = os.path.join(args.run, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)

    src_lines, ref_lines = read_lines(args.src), read_lines(args.ref)
    if len(src_lines) != len(ref_lines):
        die(f"--src has {len(src_lines)} lines, --ref {len(ref_lines)}")
    if args.limit > 0:
        src_lines, ref_lines = src_lines[: args.limit], ref_lines[: args.limit]
    n = len(src_lines)
    if n == 0:
        die("no sentences")

    work = args.work or tempfile.mkdtemp(prefix="nmt-decode-bench-")
    os.makedirs(work, exist_ok=True)
    src, ref, empty = (os.path.join(work, x) for x in ("src.txt", "ref.txt", "empty.txt"))
    write_lines(src, src_lines)
    write_lines(ref, ref_lines)
    open(empty, "w").close()

    ct2_dir = args.ct2
    if not ct2_dir:
        ct2_dir = os.path.join(work, "ct2")
        cmd = [sys.executable, os.path.join(REPO, "scripts", "export_ctranslate2.py"), args.run, ct2_dir, "--force"]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            die(f"export failed:\n{res.stderr}")
        print(res.stdout.strip())

    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = env["CANDLE_NUM_THREADS"] = str(args.threads)
    date = datetime.date.today().isoformat()
    cpu = cpu_model()
    print(f"{date}  {cpu}, {os.cpu_count()} CPUs, {args.threads} threads; CTranslate2 {ctranslate2.__version__} "
          f"float32")
    print(f"run {args.run}, {n} sentences of {args.src}, {args.rounds} rounds; alpha {alpha} (nmt GNMT, CT2 "
          f"length_penalty: not the same formula)")

    runs = []  # one dict per engine, setting and round
    loads = []
    for r in range(1, args.rounds + 1):
        load = statistics.median(run_nmt(args, empty, os.path.join(work, "empty.out"), 1, 1, env) for _ in range(3))
        loads.append(load)
        print(f"\nround {r}: nmt load (empty input, median of 3) {load * 1e3:.0f} ms", flush=True)
        for s in settings:
            for engine in ("nmt", "ct2"):
                out = os.path.join(work, f"{engine}.{s['beam']}.{s['batch']}.r{r}.txt")
                if engine == "nmt":
                    wall = run_nmt(args, src, out, s["beam"], s["batch"], env)
                    secs, extra = wall - load, {"wall_s": wall}
                    if secs <= 0:  # the load's noise exceeds the decoding: no figure rather than a wild one
                        secs = float("nan")
                else:
                    res = run_ct2(work, {"ct2": ct2_dir, "tokenizer": tok_path, "src": src, "out": out,
                                         "threads": args.threads, "beam": s["beam"], "batch": s["batch"],
                                         "length_penalty": alpha, "max_positions": cfg["model"]["max_positions"],
                                         "max_len_extra": decode.get("max_len_extra", 50)})
                    secs, extra = res["time_s"], {"load_s": res["load_s"], "cut": res["cut"]}
                texts = read_lines(out)
                if len(texts) != n:
                    die(f"{engine} wrote {len(texts)} lines for {n} inputs ({out})")
                pieces = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
                x = {"engine": engine, "setting": s["name"], "round": r, "time_s": secs, "sent_s": n / secs,
                     "tok_s": pieces / secs, "pieces": pieces, "bleu": bleu(args, out, ref), "out": out, **extra}
                runs.append(x)
                more = (f"wall {x['wall_s']:.2f} s with load" if engine == "nmt"
                        else f"load {x['load_s'] * 1e3:.0f} ms, {x['cut']} cut at their limit")
                print(f"  {s['name']:<16} {engine:<4} {secs:7.2f} s  {x['sent_s']:8.1f} sent/s  "
                      f"{x['tok_s']:8.0f} tgt tok/s  BLEU {x['bleu']:6.2f}  ({more})", flush=True)
                if engine == "nmt" and load > 0.5 * x["wall_s"]:
                    print("  WARNING: nmt's load is over half of its wall time: too few sentences to time")

    # Medians and ratios.
    summary = []
    for s in settings:
        med = {}
        for engine in ("nmt", "ct2"):
            xs = [x for x in runs if x["engine"] == engine and x["setting"] == s["name"]]
            med[engine] = {k: statistics.median(x[k] for x in xs) for k in ("sent_s", "tok_s", "bleu")}
        last = {e: read_lines([x for x in runs if x["engine"] == e and x["setting"] == s["name"]][-1]["out"])
                for e in ("nmt", "ct2")}
        same = sum(a == b for a, b in zip(last["nmt"], last["ct2"]))
        summary.append({"setting": s["name"], "nmt": med["nmt"], "ct2": med["ct2"],
                        "ratio": med["nmt"]["sent_s"] / med["ct2"]["sent_s"], "identical": same})

    print(f"\nmedian over {args.rounds} rounds:")
    print(f"{'setting':<18} {'nmt sent/s':>10} {'CT2 sent/s':>10} {'nmt tok/s':>10} {'CT2 tok/s':>10} "
          f"{'nmt BLEU':>8} {'CT2 BLEU':>8} {'nmt/CT2':>8} {'identical':>10}")
    for x in summary:
        print(f"{x['setting']:<18} {x['nmt']['sent_s']:>10.1f} {x['ct2']['sent_s']:>10.1f} {x['nmt']['tok_s']:>10.0f} "
              f"{x['ct2']['tok_s']:>10.0f} {x['nmt']['bleu']:>8.2f} {x['ct2']['bleu']:>8.2f} {x['ratio']:>8.2f} "
              f"{x['identical']:>6}/{n}")

    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), REPO)] + sys.argv[1:])
    print(f"\nMarkdown ({date}, {cpu}, {os.cpu_count()} CPUs, {args.threads} threads, CTranslate2 "
          f"{ctranslate2.__version__} float32, {n} sentences of `{args.src}`, median of {args.rounds} alternating "
          f"rounds; nmt's time excludes its model load, {statistics.median(loads) * 1e3:.0f} ms, measured on an "
          f"empty input; `{command}`):\n")
    print("| setting | nmt sent/s | CT2 sent/s | nmt tgt tok/s | CT2 tgt tok/s | nmt BLEU | CT2 BLEU | nmt / CT2 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for x in summary:
        print(f"| {x['setting']} | {x['nmt']['sent_s']:.1f} | {x['ct2']['sent_s']:.1f} | {x['nmt']['tok_s']:.0f} | "
              f"{x['ct2']['tok_s']:.0f} | {x['nmt']['bleu']:.2f} | {x['ct2']['bleu']:.2f} | **{x['ratio']:.2f}** |")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"date": date, "cpu": cpu, "threads": args.threads, "sentences": n, "src": args.src,
                       "run": args.run, "alpha": alpha, "ct2_version": ctranslate2.__version__,
                       "nmt_load_s": loads, "runs": runs, "summary": summary, "command": command}, f, indent=2)
            f.write("\n")
    if args.keep or args.work:
        print(f"\nkept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
