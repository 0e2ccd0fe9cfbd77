//! Every metric cachet keeps, with its name and labels, in one place. Label values are
//! bounded sets (command names from Redis's `COMMAND` table, rule names from the config, the
//! nodes of a Redis Cluster: at most `health::cluster::MAX_NODES`, removed when they leave),
//! never keys or tags.
//!
//! A client's malformed input is counted in `cachet_client_protocol_errors_total`, not in
//! `cachet_errors_total`, so it never moves `/health`'s error rate.
//!
//! The registry is public: the policy host and the warmers register their own metrics into
//! [`Metrics::registry`], and `/metrics` (see `crate::admin`) serves all of it through the
//! `prometheus` crate's text encoder.
//!
//! Hot-path cost. Sessions count every command, so the per-command work here is an atomic
//! add on a counter found without locking ([`CommandCounters::count`]), and latencies go
//! through a per-session `LocalHistogram` flushed once per batch of replies.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, core::Collector,
};
use rustc_hash::FxHashMap;

/// The label for hits and misses of keys that match no rule.
pub const NO_RULE: &str = "none";
/// The label for command names Redis's command table does not know.
pub const OTHER_COMMAND: &str = "other";
/// Command latency buckets, in seconds: 50 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// When this process started counting (the health endpoint's `uptime`).
    pub started: Instant,
    /// Writes that went through the tag index, by the rule that matched their (first) key.
    pub tagged_writes: RuleCounters,
    /// Tags invalidated by TAGINVALIDATE.
    pub invalidations: IntCounter,
    /// Keys deleted by those invalidations.
    pub keys_invalidated: IntCounter,
    /// Index keys (tag sets, per-key tag sets, epochs) seen by the sweeper's last full pass.
    pub index_keys: IntGauge,
    /// Commands received, by lowercase name.
    pub commands: CommandCounters,
    /// Time from a pooled batch leaving the session to its replies being queued for the
    /// client, one observation per command.
    pub command_latency: Histogram,
    /// Lookups (GET-like reads) that found a value / found nil, by rule.
    pub hits: RuleCounters,
    pub misses: RuleCounters,
    /// Error replies cachet produced itself or passed on for an upstream failure: what
    /// `/health`'s error rate counts.
    pub errors: IntCounter,
    /// Clients closed for sending what is not RESP: the client's fault, kept out of `errors`
    /// so that no client can make cachet look unhealthy by sending garbage.
    pub client_protocol_errors: IntCounter,
    /// Misses that got no read lease because their connection held the most it may: their
    /// writes are not checked against invalidations (see `session::leases`).
    pub leases_dropped: IntCounter,
    /// Clients connected to cachet now.
    pub clients: IntGauge,
    /// Pooled connections to Redis that are up, as of the last health check.
    pub upstream_connections: IntGauge,
    /// Reconnects of cachet's control connection to Redis.
    pub upstream_reconnects: IntCounter,
    /// Round trip of each of the health check's PINGs on the control connection.
    pub upstream_latency: Histogram,
    /// Redis's key count and memory use, as of the last health check.
    pub upstream_keys: IntGauge,
    pub upstream_memory_bytes: IntGauge,
    /// Behind Redis Cluster: each node's figures, as of the last health check.
    pub upstream_nodes: NodeGauges,
    /// The health endpoint's `overall`: 0 healthy, 1 degraded, 2 unhealthy.
    pub health_overall: IntGauge,
    /// Policy calls, by policy.
    pub policy_calls: IntCounterVec,
    /// Host calls policies made (refused ones included), by policy.
    pub policy_host_calls: IntCounterVec,
    /// Failed policy calls, by policy and kind (error, trap, timeout, memory, limit).
    pub policy_errors: IntCounterVec,
    /// Time of one policy call on its thread, by policy.
    pub policy_duration: HistogramVec,
    /// EMITs by outcome (ok, partial, failed, unsubscribed).
    pub events: IntCounterVec,
    /// EMITs of events no policy subscribes to, answered with an empty result.
    pub events_unrouted: IntCounter,
    /// Policy module reloads, by policy and outcome (ok, failed).
    pub policy_reloads: IntCounterVec,
    /// Events kept in the dead-letter stream.
    pub dead_letters: IntCounter,
}

