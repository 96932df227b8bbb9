//! Decoding speed: sentences/s and target tokens/s for greedy and beam 4, one sentence at a time and in
//! batches, plus the time per decoding step as the output grows: the hand-written step, the tensor-op step
//! with its KV cache (both flat), and recomputing the whole prefix (growing).
//!
//!     cargo bench --bench decode -- [RUN_DIR] [SRC_FILE] [N]
//!
//! Defaults: runs/demo, data/demo/test.en, 200 sentences. For Multi30k, train configs/multi30k.json and
//! pass `runs/multi30k ../shared/data/multi30k/test2016.de 1000`.

use candle_core::{Device, Tensor};
use nmt::config::{Config, DecodeConfig};
use nmt::data::corpus::read_lines;
use nmt::data::tokenizer::Tokenizer;
use nmt::decode::steps::{ReferenceSteps, Steps};
use nmt::decode::{DecodeContext, Search, Translator};
use nmt::model::init::{Mode, ParamStore};
use nmt::model::Transformer;
use nmt::run_dir::RunDir;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = RunDir::new(args.first().map(String::as_str).unwrap_or("runs/demo"));
    let src_file = args.get(1).map(String::as_str).unwrap_or("data/demo/test.en");
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let cfg = Config::from_file(&run.config())?;
    let tokenizer = Tokenizer::load(&run.tokenizer())?;
    let device = Device::Cpu;
    let store = ParamStore::new(0, &device);
    let model = Transformer::new(&cfg.model, store.var_builder())?;
    let step = run.latest_step()?.ok_or_else(|| anyhow::anyhow!("{} has no checkpoint", run.root.display()))?;
    nmt::weights::load_weights(&run.weights(step), &store)?;
    let lines: Vec<String> = read_lines(std::path::Path::new(src_file))?.into_iter().take(n).collect();
    println!(
        "model {} (step {step}), {} sentences from {src_file}, {} threads",
        run.root.display(),
        lines.len(),
        rayon::current_num_threads()
    );
    println!("{:<22} {:>10} {:>12} {:>14}", "search", "batch", "sentences/s", "tgt tokens/s");
    for (name, search) in [
        ("greedy", Search::Greedy),
        ("beam (decode section)", Search::new(&DecodeConfig { beam: cfg.decode.beam.max(2), ..cfg.decode.clone() }, 1)),
    ] {
        for batch in [1, cfg.decode.batch_size] {
            let decode = DecodeConfig { batch_size: batch, ..cfg.decode.clone() };
            let t = Translator::new(&model, &tokenizer, &decode).with_search(search);
            let start = Instant::now();
            let out = t.translate(&lines, |_| {})?;
            let secs = start.elapsed().as_secs_f64();
            let tokens: usize = out.iter().map(|o| tokenizer.encode(o).map(|v| v.len() + 1).unwrap_or(0)).sum();
            println!("{name:<22} {batch:>10} {:>12.1} {:>14.1}", lines.len() as f64 / secs, tokens as f64 / secs);
        }
    }
    // Time per decoding step at growing output positions, batch 32, forced tokens: the hand-written step
    // (src/decode/fast.rs), the model's tensor-op step with its KV cache, and recomputing the prefix.
    let ids: Vec<Vec<u32>> = lines.iter().take(32).map(|l| tokenizer.encode(l)).collect::<anyhow::Result<_>>()?;
    let srcs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
    let ctx = DecodeContext::new(&model, tokenizer.specials, cfg.decode.max_len_extra);
    let (memory, mask) = ctx.encode_sources(&srcs)?;
    let len = 100.min(cfg.model.max_positions - 1);
    let tokens = vec![4u32; srcs.len()];
    let time_steps = |steps: &mut dyn Steps| -> anyhow::Result<Vec<f64>> {
        (0..len)
            .map(|_| {
                let s = Instant::now();
                steps.step(&tokens)?;
                Ok(s.elapsed().as_secs_f64() * 1e3)
            })
            .collect()
    };
    let fast = time_steps(&mut *ctx.start(&srcs)?)?;
    let cached = time_steps(&mut ReferenceSteps::new(&model, &memory, mask.clone())?)?;
    println!(
        "\nms per decoding step (batch {}): hand-written step, tensor-op step with KV cache, recomputing the prefix:",
        srcs.len()
    );
    println!("{:>10} {:>12} {:>12} {:>12}", "position", "fast", "cached", "uncached");
    for pos in [1, 10, 25, 50, 75, 100].into_iter().filter(|&p| p <= len) {
        let prefix = Tensor::new(vec![vec![4u32; pos]; srcs.len()], &device)?;
        let s = Instant::now();
        model.logits(&model.decode(&prefix, &memory, &mask, &mut Mode::Eval)?)?;
        let uncached = s.elapsed().as_secs_f64() * 1e3;
        println!("{pos:>10} {:>12.2} {:>12.2} {:>12.2}", fast[pos - 1], cached[pos - 1], uncached);
    }
    Ok(())
}
