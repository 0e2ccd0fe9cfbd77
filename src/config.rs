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
/// The highest database an upstream url may name: cachet's control connection (fred) selects
/// its database as a `u8`.
pub const MAX_DB: u32 = u8::MAX as u32;
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
    /// Worker threads (0 = one per core, the default). One per core keeps one client's
    /// large command or a storm of connections from stalling the others: on a 2-core machine
    /// shared with Redis, a 21 MB command held a neighbour's p99 at 60-78 ms with one thread
    /// and 7-45 ms with two, and 5,000 connections opening at 14-59 ms against 1.9 ms
    /// (bench/hostile.sh). The price on that machine, shared with Redis and the benchmark
    /// client: 20-50% more CPU per request and a quarter to a third less throughput at
    /// pipeline depth 1 (BENCHMARKS.md, "Hostile clients"). Set 1 where cores are shared
    /// and throughput matters more than that isolation.
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
            threads: 0,
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
        // Messages name the url with its password masked: they end up in logs and terminals.
        let shown = mask_url(input);
        let url =
            url::Url::parse(input).map_err(|e| format!("invalid upstream url {shown:?}: {e}"))?;
        if url.scheme() != "redis" {
            return Err(format!(
                "unsupported upstream url scheme {:?} (expected redis://)",
                url.scheme()
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("upstream url {shown:?} has no host"))?
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
                .map_err(|_| format!("upstream url {shown:?}: database {path:?} is not a number"))?
        };
        if db > MAX_DB {
            return Err(format!(
                "upstream url {shown:?}: database {db} is out of range: cachet selects databases 0 to {MAX_DB}"
            ));
        }
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
    /// `message` is `toml`'s error, rendered with every secret masked ([`render_toml_error`]).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
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

// Secrets in error messages. A config that fails to parse cannot be trusted to say which of
// its values are secrets, so they are found in the text: the value of every key whose name
// looks like a secret's (`password`, `token`, ...: dotted, quoted or in an inline table, and
// whatever follows such a name on its line), the password of every url in the file, when the
// error is about a key (unknown, duplicate) that key's value, in case the key is a misspelt
// secret, and, in a document that is not TOML at all, every value on the line shown. Masking
// more than the secrets only costs a less helpful excerpt. (`no_damage_to_a_config_shows_its_
// secrets` below damages a config every way one character can and checks.)

/// Renders a `toml` error as `toml` does (line, column, the line with a caret under the
/// problem, the message), with every secret in the excerpt and in the message shown as `****`.
fn render_toml_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        // No place, so no excerpt: the message and the keys it is about.
        return mask_url_passwords(&error.to_string());
    };
    let start = span.start.min(text.len());
    let span = start..span.end.clamp(start, text.len());
    let line_from = line_start(text, span.start);
    let line_to = text[line_from..]
        .find('\n')
        .map_or(text.len(), |n| line_from + n);
    let mut secrets = secret_values(text);
    secrets.extend(value_of_key_at(text, &span, line_to));
    if text.parse::<toml::Table>().is_err() {
        // Not even TOML: which words are keys is a guess, so no value on the line is shown.
        secrets.extend(values_of_broken_line(text, line_from..line_to));
    }
    let mut message = mask_url_passwords(error.message());
    // An empty span (at the end of the text) still points at one character.
    let touched = span.start..span.end.max(span.start + 1);
    if secrets
        .iter()
        .any(|s| s.start < touched.end && touched.start < s.end)
        && ["invalid type", "invalid value", "invalid length"]
            .iter()
            .any(|serde| message.starts_with(serde))
    {
        // serde quotes the value it did not expect: "invalid type: integer `12345`".
        message = mask_quoted(&message);
    }
    secrets.extend(url_passwords(text));
    let (shown, from, to) = masked_line(text, line_from..line_to, &span, &secrets);
    let (line, column) = line_column(text, span.start);
    let gutter = " ".repeat(line.to_string().len() + 1);
    format!(
        "TOML parse error at line {line}, column {column}\n{gutter}|\n{line} | {shown}\n\
         {gutter}|{} {}\n{message}\n",
        " ".repeat(from),
        "^".repeat(to.saturating_sub(from).max(1))
    )
}

/// Whether a key (its last dotted part, unquoted, any case) names a secret.
fn is_secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "token", "secret", "credential", "auth"]
        .iter()
        .any(|word| key.contains(word))
}

