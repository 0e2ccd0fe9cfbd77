//! The tag index: which keys carry which tag, kept in Redis so that any number of cachet
//! instances share it, and `TAGINVALIDATE` (deleting every key of a tag).
//!
//! The index is a Redis 7 function library, `cachet` (`index.lua`, loaded by
//! [`TagIndex::install`]). Every change to it happens inside one function call or one
//! `MULTI`/`EXEC` block, together with the data write it follows, so Redis never shows a
//! tagged key without its index entries.
//! Reading a key never touches the index: a read only needs the epochs of the tags its rule
//! names ([`TagIndex::epoch_keys`]), and only when the proxy wants to fill the key after a miss.
//!
//! # Tags that name their key
//!
//! A rule tag whose template holds every capture of a pattern without `*`
//! (`session:{id}` of `session:{id}`, `teacher:{t}` of `sessions:teacher:{t}`) *names* the
//! key: the tag reads back into the one key of that rule that carries it
//! ([`crate::tags::Rules::keys_named_by`]). Such tags get no entry in the index: a write
//! only checks their epochs (for stale sets), and invalidation, `TAGS` and `TAGKEYS` find
//! their keys from the rules (given with [`TagIndex::with_rules`]) and pass them to the
//! functions below. A SET whose key has only such tags is the plain SET with the rule's TTL.
//! Everything the index guarantees holds for them trivially: the key is reachable from the
//! tag by its name, there is no entry to leak or to keep in step with the TTL, and the tag is
//! matched byte for byte. The rules must be the same on every cachet sharing the Redis (they
//! must be already, or the same key would get different tags); a key whose tag set in an
//! older configuration named it keeps whatever index entries that configuration wrote.
//!
//! # Keys
//!
//! With prefix `P` (default `cachet`), tag `t` and data key `K`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:t:{esc(t)}` | ZSET | the keys tagged `t`; score = the key's expiry in ms, `+inf` without one |
//! | `P:e:{esc(t)}` | string | `t`'s epoch: when it was last invalidated (ms, strictly increasing) |
//! | `P:d:{esc(t)}:E` | ZSET | a drain set: `t`'s keys as they were at the invalidation with epoch `E` |
//! | `P:k:{S(K)}:K` | SET | `K`'s tags; expires with `K` |
//!
//! `esc` percent-encodes `%` and `}` and maps the empty tag to a lone `%`, so it is injective
//! and its output never closes a hash tag early. `S(K)` is `K`'s own hash tag when it has a
//! valid one (Redis's rule: the first `{`, the first `}` after it, something in between), else
//! `K` itself when `K` has no `}`, else `esc(K)`. The text after `S(K)`'s closing brace is `K`
//! verbatim, so every name is injective and [`Names::parse_key_tags`] inverts the per-key one.
//! The prefix may contain neither `{` nor `}`, so the first `{` of every name is cachet's.
//!
//! # Slots (Redis Cluster)
//!
//! * Per-tag keys (`t`, `e`, `d`) hash `esc(t)`, so they share one slot: the slot of `t`
//!   itself unless `t` contains `%` or `}`, and, when a tag equals the hash tag of the keys it
//!   covers (`user:42` for `{user:42}:profile`), the slot of those keys too.
//! * The per-key set hashes `S(K)`: `K`'s slot, except for the empty key and for keys that
//!   contain `}` without a valid hash tag (those land in `esc(K)`'s slot).
//!
//! Standalone Redis is the target: `cachet_write` reaches a data key's slot and each of its
//! tags' slots, and invalidation reaches every tagged key's slot, which is fine on one server.
//! Cluster would need the tag sets split by slot (`P:t:{S(K)}:esc(t)` next to each key, plus
//! a per-tag registry of the slots in use, kept in the tag's slot), an epoch copy per slot (or
//! a two-step check), and invalidation fanned out per slot. The names above already put every
//! per-key structure in its key's slot, so only the per-tag side would change.
//!
//! # Functions
//!
//! Every function takes the prefix as its first argument (`P` below).
//!
//! * `cachet_write` / `cachet_write_oom` (identical; the latter is flagged `allow-oom`, for
//!   commands without Redis's `denyoom` flag such as DEL, EXPIRE, GETDEL, so that they still
//!   work when Redis is out of memory). Built by [`TagIndex::write_call`].
//!   - KEYS: per data key: `K`, `P:k:..K`, then per tag of that key `P:t:{t}`, `P:e:{t}`.
//!   - ARGV: `P`, `resp` (`2`|`3`), `explicit_ttl` (`0`|`1`), `n_cmd`, the command's `n_cmd`
//!     arguments, then per data key: `ttl_secs` (0: none), `inherit` (0, or the 1-based
//!     position of the data key whose tags this one takes, for RENAME/COPY), `n_tags`, then
//!     per tag: the tag's bytes, the epoch seen before the read that missed (or `-1`), and
//!     `1` to index it or `0` when it names the key (epoch check only; at a RENAME or COPY
//!     destination the source's naming tags are indexed, since they do not name it).
//!   - Runs the command (`redis.pcall`, in RESP3 when `resp` is 3) and replies what Redis
//!     replied. An error reply is returned unchanged and nothing is indexed. Otherwise, per
//!     data key: if it no longer exists, it leaves the index. If any tag's epoch is now above
//!     the seen one, the key and its index entries are deleted. Else, unless `explicit_ttl`,
//!     the rule's TTL is set when the key has none; the key's tags (these plus those it already
//!     had) all get it with its expiry as score, its per-key set expires with it, and each of
//!     those tag sets re-checks up to 16 members whose score has passed.
//!   - With `n_cmd` 0 no command runs; the function only reconciles the keys' index and replies
//!     how many of them are gone (the sweeper uses this).
//! * `cachet_trim`: KEYS tag sets `P:t:{t}`...; ARGV `P`. In each, re-checks up to 16 members
//!   whose score has passed, as `cachet_write` does when a member joins (see fast writes).
//!   Replies the number of sets.
//! * `cachet_invalidate`: KEYS `P:t:{t}`, `P:e:{t}`, then the keys `t` names; ARGV `P`, `t`,
//!   `chunk`, `budget_us`, `epoch_ttl_ms` (0: the epoch never expires), then per named key
//!   `n` and its rule's `n` indexed tags. Sets the epoch to `max(now_ms, epoch + 1)`,
//!   deletes the named keys (as a drain does, below, and from those tags' sets too),
//!   renames the tag set to the drain set `P:d:{t}:epoch`, and drains it. Replies
//!   `[deleted, remaining, epoch]`.
//! * `cachet_drain`: KEYS the drain set; ARGV `P`, `chunk`, `budget_us`. Replies
//!   `[deleted, remaining]`. Draining pops 100 members at a time and deletes each key, its
//!   per-key set and its entries in all its tags' sets (batched: one SMEMBERS per key, one
//!   UNLINK, one DEL, one ZREM per tag); it stops after `chunk` keys, or at the first step
//!   boundary after `budget_us`, so one call holds Redis for about the budget at most.
//! * `cachet_tag`: KEYS `K`, `P:k:..K`, `P:t:{t}`...; ARGV `P`, tags... Attaches tags to an
//!   existing key. Replies the number of tags it did not have yet (like SADD), or
//!   `-ERR no such key`.
//! * `cachet_tags` (read-only): KEYS `K`, `P:k:..K`; ARGV `P`, then `K`'s rule tags. The
//!   key's tags (none when it does not exist): its per-key set's and the rule's.
//! * `cachet_tagkeys` (read-only): KEYS `P:t:{t}`, then (with cursor 0) the keys `t` names;
//!   ARGV `cursor`, `count`. One ZSCAN page, after the named keys that exist:
//!   `[next cursor, [keys that exist]]`.
//! * `cachet_sweep`: KEYS `P:t:{t}`; ARGV `P`, `cursor`, `count`. One ZSCAN page: members
//!   whose key is gone leave the index, live ones with a stale score are rescored.
//!   `[next cursor, removed]`.
//!
//! # Fast writes
//!
//! A function call costs Redis about 20 µs for a SET with one tag (mostly the dozen
//! `redis.call`s it makes, each dearer than the same command from a client), against about
//! 1 µs for the SET alone. The common write, a `SET key value [EX s | PX ms]` of a key that
//! matches a rule, with no lease to check (no earlier miss of this key on the connection),
//! does not need a function: its expiry is known before it runs (the command's, or the rule's
//! TTL, appended as `EX`), and nothing in its index update depends on what Redis holds. cachet
//! sends it as one transaction ([`TagIndex::encode_fast_set`]):
//!
//! ```text
//! MULTI
//! SET K value [EX s | PX ms | EX rule_ttl]
//! ZADD P:t:{t} S K              (per rule tag that does not name K)
//! SADD P:k:{S(K)}:K t...        (these two only with two such tags or more)
//! PEXPIREAT P:k:{S(K)}:K S      (PERSIST when the key has no expiry, S = +inf)
//! EXEC
//! ```
//!
//! (only the SET when every rule tag names `K`: [`TagIndex::encode_set`]),
//! and forwards only the SET's reply (from EXEC's array; if Redis refused the SET while
//! queueing it, out of memory say, that refusal, as Redis worded it). `S` is cachet's clock
//! plus the TTL plus [`FAST_SCORE_SLACK_MS`], rounded up to a grid of about a sixteenth of the
//! TTL ([`FastSet::score`]): an upper bound of the expiry unless Redis runs the SET more than
//! the slack after cachet read its clock. On the grid, overwrites of a key within one step
//! write the score its members already have, and Redis leaves them where they are (moving a
//! member of a 100 000-member set costs several µs). Scores only decide when a member is
//! re-checked, never whether a live key stays, so an estimate is safe either way; an expired
//! member waits at most one step longer for its re-check.
//!
//! The tagged SETs of one client read share one transaction ([`FastBatch`]): `MULTI`, the
//! SETs in order, one `ZADD` per tag with every key of the batch under it, the per-key
//! sets, `EXEC`.
//!
//! The per-key set is what lets a drain of one of `K`'s tags take `K` out of its other
//! tags' sets. With one indexed tag there is no other set to leave (the rule's other tags
//! name `K`, and invalidating those passes `K`'s indexed tags along), so the block is only
//! MULTI, SET, ZADD, EXEC. Tags a key got beyond its rule's (TAG) are in its per-key set
//! from `cachet_tag`; when that set expires before the key, re-checks restore it.
//! What this keeps, guarantee by guarantee:
//!
//! * No unreachable entries: EXEC runs the block atomically, like a function; an invalidation
//!   runs wholly before it (the key lands in the fresh set) or after it (it is drained).
//! * Bounded: when a `ZADD` answers 1 (a new member), cachet sends one `cachet_trim` for
//!   those sets after the batch's replies, the re-check `cachet_write` does inline. The
//!   per-key set expires at `S`, with the key or a little after (before it only if Redis ran
//!   the SET more than the slack late; a later re-check restores it). Tags the key had beyond its rule's
//!   (TAG, a RENAME source's) keep their older score and are rescored by the next re-check.
//! * No stale set: a write with a lease always goes through `cachet_write`.
//! * Exact matching, chunked invalidation, key layout, plain reads: the same names, the same
//!   sets; only how the write reaches them differs.
//!
//! Everything else (other commands, SET with NX/XX/GET/KEEPTTL/EXAT/PXAT, writes inside a
//! client's own MULTI, writes with a lease) still goes through `cachet_write`.
//!
//! # Why it stays right
//!
//! * Epochs are times, not counters: a bump sets `max(now_ms, old + 1)`. An epoch can then
//!   expire (bounding the keys of one-off tags) or vanish with `FLUSHDB`, and the next bump
//!   still exceeds every epoch anyone saw before: those are at most the time of the last bump
//!   (plus 1 per extra bump within the same millisecond), and a missing epoch reads as 0.
//! * Invalidation renames the tag set away before deleting, so it deletes exactly the keys
//!   tagged when it began, however fast writers add new ones (looping "until the set is empty"
//!   could run forever on a hot tag). A fill that read before the bump fails the epoch check;
//!   a write after it is fresh and goes to the new set.
//! * A tag set entry is only removed once its key is gone: an expired score is re-checked
//!   (`PEXPIRETIME`) before the member leaves, so a TTL extended behind cachet's back never
//!   makes a key unreachable; the entry is rescored and the key's per-key set (which may have
//!   expired at the old time) gets the tag back.
//! * Entries of keys that vanish without cachet (eviction, DEL from another client) are
//!   removed by the sweeper ([`TagIndex::sweep_step`]), which is maintenance: it SCANs
//!   cachet's own keys. It also finishes drain sets left by a cachet that died mid
//!   invalidation (and may share the work of a live one, which then reports fewer deletions).
//!   Invalidation never scans.
//!
//! # Limits
//!
//! * Replies pass through Lua. Error replies from the command (`WRONGTYPE`, syntax, range) are
//!   Redis's own, but arity and unknown-command errors are worded by the script engine, so the
//!   proxy checks those against its command table before wrapping. In RESP2 a null array
//!   (`*-1`, LMPOP on nothing) comes back as a null bulk (`$-1`); in RESP3 a null *inside* an
//!   array ends it (BITFIELD ... OVERFLOW FAIL): such commands must not be wrapped.
//! * Lua's `unpack` takes about 8000 values: commands with more arguments cannot be wrapped.
//! * The library is not persisted by a Redis without RDB/AOF: re-install after reconnecting
//!   (`FCALL` otherwise fails with `ERR Function not found`).
//! * Under `allkeys-*` eviction Redis may evict a tag set, and that tag's keys then escape
//!   invalidation; use a `volatile-*` policy (tag sets and drain sets never have a TTL;
//!   epochs do, so `volatile-random` could in theory evict one between a bump and a fill).
//! * Functions run on the primary only, and with Redis's default script flags
//!   `cachet_write` is refused with Redis's own `-OOM` error when memory is full.
//! * Commands that skip `cachet_write` (a key that matches no rule but got tags with TAG, or a
//!   client talking to Redis directly) are safe for deletes and TTL changes: the re-checks
//!   and the sweeper catch up. A RENAME or COPY that skips it leaves the new name untagged,
//!   so the proxy should route those through `cachet_write` even for rule-less keys.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fred::clients::Client;
use fred::cmd;
use fred::interfaces::{ClientLike, FunctionInterface};
use fred::types::{Key, Value};
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame::{self, Array, BulkString};

