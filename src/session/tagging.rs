//! The index phase of a command: writes to keys that match a `[[rules]]` pattern become one
//! call of the tag index's `cachet_write` function (the write, its tags and TTL in one atomic
//! step), or, for a plain `SET [EX|PX]` with no lease to check, one MULTI/EXEC block of plain
//! commands that does the same for a fraction of Redis's time (`index::FastSet`); reads of
//! such keys remember the tag epochs they saw when they miss; and the `TAG*` commands.
//!
//! Keys that match no rule go to Redis untouched; with no rules configured this module costs
//! one `is_empty` check per command.
//!
//! **Stale sets.** A client that reads a key, misses, recomputes the value and writes it
//! back can race a `TAGINVALIDATE` (on any cachet instance): the value it computed predates
//! the invalidation. Before such a read cachet reads the epochs of the key's tags on the same
//! connection (so they are no newer than the read), keeps them when the read misses, and
//! hands them to the write; the index function then refuses to let the value survive if any
//! tag was invalidated since. Like a memcache lease, this is per client connection.
//!
//! One connection may carry several requests at once (ioredis, fred and most clients
//! multiplex one connection), so two misses of the same key can be outstanding and cachet
//! cannot tell which write answers which miss. A key's lease therefore keeps every
//! outstanding miss, and a write is checked against the oldest epochs among them, and uses
//! up the newest miss: a value that may have been computed before an invalidation never
//! survives it, whatever order the writes come in. The price: while a miss from before an
//! invalidation is outstanding (at most `SNAPSHOT_TTL`), writes of that key on that
//! connection are dropped and recomputed later. A hit does not end a lease for the same
//! reason: it may belong to another request on the connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::ClientLike;

use super::observe::{self, Lookup};
use super::{Session, Slot};
use crate::resp::Request;
use crate::resp::commands::CommandInfo;
use crate::resp::reply::Reply;
use crate::tags::index::{self, FastSet, WriteCall, WriteKey};
use crate::upstream::Upstream;

/// How long a miss's epochs are kept for the write that usually follows (a memcache lease
/// lives 10 s too). A recompute slower than this writes unchecked.
const SNAPSHOT_TTL: Duration = Duration::from_secs(10);
/// Most keys with remembered misses per client connection. A miss past it, or past
/// [`SNAPSHOT_BYTES`], gets no lease: its write is not checked against invalidations. Such
/// misses are counted (`cachet_leases_dropped_total`, `leases_dropped` in INFO) and logged, at
/// most once per [`SNAPSHOT_TTL`] per process.
pub(crate) const SNAPSHOT_CAP: usize = 4096;
/// Most bytes the leases of one client connection may hold (keys, epochs and bookkeeping, see
/// [`key_bytes`] and [`miss_bytes`]): 4,096 leases of keys up to about 140 bytes with two tags
/// fit; big keys hit this first.
pub(crate) const SNAPSHOT_BYTES: usize = 1 << 20;
/// Most outstanding misses remembered for one key of one connection.
const MISSES_PER_KEY: usize = 64;
/// Most tagged SETs gathered into one transaction ([`index::FastBatch`]).
const FAST_BATCH_MAX: usize = 64;

/// What to do with each frame of a pooled batch's replies, when the batch holds more than
/// plain forwarded commands.
#[derive(Debug)]
pub(super) enum Inspect {
    /// Frames to forward as they are.
    Pass(usize),
    /// The reply to cachet's own epoch read: keep, do not forward.
    Epochs,
    /// A read of a rule-matched key: forward, and remember the epochs if it missed; count
    /// it under its rule (by index) when it is a lookup.
    Read(Bytes, Option<(Lookup, u16)>),
    /// A lookup of keys that match no rule: forward, count under `none`.
    Lookup(Lookup),
    /// MGET with rules configured: forward, count each element under its key's rule.
    Elements(Vec<u16>),
    /// Redis's INFO reply: append cachet's section.
    Info,
    /// A [`index::FastBatch`] of `frames` reply frames holding `sets` SETs: forward the SETs'
    /// replies only, and note the tags whose sets gained a key (their `ZADD` answered more
    /// than 0).
    Fast {
        frames: usize,
        sets: usize,
        tags: Vec<Bytes>,
    },
    /// A command of cachet's own whose reply nobody waits for.
    Drop,
}

impl Inspect {
    /// Reply frames of this step that the client is not owed.
    pub(super) fn hidden_frames(&self) -> usize {
        match self {
            Inspect::Pass(_)
            | Inspect::Read(..)
            | Inspect::Lookup(_)
            | Inspect::Elements(_)
            | Inspect::Info => 0,
            Inspect::Epochs | Inspect::Drop => 1,
            Inspect::Fast { frames, sets, .. } => frames - sets,
        }
    }
}

/// Tag epochs seen before reads that missed, by key: each key's outstanding misses, oldest
/// first.
#[derive(Debug, Default)]
pub(super) struct Snapshots {
    by_key: HashMap<Bytes, VecDeque<(Vec<u64>, Instant)>>,
    /// What the leases hold, as [`key_bytes`] and [`miss_bytes`] count it.
    bytes: usize,
    /// While full: no miss expires before this, so a new lease need not look for one (a
    /// full map is walked at most once per expiry, not once per miss).
    full_until: Option<Instant>,
}

