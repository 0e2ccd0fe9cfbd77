//! Configuration: a TOML file parsed with serde, then environment overrides, then CLI flags.
//!
//! Every section rejects unknown keys, and every value that can be wrong is checked while it is
//! deserialized, so that a mistake is reported by `toml` with its line and column. Secrets print
//! masked (`Secret`'s `Debug` and `Display`), so a config can be logged whole.
//!
//! `[ttl]` and `[[rules]]` need a second step: whether a rule's TTL class exists or its pattern
//! is shadowed by an earlier rule depends on other entries, so [`Config::from_toml`] parses, then
//! validates them with [`Rules::compile`]. Their fields are [`Spanned`], so those errors carry a
//! line and column too, and all of them are reported at once.
//!
//! Precedence, lowest first: built-in defaults, the file, the environment variables of the
//! original system (`REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `CACHE_DEFAULT_TTL`) plus
//! `CACHET_LISTEN`, then the command line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::tags::{RuleError, Rules};

/// Redis's own `proto-max-bulk-len` default.
const DEFAULT_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// Redis accepts multibulk lengths up to `INT_MAX`.
const DEFAULT_MAX_ARRAY_LEN: u64 = i32::MAX as u64;
/// Redis's own `client-query-buffer-limit` default.
const DEFAULT_MAX_QUERY_BUFFER: u64 = 1024 * 1024 * 1024;
/// The `default` TTL class when `[ttl]` does not set it: the original system's fallback.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// The longest TTL a class or rule may give (about 136 years), far inside what Redis's own
/// expiry arithmetic accepts, so a configured TTL can never make `SET ... EX` fail.
pub const MAX_TTL_SECS: u64 = u32::MAX as u64;

/// The whole configuration of one cachet process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
    pub ttl: TtlConfig,
    pub rules: Vec<RuleConfig>,
    /// `[warmers.NAME]`: where warm requests go (see [`crate::warm::config`]).
    pub warmers: BTreeMap<String, crate::warm::WarmerConfig>,
    /// `[heat]`: read counting for heat-aware warmers.
    pub heat: crate::warm::HeatConfig,
    pub policies: Vec<crate::policy::PolicyConfig>,
    pub events: crate::policy::EventsConfig,
    pub admin: crate::admin::AdminConfig,
    pub health: crate::health::HealthConfig,
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
            max_query_buffer_total: DEFAULT_MAX_QUERY_BUFFER,
            max_pipeline: NonZeroUsize::new(16_384).expect("non-zero"),
            client_reply_budget: 1 << 20,
            client_reply_limit: 64 << 20,
            reply_buffer_limit: 256 << 20,
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
            pool_size: NonZeroUsize::new(1).expect("non-zero"),
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

/// `[ttl]`: named TTL classes, in seconds. The class `default` always exists: it is
/// [`DEFAULT_TTL_SECS`] unless the file sets it, and `CACHE_DEFAULT_TTL` overrides it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct TtlConfig {
    classes: BTreeMap<String, TtlSecs>,
}

impl TtlConfig {
    /// The seconds of class `name`, if there is such a class.
    pub fn get(&self, name: &str) -> Option<u64> {
        match self.classes.get(name) {
            Some(secs) => Some(secs.0),
            None => (name == "default").then_some(DEFAULT_TTL_SECS),
        }
    }

    pub fn default_secs(&self) -> u64 {
        self.get("default").expect("`default` always exists")
    }

    /// Every class name, `default` included, in alphabetical order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let implicit = (!self.classes.contains_key("default")).then_some("default");
        let mut names: Vec<&str> = self
            .classes
            .keys()
            .map(String::as_str)
            .chain(implicit)
            .collect();
        names.sort_unstable();
        names.into_iter()
    }
}

/// A TTL in seconds, checked against [`MAX_TTL_SECS`] as it is read.
#[derive(Debug, Clone, Copy)]
struct TtlSecs(u64);

impl<'de> Deserialize<'de> for TtlSecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let secs = i64::deserialize(deserializer)?;
        ttl_secs(secs)
            .map(TtlSecs)
            .map_err(serde::de::Error::custom)
    }
}

fn ttl_secs(secs: i64) -> Result<u64, String> {
    u64::try_from(secs)
        .ok()
        .filter(|s| (1..=MAX_TTL_SECS).contains(s))
        .ok_or_else(|| format!("a TTL is from 1 to {MAX_TTL_SECS} seconds, not {secs}"))
}