use crate::resp::{Protocol, Request};
use crate::tags::Rules;

/// The library, loaded with `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = include_str!("index.lua");
pub const DEFAULT_PREFIX: &str = "cachet";
/// Most keys one invalidation call deletes.
pub const DEFAULT_CHUNK: usize = 1000;
/// After this long an invalidation call stops at its next step of 100 keys, however few it
/// has deleted: the bound on how long one call holds Redis, on any machine.
pub const DEFAULT_CALL_BUDGET: Duration = Duration::from_millis(2);
/// How long an epoch outlives its tag's last invalidation.
pub const DEFAULT_EPOCH_TTL: Duration = Duration::from_secs(24 * 3600);

/// Something went wrong talking to the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("invalid tag index prefix {prefix:?}: {reason}")]
    Prefix {
        prefix: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from {function}: {reply}")]
    Reply {
        function: &'static str,
        reply: String,
    },
}

/// The names of the index's keys (see the module docs). Pure, and mirrored by `index.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: Bytes,
}

impl Names {
    /// Checks the prefix: not empty, no `{` or `}` (it would capture the hash tag).
    pub fn new(prefix: &str) -> Result<Self, IndexError> {
        let reason = if prefix.is_empty() {
            Some("it is empty")
        } else if prefix.contains(['{', '}']) {
            Some("it contains `{` or `}`, which would change every index key's slot")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IndexError::Prefix {
                prefix: prefix.to_owned(),
                reason,
            }),
            None => Ok(Names {
                prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            }),
        }
    }

    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// `P:t:{esc(tag)}`: the ZSET of the tag's keys.
    pub fn tag_keys(&self, tag: &[u8]) -> Bytes {
        self.per_tag(b't', tag, None)
    }

    /// `P:e:{esc(tag)}`: the tag's epoch.
    pub fn epoch(&self, tag: &[u8]) -> Bytes {
        self.per_tag(b'e', tag, None)
    }

    /// `P:d:{esc(tag)}:epoch`: the drain set of the invalidation that set `epoch`.
    pub fn drain(&self, tag: &[u8], epoch: u64) -> Bytes {
        self.per_tag(b'd', tag, Some(epoch))
    }

    /// `P:k:{S(key)}:key`: the SET of the key's tags.
    pub fn key_tags(&self, key: &[u8]) -> Bytes {
        let slot = slot_part(key);
        let mut out = BytesMut::with_capacity(self.prefix.len() + 6 + slot.len() + key.len());
        out.put_slice(&self.prefix);
        out.put_slice(b":k:{");
        out.put_slice(&slot);
        out.put_slice(b"}:");
        out.put_slice(key);
        out.freeze()
    }

    /// The data key a per-key set belongs to, if `name` is one.
    pub fn parse_key_tags<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        let rest = name.strip_prefix(&self.prefix[..])?.strip_prefix(b":k:{")?;
        let close = rest.iter().position(|&b| b == b'}')?;
        let key = rest[close + 1..].strip_prefix(b":")?;
        (slot_part(key)[..] == rest[..close]).then_some(key)
    }

    fn per_tag(&self, kind: u8, tag: &[u8], epoch: Option<u64>) -> Bytes {
        let escaped = escape(tag);
        let mut out = BytesMut::with_capacity(self.prefix.len() + escaped.len() + 26);
        out.put_slice(&self.prefix);
        out.put_slice(&[b':', kind, b':', b'{']);
        out.put_slice(&escaped);
        out.put_u8(b'}');
        if let Some(epoch) = epoch {
            out.put_u8(b':');
            out.put_slice(epoch.to_string().as_bytes());
        }
        out.freeze()
    }
}

