//! Every metric cachet keeps, with its name and labels, in one place. Label values are
//! bounded sets (rule names from the config), never keys or tags.
//!
//! The registry is served by the health endpoint (a later issue); until then the counters
//! are kept here and logged.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
        for metric in [
            Box::new(tagged_writes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(invalidations.clone()),
            Box::new(keys_invalidated.clone()),
            Box::new(index_keys.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        Metrics {
            registry,
            tagged_writes,
            invalidations,
            keys_invalidated,
            index_keys,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
