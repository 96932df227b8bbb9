//! Seeded initialisation and seeded dropout, drawn from our own RNG.
//!
//! candle 0.11 cannot seed its CPU RNG, so every random number of a run comes from [`Rng`]
//! ([`crate::rng`]: ChaCha8, serialisable, so a checkpoint can carry it). The paper does not say how weights are initialised; we
//! follow common practice for this model (fairseq, tensor2tensor, the Annotated Transformer):
//! - linear weights: Xavier-uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)); biases zero;
//! - the (shared) embedding matrix: N(0, d_model^-0.5), so that after the × sqrt(d_model) scaling the
//!   embeddings have unit variance, matching the positional encoding's scale;
//! - LayerNorm gain one, bias zero.
//!
//! [`ParamStore`] is a candle `VarBuilder` backend that creates each parameter on first request from
//! the seeded RNG (in construction order, so the same seed gives the same model) and keeps it as a
//! trainable `Var` under its full dotted name, which is also its checkpoint name.

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Xavier-uniform hint for a (fan_out, fan_in) weight.
pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Init {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -a, up: a }
}

/// N(0, d_model^-0.5) hint for the embedding matrix.
pub fn embedding_normal(d_model: usize) -> Init {
    Init::Randn { mean: 0.0, stdev: (d_model as f64).powf(-0.5) }
}

struct StoreInner {
    rng: Rng,
    vars: BTreeMap<String, Var>,
}

/// The model's parameters by checkpoint name; a `VarBuilder` backend that initialises on first use.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<StoreInner>>,
    device: Device,
    dtype: DType,
}

impl ParamStore {
    /// An empty f32 store whose parameters are drawn from `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self::with_dtype(seed, DType::F32, device)
    }

    /// Same, in another float type (f64 for gradient checks).
    pub fn with_dtype(seed: u64, dtype: DType, device: &Device) -> Self {
        let inner = StoreInner { rng: Rng::seed(seed), vars: BTreeMap::new() };
        Self { inner: Arc::new(Mutex::new(inner)), device: device.clone(), dtype }
    }

    /// A `VarBuilder` whose tensors are this store's trainable variables.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), self.dtype, self.device.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every parameter, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock().vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The parameters as plain tensors (for saving).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock().vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// Overwrites every parameter from `tensors`; every name must be present with the same shape.
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> anyhow::Result<()> {
        let inner = self.lock();
        for (name, var) in inner.vars.iter() {
            let t = tensors.get(name).ok_or_else(|| anyhow::anyhow!("tensor {name} is missing"))?;
            if t.dims() != var.dims() {
                anyhow::bail!(
                    "tensor {name} has shape {:?} but this model needs {:?} (different model size or vocabulary?)",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(self.dtype)?.to_device(&self.device)?)?;
        }
        if let Some(extra) = tensors.keys().find(|k| !inner.vars.contains_key(*k)) {
            anyhow::bail!("tensor {extra} is not part of this model (different architecture?)");
        }
        Ok(())
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.lock().vars.values().map(|v| v.elem_count()).sum()
    }
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut inner = self.lock();
        if let Some(v) = inner.vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("parameter {name} requested as {s:?} but exists as {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let n = s.elem_count();
        let rng = &mut inner.rng;
        let data: Vec<f32> = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| mean as f32 + stdev as f32 * rng.normal()).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| lo as f32 + (up - lo) as f32 * rng.uniform()).collect(),
            other => candle_core::bail!("parameter {name}: unsupported init {other:?}"),
        };
        let t = Tensor::from_vec(data, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        inner.vars.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.lock().vars.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("parameter {name} does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().vars.contains_key(name)
    }
}

/// Whether a forward pass trains (dropout on, drawn from the run's RNG) or evaluates (dropout off).
pub enum Mode<'a> {
    Train { rng: &'a mut Rng },
    Eval,
}

impl Mode<'_> {
    /// Inverted dropout with a seeded mask: zero each element with probability `p`, scale the rest by
    /// 1/(1-p). Identity in [`Mode::Eval`].
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self.mask(x, p) {
            None => Ok(x.clone()),
            Some(mask) => x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?,
        }
    }

    /// `x + Dropout(y)`, the residual connection around a sub-layer's output. On CPU one fused op
    /// ([`crate::ops::dropout`]) with the same mask as [`Self::dropout`] draws.
    ///
    /// # Shapes
    /// - `x`, `y`: the same shape → that shape
    pub fn residual_dropout(&mut self, x: &Tensor, y: &Tensor, p: f64) -> Result<Tensor> {
        match self.mask(y, p) {
            None => x + y,
            Some(mask) if crate::ops::fused(y) && x.dtype() == y.dtype() => {
                let op = crate::ops::dropout::FusedResidualDropout { mask };
                x.contiguous()?.apply_op2(&y.contiguous()?, op)
            }
            Some(mask) => x + (y * Tensor::from_vec(mask, y.shape(), y.device())?.to_dtype(y.dtype())?)?,
        }
    }

    /// The dropout mask for `x` (0 or 1/(1-p) per element), drawn from the run's RNG; None when nothing
    /// is dropped (evaluation, or p = 0).
    fn mask(&mut self, x: &Tensor, p: f64) -> Option<Vec<f32>> {
        match self {
            Mode::Eval => None,
            Mode::Train { .. } if p == 0.0 => None,
            Mode::Train { rng } => Some(dropout_mask(rng, x.elem_count(), p)),
        }
    }
}

/// Elements per block of a dropout mask, each block drawn from its own random stream.
const MASK_BLOCK: usize = 1 << 14;

