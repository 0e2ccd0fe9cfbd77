//! One client connection: its state, and the path each of its commands takes.
//!
//! [`Session::run`] is the event loop: it waits on the client's socket, the dedicated
//! connection, the pool's replies and the inbox, and hands each event to one phase. A command
//! goes through these phases, in order; each may do only what its line says:
//!
//! 1. **parse** (`resp::request`, called by `process_input`): a whole request within the size
//!    limits, or a protocol error that is answered and closes the connection, as Redis does.
//!    Reads the input buffer only.
//! 2. **route** (`route::route`): a pure function of the request and the client's state that says
//!    where the command goes: a reply cachet makes, cachet's own commands behind one gate,
//!    the pool, the dedicated connection, or a switch to one. `dispatch` then calls one
//!    handler per answer; nothing else chooses a connection.
//! 3. **rules** (`tagging`): for the pool and the dedicated connection, a write of a
//!    rule-matched key becomes an index call and a read gets its epoch check; everything else
//!    passes unchanged. May add frames of cachet's own to the batch, never reorder the
//!    client's.
//! 4. **upstream**: pooled commands from one read go to the pool as one batch (`batch`); on a
//!    dedicated connection they are written as they come (`pinning`, which also owns when a
//!    client gets and gives back a dedicated connection).
//! 5. **reply** (`replies`): one slot per expected reply source in command order, so replies
//!    cachet makes itself, replies from Redis and cachet's own commands reach the client in
//!    the order the commands were sent. Also where a client over its reply budget is held.
//!
//! Commands about the connection that cachet answers itself (CLIENT, AUTH, HELLO, RESET) are
//! in `local`; commands that act on other connections' work (SCRIPT KILL, CLIENT UNPAUSE,
//! ...) go out of band in `aside`; what a session counts, and INFO, in `observe`; EMIT/POLICY and WARM in
//! `policy` and `warm`. A client signed in as another ACL user uses that user's pool, lane and
//! spares (`upstream::identity`); what it may do with cachet's own commands is in `acl`.

mod acl;
mod aside;
mod batch;
mod client_list;
mod clients;
mod command;
mod inspect;
mod leases;
mod local;
mod observe;
mod pinning;
mod policy;
mod replies;
mod route;
mod tagging;
mod warm;

pub use clients::ClientRegistry;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::resp::reply::Reply;
use crate::resp::request::{BufferShare, RequestParser};
use crate::resp::{self, Protocol, Request, lowercase_name};
use crate::upstream::pool::{ReplyAccount, ReplyLimits};
use crate::upstream::{Dedicated, PoolReply, PoolRequest, ReplyTo, UpstreamError, UpstreamReply};
use batch::Batch;
use inspect::Inspect;
use leases::Snapshots;
use pinning::{Pinning, Wait, acquire, dedicated_io};
use replies::ReplyQueue;
use route::{ClientState, Divergence, Own, Route, SHARED_MAX_ARGS, route};

/// What every session uses, built once by `crate::app`.
pub struct Services {
    pub proxy: crate::config::ProxyConfig,
    /// TTL classes, for TAGSET's `TTL class`.
    pub ttl: crate::config::TtlConfig,
    pub limits: resp::Limits,
    pub request_buffers: crate::resp::request::RequestBuffers,
    pub rules: Arc<crate::tags::Rules>,
    pub index: Arc<crate::tags::index::TagIndex>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub upstream: Arc<crate::upstream::Upstream>,
    pub clients: ClientRegistry,
    pub warming: Arc<crate::warm::Warming>,
    pub heat: crate::warm::Heat,
    pub events: Arc<crate::events::Events>,
    pub health: Arc<crate::health::Health>,
    /// `[[acl]]`: what users other than cachet's may do with EMIT, WARM and POLICY (`acl`).
    pub acl: Vec<crate::config::AclGrant>,
}

