//! Every metric cachet keeps, with its name and labels, in one place. Label values are
//! bounded sets (rule names from the config), never keys or tags.
//!
//! The registry is served by the health endpoint (a later issue); until then the counters
//! are kept here and logged.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Writes that went through the tag index, by the rule that matched their (first) key.
    pub tagged_writes: IntCounterVec,
    /// Tags invalidated by TAGINVALIDATE.
    pub invalidations: IntCounter,
    /// Keys deleted by those invalidations.
    pub keys_invalidated: IntCounter,
    /// Index keys (tag sets, per-key tag sets, epochs) seen by the sweeper's last full pass.
    pub index_keys: IntGauge,
    /// Policy calls, by policy.
    pub policy_calls: IntCounterVec,
    /// Failed policy calls, by policy and kind (error, trap, timeout, memory, limit).
    pub policy_errors: IntCounterVec,
    /// Time of one policy call on its thread, by policy.
    pub policy_duration: HistogramVec,
    /// EMITs by outcome (ok, partial, failed, unsubscribed).
    pub events: IntCounterVec,
    /// Policy module reloads, by policy and outcome (ok, unchanged, failed).
    pub policy_reloads: IntCounterVec,
    /// Events kept in the dead-letter stream.
    pub dead_letters: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tagged_writes = IntCounterVec::new(
            Opts::new(
                "cachet_tagged_writes_total",
                "Writes recorded in the tag index, by rule",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let invalidations = IntCounter::new(
            "cachet_invalidations_total",
            "Tags invalidated (TAGINVALIDATE)",
        )
        .expect("valid metric");
        let keys_invalidated = IntCounter::new(
            "cachet_keys_invalidated_total",
            "Keys deleted by tag invalidations",
        )
        .expect("valid metric");
        let index_keys = IntGauge::new(
            "cachet_tag_index_keys",
            "Keys of the tag index in Redis, as of the sweeper's last full pass",
        )
        .expect("valid metric");
        let policy_calls = IntCounterVec::new(
            Opts::new("cachet_policy_calls_total", "Policy calls, by policy"),
            &["policy"],
        )
        .expect("valid metric");
        let policy_errors = IntCounterVec::new(
            Opts::new(
                "cachet_policy_errors_total",
                "Failed policy calls, by policy and kind (error, trap, timeout, memory, limit)",
            ),
            &["policy", "kind"],
        )
        .expect("valid metric");
        let policy_duration = HistogramVec::new(
            HistogramOpts::new(
                "cachet_policy_duration_seconds",
                "Time of one policy call, by policy",
            )
            .buckets(vec![
                5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
            ]),
            &["policy"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "cachet_events_total",
                "EMITs, by outcome (ok, partial, failed, unsubscribed)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "cachet_policy_reloads_total",
                "Policy module reloads, by policy and outcome (ok, unchanged, failed)",
            ),
            &["policy", "outcome"],
        )
        .expect("valid metric");
        let dead_letters = IntCounter::new(
            "cachet_policy_dead_letters_total",
            "Events a policy failed on, kept in the dead-letter stream",
        )
        .expect("valid metric");
        for metric in [
            Box::new(tagged_writes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(invalidations.clone()),
            Box::new(keys_invalidated.clone()),
            Box::new(index_keys.clone()),
            Box::new(policy_calls.clone()),
            Box::new(policy_errors.clone()),
            Box::new(policy_duration.clone()),
            Box::new(events.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(dead_letters.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Metrics {
            registry,
            tagged_writes,
            invalidations,
            keys_invalidated,
            index_keys,
            policy_calls,
            policy_errors,
            policy_duration,
            events,
            policy_reloads,
            dead_letters,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
