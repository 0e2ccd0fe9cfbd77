//! Tagged SETs without a function call: [`FastSet`], and [`FastBatch`], the proxy's hottest
//! write path, encoded straight into the pool's batch by [`TagIndex::encode_fast_batch`].
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
//! (only the SET when every rule tag names `K`: [`FastBatch::encode_set`]),
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
//! The tagged SETs of one client read share one transaction ([`FastBatch`], at most 64 SETs):
//! `MULTI`, the SETs in order, one `ZADD` per tag with every key of the batch under it, the
//! per-key sets, `EXEC`. Anything else the client sent in between closes the transaction
//! first, so replies keep their order; cachet's clock is read once per client read. When
//! Redis refuses one SET while queueing it (out of memory), the transaction is discarded:
//! that SET gets its own refusal, the others EXEC's `EXECABORT` error, and nothing of it is
//! written.
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

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame::{self, Array, BulkString};

use super::TagIndex;
use super::functions::number;
use crate::resp::Request;

/// How far past cachet's own estimate of a key's expiry a [`FastSet`] puts its scores and
/// its per-key set's expiry, so that they are upper bounds despite the time between cachet
/// reading its clock and Redis running the SET (and small clock differences).
pub const FAST_SCORE_SLACK_MS: u64 = 250;

/// A tagged `SET` that needs no function call: `MULTI`, the SET, one `ZADD` per tag,
/// `SADD` and `PEXPIREAT` (or `PERSIST`) of the per-key set, `EXEC`. Only for writes with no
/// lease to check ([`super::WriteKey::snapshot`] `None`) whose expiry cachet knows in advance.
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

impl TagIndex {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let index = TagIndex::offline();
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
        let index = TagIndex::offline();
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
}
