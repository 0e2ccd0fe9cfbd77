//! One client connection: its state, and the path each of its commands takes.
//!
//! A command goes through these phases, in order:
//!
//! 1. **parse** (`resp::request`): a whole frame, within the size limits, or a protocol error
//!    that is answered and closes the connection, as Redis does.
//! 2. **classify** (`dispatch`): does cachet answer it (CLIENT SETNAME/GETNAME/ID, AUTH with the
//!    pool's credentials, RESET, QUIT), can it share the pool, or does it change connection
//!    state so that this client needs a connection of its own (see `needs_dedicated`)?
//! 3. **upstream**: pooled commands from one read are sent as one batch; on a dedicated
//!    connection they are written as they come.
//! 4. **reply**: `slots` keeps one entry per expected reply source in command order, so
//!    replies cachet makes itself and replies from Redis reach the client in the order the
//!    commands were sent.
//!
//! Switching between the pool and a dedicated connection (or between the RESP2 and RESP3
//! pools) first waits until every earlier reply has arrived: commands never overtake each
//! other on two connections.

mod inspect;
mod leases;
mod observe;
mod policy;
mod tagging;
mod warm;

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
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::resp::commands::CommandInfo;
use crate::resp::reply::Reply;
use crate::resp::request::{BufferShare, RequestParser};
use crate::resp::{self, Protocol, Request, lowercase_name};
use crate::server::Shared;
use crate::upstream::pool::{ReplyAccount, ReplyLimits};
use crate::upstream::{Dedicated, PoolRequest, UpstreamError, UpstreamReply};
use inspect::Inspect;
use leases::Snapshots;

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

/// Why a client holds a dedicated connection. While any of these is set it keeps it.
#[derive(Debug, Default, Clone, Copy)]
struct Divergence {
    multi: bool,
    watch: bool,
    /// Subscribed to channels (normal + pattern) and shard channels.
    subscriptions: (i64, i64),
    /// MONITOR, SYNC/PSYNC: the connection became a stream of events.
    stream: bool,
    /// SELECT of a database other than the pool's.
    database: bool,
    /// AUTH or HELLO AUTH with credentials other than the pool's.
    user: bool,
    /// CLIENT TRACKING, CLIENT REPLY, CLIENT NO-EVICT/NO-TOUCH, CLIENT INFO.
    client_mode: bool,
    /// CLIENT REPLY OFF/SKIP: replies are not one per command any more.
    reply_mode: bool,
}

impl Divergence {
    fn pubsub(&self) -> bool {
        self.subscriptions.0 > 0 || self.subscriptions.1 > 0
    }

    fn any(&self) -> bool {
        self.multi
            || self.watch
            || self.pubsub()
            || self.stream
            || self.database
            || self.user
            || self.client_mode
    }
}

struct DedicatedLink {
    conn: Dedicated,
    incoming: BytesMut,
    outgoing: BytesMut,
    /// The reply frame being measured at the front of `incoming`.
    frame: resp::FrameScanner,
    /// Replies still expected, one per slot of kind `Dedicated`.
    outstanding: usize,
    /// RESET commands sent whose `+RESET` has not come back.
    resets: usize,
    /// Has been subscribed or a stream (MONITOR, CLIENT REPLY, SCRIPT DEBUG): its replies
    /// were not one per command, so it never goes back to the pool or the spares; the
    /// client keeps it until RESET or disconnect.
    streamed: bool,
}

/// A request larger than this (bytes, or arguments) travels on a connection of its own:
/// Redis reads and parses a connection's commands in order, so on the shared connection the
/// other clients' commands would wait behind it (a 21 MB command of 3 million arguments
/// held them for 200-500 ms). At these sizes Redis takes about a millisecond.
const SHARED_MAX_BYTES: usize = 1 << 20;
const SHARED_MAX_ARGS: usize = 10_000;

/// Redis's default hard `client-output-buffer-limit` for pub/sub clients.
const OUTPUT_STREAM_LIMIT: usize = 32 << 20;
/// A client that may not send more commands now (waiting, or over its reply budget) is still
/// read this far ahead, so that its leaving is noticed: no session outlives its client.
const READ_AHEAD: usize = 64 * 1024;
/// What a command's reply is taken to cost before this client's replies have been measured:
/// a new client has at most `client_reply_budget / 16 KiB` (64) commands in flight until its
/// first replies come back.
const FIRST_REPLY_ESTIMATE: usize = 16 * 1024;

type Acquire = Pin<Box<dyn Future<Output = Result<Dedicated, UpstreamError>> + Send>>;

