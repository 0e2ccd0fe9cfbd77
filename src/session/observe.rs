//! What a session counts for `/metrics`, `/health` and INFO, and the `# cachet` INFO section.
//!
//! Kept to a few tens of ns, since it runs for every command:
//!
//! * a command's name is counted through the session's own snapshot of the per-name counters
//!   (an `Arc` of a hash map): one lookup and one atomic add. A name not in the snapshot takes
//!   the slow path once: it is added if Redis's command table knows it (or it is one of the
//!   TAG commands), so labels stay bounded, otherwise counted as `other`; then the session
//!   refreshes its snapshot.
//! * a lookup (below) joins the batch's inspection plan, the mechanism tagged reads already
//!   use (`Slot::Inspect`): when the batch's replies come back they are walked frame by frame
//!   (only measured, never decoded), and each lookup's frame is a hit or a miss by its first
//!   bytes (`$-1`, `_` are nil). Plans are recycled, so batches with lookups allocate nothing.
//!   A key matching a rule is counted under the rule (the rule lookup the index phase already
//!   made); others under `none`.
//! * the time a pooled batch left the session is queued beside its slot; when its replies
//!   arrive, each command in it is observed in a per-session `LocalHistogram` (no atomics),
//!   flushed to the shared histogram once per batch.
//!
//! **Lookups** are the reads whose reply says whether the key (or field) held a value: GET,
//! GETEX, GETDEL and HGET (nil = miss), and each element of MGET and HMGET. An error reply
//! (`-` or `!`: WRONGTYPE, ...) is neither a hit nor a miss.
//!
//! **Errors.** `cachet_errors_total` counts the upstream failures answered to clients
//! (`-ERR upstream ...` for each command of a failed batch, for each command waiting on a lost
//! dedicated connection, for a dedicated connection that could not be opened). A client's
//! protocol error has its own counter (see `crate::metrics`). Redis's own error replies pass
//! through uncounted: they describe the application's command, not cachet's health.
//!
//! **INFO through cachet.** On the pool, `INFO` with no section, or with `all`, `everything`,
//! `default` or `cachet` among its sections, becomes an inspected command whose reply (a
//! bulk string in RESP2, a verbatim string in RESP3) is re-encoded with cachet's section
//! appended; `cachet` is removed from the sections sent to Redis, and `INFO cachet` alone is
//! answered by cachet. On a dedicated connection (inside MULTI, say) INFO goes to Redis
//! untouched. Behind Redis Cluster, cachet's section is followed by `# cachet_cluster`: the
//! node and primary counts, up and listed, and a line per node (`crate::health::cluster`);
//! Redis's own sections are those of the node the INFO went to.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame as Frame3, VerbatimStringFormat};

use super::Session;
use crate::metrics::CommandMap;
use crate::resp::reply::Reply;
use crate::resp::{Protocol, Request};

/// How to count a lookup's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// One value: nil is a miss.
    One,
    /// An array of values: each nil element is a miss.
    Each,
}

/// The lookup kind of a command, by lowercase name.
pub(super) fn lookup(name: &[u8]) -> Option<Lookup> {
    match name {
        b"get" | b"getex" | b"getdel" | b"hget" => Some(Lookup::One),
        b"mget" | b"hmget" => Some(Lookup::Each),
        _ => None,
    }
}

/// Hits and misses in one lookup reply frame.
pub(super) fn classify(frame: &[u8], lookup: Lookup) -> (u64, u64) {
    let (mut hits, mut misses) = (0, 0);
    let mut count = |_, nil| match nil {
        true => misses += 1,
        false => hits += 1,
    };
    match lookup {
        Lookup::One => match frame.first() {
            Some(b'-' | b'!') | None => {}
            _ => count(0, is_nil(frame)),
        },
        Lookup::Each => each_element(frame, count),
    }
    (hits, misses)
}

fn is_nil(frame: &[u8]) -> bool {
    frame == b"$-1\r\n" || frame == b"_\r\n"
}

/// Calls `f(index, is_nil)` for each element of an array reply; nothing for anything else.
pub(super) fn each_element(frame: &[u8], mut f: impl FnMut(usize, bool)) {
    if frame.first() != Some(&b'*') {
        return;
    }
    let Some(mut at) = frame.windows(2).position(|w| w == b"\r\n").map(|p| p + 2) else {
        return;
    };
    let mut index = 0;
    while at < frame.len() {
        let Ok(Some(element)) = crate::resp::reply_frame(&frame[at..]) else {
            return;
        };
        f(index, is_nil(&frame[at..at + element.len]));
        index += 1;
        at += element.len;
    }
}

/// Sections that make Redis's INFO include everything (and so cachet's section too).
fn includes_everything(section: &[u8]) -> bool {
    [&b"all"[..], b"everything", b"default"]
        .iter()
        .any(|s| section.eq_ignore_ascii_case(s))
}

/// The INFO reply text as the client's protocol carries it: a bulk string in RESP2, a
/// verbatim string (`txt`) in RESP3, as Redis answers.
pub(super) fn info_reply(text: Bytes, protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::Resp2 => Reply::Bulk(text).encode(protocol),
        Protocol::Resp3 => {
            let mut out = BytesMut::new();
            let frame = Frame3::VerbatimString {
                data: text,
                format: VerbatimStringFormat::Text,
                attributes: None,
            };
            redis_protocol::resp3::encode::complete::extend_encode(&mut out, &frame, false)
                .expect("a verbatim string always encodes");
            out.freeze()
        }
    }
}

