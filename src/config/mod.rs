//! Configuration: a TOML file parsed with serde, then environment overrides, then CLI flags.
//!
//! Every section rejects unknown keys, and every value that can be wrong is checked while it is
//! deserialized, so that a mistake is reported by `toml` with its line and column. Secrets print
//! masked (`Secret`'s `Debug` and `Display`), so a config can be logged whole.
//!
//! `[ttl]` and `[[rules]]` need a second step: whether a rule's TTL class exists or its pattern
//! is shadowed by an earlier rule depends on other entries. [`Config::from_toml`] only parses,
//! and keeps the text; `crate::app::validate` compiles the rules and hands their errors back as
//! [`Problem`]s to be placed in that text ([`Config::invalid_rules`]). Rule fields are
//! [`Spanned`](toml::Spanned), so those errors carry a line and column too, and all of them are
//! reported at once. `[[policies]]` and
//! `[events]` as a whole are checked in the same step ([`Config::check_policies`]).
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
use std::sync::Arc;

use serde::Deserialize;

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
pub use error::{ConfigError, Invalid, Problem};
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
    /// The text this config was parsed from, to place the problems validation finds; none for
    /// a config built in code.
    #[serde(skip)]
    pub source: Option<Source>,
}

/// A config's text and its name (a file's path) in messages.
#[derive(Clone)]
pub struct Source {
    pub origin: String,
    pub text: Arc<str>,
}

/// The origin only: the text holds secrets.
impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
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

impl Config {
    /// Parses a TOML document; `origin` names it in error messages. Checks that need more than
    /// one value at a time are `crate::app::validate`'s; the config keeps the text for them.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: origin.to_owned(),
            message: render_toml_error(text, &error),
        })?;
        config.source = Some(Source {
            origin: origin.to_owned(),
            text: text.into(),
        });
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The error for `problems` found in `[[rules]]`, each placed in the text with a line,
    /// column and excerpt; listed without places when there is no text they fit in.
    pub fn invalid_rules(&self, problems: Vec<Problem>) -> ConfigError {
        match &self.source {
            Some(source) if problems.iter().all(|p| p.fits(&source.text)) => ConfigError::Invalid {
                path: source.origin.clone(),
                errors: problems
                    .iter()
                    .map(|p| Invalid::locate(&source.text, p))
                    .collect(),
            },
            _ => ConfigError::Rules {
                errors: problems.into_iter().map(|p| p.message).collect(),
            },
        }
    }

    /// Checks `[[policies]]` and `[events]` as a whole ([`policy::validate`]): every problem.
    pub fn check_policies(&self) -> Result<(), ConfigError> {
        let errors = policy::validate(&self.policies, &self.events);
        if errors.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Policies {
            path: self
                .source
                .as_ref()
                .map_or("config", |s| s.origin.as_str())
                .to_owned(),
            errors,
        })
    }
}
