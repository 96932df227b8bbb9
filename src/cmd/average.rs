//! `nmt average`: the element-wise mean of the last K checkpoints' weights.

use crate::cli::AverageArgs;
use crate::run_dir::RunDir;
use crate::weights::load_tensors;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

pub fn run(args: AverageArgs) -> Result<()> {
    let run = RunDir::new(&args.model);
    let steps = run.checkpoint_steps()?;
    if args.last == 0 {
        bail!("--last must be at least 1");
    }
    if steps.len() < args.last {
        bail!(
            "{} holds {} checkpoint(s), fewer than --last {} (see train.keep_last)",
            run.checkpoints().display(),
            steps.len(),
            args.last
        );
    }
    let chosen = &steps[steps.len() - args.last..];
    let mut sum: HashMap<String, Tensor> = HashMap::new();
    for &step in chosen {
        let path = run.weights(step);
        let tensors = load_tensors(&path, &Device::Cpu)?;
        if !sum.is_empty() && (tensors.len() != sum.len() || tensors.keys().any(|k| !sum.contains_key(k))) {
            bail!("{} has different tensors from the other checkpoints", path.display());
        }
        for (name, t) in tensors {
            let t = t.to_dtype(candle_core::DType::F64)?;
            let acc = match sum.remove(&name) {
                Some(acc) => (acc + t)?,
                None => t,
            };
            sum.insert(name, acc);
        }
    }
    let mean = sum
        .into_iter()
        .map(|(k, v)| Ok((k, (v / args.last as f64)?.to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    let output =
        args.output.unwrap_or_else(|| run.checkpoints().join(format!("average-last{}.safetensors", args.last)));
    crate::weights::save_tensors(&output, &mean)?;
    crate::log!("averaged steps {:?} into {}", chosen, output.display());
    Ok(())
}
