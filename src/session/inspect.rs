//! The reply plan of a pooled batch that holds more than plain forwarded commands: what to
//! do with each reply frame before the client gets it ([`Inspect`]), and the walk that does
//! it ([`Session::inspect_reply`]): keep cachet's own replies back, note misses for leases,
//! count lookups, append cachet's INFO section, unpack a fast batch's transaction.

use bytes::Bytes;

use super::leases::lease_dropped;
use super::observe::{self, Lookup};
use super::{Session, Slot};
use crate::resp::Request;
use crate::tags::index;

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
    pub(super) fn plan_step(&mut self, inspect: Inspect) {
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
        let metrics = &self.services.metrics;
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
                    let section = crate::health::info_section(&self.services.health);
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
            let trim = Request::from_args(self.services.index.trim_call(&grown));
            self.forward_inspected(trim, Inspect::Drop);
            self.flush_batch();
        }
    }

    /// `TAGINVALIDATE`, `TAGSET`, `TAG`, `TAGS`, `TAGKEYS`. They run on cachet's control
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