fn register<T: Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    counter_vec_n(registry, name, help, &[label])
}

fn counter_vec_n(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// Policy call buckets, in seconds: 5 µs to 25 ms (the default deadline is 10 ms).
const POLICY_BUCKETS: &[f64] = &[
    5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
];

impl Metrics {
    /// Metrics with no rules: every hit and miss is labelled `none`.
    pub fn new() -> Self {
        Self::with_rules(std::iter::empty())
    }

    /// Metrics whose hit and miss counters have one label per rule name, in rule order.
    pub fn with_rules<'a>(rule_names: impl Iterator<Item = &'a str>) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let names: Vec<&str> = std::iter::once(NO_RULE).chain(rule_names).collect();
        let hits = counter_vec(
            r,
            "cachet_hits_total",
            "Lookups (GET, GETEX, GETDEL, HGET; each MGET/HMGET element) that found a value, by rule",
            "rule",
        );
        let misses = counter_vec(
            r,
            "cachet_misses_total",
            "Lookups (GET, GETEX, GETDEL, HGET; each MGET/HMGET element) that found nil, by rule",
            "rule",
        );
        Metrics {
            started: Instant::now(),
            tagged_writes: RuleCounters::new(
                &counter_vec(
                    r,
                    "cachet_tagged_writes_total",
                    "Writes recorded in the tag index, by rule",
                    "rule",
                ),
                &names,
            ),
            invalidations: counter(
                r,
                "cachet_invalidations_total",
                "Tags invalidated (TAGINVALIDATE)",
            ),
            keys_invalidated: counter(
                r,
                "cachet_keys_invalidated_total",
                "Keys deleted by tag invalidations",
            ),
            index_keys: gauge(
                r,
                "cachet_tag_index_keys",
                "Keys of the tag index in Redis, as of the sweeper's last full pass",
            ),
            commands: CommandCounters::new(counter_vec(
                r,
                "cachet_commands_total",
                "Commands received from clients, by name (unknown names as \"other\")",
                "cmd",
            )),
            command_latency: histogram(
                r,
                "cachet_command_duration_seconds",
                "Pooled commands: from the batch leaving the session to its replies being queued for the client",
            ),
            hits: RuleCounters::new(&hits, &names),
            misses: RuleCounters::new(&misses, &names),
            errors: counter(
                r,
                "cachet_errors_total",
                "Error replies cachet produced itself or passed on for an upstream failure",
            ),
            client_protocol_errors: counter(
                r,
                "cachet_client_protocol_errors_total",
                "Clients closed after a protocol error (not counted in cachet_errors_total)",
            ),
            leases_dropped: counter(
                r,
                "cachet_leases_dropped_total",
                "Misses of rule-matched keys that got no read lease (their connection held leases for 4096 keys or 1 MiB): their writes are not checked against invalidations",
            ),
            clients: gauge(r, "cachet_clients_connected", "Clients connected to cachet"),
            upstream_connections: gauge(
                r,
                "cachet_upstream_connections",
                "Pooled connections to Redis that are up (as of the last health check)",
            ),
            upstream_reconnects: counter(
                r,
                "cachet_upstream_reconnects_total",
                "Reconnects of cachet's control connection to Redis (the pool's: cachet_upstream_pool_reconnects_total)",
            ),
            upstream_latency: histogram(
                r,
                "cachet_upstream_ping_seconds",
                "Round trip of each of the health check's PINGs to Redis",
            ),
            upstream_keys: gauge(
                r,
                "cachet_upstream_keys",
                "Keys in the upstream database (as of the last health check)",
            ),
            upstream_memory_bytes: gauge(
                r,
                "cachet_upstream_used_memory_bytes",
                "Redis used_memory (as of the last health check)",
            ),
            upstream_nodes: NodeGauges::new(r),
            health_overall: gauge(
                r,
                "cachet_health_overall",
                "Overall health: 0 healthy, 1 degraded, 2 unhealthy",
            ),
            policy_calls: counter_vec(
                r,
                "cachet_policy_calls_total",
                "Policy calls, by policy",
                "policy",
            ),
            policy_host_calls: counter_vec(
                r,
                "cachet_policy_host_calls_total",
                "Host calls (key-tags, tag-size, key-heat, log) made by policy calls, by policy",
                "policy",
            ),
            policy_errors: counter_vec_n(
                r,
                "cachet_policy_errors_total",
                "Failed policy calls, by policy and kind (error, trap, timeout, memory, limit)",
                &["policy", "kind"],
            ),
            policy_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cachet_policy_duration_seconds",
                        "Time of one policy call, by policy",
                    )
                    .buckets(POLICY_BUCKETS.to_vec()),
                    &["policy"],
                )
                .expect("valid metric"),
            ),
            events: counter_vec(
                r,
                "cachet_events_total",
                "EMITs, by outcome (ok, partial, failed, unsubscribed)",
                "outcome",
            ),
            events_unrouted: counter(
                r,
                "cachet_events_unrouted_total",
                "EMITs of events no policy subscribes to (answered with an empty result)",
            ),
            policy_reloads: counter_vec_n(
                r,
                "cachet_policy_reloads_total",
                "Policy module reloads, by policy and outcome (ok, failed): once per change of the file, and per POLICY RELOAD or SIGHUP",
                &["policy", "outcome"],
            ),
            dead_letters: counter(
                r,
                "cachet_policy_dead_letters_total",
                "Events a policy failed on, kept in the dead-letter stream",
            ),
            registry,
        }
    }

    /// Sums of the hit and miss counters (of rule-matched keys, and of every key) and of
    /// commands: what `/health` and `INFO` report.
    pub fn totals(&self) -> Totals {
        let (all_hits, all_misses) = (self.hits.total(), self.misses.total());
        Totals {
            hits: all_hits - self.hits.unmatched(),
            misses: all_misses - self.misses.unmatched(),
            all_hits,
            all_misses,
            errors: self.errors.get(),
            client_protocol_errors: self.client_protocol_errors.get(),
            commands: self.commands.total(),
            invalidations: self.invalidations.get(),
            keys_invalidated: self.keys_invalidated.get(),
            latency_sum_secs: self.command_latency.get_sample_sum(),
            latency_count: self.command_latency.get_sample_count(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A Redis Cluster node's figures, labelled `node` (its `host:port`) and `role` (`primary`,
/// `replica`). `up` is set for every node listed; the others only while the node answers, so
/// a node down shows no stale figures. Empty, so absent from `/metrics`, for a single Redis.
pub struct NodeGauges {
    pub up: IntGaugeVec,
    pub latency: GaugeVec,
    pub memory: IntGaugeVec,
    pub keys: IntGaugeVec,
}

const NODE_LABELS: &[&str] = &["node", "role"];

impl NodeGauges {
    fn new(r: &Registry) -> Self {
        let int = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), NODE_LABELS).expect("valid metric"),
            )
        };
        NodeGauges {
            up: int(
                "cachet_upstream_node_up",
                "Redis Cluster node answered the last health check (1) or not (0), by node and role",
            ),
            latency: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "cachet_upstream_node_latency_seconds",
                        "Redis Cluster node's fastest PING in the last health check, by node and role",
                    ),
                    NODE_LABELS,
                )
                .expect("valid metric"),
            ),
            memory: int(
                "cachet_upstream_node_memory_bytes",
                "Redis Cluster node's used_memory (as of the last health check), by node and role",
            ),
            keys: int(
                "cachet_upstream_node_keys",
                "Redis Cluster node's DBSIZE (as of the last health check), by node and role",
            ),
        }
    }

    /// One node's figures: latency (s), used memory and keys when it answered, `None` when not.
    pub fn set(&self, node: &str, role: &str, figures: Option<(f64, i64, i64)>) {
        let labels = [node, role];
        self.up
            .with_label_values(&labels)
            .set(i64::from(figures.is_some()));
        match figures {
            Some((latency, memory, keys)) => {
                self.latency.with_label_values(&labels).set(latency);
                self.memory.with_label_values(&labels).set(memory);
                self.keys.with_label_values(&labels).set(keys);
            }
            None => self.remove_figures(&labels),
        }
    }

    /// Every series of a node that left the cluster, or changed role.
    pub fn remove(&self, node: &str, role: &str) {
        let labels = [node, role];
        let _ = self.up.remove_label_values(&labels);
        self.remove_figures(&labels);
    }

    fn remove_figures(&self, labels: &[&str; 2]) {
        // Absent series are not an error here: a node down has none.
        let _ = self.latency.remove_label_values(labels);
        let _ = self.memory.remove_label_values(labels);
        let _ = self.keys.remove_label_values(labels);
    }
}

