//! The admin HTTP listener (axum): `/health`, `/metrics`, `/live`, `/ready`, the dashboard at
//! `/` and the history it draws, `/api/history`.
//!
//! [`router`] builds the whole thing from an [`Admin`] handle; tests call it directly (or
//! `cachet::run_with_admin` with a listener bound to port 0), and [`serve`] runs it on a
//! listener of its own, apart from the RESP port. `/live` is the process; `/ready` is the
//! command table loaded and a pooled connection up. With `[admin] token`
//! set, every data route wants `Authorization: Bearer <token>`; `/live` never does (a process
//! check carries no data), nor does the dashboard page itself, a static file that holds no
//! figures: it reads the token from the URL fragment (`/#token=...`, never sent to a server)
//! and sends it with each poll.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus::Encoder;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::health::{self, Health, Overall};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The dashboard: one self-contained page, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the admin routes read: nothing else of cachet reaches them.
pub struct Admin {
    /// `[admin] token`: the bearer token data routes want, if any.
    pub token: Option<Secret>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub upstream: Arc<Upstream>,
}

/// The admin routes over `admin`.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/health", get(health_json))
        .route("/metrics", get(metrics))
        .route("/api/history", get(history))
        .with_state(admin)
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: CancellationToken) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(listen = %addr, "admin HTTP listening"),
        Err(error) => tracing::info!(%error, "admin HTTP listening, address unknown"),
    }
    let served = axum::serve(listener, router(admin))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "admin HTTP listener stopped");
    }
}

/// `None` when the request may go on, else the 401 to send.
fn refuse(admin: &Admin, headers: &HeaderMap) -> Option<Response> {
    let token = admin.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response(),
    )
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn live() -> &'static str {
    "live\n"
}

/// Ready once the command table is loaded and a pooled connection to Redis is up.
async fn ready(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse(&admin, &headers) {
        return refusal;
    }
    if admin.upstream.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: upstream not reachable\n",
        )
            .into_response()
    }
}

/// The original system's health JSON; 503 when unhealthy.
async fn health_json(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse(&admin, &headers) {
        return refusal;
    }
    let report = health::report(&admin.health);
    let status = match report.overall {
        Overall::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (status, axum::Json(report.to_json(&admin.health))).into_response()
}

/// Every metric in the registry, Prometheus text format.
async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse(&admin, &headers) {
        return refusal;
    }
    let overall = health::report(&admin.health).overall;
    admin.metrics.health_overall.set(overall as i64);
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    if let Err(error) = encoder.encode(&admin.metrics.registry.gather(), &mut body) {
        return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        body,
    )
        .into_response()
}

/// `/api/history`'s query: `range` (seconds, default 900, at most a day) and `since` (ms:
/// only points newer than that, for a page that already has the rest).
#[derive(serde::Deserialize)]
struct HistoryQuery {
    range: Option<u64>,
    since: Option<u64>,
}

/// The server-side history the dashboard draws (`crate::health::history`): one point a second
/// for ranges up to an hour, one a minute up to a day, as columns; and `current`: `overall`
/// with its reasons, the thresholds and the judging window as `/health` gives them, and behind
/// Redis Cluster its node table (`nodes`).
async fn history(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(query): Query<HistoryQuery>,
) -> Response {
    if let Some(refusal) = refuse(&admin, &headers) {
        return refusal;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let range_ms = query.range.unwrap_or(900).saturating_mul(1000);
    let mut body = admin.health.history.series(now, range_ms, query.since);
    let report = health::report(&admin.health);
    // The page draws the thresholds on its charts and says what the window judged.
    let mut full = report.to_json(&admin.health);
    body["current"] = json!({
        "overall": report.overall,
        "reasons": report.reasons,
        "checkIntervalMs": admin.health.interval_ms(),
        "redisError": report.check.error,
        "uptimeMs": report.uptime_ms,
        "thresholds": full["data"]["cachet"]["thresholds"].take(),
        "window": full["data"]["health"]["cache"]["window"].take(),
        "memoryBasis": report.check.memory_basis,
        // Behind Redis Cluster, the node table; null for a single Redis.
        "nodes": full["data"]["health"]["redis"]["nodes"].take(),
    });
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::{HealthConfig, RedisUrl, UpstreamConfig};

    /// The routes over a Redis that was never reached: no live upstream is needed to build
    /// or test them.
    async fn serve_unreached(token: Option<&str>) -> std::net::SocketAddr {
        let config = UpstreamConfig {
            // Never connected: `Upstream::new` builds the clients without dialling.
            url: RedisUrl::parse("redis://127.0.0.1:1").unwrap(),
            ..UpstreamConfig::default()
        };
        let upstream = Upstream::new(config).unwrap();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(
            HealthConfig::default(),
            upstream.clone(),
            metrics.clone(),
            0,
        ));
        let admin = Arc::new(Admin {
            token: token.map(Secret::new),
            health,
            metrics,
            upstream,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(admin)).await });
        addr
    }

    async fn get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn the_routes_answer_without_a_live_upstream() {
        let addr = serve_unreached(None).await;
        let live = get(addr, "/live", None).await;
        assert!(live.starts_with("HTTP/1.1 200"), "{live}");
        let ready = get(addr, "/ready", None).await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        let health = get(addr, "/health", None).await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.contains(r#""overall":"unhealthy""#), "{health}");
        assert!(health.contains(r#""connected":false"#), "{health}");
        let metrics = get(addr, "/metrics", None).await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("cachet_clients_connected 0"), "{metrics}");
        // The dashboard's history says why, with the thresholds it draws.
        let history = get(addr, "/api/history?range=60", None).await;
        assert!(history.starts_with("HTTP/1.1 200"), "{history}");
        assert!(
            history.contains(r#""reasons":["Redis unreachable"#),
            "{history}"
        );
        assert!(
            history.contains(r#""hitRate":{"critical":60.0"#),
            "{history}"
        );
    }

    #[tokio::test]
    async fn a_token_guards_every_data_route_but_live() {
        let addr = serve_unreached(Some("s3cret")).await;
        for path in ["/health", "/metrics", "/ready", "/api/history"] {
            let refused = get(addr, path, None).await;
            assert!(refused.starts_with("HTTP/1.1 401"), "{path}: {refused}");
            let wrong = get(addr, path, Some("guess")).await;
            assert!(wrong.starts_with("HTTP/1.1 401"), "{path}: {wrong}");
            let allowed = get(addr, path, Some("s3cret")).await;
            assert!(!allowed.starts_with("HTTP/1.1 401"), "{path}: {allowed}");
        }
        assert!(get(addr, "/live", None).await.starts_with("HTTP/1.1 200"));
    }
}
