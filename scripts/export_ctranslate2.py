#!/usr/bin/env python3
"""Export an nmt run directory to a CTranslate2 model directory.

    python3 scripts/export_ctranslate2.py RUN OUT [--checkpoint PATH|best] [--quantization TYPE] [--force]

RUN is a directory written by `nmt train` (config.json, tokenizer.json, checkpoints/). The weights come from
the latest complete checkpoint (the highest `checkpoints/ckpt-<step>.safetensors` whose `.state.json` exists),
from `--checkpoint PATH`, or with `--checkpoint best` from the file that `checkpoints/best.json` names.

The model is built with CTranslate2's own spec API (`ctranslate2.specs.TransformerSpec`): a ReLU Transformer,
post-norm or pre-norm as `model.norm` says, embeddings multiplied by √d_model, nmt's interleaved sin/cos
position table given explicitly (CTranslate2's built-in table puts all sines first, then all cosines), the
output projection without bias (the shared embedding matrix when `tie_embeddings` is true), LayerNorm ε from
`model.layer_norm_eps`, and one shared vocabulary: the pieces of tokenizer.json in id order. The source gets
`</s>` appended and the decoder starts from `<s>`, as in nmt. docs/CHECKPOINT.md lists the tensor mapping.

OUT is written to a temporary directory beside it and renamed into place at the end, so a failed export
leaves nothing behind. An existing OUT is refused unless --force is given.

Needs `ctranslate2`, `safetensors` and `numpy` (pip install ctranslate2 safetensors numpy); nmt itself never
depends on CTranslate2. scripts/bench/ctranslate2_parity.py checks the exported model against nmt.
"""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile

PROG = "export_ctranslate2"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class ExportError(Exception):
    pass


