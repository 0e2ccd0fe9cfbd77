//! The out-of-band lane: one connection per protocol version (of each user's identity,
//! `super::identity`, signed in with its credentials), apart from the pool, for the
//! few commands that act on *other* connections' work and must reach Redis while the pool is
//! stuck behind that work: `SCRIPT KILL`, `FUNCTION KILL`, `FUNCTION STATS`, `SHUTDOWN`,
//! `CLIENT PAUSE`, `CLIENT UNPAUSE`, `CLIENT UNBLOCK` (which commands go here is
//! `session::route`'s decision). A busy script or a paused write holds the shared
//! connection, and a kill queued behind it would wait for the very thing it should end.
//!
//! * The connection opens on first use, set up as its identity's pooled one is (credentials, `HELLO 3`
//!   for the RESP3 lane, the pool's database) and named `cachet:aside`. Ordinary traffic
//!   never uses it.
//! * Commands are written as they come and answered in order (Redis answers a connection's
//!   commands in order); at most [`QUEUE`] wait for the task at once: past that a client
//!   reads `-ERR cachet's out-of-band lane is full ...` at once.
//! * A reply later than `command_timeout_ms` fails every command waiting on the lane with
//!   `-ERR upstream timeout ...` and drops the connection; a lost connection fails them
//!   with `-ERR upstream connection lost ...` (after `SHUTDOWN`, that is the reply). The next
//!   command opens a new one. Nothing is retried. So does the master moving
//!   (`super::sentinel`); a `-READONLY` reply asks the Sentinels again.
//!
//! **Pauses cachet knows of.** A `CLIENT PAUSE` sent through cachet is recorded here
//! ([`Pauses`]) when Redis answers `+OK`, before the client reads it, and cleared by
//! `CLIENT UNPAUSE`'s `+OK` or at its deadline. While a `WRITE` pause is known, the session
//! sends the commands Redis would postpone to dedicated connections, so none holds the pool;
//! while any pause is known, the pool's and this lane's timeouts count from its end, as
//! Redis answers what it postponed only then. A pause issued elsewhere (at Redis directly, by
//! `FAILOVER`, by another cachet) is unknown here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Upstream, UpstreamError, args};
use crate::net::Stream;
use crate::resp::{self, Protocol};

/// Commands waiting for the lane's task, per protocol version.
pub const QUEUE: usize = 256;

/// What a command on the lane does to the pause cachet knows of, once Redis says `+OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// `CLIENT PAUSE ms [WRITE|ALL]`.
    Pause {
        all: bool,
        ms: u64,
    },
    /// `CLIENT UNPAUSE`.
    Unpause,
}

impl Effect {
    /// The effect of `args` (a whole command) if Redis accepts it.
    pub fn of(args: &[Bytes]) -> Effect {
        let is = |i: usize, word: &[u8]| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(word));
        if !is(0, b"client") {
            return Effect::None;
        }
        if is(1, b"unpause") && args.len() == 2 {
            return Effect::Unpause;
        }
        if is(1, b"pause") && (3..=4).contains(&args.len()) {
            let ms = std::str::from_utf8(&args[2])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(ms) = ms {
                // Redis's default mode is ALL.
                return Effect::Pause {
                    all: !is(3, b"write"),
                    ms,
                };
            }
        }
        Effect::None
    }
}

/// The pause issued through cachet that Redis is known to hold, if any: read on every
/// command, so it is atomics, not a lock, and while no pause is in effect one load
/// (`active`), not a clock read.
pub struct Pauses {
    base: Instant,
    /// When the last one ends or ended, in ms after `base`; 0 for none yet.
    until_ms: AtomicU64,
    /// It pauses every command (`ALL`), not only writes.
    all: AtomicBool,
    /// A pause may be in effect: set after `until_ms` by `apply`, cleared by the first
    /// reader that finds it over (which then looks again, so a pause applied meanwhile is
    /// never missed).
    active: AtomicBool,
}

impl Default for Pauses {
    fn default() -> Self {
        Pauses {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
            all: AtomicBool::new(false),
            active: AtomicBool::new(false),
        }
    }
}

