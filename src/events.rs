//! EMIT: an event goes to every policy that subscribes to it; the actions of the calls that
//! succeeded are merged and applied once; follow-up events run after, one level deeper.
//!
//! Phases of one event:
//!
//! 1. **route**: the policies whose `events` globs match the name; each one's current
//!    module version is taken now and used to the end, whatever a reload does meanwhile.
//! 2. **call**: one call per policy on the policy threads ([`crate::policy::Workers`]), all
//!    at once. A call that fails (error, trap, timeout, memory, limits) contributes nothing:
//!    it is reported, counted, and its event kept in the dead-letter stream. Actions are
//!    values a call returns, so a call that traps midway has produced nothing to apply.
//! 3. **merge**: tags, keys and warm requests of the successful calls, each named once; log
//!    actions are written to the log.
//! 4. **apply**: tags through the tag index (as TAGINVALIDATE, with its stale-set
//!    guarantees), keys deleted with their index entries (as DEL through cachet), warm
//!    requests handed to [`crate::warm::Warming`].
//! 5. **follow up**: `emit` actions become events of depth + 1, up to `[events] max_depth`.
//!
//! The outcome is the client's reply, a tracing line, and (optionally) an entry of
//! `[events] log_stream`. `POLICY REPLAY` runs dead letters again through the same path.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::ClientLike;
use fred::types::Value;

use crate::config::EventsConfig;
use crate::config::policy::Unrouted;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::policy::engine::{self, Action, Event, name_to_bytes};
use crate::policy::{Backend, CallError, Entry, Reloaded};
use crate::resp::Protocol;
use crate::resp::reply::Reply;
use crate::tags::index::{TagIndex, WriteCall, WriteKey};
use crate::upstream::Upstream;
use crate::warm::{Heat, Submitted, WarmRequest, Warming};

/// What running events uses: the policies, and what their actions reach.
pub struct Events {
    pub config: EventsConfig,
    pub policies: Arc<Policies>,
    pub index: Arc<TagIndex>,
    pub upstream: Arc<Upstream>,
    pub warming: Arc<Warming>,
    pub heat: Heat,
    pub metrics: Arc<Metrics>,
}

/// Keys deleted per index call: well inside Lua's `unpack` limit.
const DELETE_CHUNK: usize = 500;

/// What an EMIT (or a replay) did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Policies that ran, each named once, in the order they first ran.
    pub policies: Vec<String>,
    /// Tags invalidated.
    pub tags: Vec<Bytes>,
    /// Keys named by delete-key actions.
    pub keys: Vec<Bytes>,
    /// Keys deleted, by tag invalidations and delete-key actions together.
    pub deleted: u64,
    pub warm: WarmCounts,
    /// `policy <name>: <reason>` for every failure.
    pub errors: Vec<String>,
    /// Calls that succeeded and failed.
    pub succeeded: usize,
    pub failed: usize,
    /// Follow-up events handled, and dropped at the depth limit.
    pub followups: usize,
    pub dropped: usize,
    pub duration: Duration,
}

/// What became of warm requests.
#[derive(Debug, Default, Clone, Copy)]
pub struct WarmCounts {
    pub queued: u64,
    pub deduplicated: u64,
    pub cold: u64,
    pub refused: u64,
}

/// What makes two warm requests the same: warmer, parameters, key.
type WarmIdentity = (String, Vec<(String, String)>, Option<Bytes>);

/// Actions of the successful calls of one event, each named once.
#[derive(Default)]
struct Merged {
    tags: Vec<Bytes>,
    seen_tags: HashSet<Bytes>,
    keys: Vec<Bytes>,
    seen_keys: HashSet<Bytes>,
    warm: Vec<WarmRequest>,
    seen_warm: HashSet<WarmIdentity>,
    followups: Vec<(String, Event)>,
}

