//! Health: the monitor loop that checks Redis every `[health] interval_ms`, the sampler that
//! records every figure each second ([`history`]), the thresholds, and `overall` (healthy,
//! degraded, unhealthy), as the original system's `CacheHealthMonitor` computed them. The
//! HTTP side (`/health`, `/ready`, the dashboard's series) is in `crate::admin`; the
//! `# cachet` INFO section is built here too ([`info_section`]).
//!
//! Each check measures, on cachet's control connection (fred): the PING round trip, memory
//! from `INFO memory` (`used_memory` against `maxmemory`, or against `total_system_memory`
//! when `maxmemory` is 0, which the report says), and the key count (`DBSIZE` of the pool's
//! database). When the control connection is down, the check opens a connection of its own
//! to find out why (refused, no route, a refused AUTH...), so the report gives the real cause
//! at once instead of a timeout.
//!
//! Behind Redis Cluster (a clustered control client) each check covers every node, primaries
//! and replicas, on connections of its own: see [`cluster`] for the node list, what is summed
//! and what is judged. `/health` then lists the nodes (`redis.nodes`), `/metrics` has each
//! node's series, and INFO a `# cachet_cluster` section; a single Redis's report is unchanged.
//!
//! Hit and error rates are judged over a recent window (`[health] window_s`, 60 s), not since
//! start, and only when the window holds enough to judge by (`min_lookups` rule-matched
//! lookups, `min_commands` commands): a cold cache after a restart is not unhealthy, and one
//! bad minute an hour ago does not linger. The hit rate is that of rule-matched keys, the
//! data cachet caches; the rate over every lookup (locks, queues, benchmark keys) is reported
//! beside it. The seed's cumulative fields are kept as they were.
//!
//! `overall` is the worst level any figure reaches: Redis unreachable, or a figure past its
//! critical threshold, is `unhealthy`; past a warning threshold is `degraded`. The report
//! says why (`reasons`). The sampler assesses every second and logs each change of
//! `overall` when it happens, with its reasons; the monitor assesses again right after each
//! check. `/health` and INFO compute `overall` when asked, from the last check, the pool's
//! state at that moment and the counters, so a request never waits on Redis.

pub mod cluster;
pub mod history;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, ServerInterface};
use fred::types::InfoKind;
use prometheus::core::Metric;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::health::{HealthConfig, Levels, Thresholds};
use crate::metrics::{Metrics, Totals, percent};
use crate::resp::Protocol;
use crate::upstream::Upstream;
pub use history::{History, Sample};

/// A check that takes longer than this counts as Redis unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// PINGs per health check; the fastest is the latency that `/health` reports.
const PINGS_PER_CHECK: usize = 3;
/// How often the sampler records the figures and assesses `overall`.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

// The thresholds are config data (`crate::config::health`); what level a figure reaches is
// decided here.
impl Levels {
    /// The level of `value` where lower is worse, and the threshold it crossed.
    fn below(&self, value: f64) -> (Overall, f64) {
        match value {
            v if v < self.critical => (Overall::Unhealthy, self.critical),
            v if v < self.warning => (Overall::Degraded, self.warning),
            _ => (Overall::Healthy, 0.0),
        }
    }