/// What a key's entry costs against [`SNAPSHOT_BYTES`]: its bytes and the map's share.
fn key_bytes(key: &[u8]) -> usize {
    key.len() + 64
}

/// What one remembered miss costs against [`SNAPSHOT_BYTES`].
fn miss_bytes(epochs: &[u64]) -> usize {
    48 + 8 * epochs.len()
}

impl Snapshots {
    /// Remembers a miss of `key`; false if that would take the connection past
    /// [`SNAPSHOT_CAP`] keys or [`SNAPSHOT_BYTES`] with no lease expired, and this miss gets
    /// none.
    #[must_use]
    fn insert(&mut self, key: Bytes, epochs: Vec<u64>) -> bool {
        let cost = |s: &Self| match s.by_key.contains_key(&key) {
            true => miss_bytes(&epochs),
            false => miss_bytes(&epochs) + key_bytes(&key),
        };
        let fits = |s: &Self| {
            (s.by_key.len() < SNAPSHOT_CAP || s.by_key.contains_key(&key))
                && s.bytes + cost(s) <= SNAPSHOT_BYTES
        };
        if !fits(self) {
            let now = Instant::now();
            if self.full_until.is_some_and(|until| now < until) {
                return false;
            }
            self.expire(now);
            if !fits(self) {
                return false;
            }
        }
        self.bytes += cost(self);
        // Copied: the key is a slice of its request, which must not live as long as the lease.
        let misses = self.by_key.entry(Bytes::copy_from_slice(&key)).or_default();
        if misses.len() == MISSES_PER_KEY
            && let Some((old, _)) = misses.pop_front()
        {
            self.bytes -= miss_bytes(&old);
        }
        misses.push_back((epochs, Instant::now()));
        true
    }

    /// Drops every expired miss, and notes when the next one expires.
    fn expire(&mut self, now: Instant) {
        let mut oldest: Option<Instant> = None;
        let mut freed = 0;
        self.by_key.retain(|key, misses| {
            while let Some((epochs, _)) = misses
                .front()
                .filter(|(_, at)| now.duration_since(*at) >= SNAPSHOT_TTL)
            {
                freed += miss_bytes(epochs);
                misses.pop_front();
            }
            match misses.front() {
                Some((_, at)) => oldest = Some(oldest.map_or(*at, |o| o.min(*at))),
                None => freed += key_bytes(key),
            }
            !misses.is_empty()
        });
        self.bytes -= freed;
        self.full_until = oldest.map(|at| at + SNAPSHOT_TTL);
    }

    /// Whether a write of `key` has a lease to check (the newest miss has not expired).
    fn holds(&self, key: &[u8]) -> bool {
        !self.by_key.is_empty()
            && self
                .by_key
                .get(key)
                .and_then(|misses| misses.back())
                .is_some_and(|(_, at)| at.elapsed() < SNAPSHOT_TTL)
    }

    /// The epochs a write of `key` is checked against: per tag, the oldest any outstanding
    /// miss saw. The write answers one of those misses; the newest is used up, so a miss
    /// from before an invalidation keeps guarding the writes after it until it expires.
    fn take(&mut self, key: &[u8]) -> Option<Vec<u64>> {
        let misses = self.by_key.get_mut(key)?;
        let mut freed = 0;
        while let Some((epochs, _)) = misses
            .front()
            .filter(|(_, at)| at.elapsed() >= SNAPSHOT_TTL)
        {
            freed += miss_bytes(epochs);
            misses.pop_front();
        }
        let mut oldest: Option<Vec<u64>> = None;
        for (epochs, _) in misses.iter() {
            match &mut oldest {
                None => oldest = Some(epochs.clone()),
                Some(low) if low.len() == epochs.len() => {
                    low.iter_mut()
                        .zip(epochs)
                        .for_each(|(l, e)| *l = (*l).min(*e));
                }
                // Another tag list (the config changed between the misses): the older one.
                Some(_) => {}
            }
        }
        if let Some((epochs, _)) = misses.pop_back() {
            freed += miss_bytes(&epochs);
        }
        if misses.is_empty() {
            self.by_key.remove(key);
            freed += key_bytes(key);
        }
        self.bytes -= freed;
        oldest
    }
}

/// Counts a miss that got no lease ([`SNAPSHOT_CAP`], [`SNAPSHOT_BYTES`]), and says so in the log at most once
/// per [`SNAPSHOT_TTL`] in this process.
#[cold]
fn lease_dropped(client: i64, metrics: &crate::metrics::Metrics) {
    metrics.leases_dropped.inc();
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    static NEXT_WARNING_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64;
    if warn_now(&NEXT_WARNING_MS, now_ms, SNAPSHOT_TTL.as_millis() as u64) {
        tracing::warn!(
            client,
            max_keys = SNAPSHOT_CAP,
            max_bytes = SNAPSHOT_BYTES,
            dropped_total = metrics.leases_dropped.get(),
            "a connection holds all the read leases it may: its new misses get none, so their \
             writes are not checked against invalidations (stale sets possible)"
        );
    }
}

