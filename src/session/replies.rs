//! Phase 4, **reply**: every command has a place in `slots`, in the order it was sent, and
//! its reply is written to the client only when every reply before it has been. Pool batches,
//! dedicated replies, replies cachet makes itself and cachet's own commands run off this task
//! all take their turn here. This is also where a client that does not read is held back: it
//! is sent no more commands while it owes more than its reply budget.
//!
//! A slot is one reply source: a pool batch (its replies arrive together), one command on the
//! dedicated connection (replies arrive frame by frame), or a reply cachet made itself, kept
//! until everything before it has been written. RESP3 push frames (pub/sub messages,
//! tracking invalidations) never answer a command and go straight to the client; on a RESP2
//! subscribed or MONITOR connection the stream is forwarded as it comes (both in `pinning`).

use super::*;

/// What a command's reply is taken to cost before this client's replies have been measured:
/// a new client has at most `client_reply_budget / 16 KiB` (64) commands in flight until its
/// first replies come back.
const FIRST_REPLY_ESTIMATE: usize = 16 * 1024;

/// The replies a client is owed, one slot per expected reply source, in command order.
pub(super) struct ReplyQueue {
    pub slots: VecDeque<Slot>,
    /// The id of the last command cachet ran itself (`Slot::Async`).
    pub next_async: u64,
    /// Commands whose replies are still expected (the pipeline depth).
    pub in_flight: usize,
    /// When each pooled batch still unanswered was sent, in slot order.
    pub sent: VecDeque<std::time::Instant>,
    /// Command latencies, flushed to the shared histogram once per batch of replies.
    pub latency: prometheus::local::LocalHistogram,
    /// Bytes one command's reply is expected to take (see `note_replies`).
    pub estimate: usize,
}

impl ReplyQueue {
    pub fn new(latency: prometheus::local::LocalHistogram) -> Self {
        ReplyQueue {
            slots: VecDeque::new(),
            next_async: 0,
            in_flight: 0,
            sent: VecDeque::new(),
            latency,
            estimate: FIRST_REPLY_ESTIMATE,
        }
    }
}

impl Session {
    /// Holds the client's further commands while it owes more than its reply budget: what
    /// it has not read, plus what its commands in flight are expected to return.
    pub(super) fn check_budget(&mut self) {
        let over = self.over_budget(0);
        match self.pinning.wait {
            Wait::Nothing if over => self.pinning.wait = Wait::Budget,
            Wait::Budget if !over => {
                self.pinning.wait = Wait::Nothing;
                self.process_input();
            }
            _ => {}
        }
    }

    /// Whether the client owes more than its budget, counting `pending` commands not yet
    /// in flight.
    pub(super) fn over_budget(&self, pending: usize) -> bool {
        let expected = (self.replies.in_flight + pending) * self.replies.estimate;
        self.output.len() + expected > self.handle.pooled.account.limits.budget
    }

    /// Learns what this client's replies cost from `bytes` for `count` of them: a rise is
    /// believed at once, a fall halves the estimate per batch, so a client cannot lower it
    /// in one step before asking for large replies.
    pub(super) fn note_replies(&mut self, bytes: usize, count: usize) {
        let average = bytes / count.max(1);
        self.replies.estimate = average.max(self.replies.estimate / 2).max(1);
    }

    pub(super) fn on_pool_reply(&mut self, reply: UpstreamReply) {
        if let Ok(bytes) = &reply.result {
            self.handle.pooled.account.taken(bytes.len());
            self.note_replies(bytes.len(), reply.count);
        }
        if !reply.last {
            // A part of a plain batch: its slot stays until the last part.
            self.replies.in_flight -= reply.count;
            if let Ok(bytes) = &reply.result {
                self.output.extend_from_slice(bytes);
            }
            return;
        }
        let (hello, plan) = match self.replies.slots.pop_front() {
            Some(Slot::Pool) => (false, None),
            Some(Slot::Hello) => (true, None),
            Some(Slot::Inspect(plan)) => (false, Some(plan)),
            _ => unreachable!("a pool reply always answers the front slot"),
        };
        self.replies.in_flight -= reply.count;
        if let Some(sent) = self.replies.sent.pop_front() {
            let secs = sent.elapsed().as_secs_f64();
            for _ in 0..reply.count {
                self.replies.latency.observe(secs);
            }
            self.replies.latency.flush();
        }
        match reply.result {
            Ok(bytes) if plan.is_some() => self.inspect_reply(bytes, plan.expect("checked")),
            Ok(bytes) if hello => {
                let bytes = resp::reply::replace_hello_id(&bytes, self.id).unwrap_or(bytes);
                self.output.extend_from_slice(&bytes);
            }
            Ok(bytes) => self.output.extend_from_slice(&bytes),
            Err(error) => {
                // cachet's own commands in the batch (epoch reads, the frames of a fast write
                // beyond the SET's, trims) owe the client no reply.
                let hidden = plan
                    .as_ref()
                    .map_or(0, |plan| plan.iter().map(Inspect::hidden_frames).sum());
                let frame = error.to_frame();
                self.count_errors(reply.count - hidden);
                for _ in 0..reply.count - hidden {
                    self.output.extend_from_slice(&frame);
                }
            }
        }
        self.after_reply();
    }

