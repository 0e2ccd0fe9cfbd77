//! How the proxy calls the index's functions through its pool: the `FCALL cachet_write`
//! vector of a tagged write ([`TagIndex::write_call`]), `cachet_trim` after fast writes, and
//! the `MGET` of a key's tag epochs before a read ([`TagIndex::epoch_read`]) with its reply.
//! Pure: [`TagIndex`]'s own calls on its connection are in `ops`.
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

use bytes::Bytes;

use super::TagIndex;
use crate::resp::Protocol;

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

impl TagIndex {
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
            self.names.prefix().clone(),
            Bytes::from_static(resp),
            Bytes::from_static(if call.explicit_ttl { b"1" } else { b"0" }),
            number(call.command.len() as u64),
        ]);
        out.extend(call.command.iter().cloned());
        out.extend(per_key);
        out
    }

    /// `FCALL cachet_trim` for tag sets that gained members through [`super::FastSet`]s: each
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
        out.push(self.names.prefix().clone());
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

pub(super) fn number(n: u64) -> Bytes {
    Bytes::from(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_call_layout() {
        let index = TagIndex::offline();
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

    #[test]
    fn epochs_parse_with_nil_as_zero() {
        assert_eq!(epoch_from_reply(None), 0);
        assert_eq!(epoch_from_reply(Some(b"1700000000123")), 1_700_000_000_123);
        assert_eq!(epoch_from_reply(Some(b"junk")), 0);
    }

    #[test]
    fn epoch_replies_parse_in_both_protocols() {
        let index = TagIndex::offline();
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
}
