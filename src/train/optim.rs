//! Adam (Kingma & Ba) as the paper uses it (§5.3: β1 = 0.9, β2 = 0.98, ε = 1e-9), with its moments m and
//! v kept as named tensors so that a checkpoint can hold them (candle's `AdamW` keeps them private).
//!
//! m ← β1·m + (1-β1)·g; v ← β2·v + (1-β2)·g²; θ ← θ - lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε).

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::{BTreeMap, HashMap};

pub struct Adam {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Number of updates applied so far (t in the formula).
    pub t: usize,
}

impl Adam {
    pub fn new(params: Vec<(String, Var)>, beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        let zeros = |p: &(String, Var)| p.1.zeros_like();
        let m = params.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        let v = params.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        Ok(Self { params, m, v, beta1, beta2, eps, t: 0 })
    }

    /// The parameters, in the order [`Self::step_with`] expects their gradients.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr` from a backward pass. A parameter without a gradient is left
    /// unchanged.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let grads: Vec<Option<Tensor>> = self.params.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect();
        self.step_with(&grads, lr)
    }

    /// One update from gradients given in [`Self::params`] order: one fused pass per parameter on CPU
    /// ([`crate::ops::adam`]), tensor ops otherwise and as the reference.
    pub fn step_with(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let step = crate::ops::adam::AdamStep { lr, beta1: self.beta1, beta2: self.beta2, eps: self.eps, bc1, bc2 };
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            if let Some((m, v)) = crate::ops::adam::step(var, g, &self.m[i], &self.v[i], step)? {
                (self.m[i], self.v[i]) = (m, v);
                continue;
            }
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            var.set(&(var.as_tensor() - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The optimizer state as named tensors: `m.<param>` and `v.<param>`.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores `m` and `v` saved by [`Self::state`], and the update count `t`.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, t: usize) -> Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}.{name}");
                match state.get(&key) {
                    Some(x) if x.dims() == var.dims() => *slot = x.to_device(var.device())?,
                    Some(x) => bail!("{key} has shape {:?}, expected {:?}", x.dims(), var.dims()),
                    None => bail!("{key} is missing"),
                }
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_steps_equal_a_hand_computation() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("w".into(), var.clone())], 0.9, 0.98, 1e-9).unwrap();
        // loss = sum(w²) → g = 2w
        let (lr, b1, b2, eps) = (0.1f64, 0.9f64, 0.98f64, 1e-9f64);
        let mut w = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            let grads = var.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            adam.step(&grads, lr).unwrap();
            for i in 0..2 {
                let g = 2.0 * w[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                w[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - w[i]).abs() < 1e-6, "{} vs {}", got[i], w[i]);
        }
        let state = adam.state();
        let m_saved = state["m.w"].to_vec1::<f32>().unwrap();
        assert!((m_saved[0] as f64 - m[0]).abs() < 1e-6);
    }

    #[test]
    fn state_round_trips() {
        let var = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        let mut a = Adam::new(vec![("w".into(), var.clone())], 0.9, 0.98, 1e-9).unwrap();
        let grads = var.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        a.step(&grads, 0.01).unwrap();
        let saved: HashMap<String, Tensor> = a.state().into_iter().collect();
        let mut b = Adam::new(vec![("w".into(), var.clone())], 0.9, 0.98, 1e-9).unwrap();
        b.load_state(&saved, a.t).unwrap();
        assert_eq!(b.t, 1);
        assert_eq!(b.state()["v.w"].to_vec1::<f32>().unwrap(), a.state()["v.w"].to_vec1::<f32>().unwrap());
        let mut bad = saved.clone();
        bad.remove("m.w");
        assert_eq!(b.load_state(&bad, 1).unwrap_err().to_string(), "m.w is missing");
    }

    /// The fused update equals the reference tensor ops over three steps, in f64 (to rounding) and f32,
    /// on a parameter spread over several parallel tasks.
    #[test]
    fn fused_update_equals_the_reference() {
        let mut rng = crate::rng::Rng::seed(2);
        let n = 50_000;
        let init: Vec<f64> = (0..n).map(|_| rng.normal() as f64).collect();
        let grads: Vec<Vec<f64>> = (0..3).map(|_| (0..n).map(|_| rng.normal() as f64).collect()).collect();
        for (dtype, tolerance) in [(candle_core::DType::F64, 1e-12), (candle_core::DType::F32, 1e-5)] {
            let run = || {
                let t = Tensor::from_vec(init.clone(), n, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let var = Var::from_tensor(&t).unwrap();
                let mut adam = Adam::new(vec![("w".into(), var.clone())], 0.9, 0.98, 1e-9).unwrap();
                for (step, g) in grads.iter().enumerate() {
                    let g = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                    adam.step_with(&[Some(g)], 1e-3 * (step + 1) as f64).unwrap();
                }
                let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
                let state = adam.state();
                [f64s(var.as_tensor()), f64s(&state["m.w"]), f64s(&state["v.w"])]
            };
            let (fused, reference) = (run(), crate::ops::with_reference_path(run));
            for (what, (a, b)) in ["w", "m", "v"].iter().zip(fused.iter().zip(&reference)) {
                let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0, f64::max);
                assert!(diff < tolerance, "{dtype:?} {what}: relative difference {diff}");
            }
            assert_ne!(fused[0], init, "the parameter moved");
        }
    }
}
