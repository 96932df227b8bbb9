#!/usr/bin/env python3
"""Training throughput of `nmt train` against a plain PyTorch eager implementation of the same model,
side by side on the same machine, the same tokenizer.json and the same batches.

    scripts/bench/setup.sh                       # once: /tmp/nmt-bench-venv with torch and tokenizers
    /tmp/nmt-bench-venv/bin/python scripts/bench/train_vs_pytorch.py \\
        [--config configs/multi30k.json] [--data-dir ../shared/data/multi30k] [--nmt target/release/nmt] \\
        [--steps 35] [--warmup 5] [--rounds 2] [--threads 2] [--attention sdpa|matmul] [--keep]

Run it from the repository root, on a quiet machine: nothing else heavy at the same time.

What it does
------------
1. The f32 matmul peak: a 2048x2048 by 2048x2048 product through candle's CPU matmul
   (`cargo bench --bench matmul -- 2048`) and through `torch.mm`, both with THREADS threads, best of
   several repetitions. The peak is the higher of the two.
2. `--rounds` rounds, each running `nmt train` and then the PyTorch trainer, every trainer in its own
   process (so that each peak RSS is its own), for `--steps` updates. Round 1's nmt run learns the BPE
   vocabulary and writes `tokenizer.json` and the resolved `config.json` (vocabulary size included);
   everything after uses them.
3. The tables: per run, target tokens/s, ms per update, peak RSS, and the share of the matmul peak; then
   the median of each side over the rounds and the ratio nmt / PyTorch.

The nmt side is `nmt train --config TMP.json --out RUN --max-steps STEPS --force --train-src ...
--train-tgt ...` with RAYON_NUM_THREADS=THREADS, where TMP.json is the config with `log_every` 1,
`valid_every` 0, no valid set and checkpoints only at the end. Its timing is its own `metrics.jsonl`: a line
per update, whose `tgt_tokens_per_sec` covers that update alone (forward, loss, backward, Adam; building the
batch tensors is outside), so the update's time is its target-token count / `tgt_tokens_per_sec`.
The PyTorch side times the same span: from the first forward to the end of `optimizer.step()`, batch
tensors built before. Both report target tokens/s = (sum of real target tokens, `</s>` included, over the
updates after `--warmup`) / (sum of their update times), and ms per update = the mean of those times.
Peak RSS is the child process's `ru_maxrss` (so nmt's includes learning the BPE vocabulary, and PyTorch's
includes the torch library; the PyTorch line also says how much of it was there right after `import torch`).

The same batches, exactly
-------------------------
`cargo bench --bench train -- --dump-batches OUT.json --tokenizer RUN/tokenizer.json CFG STEPS` writes what
nmt trains on: the lengths of the tokenized examples (after the `data.max_len` filter), a hash of all their
ids, every batch of `make_batches` (example indices), and the batches of each update in nmt's seeded
epoch order (ChaCha8, which this script does not reimplement). The PyTorch worker tokenizes the corpus itself
with the same tokenizer.json and the same filter, rebuilds the batches with the same rule (sort by (src len,
tgt len, index); add while longest * (n + 1) <= batch_tokens, lengths + 1 for `</s>`), checks that lengths,
hash and every batch equal nmt's (and stops if not), then replays nmt's update sequence: update k of both
trainers is the same list of sentence pairs, padded the same way. For every nmt update, the ratio of
`src_tokens_per_sec` to `tgt_tokens_per_sec` in metrics.jsonl must equal that update's source/target token
ratio in the dump; the script counts the updates where it does, which checks that nmt trained the dumped
sequence. Dropout masks and initial weights differ (each side draws its own).

The model, PyTorch side (matching src/model/)
---------------------------------------------
Post-norm `LayerNorm(x + Dropout(Sublayer(x)))` with eps `model.layer_norm_eps` (pre-norm with a final
LayerNorm per stack when the config says "pre"); multi-head attention with four nn.Linear (w_q, w_k, w_v,
w_o, with biases), heads split by reshape; attention by `F.scaled_dot_product_attention` (default,
`--attention sdpa`; additive -1e9 key-padding mask, `is_causal=True` in decoder self-attention, no
attention dropout, as in nmt) or by plain matmuls and softmax (`--attention matmul`, nmt's formulation);
FFN `w_2(relu(w_1 x))`; embedding * sqrt(d_model) + sinusoidal PE, then dropout; one (V, d_model) matrix
for source embedding, target embedding and output projection when tied (three otherwise); dropout on the
embedding sums and on each sub-layer output; label-smoothed cross-entropy `F.cross_entropy(...,
ignore_index=pad, label_smoothing=eps, reduction="sum") / target tokens`, which is nmt's loss (eps spread
uniformly over all V, pad ignored, mean over non-pad tokens); `torch.optim.Adam(betas=(b1, b2),
eps=adam_eps)` with lr = lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) set before each
step. Initialisation as nmt's: Xavier-uniform linear weights, zero biases, N(0, d_model^-0.5) embedding,
LayerNorm 1 and 0. No torch.compile, default Adam implementation.

Model FLOPs and the share of the peak
-------------------------------------
For one update (every batch of it), with B sentences, S = padded source length, T = padded target length
(`</s>` / `<s>` included, padding positions counted as real ones):

    FLOPs = 6 * (P_enc * B*S + P_dec * B*T + V*d_model * B*T)
          + 12 * d_model * B * (N_enc * S*S + N_dec * (T*T + T*S))

P_enc and P_dec are the encoder and decoder parameter counts of `nmt info` (weights, biases and LayerNorm
gains, as `count_parameters` in src/model/mod.rs), V*d_model the output projection. 6 = 2 (multiply-add)
* 3 (forward, and backward for the input and the weight gradients). The second line is the attention
products QK^T and A.V: 2 * B * Lq * Lk * d_model FLOPs each in the forward pass (summed over heads),
times 3 for forward and backward, over encoder self-attention (S x S), decoder self-attention (T x T, the
full square although causal) and cross-attention (T x S). The embedding lookups count nothing. This follows
the issue's formula; note that it puts the decoder's cross-attention W_K and W_V (2 * d_model^2 + 2 *
d_model per layer) on target positions, though they run on the S source positions; with S ~ T the
difference is small. The share of the peak = (sum of FLOPs) / (sum of update times) / peak, over the updates
after --warmup. nmt's training step leaves the target's padding positions out of the decoder's linear maps
and the output projection (PyTorch computes them and ignores their loss): the script also prints the share
of padding among target positions, and nmt's share of the peak with the decoder's parameters and the output
projection counted on real target tokens only (about the FLOPs nmt runs).

Sanity checks printed: the PyTorch model's parameter count against `nmt info --config CFG --vocab V`
(total and per component), and the first update's loss of each side against ln(V).
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from nmt_text import read_lines  # beside this script, so on sys.path when it runs

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


# --------------------------------------------------------------------------------------------------
# Shared helpers (no torch needed)


def example_len(src_len, tgt_len):
    return max(src_len, tgt_len) + 1


def make_batches(lengths, batch_tokens):
    """nmt's `make_batches` over (src len, tgt len) pairs (ids without specials)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0], lengths[i][1], i))
    batches, current, longest = [], [], 0
    for i in order:
        n = example_len(*lengths[i])
        new_longest = max(longest, n)
        if current and new_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
            longest = n
        else:
            longest = new_longest
        current.append(i)
    if current:
        batches.append(current)
    return batches


