//! Token embeddings scaled by √d_model, and the sinusoidal positional encoding (paper §3.4, §3.5).
//!
//! PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).
//! The table is a constant, not a parameter, so it never appears in a checkpoint.

use candle_core::{Device, Result, Tensor};

/// Looks up token embeddings and multiplies them by √d_model.
///
/// # Shapes
/// - `table`: (vocab, d_model); `ids`: (batch, len) u32 → (batch, len, d_model)
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (batch, len) = ids.dims2()?;
    let d_model = table.dim(1)?;
    table
        .index_select(&ids.flatten_all()?, 0)? // (batch·len, d_model)
        .reshape((batch, len, d_model))?
        * (d_model as f64).sqrt()
}

/// The sinusoidal positional-encoding table.
#[derive(Debug, Clone)]
pub struct PositionalEncoding {
    /// (max_positions, d_model)
    table: Tensor,
}

impl PositionalEncoding {
    pub fn new(max_positions: usize, d_model: usize, device: &Device) -> Result<Self> {
        let mut data = vec![0f32; max_positions * d_model];
        for pos in 0..max_positions {
            for i in 0..d_model / 2 {
                let angle = pos as f64 / 10000f64.powf(2.0 * i as f64 / d_model as f64);
                data[pos * d_model + 2 * i] = angle.sin() as f32;
                data[pos * d_model + 2 * i + 1] = angle.cos() as f32;
            }
        }
        Ok(Self { table: Tensor::from_vec(data, (max_positions, d_model), device)? })
    }

    /// The whole table, (max_positions, d_model).
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Adds PE(start..start+len) to `x`.
    ///
    /// # Shapes
    /// - `x`: (batch, len, d_model) → (batch, len, d_model)
    pub fn forward(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let len = x.dim(1)?;
        let max = self.table.dim(0)?;
        if start + len > max {
            candle_core::bail!("sequence of {} positions exceeds model.max_positions {max}", start + len);
        }
        x.broadcast_add(&self.table.narrow(0, start, len)?.to_dtype(x.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_paper_formula() {
        let pe = PositionalEncoding::new(50, 16, &Device::Cpu).unwrap();
        assert_eq!(pe.table().dims(), &[50, 16]);
        let t = pe.table().to_vec2::<f32>().unwrap();
        assert_eq!(t[0][0], 0.0);
        assert_eq!(t[0][1], 1.0);
        assert!((t[1][0] - 1f32.sin()).abs() < 1e-7);
        assert!((t[1][1] - 1f32.cos()).abs() < 1e-7);
        // A high dimension: 2i = 14 → pos / 10000^(14/16)
        let angle = 37.0 / 10000f64.powf(14.0 / 16.0);
        assert!((t[37][14] as f64 - angle.sin()).abs() < 1e-6);
        assert!((t[37][15] as f64 - angle.cos()).abs() < 1e-6);
    }

    #[test]
    fn embeddings_are_scaled_by_sqrt_d_model() {
        let table = Tensor::new(&[[1.0f32, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        let e = embed(&table, &ids).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(e[0][0], vec![10.0, 12.0, 14.0, 16.0]);
        assert_eq!(e[0][1], vec![2.0, 4.0, 6.0, 8.0]);
    }

    #[test]
    fn too_long_input_is_an_error_not_a_panic() {
        let pe = PositionalEncoding::new(4, 2, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 5, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(pe.forward(&x, 0).is_err());
    }
}
