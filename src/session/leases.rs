//! Read leases: the tag epochs a client connection saw before reads of rule-matched keys
//! that missed, kept for the write that usually follows ([`Snapshots`]), and bounded.
//!
//! **Stale sets.** A client that reads a key, misses, recomputes the value and writes it
//! back can race a `TAGINVALIDATE` (on any cachet instance): the value it computed predates
//! the invalidation. Before such a read cachet reads the epochs of the key's tags on the same
//! connection (so they are no newer than the read), keeps them when the read misses, and
//! hands them to the write; the index function then deletes the value again (after running
//! the command, so the client still gets Redis's reply) if any tag was invalidated since.
//! Epochs live in Redis, so an invalidation through any cachet instance counts. Like a
//! memcache lease, this is per client connection: a write from another connection is not
//! checked. On Redis Cluster the epoch read is the same `MGET` through the pool, which the
//! cluster core splits by slot and merges in order; the write then checks the lease's epochs
//! after it ran, on the tags' nodes (`crate::tags::index`, "Cluster").
//!
//! One connection may carry several requests at once (ioredis, fred and most clients
//! multiplex one connection), so two misses of the same key can be outstanding and cachet
//! cannot tell which write answers which miss. A key's lease therefore keeps every
//! outstanding miss (up to `MISSES_PER_KEY`, each for `SNAPSHOT_TTL`; a recompute slower than
//! that writes unchecked), and a write is checked against the oldest epochs among them, and uses
//! up the newest miss: a value that may have been computed before an invalidation never
//! survives it, whatever order the writes come in. The price: while a miss from before an
//! invalidation is outstanding (at most `SNAPSHOT_TTL`), writes of that key on that
//! connection are dropped and recomputed later. A hit does not end a lease for the same
//! reason: it may belong to another request on the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

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
    pub(super) fn insert(&mut self, key: Bytes, epochs: Vec<u64>) -> bool {
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
    pub(super) fn holds(&self, key: &[u8]) -> bool {
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
    pub(super) fn take(&mut self, key: &[u8]) -> Option<Vec<u64>> {
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
pub(super) fn lease_dropped(client: i64, metrics: &crate::metrics::Metrics) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
