//! The tag index on Redis Cluster ([`TagIndex::cluster`]): the same keys and names as on one
//! server, written in steps that each touch one slot, in an order that keeps the guarantees.
//!
//! # Cluster
//!
//! In a cluster a command, a function call or a `MULTI`/`EXEC` block reaches the keys of one
//! slot. The per-key set `P:k:{S(K)}:K` is in `K`'s slot and a tag's set, epoch and drain
//! sets are in the tag's (`names`, "Slots"), so what `cachet_write` does in one call on one
//! server is split in two places here, and cachet orders the calls between them:
//!
//! * **A tagged write W** of key `K` ([`TagIndex::write_cluster`]): (1) the epochs of `K`'s
//!   tags: the lease's, read before the miss ([`super::WriteKey::snapshot`]), or read now
//!   (one `GET` per tag, on the tag's node); (2) `K` joins the set of each tag that does not
//!   name it (`ZADD`, on the tag's node; score: the rule's TTL from now, else `+inf`);
//!   (3) `cachet_cwrite` on `K`'s node: the command, the rule's TTL, the per-key set, in one
//!   call; (4) the epochs again: if any is above what (1) saw, `K` and its per-key set are
//!   deleted (the client still gets the command's reply, as on one server). The fast
//!   `MULTI`/`EXEC` write is not used (only a SET whose tags all name its key, which is one
//!   plain SET).
//! * **An invalidation I** of tag `t` ([`TagIndex::invalidate`]): (a) `cachet_cinvalidate` on
//!   `t`'s node bumps the epoch and renames the set to a drain set, in one call; (b) the
//!   drain set is read in pages (1000 members per primary, the next page read while this
//!   one's keys go), and each page's keys are deleted with their per-key sets by
//!   `cachet_cdelete`, grouped by node (at most 1000 keys a call, which stops after
//!   [`super::DEFAULT_CALL_BUDGET`] and is sent again for the rest), one node at a time by
//!   default ([`NODE_PARALLELISM`] says why); then the drain set goes (`UNLINK`, freed off the main thread). Its members stay until
//!   then, so a drain set left by a cachet that died is done again by the sweeper
//!   (deleting is idempotent), as on one server.
//!
//! **Why no stale value survives.** A value is stale for `t` when it was computed from a read
//! that came before an invalidation I of `t` began, i.e. W's epoch for `t` in (1) is below
//! I's epoch. (a) is atomic, so every other step falls before or after it:
//!
//! * (a) before W's (4): (4) reads I's epoch or a later one, above (1)'s, and deletes `K`.
//! * (a) after W's (4), so after (2) and (3): `K`'s entry, added in (2), is in the set (a)
//!   renames (nothing else removes it: see the sweeper below), so (b) deletes `K`, whose data
//!   (3) wrote before.
//!
//! So a stale value is visible at most from its write's (3) to its (4), two round trips, plus
//! what (b) takes to reach it, as on one server. The same two cases show that no value
//! outlives its index entry unseen: a write that survives (4) had its entry in `t`'s set
//! before any later invalidation began. Step (4) deletes whenever an epoch moved, so a write
//! that raced an invalidation of any of its tags is dropped even when its value was fresh
//! (a miss, never a stale hit). Entries without data (a write that failed or was deleted in
//! (4), a key deleted by a drain of another of its tags, which here does not leave its other
//! tags' sets) are harmless: an invalidation deletes nothing for them, and the sweeper
//! removes them.
//!
//! **The sweeper** ([`TagIndex::sweep_step`]) scans each primary in turn, and in each tag set
//! it finds asks the members' own nodes whether their keys exist (`PEXPIRETIME`). A member
//! is removed only if its key is gone, its score (the expiry it was given) is more than
//! [`SWEEP_GRACE`] in the past on cachet's clock, and the score is still the one the sweeper
//! read (`cachet_cfix`); a member with `+inf` is first given the current time, so it goes a
//! pass later. A writer's entry from (2) always has a score in its future and the removal
//! applies only while the score is unchanged, so the sweeper cannot remove the entry of a
//! write whose (2) to (3) takes less than the grace: that, and clocks of the cachets sharing
//! the cluster within it, is what the sweeper's part of the guarantee assumes. Live members
//! with a stale score are rescored the same way.
//!
//! # Limits
//!
//! * A tagged write queued inside a client's `MULTI` cannot wait between steps: it is queued
//!   as `cachet_cwrite` (step 3) and its entries are added as it is queued (steps 1 and 2,
//!   [`TagIndex::queued_write`]), so they are in place before an `EXEC` the client sends
//!   after the `QUEUED` reply, but no lease is checked and no step (4) runs: an invalidation
//!   between the queueing and the `EXEC` can leave the key out of that tag's new set (it
//!   goes with its TTL, or its next write through cachet).
//! * A rule-matched key whose per-key set is in another slot (the empty key, a key with `}`
//!   but no valid hash tag: `names`, "Slots") cannot be written through the index: its
//!   writes get `CROSSSLOT`.
//! * Tag sets are not trimmed as members join (that needs the members' nodes): the sweeper
//!   removes the entries of gone keys, at most a pass plus [`SWEEP_GRACE`] after their
//!   expiry. A key deleted by a drain of one of its tags leaves its other tags' sets then too.
//! * Replies come through the control client (RESP2) and are encoded again in the client's
//!   protocol: a RESP3 client gets `_` for nil as from Redis, but maps, doubles and booleans
//!   as RESP2 gives them (`ZINCRBY`'s score as a bulk string, say).
//!
//! Everything else works as on one server, per slot: `TAGS` (`cachet_tags`, `K`'s slot),
//! `TAG` (entries first, then `cachet_ctag` on `K`'s node), `TAGKEYS` (a `ZSCAN` page, then
//! each key checked on its node), epochs (one `GET` per tag), and the library is loaded on
//! every primary. Tags that name their key have no entries, here as there.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, Resp3Frame, Value};
use redis_protocol::redis_keyslot;
use redis_protocol::resp3::types::{FrameKind, Resp3Frame as _};
use tokio::task::JoinSet;