/// One `[[rules]]` entry as written. [`Rules::compile`] checks the list and compiles it; the
/// fields keep their place in the file for its error messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A label for metrics and messages; the pattern when absent.
    pub name: Option<Spanned<String>>,
    /// Which keys: literal bytes, `{name}` captures one `:`-free segment, `*` any run
    /// (see [`crate::tags`]).
    pub pattern: Spanned<String>,
    /// Tag templates, filled from the pattern's captures.
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    /// The TTL of matching keys; the `default` class when absent.
    pub ttl: Option<Spanned<TtlRef>>,
}

/// A rule's `ttl`: a string names a class of `[ttl]`, an integer is seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlRef {
    Class(String),
    Seconds(u64),
}

impl<'de> Deserialize<'de> for TtlRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TtlRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TTL class name or a number of seconds")
            }

            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<TtlRef, E> {
                ttl_secs(secs).map(TtlRef::Seconds).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<TtlRef, E> {
                self.visit_i64(i64::try_from(secs).unwrap_or(i64::MAX))
            }

            fn visit_str<E: serde::de::Error>(self, class: &str) -> Result<TtlRef, E> {
                Ok(TtlRef::Class(class.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
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
    #[error("{}", Invalid::list(path, errors))]
    Invalid { path: String, errors: Vec<Invalid> },
    #[error("{path}: {}", errors.join("; "))]
    Policies { path: String, errors: Vec<String> },
}

/// A problem found after parsing, placed in the file like `toml` places its own errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending line with a caret under the offending text.
    excerpt: String,
    /// Other places that explain the problem, already located.
    pub notes: Vec<String>,
}

impl Invalid {
    fn locate(text: &str, error: &RuleError) -> Invalid {
        let span = narrow(text, error.span.clone(), error.within.clone());
        let (line, column) = line_column(text, span.start);
        let start = line_start(text, span.start);
        let line_text = text[start..].lines().next().unwrap_or("");
        let width = text[span.start..span.end.min(start + line_text.len())]
            .chars()
            .count()
            .max(1);
        let gutter = " ".repeat(line.to_string().len());
        let excerpt = format!(
            "{gutter} |\n{line} | {line_text}\n{gutter} | {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        let notes = error
            .notes
            .iter()
            .map(|(span, note)| {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}: {note}")
            })
            .collect();
        Invalid {
            line,
            column,
            message: error.message.clone(),
            excerpt,
            notes,
        }
    }

    fn list(path: &str, errors: &[Invalid]) -> String {
        let blocks: Vec<String> = errors.iter().map(|e| format!("{path}: {e}")).collect();
        blocks.join("\n")
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error at line {}, column {}\n{}\n{}",
            self.line, self.column, self.excerpt, self.message
        )?;
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

/// Narrows `span` (a string value in `text`) to the bytes `within` of the string, when the
/// value is written so that its bytes are the string's: a literal string, or a basic string
/// without escapes. Otherwise the whole value is the place.
fn narrow(text: &str, span: Range<usize>, within: Option<Range<usize>>) -> Range<usize> {
    let raw = &text[span.clone()];
    let plain = (raw.starts_with('\'') && !raw.starts_with("'''"))
        || (raw.starts_with('"') && !raw.starts_with("\"\"\"") && !raw.contains('\\'));
    match within {
        Some(within) if plain => {
            let start = span.start + 1 + within.start;
            // An empty range (an empty pattern) still gets one caret, on the closing quote.
            start..(span.start + 1 + within.end).max(start + 1)
        }
        _ => span,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let line = text[..offset].matches('\n').count() + 1;
    let column = text[line_start(text, offset)..offset].chars().count() + 1;
    (line, column)
}

/// The byte offset where the line holding `offset` starts.
fn line_start(text: &str, offset: usize) -> usize {
    text[..offset].rfind('\n').map_or(0, |n| n + 1)
}

impl Config {
    /// Parses a TOML document, then validates its rules; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })?;
        Rules::compile(&config.ttl, &config.rules).map_err(|errors| ConfigError::Invalid {
            path: origin.to_owned(),
            errors: errors.iter().map(|e| Invalid::locate(text, e)).collect(),
        })?;
        let errors = crate::policy::config::validate(&config.policies, &config.events);
        if !errors.is_empty() {
            return Err(ConfigError::Policies {
                path: origin.to_owned(),
                errors,
            });
        }
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Applies `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `CACHE_DEFAULT_TTL`,
    /// `CACHE_HEALTH_CHECK_INTERVAL`, `CACHET_LISTEN` and `CACHET_ADMIN_LISTEN` (empty: no admin
    /// listener) from `env` (a lookup function, so tests need not touch the process
    /// environment).
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
        if let Some(ttl) = env("CACHE_DEFAULT_TTL").filter(|t| !t.is_empty()) {
            let secs = ttl
                .parse::<i64>()
                .map_err(|_| format!("{ttl:?} is not a number of seconds"))
                .and_then(ttl_secs)
                .map_err(|message| ConfigError::Env {
                    name: "CACHE_DEFAULT_TTL",
                    message,
                })?;
            self.ttl.classes.insert("default".to_owned(), TtlSecs(secs));
        }
        if let Some(interval) = env("CACHE_HEALTH_CHECK_INTERVAL").filter(|i| !i.is_empty()) {
            self.health.interval_ms = interval
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| ConfigError::Env {
                    name: "CACHE_HEALTH_CHECK_INTERVAL",
                    message: format!("{interval:?} is not a positive number of milliseconds"),
                })?;
        }
        if let Some(listen) = env("CACHET_LISTEN").filter(|l| !l.is_empty()) {
            self.proxy.listen = listen.parse().map_err(|_| ConfigError::Env {
                name: "CACHET_LISTEN",
                message: format!("{listen:?} is not an address like 127.0.0.1:6380"),
            })?;
        }
        if let Some(listen) = env("CACHET_ADMIN_LISTEN") {
            self.admin.listen = match listen.as_str() {
                "" => crate::admin::AdminListen(None),
                text => {
                    crate::admin::AdminListen(Some(text.parse().map_err(|_| ConfigError::Env {
                        name: "CACHET_ADMIN_LISTEN",
                        message: format!(
                            "{listen:?} is not an address like 127.0.0.1:9121 (or empty to disable)"
                        ),
                    })?))
                }
            };
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

    #[test]
    fn cache_default_ttl_overrides_the_default_class() {
        let mut config = Config::from_toml("[ttl]\ndefault = 10\nshort = 5\n", "x").unwrap();
        assert_eq!(config.ttl.default_secs(), 10);
        config
            .apply_env(|name| (name == "CACHE_DEFAULT_TTL").then(|| "600".into()))
            .unwrap();
        assert_eq!(config.ttl.default_secs(), 600);
        assert_eq!(config.ttl.get("short"), Some(5));
        for bad in ["0", "-1", "5m", "4294967296"] {
            let err = config
                .apply_env(|name| (name == "CACHE_DEFAULT_TTL").then(|| bad.into()))
                .unwrap_err()
                .to_string();
            assert!(err.contains("CACHE_DEFAULT_TTL"), "{err}");
        }
        assert_eq!(Config::default().ttl.default_secs(), DEFAULT_TTL_SECS);
    }

    #[test]
    fn ttl_values_are_checked_where_they_are() {
        let err = Config::from_toml("[ttl]\nshort = 5\nnone = 0\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("from 1 to"), "{err}");
        let err = Config::from_toml("[[rules]]\npattern = \"a\"\nttl = 1.5\n", "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("a TTL class name or a number of seconds"),
            "{err}"
        );
        let err = Config::from_toml("[[rules]]\npattern = \"a\"\nttl = -3\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("not -3"), "{err}");
        let err = Config::from_toml("[[rules]]\npattern = \"a\"\npatern = \"b\"\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("patern"), "{err}");
    }

    /// Every rule error, with the line and column `check-config` prints for it.
    fn rule_errors(text: &str) -> Vec<(usize, usize, String)> {
        match Config::from_toml(text, "x.toml") {
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

        let shown = Config::from_toml(text, "x.toml").unwrap_err().to_string();
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
        let shown = Config::from_toml(text, "x.toml").unwrap_err().to_string();
        assert!(
            shown.contains("note: line 2, column 11: the earlier rule `session:*`"),
            "{shown}"
        );
    }
}
