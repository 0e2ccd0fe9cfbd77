//! Health: the monitor loop that checks Redis every `[health] interval_ms`, the thresholds,
//! and `overall` (healthy, degraded, unhealthy), as the original system's
//! `CacheHealthMonitor` computed them. The HTTP side (`/health`, `/ready`) is in
//! `crate::admin`; the `# cachet` INFO section is built here too ([`info_section`]).
//!
//! Each check measures, on cachet's control connection (fred): the PING round trip, memory
//! from `INFO memory` (`used_memory` against `maxmemory`, or against `total_system_memory`
//! when `maxmemory` is 0, which the report says), and the key count (`DBSIZE` of the pool's
//! database). Cache figures (hit rate, error rate, mean response time) are cumulative since
//! start, read from [`crate::metrics`] when a report is made.
//!
//! `overall` is the worst level any figure reaches: Redis unreachable, or a figure past its
//! critical threshold, is `unhealthy`; past a warning threshold is `degraded`. With no lookups
//! yet there is no hit rate, and it raises nothing. Every change of `overall` is logged.
//!
//! The monitor ([`monitor`]) checks at start and every `interval_ms` (every second while Redis
//! is unreachable), on the control client, with a 2 s limit per check (`CHECK_TIMEOUT`), and
//! stores the result. `/health` and INFO compute `overall` when asked, from that check, the
//! pool's state at that moment (a pooled connection sees Redis go away at once; the check may
//! be `interval_ms` old) and the cumulative counters, so a request never waits on Redis. The
//! monitor also sets the `cachet_health_overall` and `cachet_upstream_*` gauges; the
//! reconnects it counts are the control connection's (fred's reconnect notifications).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::interfaces::{ClientLike, EventInterface, ServerInterface};
use fred::types::InfoKind;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::health::{HealthConfig, Levels, Thresholds};
use crate::metrics::{Metrics, Totals};
use crate::upstream::Upstream;

/// A check that takes longer than this counts as Redis unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// PINGs per health check; the fastest is the latency that `/health` reports.
const PINGS_PER_CHECK: usize = 3;

// The thresholds are config data (`crate::config::health`); what level a figure reaches is
// decided here.
impl Levels {
    /// The level of `value` where lower is worse.
    fn below(&self, value: f64) -> Overall {
        match value {
            v if v < self.critical => Overall::Unhealthy,
            v if v < self.warning => Overall::Degraded,
            _ => Overall::Healthy,
        }
    }

    /// The level of `value` where higher is worse.
    fn above(&self, value: f64) -> Overall {
        match value {
            v if v > self.critical => Overall::Unhealthy,
            v if v > self.warning => Overall::Degraded,
            _ => Overall::Healthy,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Overall {
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Healthy => "healthy",
            Overall::Degraded => "degraded",
            Overall::Unhealthy => "unhealthy",
        }
    }
}

/// What one check of Redis found.
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub connected: bool,
    /// PING round trip, ms.
    pub latency_ms: f64,
    /// `used_memory` as a percentage of the basis.
    pub memory_usage: f64,
    pub used_memory: u64,
    /// `"maxmemory"` or `"system"` (maxmemory is 0: unlimited).
    pub memory_basis: &'static str,
    pub key_count: u64,
    /// Why the check failed, when it did.
    pub error: Option<String>,
    /// Unix time of the check, ms.
    pub at_ms: u64,
}

/// The monitor's handle: what it reads (Redis through the control client, the counters) and
/// what it found, shared with the admin endpoint and INFO.
pub struct Health {
    config: HealthConfig,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    /// `[[rules]]` in force, for the report.
    rules: usize,
    last: Mutex<Option<Check>>,
    overall: Mutex<Option<Overall>>,
}

impl Health {
    pub fn new(
        config: HealthConfig,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        rules: usize,
    ) -> Self {
        Health {
            config,
            upstream,
            metrics,
            rules,
            last: Mutex::default(),
            overall: Mutex::default(),
        }
    }

    /// Clients connected to cachet now.
    fn clients(&self) -> i64 {
        self.metrics.clients.get()
    }