use super::functions::{WriteCall, WriteKey, epoch_from_reply, number};
use super::ops::{byte_strings, integers, unexpected};
use super::{FAST_SCORE_SLACK_MS, IndexError, SweepStats, TagIndex};
use crate::resp::Protocol;

/// How long past its score a member of a tag set whose key is gone stays, in cluster mode: a
/// write's step (2) to (3) must take less (see the module docs).
pub const SWEEP_GRACE: Duration = Duration::from_secs(60);

/// On how many nodes at once an invalidation deletes, by default: one. Three primaries on
/// one 2-CPU host (tests/tag_index_cluster.rs, 100,000 keys, the host saturated by other
/// builds): deleting on all three at once took about as long in all (0.85 to 1.4 s) as one
/// at a time (1.0 to 1.3 s), and the nodes took each other's CPU mid-call, so calls with
/// 2 ms of work lasted 12 to 26 ms; one at a time the longest call was 4 to 10 ms in most
/// runs. Primaries on hosts of their own can take more ([`TagIndex::with_node_parallelism`]).
pub const NODE_PARALLELISM: usize = 1;

/// Most members of a drain set read at a time, per primary.
const DRAIN_PAGE: usize = 1000;

/// The node index in the sweeper's cursor takes its low byte.
const NODE_BITS: u32 = 8;

fn in_slot(name: &'static str, slot: u16) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

fn bytes(b: &Bytes) -> Value {
    Value::Bytes(b.clone())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `tasks` concurrently (fred pipelines what they send) and returns their results in
/// order, or the first error.
async fn all<T, F>(tasks: impl IntoIterator<Item = F>) -> Result<Vec<T>, IndexError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, IndexError>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut n = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        set.spawn(async move { (i, task.await) });
        n += 1;
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, result) = joined.map_err(|e| IndexError::Reply {
            function: "task",
            reply: e.to_string(),
        })?;
        out[i] = Some(result?);
    }
    Ok(out
        .into_iter()
        .map(|v| v.expect("every task joined"))
        .collect())
}

/// One data key of a cluster write: the tags whose sets get it, and the tags whose epochs
/// are checked with what was seen of them.
struct Planned {
    key: Bytes,
    indexed: Vec<Bytes>,
    checked: Vec<Bytes>,
    seen: Vec<Option<u64>>,
}

impl TagIndex {
    /// In cluster mode (`true`) the index works slot by slot ([`TagIndex::write_cluster`],
    /// the module docs); the client must then be a clustered fred client.
    pub fn cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// On how many nodes at once an invalidation deletes (at least 1; [`NODE_PARALLELISM`]).
    pub fn with_node_parallelism(mut self, nodes: usize) -> Self {
        self.node_parallelism = nodes.max(1);
        self
    }

    /// How long past its score the sweeper keeps a member whose key is gone, in cluster mode
    /// ([`SWEEP_GRACE`]; tests shorten it).
    pub fn with_sweep_grace(mut self, grace: Duration) -> Self {
        self.sweep_grace = grace;
        self
    }

    /// The tags' epochs, one `GET` per tag on its node.
    pub(super) async fn epochs_cluster(&self, tags: &[Bytes]) -> Result<Vec<u64>, IndexError> {
        let tasks = tags.iter().map(|tag| {
            let client = self.client.clone();
            let key = self.names.epoch(tag);
            async move {
                let slot = redis_keyslot(&key);
                let value: Value = client
                    .custom(in_slot("GET", slot), vec![Value::Bytes(key)])
                    .await?;
                Ok(epoch_from_reply(value.as_bytes()))
            }
        });
        all(tasks).await
    }

    /// A tagged write in cluster mode, steps (1) to (4) of the module docs; Redis's reply to
    /// the command as fred read it. Every data key must be in one slot (Redis answers
    /// `CROSSSLOT` otherwise, and nothing is written).
    pub async fn write_cluster(&self, call: &WriteCall<'_>) -> Result<Resp3Frame, IndexError> {
        self.with_library(|| self.write_cluster_once(call)).await
    }