impl Merged {
    fn add(&mut self, policy: &str, event: &Event, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::InvalidateTag(name) => {
                    let tag = Bytes::from(name_to_bytes(name));
                    if self.seen_tags.insert(tag.clone()) {
                        self.tags.push(tag);
                    }
                }
                Action::DeleteKey(name) => {
                    let key = Bytes::from(name_to_bytes(name));
                    if self.seen_keys.insert(key.clone()) {
                        self.keys.push(key);
                    }
                }
                Action::Warm(request) => {
                    let params: Vec<(String, String)> = request
                        .params
                        .into_iter()
                        .map(|p| (p.name, p.value))
                        .collect();
                    let key = request.key.map(|k| Bytes::from(name_to_bytes(k)));
                    let identity = (request.warmer.clone(), params.clone(), key.clone());
                    if self.seen_warm.insert(identity) {
                        self.warm.push(WarmRequest {
                            warmer: request.warmer,
                            params,
                            key,
                            event: event.name.clone(),
                            reason: policy.to_owned(),
                        });
                    }
                }
                Action::Emit(follow) => {
                    let mut next = engine::client_event(
                        follow.name,
                        follow
                            .fields
                            .into_iter()
                            .map(|p| (p.name, Bytes::from(p.value)))
                            .collect(),
                    );
                    next.depth = event.depth + 1;
                    self.followups.push((policy.to_owned(), next));
                }
                Action::Log(entry) => {
                    engine::log_line(policy, &event.name, entry.level, &entry.message)
                }
            }
        }
    }
}

/// Answers host imports from Redis (blocking the policy thread, never a client's) and from
/// the read-heat sketch.
struct Live {
    events: Arc<Events>,
    runtime: tokio::runtime::Handle,
}

impl Backend for Live {
    fn key_tags(&self, key: &[u8], budget: Duration) -> Vec<Vec<u8>> {
        let key = Bytes::copy_from_slice(key);
        let tags = self.runtime.block_on(async {
            match tokio::time::timeout(budget, self.events.index.tags(&key)).await {
                Ok(tags) => tags.map_err(|e| e.reply_text()),
                Err(_) => Err("no reply within the host-time budget".to_owned()),
            }
        });
        match tags {
            Ok(tags) => tags.into_iter().map(|t| t.to_vec()).collect(),
            Err(error) => {
                tracing::warn!(%error, "policy host: key-tags failed; answering none");
                Vec::new()
            }
        }
    }

    fn tag_size(&self, tag: &[u8], budget: Duration) -> u64 {
        let size: Result<u64, String> = self.runtime.block_on(async {
            match tokio::time::timeout(budget, self.events.index.tag_size(tag)).await {
                Ok(size) => size.map_err(|e| e.to_string()),
                Err(_) => Err("no reply within the host-time budget".to_owned()),
            }
        });
        size.unwrap_or_else(|error| {
            tracing::warn!(%error, "policy host: tag-size failed; answering 0");
            0
        })
    }

    fn key_heat(&self, key: &[u8]) -> u32 {
        self.events.heat.estimate(key)
    }
}

