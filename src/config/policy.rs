//! `[[policies]]` and `[events]`: which policy components run for which events, with which
//! limits, and where EMIT's outcomes are kept.
//!
//! Values are checked while they are deserialized (so `toml` reports a bad glob with its line
//! and column); [`validate`] then checks what depends on several entries (unique names).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// Largest memory cap a policy may ask for; the engine's pooling allocator reserves address
/// space for memories of this size.
pub const MAX_MEMORY_MB: u64 = 256;
/// Longest deadline a policy may be given: a call holds one of the policy threads that long.
pub const MAX_TIMEOUT_MS: u64 = 10_000;

/// One `[[policies]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Names the policy in replies, logs, metrics and `POLICY` commands.
    #[serde(deserialize_with = "policy_name")]
    pub name: String,
    /// The built component (`.wasm`), relative to cachet's working directory.
    pub module: PathBuf,
    /// Glob patterns on event names (`session.*`, `roster.changed`).
    #[serde(deserialize_with = "event_patterns")]
    pub events: Vec<String>,
    /// Wall-clock deadline of one call, not counting time spent waiting for Redis in host
    /// calls.
    #[serde(default = "default_timeout_ms", deserialize_with = "timeout_ms")]
    pub timeout_ms: u64,
    /// Most host calls (`key-tags`, `tag-size`, `key-heat`, `log`) one call may make; the
    /// one past it traps and the call fails as `limit`.
    #[serde(default = "default_max_host_calls")]
    pub max_host_calls: u32,
    /// Most time one call's host calls may wait for Redis, all together (the deadline does
    /// not count it); a host call that ends past it traps and the call fails as `limit`.
    #[serde(default = "default_host_timeout_ms", deserialize_with = "timeout_ms")]
    pub host_timeout_ms: u64,
    /// Cap on each linear memory of the component; a grow beyond it traps.
    #[serde(default = "default_memory_mb", deserialize_with = "memory_mb")]
    pub memory_mb: u64,
    /// Optional fuel (roughly, wasm instructions) per call, on top of the deadline.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Most actions one call may return.
    #[serde(default = "default_max_actions")]
    pub max_actions: usize,
    /// Most bytes (names, keys, messages) all actions of one call may hold together.
    #[serde(default = "default_max_action_bytes")]
    pub max_action_bytes: usize,
    /// Instances kept warm for reuse (an instance is thrown away after a trap).
    #[serde(default = "default_instances")]
    pub instances: usize,
}

/// `[events]`: EMIT's limits and where its outcomes go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Follow-up events are handled up to this depth (a client's event has depth 0).
    pub max_depth: u32,
    /// Longest event name, in bytes.
    pub max_name_bytes: usize,
    /// Most bytes one EMIT may carry (name, field names and values together).
    pub max_event_bytes: usize,
    /// Stream that keeps events a policy failed on, for `POLICY REPLAY`.
    pub dead_letter_stream: String,
    /// Approximate cap on the dead-letter stream (`XADD MAXLEN ~`).
    pub dead_letter_maxlen: u64,
    /// Stream that logs every EMIT and its outcome; none when unset.
    pub log_stream: Option<String>,
    /// Approximate cap on the log stream.
    pub log_maxlen: u64,
    /// OS threads that run policy calls (wasm never runs on the client-serving threads).
    pub threads: usize,
    /// How often module files are checked for changes (0: never; SIGHUP and
    /// `POLICY RELOAD` still work).
    pub watch_ms: u64,
    /// What EMIT answers for an event no policy subscribes to.
    pub unrouted: Unrouted,
}

/// `[events] unrouted`: an EMIT of an event no policy subscribes to.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unrouted {
    /// The empty result, like PUBLISH to a channel nobody listens on; counted in
    /// `cachet_events_unrouted_total`. Applications can emit before any policy exists.
    #[default]
    Ignore,
    /// `-ERR no policy subscribes to event '...'`, for deployments that want a typo in an
    /// event name to fail loudly.
    Error,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_depth: 4,
            max_name_bytes: 256,
            max_event_bytes: 1024 * 1024,
            dead_letter_stream: "cachet:policy:dead".to_owned(),
            dead_letter_maxlen: 10_000,
            log_stream: None,
            log_maxlen: 10_000,
            threads: 2,
            watch_ms: 1000,
            unrouted: Unrouted::Ignore,
        }
    }
}

fn default_timeout_ms() -> u64 {
    10
}

fn default_max_host_calls() -> u32 {
    64
}

/// Generous against a Redis busy for a moment (a slow script), still a bound on how long one
/// call may hold a policy thread waiting.
fn default_host_timeout_ms() -> u64 {
    1_000
}

fn default_memory_mb() -> u64 {
    32
}

fn default_max_actions() -> usize {
    1000
}

fn default_max_action_bytes() -> usize {
    1024 * 1024
}

