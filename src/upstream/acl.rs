//! Redis's own ACL decision for a command, asked without running it: `ACL DRYRUN`.
//!
//! cachet's own commands (TAGSET, TAGINVALIDATE, ...) run as cachet's user, on cachet's
//! connections. For a client signed in as another user, each is first checked as the plain
//! command it stands for (TAGSET as `SET`, TAGINVALIDATE as `DEL` of the tag's keys): Redis
//! answers `ACL DRYRUN user command args...` with `OK` or the reason it would refuse, and
//! cachet gives the client the `-NOPERM` error Redis would give it for running that command
//! itself ([`noperm_line`]). Nothing here re-implements ACL rules: key patterns, read/write
//! key permissions, categories and selectors are Redis's to judge.
//!
//! **The cache.** Decisions are kept per (user, arguments) for [`TTL`], so a client repeating
//! the same command shape costs one round trip a second at most. A change of rights is
//! therefore seen within [`TTL`]; an ACL command that passes through cachet (`ACL SETUSER`,
//! `DELUSER`, `LOAD`, ...) empties the cache at once ([`AclCheck::flush`]). Bounded: at most
//! [`MAX_ENTRIES`] decisions and [`MAX_BYTES`] of their arguments; past either the oldest go
//! first. A command whose arguments alone pass [`MAX_BYTES`]` / 16` is checked but not kept.
//!
//! Needs cachet's own user to be allowed `ACL DRYRUN` (`+acl|dryrun`); without it every
//! check fails with [`AclDenied::Upstream`] and the client gets `-ERR`, never a pass.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::cmd;
use fred::prelude::*;

/// How long a decision is reused.
pub const TTL: Duration = Duration::from_secs(1);
/// Most decisions kept.
pub const MAX_ENTRIES: usize = 10_000;
/// Most bytes of user names and arguments kept.
pub const MAX_BYTES: usize = 4 << 20;

/// Why a command may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclDenied {
    /// Redis would refuse it; the text is the error line Redis gives the user for running
    /// the command directly, without the leading `-` (`NOPERM this user has no ...`).
    #[error("{0}")]
    NoPerm(String),
    /// Redis could not decide: unreachable, `ACL DRYRUN` refused to cachet's user, the user
    /// gone (`ERR User 'u' not found`) or the command malformed. The text is the error line.
    #[error("{0}")]
    Upstream(String),
}

/// Asks Redis whether a user may run a command, and remembers the answer for a second.
pub struct AclCheck {
    control: Client,
    cache: Mutex<Cache>,
    /// Checks by outcome (`allowed`, `refused`, `error`) and where the answer came from
    /// (`cache`, `redis`); registered by whoever exposes metrics, as
    /// `cachet_acl_checks_total`.
    pub checks: prometheus::IntCounterVec,
}

#[derive(Default)]
struct Cache {
    decisions: HashMap<Key, (Instant, Result<(), String>)>,
    /// Insertion order, for eviction; a key here may have been replaced or flushed since.
    order: VecDeque<(Key, Instant)>,
    bytes: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    user: Bytes,
    argv: Vec<Bytes>,
}

impl Key {
    fn size(&self) -> usize {
        self.user.len() + self.argv.iter().map(|a| a.len() + 16).sum::<usize>() + 64
    }
}

