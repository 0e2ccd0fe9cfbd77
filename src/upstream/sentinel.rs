//! Where the master is: fixed by a `redis://` url, or found through Redis Sentinel for a
//! `sentinel://host:port,.../mymaster` url (`sentinels://`: the same over TLS).
//!
//! [`Master`] holds the master's address and a generation number that grows by one each
//! time the address changes. Every connection cachet opens to Redis reads the generation
//! first, then the address (`Upstream::connect`), and remembers the generation; when it
//! changes, each one lets go of the old master:
//!
//! * pooled connections (`super::pool`) drop their connection (the commands in flight on it
//!   get `-ERR upstream connection lost: the master moved ...`, nothing is retried) and
//!   reconnect at once, without waiting out their backoff;
//! * the out-of-band lane (`super::aside`) likewise;
//! * the spare dedicated connections (of every identity, `super::identity`) are dropped;
//! * dedicated connections held by clients break (`Dedicated::master`): the client gets the
//!   same error for each command waiting and its connection is closed, as on any loss;
//! * the control client (fred, itself in Sentinel mode, which checks `ROLE` too) is told to
//!   reconnect, and its setup steps (the tag index's library) run again on the new master.
//!
//! **Finding the master** ([`watch`]), following Redis's guidelines for Sentinel clients:
//! each round asks every Sentinel of the url in turn for `SENTINEL GET-MASTER-ADDR-BY-NAME`
//! and the `config-epoch` of `SENTINEL MASTER`, takes the answer with the highest epoch (the
//! Sentinel that ran the latest failover knows first; a stale one never moves cachet back),
//! and confirms with `ROLE` on that address that it is a master; an unconfirmed answer is
//! ignored (the next best is tried, then the next round), and so is one with a lower epoch
//! than cachet's while the current master still says it is one. A round runs every
//! `[upstream.sentinel] recheck_ms` (1 s), at once when a Sentinel publishes
//! `+switch-master` or `+promoted-slave` (cachet subscribes on every Sentinel of the url),
//! and at once when a connection reads a `-READONLY` reply ([`Master::readonly_seen`]): a
//! demoted master is left as soon as the Sentinels know where the new one is. The Sentinels
//! are trusted as every Sentinel client trusts them: what one names is checked by `ROLE`
//! only.
//!
//! **TLS** (`sentinels://`): every connection to a Sentinel (a round's questions, the
//! subscriptions) and to a data node (`ROLE`, the write hold, and every connection of the
//! pools, lanes and dedicated ones) goes through `Upstream::open`, with `[upstream.tls]`'s
//! settings; the name checked is `server_name` if set, else the host connected. fred's
//! control client has the same TLS config, which it applies to the Sentinels and the master.
//!
//! **The promotion window.** Sentinel does not stop writes on the old master while it
//! promotes a replica, and learns that the promotion took only from the replica's `INFO`,
//! polled every second: for up to a second the old master takes writes that are lost when
//! it becomes a replica. So when a Sentinel announces `+failover-state-send-slaveof-noone`
//! (it is sending `REPLICAOF NO ONE` to that replica), cachet holds writes on the old
//! master (`CLIENT PAUSE 1000 WRITE`, as Redis's own `FAILOVER` command does), asks that
//! replica for its `ROLE` every 5 ms and moves as soon as it says master, at one epoch past
//! the current. Writes held on the old master are never acknowledged: when cachet moves
//! they get `-ERR upstream connection lost`, and Redis drops them with the connection. A
//! write the old master took between the promotion and the pause (the event's way here,
//! under a millisecond on one host) is still lost: that is Sentinel's design.
//!
//! Bounds: at most [`MAX_SENTINELS`](crate::config::upstream::MAX_SENTINELS) Sentinels; a
//! Sentinel's replies to a round are cut at `SETUP_REPLY_LIMIT` (1 MiB) and each exchange at
//! `connect_timeout_ms`; a subscription's unread bytes at [`EVENT_LIMIT`], past which that
//! connection is dropped and opened again.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use fred::interfaces::ClientLike;
use redis_protocol::resp3::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};

use super::{SETUP_REPLY_LIMIT, Upstream, UpstreamError, args, run_setup};
use crate::config::RedisUrl;
use crate::config::upstream::{SentinelUrl, host_port};
use crate::resp::{self, Protocol};

/// The event a Sentinel leading a failover publishes as it sends `REPLICAOF NO ONE`.
const PROMOTING: &str = "+failover-state-send-slaveof-noone";

