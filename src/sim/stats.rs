//! Measurement helpers for the testnet tools (`dht-testnet`, `dht-restart-bench`): order
//! statistics of a sample and the true K closest ids to a target, the reference a lookup's
//! result is scored against. Here, beside the testnet they measure, rather than in each
//! tool, so the statistics are written and tested once.

use crate::dht::id::NodeId;

/// Order statistics of a sample (nearest-rank percentiles, so every reported value is one
/// that was actually observed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub count: usize,
    /// Smallest value.
    pub min: f64,
    /// 50th percentile (nearest rank).
    pub median: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let r = (p * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Some(Summary {
            count: v.len(),
            min: v[0],
            median: rank(0.5),
            p90: rank(0.9),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// The `k` ids of `all` closest to `target`, closest first, skipping `exclude`.
pub fn true_closest(all: &[NodeId], target: &NodeId, k: usize, exclude: &NodeId) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = all.iter().copied().filter(|id| id != exclude).collect();
    v.sort_unstable_by_key(|id| id.distance(target));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(
            (s.min, s.median, s.p90, s.max, s.mean),
            (1.0, 5.0, 9.0, 10.0, 5.5)
        );
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.median, one.p90), (7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn closest_ids_exclude_the_origin() {
        let ids: Vec<NodeId> = (0..10u8).map(|i| NodeId([i; 20])).collect();
        let got = true_closest(&ids, &NodeId([0; 20]), 3, &NodeId([0; 20]));
        assert_eq!(got, vec![NodeId([1; 20]), NodeId([2; 20]), NodeId([3; 20])]);
    }
}
