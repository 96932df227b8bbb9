//! Data parallelism on the CPU: the environment contract, the sharding, and the arithmetic of the
//! all-reduce on a world of 1 ([`Solo`]) and on worlds of 2 and 3 processes played by threads
//! ([`ThreadGroup`], a stand-in for NCCL whose sum is the same element-wise sum).

use super::*;
use crate::config::ModelConfig;
use crate::data::batch::Example;
use crate::data::tokenizer::Specials;
use crate::model::Transformer;
use crate::rng::Rng;
use crate::train::gradients::{accumulate, global_norm};
use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};

const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };

/// `size` threads summing through shared memory: every rank posts its tensor, waits for the others, and
/// adds all of them in rank order (so every rank gets the same bits, as NCCL's all-reduce gives).
struct ThreadGroup {
    rank: usize,
    size: usize,
    barrier: Arc<Barrier>,
    slots: Arc<Mutex<Vec<Option<Tensor>>>>,
}

impl ThreadGroup {
    fn world(size: usize) -> Vec<Self> {
        let barrier = Arc::new(Barrier::new(size));
        let slots = Arc::new(Mutex::new(vec![None; size]));
        (0..size).map(|rank| Self { rank, size, barrier: barrier.clone(), slots: slots.clone() }).collect()
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.slots.lock().unwrap()[self.rank] = Some(x.clone());
        self.barrier.wait();
        let sum = {
            let slots = self.slots.lock().unwrap();
            let mut acc = slots[0].clone().unwrap();
            for s in &slots[1..] {
                acc = (acc + s.as_ref().unwrap())?;
            }
            acc
        };
        self.barrier.wait(); // nobody posts the next tensor before everyone has read this one
        Ok(sum)
    }
}

