//! Pinning: a client whose connection state differs from the pool's (MULTI, WATCH,
//! subscriptions, another user or database, MONITOR, CLIENT modes, blocking commands) holds a
//! dedicated connection (`DedicatedLink`) until its state is the pool's again. Switching
//! between the pool and a dedicated connection first waits until every earlier reply has
//! arrived (`Wait::Drain`): commands never overtake each other on two connections. That holds
//! for every move: pool → dedicated, dedicated → pool, RESP2 pool → RESP3 pool.
//!
//! Which commands pin, and what releases them, is the table in docs/ARCHITECTURE.md,
//! "Dedicated connections" (an operator's reference; the code is `route::needs_dedicated` and the state this
//! file follows).
//!
//! * A dedicated connection goes back to the spares only when its state is the pool's again:
//!   no transaction, no WATCH, no subscription, same database, same user, no reply
//!   outstanding. One that was ever subscribed or a stream (MONITOR, CLIENT REPLY, SCRIPT
//!   DEBUG) is never reused, since a reply racing the last unsubscribe could reach its next
//!   user; the client keeps it until RESET or disconnect.
//! * **Signing in as someone else** (AUTH or HELLO ... AUTH with other credentials than the
//!   pool's): the client gets a bare connection, and its AUTH is the first command Redis
//!   reads on it, since Redis may refuse anything before it (after `CONFIG SET requirepass`,
//!   say). Nothing else is sent until Redis answers (`Slot::FirstSignIn`). Accepted: cachet
//!   moves the client to that user's pool (`upstream::identity`, opened now with these
//!   credentials if it is the user's first client; cachet's own user's is the pool) and
//!   closes the bare connection. Only past `max_user_pools` does the client keep it: cachet
//!   follows the AUTH with what the client's state needs (`HELLO 3` for a RESP3 client that
//!   sent AUTH, `SELECT` of the pool's database, `CLIENT SETNAME`, `CLIENT ID`), whose replies
//!   the client never reads, and the client's next command waits for them. Refused: a Redis
//!   connection stays as it was, signed in as before, so the bare connection (signed in as
//!   nobody, or the default user) is closed and the client is back on the pool with its
//!   state (protocol included) as before. (A client that already holds a dedicated
//!   connection sends its AUTH there, where Redis judges it as it would directly.) A client
//!   moves between identities only on the pool, after its earlier replies (`Wait::Drain`), and
//!   its dedicated connections come from, and go back to, its identity's spares.
//! * When it breaks, the client's state at Redis (transaction, subscriptions, ...) is gone:
//!   each command still waiting gets `-ERR upstream connection lost` and the client's
//!   connection is closed; its library reconnects and re-establishes that state itself.
//!   Nothing is silently retried. The master moving (Sentinel failover) breaks it the same
//!   way (`Dedicated::master`), and a `-READONLY` reply on it asks the Sentinels again.
//! * A client that disconnects while a command waits on its dedicated connection (BLPOP)
//!   takes that connection with it, as Redis frees a client at EOF: nothing is popped for it.
//!   Its leaving is noticed even while its session waits (RESET's reply, a connection being
//!   opened, earlier replies): the session ends and closes the dedicated connection at once,
//!   and nothing is sent to a dedicated connection after EOF. No session outlives its client.

use super::*;

/// A client's dedicated connection, if it holds one, and why.
#[derive(Default)]
pub(super) struct Pinning {
    pub link: Option<DedicatedLink>,
    pub divergence: Divergence,
    /// The command parsed but not yet dispatched, waiting for `wait`.
    pub held: Option<Request>,
    pub wait: Wait,
}

pub(super) struct DedicatedLink {
    pub(super) conn: Dedicated,
    pub(super) incoming: BytesMut,
    pub(super) outgoing: BytesMut,
    /// The reply frame being measured at the front of `incoming`.
    pub(super) frame: resp::FrameScanner,
    /// Replies still expected, one per slot of kind `Dedicated`.
    pub(super) outstanding: usize,
    /// RESET commands sent whose `+RESET` has not come back.
    pub(super) resets: usize,
    /// Has been subscribed or a stream (MONITOR, CLIENT REPLY, SCRIPT DEBUG): its replies
    /// were not one per command, so it never goes back to the pool or the spares; the
    /// client keeps it until RESET or disconnect.
    pub(super) streamed: bool,
    /// SYNC or PSYNC was sent: once the replies owed before it are in, everything Redis
    /// sends is the replication stream (an RDB payload with no closing CRLF, newlines as
    /// keepalives, then the command stream), passed to the client byte for byte, unframed.
    pub(super) replication: bool,
    /// Opened bare for the client's sign-in, which has not been answered yet: the client's
    /// protocol before it, to restore if Redis refuses it.
    pub(super) signing_in: Option<Protocol>,
}