/// `n` inverted-dropout mask values: 0 with probability `p`, 1/(1-p) otherwise. The hand-written
/// training step ([`crate::ops::step`]) draws its masks here too; over whole batches
/// ([`crate::ops::with_whole_batches`]) it draws them in the same order as the model's forward pass, so
/// both paths drop the same elements.
///
/// One number drawn from `rng` seeds the mask; block i of `MASK_BLOCK` elements comes from stream i
/// of that seed ([`Rng::stream`]), so the blocks are drawn in parallel and the mask does not depend on
/// the number of threads. (Drawn one element after another, the masks of a Multi30k step were about
/// 2.5% of a profile's samples, on one core while the other waited.) An element is kept when a uniform
/// u32 is below (1-p)·2^32.
pub(crate) fn dropout_mask(rng: &mut Rng, n: usize, p: f64) -> Vec<f32> {
    use rayon::prelude::*;
    let seed = rng.next_u64();
    let keep = 1.0 - p;
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(MASK_BLOCK).enumerate().for_each(|(i, block)| {
        // The block's numbers in bulk, then one comparison per element (a loop that vectorises): a call
        // per number cost more than ChaCha8 itself.
        let mut bits = vec![0u32; block.len()];
        Rng::stream(seed, i as u64).fill_u32(&mut bits);
        crate::ops::cpu::simd!(|| {
            for (m, &b) in block.iter_mut().zip(&bits) {
                *m = if u64::from(b) < threshold { scale } else { 0.0 };
            }
        })
    });
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn same_seed_same_parameters() {
        let make = |seed| {
            let store = ParamStore::new(seed, &Device::Cpu);
            let vb = store.var_builder();
            vb.get_with_hints((4, 3), "w", xavier_uniform(3, 4)).unwrap().to_vec2::<f32>().unwrap()
        };
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }

    #[test]
    fn xavier_bounds_and_embedding_std() {
        let store = ParamStore::new(1, &Device::Cpu);
        let vb = store.var_builder();
        let w = vb.get_with_hints((64, 32), "w", xavier_uniform(32, 64)).unwrap();
        let a = (6.0f32 / 96.0).sqrt();
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.abs() <= a));
        assert!(v.iter().any(|x| x.abs() > 0.9 * a));
        let e = vb.get_with_hints((1000, 64), "e", embedding_normal(64)).unwrap();
        let v = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        assert!((var.sqrt() - 0.125).abs() < 0.005, "std {}", var.sqrt());
    }

    #[test]
    fn dropout_is_seeded_scaled_and_off_in_eval() {
        let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
        let mut rng = Rng::seed(3);
        let a = Mode::Train { rng: &mut rng }.dropout(&x, 0.25).unwrap();
        let mut rng = Rng::seed(3);
        let b = Mode::Train { rng: &mut rng }.dropout(&x, 0.25).unwrap();
        let va = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(va, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let zeros = va.iter().filter(|&&v| v == 0.0).count() as f32 / 1e4;
        assert!((zeros - 0.25).abs() < 0.03, "dropped fraction {zeros}");
        assert!(va.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let e = Mode::Eval.dropout(&x, 0.25).unwrap();
        assert_eq!(e.sum_all().unwrap().to_vec0::<f32>().unwrap(), 1e4);
    }

    /// A mask of several blocks is the same with 1 thread and with 3, its blocks are not copies of one
    /// another, it drops about p of the elements, and the next call draws another mask.
    #[test]
    fn dropout_masks_do_not_depend_on_threads_and_blocks_differ() {
        let n = 3 * MASK_BLOCK + 1000;
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut rng = Rng::seed(5);
            pool.install(|| (dropout_mask(&mut rng, n, 0.1), dropout_mask(&mut rng, n, 0.1)))
        };
        let (a, next) = draw(1);
        assert_eq!((a.clone(), next.clone()), draw(3));
        assert_ne!(a, next);
        assert_ne!(a[..MASK_BLOCK], a[MASK_BLOCK..2 * MASK_BLOCK]);
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.01, "dropped fraction {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || v == (1.0 / 0.9) as f32));
    }

    /// The fused residual dropout draws the reference path's mask and equals it in value and in both
    /// gradients, in f64 over several parallel tasks.
    #[test]
    fn fused_residual_dropout_equals_the_reference() {
        let mut rng = Rng::seed(8);
        let n = 3 * 97 * 256; // 74,496 elements
        let mut randn = || -> Vec<f64> { (0..n).map(|_| rng.normal() as f64).collect() };
        let x = Var::from_vec(randn(), (3, 97, 256), &Device::Cpu).unwrap();
        let y = Var::from_vec(randn(), (3, 97, 256), &Device::Cpu).unwrap();
        let probe = Tensor::from_vec(randn(), (3, 97, 256), &Device::Cpu).unwrap();
        let run = || {
            let mut rng = Rng::seed(3);
            let out = Mode::Train { rng: &mut rng }.residual_dropout(x.as_tensor(), y.as_tensor(), 0.3).unwrap();
            let g = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            [out, g.get(&x).unwrap().clone(), g.get(&y).unwrap().clone()]
        };
        let (fused, reference) = (run(), crate::ops::with_reference_path(run));
        for (a, b) in fused.iter().zip(&reference) {
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f64>().unwrap();
            assert!(diff < 1e-12, "differs by {diff}");
        }
        let dy = fused[2].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let dropped = dy.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.3).abs() < 0.01, "dropped fraction {dropped}");
        let eval = Mode::Eval.residual_dropout(x.as_tensor(), y.as_tensor(), 0.3).unwrap();
        let sum = (x.as_tensor() + y.as_tensor()).unwrap();
        assert_eq!(
            eval.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            sum.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
    }
}