/// Runs `event` through its policies (or through `only`, for a replay) and everything that
/// follows from it.
pub async fn run(events: &Arc<Events>, root: Event, only: Option<Arc<Entry>>) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let backend: Arc<dyn Backend> = Arc::new(Live {
        events: events.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let replay = only.is_some();
    let max_depth = events.config.max_depth;
    let mut queue = VecDeque::from([(only, root)]);
    let mut first = true;
    while let Some((only, event)) = queue.pop_front() {
        // A replayed event that fails again keeps its dead letter; it needs no second one.
        let keep_failures = !(replay && std::mem::take(&mut first));
        let entries = match only {
            Some(entry) => vec![entry],
            None => events.policies.subscribed(&event.name),
        };
        let mut merged = Merged::default();
        let mut succeeded = Vec::new();
        let event = Arc::new(event);
        let mut calls = Vec::with_capacity(entries.len());
        for entry in &entries {
            let version = entry.current();
            let (event, backend) = (event.clone(), backend.clone());
            let submitted = events.policies.workers.submit(move || {
                let began = Instant::now();
                let (result, host_calls) = version.module.call_counted(&event, backend);
                (result, began.elapsed(), host_calls)
            });
            calls.push((entry.clone(), submitted));
        }
        for (entry, submitted) in calls {
            let name = entry.name();
            if !outcome.policies.iter().any(|p| p == name) {
                outcome.policies.push(name.to_owned());
            }
            let result = match submitted {
                Ok(done) => done.await.map_err(|_| crate::policy::Busy),
                Err(busy) => Err(busy),
            };
            let (result, took, host_calls) = match result {
                Ok(ran) => ran,
                Err(busy) => (Err(CallError::Limit(busy.to_string())), Duration::ZERO, 0),
            };
            record(events, &entry, took, host_calls, result.as_ref().err());
            match result {
                Ok(actions) => {
                    outcome.succeeded += 1;
                    merged.add(name, &event, actions);
                    succeeded.push(name.to_owned());
                }
                Err(error) => {
                    outcome.failed += 1;
                    let message = format!("policy {name}: {error}");
                    tracing::warn!(policy = name, event = %event.name, kind = error.kind(), %error, "policy call failed");
                    if keep_failures {
                        dead_letter(events, &event, name, &message).await;
                    }
                    outcome.errors.push(message);
                }
            }
        }
        apply(events, &event, &mut merged, &succeeded, &mut outcome).await;
        for (policy, next) in merged.followups {
            if next.depth > max_depth {
                outcome.dropped += 1;
                outcome.errors.push(format!(
                    "policy {policy}: follow-up event '{}' dropped: depth limit {max_depth} reached",
                    next.name
                ));
            } else {
                outcome.followups += 1;
                queue.push_back((None, next));
            }
        }
    }
    outcome.duration = started.elapsed();
    outcome
}

fn record(
    events: &Events,
    entry: &Entry,
    took: Duration,
    host_calls: u32,
    error: Option<&CallError>,
) {
    let name = entry.name();
    entry.stats.record(took, error);
    let metrics = &events.metrics;
    metrics.policy_calls.with_label_values(&[name]).inc();
    metrics
        .policy_host_calls
        .with_label_values(&[name])
        .inc_by(u64::from(host_calls));
    metrics
        .policy_duration
        .with_label_values(&[name])
        .observe(took.as_secs_f64());
    if let Some(error) = error {
        metrics
            .policy_errors
            .with_label_values(&[name, error.kind()])
            .inc();
    }
}

/// Applies one event's merged actions.
async fn apply(
    events: &Arc<Events>,
    event: &Event,
    merged: &mut Merged,
    policies: &[String],
    outcome: &mut Outcome,
) {
    let mut failure = None;
    if !merged.tags.is_empty() {
        let tags = &merged.tags;
        match events.index.invalidate(tags).await {
            Ok(n) => {
                events.metrics.invalidations.inc_by(tags.len() as u64);
                events.metrics.keys_invalidated.inc_by(n);
                outcome.deleted += n;
                outcome.tags.extend(tags.iter().cloned());
            }
            Err(error) => failure = Some(error.reply_text()),
        }
    }
    for chunk in merged.keys.chunks(DELETE_CHUNK) {
        match delete_keys(events, chunk).await {
            Ok(n) => {
                outcome.deleted += n;
                outcome.keys.extend(chunk.iter().cloned());
            }
            Err(error) => failure = Some(error),
        }
    }
    for request in merged.warm.drain(..) {
        let counts = &mut outcome.warm;
        match events.warming.submit(request) {
            Submitted::Queued => counts.queued += 1,
            Submitted::Deduplicated => counts.deduplicated += 1,
            Submitted::Cold => counts.cold += 1,
            Submitted::Refused(reason) => {
                counts.refused += 1;
                tracing::debug!(%reason, event = %event.name, "warm request refused");
            }
        }
    }
    if let Some(error) = failure {
        // The decision was made but not carried out: keep the event, or data stays stale.
        for policy in policies {
            let message = format!("policy {policy}: applying its actions failed: {error}");
            dead_letter(events, event, policy, &message).await;
            outcome.errors.push(message);
        }
    }
}

/// Deletes keys as a DEL through cachet would: inside the index function, so their index
/// entries go with them.
async fn delete_keys(events: &Arc<Events>, keys: &[Bytes]) -> Result<u64, String> {
    let mut command = vec![Bytes::from_static(b"DEL")];
    command.extend(keys.iter().cloned());
    let writes: Vec<WriteKey> = keys
        .iter()
        .map(|key| WriteKey {
            key: key.clone(),
            ..WriteKey::default()
        })
        .collect();
    let call = WriteCall {
        command: &command,
        keys: &writes,
        protocol: Protocol::Resp2,
        explicit_ttl: false,
        allow_oom: true,
    };
    match events.index.write(&call).await {
        Ok(deleted) => Ok(deleted.as_u64().unwrap_or(0)),
        Err(error) => Err(error.reply_text()),
    }
}

/// Keeps a failed event in the dead-letter stream for `POLICY REPLAY`.
async fn dead_letter(events: &Events, event: &Event, policy: &str, error: &str) {
    let config = &events.config;
    let mut args = vec![
        Value::from(config.dead_letter_stream.as_str()),
        Value::from("MAXLEN"),
        Value::from("~"),
        Value::from(config.dead_letter_maxlen as i64),
        Value::from("*"),
        Value::from("event"),
        Value::from(event.name.as_str()),
        Value::from("policy"),
        Value::from(policy),
        Value::from("error"),
        Value::from(error),
        Value::from("depth"),
        Value::from(event.depth as i64),
        Value::from("time"),
        Value::from(event.time_ms as i64),
    ];
    for field in &event.fields {
        args.push(Value::from(format!("field:{}", field.name)));
        args.push(Value::Bytes(Bytes::from(field.raw.clone())));
    }
    let added: Result<Value, _> = events
        .upstream
        .control()
        .custom(fred::cmd!("XADD"), args)
        .await;
    events.metrics.dead_letters.inc();
    if let Err(failure) = added {
        // The event is lost for replay; say so loudly with everything needed to redo it.
        tracing::error!(%failure, event = %event.name, policy, error, "cannot keep a dead letter");
    }
}

/// EMIT: runs the event, logs it, answers the client. An event no policy subscribes to is,
/// like a PUBLISH nobody hears, answered with the empty result (or an error, with
/// `[events] unrouted = "error"`).
pub async fn emit(events: Arc<Events>, event: Event) -> Reply {
    if events.policies.subscribed(&event.name).is_empty() {
        events
            .metrics
            .events
            .with_label_values(&["unsubscribed"])
            .inc();
        if events.config.unrouted == Unrouted::Error {
            return Reply::error(format!(
                "ERR no policy subscribes to event '{}'",
                event.name
            ));
        }
        events.metrics.events_unrouted.inc();
        tracing::debug!(event = %event.name, "EMIT of an event no policy subscribes to");
        return outcome_reply(&Outcome::default());
    }
    let name = event.name.clone();
    let outcome = run(&events, event, None).await;
    let label = match (outcome.succeeded, outcome.errors.is_empty()) {
        (_, true) => "ok",
        (0, false) => "failed",
        _ => "partial",
    };
    events.metrics.events.with_label_values(&[label]).inc();
    tracing::info!(
        event = %name,
        policies = %outcome.policies.join(","),
        tags = outcome.tags.len(),
        keys = outcome.keys.len(),
        deleted = outcome.deleted,
        warm = outcome.warm.queued,
        errors = outcome.errors.len(),
        duration_us = outcome.duration.as_micros() as u64,
        "EMIT"
    );
    log_event(&events, &name, &outcome).await;
    if outcome.succeeded == 0 {
        return Reply::error(format!("ERR {}", outcome.errors.join("; ")));
    }
    outcome_reply(&outcome)
}

/// The EMIT reply: a map (flat array in RESP2).
pub fn outcome_reply(outcome: &Outcome) -> Reply {
    let text = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
    let count = |n: u64| Reply::Integer(n as i64);
    let warm = outcome.warm;
    Reply::Map(vec![
        (
            text("policies"),
            Reply::Array(outcome.policies.iter().map(|p| text(p)).collect()),
        ),
        (
            text("tags"),
            Reply::Array(outcome.tags.iter().cloned().map(Reply::Bulk).collect()),
        ),
        (
            text("keys"),
            Reply::Array(outcome.keys.iter().cloned().map(Reply::Bulk).collect()),
        ),
        (text("deleted"), count(outcome.deleted)),
        (text("warm"), count(warm.queued)),
        (text("warm_deduplicated"), count(warm.deduplicated)),
        (text("warm_cold"), count(warm.cold)),
        (text("warm_refused"), count(warm.refused)),
        (text("followups"), count(outcome.followups as u64)),
        (text("followups_dropped"), count(outcome.dropped as u64)),
        (
            text("errors"),
            Reply::Array(outcome.errors.iter().map(|e| text(e)).collect()),
        ),
        (
            text("duration_us"),
            count(outcome.duration.as_micros() as u64),
        ),
    ])
}

/// Appends the EMIT and its outcome to `[events] log_stream`, when configured.
async fn log_event(events: &Events, name: &str, outcome: &Outcome) {
    let Some(stream) = &events.config.log_stream else {
        return;
    };
    let join = |items: &[Bytes]| {
        let parts: Vec<String> = items
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        parts.join(" ")
    };
    let args = vec![
        Value::from(stream.as_str()),
        Value::from("MAXLEN"),
        Value::from("~"),
        Value::from(events.config.log_maxlen as i64),
        Value::from("*"),
        Value::from("event"),
        Value::from(name),
        Value::from("policies"),
        Value::from(outcome.policies.join(" ")),
        Value::from("tags"),
        Value::from(join(&outcome.tags)),
        Value::from("keys"),
        Value::from(join(&outcome.keys)),
        Value::from("deleted"),
        Value::from(outcome.deleted as i64),
        Value::from("warm"),
        Value::from(outcome.warm.queued as i64),
        Value::from("errors"),
        Value::from(outcome.errors.join("; ")),
        Value::from("duration_us"),
        Value::from(outcome.duration.as_micros() as i64),
    ];
    let added: Result<Value, _> = events
        .upstream
        .control()
        .custom(fred::cmd!("XADD"), args)
        .await;
    if let Err(error) = added {
        tracing::warn!(%error, "cannot append to the event log stream");
    }
}

/// What `POLICY REPLAY` did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub replayed: u64,
    pub succeeded: u64,
    pub errors: Vec<String>,
}

