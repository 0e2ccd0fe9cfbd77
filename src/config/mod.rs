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
//! [`admin`], [`health`], [`acl`] (`[[acl]]`) and [`tls`] (`[proxy.tls]`, `[upstream.tls]`);
//! `env` (overrides), `error` (errors and their places in the file) and `mask` (secrets in
//! error messages). This module is plain data: it imports nothing else of cachet, and each
//! subsystem takes its section from here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

pub mod acl;
pub mod admin;
pub mod env;
mod error;
pub mod health;
mod mask;
pub mod policy;
pub mod proxy;
pub mod rules;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod upstream;
pub mod warm;

pub use acl::{AclGrant, Permission};
pub use admin::{AdminConfig, AdminListen};
pub use error::{ConfigError, Invalid, Problem};
pub use health::{HealthConfig, Levels, Thresholds};
pub use mask::mask_url_passwords;
pub use policy::{EventsConfig, PolicyConfig};
pub use proxy::ProxyConfig;
pub use rules::{DEFAULT_TTL_SECS, MAX_TTL_SECS, RuleConfig, TtlConfig, TtlRef};
pub use tls::{ProxyTlsConfig, TlsVersion, UpstreamTlsConfig};
pub use upstream::{ClusterConfig, MAX_DB, ReadFrom, RedisUrl, UpstreamConfig, host_port};
pub use warm::{HeatConfig, WarmerConfig};

use mask::{ErrorKind, render_toml_error};

/// Most parse errors printed for one file; the rest are counted.
const MAX_ERRORS_SHOWN: usize = 20;

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
    /// `[[acl]]`: what users other than cachet's may do with EMIT, WARM and POLICY.
    pub acl: Vec<AclGrant>,
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

/// Whether a client's guess equals a secret, in time that depends on neither the secret nor
/// where the two differ: both are hashed (SHA-256, so the secret's length does not show
/// either) and the digests compared with no early exit.
pub fn secret_eq(secret: &[u8], guess: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(secret), Sha256::digest(guess));
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Kept opaque, so the compiler cannot turn the fold back into an early-exit comparison.
    std::hint::black_box(difference) == 0
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
    ///
    /// Every error is reported, not only the first: all the syntax errors `toml` finds (its
    /// parser recovers and goes on), or, in a document that is valid TOML, the first wrong
    /// value of each top-level section, of each `[[rules]]` / `[[policies]]` entry and of
    /// each `[warmers.NAME]` ([`every_value_error`]).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let failed = |kind, mut errors: Vec<toml::de::Error>| {
            errors.sort_by_key(|e| e.span().map(|s| s.start));
            // Each rendering scans the text for secrets: a bounded number of them keeps a
            // huge broken file (one error per line) from taking quadratic time.
            let mut shown: Vec<String> = errors
                .iter()
                .take(MAX_ERRORS_SHOWN)
                .map(|e| render_toml_error(text, e, kind))
                .collect();
            if errors.len() > MAX_ERRORS_SHOWN {
                shown.push(format!(
                    "and {} more errors",
                    errors.len() - MAX_ERRORS_SHOWN
                ));
            }
            ConfigError::Parse {
                path: origin.to_owned(),
                errors: shown,
            }
        };
        let (document, syntax) = toml::de::DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            return Err(failed(ErrorKind::Syntax, syntax));
        }
        let mut config = match Config::deserialize(toml::de::Deserializer::from(document.clone())) {
            Ok(config) => config,
            Err(first) => {
                let mut errors = every_value_error(document);
                if errors.is_empty() {
                    errors.push(first);
                }
                return Err(failed(ErrorKind::Value, errors));
            }
        };
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

/// The errors of a document that is valid TOML but not a valid config, as many as can be
/// told apart: `Config` is deserialized from one part of the document at a time, every other
/// section left at its default. The parts are the top-level sections, each entry of a
/// top-level array of tables (`[[rules]]`, `[[policies]]`), and each entry of a top-level table
/// made only of tables (`[warmers.NAME]`). A part is never split further, so no check that
/// needs two of its values (`http` or `stream`, not both) sees one without the other.
fn every_value_error(document: toml::Spanned<toml::de::DeTable<'_>>) -> Vec<toml::de::Error> {
    use toml::de::{DeArray, DeTable, DeValue};
    let whole = document.span();
    let mut parts: Vec<DeTable<'_>> = Vec::new();
    for (key, value) in document.into_inner() {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) if items.iter().all(|i| i.get_ref().is_table()) => {
                for item in items.iter() {
                    let mut one = DeArray::new();
                    one.push(item.clone());
                    let mut part = DeTable::new();
                    part.insert(
                        key.clone(),
                        toml::Spanned::new(span.clone(), DeValue::Array(one)),
                    );
                    parts.push(part);
                }
            }
            DeValue::Table(entries) if entries.iter().all(|(_, v)| v.get_ref().is_table()) => {
                for (name, entry) in entries {
                    let mut one = DeTable::new();
                    one.insert(name, entry);
                    let mut part = DeTable::new();
                    part.insert(
                        key.clone(),
                        toml::Spanned::new(span.clone(), DeValue::Table(one)),
                    );
                    parts.push(part);
                }
            }
            value => {
                let mut part = DeTable::new();
                part.insert(key, toml::Spanned::new(span, value));
                parts.push(part);
            }
        }
    }
    parts
        .into_iter()
        .filter_map(|part| {
            let part = toml::Spanned::new(whole.clone(), part);
            Config::deserialize(toml::de::Deserializer::from(part)).err()
        })
        .collect()
}
