//! The best validation result so far, which checkpoint it belongs to, and early stopping by patience.

use crate::config::BestMetric;
use serde::{Deserialize, Serialize};

/// Part of the training state, so that a resumed run keeps its best value and its patience count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestTracker {
    /// The best value of the metric so far and the step it was reached at.
    pub best: Option<(f64, usize)>,
    /// Validations in a row without improvement.
    pub stale: usize,
}

/// What one validation means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: save it as the best checkpoint.
    Improved,
    NotImproved,
    /// No improvement for `patience` validations in a row: stop.
    Stop,
}

impl BestTracker {
    pub fn observe(&mut self, metric: BestMetric, value: f64, step: usize, patience: usize) -> Verdict {
        let better = match (self.best, metric) {
            (None, _) => true,
            (Some((b, _)), BestMetric::Loss) => value < b,
            (Some((b, _)), BestMetric::Bleu) => value > b,
        };
        if better {
            self.best = Some((value, step));
            self.stale = 0;
            return Verdict::Improved;
        }
        self.stale += 1;
        if patience > 0 && self.stale >= patience {
            Verdict::Stop
        } else {
            Verdict::NotImproved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_must_fall_and_bleu_must_rise() {
        let mut t = BestTracker::default();
        assert_eq!(t.observe(BestMetric::Loss, 3.0, 100, 2), Verdict::Improved);
        assert_eq!(t.observe(BestMetric::Loss, 2.5, 200, 2), Verdict::Improved);
        assert_eq!(t.observe(BestMetric::Loss, 2.5, 300, 2), Verdict::NotImproved);
        assert_eq!(t.observe(BestMetric::Loss, 2.6, 400, 2), Verdict::Stop);
        assert_eq!(t.best, Some((2.5, 200)));
        let mut b = BestTracker::default();
        assert_eq!(b.observe(BestMetric::Bleu, 10.0, 1, 0), Verdict::Improved);
        assert_eq!(b.observe(BestMetric::Bleu, 9.0, 2, 0), Verdict::NotImproved);
        assert_eq!(b.observe(BestMetric::Bleu, 8.0, 3, 0), Verdict::NotImproved, "patience 0 never stops");
        assert_eq!(b.observe(BestMetric::Bleu, 12.0, 4, 0), Verdict::Improved);
        assert_eq!(b.stale, 0);
    }
}