/// Runs up to `count` dead letters again (only `policy`'s, when given), oldest first. A
/// replay that succeeds removes its entry; one that fails leaves it where it was.
/// The dead-letter stream's entries from `start` on, 100 at most; `None` past the end.
async fn dead_letter_page(
    control: &fred::clients::Client,
    stream: &str,
    start: &str,
) -> Result<Option<Vec<Value>>, String> {
    let page: Value = control
        .custom(
            fred::cmd!("XRANGE"),
            vec![
                Value::from(stream),
                Value::from(start),
                Value::from("+"),
                Value::from("COUNT"),
                Value::from(100),
            ],
        )
        .await
        .map_err(|e| format!("ERR upstream: {e}"))?;
    Ok(match page {
        Value::Array(entries) if !entries.is_empty() => Some(entries),
        _ => None,
    })
}

pub async fn replay(
    events: &Arc<Events>,
    policy: Option<&str>,
    count: u64,
) -> Result<Replayed, String> {
    let stream = events.config.dead_letter_stream.as_str();
    let control = events.upstream.control();
    let mut done = Replayed::default();
    let mut start = "-".to_owned();
    while done.replayed < count {
        let Some(entries) = dead_letter_page(control, stream, &start).await? else {
            break;
        };
        for item in entries {
            let Some((id, letter)) = parse_letter(item) else {
                continue;
            };
            start = format!("({id}");
            if policy.is_some_and(|p| p != letter.policy) {
                continue;
            }
            if done.replayed == count {
                break;
            }
            done.replayed += 1;
            let Some(entry) = events.policies.get(&letter.policy).cloned() else {
                done.errors
                    .push(format!("{id}: no policy named '{}'", letter.policy));
                continue;
            };
            let outcome = run(events, letter.event, Some(entry)).await;
            if outcome.failed == 0 {
                done.succeeded += 1;
                let _: Result<Value, _> = control
                    .custom(
                        fred::cmd!("XDEL"),
                        vec![Value::from(stream), Value::from(id.as_str())],
                    )
                    .await;
            } else {
                done.errors
                    .extend(outcome.errors.into_iter().map(|e| format!("{id}: {e}")));
            }
        }
    }
    Ok(done)
}