    pub fn last_check(&self) -> Option<Check> {
        self.last.lock().expect("health lock").clone()
    }

    /// Records `overall`; true if it changed.
    fn set_overall(&self, overall: Overall) -> Option<Option<Overall>> {
        let mut current = self.overall.lock().expect("health lock");
        let before = current.replace(overall);
        (before != Some(overall)).then_some(before)
    }
}

/// A health report: the figures and the levels they reach, as of now.
#[derive(Debug, Clone)]
pub struct Report {
    pub overall: Overall,
    pub check: Check,
    pub totals: Totals,
    pub uptime_ms: u64,
    /// Pooled connections to Redis that are up right now.
    pub pool_up: bool,
}

/// Computes the report from the last check and the counters as they are now. Redis counts
/// as connected only if the last check reached it and the pool is up at this moment (a pooled
/// connection notices a dead Redis at once; the check may be 30 s old).
pub fn report(health: &Health) -> Report {
    let check = health.last_check().unwrap_or_default();
    let totals = health.metrics.totals();
    let pool_up = health.upstream.is_ready();
    let overall = assess(&health.config.thresholds, &check, pool_up, &totals);
    Report {
        overall,
        check,
        totals,
        uptime_ms: health.metrics.started.elapsed().as_millis() as u64,
        pool_up,
    }
}

/// The worst level any figure reaches.
pub fn assess(thresholds: &Thresholds, check: &Check, pool_up: bool, totals: &Totals) -> Overall {
    if !check.connected || !pool_up {
        return Overall::Unhealthy;
    }
    let mut levels = vec![
        thresholds.error_rate.above(totals.error_rate()),
        thresholds.redis_latency_ms.above(check.latency_ms),
        thresholds.memory_usage.above(check.memory_usage),
    ];
    if let Some(hit_rate) = totals.hit_rate() {
        levels.push(thresholds.hit_rate.below(hit_rate));
    }
    levels.into_iter().max().unwrap_or(Overall::Healthy)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Report {
    /// The original system's `/health` body, field for field, plus cachet's own keys.
    pub fn to_json(&self, health: &Health) -> serde_json::Value {
        let t = &self.totals;
        let hit_rate = t.hit_rate().map(round2);
        let connected = self.check.connected && self.pool_up;
        json!({
            "success": true,
            "data": {
                "health": {
                    "overall": self.overall,
                    "redis": {
                        "connected": connected,
                        "latency": round2(self.check.latency_ms),
                        "memoryUsage": round2(self.check.memory_usage),
                        "keyCount": self.check.key_count,
                        "memoryBasis": self.check.memory_basis,
                        "usedMemory": self.check.used_memory,
                        "checkedAt": self.check.at_ms,
                        "error": self.check.error,
                    },
                    "cache": {
                        "hitRate": hit_rate,
                        "errorRate": round2(t.error_rate()),
                        "avgResponseTime": round2(t.avg_response_ms()),
                        "totalOperations": t.commands,
                    },
                },
                "metrics": {
                    "hits": t.hits,
                    "misses": t.misses,
                    "invalidations": t.invalidations,
                    "errors": t.errors,
                    "hitRate": hit_rate,
                    "uptime": self.uptime_ms,
                    "keysInvalidated": t.keys_invalidated,
                },
                "cachet": {
                    "version": env!("CARGO_PKG_VERSION"),
                    "upstream": health.upstream.config.url.to_string(),
                    "clients": health.clients(),
                    "clientProtocolErrors": t.client_protocol_errors,
                    "rules": health.rules,
                    "thresholds": thresholds_json(&health.config.thresholds),
                },
            }
        })
    }
}

fn thresholds_json(t: &Thresholds) -> serde_json::Value {
    let levels = |l: &Levels| json!({"warning": l.warning, "critical": l.critical});
    json!({
        "hitRate": levels(&t.hit_rate),
        "errorRate": levels(&t.error_rate),
        "redisLatency": levels(&t.redis_latency_ms),
        "memoryUsage": levels(&t.memory_usage),
    })
}

/// The `# cachet` section appended to INFO (lines end in CRLF, as Redis's do).
pub fn info_section(health: &Health) -> String {
    let r = report(health);
    let t = &r.totals;
    let mut out = String::from("# cachet\r\n");
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        out.push_str(name);
        out.push(':');
        out.push_str(&value.to_string());
        out.push_str("\r\n");
    };
    line("cachet_version", &env!("CARGO_PKG_VERSION"));
    line("overall", &r.overall.as_str());
    line("uptime_in_ms", &r.uptime_ms);
    line("clients", &health.clients());
    line("total_commands", &t.commands);
    line("hits", &t.hits);
    line("misses", &t.misses);
    let hit_rate = t.hit_rate().map_or("-".to_owned(), |h| format!("{h:.2}"));
    line("hit_rate", &hit_rate);
    line("errors", &t.errors);
    line("error_rate", &format!("{:.2}", t.error_rate()));
    line("client_protocol_errors", &t.client_protocol_errors);
    line("leases_dropped", &health.metrics.leases_dropped.get());
    line(
        "avg_response_time_ms",
        &format!("{:.3}", t.avg_response_ms()),
    );
    line("invalidations", &t.invalidations);
    line("keys_invalidated", &t.keys_invalidated);
    line("redis_connected", &u8::from(r.check.connected && r.pool_up));
    line("redis_latency_ms", &format!("{:.2}", r.check.latency_ms));
    line(
        "redis_memory_usage",
        &format!("{:.2}", r.check.memory_usage),
    );
    line("redis_memory_basis", &r.check.memory_basis);
    line("redis_keys", &r.check.key_count);
    out
}

