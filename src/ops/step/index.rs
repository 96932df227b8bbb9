//! Where each parameter of the model sits in the optimizer's list, found by its checkpoint name
//! (`docs/CHECKPOINT.md`): the hand-written step reads weights and writes gradients by these indices.

use crate::config::{ModelConfig, Norm};
use std::collections::{BTreeSet, HashMap};

/// A weight and its bias (a linear layer, or a LayerNorm's gain and bias).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pair {
    pub w: usize,
    pub b: usize,
}

/// The four projections of one multi-head attention.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attention {
    pub q: Pair,
    pub k: Pair,
    pub v: Pair,
    pub o: Pair,
}

/// W₁ (with ReLU) and W₂ of one feed-forward network.
#[derive(Debug, Clone, Copy)]
pub(super) struct FeedForward {
    pub w_1: Pair,
    pub w_2: Pair,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct EncoderLayer {
    pub self_attn: Attention,
    pub self_attn_norm: Pair,
    pub ffn: FeedForward,
    pub ffn_norm: Pair,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct DecoderLayer {
    pub self_attn: Attention,
    pub self_attn_norm: Pair,
    pub cross_attn: Attention,
    pub cross_attn_norm: Pair,
    pub ffn: FeedForward,
    pub ffn_norm: Pair,
}

/// Every parameter of the Transformer, by index into the parameter list.
#[derive(Debug, Clone)]
pub(super) struct ModelIndex {
    pub src_embedding: usize,
    pub tgt_embedding: usize,
    /// The pre-softmax projection (the shared embedding when tied).
    pub generator: usize,
    pub encoder: Vec<EncoderLayer>,
    pub decoder: Vec<DecoderLayer>,
    /// Only with pre-norm.
    pub encoder_final: Option<Pair>,
    pub decoder_final: Option<Pair>,
}

/// Looks parameters up by name.
struct Names<'a>(HashMap<&'a str, usize>);

impl Names<'_> {
    fn one(&self, name: &str) -> Option<usize> {
        self.0.get(name).copied()
    }

    fn pair(&self, prefix: &str) -> Option<Pair> {
        Some(Pair { w: self.one(&format!("{prefix}.weight"))?, b: self.one(&format!("{prefix}.bias"))? })
    }

    fn attention(&self, prefix: &str) -> Option<Attention> {
        let p = |name: &str| self.pair(&format!("{prefix}.{name}"));
        Some(Attention { q: p("w_q")?, k: p("w_k")?, v: p("w_v")?, o: p("w_o")? })
    }

    fn ffn(&self, prefix: &str) -> Option<FeedForward> {
        Some(FeedForward { w_1: self.pair(&format!("{prefix}.w_1"))?, w_2: self.pair(&format!("{prefix}.w_2"))? })
    }

    fn encoder_layer(&self, i: usize) -> Option<EncoderLayer> {
        let p = format!("encoder.layers.{i}");
        Some(EncoderLayer {
            self_attn: self.attention(&format!("{p}.self_attn"))?,
            self_attn_norm: self.pair(&format!("{p}.self_attn_norm"))?,
            ffn: self.ffn(&format!("{p}.ffn"))?,
            ffn_norm: self.pair(&format!("{p}.ffn_norm"))?,
        })
    }

    fn decoder_layer(&self, i: usize) -> Option<DecoderLayer> {
        let p = format!("decoder.layers.{i}");
        Some(DecoderLayer {
            self_attn: self.attention(&format!("{p}.self_attn"))?,
            self_attn_norm: self.pair(&format!("{p}.self_attn_norm"))?,
            cross_attn: self.attention(&format!("{p}.cross_attn"))?,
            cross_attn_norm: self.pair(&format!("{p}.cross_attn_norm"))?,
            ffn: self.ffn(&format!("{p}.ffn"))?,
            ffn_norm: self.pair(&format!("{p}.ffn_norm"))?,
        })
    }
}

impl ModelIndex {
    /// The index of a model built from `cfg` whose parameters are `names`, in list order; None when a
    /// parameter is missing or one is left over (the step would leave it without a gradient).
    pub fn find(cfg: &ModelConfig, names: &[&str]) -> Option<Self> {
        let n = Names(names.iter().enumerate().map(|(i, &name)| (name, i)).collect());
        let (src_embedding, tgt_embedding, generator) = if cfg.tie_embeddings {
            let e = n.one("embedding.weight")?;
            (e, e, e)
        } else {
            (n.one("src_embedding.weight")?, n.one("tgt_embedding.weight")?, n.one("generator.weight")?)
        };
        let (encoder_final, decoder_final) = match cfg.norm {
            Norm::Pre => (Some(n.pair("encoder.final_norm")?), Some(n.pair("decoder.final_norm")?)),
            Norm::Post => (None, None),
        };
        let index = Self {
            src_embedding,
            tgt_embedding,
            generator,
            encoder: (0..cfg.encoder_layers).map(|i| n.encoder_layer(i)).collect::<Option<_>>()?,
            decoder: (0..cfg.decoder_layers).map(|i| n.decoder_layer(i)).collect::<Option<_>>()?,
            encoder_final,
            decoder_final,
        };
        (index.used().len() == names.len()).then_some(index)
    }

    /// Every index the step reads and writes.
    fn used(&self) -> BTreeSet<usize> {
        let mut out = BTreeSet::from([self.src_embedding, self.tgt_embedding, self.generator]);
        let mut pair = |p: Pair| {
            out.insert(p.w);
            out.insert(p.b);
        };
        let attention = |a: Attention| [a.q, a.k, a.v, a.o];
        for l in &self.encoder {
            let pairs = [l.self_attn_norm, l.ffn.w_1, l.ffn.w_2, l.ffn_norm];
            attention(l.self_attn).into_iter().chain(pairs).for_each(&mut pair);
        }
        for l in &self.decoder {
            let pairs = [l.self_attn_norm, l.cross_attn_norm, l.ffn.w_1, l.ffn.w_2, l.ffn_norm];
            attention(l.self_attn).into_iter().chain(attention(l.cross_attn)).chain(pairs).for_each(&mut pair);
        }
        self.encoder_final.into_iter().chain(self.decoder_final).for_each(&mut pair);
        out
    }
}
