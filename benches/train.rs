//! Training speed: milliseconds per update, split into the gradients (forward and backward, through
//! `nmt::train::gradients::accumulate` as `nmt train` calls it) and the Adam step, and target tokens per
//! second, for a config's model on its training data. It also times the label-smoothed loss alone, fused
//! and reference path, forward and backward, on the logits of the last batch.
//!
//!     cargo bench --bench train -- [--autograd | --reference] [CONFIG] [STEPS]
//!
//! By default the gradients come from the hand-written step (`nmt::ops::step`). `--autograd` times the
//! same updates through the model's forward pass and candle's autograd with the fused ops;
//! `--reference` with every fused op off as well (the tensor-op reference paths).
//!
//! Defaults: configs/demo.json, 20 timed updates after 3 untimed ones. The BPE vocabulary is learned
//! from the config's training data first (not timed).
//!
//!     cargo bench --bench train -- --dump-batches OUT.json --tokenizer RUN/tokenizer.json CONFIG STEPS
//!
//! trains nothing: it writes the batches that `nmt train --config CONFIG --max-steps STEPS` visits with
//! that run's `tokenizer.json` (the examples' lengths, a hash of their ids, every batch of
//! `make_batches`, and the batch indices of each update in the seeded epoch order) to OUT.json, for
//! `scripts/bench/train_vs_pytorch.py` to replay in PyTorch.

use candle_core::{Device, Tensor};
use nmt::config::Config;
use nmt::data::batch::{epoch_order, make_batches, tokenize_pairs, Batch, Example};
use nmt::data::corpus::read_pairs;
use nmt::data::tokenizer::Tokenizer;
use nmt::loss::{label_smoothed_cross_entropy, label_smoothed_cross_entropy_reference, Loss};
use nmt::model::init::Mode;
use nmt::rng::Rng;
use nmt::train::gradients::accumulate;
use nmt::train::optim::Adam;
use nmt::train::schedule::learning_rate;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Phases {
    /// Forward and backward: `gradients::accumulate`, as `nmt train` calls it.
    gradients: Duration,
    adam: Duration,
    tokens: usize,
}

fn main() -> anyhow::Result<()> {
    nmt::ops::cpu::keep_freed_memory();
    let (mut args, mut dump, mut tokenizer_file, mut reference, mut autograd) = (Vec::new(), None, None, false, false);
    let mut it = std::env::args().skip(1);
    let value = |flag: &str, it: &mut std::iter::Skip<std::env::Args>| match it.next() {
        Some(v) if !v.starts_with("--") => Ok(v),
        _ => Err(anyhow::anyhow!("{flag} needs a file")),
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dump-batches" => dump = Some(value("--dump-batches", &mut it)?),
            "--tokenizer" => tokenizer_file = Some(value("--tokenizer", &mut it)?),
            "--reference" => reference = true,
            "--autograd" => autograd = true,
            _ if a.starts_with("--") => {} // `cargo bench` passes --bench
            _ => args.push(a),
        }
    }
    let config = args.first().map(String::as_str).unwrap_or("configs/demo.json");
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mut cfg = Config::from_file(std::path::Path::new(config))?;
    if let Some(out) = dump {
        let tokenizer_file = tokenizer_file.ok_or_else(|| anyhow::anyhow!("--dump-batches needs --tokenizer FILE"))?;
        return dump_batches(&cfg, std::path::Path::new(&tokenizer_file), steps, std::path::Path::new(&out));
    }
    let d = &cfg.data;
    let pairs = read_pairs(d.train_src.as_deref().unwrap(), d.train_tgt.as_deref().unwrap())?;
    let tokenizer =
        Tokenizer::train(pairs.iter().flat_map(|p| [p.src.as_str(), p.tgt.as_str()]), cfg.model.vocab_size)?;
    cfg.model.vocab_size = tokenizer.vocab_size();
    let (examples, _, _) = tokenize_pairs(&tokenizer, &pairs, cfg.data.max_len)?;
    let device = Device::Cpu;
    let (model, store) = nmt::model::build(&cfg.model, cfg.train.seed, &device)?;
    let t = &cfg.train;
    let mut adam = Adam::new(store.vars(), t.adam_beta1, t.adam_beta2, t.adam_eps)?;
    let batches = make_batches(&examples, t.batch_tokens);
    let order = epoch_order(batches.len(), t.seed, 0);
    let pad = tokenizer.specials.pad;
    println!(
        "{config}: {} parameters, vocabulary {}, {} batches of ≤{} tokens, {} threads",
        store.vars().iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
        cfg.model.vocab_size,
        batches.len(),
        t.batch_tokens,
        rayon::current_num_threads()
    );
    let mut rng = Rng::seed(t.seed);
    let mut phases = Phases::default();
    let mut last = None;
    let mut updates = || -> anyhow::Result<()> {
        for i in 0..steps + 3 {
            let picked: Vec<&Example> = batches[order[i % order.len()]].iter().map(|&j| &examples[j]).collect();
            let batch = Batch::new(&picked, tokenizer.specials, &device)?;
            let start = Instant::now();
            let g = accumulate(&model, adam.params(), std::slice::from_ref(&batch), pad, t.label_smoothing, &mut rng)?;
            let gradients = start.elapsed();
            adam.step_with(&g.grads, learning_rate(i + 1, cfg.model.d_model, t.warmup_steps, t.lr_scale))?;
            if i >= 3 {
                phases.gradients += gradients;
                phases.adam += start.elapsed() - gradients;
                phases.tokens += batch.tgt_tokens;
            }
            last = Some(batch);
        }
        Ok(())
    };
    if reference {
        println!("reference path: every fused op off (nmt::ops::with_reference_path)");
        nmt::ops::with_reference_path(updates)?;
    } else if autograd {
        println!("autograd path: the model's forward pass and candle's autograd (nmt::ops::with_autograd_step)");
        nmt::ops::with_autograd_step(updates)?;
    } else {
        updates()?;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    let total = phases.gradients + phases.adam;
    println!(
        "per update (mean of {steps}): gradients {:.1} ms, adam {:.1} ms, total {:.1} ms",
        ms(phases.gradients),
        ms(phases.adam),
        ms(total)
    );
    println!("throughput: {:.0} target tokens/s", phases.tokens as f64 / total.as_secs_f64());

    // The loss alone on the last batch's logits (as a leaf), forward and backward.
    let batch = last.ok_or_else(|| anyhow::anyhow!("no update ran"))?;
    let hidden = model.forward_hidden(&batch.src, &batch.src_mask, &batch.tgt_in, &mut Mode::Eval)?;
    let logits = candle_core::Var::from_tensor(&model.logits(&hidden.detach())?)?;
    for (name, f) in [
        ("fused", label_smoothed_cross_entropy as fn(&Tensor, &Tensor, u32, f64) -> candle_core::Result<Loss>),
        ("reference", label_smoothed_cross_entropy_reference),
    ] {
        let start = Instant::now();
        for _ in 0..10 {
            f(&logits, &batch.tgt_out, pad, t.label_smoothing)?.loss.backward()?;
        }
        println!("loss {name:<9} on logits {:?}: {:.1} ms forward+backward", logits.dims(), ms10(start.elapsed()));
    }
    Ok(())
}