/// Where the reply to a command (or batch) will come from.
enum Slot {
    /// A batch of commands sent to the pool.
    Pool,
    /// A batch whose replies are walked with a plan before they are forwarded.
    Inspect(Vec<Inspect>),
    /// A HELLO sent to the pool alone: its reply names the pooled connection's id, which
    /// is replaced by this client's own.
    Hello,
    /// One command on the dedicated connection.
    Dedicated,
    /// AUTH (or HELLO ... AUTH) on the dedicated connection: a reply that is not an error
    /// means Redis signed the client in, as some user.
    SignIn,
    /// The client's AUTH (or HELLO ... AUTH) as the first command on a bare connection:
    /// refused, the connection is dropped and the client is back where it was; accepted,
    /// the commands that put the connection in the client's state follow (`Hidden`).
    FirstSignIn,
    /// A command cachet sent on the dedicated connection itself: its reply is dropped.
    Hidden,
    /// cachet's own `CLIENT ID` on the dedicated connection: the reply is its Redis id.
    UpstreamId,
    /// SELECT on the dedicated connection: its `+OK` moves the client to that database
    /// (as `CLIENT LIST` shows it).
    Select(u32),
    /// RESET on the dedicated connection: its reply ends the connection's use.
    Reset,
    /// One command on the dedicated connection whose reply the client must not see: it
    /// reads these bytes instead.
    DedicatedReplaced(Bytes),
    /// A reply cachet made, waiting for the replies before it.
    Local(Bytes),
    /// A command cachet runs itself (TAGINVALIDATE, ...), answered by `Inbox::Done`.
    Async(u64),
}

/// Redis's default hard `client-output-buffer-limit` for pub/sub clients.
const OUTPUT_STREAM_LIMIT: usize = 32 << 20;
/// A client that may not send more commands now (waiting, or over its reply budget) is still
/// read this far ahead, so that its leaving is noticed: no session outlives its client.
const READ_AHEAD: usize = 64 * 1024;

/// What reaches a session from outside its own sockets, in one queue so the session waits
/// on one thing only.
#[derive(Debug)]
pub enum Inbox {
    /// Another client ran `CLIENT KILL ID` on this one.
    Kill,
    /// This client killed itself (`CLIENT KILL ... SKIPME no`): it runs nothing more and
    /// closes once the replies it is owed, that one included, are written.
    Close,
    /// cachet is shutting down: answer what was received, then close.
    Shutdown,
    /// The reply to the command cachet ran itself for slot `Slot::Async(id)`.
    Done(u64, Bytes),
    /// Another client's `CLIENT LIST` or `CLIENT KILL` asks how this one looks.
    Describe(tokio::sync::oneshot::Sender<client_list::ClientView>),
    /// The write for slot `Slot::Async(id)` may run: send it on cachet's pool in its place
    /// (`tagging`, `write_as_cachet`).
    Forward(u64, Bytes),
    /// The command for slot `Slot::Async(id)` ended Redis's side without a reply (a
    /// SHUTDOWN that succeeded): the client's connection closes too, as Redis closed it.
    Closed(u64),
}

/// The handle the server and other sessions use to reach this one.
pub struct ClientHandle {
    pub inbox: mpsc::UnboundedSender<Inbox>,
    /// The `CLIENT ID` of this client's dedicated connection at Redis, 0 when it has none.
    pub upstream_id: AtomicI64,
    pub addr: SocketAddr,
    /// Where the pool sends its replies; the bytes it owes, counted by the pool and this
    /// session.
    pub pooled: Arc<ReplyTo>,
}

