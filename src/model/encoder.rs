//! The encoder stack (paper §3.1): N identical layers, each multi-head self-attention then the
//! feed-forward network, each wrapped in a residual connection with LayerNorm.

use super::attention::MultiHeadAttention;
use super::feed_forward::FeedForward;
use super::init::Mode;
use super::norm::{LayerNorm, SublayerConnection};
use crate::config::ModelConfig;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub(super) self_attn: MultiHeadAttention,
    pub(super) self_attn_norm: SublayerConnection,
    pub(super) ffn: FeedForward,
    pub(super) ffn_norm: SublayerConnection,
}

impl EncoderLayer {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: MultiHeadAttention::new(cfg, vb.pp("self_attn"))?,
            self_attn_norm: SublayerConnection::new(cfg, vb.pp("self_attn_norm"))?,
            ffn: FeedForward::new(cfg, vb.pp("ffn"))?,
            ffn_norm: SublayerConnection::new(cfg, vb.pp("ffn_norm"))?,
        })
    }

    /// # Shapes
    /// - `x`: (batch, src_len, d_model) → same; `src_mask`: (batch, 1, 1, src_len)
    pub fn forward(&self, x: &Tensor, src_mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let x =
            self.self_attn_norm.forward(x, mode, |x, _| Ok(self.self_attn.forward(x, x, Some(src_mask))?.output))?;
        self.ffn_norm.forward(&x, mode, |x, _| self.ffn.forward(x))
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    pub(super) layers: Vec<EncoderLayer>,
    /// Only with pre-norm (a deviation from the paper).
    pub(super) final_norm: Option<LayerNorm>,
}

impl Encoder {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let layers =
            (0..cfg.encoder_layers).map(|i| EncoderLayer::new(cfg, vb.pp("layers").pp(i))).collect::<Result<_>>()?;
        Ok(Self { layers, final_norm: LayerNorm::final_of_stack(cfg, vb)? })
    }

    /// # Shapes
    /// - `x`: embedded source (batch, src_len, d_model) → memory (batch, src_len, d_model)
    pub fn forward(&self, x: &Tensor, src_mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, src_mask, mode)?;
        }
        match &self.final_norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}