/// A subscription to a Sentinel buffers at most this much of an unfinished message.
pub const EVENT_LIMIT: usize = 64 * 1024;

/// The master's address as cachet knows it now.
#[derive(Debug)]
pub struct Located {
    /// `host:port`; `None` until the Sentinels have named a master that confirmed.
    pub address: Option<String>,
    /// Grows by one on every move.
    pub generation: u64,
}

/// Where the master is, and who must hear when it moves.
pub struct Master {
    located: ArcSwap<Located>,
    generation: watch::Sender<u64>,
    recheck: Notify,
    /// The Sentinels' config epoch of the current address (-1: none, or a fixed url).
    epoch: AtomicI64,
    /// The name the Sentinels know the master by, for messages.
    name: Option<String>,
}

impl Master {
    /// A fixed address for `redis://`, none yet for `sentinel://`.
    pub fn new(url: &RedisUrl) -> Self {
        let address = url.sentinel.is_none().then(|| url.address());
        Master {
            located: ArcSwap::from_pointee(Located {
                address,
                generation: 0,
            }),
            generation: watch::channel(0).0,
            recheck: Notify::new(),
            epoch: AtomicI64::new(-1),
            name: url.sentinel.as_ref().map(|s| s.master_name.clone()),
        }
    }

    /// The address and its generation, or why there is none.
    pub fn address(&self) -> Result<(String, u64), UpstreamError> {
        let located = self.located.load();
        match &located.address {
            Some(address) => Ok((address.clone(), located.generation)),
            None => Err(UpstreamError::Unavailable(format!(
                "the Sentinels have not named a master for {:?} yet",
                self.name.as_deref().unwrap_or_default()
            ))),
        }
    }

    pub fn generation(&self) -> u64 {
        self.located.load().generation
    }

    /// What a connection opened now keeps, to notice when the master moves.
    pub fn watch(self: &Arc<Self>) -> MasterWatch {
        let rx = self.generation.subscribe();
        // The channel's value, which is sent after the address is stored: a connection
        // reading it just before a move may break once for nothing, never stay behind.
        let generation = *rx.borrow();
        MasterWatch {
            generation,
            master: self.clone(),
            rx,
        }
    }

    /// A connection read `-READONLY`: its server is a replica now. Asks the Sentinels again
    /// at once (for a fixed url nobody listens, and nothing happens).
    pub fn readonly_seen(&self) {
        self.recheck.notify_one();
    }

    /// The Sentinels' config epoch cachet follows now.
    fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Moves to `address`; true if it differs from the current one. Only the [`watch`] task
    /// calls it, so the load and the store cannot interleave with another move.
    fn move_to(&self, address: String, epoch: i64) -> bool {
        let current = self.located.load();
        if current.address.as_deref() == Some(address.as_str()) {
            // Never lower: a Sentinel lagging behind must not look as recent as the leader.
            self.epoch.fetch_max(epoch, Ordering::Relaxed);
            return false;
        }
        self.epoch.store(epoch, Ordering::Relaxed);
        let generation = current.generation + 1;
        self.located.store(Arc::new(Located {
            address: Some(address),
            generation,
        }));
        self.generation.send_replace(generation);
        true
    }
}

/// One connection's view of [`Master`]: the generation it was opened at.
pub struct MasterWatch {
    master: Arc<Master>,
    /// The generation the connection was opened at (read before its address).
    pub generation: u64,
    rx: watch::Receiver<u64>,
}

impl MasterWatch {
    /// Resolves once the master has moved away from this connection's generation, with
    /// the reason the connection's users read.
    pub async fn moved(&mut self) -> String {
        let mine = self.generation;
        let _ = self.rx.wait_for(|&g| g != mine).await;
        let now = self.master.located.load();
        format!(
            "the master moved to {} (Sentinel failover)",
            now.address.as_deref().unwrap_or("?")
        )
    }

    /// Whether the master has moved since this connection was opened.
    pub fn is_stale(&self) -> bool {
        *self.rx.borrow() != self.generation
    }

    /// See [`Master::readonly_seen`].
    pub fn readonly_seen(&self) {
        self.master.readonly_seen();
    }
}

/// Whether a reply is Redis's `-READONLY` error: the first bytes only.
pub fn is_readonly(frame: &[u8]) -> bool {
    frame.starts_with(b"-READONLY")
}

