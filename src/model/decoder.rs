//! The decoder stack (paper §3.1): N identical layers, each masked multi-head self-attention, then
//! encoder-decoder (cross) attention whose keys and values are the encoder output, then the
//! feed-forward network; every sub-layer wrapped in a residual connection with LayerNorm.

use super::attention::MultiHeadAttention;
use super::feed_forward::FeedForward;
use super::init::Mode;
use super::norm::{LayerNorm, SublayerConnection};
use crate::config::{ModelConfig, Norm};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_norm: SublayerConnection,
    cross_attn: MultiHeadAttention,
    cross_attn_norm: SublayerConnection,
    ffn: FeedForward,
    ffn_norm: SublayerConnection,
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

#[derive(Debug, Clone)]
pub struct Decoder {
    layers: Vec<DecoderLayer>,
    /// Only with pre-norm (a deviation from the paper).
    final_norm: Option<LayerNorm>,
}

impl Decoder {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let layers =
            (0..cfg.decoder_layers).map(|i| DecoderLayer::new(cfg, vb.pp("layers").pp(i))).collect::<Result<_>>()?;
        let final_norm = match cfg.norm {
            Norm::Pre => Some(LayerNorm::new(cfg, vb.pp("final_norm"))?),
            Norm::Post => None,
        };
        Ok(Self { layers, final_norm })
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
