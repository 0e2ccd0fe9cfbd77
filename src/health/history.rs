//! The history cachet keeps of itself: one [`Sample`] of every figure a second, the last hour
//! of them, and one a minute for the last day. The dashboard draws from it (so it opens full,
//! at any range up to a day), and health judges hit and error rates over a recent window of
//! it rather than since start.
//!
//! A sample holds cumulative counters and gauges as they were at one instant; rates are the
//! differences between two samples ([`points`]). Bounded: [`SECOND_SAMPLES`] +
//! [`MINUTE_SAMPLES`] samples of [`Sample::bytes`] each (about 400 bytes plus 16 per rule),
//! so about 2 MiB with ten rules, whatever the traffic.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::metrics::{Totals, percent};

/// One sample a second for the last hour.
pub const SECOND_SAMPLES: usize = 3600;
/// One sample a minute for the last day.
pub const MINUTE_SAMPLES: usize = 1440;
/// The longest range a caller may ask for: the minute ring's.
pub const MAX_RANGE_MS: u64 = MINUTE_SAMPLES as u64 * 60_000;

/// Every figure at one instant: counters are cumulative since start, the rest are gauges.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Unix time, ms.
    pub at_ms: u64,
    /// `overall` then: 0 healthy, 1 degraded, 2 unhealthy.
    pub overall: u8,
    pub totals: Totals,
    /// The command latency histogram's cumulative bucket counts (bounds in
    /// [`History::latency_bounds`]).
    pub latency_buckets: Box<[u64]>,
    /// Hits and misses by rule, in `[[rules]]` order.
    pub rule_hits: Box<[u64]>,
    pub rule_misses: Box<[u64]>,
    pub clients: i64,
    /// From the last check of Redis: connected, PING ms, used memory (bytes and percent of
    /// the basis) and keys.
    pub redis_connected: bool,
    pub redis_latency_ms: f64,
    pub redis_used_memory: u64,
    pub redis_memory_usage: f64,
    pub redis_keys: u64,
    /// Warm requests waiting, and sent and failed (cumulative), over every warmer.
    pub warm_depth: i64,
    pub warm_sent: u64,
    pub warm_failed: u64,
    /// Policy calls, failed calls and dead letters (cumulative), over every policy.
    pub policy_calls: u64,
    pub policy_errors: u64,
    pub dead_letters: u64,
    /// EMITs (cumulative), unrouted ones included.
    pub events: u64,
}

impl Sample {
    /// What this sample holds in memory, roughly.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + 8 * (self.latency_buckets.len() + self.rule_hits.len() + self.rule_misses.len())
    }
}

struct Rings {
    seconds: VecDeque<Sample>,
    minutes: VecDeque<Sample>,
}

/// The two rings, behind one lock taken once a second by the sampler and once per request by
/// `/health`, INFO and the dashboard.
pub struct History {
    rings: Mutex<Rings>,
    /// The command latency histogram's bucket bounds, seconds.
    latency_bounds: Vec<f64>,
    /// The rules' names, in `[[rules]]` order.
    rule_names: Vec<String>,
}

