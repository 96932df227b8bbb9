//! The Transformer (paper §3, Figure 1): embeddings and positional encoding, the encoder and decoder
//! stacks, and the output projection tied to the embedding matrix (§3.4).
//!
//! Parameter names come straight from the struct tree (`encoder.layers.0.self_attn.w_q.weight`), and
//! are the checkpoint's tensor names. Linear weights are stored (out, in), as in PyTorch.

pub mod attention;
pub mod decoder;
pub mod embedding;
pub mod encoder;
pub mod feed_forward;
pub mod init;
pub mod linear;
pub mod mask;
pub mod norm;
pub mod trace;

use crate::config::ModelConfig;
use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use decoder::Decoder;
use embedding::{embed, PositionalEncoding};
use encoder::Encoder;
use init::{embedding_normal, Mode};

/// The embedding matrices: one shared tensor when tied, three when not.
#[derive(Debug, Clone)]
struct Embeddings {
    /// (vocab, d_model)
    src: Tensor,
    /// (vocab, d_model)
    tgt: Tensor,
    /// The pre-softmax projection, (vocab, d_model).
    generator: Tensor,
}

impl Embeddings {
    fn new(cfg: &ModelConfig, vb: &VarBuilder) -> Result<Self> {
        let shape = (cfg.vocab_size, cfg.d_model);
        let init = embedding_normal(cfg.d_model);
        if cfg.tie_embeddings {
            let shared = vb.pp("embedding").get_with_hints(shape, "weight", init)?;
            return Ok(Self { src: shared.clone(), tgt: shared.clone(), generator: shared });
        }
        Ok(Self {
            src: vb.pp("src_embedding").get_with_hints(shape, "weight", init)?,
            tgt: vb.pp("tgt_embedding").get_with_hints(shape, "weight", init)?,
            generator: vb.pp("generator").get_with_hints(shape, "weight", init)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Transformer {
    embeddings: Embeddings,
    positional: PositionalEncoding,
    encoder: Encoder,
    decoder: Decoder,
    cfg: ModelConfig,
    /// The dtype of activations and matrix products: the weights' own, or bf16 for mixed precision
    /// ([`Self::set_compute_dtype`]).
    compute: Option<candle_core::DType>,
}

impl Transformer {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            embeddings: Embeddings::new(cfg, &vb)?,
            positional: PositionalEncoding::new(cfg.max_positions, cfg.d_model, vb.device())?,
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            cfg: cfg.clone(),
            compute: None,
        })
    }

    /// Runs activations and matrix products in `dtype` (bf16 for mixed precision) while the weights stay
    /// in theirs: each layer casts its weights to the activations' dtype (a cast with a backward pass, so
    /// gradients reach the weights in their own dtype), LayerNorm, softmax and the loss compute in f32.
    pub fn set_compute_dtype(&mut self, dtype: candle_core::DType) {
        self.compute = Some(dtype);
    }

    /// `x` in the compute dtype.
    fn to_compute(&self, x: Tensor) -> Result<Tensor> {
        match self.compute {
            Some(dtype) if dtype != x.dtype() => x.to_dtype(dtype),
            _ => Ok(x),
        }
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The positional-encoding table, (max_positions, d_model).
    pub fn positional_table(&self) -> &Tensor {
        self.positional.table()
    }

    /// The longest sequence the positional-encoding table covers (`model.max_positions`).
    pub fn max_positions(&self) -> usize {
        self.positional.table().dims()[0]
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.positional.table().device()
    }

    /// Embeds the source and runs the encoder stack.
    ///
    /// # Shapes
    /// - `src`: (batch, src_len) u32; `src_mask`: (batch, 1, 1, src_len) → memory (batch, src_len, d_model)
    pub fn encode(&self, src: &Tensor, src_mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let x = self.to_compute(self.positional.forward(&embed(&self.embeddings.src, src)?, 0)?)?;
        let x = mode.dropout(&x, self.cfg.dropout)?;
        self.encoder.forward(&x, src_mask, mode)
    }

    /// Embeds the (shifted) target and runs the decoder stack over the encoder memory.
    ///
    /// # Shapes
    /// - `tgt_in`: (batch, tgt_len) u32; `memory`: (batch, src_len, d_model)
    /// - returns hidden states (batch, tgt_len, d_model)
    pub fn decode(&self, tgt_in: &Tensor, memory: &Tensor, src_mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let y = self.to_compute(self.positional.forward(&embed(&self.embeddings.tgt, tgt_in)?, 0)?)?;
        let y = mode.dropout(&y, self.cfg.dropout)?;
        self.decoder.forward(&y, memory, src_mask, mode)
    }

    /// The pre-softmax linear transformation, tied to the embedding matrix when tying is on.
    ///
    /// # Shapes
    /// - `hidden`: (batch, len, d_model) → logits (batch, len, vocab)
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let (batch, len, d_model) = hidden.dims3()?;
        let vocab = self.embeddings.generator.dim(0)?;
        let generator = self.embeddings.generator.to_dtype(hidden.dtype())?;
        hidden
            .reshape((batch * len, d_model))?
            .matmul(&generator.t()?)? // (batch·len, vocab)
            .reshape((batch, len, vocab))?
            .to_dtype(self.embeddings.generator.dtype())
    }

    /// Starts incremental decoding over an encoded batch.
    ///
    /// # Shapes
    /// - `memory`: (batch, src_len, d_model)
    pub fn start_decoding(&self, memory: &Tensor) -> Result<decoder::DecoderCache> {
        self.decoder.start(memory)
    }

    /// One incremental decoding step (evaluation mode): the next-token logits after `tokens`, the newest
    /// token of each row, given the cache of the positions before it.
    ///
    /// # Shapes
    /// - `tokens`: (batch) u32; `src_mask`: (batch, 1, 1, src_len) → logits (batch, vocab)
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut decoder::DecoderCache, src_mask: &Tensor) -> Result<Tensor> {
        let batch = tokens.dim(0)?;
        let y = embed(&self.embeddings.tgt, &tokens.reshape((batch, 1))?)?;
        let y = self.to_compute(self.positional.forward(&y, cache.len)?)?; // (batch, 1, d_model) at position cache.len
        let hidden = self.decoder.step(&y, cache, src_mask)?;
        self.logits(&hidden)?.squeeze(1)
    }

