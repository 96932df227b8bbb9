//! Training speed: milliseconds per update, split into forward, loss, backward and the Adam step, and
//! target tokens per second, for a config's model on its training data. It also times the label-smoothed
//! loss alone, fused and reference path, forward and backward, on the logits of the last batch.
//!
//!     cargo bench --bench train -- [CONFIG] [STEPS]
//!
//! Defaults: configs/demo.json, 20 timed updates after 3 untimed ones. The BPE vocabulary is learned
//! from the config's training data first (not timed).

use candle_core::{Device, Tensor};
use nmt::config::Config;
use nmt::data::batch::{epoch_order, make_batches, tokenize_pairs, Batch, Example};
use nmt::data::corpus::read_pairs;
use nmt::data::tokenizer::Tokenizer;
use nmt::loss::{label_smoothed_cross_entropy, label_smoothed_cross_entropy_reference, Loss};
use nmt::model::init::Mode;
use nmt::rng::Rng;
use nmt::train::optim::Adam;
use nmt::train::schedule::learning_rate;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Phases {
    forward: Duration,
    loss: Duration,
    backward: Duration,
    adam: Duration,
    tokens: usize,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let config = args.first().map(String::as_str).unwrap_or("configs/demo.json");
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mut cfg = Config::from_file(std::path::Path::new(config))?;
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
    for i in 0..steps + 3 {
        let picked: Vec<&Example> = batches[order[i % order.len()]].iter().map(|&j| &examples[j]).collect();
        let batch = Batch::new(&picked, tokenizer.specials, &device)?;
        let start = Instant::now();
        let logits = model.forward(&batch.src, &batch.src_mask, &batch.tgt_in, &mut Mode::Train { rng: &mut rng })?;
        let forward = start.elapsed();
        let l = label_smoothed_cross_entropy(&logits, &batch.tgt_out, pad, t.label_smoothing)?;
        let loss = start.elapsed() - forward;
        let grads = l.loss.backward()?;
        let backward = start.elapsed() - forward - loss;
        let grads: Vec<Option<Tensor>> = adam.params().iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect();
        adam.step_with(&grads, learning_rate(i + 1, cfg.model.d_model, t.warmup_steps, t.lr_scale))?;
        let all = start.elapsed();
        if i >= 3 {
            phases.forward += forward;
            phases.loss += loss;
            phases.backward += backward;
            phases.adam += all - forward - loss - backward;
            phases.tokens += batch.tgt_tokens;
        }
        last = Some((logits, batch));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    let total = phases.forward + phases.loss + phases.backward + phases.adam;
    println!(
        "per update (mean of {steps}): forward {:.1} ms, loss {:.1} ms, backward {:.1} ms, adam {:.1} ms, total {:.1} ms",
        ms(phases.forward),
        ms(phases.loss),
        ms(phases.backward),
        ms(phases.adam),
        ms(total)
    );
    println!("throughput: {:.0} target tokens/s", phases.tokens as f64 / total.as_secs_f64());

    // The loss alone on the last batch's logits (as a leaf), forward and backward.
    let (logits, batch) = last.unwrap();
    let logits = candle_core::Var::from_tensor(&logits.detach())?;
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