impl History {
    pub fn new(latency_bounds: Vec<f64>, rule_names: Vec<String>) -> Self {
        History {
            rings: Mutex::new(Rings {
                seconds: VecDeque::with_capacity(SECOND_SAMPLES),
                minutes: VecDeque::with_capacity(MINUTE_SAMPLES),
            }),
            latency_bounds,
            rule_names,
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.rings.lock().expect("history lock")
    }

    /// Keeps `sample` in the second ring, and in the minute ring if it is the first of its
    /// minute.
    pub fn push(&self, sample: Sample) {
        let mut rings = self.rings();
        let minute = |s: &Sample| s.at_ms / 60_000;
        if rings
            .minutes
            .back()
            .is_none_or(|m| minute(m) < minute(&sample))
        {
            if rings.minutes.len() == MINUTE_SAMPLES {
                rings.minutes.pop_front();
            }
            rings.minutes.push_back(sample.clone());
        }
        if rings.seconds.len() == SECOND_SAMPLES {
            rings.seconds.pop_front();
        }
        rings.seconds.push_back(sample);
    }

    /// The newest sample taken at or before `at_ms`: the start of a window ending now. `None`
    /// when every sample is younger (the window then starts at cachet's start).
    pub fn at_or_before(&self, at_ms: u64) -> Option<Sample> {
        let rings = self.rings();
        let newest_before = |ring: &VecDeque<Sample>| {
            let after = ring.partition_point(|s| s.at_ms <= at_ms);
            after.checked_sub(1).map(|i| ring[i].clone())
        };
        newest_before(&rings.seconds).or_else(|| newest_before(&rings.minutes))
    }

    /// Samples kept, and the bytes they hold.
    pub fn size(&self) -> (usize, usize) {
        let rings = self.rings();
        let all = rings.seconds.iter().chain(rings.minutes.iter());
        (
            rings.seconds.len() + rings.minutes.len(),
            all.map(Sample::bytes).sum(),
        )
    }

    /// The dashboard's series over the last `range_ms` before `now_ms`, newer than `since_ms`
    /// if given: one point a second for up to an hour, one a minute beyond. See [`points`].
    pub fn series(&self, now_ms: u64, range_ms: u64, since_ms: Option<u64>) -> Value {
        let range_ms = range_ms.clamp(1_000, MAX_RANGE_MS);
        let step_ms = match range_ms <= SECOND_SAMPLES as u64 * 1_000 {
            true => 1_000,
            false => 60_000,
        };
        let from = now_ms.saturating_sub(range_ms);
        let rings = self.rings();
        let ring = match step_ms {
            1_000 => &rings.seconds,
            _ => &rings.minutes,
        };
        // One sample before the first point: a point is the change since the one before.
        let first = ring.partition_point(|s| s.at_ms < from).saturating_sub(1);
        let samples: Vec<&Sample> = ring.range(first..).collect();
        let mut out = points(&samples, &self.latency_bounds, &self.rule_names, since_ms);
        out["stepMs"] = json!(step_ms);
        out["rangeMs"] = json!(range_ms);
        out["from"] = json!(from);
        out["now"] = json!(now_ms);
        out
    }
}

/// The quantile `q` of the observations between two cumulative histograms, in ms, by linear
/// interpolation within the bucket it falls in; `None` with no observations.
pub fn quantile_ms(bounds: &[f64], earlier: &[u64], later: &[u64], q: f64) -> Option<f64> {
    let count = |i: usize| {
        later
            .get(i)
            .copied()
            .unwrap_or(0)
            .saturating_sub(earlier.get(i).copied().unwrap_or(0))
    };
    let total = count(bounds.len().checked_sub(1)?);
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower_bound, mut lower_count) = (0.0, 0u64);
    for (i, &bound) in bounds.iter().enumerate() {
        let cumulative = count(i);
        if cumulative as f64 >= rank {
            let inside = cumulative - lower_count;
            let fraction = match inside {
                0 => 1.0,
                n => (rank - lower_count as f64) / n as f64,
            };
            return Some(1000.0 * (lower_bound + (bound - lower_bound) * fraction));
        }
        (lower_bound, lower_count) = (bound, cumulative);
    }
    Some(1000.0 * lower_bound)
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The dashboard's columns from consecutive samples: `t` (the later sample's time), rates per
/// second between the two, percentages of the lookups or commands between the two (`null`
/// when there were none), quantiles of the latencies between the two, and gauges as of the
/// later one. Columns, not rows: a day at one point a minute is 1,440 numbers per column.
pub fn points(
    samples: &[&Sample],
    latency_bounds: &[f64],
    rule_names: &[String],
    since_ms: Option<u64>,
) -> Value {
    let mut columns: Vec<(&str, Vec<Value>)> = [
        "t",
        "overall",
        "ops",
        "hitRate",
        "hitRateAll",
        "lookups",
        "errorRate",
        "errors",
        "p50",
        "p99",
        "invalidations",
        "keysInvalidated",
        "warmDepth",
        "warmSent",
        "warmFailed",
        "policyCalls",
        "policyErrors",
        "deadLetters",
        "events",
        "clients",
        "redisConnected",
        "redisLatency",
        "redisMemory",
        "redisMemoryUsage",
        "redisKeys",
    ]
    .into_iter()
    .map(|name| (name, Vec::new()))
    .collect();
    let mut rules: Vec<Vec<Value>> = vec![Vec::new(); rule_names.len()];
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if since_ms.is_some_and(|since| b.at_ms <= since) {
            continue;
        }
        let seconds = (b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0).max(1e-3);
        let d = b.totals.since(&a.totals);
        let rate = |n: u64| json!(round(n as f64 / seconds, 2));
        let pct = |part: u64, whole: u64| json!(percent(part, whole).map(|p| round(p, 2)));
        let ms = |q: f64| {
            json!(
                quantile_ms(latency_bounds, &a.latency_buckets, &b.latency_buckets, q)
                    .map(|v| round(v, 3))
            )
        };
        let values = [
            json!(b.at_ms),
            json!(b.overall),
            rate(d.commands),
            pct(d.hits, d.hits + d.misses),
            pct(d.all_hits, d.all_hits + d.all_misses),
            rate(d.hits + d.misses),
            pct(d.errors, d.commands),
            rate(d.errors),
            ms(0.5),
            ms(0.99),
            rate(d.invalidations),
            rate(d.keys_invalidated),
            json!(b.warm_depth),
            rate(b.warm_sent.saturating_sub(a.warm_sent)),
            rate(b.warm_failed.saturating_sub(a.warm_failed)),
            rate(b.policy_calls.saturating_sub(a.policy_calls)),
            rate(b.policy_errors.saturating_sub(a.policy_errors)),
            json!(b.dead_letters),
            rate(b.events.saturating_sub(a.events)),
            json!(b.clients),
            json!(b.redis_connected),
            json!(round(b.redis_latency_ms, 3)),
            json!(b.redis_used_memory),
            json!(round(b.redis_memory_usage, 2)),
            json!(b.redis_keys),
        ];
        for ((_, column), value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
        for (i, column) in rules.iter_mut().enumerate() {
            let at = |s: &[u64]| s.get(i).copied().unwrap_or(0);
            let hits = at(&b.rule_hits).saturating_sub(at(&a.rule_hits));
            let misses = at(&b.rule_misses).saturating_sub(at(&a.rule_misses));
            column.push(pct(hits, hits + misses));
        }
    }
    let mut out = serde_json::Map::new();
    for (name, column) in columns {
        out.insert(name.to_owned(), Value::Array(column));
    }
    out.insert(
        "rules".to_owned(),
        Value::Array(
            rule_names
                .iter()
                .zip(rules)
                .map(|(name, hit_rate)| json!({"rule": name, "hitRate": hit_rate}))
                .collect(),
        ),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, commands: u64, hits: u64, misses: u64) -> Sample {
        Sample {
            at_ms,
            totals: Totals {
                commands,
                hits,
                misses,
                all_hits: hits,
                all_misses: misses,
                ..Totals::default()
            },
            latency_buckets: vec![0, 0].into(),
            rule_hits: vec![hits].into(),
            rule_misses: vec![misses].into(),
            ..Sample::default()
        }
    }

    #[test]
    fn the_rings_are_bounded_and_the_minute_ring_keeps_one_a_minute() {
        let history = History::new(vec![0.001, 0.01], vec!["r".into()]);
        for second in 0..(SECOND_SAMPLES as u64 + 500) {
            history.push(sample(second * 1000, second, 0, 0));
        }
        let (count, bytes) = history.size();
        let minutes = (SECOND_SAMPLES as u64 + 500).div_ceil(60) as usize;
        assert_eq!(count, SECOND_SAMPLES + minutes);
        assert!(bytes < count * 600, "{bytes} bytes for {count} samples");
        // The oldest second sample is gone; the minute ring still reaches back to the start.
        assert_eq!(history.at_or_before(100_000).unwrap().at_ms, 60_000);
        assert_eq!(history.at_or_before(4_000_000).unwrap().at_ms, 4_000_000);
        assert!(history.at_or_before(0).is_some());
    }

    #[test]
    fn points_are_rates_and_percentages_between_samples() {
        let history = History::new(vec![0.001, 0.01], vec!["r".into()]);
        history.push(sample(1_000, 0, 0, 0));
        history.push(sample(2_000, 100, 30, 10));
        history.push(sample(3_000, 100, 30, 10));
        let series = history.series(3_000, 60_000, None);
        assert_eq!(series["t"], json!([2_000, 3_000]));
        assert_eq!(series["ops"], json!([100.0, 0.0]));
        assert_eq!(series["hitRate"], json!([75.0, null]));
        assert_eq!(series["rules"][0]["hitRate"], json!([75.0, null]));
        assert_eq!(series["stepMs"], json!(1000));
        let newer = history.series(3_000, 60_000, Some(2_000));
        assert_eq!(newer["t"], json!([3_000]));
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let bounds = [0.001, 0.002, 0.004];
        // 10 observations, all between 1 and 2 ms.
        let p50 = quantile_ms(&bounds, &[0, 0, 0], &[0, 10, 10], 0.5).unwrap();
        assert!((p50 - 1.5).abs() < 1e-9, "{p50}");
        assert_eq!(quantile_ms(&bounds, &[0, 10, 10], &[0, 10, 10], 0.5), None);
    }
}
