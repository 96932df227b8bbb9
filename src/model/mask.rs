//! Padding and causal masks (paper §3.2.3), as additive biases on the attention logits.
//!
//! A masked position gets [`MASKED`] added to its logit, so its softmax weight is exactly zero in f32;
//! a large finite value (not -inf) keeps a fully masked row finite instead of NaN.

use candle_core::{DType, Device, Result, Tensor};

/// The bias added to a masked logit.
pub const MASKED: f32 = -1e9;

/// Key-padding mask: `MASKED` where `ids` is `pad`, else 0.
///
/// # Shapes
/// - `ids`: (batch, len), u32
/// - returns: (batch, 1, 1, len), broadcastable over heads and query positions
pub fn padding_mask(ids: &Tensor, pad: u32) -> Result<Tensor> {
    let (batch, len) = ids.dims2()?;
    let is_pad = ids.eq(pad)?.to_dtype(DType::F32)?;
    (is_pad * MASKED as f64)?.reshape((batch, 1, 1, len))
}

/// Causal mask: query position i may attend to key positions 0..=i only.
///
/// # Shapes
/// - returns: (1, 1, len, len)
pub fn causal_mask(len: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..len).flat_map(|i| (0..len).map(move |j| if j > i { MASKED } else { 0.0 })).collect();
    Tensor::from_vec(data, (1, 1, len, len), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_mask_marks_only_pads() {
        let ids = Tensor::new(&[[5u32, 6, 0, 0], [7, 8, 9, 1]], &Device::Cpu).unwrap();
        let m = padding_mask(&ids, 0).unwrap();
        assert_eq!(m.dims(), &[2, 1, 1, 4]);
        let v = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0.0, 0.0, MASKED, MASKED, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn causal_mask_hides_the_future() {
        let m = causal_mask(3, &Device::Cpu).unwrap().reshape((3, 3)).unwrap();
        let v = m.to_vec2::<f32>().unwrap();
        assert_eq!(v[0], vec![0.0, MASKED, MASKED]);
        assert_eq!(v[1], vec![0.0, 0.0, MASKED]);
        assert_eq!(v[2], vec![0.0, 0.0, 0.0]);
    }
}
