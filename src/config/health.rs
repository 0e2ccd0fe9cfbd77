//! `[health]` and `[health.thresholds]`: how often the monitor checks Redis, and the warning
//! and critical levels of each figure (the original system's `DEFAULT_THRESHOLDS`). What a
//! figure's level is, is `crate::health`'s.

use serde::Deserialize;

/// The original system's check interval.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the monitor checks Redis (ms); env `CACHE_HEALTH_CHECK_INTERVAL`.
    pub interval_ms: u64,
    /// The recent window (seconds) over which hit and error rates are judged.
    pub window_s: u64,
    /// Fewer rule-matched lookups than this in the window: the hit rate is not judged.
    pub min_lookups: u64,
    /// Fewer commands than this in the window: the error rate is not judged.
    pub min_commands: u64,
    pub thresholds: Thresholds,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: DEFAULT_INTERVAL_MS,
            window_s: 60,
            min_lookups: 100,
            min_commands: 100,
            thresholds: Thresholds::default(),
        }
    }
}

/// `[health.thresholds]`, defaulting to the original system's `DEFAULT_THRESHOLDS`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Percent of lookups that hit; below is bad.
    pub hit_rate: Levels,
    /// Percent of commands answered with an error; above is bad.
    pub error_rate: Levels,
    /// PING round trip in ms; above is bad.
    pub redis_latency_ms: Levels,
    /// Percent of memory used; above is bad.
    pub memory_usage: Levels,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            hit_rate: Levels::new(80.0, 60.0),
            error_rate: Levels::new(1.0, 5.0),
            redis_latency_ms: Levels::new(10.0, 50.0),
            memory_usage: Levels::new(80.0, 95.0),
        }
    }
}

/// A warning and a critical threshold.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    pub warning: f64,
    pub critical: f64,
}

impl Levels {
    const fn new(warning: f64, critical: f64) -> Self {
        Levels { warning, critical }
    }
}
