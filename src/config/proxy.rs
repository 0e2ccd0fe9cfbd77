//! `[proxy]`: the client-facing side: where cachet listens, how many clients it takes, and the
//! limits (Redis's own, by default) on what one client may send and be owed.

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use serde::Deserialize;

/// Redis's own `proto-max-bulk-len` default.
const DEFAULT_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// Redis accepts multibulk lengths up to `INT_MAX`.
const DEFAULT_MAX_ARRAY_LEN: u64 = i32::MAX as u64;
/// Redis's own `client-query-buffer-limit` default.
const DEFAULT_MAX_QUERY_BUFFER: u64 = 1024 * 1024 * 1024;

/// `[proxy]`: the client-facing side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address the RESP listener binds.
    pub listen: SocketAddr,
    /// Connections beyond this are told `-ERR max number of clients reached` and closed.
    pub max_clients: usize,
    /// Close a client idle this long (seconds; 0 = never), like Redis's `timeout`. Clients
    /// that are subscribed, monitoring or blocked are never idle.
    pub client_idle_timeout_secs: u64,
    /// Largest bulk string a client may send, in bytes (Redis's `proto-max-bulk-len`).
    pub max_bulk_len: u64,
    /// Most arguments one command may have.
    pub max_array_len: u64,
    /// Most bytes of not-yet-complete input buffered for one client (Redis's
    /// `client-query-buffer-limit`).
    pub max_query_buffer: u64,
    /// Most bytes of not-yet-complete input buffered for all clients together. A client
    /// whose unfinished request (over 64 KiB) would pass it is told so and closed.
    pub max_query_buffer_total: u64,
    /// Most replies one client may have outstanding before cachet stops reading from it.
    pub max_pipeline: NonZeroUsize,
    /// Bytes of replies a client may owe (unwritten, plus an estimate of those in flight)
    /// before cachet sends no more of its commands until it reads.
    pub client_reply_budget: u64,
    /// Bytes of replies a client may owe before it is disconnected, like Redis's
    /// `client-output-buffer-limit` (replies still coming for it are dropped).
    pub client_reply_limit: u64,
    /// Bytes of replies all clients together may owe; past it, clients owing more than
    /// `client_reply_budget` are disconnected.
    pub reply_buffer_limit: u64,
    /// How long shutdown waits for in-flight replies before closing connections anyway.
    pub shutdown_grace_ms: u64,
    /// Worker threads (0 = one per core, the default). One per core keeps one client's
    /// large command (a 21 MB command split into 3 million arguments) or a storm of
    /// connections (5,000 opening at once) from stalling the others, at the price of
    /// more CPU per request and less throughput at pipeline depth 1 where cores are shared;
    /// both are measured in BENCHMARKS.md, "Hostile clients" (bench/hostile.sh). Set 1 where
    /// cores are shared and throughput matters more than that isolation.
    pub threads: usize,
    /// `[proxy.tls]`: a TLS listener beside the plain one.
    pub tls: Option<super::ProxyTlsConfig>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6380)),
            max_clients: 10_000,
            client_idle_timeout_secs: 0,
            max_bulk_len: DEFAULT_MAX_BULK_LEN,
            max_array_len: DEFAULT_MAX_ARRAY_LEN,
            max_query_buffer: DEFAULT_MAX_QUERY_BUFFER,
            max_query_buffer_total: DEFAULT_MAX_QUERY_BUFFER,
            max_pipeline: NonZeroUsize::new(16_384).expect("non-zero"),
            client_reply_budget: 1 << 20,
            client_reply_limit: 64 << 20,
            reply_buffer_limit: 256 << 20,
            shutdown_grace_ms: 10_000,
            threads: 0,
            tls: None,
        }
    }
}
