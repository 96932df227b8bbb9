//! The machine's f32 matrix-product peak through candle's CPU matmul: GFLOP/s of an N×N by N×N product
//! (2·N³ floating-point operations), best of several repetitions after a warm-up.
//!
//!     cargo bench --bench matmul -- [N] [REPS]
//!
//! Defaults: N = 2048, 10 timed repetitions after 2 untimed ones. The thread count is candle's: the
//! `RAYON_NUM_THREADS` environment variable, else the number of physical cores.
//! `scripts/bench/train_vs_pytorch.py` parses the line that starts with `matmul`.

use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let reps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10).max(1);
    let device = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &device)?;
    let flops = 2.0 * (n as f64).powi(3);
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps + 2 {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(c.dims(), &[n, n]);
        assert_eq!(c.dtype(), DType::F32);
        if i >= 2 {
            times.push(secs);
        }
    }
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    println!(
        "matmul {n}x{n}x{n} f32 candle: best {:.1} GFLOP/s ({:.1} ms), median {:.1} GFLOP/s, {reps} reps, {} threads",
        flops / best / 1e9,
        best * 1e3,
        flops / median / 1e9,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
