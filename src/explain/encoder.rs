//! Sections 2 to 4 of `nmt explain`, for one source token in one encoder layer: scaled dot-product
//! attention step by step in one head (§3.2.1), what every head attends to and how the heads are joined
//! (§3.2.2), and the residual connections, LayerNorm and feed-forward network around them (§3.1, §3.3).

use super::{norm, row};
use crate::config::{ModelConfig, Norm};
use crate::model::trace::{SublayerTrace, Trace};
use anyhow::Result;
use candle_core::IndexOp;
use serde::Serialize;

/// How many of the largest weighted values section 2 lists.
pub const TOP_CONTRIBUTIONS: usize = 3;

/// The token, layer and head to explain, and the source pieces.
pub struct Selected<'a> {
    pub layer: usize,
    pub head: usize,
    pub token: usize,
    pub pieces: &'a [String],
}

/// Section 2: the six steps of self-attention for one query.
#[derive(Debug, Clone, Serialize)]
pub struct SelfAttention {
    pub layer: usize,
    pub head: usize,
    /// The query's piece index and text.
    pub token: usize,
    pub piece: String,
    pub d_k: usize,
    pub sqrt_d_k: f64,
    /// Step 1: the query q = x W_Q (this head's d_k columns), and the length of x, the layer's input row.
    pub input_norm: f32,
    pub query_norm: f32,
    /// Steps 2 to 5, one row per key.
    pub keys: Vec<KeyScore>,
    /// Step 5: the largest weighted values, largest first.
    pub top: Vec<KeyScore>,
    /// Step 6: z = Σ softmax · v, the head's output for the token (d_k values), as the model computed it.
    pub context: Vec<f32>,
    pub context_norm: f32,
}

/// One key's part in the query's attention.
#[derive(Debug, Clone, Serialize)]
pub struct KeyScore {
    pub index: usize,
    pub piece: String,
    /// Step 2: q · k.
    pub score: f32,
    /// Step 3: q · k / √d_k.
    pub scaled: f32,
    /// Step 4: the softmax over every key.
    pub weight: f32,
    /// ‖v‖, and step 5: ‖softmax · v‖.
    pub value_norm: f32,
    pub contribution_norm: f32,
}

/// Section 3: every head of the layer, then Concat and W_O.
#[derive(Debug, Clone, Serialize)]
pub struct MultiHead {
    pub heads: Vec<HeadFocus>,
    /// Concat(head_1, …, head_h): (src_len, h · d_k = d_model).
    pub concat_shape: [usize; 2],
    /// W_O: (h · d_k, d_model).
    pub w_o_shape: [usize; 2],
    /// MultiHead(X) = Concat(…) W_O: (src_len, d_model).
    pub output_shape: [usize; 2],
    /// The token's row of Concat(…) and of Concat(…) W_O.
    pub concat_norm: f32,
    pub output_norm: f32,
}

/// The key one head weighs most for the token.
#[derive(Debug, Clone, Serialize)]
pub struct HeadFocus {
    pub head: usize,
    pub index: usize,
    pub piece: String,
    pub weight: f32,
}

/// Section 4: the two sub-layers' residual connections and LayerNorms, and the feed-forward network.
#[derive(Debug, Clone, Serialize)]
pub struct Sublayers {
    pub norm: Norm,
    pub attention: Residual,
    /// W₁: (d_model, d_ff); max(0, x W₁ + b₁): (src_len, d_ff); W₂: (d_ff, d_model).
    pub w_1_shape: [usize; 2],
    pub hidden_shape: [usize; 2],
    pub w_2_shape: [usize; 2],
    /// How many of the token's d_ff hidden units the ReLU lets through (are positive).
    pub active_units: usize,
    pub ffn: Residual,
}

/// The norms of the token's row around one sub-layer.
#[derive(Debug, Clone, Serialize)]
pub struct Residual {
    /// ‖x‖, the residual stream entering.
    pub input_norm: f32,
    /// ‖Sublayer(x)‖ (with pre-norm, of Sublayer(LayerNorm(x))).
    pub sublayer_output_norm: f32,
    /// ‖x + Sublayer(…)‖.
    pub residual_norm: f32,
    /// ‖output‖: LayerNorm(x + Sublayer(x)) with post-norm, the residual sum with pre-norm.
    pub output_norm: f32,
}