impl AclCheck {
    /// Checks on `control` (the control client, signed in as cachet's user).
    pub fn new(control: Client) -> Self {
        AclCheck {
            control,
            cache: Mutex::new(Cache::default()),
            checks: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "cachet_acl_checks_total",
                    "ACL DRYRUN decisions for cachet's commands sent by users other than cachet's, by outcome and by where the answer came from",
                ),
                &["outcome", "source"],
            )
            .expect("a valid metric"),
        }
    }

    /// Whether `user` may run `argv` (command name first) at Redis now.
    pub async fn check(&self, user: &[u8], argv: &[Bytes]) -> Result<(), AclDenied> {
        let key = Key {
            user: Bytes::copy_from_slice(user),
            argv: argv.to_vec(),
        };
        if let Some(decision) = self.cached(&key) {
            self.count(&decision, "cache");
            return decision.map_err(AclDenied::NoPerm);
        }
        let mut args = Vec::with_capacity(argv.len() + 2);
        args.push(Value::Bytes(Bytes::from_static(b"DRYRUN")));
        args.push(Value::Bytes(key.user.clone()));
        args.extend(argv.iter().cloned().map(Value::Bytes));
        let reply: Result<Value, Error> = self.control.custom(cmd!("ACL"), args).await;
        let decision = match reply {
            Ok(value) => match value.as_bytes() {
                Some(b"OK") => Ok(()),
                Some(reason) => Err(noperm_line(&String::from_utf8_lossy(reason))),
                None => {
                    self.checks.with_label_values(&["error", "redis"]).inc();
                    return Err(AclDenied::Upstream(format!(
                        "ERR unexpected reply to ACL DRYRUN: {value:?}"
                    )));
                }
            },
            Err(error) => {
                self.checks.with_label_values(&["error", "redis"]).inc();
                return Err(AclDenied::Upstream(upstream_line(&error)));
            }
        };
        self.count(&decision, "redis");
        self.remember(key, decision.clone());
        decision.map_err(AclDenied::NoPerm)
    }

    /// Forgets every decision: rights may have changed.
    pub fn flush(&self) {
        let mut cache = self.cache.lock().expect("acl cache");
        *cache = Cache::default();
    }

    /// Decisions held now (for tests and INFO).
    pub fn len(&self) -> usize {
        self.cache.lock().expect("acl cache").decisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count(&self, decision: &Result<(), String>, source: &str) {
        let outcome = if decision.is_ok() {
            "allowed"
        } else {
            "refused"
        };
        self.checks.with_label_values(&[outcome, source]).inc();
    }

    fn cached(&self, key: &Key) -> Option<Result<(), String>> {
        let cache = self.cache.lock().expect("acl cache");
        let (at, decision) = cache.decisions.get(key)?;
        (at.elapsed() < TTL).then(|| decision.clone())
    }

    fn remember(&self, key: Key, decision: Result<(), String>) {
        let size = key.size();
        if size > MAX_BYTES / 16 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("acl cache");
        let cache = &mut *cache;
        if let Some((_, old)) = cache.decisions.remove(&key) {
            drop(old);
            cache.bytes -= size;
        }
        while cache.decisions.len() >= MAX_ENTRIES || cache.bytes + size > MAX_BYTES {
            let Some((old, at)) = cache.order.pop_front() else {
                break;
            };
            // Only the entry this order record was made for: a newer one for the same key
            // has its own record further back.
            if cache.decisions.get(&old).is_some_and(|(t, _)| *t == at) {
                cache.decisions.remove(&old);
                cache.bytes -= old.size();
            }
        }
        // Records of replaced entries stay in `order` until they reach the front; they are
        // bounded by the insertions since, so prune when they outnumber live entries.
        if cache.order.len() > 2 * MAX_ENTRIES {
            let decisions = &cache.decisions;
            cache
                .order
                .retain(|(k, at)| decisions.get(k).is_some_and(|(t, _)| t == at));
        }
        cache.bytes += size;
        cache.order.push_back((key.clone(), now));
        cache.decisions.insert(key, (now, decision));
    }
}

/// The error Redis gives a user for running a command itself, from `ACL DRYRUN`'s reason.
///
/// Redis 7.0 answers DRYRUN with `This user has no permissions to run the 'del' command`
/// (or `... to access the 'k' key` / `the 'c' channel`) and refuses the command itself with
/// `NOPERM this user has no permissions to run the 'del' command` (or `... to access one of
/// the keys used as arguments` / `channels`). Redis 7.2 and later answer DRYRUN with
/// `User u has no permissions to ...` and refuse with `NOPERM User u has no permissions to run
/// the 'del' command`, `NOPERM No permissions to access a key` / `a channel`.
pub fn noperm_line(reason: &str) -> String {
    let access = |what: &str| reason.ends_with(&format!("' {what}"));
    if let Some(rest) = reason.strip_prefix("This user has no permissions to ") {
        if rest.starts_with("access the '") && access("key") {
            return "NOPERM this user has no permissions to access one of the keys used as arguments"
                .into();
        }
        if rest.starts_with("access the '") && access("channel") {
            return "NOPERM this user has no permissions to access one of the channels used as arguments".into();
        }
        return format!("NOPERM this user has no permissions to {rest}");
    }
    if reason.starts_with("User ") && reason.contains(" has no permissions to access the '") {
        if access("key") {
            return "NOPERM No permissions to access a key".into();
        }
        if access("channel") {
            return "NOPERM No permissions to access a channel".into();
        }
    }
    format!("NOPERM {reason}")
}

/// A fred error as the `-ERR ...` line a client reads (without the `-`).
fn upstream_line(error: &Error) -> String {
    let details = error.details();
    match details.split_once(' ') {
        // A Redis error reply keeps its own code (`ERR User 'u' not found`).
        Some((code, _)) if !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase()) => {
            details.to_owned()
        }
        _ => format!("ERR upstream: {details}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_7_0_reasons_become_its_direct_errors() {
        assert_eq!(
            noperm_line("This user has no permissions to run the 'del' command"),
            "NOPERM this user has no permissions to run the 'del' command"
        );
        assert_eq!(
            noperm_line("This user has no permissions to access the 'bar' key"),
            "NOPERM this user has no permissions to access one of the keys used as arguments"
        );
        assert_eq!(
            noperm_line("This user has no permissions to access the 'ch' channel"),
            "NOPERM this user has no permissions to access one of the channels used as arguments"
        );
    }

    #[test]
    fn redis_7_2_reasons_become_its_direct_errors() {
        assert_eq!(
            noperm_line("User app has no permissions to run the 'del' command"),
            "NOPERM User app has no permissions to run the 'del' command"
        );
        assert_eq!(
            noperm_line("User app has no permissions to access the 'it's' key"),
            "NOPERM No permissions to access a key"
        );
        assert_eq!(
            noperm_line("User app has no permissions to access the 'c' channel"),
            "NOPERM No permissions to access a channel"
        );
    }
}