/// `%` → `%25`, `}` → `%7D`, the empty string → `%`.
fn escape(s: &[u8]) -> Vec<u8> {
    if s.is_empty() {
        return b"%".to_vec();
    }
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'}' => out.extend_from_slice(b"%7D"),
            _ => out.push(b),
        }
    }
    out
}

/// The key's own hash tag, else the key when it has no `}`, else the key escaped.
fn slot_part(key: &[u8]) -> Vec<u8> {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return key[open + 1..open + 1 + len].to_vec();
    }
    if !key.is_empty() && !key.contains(&b'}') {
        return key.to_vec();
    }
    escape(key)
}

/// One data key of a write: its tags, what cachet saw of their epochs, its rule's TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteKey {
    pub key: Bytes,
    /// The tags the key's rule gives it.
    pub tags: Vec<Bytes>,
    /// Bit `j` set: `tags[j]` names the key ([`crate::tags::Match::named`]): its epoch is
    /// checked like any tag's, but it gets no index entry (invalidation finds the key from
    /// the rules).
    pub named: u64,
    /// The epochs of `tags`, in the same order, read before the client's earlier read of this
    /// key missed ([`TagIndex::epoch_read`], [`parse_epochs`]). If any is lower than the tag's
    /// epoch at write time, the write's value is deleted. `None`: no such read, no check.
    pub snapshot: Option<Vec<u64>>,
    /// The rule's TTL (0: none), set when the key has no TTL after the command.
    pub ttl_secs: u64,
    /// The position (in [`WriteCall::keys`]) of the key whose tags this one takes when the
    /// command succeeds: the source of a RENAME or COPY.
    pub inherit_from: Option<usize>,
}

/// One command for `cachet_write`.
#[derive(Debug, Clone, Copy)]
pub struct WriteCall<'a> {
    /// The command as the client sent it.
    pub command: &'a [Bytes],
    /// Its data keys, in any order.
    pub keys: &'a [WriteKey],
    /// The client's protocol: the reply comes back in it.
    pub protocol: Protocol,
    /// The command sets or keeps the TTL itself (EXPIRE, PERSIST, GETEX with an option, SET
    /// with EX/PX/EXAT/PXAT/KEEPTTL, ...): rule TTLs are then never applied.
    pub explicit_ttl: bool,
    /// The command may run when Redis is out of memory (it lacks the `denyoom` flag).
    pub allow_oom: bool,
}

/// How far past cachet's own estimate of a key's expiry a [`FastSet`] puts its scores and
/// its per-key set's expiry, so that they are upper bounds despite the time between cachet
/// reading its clock and Redis running the SET (and small clock differences).
pub const FAST_SCORE_SLACK_MS: u64 = 250;

/// A tagged `SET` that needs no function call: `MULTI`, the SET, one `ZADD` per tag,
/// `SADD` and `PEXPIREAT` (or `PERSIST`) of the per-key set, `EXEC`. Only for writes with no
/// lease to check ([`WriteKey::snapshot`] `None`) whose expiry cachet knows in advance.
#[derive(Debug, Clone, Copy)]
pub struct FastSet<'a> {
    /// `SET key value`, optionally followed by `EX s` or `PX ms`, as the client sent it.
    pub request: &'a Request,
    /// The key's rule tags that do not name it (not empty).
    pub tags: &'a [Bytes],
    /// Whether to write the per-key set (`SADD` + `PEXPIREAT`). It is what lets an
    /// invalidation of one of the key's tags remove the key from its other tags' sets, so a
    /// key with a single indexed tag, whose other rule tags all name it, can do without:
    /// invalidation passes the indexed tags of the keys it finds by name.
    pub key_set: bool,
    /// The rule's TTL, appended as `EX` when the command sets none (0: none).
    pub add_ex_secs: u64,
    /// cachet's clock (ms since the epoch) just before sending the write.
    pub now_ms: u64,
    /// The TTL the key gets (ms), `None` when it gets none.
    pub ttl_ms: Option<u64>,
}

impl FastSet<'_> {
    /// The tag sets' score, and the per-key set's expiry: cachet's estimate of the key's
    /// expiry plus [`FAST_SCORE_SLACK_MS`], rounded up to a grid of about a sixteenth of the
    /// TTL (a power of two, 1 ms to 65 536 ms). Overwrites within one grid step then write the
    /// score a member already has, which Redis does without moving it in the sorted set; an
    /// expired member waits at most one step longer for its re-check.
    pub fn score(&self) -> Option<u64> {
        let ttl = self.ttl_ms?;
        let step = (ttl / 16).clamp(1, 1 << 16);
        let step = 1u64 << (63 - step.leading_zeros());
        Some((self.now_ms + ttl + FAST_SCORE_SLACK_MS).div_ceil(step) * step)
    }
}

/// Tagged SETs of one client batch gathered into one transaction
/// ([`TagIndex::encode_fast_batch`]): a pipeline of them costs one `MULTI`/`EXEC` and one
/// `ZADD` per tag rather than per SET.
///
/// This is the proxy's hottest write path, so it copies what arrives already encoded rather
/// than encoding it again: a SET goes out as the client's bytes (with the rule's `EX` spliced
/// on), a key joins its `ZADD`s as the bulk string it was in the SET
/// ([`Request::encoded_arg`]), and a score or an `EX` suffix is encoded (by
/// `redis-protocol`) once for all the SETs that share it. Only array headers are written
/// here.
#[derive(Debug, Default)]
pub struct FastBatch {
    /// The SETs, encoded, in the client's order.
    sets: BytesMut,
    count: usize,
    /// Per tag, in first-seen order, the `ZADD` members gathered so far. Only the first
    /// `tags_used` belong to this batch; the others keep their buffers for the next.
    tags: Vec<TagMembers>,
    tags_used: usize,
    /// Per-key sets to write: the key, its indexed tags, its score.
    key_sets: Vec<(Bytes, Vec<Bytes>, Option<u64>)>,
    /// The last score given to a member, encoded: scores sit on a grid, so most members of a
    /// batch (and of the next) share one.
    score: LastEncoded<Option<u64>>,
    /// The last rule TTL appended to a SET, encoded as its `EX` suffix.
    ex: LastEncoded<u64>,
}

