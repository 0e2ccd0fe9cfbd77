//! `[upstream]`: the Redis server cachet forwards to, and its `redis://` url, parsed once and
//! printed with the password masked.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::Secret;
use super::mask::mask_url;

/// The highest database an upstream url may name: cachet's control connection (fred) selects
/// its database as a `u8`.
pub const MAX_DB: u32 = u8::MAX as u32;

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
    /// Pools kept for clients signed in as other ACL users than the pool's (one per user,
    /// `crate::upstream::identity`); past it such a client gets a connection of its own.
    pub max_user_pools: usize,
    /// A user's pool with no client for this long is closed (at least 1).
    pub user_pool_idle_secs: u64,
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
            max_user_pools: 64,
            user_pool_idle_secs: 60,
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

    /// How long a user's pool may go without a client before it is closed.
    pub fn user_pool_idle(&self) -> Duration {
        Duration::from_secs(self.user_pool_idle_secs.max(1))
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