pub(super) type Acquire = Pin<Box<dyn Future<Output = Result<Dedicated, UpstreamError>> + Send>>;

/// What the session waits for before it parses the next command.
#[derive(Default)]
pub(super) enum Wait {
    #[default]
    Nothing,
    /// All earlier replies, before `held` may go to another connection.
    Drain,
    /// A dedicated connection being opened for `held`.
    Acquire(Acquire),
    /// The `+RESET` reply, after which the dedicated connection is dropped.
    Reset,
    /// The client owes more replies than its budget: it is sent nothing more until it reads.
    Budget,
}

impl Session {
    /// Sends to the dedicated connection if there is one, else to the pool.
    pub(super) fn route(&mut self, request: Request, name: &[u8]) {
        if self.pinning.link.is_some() {
            self.send_dedicated(request, name);
        } else {
            self.forward(request);
        }
    }

    pub(super) fn route_dedicated(&mut self, request: Request, name: &[u8]) {
        if self.pinning.link.is_some() {
            self.send_dedicated(request, name);
        } else {
            self.switch_to_dedicated(request);
        }
    }

    /// Holds `request` until earlier replies are in, then opens a dedicated connection.
    pub(super) fn switch_to_dedicated(&mut self, request: Request) {
        if self.client_gone {
            // Nobody will read its reply, and a connection opened now could outlive the
            // session (a BLPOP that blocks): stop here, as Redis would have at EOF.
            self.closing = true;
            return;
        }
        self.flush_batch();
        self.pinning.held = Some(request);
        if !self.replies.slots.is_empty() {
            self.pinning.wait = Wait::Drain;
            return;
        }
        let upstream = self.services.upstream.clone();
        let identity = self.identity.clone();
        let protocol = self.protocol;
        let name = self.name.clone();
        // Only a sign-in as someone else sets `user` before the client holds a connection:
        // it gets a bare one, so that its AUTH is the first thing Redis reads.
        let bare = self.pinning.divergence.user;
        self.pinning.wait = Wait::Acquire(Box::pin(async move {
            match bare {
                true => upstream.bare().await,
                false => identity.dedicated(&upstream, protocol, name).await,
            }
        }));
    }

    pub(super) fn on_acquired(&mut self, result: Result<Dedicated, UpstreamError>) {
        self.pinning.wait = Wait::Nothing;
        match result {
            Ok(conn) => {
                self.handle
                    .upstream_id
                    .store(conn.upstream_id, Ordering::Relaxed);
                let signing_in = (!conn.authenticated).then_some(self.protocol);
                self.pinning.link = Some(DedicatedLink {
                    conn,
                    incoming: BytesMut::new(),
                    outgoing: BytesMut::new(),
                    frame: resp::FrameScanner::default(),
                    outstanding: 0,
                    resets: 0,
                    streamed: false,
                    replication: false,
                    signing_in,
                });
            }
            Err(error) => {
                self.count_errors(1);
                // A MULTI that found no connection: the commands the client queues after it
                // must not run one by one on the pool (`Session::failed_transaction`).
                self.multi_failed =
                    self.pinning.held.take().is_some_and(|r| {
                        r.name().eq_ignore_ascii_case(b"multi") && r.args.len() == 1
                    });
                // The state the command would have entered was not entered.
                self.pending_login = None;
                self.pinning.divergence = Divergence {
                    subscriptions: (0, 0),
                    ..Divergence::default()
                };
                self.reply_local(Reply::Error(format!("ERR {error}")));
            }
        }
        self.process_input();
    }

