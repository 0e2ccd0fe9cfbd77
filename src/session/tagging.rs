//! The index phase of a command: writes to keys that match a `[[rules]]` pattern become one
//! call of the tag index's `cachet_write` function (the write, its tags and TTL in one atomic
//! step), or, for a plain `SET [EX|PX]` with no lease to check, one MULTI/EXEC block of plain
//! commands that does the same for a fraction of Redis's time ([`FastSet`]); reads of
//! such keys remember the tag epochs they saw when they miss; and the `TAG*` commands.
//!
//! Keys that match no rule go to Redis untouched; with no rules configured this module costs
//! one `is_empty` check per command.
//!
//! A client signed in as another ACL user (on its user's pool) has its rule-matched writes
//! checked as that user and run wrapped as cachet's (`write_as_cachet`); its reads go plain
//! (no epoch check, no lease) and so do its writes inside MULTI; its TAG commands are
//! checked first (`super::acl`).
//!
//! Before a read of a rule-matched key the epoch read goes first, so that a miss leaves a
//! lease ([`super::leases`]) for the write that follows.
//!
//! On Redis Cluster (`TagIndex::is_cluster`) a write and its tags' entries are in different
//! slots: a rule-matched write runs in steps on the control client once the client's earlier
//! commands have replied, its later ones waiting for it (`write_clustered`, the ordering of
//! `write_as_cachet`); the fast path keeps only SETs whose tags all name their key (one plain
//! SET); a tagged write inside MULTI is queued as `cachet_cwrite` with its entries added as it
//! is queued (`crate::tags::index`, "Cluster", for what that keeps and what it does not).

use bytes::Bytes;

use super::Session;
use super::acl;
use super::inspect::Inspect;
use super::observe::{self, Lookup};
use crate::resp::Request;
use crate::resp::commands::CommandInfo;
use crate::resp::reply::Reply;
use crate::tags::index::{FastSet, IndexError, WriteCall, WriteKey, encode_reply};

/// Most tagged SETs gathered into one transaction ([`crate::tags::index::FastBatch`]).
const FAST_BATCH_MAX: usize = 64;

