//! The tag index: which keys carry which tag, kept in Redis so that any number of cachet
//! instances share it, and `TAGINVALIDATE` (deleting every key of a tag).
//!
//! The index is a Redis 7 function library, `cachet` (`index.lua`). On one server every
//! change to it happens inside one function call or one `MULTI`/`EXEC` block, together with
//! the data write it follows, so Redis never shows a tagged key without its index entries.
//! On Redis Cluster ([`TagIndex::cluster`]) a call reaches one slot, so a write adds its
//! entries before its data and checks its tags' epochs after (`cluster`, "Cluster", for the
//! guarantee that keeps).
//! Reading a key never touches the index: a read only needs the epochs of the tags its rule
//! names ([`TagIndex::epoch_keys`]), and only when the proxy wants to fill the key after a miss.
//!
//! [`TagIndex`] is the index's one owner. It holds the connection it talks to Redis on
//! (cachet's control client), whether this cachet uses the library, and the encoding of
//! everything it sends; callers ask for what they want (`index.invalidate(&tags)`,
//! `index.tags(&key)`) and get an [`IndexError`] that says where a failure came from.
//!
//! * `names`: the index's key names in Redis (**Keys**, **Slots**).
//! * `functions`: the functions' calling conventions (**Functions**); the `FCALL` vectors
//!   and epoch reads the proxy sends through its pool.
//! * `fast`: tagged SETs without a function call (**Fast writes**), batched.
//! * `ops`: what the index does on its own connection: invalidation, the TAG commands,
//!   the sweeper.
//! * `library`: loading `index.lua`, and the one retry after Redis lost it.
//! * `cluster`: the same index on Redis Cluster (**Cluster**): writes and invalidations in
//!   steps of one slot each, ordered so that no stale value survives.
//! * `error`: [`IndexError`], classified once from what Redis answered.
//!
//! # Tags that name their key
//!
//! A rule tag whose template holds every capture of a pattern without `*`, each capture
//! followed by `:` or the end (`session:{id}` of `session:{id}`, `teacher:{t}` of
//! `sessions:teacher:{t}`), *names* the
//! key: the tag reads back into the one key of that rule that carries it
//! ([`crate::tags::Rules::keys_named_by`]). Such tags get no entry in the index: a write
//! only checks their epochs (for stale sets), and invalidation, `TAGS` and `TAGKEYS` find
//! their keys from the rules (given with [`TagIndex::with_rules`]) and pass them to the
//! library's functions. A SET whose key has only such tags is the plain SET with the rule's TTL.
//! Everything the index guarantees holds for them trivially: the key is reachable from the
//! tag by its name, there is no entry to leak or to keep in step with the TTL, and the tag is
//! matched byte for byte. The rules must be the same on every cachet sharing the Redis (they
//! must be already, or the same key would get different tags); a key whose tag set in an
//! older configuration named it keeps whatever index entries that configuration wrote.
//!
//! # Why it stays right
//!
//! * Epochs are times, not counters: a bump sets `max(now_ms, old + 1)`, or `now_ms + 1000`
//!   when the old one is gone. An epoch can then expire (bounding the keys of one-off tags)
//!   or vanish with `FLUSHDB`, and the next bump still exceeds every epoch anyone saw before:
//!   those are at most the time of the last bump plus 1 per extra bump within the same
//!   millisecond, which may be this very millisecond (hence the second's head start), and a
//!   missing epoch reads as 0.
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
//! * Lua's `unpack` takes about 8000 values: commands with more arguments cannot be wrapped
//!   (the proxy wraps a write only below 7000 arguments, with the arity Redis expects, when
//!   it is not blocking, not BITFIELD and not LPOP/RPOP with a count: `wrappable` in
//!   `crate::session::tagging`; other writes of rule-matched keys go to Redis unwrapped).
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

mod cluster;
mod error;
mod fast;
mod functions;
mod library;
mod names;
mod ops;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;

use crate::tags::Rules;

pub use cluster::{NODE_PARALLELISM, SWEEP_GRACE, encode_reply};
pub use error::IndexError;
pub use fast::{FAST_SCORE_SLACK_MS, FastBatch, FastSet};
pub use functions::{WriteCall, WriteKey, epoch_from_reply, parse_epochs};
pub use library::{LIBRARY, LIBRARY_NAME};
pub use names::Names;
pub use ops::SweepStats;

pub const DEFAULT_PREFIX: &str = "cachet";
/// Most keys one invalidation call deletes.
pub const DEFAULT_CHUNK: usize = 1000;
/// After this long an invalidation call stops at its next step of 100 keys, however few it
/// has deleted: the bound on how long one call holds Redis, on any machine.
pub const DEFAULT_CALL_BUDGET: Duration = Duration::from_millis(2);
/// How long an epoch outlives its tag's last invalidation.
pub const DEFAULT_EPOCH_TTL: Duration = Duration::from_secs(24 * 3600);

/// The tag index, over one fred client connected to the Redis that holds the data (cachet's
/// control client). Clones share the client and whether the library is in use.
#[derive(Debug, Clone)]
pub struct TagIndex {
    names: Names,
    chunk: usize,
    call_budget: Duration,
    epoch_ttl: Duration,
    /// The rules, for the keys that tags name ([`TagIndex::with_rules`]).
    rules: Option<Arc<Rules>>,
    client: Client,
    in_use: library::InUse,
    /// Redis Cluster: the index works slot by slot (`cluster`).
    cluster: bool,
    /// In cluster mode, how long past its score the sweeper keeps a member whose key is gone.
    sweep_grace: Duration,
    /// In cluster mode, on how many nodes at once an invalidation deletes.
    node_parallelism: usize,
}

impl TagIndex {
    /// The index under `prefix`, talking to Redis on `client`.
    pub fn new(client: Client, prefix: &str) -> Result<Self, IndexError> {
        Ok(TagIndex {
            names: Names::new(prefix)?,
            chunk: DEFAULT_CHUNK,
            call_budget: DEFAULT_CALL_BUDGET,
            epoch_ttl: DEFAULT_EPOCH_TTL,
            rules: None,
            client,
            in_use: library::InUse::default(),
            cluster: false,
            sweep_grace: cluster::SWEEP_GRACE,
            node_parallelism: cluster::NODE_PARALLELISM,
        })
    }

    /// The rules whose naming tags ([`crate::tags::Match::named`]) writes leave out of the
    /// index: invalidation, `TAGS` and `TAGKEYS` then find those keys from the rules. Rules
    /// turn writes into calls of the library's functions, so with any rule the library is in
    /// use from the start ([`TagIndex::is_loaded`]).
    pub fn with_rules(mut self, rules: Arc<Rules>) -> Self {
        if !rules.is_empty() {
            self.in_use.set();
        }
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
}

#[cfg(test)]
impl TagIndex {
    /// An index whose client never connects, for tests of what it encodes.
    fn offline() -> Self {
        TagIndex::new(Client::default(), DEFAULT_PREFIX).expect("the default prefix is valid")
    }
}
