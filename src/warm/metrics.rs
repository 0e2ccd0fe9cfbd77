//! The warming metrics, registered into cachet's registry (`crate::metrics::Metrics`). Label
//! values are warmer names from the config and a fixed set of outcomes.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use prometheus::{Opts, Registry};

/// The families, shared by all warmers.
pub struct WarmMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    depth: IntGaugeVec,
}

/// One warmer's series, resolved once so counting is a plain atomic add.
pub struct WarmerMetrics {
    pub queued: IntCounter,
    pub deduplicated: IntCounter,
    pub cold: IntCounter,
    pub refused: IntCounter,
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub latency: prometheus::Histogram,
    pub depth: IntGauge,
}

impl WarmMetrics {
    /// The families, registered into `registry`.
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "cachet_warm_requests_total",
                "Warm requests by warmer and outcome (queued, deduplicated, cold, refused at \
                 submit; sent, failed after delivery)",
            ),
            &["warmer", "outcome"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "cachet_warm_latency_seconds",
                "Time from a warm request's send to its last attempt's end, retries included",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["warmer"],
        )
        .expect("valid metric");
        let depth = IntGaugeVec::new(
            Opts::new(
                "cachet_warm_queue_depth",
                "Warm requests waiting (their delay, or a free sender), by warmer",
            ),
            &["warmer"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(depth.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        WarmMetrics {
            requests,
            latency,
            depth,
        }
    }

    pub fn warmer(&self, name: &str) -> WarmerMetrics {
        let outcome = |o: &str| self.requests.with_label_values(&[name, o]);
        WarmerMetrics {
            queued: outcome("queued"),
            deduplicated: outcome("deduplicated"),
            cold: outcome("cold"),
            refused: outcome("refused"),
            sent: outcome("sent"),
            failed: outcome("failed"),
            latency: self.latency.with_label_values(&[name]),
            depth: self.depth.with_label_values(&[name]),
        }
    }
}