def ids_hash(examples):
    """The dump's FNV-1a over every id, each side followed by u32::MAX."""
    h, mask, prime, sep = 0xCBF29CE484222325, (1 << 64) - 1, 0x100000001B3, 0xFFFFFFFF
    for src, tgt in examples:
        for x in src:
            h = ((h ^ x) * prime) & mask
        h = ((h ^ sep) * prime) & mask
        for x in tgt:
            h = ((h ^ x) * prime) & mask
        h = ((h ^ sep) * prime) & mask
    return f"{h:016x}"


def update_shapes(dump, update):
    """(B, S, T, src tokens, tgt tokens) per batch of one update; S and T padded, specials included."""
    out = []
    for b in update:
        lens = [dump["lengths"][i] for i in dump["batches"][b]]
        B = len(lens)
        S = max(s for s, _ in lens) + 1  # source + </s>
        T = max(t for _, t in lens) + 1  # <s> + target, and target + </s>
        out.append((B, S, T, sum(s + 1 for s, _ in lens), sum(t + 1 for _, t in lens)))
    return out


def update_flops(model_cfg, counts, shapes, real_targets=False):
    """The formula's FLOPs; with real_targets, the decoder's parameters and the output projection on real
    target tokens only (the attention products stay on padded shapes)."""
    d = model_cfg["d_model"]
    ne, nd = model_cfg["encoder_layers"], model_cfg["decoder_layers"]
    out_proj = model_cfg["vocab_size"] * d
    total = 0
    for B, S, T, _, tgt_tokens in shapes:
        targets = tgt_tokens if real_targets else B * T
        total += 6 * (counts["encoder"] * B * S + (counts["decoder"] + out_proj) * targets)
        total += 12 * d * B * (ne * S * S + nd * (T * T + T * S))
    return total