/// Runs `f` on every rank of a world of `size` threads; the results in rank order.
fn on_every_rank<T: Send>(size: usize, f: impl Fn(&ThreadGroup) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ThreadGroup::world(size).into_iter().map(|g| s.spawn(move || f(&g))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn tiny(seed: u64) -> (Transformer, Vec<(String, Var)>) {
    let cfg = ModelConfig {
        encoder_layers: 1,
        decoder_layers: 1,
        heads: 2,
        d_model: 16,
        d_ff: 32,
        dropout: 0.0,
        vocab_size: 20,
        max_positions: 16,
        ..ModelConfig::default()
    };
    let (model, store) = crate::model::build(&cfg, seed, &Device::Cpu).unwrap();
    let vars = store.vars();
    (model, vars)
}

/// Sentences of different lengths; the batches are index lists into them, as `make_batches` gives.
fn examples() -> Vec<Example> {
    (0..9u32)
        .map(|i| Example {
            src: (0..1 + i % 5).map(|j| 4 + (i * 3 + j) % 16).collect(),
            tgt: (0..1 + (i * 2) % 6).map(|j| 4 + (i + j * 5) % 16).collect(),
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f32>().unwrap()
}

#[test]
fn the_world_comes_from_torchruns_environment_contract() {
    let world = |vars: &[(&str, &str)]| {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_vars(|k| map.get(k).cloned())
    };
    assert_eq!(world(&[]).unwrap(), None);
    assert_eq!(
        world(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(),
        Some(World { rank: 0, size: 1, local_rank: 0, master: None })
    );
    let four =
        [("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];
    assert_eq!(
        world(&four).unwrap(),
        Some(World { rank: 5, size: 8, local_rank: 1, master: Some(("node0".into(), 29500)) })
    );
    // LOCAL_RANK defaults to RANK (one machine).
    let two = [("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1234")];
    assert_eq!(world(&two).unwrap().unwrap().local_rank, 1);
    for (vars, needle) in [
        (&[("RANK", "0")][..], "WORLD_SIZE is not"),
        (&[("WORLD_SIZE", "2")][..], "RANK is not"),
        (&[("RANK", "x"), ("WORLD_SIZE", "2")][..], "RANK=\"x\""),
        (&[("RANK", "0"), ("WORLD_SIZE", "0")][..], "WORLD_SIZE=0"),
        (&[("RANK", "2"), ("WORLD_SIZE", "2")][..], "RANK=2 is out of range"),
        (&[("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "-1")][..], "LOCAL_RANK=\"-1\""),
        (&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")][..], "MASTER_ADDR is not set"),
        (&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")][..], "MASTER_PORT is not set"),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")][..],
            "MASTER_PORT=\"70000\"",
        ),
    ] {
        let err = world(vars).unwrap_err().to_string();
        assert!(err.contains(needle), "{vars:?}: {err}");
    }
}

#[test]
fn shards_split_each_batch_into_disjoint_near_equal_parts() {
    let batch: Vec<usize> = (10..21).collect();
    for size in 1..=4 {
        let shards: Vec<Vec<usize>> = (0..size).map(|r| shard(&batch, r, size)).collect();
        let mut all: Vec<usize> = shards.concat();
        all.sort();
        assert_eq!(all, batch, "world of {size}: the shards are not a partition");
        let (min, max) = (shards.iter().map(Vec::len).min(), shards.iter().map(Vec::len).max());
        assert!(max.unwrap() - min.unwrap() <= 1, "world of {size}: {shards:?}");
    }
    assert_eq!(shard(&[7], 1, 2), Vec::<usize>::new());
}

/// The heart of data parallelism: each rank's gradients of its shards, all-reduced, are the gradients of
/// the whole batches on one process, and so are the loss statistics. Worlds of 2 and 3, with a batch of
/// one sentence (an empty shard) and an update in which some ranks have nothing at all.
#[test]
fn sharded_gradients_all_reduced_equal_the_whole_batches_gradients() {
    let data = examples();
    let updates: [Vec<Vec<usize>>; 2] = [vec![vec![0, 1, 2, 3, 4], vec![5, 6], vec![7]], vec![vec![8]]];
    let (model, params) = tiny(3);
    for batches in &updates {
        let whole = local_batches(&data, batches, 0, 1, SP, &Device::Cpu).unwrap();
        let reference = accumulate(&model, &params, &whole, 0, 0.1, &mut Rng::seed(1)).unwrap();
        for size in [2, 3] {
            let results = on_every_rank(size, |group| {
                let (model, params) = tiny(3);
                let mine = local_batches(&data, batches, group.rank(), size, SP, &Device::Cpu).unwrap();
                let mut g = accumulate(&model, &params, &mine, 0, 0.1, &mut Rng::seed(1)).unwrap();
                all_reduce_update(group, &params, &mut g).unwrap();
                g
            });
            for (rank, g) in results.iter().enumerate() {
                assert_eq!(g.tokens, reference.tokens, "rank {rank} of {size}");
                assert_eq!(g.src_tokens, reference.src_tokens);
                assert!((g.loss_sum - reference.loss_sum).abs() < 1e-3, "{} vs {}", g.loss_sum, reference.loss_sum);
                assert!((g.nll_sum - reference.nll_sum).abs() < 1e-3);
                for ((name, _), (x, y)) in params.iter().zip(g.grads.iter().zip(&reference.grads)) {
                    let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
                    let d = max_diff(x, y);
                    assert!(d < 2e-6, "{name}, rank {rank} of {size}: all-reduced gradient differs by {d}");
                }
            }
            // Every rank holds the same bits, so every rank's Adam step is the same.
            for g in &results[1..] {
                for (x, y) in g.grads.iter().zip(&results[0].grads) {
                    assert_eq!(max_diff(x.as_ref().unwrap(), y.as_ref().unwrap()), 0.0);
                }
            }
        }
    }
}

/// On a world of 1 the all-reduce changes nothing: the same gradients to the bit, the same statistics.
#[test]
fn a_world_of_one_leaves_the_update_as_it_was() {
    let data = examples();
    let (model, params) = tiny(5);
    let batches = local_batches(&data, &[vec![0, 1, 2], vec![3, 4]], 0, 1, SP, &Device::Cpu).unwrap();
    let before = accumulate(&model, &params, &batches, 0, 0.1, &mut Rng::seed(2)).unwrap();
    let mut after = accumulate(&model, &params, &batches, 0, 0.1, &mut Rng::seed(2)).unwrap();
    all_reduce_update(&Solo, &params, &mut after).unwrap();
    assert_eq!((after.tokens, after.src_tokens), (before.tokens, before.src_tokens));
    assert_eq!((after.loss_sum, after.nll_sum), (before.loss_sum, before.nll_sum));
    for (x, y) in after.grads.iter().zip(&before.grads) {
        let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
        assert_eq!((x.dims(), max_diff(x, y)), (y.dims(), 0.0));
    }
}

/// A non-finite gradient on one rank makes every rank's sum non-finite, so all of them skip the update.
#[test]
fn a_non_finite_gradient_on_one_rank_reaches_every_rank() {
    let results = on_every_rank(2, |group| {
        let (_, params) = tiny(1);
        let mut g = UpdateGradients::empty(params.len());
        g.tokens = 3;
        g.grads = params.iter().map(|(_, v)| Some(v.as_tensor().ones_like().unwrap())).collect();
        if group.rank() == 1 {
            g.grads[0] = Some((g.grads[0].as_ref().unwrap() * f64::NAN).unwrap());
        }
        all_reduce_update(group, &params, &mut g).unwrap();
        global_norm(&g.grads).unwrap()
    });
    assert!(results.iter().all(|n| n.is_nan()), "{results:?}");
}

/// Rank 0's bytes (the config, the tokenizer) and weights reach every rank, whatever the others held.
#[test]
fn rank_0s_bytes_and_weights_reach_every_rank() {
    let text = "{\"a\": \"configuration with non-ASCII: größer\"}".as_bytes().to_vec();
    let results = on_every_rank(3, |group| {
        let mine = (group.rank() == 0).then_some(text.as_slice());
        let bytes = share_bytes(group, &Device::Cpu, mine, "config").unwrap();
        let (_, params) = tiny(10 + group.rank() as u64); // different weights on every rank
        share_vars(group, &params).unwrap();
        let weights: Vec<Vec<f32>> =
            params.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        (bytes, weights)
    });
    let (_, rank0) = tiny(10);
    let expected: Vec<Vec<f32>> =
        rank0.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
    for (rank, (bytes, weights)) in results.iter().enumerate() {
        assert_eq!(bytes, &text, "rank {rank}");
        assert!(weights == &expected, "rank {rank}: weights differ from rank 0's");
    }
    let err = share_bytes(&Solo, &Device::Cpu, None, "tokenizer").unwrap_err().to_string();
    assert!(err.contains("tokenizer"), "{err}");
}

#[test]
fn a_world_of_one_off_cuda_needs_no_communication() {
    let one = World { rank: 0, size: 1, local_rank: 0, master: None };
    assert_eq!(join(&one, &Device::Cpu).unwrap().size(), 1);
}

/// A resumed run's state on rank 0 (weights, Adam moments and count, step, epoch, cursor, generator)
/// reaches every rank, which then all make the same next update.
#[test]
fn rank_0s_optimizer_and_training_state_reach_every_rank() {
    use crate::train::checkpoint::TrainState;
    use crate::train::optim::Adam;
    let results = on_every_rank(2, |group| {
        let (_, params) = tiny(20 + group.rank() as u64);
        let mut adam = Adam::new(params.clone(), 0.9, 0.98, 1e-9).unwrap();
        let mut state = TrainState {
            step: 0,
            epoch: 0,
            cursor: 0,
            rng: Rng::seed(group.rank() as u64),
            best: Default::default(),
            elapsed_sec: 0.0,
        };
        if group.rank() == 0 {
            // Rank 0 has trained a little: moments, a count, a position in the data.
            let grads: Vec<Option<Tensor>> = params.iter().map(|(_, v)| Some((v.as_tensor() * 0.5).unwrap())).collect();
            for _ in 0..3 {
                adam.step_with(&grads, 1e-3).unwrap();
            }
            (state.step, state.epoch, state.cursor, state.elapsed_sec) = (3, 1, 17, 12.5);
            state.rng.next_u64();
        }
        let state = share_run_state(group, &Device::Cpu, &mut adam, state).unwrap();
        // The same next update everywhere.
        let grads: Vec<Option<Tensor>> = params.iter().map(|(_, v)| Some(v.as_tensor().ones_like().unwrap())).collect();
        adam.step_with(&grads, 1e-3).unwrap();
        let weights: Vec<Vec<f32>> =
            params.iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        (state, adam.t, weights)
    });
    let (s0, t0, w0) = &results[0];
    assert_eq!((s0.step, s0.epoch, s0.cursor, s0.elapsed_sec, *t0), (3, 1, 17, 12.5, 4));
    let (s1, t1, w1) = &results[1];
    assert_eq!(s1, s0);
    assert_eq!(t1, t0);
    assert!(w1 == w0, "rank 1's weights after the next update differ from rank 0's");
}
