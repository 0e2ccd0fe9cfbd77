//! cachet: a caching proxy for Redis.
//!
//! Applications keep their Redis clients and point them at cachet. It speaks RESP2 and RESP3,
//! forwards every command to Redis, and (as later modules land) adds tags and TTL classes on
//! writes, tag invalidation, WebAssembly policies and a health endpoint.
//!
//! # Module map
//!
//! * [`config`]: the TOML configuration, environment overrides, validation.
//! * [`net`]: socket reads without the extra `WouldBlock` syscall.
//! * [`resp`]: frames on the wire (requests, replies, locally built replies) and the command
//!   table learned from Redis.
//! * [`server`]: the accept loop, client limits, graceful shutdown.
//! * [`session`]: one client connection and the phases each command goes through.
//! * [`tags`]: `[[rules]]` and TTL classes: which keys get which tags and TTL.
//! * [`upstream`]: connections to Redis: the shared pipelined pool, dedicated connections for
//!   clients with their own state, and the control client.
//!
//! # Request flow
//!
//! ```text
//! client ──▶ session: parse ─▶ classify ─┬─▶ local reply (CLIENT ID, AUTH, RESET, ...)
//!                                         ├─▶ batch ─▶ pool connection ─▶ Redis
//!                                         └─▶ dedicated connection ─────▶ Redis
//! client ◀── session: replies in command order ◀───────────────────────────┘
//! ```

pub mod config;
pub mod net;
pub mod resp;
pub mod server;
pub mod session;
pub mod tags;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs cachet on `listener` until `shutdown` completes, then finishes in-flight replies and
/// returns. Tests bind `127.0.0.1:0` and pass the listener in.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = resp::Limits {
        max_bulk_len: config.proxy.max_bulk_len,
        max_array_len: config.proxy.max_array_len,
        max_query_buffer: config.proxy.max_query_buffer,
    };
    let upstream = upstream::Upstream::start(config.upstream.clone())?;
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %config.upstream.url,
        "cachet serving"
    );
    let shared = Arc::new(server::Shared {
        config,
        limits,
        upstream,
        clients: server::ClientRegistry::default(),
    });
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    server::serve(shared, listener, token).await;
    Ok(())
}