    async fn write_cluster_once(&self, call: &WriteCall<'_>) -> Result<Resp3Frame, IndexError> {
        let Some(first) = call.keys.first() else {
            return Err(IndexError::Reply {
                function: "cachet_cwrite",
                reply: "no data key".to_owned(),
            });
        };
        let slot = redis_keyslot(&first.key);
        if call.keys.iter().any(|k| redis_keyslot(&k.key) != slot) {
            return Ok(Resp3Frame::SimpleError {
                data: "CROSSSLOT Keys in request don't hash to the same slot".into(),
                attributes: None,
            });
        }
        // (1) What each key's tags are, and their epochs as the lease saw them or now.
        let mut plan = Vec::with_capacity(call.keys.len());
        for key in call.keys {
            let mut indexed = indexed_tags(key);
            let mut checked = key.tags.clone();
            let mut seen: Vec<Option<u64>> = match &key.snapshot {
                Some(s) if s.len() == key.tags.len() => s.iter().copied().map(Some).collect(),
                _ => vec![None; key.tags.len()],
            };
            if let Some(source) = key.inherit_from.and_then(|i| call.keys.get(i)) {
                let inherited = self.inherited_tags(source).await?;
                for tag in inherited {
                    if !indexed.contains(&tag) {
                        indexed.push(tag.clone());
                    }
                    if !checked.contains(&tag) {
                        checked.push(tag);
                        seen.push(None);
                    }
                }
            }
            plan.push(Planned {
                key: key.key.clone(),
                indexed,
                checked,
                seen,
            });
        }
        let unseen: Vec<Bytes> = plan
            .iter()
            .flat_map(|p| p.checked.iter().zip(&p.seen))
            .filter(|(_, s)| s.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        let mut now = self.epochs_cluster(&unseen).await?.into_iter();
        for p in &mut plan {
            for s in &mut p.seen {
                if s.is_none() {
                    *s = now.next();
                }
            }
        }
        // (2) Each key joins its tags' sets.
        self.add_entries(&plan, &score_hint(call, now_ms())).await?;
        // (3) The command, the TTL and the per-key sets, on the keys' node.
        let reply = match self
            .client
            .custom_raw(in_slot("FCALL", slot), self.cwrite_args(call, &plan))
            .await
        {
            Ok(frame @ (Resp3Frame::SimpleError { .. } | Resp3Frame::BlobError { .. })) => {
                return error_or_missing(frame);
            }
            Ok(frame) => frame,
            Err(error) => match IndexError::from(error) {
                IndexError::Refused(error) => {
                    return Ok(Resp3Frame::SimpleError {
                        data: error.details().into(),
                        attributes: None,
                    });
                }
                other => return Err(other),
            },
        };
        // (4) An epoch that moved since (1): the value may predate that invalidation.
        let checked: Vec<Bytes> = plan.iter().flat_map(|p| p.checked.clone()).collect();
        let mut after = self.epochs_cluster(&checked).await?.into_iter();
        for p in &plan {
            let moved = p
                .seen
                .iter()
                .map(|seen| (seen.unwrap_or(0), after.next().unwrap_or(0)))
                .any(|(seen, now)| now > seen);
            if moved {
                let args = vec![
                    Value::Bytes(p.key.clone()),
                    bytes(&self.names.key_tags(&p.key)),
                ];
                let _: Value = self.client.custom(in_slot("UNLINK", slot), args).await?;
            }
        }
        Ok(reply)
    }

    /// The tags a RENAME or COPY destination takes from `source`: those in its per-key set,
    /// and those that named it (which do not name the destination).
    async fn inherited_tags(&self, source: &WriteKey) -> Result<Vec<Bytes>, IndexError> {
        let set = self.names.key_tags(&source.key);
        let reply: Value = self
            .client
            .custom(
                in_slot("SMEMBERS", redis_keyslot(&set)),
                vec![Value::Bytes(set)],
            )
            .await?;
        let mut tags = byte_strings("SMEMBERS", &reply)?;
        for (j, tag) in source.tags.iter().enumerate() {
            if j < 64 && source.named & (1 << j) != 0 && !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        Ok(tags)
    }

    /// `FCALL cachet_cwrite[_oom]`'s arguments (after `FCALL`).
    fn cwrite_args(&self, call: &WriteCall<'_>, plan: &[Planned]) -> Vec<Value> {
        self.cwrite_vector(call, plan)
            .into_iter()
            .skip(1)
            .map(Value::Bytes)
            .collect()
    }

    /// `FCALL cachet_cwrite[_oom] ...`: the command, the rule's TTL and the per-key sets of
    /// its keys, all in one slot. Only the rule's indexed tags are sent; inherited ones are
    /// read again inside the call.
    fn cwrite_vector(&self, call: &WriteCall<'_>, plan: &[Planned]) -> Vec<Bytes> {
        let function: &'static [u8] = if call.allow_oom {
            b"cachet_cwrite_oom"
        } else {
            b"cachet_cwrite"
        };
        let mut out = vec![
            Bytes::from_static(b"FCALL"),
            Bytes::from_static(function),
            number(2 * call.keys.len() as u64),
        ];
        for key in call.keys {
            out.push(key.key.clone());
            out.push(self.names.key_tags(&key.key));
        }
        let resp: &'static [u8] = match call.protocol {
            Protocol::Resp2 => b"2",
            Protocol::Resp3 => b"3",
        };
        out.extend([
            self.names.prefix().clone(),
            Bytes::from_static(resp),
            Bytes::from_static(if call.explicit_ttl { b"1" } else { b"0" }),
            number(call.command.len() as u64),
        ]);
        out.extend(call.command.iter().cloned());
        for (key, planned) in call.keys.iter().zip(plan) {
            let inherit = key
                .inherit_from
                .filter(|&i| i < call.keys.len())
                .map_or(0, |i| i + 1);
            let own: Vec<&Bytes> = planned
                .indexed
                .iter()
                .filter(|t| key.tags.contains(t))
                .collect();
            out.push(number(key.ttl_secs));
            out.push(number(inherit as u64));
            out.push(number(own.len() as u64));
            out.extend(own.into_iter().cloned());
        }
        out
    }

