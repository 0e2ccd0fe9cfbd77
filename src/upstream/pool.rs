//! One pooled upstream connection: a task that owns the socket, writes whatever batches
//! clients have queued in one write, and hands each batch's replies back to its client.
//!
//! Replies come back in the order commands were written, so a FIFO of pending batches is all
//! the bookkeeping needed: the task measures frames (never re-encodes them) until the front
//! batch has all its replies, splits those bytes off and sends them to the client.
//!
//! When the connection breaks or a reply is late beyond `command_timeout_ms`, every pending
//! batch gets an error, and until the reconnect (with exponential backoff and jitter)
//! succeeds, new batches are answered with an error at once: never a hang.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Upstream, UpstreamError, args};
use crate::resp::{self, Protocol};
use crate::session::Inbox;

/// Stop taking new batches while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 1 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A batch of commands from one client, already encoded, and where its replies go.
pub struct PoolRequest {
    pub payload: Bytes,
    pub count: usize,
    pub reply: mpsc::UnboundedSender<Inbox>,
}

/// The replies to one batch: all of them, in order, or the reason there are none.
#[derive(Debug)]
pub struct UpstreamReply {
    pub result: Result<Bytes, UpstreamError>,
    pub count: usize,
}

/// A client's handle on one pooled connection.
#[derive(Clone)]
pub struct PoolHandle {
    tx: mpsc::UnboundedSender<PoolRequest>,
    up: Arc<AtomicBool>,
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
}

fn fail(request: PoolRequest, error: &UpstreamError) {
    let _ = request.reply.send(Inbox::Reply(UpstreamReply {
        result: Err(error.clone()),
        count: request.count,
    }));
}

/// Starts the task for pooled connection `index` of `protocol`.
pub fn spawn(upstream: Arc<Upstream>, protocol: Protocol, index: usize) -> PoolHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    tokio::spawn(run(upstream, protocol, index, rx, up.clone()));
    PoolHandle { tx, up }
}

async fn run(
    upstream: Arc<Upstream>,
    protocol: Protocol,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<PoolRequest>,
    up: Arc<AtomicBool>,
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
        if !ready {
            last_error = UpstreamError::Unavailable(format!(
                "command table not loaded from {} yet",
                upstream.config.url.address()
            ));
        } else {
            let mut setup = upstream.setup_commands(protocol, true);
            let required = setup.len();
            setup.push(args(&["CLIENT", "SETNAME", "cachet:pool"]));
            match upstream.connect(&setup, required).await {
                Ok((stream, _)) => {
                    tracing::info!(?protocol, index, "pooled connection up");
                    if was_up {
                        upstream.pool_reconnects.inc();
                    }
                    was_up = true;
                    up.store(true, Ordering::Relaxed);
                    backoff = BACKOFF_MIN;
                    let timeout = upstream.config.command_timeout();
                    match serve(stream, &mut rx, timeout).await {
                        Ok(()) => return,
                        Err(error) => {
                            tracing::warn!(?protocol, index, %error, "pooled connection lost");
                            last_error = error;
                        }
                    }
                    up.store(false, Ordering::Relaxed);
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
    count: usize,
    reply: mpsc::UnboundedSender<Inbox>,
    sent: Instant,
}

/// Serves one live connection until it breaks (`Err`) or every handle is gone (`Ok`).
async fn serve(
    stream: TcpStream,
    rx: &mut mpsc::UnboundedReceiver<PoolRequest>,
    timeout: Option<Duration>,
) -> Result<(), UpstreamError> {
    let (reader, mut writer) = stream.into_split();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut outgoing = BytesMut::with_capacity(64 * 1024);
    let mut incoming = BytesMut::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(64);
    // Frames of the front batch already measured, and where they end.
    let mut scanned = (0usize, 0usize);
    let mut tick = tokio::time::interval(timeout.map_or(Duration::from_secs(3600), |t| {
        (t / 4).max(Duration::from_millis(5))
    }));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result = loop {
        reserve(&mut incoming);
        tokio::select! {
            biased;
            read = crate::net::read_available(&reader, &mut incoming) => match read {
                Ok(0) => break Err(UpstreamError::Lost("Redis closed the connection".into())),
                Ok(_) => {
                    if let Err(error) = deliver(&mut incoming, &mut pending, &mut scanned) {
                        break Err(error);
                    }
                }
                Err(e) => break Err(UpstreamError::Lost(e.to_string())),
            },
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
                    pending.push_back(Pending { count: request.count, reply: request.reply, sent: now });
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
                if pending.front().is_some_and(|p| p.sent.elapsed() >= limit) {
                    break Err(UpstreamError::Timeout(limit.as_millis() as u64));
                }
            }
        }
    };
    if let Err(error) = &result {
        for p in pending.drain(..) {
            let _ = p.reply.send(Inbox::Reply(UpstreamReply {
                result: Err(error.clone()),
                count: p.count,
            }));
        }
    }
    let _ = writer.shutdown().await;
    result
}

/// Keeps room for a large read, so big replies do not arrive 64 bytes at a time.
pub(crate) fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
}

/// Hands every batch whose replies are complete to its client.
fn deliver(
    incoming: &mut BytesMut,
    pending: &mut VecDeque<Pending>,
    scanned: &mut (usize, usize),
) -> Result<(), UpstreamError> {
    loop {
        let Some(front) = pending.front() else {
            if incoming.is_empty() {
                return Ok(());
            }
            return Err(UpstreamError::Lost(
                "Redis sent a reply nobody asked for".into(),
            ));
        };
        let (ref mut frames, ref mut end) = *scanned;
        while *frames < front.count {
            match resp::reply_frame(&incoming[*end..]) {
                Ok(Some(info)) => {
                    *end += info.len;
                    *frames += 1;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(UpstreamError::Lost(e.to_string())),
            }
        }
        let payload = incoming.split_to(*end).freeze();
        *scanned = (0, 0);
        let done = pending.pop_front().expect("front exists");
        let _ = done.reply.send(Inbox::Reply(UpstreamReply {
            result: Ok(payload),
            count: done.count,
        }));
    }
}
