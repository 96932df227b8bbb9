//! One sub-layer of either stack, forward and backward: the weights' linear maps, multi-head attention,
//! the feed-forward network, and the residual connection with dropout and LayerNorm around them
//! (post-norm `LayerNorm(x + Dropout(f(x)))`, the paper's, or pre-norm `x + Dropout(f(LayerNorm(x)))`).
//!
//! Every function here calls the fused kernels of [`crate::ops`] on slices; the forward functions return
//! what their backward counterparts need, and the backward functions add each weight's gradient into the
//! step's gradient buffers.

use super::index::{Attention, FeedForward, Pair};
use crate::config::Norm;
use crate::ops::attention::{Dims, FusedAttention};
use crate::ops::cpu::{simd, Real};
use crate::ops::{dropout, layer_norm, linear};
use crate::rng::Rng;
use candle_core::Result;
use rayon::prelude::*;

/// Every parameter's gradient, in the parameter list's order.
pub(super) type Grads<T> = Vec<Vec<T>>;

/// The model's weights and the sizes the sub-layers need.
pub(super) struct Ctx<'a, T> {
    /// Every parameter's data, in the parameter list's order.
    pub params: &'a [&'a [T]],
    pub norm: Norm,
    pub layer_norm_eps: f64,
    pub dropout: f64,
    pub d_model: usize,
}

/// One attention's operator and sizes: the fused kernel with this batch's mask.
pub(super) struct AttentionOp {
    pub op: FusedAttention,
    pub dims: Dims,
}

/// What the backward pass of one multi-head attention needs: the projections, the attention weights and
/// the heads' output.
pub(super) struct AttentionSaved<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// P of every (batch row, head).
    probs: Vec<T>,
    concat: Vec<T>,
}

/// What the backward pass of one sub-layer needs.
pub(super) struct Sublayer<T, S> {
    /// The sub-layer's input x.
    input: Vec<T>,
    /// Post-norm: x + Dropout(f(x)), the LayerNorm's input; pre-norm: LayerNorm(x), f's input.
    normed: Vec<T>,
    /// The dropout mask on f's output (None without dropout).
    mask: Option<Vec<f32>>,
    /// What f's backward pass needs.
    inner: S,
}

/// Elements per parallel task of the element-wise passes.
const ELEMENTS_PER_TASK: usize = 1 << 15;

/// acc += x, element by element.
pub(super) fn add_into<T: Real>(acc: &mut [T], x: &[T]) {
    acc.par_chunks_mut(ELEMENTS_PER_TASK).zip(x.par_chunks(ELEMENTS_PER_TASK)).for_each(|(a, x)| {
        simd!(|| {
            for (a, &b) in a.iter_mut().zip(x) {
                *a += b;
            }
        })
    });
}

/// x + Dropout(y) with the given mask.
fn residual<T: Real>(x: &[T], y: &[T], mask: Option<&[f32]>) -> Vec<T> {
    match mask {
        Some(m) => dropout::add_masked(x, y, m),
        None => x.par_iter().zip(y).map(|(&a, &b)| a + b).collect(),
    }
}

/// d·mask (the gradient through dropout), or d itself.
pub(super) fn through_mask<T: Real>(d: &[T], mask: Option<&[f32]>) -> Vec<T> {
    match mask {
        Some(m) => dropout::mul_masked(d, m),
        None => d.to_vec(),
    }
}

/// The rows of a stack's (batch·len, d_model) activations that are computed: all of them (the encoder),
/// or only the decoder's target positions that are not padding, in order.
///
/// A padding position of the target changes nothing for the others (it comes after them, and the causal
/// mask keeps it out of their self-attention) and its loss does not count: its gradients are exactly
/// zero. So the decoder skips it: its linear maps, feed-forward networks, LayerNorms and dropout run on
/// the kept rows, the loss too, and each attention scatters its projections into the padded layout that
/// the attention kernel and the masks work on, and gathers its output back. On Multi30k, 12% of the
/// target positions of a batch are padding (batches are sorted by source length; 0.6% of the source
/// positions are). Dropout masks are drawn for the padded shape, as the model's forward pass draws them,
/// and the kept rows' part is used, so both paths drop the same elements.
pub(super) enum Rows<'a> {
    All,
    /// The kept rows' indices in the padded layout of `padded` rows.
    Kept {
        kept: &'a [usize],
        padded: usize,
    },
}