    /// The level of `value` where higher is worse, and the threshold it crossed.
    fn above(&self, value: f64) -> (Overall, f64) {
        match value {
            v if v > self.critical => (Overall::Unhealthy, self.critical),
            v if v > self.warning => (Overall::Degraded, self.warning),
            _ => (Overall::Healthy, 0.0),
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

    /// The threshold word for a level past healthy.
    fn threshold_word(self) -> &'static str {
        match self {
            Overall::Unhealthy => "critical",
            _ => "warning",
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
    /// Behind Redis Cluster: the figures above sum up `nodes` ([`cluster::summarize`]).
    pub cluster: bool,
    /// Each node's own check, primaries first (at most [`cluster::MAX_NODES`]).
    pub nodes: Arc<[cluster::NodeCheck]>,
    /// Nodes listed past [`cluster::MAX_NODES`], not checked.
    pub nodes_omitted: usize,
}

/// Memory figures from `INFO memory`.
struct Memory {
    used: u64,
    /// `maxmemory`, or `total_system_memory` when `maxmemory` is 0.
    limit: u64,
    basis: &'static str,
}

impl Memory {
    fn parse(info: &str) -> Self {
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let (limit, basis) = match field("maxmemory") {
            0 => (field("total_system_memory"), "system"),
            max => (max, "maxmemory"),
        };
        Memory {
            used: field("used_memory"),
            limit,
            basis,
        }
    }

    /// `used` as a percentage of `limit` (0 when the limit is unknown).
    fn usage(&self) -> f64 {
        match self.limit {
            0 => 0.0,
            limit => self.used as f64 * 100.0 / limit as f64,
        }
    }
}

/// What one round of PINGs, `INFO memory` and `DBSIZE` measured on one server.
struct Measured {
    /// The fastest PING.
    latency: Duration,
    memory: Memory,
    keys: u64,
}

/// Measures the server `client` talks to. A connection may also carry other work (the
/// control connection carries cachet's: the command table at start, index functions, the
/// sweeper), and a PING queued behind a large reply measures that reply. Of PINGS_PER_CHECK
/// in a row, the fastest is Redis's latency: a Redis that is slow answers every one slowly.
/// The histogram gets them all.
async fn measure(client: &Client, metrics: &Metrics) -> Result<Measured, fred::error::Error> {
    let mut latency = Duration::MAX;
    for _ in 0..PINGS_PER_CHECK {
        let started = Instant::now();
        let _: String = client.ping(None).await?;
        let took = started.elapsed();
        metrics.upstream_latency.observe(took.as_secs_f64());
        latency = latency.min(took);
    }
    let memory: String = client.info(Some(InfoKind::Memory)).await?;
    let keys: u64 = client.dbsize().await?;
    Ok(Measured {
        latency,
        memory: Memory::parse(&memory),
        keys,
    })
}

/// The monitor's handle: what it reads (Redis through the control client, the counters) and
/// what it found, shared with the admin endpoint and INFO.
pub struct Health {
    config: HealthConfig,
    upstream: Arc<Upstream>,
    /// The client checks go through: the upstream's control client, unless a caller gave
    /// another ([`Health::checking`]). A clustered one makes every check a cluster check.
    control: Client,
    /// Behind Redis Cluster: what the checks keep of each node.
    nodes: cluster::Nodes,
    metrics: Arc<Metrics>,
    /// `[[rules]]` in force, for the report.
    rules: usize,
    last: Mutex<Option<Check>>,
    overall: Mutex<Option<Overall>>,
    /// Wakes the monitor for a check now: the pool lost Redis between two checks, and the
    /// report should say why at once, not at the next interval.
    recheck: tokio::sync::Notify,
    /// The last hour at 1 s and the last day at 1 min.
    pub history: History,
}

impl Health {
    pub fn new(
        config: HealthConfig,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        rules: usize,
    ) -> Self {
        let bounds = crate::metrics::LATENCY_BUCKETS.to_vec();
        let history = History::new(bounds, metrics.hits.rule_names().to_vec());
        Health {
            config,
            control: upstream.control().clone(),
            nodes: cluster::Nodes::default(),
            upstream,
            metrics,
            rules,
            last: Mutex::default(),
            overall: Mutex::default(),
            recheck: tokio::sync::Notify::new(),
            history,
        }
    }

    /// Checks Redis through `control` instead of the upstream's control client: a client of
    /// the same servers, or, in tests, a clustered client of a cluster the upstream does not
    /// route to.
    pub fn checking(mut self, control: Client) -> Self {
        self.control = control;
        self
    }

    /// Whether Redis is a cluster, each node checked ([`cluster`]).
    pub fn is_cluster(&self) -> bool {
        self.control.is_clustered()
    }

    /// Clients connected to cachet now.
    fn clients(&self) -> i64 {
        self.metrics.clients.get()
    }

    pub fn last_check(&self) -> Option<Check> {
        self.last.lock().expect("health lock").clone()
    }

    /// The health check interval, ms.
    pub fn interval_ms(&self) -> u64 {
        self.config.interval_ms
    }

    /// Records `overall`; `Some(before)` if it changed.
    fn set_overall(&self, overall: Overall) -> Option<Option<Overall>> {
        let mut current = self.overall.lock().expect("health lock");
        let before = current.replace(overall);
        (before != Some(overall)).then_some(before)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The recent window hit and error rates are judged over: what was counted between its
/// first sample and now.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The configured length, s.
    pub seconds: u64,
    /// What it covers, ms: less than `seconds` in cachet's first minute.
    pub span_ms: u64,
    pub totals: Totals,
    /// Hits and misses by rule within the window.
    pub rule_hits: Vec<u64>,
    pub rule_misses: Vec<u64>,
}

impl Window {
    pub fn lookups(&self) -> u64 {
        self.totals.hits + self.totals.misses
    }
}

/// The window ending now: the counters now, less those of the newest sample at least
/// `window_s` old (or nothing, counted from start, when cachet is younger than that).
fn window(health: &Health, totals: &Totals, now: u64) -> Window {
    let seconds = health.config.window_s.max(1);
    let start = health
        .history
        .at_or_before(now.saturating_sub(seconds * 1000));
    let uptime = health.metrics.started.elapsed().as_millis() as u64;
    let (base, span_ms) = match &start {
        Some(sample) => (sample.totals, now.saturating_sub(sample.at_ms)),
        None => (Totals::default(), uptime),
    };
    let by_rule = |now: Vec<u64>, then: Option<&[u64]>| -> Vec<u64> {
        now.iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(then.and_then(|t| t.get(i)).copied().unwrap_or(0)))
            .collect()
    };
    Window {
        seconds,
        span_ms,
        totals: totals.since(&base),
        rule_hits: by_rule(
            health.metrics.hits.by_rule(),
            start.as_ref().map(|s| &*s.rule_hits),
        ),
        rule_misses: by_rule(
            health.metrics.misses.by_rule(),
            start.as_ref().map(|s| &*s.rule_misses),
        ),
    }
}

/// A health report: the figures and the levels they reach, as of now.
#[derive(Debug, Clone)]
pub struct Report {
    pub overall: Overall,
    /// Why `overall` is not healthy: one line per figure past a threshold.
    pub reasons: Vec<String>,
    pub check: Check,
    pub totals: Totals,
    pub window: Window,
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
    let window = window(health, &totals, now_ms());
    let pool_up = health.upstream.is_ready();
    let (overall, reasons) = assess(&health.config, &check, pool_up, &window);
    Report {
        overall,
        reasons,
        check,
        totals,
        window,
        uptime_ms: health.metrics.started.elapsed().as_millis() as u64,
        pool_up,
    }
}

/// Whether the window holds enough to judge its hit rate and its error rate.
fn judged(config: &HealthConfig, window: &Window) -> (bool, bool) {
    (
        window.lookups() >= config.min_lookups.max(1),
        window.totals.commands >= config.min_commands.max(1),
    )
}

/// The worst level any figure reaches, and a line for each figure past a threshold.
pub fn assess(
    config: &HealthConfig,
    check: &Check,
    pool_up: bool,
    window: &Window,
) -> (Overall, Vec<String>) {
    if !check.connected {
        let why = match (&check.error, check.at_ms) {
            (Some(error), _) => error.clone(),
            (None, 0) => "not checked yet".to_owned(),
            (None, _) => "unknown".to_owned(),
        };
        return (
            Overall::Unhealthy,
            vec![format!("Redis unreachable: {why}")],
        );
    }
    if !pool_up {
        return (
            Overall::Unhealthy,
            vec!["Redis unreachable: no pooled connection is up".to_owned()],
        );
    }
    let t: &Thresholds = &config.thresholds;
    let over = format!("over the last {} s", window.seconds);
    let (hit_judged, error_judged) = judged(config, window);
    let mut found: Vec<(Overall, f64, String, String)> = vec![];
    if hit_judged && let Some(rate) = window.totals.hit_rate() {
        let (level, threshold) = t.hit_rate.below(rate);
        let what = format!(
            "hit rate {rate:.1}% {over} ({} rule-matched lookups)",
            window.lookups()
        );
        found.push((level, threshold, what, "below".into()));
    }
    if error_judged {
        let rate = window.totals.error_rate();
        let (level, threshold) = t.error_rate.above(rate);
        let what = format!(
            "error rate {rate:.2}% {over} ({} commands)",
            window.totals.commands
        );
        found.push((level, threshold, what, "above".into()));
    }
    // Behind a cluster each primary is judged on its own, and one down is degraded: the
    // others' keys are still served (none answering is unreachable, above).
    let mut down = vec![];
    let judged: Vec<(String, f64, f64, &str)> = match check.cluster {
        false => vec![(
            "Redis".to_owned(),
            check.latency_ms,
            check.memory_usage,
            check.memory_basis,
        )],
        true => check
            .nodes
            .iter()
            .filter(|n| n.role == cluster::Role::Primary)
            .filter_map(|n| {
                let name = format!("Redis node {} (primary)", n.address);
                if n.up {
                    return Some((name, n.latency_ms, n.memory_usage, n.memory_basis));
                }
                if n.serves() {
                    let flag = n
                        .failing
                        .map_or(String::new(), |f| format!(", cluster: {f}"));
                    down.push(format!(
                        "Redis node {} (primary, {} slots{flag}) is down: {}",
                        n.address,
                        n.slot_count(),
                        n.error.as_deref().unwrap_or("unknown")
                    ));
                }
                None
            })
            .collect(),
    };
    for (name, latency_ms, memory_usage, basis) in judged {
        let (level, threshold) = t.redis_latency_ms.above(latency_ms);
        let what = format!("{name} PING latency {latency_ms:.2} ms");
        found.push((level, threshold, what, "above".into()));
        let (level, threshold) = t.memory_usage.above(memory_usage);
        let what = format!("{name} memory {memory_usage:.1}% of {basis}");
        found.push((level, threshold, what, "above".into()));
    }
    let overall = found
        .iter()
        .map(|f| f.0)
        .chain((!down.is_empty()).then_some(Overall::Degraded))
        .max()
        .unwrap_or(Overall::Healthy);
    let reasons = down
        .into_iter()
        .chain(found.into_iter().filter(|f| f.0 > Overall::Healthy).map(
            |(level, threshold, what, side)| {
                format!(
                    "{what} is {side} the {} {threshold}",
                    level.threshold_word()
                )
            },
        ))
        .collect();
    (overall, reasons)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Report {
    /// The original system's `/health` body, field for field, plus cachet's own keys.
    pub fn to_json(&self, health: &Health) -> serde_json::Value {
        let t = &self.totals;
        let w = &self.window;
        let hit_rate = t.hit_rate().map(round2);
        let connected = self.check.connected && self.pool_up;
        let (hit_judged, error_judged) = judged(&health.config, w);
        let names = health.metrics.hits.rule_names();
        let (hits, misses) = (
            health.metrics.hits.by_rule(),
            health.metrics.misses.by_rule(),
        );
        let rules: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let at = |v: &[u64]| v.get(i).copied().unwrap_or(0);
                let (wh, wm) = (at(&w.rule_hits), at(&w.rule_misses));
                json!({
                    "rule": name,
                    "hits": at(&hits),
                    "misses": at(&misses),
                    "hitRate": percent(at(&hits), at(&hits) + at(&misses)).map(round2),
                    "window": {
                        "lookups": wh + wm,
                        "hitRate": percent(wh, wh + wm).map(round2),
                    },
                })
            })
            .collect();
        let mut body = json!({
            "success": true,
            "data": {
                "health": {
                    "overall": self.overall,
                    "reasons": self.reasons,
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
                        "hitRateAllLookups": t.all_hit_rate().map(round2),
                        "errorRate": round2(t.error_rate()),
                        "avgResponseTime": round2(t.avg_response_ms()),
                        "totalOperations": t.commands,
                        "window": {
                            "seconds": w.seconds,
                            "spanMs": w.span_ms,
                            "levelsJudgedHere": ["hitRate", "errorRate"],
                            "lookups": w.lookups(),
                            "hitRate": w.totals.hit_rate().map(round2),
                            "hitRateJudged": hit_judged,
                            "minLookups": health.config.min_lookups,
                            "hitRateAllLookups": w.totals.all_hit_rate().map(round2),
                            "commands": w.totals.commands,
                            "errors": w.totals.errors,
                            "errorRate": round2(w.totals.error_rate()),
                            "errorRateJudged": error_judged,
                            "minCommands": health.config.min_commands,
                        },
                        "rules": rules,
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
                    "allHits": t.all_hits,
                    "allMisses": t.all_misses,
                },
                "cachet": {
                    "version": env!("CARGO_PKG_VERSION"),
                    "upstream": health.upstream.config.url.to_string(),
                    "clients": health.clients(),
                    "clientProtocolErrors": t.client_protocol_errors,
                    "rules": health.rules,
                    "thresholds": thresholds_json(&health.config.thresholds),
                    "checkIntervalMs": health.config.interval_ms,
                },
            }
        });
        if self.check.cluster {
            let redis = &mut body["data"]["health"]["redis"];
            redis["cluster"] = self.cluster_json();
            redis["nodes"] = self.check.nodes.iter().map(node_json).collect();
        }
        body
    }

    /// How many nodes, and primaries, the last check listed and found up.
    fn cluster_json(&self) -> serde_json::Value {
        let nodes = &self.check.nodes;
        let count = |primary: bool, up: bool| {
            nodes
                .iter()
                .filter(|n| !primary || n.role == cluster::Role::Primary)
                .filter(|n| !up || n.up)
                .count()
        };
        json!({
            "nodes": count(false, false),
            "nodesUp": count(false, true),
            "primaries": count(true, false),
            "primariesUp": count(true, true),
            "nodesOmitted": self.check.nodes_omitted,
        })
    }
}

/// One node's row in `/health`: its figures are those of the last check (`null` when down).
fn node_json(n: &cluster::NodeCheck) -> serde_json::Value {
    let measured = |v: serde_json::Value| if n.up { v } else { serde_json::Value::Null };
    json!({
        "address": n.address,
        "id": n.id,
        "role": n.role.as_str(),
        "primary": n.primary,
        "up": n.up,
        "clusterFlag": n.failing,
        "latency": measured(json!(round2(n.latency_ms))),
        "usedMemory": measured(json!(n.used_memory)),
        "memoryUsage": measured(json!(round2(n.memory_usage))),
        "memoryBasis": measured(json!(n.memory_basis)),
        "keys": measured(json!(n.keys)),
        "slots": n.slots,
        "slotCount": n.slot_count(),
        "error": n.error,
    })
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
    let w = &r.window;
    let mut out = String::from("# cachet\r\n");
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        out.push_str(name);
        out.push(':');
        out.push_str(&value.to_string());
        out.push_str("\r\n");
    };
    let rate = |r: Option<f64>| r.map_or("-".to_owned(), |h| format!("{h:.2}"));
    line("cachet_version", &env!("CARGO_PKG_VERSION"));
    line("overall", &r.overall.as_str());
    line("overall_reasons", &r.reasons.join("; "));
    line("uptime_in_ms", &r.uptime_ms);
    line("clients", &health.clients());
    line("total_commands", &t.commands);
    line("hits", &t.hits);
    line("misses", &t.misses);
    line("hit_rate", &rate(t.hit_rate()));
    line("hits_all_lookups", &t.all_hits);
    line("misses_all_lookups", &t.all_misses);
    line("hit_rate_all_lookups", &rate(t.all_hit_rate()));
    line("errors", &t.errors);
    line("error_rate", &format!("{:.2}", t.error_rate()));
    line("window_seconds", &w.seconds);
    line("window_lookups", &w.lookups());
    line("window_hit_rate", &rate(w.totals.hit_rate()));
    line("window_commands", &w.totals.commands);
    line(
        "window_error_rate",
        &format!("{:.2}", w.totals.error_rate()),
    );
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
    if r.check.cluster {
        out.push_str(&cluster_info(&r));
    }
    out
}

/// The `# cachet_cluster` section, after `# cachet` behind a cluster: the counts, then one
/// line per node, as Redis lists replicas in `# Replication` (`node0:address=...,up=1,...`).
fn cluster_info(r: &Report) -> String {
    let mut out = String::from("\r\n# cachet_cluster\r\n");
    let counts = r.cluster_json();
    for (name, key) in [
        ("cluster_nodes", "nodes"),
        ("cluster_nodes_up", "nodesUp"),
        ("cluster_primaries", "primaries"),
        ("cluster_primaries_up", "primariesUp"),
        ("cluster_nodes_omitted", "nodesOmitted"),
    ] {
        out.push_str(&format!("{name}:{}\r\n", counts[key]));
    }
    for (i, n) in r.check.nodes.iter().enumerate() {
        out.push_str(&format!(
            "node{i}:address={},role={},up={},latency_ms={:.2},used_memory={},memory_usage={:.2},keys={},slots={}\r\n",
            n.address,
            n.role.as_str(),
            u8::from(n.up),
            n.latency_ms,
            n.used_memory,
            n.memory_usage,
            n.keys,
            n.slot_count(),
        ));
    }
    out
}

/// Why Redis cannot be reached, found by opening a connection as the pool does (the
/// connect, then AUTH if configured): `None` if that works.
async fn unreachable_because(upstream: &Upstream) -> Option<String> {
    let setup = upstream.setup_commands(Protocol::Resp2);
    let required = setup.len();
    match upstream.connect(&setup, required).await {
        Ok(_) => None,
        Err(error) => Some(error.to_string()),
    }
}

/// One check of Redis on the control connection.
async fn check(health: &Health) -> Check {
    let at_ms = now_ms();
    let control = &health.control;
    let failed = |error: String| Check {
        error: Some(error),
        at_ms,
        ..Check::default()
    };
    // fred reconnects by itself and holds commands meanwhile, so a check on a disconnected
    // client would only time out: find the cause on a connection of the check's own.
    if !control.is_connected()
        && let Ok(Some(cause)) =
            tokio::time::timeout(CHECK_TIMEOUT, unreachable_because(&health.upstream)).await
    {
        return failed(cause);
    }
    let measured = async {
        // Timed from a connected client: a PING queued while fred connects measures the connect.
        control.wait_for_connect().await?;
        measure(control, &health.metrics).await
    };
    match tokio::time::timeout(CHECK_TIMEOUT, measured).await {
        Ok(Ok(Measured {
            latency,
            memory,
            keys,
        })) => Check {
            connected: true,
            latency_ms: latency.as_secs_f64() * 1000.0,
            memory_usage: memory.usage(),
            used_memory: memory.used,
            memory_basis: memory.basis,
            key_count: keys,
            error: None,
            at_ms,
            ..Check::default()
        },
        Ok(Err(error)) => failed(error.to_string()),
        Err(_) => failed(format!(
            "no reply within {} ms from {}",
            CHECK_TIMEOUT.as_millis(),
            health.upstream.address()
        )),
    }
}

/// Counts the control connection's reconnects. fred announces the first connect too, which
/// is not one: it is drained once the client is connected, and every later event counts.
async fn count_reconnects(health: Arc<Health>, shutdown: CancellationToken) {
    use tokio::sync::broadcast::error::RecvError;
    let control = &health.control;
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

/// Least time between two checks that control-client events ask for.
const EVENT_RECHECK_GAP: Duration = Duration::from_millis(250);

/// Behind a cluster: asks for a check at once when the control client loses a node's
/// connection or sees the slot map change, so a primary down (or a failover) shows within a
/// check rather than an interval. Events in a burst (a node refusing reconnects) ask once per
/// [`EVENT_RECHECK_GAP`].
async fn recheck_on_events(health: Arc<Health>, shutdown: CancellationToken) {
    use tokio::sync::broadcast::error::RecvError;
    let mut errors = health.control.error_rx();
    let mut changes = health.control.cluster_change_rx();
    loop {
        let closed = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = errors.recv() => matches!(event, Err(RecvError::Closed)),
            event = changes.recv() => matches!(event, Err(RecvError::Closed)),
        };
        if closed {
            return;
        }
        health.recheck.notify_one();
        tokio::time::sleep(EVENT_RECHECK_GAP).await;
        while errors.try_recv().is_ok() || changes.try_recv().is_ok() {}
    }
}

/// Assesses `overall` now, sets its gauge, and logs it if it changed (once a check exists:
/// before the first, there is nothing to judge by).
fn assess_now(health: &Health) -> Report {
    let r = report(health);
    health.metrics.health_overall.set(r.overall as i64);
    if r.check.at_ms == 0 {
        return r;
    }
    if let Some(before) = health.set_overall(r.overall) {
        let before = before.map_or("unknown", Overall::as_str);
        let reasons = r.reasons.join("; ");
        match r.overall {
            Overall::Healthy => {
                tracing::info!(before, overall = "healthy", "health changed")
            }
            other => tracing::warn!(
                before,
                overall = other.as_str(),
                reasons = %reasons,
                "health changed"
            ),
        }
    }
    r
}

/// Checks Redis now and every `interval_ms`, updates the upstream gauges, and assesses
/// `overall` after each check.
pub async fn monitor(health: Arc<Health>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(health.config.interval_ms.max(1));
    tokio::spawn(count_reconnects(health.clone(), shutdown.clone()));
    tokio::spawn(sample(health.clone(), shutdown.clone()));
    if health.is_cluster() {
        tokio::spawn(recheck_on_events(health.clone(), shutdown.clone()));
    }
    // The command table's large replies come first on the control connection at start; the
    // first check waits for them, unless Redis cannot be reached at all (then the check says
    // why at once), and not longer than a check may take.
    tokio::select! {
        _ = tokio::time::timeout(CHECK_TIMEOUT, health.upstream.table_loaded()) => {}
        Some(_) = unreachable_because(&health.upstream) => {}
    }
    loop {
        let found = match health.is_cluster() {
            true => cluster::check(&health.nodes, &health.control, &health.metrics).await,
            false => check(&health).await,
        };
        let m = &health.metrics;
        if found.connected {
            m.upstream_keys.set(found.key_count as i64);
            m.upstream_memory_bytes.set(found.used_memory as i64);
        }
        let up = health.upstream.pooled_connections_up();
        m.upstream_connections.set(up as i64);
        *health.last.lock().expect("health lock") = Some(found);
        let r = assess_now(&health);
        // While Redis (or a cluster node) is unreachable, look again within a second, so
        // `connected` (and `/health`) follow its return without waiting a whole interval.
        let pause = match r.check.connected && r.check.nodes.iter().all(|n| n.up) {
            true => interval,
            false => interval.min(Duration::from_secs(1)),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = health.recheck.notified() => {}
        }
    }
}

/// The figures as they are now, as a [`Sample`].
fn take_sample(health: &Health, overall: Overall) -> Sample {
    let m = &health.metrics;
    let check = health.last_check().unwrap_or_default();
    let families = m.registry.gather();
    // The sum over every series of a family, or of those whose `label` is `value`.
    let sum = |name: &str, label: Option<(&str, &str)>| -> f64 {
        families
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|metric| {
                label.is_none_or(|(l, v)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|p| p.name() == l && p.value() == v)
                })
            })
            .map(|metric| metric.get_counter().get_value() + metric.get_gauge().get_value())
            .sum()
    };
    let latency = m.command_latency.metric();
    Sample {
        at_ms: now_ms(),
        overall: overall as u8,
        totals: m.totals(),
        latency_buckets: latency
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect(),
        rule_hits: m.hits.by_rule().into(),
        rule_misses: m.misses.by_rule().into(),
        clients: m.clients.get(),
        redis_connected: check.connected && health.upstream.is_ready(),
        redis_latency_ms: check.latency_ms,
        redis_used_memory: check.used_memory,
        redis_memory_usage: check.memory_usage,
        redis_keys: check.key_count,
        warm_depth: sum("cachet_warm_queue_depth", None) as i64,
        warm_sent: sum("cachet_warm_requests_total", Some(("outcome", "sent"))) as u64,
        warm_failed: sum("cachet_warm_requests_total", Some(("outcome", "failed"))) as u64,
        policy_calls: sum("cachet_policy_calls_total", None) as u64,
        policy_errors: sum("cachet_policy_errors_total", None) as u64,
        dead_letters: m.dead_letters.get(),
        events: sum("cachet_events_total", None) as u64 + m.events_unrouted.get(),
    }
}