/// What the session waits for before it parses the next command.
enum Wait {
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

/// What reaches a session from outside its own sockets, in one queue so the session waits
/// on one thing only.
#[derive(Debug)]
pub enum Inbox {
    /// Replies to a batch this client sent to the pool.
    Reply(UpstreamReply),
    /// Another client ran `CLIENT KILL ID` on this one.
    Kill,
    /// cachet is shutting down: answer what was received, then close.
    Shutdown,
    /// The reply to the command cachet ran itself for slot `Slot::Async(id)`.
    Done(u64, Bytes),
    /// This client owes more replies than its limit: the pool drops them; close at once.
    Overflow,
}

/// The handle the server and other sessions use to reach this one.
pub struct ClientHandle {
    pub inbox: mpsc::UnboundedSender<Inbox>,
    /// The `CLIENT ID` of this client's dedicated connection at Redis, 0 when it has none.
    pub upstream_id: AtomicI64,
    pub addr: SocketAddr,
    /// The replies it owes, counted by the pool and this session.
    pub replies: ReplyAccount,
}

pub struct Session {
    id: i64,
    shared: Arc<Shared>,
    handle: Arc<ClientHandle>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
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
    /// The pooled connection this client's batches go to (sticky, so they stay in order).
    pool_index: usize,
    batch: BytesMut,
    batch_count: usize,
    /// The inspection plan of the batch being gathered, if it needs one.
    batch_inspect: Option<Vec<Inspect>>,
    /// Reply frames gathered since the plan's last entry.
    batch_plain: usize,
    /// Tagged SETs waiting to join the batch as one transaction (see `tagging`).
    fast: crate::tags::index::FastBatch,
    /// cachet's clock (ms since the Unix epoch) as the tagged SETs of the client read being
    /// processed read it: the scores of their index entries start from it.
    fast_clock_ms: Option<u64>,
    snapshots: Snapshots,
    /// Inspection plans of answered batches, kept for reuse.
    spare_plans: Vec<Vec<Inspect>>,
    /// This session's view of the per-command counters (see `observe`).
    command_counters: Arc<crate::metrics::CommandMap>,
    /// When each pooled batch still unanswered was sent, in slot order.
    sent: VecDeque<std::time::Instant>,
    /// Command latencies, flushed to the shared histogram once per batch of replies.
    latency: prometheus::local::LocalHistogram,
    slots: VecDeque<Slot>,
    next_async: u64,
    /// Commands whose replies are still expected (the pipeline depth).
    in_flight: usize,
    inbox: mpsc::UnboundedReceiver<Inbox>,
    reply_tx: mpsc::UnboundedSender<Inbox>,
    dedicated: Option<DedicatedLink>,
    divergence: Divergence,
    held: Option<Request>,
    wait: Wait,
    /// The client half-closed or cachet is shutting down: read no more, but answer every
    /// command already received, then close.
    draining: bool,
    /// QUIT, a protocol error or a lost dedicated connection: run no more commands; close
    /// once the replies owed are written.
    closing: bool,
    /// The client closed its side: nothing more goes to a dedicated connection for it.
    client_gone: bool,
    /// Bytes one command's reply is expected to take (see `note_replies`).
    reply_estimate: usize,
    last_activity: Instant,
}

enum Event {
    Inbox(Option<Inbox>),
    ClientRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    UpstreamRead(std::io::Result<usize>),
    UpstreamWrote(std::io::Result<usize>),
    Acquired(Result<Dedicated, UpstreamError>),
    Idle,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        stream: TcpStream,
        addr: SocketAddr,
        id: i64,
    ) -> (Self, Arc<ClientHandle>) {
        stream.set_nodelay(true).ok();
        let (reader, writer) = stream.into_split();
        let (reply_tx, inbox) = mpsc::unbounded_channel();
        let proxy = &shared.config.proxy;
        let limits = ReplyLimits {
            budget: proxy.client_reply_budget as usize,
            client: proxy.client_reply_limit as usize,
            total: proxy.reply_buffer_limit as usize,
        };
        let handle = Arc::new(ClientHandle {
            inbox: reply_tx.clone(),
            upstream_id: AtomicI64::new(0),
            addr,
            replies: ReplyAccount::new(limits, shared.clients.reply_bytes.clone()),
        });
        let pool_size = shared.upstream.config.pool_size.get();
        let command_counters = observe::counters(&shared);
        let latency = shared.metrics.command_latency.local();
        let buffered = shared.request_buffers.share();
        let session = Session {
            id,
            authenticated: shared.upstream.config.credentials().is_none(),
            signed_in: false,
            shared,
            handle: handle.clone(),
            reader,
            writer,
            input: BytesMut::new(),
            parser: RequestParser::default(),
            buffered,
            output: BytesMut::new(),
            protocol: Protocol::Resp2,
            name: None,
            pool_index: id as usize % pool_size,
            batch: BytesMut::new(),
            batch_count: 0,
            fast: Default::default(),
            fast_clock_ms: None,
            batch_inspect: None,
            batch_plain: 0,
            snapshots: Snapshots::default(),
            spare_plans: Vec::new(),
            command_counters,
            sent: VecDeque::new(),
            latency,
            slots: VecDeque::new(),
            next_async: 0,
            in_flight: 0,
            inbox,
            reply_tx,
            dedicated: None,
            divergence: Divergence::default(),
            held: None,
            wait: Wait::Nothing,
            draining: false,
            closing: false,
            client_gone: false,
            reply_estimate: FIRST_REPLY_ESTIMATE,
            last_activity: Instant::now(),
        };
        (session, handle)
    }

