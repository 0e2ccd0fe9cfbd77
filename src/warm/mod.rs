//! Warming: asking the application to recompute what was just invalidated.
//!
//! Policies (and the `WARM` command) hand [`WarmRequest`]s to [`Warming::submit`]; the
//! `[warmers.*]` config says where each warmer sends them (an HTTP endpoint of the
//! application, or a Redis Stream for workers). [`Heat`] counts reads of rule-matched keys so
//! a warmer can skip keys nobody reads.
//!
//! This file fixes the interface the policy host uses; the warmers themselves land with the
//! warming issue. Until then no warmer is configured and every request is refused by name.

use bytes::Bytes;

/// One request to warm, as a policy's `warm` action or a `WARM` command made it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WarmRequest {
    /// The `[warmers.<name>]` entry to use.
    pub warmer: String,
    /// Values for the warmer's `{placeholders}`, in the order given.
    pub params: Vec<(String, String)>,
    /// The key to warm, when the request is about one key.
    pub key: Option<Bytes>,
    /// The event that caused it (for the stream entry and the log).
    pub event: String,
    /// Why: the policy's name, or `WARM` for an operator's command.
    pub reason: String,
}

/// What became of a submitted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued; it is sent after the warmer's delay.
    Queued,
    /// An identical request is already waiting inside the de-duplication window.
    Deduplicated,
    /// The key was read less often than the warmer's heat threshold.
    Cold,
    /// Not queued, and why (unknown warmer, missing parameter, queue full).
    Refused(String),
}

/// The warmers configured, and their queues.
#[derive(Default)]
pub struct Warming {}

impl Warming {
    /// Queues `request` with its warmer. Never blocks and never waits for the warmer.
    pub fn submit(&self, request: WarmRequest) -> Submitted {
        Submitted::Refused(format!("no warmer named '{}'", request.warmer))
    }
}

/// Read counts of rule-matched keys, in bounded memory.
#[derive(Default)]
pub struct Heat {}

impl Heat {
    /// Counts one read of `key`.
    pub fn record(&self, _key: &[u8]) {}

    /// How often `key` was read in the recent window (an estimate; 0 when unknown).
    pub fn estimate(&self, _key: &[u8]) -> u32 {
        0
    }
}
