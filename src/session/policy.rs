//! `EMIT` and `POLICY`: checked here, on the client's task, then run by [`crate::events`] on
//! the control client like the TAG commands (after this client's earlier commands, before its
//! later ones). Policy calls themselves run on the policy threads, never on this task.

use bytes::Bytes;

use super::Session;
use crate::events;
use crate::policy::Reloaded;
use crate::resp::Request;
use crate::resp::reply::Reply;

/// Dead letters replayed by `POLICY REPLAY` without a COUNT.
const DEFAULT_REPLAY_COUNT: u64 = 100;

fn arity_error(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

impl Session {
    /// `EMIT event [field value ...]` and `POLICY LIST | RELOAD [name] | REPLAY [name]
    /// [COUNT n] | DROP id [id ...] | DROP name ALL`, past the gate of cachet's own commands
    /// (`route::gate`).
    pub(super) fn policy_command(&mut self, request: Request, name: &[u8]) {
        match name {
            b"emit" => self.emit(request),
            _ => self.policy(request),
        }
    }

    fn emit(&mut self, request: Request) {
        let limits = &self.services.events.config;
        let args = &request.args;
        if args.len() < 2 || !args.len().is_multiple_of(2) {
            return self.reply_local(arity_error("emit"));
        }
        let total: usize = args[1..].iter().map(Bytes::len).sum();
        if total > limits.max_event_bytes {
            return self.reply_local(Reply::error(format!(
                "ERR event too large: {total} bytes, the limit is {}",
                limits.max_event_bytes
            )));
        }
        let Ok(event_name) = std::str::from_utf8(&args[1]) else {
            return self.reply_local(Reply::error("ERR event name must be UTF-8"));
        };
        if event_name.is_empty() || event_name.len() > limits.max_name_bytes {
            return self.reply_local(Reply::error(format!(
                "ERR event name must be 1 to {} bytes",
                limits.max_name_bytes
            )));
        }
        let mut fields = Vec::with_capacity((args.len() - 2) / 2);
        for pair in args[2..].chunks(2) {
            let Ok(field) = std::str::from_utf8(&pair[0]) else {
                return self.reply_local(Reply::error("ERR event field names must be UTF-8"));
            };
            fields.push((field.to_owned(), pair[1].clone()));
        }
        if let Err(refused) = self.granted(crate::config::Permission::Emit(event_name)) {
            return self.reply_local(refused);
        }
        let event = crate::policy::engine::client_event(event_name.to_owned(), fields);
        self.reply_later(request, move |services| {
            events::emit(services.events.clone(), event)
        });
    }

    fn policy(&mut self, request: Request) {
        let args = request.args.clone();
        let Some(sub) = args.get(1) else {
            return self.reply_local(arity_error("policy"));
        };
        let changes = [&b"reload"[..], b"replay", b"drop"]
            .iter()
            .any(|s| sub.eq_ignore_ascii_case(s));
        if changes && let Err(refused) = self.granted(crate::config::Permission::Policy) {
            return self.reply_local(refused);
        }
        match sub.to_ascii_lowercase().as_slice() {
            b"list" if args.len() == 2 => {
                self.reply_later(request, |services| async move { list(&services) })
            }
            b"reload" if args.len() <= 3 => {
                let only = args.get(2).map(|n| String::from_utf8_lossy(n).into_owned());
                if let Some(name) = &only
                    && self.services.events.policies.get(name).is_none()
                {
                    return self.reply_local(Reply::error(format!("ERR no policy named '{name}'")));
                }
                self.reply_later(request, move |services| async move {
                    let mut replies = Vec::new();
                    for entry in &services.events.policies.entries {
                        if only.as_deref().is_some_and(|n| n != entry.name()) {
                            continue;
                        }
                        let reloaded = events::reload(&services.events, entry, true).await;
                        if let (Some(_), Reloaded::Failed(error)) = (&only, &reloaded) {
                            return Reply::error(format!(
                                "ERR policy {}: reload failed, the previous version keeps serving: {error}",
                                entry.name()
                            ));
                        }
                        replies.push(reload_reply(entry.name(), &reloaded));
                    }
                    match only {
                        Some(_) => replies.pop().unwrap_or(Reply::Null),
                        None => Reply::Array(replies),
                    }
                })
            }
            b"replay" => {
                let mut policy = None;
                let mut count = DEFAULT_REPLAY_COUNT;
                let mut rest = &args[2..];
                if let Some(first) = rest.first()
                    && !first.eq_ignore_ascii_case(b"count")
                {
                    policy = Some(String::from_utf8_lossy(first).into_owned());
                    rest = &rest[1..];
                }
                match rest {
                    [] => {}
                    [word, n] if word.eq_ignore_ascii_case(b"count") => {
                        match std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()) {
                            Some(n) if n > 0 => count = n,
                            _ => {
                                return self.reply_local(Reply::error(
                                    "ERR value is not an integer or out of range",
                                ));
                            }
                        }
                    }
                    _ => return self.reply_local(Reply::error("ERR syntax error")),
                }
                self.reply_later(request, move |services| async move {
                    match events::replay(&services.events, policy.as_deref(), count).await {
                        Err(error) => Reply::error(error),
                        Ok(done) => Reply::Map(vec![
                            (bulk("replayed"), Reply::Integer(done.replayed as i64)),
                            (bulk("succeeded"), Reply::Integer(done.succeeded as i64)),
                            (
                                bulk("errors"),
                                Reply::Array(done.errors.iter().map(|e| bulk(e)).collect()),
                            ),
                        ]),
                    }
                })
            }
            b"drop" => {
                let doomed = match &args[2..] {
                    [] => return self.reply_local(arity_error("policy|drop")),
                    [policy, all] if all.eq_ignore_ascii_case(b"all") => {
                        events::Doomed::Policy(String::from_utf8_lossy(policy).into_owned())
                    }
                    ids => {
                        if !ids.iter().all(|id| events::is_stream_id(id)) {
                            return self.reply_local(Reply::error(
                                "ERR Invalid stream ID specified as stream command argument",
                            ));
                        }
                        events::Doomed::Ids(ids.to_vec())
                    }
                };
                self.reply_later(request, move |services| async move {
                    match events::drop_letters(&services.events, &doomed).await {
                        Ok(removed) => Reply::Integer(removed as i64),
                        Err(error) => Reply::error(error),
                    }
                })
            }
            b"list" | b"reload" => {
                let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
                self.reply_local(arity_error(&format!("policy|{sub}")))
            }
            _ => self.reply_local(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try POLICY LIST, POLICY RELOAD, POLICY REPLAY, POLICY DROP.",
                String::from_utf8_lossy(sub)
            ))),
        }
    }
}

