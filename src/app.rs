//! The composition root: turns a [`Config`] into running services and wires them together.
//!
//! Everything cachet builds at start is built here, once, and each subsystem is handed only
//! what it uses. That starts with [`validate`]: the rules it compiles to check a config are the
//! rules cachet serves with.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Problem};
use crate::{
    Config, admin, events, health, metrics, policy, resp, server, session, tags, upstream, warm,
};

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
    let listeners = Listeners {
        resp: listener,
        tls: None,
        admin,
    };
    run_validated(validate(config)?, listeners, shutdown).await
}

/// The sockets cachet serves on, bound by the caller.
pub struct Listeners {
    /// Plain RESP clients (`[proxy] listen`).
    pub resp: TcpListener,
    /// TLS clients. When `None` and `[proxy.tls]` is set, cachet binds `[proxy.tls] listen`
    /// itself.
    pub tls: Option<TcpListener>,
    /// The admin HTTP endpoint (`crate::admin`), if any.
    pub admin: Option<TcpListener>,
}

/// [`run_with_admin`] for a config [`validate`] has already checked (the binary's, checked
/// after the environment and the command line had their say), on `listeners`.
pub async fn run_validated(
    validated: Validated,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        resp: listener,
        tls: tls_listener,
        admin,
    } = listeners;
    let Validated { config, rules } = validated;
    // Certificates first: a TLS listener cachet cannot serve fails the start, as a bad config.
    let tls = match &config.proxy.tls {
        None => None,
        Some(settings) => {
            let files = crate::net::tls::ServerFiles {
                cert: settings.cert.clone(),
                key: settings.key.clone(),
                client_ca: settings.client_ca.clone(),
                tls13_only: settings.min_version == crate::config::TlsVersion::Tls13,
            };
            let reloadable = crate::net::tls::Reloadable::load(files)
                .map_err(|e| anyhow::anyhow!("[proxy.tls]: {e}"))?;
            let listener = match tls_listener {
                Some(listener) => listener,
                None => TcpListener::bind(settings.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("TLS listener on {}: {e}", settings.listen))?,
            };
            tracing::info!(
                listen = %listener.local_addr()?,
                mutual = settings.client_ca.is_some(),
                "cachet serving TLS"
            );
            Some((
                server::TlsListener {
                    listener,
                    config: Arc::new(reloadable),
                    handshake_timeout: std::time::Duration::from_millis(
                        settings.handshake_timeout_ms,
                    ),
                },
                std::time::Duration::from_millis(settings.reload_check_ms),
            ))
        }
    };
    let limits = resp::Limits {
        max_bulk_len: config.proxy.max_bulk_len,
        max_array_len: config.proxy.max_array_len,
        max_query_buffer: config.proxy.max_query_buffer,
    };
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
            .with_rules(rules.clone())
            .cluster(config.upstream.is_cluster());
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
        .and_then(|()| {
            metrics
                .registry
                .register(Box::new(upstream.acl().checks.clone()))
        })
        .and_then(|()| {
            metrics
                .registry
                .register(Box::new(upstream.master_moves.clone()))
        })
        .map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let heat = warm::Heat::new(&config.heat);
    let warming = warm::Warming::new(&config.warmers, heat.clone(), &metrics.registry);
    let request_buffers = resp::request::RequestBuffers::new(config.proxy.max_query_buffer_total);
    let metrics = Arc::new(metrics);
    let warming = Arc::new(warming);
    let index = Arc::new(index);
    let health = Arc::new(health::Health::new(
        config.health.clone(),
        upstream.clone(),
        metrics.clone(),
        rules.len(),
    ));
    let events = Arc::new(events::Events {
        config: config.events.clone(),
        policies: Arc::new(policies),
        index: index.clone(),
        upstream: upstream.clone(),
        warming: warming.clone(),
        heat: heat.clone(),
        metrics: metrics.clone(),
    });
    let clients = session::ClientRegistry::new(metrics.clients.clone());
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    tokio::spawn({
        let (index, upstream) = (index.clone(), upstream.clone());
        let swept = metrics.index_keys.clone();
        let shutdown = token.clone();
        async move {
            index
                .sweep(move || upstream.is_ready(), swept, shutdown)
                .await
        }
    });
    warming.start(upstream.control(), token.clone());
    tokio::spawn(events::watch(events.clone(), token.clone()));
    tokio::spawn(health::monitor(health.clone(), token.clone()));
    if let Some(listener) = admin {
        let admin = Arc::new(admin::Admin {
            token: config.admin.token.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            upstream: upstream.clone(),
        });
        tokio::spawn(admin::serve(admin, listener, token.clone()));
    }
    let services = Arc::new(session::Services {
        proxy: config.proxy,
        ttl: config.ttl,
        limits,
        request_buffers,
        rules,
        index,
        metrics,
        upstream,
        clients,
        warming,
        heat,
        events,
        health,
        acl: config.acl,
    });
    let tls = tls.map(|(tls, check)| {
        tokio::spawn(tls.config.clone().watch(check, token.clone()));
        tls
    });
    server::serve(services, listener, tls, token).await;
    Ok(())
}

