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
//!
//! One file per part: the sections [`proxy`], [`upstream`], [`rules`] (`[ttl]` and
//! `[[rules]]`), [`policy`] (`[[policies]]`, `[events]`), [`warm`] (`[warmers.NAME]`, `[heat]`),
//! [`admin`] and [`health`]; `env` (overrides), `error` (errors and their places in the file)
//! and `mask` (secrets in error messages). This module is plain data: it imports nothing else
//! of cachet, and each subsystem takes its section from here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
#[cfg(doc)]
use toml::Spanned;

use crate::tags::Rules;

pub mod admin;
mod env;
mod error;
pub mod health;
mod mask;
pub mod policy;
pub mod proxy;
pub mod rules;
#[cfg(test)]
mod tests;
pub mod upstream;
pub mod warm;

pub use admin::{AdminConfig, AdminListen};
pub use error::{ConfigError, Invalid};
pub use health::{HealthConfig, Levels, Thresholds};
pub use mask::mask_url_passwords;
pub use policy::{EventsConfig, PolicyConfig};
pub use proxy::ProxyConfig;
pub use rules::{DEFAULT_TTL_SECS, MAX_TTL_SECS, RuleConfig, TtlConfig, TtlRef};
pub use upstream::{MAX_DB, RedisUrl, UpstreamConfig};
pub use warm::{HeatConfig, WarmerConfig};

use mask::render_toml_error;

/// The whole configuration of one cachet process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
    pub ttl: TtlConfig,
    pub rules: Vec<RuleConfig>,
    /// `[warmers.NAME]`: where warm requests go (see [`warm`]).
    pub warmers: BTreeMap<String, WarmerConfig>,
    /// `[heat]`: read counting for heat-aware warmers.
    pub heat: HeatConfig,
    pub policies: Vec<PolicyConfig>,
    pub events: EventsConfig,
    pub admin: AdminConfig,
    pub health: HealthConfig,
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
        let errors = policy::validate(&config.policies, &config.events);
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
}
