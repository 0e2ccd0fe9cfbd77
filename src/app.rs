//! The composition root: turns a [`Config`] into running services and wires them together.
//!
//! Everything cachet builds at start is built here, once, and each subsystem is handed only
//! what it uses.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Config, admin, events, health, metrics, policy, resp, server, tags, upstream, warm};

/// Walks the tag index now and then, removing entries of keys that vanished behind cachet's
/// back (evicted, deleted by a client that bypassed cachet). One SCAN page per step keeps
/// each step short; a full pass every `SWEEP_PAUSE`.
async fn sweep(shared: Arc<server::Shared>, shutdown: CancellationToken) {
    const SWEEP_PAGE: u64 = 200;
    const SWEEP_STEP: std::time::Duration = std::time::Duration::from_millis(100);
    const SWEEP_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);
    let mut cursor = 0;
    let mut seen = 0;
    loop {
        let pause = if cursor == 0 { SWEEP_PAUSE } else { SWEEP_STEP };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if !shared.upstream.is_ready() {
            continue;
        }
        match shared.index.sweep_step(cursor, SWEEP_PAGE).await {
            Ok((next, stats)) => {
                if stats.members_removed + stats.key_sets_removed + stats.drained > 0 {
                    tracing::info!(?stats, "tag index sweep removed entries of vanished keys");
                }
                seen += stats.scanned as i64;
                if next == 0 {
                    shared.metrics.index_keys.set(seen);
                    seen = 0;
                }
                cursor = next;
            }
            Err(error) => {
                tracing::debug!(%error, "tag index sweep step failed");
                cursor = 0;
                seen = 0;
            }
        }
    }
}

/// Runs cachet on `listener` until `shutdown` completes, then finishes in-flight replies and
/// returns. Tests bind `127.0.0.1:0` and pass the listener in. No admin HTTP listener: see
/// [`run_with_admin`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_admin(config, listener, None, shutdown).await
}

/// [`run`], plus the admin HTTP endpoint (`crate::admin`) on `admin` when given. The binary
/// binds `[admin] listen`; tests bind `127.0.0.1:0` and read the address back first.
pub async fn run_with_admin(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = resp::Limits {
        max_bulk_len: config.proxy.max_bulk_len,
        max_array_len: config.proxy.max_array_len,
        max_query_buffer: config.proxy.max_query_buffer,
    };
    // Compiled again here (from_file compiled them to validate) because CACHE_DEFAULT_TTL
    // may have changed the default class since.
    let rules = tags::Rules::compile(&config.ttl, &config.rules).map_err(|errors| {
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid rules: {}", messages.join("; "))
    })?;
    let policy_configs = config.policies.clone();
    let threads = config.events.threads;
    let policies =
        tokio::task::spawn_blocking(move || policy::Policies::load(&policy_configs, threads))
            .await?
            .map_err(|e| anyhow::anyhow!("policies: {e}"))?;
    let upstream = upstream::Upstream::new(config.upstream.clone())?;
    let rules = Arc::new(rules);
    let index =
        tags::index::TagIndex::new(upstream.control().clone(), tags::index::DEFAULT_PREFIX)?
            .with_rules(rules.clone());
    let library = index.clone();
    upstream.start(vec![upstream::SetupStep::new(
        "cachet's function library (tagged writes fail without it)",
        move || {
            let index = library.clone();
            async move { index.reload().await }
        },
    )]);
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %config.upstream.url,
        "cachet serving"
    );
    let metrics = metrics::Metrics::with_rules(config.rules.iter().map(|r| match &r.name {
        Some(name) => name.get_ref().as_str(),
        None => r.pattern.get_ref().as_str(),
    }));
    metrics
        .registry
        .register(Box::new(upstream.pool_reconnects.clone()))
        .map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let heat = warm::Heat::new(&config.heat);
    let warming = warm::Warming::new(&config.warmers, heat.clone(), &metrics.registry);
    let request_buffers = resp::request::RequestBuffers::new(config.proxy.max_query_buffer_total);
    let shared = Arc::new(server::Shared {
        config,
        limits,
        request_buffers,
        index,
        rules,
        metrics,
        upstream,
        clients: server::ClientRegistry::default(),
        warming,
        heat,
        policies: Arc::new(policies),
        health: health::Health::default(),
    });
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    tokio::spawn(sweep(shared.clone(), token.clone()));
    shared
        .warming
        .start(shared.upstream.control(), token.clone());
    tokio::spawn(events::watch(shared.clone(), token.clone()));
    tokio::spawn(health::monitor(shared.clone(), token.clone()));
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(shared.clone(), admin, token.clone()));
    }
    server::serve(shared, listener, token).await;
    Ok(())
}