/// Dead letters `POLICY DROP` removes: events that will never replay (a poison event, or a
/// policy that is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doomed {
    /// These entries, by stream id (as `POLICY REPLAY`'s errors and `XRANGE` name them).
    Ids(Vec<Bytes>),
    /// Every entry of this policy, whether or not it is still configured.
    Policy(String),
}

/// Removes dead letters without running them; answers how many were removed, like XDEL.
pub async fn drop_letters(events: &Events, doomed: &Doomed) -> Result<u64, String> {
    let stream = events.config.dead_letter_stream.as_str();
    let control = events.upstream.control();
    let xdel = |ids: Vec<Value>| async move {
        let mut args = vec![Value::from(stream)];
        args.extend(ids);
        let removed: Value = control
            .custom(fred::cmd!("XDEL"), args)
            .await
            .map_err(|e| format!("ERR upstream: {e}"))?;
        Ok::<u64, String>(removed.as_u64().unwrap_or(0))
    };
    let policy = match doomed {
        Doomed::Ids(ids) => return xdel(ids.iter().cloned().map(Value::Bytes).collect()).await,
        Doomed::Policy(policy) => policy,
    };
    // A page at a time, as POLICY REPLAY reads them: the stream is capped
    // (`dead_letter_maxlen`), so this ends.
    let mut removed = 0;
    let mut start = "-".to_owned();
    loop {
        let Some(entries) = dead_letter_page(control, stream, &start).await? else {
            return Ok(removed);
        };
        let mut ids = Vec::new();
        for item in entries {
            let Some((id, letter)) = parse_letter(item) else {
                continue;
            };
            start = format!("({id}");
            if letter.policy == *policy {
                ids.push(Value::from(id));
            }
        }
        if !ids.is_empty() {
            removed += xdel(ids).await?;
        }
    }
}

