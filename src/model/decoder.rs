//! The decoder stack (paper §3.1): N identical layers, each masked multi-head self-attention, then
//! encoder-decoder (cross) attention whose keys and values are the encoder output, then the
//! feed-forward network; every sub-layer wrapped in a residual connection with LayerNorm.

use super::attention::{KvCache, MultiHeadAttention};
use super::feed_forward::FeedForward;
use super::init::Mode;
use super::norm::{LayerNorm, SublayerConnection};
use crate::config::ModelConfig;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub(crate) self_attn: MultiHeadAttention,
    pub(crate) self_attn_norm: SublayerConnection,
    pub(crate) cross_attn: MultiHeadAttention,
    pub(crate) cross_attn_norm: SublayerConnection,
    pub(crate) ffn: FeedForward,
    pub(crate) ffn_norm: SublayerConnection,
}

impl DecoderLayer {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: MultiHeadAttention::new(cfg, vb.pp("self_attn"))?,
            self_attn_norm: SublayerConnection::new(cfg, vb.pp("self_attn_norm"))?,
            cross_attn: MultiHeadAttention::new(cfg, vb.pp("cross_attn"))?,
            cross_attn_norm: SublayerConnection::new(cfg, vb.pp("cross_attn_norm"))?,
            ffn: FeedForward::new(cfg, vb.pp("ffn"))?,
            ffn_norm: SublayerConnection::new(cfg, vb.pp("ffn_norm"))?,
        })
    }

    /// # Shapes
    /// - `x`: (batch, tgt_len, d_model) → same; `memory`: (batch, src_len, d_model)
    /// - `causal`: (1, 1, tgt_len, tgt_len); `src_mask`: (batch, 1, 1, src_len)
    pub fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        causal: &Tensor,
        src_mask: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let x = self.self_attn_norm.forward(x, mode, |x, _| Ok(self.self_attn.forward(x, x, Some(causal))?.output))?;
        let x = self
            .cross_attn_norm
            .forward(&x, mode, |x, _| Ok(self.cross_attn.forward(x, memory, Some(src_mask))?.output))?;
        self.ffn_norm.forward(&x, mode, |x, _| self.ffn.forward(x))
    }
}

/// What incremental decoding keeps between steps: per layer, the self-attention keys and values of the
/// positions decoded so far and the cross-attention keys and values of the encoder memory.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    self_attn: Vec<Option<KvCache>>,
    cross_attn: Vec<KvCache>,
    /// Positions decoded so far.
    pub len: usize,
}

impl DecoderCache {
    /// Keeps batch rows `rows`, in that order.
    ///
    /// # Shapes
    /// - `rows`: (new_batch) u32
    pub fn select(&mut self, rows: &Tensor) -> Result<()> {
        for c in self.self_attn.iter_mut().flatten() {
            *c = c.select(rows)?;
        }
        for c in self.cross_attn.iter_mut() {
            *c = c.select(rows)?;
        }
        Ok(())
    }
}

impl DecoderLayer {
    /// One incremental step (evaluation mode).
    ///
    /// # Shapes
    /// - `x`: (batch, 1, d_model) → (batch, 1, d_model); `src_mask`: (batch, 1, 1, src_len)
    fn step(&self, x: &Tensor, self_kv: &mut Option<KvCache>, cross_kv: &KvCache, src_mask: &Tensor) -> Result<Tensor> {
        let mode = &mut Mode::Eval;
        let x =
            self.self_attn_norm.forward(x, mode, |x, _| Ok(self.self_attn.forward_incremental(x, self_kv)?.output))?;
        let x = self
            .cross_attn_norm
            .forward(&x, mode, |x, _| Ok(self.cross_attn.attend(x, cross_kv, Some(src_mask))?.output))?;
        self.ffn_norm.forward(&x, mode, |x, _| self.ffn.forward(x))
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub(crate) layers: Vec<DecoderLayer>,
    /// Only with pre-norm (a deviation from the paper).
    pub(crate) final_norm: Option<LayerNorm>,
}

impl Decoder {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let layers =
            (0..cfg.decoder_layers).map(|i| DecoderLayer::new(cfg, vb.pp("layers").pp(i))).collect::<Result<_>>()?;
        Ok(Self { layers, final_norm: LayerNorm::final_of_stack(cfg, vb)? })
    }

    /// Starts incremental decoding over `memory`: cross-attention keys and values are computed here, once.
    ///
    /// # Shapes
    /// - `memory`: (batch, src_len, d_model)
    pub fn start(&self, memory: &Tensor) -> Result<DecoderCache> {
        Ok(DecoderCache {
            self_attn: vec![None; self.layers.len()],
            cross_attn: self.layers.iter().map(|l| l.cross_attn.project_kv(memory)).collect::<Result<_>>()?,
            len: 0,
        })
    }

    /// Decodes one more position with the cache; equals the last row of [`Self::forward`] on the whole
    /// prefix (a test checks it).
    ///
    /// # Shapes
    /// - `y`: the embedded newest token (batch, 1, d_model) → hidden state (batch, 1, d_model)
    pub fn step(&self, y: &Tensor, cache: &mut DecoderCache, src_mask: &Tensor) -> Result<Tensor> {
        let mut x = y.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.step(&x, &mut cache.self_attn[i], &cache.cross_attn[i], src_mask)?;
        }
        cache.len += 1;
        match &self.final_norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }

    /// # Shapes
    /// - `x`: embedded target (batch, tgt_len, d_model) → hidden states (batch, tgt_len, d_model)
    pub fn forward(&self, x: &Tensor, memory: &Tensor, src_mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let causal = super::mask::causal_mask(x.dim(1)?, x.device())?;
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, memory, &causal, src_mask, mode)?;
        }
        match &self.final_norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}