    /// Teacher-forced forward pass: logits for every target position.
    ///
    /// # Shapes
    /// - `src`: (batch, src_len); `tgt_in`: (batch, tgt_len) → (batch, tgt_len, vocab)
    pub fn forward(&self, src: &Tensor, src_mask: &Tensor, tgt_in: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.logits(&self.forward_hidden(src, src_mask, tgt_in, mode)?)
    }

    /// Teacher-forced forward pass up to the decoder's output, before the pre-softmax projection (which
    /// the loss applies itself: [`crate::loss::projected_label_smoothed_cross_entropy`]).
    ///
    /// # Shapes
    /// - `src`: (batch, src_len); `tgt_in`: (batch, tgt_len) → (batch, tgt_len, d_model)
    pub fn forward_hidden(&self, src: &Tensor, src_mask: &Tensor, tgt_in: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let memory = self.encode(src, src_mask, mode)?;
        self.decode(tgt_in, &memory, src_mask, mode)
    }

    /// The target embedding matrix (vocab, d_model): the shared embedding when tied (§3.4).
    pub fn target_embedding(&self) -> &Tensor {
        &self.embeddings.tgt
    }

    /// The decoder stack, for the hand-written decoding step ([`crate::decode::fast`]).
    pub(crate) fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The pre-softmax projection matrix (vocab, d_model): the shared embedding when tied (§3.4).
    pub fn output_projection(&self) -> &Tensor {
        &self.embeddings.generator
    }
}

/// Parameter counts per component, for `nmt info` and the paper-size tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    pub embeddings: usize,
    pub encoder: usize,
    pub decoder: usize,
}

impl ParameterCounts {
    /// Counts a model's parameters from their names.
    pub fn from_store(store: &init::ParamStore) -> Self {
        let mut c = Self { embeddings: 0, encoder: 0, decoder: 0 };
        for (name, var) in store.vars() {
            let n = var.elem_count();
            match name.split('.').next() {
                Some("encoder") => c.encoder += n,
                Some("decoder") => c.decoder += n,
                _ => c.embeddings += n,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.embeddings + self.encoder + self.decoder
    }
}

/// Counts parameters from the config alone (no allocation), with the same layout [`Transformer::new`]
/// builds; a test checks the two agree.
pub fn count_parameters(cfg: &ModelConfig) -> ParameterCounts {
    let (d, f) = (cfg.d_model, cfg.d_ff);
    let attention = 4 * (d * d + d);
    let ffn = d * f + f + f * d + d;
    let norm = 2 * d;
    let final_norm = match cfg.norm {
        crate::config::Norm::Pre => norm,
        crate::config::Norm::Post => 0,
    };
    let matrices = if cfg.tie_embeddings { 1 } else { 3 };
    ParameterCounts {
        embeddings: matrices * cfg.vocab_size * d,
        encoder: cfg.encoder_layers * (attention + ffn + 2 * norm) + final_norm,
        decoder: cfg.decoder_layers * (2 * attention + ffn + 3 * norm) + final_norm,
    }
}

/// Builds a freshly initialised model and its parameter store.
pub fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<(Transformer, init::ParamStore)> {
    let store = init::ParamStore::new(seed, device);
    let model = Transformer::new(cfg, store.var_builder())?;
    Ok((model, store))
}

#[cfg(test)]
mod tests;