/// Whether `id` is a stream entry id (`ms` or `ms-seq`), as XDEL accepts it.
pub fn is_stream_id(id: &[u8]) -> bool {
    let number = |part: &[u8]| {
        !part.is_empty() && std::str::from_utf8(part).is_ok_and(|text| text.parse::<u64>().is_ok())
    };
    match id.iter().position(|&b| b == b'-') {
        Some(at) => number(&id[..at]) && number(&id[at + 1..]),
        None => number(id),
    }
}

struct Letter {
    policy: String,
    event: Event,
}

fn parse_letter(item: Value) -> Option<(String, Letter)> {
    let Value::Array(mut parts) = item else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = parts.pop()?.as_string()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut policy = String::new();
    let mut name = String::new();
    let mut depth = 0;
    let mut time_ms = 0;
    let mut event_fields = Vec::new();
    for pair in fields.chunks(2) {
        let [key, value] = pair else { return None };
        let key = key.as_string()?;
        match key.as_str() {
            "policy" => policy = value.as_string()?,
            "event" => name = value.as_string()?,
            "depth" => depth = value.as_u64()? as u32,
            "time" => time_ms = value.as_u64()?,
            _ => {
                if let Some(field) = key.strip_prefix("field:") {
                    let raw = value
                        .as_bytes()
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default();
                    event_fields.push((field.to_owned(), raw));
                }
            }
        }
    }
    let mut event = engine::client_event(name, event_fields);
    event.depth = depth;
    event.time_ms = time_ms;
    Some((id, Letter { policy, event }))
}

/// Reloads one policy and counts the outcome. A file found as it was last looked at is no
/// reload and is not counted: the watcher finds one on nearly every tick.
pub async fn reload(events: &Events, entry: &Arc<Entry>, force: bool) -> Reloaded {
    let reloaded = events.policies.reload(entry, force).await;
    let outcome = match &reloaded {
        Reloaded::Replaced { .. } => "ok",
        Reloaded::Unchanged => return reloaded,
        Reloaded::Failed(_) => "failed",
    };
    events
        .metrics
        .policy_reloads
        .with_label_values(&[entry.name(), outcome])
        .inc();
    reloaded
}

/// Reloads every policy whose module file changed, every `[events] watch_ms`, and every
/// policy on SIGHUP, until `shutdown`.
pub async fn watch(events: Arc<Events>, shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if events.policies.is_empty() {
        return;
    }
    let mut hangup = signal(SignalKind::hangup()).ok();
    let every = Duration::from_millis(events.config.watch_ms);
    let mut tick = (!every.is_zero()).then(|| tokio::time::interval(every));
    loop {
        let force = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async { tick.as_mut().expect("checked").tick().await }, if tick.is_some() => false,
            _ = async { hangup.as_mut().expect("checked").recv().await }, if hangup.is_some() => {
                tracing::info!("SIGHUP: reloading every policy");
                true
            }
        };
        for entry in &events.policies.entries {
            reload(&events, entry, force).await;
        }
    }
}