pub struct Session {
    id: i64,
    services: Arc<Services>,
    handle: Arc<ClientHandle>,
    reader: ReadHalf,
    writer: WriteHalf,
    input: BytesMut,
    /// Where the request in progress in `input` was checked up to.
    parser: RequestParser,
    /// This client's part of every client's buffered input (`proxy.max_query_buffer_total`).
    buffered: BufferShare,
    output: BytesMut,
    protocol: Protocol,
    name: Option<Bytes>,
    authenticated: bool,
    /// Redis accepted an AUTH of this client's as another user (on its dedicated
    /// connection): Redis's limits for clients not yet authenticated no longer apply.
    signed_in: bool,
    /// Phase 3: the commands for the pool gathered from this read.
    batch: Batch,
    snapshots: Snapshots,
    /// Inspection plans of answered batches, kept for reuse.
    spare_plans: Vec<Vec<Inspect>>,
    /// This session's view of the per-command counters (see `observe`).
    command_counters: Arc<crate::metrics::CommandMap>,
    /// Phase 4: the replies owed, in command order.
    replies: ReplyQueue,
    inbox: mpsc::UnboundedReceiver<Inbox>,
    reply_tx: mpsc::UnboundedSender<Inbox>,
    /// Replies from the pool (see `upstream::pool`).
    pool_replies: mpsc::UnboundedReceiver<PoolReply>,
    /// The dedicated connection, why the client holds it, and what the session waits for.
    pinning: Pinning,
    /// The client half-closed or cachet is shutting down: read no more, but answer every
    /// command already received, then close.
    draining: bool,
    /// QUIT, a protocol error or a lost dedicated connection: run no more commands; close
    /// once the replies owed are written.
    closing: bool,
    /// The client closed its side: nothing more goes to a dedicated connection for it.
    client_gone: bool,
    last_activity: Instant,
    /// For `CLIENT LIST` (`client_list`): cachet's own address of this connection, when it
    /// connected, its database, its last command, the user it signed in as at Redis (`None`:
    /// the pool's), the one an AUTH on its way claims, and its tracking redirection.
    laddr: SocketAddr,
    created: Instant,
    db: u32,
    last_command: client_list::LastCommand,
    /// Its MULTI could not get a dedicated connection: until EXEC or DISCARD its commands
    /// are refused, not run outside the transaction (`failed_transaction`).
    multi_failed: bool,
    user: Option<Bytes>,
    pending_user: Option<Bytes>,
    redirect: i64,
    /// The Redis user whose pool, lane and spares this client uses: cachet's own, or the
    /// ACL user Redis signed it in as (`upstream::identity`).
    identity: Arc<crate::upstream::Identity>,
    /// The user and password of the sign-in Redis is judging on a bare connection (one at
    /// a time: the client's next command waits for the answer). Accepted, they open or
    /// join that user's identity; either way they are dropped here then.
    pending_login: Option<(Bytes, Bytes)>,
    /// An ACL change of this client's is on its way: the cached ACL decisions are dropped
    /// again once its reply is in (`after_reply`).
    acl_changed: bool,
}

enum Event {
    Inbox(Option<Inbox>),
    Pool(Option<PoolReply>),
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    UpstreamWrote(std::io::Result<usize>),
    Acquired(Result<Dedicated, UpstreamError>),
    Idle,
}
impl Session {
    pub fn new(
        services: Arc<Services>,
        stream: Stream,
        addr: SocketAddr,
        id: i64,
    ) -> (Self, Arc<ClientHandle>) {
        stream.set_nodelay(true).ok();
        let laddr = stream.local_addr().unwrap_or(addr);
        let (reader, writer) = stream.into_split();
        let (reply_tx, inbox) = mpsc::unbounded_channel();
        let (pool_tx, pool_replies) = mpsc::unbounded_channel();
        let proxy = &services.proxy;
        let limits = ReplyLimits {
            budget: proxy.client_reply_budget as usize,
            client: proxy.client_reply_limit as usize,
            total: proxy.reply_buffer_limit as usize,
        };
        let handle = Arc::new(ClientHandle {
            inbox: reply_tx.clone(),
            upstream_id: AtomicI64::new(0),
            addr,
            pooled: Arc::new(ReplyTo {
                tx: pool_tx,
                account: ReplyAccount::new(limits, services.clients.reply_bytes.clone()),
                addr,
            }),
        });
        let pool_size = services.upstream.config.pool_size.get();
        let command_counters = observe::counters(&services);
        let latency = services.metrics.command_latency.local();
        let buffered = services.request_buffers.share();
        let services_db = services.upstream.config.url.db;
        let identity = services.upstream.default_identity().clone();
        let session = Session {
            id,
            authenticated: services.upstream.config.credentials().is_none(),
            signed_in: false,
            services,
            handle: handle.clone(),
            reader,
            writer,
            input: BytesMut::new(),
            parser: RequestParser::default(),
            buffered,
            output: BytesMut::new(),
            protocol: Protocol::Resp2,
            name: None,
            batch: Batch::new(id as usize % pool_size),
            snapshots: Snapshots::default(),
            spare_plans: Vec::new(),
            command_counters,
            replies: ReplyQueue::new(latency),
            inbox,
            reply_tx,
            pool_replies,
            pinning: Pinning::default(),
            draining: false,
            closing: false,
            client_gone: false,
            last_activity: Instant::now(),
            laddr,
            created: Instant::now(),
            db: services_db,
            last_command: client_list::LastCommand::default(),
            multi_failed: false,
            user: None,
            pending_user: None,
            redirect: -1,
            identity,
            pending_login: None,
            acl_changed: false,
        };
        (session, handle)
    }