pub fn self_attention(trace: &Trace, s: &Selected) -> Result<SelfAttention> {
    let layer = &trace.encoder[s.layer];
    let a = &layer.self_attn;
    let q = a.q.i((0, s.head, s.token))?.to_vec1::<f32>()?; // (d_k)
    let d_k = q.len();
    let sqrt_d_k = (d_k as f64).sqrt();
    let scores = a.scores.i((0, s.head, s.token))?.to_vec1::<f32>()?; // (src_len)
    let weights = a.weights.i((0, s.head, s.token))?.to_vec1::<f32>()?;
    let values = a.v.i((0, s.head))?.to_vec2::<f32>()?; // (src_len, d_k)
    let keys: Vec<KeyScore> = (0..scores.len())
        .map(|j| KeyScore {
            index: j,
            piece: s.pieces[j].clone(),
            score: scores[j],
            scaled: (scores[j] as f64 / sqrt_d_k) as f32,
            weight: weights[j],
            value_norm: norm(&values[j]),
            contribution_norm: weights[j] * norm(&values[j]),
        })
        .collect();
    let mut top = keys.clone();
    top.sort_by(|a, b| b.contribution_norm.total_cmp(&a.contribution_norm));
    top.truncate(TOP_CONTRIBUTIONS);
    let context = a.heads.i((0, s.head, s.token))?.to_vec1::<f32>()?;
    Ok(SelfAttention {
        layer: s.layer,
        head: s.head,
        token: s.token,
        piece: s.pieces[s.token].clone(),
        d_k,
        sqrt_d_k,
        input_norm: norm(&row(&layer.self_attn_norm.sublayer_input, s.token)?),
        query_norm: norm(&q),
        keys,
        top,
        context_norm: norm(&context),
        context,
    })
}

/// The index and value of the largest entry.
pub(crate) fn argmax(v: &[f32]) -> (usize, f32) {
    v.iter().copied().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, x)| if x > best.1 { (i, x) } else { best })
}

pub fn multi_head(trace: &Trace, s: &Selected, cfg: &ModelConfig) -> Result<MultiHead> {
    let a = &trace.encoder[s.layer].self_attn;
    let mut heads = vec![];
    for head in 0..cfg.heads {
        let (index, weight) = argmax(&a.weights.i((0, head, s.token))?.to_vec1::<f32>()?);
        heads.push(HeadFocus { head, index, piece: s.pieces[index].clone(), weight });
    }
    let len = s.pieces.len();
    Ok(MultiHead {
        heads,
        concat_shape: [len, cfg.d_model],
        w_o_shape: [cfg.d_model, cfg.d_model],
        output_shape: [len, cfg.d_model],
        concat_norm: norm(&row(&a.concat, s.token)?),
        output_norm: norm(&row(&a.output, s.token)?),
    })
}

fn residual(t: &SublayerTrace, token: usize) -> Result<Residual> {
    Ok(Residual {
        input_norm: norm(&row(&t.input, token)?),
        sublayer_output_norm: norm(&row(&t.sublayer_output, token)?),
        residual_norm: norm(&row(&t.residual, token)?),
        output_norm: norm(&row(&t.output, token)?),
    })
}

pub fn sublayers(trace: &Trace, s: &Selected, cfg: &ModelConfig) -> Result<Sublayers> {
    let layer = &trace.encoder[s.layer];
    let hidden = row(&layer.ffn.hidden, s.token)?;
    Ok(Sublayers {
        norm: cfg.norm,
        attention: residual(&layer.self_attn_norm, s.token)?,
        w_1_shape: [cfg.d_model, cfg.d_ff],
        hidden_shape: [s.pieces.len(), cfg.d_ff],
        w_2_shape: [cfg.d_ff, cfg.d_model],
        active_units: hidden.iter().filter(|&&h| h > 0.0).count(),
        ffn: residual(&layer.ffn_norm, s.token)?,
    })
}
