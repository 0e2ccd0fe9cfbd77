//! One pooled upstream connection: a task that owns the socket, writes whatever batches
//! clients have queued in one write, and hands each batch's replies back to its client.
//!
//! There are `upstream.pool_size` such connections per protocol version (default 1: Redis
//! runs commands one at a time, so more connections add no parallelism, and one batches
//! best); the RESP3 pool opens on first use. Each client sticks to one of them (by client
//! id), so its batches stay in order even before Redis has answered the previous one.
//!
//! A batch is everything one socket read of a client contained that can share the pool,
//! already encoded as the client sent it (cachet never re-encodes a forwarded command).
//! Woken by a batch, the task first yields once, so that every client woken by the same
//! readiness event queues its batch too, then drains them all into one write: without that
//! yield it wrote once per 1.6 commands at one command in flight per client; with 50 clients
//! each pipelining 16 commands, one write carries hundreds of commands.
//!
//! Replies come back in the order commands were written, so a FIFO of pending batches is all
//! the bookkeeping needed: the task measures frames (never re-encodes them) until the front
//! batch has all its replies, splits those bytes off and sends them to the client.
//!
//! When the connection breaks or a reply is late beyond `command_timeout_ms` (counted from
//! the end of a pause cachet knows of, `super::aside`, if one holds Redis), every pending
//! batch gets an error (`-ERR upstream connection lost: ...` / `-ERR upstream timeout ...`),
//! and until the reconnect succeeds (exponential backoff: 25 ms doubling to 2 s, plus up to
//! 50% jitter), new batches are answered `-ERR upstream unavailable: ...` at once: never a
//! hang. Each time a lost connection comes back, `cachet_upstream_pool_reconnects_total`
//! counts it.
//!
//! When the master moves (`super::sentinel`), the connection is dropped as if lost (its
//! pending batches get `-ERR upstream connection lost: the master moved ...`) and the task
//! connects to the new master at once, cutting any backoff short. A `-READONLY` reply (its
//! first bytes, as the replies are measured) asks the Sentinels again at once.
//!
//! Replies are counted against their client's [`ReplyAccount`] as they are handed over (once
//! per batch, or per part of a large plain batch): a client owing more than
//! `client_reply_limit` bytes (or more than its budget while all clients together owe more
//! than `reply_buffer_limit`) is cut off, and the replies still coming for it are dropped as
//! they are measured, never buffered. The connection itself keeps serving everyone else.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::net::Stream;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Upstream, UpstreamError, args};
use crate::resp::{self, Protocol};

/// Stop taking new batches while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 1 << 20;
/// A plain batch whose replies are not all in yet hands over the complete ones once they
/// reach this size, so a large batch never waits whole in cachet and its client can read.
const PART_BYTES: usize = 64 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A batch of commands from one client, already encoded, and where its replies go.
pub struct PoolRequest {
    pub payload: Bytes,
    pub count: usize,
    pub client: Arc<ReplyTo>,
    /// Its replies may reach the client in parts (a plain batch; one that is inspected or
    /// rewritten needs them whole).
    pub partial: bool,
}

/// The replies to one batch: all of them, in order, or the reason there are none. A batch
/// sent with `partial` may come in several parts: all but the last have `last == false`.
#[derive(Debug)]
pub struct UpstreamReply {
    pub result: Result<Bytes, UpstreamError>,
    pub count: usize,
    pub last: bool,
}

/// What a pooled connection sends a client.
#[derive(Debug)]
pub enum PoolReply {
    /// Replies to a batch it sent (or a part of them).
    Reply(UpstreamReply),
    /// It owes more replies than its limit: the pool drops them; the client must close.
    Overflow,
}

/// Where one client's pooled replies go, and what it owes.
pub struct ReplyTo {
    pub tx: mpsc::UnboundedSender<PoolReply>,
    pub account: ReplyAccount,
    /// The client's address, for the log line when it is cut off.
    pub addr: SocketAddr,
}

/// The limits on what clients may owe in replies (`[proxy]`'s `client_reply_*` knobs).
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimits {
    /// Past this a client is sent no more commands (the session's back-pressure).
    pub budget: usize,
    /// Past this a client is disconnected.
    pub client: usize,
    /// Past this for all clients together, any client past its budget is disconnected.
    pub total: usize,
}

/// What one client owes in replies: bytes handed to its session and not yet written to its
/// socket. The pool adds a batch's bytes as it hands them over; the session takes them off
/// as it moves them to its output, and publishes its output's length once per event.
pub struct ReplyAccount {
    /// Handed over by the pool, not yet taken from the session's queue.
    queued: AtomicUsize,
    /// The session's unwritten output, as last published.
    output: AtomicUsize,
    /// Over a limit: replies for it are dropped and its session closes.
    overflowed: AtomicBool,
    pub limits: ReplyLimits,
    /// Every client's queued and published bytes: `cachet_client_reply_bytes`.
    total: prometheus::IntGauge,
}