    /// Serves the client until it leaves, is killed, or cachet shuts down.
    pub async fn run(mut self, shutting_down: bool) {
        if shutting_down {
            self.draining = true;
        }
        let idle_limit = match self.shared.config.proxy.client_idle_timeout_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let idle = tokio::time::sleep(idle_limit.unwrap_or(Duration::from_secs(86_400)));
        tokio::pin!(idle);
        let max_pipeline = self.shared.config.proxy.max_pipeline.get();
        loop {
            let stopping = self.closing || self.draining;
            let owes_nothing =
                self.slots.is_empty() && self.held.is_none() && matches!(self.wait, Wait::Nothing);
            if stopping && owes_nothing && self.output.is_empty() {
                break;
            }
            // Back-pressure: a client that does not read its replies is sent no more commands
            // (`Wait::Budget`) and read no further than `READ_AHEAD`, and its dedicated
            // connection is not read, instead of filling cachet's memory.
            let can_take = self.held.is_none()
                && matches!(self.wait, Wait::Nothing)
                && self.in_flight < max_pipeline;
            // A session closing after a protocol error or QUIT still reads (and drops what it
            // reads), so that it notices its client leave while it waits for replies.
            let can_read = (!stopping && (can_take || self.input.len() < READ_AHEAD))
                || (self.closing && !self.draining);
            let read_upstream = self.output.len() < self.handle.replies.limits.budget * 8
                || self.divergence.pubsub()
                || self.divergence.stream;
            let event = {
                let Session {
                    reader,
                    writer,
                    input,
                    output,
                    inbox,
                    dedicated,
                    wait,
                    ..
                } = &mut self;
                tokio::select! {
                    biased;
                    message = inbox.recv() => Event::Inbox(message),
                    event = dedicated_io(dedicated, read_upstream) => event,
                    conn = acquire(wait) => Event::Acquired(conn),
                    wrote = writer.write(output), if !output.is_empty() => Event::ClientWrote(wrote),
                    read = crate::net::read_available(reader, input), if can_read => Event::ClientRead(read),
                    _ = &mut idle, if idle_limit.is_some() => Event::Idle,
                }
            };
            match event {
                Event::Inbox(Some(Inbox::Reply(reply))) => self.on_pool_reply(reply),
                Event::Inbox(Some(Inbox::Done(id, bytes))) => self.on_done(id, bytes),
                Event::Inbox(Some(Inbox::Kill)) => break,
                Event::Inbox(Some(Inbox::Overflow)) => break,
                Event::Inbox(Some(Inbox::Shutdown)) => {
                    // A subscriber or MONITOR is owed nothing but a stream: close it now.
                    if self.divergence.pubsub() || self.divergence.stream {
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
                    let waits_on_dedicated = matches!(self.wait, Wait::Acquire(_) | Wait::Reset)
                        || self
                            .dedicated
                            .as_ref()
                            .is_some_and(|l| l.outstanding > 0 || l.resets > 0);
                    if waits_on_dedicated {
                        self.dedicated = None;
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
                    if let Some(link) = &mut self.dedicated {
                        link.outgoing.advance(n);
                    }
                }
                Event::UpstreamWrote(Err(e)) => self.dedicated_lost(&e.to_string()),
                Event::Acquired(result) => self.on_acquired(result),
                Event::Idle => {
                    let limit = idle_limit.expect("armed only with a limit");
                    let blocked_or_subscribed = !self.slots.is_empty()
                        || self.dedicated.as_ref().is_some_and(|l| {
                            l.outstanding > 0 || self.divergence.pubsub() || self.divergence.stream
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
            let streaming = self.divergence.pubsub() || self.divergence.stream;
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
            self.handle.replies.publish_output(self.output.len());
        }
        let _ = self.writer.shutdown().await;
        self.finish().await;
    }

    /// Holds the client's further commands while it owes more than its reply budget: what
    /// it has not read, plus what its commands in flight are expected to return.
    fn check_budget(&mut self) {
        let over = self.over_budget(0);
        match self.wait {
            Wait::Nothing if over => self.wait = Wait::Budget,
            Wait::Budget if !over => {
                self.wait = Wait::Nothing;
                self.process_input();
            }
            _ => {}
        }
    }

    /// Whether the client owes more than its budget, counting `pending` commands not yet
    /// in flight.
    fn over_budget(&self, pending: usize) -> bool {
        let expected = (self.in_flight + pending) * self.reply_estimate;
        self.output.len() + expected > self.handle.replies.limits.budget
    }

    /// Learns what this client's replies cost from `bytes` for `count` of them: a rise is
    /// believed at once, a fall halves the estimate per batch, so a client cannot lower it
    /// in one step before asking for large replies.
    fn note_replies(&mut self, bytes: usize, count: usize) {
        let average = bytes / count.max(1);
        self.reply_estimate = average.max(self.reply_estimate / 2).max(1);
    }

    async fn finish(mut self) {
        // Replies still in the inbox are nobody's now: take them off the count. Closed first,
        // so the pool's later replies fail to arrive and are taken off by the pool.
        self.inbox.close();
        while let Ok(message) = self.inbox.try_recv() {
            if let Inbox::Reply(UpstreamReply {
                result: Ok(bytes), ..
            }) = message
            {
                self.handle.replies.taken(bytes.len());
            }
        }
        self.handle.replies.publish_output(0);
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        if let Some(link) = self.dedicated.take()
            && self.is_clean(&link)
        {
            self.shared.upstream.release(link.conn).await;
        }
    }

    /// Parses and dispatches buffered commands until input runs out or the session must wait.
    fn process_input(&mut self) {
        let limits = self.shared.limits;
        let max_pipeline = self.shared.config.proxy.max_pipeline.get();
        self.fast_clock_ms = None;
        while !self.closing && matches!(self.wait, Wait::Nothing) {
            let request = match self.held.take() {
                Some(request) => request,
                None => {
                    if self.in_flight >= max_pipeline {
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
    fn account_input(&mut self) {
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

    // ---- phase 2: classify -------------------------------------------------------------

    fn dispatch(&mut self, request: Request) {
        if self.over_budget(self.batch_count) {
            // Checked per command, so one read cannot send more than the budget allows.
            self.held = Some(request);
            self.wait = Wait::Budget;
            return;
        }
        if self.client_gone && self.dedicated.is_some() {
            // Nobody will read its reply (see `switch_to_dedicated`).
            self.closing = true;
            return;
        }
        let mut scratch = [0u8; 64];
        let name = lowercase_name(request.name(), &mut scratch);
        self.count_command(name);
        let Some(name) = name else {
            // Longer than any command: let Redis say it is unknown, on whichever connection
            // the client is using.
            if !self.authenticated && self.dedicated.is_none() {
                return self.reply_local(Reply::error("NOAUTH Authentication required."));
            }
            return self.route(request, b"");
        };
        let name: &[u8] = name;
        if !self.authenticated
            && self.dedicated.is_none()
            && !matches!(name, b"auth" | b"hello" | b"quit" | b"reset")
        {
            return self.reply_local(Reply::error("NOAUTH Authentication required."));
        }
        match name {
            b"quit" => {
                self.reply_local(Reply::ok());
                self.closing = true;
            }
            b"client" => self.client_command(request),
            b"reset" if self.dedicated.is_none() => self.reset_local(request),
            b"auth" if self.dedicated.is_none() => self.auth(request),
            b"hello" if self.dedicated.is_none() => self.hello(request),
            // Not subscribed, so Redis confirms each channel named (or once for none).
            b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" if self.dedicated.is_none() => {
                let frames = request.args.len().max(2) - 1;
                self.forward_frames(request, frames)
            }
            b"info" if self.dedicated.is_none() => self.info_command(request),
            b"warm" | b"emit" | b"policy" | b"taginvalidate" | b"tagset" | b"tag" | b"tags"
            | b"tagkeys" => self.own_command(request, name),
            _ if self.dedicated.is_some() => self.send_dedicated_tracked(request, name),
            _ => {
                // One table lookup serves both the routing and the index phase.
                let table = self.shared.upstream.commands();
                let info = table.get(name);
                match self.needs_dedicated(&request, name, info) {
                    true => self.switch_to_dedicated(request),
                    false => self.forward_tracked(request, name, info),
                }
            }
        }
    }

    /// Commands that change this connection's state at Redis (or may block it) cannot share
    /// a pooled connection.
    fn needs_dedicated(&self, request: &Request, name: &[u8], info: Option<&CommandInfo>) -> bool {
        if request.raw.len() > SHARED_MAX_BYTES || request.args.len() > SHARED_MAX_ARGS {
            return true;
        }
        match name {
            b"multi" | b"watch" | b"subscribe" | b"psubscribe" | b"ssubscribe" | b"monitor"
            | b"sync" | b"psync" | b"wait" | b"waitaof" => true,
            // The Lua debugger takes over the connection at the next EVAL.
            b"script" => request
                .arg(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"debug")),
            b"select" => !self.is_pool_db(request.arg(1)),
            b"xread" | b"xreadgroup" => request.args[1..]
                .iter()
                .any(|a| a.eq_ignore_ascii_case(b"block")),
            _ => info.is_some_and(|info| info.blocking),
        }
    }

    /// Whether a SELECT argument names the pool's database (as a number, like Redis reads it).
    fn is_pool_db(&self, arg: Option<&[u8]>) -> bool {
        arg.and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<u32>().ok())
            == Some(self.shared.upstream.config.url.db)
    }

    /// The one gate every command of cachet's own (WARM, EMIT, POLICY, the TAG commands)
    /// passes: cachet runs them with its own upstream credentials, on its own connection, in
    /// the pool's database, so only a client that is that user there may ask for them.
    fn own_command(&mut self, request: Request, name: &[u8]) {
        let refusal = if self.divergence.user {
            // AUTH as another user, or a failed AUTH (only Redis knew which, on the client's
            // own connection): either way not cachet's user, whose rights cachet acts with.
            Some(Reply::error(format!(
                "NOPERM only the user cachet connects as may run cachet's '{}' command",
                String::from_utf8_lossy(name)
            )))
        } else if !self.authenticated {
            Some(Reply::error("NOAUTH Authentication required."))
        } else if self.divergence.database {
            Some(Reply::error(format!(
                "ERR cachet's '{}' command works in database {} only",
                String::from_utf8_lossy(name),
                self.shared.upstream.config.url.db
            )))
        } else if self.divergence.multi {
            Some(Reply::error(format!(
                "ERR cachet's '{}' command cannot run inside MULTI",
                String::from_utf8_lossy(name)
            )))
        } else {
            None
        };
        match refusal {
            // Queued at Redis too, where it is unknown: Redis then aborts the transaction at
            // EXEC, as after any command refused while queued. The client reads cachet's
            // reason instead of Redis's.
            Some(reason) if self.divergence.multi && self.dedicated.is_some() => {
                self.send_dedicated(request, name);
                if let Some(slot) = self.slots.back_mut() {
                    *slot = Slot::DedicatedReplaced(reason.encode(self.protocol));
                }
            }
            Some(reason) => self.reply_local(reason),
            None => match name {
                b"warm" => self.warm_command(request),
                b"emit" | b"policy" => self.policy_command(request, name),
                _ => self.tag_command(request, name),
            },
        }
    }

    fn client_command(&mut self, request: Request) {
        let sub = request
            .arg(1)
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let dedicated = self.dedicated.is_some();
        if self.divergence.multi {
            // Queued like any command, so EXEC's reply has one entry per command; inside a
            // transaction CLIENT ID therefore reports the Redis connection's own id.
            if sub == b"setname" && request.args.len() == 3 {
                let name = request.args[2].clone();
                self.name = (!name.is_empty()).then_some(name);
            }
            return self.send_dedicated(request, b"client");
        }
        match (sub.as_slice(), request.args.len()) {
            (b"id", 2) => self.reply_local(Reply::Integer(self.id)),
            (b"getname", 2) if !dedicated => self.reply_local(match &self.name {
                Some(name) => Reply::Bulk(name.clone()),
                None => Reply::Null,
            }),
            (b"setname", 3) => {
                let name = request.args[2].clone();
                if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    return self.reply_local(Reply::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = (!name.is_empty()).then_some(name);
                if dedicated {
                    self.send_dedicated(request, b"client");
                } else {
                    self.reply_local(Reply::ok());
                }
            }
            // A client authenticated as another user goes to Redis, which checks its rights.
            (b"kill", 4)
                if !self.divergence.user
                    && request
                        .arg(2)
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"id")) =>
            {
                let target = std::str::from_utf8(&request.args[3])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                // Unregistered at once, as Redis frees a killed client at once: a second KILL of
                // the same id finds nothing.
                match target.and_then(|id| self.shared.clients.remove(id)) {
                    Some(client) => {
                        let _ = client.inbox.send(Inbox::Kill);
                        self.reply_local(Reply::Integer(1));
                    }
                    None => self.route(request, b"client"),
                }
            }
            (b"unblock", 3 | 4) => {
                let target = std::str::from_utf8(&request.args[2])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|id| self.shared.clients.get(id));
                match target {
                    // Unblock the client's dedicated connection, where it is blocked.
                    Some(client) => {
                        let real = client.upstream_id.load(Ordering::Relaxed);
                        let mut args = request.args.clone();
                        args[2] = Bytes::from(real.to_string());
                        self.route(Request::from_args(args), b"client");
                    }
                    None => self.route(request, b"client"),
                }
            }
            (b"tracking", _) => {
                let on = request
                    .arg(2)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
                if on || dedicated {
                    let request = match self.translate_redirect(request) {
                        Ok(request) => request,
                        Err(refusal) => return self.reply_local(refusal),
                    };
                    self.divergence.client_mode |= on;
                    self.route_dedicated(request, b"client");
                } else {
                    self.forward(request);
                }
            }
            (b"reply", 3) => {
                let mode = request.args[2].to_ascii_lowercase();
                if matches!(mode.as_slice(), b"off" | b"skip") {
                    self.divergence.reply_mode = true;
                    self.divergence.client_mode = true;
                }
                self.route_dedicated(request, b"client");
            }
            (b"no-evict" | b"no-touch" | b"info", _) => {
                self.divergence.client_mode = true;
                self.route_dedicated(request, b"client");
            }
            _ => self.route(request, b"client"),
        }
    }

    /// CLIENT TRACKING ... REDIRECT <id>: cachet's client ids are its own; Redis needs the
    /// id of the target client's dedicated connection.
    /// Redirecting to an id that is not one of cachet's clients is refused: it could only
    /// name one of cachet's own upstream connections, which must never receive pushes.
    fn translate_redirect(&self, request: Request) -> Result<Request, Reply> {
        let Some(pos) = request
            .args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"redirect"))
        else {
            return Ok(request);
        };
        let Some(id) = request
            .arg(pos + 1)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<i64>().ok())
        else {
            // Let Redis word the syntax error.
            return Ok(request);
        };
        let real = self
            .shared
            .clients
            .get(id)
            .map(|target| target.upstream_id.load(Ordering::Relaxed))
            .filter(|&real| real != 0)
            .ok_or_else(|| Reply::error("ERR The client ID you want redirect to does not exist"))?;
        let mut args = request.args;
        args[pos + 1] = Bytes::from(real.to_string());
        Ok(Request::from_args(args))
    }

    /// Sends to the dedicated connection if there is one, else to the pool.
    fn route(&mut self, request: Request, name: &[u8]) {
        if self.dedicated.is_some() {
            self.send_dedicated(request, name);
        } else {
            self.forward(request);
        }
    }

    fn route_dedicated(&mut self, request: Request, name: &[u8]) {
        if self.dedicated.is_some() {
            self.send_dedicated(request, name);
        } else {
            self.switch_to_dedicated(request);
        }
    }

    fn credentials_match(&self, user: &[u8], password: &[u8]) -> bool {
        self.shared
            .upstream
            .config
            .credentials()
            .is_some_and(|(u, p)| {
                // Both compared, always: which one differs must not show in the time taken.
                let user_matches = secret_eq(u.as_bytes(), user);
                let password_matches = secret_eq(p.expose().as_bytes(), password);
                user_matches & password_matches
            })
    }

    fn auth(&mut self, request: Request) {
        let (user, password): (&[u8], Option<&[u8]>) = match request.args.len() {
            2 => (b"default", request.arg(1)),
            3 => (&request.args[1], request.arg(2)),
            _ => (b"", None),
        };
        match password {
            Some(password) if self.credentials_match(user, password) => {
                self.authenticated = true;
                self.reply_local(Reply::ok());
            }
            // Wrong arity goes to Redis for its own error; anything else is another user
            // (or a wrong password): only Redis can say, on a connection of the client's own.
            None if request.args.len() != 2 && request.args.len() != 3 => self.forward(request),
            _ => {
                self.divergence.user = true;
                self.switch_to_dedicated(request);
            }
        }
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]: the protocol picks the pool, the
    /// name is kept by cachet, credentials other than the pool's need a dedicated connection.
    fn hello(&mut self, request: Request) {
        let version = match request.arg(1) {
            None => None,
            Some(b"2") => Some(Protocol::Resp2),
            Some(b"3") => Some(Protocol::Resp3),
            // Redis answers NOPROTO (or a syntax error) without changing anything.
            Some(_) => return self.forward(request),
        };
        let mut name = None;
        let mut authenticated_here = false;
        let mut i = 2;
        while i < request.args.len() {
            let option = request.args[i].to_ascii_lowercase();
            match (option.as_slice(), request.args.len() - i) {
                (b"auth", 3..) => {
                    if !self.credentials_match(&request.args[i + 1], &request.args[i + 2]) {
                        self.divergence.user = true;
                        return self.switch_to_dedicated(request);
                    }
                    authenticated_here = true;
                    i += 3;
                }
                (b"setname", 2..) => {
                    name = Some(request.args[i + 1].clone());
                    i += 2;
                }
                // Let Redis word the syntax error.
                _ => return self.forward(request),
            }
        }
        if !self.authenticated && !authenticated_here {
            return self.reply_local(Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        if let Some(name) = &name
            && name.iter().any(|&c| !(b'!'..=b'~').contains(&c))
        {
            return self.reply_local(Reply::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        let version = version.unwrap_or(self.protocol);
        self.flush_batch();
        if version != self.protocol && !self.slots.is_empty() {
            self.held = Some(request);
            self.wait = Wait::Drain;
            return;
        }
        self.authenticated = true;
        if let Some(name) = name {
            self.name = (!name.is_empty()).then_some(name);
        }
        self.protocol = version;
        let plain = if request.args.len() == 1 {
            request
        } else {
            Request::from_args(vec![request.args[0].clone(), request.args[1].clone()])
        };
        self.flush_batch();
        self.forward(plain);
        self.flush_batch();
        if let Some(slot) = self.slots.back_mut() {
            *slot = Slot::Hello;
        }
    }

    /// RESET on the pool: cachet's own state goes back to a new connection's.
    fn reset_local(&mut self, request: Request) {
        if request.args.len() != 1 {
            return self.reply_local(Reply::error(
                "ERR wrong number of arguments for 'reset' command",
            ));
        }
        self.flush_batch();
        if !self.slots.is_empty() && self.protocol != Protocol::Resp2 {
            self.held = Some(request);
            self.wait = Wait::Drain;
            return;
        }
        self.reset_state();
        self.reply_local(Reply::Simple("RESET"));
    }

    fn reset_state(&mut self) {
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.authenticated = self.shared.upstream.config.credentials().is_none();
        self.signed_in = false;
        self.divergence = Divergence::default();
    }

    // ---- phase 3: upstream ------------------------------------------------------------

    /// Adds a command to the batch for the pool.
    fn forward(&mut self, request: Request) {
        self.forward_frames(request, 1);
    }

    /// Adds a command that Redis answers with `frames` frames.
    fn forward_frames(&mut self, request: Request, frames: usize) {
        self.close_fast();
        self.batch.extend_from_slice(&request.raw);
        self.batch_count += frames;
        self.batch_plain += frames;
    }

    /// Sends the batch gathered from this read to the pool.
    fn flush_batch(&mut self) {
        self.close_fast();
        if self.batch_count == 0 {
            return;
        }
        let slot = self.batch_slot();
        let pool = self.shared.upstream.pool(self.protocol);
        let handle = &pool[self.pool_index % pool.len()];
        handle.send(PoolRequest {
            payload: self.batch.split().freeze(),
            count: self.batch_count,
            client: self.handle.clone(),
            partial: matches!(slot, Slot::Pool),
        });
        self.slots.push_back(slot);
        self.sent.push_back(std::time::Instant::now());
        self.in_flight += self.batch_count;
        self.batch_count = 0;
    }

    /// Holds `request` until earlier replies are in, then opens a dedicated connection.
    fn switch_to_dedicated(&mut self, request: Request) {
        if self.client_gone {
            // Nobody will read its reply, and a connection opened now could outlive the
            // session (a BLPOP that blocks): stop here, as Redis would have at EOF.
            self.closing = true;
            return;
        }
        self.flush_batch();
        self.held = Some(request);
        if !self.slots.is_empty() {
            self.wait = Wait::Drain;
            return;
        }
        let upstream = self.shared.upstream.clone();
        let protocol = self.protocol;
        let name = self.name.clone();
        let authenticate = self.authenticated;
        self.wait = Wait::Acquire(Box::pin(async move {
            upstream.dedicated(protocol, name, authenticate).await
        }));
    }

    fn on_acquired(&mut self, result: Result<Dedicated, UpstreamError>) {
        self.wait = Wait::Nothing;
        match result {
            Ok(conn) => {
                self.handle
                    .upstream_id
                    .store(conn.upstream_id, Ordering::Relaxed);
                self.dedicated = Some(DedicatedLink {
                    conn,
                    incoming: BytesMut::new(),
                    outgoing: BytesMut::new(),
                    frame: resp::FrameScanner::default(),
                    outstanding: 0,
                    resets: 0,
                    streamed: false,
                });
            }
            Err(error) => {
                self.count_errors(1);
                self.held = None;
                // The state the command would have entered was not entered.
                self.divergence = Divergence {
                    subscriptions: (0, 0),
                    ..Divergence::default()
                };
                self.reply_local(Reply::Error(format!("ERR {error}")));
            }
        }
        self.process_input();
    }

    /// Writes a command to the dedicated connection and notes how it changes the state.
    fn send_dedicated(&mut self, request: Request, name: &[u8]) {
        let other_db = name == b"select" && !self.is_pool_db(request.arg(1));
        let d = &mut self.divergence;
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
            }
            b"hello" => {
                match request.arg(1) {
                    Some(b"2") => self.protocol = Protocol::Resp2,
                    Some(b"3") => self.protocol = Protocol::Resp3,
                    _ => {}
                }
                if request.args.iter().any(|a| a.eq_ignore_ascii_case(b"auth")) {
                    d.user = true;
                    signs_in = !d.multi;
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
        let raw = self.raw_replies() || self.divergence.pubsub();
        if let Some(link) = &mut self.dedicated {
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
        let link = self.dedicated.as_mut().expect("dedicated connection");
        link.outgoing.extend_from_slice(&request.raw);
        // The name the connection will carry at Redis, so a spare is renamed for its next user.
        if let Some(set) = name_set_by(name, &request) {
            link.conn.name = set;
        }
        if is_reset {
            link.resets += 1;
            self.wait = Wait::Reset;
        }
        link.outstanding += frames;
        self.in_flight += frames;
        for _ in 0..frames {
            self.slots.push_back(match (is_reset, signs_in) {
                (true, _) => Slot::Reset,
                (false, true) => Slot::SignIn,
                (false, false) => Slot::Dedicated,
            });
        }
        if request.args.len() > SHARED_MAX_ARGS {
            // Freeing millions of arguments takes tens of milliseconds: not on the thread
            // that serves the other clients.
            tokio::task::spawn_blocking(move || drop(request));
        }
    }

    /// Replies on the dedicated connection are not one per command: forward them as they come.
    fn raw_replies(&self) -> bool {
        let d = &self.divergence;
        d.stream || d.reply_mode || (d.pubsub() && self.protocol == Protocol::Resp2)
    }

    fn is_clean(&self, link: &DedicatedLink) -> bool {
        !self.divergence.any()
            && !link.streamed
            && link.outstanding == 0
            && link.outgoing.is_empty()
            && link.incoming.is_empty()
            && link.conn.protocol == self.protocol
    }

    /// Gives the dedicated connection back once the client's state is the pool's again.
    fn try_leave_dedicated(&mut self) {
        let Some(link) = &self.dedicated else { return };
        if !self.is_clean(link)
            || !matches!(self.wait, Wait::Nothing)
            || self.closing
            || self.draining
        {
            return;
        }
        let link = self.dedicated.take().expect("checked");
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        let upstream = self.shared.upstream.clone();
        tokio::spawn(async move { upstream.release(link.conn).await });
    }

    // ---- phase 4: replies --------------------------------------------------------------

    fn on_pool_reply(&mut self, reply: UpstreamReply) {
        if let Ok(bytes) = &reply.result {
            self.handle.replies.taken(bytes.len());
            self.note_replies(bytes.len(), reply.count);
        }
        if !reply.last {
            // A part of a plain batch: its slot stays until the last part.
            self.in_flight -= reply.count;
            if let Ok(bytes) = &reply.result {
                self.output.extend_from_slice(bytes);
            }
            return;
        }
        let (hello, plan) = match self.slots.pop_front() {
            Some(Slot::Pool) => (false, None),
            Some(Slot::Hello) => (true, None),
            Some(Slot::Inspect(plan)) => (false, Some(plan)),
            _ => unreachable!("a pool reply always answers the front slot"),
        };
        self.in_flight -= reply.count;
        if let Some(sent) = self.sent.pop_front() {
            let secs = sent.elapsed().as_secs_f64();
            for _ in 0..reply.count {
                self.latency.observe(secs);
            }
            self.latency.flush();
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
    fn after_reply(&mut self) {
        while let Some(Slot::Local(_)) = self.slots.front() {
            if let Some(Slot::Local(bytes)) = self.slots.pop_front() {
                self.output.extend_from_slice(&bytes);
            }
        }
        if matches!(self.wait, Wait::Drain) && self.slots.is_empty() {
            self.wait = Wait::Nothing;
            self.process_input();
        } else if self.held.is_none()
            && matches!(self.wait, Wait::Nothing)
            && !self.input.is_empty()
        {
            // Parsing may have stopped at the pipeline limit.
            self.process_input();
        }
    }

    /// Runs a command of cachet's own (on the control client, off this task) and answers
    /// it in order. Earlier commands finish first and later ones wait for it, so it acts on
    /// the data as the client's pipeline left it.
    pub(crate) fn reply_later<F>(&mut self, request: Request, work: impl FnOnce(Arc<Shared>) -> F)
    where
        F: Future<Output = Reply> + Send + 'static,
    {
        self.flush_batch();
        if !self.slots.is_empty() {
            self.held = Some(request);
            self.wait = Wait::Drain;
            return;
        }
        self.next_async += 1;
        let id = self.next_async;
        self.slots.push_back(Slot::Async(id));
        self.in_flight += 1;
        self.wait = Wait::Drain;
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let work = work(self.shared.clone());
        tokio::spawn(async move {
            let reply = work.await;
            let _ = inbox.send(Inbox::Done(id, reply.encode(protocol)));
        });
    }

    fn on_done(&mut self, id: u64, bytes: Bytes) {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| matches!(s, Slot::Async(a) if *a == id))
        {
            *slot = Slot::Local(bytes);
            self.in_flight -= 1;
        }
        self.after_reply();
    }

    fn reply_local(&mut self, reply: Reply) {
        self.flush_batch();
        let bytes = reply.encode(self.protocol);
        if self.slots.is_empty() {
            self.output.extend_from_slice(&bytes);
        } else {
            self.slots.push_back(Slot::Local(bytes));
        }
    }

    fn on_dedicated_data(&mut self) {
        loop {
            let Some(link) = &mut self.dedicated else {
                return;
            };
            let info = match link.frame.scan(&link.incoming) {
                Ok(Some(info)) => info,
                Ok(None) => return,
                Err(e) => return self.dedicated_lost(&e.to_string()),
            };
            let frame = link.incoming.split_to(info.len).freeze();
            let is_reset_reply = &frame[..] == b"+RESET\r\n";
            // RESET's own reply: whatever answers its slot. In a raw stream it has no slot:
            // only its exact reply says it is done. Redis refuses a RESET it parses only for
            // its arity, which `send_dedicated` does not count as a reset (every ACL user may
            // RESET); on a connection that SYNCed Redis answers nothing, and the wait lasts
            // until the client leaves, as its replication stream would.
            let answers_reset = !info.push
                && link.outstanding > 0
                && matches!(self.slots.front(), Some(Slot::Reset));
            if answers_reset || (link.resets > 0 && link.outstanding == 0 && is_reset_reply) {
                link.resets -= 1;
                if answers_reset {
                    link.outstanding -= 1;
                    self.in_flight -= 1;
                    self.slots.pop_front();
                }
                self.output.extend_from_slice(&frame);
                if is_reset_reply {
                    self.after_reset();
                } else {
                    self.wait = Wait::Nothing;
                    self.after_reply();
                }
                continue;
            }
            self.track_subscriptions(&frame);
            // Replies expected before the stream turned raw (subscribed, MONITOR) still come
            // first, in order; pushes never answer a command.
            let link = self.dedicated.as_mut().expect("still there");
            if !info.push && link.outstanding > 0 {
                link.outstanding -= 1;
                self.in_flight -= 1;
                match self.slots.pop_front() {
                    Some(Slot::Dedicated) => self.output.extend_from_slice(&frame),
                    Some(Slot::SignIn) => {
                        self.signed_in |= !matches!(frame.first(), Some(b'-' | b'!'));
                        self.output.extend_from_slice(&frame);
                    }
                    Some(Slot::DedicatedReplaced(instead)) => {
                        self.output.extend_from_slice(&instead)
                    }
                    _ => unreachable!("dedicated replies answer the front slot"),
                }
                self.after_reply();
            } else {
                self.output.extend_from_slice(&frame);
            }
        }
    }

    /// Follows subscription counts in (un)subscribe confirmations, so the client returns to
    /// the pool once it has unsubscribed from everything.
    fn track_subscriptions(&mut self, frame: &Bytes) {
        if !self.divergence.pubsub() || !matches!(frame.first(), Some(b'*' | b'>')) {
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
                self.divergence.subscriptions.0 = *count
            }
            b"ssubscribe" | b"sunsubscribe" => self.divergence.subscriptions.1 = *count,
            _ => {}
        }
    }

    fn after_reset(&mut self) {
        // Drop the connection: it is authenticated as Redis's default user now, which may
        // not be the pool's user.
        if let Some(link) = self.dedicated.take() {
            self.in_flight -= link.outstanding;
        }
        self.slots
            .retain(|s| matches!(s, Slot::Local(_) | Slot::Async(_)));
        self.handle.upstream_id.store(0, Ordering::Relaxed);
        self.reset_state();
        self.wait = Wait::Nothing;
        self.after_reply();
        self.process_input();
    }

    /// The dedicated connection broke: its state is gone, so the client's connection ends
    /// too, after an error for each command still waiting. Nothing is retried.
    fn dedicated_lost(&mut self, reason: &str) {
        let Some(link) = self.dedicated.take() else {
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
        for slot in self.slots.iter_mut() {
            if matches!(
                slot,
                Slot::Dedicated | Slot::SignIn | Slot::DedicatedReplaced(_) | Slot::Reset
            ) {
                *slot = Slot::Local(frame.clone());
                lost += 1;
            }
        }
        self.count_errors(lost);
        self.in_flight -= link.outstanding;
        self.wait = Wait::Nothing;
        self.held = None;
        self.closing = true;
        self.after_reply();
    }
}

/// Whether a client's guess equals a secret, in time that depends on neither the secret nor
/// where the two differ: both are hashed (SHA-256, so the secret's length does not show
/// either) and the digests compared with no early exit.
fn secret_eq(secret: &[u8], guess: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(secret), Sha256::digest(guess));
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Kept opaque, so the compiler cannot turn the fold back into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

/// The client name a command gives its connection: `Some(None)` clears it.
fn name_set_by(name: &[u8], request: &Request) -> Option<Option<Bytes>> {
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
async fn dedicated_io(link: &mut Option<DedicatedLink>, read: bool) -> Event {
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
        got = crate::net::read_available(&conn.reader, incoming), if read => Event::UpstreamRead(got),
        wrote = conn.writer.write(outgoing), if !outgoing.is_empty() => Event::UpstreamWrote(wrote),
        // Neither (output backed up and nothing to write): wait for the other events.
        else => std::future::pending().await,
    }
}

async fn acquire(wait: &mut Wait) -> Result<Dedicated, UpstreamError> {
    match wait {
        Wait::Acquire(future) => future.await,
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(secret_eq(b"s3cret", b"s3cret"));
        assert!(secret_eq(b"", b""));
        for guess in [
            &b"S3cret"[..],
            b"s3creT",
            b"s3cre",
            b"s3crett",
            b"",
            b"s3cret\0",
        ] {
            assert!(!secret_eq(b"s3cret", guess), "{guess:?}");
        }
        // Long secrets hash to the same digest length: no difference in how they compare.
        let long = vec![b'x'; 10_000];
        let mut almost = long.clone();
        almost[9_999] = b'y';
        assert!(secret_eq(&long, &long.clone()));
        assert!(!secret_eq(&long, &almost));
    }
}