/// The byte ranges of the values of secret-named keys, found lexically (the text need not
/// parse). An unterminated value runs to the end of its line, or for a multi-line string,
/// array or inline table to the end of the text.
fn secret_values(text: &str) -> Vec<Range<usize>> {
    let mut ranges = secret_lines(text);
    let mut at = 0;
    while let Some(eq) = text[at..].find('=').map(|n| at + n) {
        // A key starts after the value before it (so the text is walked once).
        let key_from = text[at..eq]
            .rfind(['\n', '{', ','])
            .map_or(at, |n| at + n + 1);
        let key = text[key_from..eq].rsplit('.').next().unwrap_or_default();
        at = eq + 1;
        if is_secret_name(key.trim().trim_matches(['"', '\''])) {
            let value = value_at(text, eq + 1);
            at = value.end.max(at);
            ranges.push(value);
        }
    }
    ranges
}

/// On each line that names a secret, everything after the name: a line too broken to have a
/// `key = value` shape (a missing `=`, say) still shows no secret.
fn secret_lines(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut line_from = 0;
    let is_key_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    for line in text.split_inclusive('\n') {
        let bytes = line.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let word_end = at + bytes[at..].iter().take_while(|b| is_key_byte(**b)).count();
            if is_secret_name(&line[at..word_end]) {
                let value = line[word_end..].trim_start_matches(['"', '\'', ' ', '\t', '=']);
                let (start, end) = (line.len() - value.len(), line.trim_end().len());
                if start < end {
                    ranges.push(line_from + start..line_from + end);
                }
                break;
            }
            // Past the word and the (ASCII or not) characters up to the next one.
            at = word_end
                + line[word_end..]
                    .find(|c: char| c.is_ascii() && is_key_byte(c as u8))
                    .unwrap_or(line.len() - word_end);
        }
        line_from += line.len();
    }
    ranges
}

/// The value that starts after the `=` at `from - 1` (leading blanks skipped).
fn value_at(text: &str, from: usize) -> Range<usize> {
    let bytes = text.as_bytes();
    let start = from + (text[from..].len() - text[from..].trim_start_matches([' ', '\t']).len());
    let rest = &text[start..];
    let end_of_line = rest.find('\n').map_or(text.len(), |n| start + n);
    let end = if let Some(quotes) = ["\"\"\"", "'''"].iter().find(|q| rest.starts_with(**q)) {
        rest[3..]
            .find(quotes)
            .map_or(text.len(), |n| start + 3 + n + 3)
    } else if rest.starts_with(['"', '\'']) {
        string_end(bytes, start).min(end_of_line)
    } else if rest.starts_with(['[', '{']) {
        nested_end(bytes, start)
    } else {
        rest.find(['\n', ',', '}', ']', '#'])
            .map_or(text.len(), |n| start + n)
    };
    let end = end.max(start);
    start..start + text[start..end].trim_end().len()
}

/// The end of the one-line string opening at `start`: after its closing quote, or at the end
/// of the line.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != b'\n' {
        match bytes[i] {
            b if b == quote => return i + 1,
            b'\\' if quote == b'"' => i += 2,
            _ => i += 1,
        }
    }
    i.min(bytes.len())
}