    /// Writes a command to the dedicated connection and notes how it changes the state.
    pub(super) fn send_dedicated(&mut self, request: Request, name: &[u8]) {
        let other_db = name == b"select"
            && !route::is_db(request.arg(1), self.services.upstream.config.url.db);
        let d = &mut self.pinning.divergence;
        let was_subscribed = d.pubsub();
        let mut signs_in = false;
        match name {
            // Only what Redis accepts changes the state: `MULTI x` is refused for its arity.
            b"multi" if request.args.len() == 1 => d.multi = true,
            b"exec" | b"discard" if d.multi => {
                d.multi = false;
                d.watch = false;
            }
            b"watch" if !d.multi && request.args.len() > 1 => d.watch = true,
            b"unwatch" if !d.multi => d.watch = false,
            b"monitor" | b"sync" | b"psync" => d.stream = true,
            b"script"
                if request
                    .arg(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"debug")) =>
            {
                d.stream = true
            }
            // Inside MULTI too: after EXEC the connection is on that database.
            b"select" => {
                // Queued in MULTI it may yet fail: stay pinned rather than guess.
                d.database = other_db || (d.multi && d.database);
            }
            b"auth" => {
                d.user = true;
                signs_in = !d.multi;
                self.pending_user = match request.args.len() {
                    3 => Some(request.args[1].clone()),
                    _ => Some(Bytes::from_static(b"default")),
                };
            }
            b"hello" => {
                match request.arg(1) {
                    Some(b"2") => self.protocol = Protocol::Resp2,
                    Some(b"3") => self.protocol = Protocol::Resp3,
                    _ => {}
                }
                if let Some(pos) = request
                    .args
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(b"auth"))
                {
                    d.user = true;
                    signs_in = !d.multi;
                    self.pending_user = request.arg(pos + 1).map(Bytes::copy_from_slice);
                }
            }
            // Marked at once so the confirmations route as pub/sub traffic; the real counts
            // come from Redis's confirmations (`track_subscriptions`).
            b"subscribe" | b"psubscribe" => d.subscriptions.0 = d.subscriptions.0.max(1),
            b"ssubscribe" => d.subscriptions.1 = d.subscriptions.1.max(1),
            _ => {}
        }
        // RESET with arguments is refused by Redis before it acts (wrong arity): an error
        // like any other, not the end of the connection's use.
        let is_reset = name == b"reset" && request.args.len() == 1;
        let raw = self.raw_replies() || self.pinning.divergence.pubsub();
        if let Some(link) = &mut self.pinning.link {
            link.streamed |= raw;
        }
        let frames = match name {
            _ if self.raw_replies() => 0,
            // Confirmations are pushes in RESP3, and subscribing in RESP2 makes the stream raw.
            b"subscribe" | b"psubscribe" | b"ssubscribe" => 0,
            b"unsubscribe" | b"punsubscribe" | b"sunsubscribe"
                if self.protocol == Protocol::Resp3 || was_subscribed =>
            {
                0
            }
            b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => request.args.len().max(2) - 1,
            _ => 1,
        };
        let in_multi = self.pinning.divergence.multi;
        let link = self.pinning.link.as_mut().expect("dedicated connection");
        // Inside MULTI Redis refuses it with a framed error: no stream follows.
        link.replication |= matches!(name, b"sync" | b"psync") && !in_multi;
        // The sign-in a bare connection was opened for: nothing more goes out until Redis
        // has answered it (refused, the next commands belong on the pool).
        let first_sign_in = signs_in && link.signing_in.is_some() && link.outstanding == 0;
        if first_sign_in && name == b"hello" {
            // Accepted, the connection speaks what the HELLO asked for.
            link.conn.protocol = self.protocol;
        }
        link.outgoing.extend_from_slice(&request.raw);
        // The name the connection will carry at Redis, so a spare is renamed for its next user.
        if let Some(set) = name_set_by(name, &request) {
            link.conn.name = set;
        }
        if is_reset {
            link.resets += 1;
            self.pinning.wait = Wait::Reset;
        }
        link.outstanding += frames;
        self.replies.in_flight += frames;
        for _ in 0..frames {
            self.replies.slots.push_back(match (is_reset, signs_in) {
                (true, _) => Slot::Reset,
                (false, true) if first_sign_in => Slot::FirstSignIn,
                (false, true) => Slot::SignIn,
                // Outside MULTI a SELECT's `+OK` says which database the client is in.
                (false, false) if name == b"select" && !in_multi => Slot::Select(
                    request
                        .arg(1)
                        .and_then(|a| std::str::from_utf8(a).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(self.db),
                ),
                (false, false) => Slot::Dedicated,
            });
        }
        if first_sign_in {
            self.pinning.wait = Wait::Drain;
        }
        if request.args.len() > SHARED_MAX_ARGS {
            // Freeing millions of arguments takes tens of milliseconds: not on the thread
            // that serves the other clients.
            tokio::task::spawn_blocking(move || drop(request));
        }
    }

    /// Replies on the dedicated connection are not one per command: forward them as they come.
    pub(super) fn raw_replies(&self) -> bool {
        let d = &self.pinning.divergence;
        d.stream || d.reply_mode || (d.pubsub() && self.protocol == Protocol::Resp2)
    }

    pub(super) fn is_clean(&self, link: &DedicatedLink) -> bool {
        !self.pinning.divergence.any()
            && !link.streamed
            && link.outstanding == 0
            && link.outgoing.is_empty()
            && link.incoming.is_empty()
            && link.conn.protocol == self.protocol
    }

    /// Gives the dedicated connection back once the client's state is the pool's again.
    pub(super) fn try_leave_dedicated(&mut self) {
        let Some(link) = &self.pinning.link else {
            return;
        };
        if !self.is_clean(link)
            || !matches!(self.pinning.wait, Wait::Nothing)
            || self.closing
            || self.draining
        {
            return;
        }
        let link = self.pinning.link.take().expect("checked");
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        let upstream = self.services.upstream.clone();
        let identity = self.identity.clone();
        tokio::spawn(async move { identity.release(&upstream, link.conn).await });
    }

    pub(super) fn on_dedicated_data(&mut self) {
        loop {
            let Some(link) = &mut self.pinning.link else {
                return;
            };
            if link.replication && link.outstanding == 0 {
                let stream = link.incoming.split();
                self.output.extend_from_slice(&stream);
                return;
            }
            let info = match link.frame.scan(&link.incoming) {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(e) => return self.dedicated_lost(&e.to_string()),
            };
            let frame = link.incoming.split_to(info.len).freeze();
            if crate::upstream::sentinel::is_readonly(&frame) {
                link.conn.master.readonly_seen();
            }
            let is_reset_reply = &frame[..] == b"+RESET\r\n";
            // RESET's own reply: whatever answers its slot. In a raw stream it has no slot:
            // only its exact reply says it is done. Redis refuses a RESET it parses only for
            // its arity, which `send_dedicated` does not count as a reset (every ACL user may
            // RESET); on a connection that SYNCed Redis answers nothing, and the wait lasts
            // until the client leaves, as its replication stream would.
            let answers_reset = !info.push
                && link.outstanding > 0
                && matches!(self.replies.slots.front(), Some(Slot::Reset));
            if answers_reset || (link.resets > 0 && link.outstanding == 0 && is_reset_reply) {
                link.resets -= 1;
                if answers_reset {
                    link.outstanding -= 1;
                    self.replies.in_flight -= 1;
                    self.replies.slots.pop_front();
                }
                self.output.extend_from_slice(&frame);
                if is_reset_reply {
                    self.after_reset();
                } else {
                    self.pinning.wait = Wait::Nothing;
                    self.after_reply();
                }
                continue;
            }
            self.track_subscriptions(&frame);
            // Replies expected before the stream turned raw (subscribed, MONITOR) still come
            // first, in order; pushes never answer a command.
            let link = self.pinning.link.as_mut().expect("still there");
            if !info.push && link.outstanding > 0 {
                link.outstanding -= 1;
                self.replies.in_flight -= 1;
                match self.replies.slots.pop_front() {
                    Some(Slot::Dedicated) => self.output.extend_from_slice(&frame),
                    Some(Slot::Select(db)) => {
                        if &frame[..] == b"+OK\r\n" {
                            self.db = db;
                        }
                        self.output.extend_from_slice(&frame);
                    }
                    Some(Slot::SignIn) => {
                        let accepted = !matches!(frame.first(), Some(b'-' | b'!'));
                        self.signed_in |= accepted;
                        if accepted {
                            self.user = self.pending_user.take();
                        }
                        self.output.extend_from_slice(&frame);
                    }
                    Some(Slot::DedicatedReplaced(instead)) => {
                        self.output.extend_from_slice(&instead)
                    }
                    Some(Slot::Hidden) => {}
                    Some(Slot::UpstreamId) => {
                        if let Some(id) = crate::upstream::dedicated::parse_integer(&frame) {
                            self.handle.upstream_id.store(id, Ordering::Relaxed);
                            link.conn.upstream_id = id;
                        }
                    }
                    Some(Slot::FirstSignIn) => {
                        let before = link.signing_in.take().expect("opened for a sign-in");
                        if matches!(frame.first(), Some(b'-' | b'!')) {
                            self.output.extend_from_slice(&frame);
                            self.sign_in_refused(before);
                        } else {
                            // HELLO's reply names the connection: the client's id is cachet's.
                            let frame =
                                resp::reply::replace_hello_id(&frame, self.id).unwrap_or(frame);
                            self.output.extend_from_slice(&frame);
                            self.sign_in_accepted();
                        }
                    }
                    _ => unreachable!("dedicated replies answer the front slot"),
                }
                self.after_reply();
            } else {
                self.output.extend_from_slice(&frame);
            }
        }
    }

    /// Redis refused the sign-in a bare connection was opened for. In Redis a refused AUTH
    /// leaves the connection as it was, signed in as before: the bare connection (signed in
    /// as nobody, or as the default user) is closed, and the client goes back to the pool
    /// with its state as before the AUTH (protocol included: a refused HELLO changes nothing).
    fn sign_in_refused(&mut self, protocol_before: Protocol) {
        self.pending_login = None;
        self.pending_user = None;
        self.pinning.link = None;
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        self.pinning.divergence = Divergence::default();
        self.protocol = protocol_before;
    }

    /// Redis accepted the sign-in on a bare connection. The client joins that user's pool
    /// (`upstream::identity`: opened now with these credentials if it is the user's first
    /// client), and the bare connection closes: its later commands go to that pool, its
    /// MULTI or BLPOP to a connection of that user's. Past `max_user_pools` (or with a
    /// password that is not UTF-8) it keeps the bare connection as its own
    /// (`after_sign_in`).
    fn sign_in_accepted(&mut self) {
        self.signed_in = true;
        self.user = self.pending_user.take();
        let login = self.pending_login.take();
        let upstream = &self.services.upstream;
        let joined = login.and_then(|(user, password)| {
            // cachet's own user, with a password Redis accepts: the pool's rights exactly.
            let own = upstream.config.credentials().map(|(u, _)| u);
            match user == own.as_deref().unwrap_or("default").as_bytes() {
                true => Some(upstream.default_identity().clone()),
                false => upstream.identities.join(&user, &password),
            }
        });
        let Some(identity) = joined else {
            return self.after_sign_in();
        };
        let link = self.pinning.link.take().expect("signed in on it");
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        // A name HELLO ... SETNAME gave the bare connection is the client's.
        if let Some(name) = link.conn.name {
            self.name = Some(name);
        }
        self.pinning.divergence.user = false;
        self.enter_identity(identity);
    }

    /// Moves the client to `identity`'s pool (the caller has waited for its earlier
    /// replies, so nothing it sent before can run after what it sends next).
    pub(super) fn enter_identity(&mut self, identity: Arc<crate::upstream::Identity>) {
        self.user = identity.user().cloned();
        self.signed_in = !identity.is_default();
        self.authenticated = true;
        self.identity = identity;
    }

    /// Redis accepted the sign-in on a bare connection: what the pool's connections (or a
    /// spare) would have been set up with follows now, as commands whose replies the
    /// client never reads: `HELLO 3` for a RESP3 client that signed in with AUTH, the pool's
    /// database, the client's name, and `CLIENT ID` for the id `CLIENT UNBLOCK` and
    /// `TRACKING ... REDIRECT` translate to. The session waits for them (`Wait::Drain`).
    fn after_sign_in(&mut self) {
        let db = self.services.upstream.config.url.db;
        let protocol = self.protocol;
        let name = self.name.clone();
        let link = self.pinning.link.as_mut().expect("signed in on it");
        let mut hidden = Vec::new();
        if link.conn.protocol != protocol {
            let version = if protocol == Protocol::Resp3 {
                "3"
            } else {
                "2"
            };
            hidden.push((
                crate::resp::encode_command(&crate::upstream::args(&["HELLO", version])),
                Slot::Hidden,
            ));
            link.conn.protocol = protocol;
        }
        if db != 0 {
            hidden.push((
                crate::resp::encode_command(&crate::upstream::args(&["SELECT", &db.to_string()])),
                Slot::Hidden,
            ));
        }
        if let Some(name) = name.filter(|_| link.conn.name.is_none()) {
            let command = [
                Bytes::from_static(b"CLIENT"),
                Bytes::from_static(b"SETNAME"),
                name.clone(),
            ];
            hidden.push((crate::resp::encode_command(&command), Slot::Hidden));
            link.conn.name = Some(name);
        }
        hidden.push((
            crate::resp::encode_command(&crate::upstream::args(&["CLIENT", "ID"])),
            Slot::UpstreamId,
        ));
        for (command, slot) in hidden {
            link.outgoing.extend_from_slice(&command);
            link.outstanding += 1;
            self.replies.in_flight += 1;
            self.replies.slots.push_back(slot);
        }
    }

    /// Follows subscription counts in (un)subscribe confirmations, so the client returns to
    /// the pool once it has unsubscribed from everything.
    pub(super) fn track_subscriptions(&mut self, frame: &Bytes) {
        if !self.pinning.divergence.pubsub() || !matches!(frame.first(), Some(b'*' | b'>')) {
            return;
        }
        let Ok(Some((decoded, _))) = resp::decode_reply(frame) else {
            return;
        };
        let items = match decoded {
            BytesFrame::Array { data, .. } | BytesFrame::Push { data, .. } => data,
            _ => return,
        };
        let (Some(kind), Some(count)) = (items.first(), items.get(2)) else {
            return;
        };
        let kind = match kind {
            BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => {
                data.to_ascii_lowercase()
            }
            _ => return,
        };
        let BytesFrame::Number { data: count, .. } = count else {
            return;
        };
        match kind.as_slice() {
            b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" => {
                self.pinning.divergence.subscriptions.0 = *count
            }
            b"ssubscribe" | b"sunsubscribe" => self.pinning.divergence.subscriptions.1 = *count,
            _ => {}
        }
    }

    pub(super) fn after_reset(&mut self) {
        // Drop the connection: it is authenticated as Redis's default user now, which may
        // not be the pool's user.
        if let Some(link) = self.pinning.link.take() {
            self.replies.in_flight -= link.outstanding;
        }
        self.replies
            .slots
            .retain(|s| matches!(s, Slot::Local(_) | Slot::Async(_)));
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        self.reset_state();
        self.pinning.wait = Wait::Nothing;
        self.after_reply();
        self.process_input();
    }

    /// The dedicated connection broke: its state is gone, so the client's connection ends
    /// too, after an error for each command still waiting. Nothing is retried.
    pub(super) fn dedicated_lost(&mut self, reason: &str) {
        let Some(link) = self.pinning.link.take() else {
            return;
        };
        tracing::warn!(
            client = self.id,
            reason,
            "dedicated upstream connection lost"
        );
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        // Each command still waiting gets the error in its own place in the order.
        let frame = UpstreamError::Lost(reason.to_owned()).to_frame();
        let mut lost = 0;
        for slot in self.replies.slots.iter_mut() {
            match slot {
                Slot::Dedicated
                | Slot::Select(_)
                | Slot::SignIn
                | Slot::FirstSignIn
                | Slot::DedicatedReplaced(_)
                | Slot::Reset => {
                    *slot = Slot::Local(frame.clone());
                    lost += 1;
                }
                // cachet's own commands owe the client nothing.
                Slot::Hidden | Slot::UpstreamId => *slot = Slot::Local(Bytes::new()),
                _ => {}
            }
        }
        self.count_errors(lost);
        self.replies.in_flight -= link.outstanding;
        self.pinning.wait = Wait::Nothing;
        self.pinning.held = None;
        self.closing = true;
        self.after_reply();
    }
}

