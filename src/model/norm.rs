//! Layer normalisation and the residual sub-layer connection (paper §3.1, §5.4).
//!
//! The paper's sub-layer is `LayerNorm(x + Dropout(Sublayer(x)))` (post-norm). [`Norm::Pre`] is a
//! deviation, `x + Dropout(Sublayer(LayerNorm(x)))`, that trains deep stacks more stably; the stacks then
//! end with a final LayerNorm.
//!
//! LayerNorm is written with differentiable tensor ops: candle 0.11's `ops::layer_norm` and the
//! `LayerNorm` module have no backward pass, and gradients through them silently vanish.

use super::init::Mode;
use crate::config::{ModelConfig, Norm};
use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// LayerNorm over the last dimension with a learned gain (`weight`) and bias (`bias`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(cfg.d_model, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(cfg.d_model, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps: cfg.layer_norm_eps })
    }

    /// The LayerNorm at the end of a stack: only with pre-norm (a deviation from the paper), named
    /// `final_norm`.
    pub fn final_of_stack(cfg: &ModelConfig, vb: VarBuilder) -> Result<Option<Self>> {
        match cfg.norm {
            crate::config::Norm::Pre => Ok(Some(Self::new(cfg, vb.pp("final_norm"))?)),
            crate::config::Norm::Post => Ok(None),
        }
    }

    /// (x - mean) / sqrt(var + eps) · weight + bias, with the biased variance.
    ///
    /// On CPU in f32/f64 this runs the fused op of [`crate::ops::layer_norm`] (one pass forward, one
    /// pass backward); elsewhere the [`Self::forward_reference`] tensor-op path.
    ///
    /// # Shapes
    /// - `x`: (..., d_model) → (..., d_model)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !crate::ops::fused(x) {
            return self.forward_reference(x);
        }
        let op = crate::ops::layer_norm::FusedLayerNorm { eps: self.eps };
        x.contiguous()?.apply_op3(&self.weight, &self.bias, op)
    }

    /// The gain γ (d_model), the bias β (d_model) and ε.
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }

    /// The same function from differentiable tensor ops: the slow reference path.
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            // Mixed precision: normalise in the weights' dtype (f32), return in the activations'.
            return self.forward_reference(&x.to_dtype(self.weight.dtype())?)?.to_dtype(x.dtype());
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// A residual connection around one sub-layer, with its LayerNorm and dropout.
#[derive(Debug, Clone)]
pub struct SublayerConnection {
    pub(crate) norm: LayerNorm,
    pub(crate) style: Norm,
    dropout: f64,
}