    /// For a tagged write queued in a client's `MULTI` on a cluster, which cannot wait for
    /// steps of its own: the `cachet_cwrite` vector to queue in its place (step 3), and a
    /// task adding its index entries now (steps 1 and 2), before the `EXEC` that follows.
    /// No lease is checked and no step (4) runs: see the module docs, "Limits".
    pub fn queued_write(
        &self,
        call: &WriteCall<'_>,
    ) -> (Vec<Bytes>, impl Future<Output = ()> + use<>) {
        let plan: Vec<Planned> = call
            .keys
            .iter()
            .map(|key| Planned {
                key: key.key.clone(),
                indexed: indexed_tags(key),
                checked: Vec::new(),
                seen: Vec::new(),
            })
            .collect();
        let vector = self.cwrite_vector(call, &plan);
        let index = self.clone();
        let keys = call.keys.to_vec();
        let score = score_hint(call, now_ms());
        let entries = async move {
            let mut plan = plan;
            for (planned, key) in plan.iter_mut().zip(&keys) {
                if let Some(source) = key.inherit_from.and_then(|i| keys.get(i))
                    && let Ok(inherited) = index.inherited_tags(source).await
                {
                    planned.indexed.extend(inherited);
                }
            }
            if let Err(error) = index.add_entries(&plan, &score).await {
                tracing::warn!(%error, "index entries of a write queued in MULTI");
            }
        };
        (vector, entries)
    }

    /// Step (2): each key joins its tags' sets, on their nodes.
    async fn add_entries(&self, plan: &[Planned], score: &Bytes) -> Result<(), IndexError> {
        let tasks: Vec<_> = plan
            .iter()
            .flat_map(|p| {
                p.indexed.iter().map(|tag| {
                    let client = self.client.clone();
                    let set = self.names.tag_keys(tag);
                    let args = vec![
                        Value::Bytes(set.clone()),
                        Value::Bytes(score.clone()),
                        Value::Bytes(p.key.clone()),
                    ];
                    async move {
                        let _: Value = client
                            .custom(in_slot("ZADD", redis_keyslot(&set)), args)
                            .await?;
                        Ok(())
                    }
                })
            })
            .collect();
        all(tasks).await.map(drop)
    }

