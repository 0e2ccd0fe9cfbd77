//! Configuration: a TOML file parsed with serde, then environment overrides, then CLI flags.
//!
//! Every section rejects unknown keys, and every value that can be wrong is checked while it is
//! deserialized, so that a mistake is reported by `toml` with its line and column. Secrets print
//! masked (`Secret`'s `Debug` and `Display`), so a config can be logged whole.
//!
//! Precedence, lowest first: built-in defaults, the file, the environment variables of the
//! original system (`REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`) plus `CACHET_LISTEN`, then the
//! command line.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Redis's own `proto-max-bulk-len` default.
const DEFAULT_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// Redis accepts multibulk lengths up to `INT_MAX`.
const DEFAULT_MAX_ARRAY_LEN: u64 = i32::MAX as u64;
/// Redis's own `client-query-buffer-limit` default.
const DEFAULT_MAX_QUERY_BUFFER: u64 = 1024 * 1024 * 1024;

/// The whole configuration of one cachet process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
}

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
    /// Most replies one client may have outstanding before cachet stops reading from it.
    pub max_pipeline: NonZeroUsize,
    /// How long shutdown waits for in-flight replies before closing connections anyway.
    pub shutdown_grace_ms: u64,
    /// Worker threads (0 = one per core). One thread is the default: measured on a 2-core
    /// machine shared with Redis it costs a third less CPU per command than two (no
    /// cross-thread wake-ups); raise it where cores are to spare.
    pub threads: usize,
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
            max_pipeline: NonZeroUsize::new(16_384).expect("non-zero"),
            shutdown_grace_ms: 10_000,
            threads: 1,
        }
    }
}

/// `[upstream]`: the Redis server cachet forwards to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `redis://[user[:password]@]host[:port][/db]`.
    pub url: RedisUrl,
    /// Password for the pool's connections; overrides one given in `url`.
    pub password: Option<Secret>,
    /// Pipelined connections per protocol version (RESP2, RESP3) shared by all clients.
    pub pool_size: NonZeroUsize,
    /// Idle dedicated connections kept for clients that need one briefly (MULTI, BLPOP, ...).
    pub spare_connections: usize,
    pub connect_timeout_ms: u64,
    /// A pooled command with no reply after this long fails the connection: every command
    /// in flight on it gets `-ERR upstream timeout` and cachet reconnects (0 = no limit).
    pub command_timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: RedisUrl::parse("redis://127.0.0.1:6379").expect("default url"),
            password: None,
            pool_size: NonZeroUsize::new(2).expect("non-zero"),
            spare_connections: 8,
            connect_timeout_ms: 1_000,
            command_timeout_ms: 5_000,
        }
    }
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn command_timeout(&self) -> Option<Duration> {
        (self.command_timeout_ms > 0).then(|| Duration::from_millis(self.command_timeout_ms))
    }

    /// The credentials the pool authenticates with: `password` wins over the URL's.
    pub fn credentials(&self) -> Option<(String, Secret)> {
        let password = self
            .password
            .clone()
            .or_else(|| self.url.password.clone())?;
        let user = self
            .url
            .username
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        Some((user, password))
    }
}

/// A value that must never be printed: `Debug` and `Display` show `****`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// A parsed `redis://` URL. Only plain TCP is supported for now (`rediss://` is refused).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
}

impl RedisUrl {
    pub fn parse(input: &str) -> Result<Self, String> {
        let url =
            url::Url::parse(input).map_err(|e| format!("invalid upstream url {input:?}: {e}"))?;
        if url.scheme() != "redis" {
            return Err(format!(
                "unsupported upstream url scheme {:?} (expected redis://)",
                url.scheme()
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("upstream url {input:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(|p| Secret(decode(p)));
        let path = url.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| format!("upstream url {input:?}: database {path:?} is not a number"))?
        };
        Ok(RedisUrl {
            host,
            port: url.port().unwrap_or(6379),
            username,
            password,
            db,
        })
    }

    /// `host:port`, with IPv6 hosts bracketed.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:****@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => f.write_str(":****@")?,
            (None, None) => {}
        }
        write!(f, "{}", self.address())?;
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        RedisUrl::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Where a configuration problem was found; `Display` gives a message fit for a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
}

impl Config {
    /// Parses a TOML document; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Applies `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD` and `CACHET_LISTEN` from `env`
    /// (a lookup function, so tests need not touch the process environment).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(host) = env("REDIS_HOST").filter(|h| !h.is_empty()) {
            self.upstream.url.host = host;
        }
        if let Some(port) = env("REDIS_PORT").filter(|p| !p.is_empty()) {
            self.upstream.url.port = port.parse().map_err(|_| ConfigError::Env {
                name: "REDIS_PORT",
                message: format!("{port:?} is not a port number"),
            })?;
        }
        if let Some(password) = env("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
            self.upstream.password = Some(Secret(password));
        }
        if let Some(listen) = env("CACHET_LISTEN").filter(|l| !l.is_empty()) {
            self.proxy.listen = listen.parse().map_err(|_| ConfigError::Env {
                name: "CACHET_LISTEN",
                message: format!("{listen:?} is not an address like 127.0.0.1:6380"),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.proxy.listen.to_string(), "127.0.0.1:6380");
        assert_eq!(config.upstream.url.address(), "127.0.0.1:6379");
        assert_eq!(config.proxy.max_bulk_len, 512 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line_number() {
        let err = Config::from_toml("[proxy]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn bad_values_are_reported_where_they_are() {
        let err = Config::from_toml("[upstream]\n\nurl = \"http://x\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("scheme"), "{err}");
        let err = Config::from_toml("[upstream]\npool_size = 0\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let mut config =
            Config::from_toml("[upstream]\nurl = \"redis://app:hunter2@db:6390/2\"\n", "x")
                .unwrap();
        config
            .apply_env(|name| (name == "REDIS_PASSWORD").then(|| "s3cret".to_owned()))
            .unwrap();
        let printed = format!("{config:?} {}", config.upstream.url);
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        let (user, password) = config.upstream.credentials().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("app", "s3cret"));
        assert_eq!(config.upstream.url.db, 2);
    }

    #[test]
    fn env_overrides_the_file() {
        let mut config = Config::from_toml("[upstream]\nurl = \"redis://a:1\"\n", "x").unwrap();
        config
            .apply_env(|name| match name {
                "REDIS_HOST" => Some("b".into()),
                "REDIS_PORT" => Some("2".into()),
                "CACHET_LISTEN" => Some("0.0.0.0:7000".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.upstream.url.address(), "b:2");
        assert_eq!(config.proxy.listen.to_string(), "0.0.0.0:7000");
        let err = config
            .apply_env(|name| (name == "REDIS_PORT").then(|| "http".into()))
            .unwrap_err();
        assert!(err.to_string().contains("REDIS_PORT"));
    }
}
