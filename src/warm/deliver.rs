//! Sending one warm request, once: an HTTP call to the application, or an XADD to a stream.
//! Retries, timeouts and the concurrency cap are the worker's (`worker.rs`).
//!
//! HTTP goes through hyper-util's client: it follows no redirects, reads no proxy settings
//! from the environment, and connects only to the authority of the URI it is given, which the
//! template fixes (values are percent-encoded, everything but RFC 3986's unreserved
//! characters, `.` included; the rendered URI's authority is checked against the configured
//! one before use: `crate::config::warm`). Stream warmers XADD on the control client.

use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientLike;
use fred::types::Value;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::WarmRequest;
use crate::config::warm::{HttpMethod, Target, UrlTemplate};

/// An application's answer body is read (so the connection can be reused) up to this much.
const BODY_LIMIT: usize = 64 * 1024;

/// Why an attempt failed, and whether another may succeed.
#[derive(Debug)]
pub(super) enum Failure {
    Retry(String),
    Permanent(String),
}

/// Where one warmer's requests go.
pub(super) enum Sender {
    /// hyper's client follows no redirects, and only ever connects to the authority of the
    /// URI it is given, which [`UrlTemplate::render`] pins to the configured one.
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
        url: Box<UrlTemplate>,
        method: HttpMethod,
    },
    Stream {
        control: fred::clients::Client,
        key: String,
        max_len: u64,
    },
}

impl Sender {
    pub(super) fn new(target: &Target, control: &fred::clients::Client, timeout: Duration) -> Self {
        match target {
            Target::Http { url, method } => {
                let mut connector = HttpConnector::new();
                connector.enforce_http(true);
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(timeout));
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector);
                Sender::Http {
                    client,
                    url: Box::new(url.clone()),
                    method: *method,
                }
            }
            Target::Stream { key, max_len } => Sender::Stream {
                control: control.clone(),
                key: key.clone(),
                max_len: *max_len,
            },
        }
    }

    /// One attempt.
    pub(super) async fn send(&self, request: &WarmRequest) -> Result<(), Failure> {
        match self {
            Sender::Http {
                client,
                url,
                method,
            } => {
                let uri = url.render(&request.params).map_err(Failure::Permanent)?;
                let builder = hyper::Request::builder()
                    .uri(uri)
                    .header(USER_AGENT, concat!("cachet/", env!("CARGO_PKG_VERSION")));
                let http_request = match method {
                    HttpMethod::Get => builder.method(hyper::Method::GET).body(Full::default()),
                    HttpMethod::Post => builder
                        .method(hyper::Method::POST)
                        .header(CONTENT_TYPE, "application/json")
                        .body(Full::new(json_body(request))),
                }
                .map_err(|e| Failure::Permanent(e.to_string()))?;
                let response = client
                    .request(http_request)
                    .await
                    .map_err(|e| Failure::Retry(chain(&e)))?;
                let status = response.status();
                let _ = Limited::new(response.into_body(), BODY_LIMIT)
                    .collect()
                    .await;
                match status.as_u16() {
                    200..=299 => Ok(()),
                    300..=399 => Err(Failure::Permanent(format!(
                        "answered {status}; redirects are not followed"
                    ))),
                    408 | 429 | 500..=599 => Err(Failure::Retry(format!("answered {status}"))),
                    _ => Err(Failure::Permanent(format!("answered {status}"))),
                }
            }
            Sender::Stream {
                control,
                key,
                max_len,
            } => {
                let text = |s: &str| Value::Bytes(Bytes::copy_from_slice(s.as_bytes()));
                let mut args = vec![
                    text(key),
                    text("MAXLEN"),
                    text("~"),
                    Value::Integer(*max_len as i64),
                    text("*"),
                    text("warmer"),
                    text(&request.warmer),
                ];
                if let Some(k) = &request.key {
                    args.extend([text("key"), Value::Bytes(k.clone())]);
                }
                args.extend([
                    text("params"),
                    Value::Bytes(params_json(request).to_string().into()),
                    text("event"),
                    text(&request.event),
                    text("reason"),
                    text(&request.reason),
                ]);
                let added: Result<Value, _> = control.custom(fred::cmd!("XADD"), args).await;
                added.map(drop).map_err(|e| match e.kind() {
                    fred::error::ErrorKind::IO
                    | fred::error::ErrorKind::Timeout
                    | fred::error::ErrorKind::Canceled => Failure::Retry(e.to_string()),
                    // WRONGTYPE and friends: the key is not a stream, and will not become one.
                    _ => Failure::Permanent(e.to_string()),
                })
            }
        }
    }
}

fn params_json(request: &WarmRequest) -> serde_json::Value {
    let mut params = serde_json::Map::new();
    for (name, value) in &request.params {
        params
            .entry(name.clone())
            .or_insert_with(|| value.clone().into());
    }
    params.into()
}

/// The POST body: the request as JSON. A key that is not UTF-8 goes as `key_hex`.
fn json_body(request: &WarmRequest) -> Bytes {
    let mut body = serde_json::json!({
        "warmer": request.warmer,
        "params": params_json(request),
        "event": request.event,
        "reason": request.reason,
    });
    if let Some(key) = &request.key {
        let (field, value) = match std::str::from_utf8(key) {
            Ok(text) => ("key", text.to_owned()),
            Err(_) => ("key_hex", key.iter().map(|b| format!("{b:02x}")).collect()),
        };
        body[field] = value.into();
    }
    Bytes::from(body.to_string())
}

/// An error and its causes, on one line (hyper's own message is just "client error").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_bodies_carry_the_request_and_binary_keys_as_hex() {
        let mut request = WarmRequest {
            warmer: "w".into(),
            params: vec![("teacherId".into(), "7".into())],
            key: Some(Bytes::from_static(b"sessions:teacher:7")),
            event: "session.created".into(),
            reason: "sessions".into(),
        };
        let body: serde_json::Value = serde_json::from_slice(&json_body(&request)).unwrap();
        assert_eq!(body["params"]["teacherId"], "7");
        assert_eq!(body["key"], "sessions:teacher:7");
        assert_eq!(body["event"], "session.created");
        request.key = Some(Bytes::from_static(b"\xff\x00k"));
        let body: serde_json::Value = serde_json::from_slice(&json_body(&request)).unwrap();
        assert_eq!(body["key_hex"], "ff006b");
        assert!(body.get("key").is_none());
    }
}