/// The last value encoded, and its encoding: what a run of equal values reuses.
#[derive(Debug, Default)]
struct LastEncoded<T>(Option<(T, Bytes)>);

impl<T: PartialEq + Copy> LastEncoded<T> {
    fn get(&mut self, value: T, encode: impl FnOnce(T) -> Bytes) -> Bytes {
        match &self.0 {
            Some((last, encoded)) if *last == value => encoded.clone(),
            _ => {
                let encoded = encode(value);
                self.0 = Some((value, encoded.clone()));
                encoded
            }
        }
    }
}

/// The members of one tag's `ZADD`.
#[derive(Debug, Default)]
struct TagMembers {
    tag: Bytes,
    /// `score key` pairs, each a RESP bulk string.
    members: BytesMut,
    count: usize,
}

impl FastBatch {
    /// Adds one tagged SET.
    pub fn push(&mut self, set: &FastSet<'_>) {
        put_set(&mut self.ex, set.request, set.add_ex_secs, &mut self.sets);
        self.count += 1;
        let score = set.score();
        let score_bulk = self.score.get(score, |score| match score {
            Some(ms) => bulk_string(itoa::Buffer::new().format(ms).as_bytes()),
            None => bulk_string(b"+inf"),
        });
        let key = &set.request.args[1];
        let encoded_key = set.request.encoded_arg(1);
        for tag in set.tags {
            let at = self.tag_members(tag);
            let tag = &mut self.tags[at];
            tag.members.extend_from_slice(&score_bulk);
            match encoded_key {
                Some(encoded) => tag.members.extend_from_slice(encoded),
                None => put_frame(&mut tag.members, &BulkString(key)),
            }
            tag.count += 1;
        }
        if set.key_set {
            self.key_sets.push((key.clone(), set.tags.to_vec(), score));
        }
    }

    /// Appends `SET key value [EX s | PX ms]` as the client sent it, with `EX add_ex_secs`
    /// spliced on when that is not 0 (the rule's TTL): all a tagged SET needs when every tag
    /// of its key names the key ([`crate::tags::Match::named`]), since those tags have no
    /// index entry to write, and the first command of each [`FastBatch::push`]. Redis answers
    /// with one frame, the SET's own.
    pub fn encode_set(&mut self, request: &Request, add_ex_secs: u64, out: &mut BytesMut) {
        put_set(&mut self.ex, request, add_ex_secs, out);
    }

    /// The position of `tag`'s members in this batch, taking a free slot if it is new.
    fn tag_members(&mut self, tag: &Bytes) -> usize {
        let used = &self.tags[..self.tags_used];
        if let Some(at) = used.iter().position(|t| t.tag == tag) {
            return at;
        }
        if self.tags_used == self.tags.len() {
            self.tags.push(TagMembers::default());
        }
        let slot = &mut self.tags[self.tags_used];
        slot.tag = tag.clone();
        slot.members.clear();
        slot.count = 0;
        self.tags_used += 1;
        self.tags_used - 1
    }

    /// Empties it, keeping its buffers for the next transaction.
    pub fn clear(&mut self) {
        self.sets.clear();
        self.count = 0;
        for tag in &mut self.tags[..self.tags_used] {
            tag.members.clear();
            tag.count = 0;
        }
        self.tags_used = 0;
        self.key_sets.clear();
    }

    /// How many SETs it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tags it writes, in the order of their `ZADD`s.
    pub fn tags(&self) -> Vec<Bytes> {
        let used = &self.tags[..self.tags_used];
        used.iter().map(|t| t.tag.clone()).collect()
    }

    /// The reply frames Redis sends for it: `MULTI`'s, one per queued command, `EXEC`'s.
    pub fn frames(&self) -> usize {
        2 + self.count + self.tags_used + 2 * self.key_sets.len()
    }
}

/// What one [`TagIndex::sweep_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Index keys the SCAN page returned.
    pub scanned: usize,
    /// Tag set members removed because their key was gone.
    pub members_removed: u64,
    /// Per-key sets removed because their key was gone.
    pub key_sets_removed: u64,
    /// Keys deleted while finishing abandoned invalidations.
    pub drained: u64,
}

/// The tag index, over any fred client connected to the Redis that holds the data.
#[derive(Debug, Clone)]
pub struct TagIndex {
    names: Names,
    chunk: usize,
    call_budget: Duration,
    epoch_ttl: Duration,
    /// The rules, for the keys that tags name ([`TagIndex::with_rules`]).
    rules: Option<Arc<Rules>>,
}

impl Default for TagIndex {
    fn default() -> Self {
        TagIndex::new(DEFAULT_PREFIX).expect("the default prefix is valid")
    }
}

impl TagIndex {
    pub fn new(prefix: &str) -> Result<Self, IndexError> {
        Ok(TagIndex {
            names: Names::new(prefix)?,
            chunk: DEFAULT_CHUNK,
            call_budget: DEFAULT_CALL_BUDGET,
            epoch_ttl: DEFAULT_EPOCH_TTL,
            rules: None,
        })
    }

    /// The rules whose naming tags ([`crate::tags::Match::named`]) writes leave out of the
    /// index: invalidation, `TAGS` and `TAGKEYS` then find those keys from the rules.
    pub fn with_rules(mut self, rules: Arc<Rules>) -> Self {
        self.rules = Some(rules);
        self
    }

    /// The keys `tag` names through the rules (none without rules).
    pub fn keys_named_by(&self, tag: &[u8]) -> Vec<Bytes> {
        self.rules
            .as_ref()
            .map_or_else(Vec::new, |rules| rules.keys_named_by(tag))
    }

    /// Most keys one invalidation call deletes (at least 1).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// How long one invalidation call may run before it stops at its next step of 100 keys.
    pub fn with_call_budget(mut self, budget: Duration) -> Self {
        self.call_budget = budget;
        self
    }

    /// How long an epoch outlives its tag's last invalidation (zero: forever).
    pub fn with_epoch_ttl(mut self, ttl: Duration) -> Self {
        self.epoch_ttl = ttl;
        self
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Loads (or replaces) the `cachet` function library.
    pub async fn install(&self, client: &Client) -> Result<(), IndexError> {
        let _: Value = client.function_load(true, LIBRARY).await?;
        Ok(())
    }

    /// The full `FCALL cachet_write ...` command for one write, ready to encode and send.
    pub fn write_call(&self, call: &WriteCall<'_>) -> Vec<Bytes> {
        let function = if call.allow_oom {
            "cachet_write_oom"
        } else {
            "cachet_write"
        };
        let mut keys = Vec::with_capacity(call.keys.len() * 2);
        let mut per_key = Vec::with_capacity(call.keys.len() * 3);
        for key in call.keys {
            keys.push(key.key.clone());
            keys.push(self.names.key_tags(&key.key));
            let inherit = key
                .inherit_from
                .filter(|&i| i < call.keys.len())
                .map_or(0, |i| i + 1);
            per_key.extend([
                number(key.ttl_secs),
                number(inherit as u64),
                number(key.tags.len() as u64),
            ]);
            for (j, tag) in key.tags.iter().enumerate() {
                keys.push(self.names.tag_keys(tag));
                keys.push(self.names.epoch(tag));
                per_key.push(tag.clone());
                let seen = key.snapshot.as_ref().and_then(|seen| seen.get(j));
                per_key.push(seen.map_or(Bytes::from_static(b"-1"), |&e| number(e)));
                let named = j < 64 && key.named & (1 << j) != 0;
                per_key.push(Bytes::from_static(if named { b"0" } else { b"1" }));
            }
        }
        let resp: &'static [u8] = match call.protocol {
            Protocol::Resp2 => b"2",
            Protocol::Resp3 => b"3",
        };
        let mut out = Vec::with_capacity(8 + keys.len() + call.command.len() + per_key.len());
        out.extend([
            Bytes::from_static(b"FCALL"),
            Bytes::from_static(function.as_bytes()),
            number(keys.len() as u64),
        ]);
        out.extend(keys);
        out.extend([
            self.names.prefix.clone(),
            Bytes::from_static(resp),
            Bytes::from_static(if call.explicit_ttl { b"1" } else { b"0" }),
            number(call.command.len() as u64),
        ]);
        out.extend(call.command.iter().cloned());
        out.extend(per_key);
        out
    }

