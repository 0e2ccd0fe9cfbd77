//! `[ttl]` and `[[rules]]` as written: TTL classes, and each rule's pattern, tags and TTL with
//! their places in the file. Compiling the rules, which checks them against each other, is
//! `crate::tags::Rules::compile`'s job.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The `default` TTL class when `[ttl]` does not set it: the original system's fallback.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// The longest TTL a class or rule may give (about 136 years), far inside what Redis's own
/// expiry arithmetic accepts, so a configured TTL can never make `SET ... EX` fail.
pub const MAX_TTL_SECS: u64 = u32::MAX as u64;

/// `[ttl]`: named TTL classes, in seconds. The class `default` always exists: it is
/// [`DEFAULT_TTL_SECS`] unless the file sets it, and `CACHE_DEFAULT_TTL` overrides it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct TtlConfig {
    pub(super) classes: BTreeMap<String, TtlSecs>,
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
pub(super) struct TtlSecs(pub(super) u64);

impl<'de> Deserialize<'de> for TtlSecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let secs = i64::deserialize(deserializer)?;
        ttl_secs(secs)
            .map(TtlSecs)
            .map_err(serde::de::Error::custom)
    }
}

pub(super) fn ttl_secs(secs: i64) -> Result<u64, String> {
    u64::try_from(secs)
        .ok()
        .filter(|s| (1..=MAX_TTL_SECS).contains(s))
        .ok_or_else(|| format!("a TTL is from 1 to {MAX_TTL_SECS} seconds, not {secs}"))
}

/// One `[[rules]]` entry as written. [`Rules::compile`](crate::tags::Rules::compile) checks the
/// list and compiles it; the fields keep their place in the file for its error messages.
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