    /// A write through the index on its own connection (TAGSET, a policy's deletes) in
    /// cluster mode. A `DEL` or `UNLINK` of keys in several slots is split by slot (as the
    /// cluster core splits a client's) and its counts added up.
    pub(super) async fn write_value_cluster(
        &self,
        call: &WriteCall<'_>,
    ) -> Result<Value, IndexError> {
        let deletes = call
            .command
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"del") || c.eq_ignore_ascii_case(b"unlink"));
        let slots = |keys: &[WriteKey]| {
            let mut slots: Vec<u16> = keys.iter().map(|k| redis_keyslot(&k.key)).collect();
            slots.sort_unstable();
            slots.dedup();
            slots
        };
        if deletes && slots(call.keys).len() > 1 {
            let mut total = 0;
            for slot in slots(call.keys) {
                let keys: Vec<WriteKey> = call
                    .keys
                    .iter()
                    .filter(|k| redis_keyslot(&k.key) == slot)
                    .cloned()
                    .collect();
                let mut command = vec![call.command[0].clone()];
                command.extend(keys.iter().map(|k| k.key.clone()));
                let part = WriteCall {
                    command: &command,
                    keys: &keys,
                    ..*call
                };
                total += frame_value(self.write_cluster(&part).await?)?
                    .as_u64()
                    .unwrap_or(0);
            }
            return Ok(Value::Integer(total as i64));
        }
        frame_value(self.write_cluster(call).await?)
    }

    /// `TAG key tag...` in cluster mode: the entries first, then the per-key set on the
    /// key's node (`cachet_ctag`, which answers `ERR no such key` for a missing key).
    pub(super) async fn tag_cluster(&self, key: &Bytes, tags: &[Bytes]) -> Result<u64, IndexError> {
        if tags.is_empty() {
            return Ok(0);
        }
        let slot = redis_keyslot(key);
        let expiry: Value = self
            .client
            .custom(in_slot("PEXPIRETIME", slot), vec![bytes(key)])
            .await?;
        let score = match expiry.as_i64() {
            Some(ms) if ms > 0 => number(ms as u64),
            _ => Bytes::from_static(b"+inf"),
        };
        let tasks: Vec<_> = tags
            .iter()
            .map(|tag| {
                let client = self.client.clone();
                let set = self.names.tag_keys(tag);
                let args = vec![
                    Value::Bytes(set.clone()),
                    Value::Bytes(score.clone()),
                    bytes(key),
                ];
                async move {
                    let _: Value = client
                        .custom(in_slot("ZADD", redis_keyslot(&set)), args)
                        .await?;
                    Ok(())
                }
            })
            .collect();
        all(tasks).await?;
        let mut args = vec![
            Value::from("cachet_ctag"),
            Value::from(2),
            bytes(key),
            Value::Bytes(self.names.key_tags(key)),
            bytes(self.names.prefix()),
        ];
        args.extend(tags.iter().map(bytes));
        let reply: Value = self.client.custom(in_slot("FCALL", slot), args).await?;
        reply
            .as_u64()
            .ok_or_else(|| unexpected("cachet_ctag", &reply))
    }

    /// One `TAGKEYS` page in cluster mode: the keys `tag` names (first page), then one `ZSCAN`
    /// page of its set, each key checked on its own node.
    pub(super) async fn tagkeys_cluster(
        &self,
        tag: &[u8],
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<Bytes>), IndexError> {
        let mut candidates = Vec::new();
        if cursor == 0 {
            candidates.extend(self.keys_named_by(tag));
        }
        let set = self.names.tag_keys(tag);
        let reply: Value = self
            .client
            .custom(
                in_slot("ZSCAN", redis_keyslot(&set)),
                vec![
                    Value::Bytes(set),
                    Value::Bytes(number(cursor)),
                    Value::from("COUNT"),
                    Value::Bytes(number(count)),
                ],
            )
            .await?;
        let next = match &reply {
            Value::Array(parts) if parts.len() == 2 => {
                let next = parts[0]
                    .as_u64()
                    .ok_or_else(|| unexpected("ZSCAN", &reply))?;
                let members = byte_strings("ZSCAN", &parts[1])?;
                candidates.extend(members.into_iter().step_by(2));
                next
            }
            _ => return Err(unexpected("ZSCAN", &reply)),
        };
        let exists = self.expiries(&candidates).await?;
        let live = candidates
            .into_iter()
            .zip(exists)
            .filter(|(_, pt)| *pt != -2)
            .map(|(k, _)| k)
            .collect();
        Ok((next, live))
    }

    /// Each key's `PEXPIRETIME` (-2: gone, -1: no expiry), asked of its own node.
    async fn expiries(&self, keys: &[Bytes]) -> Result<Vec<i64>, IndexError> {
        let tasks: Vec<_> = keys
            .iter()
            .map(|key| {
                let client = self.client.clone();
                let key = key.clone();
                async move {
                    let slot = redis_keyslot(&key);
                    let v: Value = client
                        .custom(in_slot("PEXPIRETIME", slot), vec![Value::Bytes(key)])
                        .await?;
                    v.as_i64().ok_or_else(|| unexpected("PEXPIRETIME", &v))
                }
            })
            .collect();
        all(tasks).await
    }

    /// Invalidation of one tag in cluster mode, steps (a) and (b) of the module docs.
    pub(super) async fn invalidate_tag_cluster(&self, tag: &Bytes) -> Result<u64, IndexError> {
        let set = self.names.tag_keys(tag);
        let slot = redis_keyslot(&set);
        let reply: Value = self
            .client
            .custom(
                in_slot("FCALL", slot),
                vec![
                    Value::from("cachet_cinvalidate"),
                    Value::from(2),
                    Value::Bytes(set),
                    Value::Bytes(self.names.epoch(tag)),
                    bytes(self.names.prefix()),
                    bytes(tag),
                    Value::Bytes(number(self.epoch_ttl.as_millis() as u64)),
                ],
            )
            .await?;
        let [epoch, remaining] = integers("cachet_cinvalidate", &reply)?;
        // The keys the tag names have no entry: delete them by name.
        let mut deleted = self.delete_data_keys(self.keys_named_by(tag)).await?;
        if remaining > 0 {
            deleted += self
                .drain_cluster(self.names.drain(tag, epoch as u64))
                .await?;
        }
        Ok(deleted)
    }

    /// Deletes the keys of a drain set, a page of members at a time (the next page read while
    /// this one's keys are deleted), then the set itself (`UNLINK`: freed off Redis's main
    /// thread). Members stay until the end, so a cachet that dies midway leaves the whole set
    /// for the sweeper, which deletes its keys again (deleting is idempotent).
    pub(super) async fn drain_cluster(&self, set: Bytes) -> Result<u64, IndexError> {
        let slot = redis_keyslot(&set);
        let primaries = self.client.num_primary_cluster_nodes().max(1);
        let page = (self.chunk * primaries).min(DRAIN_PAGE * primaries);
        let read = |start: usize| {
            let (client, set) = (self.client.clone(), set.clone());
            tokio::spawn(async move {
                let range = vec![
                    Value::Bytes(set),
                    Value::Bytes(number(start as u64)),
                    Value::Bytes(number((start + page - 1) as u64)),
                ];
                let reply: Value = client.custom(in_slot("ZRANGE", slot), range).await?;
                byte_strings("ZRANGE", &reply)
            })
        };
        let joined = |e: tokio::task::JoinError| IndexError::Reply {
            function: "task",
            reply: e.to_string(),
        };
        let mut deleted = 0;
        let mut start = 0;
        let mut next = Some(read(start));
        while let Some(reading) = next.take() {
            let members = reading.await.map_err(joined)??;
            start += members.len();
            if members.len() == page {
                next = Some(read(start));
            }
            deleted += self.delete_data_keys(members).await?;
        }
        let _: Value = self
            .client
            .custom(in_slot("UNLINK", slot), vec![Value::Bytes(set)])
            .await?;
        Ok(deleted)
    }

    /// Deletes data keys and their per-key sets: one `cachet_cdelete` call per node at a
    /// time, at most [`TagIndex::with_chunk`] keys and [`TagIndex::with_call_budget`] each,
    /// the nodes in parallel. Keys whose node the slot map got wrong (resharding) are
    /// deleted one by one, through fred's redirections. Returns how many existed.
    async fn delete_data_keys(&self, keys: Vec<Bytes>) -> Result<u64, IndexError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let routing = self.client.cached_cluster_state();
        let mut groups: Vec<(Option<Server>, Vec<Bytes>)> = Vec::new();
        for key in keys {
            let server = routing
                .as_ref()
                .and_then(|r| r.get_server(redis_keyslot(&key)).cloned());
            match groups.iter_mut().find(|(s, _)| *s == server) {
                Some((_, group)) => group.push(key),
                None => groups.push((server, vec![key])),
            }
        }
        let mut deleted = 0;
        let mut groups = groups.into_iter().map(|(_, keys)| keys).peekable();
        while groups.peek().is_some() {
            let tasks: Vec<_> = groups
                .by_ref()
                .take(self.node_parallelism)
                .map(|keys| {
                    let index = self.clone();
                    async move { index.delete_on_one_node(keys).await }
                })
                .collect();
            deleted += all(tasks).await?.into_iter().sum::<u64>();
        }
        Ok(deleted)
    }

    /// Deletes keys served by one node, a call at a time: each takes up to a chunk of keys
    /// and leaves the rest of them for the next once its budget is spent.
    async fn delete_on_one_node(&self, keys: Vec<Bytes>) -> Result<u64, IndexError> {
        let mut deleted = 0;
        let mut rest = keys;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.chunk));
            let (n, mut left) = self.delete_chunk(rest).await?;
            deleted += n;
            left.extend(tail);
            rest = left;
        }
        Ok(deleted)
    }

    /// One `cachet_cdelete` call: how many keys existed, and the keys it left for its budget.
    /// Keys the slot map placed on the wrong node (resharding) are deleted one by one, each
    /// through fred's redirections.
    async fn delete_chunk(&self, chunk: Vec<Bytes>) -> Result<(u64, Vec<Bytes>), IndexError> {
        let mut args = vec![
            Value::from("cachet_cdelete"),
            Value::from(1),
            bytes(&chunk[0]),
            bytes(self.names.prefix()),
            Value::Bytes(number(self.call_budget.as_micros() as u64)),
        ];
        args.extend(chunk.iter().map(bytes));
        let slot = redis_keyslot(&chunk[0]);
        let reply: Result<Value, _> = self.client.custom(in_slot("FCALL", slot), args).await;
        match reply.map_err(IndexError::from) {
            Ok(reply) => {
                let [n, done] = integers("cachet_cdelete", &reply)?;
                let done = (done as usize).clamp(1, chunk.len());
                Ok((n as u64, chunk[done..].to_vec()))
            }
            Err(IndexError::Refused(error)) => {
                tracing::debug!(%error, "cachet_cdelete refused; deleting one by one");
                let mut n = 0;
                for key in &chunk {
                    let gone: Value = self
                        .client
                        .custom(in_slot("UNLINK", redis_keyslot(key)), vec![bytes(key)])
                        .await?;
                    n += gone.as_u64().unwrap_or(0);
                    let set = self.names.key_tags(key);
                    let slot = redis_keyslot(&set);
                    let _: Value = self
                        .client
                        .custom(in_slot("DEL", slot), vec![Value::Bytes(set)])
                        .await?;
                }
                Ok((n, Vec::new()))
            }
            Err(other) => Err(other),
        }
    }

    /// One sweeper step in cluster mode: one SCAN page of one primary. The cursor carries
    /// the primary's position (in the sorted list of primaries) in its low byte.
    pub(super) async fn sweep_step_cluster(
        &self,
        cursor: u64,
        count: u64,
    ) -> Result<(u64, SweepStats), IndexError> {
        let mut primaries = self
            .client
            .cached_cluster_state()
            .map(|r| r.unique_primary_nodes())
            .unwrap_or_default();
        primaries.sort();
        let node = (cursor & ((1 << NODE_BITS) - 1)) as usize;
        let Some(server) = primaries.get(node).cloned() else {
            return Ok((0, SweepStats::default()));
        };
        let reply: Value = self
            .client
            .with_cluster_node(server)
            .custom(
                CustomCommand::new_static("SCAN", ClusterHash::Random, false),
                vec![
                    Value::Bytes(number(cursor >> NODE_BITS)),
                    Value::from("MATCH"),
                    Value::Bytes(self.names.scan_pattern().into()),
                    Value::from("COUNT"),
                    Value::Bytes(number(count)),
                ],
            )
            .await?;
        let (next, names) = match &reply {
            Value::Array(parts) if parts.len() == 2 => (
                parts[0]
                    .as_u64()
                    .or_else(|| parts[0].as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| unexpected("SCAN", &reply))?,
                byte_strings("SCAN", &parts[1])?,
            ),
            _ => return Err(unexpected("SCAN", &reply)),
        };
        let mut stats = SweepStats {
            scanned: names.len(),
            ..SweepStats::default()
        };
        for name in &names {
            match name.get(self.names.prefix().len() + 1) {
                Some(b't') => stats.members_removed += self.sweep_set_cluster(name).await?,
                Some(b'd') => stats.drained += self.drain_cluster(name.clone()).await?,
                Some(b'k') => {
                    if let Some(key) = self.names.parse_key_tags(name) {
                        stats.key_sets_removed +=
                            self.reconcile_cluster(name.slice_ref(key)).await?;
                    }
                }
                _ => {}
            }
        }
        let next = match (next, node + 1 < primaries.len()) {
            (0, true) => (node + 1) as u64,
            (0, false) => 0,
            (c, _) => (c << NODE_BITS) | node as u64,
        };
        Ok((next, stats))
    }

    /// `cachet_cwrite` with no command: drops `key`'s per-key set if `key` is gone.
    async fn reconcile_cluster(&self, key: Bytes) -> Result<u64, IndexError> {
        let call = WriteCall {
            command: &[],
            keys: &[WriteKey {
                key,
                ..WriteKey::default()
            }],
            protocol: Protocol::Resp2,
            explicit_ttl: true,
            allow_oom: true,
        };
        let plan = [Planned {
            key: call.keys[0].key.clone(),
            indexed: Vec::new(),
            checked: Vec::new(),
            seen: Vec::new(),
        }];
        let slot = redis_keyslot(&plan[0].key);
        let reply: Value = self
            .client
            .custom(in_slot("FCALL", slot), self.cwrite_args(&call, &plan))
            .await?;
        reply
            .as_u64()
            .ok_or_else(|| unexpected("cachet_cwrite_oom", &reply))
    }

    /// Sweeps one tag set: members whose keys are gone leave once their score is more than
    /// [`SWEEP_GRACE`] past (`+inf` first becomes now), live ones get their real expiry.
    async fn sweep_set_cluster(&self, set: &Bytes) -> Result<u64, IndexError> {
        let slot = redis_keyslot(set);
        let mut cursor = 0u64;
        let mut removed = 0;
        loop {
            let reply: Value = self
                .client
                .custom(
                    in_slot("ZSCAN", slot),
                    vec![
                        bytes(set),
                        Value::Bytes(number(cursor)),
                        Value::from("COUNT"),
                        Value::Bytes(number(self.chunk as u64)),
                    ],
                )
                .await?;
            let (next, page) = match &reply {
                Value::Array(parts) if parts.len() == 2 => (
                    parts[0]
                        .as_u64()
                        .ok_or_else(|| unexpected("ZSCAN", &reply))?,
                    byte_strings("ZSCAN", &parts[1])?,
                ),
                _ => return Err(unexpected("ZSCAN", &reply)),
            };
            let members: Vec<Bytes> = page.iter().step_by(2).cloned().collect();
            let scores: Vec<Bytes> = page.iter().skip(1).step_by(2).cloned().collect();
            let expiries = self.expiries(&members).await?;
            let now = now_ms();
            let grace = self.sweep_grace.as_millis() as u64;
            let mut fixes = vec![Value::from("cachet_cfix"), Value::from(1), bytes(set)];
            for ((member, seen), pt) in members.iter().zip(&scores).zip(expiries) {
                let seen_ms = score_ms(seen);
                let new: Option<Bytes> = match pt {
                    -2 => match seen_ms {
                        None => Some(number(now)),
                        Some(ms) if ms + grace <= now => Some(Bytes::from_static(b"-")),
                        Some(_) => None,
                    },
                    -1 if seen_ms.is_some() => Some(Bytes::from_static(b"+inf")),
                    pt if pt >= 0 && seen_ms != Some(pt as u64) => Some(number(pt as u64)),
                    _ => None,
                };
                if let Some(new) = new {
                    fixes.extend([bytes(member), bytes(seen), Value::Bytes(new)]);
                }
            }
            if fixes.len() > 3 {
                let reply: Value = self.client.custom(in_slot("FCALL", slot), fixes).await?;
                removed += reply
                    .as_u64()
                    .ok_or_else(|| unexpected("cachet_cfix", &reply))?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// The tags of a key's rule that do not name it: those whose sets get it.
fn indexed_tags(key: &WriteKey) -> Vec<Bytes> {
    let named = |j: usize| j < 64 && key.named & (1 << j) != 0;
    let tags = key.tags.iter().enumerate();
    tags.filter(|(j, _)| !named(*j))
        .map(|(_, t)| t.clone())
        .collect()
}

/// A score as Redis writes it: whole milliseconds, or `None` for `inf`.
fn score_ms(score: &[u8]) -> Option<u64> {
    std::str::from_utf8(score)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| f.is_finite())
        .map(|f| f.max(0.0) as u64)
}

/// The score of step (2): the rule's TTL from now when it will apply (an upper bound, as for
/// fast writes), else `+inf`. Scores only tell the sweeper when to look.
fn score_hint(call: &WriteCall<'_>, now_ms: u64) -> Bytes {
    let ttl = call.keys.iter().map(|k| k.ttl_secs).max().unwrap_or(0);
    if call.explicit_ttl || ttl == 0 || call.keys.iter().any(|k| k.ttl_secs == 0) {
        return Bytes::from_static(b"+inf");
    }
    number(now_ms + ttl * 1000 + FAST_SCORE_SLACK_MS)
}

/// An error reply as the call's result: Redis's refusal for the client, or the library
/// missing (to load it and try again).
fn error_or_missing(frame: Resp3Frame) -> Result<Resp3Frame, IndexError> {
    let text = frame.as_str().unwrap_or_default();
    if text.starts_with("ERR Function not found") {
        return Err(IndexError::from(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            text.to_owned(),
        )));
    }
    Ok(frame)
}

/// A reply frame as fred's value (for TAGSET and policies, which only read counts and
/// errors).
fn frame_value(frame: Resp3Frame) -> Result<Value, IndexError> {
    Ok(match frame {
        Resp3Frame::SimpleError { data, .. } => {
            return Err(IndexError::from(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                data.to_string(),
            )));
        }
        Resp3Frame::BlobError { data, .. } => {
            return Err(IndexError::from(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                String::from_utf8_lossy(&data).into_owned(),
            )));
        }
        Resp3Frame::Number { data, .. } => Value::Integer(data),
        Resp3Frame::Null => Value::Null,
        Resp3Frame::Array { data, .. } => Value::Array(
            data.into_iter()
                .map(frame_value)
                .collect::<Result<_, _>>()?,
        ),
        other => match other.as_bytes() {
            Some(b) => Value::Bytes(Bytes::copy_from_slice(b)),
            None => Value::Null,
        },
    })
}