    /// Appends the commands of a [`FastSet`] to `out`, RESP-encoded, and returns how many
    /// reply frames Redis sends for them: `+OK` for MULTI, one per queued command, EXEC's.
    pub fn encode_fast_set(&self, set: &FastSet<'_>, out: &mut BytesMut) -> usize {
        let mut batch = FastBatch::default();
        batch.push(set);
        self.encode_fast_batch(&batch, out)
    }

    /// Appends a [`FastBatch`] to `out` as one transaction: `MULTI`, its SETs in order, one
    /// `ZADD` per tag with all the batch's keys under it, each per-key set's `SADD` and
    /// `PEXPIREAT` (or `PERSIST`), `EXEC`. Returns how many reply frames Redis sends for it.
    pub fn encode_fast_batch(&self, batch: &FastBatch, out: &mut BytesMut) -> usize {
        let score_text = |score: Option<u64>| match score {
            Some(ms) => number(ms),
            None => Bytes::from_static(b"+inf"),
        };
        put_command(out, &[BulkString(b"MULTI")]);
        out.extend_from_slice(&batch.sets);
        for tag in &batch.tags[..batch.tags_used] {
            put_array_header(out, 2 + 2 * tag.count);
            put_frame(out, &BulkString(b"ZADD"));
            put_frame(out, &BulkString(&self.names.tag_keys(&tag.tag)));
            out.extend_from_slice(&tag.members);
        }
        for (key, tags, score) in &batch.key_sets {
            let key_tags = self.names.key_tags(key);
            let mut command = Vec::with_capacity(2 + tags.len());
            command.extend([BulkString(b"SADD"), BulkString(&key_tags)]);
            command.extend(tags.iter().map(|t| BulkString(t)));
            put_command(out, &command);
            match score {
                Some(_) => {
                    let at = score_text(*score);
                    put_command(
                        out,
                        &[
                            BulkString(b"PEXPIREAT"),
                            BulkString(&key_tags),
                            BulkString(&at),
                        ],
                    );
                }
                None => put_command(out, &[BulkString(b"PERSIST"), BulkString(&key_tags)]),
            }
        }
        put_command(out, &[BulkString(b"EXEC")]);
        batch.frames()
    }

    /// `FCALL cachet_trim` for tag sets that gained members through [`FastSet`]s: each
    /// re-checks up to 16 members whose score has passed, as `cachet_write` does when a
    /// member joins.
    pub fn trim_call(&self, tags: &[Bytes]) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(4 + tags.len());
        out.extend([
            Bytes::from_static(b"FCALL"),
            Bytes::from_static(b"cachet_trim"),
            number(tags.len() as u64),
        ]);
        out.extend(tags.iter().map(|t| self.names.tag_keys(t)));
        out.push(self.names.prefix.clone());
        out
    }

    /// The keys holding the tags' epochs, for an `MGET` before a read.
    pub fn epoch_keys(&self, tags: &[Bytes]) -> Vec<Bytes> {
        tags.iter().map(|t| self.names.epoch(t)).collect()
    }

    /// `MGET` of the tags' epochs, to send just before a read of a key with these tags; parse
    /// its reply with [`parse_epochs`].
    pub fn epoch_read(&self, tags: &[Bytes]) -> Vec<Bytes> {
        let mut command = Vec::with_capacity(tags.len() + 1);
        command.push(Bytes::from_static(b"MGET"));
        command.extend(tags.iter().map(|t| self.names.epoch(t)));
        command
    }

    /// The tags' epochs now (0 for a tag never invalidated).
    pub async fn epochs(&self, client: &Client, tags: &[Bytes]) -> Result<Vec<u64>, IndexError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Value> = self
            .epoch_keys(tags)
            .into_iter()
            .map(Value::Bytes)
            .collect();
        let reply: Value = client.custom(cmd!("MGET"), keys).await?;
        match reply {
            Value::Array(values) => Ok(values
                .iter()
                .map(|v| epoch_from_reply(v.as_bytes()))
                .collect()),
            other => Err(unexpected("MGET", &other)),
        }
    }

    /// Deletes every key tagged with any of `tags`, chunk by chunk. Returns how many it
    /// deleted (keys that expired meanwhile do not count).
    #[tracing::instrument(skip_all, fields(tags = tags.len()))]
    pub async fn invalidate(&self, client: &Client, tags: &[Bytes]) -> Result<u64, IndexError> {
        let mut deleted = 0;
        for tag in tags {
            deleted += self.invalidate_tag(client, tag).await?;
        }
        tracing::debug!(deleted, "invalidated");
        Ok(deleted)
    }

    async fn invalidate_tag(&self, client: &Client, tag: &Bytes) -> Result<u64, IndexError> {
        let mut keys = vec![
            Key::from(self.names.tag_keys(tag)),
            Key::from(self.names.epoch(tag)),
        ];
        let mut args = vec![
            Value::Bytes(self.names.prefix.clone()),
            Value::Bytes(tag.clone()),
            Value::Bytes(number(self.chunk as u64)),
            Value::Bytes(number(self.call_budget.as_micros() as u64)),
            Value::Bytes(number(self.epoch_ttl.as_millis() as u64)),
        ];
        // The keys the tag names, each with its rule's indexed tags: a fast write may have
        // left it without a per-key set to find those by.
        let named = self.rules.as_ref().map(|rules| rules.named_matches(tag));
        for (key, found) in named.into_iter().flatten() {
            let indexed: Vec<&Bytes> = found.indexed_tags().collect();
            args.push(Value::Bytes(number(indexed.len() as u64)));
            args.extend(indexed.into_iter().cloned().map(Value::Bytes));
            keys.push(Key::from(key));
        }
        let reply: Value = client.fcall("cachet_invalidate", keys, args).await?;
        let [mut deleted, remaining, epoch] = integers("cachet_invalidate", &reply)?;
        if remaining > 0 {
            deleted += self
                .drain(client, self.names.drain(tag, epoch as u64))
                .await? as i64;
        }
        Ok(deleted as u64)
    }

    async fn drain(&self, client: &Client, set: Bytes) -> Result<u64, IndexError> {
        let mut deleted = 0;
        loop {
            let reply: Value = client
                .fcall(
                    "cachet_drain",
                    vec![Key::from(set.clone())],
                    vec![
                        Value::Bytes(self.names.prefix.clone()),
                        Value::Bytes(number(self.chunk as u64)),
                        Value::Bytes(number(self.call_budget.as_micros() as u64)),
                    ],
                )
                .await?;
            let [chunk, remaining] = integers("cachet_drain", &reply)?;
            deleted += chunk;
            if remaining == 0 {
                return Ok(deleted as u64);
            }
        }
    }

    /// Attaches `tags` to an existing key (`TAG key tag...`). Returns how many it did not
    /// have yet; Redis answers `ERR no such key` for a missing key.
    pub async fn tag(
        &self,
        client: &Client,
        key: &Bytes,
        tags: &[Bytes],
    ) -> Result<u64, IndexError> {
        if tags.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![Key::from(key.clone()), Key::from(self.names.key_tags(key))];
        keys.extend(tags.iter().map(|t| Key::from(self.names.tag_keys(t))));
        let mut args = vec![Value::Bytes(self.names.prefix.clone())];
        args.extend(tags.iter().cloned().map(Value::Bytes));
        let reply: Value = client.fcall("cachet_tag", keys, args).await?;
        reply
            .as_u64()
            .ok_or_else(|| unexpected("cachet_tag", &reply))
    }

    /// A key's tags, sorted (`TAGS key`): its rule's and those in its per-key set; none
    /// when the key does not exist.
    pub async fn tags(&self, client: &Client, key: &Bytes) -> Result<Vec<Bytes>, IndexError> {
        let mut args = vec![Value::Bytes(self.names.prefix.clone())];
        if let Some(found) = self.rules.as_ref().and_then(|r| r.match_key(key)) {
            args.extend(found.tags.into_iter().map(Value::Bytes));
        }
        let reply: Value = client
            .fcall_ro(
                "cachet_tags",
                vec![Key::from(key.clone()), Key::from(self.names.key_tags(key))],
                args,
            )
            .await?;
        let mut tags = byte_strings("cachet_tags", &reply)?;
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// One page of a tag's keys (`TAGKEYS tag cursor count`): the next cursor (0 at the end)
    /// and the keys of the page that exist. ZSCAN's guarantee holds: a key tagged for the whole
    /// iteration is returned at least once. The keys the tag names come on the first page.
    pub async fn tagkeys(
        &self,
        client: &Client,
        tag: &[u8],
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<Bytes>), IndexError> {
        let mut keys = vec![Key::from(self.names.tag_keys(tag))];
        if cursor == 0 {
            keys.extend(self.keys_named_by(tag).into_iter().map(Key::from));
        }
        let reply: Value = client
            .fcall_ro(
                "cachet_tagkeys",
                keys,
                vec![Value::Bytes(number(cursor)), Value::Bytes(number(count))],
            )
            .await?;
        match &reply {
            Value::Array(parts) if parts.len() == 2 => {
                let next = parts[0]
                    .as_u64()
                    .ok_or_else(|| unexpected("cachet_tagkeys", &reply))?;
                Ok((next, byte_strings("cachet_tagkeys", &parts[1])?))
            }
            _ => Err(unexpected("cachet_tagkeys", &reply)),
        }
    }

    /// One step of the sweeper: one SCAN page (`count`) over cachet's own keys. Tag sets lose
    /// members whose key is gone, per-key sets of gone keys go, and drain sets left by an
    /// invalidation that did not finish (its cachet died) are finished. Call with cursor 0,
    /// then with the returned cursor until it is 0 again.
    #[tracing::instrument(skip_all, fields(cursor))]
    pub async fn sweep_step(
        &self,
        client: &Client,
        cursor: u64,
        count: u64,
    ) -> Result<(u64, SweepStats), IndexError> {
        let mut pattern = glob_escape(&self.names.prefix);
        pattern.extend_from_slice(b":[tdk]:*");
        let reply: Value = client
            .custom(
                cmd!("SCAN"),
                vec![
                    Value::Bytes(number(cursor)),
                    Value::Bytes(Bytes::from_static(b"MATCH")),
                    Value::Bytes(pattern.into()),
                    Value::Bytes(Bytes::from_static(b"COUNT")),
                    Value::Bytes(number(count)),
                ],
            )
            .await?;
        let (next, names) = match &reply {
            Value::Array(parts) if parts.len() == 2 => (
                parts[0]
                    .as_u64()
                    .ok_or_else(|| unexpected("SCAN", &reply))?,
                byte_strings("SCAN", &parts[1])?,
            ),
            _ => return Err(unexpected("SCAN", &reply)),
        };
        let mut stats = SweepStats {
            scanned: names.len(),
            ..SweepStats::default()
        };
        let mut data_keys = Vec::new();
        for name in &names {
            match name.get(self.names.prefix.len() + 1) {
                Some(b't') => stats.members_removed += self.sweep_tag_set(client, name).await?,
                Some(b'd') => stats.drained += self.drain(client, name.clone()).await?,
                Some(b'k') => {
                    if let Some(key) = self.names.parse_key_tags(name) {
                        data_keys.push(WriteKey {
                            key: name.slice_ref(key),
                            ..WriteKey::default()
                        });
                    }
                }
                _ => {}
            }
        }
        if !data_keys.is_empty() {
            let call = self.write_call(&WriteCall {
                command: &[],
                keys: &data_keys,
                protocol: Protocol::Resp2,
                explicit_ttl: true,
                allow_oom: true,
            });
            let reply: Value = client
                .custom(
                    cmd!("FCALL"),
                    call[1..]
                        .iter()
                        .cloned()
                        .map(Value::Bytes)
                        .collect::<Vec<_>>(),
                )
                .await?;
            stats.key_sets_removed = reply
                .as_u64()
                .ok_or_else(|| unexpected("cachet_write_oom", &reply))?;
        }
        Ok((next, stats))
    }

    async fn sweep_tag_set(&self, client: &Client, set: &Bytes) -> Result<u64, IndexError> {
        let mut cursor = Bytes::from_static(b"0");
        let mut removed = 0;
        loop {
            let reply: Value = client
                .fcall(
                    "cachet_sweep",
                    vec![Key::from(set.clone())],
                    vec![
                        Value::Bytes(self.names.prefix.clone()),
                        Value::Bytes(cursor),
                        Value::Bytes(number(self.chunk as u64)),
                    ],
                )
                .await?;
            match &reply {
                Value::Array(parts) if parts.len() == 2 => {
                    removed += parts[1]
                        .as_u64()
                        .ok_or_else(|| unexpected("cachet_sweep", &reply))?;
                    cursor = parts[0]
                        .as_bytes()
                        .map(Bytes::copy_from_slice)
                        .ok_or_else(|| unexpected("cachet_sweep", &reply))?;
                }
                _ => return Err(unexpected("cachet_sweep", &reply)),
            }
            if &cursor[..] == b"0" {
                return Ok(removed);
            }
        }
    }
}