/// The end of the array or inline table opening at `start`: its matching bracket, or the end
/// of the text. Strings and comments inside are skipped.
fn nested_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b'"' | b'\'' => {
                i = string_end(bytes, i);
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Everything on a line of a document that is not TOML but its key and `=` (and an opening
/// quote or bracket), or but a table header; all of a line with neither.
fn values_of_broken_line(text: &str, line: Range<usize>) -> Option<Range<usize>> {
    let content = &text[line.clone()];
    let trimmed = content.trim_start();
    if trimmed.starts_with('[') && !content.contains('=') {
        return None;
    }
    let start = match content.find('=') {
        Some(eq) => {
            let value = content[eq + 1..].trim_start_matches([' ', '\t', '"', '\'', '[', '{']);
            line.end - value.len()
        }
        None => line.end - trimmed.len(),
    };
    let end = line.start + content.trim_end().len();
    (start < end).then_some(start..end)
}

/// When `span` is a key followed by `=` (an unknown or duplicate key), the value after it.
fn value_of_key_at(text: &str, span: &Range<usize>, line_to: usize) -> Option<Range<usize>> {
    let after = text
        .get(span.end..line_to)?
        .trim_start_matches(['"', '\'', ' ', '\t']);
    after
        .starts_with('=')
        .then(|| value_at(text, line_to - after.len() + 1))
        .map(|value| value.start..value.end.max(line_to))
}

/// The passwords of urls in `text`, generously for a url written badly:
/// - after each `://` with an `@` later on its line: from the first `:` to the last `@` (all
///   of it without a `:`);
/// - after each `://` without: a `:` not followed by a port number, up to the next `/`;
/// - in any word with an `@` (a url with a damaged scheme, or cut in two): from the first `:`
///   after its last `//` (without a `:`, from the start of the word) to the `@`.
///
/// Each part of the text is looked at a bounded number of times.
fn url_passwords(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut floor = 0;
    for (at_sign, _) in text.match_indices('@') {
        let word = text[floor..at_sign]
            .rfind(|c: char| c.is_ascii_whitespace() || "\"'`=,[{(".contains(c))
            .map_or(floor, |n| floor + n + 1);
        let authority = text[word..at_sign]
            .rfind("//")
            .map_or(word, |n| word + n + 2);
        let password = text[authority..at_sign]
            .find(':')
            .map_or(authority, |colon| authority + colon + 1);
        ranges.push(password..at_sign);
        floor = at_sign + 1;
    }
    // The line of the last `://` seen: where it ends, and its last `@`.
    let mut line: Option<(usize, Option<usize>)> = None;
    let mut covered = 0;
    let mut at = 0;
    while let Some(scheme_end) = text[at..].find("://").map(|n| at + n + 3) {
        at = scheme_end;
        if scheme_end < covered {
            continue;
        }
        let (line_end, last_at) = match line {
            Some((end, last_at)) if scheme_end <= end => (end, last_at),
            _ => {
                let end = text[scheme_end..]
                    .find('\n')
                    .map_or(text.len(), |n| scheme_end + n);
                let last_at = text[scheme_end..end].rfind('@').map(|n| scheme_end + n);
                line = Some((end, last_at));
                (end, last_at)
            }
        };
        match last_at.filter(|a| *a >= scheme_end) {
            Some(at_sign) => {
                let password = text[scheme_end..at_sign]
                    .find(':')
                    .map_or(scheme_end, |colon| scheme_end + colon + 1);
                ranges.push(password..at_sign);
                covered = at_sign;
            }
            None => {
                let authority_end = text[scheme_end..line_end]
                    .find(['/', '"', '\'', ' ', '\t', '\r'])
                    .map_or(line_end, |n| scheme_end + n);
                if let Some(colon) = text[scheme_end..authority_end].find(':') {
                    let after = scheme_end + colon + 1;
                    if !text[after..authority_end]
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                    {
                        ranges.push(after..authority_end);
                    }
                }
                covered = authority_end;
            }
        }
    }
    ranges
}

/// `text` with the password of every url in it (see [`url_passwords`]) shown as `****`.
pub fn mask_url_passwords(text: &str) -> String {
    mask(text, url_passwords(text))
}

/// A url as given, for a message: its password shown as `****`, also when it has no scheme
/// (`user:password@host`).
fn mask_url(input: &str) -> String {
    if input.contains("://") {
        return mask_url_passwords(input);
    }
    match (input.find(':'), input.rfind('@')) {
        (Some(colon), Some(at_sign)) if colon < at_sign => {
            mask(input, std::iter::once(colon + 1..at_sign))
        }
        _ => input.to_owned(),
    }
}

/// `text` with each of `ranges` shown as `****` (ranges that overlap or touch as one).
fn mask(text: &str, ranges: impl IntoIterator<Item = Range<usize>>) -> String {
    let mut ranges: Vec<Range<usize>> = ranges.into_iter().collect();
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut masked_to = None;
    for range in ranges {
        // One that overlaps or touches the mask before it extends it.
        if masked_to.is_none_or(|end| range.start > end) {
            out.push_str(&text[at..range.start]);
            out.push_str("****");
        }
        at = at.max(range.end);
        masked_to = Some(at);
    }
    out.push_str(&text[at..]);
    out
}

/// `message` with whatever it quotes (between backticks or double quotes) shown as `****`.
fn mask_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().expect("found");
        out.push_str(&rest[..=open]);
        match rest[open + 1..].find(quote) {
            Some(close) => {
                out.push_str("****");
                out.push(quote);
                rest = &rest[open + 1 + close + 1..];
            }
            None => {
                out.push_str("****");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The line `line` of `text` with the parts of `secrets` in it shown as `****`, and the
/// columns (in characters, 0-based) where `span` starts and ends in what is shown.
fn masked_line(
    text: &str,
    line: Range<usize>,
    span: &Range<usize>,
    secrets: &[Range<usize>],
) -> (String, usize, usize) {
    let mut masks: Vec<Range<usize>> = secrets
        .iter()
        .map(|s| s.start.max(line.start)..s.end.min(line.end))
        .filter(|s| s.start < s.end)
        .collect();
    masks.sort_by_key(|m| m.start);
    // The line in pieces, each shown as its text or, if masked, as `****`; masks that
    // overlap or touch are one.
    let mut pieces: Vec<(Range<usize>, bool)> = Vec::new();
    let mut at = line.start;
    for mask in masks {
        match pieces.last_mut() {
            Some((last, true)) if mask.start <= last.end => last.end = last.end.max(mask.end),
            _ => {
                if at < mask.start {
                    pieces.push((at..mask.start, false));
                }
                pieces.push((mask.clone(), true));
            }
        }
        at = at.max(mask.end);
    }
    if at < line.end {
        pieces.push((at..line.end, false));
    }
    let mut shown = String::new();
    let (mut from, mut to) = (None, None);
    for (range, masked) in pieces {
        let column = shown.chars().count();
        let column_of = |offset: usize, end: bool| match masked {
            true if end => column + 4,
            true => column,
            false => column + text[range.start..offset].chars().count(),
        };
        if from.is_none() && range.contains(&span.start) {
            from = Some(column_of(span.start, false));
        }
        if to.is_none() && range.start < span.end && span.end <= range.end {
            to = Some(column_of(span.end, true));
        }
        shown.push_str(if masked { "****" } else { &text[range] });
    }
    let width = shown.chars().count();
    let from = from.unwrap_or(width);
    // At least one caret; a span past the end of the line is underlined to one past it.
    let to = to.unwrap_or(width).clamp(from + 1, width.max(from) + 1);
    (shown, from, to)
}

impl Config {
    /// Parses a TOML document, then validates its rules; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: origin.to_owned(),
            message: render_toml_error(text, &error),
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

    /// Every way a secret's line can be wrong, with the secret in it.
    const BROKEN_SECRETS: &[(&str, &str)] = &[
        ("[upstream]\npassword = [\"Zq8Xw3Kp\"]\n", "Zq8Xw3Kp"),
        ("[upstream]\npassword = \"Zq8Xw3Kp\n", "Zq8Xw3Kp"),
        ("[upstream]\npassword = 'Zq8Xw3Kp\n", "Zq8Xw3Kp"),
        ("[upstream]\npassword = \"\"\"Zq8Xw3Kp", "Zq8Xw3Kp"),
        (
            "[upstream]\npassword = [\n  \"Zq8Xw3Kp\",\n  3,\n]\n",
            "Zq8Xw3Kp",
        ),
        ("[upstream]\npassword \"Zq8Xw3Kp\"\n", "Zq8Xw3Kp"),
        (
            "[upstream]\npassword = \"Zq8Xw3Kp\"\npassword = \"Zq8Xw3Kq\"\n",
            "Zq8Xw3K",
        ),
        ("[upstream]\npasword = \"Zq8Xw3Kp\"\n", "Zq8Xw3Kp"),
        ("[upstream]\n'password' = 'Zq8Xw3Kp' 'x'\n", "Zq8Xw3Kp"),
        (
            "upstream = { url = \"redis://x\", password = 8675309.5 }\n",
            "8675309",
        ),
        ("upstream.password = 8675309\n", "8675309"),
        ("[admin]\ntoken = 8675309\n", "8675309"),
        ("[admin]\ntoken = { v = \"Zq8Xw3Kp\" }\n", "Zq8Xw3Kp"),
        (
            "[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db:99999\"\n",
            "Zq8Xw3Kp",
        ),
        (
            "[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db/x\"\n",
            "Zq8Xw3Kp",
        ),
        (
            "[upstream]\nurl = \"redis://:Zq8Xw3Kp@db\", 3\n",
            "Zq8Xw3Kp",
        ),
        ("[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db", "Zq8Xw3Kp"),
        (
            "[warmers.w]\nhttp = \"http://u:Zq8Xw3Kp@h/x\"\n",
            "Zq8Xw3Kp",
        ),
    ];

    #[test]
    fn a_broken_secret_prints_masked_where_the_error_is_shown() {
        for (text, secret) in BROKEN_SECRETS {
            let shown = Config::from_toml(text, "x.toml").unwrap_err().to_string();
            assert!(!shown.contains(secret), "{text:?} printed\n{shown}");
            assert!(shown.contains("****"), "{text:?} printed\n{shown}");
            assert!(shown.contains("error at line"), "{text:?} printed\n{shown}");
        }
        let shown = RedisUrl::parse("redis://u:Zq8Xw3Kp@h:99999").unwrap_err();
        assert_eq!(
            shown,
            "invalid upstream url \"redis://u:****@h:99999\": invalid port number"
        );
        let shown = RedisUrl::parse(":Zq8Xw3Kp@h").unwrap_err();
        assert!(
            shown.contains(":****@h") && !shown.contains("Zq8"),
            "{shown}"
        );
    }

    /// A config with secrets in every place they can be, cut short at every character, and
    /// with every character deleted or replaced in turn: no error shows three characters of
    /// a secret in a row, and rendering an error never panics.
    #[test]
    fn no_damage_to_a_config_shows_its_secrets() {
        let text = "# caf\u{e9}\u{3000}\n[upstream]\n\
                    url = \"redis://app:Zq8Xw3Kp@db:6390/2\"\n\
                    password = \"Zq8Xw3Kp\"\n\
                    [admin]\n\
                    token = 'Zq8Xw3Kp' # \u{e9}t\u{e9}\n";
        Config::from_toml(text, "x").expect("the whole config is valid");
        let windows: Vec<&str> = (0..6).map(|i| &"Zq8Xw3Kp"[i..i + 3]).collect();
        let mut damaged = Vec::new();
        for (n, c) in text.char_indices() {
            let (before, after) = (&text[..n], &text[n + c.len_utf8()..]);
            damaged.push(before.to_owned());
            damaged.push(format!("{before}{after}"));
            for other in ["\"", "'", "=", "\n", "[", "\u{3000}"] {
                damaged.push(format!("{before}{other}{after}"));
            }
        }
        let mut errors = 0;
        for text in &damaged {
            let Err(error) = Config::from_toml(text, "x") else {
                continue;
            };
            errors += 1;
            let shown = error.to_string();
            for window in &windows {
                assert!(!shown.contains(window), "{text:?} printed\n{shown}");
            }
        }
        assert!(
            errors > 500,
            "only {errors} damaged configs failed to parse"
        );
    }

    /// Finding the secrets walks the text a bounded number of times: a broken 600 KB line
    /// full of `=`, `@` and `://` is rendered at once, not in quadratic time.
    #[test]
    fn masking_a_huge_broken_line_takes_linear_time() {
        let text = format!("token = 1 {}\n", "a=b@c://d:e/ ".repeat(50_000));
        let began = std::time::Instant::now();
        let shown = Config::from_toml(&text, "x").unwrap_err().to_string();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            began.elapsed()
        );
        assert!(
            shown.contains("line 1") && !shown.contains("d:e"),
            "{}",
            &shown[..200]
        );
    }

    #[test]
    fn errors_away_from_secrets_keep_their_excerpt() {
        let shown = Config::from_toml(
            "[upstream]\npassword = \"pw\"\n[proxy]\nlisten = \"nowhere\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            shown.contains("4 | listen = \"nowhere\"\n  |          ^^^^^^^^^\n"),
            "{shown}"
        );
    }

    #[test]
    fn a_database_past_255_is_refused_where_it_is_written() {
        assert_eq!(RedisUrl::parse("redis://h/255").unwrap().db, 255);
        for url in ["redis://h/256", "redis://h/4294967295"] {
            let err = RedisUrl::parse(url).unwrap_err();
            assert!(
                err.contains("out of range") && err.contains("0 to 255"),
                "{err}"
            );
        }
        let err = Config::from_toml("[upstream]\nurl = \"redis://h:6379/300\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("database 300 is out of range"),
            "{err}"
        );
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
