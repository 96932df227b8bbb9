//! The position-wise feed-forward network (paper §3.3): FFN(x) = max(0, x W₁ + b₁) W₂ + b₂.

use super::init::xavier_uniform;
use super::linear::{linear, Linear};
use crate::config::ModelConfig;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct FeedForward {
    pub(crate) w_1: Linear,
    pub(crate) w_2: Linear,
}

impl FeedForward {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        Ok(Self {
            w_1: linear(d, f, xavier_uniform(d, f), vb.pp("w_1"))?,
            w_2: linear(f, d, xavier_uniform(f, d), vb.pp("w_2"))?,
        })
    }

    /// # Shapes
    /// - `x`: (batch, len, d_model) → (batch, len, d_model), through (batch, len, d_ff)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.w_2.forward(&self.w_1.forward_relu(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::ParamStore;
    use candle_core::Device;

    #[test]
    fn is_relu_between_two_affine_maps() {
        let cfg = ModelConfig { d_model: 2, d_ff: 3, ..ModelConfig::default() };
        let store = ParamStore::new(1, &Device::Cpu);
        let ffn = FeedForward::new(&cfg, store.var_builder().pp("ffn")).unwrap();
        let x = Tensor::new(&[[[0.5f32, -1.5]]], &Device::Cpu).unwrap();
        let y = ffn.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let t = store.tensors();
        let get = |n: &str| t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (w1, b1, w2, b2) = (get("ffn.w_1.weight"), get("ffn.w_1.bias"), get("ffn.w_2.weight"), get("ffn.w_2.bias"));
        let h: Vec<f32> = (0..3).map(|j| (w1[j * 2] * 0.5 - w1[j * 2 + 1] * 1.5 + b1[j]).max(0.0)).collect();
        for i in 0..2 {
            let expect: f32 = (0..3).map(|j| w2[i * 3 + j] * h[j]).sum::<f32>() + b2[i];
            assert!((y[i] - expect).abs() < 1e-6);
        }
    }
}