/// Redis's reply, as fred read it from the control client, in the client's protocol.
pub fn encode_reply(frame: &Resp3Frame, protocol: Protocol) -> Bytes {
    let mut out = BytesMut::new();
    match protocol {
        Protocol::Resp3 => {
            redis_protocol::resp3::encode::complete::extend_encode(&mut out, frame, false)
                .expect("a frame read from Redis encodes");
        }
        Protocol::Resp2 => {
            redis_protocol::resp2::encode::extend_encode(&mut out, &to_resp2(frame), false)
                .expect("a frame read from Redis encodes");
        }
    }
    out.freeze()
}

fn to_resp2(frame: &Resp3Frame) -> redis_protocol::resp2::types::BytesFrame {
    use redis_protocol::resp2::types::BytesFrame as F2;
    match frame {
        Resp3Frame::SimpleString { data, .. } => F2::SimpleString(data.clone()),
        Resp3Frame::SimpleError { data, .. } => F2::Error(data.clone()),
        Resp3Frame::BlobError { data, .. } => {
            F2::Error(String::from_utf8_lossy(data).into_owned().into())
        }
        Resp3Frame::Number { data, .. } => F2::Integer(*data),
        Resp3Frame::Boolean { data, .. } => F2::Integer(i64::from(*data)),
        Resp3Frame::Double { data, .. } => F2::BulkString(Bytes::from(data.to_string())),
        Resp3Frame::Null => F2::Null,
        Resp3Frame::Array { data, .. } | Resp3Frame::Push { data, .. } => {
            F2::Array(data.iter().map(to_resp2).collect())
        }
        Resp3Frame::Set { data, .. } => F2::Array(data.iter().map(to_resp2).collect()),
        Resp3Frame::Map { data, .. } => F2::Array(
            data.iter()
                .flat_map(|(k, v)| [to_resp2(k), to_resp2(v)])
                .collect(),
        ),
        other => match other.kind() {
            FrameKind::Null => F2::Null,
            _ => F2::BulkString(
                other
                    .as_bytes()
                    .map(Bytes::copy_from_slice)
                    .unwrap_or_default(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(s: &'static str) -> Resp3Frame {
        Resp3Frame::BlobString {
            data: Bytes::from_static(s.as_bytes()),
            attributes: None,
        }
    }

    #[test]
    fn replies_are_encoded_in_the_clients_protocol() {
        let frame = Resp3Frame::Array {
            data: vec![
                blob("a"),
                Resp3Frame::Null,
                Resp3Frame::Number {
                    data: 7,
                    attributes: None,
                },
            ],
            attributes: None,
        };
        assert_eq!(
            &encode_reply(&frame, Protocol::Resp2)[..],
            b"*3\r\n$1\r\na\r\n$-1\r\n:7\r\n"
        );
        assert_eq!(
            &encode_reply(&frame, Protocol::Resp3)[..],
            b"*3\r\n$1\r\na\r\n_\r\n:7\r\n"
        );
        let error = Resp3Frame::SimpleError {
            data: "WRONGTYPE Operation against a key".into(),
            attributes: None,
        };
        assert_eq!(
            &encode_reply(&error, Protocol::Resp2)[..],
            b"-WRONGTYPE Operation against a key\r\n"
        );
        let double = Resp3Frame::Double {
            data: 1.5,
            attributes: None,
        };
        assert_eq!(
            &encode_reply(&double, Protocol::Resp2)[..],
            b"$3\r\n1.5\r\n"
        );
    }

    #[test]
    fn scores_read_as_redis_writes_them() {
        assert_eq!(score_ms(b"1700000061440"), Some(1_700_000_061_440));
        assert_eq!(score_ms(b"inf"), None);
        assert_eq!(score_ms(b"junk"), None);
    }

    #[test]
    fn step_two_scores_bound_the_rule_ttl_or_are_infinite() {
        let key = |ttl_secs| WriteKey {
            key: Bytes::from_static(b"k"),
            ttl_secs,
            ..WriteKey::default()
        };
        let call = |keys: &[WriteKey], explicit_ttl| {
            score_hint(
                &WriteCall {
                    command: &[],
                    keys,
                    protocol: Protocol::Resp2,
                    explicit_ttl,
                    allow_oom: false,
                },
                1_000,
            )
        };
        assert_eq!(&call(&[key(60)], false)[..], b"61250");
        assert_eq!(&call(&[key(60)], true)[..], b"+inf");
        assert_eq!(&call(&[key(0)], false)[..], b"+inf");
    }
}