impl Rows<'_> {
    /// The kept rows of a padded (rows, d) row-major matrix.
    pub fn gather<T: Copy>(&self, x: Vec<T>, d: usize) -> Vec<T> {
        match self {
            Rows::All => x,
            Rows::Kept { kept, .. } => {
                let mut out = Vec::with_capacity(kept.len() * d);
                for &r in kept.iter() {
                    out.extend_from_slice(&x[r * d..(r + 1) * d]);
                }
                out
            }
        }
    }

    /// The padded (rows, d) matrix whose kept rows are `x`, zero elsewhere.
    pub fn scatter<T: Real>(&self, x: Vec<T>, d: usize) -> Vec<T> {
        match self {
            Rows::All => x,
            Rows::Kept { kept, padded } => {
                // One pass in row order (the kept indices ascend), each element written once.
                let mut out = Vec::with_capacity(padded * d);
                let mut rows = kept.iter().zip(x.chunks(d)).peekable();
                for r in 0..*padded {
                    match rows.next_if(|&(&k, _)| k == r) {
                        Some((_, row)) => out.extend_from_slice(row),
                        None => out.resize(out.len() + d, T::zero()),
                    }
                }
                out
            }
        }
    }
}

impl<T: Real> Ctx<'_, T> {
    /// The dropout mask of a sub-layer output over `rows` (n elements when all rows are kept), drawn
    /// from `rng` as the model's forward pass draws it.
    fn rows_dropout_mask(&self, rows: &Rows, rng: &mut Rng, n: usize) -> Option<Vec<f32>> {
        match rows {
            Rows::All => self.dropout_mask(rng, n),
            Rows::Kept { padded, .. } => {
                self.dropout_mask(rng, padded * self.d_model).map(|m| rows.gather(m, self.d_model))
            }
        }
    }

    /// The dropout mask for `n` elements, drawn from `rng` as the model's forward pass draws it.
    pub fn dropout_mask(&self, rng: &mut Rng, n: usize) -> Option<Vec<f32>> {
        (self.dropout > 0.0).then(|| crate::model::init::dropout_mask(rng, n, self.dropout))
    }

    fn linear(&self, l: Pair, x: &[T], relu: bool) -> Result<Vec<T>> {
        linear::forward(x, self.params[l.w], self.params[l.b], relu)
    }

    /// Adds the gradients of the linear layer `l` (input `x`, no ReLU) into `grads`, and its input's
    /// gradient into `dx`.
    fn linear_backward(&self, grads: &mut Grads<T>, l: Pair, x: &[T], dy: &[T], dx: &mut [T]) -> Result<()> {
        let (mut dw, mut db) = (std::mem::take(&mut grads[l.w]), std::mem::take(&mut grads[l.b]));
        let inputs = linear::Inputs { x, w: self.params[l.w], y: &[], relu: false };
        let out = linear::Grads { dx, dx_accumulate: true, dw: &mut dw, db: &mut db };
        let result = linear::backward_into(inputs, dy, out);
        (grads[l.w], grads[l.b]) = (dw, db);
        result
    }

    pub fn layer_norm(&self, n: Pair, x: &[T]) -> Vec<T> {
        layer_norm::forward(x, self.params[n.w], self.params[n.b], self.layer_norm_eps)
    }

    /// ∂x of a LayerNorm with input `x`; the gain's and bias's gradients are added into `grads`.
    pub fn layer_norm_backward(&self, grads: &mut Grads<T>, n: Pair, x: &[T], dy: &[T]) -> Vec<T> {
        let (dx, dw, db) = layer_norm::backward(x, self.params[n.w], dy, self.layer_norm_eps);
        add_into(&mut grads[n.w], &dw);
        add_into(&mut grads[n.b], &db);
        dx
    }

    /// Multi-head attention from `x` (its `rows`) to `memory` (all rows; to `x` itself for
    /// self-attention): Concat(head_1, …, head_h) W_O + b_O.
    pub fn attention(
        &self,
        a: Attention,
        op: &AttentionOp,
        rows: &Rows,
        x: &[T],
        memory: Option<&[T]>,
    ) -> Result<(Vec<T>, AttentionSaved<T>)> {
        let d = self.d_model;
        let kv = memory.unwrap_or(x);
        let (q, k, v) = (self.linear(a.q, x, false)?, self.linear(a.k, kv, false)?, self.linear(a.v, kv, false)?);
        // The kernel works on the padded layout: the memory is in it already, x's rows are scattered.
        let (k, v) = match memory {
            Some(_) => (k, v),
            None => (rows.scatter(k, d), rows.scatter(v, d)),
        };
        let q = rows.scatter(q, d);
        let (concat, probs) = op.op.forward_keeping_probs(&q, &k, &v, op.dims)?;
        let concat = rows.gather(concat, d);
        Ok((self.linear(a.o, &concat, false)?, AttentionSaved { q, k, v, probs, concat }))
    }

    /// The backward pass of [`Self::attention`]: ∂x is added into `dx`; for cross-attention (`memory`
    /// given with its gradient buffer) ∂memory is added into that buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        grads: &mut Grads<T>,
        a: Attention,
        op: &AttentionOp,
        rows: &Rows,
        x: &[T],
        memory: Option<(&[T], &mut [T])>,
        saved: &AttentionSaved<T>,
        d_out: &[T],
        dx: &mut [T],
    ) -> Result<()> {
        let d = self.d_model;
        let mut d_concat = vec![T::zero(); saved.concat.len()];
        self.linear_backward(grads, a.o, &saved.concat, d_out, &mut d_concat)?;
        let d_concat = rows.scatter(d_concat, d);
        let (dq, dk, dv) = op.op.backward(&saved.q, &saved.k, &saved.v, &d_concat, op.dims, Some(&saved.probs))?;
        drop(d_concat);
        self.linear_backward(grads, a.q, x, &rows.gather(dq, d), dx)?;
        match memory {
            Some((m, dm)) => {
                self.linear_backward(grads, a.k, m, &dk, dm)?;
                self.linear_backward(grads, a.v, m, &dv, dm)
            }
            None => {
                self.linear_backward(grads, a.k, x, &rows.gather(dk, d), dx)?;
                self.linear_backward(grads, a.v, x, &rows.gather(dv, d), dx)
            }
        }
    }

    /// FFN(x) = max(0, x W₁ + b₁) W₂ + b₂; also returns the hidden activation.
    pub fn ffn(&self, f: FeedForward, x: &[T]) -> Result<(Vec<T>, Vec<T>)> {
        let h = self.linear(f.w_1, x, true)?;
        Ok((self.linear(f.w_2, &h, false)?, h))
    }

    /// The backward pass of [`Self::ffn`] (`h` its hidden activation): ∂x is added into `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn ffn_backward(
        &self,
        grads: &mut Grads<T>,
        f: FeedForward,
        x: &[T],
        h: &[T],
        d_out: &[T],
        dx: &mut [T],
    ) -> Result<()> {
        let mut dh = vec![T::zero(); h.len()];
        self.linear_backward(grads, f.w_2, h, d_out, &mut dh)?;
        linear::relu_grad_in_place(&mut dh, h);
        self.linear_backward(grads, f.w_1, x, &dh, dx)
    }

    /// The sub-layer around `f` with LayerNorm `n`: post-norm LayerNorm(x + Dropout(f(x))) or pre-norm
    /// x + Dropout(f(LayerNorm(x))), on `rows`, the dropout mask drawn after f as the model's forward pass
    /// draws it.
    pub fn sublayer<S>(
        &self,
        n: Pair,
        rows: &Rows,
        rng: &mut Rng,
        x: Vec<T>,
        f: impl FnOnce(&[T]) -> Result<(Vec<T>, S)>,
    ) -> Result<(Vec<T>, Sublayer<T, S>)> {
        match self.norm {
            Norm::Post => {
                let (y, inner) = f(&x)?;
                let mask = self.rows_dropout_mask(rows, rng, y.len());
                let sum = residual(&x, &y, mask.as_deref());
                let out = self.layer_norm(n, &sum);
                Ok((out, Sublayer { input: x, normed: sum, mask, inner }))
            }
            Norm::Pre => {
                let normed = self.layer_norm(n, &x);
                let (y, inner) = f(&normed)?;
                let mask = self.rows_dropout_mask(rows, rng, y.len());
                let out = residual(&x, &y, mask.as_deref());
                Ok((out, Sublayer { input: x, normed, mask, inner }))
            }
        }
    }

    /// ∂x of [`Self::sublayer`] from ∂out. `f_backward(grads, saved, f's input, ∂f(x), ∂x)` adds the
    /// gradient of f's input into ∂x.
    pub fn sublayer_backward<S>(
        &self,
        grads: &mut Grads<T>,
        n: Pair,
        s: &Sublayer<T, S>,
        d_out: Vec<T>,
        f_backward: impl FnOnce(&mut Grads<T>, &S, &[T], &[T], &mut [T]) -> Result<()>,
    ) -> Result<Vec<T>> {
        match self.norm {
            Norm::Post => {
                let mut d_sum = self.layer_norm_backward(grads, n, &s.normed, &d_out);
                let d_f = through_mask(&d_sum, s.mask.as_deref());
                f_backward(grads, &s.inner, &s.input, &d_f, &mut d_sum)?;
                Ok(d_sum)
            }
            Norm::Pre => {
                let d_f = through_mask(&d_out, s.mask.as_deref());
                let mut d_normed = vec![T::zero(); s.input.len()];
                f_backward(grads, &s.inner, &s.normed, &d_f, &mut d_normed)?;
                let dx = self.layer_norm_backward(grads, n, &s.input, &d_normed);
                let mut d = d_out;
                add_into(&mut d, &dx);
                Ok(d)
            }
        }
    }
}