/// Redis's INFO reply with `section` appended, in the reply's own encoding; the reply as it
/// was if it is not an INFO text (an error, say).
pub(super) fn append_section(frame: &[u8], section: &str) -> Option<Bytes> {
    let header_end = frame.windows(2).position(|w| w == b"\r\n")?;
    let (protocol, skip) = match frame.first()? {
        b'$' => (Protocol::Resp2, 0),
        // `=len\r\ntxt:...`: the payload starts with the 3-letter format and a colon.
        b'=' => (Protocol::Resp3, 4),
        _ => return None,
    };
    let body = frame.get(header_end + 2 + skip..frame.len().checked_sub(2)?)?;
    let mut text = BytesMut::with_capacity(body.len() + section.len() + 2);
    text.extend_from_slice(body);
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        text.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(section.as_bytes());
    Some(info_reply(text.freeze(), protocol))
}

impl Session {
    /// Counts one command by name (lowercase; `None` for a name longer than any command).
    pub(super) fn count_command(&mut self, name: Option<&[u8]>) {
        let name = name.unwrap_or(b"");
        if let Some(counter) = self.command_counters.get(name) {
            return counter.inc();
        }
        let services = &self.services;
        services.metrics.commands.count(name, || {
            services.upstream.commands().get(name).is_some()
                || crate::resp::commands::OWN_COMMANDS.contains(&name)
        });
        self.command_counters = services.metrics.commands.snapshot();
    }

    /// Counts a client closed for a protocol error: the client's fault, so its own counter,
    /// not the error rate `/health` judges cachet by.
    pub(super) fn count_protocol_error(&self) {
        self.services.metrics.client_protocol_errors.inc();
    }

    /// Counts `n` error replies cachet produced or passed on for an upstream failure.
    pub(super) fn count_errors(&self, n: usize) {
        self.services.metrics.errors.inc_by(n as u64);
    }

    /// `INFO [section ...]` on the pool: Redis's reply, with cachet's section appended when
    /// the sections asked for include it; `INFO cachet` alone is answered by cachet.
    pub(super) fn info_command(&mut self, request: Request) {
        if self.other_user() {
            // cachet's section is for cachet's user; Redis judges the rest as this user.
            return self.forward_frames(request, 1);
        }
        let sections = &request.args[1..];
        let ours = |s: &Bytes| s.eq_ignore_ascii_case(b"cachet");
        let wants_ours =
            sections.is_empty() || sections.iter().any(|s| ours(s) || includes_everything(s));
        if !wants_ours {
            return self.forward_frames(request, 1);
        }
        let others: Vec<Bytes> = sections.iter().filter(|s| !ours(s)).cloned().collect();
        if !sections.is_empty() && others.is_empty() {
            let text = Bytes::from(crate::health::info_section(&self.services.health));
            let bytes = info_reply(text, self.protocol);
            return self.reply_local_bytes(bytes);
        }
        let request = if others.len() == sections.len() {
            request
        } else {
            let mut args = vec![request.args[0].clone()];
            args.extend(others);
            Request::from_args(args)
        };
        self.forward_inspected(request, super::inspect::Inspect::Info);
    }
}

impl Session {
    /// Queues reply bytes cachet made, in command order.
    fn reply_local_bytes(&mut self, bytes: Bytes) {
        self.flush_batch();
        if self.replies.slots.is_empty() {
            self.output.extend_from_slice(&bytes);
        } else {
            self.replies.slots.push_back(super::Slot::Local(bytes));
        }
    }
}

/// A fresh snapshot for a new session.
pub(super) fn counters(services: &super::Services) -> Arc<CommandMap> {
    services.metrics.commands.snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_classified_by_their_reply() {
        assert_eq!(classify(b"$3\r\nabc\r\n", Lookup::One), (1, 0));
        assert_eq!(classify(b"$0\r\n\r\n", Lookup::One), (1, 0));
        assert_eq!(classify(b"$-1\r\n", Lookup::One), (0, 1));
        assert_eq!(classify(b"_\r\n", Lookup::One), (0, 1));
        assert_eq!(classify(b"-WRONGTYPE x\r\n", Lookup::One), (0, 0));
        assert_eq!(
            classify(b"*3\r\n$1\r\na\r\n$-1\r\n$3\r\n$-1\r\n", Lookup::Each),
            (2, 1)
        );
        assert_eq!(classify(b"*2\r\n_\r\n_\r\n", Lookup::Each), (0, 2));
    }

    #[test]
    fn the_section_is_appended_in_the_replys_own_encoding() {
        let redis = "# Server\r\nx:1\r\n";
        let ours = "# cachet\r\nhits:1\r\n";
        let joined = format!("{redis}\r\n{ours}");
        let bulk = format!("${}\r\n{redis}\r\n", redis.len());
        let out = append_section(bulk.as_bytes(), ours).unwrap();
        assert_eq!(out, format!("${}\r\n{joined}\r\n", joined.len()));
        let verbatim = format!("={}\r\ntxt:{redis}\r\n", redis.len() + 4);
        let out = append_section(verbatim.as_bytes(), ours).unwrap();
        assert_eq!(out, format!("={}\r\ntxt:{joined}\r\n", joined.len() + 4));
        assert!(append_section(b"-ERR x\r\n", "s").is_none());
    }
}