/// One check of Redis on the control connection.
async fn check(health: &Health) -> Check {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let control = health.upstream.control();
    let measured = async {
        // Timed from a connected client: a PING queued while fred connects measures the connect.
        control.wait_for_connect().await?;
        // The control connection also carries cachet's own work (the command table at start,
        // index functions, the sweeper), and a PING queued behind a large reply measures that
        // reply. Of PINGS_PER_CHECK in a row, the fastest is Redis's latency: a Redis that is
        // slow answers every one slowly. The histogram gets them all.
        let mut latency = Duration::MAX;
        for _ in 0..PINGS_PER_CHECK {
            let started = Instant::now();
            let _: String = control.ping(None).await?;
            let took = started.elapsed();
            health.metrics.upstream_latency.observe(took.as_secs_f64());
            latency = latency.min(took);
        }
        let memory: String = control.info(Some(InfoKind::Memory)).await?;
        let keys: u64 = control.dbsize().await?;
        Ok::<_, fred::error::Error>((latency, memory, keys))
    };
    match tokio::time::timeout(CHECK_TIMEOUT, measured).await {
        Ok(Ok((latency, memory, keys))) => {
            let field = |name: &str| -> u64 {
                memory
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let used = field("used_memory");
            let (limit, basis) = match field("maxmemory") {
                0 => (field("total_system_memory"), "system"),
                max => (max, "maxmemory"),
            };
            Check {
                connected: true,
                latency_ms: latency.as_secs_f64() * 1000.0,
                memory_usage: if limit > 0 {
                    used as f64 * 100.0 / limit as f64
                } else {
                    0.0
                },
                used_memory: used,
                memory_basis: basis,
                key_count: keys,
                error: None,
                at_ms,
            }
        }
        Ok(Err(error)) => Check {
            error: Some(error.to_string()),
            at_ms,
            ..Check::default()
        },
        Err(_) => Check {
            error: Some(format!("no reply within {} ms", CHECK_TIMEOUT.as_millis())),
            at_ms,
            ..Check::default()
        },
    }
}

/// Counts the control connection's reconnects. fred announces the first connect too, which
/// is not one: it is drained once the client is connected, and every later event counts.
async fn count_reconnects(health: Arc<Health>, shutdown: CancellationToken) {
    use tokio::sync::broadcast::error::RecvError;
    let control = health.upstream.control();
    let mut events = control.reconnect_rx();
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = control.wait_for_connect() => {}
    }
    while events.try_recv().is_ok() {}
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Ok(_) => health.metrics.upstream_reconnects.inc(),
                Err(RecvError::Lagged(n)) => health.metrics.upstream_reconnects.inc_by(n),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Checks Redis now and every `interval_ms`, updates the upstream gauges, and logs every
/// change of `overall`.
pub async fn monitor(health: Arc<Health>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(health.config.interval_ms.max(1));
    tokio::spawn(count_reconnects(health.clone(), shutdown.clone()));
    // The command table's large replies come first on the control connection at start; the
    // first check waits for them (not longer than a check may take: Redis may be down).
    let _ = tokio::time::timeout(CHECK_TIMEOUT, health.upstream.table_loaded()).await;
    loop {
        let found = check(&health).await;
        let m = &health.metrics;
        if found.connected {
            m.upstream_keys.set(found.key_count as i64);
            m.upstream_memory_bytes.set(found.used_memory as i64);
        }
        let up = health.upstream.pooled_connections_up();
        m.upstream_connections.set(up as i64);
        *health.last.lock().expect("health lock") = Some(found);
        let r = report(&health);
        m.health_overall.set(r.overall as i64);
        if let Some(before) = health.set_overall(r.overall) {
            let before = before.map_or("unknown", Overall::as_str);
            let hit_rate = r.totals.hit_rate();
            let error = r.check.error.as_deref();
            match r.overall {
                Overall::Healthy => tracing::info!(
                    before,
                    overall = "healthy",
                    ?hit_rate,
                    error_rate = r.totals.error_rate(),
                    latency_ms = r.check.latency_ms,
                    memory_usage = r.check.memory_usage,
                    "health changed"
                ),
                other => tracing::warn!(
                    before,
                    overall = other.as_str(),
                    ?hit_rate,
                    error_rate = r.totals.error_rate(),
                    latency_ms = r.check.latency_ms,
                    memory_usage = r.check.memory_usage,
                    error,
                    "health changed"
                ),
            }
        }
        // While Redis is unreachable, look again within a second, so `connected` (and
        // `/health`) follow its return without waiting a whole interval.
        let pause = match r.check.connected {
            true => interval,
            false => interval.min(Duration::from_secs(1)),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> Check {
        Check {
            connected: true,
            latency_ms: 1.0,
            memory_usage: 10.0,
            ..Check::default()
        }
    }

    #[test]
    fn overall_is_the_worst_level_and_no_lookups_raise_nothing() {
        let t = Thresholds::default();
        let mut totals = Totals {
            commands: 100,
            ..Totals::default()
        };
        assert_eq!(assess(&t, &connected(), true, &totals), Overall::Healthy);
        totals.hits = 70;
        totals.misses = 30;
        assert_eq!(assess(&t, &connected(), true, &totals), Overall::Degraded);
        totals.errors = 6;
        assert_eq!(assess(&t, &connected(), true, &totals), Overall::Unhealthy);
        totals.errors = 0;
        let slow = Check {
            latency_ms: 60.0,
            ..connected()
        };
        assert_eq!(assess(&t, &slow, true, &totals), Overall::Unhealthy);
        assert_eq!(
            assess(&t, &Check::default(), true, &Totals::default()),
            Overall::Unhealthy
        );
        assert_eq!(
            assess(&t, &connected(), false, &Totals::default()),
            Overall::Unhealthy
        );
    }

    #[test]
    fn thresholds_default_to_the_original_systems() {
        let t = Thresholds::default();
        assert_eq!((t.hit_rate.warning, t.hit_rate.critical), (80.0, 60.0));
        assert_eq!((t.error_rate.warning, t.error_rate.critical), (1.0, 5.0));
        assert_eq!(
            (t.redis_latency_ms.warning, t.redis_latency_ms.critical),
            (10.0, 50.0)
        );
        assert_eq!(
            (t.memory_usage.warning, t.memory_usage.critical),
            (80.0, 95.0)
        );
    }
}