fn default_instances() -> usize {
    2
}

fn policy_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "policy name {name:?}: use 1 to 64 of A-Z a-z 0-9 - _ ."
        )));
    }
    Ok(name)
}

fn event_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let patterns = Vec::<String>::deserialize(d)?;
    if patterns.is_empty() {
        return Err(serde::de::Error::custom(
            "events: name at least one event pattern",
        ));
    }
    for pattern in &patterns {
        globset::Glob::new(pattern).map_err(|e| {
            serde::de::Error::custom(format!("events: {pattern:?} is not a glob: {e}"))
        })?;
    }
    Ok(patterns)
}

fn timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let ms = u64::deserialize(d)?;
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(serde::de::Error::custom(format!(
            "a timeout is 1 to {MAX_TIMEOUT_MS} ms, not {ms}"
        )));
    }
    Ok(ms)
}

fn memory_mb<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let mb = u64::deserialize(d)?;
    if mb == 0 || mb > MAX_MEMORY_MB {
        return Err(serde::de::Error::custom(format!(
            "memory_mb must be 1 to {MAX_MEMORY_MB}"
        )));
    }
    Ok(mb)
}

/// Checks what depends on more than one entry. Every problem, one message each.
pub fn validate(policies: &[PolicyConfig], events: &EventsConfig) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        if policies[..i].iter().any(|p| p.name == policy.name) {
            errors.push(format!("[[policies]] name {:?} is used twice", policy.name));
        }
        if policy.instances == 0 || policy.max_actions == 0 || policy.max_action_bytes == 0 {
            errors.push(format!(
                "[[policies]] {:?}: instances, max_actions and max_action_bytes must be above 0",
                policy.name
            ));
        }
    }
    if !policies.is_empty() && events.threads == 0 {
        errors.push("[events] threads must be at least 1".to_owned());
    }
    if events.max_name_bytes == 0 || events.max_event_bytes < events.max_name_bytes {
        errors.push("[events] max_event_bytes must be at least max_name_bytes, above 0".into());
    }
    if events.dead_letter_stream.is_empty() || events.log_stream.as_deref() == Some("") {
        errors.push("[events] stream names must not be empty".to_owned());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        policies: Vec<PolicyConfig>,
        #[serde(default)]
        events: EventsConfig,
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let file: File = toml::from_str(
            "[[policies]]\nname = \"s\"\nmodule = \"s.wasm\"\nevents = [\"session.*\"]\n",
        )
        .expect("parses");
        let policy = &file.policies[0];
        assert_eq!(
            (policy.timeout_ms, policy.memory_mb, policy.fuel),
            (10, 32, None)
        );
        assert_eq!((policy.max_host_calls, policy.host_timeout_ms), (64, 1_000));
        assert_eq!(file.events.max_depth, 4);
        assert!(validate(&file.policies, &file.events).is_empty());
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (text, expect) in [
            ("events = [\"a[\"]", "is not a glob"),
            ("events = []", "at least one"),
            ("events = [\"a\"]\ntimeout_ms = 0", "a timeout is 1 to"),
            ("events = [\"a\"]\nhost_timeout_ms = 0", "a timeout is 1 to"),
            ("events = [\"a\"]\nmax_host_calls = -1", "invalid value"),
            ("events = [\"a\"]\nmemory_mb = 100000", "memory_mb"),
            ("events = [\"a\"]\nfoo = 1", "unknown field"),
        ] {
            let text = format!("[[policies]]\nname = \"s\"\nmodule = \"s.wasm\"\n{text}\n");
            let error = toml::from_str::<File>(&text)
                .err()
                .expect(&text)
                .to_string();
            assert!(error.contains(expect), "{text}: {error}");
        }
    }

    #[test]
    fn unrouted_events_are_ignored_unless_configured_as_errors() {
        let parse = |text: &str| toml::from_str::<File>(&format!("policies = []\n{text}"));
        let default = parse("").expect("parses").events.unrouted;
        assert_eq!(default, Unrouted::Ignore);
        for (value, expect) in [("ignore", Unrouted::Ignore), ("error", Unrouted::Error)] {
            let file = parse(&format!("[events]\nunrouted = \"{value}\"")).expect(value);
            assert_eq!(file.events.unrouted, expect);
        }
        let error = parse("[events]\nunrouted = \"drop\"")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("unknown variant") && error.contains("ignore"),
            "{error}"
        );
    }

    #[test]
    fn a_name_used_twice_is_refused() {
        let file: File = toml::from_str(
            "[[policies]]\nname = \"s\"\nmodule = \"a\"\nevents = [\"a\"]\n\
             [[policies]]\nname = \"s\"\nmodule = \"b\"\nevents = [\"b\"]\n",
        )
        .expect("parses");
        let errors = validate(&file.policies, &file.events);
        assert!(errors[0].contains("used twice"), "{errors:?}");
    }
}