/// Follows the master named by the Sentinels of `url` until cachet shuts down.
pub(super) async fn watch(upstream: Arc<Upstream>, url: SentinelUrl) {
    let (promoting, mut promoted) = mpsc::channel(4);
    for (host, port) in &url.sentinels {
        tokio::spawn(listen(
            upstream.clone(),
            host_port(host, *port),
            url.master_name.clone(),
            promoting.clone(),
        ));
    }
    let every = upstream.config.sentinel.recheck();
    // Warned once per spell of failed rounds, not every round.
    let mut failing = false;
    loop {
        if upstream.is_shut() {
            return;
        }
        match discover(&upstream, &url).await {
            Ok((address, epoch)) => {
                if failing {
                    tracing::info!(master = url.master_name, "the Sentinels answer again");
                    failing = false;
                }
                if stays(&upstream, &address, epoch).await {
                    tracing::debug!(%address, epoch, "a Sentinel lags: the master stays");
                } else {
                    follow(&upstream, &url, address, epoch).await;
                }
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(
                    master = url.master_name,
                    %error,
                    "no confirmed master from the Sentinels (cachet keeps the one it knows)"
                );
            }
            Err(error) => tracing::debug!(master = url.master_name, %error, "still none"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = upstream.master.recheck.notified() => {}
            Some(candidate) = promoted.recv() => {
                // The leader is promoting `candidate` now; the Sentinels name it only once
                // they see its new role (their INFO every second). Holding writes on the old
                // master and asking the candidate directly shortens the time writes still
                // land on the old master to the event's way here.
                // Apart: an old master that does not answer must not hold up the move.
                if let Ok((old, _)) = upstream.master.address()
                    && old != candidate
                {
                    tokio::spawn(hold_writes(upstream.clone(), old));
                }
                if let Some(epoch) = promotion(&upstream, &candidate).await {
                    follow(&upstream, &url, candidate, epoch).await;
                }
            }
        }
    }
}

/// An answer older than the epoch cachet follows is ignored while the current master still
/// says it is one: a Sentinel that has not heard of the last failover must not move cachet
/// back. (If the current one is a replica now, the answer is taken.)
async fn stays(upstream: &Upstream, address: &str, epoch: i64) -> bool {
    let Ok((current, _)) = upstream.master.address() else {
        return false;
    };
    if current == address || epoch >= upstream.master.epoch() {
        return false;
    }
    matches!(role(upstream, &current).await, Ok(role) if role == "master")
}

/// Moves to `address` if it is new, and moves what does not watch the generation itself.
async fn follow(upstream: &Arc<Upstream>, url: &SentinelUrl, address: String, epoch: i64) {
    let from = upstream.master.located.load().address.clone();
    if upstream.master.move_to(address.clone(), epoch) {
        let Some(from) = from else {
            // The first master the Sentinels name is no move: fred found it on its own.
            tracing::info!(
                master = url.master_name,
                at = address,
                epoch,
                "upstream master found"
            );
            return;
        };
        upstream.master_moves.inc();
        tracing::warn!(
            master = url.master_name,
            from,
            to = address,
            epoch,
            "upstream master moved"
        );
        moved(upstream).await;
    }
}

/// Asks a replica being promoted for its role until it says master (the epoch to follow it
/// at: one past the current, the least a failover takes), for at most [`PROMOTION_WAIT`].
async fn promotion(upstream: &Upstream, candidate: &str) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + PROMOTION_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(role) = role(upstream, candidate).await
            && role == "master"
        {
            return Some(upstream.master.epoch() + 1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// `CLIENT PAUSE` for writes on the master being replaced, as Redis's own `FAILOVER` does:
/// a write it would acknowledge now is lost when it becomes a replica. Best effort (a dead
/// master, or a user without the right, is not paused); it ends by itself after
/// [`HOLD_MS`]. What cachet has sent there meanwhile gets `-ERR upstream connection lost`
/// when it moves, and Redis drops it with the connection, unexecuted.
async fn hold_writes(upstream: Arc<Upstream>, old: String) {
    let mut setup = upstream.setup_commands(Protocol::Resp2);
    let required = setup.len() + 1;
    setup.push(args(&["CLIENT", "PAUSE", &HOLD_MS.to_string(), "WRITE"]));
    match upstream.connect_to(&old, &setup, required).await {
        Ok(_) => tracing::info!(master = old, ms = HOLD_MS, "writes held on the old master"),
        Err(error) => {
            tracing::info!(master = old, %error, "could not hold writes on the old master")
        }
    }
}

/// How long writes are held on a master being replaced, at most.
const HOLD_MS: u64 = 1_000;

/// How long a replica the leader is promoting is asked for its role.
const PROMOTION_WAIT: Duration = Duration::from_secs(5);

/// What moves besides the connections that watch the generation themselves.
async fn moved(upstream: &Arc<Upstream>) {
    upstream.default.drop_spares().await;
    for identity in upstream.identities.all() {
        identity.drop_spares().await;
    }
    let control = upstream.control.clone();
    let generation = upstream.master.generation();
    let upstream = upstream.clone();
    // fred asks the Sentinels itself and checks ROLE; it may still hear the old master from
    // a Sentinel that lags, so this repeats until it sits where cachet does.
    tokio::spawn(async move {
        for _ in 0..20 {
            if upstream.is_shut() || upstream.master.generation() != generation {
                return;
            }
            let _ = control.force_reconnection().await;
            let want = upstream.master.address().ok().map(|(a, _)| a);
            let at: Vec<String> = control
                .active_connections()
                .iter()
                .map(|s| host_port(&s.host, s.port))
                .collect();
            if want.is_some_and(|want| at.contains(&want)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::warn!("the control client did not follow the master");
    });
}

/// One round: every Sentinel's answer, the highest epoch first, the first that `ROLE`
/// confirms.
async fn discover(upstream: &Upstream, url: &SentinelUrl) -> Result<(String, i64), String> {
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    for (host, port) in &url.sentinels {
        let sentinel = host_port(host, *port);
        match ask(upstream, &sentinel, &url.master_name).await {
            Ok(Some(answer)) => answers.push(answer),
            Ok(None) => errors.push(format!("{sentinel}: does not know the master")),
            Err(error) => errors.push(format!("{sentinel}: {error}")),
        }
    }
    // Stable: among equal epochs, the url's order.
    answers.sort_by_key(|(_, epoch)| std::cmp::Reverse(*epoch));
    let mut tried = Vec::new();
    for (address, epoch) in answers {
        if tried.contains(&address) {
            continue;
        }
        match role(upstream, &address).await {
            Ok(role) if role == "master" => return Ok((address, epoch)),
            Ok(role) => errors.push(format!("{address} is a {role}")),
            Err(error) => errors.push(format!("{address}: {error}")),
        }
        tried.push(address);
    }
    Err(errors.join("; "))
}

/// The master's address and config epoch according to one Sentinel.
async fn ask(
    upstream: &Upstream,
    sentinel: &str,
    name: &str,
) -> Result<Option<(String, i64)>, UpstreamError> {
    let mut setup = Vec::new();
    if let Some((user, password)) = upstream.config.sentinel.credentials() {
        setup.push(args(&["AUTH", &user, password.expose()]));
    }
    let required = setup.len();
    setup.push(args(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name]));
    setup.push(args(&["SENTINEL", "MASTER", name]));
    let replies = exchange(upstream, sentinel, &setup, required).await?;
    // RESP2's null array: the Sentinel does not monitor that name.
    if replies[required].starts_with(b"*-1") {
        return Ok(None);
    }
    let address = match decode(&replies[required])? {
        BytesFrame::Array { data, .. } if data.len() == 2 => {
            let host = text(&data[0]).ok_or_else(|| bad("GET-MASTER-ADDR-BY-NAME"))?;
            let port: u16 = text(&data[1])
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("GET-MASTER-ADDR-BY-NAME"))?;
            host_port(&host, port)
        }
        BytesFrame::Null => return Ok(None),
        _ => return Err(bad("GET-MASTER-ADDR-BY-NAME")),
    };
    // An older Sentinel, or one that refuses SENTINEL MASTER to this user: epoch 0.
    let epoch = match decode(&replies[required + 1])? {
        BytesFrame::Array { data, .. } => data
            .chunks(2)
            .find(|pair| text(&pair[0]).as_deref() == Some("config-epoch"))
            .and_then(|pair| pair.get(1).and_then(text))
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    Ok(Some((address, epoch)))
}

/// The first word of `ROLE` at `address`, asked as the pool signs in.
async fn role(upstream: &Upstream, address: &str) -> Result<String, UpstreamError> {
    let mut setup = upstream.setup_commands(Protocol::Resp2);
    let required = setup.len();
    setup.push(args(&["ROLE"]));
    let (_, replies) = upstream.connect_to(address, &setup, required).await?;
    match decode(&replies[required])? {
        BytesFrame::Array { data, .. } => data.first().and_then(text).ok_or_else(|| bad("ROLE")),
        _ => Err(bad("ROLE")),
    }
}

/// Sends `setup` to a Sentinel and reads the replies, within `connect_timeout_ms`.
async fn exchange(
    upstream: &Upstream,
    sentinel: &str,
    setup: &[Vec<Bytes>],
    required: usize,
) -> Result<Vec<Bytes>, UpstreamError> {
    let timeout = upstream.config.connect_timeout();
    let attempt = async {
        let mut stream = upstream.open(sentinel).await?;
        run_setup(&mut stream, setup, required, SETUP_REPLY_LIMIT).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(UpstreamError::Timeout(timeout.as_millis() as u64)))
}

/// Subscribes to a Sentinel's failover events: `+switch-master` and `+promoted-slave` start a
/// round, `+failover-state-send-slaveof-noone` names the replica being promoted. Opens the
/// subscription again (after a second) whenever it breaks.
async fn listen(
    upstream: Arc<Upstream>,
    sentinel: String,
    name: String,
    promoting: mpsc::Sender<String>,
) {
    while !upstream.is_shut() {
        if let Err(error) = subscribed(&upstream, &sentinel, &name, &promoting).await {
            tracing::debug!(sentinel, %error, "Sentinel subscription dropped");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribed(
    upstream: &Upstream,
    sentinel: &str,
    name: &str,
    promoting: &mpsc::Sender<String>,
) -> Result<(), UpstreamError> {
    let mut setup = Vec::new();
    if let Some((user, password)) = upstream.config.sentinel.credentials() {
        setup.push(args(&["AUTH", &user, password.expose()]));
    }
    let required = setup.len() + 1;
    // `+promoted-slave` comes from the Sentinel leading a failover as soon as it has
    // promoted the replica, a little before its `+switch-master`.
    setup.push(args(&[
        "SUBSCRIBE",
        "+switch-master",
        "+promoted-slave",
        PROMOTING,
    ]));
    let timeout = upstream.config.connect_timeout();
    let mut stream = tokio::time::timeout(timeout, async {
        let mut stream = upstream.open(sentinel).await?;
        run_setup(&mut stream, &setup, required, SETUP_REPLY_LIMIT).await?;
        Ok::<_, UpstreamError>(stream)
    })
    .await
    .map_err(|_| UpstreamError::Timeout(timeout.as_millis() as u64))??;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(info) =
            resp::reply_frame(&buf).map_err(|e| UpstreamError::Lost(e.to_string()))?
        {
            let frame = buf.split_to(info.len).freeze();
            let Ok(BytesFrame::Array { data, .. }) = decode(&frame) else {
                continue;
            };
            let [kind, channel, message] = &data[..] else {
                continue;
            };
            if text(kind).as_deref() != Some("message") {
                continue;
            }
            let (channel, message) = (
                text(channel).unwrap_or_default(),
                text(message).unwrap_or_default(),
            );
            tracing::info!(sentinel, channel, message, "Sentinel event");
            if channel == PROMOTING {
                // "slave ip:port ip port @ name master-ip master-port"
                let words: Vec<&str> = message.split(' ').collect();
                if let [_, _, ip, port, _, of, ..] = words[..]
                    && of == name
                    && let Ok(port) = port.parse()
                {
                    let _ = promoting.try_send(host_port(ip, port));
                }
            } else {
                upstream.master.recheck.notify_one();
            }
        }
        if buf.len() > EVENT_LIMIT {
            return Err(UpstreamError::Lost(format!(
                "a Sentinel message of over {EVENT_LIMIT} bytes"
            )));
        }
        if upstream.is_shut() {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        // Woken every second to notice a shutdown: events are rare.
        let Ok(read) =
            tokio::time::timeout(Duration::from_secs(1), stream.read_buf(&mut buf)).await
        else {
            continue;
        };
        let n = read.map_err(|e| UpstreamError::Lost(e.to_string()))?;
        if n == 0 {
            return Err(UpstreamError::Lost(
                "the Sentinel closed the connection".into(),
            ));
        }
    }
}

fn decode(frame: &Bytes) -> Result<BytesFrame, UpstreamError> {
    match resp::decode_reply(frame) {
        Ok(Some((frame, _))) => Ok(frame),
        _ => Err(bad("a reply")),
    }
}

fn text(frame: &BytesFrame) -> Option<String> {
    match frame {
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        BytesFrame::Number { data, .. } => Some(data.to_string()),
        _ => None,
    }
}

fn bad(what: &str) -> UpstreamError {
    UpstreamError::Lost(format!("unexpected reply to {what}"))
}