/// The client name a command gives its connection: `Some(None)` clears it.
pub(super) fn name_set_by(name: &[u8], request: &Request) -> Option<Option<Bytes>> {
    let value = match name {
        b"client" if request.args.len() == 3 => request
            .arg(1)
            .filter(|s| s.eq_ignore_ascii_case(b"setname"))
            .map(|_| request.args[2].clone()),
        b"hello" => request
            .args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"setname"))
            .and_then(|i| request.args.get(i + 1).cloned()),
        _ => None,
    }?;
    Some((!value.is_empty()).then_some(value))
}

/// Reads from, or writes to, the dedicated connection if there is one.
pub(super) async fn dedicated_io(link: &mut Option<DedicatedLink>, read: bool) -> Event {
    let Some(DedicatedLink {
        conn,
        incoming,
        outgoing,
        ..
    }) = link
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        got = crate::net::read_available(&mut conn.reader, incoming), if read => Event::UpstreamRead(got),
        wrote = conn.writer.write(outgoing), if !outgoing.is_empty() => Event::UpstreamWrote(wrote),
        // The master moved: this connection is to the old one, and ends as if lost.
        reason = conn.master.moved() => Event::UpstreamRead(Err(std::io::Error::other(reason))),
        // Neither (output backed up and nothing to write): wait for the other events.
        else => std::future::pending().await,
    }
}

pub(super) async fn acquire(wait: &mut Wait) -> Result<Dedicated, UpstreamError> {
    match wait {
        Wait::Acquire(future) => future.await,
        _ => std::future::pending().await,
    }
}