/// A config that passed every check, with what checking it built.
#[derive(Debug)]
pub struct Validated {
    pub config: Config,
    /// `[[rules]]` compiled against `[ttl]`.
    pub rules: tags::Rules,
}

/// Checks what parsing cannot, each once: compiles `[[rules]]` against `[ttl]`, and checks
/// `[[policies]]` and `[events]` as a whole. Every problem of both is reported together; rule
/// problems are placed in the text the config was parsed from (line, column, excerpt), as
/// `check-config` prints them.
pub fn validate(config: Config) -> Result<Validated, ConfigError> {
    let rules = tags::Rules::compile(&config.ttl, &config.rules).map_err(|errors| {
        config.invalid_rules(
            errors
                .into_iter()
                .map(|e| Problem {
                    span: e.span,
                    within: e.within,
                    message: e.message,
                    notes: e.notes,
                })
                .collect(),
        )
    });
    match (rules, config.check_policies()) {
        (Ok(rules), Ok(())) => Ok(Validated { config, rules }),
        (Err(error), Ok(())) | (Ok(_), Err(error)) => Err(error),
        (Err(rules), Err(policies)) => Err(ConfigError::Several(vec![rules, policies])),
    }
}

/// Parses a TOML document, then [`validate`]s it; `origin` names it in error messages.
pub fn load_toml(text: &str, origin: &str) -> Result<Validated, ConfigError> {
    validate(Config::from_toml(text, origin)?)
}

/// Reads and parses a file, then [`validate`]s it (no environment overrides: `check-config`).
pub fn load_file(path: &Path) -> Result<Validated, ConfigError> {
    validate(Config::from_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule error, with the line and column `check-config` prints for it.
    fn rule_errors(text: &str) -> Vec<(usize, usize, String)> {
        match load_toml(text, "x.toml") {
            Err(ConfigError::Invalid { errors, .. }) => errors
                .into_iter()
                .map(|e| (e.line, e.column, e.message))
                .collect(),
            other => panic!("expected rule errors, got {other:?}"),
        }
    }

    #[test]
    fn rule_errors_point_into_the_file_and_are_all_reported() {
        let text = "[ttl]\n\
                    short = 5\n\
                    \n\
                    [[rules]]\n\
                    pattern = 'a:{x'\n\
                    \n\
                    [[rules]]\n\
                    pattern = \"b:{id}\"\n\
                    tags = [\"b\", \"b:{ID}\"]\n\
                    ttl = \"long\"\n\
                    [[rules]]\n\
                    pattern = \"c:{}\"\n\
                    [[rules]]\n\
                    pattern = \"\\\\\\\\d:{a}{a}\"\n";
        let errors = rule_errors(text);
        let places: Vec<(usize, usize)> = errors.iter().map(|e| (e.0, e.1)).collect();
        // Plain strings point at the offending characters; one with an escape (`\\`) cannot
        // be mapped character by character, so it points at the value.
        assert_eq!(
            places,
            [(5, 14), (9, 17), (10, 7), (12, 14), (14, 11)],
            "{errors:#?}"
        );
        assert!(errors[0].2.contains("unclosed `{`"));
        assert!(errors[1].2.contains("uses capture `{ID}`"));
        assert!(errors[2].2.contains("unknown TTL class \"long\""));
        assert!(errors[3].2.contains("empty capture name"));
        assert!(errors[4].2.contains("duplicate capture name `{a}`"));

        let shown = load_toml(text, "x.toml").unwrap_err().to_string();
        assert!(
            shown.contains(
                "x.toml: error at line 10, column 7\n   |\n10 | ttl = \"long\"\n   |       ^^^^^^\n\
                 unknown TTL class"
            ),
            "{shown}"
        );
        assert_eq!(shown.matches("x.toml: error at line").count(), 5, "{shown}");
    }

    #[test]
    fn shadowing_names_both_rules_and_ambiguity_gives_a_key() {
        let text = "[[rules]]\n\
                    pattern = \"session:*\"\n\
                    [[rules]]\n\
                    pattern = \"session:{id}\"\n\
                    [[rules]]\n\
                    pattern = \"x:{a}-{b}\"\n";
        let errors = rule_errors(text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!((errors[0].0, errors[0].1), (4, 11));
        assert!(errors[0].2.contains("can never match"), "{errors:#?}");
        assert_eq!((errors[1].0, errors[1].1), (6, 11));
        assert!(
            errors[1].2.contains("is ambiguous: the key \"x:"),
            "{errors:#?}"
        );
        let shown = load_toml(text, "x.toml").unwrap_err().to_string();
        assert!(
            shown.contains("note: line 2, column 11: the earlier rule `session:*`"),
            "{shown}"
        );
    }
}