fn ms10(d: Duration) -> f64 {
    d.as_secs_f64() * 100.0
}

/// Writes the batches that `nmt train` visits in its first `steps` updates (see the crate docs above).
///
/// The walk through the epochs is `Trainer::next_batch`'s: epoch 0's seeded order, then epoch 1's, and so
/// on, `update_freq` batches per update, stopping early at `max_epochs`.
fn dump_batches(
    cfg: &Config,
    tokenizer_file: &std::path::Path,
    steps: usize,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let d = &cfg.data;
    let (src, tgt) = (d.train_src.as_deref(), d.train_tgt.as_deref());
    let pairs = read_pairs(
        src.ok_or_else(|| anyhow::anyhow!("data.train_src is missing"))?,
        tgt.ok_or_else(|| anyhow::anyhow!("data.train_tgt is missing"))?,
    )?;
    let tokenizer = Tokenizer::load(tokenizer_file)?;
    let (examples, empty, long) = tokenize_pairs(&tokenizer, &pairs, cfg.data.max_len)?;
    if examples.is_empty() {
        anyhow::bail!("no usable sentence pair (all empty or longer than data.max_len), as nmt train would say");
    }
    let t = &cfg.train;
    let batches = make_batches(&examples, t.batch_tokens);
    let mut updates: Vec<Vec<usize>> = Vec::with_capacity(steps);
    let (mut epoch, mut cursor, mut order) = (0, 0, epoch_order(batches.len(), t.seed, 0));
    'updates: while updates.len() < steps {
        let mut group = Vec::with_capacity(t.update_freq);
        while group.len() < t.update_freq {
            if t.max_epochs > 0 && epoch >= t.max_epochs {
                if !group.is_empty() {
                    updates.push(group);
                }
                break 'updates;
            }
            if let Some(&b) = order.get(cursor) {
                cursor += 1;
                group.push(b);
            } else {
                (epoch, cursor) = (epoch + 1, 0);
                order = epoch_order(batches.len(), t.seed, epoch);
            }
        }
        updates.push(group);
    }
    // FNV-1a over every id (u32 as one word), each side followed by u32::MAX as a separator.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for e in &examples {
        for &x in e.src.iter().chain([&u32::MAX]).chain(&e.tgt).chain([&u32::MAX]) {
            hash = (hash ^ x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let json = serde_json::json!({
        "tokenizer": tokenizer_file,
        "vocab_size": tokenizer.vocab_size(),
        "examples": examples.len(),
        "skipped_empty": empty,
        "skipped_long": long,
        "lengths": examples.iter().map(|e| [e.src.len(), e.tgt.len()]).collect::<Vec<_>>(),
        "ids_fnv1a": format!("{hash:016x}"),
        "batch_tokens": t.batch_tokens,
        "seed": t.seed,
        "update_freq": t.update_freq,
        "batches": batches,
        "updates": updates,
    });
    std::fs::write(out, serde_json::to_string(&json)?)?;
    println!(
        "{}: {} updates over {} batches of {} examples",
        out.display(),
        updates.len(),
        batches.len(),
        examples.len()
    );
    Ok(())
}
