//! The linear layers of every sub-layer: y = x Wᵀ + b, weight (out, in) as in PyTorch.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// A linear layer y = x Wᵀ + b with weight (out, in) and bias (out).
///
/// Two CPU speed choices, same function:
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
        let mut dims = x.dims().to_vec();
        let d_in = dims.pop().unwrap_or(1);
        let d_out = self.weight.dim(0)?;
        let rows: usize = dims.iter().product();
        let ones = Tensor::ones((rows, 1), x.dtype(), x.device())?;
        let bias = ones.matmul(&self.bias.reshape((1, d_out))?)?; // (rows, out), every row b
        let y = (x.reshape((rows, d_in))?.matmul(&self.weight.t()?)? + bias)?;
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
