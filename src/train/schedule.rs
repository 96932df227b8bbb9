//! The learning-rate schedule of paper §5.3:
//! lrate = d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5), times a configurable scale.
//! Steps count from 1. The schedule is a pure function of the step, so resuming only needs the step.

/// Learning rate at `step` (1-based).
pub fn learning_rate(step: usize, d_model: usize, warmup_steps: usize, scale: f64) -> f64 {
    let step = step.max(1) as f64;
    let warmup = warmup_steps as f64;
    scale * (d_model as f64).powf(-0.5) * step.powf(-0.5).min(step * warmup.powf(-1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_formula_at_chosen_steps() {
        let (d, w) = (512, 4000);
        let lr1 = learning_rate(1, d, w, 1.0);
        assert!((lr1 - 512f64.powf(-0.5) * 4000f64.powf(-1.5)).abs() < 1e-15);
        let peak = learning_rate(w, d, w, 1.0);
        assert!((peak - 512f64.powf(-0.5) * 4000f64.powf(-0.5)).abs() < 1e-15);
        assert!((peak - 6.9877e-4).abs() < 1e-7);
        let late = learning_rate(10 * w, d, w, 1.0);
        assert!((late - 512f64.powf(-0.5) * 40000f64.powf(-0.5)).abs() < 1e-15);
        assert!((learning_rate(10, d, w, 2.0) - 2.0 * learning_rate(10, d, w, 1.0)).abs() < 1e-15);
        assert!(learning_rate(w - 1, d, w, 1.0) < peak && learning_rate(w + 1, d, w, 1.0) < peak);
    }
}