fn bulk(text: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()))
}

fn reload_reply(name: &str, reloaded: &Reloaded) -> Reply {
    let (outcome, detail) = match reloaded {
        Reloaded::Replaced { digest } => ("replaced", digest.as_str()),
        Reloaded::Unchanged => ("unchanged", ""),
        Reloaded::Failed(error) => ("failed", error.as_str()),
    };
    Reply::Map(vec![
        (bulk("policy"), bulk(name)),
        (bulk("outcome"), bulk(outcome)),
        (bulk("detail"), bulk(detail)),
    ])
}

/// `POLICY LIST`: one map per policy.
fn list(services: &super::Services) -> Reply {
    use std::sync::atomic::Ordering::Relaxed;
    let policies = services.events.policies.entries.iter().map(|entry| {
        let version = entry.current();
        let stats = &entry.stats;
        let (mean, p99) = stats.durations();
        let count = |n: u64| Reply::Integer(n as i64);
        Reply::Map(vec![
            (bulk("name"), bulk(entry.name())),
            (
                bulk("events"),
                Reply::Array(entry.config.events.iter().map(|e| bulk(e)).collect()),
            ),
            (
                bulk("module"),
                bulk(&entry.config.module.display().to_string()),
            ),
            (bulk("digest"), bulk(&format!("sha256:{}", version.digest))),
            (bulk("calls"), count(stats.calls.load(Relaxed))),
            (bulk("errors"), count(stats.errors.load(Relaxed))),
            (bulk("traps"), count(stats.traps.load(Relaxed))),
            (bulk("reloads"), count(stats.reloads.load(Relaxed))),
            (
                bulk("failed_reloads"),
                count(stats.failed_reloads.load(Relaxed)),
            ),
            (bulk("mean_ns"), count(mean.as_nanos() as u64)),
            (bulk("p99_ns"), count(p99.as_nanos() as u64)),
        ])
    });
    Reply::Array(policies.collect())
}