impl ReplyAccount {
    pub fn new(limits: ReplyLimits, total: prometheus::IntGauge) -> Self {
        ReplyAccount {
            queued: AtomicUsize::new(0),
            output: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            limits,
            total,
        }
    }

    fn owed(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.output.load(Ordering::Relaxed)
    }

    /// Whether a client owing `owed` bytes must be cut off.
    fn over_limit(&self, owed: usize) -> bool {
        owed > self.limits.client
            || (owed > self.limits.budget && self.total.get() as usize > self.limits.total)
    }

    fn queue(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        self.total.add(bytes as i64);
    }

    /// The session took `bytes` of replies from its queue (or they never reached it).
    pub fn taken(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        self.total.sub(bytes as i64);
    }

    /// The session's unwritten output is now `len` bytes (0 when it ends).
    pub fn publish_output(&self, len: usize) {
        let before = self.output.swap(len, Ordering::Relaxed);
        if before != len {
            self.total.add(len as i64 - before as i64);
        }
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// A client's handle on one pooled connection.
#[derive(Clone)]
pub struct PoolHandle {
    tx: mpsc::UnboundedSender<PoolRequest>,
    up: Arc<AtomicBool>,
    /// The connection's `CLIENT ID` at Redis, learnt at every (re)connect; 0 while down.
    id: Arc<AtomicI64>,
}

impl PoolHandle {
    /// Queues a batch. If the connection task is gone (shutdown), the batch is answered
    /// with an error right away.
    pub fn send(&self, request: PoolRequest) {
        if let Err(mpsc::error::SendError(request)) = self.tx.send(request) {
            fail(
                request,
                &UpstreamError::Unavailable("cachet is shutting down".into()),
            );
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The connection's Redis client id, `None` while it is down.
    pub fn redis_id(&self) -> Option<i64> {
        Some(self.id.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }
}

fn fail(request: PoolRequest, error: &UpstreamError) {
    let _ = request.client.tx.send(PoolReply::Reply(UpstreamReply {
        result: Err(error.clone()),
        count: request.count,
        last: true,
    }));
}

/// Starts the task for pooled connection `index` of `protocol`, signed in as `login`. It
/// ends when its last handle is dropped (cachet shuts down, or its identity closes).
pub fn spawn(
    upstream: Arc<Upstream>,
    login: super::identity::SharedLogin,
    protocol: Protocol,
    index: usize,
) -> PoolHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    let id = Arc::new(AtomicI64::new(0));
    tokio::spawn(run(
        upstream,
        login,
        protocol,
        index,
        rx,
        up.clone(),
        id.clone(),
    ));
    PoolHandle { tx, up, id }
}

async fn run(
    upstream: Arc<Upstream>,
    login: super::identity::SharedLogin,
    protocol: Protocol,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<PoolRequest>,
    up: Arc<AtomicBool>,
    id: Arc<AtomicI64>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut was_up = false;
    loop {
        if upstream.is_shut() {
            return;
        }
        // Batches queue (they are not failed) while the first attempt is under way.
        let wait = upstream.config.connect_timeout();
        let ready = tokio::time::timeout(wait, upstream.table_loaded())
            .await
            .is_ok();
        let last_error;
        // Read before the address `connect` uses: a move after this is always noticed.
        let mut master = upstream.master.watch();
        if !ready {
            // Clients are told why when a connection cannot even be opened (refused, or a
            // certificate cachet does not trust), not only that the table is missing.
            last_error = match upstream.connect(&[], 0).await {
                Err(error) => error,
                Ok(_) => UpstreamError::Unavailable(format!(
                    "command table not loaded from {} yet",
                    upstream.address()
                )),
            };
        } else {
            let current = login.read().expect("not poisoned").clone();
            let mut setup = upstream.setup_commands_as(current.as_ref(), protocol);
            drop(current);
            let required = setup.len();
            setup.push(args(&["CLIENT", "SETNAME", "cachet:pool"]));
            // Its id, so that CLIENT KILL through cachet can leave it alone.
            setup.push(args(&["CLIENT", "ID"]));
            match upstream.connect(&setup, required).await {
                Ok((stream, replies)) => {
                    let redis_id = replies
                        .last()
                        .and_then(|r| super::dedicated::parse_integer(r));
                    id.store(redis_id.unwrap_or(0), Ordering::Relaxed);
                    tracing::info!(?protocol, index, "pooled connection up");
                    if was_up {
                        upstream.pool_reconnects.inc();
                    }
                    was_up = true;
                    up.store(true, Ordering::Relaxed);
                    backoff = BACKOFF_MIN;
                    let timeout = upstream.config.command_timeout();
                    let served = serve(stream, &mut rx, timeout, &upstream, &mut master);
                    match served.await {
                        Ok(()) => return,
                        Err(error) => {
                            tracing::warn!(?protocol, index, %error, "pooled connection lost");
                            last_error = error;
                        }
                    }
                    up.store(false, Ordering::Relaxed);
                    id.store(0, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(?protocol, index, %error, "pooled connection failed");
                    last_error = error;
                }
            }
        }
        let unavailable = match &last_error {
            UpstreamError::Unavailable(_) | UpstreamError::Handshake(_) => last_error.clone(),
            other => UpstreamError::Unavailable(other.to_string()),
        };
        // Until the next attempt, answer every batch at once.
        let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
        let retry = tokio::time::sleep(backoff + jitter);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = &mut retry => break,
                // The new master is worth trying now.
                _ = master.moved() => {
                    backoff = BACKOFF_MIN / 2;
                    break;
                }
                request = rx.recv() => match request {
                    Some(request) => fail(request, &unavailable),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Pending {
    /// Replies still to hand over.
    count: usize,
    client: Arc<ReplyTo>,
    partial: bool,
    /// When it was sent, or when its last part was handed over.
    sent: Instant,
}

/// How far the front batch's replies have been measured.
#[derive(Default)]
struct Scan {
    frames: usize,
    end: usize,
    /// Its client was cut off: its replies are measured and dropped.
    dropping: bool,
    /// The reply being measured, from `end` on.
    frame: resp::FrameScanner,
}

/// Serves one live connection until it breaks (`Err`) or every handle is gone (`Ok`).
async fn serve(
    stream: Stream,
    rx: &mut mpsc::UnboundedReceiver<PoolRequest>,
    timeout: Option<Duration>,
    upstream: &Upstream,
    master: &mut super::sentinel::MasterWatch,
) -> Result<(), UpstreamError> {
    let pauses = &upstream.pauses;
    // Made once per connection, not per event: this loop is the hot path.
    let moved = master.moved();
    tokio::pin!(moved);
    let (mut reader, mut writer) = stream.into_split();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut outgoing = BytesMut::with_capacity(64 * 1024);
    let mut incoming = BytesMut::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(64);
    let mut scan = Scan::default();
    let mut tick = tokio::time::interval(timeout.map_or(Duration::from_secs(3600), |t| {
        (t / 4).max(Duration::from_millis(5))
    }));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result = loop {
        crate::net::reserve(&mut incoming);
        tokio::select! {
            biased;
            read = crate::net::read_available(&mut reader, &mut incoming) => match read {
                Ok(0) => break Err(UpstreamError::Lost("Redis closed the connection".into())),
                Ok(_) => {
                    let mut readonly = false;
                    let delivered = deliver(&mut incoming, &mut pending, &mut scan, &mut readonly);
                    if readonly {
                        upstream.master.readonly_seen();
                    }
                    if let Err(error) = delivered {
                        break Err(error);
                    }
                }
                Err(e) => break Err(UpstreamError::Lost(e.to_string())),
            },
            reason = &mut moved => break Err(UpstreamError::Lost(reason)),
            received = rx.recv_many(&mut batch, 256), if outgoing.len() < WRITE_HIGH_WATER => {
                if received == 0 {
                    break Ok(());
                }
                // Let the other clients whose requests arrived in the same wake-up queue theirs
                // first: one write to Redis then carries all of them. Without this, at one
                // command per client in flight, cachet wrote to Redis once per 1.6 commands.
                tokio::task::yield_now().await;
                while rx.try_recv().map(|request| batch.push(request)).is_ok() {}
                let now = Instant::now();
                for request in batch.drain(..) {
                    outgoing.extend_from_slice(&request.payload);
                    pending.push_back(Pending {
                        count: request.count,
                        client: request.client,
                        partial: request.partial,
                        sent: now,
                    });
                }
                match writer.try_write(&outgoing) {
                    Ok(n) => outgoing.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => break Err(UpstreamError::Lost(e.to_string())),
                }
            }
            written = writer.write(&outgoing), if !outgoing.is_empty() => match written {
                Ok(n) => outgoing.advance(n),
                Err(e) => break Err(UpstreamError::Lost(e.to_string())),
            },
            _ = tick.tick(), if timeout.is_some() && !pending.is_empty() => {
                let limit = timeout.expect("checked");
                // Redis answers what a pause (known to cachet) postponed only when it ends.
                if pending
                    .front()
                    .is_some_and(|p| Instant::now() >= pauses.late_after(p.sent, limit))
                {
                    break Err(UpstreamError::Timeout(limit.as_millis() as u64));
                }
            }
        }
    };
    if let Err(error) = &result {
        for p in pending.drain(..) {
            let _ = p.client.tx.send(PoolReply::Reply(UpstreamReply {
                result: Err(error.clone()),
                count: p.count,
                last: true,
            }));
        }
    }
    let _ = writer.shutdown().await;
    result
}

/// Hands every batch whose replies are complete to its client (and the complete replies of a
/// large plain batch so far); drops those of clients cut off for owing too much. Sets
/// `readonly` if a reply is `-READONLY`.
fn deliver(
    incoming: &mut BytesMut,
    pending: &mut VecDeque<Pending>,
    scan: &mut Scan,
    readonly: &mut bool,
) -> Result<(), UpstreamError> {
    loop {
        let Some(front) = pending.front_mut() else {
            if incoming.is_empty() {
                return Ok(());
            }
            return Err(UpstreamError::Lost(
                "Redis sent a reply nobody asked for".into(),
            ));
        };
        // What the client owed when this read came in: it reads concurrently, so this only
        // errs on the generous side.
        let owed = front.client.account.owed();
        if scan.frames == 0 && front.client.account.overflowed() {
            scan.dropping = true;
        }
        while scan.frames < front.count {
            // Checked before each reply is measured, so one large reply alone never cuts a
            // client off: only what it already owes does.
            if !scan.dropping && front.client.account.over_limit(owed + scan.end) {
                cut_off(&front.client, owed + scan.end);
                scan.dropping = true;
            }
            if scan.dropping {
                incoming.advance(scan.end);
                scan.end = 0;
            }
            match scan.frame.scan(&incoming[scan.end..]) {
                Ok(Some(info)) => {
                    *readonly |= super::sentinel::is_readonly(&incoming[scan.end..]);
                    scan.end += info.len;
                    scan.frames += 1;
                }
                Ok(None) => {
                    if front.partial && !scan.dropping && scan.end >= PART_BYTES {
                        let part = incoming.split_to(scan.end).freeze();
                        front.count -= scan.frames;
                        front.sent = Instant::now();
                        hand_over(&front.client, part, scan.frames, false);
                        // The reply being measured now starts the buffer: keep its place.
                        *scan = Scan {
                            frame: std::mem::take(&mut scan.frame),
                            ..Scan::default()
                        };
                    }
                    return Ok(());
                }
                Err(e) => return Err(UpstreamError::Lost(e.to_string())),
            }
        }
        if scan.dropping {
            incoming.advance(scan.end);
        } else {
            let payload = incoming.split_to(scan.end).freeze();
            hand_over(&front.client, payload, scan.frames, true);
        }
        *scan = Scan::default();
        pending.pop_front();
    }
}

fn hand_over(client: &ReplyTo, payload: Bytes, count: usize, last: bool) {
    let bytes = payload.len();
    client.account.queue(bytes);
    let reply = PoolReply::Reply(UpstreamReply {
        result: Ok(payload),
        count,
        last,
    });
    if client.tx.send(reply).is_err() {
        // The session is gone: nobody will take them.
        client.account.taken(bytes);
    }
}

/// Marks a client that owes too much: its session closes, and its replies are dropped.
fn cut_off(client: &ReplyTo, owed: usize) {
    if !client.account.overflowed.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            client = %client.addr,
            owed,
            limit = client.account.limits.client,
            "disconnecting a client that does not read its replies"
        );
        let _ = client.tx.send(PoolReply::Overflow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(budget: usize, client: usize, total: usize) -> ReplyAccount {
        let gauge = prometheus::IntGauge::new("t", "t").unwrap();
        ReplyAccount::new(
            ReplyLimits {
                budget,
                client,
                total,
            },
            gauge,
        )
    }

    #[test]
    fn a_client_is_cut_off_past_its_limit_or_past_its_budget_when_all_owe_too_much() {
        let a = account(100, 1000, 5000);
        assert!(!a.over_limit(1000));
        assert!(a.over_limit(1001));
        // Everyone together over the total: past the budget is enough.
        a.queue(4950);
        assert!(!a.over_limit(101), "total 4950 is within 5000");
        a.publish_output(100);
        assert!(a.over_limit(101));
        assert!(!a.over_limit(100), "within its budget, it is never cut off");
        a.taken(4950);
        a.publish_output(0);
        assert_eq!(a.total.get(), 0);
        assert_eq!(a.owed(), 0);
    }
}