/// Whether to warn at `now_ms`: true once per `every_ms`, whichever thread asks first.
fn warn_now(next_ms: &AtomicU64, now_ms: u64, every_ms: u64) -> bool {
    let next = next_ms.load(Ordering::Relaxed);
    now_ms >= next
        && next_ms
            .compare_exchange(
                next,
                now_ms + every_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
}

/// Commands that set or clear a TTL on purpose: the rule's TTL must not replace what they did.
fn sets_ttl_explicitly(name: &[u8], request: &Request) -> bool {
    match name {
        b"persist" | b"expire" | b"pexpire" | b"expireat" | b"pexpireat" | b"getex" | b"setex"
        | b"psetex" => true,
        b"set" => request.args[3..].iter().any(|a| {
            let a = a.to_ascii_lowercase();
            matches!(a.as_slice(), b"ex" | b"px" | b"exat" | b"pxat" | b"keepttl")
        }),
        _ => false,
    }
}

/// Runs an index operation on the control connection, loading cachet's function library
/// first if this cachet has not yet, and again if Redis lost it (a restart without
/// persistence, FUNCTION FLUSH). Errors come back as reply text.
pub(crate) async fn index_op<T, Fut>(
    upstream: &Upstream,
    mut operation: impl FnMut() -> Fut,
) -> Result<T, String>
where
    Fut: Future<Output = Result<T, index::IndexError>>,
{
    let load = || async {
        upstream
            .load_tag_index()
            .await
            .map_err(|e| format!("ERR upstream: {e}"))
    };
    if !upstream.tag_index_loaded() {
        load().await?;
    }
    match operation().await {
        Err(e) if e.to_string().contains("Function not found") => {
            load().await?;
            operation().await.map_err(reply_text)
        }
        result => result.map_err(reply_text),
    }
}

/// An index error as the client reads it: Redis's own words when Redis refused the command
/// (`ERR no such key`, `ERR value is not an integer ...`), `ERR upstream: ...` when cachet
/// could not reach Redis.
fn reply_text(error: index::IndexError) -> String {
    use fred::error::ErrorKind;
    match &error {
        index::IndexError::Redis(e)
            if !matches!(
                e.kind(),
                ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Protocol
            ) && e.details().starts_with(|c: char| c.is_ascii_uppercase()) =>
        {
            e.details().to_owned()
        }
        _ => format!("ERR upstream: {error}"),
    }
}

/// Whether a write can run inside the index function with the same reply it would get from
/// Redis directly. Arity errors would be worded by the script engine, blocking commands do
/// not block in a function, Lua's `unpack` stops near 8000 values, and a few replies do not
/// survive Lua's conversion (BITFIELD's nulls inside an array).
fn wrappable(info: &CommandInfo, name: &[u8], request: &Request) -> bool {
    let argc = request.args.len() as i64;
    let arity_ok = if info.arity >= 0 {
        argc == info.arity
    } else {
        argc >= -info.arity
    };
    // LPOP/RPOP with a count answer a null array in RESP2, which Lua turns into a null bulk.
    let pops_many = matches!(name, b"lpop" | b"rpop") && argc == 3;
    info.write && !info.blocking && arity_ok && argc < 7000 && name != b"bitfield" && !pops_many
}

/// The byte ranges of the first `want` items of EXEC's reply array, or `None` when the reply
/// is not an array of at least that many (EXECABORT, an error).
fn exec_items(frame: &[u8], want: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let header_end = frame.windows(2).position(|w| w == b"\r\n")?;
    let count: usize = std::str::from_utf8(frame.strip_prefix(b"*")?.get(..header_end - 1)?)
        .ok()?
        .parse()
        .ok()?;
    if count < want {
        return None;
    }
    let mut at = header_end + 2;
    let mut items = Vec::with_capacity(want);
    for _ in 0..want {
        // A SET's `+OK` and a ZADD's `:0` are stepped over without parsing.
        let rest = &frame[at..];
        let len = match rest.get(..5) {
            Some(b"+OK\r\n") => 5,
            _ if rest.get(..4) == Some(b":0\r\n") => 4,
            _ => crate::resp::reply_frame(rest).ok()??.len,
        };
        items.push(at..at + len);
        at += len;
    }
    Some(items)
}

/// A reply that means "nothing there": nil, or an empty aggregate.
fn is_miss(frame: &[u8]) -> bool {
    matches!(
        frame,
        b"$-1\r\n" | b"*-1\r\n" | b"_\r\n" | b"*0\r\n" | b"%0\r\n" | b"~0\r\n"
    )
}

impl Session {
    /// Forwards a command to the pool, through the tag index when it touches a tagged key.
    pub(super) fn forward_tracked(
        &mut self,
        request: Request,
        name: &[u8],
        info: Option<&CommandInfo>,
    ) {
        // RENAME and COPY carry a key's tags along, whether a rule or TAGSET gave them.
        let carries_tags = matches!(name, b"rename" | b"renamenx" | b"copy")
            && self.shared.upstream.tag_index_loaded();
        let lookup = observe::lookup(name);
        if self.shared.rules.is_empty() && !carries_tags {
            return self.forward_lookup(request, lookup);
        }
        let Some(info) = info else {
            return self.forward_lookup(request, lookup);
        };
        if name == b"set" && self.fast_set(&request, info) {
            return;
        }
        if wrappable(info, name, &request) {
            if let Some(call) = self.tagged_write(&request, name, info) {
                return self.forward(Request::from_args(call));
            }
        } else if info.readonly && info.first_key > 0 && info.first_key == info.last_key {
            let key = request.args.get(info.first_key as usize).cloned();
            if let Some(key) = key
                && let Some(found) = self.shared.rules.match_key(&key)
            {
                self.shared.heat.record(&key);
                let epochs = Request::from_args(self.shared.index.epoch_read(&found.tags));
                let counted = lookup.map(|l| (l, self.shared.metrics.hits.of_rule(found.rule)));
                self.forward_inspected(epochs, Inspect::Epochs);
                return self.forward_inspected(request, Inspect::Read(key, counted));
            }
        } else if lookup == Some(Lookup::Each) && !self.shared.rules.is_empty() {
            let metrics = &self.shared.metrics;
            let rules: Vec<u16> = info
                .key_positions(request.args.len())
                .map(|at| {
                    let found = self.shared.rules.match_key(&request.args[at]);
                    found.map_or(0, |found| metrics.hits.of_rule(found.rule))
                })
                .collect();
            return self.forward_inspected(request, Inspect::Elements(rules));
        }
        self.forward_lookup(request, lookup)
    }

    /// Forwards a command; a lookup's reply is counted as a hit or miss of no rule.
    fn forward_lookup(&mut self, request: Request, lookup: Option<Lookup>) {
        match lookup {
            Some(lookup) => self.forward_inspected(request, Inspect::Lookup(lookup)),
            None => self.forward(request),
        }
    }

    /// Sends `SET key value [EX s | PX ms]` of a rule-matched key with no lease to check as a
    /// MULTI/EXEC block ([`FastSet`]): the same atomic write and index update as
    /// `cachet_write`, without the cost of a function call. Returns false, having done
    /// nothing, for every other SET.
    fn fast_set(&mut self, request: &Request, info: &CommandInfo) -> bool {
        let args = &request.args;
        if !info.write || (args.len() != 3 && args.len() != 5) {
            return false;
        }
        let given_ms = if args.len() == 5 {
            let Some(n) = std::str::from_utf8(&args[4])
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > 0 && n < 1 << 40)
            else {
                return false;
            };
            if args[3].eq_ignore_ascii_case(b"ex") {
                Some(n * 1000)
            } else if args[3].eq_ignore_ascii_case(b"px") {
                Some(n)
            } else {
                return false;
            }
        } else {
            None
        };
        let key = &args[1];
        let Some(found) = self.shared.rules.match_indexed(key) else {
            return false;
        };
        if self.snapshots.holds(key) {
            return false;
        }
        // One reading of the clock per client read: the batch goes out at its end.
        let now_ms = *self.batch.clock_ms.get_or_insert_with(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let (add_ex_secs, ttl_ms) = match given_ms {
            Some(ms) => (0, Some(ms)),
            None if found.ttl_secs > 0 => (found.ttl_secs, Some(found.ttl_secs * 1000)),
            None => (0, None),
        };
        let writes = &self.shared.metrics.tagged_writes;
        writes.inc(writes.of_rule(found.rule), 1);
        let indexed = found.tags;
        if indexed.is_empty() {
            // Every tag names the key (or there is none): nothing to index, only the TTL.
            self.close_fast();
            self.batch
                .fast
                .encode_set(request, add_ex_secs, &mut self.batch.bytes);
            self.batch.count += 1;
            self.batch.plain += 1;
            return true;
        }
        self.batch.fast.push(&FastSet {
            request,
            tags: &indexed,
            key_set: indexed.len() > 1,
            add_ex_secs,
            now_ms,
            ttl_ms,
        });
        if self.batch.fast.len() >= FAST_BATCH_MAX {
            self.close_fast();
        }
        true
    }

    /// Adds the tagged SETs gathered so far ([`index::FastBatch`]) to the batch for the pool, as
    /// one transaction. Called before anything else joins the batch, so replies keep the
    /// client's order.
    pub(super) fn close_fast(&mut self) {
        if self.batch.fast.is_empty() {
            return;
        }
        let mut fast = std::mem::take(&mut self.batch.fast);
        let frames = fast.frames();
        self.plan_step(Inspect::Fast {
            frames,
            sets: fast.len(),
            tags: fast.tags(),
        });
        let encoded = self
            .shared
            .index
            .encode_fast_batch(&fast, &mut self.batch.bytes);
        debug_assert_eq!(encoded, frames);
        self.batch.count += frames;
        fast.clear();
        self.batch.fast = fast;
    }

    /// The `cachet_write` call for a write whose keys match rules, or `None` when none does.
    fn tagged_write(
        &mut self,
        request: &Request,
        name: &[u8],
        info: &CommandInfo,
    ) -> Option<Vec<Bytes>> {
        let positions: Vec<usize> = info.key_positions(request.args.len()).collect();
        let mut writes = Vec::new();
        for &position in &positions {
            let key = &request.args[position];
            if let Some(found) = self.shared.rules.match_key(key) {
                let counted = &self.shared.metrics.tagged_writes;
                counted.inc(counted.of_rule(found.rule), 1);
                writes.push(WriteKey {
                    key: key.clone(),
                    ttl_secs: found.ttl_secs,
                    snapshot: self.snapshots.take(key),
                    tags: found.tags,
                    named: found.named,
                    inherit_from: None,
                });
            }
        }
        let carries_tags = matches!(name, b"rename" | b"renamenx" | b"copy");
        if writes.is_empty() && !carries_tags {
            return None;
        }
        // RENAME and COPY: the destination takes the source's tags (and its own rule's), and
        // the source leaves the index once it is gone.
        if matches!(name, b"rename" | b"renamenx" | b"copy") && positions.len() == 2 {
            let source = &request.args[positions[0]];
            let destination = &request.args[positions[1]];
            if !writes.iter().any(|w| w.key == source) {
                let source = WriteKey {
                    key: source.clone(),
                    ..WriteKey::default()
                };
                writes.insert(0, source);
            }
            let from = writes.iter().position(|w| w.key == source);
            match writes.iter_mut().find(|w| w.key == destination) {
                Some(write) => write.inherit_from = from,
                None => writes.push(WriteKey {
                    key: destination.clone(),
                    inherit_from: from,
                    ..WriteKey::default()
                }),
            }
        }
        Some(self.shared.index.write_call(&WriteCall {
            command: &request.args,
            keys: &writes,
            protocol: self.protocol,
            explicit_ttl: sets_ttl_explicitly(name, request),
            allow_oom: !info.denyoom,
        }))
    }

    /// Adds a command whose reply frames need a look before they are forwarded.
    pub(super) fn forward_inspected(&mut self, request: Request, inspect: Inspect) {
        self.forward_raw_inspected(&request.raw, 1, inspect);
    }

    /// Adds encoded commands that Redis answers with `frames` frames, walked by `inspect`.
    fn forward_raw_inspected(&mut self, raw: &[u8], frames: usize, inspect: Inspect) {
        self.close_fast();
        self.plan_step(inspect);
        self.batch.bytes.extend_from_slice(raw);
        self.batch.count += frames;
    }

    /// Adds a step to the batch's reply plan, after a `Pass` for the plain commands queued
    /// since the last step.
    fn plan_step(&mut self, inspect: Inspect) {
        if self.batch.inspect.is_none() {
            // A plan used before, so a batch with lookups does not allocate one.
            self.batch.inspect = Some(self.spare_plans.pop().unwrap_or_default());
        }
        let plan = self.batch.inspect.as_mut().expect("set above");
        if self.batch.plain > 0 {
            plan.push(Inspect::Pass(self.batch.plain));
            self.batch.plain = 0;
        }
        plan.push(inspect);
    }

    /// Walks a batch's replies with its plan: forwards, keeps epochs, notes misses, counts
    /// lookups, and sends one `cachet_trim` for the tag sets that fast writes added members
    /// to.
    pub(super) fn inspect_reply(&mut self, bytes: Bytes, mut plan: Vec<Inspect>) {
        let mut at = 0;
        let mut epochs: Option<Vec<u64>> = None;
        let mut grown: Vec<Bytes> = Vec::new();
        let frame_end = |at: usize| {
            crate::resp::reply_frame(&bytes[at..])
                .ok()
                .flatten()
                .map_or(bytes.len(), |f| at + f.len)
        };
        let metrics = &self.shared.metrics;
        for step in plan.drain(..) {
            match step {
                Inspect::Pass(frames) => {
                    let start = at;
                    for _ in 0..frames {
                        at = frame_end(at);
                    }
                    self.output.extend_from_slice(&bytes[start..at]);
                }
                Inspect::Epochs => {
                    let end = frame_end(at);
                    epochs = index::parse_epochs(&bytes[at..end]);
                    at = end;
                }
                Inspect::Read(key, counted) => {
                    let end = frame_end(at);
                    let frame = &bytes[at..end];
                    if let Some((lookup, rule)) = counted {
                        let (hits, misses) = observe::classify(frame, lookup);
                        metrics.hits.inc(rule, hits);
                        metrics.misses.inc(rule, misses);
                    }
                    if let Some(seen) = epochs.take().filter(|_| is_miss(frame))
                        && !self.snapshots.insert(key, seen)
                    {
                        lease_dropped(self.id, metrics);
                    }
                    self.output.extend_from_slice(frame);
                    at = end;
                }
                Inspect::Lookup(lookup) => {
                    let end = frame_end(at);
                    let (hits, misses) = observe::classify(&bytes[at..end], lookup);
                    metrics.hits.inc(0, hits);
                    metrics.misses.inc(0, misses);
                    self.output.extend_from_slice(&bytes[at..end]);
                    at = end;
                }
                Inspect::Elements(rules) => {
                    let end = frame_end(at);
                    observe::each_element(&bytes[at..end], |i, nil| {
                        let rule = rules.get(i).copied().unwrap_or(0);
                        match nil {
                            true => metrics.misses.inc(rule, 1),
                            false => metrics.hits.inc(rule, 1),
                        }
                    });
                    self.output.extend_from_slice(&bytes[at..end]);
                    at = end;
                }
                Inspect::Info => {
                    let end = frame_end(at);
                    let section = crate::health::info_section(&self.shared.health);
                    match observe::append_section(&bytes[at..end], &section) {
                        Some(info) => self.output.extend_from_slice(&info),
                        None => self.output.extend_from_slice(&bytes[at..end]),
                    }
                    at = end;
                }
                Inspect::Fast { frames, sets, tags } => {
                    // MULTI's +OK, then a +QUEUED per command, as a rule: stepped over
                    // without parsing.
                    let skip = |at: usize, usual: &[u8]| match bytes[at..].starts_with(usual) {
                        true => at + usual.len(),
                        false => frame_end(at),
                    };
                    at = skip(at, b"+OK\r\n");
                    let queued_from = at;
                    for _ in 0..frames - 2 {
                        at = skip(at, b"+QUEUED\r\n");
                    }
                    let exec = at..frame_end(at);
                    at = exec.end;
                    match exec_items(&bytes[exec.clone()], sets + tags.len()) {
                        Some(items) => {
                            // The SETs' replies lie side by side: forwarded in one copy.
                            let base = exec.start;
                            let replies = items[0].start..items[sets - 1].end;
                            self.output.extend_from_slice(
                                &bytes[base + replies.start..base + replies.end],
                            );
                            for (tag, zadd) in tags.into_iter().zip(&items[sets..]) {
                                if &bytes[base + zadd.start..base + zadd.end] != b":0\r\n" {
                                    grown.push(tag);
                                }
                            }
                        }
                        // EXECABORT or an error in place of EXEC's array: nothing ran. A SET
                        // Redis refused when queued (out of memory) gets its own refusal,
                        // the others EXEC's error.
                        None => {
                            let mut q = queued_from;
                            for _ in 0..sets {
                                let end = frame_end(q);
                                let own = bytes[q..end].starts_with(b"-");
                                let reply = if own { q..end } else { exec.clone() };
                                self.output.extend_from_slice(&bytes[reply]);
                                q = end;
                            }
                        }
                    }
                }
                Inspect::Drop => at = frame_end(at),
            }
        }
        self.output.extend_from_slice(&bytes[at..]);
        if self.spare_plans.len() < 4 {
            self.spare_plans.push(plan);
        }
        if !grown.is_empty() {
            grown.sort();
            grown.dedup();
            let trim = Request::from_args(self.shared.index.trim_call(&grown));
            self.forward_inspected(trim, Inspect::Drop);
            self.flush_batch();
        }
    }

    /// `TAGINVALIDATE`, `TAGSET`, `TAG`, `TAGS`, `TAGKEYS`. They run on cachet's control
    /// connection, after this client's earlier commands and before its later ones.
    pub(super) fn tag_command(&mut self, request: Request, name: &[u8]) {
        let args = request.args.clone();
        let arity = |min: usize, exact: bool| {
            if (exact && args.len() != min) || args.len() < min {
                Some(Reply::error(format!(
                    "ERR wrong number of arguments for '{}' command",
                    String::from_utf8_lossy(name).to_ascii_lowercase()
                )))
            } else {
                None
            }
        };
        match name {
            b"taginvalidate" => match arity(2, false) {
                Some(error) => self.reply_local(error),
                None => self.reply_later(request, move |shared| async move {
                    let tags = &args[1..];
                    let control = shared.upstream.control();
                    let deleted =
                        index_op(&shared.upstream, || shared.index.invalidate(control, tags)).await;
                    if let Ok(n) = deleted {
                        shared.metrics.invalidations.inc_by(tags.len() as u64);
                        shared.metrics.keys_invalidated.inc_by(n);
                        tracing::info!(tags = tags.len(), keys = n, "TAGINVALIDATE");
                    }
                    deleted.map_or_else(Reply::error, |n| Reply::Integer(n as i64))
                }),
            },
            b"tag" => match arity(3, false) {
                Some(error) => self.reply_local(error),
                None => self.reply_later(request, move |shared| async move {
                    let control = shared.upstream.control();
                    let added = index_op(&shared.upstream, || {
                        shared.index.tag(control, &args[1], &args[2..])
                    })
                    .await;
                    added.map_or_else(Reply::error, |n| Reply::Integer(n as i64))
                }),
            },
            b"tags" => match arity(2, true) {
                Some(error) => self.reply_local(error),
                None => self.reply_later(request, move |shared| async move {
                    let control = shared.upstream.control();
                    let tags =
                        index_op(&shared.upstream, || shared.index.tags(control, &args[1])).await;
                    tags.map_or_else(Reply::error, |tags| {
                        Reply::Array(tags.into_iter().map(Reply::Bulk).collect())
                    })
                }),
            },
            b"tagkeys" => match arity(2, false) {
                Some(error) => self.reply_local(error),
                None => self.tagkeys(request),
            },
            _ => match arity(5, false) {
                Some(error) => self.reply_local(error),
                None => self.tagset(request),
            },
        }
    }

    /// `TAGKEYS tag [CURSOR c] [COUNT n]`: `[next-cursor, [keys...]]`, like SCAN.
    fn tagkeys(&mut self, request: Request) {
        let mut cursor = 0u64;
        let mut count = 10u64;
        let options = &request.args[2..];
        if !options.len().is_multiple_of(2) {
            return self.reply_local(Reply::error("ERR syntax error"));
        }
        for pair in options.chunks(2) {
            let value = std::str::from_utf8(&pair[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            match (pair[0].to_ascii_lowercase().as_slice(), value) {
                (b"cursor", Some(v)) => cursor = v,
                (b"count", Some(v)) if v > 0 => count = v,
                (b"count", Some(0)) => return self.reply_local(Reply::error("ERR syntax error")),
                (b"cursor" | b"count", _) => {
                    return self
                        .reply_local(Reply::error("ERR value is not an integer or out of range"));
                }
                _ => return self.reply_local(Reply::error("ERR syntax error")),
            }
        }
        let tag = request.args[1].clone();
        self.reply_later(request, move |shared| async move {
            let control = shared.upstream.control();
            let page = index_op(&shared.upstream, || {
                shared.index.tagkeys(control, &tag, cursor, count)
            })
            .await;
            page.map_or_else(Reply::error, |(next, keys)| {
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(next.to_string())),
                    Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
                ])
            })
        });
    }

    /// `TAGSET key value [EX s | PX ms | KEEPTTL] [TTLCLASS name] TAGS tag [tag ...]`: a SET
    /// and its tags in one step, through the same index function as rule-tagged writes.
    fn tagset(&mut self, request: Request) {
        let args = &request.args;
        let Some(tags_at) = args.iter().position(|a| a.eq_ignore_ascii_case(b"tags")) else {
            return self.reply_local(Reply::error("ERR syntax error"));
        };
        if tags_at < 3 || tags_at + 1 >= args.len() {
            return self.reply_local(Reply::error("ERR syntax error"));
        }
        let mut set = vec![Bytes::from_static(b"SET"), args[1].clone(), args[2].clone()];
        let mut ttl_secs = self.shared.ttl.default_secs();
        let mut explicit = false;
        let mut i = 3;
        while i < tags_at {
            match args[i].to_ascii_lowercase().as_slice() {
                b"ex" | b"px" if i + 1 < tags_at && !explicit => {
                    set.extend([args[i].clone(), args[i + 1].clone()]);
                    explicit = true;
                    i += 2;
                }
                b"keepttl" if !explicit => {
                    set.push(args[i].clone());
                    explicit = true;
                    i += 1;
                }
                b"ttlclass" if i + 1 < tags_at => {
                    let class = String::from_utf8_lossy(&args[i + 1]).into_owned();
                    match self.shared.ttl.get(&class) {
                        Some(secs) => ttl_secs = secs,
                        None => {
                            return self.reply_local(Reply::error(format!(
                                "ERR unknown TTL class '{class}'"
                            )));
                        }
                    }
                    i += 2;
                }
                _ => return self.reply_local(Reply::error("ERR syntax error")),
            }
        }
        let write = WriteKey {
            key: args[1].clone(),
            ttl_secs,
            snapshot: self.snapshots.take(&args[1]),
            tags: args[tags_at + 1..].to_vec(),
            named: 0,
            inherit_from: None,
        };
        let call = self.shared.index.write_call(&WriteCall {
            command: &set,
            keys: &[write],
            protocol: crate::resp::Protocol::Resp2,
            explicit_ttl: explicit,
            allow_oom: false,
        });
        self.reply_later(request, move |shared| async move {
            let control = shared.upstream.control();
            let fcall = || async {
                let args: Vec<fred::types::Value> = call[1..]
                    .iter()
                    .cloned()
                    .map(fred::types::Value::Bytes)
                    .collect();
                let reply: Result<fred::types::Value, _> =
                    control.custom(fred::cmd!("FCALL"), args).await;
                reply.map_err(index::IndexError::from)
            };
            index_op(&shared.upstream, fcall)
                .await
                .map_or_else(Reply::error, |_| Reply::ok())
        });
    }

    /// Slot for a batch, with its inspection plan if it has one.
    pub(super) fn batch_slot(&mut self) -> Slot {
        match self.batch.inspect.take() {
            None => {
                self.batch.plain = 0;
                Slot::Pool
            }
            Some(mut plan) => {
                if self.batch.plain > 0 {
                    plan.push(Inspect::Pass(self.batch.plain));
                }
                self.batch.plain = 0;
                Slot::Inspect(plan)
            }
        }
    }
}