/// Every second: assesses `overall` (logging a change when it happens, not at the next
/// check) and records a sample in the history.
async fn sample(health: Arc<Health>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut started = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let r = assess_now(&health);
        if r.check.connected && !r.pool_up {
            health.recheck.notify_one();
        }
        // Before the first check there is no `overall` to record (the report says "not
        // checked yet"), and no Redis figures: the history starts with the first check.
        if r.check.at_ms != 0 {
            let sample = take_sample(&health, r.overall);
            if !started {
                // What was counted before the first check: the first point runs from start.
                let uptime = health.metrics.started.elapsed().as_millis() as u64;
                health.history.push(Sample {
                    at_ms: sample.at_ms.saturating_sub(uptime),
                    overall: sample.overall,
                    latency_buckets: vec![0; sample.latency_buckets.len()].into(),
                    rule_hits: vec![0; sample.rule_hits.len()].into(),
                    rule_misses: vec![0; sample.rule_misses.len()].into(),
                    ..Sample::default()
                });
                started = true;
            }
            health.history.push(sample);
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
            memory_basis: "maxmemory",
            at_ms: 1,
            ..Check::default()
        }
    }

    fn window(commands: u64, hits: u64, misses: u64, errors: u64) -> Window {
        Window {
            seconds: 60,
            totals: Totals {
                commands,
                hits,
                misses,
                errors,
                ..Totals::default()
            },
            ..Window::default()
        }
    }

    #[test]
    fn overall_is_the_worst_level_with_its_reasons() {
        let c = HealthConfig::default();
        let level = |check: &Check, pool: bool, w: &Window| assess(&c, check, pool, w).0;
        assert_eq!(
            level(&connected(), true, &window(100, 0, 0, 0)),
            Overall::Healthy
        );
        assert_eq!(
            level(&connected(), true, &window(200, 70, 30, 0)),
            Overall::Degraded
        );
        let (overall, reasons) = assess(&c, &connected(), true, &window(200, 70, 30, 12));
        assert_eq!(overall, Overall::Unhealthy);
        assert_eq!(
            reasons,
            vec![
                "hit rate 70.0% over the last 60 s (100 rule-matched lookups) is below the warning 80",
                "error rate 6.00% over the last 60 s (200 commands) is above the critical 5",
            ]
        );
        let slow = Check {
            latency_ms: 60.0,
            ..connected()
        };
        assert_eq!(level(&slow, true, &window(0, 0, 0, 0)), Overall::Unhealthy);
        let refused = Check {
            error: Some("upstream unavailable: 127.0.0.1:1: Connection refused".into()),
            at_ms: 1,
            ..Check::default()
        };
        let (overall, reasons) = assess(&c, &refused, true, &Window::default());
        assert_eq!(overall, Overall::Unhealthy);
        assert_eq!(
            reasons,
            ["Redis unreachable: upstream unavailable: 127.0.0.1:1: Connection refused"]
        );
        assert_eq!(
            level(&connected(), false, &Window::default()),
            Overall::Unhealthy
        );
    }

    #[test]
    fn too_few_lookups_or_commands_in_the_window_are_not_judged() {
        let c = HealthConfig::default();
        // A cold cache: three misses, all the lookups there were.
        let (overall, reasons) = assess(&c, &connected(), true, &window(3, 0, 3, 0));
        assert_eq!((overall, reasons.len()), (Overall::Healthy, 0));
        // Errors in a handful of commands do not judge either.
        let (overall, _) = assess(&c, &connected(), true, &window(10, 0, 0, 5));
        assert_eq!(overall, Overall::Healthy);
        // At the minimum they do.
        let (overall, _) = assess(&c, &connected(), true, &window(100, 0, 100, 0));
        assert_eq!(overall, Overall::Unhealthy);
    }

    #[test]
    fn behind_a_cluster_each_primary_is_judged_and_named() {
        use cluster::{NodeCheck, Role};
        let c = HealthConfig::default();
        let node = |address: &str, role: Role, up: bool, latency_ms: f64| NodeCheck {
            address: address.into(),
            role,
            up,
            latency_ms,
            memory_usage: 10.0,
            memory_basis: "maxmemory",
            slots: match role {
                Role::Primary => vec![(0, 5460)],
                Role::Replica => vec![],
            },
            error: (!up).then(|| "Connection refused (os error 111)".to_owned()),
            ..NodeCheck::default()
        };
        let judge = |nodes: Vec<NodeCheck>| {
            let check = cluster::summarize(nodes, 0, 1);
            assess(&c, &check, true, &Window::default())
        };
        let healthy = judge(vec![
            node("a:1", Role::Primary, true, 1.0),
            node("b:1", Role::Primary, true, 2.0),
        ]);
        assert_eq!(healthy, (Overall::Healthy, vec![]));
        // A replica down is reported in the node list, not judged.
        let replica_down = judge(vec![
            node("a:1", Role::Primary, true, 1.0),
            node("r:1", Role::Replica, false, 0.0),
        ]);
        assert_eq!(replica_down.0, Overall::Healthy);
        let (overall, reasons) = judge(vec![
            node("a:1", Role::Primary, true, 20.0),
            node("b:1", Role::Primary, false, 0.0),
        ]);
        assert_eq!(overall, Overall::Degraded);
        assert_eq!(
            reasons,
            [
                "Redis node b:1 (primary, 5461 slots) is down: Connection refused (os error 111)",
                "Redis node a:1 (primary) PING latency 20.00 ms is above the warning 10",
            ]
        );
        // No primary answering is Redis unreachable.
        let (overall, reasons) = judge(vec![node("b:1", Role::Primary, false, 0.0)]);
        assert_eq!(overall, Overall::Unhealthy);
        assert_eq!(
            reasons,
            ["Redis unreachable: no primary answered (b:1: Connection refused (os error 111))"]
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