def run_child(cmd, log_path, env=None, cwd=None):
    """Runs cmd to completion, output to log_path; returns (exit status, wall seconds, peak RSS in bytes)."""
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def die(msg):
    print(f"train_vs_pytorch: error: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------------------------------
# PyTorch worker (runs in its own process)


def torch_model(torch, cfg, attention):
    nn, F = torch.nn, torch.nn.functional
    m = cfg["model"]
    d, h, V = m["d_model"], m["heads"], m["vocab_size"]
    dk, p, eps, pre = d // h, m["dropout"], m["layer_norm_eps"], m["norm"] == "pre"

    def linear(i, o):
        lin = nn.Linear(i, o)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        return lin

    class MultiHeadAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_q, self.w_k, self.w_v, self.w_o = linear(d, d), linear(d, d), linear(d, d), linear(d, d)

        def forward(self, x, mem, mask=None, causal=False):
            B, Lq, _ = x.shape
            Lk = mem.shape[1]
            q = self.w_q(x).view(B, Lq, h, dk).transpose(1, 2)
            k = self.w_k(mem).view(B, Lk, h, dk).transpose(1, 2)
            v = self.w_v(mem).view(B, Lk, h, dk).transpose(1, 2)
            if attention == "sdpa":
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
            else:
                scores = q @ k.transpose(-2, -1) / math.sqrt(dk)
                if mask is not None:
                    scores = scores + mask
                if causal:
                    scores = scores + causal_mask(Lq, x.device)
                o = scores.softmax(-1) @ v
            return self.w_o(o.transpose(1, 2).reshape(B, Lq, d))

    def causal_mask(n, device):
        return torch.full((n, n), -1e9, device=device).triu(1)

    class Sublayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(d, eps=eps)

        def forward(self, x, f):
            if pre:
                return x + F.dropout(f(self.norm(x)), p, self.training)
            return self.norm(x + F.dropout(f(x), p, self.training))

    class FeedForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_1, self.w_2 = linear(d, m["d_ff"]), linear(m["d_ff"], d)

        def forward(self, x):
            return self.w_2(F.relu(self.w_1(x)))

    class EncoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.self_attn_norm = MultiHeadAttention(), Sublayer()
            self.ffn, self.ffn_norm = FeedForward(), Sublayer()

        def forward(self, x, src_mask):
            x = self.self_attn_norm(x, lambda y: self.self_attn(y, y, src_mask))
            return self.ffn_norm(x, self.ffn)

    class DecoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.self_attn_norm = MultiHeadAttention(), Sublayer()
            self.cross_attn, self.cross_attn_norm = MultiHeadAttention(), Sublayer()
            self.ffn, self.ffn_norm = FeedForward(), Sublayer()

        def forward(self, x, mem, src_mask):
            x = self.self_attn_norm(x, lambda y: self.self_attn(y, y, causal=True))
            x = self.cross_attn_norm(x, lambda y: self.cross_attn(y, mem, src_mask))
            return self.ffn_norm(x, self.ffn)

    class Stack(nn.Module):
        def __init__(self, layer, n):
            super().__init__()
            self.layers = nn.ModuleList(layer() for _ in range(n))
            self.final_norm = nn.LayerNorm(d, eps=eps) if pre else None

        def forward(self, x, *args):
            for layer in self.layers:
                x = layer(x, *args)
            return self.final_norm(x) if self.final_norm is not None else x

    def positional_table(n):
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        i = torch.arange(d // 2, dtype=torch.float64)[None, :]
        angle = pos / torch.pow(10000.0, 2.0 * i / d)
        pe = torch.zeros(n, d, dtype=torch.float64)
        pe[:, 0 : 2 * (d // 2) : 2], pe[:, 1 : 2 * (d // 2) : 2] = angle.sin(), angle.cos()
        return pe.float()

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()

            def emb():
                return nn.Parameter(torch.randn(V, d) * d**-0.5)

            if m["tie_embeddings"]:
                self.embedding = emb()
                self.src_emb = self.tgt_emb = self.generator = self.embedding
            else:
                self.src_emb, self.tgt_emb, self.generator = emb(), emb(), emb()
            self.encoder = Stack(EncoderLayer, m["encoder_layers"])
            self.decoder = Stack(DecoderLayer, m["decoder_layers"])
            self.register_buffer("pe", positional_table(m["max_positions"]), persistent=False)

        def embed(self, table, ids):
            x = F.embedding(ids, table) * math.sqrt(d) + self.pe[: ids.shape[1]]
            return F.dropout(x, p, self.training)

        def forward(self, src, src_mask, tgt_in):
            mem = self.encoder(self.embed(self.src_emb, src), src_mask)
            hidden = self.decoder(self.embed(self.tgt_emb, tgt_in), mem, src_mask)
            return F.linear(hidden, self.generator)  # (B, T, V)

    return Transformer()


def parameter_counts(model):
    counts = {"embeddings": 0, "encoder": 0, "decoder": 0}
    for name, prm in model.named_parameters():  # shared (tied) parameters are listed once
        top = name.split(".")[0]
        counts[top if top in ("encoder", "decoder") else "embeddings"] += prm.numel()
    counts["total"] = sum(counts.values())
    return counts


def worker_torch(spec):
    import resource

    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process after `import torch`
    torch.set_num_threads(spec["threads"])
    cfg = json.load(open(spec["run_config"]))
    dump = json.load(open(spec["dump"]))
    m, t = cfg["model"], cfg["train"]

    # Tokenize exactly as nmt does and check the result against nmt's dump.
    tok = Tokenizer.from_file(spec["tokenizer"])
    pad, bos, eos = (tok.token_to_id(s) for s in ("<pad>", "<s>", "</s>"))
    if [pad, bos, eos] != [0, 1, 2]:
        die(f"{spec['tokenizer']}: unexpected special token ids {[pad, bos, eos]}")
    srcs, tgts = read_lines(spec["train_src"]), read_lines(spec["train_tgt"])
    pairs = [(s, g) for s, g in zip(srcs, tgts) if s.strip() and g.strip()]
    enc_s = tok.encode_batch([s for s, _ in pairs], add_special_tokens=False)
    enc_t = tok.encode_batch([g for _, g in pairs], add_special_tokens=False)
    max_len = cfg["data"]["max_len"]
    examples = [
        (a.ids, b.ids) for a, b in zip(enc_s, enc_t) if len(a.ids) <= max_len and len(b.ids) <= max_len
    ]
    lengths = [[len(a), len(b)] for a, b in examples]
    check = {
        "examples": len(examples) == dump["examples"],
        "lengths": lengths == dump["lengths"],
        "ids_hash": ids_hash(examples) == dump["ids_fnv1a"],
        "batches": make_batches(lengths, t["batch_tokens"]) == dump["batches"],
    }
    if not all(check.values()):
        bad = [k for k, ok in check.items() if not ok]
        die(f"the PyTorch side's examples or batches differ from nmt's ({', '.join(bad)}): {len(examples)} "
            f"examples here, {dump['examples']} in nmt's dump")

    torch.manual_seed(spec["seed"])
    model = torch_model(torch, cfg, spec["attention"])
    model.train()
    counts = parameter_counts(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.0, betas=(t["adam_beta1"], t["adam_beta2"]), eps=t["adam_eps"])

    def lr(step):
        return t["lr_scale"] * m["d_model"] ** -0.5 * min(step**-0.5, step * t["warmup_steps"] ** -1.5)

    def tensors(idx):
        ex = [examples[i] for i in idx]
        S = max(len(s) for s, _ in ex) + 1
        T = max(len(g) for _, g in ex) + 1
        src = torch.tensor([s + [eos] + [pad] * (S - len(s) - 1) for s, _ in ex])
        tgt_in = torch.tensor([[bos] + g + [pad] * (T - len(g) - 1) for _, g in ex])
        tgt_out = torch.tensor([g + [eos] + [pad] * (T - len(g) - 1) for _, g in ex])
        src_mask = (src == pad).float().mul(-1e9).view(len(ex), 1, 1, S)
        return src, src_mask, tgt_in, tgt_out

    eps_ls, V = t["label_smoothing"], m["vocab_size"]
    steps = []
    for k, update in enumerate(dump["updates"][: spec["steps"]], start=1):
        batches = [tensors(dump["batches"][b]) for b in update]
        tokens = sum(int((b[3] != pad).sum()) for b in batches)
        start = time.perf_counter()
        loss_sum = 0.0
        for src, src_mask, tgt_in, tgt_out in batches:
            logits = model(src, src_mask, tgt_in)
            loss = F.cross_entropy(
                logits.reshape(-1, V), tgt_out.reshape(-1), ignore_index=pad, label_smoothing=eps_ls, reduction="sum"
            )
            (loss / tokens).backward()
            loss_sum += loss.item()
        for g in opt.param_groups:
            g["lr"] = lr(k)
        opt.step()
        opt.zero_grad(set_to_none=True)
        secs = time.perf_counter() - start
        steps.append({"step": k, "secs": secs, "tgt_tokens": tokens, "loss": loss_sum / tokens})
        print(f"step {k}: loss {loss_sum / tokens:.4f}, {secs * 1e3:.0f} ms, {tokens / secs:.0f} tgt tok/s", flush=True)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "counts": counts,
        "check": check,
        "rss_import": rss_import,
        "steps": steps,
    }
    json.dump(result, open(spec["out"], "w"))


def worker_matmul(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    n = spec["n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    for i in range(spec["reps"] + 2):
        start = time.perf_counter()
        torch.mm(a, b)
        if i >= 2:
            times.append(time.perf_counter() - start)
    best = min(times)
    json.dump({"gflops": 2 * n**3 / best / 1e9, "best_ms": best * 1e3, "threads": torch.get_num_threads(),
               "torch": torch.__version__}, open(spec["out"], "w"))


# --------------------------------------------------------------------------------------------------
# Driver


def bench_config(args):
    """The config file with absolute data paths, log_every 1, no validation, a checkpoint only at the end."""
    cfg = json.load(open(args.config))
    data = cfg.setdefault("data", {})
    for key in ("train_src", "train_tgt"):
        if key not in data:
            die(f"{args.config}: data.{key} is missing")
        path = data[key]
        if args.data_dir:
            path = os.path.join(args.data_dir, os.path.basename(path))
        elif not os.path.exists(path):
            shared = os.path.join(REPO, "..", "shared", "data", os.path.basename(os.path.dirname(path)),
                                  os.path.basename(path))
            if os.path.exists(shared):
                path = shared
        if not os.path.exists(path):
            die(f"{path} does not exist (pass --data-dir DIR)")
        data[key] = os.path.abspath(path)
    data.pop("valid_src", None)
    data.pop("valid_tgt", None)
    train = cfg.setdefault("train", {})
    train.update(log_every=1, valid_every=0, checkpoint_every=args.steps + 1000, max_steps=args.steps)
    return cfg


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except Exception:
        return platform.processor() or "unknown CPU"


def candle_matmul_peak(args, env, work):
    log = os.path.join(work, "matmul-candle.log")
    cmd = [args.cargo, "bench", "--bench", "matmul", "--", str(args.matmul_n), str(args.matmul_reps)]
    status, _, _ = run_child(cmd, log, env=env, cwd=REPO)
    m = re.search(r"^matmul .*best ([0-9.]+) GFLOP/s", open(log).read(), re.M)
    if status != 0 or not m:
        print(f"  candle matmul failed ({' '.join(cmd)}):\n{tail(log)}")
        return None
    return float(m.group(1))


def worker(mode, spec, work, name, threads):
    spec_path = os.path.join(work, f"{name}.spec.json")
    spec["out"] = os.path.join(work, f"{name}.result.json")
    spec["threads"] = threads
    json.dump(spec, open(spec_path, "w"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = os.path.join(work, f"{name}.log")
    status, wall, rss = run_child([sys.executable, os.path.abspath(__file__), "--_worker", mode, spec_path], log,
                                  env=env)
    if status != 0:
        die(f"PyTorch worker {name} failed (exit {status}); its log {log}:\n{tail(log)}")
    return json.load(open(spec["out"])), wall, rss


def nmt_info(args, run_config):
    out = subprocess.run([args.nmt, "info", "--config", args.config, "--vocab", str(run_config["model"]["vocab_size"])],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        die(f"nmt info failed: {out.stderr.strip()}")
    counts = {k: int(v) for k, v in re.findall(r"^(embeddings|encoder|decoder|total)\s+(\d+)", out.stdout, re.M)}
    if len(counts) != 4:
        die(f"cannot read nmt info's output:\n{out.stdout}")
    return counts


def summarise(steps, warmup, dump, model_cfg, counts, peak):
    """steps: dicts with secs and tgt_tokens, step k = updates[k-1]."""
    timed = [s for s in steps if s["step"] > warmup]
    if not timed:
        return None
    secs = sum(s["secs"] for s in timed)
    tokens = sum(s["tgt_tokens"] for s in timed)
    flops = sum(update_flops(model_cfg, counts, update_shapes(dump, dump["updates"][s["step"] - 1])) for s in timed)
    return {
        "tok_s": tokens / secs,
        "ms": secs / len(timed) * 1e3,
        "gflop_s": flops / secs / 1e9,
        "peak_share": flops / secs / 1e9 / peak if peak else None,
        "timed_steps": len(timed),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/multi30k.json")
    ap.add_argument("--data-dir", help="take the training files (by base name) from this directory")
    default_nmt = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "nmt")
    ap.add_argument("--nmt", default=default_nmt, help=f"the nmt binary (default {default_nmt})")
    ap.add_argument("--cargo", default="cargo")
    ap.add_argument("--steps", type=int, default=35, help="updates per run (default 35)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first updates (default 5)")
    ap.add_argument("--rounds", type=int, default=2, help="nmt / PyTorch alternations (default 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attention", choices=["sdpa", "matmul"], default="sdpa",
                    help="PyTorch attention: F.scaled_dot_product_attention or plain matmuls + softmax")
    ap.add_argument("--seed", type=int, default=1, help="PyTorch's torch.manual_seed")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-reps", type=int, default=10)
    ap.add_argument("--skip-peak", action="store_true", help="do not measure the matmul peak")
    ap.add_argument("--work", help="work directory (default: a new one under /tmp, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs, dump)")
    ap.add_argument("--write-config", metavar="FILE", help="only write the benchmark's config to FILE and exit")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--_worker", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        mode, spec = args._worker
        {"torch": worker_torch, "matmul": worker_matmul}[mode](json.load(open(spec)))
        return
    # Paths given on the command line are taken from the current directory; defaults and the config's own
    # relative data paths from the repository root, where the script then runs.
    explicit = set(a[2:].split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--"))
    for key in ("config", "nmt", "data_dir", "work", "json", "write_config"):
        path = getattr(args, key)
        if path is not None:
            setattr(args, key, os.path.abspath(path) if key in explicit else os.path.join(REPO, path))
    os.chdir(REPO)
    if args.write_config:
        json.dump(bench_config(args), open(args.write_config, "w"), indent=2)
        return
    if args.steps <= args.warmup:
        die("--steps must exceed --warmup")
    cfg = bench_config(args)
    if not os.access(args.nmt, os.X_OK):
        die(f"{args.nmt} is not an executable: build it (cargo build --release) or pass --nmt")
    try:
        import torch  # noqa: F401  (only to fail early; the workers import it themselves)
        import tokenizers  # noqa: F401
    except ImportError as e:
        die(f"{e}: run this script with the venv's python (scripts/bench/setup.sh)")

    work = args.work or tempfile.mkdtemp(prefix="nmt-bench-")
    os.makedirs(work, exist_ok=True)
    cfg_path = os.path.join(work, "config.json")
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
              "config": os.path.relpath(args.config, REPO), "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
              "attention": args.attention, "runs": []}
    print(f"{report['date']}  {report['cpu']}, {os.cpu_count()} CPUs, {args.threads} threads")
    print(f"config {report['config']} (data {os.path.dirname(cfg['data']['train_src'])}), {args.steps} updates per run, "
          f"the first {args.warmup} untimed, {args.rounds} rounds; work dir {work}")

    # 1. The matmul peak.
    peak = None
    if not args.skip_peak:
        print(f"\nf32 matmul {args.matmul_n}^3, {args.threads} threads:")
        candle = candle_matmul_peak(args, env, work)
        res, _, _ = worker("matmul", {"n": args.matmul_n, "reps": args.matmul_reps}, work, "matmul-torch", args.threads)
        print(f"  candle  {candle:8.1f} GFLOP/s" if candle else "  candle  (failed)")
        print(f"  PyTorch {res['gflops']:8.1f} GFLOP/s (torch {res['torch']})")
        peak = max(x for x in (candle, res["gflops"]) if x)
        print(f"  peak    {peak:8.1f} GFLOP/s")
        report["matmul"] = {"candle": candle, "torch": res["gflops"], "peak": peak}

    # 2. The rounds.
    dump = run_config = counts = tokenizer_bytes = None
    src, tgt = cfg["data"]["train_src"], cfg["data"]["train_tgt"]
    first_loss = {}
    for r in range(1, args.rounds + 1):
        # nmt
        run_dir = os.path.join(work, f"nmt-{r}")
        cmd = [args.nmt, "train", "--config", cfg_path, "--out", run_dir, "--max-steps", str(args.steps), "--force",
               "--train-src", src, "--train-tgt", tgt]
        print(f"\nround {r}: nmt train ...", flush=True)
        log = os.path.join(work, f"nmt-{r}.log")
        status, wall, rss = run_child(cmd, log, env=env)
        if status != 0:
            die(f"{' '.join(cmd)} failed (exit {status}):\n{tail(log)}")
        tok_path = os.path.join(run_dir, "tokenizer.json")
        if dump is None:
            tokenizer_bytes = open(tok_path, "rb").read()
            shutil.copy(tok_path, os.path.join(work, "tokenizer.json"))
            run_config = json.load(open(os.path.join(run_dir, "config.json")))
            dump_path = os.path.join(work, "batches.json")
            dcmd = [args.cargo, "bench", "--bench", "train", "--", "--dump-batches", dump_path, "--tokenizer",
                    os.path.join(work, "tokenizer.json"), cfg_path, str(args.steps)]
            dlog = os.path.join(work, "dump.log")
            dstatus, _, _ = run_child(dcmd, dlog, env=env, cwd=REPO)
            if dstatus != 0:
                die(f"{' '.join(dcmd)} failed:\n{tail(dlog)}")
            dump = json.load(open(dump_path))
            counts = nmt_info(args, run_config)
            if len(dump["updates"]) < args.steps:
                die(f"the corpus has only {len(dump['updates'])} updates within max_epochs")
        elif open(tok_path, "rb").read() != tokenizer_bytes:
            print("  WARNING: this run learned a different tokenizer.json than round 1: its batches differ")
        lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
        lines = [x for x in lines if x.get("kind") == "train"]
        steps, matched = [], 0
        for x in lines:
            shapes = update_shapes(dump, dump["updates"][x["step"] - 1])
            src_tok, tgt_tok = sum(s[3] for s in shapes), sum(s[4] for s in shapes)
            ratio = x["src_tokens_per_sec"] / x["tgt_tokens_per_sec"]
            matched += abs(ratio - src_tok / tgt_tok) <= 1e-9 * ratio
            steps.append({"step": x["step"], "secs": tgt_tok / x["tgt_tokens_per_sec"], "tgt_tokens": tgt_tok,
                          "loss": x["loss"]})
        if len(steps) != args.steps:
            die(f"{run_dir}/metrics.jsonl has {len(steps)} train lines, expected {args.steps}")
        first_loss.setdefault("nmt", steps[0]["loss"])
        s = summarise(steps, args.warmup, dump, run_config["model"], counts, peak)
        run = dict(side="nmt", round=r, wall=wall, rss=rss, verified=f"{matched}/{len(steps)}", **s)
        report["runs"].append(run)
        print(f"  {s['tok_s']:.0f} tgt tok/s, {s['ms']:.0f} ms/update, peak RSS {rss / 2**20:.0f} MiB, wall {wall:.1f} s; "
              f"per-update token ratios match the dumped batches at {matched}/{len(steps)} updates")

        # PyTorch
        print(f"round {r}: PyTorch ...", flush=True)
        spec = {"run_config": os.path.join(work, "nmt-1", "config.json"),
                "tokenizer": os.path.join(work, "tokenizer.json"), "dump": os.path.join(work, "batches.json"),
                "train_src": src, "train_tgt": tgt, "steps": args.steps, "attention": args.attention,
                "seed": args.seed}
        res, wall, rss = worker("torch", spec, work, f"torch-{r}", args.threads)
        first_loss.setdefault("torch", res["steps"][0]["loss"])
        if r == 1:
            report["torch"] = {"version": res["torch"], "threads": res["threads"], "counts": res["counts"]}
        s = summarise(res["steps"], args.warmup, dump, run_config["model"], counts, peak)
        run = dict(side="PyTorch", round=r, wall=wall, rss=rss, rss_import=res["rss_import"], verified="same batches",
                   **s)
        report["runs"].append(run)
        print(f"  {s['tok_s']:.0f} tgt tok/s, {s['ms']:.0f} ms/update, peak RSS {rss / 2**20:.0f} MiB "
              f"({res['rss_import'] / 2**20:.0f} MiB of it right after `import torch`), wall {wall:.1f} s")

    # 3. Sanity checks and tables.
    V = run_config["model"]["vocab_size"]
    tc = report["torch"]["counts"]
    same = all(tc[k] == counts[k] for k in ("embeddings", "encoder", "decoder", "total"))
    print(f"\nparameters: nmt info {counts['total']:,} (embeddings {counts['embeddings']:,}, encoder "
          f"{counts['encoder']:,}, decoder {counts['decoder']:,}); PyTorch {tc['total']:,} "
          f"(embeddings {tc['embeddings']:,}, encoder {tc['encoder']:,}, decoder {tc['decoder']:,}): "
          f"{'equal' if same else 'DIFFERENT'}")
    print(f"first update's loss: nmt {first_loss['nmt']:.3f}, PyTorch {first_loss['torch']:.3f}, ln(V={V}) = "
          f"{math.log(V):.3f}")
    upd = dump["updates"][args.warmup : args.steps]
    mean_flops = statistics.mean(update_flops(run_config["model"], counts, update_shapes(dump, u)) for u in upd)
    print(f"model FLOPs per update (mean over the timed updates): {mean_flops / 1e9:.1f} GFLOP")
    shapes = [s for u in upd for s in update_shapes(dump, u)]
    pad_share = 1 - sum(s[4] for s in shapes) / sum(s[0] * s[2] for s in shapes)
    executed = statistics.mean(
        update_flops(run_config["model"], counts, update_shapes(dump, u), real_targets=True) for u in upd)
    print(f"target positions that are padding: {100 * pad_share:.1f}% (counted by the formula; nmt's step "
          f"leaves them out of the decoder's linear maps and the output projection, "
          f"{100 * (1 - executed / mean_flops):.1f}% of the FLOPs)")
    report["params"] = {"nmt": counts, "torch": tc, "equal": same}
    report["first_loss"] = dict(first_loss, ln_v=math.log(V))

    print(f"\n{'run':<12} {'tgt tok/s':>10} {'ms/update':>10} {'GFLOP/s':>8} {'% peak':>7} {'peak RSS':>10} "
          f"{'wall s':>7}  batches")
    for x in report["runs"]:
        share = f"{100 * x['peak_share']:.1f}" if x["peak_share"] is not None else "-"
        print(f"{x['side'] + ' ' + str(x['round']):<12} {x['tok_s']:>10.0f} {x['ms']:>10.0f} {x['gflop_s']:>8.1f} "
              f"{share:>7} {x['rss'] / 2**20:>7.0f} MiB {x['wall']:>7.1f}  {x['verified']}")
    med = {}
    for side in ("nmt", "PyTorch"):
        xs = [x for x in report["runs"] if x["side"] == side]
        med[side] = {k: statistics.median(x[k] for x in xs) for k in ("tok_s", "ms", "gflop_s", "rss")}
        med[side]["peak_share"] = med[side]["gflop_s"] / peak if peak else None
    print("median:")
    for side, x in med.items():
        share = f"{100 * x['peak_share']:.1f}" if x["peak_share"] is not None else "-"
        print(f"{side:<12} {x['tok_s']:>10.0f} {x['ms']:>10.0f} {x['gflop_s']:>8.1f} {share:>7} "
              f"{x['rss'] / 2**20:>7.0f} MiB")
    if med["nmt"]["peak_share"] is not None:
        print(f"nmt % of peak with the decoder and the output projection counted on real target tokens only "
              f"(about the FLOPs its step runs): {100 * med['nmt']['peak_share'] * executed / mean_flops:.1f}")
    ratio = med["nmt"]["tok_s"] / med["PyTorch"]["tok_s"]
    mem = med["nmt"]["rss"] / med["PyTorch"]["rss"]
    print(f"\nnmt / PyTorch: {ratio:.2f}x target tokens/s, {mem:.2f}x peak RSS "
          f"(PyTorch {report['torch']['version']}, attention {args.attention}, {args.threads} threads)")
    report["median"] = med
    report["ratio"] = ratio
    report["rss_ratio"] = mem
    if args.json:
        json.dump(report, open(args.json, "w"), indent=2)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