/// Cumulative figures since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Lookups of keys some rule matches (cached data) that found a value / found nil.
    pub hits: u64,
    pub misses: u64,
    /// Lookups of every key, rule-matched or not (locks, queues, benchmark keys...).
    pub all_hits: u64,
    pub all_misses: u64,
    pub errors: u64,
    /// Clients closed after a protocol error; not part of the error rate.
    pub client_protocol_errors: u64,
    pub commands: u64,
    pub invalidations: u64,
    pub keys_invalidated: u64,
    pub latency_sum_secs: f64,
    pub latency_count: u64,
}

impl Totals {
    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            all_hits: self.all_hits.saturating_sub(earlier.all_hits),
            all_misses: self.all_misses.saturating_sub(earlier.all_misses),
            errors: self.errors.saturating_sub(earlier.errors),
            client_protocol_errors: self
                .client_protocol_errors
                .saturating_sub(earlier.client_protocol_errors),
            commands: self.commands.saturating_sub(earlier.commands),
            invalidations: self.invalidations.saturating_sub(earlier.invalidations),
            keys_invalidated: self
                .keys_invalidated
                .saturating_sub(earlier.keys_invalidated),
            latency_sum_secs: (self.latency_sum_secs - earlier.latency_sum_secs).max(0.0),
            latency_count: self.latency_count.saturating_sub(earlier.latency_count),
        }
    }

    /// Hits as a percentage of rule-matched lookups; `None` before the first such lookup (no
    /// reads is not a bad hit rate, nor a perfect one).
    pub fn hit_rate(&self) -> Option<f64> {
        percent(self.hits, self.hits + self.misses)
    }

    /// Hits as a percentage of all lookups, rule-matched or not.
    pub fn all_hit_rate(&self) -> Option<f64> {
        percent(self.all_hits, self.all_hits + self.all_misses)
    }

    /// Errors as a percentage of commands (0 before the first command).
    pub fn error_rate(&self) -> f64 {
        match self.commands {
            0 => 0.0,
            n => self.errors as f64 * 100.0 / n as f64,
        }
    }

    /// Mean command latency at the proxy, in milliseconds (0 before the first).
    pub fn avg_response_ms(&self) -> f64 {
        match self.latency_count {
            0 => 0.0,
            n => self.latency_sum_secs * 1000.0 / n as f64,
        }
    }
}

