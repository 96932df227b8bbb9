//! The linear layers of every sub-layer: y = x Wᵀ + b, weight (out, in) as in PyTorch.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// A linear layer y = x Wᵀ + b with weight (out, in) and bias (out).
///
/// On CPU the fused op of [`crate::ops::linear`] computes it (one autograd node); elsewhere, and as the
/// reference, [`Self::forward_reference`] does, with two CPU speed choices:
/// - the leading dimensions are flattened into one (rows, in) × (in, out) product, where
///   `candle_nn::Linear` runs one small product per batch row;
/// - the bias is added as the outer product 1·bᵀ of a ones column and the bias row, so that its gradient
///   is the matrix product 1ᵀ·∂y rather than candle's slow strided sum over the leading dimension that a
///   broadcast add would need in backward.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// # Shapes
    /// - `x`: (..., in) → (..., out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// max(0, x Wᵀ + b), the first layer of the feed-forward network.
    ///
    /// # Shapes
    /// - `x`: (..., in) → (..., out)
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    fn forward_with(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        if !crate::ops::fused(x) {
            let y = self.forward_reference(x)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        x.contiguous()?.apply_op3(&self.weight, &self.bias, crate::ops::linear::FusedLinear { relu })
    }

    /// The weight, (out, in).
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, (out).
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The reference path from candle tensor ops.
    ///
    /// # Shapes
    /// - `x`: (..., in) → (..., out)
    pub fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let d_in = dims.pop().unwrap_or(1);
        let d_out = self.weight.dim(0)?;
        let rows: usize = dims.iter().product();
        // With mixed precision, the weights in the activations' dtype (a cast that has a backward pass).
        let (weight, b) = (self.weight.to_dtype(x.dtype())?, self.bias.to_dtype(x.dtype())?);
        let ones = Tensor::ones((rows, 1), x.dtype(), x.device())?;
        let bias = ones.matmul(&b.reshape((1, d_out))?)?; // (rows, out), every row b
        let y = (x.reshape((rows, d_in))?.matmul(&weight.t()?)? + bias)?;
        dims.push(d_out);
        y.reshape(dims)
    }
}

/// A linear layer with weight (out, in) initialised by `init` and a zero bias.
pub(crate) fn linear(d_in: usize, d_out: usize, init: Init, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((d_out, d_in), "weight", init)?;
    let bias = vb.get_with_hints(d_out, "bias", Init::Const(0.0))?;
    Ok(Linear { weight, bias })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{xavier_uniform, ParamStore};
    use crate::rng::Rng;
    use candle_core::{DType, Device, Var};

    /// Fused and reference paths agree in value and in every gradient, with and without ReLU, on shapes
    /// that take gemm's threaded path and several bias-gradient tasks; and the fused gradients are the
    /// same bit for bit on a second run.
    #[test]
    fn fused_equals_reference_in_value_and_gradient() {
        let (batch, len, d_in, d_out) = (5, 23, 96, 200);
        let store = ParamStore::with_dtype(3, DType::F64, &Device::Cpu);
        let vb = store.var_builder();
        let mut lin = linear(d_in, d_out, xavier_uniform(d_in, d_out), vb.pp("l")).unwrap();
        let mut rng = Rng::seed(4);
        let bias: Vec<f64> = (0..d_out).map(|_| rng.normal() as f64).collect();
        lin.bias = Var::from_vec(bias, d_out, &Device::Cpu).unwrap().as_tensor().clone();
        let xs: Vec<f64> = (0..batch * len * d_in).map(|_| rng.normal() as f64).collect();
        let x = Var::from_vec(xs, (batch, len, d_in), &Device::Cpu).unwrap();
        let probe = Tensor::from_vec(
            (0..batch * len * d_out).map(|_| rng.normal() as f64).collect::<Vec<_>>(),
            (batch, len, d_out),
            &Device::Cpu,
        )
        .unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_vec0::<f64>().unwrap()
        };
        for relu in [false, true] {
            let run = |reference: bool| {
                let f = || {
                    let y = if relu { lin.forward_relu(x.as_tensor()) } else { lin.forward(x.as_tensor()) }.unwrap();
                    let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let grad = |t: &Tensor| g.get(t).unwrap().clone();
                    (y, grad(x.as_tensor()), grad(&lin.weight), grad(&lin.bias))
                };
                if reference {
                    crate::ops::with_reference_path(f)
                } else {
                    f()
                }
            };
            let (fused, reference) = (run(false), run(true));
            for (name, a, b) in [
                ("y", &fused.0, &reference.0),
                ("dx", &fused.1, &reference.1),
                ("dW", &fused.2, &reference.2),
                ("db", &fused.3, &reference.3),
            ] {
                assert_eq!(a.dims(), b.dims(), "{name}");
                assert!(max_diff(a, b) < 1e-10, "relu {relu}: {name} differs by {}", max_diff(a, b));
            }
            let again = run(false);
            for (a, b) in [(&fused.2, &again.2), (&fused.3, &again.3), (&fused.1, &again.1)] {
                assert_eq!(
                    a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                    b.flatten_all().unwrap().to_vec1::<f64>().unwrap()
                );
            }
        }
    }
}