impl Session {
    /// Sends a command on the dedicated connection, through the tag index when it writes a
    /// tagged key (a tagged write inside MULTI is queued and runs at EXEC like any other).
    /// Clients authenticated as another Redis user write untagged (the index function would
    /// need that user to have rights on cachet's keys), and so do clients in another
    /// database, where TAG commands, which run on cachet's own connection, cannot reach.
    pub(super) fn send_dedicated_tracked(&mut self, request: Request, name: &[u8]) {
        let own_state = self.pinning.divergence.user || self.pinning.divergence.database;
        if !self.shared.rules.is_empty() && !own_state {
            let table = self.shared.upstream.commands();
            if let Some(info) = table.get(name).filter(|i| wrappable(i, name, &request))
                && let Some(call) = self.tagged_write(&request, name, info)
            {
                return self.send_dedicated(Request::from_args(call), name);
            }
        }
        self.send_dedicated(request, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str]) -> Request {
        Request::from_args(
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn misses_are_nils_and_empty_aggregates_only() {
        for miss in [
            &b"$-1\r\n"[..],
            b"*-1\r\n",
            b"_\r\n",
            b"*0\r\n",
            b"%0\r\n",
            b"~0\r\n",
        ] {
            assert!(is_miss(miss), "{:?}", String::from_utf8_lossy(miss));
        }
        for hit in [
            &b"$0\r\n\r\n"[..],
            b":0\r\n",
            b"*1\r\n$1\r\na\r\n",
            b"-ERR x\r\n",
        ] {
            assert!(!is_miss(hit), "{:?}", String::from_utf8_lossy(hit));
        }
    }

    #[test]
    fn explicit_ttls_are_recognised() {
        assert!(sets_ttl_explicitly(
            b"set",
            &request(&["SET", "k", "v", "KEEPTTL"])
        ));
        assert!(sets_ttl_explicitly(
            b"set",
            &request(&["SET", "k", "v", "NX", "px", "5"])
        ));
        assert!(!sets_ttl_explicitly(
            b"set",
            &request(&["SET", "k", "v", "NX"])
        ));
        assert!(sets_ttl_explicitly(b"persist", &request(&["PERSIST", "k"])));
        assert!(!sets_ttl_explicitly(
            b"hset",
            &request(&["HSET", "k", "f", "v"])
        ));
    }

    #[test]
    fn a_lease_is_used_once() {
        let mut leases = Snapshots::default();
        assert!(leases.insert(Bytes::from_static(b"k"), vec![7]));
        assert_eq!(leases.take(b"k"), Some(vec![7]));
        assert_eq!(leases.take(b"k"), None, "a lease is used once");
        assert!(leases.by_key.is_empty());
        assert_eq!(leases.bytes, 0);
    }

    #[test]
    fn writes_are_checked_against_the_oldest_outstanding_miss() {
        let mut leases = Snapshots::default();
        let k = || Bytes::from_static(b"k");
        // Two requests on one connection missed, one before an invalidation, one after.
        assert!(leases.insert(k(), vec![5, 9]));
        assert!(leases.insert(k(), vec![8, 9]));
        // Whichever write comes first is checked against the older epochs, and so is the
        // second: either may be the one computed before the invalidation.
        assert_eq!(leases.take(b"k"), Some(vec![5, 9]));
        assert!(leases.insert(k(), vec![8, 12]));
        assert_eq!(leases.take(b"k"), Some(vec![5, 9]));
        assert_eq!(leases.take(b"k"), Some(vec![5, 9]));
        assert_eq!(leases.take(b"k"), None);
    }

    #[test]
    fn leases_past_the_cap_are_refused_until_one_expires_or_is_used() {
        let mut leases = Snapshots::default();
        let key = |i: usize| Bytes::from(format!("k{i}"));
        for i in 0..SNAPSHOT_CAP {
            assert!(leases.insert(key(i), vec![1]));
        }
        assert!(!leases.insert(key(SNAPSHOT_CAP), vec![1]), "past the cap");
        assert!(
            leases.full_until.is_some(),
            "no walk of the map until one expires"
        );
        assert!(!leases.insert(key(SNAPSHOT_CAP + 1), vec![1]));
        // Another miss of a key that has a lease is still remembered.
        assert!(leases.insert(key(0), vec![2]));
        // A write uses a lease up, and frees a place.
        assert_eq!(leases.take(b"k1"), Some(vec![1]));
        assert!(leases.insert(key(SNAPSHOT_CAP), vec![1]));
        // Expired leases make room too.
        let long_ago = Instant::now() - SNAPSHOT_TTL;
        for misses in leases.by_key.values_mut() {
            misses.iter_mut().for_each(|(_, at)| *at = long_ago);
        }
        assert!(
            !leases.insert(key(SNAPSHOT_CAP + 2), vec![1]),
            "still deemed full"
        );
        leases.full_until = Some(Instant::now());
        assert!(leases.insert(key(SNAPSHOT_CAP + 2), vec![1]));
        assert_eq!(leases.by_key.len(), 1);
    }

    #[test]
    fn leases_are_bounded_in_bytes_and_give_back_what_they_held() {
        let mut leases = Snapshots::default();
        let big = |i: u8| Bytes::from(vec![i; 100_000]);
        let mut held = 0;
        while leases.insert(big(held as u8), vec![1, 2]) {
            held += 1;
        }
        assert_eq!(
            held,
            SNAPSHOT_BYTES / (100_000 + key_bytes(b"") + miss_bytes(&[1, 2]))
        );
        assert!(leases.bytes <= SNAPSHOT_BYTES);
        // Small keys still fit in what is left, and another miss of a held key too.
        assert!(leases.insert(Bytes::from_static(b"small"), vec![1, 2]));
        assert!(leases.insert(big(0), vec![3, 4]));
        for i in 0..held {
            while leases.take(&big(i as u8)).is_some() {}
        }
        assert!(leases.take(b"small").is_some());
        assert_eq!((leases.by_key.len(), leases.bytes), (0, 0));
        // Expiry gives bytes back too.
        assert!(leases.insert(big(1), vec![1]));
        leases.expire(Instant::now() + SNAPSHOT_TTL);
        assert_eq!((leases.by_key.len(), leases.bytes), (0, 0));
    }

    #[test]
    fn the_dropped_lease_warning_is_rate_limited() {
        let next = AtomicU64::new(0);
        assert!(warn_now(&next, 5, 10_000));
        assert!(!warn_now(&next, 6, 10_000));
        assert!(!warn_now(&next, 10_004, 10_000));
        assert!(warn_now(&next, 10_005, 10_000));
    }

    #[test]
    fn outstanding_misses_per_key_are_bounded() {
        let mut leases = Snapshots::default();
        for i in 0..(MISSES_PER_KEY as u64 + 10) {
            assert!(leases.insert(Bytes::from_static(b"k"), vec![i]));
        }
        assert_eq!(leases.by_key[&b"k"[..]].len(), MISSES_PER_KEY);
        assert_eq!(
            leases.bytes,
            key_bytes(b"k") + MISSES_PER_KEY * miss_bytes(&[0])
        );
    }
}