/// `part` as a percentage of `whole`; `None` when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

/// Counters by rule (hits, misses, tagged writes), one per rule in `[[rules]]` order after
/// index 0, [`NO_RULE`]; resolved once so counting is an atomic add.
pub struct RuleCounters {
    counters: Vec<IntCounter>,
    /// The label of each counter: [`NO_RULE`], then the rules' names.
    names: Vec<String>,
}

impl RuleCounters {
    fn new(vec: &IntCounterVec, names: &[&str]) -> Self {
        RuleCounters {
            counters: names.iter().map(|n| vec.with_label_values(&[n])).collect(),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// The rules' names, in `[[rules]]` order (without [`NO_RULE`]).
    pub fn rule_names(&self) -> &[String] {
        &self.names[1..]
    }

    /// Each rule's count, in `[[rules]]` order (without [`NO_RULE`]).
    pub fn by_rule(&self) -> Vec<u64> {
        self.counters[1..].iter().map(IntCounter::get).collect()
    }

    /// The count of keys no rule matches.
    pub fn unmatched(&self) -> u64 {
        self.counters[0].get()
    }

    /// The index of the rule at `position` in `[[rules]]` (the metrics were made with the
    /// rules in file order; 0, `none`, if out of range).
    pub fn of_rule(&self, position: usize) -> u16 {
        match position + 1 < self.counters.len() {
            true => (position + 1) as u16,
            false => 0,
        }
    }

    pub fn inc(&self, rule: u16, by: u64) {
        if by > 0 {
            self.counters[rule as usize].inc_by(by);
        }
    }

    pub fn total(&self) -> u64 {
        self.counters.iter().map(IntCounter::get).sum()
    }
}

/// Counters by lowercase command name.
pub type CommandMap = FxHashMap<Box<[u8]>, IntCounter>;

/// `cachet_commands_total{cmd}`: a lock-free map from lowercase name to its counter. A name
/// seen for the first time is added (under a mutex, once per name) if it is a known command,
/// so the label set stays within Redis's command table plus `other`.
pub struct CommandCounters {
    vec: IntCounterVec,
    by_name: ArcSwap<CommandMap>,
    adding: Mutex<()>,
    other: IntCounter,
}

impl CommandCounters {
    fn new(vec: IntCounterVec) -> Self {
        let other = vec.with_label_values(&[OTHER_COMMAND]);
        CommandCounters {
            vec,
            by_name: ArcSwap::from_pointee(FxHashMap::default()),
            adding: Mutex::new(()),
            other,
        }
    }

    /// Counts one command named `name` (lowercase); `known` says whether it is a real
    /// command, asked only the first time a name is seen.
    pub fn count(&self, name: &[u8], known: impl FnOnce() -> bool) {
        if let Some(counter) = self.by_name.load().get(name) {
            return counter.inc();
        }
        self.count_slow(name, known())
    }

    #[cold]
    fn count_slow(&self, name: &[u8], known: bool) {
        let label = match std::str::from_utf8(name) {
            Ok(label) if known => label,
            _ => return self.other.inc(),
        };
        let _adding = self.adding.lock().expect("command counters lock");
        let mut map = CommandMap::clone(&self.by_name.load());
        let counter = map
            .entry(name.into())
            .or_insert_with(|| self.vec.with_label_values(&[label]))
            .clone();
        self.by_name.store(map.into());
        counter.inc();
    }

    /// The counters of every name seen so far; a session keeps one and counts through it
    /// without touching shared state, asking again ([`Self::count`]) for a name it lacks.
    pub fn snapshot(&self) -> Arc<CommandMap> {
        self.by_name.load_full()
    }

    pub fn total(&self) -> u64 {
        self.other.get()
            + self
                .by_name
                .load()
                .values()
                .map(IntCounter::get)
                .sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_by_known_name_and_the_rest_as_other() {
        let metrics = Metrics::new();
        metrics.commands.count(b"get", || true);
        metrics
            .commands
            .count(b"get", || unreachable!("known after the first time"));
        metrics.commands.count(b"nosuchcommand", || false);
        metrics.commands.count(b"x\xff", || true);
        assert_eq!(metrics.commands.total(), 4);
        let families = metrics.registry.gather();
        let commands = families
            .iter()
            .find(|f| f.name() == "cachet_commands_total")
            .expect("registered");
        let mut seen: Vec<(String, u64)> = commands
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].value().to_owned(),
                    m.get_counter().get_value() as u64,
                )
            })
            .collect();
        seen.sort();
        assert_eq!(seen, vec![("get".into(), 2), ("other".into(), 2)]);
    }

    #[test]
    fn rates_are_percentages_and_absent_without_lookups() {
        let mut totals = Totals::default();
        assert_eq!(totals.hit_rate(), None);
        assert_eq!(totals.error_rate(), 0.0);
        totals.all_misses = 4;
        assert_eq!(
            (totals.hit_rate(), totals.all_hit_rate()),
            (None, Some(0.0))
        );
        totals.hits = 3;
        totals.misses = 1;
        totals.commands = 8;
        totals.errors = 2;
        assert_eq!(totals.hit_rate(), Some(75.0));
        assert_eq!(totals.error_rate(), 25.0);
    }

    #[test]
    fn rule_counters_fall_back_to_none() {
        let metrics = Metrics::with_rules(["session-list", "roster"].into_iter());
        assert_eq!(metrics.hits.of_rule(1), 2);
        assert_eq!(metrics.hits.of_rule(2), 0);
        metrics.hits.inc(2, 3);
        metrics.misses.inc(0, 1);
        assert_eq!((metrics.hits.total(), metrics.misses.total()), (3, 1));
        assert_eq!(metrics.hits.by_rule(), vec![0, 3]);
        assert_eq!(metrics.hits.rule_names(), ["session-list", "roster"]);
        let totals = metrics.totals();
        assert_eq!((totals.hits, totals.misses), (3, 0));
        assert_eq!((totals.all_hits, totals.all_misses), (3, 1));
    }
}