/// An epoch as `MGET` returns it: nil (never invalidated, or expired) is 0.
pub fn epoch_from_reply(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The epochs in the raw reply frame (RESP2 or RESP3) to [`TagIndex::epoch_read`]'s `MGET`;
/// `None` if the frame is anything else (an error, say), in which case nothing is checked.
pub fn parse_epochs(frame: &[u8]) -> Option<Vec<u64>> {
    fn line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = bytes.windows(2).position(|w| w == b"\r\n")?;
        Some((&bytes[..end], &bytes[end + 2..]))
    }
    let (header, mut rest) = line(frame.strip_prefix(b"*")?)?;
    let count: usize = std::str::from_utf8(header).ok()?.parse().ok()?;
    let mut epochs = Vec::with_capacity(count);
    for _ in 0..count {
        let (item, after) = line(rest)?;
        rest = after;
        match item {
            b"_" | b"$-1" => epochs.push(0),
            _ => {
                let len: usize = std::str::from_utf8(item.strip_prefix(b"$")?)
                    .ok()?
                    .parse()
                    .ok()?;
                let value = rest.get(..len)?;
                rest = rest.get(len..)?.strip_prefix(b"\r\n")?;
                epochs.push(epoch_from_reply(Some(value)));
            }
        }
    }
    rest.is_empty().then_some(epochs)
}

/// Appends one command (a multibulk of bulk strings), RESP-encoded.
fn put_command(out: &mut BytesMut, args: &[BorrowedFrame<'_>]) {
    extend_encode_borrowed(out, &Array(args), false)
        .expect("a multibulk of bulk strings always encodes");
}

fn put_frame(out: &mut BytesMut, frame: &BorrowedFrame<'_>) {
    extend_encode_borrowed(out, frame, false).expect("a bulk string always encodes");
}

fn bulk_string(bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_frame(&mut out, &BulkString(bytes));
    out.freeze()
}

/// [`FastBatch::encode_set`], with the batch's last `EX` suffix.
fn put_set(ex: &mut LastEncoded<u64>, request: &Request, add_ex_secs: u64, out: &mut BytesMut) {
    if add_ex_secs == 0 {
        out.extend_from_slice(&request.raw);
        return;
    }
    let ex = ex.get(add_ex_secs, |secs| {
        let mut suffix = BytesMut::new();
        put_frame(&mut suffix, &BulkString(b"EX"));
        put_frame(
            &mut suffix,
            &BulkString(itoa::Buffer::new().format(secs).as_bytes()),
        );
        suffix.freeze()
    });
    // `raw` is the multibulk of exactly these three arguments: two more make five.
    match request.raw.strip_prefix(b"*3\r\n") {
        Some(arguments) if request.args.len() == 3 => {
            out.extend_from_slice(b"*5\r\n");
            out.extend_from_slice(arguments);
        }
        _ => {
            put_array_header(out, request.args.len() + 2);
            for arg in &request.args {
                put_frame(out, &BulkString(arg));
            }
        }
    }
    out.extend_from_slice(&ex);
}

/// `*n\r\n`, the header of a multibulk whose `n` bulk strings follow: how the fast path
/// joins pieces that are already encoded (`redis-protocol` encodes whole frames only).
fn put_array_header(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

fn number(n: u64) -> Bytes {
    Bytes::from(n.to_string())
}

/// `*`, `?`, `[`, `]` and `\` backslash-escaped for a SCAN MATCH pattern.
fn glob_escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 4);
    for &b in s {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn integers<const N: usize>(function: &'static str, reply: &Value) -> Result<[i64; N], IndexError> {
    let Value::Array(parts) = reply else {
        return Err(unexpected(function, reply));
    };
    let values: Option<Vec<i64>> = parts.iter().map(Value::as_i64).collect();
    values
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| unexpected(function, reply))
}

fn byte_strings(function: &'static str, reply: &Value) -> Result<Vec<Bytes>, IndexError> {
    match reply {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => Ok(b.clone()),
                Value::String(s) => Ok(s.inner().clone()),
                _ => Err(unexpected(function, reply)),
            })
            .collect(),
        _ => Err(unexpected(function, reply)),
    }
}

