//! Samples, percentiles and the figures table.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Durations measured for one thing.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut values: Vec<Duration>) -> Self {
        values.sort_unstable();
        Self { sorted: values }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Nearest-rank percentile (`p` in 0..=100): the smallest sample with at least `p`%
    /// of the samples at or below it.
    pub fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let n = self.sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1]
    }

    pub fn min(&self) -> Duration {
        self.sorted.first().copied().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    pub fn p50(&self) -> Duration {
        self.pct(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.pct(99.0)
    }

    /// `min / p50 / p99 / max (n)` in a readable unit.
    pub fn summary(&self) -> String {
        format!(
            "min {} p50 {} p99 {} max {} (n={})",
            fmt_dur(self.min()),
            fmt_dur(self.p50()),
            fmt_dur(self.p99()),
            fmt_dur(self.max()),
            self.len()
        )
    }
}

/// Times `f` `n` times after `warmup` untimed runs.
pub fn time_sync(warmup: usize, n: usize, mut f: impl FnMut()) -> Samples {
    for _ in 0..warmup {
        f();
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        out.push(t.elapsed());
    }
    Samples::new(out)
}

/// A duration with a unit chosen for it (ns, µs, ms, s).
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

pub fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    Yes,
    No,
    /// No target, or none checkable in this run.
    NotApplicable,
}

/// One line of the figures table.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub value: String,
    pub baseline: String,
    /// value ÷ baseline.
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Met,
}

impl Row {
    pub fn new(figure: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            value: String::new(),
            baseline: "—".into(),
            ratio: None,
            target: "—".into(),
            met: Met::NotApplicable,
        }
    }

    pub fn value(mut self, v: impl Into<String>) -> Self {
        self.value = v.into();
        self
    }

    pub fn baseline(mut self, b: impl Into<String>) -> Self {
        self.baseline = b.into();
        self
    }

    pub fn ratio(mut self, value: f64, baseline: f64) -> Self {
        if baseline > 0.0 {
            self.ratio = Some(value / baseline);
        }
        self
    }

    /// A target and whether it was met.
    pub fn target(mut self, t: impl Into<String>, met: bool) -> Self {
        self.target = t.into();
        self.met = if met { Met::Yes } else { Met::No };
        self
    }

    /// A target stated as a ratio to the baseline (`max_ratio`).
    pub fn ratio_target(self, max_ratio: f64) -> Self {
        let met = self.ratio.is_some_and(|r| r <= max_ratio);
        self.target(format!("≤ {max_ratio}×"), met)
    }
}

/// The table every run ends with (markdown, so it can be pasted into BENCHMARKS.md).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| figure | value | baseline (same run) | ratio | target | met |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let ratio = r
            .ratio
            .map(|x| {
                if x >= 100.0 {
                    format!("{x:.0}×")
                } else if x >= 10.0 {
                    format!("{x:.1}×")
                } else {
                    format!("{x:.2}×")
                }
            })
            .unwrap_or_else(|| "—".into());
        let met = match r.met {
            Met::Yes => "yes",
            Met::No => "**no**",
            Met::NotApplicable => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure, r.value, r.baseline, ratio, r.target, met
        );
    }
    out
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(s.p50(), Duration::from_micros(50));
        assert_eq!(s.p99(), Duration::from_micros(99));
        assert_eq!(s.pct(100.0), Duration::from_micros(100));
        assert_eq!(s.min(), Duration::from_micros(1));
        let one = Samples::new(vec![Duration::from_millis(3)]);
        assert_eq!(one.p99(), Duration::from_millis(3));
        assert_eq!(Samples::default().p50(), Duration::ZERO);
    }
}
