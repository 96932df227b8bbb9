#!/usr/bin/env python3
"""Recompute an nmt model's teacher-forced loss in plain numpy, from its checkpoint alone.

This is the recipe of docs/CHECKPOINT.md. It needs nothing from nmt itself: the weights come from the
safetensors file, the vocabulary from tokenizer.json (HuggingFace `tokenizers` format), and the shapes from
config.json. It prints the mean negative log-likelihood per target token (</s> included), which equals the
`loss` that `nmt eval --json` reports for the same sentences.

    pip install numpy safetensors tokenizers
    python3 scripts/checkpoint_loss.py --model runs/demo --src data/demo/test.en --ref data/demo/test.de -n 20
"""
import argparse
import glob
import json
import math
import os

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

PAD, BOS, EOS = 0, 1, 2


def layer_norm(x, W, name, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * W[name + ".weight"] + W[name + ".bias"]


def linear(x, W, name):
    return x @ W[name + ".weight"].T + W[name + ".bias"]  # weights are stored (out, in)


def attention(x, memory, W, name, heads, mask):
    """Multi-head attention; mask is (q_len, k_len) with True where attending is forbidden."""
    q_len, d_model = x.shape
    d_k = d_model // heads
    q = linear(x, W, name + ".w_q").reshape(q_len, heads, d_k).transpose(1, 0, 2)
    k = linear(memory, W, name + ".w_k").reshape(len(memory), heads, d_k).transpose(1, 0, 2)
    v = linear(memory, W, name + ".w_v").reshape(len(memory), heads, d_k).transpose(1, 0, 2)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d_k)  # (heads, q_len, k_len)
    scores = np.where(mask, -1e9, scores)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    concat = (weights @ v).transpose(1, 0, 2).reshape(q_len, d_model)
    return linear(concat, W, name + ".w_o")


def sublayer(x, f, W, norm_name, cfg):
    if cfg["norm"] == "pre":
        return x + f(layer_norm(x, W, norm_name, cfg["layer_norm_eps"]))
    return layer_norm(x + f(x), W, norm_name, cfg["layer_norm_eps"])


def ffn(x, W, name):
    return linear(np.maximum(0, linear(x, W, name + ".w_1")), W, name + ".w_2")


def positional_encoding(length, d_model):
    pe = np.zeros((length, d_model))
    pos = np.arange(length)[:, None]
    i = np.arange(0, d_model, 2)[None, :]
    pe[:, 0::2] = np.sin(pos / 10000 ** (i / d_model))
    pe[:, 1::2] = np.cos(pos / 10000 ** (i / d_model))
    return pe


def embed(ids, table, d_model):
    return table[ids] * math.sqrt(d_model) + positional_encoding(len(ids), d_model)


def sentence_nll(src, tgt, W, cfg):
    """Sum of -log p over the target tokens and </s>, and their count."""
    d, h = cfg["d_model"], cfg["heads"]
    tied = cfg["tie_embeddings"]
    src_table = W["embedding.weight"] if tied else W["src_embedding.weight"]
    tgt_table = W["embedding.weight"] if tied else W["tgt_embedding.weight"]
    generator = W["embedding.weight"] if tied else W["generator.weight"]
    src_ids = src + [EOS]
    x = embed(src_ids, src_table, d)
    no_mask = np.zeros((len(src_ids), len(src_ids)), dtype=bool)
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}"
        x = sublayer(x, lambda y: attention(y, y, W, p + ".self_attn", h, no_mask), W, p + ".self_attn_norm", cfg)
        x = sublayer(x, lambda y: ffn(y, W, p + ".ffn"), W, p + ".ffn_norm", cfg)
    if cfg["norm"] == "pre":
        x = layer_norm(x, W, "encoder.final_norm", cfg["layer_norm_eps"])
    memory = x
    tgt_in, tgt_out = [BOS] + tgt, tgt + [EOS]
    y = embed(tgt_in, tgt_table, d)
    causal = np.triu(np.ones((len(tgt_in), len(tgt_in)), dtype=bool), k=1)
    cross = np.zeros((len(tgt_in), len(src_ids)), dtype=bool)
    for i in range(cfg["decoder_layers"]):
        p = f"decoder.layers.{i}"
        y = sublayer(y, lambda z: attention(z, z, W, p + ".self_attn", h, causal), W, p + ".self_attn_norm", cfg)
        y = sublayer(y, lambda z: attention(z, memory, W, p + ".cross_attn", h, cross), W, p + ".cross_attn_norm", cfg)
        y = sublayer(y, lambda z: ffn(z, W, p + ".ffn"), W, p + ".ffn_norm", cfg)
    if cfg["norm"] == "pre":
        y = layer_norm(y, W, "decoder.final_norm", cfg["layer_norm_eps"])
    logits = y @ generator.T
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -sum(log_probs[t, tok] for t, tok in enumerate(tgt_out)), len(tgt_out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run directory")
    ap.add_argument("--checkpoint", help="weights file (default: the latest)")
    ap.add_argument("--src", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("-n", type=int, default=20, help="number of sentences")
    args = ap.parse_args()
    cfg = json.load(open(os.path.join(args.model, "config.json")))["model"]
    ckpt = args.checkpoint or sorted(
        f for f in glob.glob(os.path.join(args.model, "checkpoints", "ckpt-*.safetensors")) if ".optim." not in f)[-1]
    W = {k: v.astype(np.float64) for k, v in load_file(ckpt).items()}
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    srcs = open(args.src, encoding="utf-8").read().splitlines()[: args.n]
    refs = open(args.ref, encoding="utf-8").read().splitlines()[: args.n]
    nll, tokens = 0.0, 0
    for s, r in zip(srcs, refs):
        a, b = sentence_nll(tok.encode(s, add_special_tokens=False).ids, tok.encode(r, add_special_tokens=False).ids, W, cfg)
        nll, tokens = nll + a, tokens + b
    print(json.dumps({"loss": nll / tokens, "tokens": tokens, "checkpoint": ckpt}))


if __name__ == "__main__":
    main()