fn unexpected(function: &'static str, reply: &Value) -> IndexError {
    IndexError::Reply {
        function,
        reply: format!("{reply:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::redis_keyslot;
    use std::collections::HashMap;

    const TRICKY: &[&[u8]] = &[
        b"",
        b"a",
        b"%",
        b"%25",
        b"%7D",
        b"}",
        b"{",
        b"{}",
        b"}{",
        b"{a}",
        b"a{b}c",
        b"a{}b}",
        b"{{a}}",
        b"a:b",
        b"*",
        b"?",
        b"[a-z]",
        b"a b",
        b"\0",
        b"\xff\xfe",
        b"a%}b",
        b"a%7Db",
        b"%%",
    ];

    fn names() -> Names {
        Names::new("cachet").unwrap()
    }

    #[test]
    fn prefix_must_not_carry_a_hash_tag() {
        assert!(Names::new("cachet").is_ok());
        assert!(Names::new("my*app:[x]").is_ok());
        assert!(Names::new("").is_err());
        assert!(Names::new("a{b").is_err());
        assert!(Names::new("a}b").is_err());
    }

    #[test]
    fn per_tag_names_are_injective_and_share_a_slot() {
        let n = names();
        let mut seen = HashMap::new();
        for &tag in TRICKY {
            for name in [
                n.tag_keys(tag),
                n.epoch(tag),
                n.drain(tag, 1_700_000_000_000),
            ] {
                assert_eq!(
                    seen.insert(name.clone(), tag),
                    None,
                    "{name:?} for two tags"
                );
            }
            let slot = redis_keyslot(&n.tag_keys(tag));
            assert_eq!(redis_keyslot(&n.epoch(tag)), slot, "{tag:?}");
            assert_eq!(redis_keyslot(&n.drain(tag, 7)), slot, "{tag:?}");
        }
    }

    #[test]
    fn a_plain_tag_hashes_like_keys_with_that_hash_tag() {
        let n = names();
        for tag in [&b"user:42"[..], b"a{b", b"x y", b"\0\xff"] {
            let mut key = b"{".to_vec();
            key.extend_from_slice(tag);
            key.extend_from_slice(b"}:profile");
            assert_eq!(redis_keyslot(&n.tag_keys(tag)), redis_keyslot(&key));
        }
        assert_eq!(&n.tag_keys(b"a%}b")[..], b"cachet:t:{a%25%7Db}");
        assert_eq!(&n.epoch(b"")[..], b"cachet:e:{%}");
    }

    #[test]
    fn key_names_are_injective_parse_back_and_keep_the_slot() {
        let n = names();
        let mut seen = HashMap::new();
        for &key in TRICKY {
            let name = n.key_tags(key);
            assert_eq!(
                seen.insert(name.clone(), key),
                None,
                "{name:?} for two keys"
            );
            assert_eq!(n.parse_key_tags(&name), Some(key));
            let has_hash_tag = {
                let open = key.iter().position(|&b| b == b'{');
                open.is_some_and(|o| {
                    key[o + 1..]
                        .iter()
                        .position(|&b| b == b'}')
                        .is_some_and(|l| l > 0)
                })
            };
            if has_hash_tag || (!key.is_empty() && !key.contains(&b'}')) {
                assert_eq!(redis_keyslot(&name), redis_keyslot(key), "{key:?}");
            }
        }
        assert_eq!(&n.key_tags(b"a{b}c")[..], b"cachet:k:{b}:a{b}c");
        assert_eq!(&n.key_tags(b"x{y")[..], b"cachet:k:{x{y}:x{y");
        assert_eq!(&n.key_tags(b"a}b")[..], b"cachet:k:{a%7Db}:a}b");
        assert_eq!(n.parse_key_tags(b"cachet:t:{a}"), None);
        assert_eq!(n.parse_key_tags(b"cachet:k:{a}:b"), None);
    }

    #[test]
    fn escape_is_injective_on_random_bytes() {
        let alphabet = b"%}{27Da:";
        let mut seen = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..6);
            let s: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let e = escape(&s);
            assert!(!e.contains(&b'}') && !e.is_empty());
            if let Some(other) = seen.insert(e.clone(), s.clone()) {
                assert_eq!(other, s, "{e:?}");
            }
        }
    }

    #[test]
    fn write_call_layout() {
        let index = TagIndex::default();
        let command = [
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"k"),
            Bytes::from_static(b"v"),
        ];
        let keys = [WriteKey {
            key: Bytes::from_static(b"k"),
            tags: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            snapshot: Some(vec![5]),
            ttl_secs: 60,
            named: 0b10,
            inherit_from: None,
        }];
        let call = index.write_call(&WriteCall {
            command: &command,
            keys: &keys,
            protocol: Protocol::Resp3,
            explicit_ttl: false,
            allow_oom: false,
        });
        let text: Vec<&[u8]> = call.iter().map(|b| &b[..]).collect();
        assert_eq!(
            text,
            [
                &b"FCALL"[..],
                b"cachet_write",
                b"6",
                b"k",
                b"cachet:k:{k}:k",
                b"cachet:t:{a}",
                b"cachet:e:{a}",
                b"cachet:t:{b}",
                b"cachet:e:{b}",
                b"cachet",
                b"3",
                b"0",
                b"3",
                b"SET",
                b"k",
                b"v",
                b"60",
                b"0",
                b"2",
                b"a",
                b"5",
                b"1",
                b"b",
                b"-1",
                b"0",
            ]
        );
    }

    /// A command three ways: parsed from RESP (its arguments are slices of `raw`, which the
    /// fast path copies), typed inline, and built by cachet (both encoded again).
    fn request_forms(command: &[&str]) -> Vec<Request> {
        let limits = crate::resp::request::Limits {
            max_bulk_len: 1 << 20,
            max_array_len: 1 << 10,
            max_query_buffer: 1 << 20,
        };
        let args: Vec<Bytes> = command
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let built = Request::from_args(args);
        let mut resp = BytesMut::from(&built.raw[..]);
        let parsed = crate::resp::request::RequestParser::default()
            .parse(&mut resp, &limits, true)
            .unwrap()
            .unwrap();
        let quoted: Vec<String> = command.iter().map(|a| format!("\"{a}\"")).collect();
        let mut line = BytesMut::from(format!("{}\r\n", quoted.join(" ")).as_bytes());
        let inline = crate::resp::request::RequestParser::default()
            .parse(&mut line, &limits, true)
            .unwrap()
            .unwrap();
        assert!(parsed.encoded_arg(1).is_some() && inline.encoded_arg(1).is_none());
        vec![parsed, inline, built]
    }

    fn expected(commands: &[&[&str]]) -> Vec<u8> {
        commands
            .iter()
            .flat_map(|c| {
                let args: Vec<Bytes> = c.iter().map(|a| Bytes::from(a.to_string())).collect();
                crate::resp::encode_command(&args).to_vec()
            })
            .collect()
    }

    #[test]
    fn fast_set_layout() {
        let index = TagIndex::default();
        let tags = [Bytes::from_static(b"a"), Bytes::from_static(b"b}")];
        let now_ms = 1_700_000_000_000;
        // The command, how many tags, key_set, the rule's EX, the TTL, what goes out.
        type Case<'a> = (
            &'a [&'a str],
            usize,
            bool,
            u64,
            Option<u64>,
            &'a [&'a [&'a str]],
        );
        let cases: [Case<'_>; 3] = [
            (
                &["SET", "k", "v"],
                2,
                true,
                60,
                Some(60_000),
                &[
                    &["MULTI"],
                    &["SET", "k", "v", "EX", "60"],
                    &["ZADD", "cachet:t:{a}", "1700000061440", "k"],
                    &["ZADD", "cachet:t:{b%7D}", "1700000061440", "k"],
                    &["SADD", "cachet:k:{k}:k", "a", "b}"],
                    &["PEXPIREAT", "cachet:k:{k}:k", "1700000061440"],
                    &["EXEC"],
                ],
            ),
            (
                &["set", "k", "v", "px", "5"],
                1,
                true,
                0,
                None,
                &[
                    &["MULTI"],
                    &["set", "k", "v", "px", "5"],
                    &["ZADD", "cachet:t:{a}", "+inf", "k"],
                    &["SADD", "cachet:k:{k}:k", "a"],
                    &["PERSIST", "cachet:k:{k}:k"],
                    &["EXEC"],
                ],
            ),
            (
                &["SET", "k", "v"],
                1,
                false,
                60,
                Some(60_000),
                &[
                    &["MULTI"],
                    &["SET", "k", "v", "EX", "60"],
                    &["ZADD", "cachet:t:{a}", "1700000061440", "k"],
                    &["EXEC"],
                ],
            ),
        ];
        for (command, n_tags, key_set, add_ex_secs, ttl_ms, want) in cases {
            for request in request_forms(command) {
                let mut out = BytesMut::new();
                let set = FastSet {
                    request: &request,
                    tags: &tags[..n_tags],
                    key_set,
                    add_ex_secs,
                    now_ms,
                    ttl_ms,
                };
                let frames = index.encode_fast_set(&set, &mut out);
                assert_eq!(frames, want.len(), "{command:?}");
                assert_eq!(out.to_vec(), expected(want), "{command:?}");
            }
        }
        for request in request_forms(&["SET", "k", "v"]) {
            let mut out = BytesMut::new();
            FastBatch::default().encode_set(&request, 60, &mut out);
            assert_eq!(out.to_vec(), expected(&[&["SET", "k", "v", "EX", "60"]]));
        }
    }

    #[test]
    fn fast_batches_share_zadds_and_reuse_their_buffers() {
        let index = TagIndex::default();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let set = |request: &Request, tags: Vec<Bytes>, add_ex_secs, now_ms, ttl_ms| {
            (request.clone(), tags, add_ex_secs, now_ms, ttl_ms)
        };
        let mut batch = FastBatch::default();
        for round in 0..3 {
            for form in 0..3 {
                let one = &request_forms(&["SET", "k1", "v1"])[form];
                let two = &request_forms(&["SET", "key:2", "x y", "EX", "10"])[form];
                let three = &request_forms(&["SET", "k3", ""])[form];
                let sets = [
                    set(one, vec![a.clone()], 60, 1_700_000_000_000, Some(60_000)),
                    set(
                        two,
                        vec![b.clone(), a.clone()],
                        0,
                        1_700_000_000_000,
                        Some(10_000),
                    ),
                    set(three, vec![a.clone()], 60, 1_700_000_000_900, Some(60_000)),
                ];
                // Round 1 writes a batch with one tag only, so that round 2 finds the buffers
                // of a longer batch before it.
                let sets = if round == 1 { &sets[..1] } else { &sets[..] };
                for (request, tags, add_ex_secs, now_ms, ttl_ms) in sets {
                    batch.push(&FastSet {
                        request,
                        tags,
                        key_set: tags.len() > 1,
                        add_ex_secs: *add_ex_secs,
                        now_ms: *now_ms,
                        ttl_ms: *ttl_ms,
                    });
                }
                let mut out = BytesMut::new();
                let frames = index.encode_fast_batch(&batch, &mut out);
                let want: Vec<u8> = if round == 1 {
                    assert_eq!((batch.len(), batch.tags()), (1, vec![a.clone()]));
                    expected(&[
                        &["MULTI"],
                        &["SET", "k1", "v1", "EX", "60"],
                        &["ZADD", "cachet:t:{a}", "1700000061440", "k1"],
                        &["EXEC"],
                    ])
                } else {
                    assert_eq!((batch.len(), batch.tags()), (3, vec![a.clone(), b.clone()]));
                    expected(&[
                        &["MULTI"],
                        &["SET", "k1", "v1", "EX", "60"],
                        &["SET", "key:2", "x y", "EX", "10"],
                        &["SET", "k3", "", "EX", "60"],
                        &[
                            "ZADD",
                            "cachet:t:{a}",
                            "1700000061440",
                            "k1",
                            "1700000010752",
                            "key:2",
                            "1700000061440",
                            "k3",
                        ],
                        &["ZADD", "cachet:t:{b}", "1700000010752", "key:2"],
                        &["SADD", "cachet:k:{key:2}:key:2", "b", "a"],
                        &["PEXPIREAT", "cachet:k:{key:2}:key:2", "1700000010752"],
                        &["EXEC"],
                    ])
                };
                assert_eq!(frames, if round == 1 { 4 } else { 9 });
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&want),
                    "round {round}, form {form}"
                );
                batch.clear();
                assert!(batch.is_empty() && batch.tags().is_empty());
            }
        }
    }

    #[test]
    fn fast_scores_bound_the_expiry_on_a_grid() {
        let request = Request::from_args(vec![Bytes::from_static(b"SET")]);
        let at = |now_ms, ttl_ms| {
            FastSet {
                request: &request,
                tags: &[],
                key_set: true,
                add_ex_secs: 0,
                now_ms,
                ttl_ms,
            }
            .score()
        };
        assert_eq!(at(5, None), None);
        assert_eq!(at(1000, Some(10)), Some(1260), "a 1 ms grid below 32 ms");
        for ttl in [100, 1000, 60_000, 3_600_000, 86_400_000] {
            let step = (ttl / 16).clamp(1, 65_536);
            for now in [1_700_000_000_000u64, 1_700_000_000_001, 1_700_000_012_345] {
                let s = at(now, Some(ttl)).unwrap();
                let least = now + ttl + FAST_SCORE_SLACK_MS;
                assert!(s >= least && s < least + step, "{now} {ttl}: {s}");
            }
        }
        // Overwrites a few ms apart share a score.
        assert_eq!(
            at(1_700_000_000_000, Some(3_600_000)),
            at(1_700_000_000_900, Some(3_600_000))
        );
    }

    #[test]
    fn epochs_parse_with_nil_as_zero() {
        assert_eq!(epoch_from_reply(None), 0);
        assert_eq!(epoch_from_reply(Some(b"1700000000123")), 1_700_000_000_123);
        assert_eq!(epoch_from_reply(Some(b"junk")), 0);
    }

    #[test]
    fn epoch_replies_parse_in_both_protocols() {
        let index = TagIndex::default();
        let tags = [Bytes::from_static(b"a"), Bytes::from_static(b"b}")];
        let read = index.epoch_read(&tags);
        let read: Vec<&[u8]> = read.iter().map(|b| &b[..]).collect();
        assert_eq!(read, [&b"MGET"[..], b"cachet:e:{a}", b"cachet:e:{b%7D}"]);
        assert_eq!(
            parse_epochs(b"*2\r\n$3\r\n123\r\n$-1\r\n"),
            Some(vec![123, 0])
        );
        assert_eq!(parse_epochs(b"*2\r\n_\r\n$1\r\n7\r\n"), Some(vec![0, 7]));
        assert_eq!(parse_epochs(b"*0\r\n"), Some(vec![]));
        assert_eq!(parse_epochs(b"-ERR x\r\n"), None);
        assert_eq!(parse_epochs(b"*2\r\n$1\r\n7\r\n"), None);
    }

    #[test]
    fn scan_pattern_escapes_the_prefix() {
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\".to_vec());
    }
}