/// An index error as the client's reply.
fn error_reply(error: IndexError) -> Reply {
    Reply::error(error.reply_text())
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

impl Session {
    /// Forwards a command to the pool, through the tag index when it touches a tagged key.
    pub(super) fn forward_tracked(
        &mut self,
        request: Request,
        name: &[u8],
        info: Option<&CommandInfo>,
    ) {
        // RENAME and COPY carry a key's tags along, whether a rule or TAGSET gave them.
        let carries_tags =
            matches!(name, b"rename" | b"renamenx" | b"copy") && self.services.index.is_loaded();
        let lookup = observe::lookup(name);
        if self.other_user() {
            // Another user's rule-matched writes are checked as that user, then run wrapped
            // as cachet's (`write_as_cachet`); its reads go plain, as that user.
            if let Some(info) = info
                && wrappable(info, name, &request)
                && (carries_tags || self.matches_rules(&request, info))
            {
                return self.write_as_cachet(request, name, info);
            }
            return self.forward_lookup(request, lookup);
        }
        if self.services.rules.is_empty() && !carries_tags {
            return self.forward_lookup(request, lookup);
        }
        let Some(info) = info else {
            return self.forward_lookup(request, lookup);
        };
        if name == b"set" && self.fast_set(&request, info) {
            return;
        }
        if wrappable(info, name, &request) {
            if self.services.index.is_cluster() {
                if carries_tags || self.matches_rules(&request, info) {
                    return self.write_clustered(request, name, info, None);
                }
                return self.forward_lookup(request, lookup);
            }
            if let Some(call) = self.tagged_write(&request, name, info) {
                return self.forward(Request::from_args(call));
            }
        } else if info.readonly && info.first_key > 0 && info.first_key == info.last_key {
            let key = request.args.get(info.first_key as usize).cloned();
            if let Some(key) = key
                && let Some(found) = self.services.rules.match_key(&key)
            {
                self.services.heat.record(&key);
                let epochs = Request::from_args(self.services.index.epoch_read(&found.tags));
                let counted = lookup.map(|l| (l, self.services.metrics.hits.of_rule(found.rule)));
                self.forward_inspected(epochs, Inspect::Epochs);
                return self.forward_inspected(request, Inspect::Read(key, counted));
            }
        } else if lookup == Some(Lookup::Each) && !self.services.rules.is_empty() {
            let metrics = &self.services.metrics;
            let rules: Vec<u16> = info
                .key_positions(request.args.len())
                .map(|at| {
                    let found = self.services.rules.match_key(&request.args[at]);
                    found.map_or(0, |found| metrics.hits.of_rule(found.rule))
                })
                .collect();
            return self.forward_inspected(request, Inspect::Elements(rules));
        }
        self.forward_lookup(request, lookup)
    }

    /// Whether any key of a command matches a rule (nothing counted).
    fn matches_rules(&self, request: &Request, info: &CommandInfo) -> bool {
        !self.services.rules.is_empty()
            && info
                .key_positions(request.args.len())
                .any(|at| self.services.rules.match_key(&request.args[at]).is_some())
    }

    /// A rule-matched write of a client signed in as another user (on its user's pool):
    /// once its earlier commands have replied, Redis is asked whether the user may run the
    /// plain command (`session::acl`); refused, the client reads Redis's NOPERM and nothing
    /// is written; allowed, the write runs wrapped in `cachet_write` on cachet's own pool
    /// (as cachet's user, who may reach the index), and the client's later commands wait
    /// for its reply, so at Redis everything runs in the client's order. Costs a drain and
    /// one `ACL DRYRUN` per distinct command in a second (the decision cache is per exact
    /// arguments).
    fn write_as_cachet(&mut self, request: Request, name: &[u8], info: &CommandInfo) {
        let user = self.acl_user().expect("on another user's pool");
        if self.services.index.is_cluster() {
            return self.write_clustered(request, name, info, Some(user));
        }
        let Some(request) = self.after_earlier_replies(request) else {
            return;
        };
        let Some(call) = self.tagged_write(&request, name, info) else {
            return self.forward(request);
        };
        let id = self.reserve_async();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let services = self.services.clone();
        let payload = Request::from_args(call).raw;
        let plain = request.args;
        tokio::spawn(async move {
            let message = match acl::check(&services, &user, plain).await {
                Ok(()) => super::Inbox::Forward(id, payload),
                Err(refused) => super::Inbox::Done(id, refused.encode(protocol)),
            };
            let _ = inbox.send(message);
        });
    }

    /// Sends the wrapped write of `write_as_cachet`, whose check passed, on cachet's own
    /// pool in place of its slot (the only one: everything before it has replied and
    /// everything after waits for it).
    pub(super) fn on_forward(&mut self, id: u64, payload: Bytes) {
        let Some(slot) = self
            .replies
            .slots
            .iter_mut()
            .find(|s| matches!(s, super::Slot::Async(a) if *a == id))
        else {
            return;
        };
        *slot = super::Slot::Pool;
        let pool = self.services.upstream.pool(self.protocol);
        pool[self.batch.pool % pool.len()].send(crate::upstream::PoolRequest {
            payload,
            count: 1,
            client: self.handle.pooled.clone(),
            partial: false,
        });
        self.replies.sent.push_back(std::time::Instant::now());
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
        let Some(found) = self.services.rules.match_indexed(key) else {
            return false;
        };
        if self.snapshots.holds(key) {
            return false;
        }
        // On a cluster the block would span the key's slot and its tags': only a SET whose
        // tags all name its key (one plain SET) stays fast.
        if self.services.index.is_cluster() && !found.tags.is_empty() {
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
        let writes = &self.services.metrics.tagged_writes;
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

    /// Adds the tagged SETs gathered so far ([`crate::tags::index::FastBatch`]) to the batch
    /// for the pool, as one transaction. Called before anything else joins the batch, so
    /// replies keep the client's order.
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
            .services
            .index
            .encode_fast_batch(&fast, &mut self.batch.bytes);
        debug_assert_eq!(encoded, frames);
        self.batch.count += frames;
        fast.clear();
        self.batch.fast = fast;
    }

    /// A rule-matched write on Redis Cluster, where it spans its key's slot and its tags'
    /// (`crate::tags::index`, "Cluster"): once the client's earlier commands have replied,
    /// it runs in steps on the control client ([`crate::tags::index::TagIndex::write_cluster`])
    /// and its later commands wait for its reply, as `write_as_cachet` does (whose ACL check
    /// comes first when `user` is given). A command whose keys span slots gets Redis
    /// Cluster's `CROSSSLOT`.
    fn write_clustered(
        &mut self,
        request: Request,
        name: &[u8],
        info: &CommandInfo,
        user: Option<Bytes>,
    ) {
        let Some(request) = self.after_earlier_replies(request) else {
            return;
        };
        let mut slots = info
            .key_positions(request.args.len())
            .map(|at| redis_protocol::redis_keyslot(&request.args[at]));
        if let Some(first) = slots.next()
            && slots.any(|slot| slot != first)
        {
            return self.reply_local(Reply::error(
                "CROSSSLOT Keys in request don't hash to the same slot",
            ));
        }
        let Some((keys, explicit_ttl, allow_oom)) = self.tagged_keys(&request, name, info) else {
            return self.forward(request);
        };
        let id = self.reserve_async();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let services = self.services.clone();
        tokio::spawn(async move {
            let plain = request.args;
            if let Some(user) = &user
                && let Err(refused) = acl::check(&services, user, plain.clone()).await
            {
                let _ = inbox.send(super::Inbox::Done(id, refused.encode(protocol)));
                return;
            }
            let call = WriteCall {
                command: &plain,
                keys: &keys,
                protocol,
                explicit_ttl,
                allow_oom,
            };
            let reply = match services.index.write_cluster(&call).await {
                Ok(frame) => encode_reply(&frame, protocol),
                Err(error) => error_reply(error).encode(protocol),
            };
            let _ = inbox.send(super::Inbox::Done(id, reply));
        });
    }

    /// The `cachet_write` call for a write whose keys match rules, or `None` when none does.
    fn tagged_write(
        &mut self,
        request: &Request,
        name: &[u8],
        info: &CommandInfo,
    ) -> Option<Vec<Bytes>> {
        let (writes, explicit_ttl, allow_oom) = self.tagged_keys(request, name, info)?;
        Some(self.services.index.write_call(&WriteCall {
            command: &request.args,
            keys: &writes,
            protocol: self.protocol,
            explicit_ttl,
            allow_oom,
        }))
    }

    /// The data keys of a write whose keys match rules (their tags, leases and TTLs), whether
    /// it sets the TTL itself and whether it may run out of memory; `None` when no key
    /// matches a rule.
    fn tagged_keys(
        &mut self,
        request: &Request,
        name: &[u8],
        info: &CommandInfo,
    ) -> Option<(Vec<WriteKey>, bool, bool)> {
        let positions: Vec<usize> = info.key_positions(request.args.len()).collect();
        let mut writes = Vec::new();
        for &position in &positions {
            let key = &request.args[position];
            if let Some(found) = self.services.rules.match_key(key) {
                let counted = &self.services.metrics.tagged_writes;
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
        Some((writes, sets_ttl_explicitly(name, request), !info.denyoom))
    }

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
        // Another user's rights are Redis's to judge, as the plain commands these stand for
        // (`session::acl`); cachet's own user is not checked.
        let user = self.acl_user();
        match name {
            b"taginvalidate" => match arity(2, false) {
                Some(error) => self.reply_local(error),
                None => self.reply_later(request, move |services| async move {
                    let tags = &args[1..];
                    if let Some(user) = &user
                        && let Err(refused) = acl::may_delete_tagged(&services, user, tags).await
                    {
                        return refused;
                    }
                    let deleted = services.index.invalidate(tags).await;
                    if let Ok(n) = deleted {
                        services.metrics.invalidations.inc_by(tags.len() as u64);
                        services.metrics.keys_invalidated.inc_by(n);
                        tracing::info!(tags = tags.len(), keys = n, "TAGINVALIDATE");
                    }
                    deleted.map_or_else(error_reply, |n| Reply::Integer(n as i64))
                }),
            },
            b"tag" => match arity(3, false) {
                Some(error) => self.reply_local(error),
                None => self.reply_later(request, move |services| async move {
                    if let Some(user) = &user
                        && let Err(refused) =
                            acl::check(&services, user, acl::with_keys(b"EXISTS", &args[1..2]))
                                .await
                    {
                        return refused;
                    }
                    let added = services.index.tag(&args[1], &args[2..]).await;
                    added.map_or_else(error_reply, |n| Reply::Integer(n as i64))
                }),
            },
            b"tags" => match arity(2, true) {
                Some(error) => self.reply_local(error),
                None => self.reply_later(request, move |services| async move {
                    if let Some(user) = &user
                        && let Err(refused) =
                            acl::check(&services, user, acl::with_keys(b"EXISTS", &args[1..2]))
                                .await
                    {
                        return refused;
                    }
                    let tags = services.index.tags(&args[1]).await;
                    tags.map_or_else(error_reply, |tags| {
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
        let user = self.acl_user();
        self.reply_later(request, move |services| async move {
            let page = services.index.tagkeys(&tag, cursor, count).await;
            if let (Some(user), Ok((_, keys))) = (&user, &page)
                && !keys.is_empty()
                && let Err(refused) =
                    acl::check(&services, user, acl::with_keys(b"EXISTS", keys)).await
            {
                return refused;
            }
            page.map_or_else(error_reply, |(next, keys)| {
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
        let mut ttl_secs = self.services.ttl.default_secs();
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
                    match self.services.ttl.get(&class) {
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
        let user = self.acl_user();
        self.reply_later(request, move |services| async move {
            // What SET with the same options would need.
            if let Some(user) = &user
                && let Err(refused) = acl::check(&services, user, set.clone()).await
            {
                return refused;
            }
            let call = WriteCall {
                command: &set,
                keys: &[write],
                protocol: crate::resp::Protocol::Resp2,
                explicit_ttl: explicit,
                allow_oom: false,
            };
            let written = services.index.write(&call).await;
            written.map_or_else(error_reply, |_| Reply::ok())
        });
    }
}

impl Session {
    /// Sends a command on the dedicated connection, through the tag index when it writes a
    /// tagged key (a tagged write inside MULTI is queued and runs at EXEC like any other).
    /// Clients authenticated as another Redis user write untagged here (the index function
    /// would need that user to have rights on cachet's keys; on their user's pool they are
    /// checked and wrapped, `write_as_cachet`), and so do clients in another database,
    /// where TAG commands, which run on cachet's own connection, cannot reach.
    pub(super) fn send_dedicated_tracked(&mut self, request: Request, name: &[u8]) {
        let own_state = self.other_user() || self.pinning.divergence.database;
        if !self.services.rules.is_empty() && !own_state {
            let table = self.services.upstream.commands();
            let info = table.get(name).filter(|i| wrappable(i, name, &request));
            if let Some(info) = info
                && self.services.index.is_cluster()
                && let Some((keys, explicit_ttl, allow_oom)) =
                    self.tagged_keys(&request, name, info)
            {
                let (call, entries) = self.services.index.queued_write(&WriteCall {
                    command: &request.args,
                    keys: &keys,
                    protocol: self.protocol,
                    explicit_ttl,
                    allow_oom,
                });
                tokio::spawn(entries);
                return self.send_dedicated(Request::from_args(call), name);
            }
            if let Some(info) = info
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
}
