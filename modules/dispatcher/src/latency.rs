//! The probes' round-trip statistics (`ds_ping_latency_stats`), as Kamailio
//! keeps them per destination: a running mean and standard deviation
//! (Welford's online algorithm), the extremes, the timeouts, and a short
//! term estimate, an exponentially weighted moving average with weight
//! `ds_latency_estimator_alpha` on the past. Algorithm 13 orders
//! destinations by it, and congestion control (`cc=1`) reads the estimate
//! above the mean.

/// Samples after which a steady estimator counts as trained.
const TRAINED: u32 = 10_000;
/// Past this many samples the mean turns into a weighted mean.
const COUNT_CAP: u32 = 1 << 21;

/// One destination's statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Mean round trip (ms).
    pub average: f64,
    /// Its standard deviation.
    pub stdev: f64,
    /// Sum of squared differences from the mean (Welford's M2).
    pub m2: f64,
    /// Short term estimate (ms).
    pub estimate: f64,
    /// Largest round trip seen (ms).
    pub max: i32,
    /// Smallest round trip seen (ms).
    pub min: i32,
    /// Samples taken (capped; jumps to 10000 once steady).
    pub count: u32,
    /// Probes that got no answer.
    pub timeout: u32,
}

impl Latency {
    /// Statistics that start at `ms`, as if `count` samples had agreed
    /// (the list file's `latency=` attribute: 10000, trained).
    pub fn starting_at(ms: i32, count: u32) -> Latency {
        Latency {
            average: f64::from(ms),
            stdev: 0.0,
            m2: 0.0,
            estimate: f64::from(ms),
            max: ms,
            min: ms,
            count,
            timeout: 0,
        }
    }

    /// Adds one round trip of `ms`; `alpha` (0..1) is the estimate's memory.
    pub fn add(&mut self, ms: i32, alpha: f64) {
        if self.count < COUNT_CAP {
            self.count += 1;
        } else {
            self.m2 -= self.m2 / f64::from(self.count);
        }
        if self.count == 1 {
            let timeout = self.timeout;
            *self = Latency::starting_at(ms, 1);
            self.timeout = timeout;
        }
        // A steady start (deviation under half a millisecond after ten
        // samples) is taken as trained.
        if self.count > 10 && self.count < TRAINED && self.stdev < 0.5 {
            self.count = TRAINED;
        }
        self.min = self.min.min(ms);
        self.max = self.max.max(ms);
        if self.count > 1 {
            let x = f64::from(ms);
            let before = x - self.average;
            self.average += before / f64::from(self.count);
            let after = x - self.average;
            self.m2 += before * after;
            self.stdev = (self.m2 / f64::from(self.count - 1)).sqrt();
        }
        self.estimate = if self.count < 10 {
            self.average
        } else {
            self.estimate * alpha + f64::from(ms) * (1.0 - alpha)
        };
    }

    /// The latency algorithm 13 weighs: the estimate, or with congestion
    /// control how far it is above the mean (whole ms, as Kamailio's ints).
    pub fn weighed(&self, congestion_control: bool) -> i32 {
        if congestion_control {
            (self.estimate - self.average) as i32
        } else {
            self.estimate as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_deviation_and_estimate() {
        let mut l = Latency::default();
        for ms in [10, 20, 30] {
            l.add(ms, 0.9);
        }
        assert_eq!(l.count, 3);
        assert!((l.average - 20.0).abs() < 1e-9);
        assert!((l.stdev - 10.0).abs() < 1e-9);
        assert_eq!((l.min, l.max), (10, 30));
        // Fewer than 10 samples: the estimate is the mean.
        assert!((l.estimate - 20.0).abs() < 1e-9);
        for _ in 0..7 {
            l.add(20, 0.9);
        }
        // From the 10th on: EWMA, 0.9 on the past.
        let before = l.estimate;
        l.add(120, 0.9);
        assert!((l.estimate - (before * 0.9 + 12.0)).abs() < 1e-9);
        assert_eq!(l.weighed(false), l.estimate as i32);
        assert_eq!(l.weighed(true), (l.estimate - l.average) as i32);
    }

    #[test]
    fn steady_samples_train_the_estimator() {
        let mut l = Latency::default();
        for _ in 0..11 {
            l.add(5, 0.9);
        }
        assert_eq!(l.count, TRAINED);
        let s = Latency::starting_at(40, TRAINED);
        assert_eq!((s.estimate, s.average, s.max), (40.0, 40.0, 40));
    }
}