impl Pauses {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Applies what Redis accepted. As in Redis 7, a new pause sets the mode and extends
    /// (never shortens) the deadline.
    pub fn apply(&self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Pause { all, ms } => {
                let until = self.now_ms().saturating_add(ms).max(1);
                self.all.store(all, Ordering::Relaxed);
                self.until_ms.fetch_max(until, Ordering::SeqCst);
                self.active.store(true, Ordering::SeqCst);
            }
            Effect::Unpause => self.until_ms.store(self.now_ms(), Ordering::Relaxed),
        }
    }

    /// When the known pause ends, if one is in effect now.
    pub fn until(&self) -> Option<Instant> {
        let until = self.until_ms.load(Ordering::SeqCst);
        (until > self.now_ms()).then(|| self.base + Duration::from_millis(until))
    }

    /// A `WRITE` pause is in effect: writes must not go to the pool.
    pub fn writes_paused(&self) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return false;
        }
        if self.until().is_none() {
            self.active.store(false, Ordering::SeqCst);
            if self.until().is_none() {
                return false;
            }
            self.active.store(true, Ordering::SeqCst);
        }
        !self.all.load(Ordering::Relaxed)
    }

    /// When a reply to a command sent at `sent` is late: `limit` after it was sent, or after
    /// the last known pause ended (or ends), whichever is later: Redis answers what a pause
    /// postponed only once it is over.
    pub fn late_after(&self, sent: Instant, limit: Duration) -> Instant {
        let end = self.base + Duration::from_millis(self.until_ms.load(Ordering::Relaxed));
        end.max(sent) + limit
    }
}

/// One command for the lane, and where its reply goes.
struct AsideRequest {
    payload: Bytes,
    effect: Effect,
    reply: oneshot::Sender<Result<Bytes, UpstreamError>>,
}

/// The sending side of one lane.
pub struct AsideHandle {
    tx: mpsc::Sender<AsideRequest>,
}

impl AsideHandle {
    pub(super) fn spawn(
        upstream: Arc<Upstream>,
        login: super::identity::SharedLogin,
        protocol: Protocol,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(upstream, login, protocol, rx));
        AsideHandle { tx }
    }

    /// Sends one encoded command; the reply comes back (or why there is none).
    pub async fn call(&self, payload: Bytes, effect: Effect) -> Result<Bytes, AsideError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(AsideRequest {
                payload,
                effect,
                reply,
            })
            .map_err(|_| AsideError::Full)?;
        match rx.await {
            Ok(result) => result.map_err(AsideError::Upstream),
            Err(_) => Err(AsideError::Upstream(UpstreamError::Lost(
                "the out-of-band lane stopped".into(),
            ))),
        }
    }
}

/// Why a command on the lane has no reply from Redis.
#[derive(Debug, thiserror::Error)]
pub enum AsideError {
    #[error("cachet's out-of-band lane is full ({QUEUE} commands waiting)")]
    Full,
    #[error("{0}")]
    Upstream(UpstreamError),
}

impl AsideError {
    /// The error as the client's reply.
    pub fn to_frame(&self) -> Bytes {
        resp::reply::error_bytes(&format!("ERR {self}"))
    }
}

struct Waiting {
    effect: Effect,
    reply: oneshot::Sender<Result<Bytes, UpstreamError>>,
    sent: Instant,
}

async fn run(
    upstream: Arc<Upstream>,
    login: super::identity::SharedLogin,
    protocol: Protocol,
    mut rx: mpsc::Receiver<AsideRequest>,
) {
    while let Some(first) = rx.recv().await {
        if upstream.is_shut() {
            let _ = first.reply.send(Err(UpstreamError::Unavailable(
                "cachet is shutting down".into(),
            )));
            continue;
        }
        let current = login.read().expect("not poisoned").clone();
        let mut setup = upstream.setup_commands_as(current.as_ref(), protocol);
        drop(current);
        let required = setup.len();
        setup.push(args(&["CLIENT", "SETNAME", "cachet:aside"]));
        let mut master = upstream.master.watch();
        match upstream.connect(&setup, required).await {
            Ok((stream, _)) => {
                if let Err(error) = serve(&upstream, stream, first, &mut rx, &mut master).await {
                    tracing::warn!(?protocol, %error, "out-of-band connection dropped");
                }
            }
            Err(error) => {
                let _ = first.reply.send(Err(error));
            }
        }
    }
}