def fail(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_json(path, what):
    if not os.path.isfile(path):
        raise ExportError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {what} {path}: {e}")


def find_checkpoint(run, choice):
    """The weights file: --checkpoint PATH, `best`, or the latest complete ckpt-<step>.safetensors."""
    ckdir = os.path.join(run, "checkpoints")
    if choice == "best":
        best = read_json(os.path.join(ckdir, "best.json"), "best-checkpoint record")
        path = os.path.join(ckdir, best.get("weights", ""))
    elif choice:
        path = choice
    else:
        steps = []
        for p in glob.glob(os.path.join(ckdir, "ckpt-*.safetensors")):
            m = re.fullmatch(r"ckpt-(\d+)\.safetensors", os.path.basename(p))
            if m and os.path.isfile(p[: -len(".safetensors")] + ".state.json"):
                steps.append((int(m.group(1)), p))
        if not steps:
            raise ExportError(f"no complete checkpoint (ckpt-<step>.safetensors with its .state.json) in {ckdir}")
        path = max(steps)[1]
    if not os.path.isfile(path):
        raise ExportError(f"checkpoint not found: {path}")
    return path


def vocabulary(tokenizer, vocab_size):
    """The pieces of tokenizer.json in id order, checked against nmt's special ids."""
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ExportError("tokenizer.json: expected a BPE model with a vocab table")
    by_id = {}
    for tok, i in model["vocab"].items():
        by_id[i] = tok
    for added in tokenizer.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
    if sorted(by_id) != list(range(len(by_id))):
        raise ExportError("tokenizer.json: token ids are not 0..n-1 without gaps")
    tokens = [by_id[i] for i in range(len(by_id))]
    if len(tokens) != vocab_size:
        raise ExportError(f"tokenizer.json has {len(tokens)} tokens but model.vocab_size is {vocab_size}")
    if tokens[:4] != SPECIALS:
        raise ExportError(f"tokenizer.json: ids 0..3 are {tokens[:4]}, expected {SPECIALS}")
    if len(set(tokens)) != len(tokens):
        raise ExportError("tokenizer.json: duplicate tokens")
    return tokens


def position_table(max_positions, d_model):
    """nmt's table (src/model/embedding.rs): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...),
    computed in f64 and rounded to f32, as nmt does."""
    import numpy as np

    pos = np.arange(max_positions, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, two_i / d_model)
    table = np.zeros((max_positions, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table.astype(np.float32)


def build_spec(cfg, weights, tokens):
    import numpy as np
    from ctranslate2.specs import common_spec, transformer_spec

    m = cfg["model"]
    d, V = m["d_model"], m["vocab_size"]
    if m.get("norm", "post") not in ("post", "pre"):
        raise ExportError(f"model.norm {m.get('norm')!r} is not supported (post or pre)")
    pre_norm = m.get("norm", "post") == "pre"
    tied = m.get("tie_embeddings", True)
    used = set()

    def w(name, shape):
        if name not in weights:
            raise ExportError(f"checkpoint lacks tensor {name}")
        t = weights[name]
        if tuple(t.shape) != tuple(shape):
            raise ExportError(f"tensor {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        used.add(name)
        return np.ascontiguousarray(t, dtype=np.float32)

    spec = transformer_spec.TransformerSpec.from_config(
        (m["encoder_layers"], m["decoder_layers"]),
        m["heads"],
        pre_norm=pre_norm,
        activation=common_spec.Activation.RELU,
    )

    def linear(ls, name, rows, cols):
        ls.weight = w(name + ".weight", (rows, cols))  # (out, in) in both nmt and CTranslate2
        ls.bias = w(name + ".bias", (rows,))

    def fused(ls, names):
        ls.weight = np.concatenate([w(n + ".weight", (d, d)) for n in names])
        ls.bias = np.concatenate([w(n + ".bias", (d,)) for n in names])

    def norm(ns, name):
        ns.gamma = w(name + ".weight", (d,))
        ns.beta = w(name + ".bias", (d,))

    def ffn(fs, prefix):
        linear(fs.linear_0, prefix + ".ffn.w_1", m["d_ff"], d)
        linear(fs.linear_1, prefix + ".ffn.w_2", d, m["d_ff"])
        norm(fs.layer_norm, prefix + ".ffn_norm")

    if tied:
        src_emb = tgt_emb = generator = w("embedding.weight", (V, d))
    else:
        src_emb = w("src_embedding.weight", (V, d))
        tgt_emb = w("tgt_embedding.weight", (V, d))
        generator = w("generator.weight", (V, d))
    pe = position_table(m["max_positions"], d)

    enc = spec.encoder
    enc.embeddings[0].weight = src_emb
    enc.scale_embeddings = True  # table[ids] · √d_model
    enc.position_encodings.encodings = pe
    for i, layer in enumerate(enc.layer):
        p = f"encoder.layers.{i}"
        fused(layer.self_attention.linear[0], [p + ".self_attn.w_q", p + ".self_attn.w_k", p + ".self_attn.w_v"])
        linear(layer.self_attention.linear[1], p + ".self_attn.w_o", d, d)
        norm(layer.self_attention.layer_norm, p + ".self_attn_norm")
        ffn(layer.ffn, p)
    if pre_norm:
        norm(enc.layer_norm, "encoder.final_norm")

    dec = spec.decoder
    dec.embeddings.weight = tgt_emb
    dec.scale_embeddings = True
    dec.position_encodings.encodings = pe
    dec.projection.weight = generator  # no bias: the projection's bias stays unset (optional)
    for i, layer in enumerate(dec.layer):
        p = f"decoder.layers.{i}"
        fused(layer.self_attention.linear[0], [p + ".self_attn.w_q", p + ".self_attn.w_k", p + ".self_attn.w_v"])
        linear(layer.self_attention.linear[1], p + ".self_attn.w_o", d, d)
        norm(layer.self_attention.layer_norm, p + ".self_attn_norm")
        linear(layer.attention.linear[0], p + ".cross_attn.w_q", d, d)
        fused(layer.attention.linear[1], [p + ".cross_attn.w_k", p + ".cross_attn.w_v"])
        linear(layer.attention.linear[2], p + ".cross_attn.w_o", d, d)
        norm(layer.attention.layer_norm, p + ".cross_attn_norm")
        ffn(layer.ffn, p)
    if pre_norm:
        norm(dec.layer_norm, "decoder.final_norm")

    unused = sorted(set(weights) - used)
    if unused:
        raise ExportError(f"checkpoint has tensors this exporter does not map: {', '.join(unused[:5])}")

    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    c = spec.config
    c.unk_token, c.bos_token, c.eos_token = "<unk>", "<s>", "</s>"
    c.decoder_start_token = "<s>"  # the decoder input is [<s>] + ids
    c.add_source_bos = False
    c.add_source_eos = True  # the source is ids + [</s>]
    c.layer_norm_epsilon = float(m["layer_norm_eps"])
    return spec


def export(run, out, checkpoint=None, quantization=None, force=False):
    if not os.path.isdir(run):
        raise ExportError(f"run directory not found: {run}")
    cfg = read_json(os.path.join(run, "config.json"), "config")
    tokenizer = read_json(os.path.join(run, "tokenizer.json"), "tokenizer")
    try:
        m = cfg["model"]
        for key in ("encoder_layers", "decoder_layers", "heads", "d_model", "d_ff", "vocab_size", "max_positions",
                    "layer_norm_eps"):
            m[key]
    except (KeyError, TypeError) as e:
        raise ExportError(f"config.json: model section lacks {e}")
    ckpt = find_checkpoint(run, checkpoint)
    if os.path.exists(out) and not force:
        raise ExportError(f"{out} already exists (use --force to replace it)")

    try:
        import ctranslate2  # noqa: F401
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ExportError(f"{e.name} is not installed (pip install ctranslate2 safetensors numpy)")

    tokens = vocabulary(tokenizer, m["vocab_size"])
    try:
        weights = load_file(ckpt)
    except Exception as e:  # safetensors raises its own error types
        raise ExportError(f"cannot read checkpoint {ckpt}: {e}")
    spec = build_spec(cfg, weights, tokens)
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
    except ValueError as e:
        raise ExportError(str(e))

    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it a plain directory's mode
        spec.save(tmp)
        with open(os.path.join(tmp, "nmt_export.json"), "w", encoding="utf-8") as f:
            json.dump({"run": os.path.abspath(run), "checkpoint": os.path.abspath(ckpt),
                       "quantization": quantization or "float32"}, f, indent=2)
            f.write("\n")
        if os.path.exists(out):  # --force: move the old one aside first, so OUT is never half-written
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".old-", dir=parent)
            os.rename(out, os.path.join(old, "x"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, ckpt


def main():
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("run", metavar="RUN", help="run directory written by `nmt train`")
    ap.add_argument("out", metavar="OUT", help="CTranslate2 model directory to write")
    ap.add_argument("--checkpoint", help="weights file, or `best` (default: the latest complete checkpoint)")
    ap.add_argument("--quantization", help="CTranslate2 weight type (int8, int16, float16, ...; default: float32)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args()
    try:
        out, ckpt = export(args.run, args.out, args.checkpoint, args.quantization, args.force)
    except ExportError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}")
    print(f"wrote {out} (from {ckpt})")


if __name__ == "__main__":
    main()