    /// Writes local replies that have reached the front, and resumes a held command once
    /// nothing is outstanding.
    pub(super) fn after_reply(&mut self) {
        while let Some(Slot::Local(_)) = self.replies.slots.front() {
            if let Some(Slot::Local(bytes)) = self.replies.slots.pop_front() {
                self.output.extend_from_slice(&bytes);
            }
        }
        if self.acl_changed && self.replies.slots.is_empty() && self.batch.count == 0 {
            self.acl_changed = false;
            self.services.upstream.acl().flush();
        }
        if matches!(self.pinning.wait, Wait::Drain) && self.replies.slots.is_empty() {
            self.pinning.wait = Wait::Nothing;
            self.process_input();
        } else if self.pinning.held.is_none()
            && matches!(self.pinning.wait, Wait::Nothing)
            && !self.input.is_empty()
        {
            // Parsing may have stopped at the pipeline limit.
            self.process_input();
        }
    }

    /// Runs a command of cachet's own (on the control client, off this task) and answers
    /// it in order. Earlier commands finish first and later ones wait for it, so it acts on
    /// the data as the client's pipeline left it.
    pub(crate) fn reply_later<F>(&mut self, request: Request, work: impl FnOnce(Arc<Services>) -> F)
    where
        F: Future<Output = Reply> + Send + 'static,
    {
        if self.after_earlier_replies(request).is_none() {
            return;
        }
        let id = self.reserve_async();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let work = work(self.services.clone());
        tokio::spawn(async move {
            let reply = work.await;
            let _ = inbox.send(Inbox::Done(id, reply.encode(protocol)));
        });
    }

    /// `request` if every earlier reply is in; else it is held, and dispatched again through
    /// the same route once they are (`process_input`).
    pub(super) fn after_earlier_replies(&mut self, request: Request) -> Option<Request> {
        self.flush_batch();
        if self.replies.slots.is_empty() {
            return Some(request);
        }
        self.pinning.held = Some(request);
        self.pinning.wait = Wait::Drain;
        None
    }

    /// For a command whose reply cachet makes later, off the session's task: once the
    /// client's earlier replies are in, the request and its reserved slot. `None` when it is
    /// held for those replies (it comes back here then), or the client is gone (the session
    /// closes).
    pub(super) fn slot_after_earlier_replies(
        &mut self,
        request: Request,
    ) -> Option<(Request, u64)> {
        if self.client_gone {
            self.closing = true;
            return None;
        }
        let request = self.after_earlier_replies(request)?;
        Some((request, self.reserve_async()))
    }

    /// Takes the next slot for a reply cachet sends later, as `Inbox::Done(id, ...)` (or
    /// `Inbox::Closed(id)`); the client's later commands wait for it.
    pub(super) fn reserve_async(&mut self) -> u64 {
        self.flush_batch();
        self.replies.next_async += 1;
        let id = self.replies.next_async;
        self.replies.slots.push_back(Slot::Async(id));
        self.replies.in_flight += 1;
        self.pinning.wait = Wait::Drain;
        id
    }

    pub(super) fn on_done(&mut self, id: u64, bytes: Bytes) {
        if let Some(slot) = self
            .replies
            .slots
            .iter_mut()
            .find(|s| matches!(s, Slot::Async(a) if *a == id))
        {
            *slot = Slot::Local(bytes);
            self.replies.in_flight -= 1;
        }
        self.after_reply();
    }

    pub(super) fn reply_local(&mut self, reply: Reply) {
        self.flush_batch();
        let bytes = reply.encode(self.protocol);
        if self.replies.slots.is_empty() {
            self.output.extend_from_slice(&bytes);
        } else {
            self.replies.slots.push_back(Slot::Local(bytes));
        }
    }
}