/// Serves one connection until it breaks or a reply is late; every command waiting then
/// gets the error.
async fn serve(
    upstream: &Upstream,
    mut stream: Stream,
    first: AsideRequest,
    rx: &mut mpsc::Receiver<AsideRequest>,
    master: &mut super::sentinel::MasterWatch,
) -> Result<(), UpstreamError> {
    let timeout = upstream.config.command_timeout();
    let pauses = &upstream.pauses;
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut incoming = BytesMut::with_capacity(4096);
    let mut next = Some(first);
    let result = loop {
        if let Some(request) = next.take() {
            let write = stream.write_all(&request.payload);
            let written = match timeout {
                Some(limit) => tokio::time::timeout(limit, write)
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                None => write.await,
            };
            waiting.push_back(Waiting {
                effect: request.effect,
                reply: request.reply,
                sent: Instant::now(),
            });
            if let Err(e) = written {
                break Err(UpstreamError::Lost(e.to_string()));
            }
        }
        let late_at = match (timeout, waiting.front()) {
            (Some(limit), Some(front)) => pauses.late_after(front.sent, limit),
            _ => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            read = stream.read_buf(&mut incoming) => match read {
                Ok(0) => break Err(UpstreamError::Lost("Redis closed the connection".into())),
                Ok(_) => {
                    if let Err(error) = deliver(&mut incoming, &mut waiting, pauses, master) {
                        break Err(error);
                    }
                }
                Err(e) => break Err(UpstreamError::Lost(e.to_string())),
            },
            reason = master.moved() => break Err(UpstreamError::Lost(reason)),
            request = rx.recv() => match request {
                Some(request) => next = Some(request),
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(late_at), if timeout.is_some() && !waiting.is_empty() => {
                // A pause may have been recorded since the deadline was computed.
                let front = waiting.front().expect("checked");
                let limit = timeout.expect("checked");
                if Instant::now() >= pauses.late_after(front.sent, limit) {
                    break Err(UpstreamError::Timeout(limit.as_millis() as u64));
                }
            }
        }
    };
    if let Err(error) = &result {
        for w in waiting.drain(..) {
            let _ = w.reply.send(Err(error.clone()));
        }
    }
    let _ = stream.shutdown().await;
    result
}

/// Hands each complete reply to the command it answers, recording pauses Redis accepted
/// before their client can read the `+OK`.
fn deliver(
    incoming: &mut BytesMut,
    waiting: &mut VecDeque<Waiting>,
    pauses: &Pauses,
    master: &super::sentinel::MasterWatch,
) -> Result<(), UpstreamError> {
    loop {
        let info = match resp::reply_frame(incoming) {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(()),
            Err(e) => return Err(UpstreamError::Lost(e.to_string())),
        };
        let frame = incoming.split_to(info.len).freeze();
        if info.push {
            continue;
        }
        let Some(front) = waiting.pop_front() else {
            return Err(UpstreamError::Lost(
                "Redis sent a reply nobody asked for".into(),
            ));
        };
        if &frame[..] == b"+OK\r\n" {
            pauses.apply(front.effect);
        } else if super::sentinel::is_readonly(&frame) {
            master.readonly_seen();
        }
        let _ = front.reply.send(Ok(frame));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(parts: &[&str]) -> Effect {
        Effect::of(&args(parts))
    }

    #[test]
    fn pause_and_unpause_are_read_as_redis_reads_them() {
        assert_eq!(
            effect(&["client", "PAUSE", "100"]),
            Effect::Pause { all: true, ms: 100 }
        );
        assert_eq!(
            effect(&["CLIENT", "pause", "100", "write"]),
            Effect::Pause {
                all: false,
                ms: 100
            }
        );
        assert_eq!(
            effect(&["CLIENT", "PAUSE", "100", "ALL"]),
            Effect::Pause { all: true, ms: 100 }
        );
        assert_eq!(effect(&["CLIENT", "UNPAUSE"]), Effect::Unpause);
        assert_eq!(effect(&["CLIENT", "UNPAUSE", "x"]), Effect::None);
        assert_eq!(effect(&["CLIENT", "PAUSE", "x"]), Effect::None);
        assert_eq!(effect(&["CLIENT", "PAUSE"]), Effect::None);
        assert_eq!(effect(&["SCRIPT", "KILL"]), Effect::None);
    }

    #[test]
    fn a_known_pause_holds_writes_until_its_deadline_or_unpause() {
        let pauses = Pauses::default();
        assert!(!pauses.writes_paused());
        pauses.apply(Effect::Pause { all: false, ms: 60 });
        assert!(pauses.writes_paused());
        let sent = Instant::now();
        let limit = Duration::from_millis(100);
        assert!(pauses.late_after(sent, limit) >= sent + Duration::from_millis(150));
        // A shorter pause does not shorten it; ALL replaces the mode.
        pauses.apply(Effect::Pause { all: true, ms: 1 });
        assert!(!pauses.writes_paused(), "ALL: the pool waits, writes stay");
        assert!(pauses.until().is_some());
        std::thread::sleep(Duration::from_millis(70));
        assert!(pauses.until().is_none(), "ended at its deadline");
        let later = Instant::now();
        assert_eq!(pauses.late_after(later, limit), later + limit);
        assert!(
            pauses.late_after(sent, limit) > sent + limit,
            "what it postponed is late only `limit` after it ended"
        );
        pauses.apply(Effect::Pause {
            all: false,
            ms: 10_000,
        });
        pauses.apply(Effect::Unpause);
        assert!(!pauses.writes_paused());
    }
}