impl SublayerConnection {
    /// `vb` names the LayerNorm (e.g. `self_attn_norm`).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self { norm: LayerNorm::new(cfg, vb)?, style: cfg.norm, dropout: cfg.dropout })
    }

    /// Post-norm: `LayerNorm(x + Dropout(f(x)))`; pre-norm: `x + Dropout(f(LayerNorm(x)))`.
    ///
    /// # Shapes
    /// - `x`: (batch, len, d_model) → (batch, len, d_model); `f` must keep the shape.
    pub fn forward<F>(&self, x: &Tensor, mode: &mut Mode, f: F) -> Result<Tensor>
    where
        F: FnOnce(&Tensor, &mut Mode) -> Result<Tensor>,
    {
        match self.style {
            Norm::Post => {
                let y = f(x, mode)?;
                self.norm.forward(&mode.residual_dropout(x, &y, self.dropout)?)
            }
            Norm::Pre => {
                let y = f(&self.norm.forward(x)?, mode)?;
                mode.residual_dropout(x, &y, self.dropout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::ParamStore;
    use candle_core::{DType, Device, Var};

    fn cfg(norm: Norm) -> ModelConfig {
        ModelConfig { d_model: 4, dropout: 0.0, norm, ..ModelConfig::default() }
    }

    #[test]
    fn layer_norm_normalises_and_has_gradients() {
        let store = ParamStore::new(1, &Device::Cpu);
        let ln = LayerNorm::new(&cfg(Norm::Post), store.var_builder().pp("n")).unwrap();
        let x = Var::new(&[[1.0f32, 2.0, 3.0, 6.0]], &Device::Cpu).unwrap();
        let y = ln.forward(x.as_tensor()).unwrap();
        let v = y.to_vec2::<f32>().unwrap()[0].clone();
        let mean: f32 = v.iter().sum::<f32>() / 4.0;
        let var: f32 = v.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4, "mean {mean} var {var}");
        // x = [1,2,3,6]: mean 3, biased var 3.5 → first value -2/sqrt(3.5+1e-5)
        assert!((v[0] + 2.0 / (3.5f32 + 1e-5).sqrt()).abs() < 1e-5);
        let loss = (y * Tensor::new(&[[1.0f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap()).unwrap();
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("gradient reaches the input");
        assert!(g.abs().unwrap().sum_all().unwrap().to_vec0::<f32>().unwrap() > 0.0);
        for (name, var) in store.vars() {
            assert!(grads.get(var.as_tensor()).is_some(), "{name} has no gradient");
        }
    }

    #[test]
    fn fused_equals_reference_forward_and_backward() {
        // One chunk of rows, then 350 rows: several parallel tasks, whose ∂γ and ∂β sums must add up in
        // a fixed order (the fused gradients are compared bit for bit across two runs).
        for (dtype, (batch, len, width)) in
            [(DType::F32, (3, 4, 6)), (DType::F64, (3, 4, 6)), (DType::F32, (7, 50, 40)), (DType::F64, (7, 50, 40))]
        {
            let c = ModelConfig { d_model: width, ..cfg(Norm::Post) };
            let store = ParamStore::with_dtype(2, dtype, &Device::Cpu);
            let ln = LayerNorm::new(&c, store.var_builder().pp("n")).unwrap();
            let mut rng = crate::rng::Rng::seed(5);
            let mut randn = |n: usize, scale: f32, shift: f32| -> Vec<f32> {
                (0..n).map(|_| rng.normal() * scale + shift).collect()
            };
            // Non-trivial gain and bias, so their gradients are tested too.
            let w = Tensor::from_vec(randn(width, 1.0, 0.5), width, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            store.vars()[1].1.set(&w).unwrap();
            store.vars()[0].1.set(&(&w * 0.1).unwrap()).unwrap();
            let shape = (batch, len, width);
            let n = batch * len * width;
            let x = Tensor::from_vec(randn(n, 3.0, 1.0), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let x = Var::from_tensor(&x).unwrap();
            let probe = Tensor::from_vec(randn(n, 1.0, 0.0), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let run = |fused: bool| {
                let y = if fused { ln.forward(x.as_tensor()) } else { ln.forward_reference(x.as_tensor()) }.unwrap();
                let grads = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let mut outs = vec![y];
                for t in [
                    x.as_tensor().clone(),
                    store.vars()[0].1.as_tensor().clone(),
                    store.vars()[1].1.as_tensor().clone(),
                ] {
                    outs.push(grads.get(&t).expect("gradient").clone());
                }
                outs
            };
            let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
            let fused = run(true);
            for (i, (a, b)) in fused.iter().zip(run(false)).enumerate() {
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
                let diff = diff.to_vec0::<f64>().unwrap();
                assert!(diff < tol, "{dtype:?} output {i} (y, dx, dbias, dweight) differs by {diff}");
            }
            for (a, b) in fused.iter().zip(run(true)) {
                let bits =
                    |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                assert_eq!(bits(a), bits(&b), "{dtype:?}: the fused gradients differ between two runs");
            }
        }
    }

    #[test]
    fn post_norm_normalises_the_sum_and_pre_norm_keeps_the_residual() {
        let x = Tensor::new(&[[[1.0f32, 2.0, 3.0, 6.0]]], &Device::Cpu).unwrap();
        let twice = |t: &Tensor, _: &mut Mode| t * 2.0;
        let store = ParamStore::new(1, &Device::Cpu);
        let post = SublayerConnection::new(&cfg(Norm::Post), store.var_builder().pp("a")).unwrap();
        let y = post.forward(&x, &mut Mode::Eval, twice).unwrap();
        let expected = LayerNorm::new(&cfg(Norm::Post), store.var_builder().pp("a"))
            .unwrap()
            .forward(&(&x * 3.0).unwrap())
            .unwrap();
        let diff = (y - expected).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(diff.to_vec0::<f32>().unwrap() < 1e-6);
        let pre = SublayerConnection::new(&cfg(Norm::Pre), store.var_builder().pp("b")).unwrap();
        let y = pre.forward(&x, &mut Mode::Eval, twice).unwrap();
        let ln = LayerNorm::new(&cfg(Norm::Pre), store.var_builder().pp("b")).unwrap();
        let expected = (&x + (ln.forward(&x).unwrap() * 2.0).unwrap()).unwrap();
        let diff = (y - expected).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(diff.to_vec0::<f32>().unwrap() < 1e-6);
    }
}