    /// Serves the client until it leaves, is killed, or cachet shuts down.
    pub async fn run(mut self, shutting_down: bool) {
        if shutting_down {
            self.draining = true;
        }
        let idle_limit = match self.services.proxy.client_idle_timeout_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let idle = tokio::time::sleep(idle_limit.unwrap_or(Duration::from_secs(86_400)));
        tokio::pin!(idle);
        let max_pipeline = self.services.proxy.max_pipeline.get();
        loop {
            let stopping = self.closing || self.draining;
            let owes_nothing = self.replies.slots.is_empty()
                && self.pinning.held.is_none()
                && matches!(self.pinning.wait, Wait::Nothing);
            if stopping && owes_nothing && self.output.is_empty() {
                break;
            }
            // Back-pressure: a client that does not read its replies is sent no more commands
            // (`Wait::Budget`) and read no further than `READ_AHEAD`, and its dedicated
            // connection is not read, instead of filling cachet's memory.
            let can_take = self.pinning.held.is_none()
                && matches!(self.pinning.wait, Wait::Nothing)
                && self.replies.in_flight < max_pipeline;
            // A session closing after a protocol error or QUIT still reads (and drops what it
            // reads), so that it notices its client leave while it waits for replies.
            let can_read = (!stopping && (can_take || self.input.len() < READ_AHEAD))
                || (self.closing && !self.draining);
            // A replication stream is read no faster than its client takes it: Redis applies
            // its own replica output limits to what waits on its side.
            let replicating = self.pinning.link.as_ref().is_some_and(|l| l.replication);
            let read_upstream = self.output.len() < self.handle.pooled.account.limits.budget * 8
                || (!replicating
                    && (self.pinning.divergence.pubsub() || self.pinning.divergence.stream));
            let event = {
                let Session {
                    reader,
                    writer,
                    input,
                    output,
                    inbox,
                    pool_replies,
                    pinning,
                    ..
                } = &mut self;
                tokio::select! {
                    biased;
                    message = inbox.recv() => Event::Inbox(message),
                    reply = pool_replies.recv() => Event::Pool(reply),
                    event = dedicated_io(&mut pinning.link, read_upstream) => event,
                    conn = acquire(&mut pinning.wait) => Event::Acquired(conn),
                    wrote = writer.write(output), if !output.is_empty() => Event::ClientWrote(wrote),
                    read = crate::net::read_available(reader, input), if can_read => Event::ClientRead(read),
                    _ = &mut idle, if idle_limit.is_some() => Event::Idle,
                }
            };
            match event {
                Event::Pool(Some(PoolReply::Reply(reply))) => self.on_pool_reply(reply),
                Event::Pool(Some(PoolReply::Overflow)) => break,
                Event::Pool(None) => unreachable!("the session's handle holds a sender"),
                Event::Inbox(Some(Inbox::Done(id, bytes))) => self.on_done(id, bytes),
                Event::Inbox(Some(Inbox::Forward(id, payload))) => self.on_forward(id, payload),
                Event::Inbox(Some(Inbox::Closed(id))) => {
                    self.closing = true;
                    self.on_done(id, Bytes::new());
                }
                Event::Inbox(Some(Inbox::Kill)) => break,
                Event::Inbox(Some(Inbox::Describe(tx))) => {
                    let _ = tx.send(self.view());
                }
                Event::Inbox(Some(Inbox::Close)) => self.closing = true,
                Event::Inbox(Some(Inbox::Shutdown)) => {
                    // A subscriber or MONITOR is owed nothing but a stream: close it now.
                    if self.pinning.divergence.pubsub() || self.pinning.divergence.stream {
                        break;
                    }
                    self.draining = true;
                }
                Event::Inbox(None) => unreachable!("the session holds a sender"),
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => {
                    // The client is gone. Like Redis, which frees a client at EOF, leave
                    // nothing of it waiting at Redis: a command unanswered on its dedicated
                    // connection (a BLPOP would still pop an element for nobody; a RESET
                    // whose reply may never come) takes the connection with it, and so does
                    // one being opened. Pooled replies are just let through.
                    let waits_on_dedicated =
                        matches!(self.pinning.wait, Wait::Acquire(_) | Wait::Reset)
                            || self
                                .pinning
                                .link
                                .as_ref()
                                .is_some_and(|l| l.outstanding > 0 || l.resets > 0);
                    if waits_on_dedicated {
                        self.pinning.link = None;
                        break;
                    }
                    self.client_gone = true;
                    self.draining = true;
                }
                Event::ClientRead(Ok(_)) if self.closing => {
                    self.input.clear();
                    self.buffered.set(0);
                }
                Event::ClientRead(Ok(_)) => {
                    self.last_activity = Instant::now();
                    self.process_input();
                }
                Event::ClientWrote(Ok(n)) => self.output.advance(n),
                Event::ClientWrote(Err(_)) => break,
                Event::UpstreamRead(Ok(0)) => self.dedicated_lost("Redis closed the connection"),
                Event::UpstreamRead(Err(e)) => self.dedicated_lost(&e.to_string()),
                Event::UpstreamRead(Ok(_)) => self.on_dedicated_data(),
                Event::UpstreamWrote(Ok(n)) => {
                    if let Some(link) = &mut self.pinning.link {
                        link.outgoing.advance(n);
                    }
                }
                Event::UpstreamWrote(Err(e)) => self.dedicated_lost(&e.to_string()),
                Event::Acquired(result) => self.on_acquired(result),
                Event::Idle => {
                    let limit = idle_limit.expect("armed only with a limit");
                    let blocked_or_subscribed = !self.replies.slots.is_empty()
                        || self.pinning.link.as_ref().is_some_and(|l| {
                            l.outstanding > 0
                                || self.pinning.divergence.pubsub()
                                || self.pinning.divergence.stream
                        });
                    if self.last_activity.elapsed() >= limit && !blocked_or_subscribed {
                        tracing::debug!(client = self.id, "closing idle client");
                        break;
                    }
                    let from = if blocked_or_subscribed {
                        Instant::now()
                    } else {
                        self.last_activity
                    };
                    idle.as_mut().reset(from + limit);
                }
            }
            self.flush_batch();
            self.try_leave_dedicated();
            // Redis's own client-output-buffer-limit for pub/sub: a subscriber this far
            // behind is disconnected rather than buffered for without end.
            let streaming = (self.pinning.divergence.pubsub() || self.pinning.divergence.stream)
                && !self.pinning.link.as_ref().is_some_and(|l| l.replication);
            if streaming && self.output.len() > OUTPUT_STREAM_LIMIT {
                tracing::warn!(
                    client = self.id,
                    buffered = self.output.len(),
                    "closing a subscriber that does not read"
                );
                break;
            }
            // Most replies fit the socket buffer: write them now rather than on the next turn.
            if !self.output.is_empty() {
                match self.writer.try_write(&self.output) {
                    Ok(n) => self.output.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            // Last, after the write: a budget freed by it must resume parsing now, as no
            // event may come to wake the session later.
            self.check_budget();
            self.handle.pooled.account.publish_output(self.output.len());
        }
        let _ = self.writer.shutdown().await;
        self.finish().await;
    }

    pub(super) async fn finish(mut self) {
        // Pool replies still queued are nobody's now: take them off the count. Closed first,
        // so the pool's later replies fail to arrive and are taken off by the pool.
        self.pool_replies.close();
        while let Ok(message) = self.pool_replies.try_recv() {
            if let PoolReply::Reply(UpstreamReply {
                result: Ok(bytes), ..
            }) = message
            {
                self.handle.pooled.account.taken(bytes.len());
            }
        }
        self.handle.pooled.account.publish_output(0);
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        if let Some(link) = self.pinning.link.take()
            && self.is_clean(&link)
        {
            self.identity
                .release(&self.services.upstream, link.conn)
                .await;
        }
    }

    /// Parses and dispatches buffered commands until input runs out or the session must wait.
    pub(super) fn process_input(&mut self) {
        let limits = self.services.limits;
        let max_pipeline = self.services.proxy.max_pipeline.get();
        self.batch.clock_ms = None;
        while !self.closing && matches!(self.pinning.wait, Wait::Nothing) {
            let request = match self.pinning.held.take() {
                Some(request) => request,
                None => {
                    if self.replies.in_flight >= max_pipeline {
                        break;
                    }
                    match self.parser.parse(
                        &mut self.input,
                        &limits,
                        self.authenticated || self.signed_in,
                    ) {
                        Ok(Some(request)) => request,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(client = self.id, %error, "closing client after protocol error");
                            self.count_protocol_error();
                            self.reply_local(Reply::error(format!("ERR {error}")));
                            self.closing = true;
                            break;
                        }
                    }
                }
            };
            self.dispatch(request);
        }
        self.flush_batch();
        self.account_input();
    }

    /// Counts this client's buffered input against the budget all clients share, and closes
    /// a client whose unfinished request would take it past the budget. Small requests in
    /// progress (up to 64 KiB) never do: ordinary clients are never refused for what a
    /// hostile one holds.
    pub(super) fn account_input(&mut self) {
        if self.input.is_empty() && self.input.capacity() > 1 << 20 {
            // What a big request left behind.
            self.input = BytesMut::new();
        }
        let over = self.buffered.set(self.input.len());
        if over && self.input.len() > 64 * 1024 && !self.closing {
            tracing::warn!(
                client = self.id,
                buffered = self.input.len(),
                "closing a client: the request buffers of all clients are full"
            );
            self.input.clear();
            self.buffered.set(0);
            self.reply_local(Reply::error(
                "ERR cachet's buffers for requests of all clients are full (proxy.max_query_buffer_total)",
            ));
            self.closing = true;
        }
    }

    pub(super) fn dispatch(&mut self, request: Request) {
        if self.over_budget(self.batch.count) {
            // Checked per command, so one read cannot send more than the budget allows.
            self.pinning.held = Some(request);
            self.pinning.wait = Wait::Budget;
            return;
        }
        if self.client_gone && self.pinning.link.is_some() {
            // Nobody will read its reply (see `switch_to_dedicated`).
            self.closing = true;
            return;
        }
        let mut scratch = [0u8; 64];
        let name = lowercase_name(request.name(), &mut scratch);
        self.count_command(name);
        if let Some(name) = name {
            self.last_command.set(name, &request);
        }
        if self.multi_failed {
            return self.failed_transaction(request, name.unwrap_or_default());
        }
        let table = self.services.upstream.commands();
        let state = ClientState {
            authenticated: self.authenticated,
            pinned: self.pinning.link.is_some(),
            divergence: self.pinning.divergence,
            pool_db: self.services.upstream.config.url.db,
            writes_paused: self.services.upstream.pauses.writes_paused(),
            other_user: !self.identity.is_default(),
        };
        if name == Some(b"acl") && changes_acl(&request) {
            // Rights may change: decisions cached for cachet's commands are dropped now, and
            // again once Redis has answered it (`after_reply`), so a check that ran before
            // the change reached Redis is not reused either.
            self.services.upstream.acl().flush();
            self.acl_changed = true;
        }
        let route = route(&request, name, &state, &table);
        // Only the routes of a name longer than any command's have no name.
        let name = name.unwrap_or_default();
        match route {
            Route::Refuse(reason) => self.reply_local(reason),
            Route::Quit => {
                self.reply_local(Reply::ok());
                self.closing = true;
            }
            Route::Client => self.client_command(request),
            Route::Aside => self.aside_command(request, name),
            Route::Functions => self.functions_command(request),
            Route::Reset => self.reset_local(request),
            Route::Auth => self.auth(request),
            Route::Hello => self.hello(request),
            Route::Info => self.info_command(request),
            Route::Command => self.command_command(request),
            Route::Own(Own::Warm) => self.warm_command(request),
            Route::Own(Own::Policy) => self.policy_command(request, name),
            Route::Own(Own::Tag) => self.tag_command(request, name),
            Route::RefuseQueued(reason) => {
                self.send_dedicated(request, name);
                if let Some(slot) = self.replies.slots.back_mut() {
                    *slot = Slot::DedicatedReplaced(reason.encode(self.protocol));
                }
            }
            Route::Pool { frames } => self.forward_frames(request, frames),
            Route::Tracked(info) => self.forward_tracked(request, name, info),
            Route::Dedicated => self.send_dedicated_tracked(request, name),
            Route::DedicatedPlain => self.send_dedicated(request, b""),
            Route::Pin => self.switch_to_dedicated(request),
        }
    }
}

/// ACL subcommands that change users' rights.
fn changes_acl(request: &Request) -> bool {
    request.arg(1).is_some_and(|sub| {
        matches!(
            sub.to_ascii_lowercase().as_slice(),
            b"setuser" | b"deluser" | b"load"
        )
    })
}
