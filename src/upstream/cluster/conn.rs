//! The router: one upstream connection's worth of a Redis Cluster, behind an in-process
//! pipe that speaks RESP as one Redis node would.
//!
//! [`connect`] opens the router's *home* link (a primary, chosen in turn so connections
//! spread) with the connection's setup commands, and returns the pipe. The task then reads
//! commands from the pipe (whole, already checked by the session), routes each one, and
//! writes the replies back in command order:
//!
//! * a command with keys goes to its slot's primary (or a replica, for read-only commands
//!   with `read_from = "replica"`); keys in several slots are `-CROSSSLOT`, as Redis
//!   Cluster says it, except for MGET, MSET, DEL, UNLINK, EXISTS and TOUCH, which are split
//!   per slot and merged in the client's order ([`super::keys::Split`]);
//! * a command without keys goes to the home link, or to every primary with the replies
//!   merged (DBSIZE, KEYS, SCAN, FLUSHALL, ...: [`super::keys::Kind`]); PING is answered here;
//! * `-MOVED` patches the slot map and the command is sent again to the node named; `-ASK`
//!   sends `ASKING` and the command to the node named, leaving the map as it is; a command
//!   is redirected at most [`MAX_REDIRECTS`] times. `-TRYAGAIN` (a multi-key command while
//!   its slot migrates) is retried after [`TRYAGAIN_PAUSE`], as often. The client never sees
//!   the first two; after the limit it sees the last reply as Redis gave it;
//! * MULTI is answered here and the commands are queued here (`+QUEUED`, or Redis's
//!   unknown-command and arity errors, which abort the transaction as at Redis); EXEC sends
//!   `MULTI ... EXEC` to the node of the transaction's slot (the WATCHed slot's node if
//!   any) in one write, and forwards EXEC's reply. Keys in several slots are `-CROSSSLOT`.
//!   A transaction redirected while queueing (its slot moved) is sent again, whole, to the
//!   new owner unless keys were WATCHed there;
//! * connection state (AUTH, HELLO, SELECT, CLIENT SETNAME, CLIENT TRACKING, READONLY, ...)
//!   goes to every link open and is replayed on every link opened later (a link is opened
//!   on a node's first command, with the setup commands and that state);
//! * SUBSCRIBE and the like go to the home link (the cluster carries PUBLISH to every node),
//!   SSUBSCRIBE to the channels' slot's primary. The connection then streams (RESP2 and
//!   RESP3 alike): every frame from every link is forwarded as it comes, except a `-MOVED`
//!   answering a shard subscription, which is sent again to the new owner (Redis itself
//!   tells the client `sunsubscribe` when a slot moves away; the client subscribing again
//!   may reach the old owner before the map is refreshed).
//!
//! Replies are matched to commands per link by sequence number (each link answers in the
//! order it was written), so a command sent again after a redirect, behind later commands
//! on the same link, still gets its own reply.
//!
//! Failures: a link that breaks answers every command waiting on it with
//! `-ERR upstream connection lost: HOST:PORT: ...` (nothing is retried: a write may have
//! happened) and the map is refreshed; a node that cannot be reached answers
//! `-ERR upstream unavailable: HOST:PORT: ...` at once. A streaming connection that loses a
//! link closes, as a dedicated connection whose Redis went away does. The pipe closing (the
//! pool dropped the connection, a client left) ends the task and its links.
//!
//! Bounds: the pipe holds [`PIPE_BYTES`] each way (a writer waits beyond it); what waits for
//! the front command's reply is what the connection's user sent, which the pool and the
//! session already bound; each link's reader hands over whole frames only.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Cluster;
use super::keys::{self, CROSSSLOT, Command, Kind, Split};
use crate::config::ReadFrom;
use crate::net::{ReadHalf, Stream, WriteHalf};
use crate::resp::{FrameScanner, encode_command};
use crate::upstream::{Upstream, UpstreamError};

/// Bytes the pipe holds each way.
pub const PIPE_BYTES: usize = 1 << 20;
/// Redirects (`-MOVED`, `-ASK`) or `-TRYAGAIN` retries of one command before its reply is
/// given as Redis sent it.
pub const MAX_REDIRECTS: u8 = 16;
/// The pause before a `-TRYAGAIN` command is sent again.
pub const TRYAGAIN_PAUSE: Duration = Duration::from_millis(10);
/// SCAN's cursor is `node cursor * SCAN_NODES + node index`.
const SCAN_NODES: u64 = 1024;

static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);

/// Opens a router: its home link with `setup` (the first `required` replies must not be
/// errors), and the pipe to it. The replies to `setup` are the home node's.
pub async fn connect(
    upstream: Arc<Upstream>,
    cluster: Arc<Cluster>,
    setup: &[Vec<Bytes>],
    required: usize,
) -> Result<(Stream, Vec<Bytes>), UpstreamError> {
    cluster.ready(upstream.config.connect_timeout()).await?;
    let primaries: Vec<String> = cluster.map().primaries().map(str::to_owned).collect();
    if primaries.is_empty() {
        return Err(UpstreamError::Unavailable(
            "the cluster serves no slots yet".into(),
        ));
    }
    let start = NEXT_HOME.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for i in 0..primaries.len() {
        let home = &primaries[(start + i) % primaries.len()];
        let mut full = setup.to_vec();
        if cluster.read_from() == ReadFrom::Replica {
            full.push(crate::upstream::args(&["READONLY"]));
        }
        match upstream.connect_to(home, &full, required).await {
            Ok((stream, mut replies)) => {
                replies.truncate(setup.len());
                for reply in &mut replies {
                    *reply = standalone_hello(reply);
                }
                let resp3 = setup.iter().any(|c| is_hello3(c));
                let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
                let (frames_tx, frames_rx) = mpsc::unbounded_channel();
                let mut router = Router {
                    upstream,
                    cluster,
                    state: setup.to_vec(),
                    base_state: setup.len(),
                    required,
                    home: home.clone().into(),
                    links: FxHashMap::default(),
                    retired: HashMap::new(),
                    next_id: 0,
                    frames_tx,
                    pending: VecDeque::new(),
                    out: BytesMut::new(),
                    multi: None,
                    watch: None,
                    resp3,
                    streaming: Streaming::No,
                    shard_links: Vec::new(),
                    shard_sent: VecDeque::new(),
                    resend: Vec::new(),
                    replica_turn: 0,
                };
                router.adopt(home.clone().into(), stream);
                tokio::spawn(router.run(theirs, frames_rx));
                return Ok((Stream::Mem(ours), replies));
            }
            Err(e) => {
                cluster.node_lost();
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one primary was tried"))
}

fn is_hello3(command: &[Bytes]) -> bool {
    command
        .first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"hello"))
        && command.get(1).is_some_and(|v| &v[..] == b"3")
}

/// One connection to one node.
struct Link {
    id: u64,
    writer: WriteHalf,
    /// Written at the end of the current round.
    out: BytesMut,
    /// Sequence number of the next command written.
    next_seq: u64,
    /// Sequence number of `got`'s front.
    base: u64,
    /// Replies received and not yet taken (`None`: taken, waiting for the front to go).
    got: VecDeque<Option<Bytes>>,
    /// Why it broke, once it did.
    dead: Option<String>,
}

impl Link {
    fn write(&mut self, command: &[u8]) -> u64 {
        self.out.extend_from_slice(command);
        self.next_seq += 1;
        self.next_seq - 1
    }

    fn take(&mut self, seq: u64) -> Option<Bytes> {
        let index = seq.checked_sub(self.base)? as usize;
        let frame = self.got.get_mut(index)?.take();
        while matches!(self.got.front(), Some(None)) {
            self.got.pop_front();
            self.base += 1;
        }
        frame
    }
}

/// One command sent to one node, and its reply once in.
struct Part {
    address: Arc<str>,
    link: u64,
    seq: u64,
    /// The `ASKING` sent before it, whose reply is dropped.
    asking: Option<u64>,
    /// The command, for a redirect.
    command: Bytes,
    redirects: u8,
    reply: Option<Bytes>,
}

impl Part {
    fn failed(address: &Arc<str>, command: Bytes, reply: Bytes) -> Part {
        Part {
            address: address.clone(),
            link: u64::MAX,
            seq: 0,
            asking: None,
            command,
            redirects: 0,
            reply: Some(reply),
        }
    }
}

/// A command's reply, as it comes together.
enum Pending {
    /// Made here.
    Local(Bytes),
    /// One command's reply, forwarded.
    One(Part),
    /// Several commands' replies, merged.
    Merge(Vec<Part>, Merge),
    /// `MULTI`, the queued commands and `EXEC` on one node: EXEC's reply is forwarded.
    Exec { parts: Vec<Part>, watched: bool },
    /// The reply is dropped and this is given instead (UNWATCH behind DISCARD, ...).
    Replace(Part, &'static [u8]),
    /// A RESP2 subscription (or MONITOR): once its reply is out, the connection streams.
    StartStream(Part),
    /// INFO: forwarded with the cluster hidden (`redis_mode:standalone`).
    Info(Part),
}

enum Merge {
    /// MGET: each part's values go to these places of the reply.
    Mget(Vec<Vec<usize>>, usize),
    Sum,
    Concat,
    AllOk,
    First,
    /// A state command: kept for replay once the home node accepted it.
    State(Vec<Bytes>),
    /// SCAN on the primary with this index (of `primaries` at the time).
    Scan(usize),
}

#[derive(PartialEq, Eq)]
enum Streaming {
    No,
    /// A subscription is queued: commands after it are sent without waiting for replies.
    Soon,
    /// Every frame is forwarded as it comes.
    Yes,
}

/// A transaction being queued here.
#[derive(Default)]
struct Multi {
    commands: Vec<Command>,
    /// A command was refused while queueing: EXEC gives `-EXECABORT`.
    aborted: bool,
}

struct Router {
    upstream: Arc<Upstream>,
    cluster: Arc<Cluster>,
    /// Replayed on every link opened: the setup, then the state commands since.
    state: Vec<Vec<Bytes>>,
    base_state: usize,
    required: usize,
    home: Arc<str>,
    links: FxHashMap<Arc<str>, Link>,
    /// Broken links replaced by new ones, kept by id while replies that came in before
    /// the break wait to be taken.
    retired: HashMap<u64, Link>,
    next_id: u64,
    frames_tx: mpsc::UnboundedSender<(u64, Result<Vec<Bytes>, String>)>,
    pending: VecDeque<Pending>,
    /// Replies for the pipe, written at the end of the round.
    out: BytesMut,
    multi: Option<Multi>,
    /// The WATCHed keys' node and slot.
    watch: Option<(Arc<str>, u16)>,
    resp3: bool,
    streaming: Streaming,
    /// Nodes with shard subscriptions of this connection.
    shard_links: Vec<Arc<str>>,
    /// The last shard (un)subscriptions sent, to send again where a `-MOVED` points.
    shard_sent: VecDeque<Command>,
    /// Shard subscriptions to send again (to a new owner) before the next round.
    resend: Vec<(Arc<str>, Bytes)>,
    replica_turn: usize,
}

fn error_frame(message: &str) -> Bytes {
    crate::resp::reply::error_bytes(message)
}

impl Router {
    async fn run(
        mut self,
        pipe: tokio::io::DuplexStream,
        mut frames: mpsc::UnboundedReceiver<(u64, Result<Vec<Bytes>, String>)>,
    ) {
        let (mut reader, mut writer) = tokio::io::split(pipe);
        let mut input = BytesMut::new();
        loop {
            for (address, command) in std::mem::take(&mut self.resend) {
                if !self.shard_links.contains(&address) {
                    self.shard_links.push(address.clone());
                }
                if !self.send_unmatched(&address, &command).await {
                    return;
                }
            }
            if !self.settle().await {
                return;
            }
            if self.flush(&mut writer).await.is_err() {
                return;
            }
            tokio::select! {
                read = async {
                    crate::net::reserve(&mut input);
                    reader.read_buf(&mut input).await
                } => {
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => loop {
                            match Command::next(&mut input) {
                                Ok(Some(request)) => self.route(request).await,
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::error!(error = e, "cluster router: bad command on its pipe");
                                    return;
                                }
                            }
                        },
                    }
                }
                Some((id, frame)) = frames.recv() => {
                    if !self.received(id, frame) {
                        return;
                    }
                    while let Ok((id, frame)) = frames.try_recv() {
                        if !self.received(id, frame) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Frames (or the end) from a link. False when the connection must close.
    fn received(&mut self, id: u64, frames: Result<Vec<Bytes>, String>) -> bool {
        let Some(link) = self.links.values_mut().find(|l| l.id == id) else {
            return true;
        };
        match frames {
            Ok(frames) => {
                for frame in frames {
                    if self.streaming == Streaming::Yes {
                        if let Some((false, slot, address)) = parse_redirect(&frame)
                            && let Some(command) = self
                                .shard_sent
                                .iter()
                                .rev()
                                .find(|c| c.get(1).is_some_and(|ch| keys::slot(ch) == slot))
                        {
                            // A shard channel's slot moved: subscribe at its new owner.
                            self.cluster.moved(slot, &address);
                            self.resend
                                .push((address.as_str().into(), command.raw.clone()));
                            continue;
                        }
                        self.out.extend_from_slice(&frame);
                    } else if self.resp3 && frame.first() == Some(&b'>') {
                        self.out.extend_from_slice(&frame);
                    } else {
                        link.got.push_back(Some(frame));
                    }
                }
                true
            }
            Err(why) => {
                link.dead = Some(why);
                self.cluster.node_lost();
                self.streaming != Streaming::Yes
            }
        }
    }

    /// Writes what the links and the pipe have waiting.
    async fn flush(
        &mut self,
        pipe: &mut tokio::io::WriteHalf<tokio::io::DuplexStream>,
    ) -> std::io::Result<()> {
        for link in self.links.values_mut() {
            if link.out.is_empty() || link.dead.is_some() {
                link.out.clear();
                continue;
            }
            let out = link.out.split();
            if let Err(e) = link.writer.write_all(&out).await {
                link.dead = Some(e.to_string());
                self.cluster.node_lost();
            }
        }
        if !self.out.is_empty() {
            let out = self.out.split();
            pipe.write_all(&out).await?;
        }
        Ok(())
    }

    /// Takes a link opened elsewhere (the home link) and starts its reader.
    fn adopt(&mut self, address: Arc<str>, stream: Stream) {
        let (reader, writer) = stream.into_split();
        let id = self.next_id;
        self.next_id += 1;
        tokio::spawn(read_frames(id, reader, self.frames_tx.clone()));
        self.links.insert(
            address,
            Link {
                id,
                writer,
                out: BytesMut::new(),
                next_seq: 0,
                base: 0,
                got: VecDeque::new(),
                dead: None,
            },
        );
    }

    /// The live link to `address`, opened (with the state replayed) if there is none.
    async fn link(&mut self, address: &Arc<str>) -> Result<&mut Link, UpstreamError> {
        let live = self.links.get(address).is_some_and(|l| l.dead.is_none());
        if !live {
            let mut setup = self.state.clone();
            if self.cluster.read_from() == ReadFrom::Replica {
                setup.push(crate::upstream::args(&["READONLY"]));
            }
            match self
                .upstream
                .connect_to(address, &setup, self.required)
                .await
            {
                Ok((stream, _)) => {
                    if let Some(old) = self.links.remove(&**address)
                        && old.got.iter().any(Option::is_some)
                    {
                        self.retired.insert(old.id, old);
                    }
                    self.adopt(address.clone(), stream)
                }
                Err(e) => {
                    self.cluster.node_lost();
                    return Err(e);
                }
            }
        }
        Ok(self.links.get_mut(&**address).expect("just made"))
    }

    /// Sends `command` to `address` (after `ASKING` for an `-ASK` redirect).
    async fn send(&mut self, address: &Arc<str>, command: Bytes, asking: bool) -> Part {
        match self.link(address).await {
            Ok(link) => {
                let asking = asking.then(|| link.write(b"*1\r\n$6\r\nASKING\r\n"));
                let seq = link.write(&command);
                Part {
                    address: address.clone(),
                    link: link.id,
                    seq,
                    asking,
                    command,
                    redirects: 0,
                    reply: None,
                }
            }
            Err(e) => Part::failed(address, command, e.to_frame()),
        }
    }

    /// Sends a command no reply is awaited for (RESP3 subscriptions, whose replies are
    /// pushes; commands of a streaming connection).
    async fn send_unmatched(&mut self, address: &Arc<str>, command: &[u8]) -> bool {
        match self.link(address).await {
            Ok(link) => {
                link.out.extend_from_slice(command);
                true
            }
            Err(_) => false,
        }
    }

    /// Fills `part`'s reply if it is in. True when it is.
    fn fill(
        links: &mut FxHashMap<Arc<str>, Link>,
        retired: &mut HashMap<u64, Link>,
        part: &mut Part,
    ) -> bool {
        if part.reply.is_some() {
            return true;
        }
        let done = Self::fill_from(links, retired, part);
        if let Some(old) = retired.get(&part.link)
            && !old.got.iter().any(Option::is_some)
        {
            retired.remove(&part.link);
        }
        done
    }

    fn fill_from(
        links: &mut FxHashMap<Arc<str>, Link>,
        retired: &mut HashMap<u64, Link>,
        part: &mut Part,
    ) -> bool {
        let current = links.get_mut(&*part.address).filter(|l| l.id == part.link);
        let Some(link) = current.or_else(|| retired.get_mut(&part.link)) else {
            part.reply = Some(error_frame(&format!(
                "ERR upstream connection lost: {}",
                part.address
            )));
            return true;
        };
        if let Some(asking) = part.asking {
            if link.take(asking).is_none() {
                if let Some(why) = &link.dead {
                    part.reply = Some(error_frame(&format!(
                        "ERR upstream connection lost: {}: {why}",
                        part.address
                    )));
                    return true;
                }
                return false;
            }
            part.asking = None;
        }
        match link.take(part.seq) {
            Some(frame) => {
                part.reply = Some(frame);
                true
            }
            None => match &link.dead {
                Some(why) => {
                    part.reply = Some(error_frame(&format!(
                        "ERR upstream connection lost: {}: {why}",
                        part.address
                    )));
                    true
                }
                None => false,
            },
        }
    }

    /// Follows a redirect in `part`'s reply, if any: true when the part was sent again.
    async fn redirect(&mut self, part: &mut Part) -> bool {
        let Some(reply) = &part.reply else {
            return false;
        };
        if part.redirects >= MAX_REDIRECTS {
            return false;
        }
        let (asking, slot, address) = match parse_redirect(reply) {
            Some(r) => r,
            None if reply.starts_with(b"-TRYAGAIN") => {
                tokio::time::sleep(TRYAGAIN_PAUSE).await;
                let redirects = part.redirects + 1;
                let address = part.address.clone();
                *part = self.send(&address, part.command.clone(), false).await;
                part.redirects = redirects;
                return true;
            }
            None => return false,
        };
        if asking {
            self.cluster.redirects.with_label_values(&["ask"]).inc();
        } else {
            self.cluster.moved(slot, &address);
        }
        let redirects = part.redirects + 1;
        *part = self
            .send(&address.as_str().into(), part.command.clone(), asking)
            .await;
        part.redirects = redirects;
        true
    }

    /// Writes every reply that is complete, in order. False when the connection must close.
    async fn settle(&mut self) -> bool {
        while let Some(mut front) = self.pending.pop_front() {
            match self.try_finish(&mut front).await {
                Some(reply) => {
                    self.out.extend_from_slice(&reply);
                    if matches!(front, Pending::StartStream(_)) {
                        self.start_streaming();
                    }
                }
                None => {
                    self.pending.push_front(front);
                    break;
                }
            }
        }
        true
    }

    /// Streams from now on: every reply already in goes out as it is.
    fn start_streaming(&mut self) {
        self.streaming = Streaming::Yes;
        for link in self.links.values_mut() {
            for frame in link.got.drain(..).flatten() {
                self.out.extend_from_slice(&frame);
            }
            link.base = link.next_seq;
        }
    }

    /// The reply of `pending` if it is complete (following redirects on the way).
    async fn try_finish(&mut self, pending: &mut Pending) -> Option<Bytes> {
        match pending {
            Pending::Local(bytes) => Some(bytes.clone()),
            Pending::One(part) | Pending::StartStream(part) => loop {
                if !Self::fill(&mut self.links, &mut self.retired, part) {
                    return None;
                }
                if !self.redirect(part).await {
                    return part.reply.clone();
                }
            },
            Pending::Info(part) => loop {
                if !Self::fill(&mut self.links, &mut self.retired, part) {
                    return None;
                }
                if !self.redirect(part).await {
                    return part.reply.as_ref().map(standalone_info);
                }
            },
            Pending::Replace(part, with) => {
                if !Self::fill(&mut self.links, &mut self.retired, part) {
                    return None;
                }
                Some(Bytes::from_static(with))
            }
            Pending::Merge(parts, how) => {
                loop {
                    let mut all = true;
                    for part in parts.iter_mut() {
                        all &= Self::fill(&mut self.links, &mut self.retired, part);
                    }
                    if !all {
                        return None;
                    }
                    let mut again = false;
                    for part in parts.iter_mut() {
                        again |= self.redirect(part).await;
                    }
                    if !again {
                        break;
                    }
                }
                Some(self.merge(parts, how))
            }
            Pending::Exec { parts, watched } => loop {
                let mut all = true;
                for part in parts.iter_mut() {
                    all &= Self::fill(&mut self.links, &mut self.retired, part);
                }
                if !all {
                    return None;
                }
                let exec = parts
                    .last()
                    .and_then(|p| p.reply.clone())
                    .unwrap_or_default();
                let redirect = parts[..parts.len() - 1]
                    .iter()
                    .find_map(|p| p.reply.as_deref().and_then(parse_redirect));
                let tries = parts[0].redirects;
                match redirect {
                    Some((asking, slot, address))
                        if !*watched
                            && tries < MAX_REDIRECTS
                            && exec.starts_with(b"-EXECABORT") =>
                    {
                        if !asking {
                            self.cluster.moved(slot, &address);
                        }
                        let commands: Vec<Bytes> =
                            parts.iter().map(|p| p.command.clone()).collect();
                        let mut again = Vec::with_capacity(commands.len());
                        for (i, command) in commands.into_iter().enumerate() {
                            let mut part = self
                                .send(&address.as_str().into(), command, asking && i == 0)
                                .await;
                            part.redirects = tries + 1;
                            again.push(part);
                        }
                        *parts = again;
                    }
                    _ => return Some(exec),
                }
            },
        }
    }

    fn merge(&mut self, parts: &[Part], how: &Merge) -> Bytes {
        let replies: Vec<&Bytes> = parts
            .iter()
            .map(|p| p.reply.as_ref().expect("filled"))
            .collect();
        if let Merge::State(command) = how {
            let first = standalone_hello(replies[0]);
            if !first.starts_with(b"-") {
                if is_hello3(command) {
                    self.resp3 = true;
                } else if command[0].eq_ignore_ascii_case(b"hello") {
                    self.resp3 = false;
                }
                self.state.push(command.clone());
            }
            return first;
        }
        if let Merge::First = how {
            return replies[0].clone();
        }
        if let Some(error) = replies.iter().find(|r| r.starts_with(b"-")) {
            return (*error).clone();
        }
        match how {
            Merge::Sum => {
                let total: i64 = replies.iter().filter_map(|r| integer(r)).sum();
                Bytes::from(format!(":{total}\r\n"))
            }
            Merge::AllOk => match replies.iter().find(|r| !r.starts_with(b"+OK")) {
                Some(other) => (*other).clone(),
                None => Bytes::from_static(b"+OK\r\n"),
            },
            Merge::Concat => {
                let mut items = Vec::new();
                for reply in &replies {
                    match elements(reply) {
                        Some(e) => items.extend(e),
                        None => return (*reply).clone(),
                    }
                }
                array(&items)
            }
            Merge::Mget(places, total) => {
                let mut items: Vec<Bytes> = vec![Bytes::new(); *total];
                for (reply, places) in replies.iter().zip(places) {
                    match elements(reply) {
                        Some(values) if values.len() == places.len() => {
                            for (value, &at) in values.into_iter().zip(places) {
                                items[at] = value;
                            }
                        }
                        _ => return (*reply).clone(),
                    }
                }
                array(&items)
            }
            Merge::Scan(index) => {
                let reply = replies[0];
                let Some(parts) = elements(reply) else {
                    return reply.clone();
                };
                let (Some(cursor), Some(keys)) = (parts.first(), parts.get(1)) else {
                    return reply.clone();
                };
                let Some(cursor) = bulk_text(cursor).and_then(|c| c.parse::<u64>().ok()) else {
                    return reply.clone();
                };
                let count = self.cluster.map().primaries().count();
                let next = if cursor != 0 {
                    match cursor.checked_mul(SCAN_NODES) {
                        Some(c) => c + *index as u64,
                        None => {
                            return error_frame(
                                "ERR cachet: a node's SCAN cursor is too large to carry its node",
                            );
                        }
                    }
                } else if index + 1 < count {
                    *index as u64 + 1
                } else {
                    0
                };
                let cursor = next.to_string();
                let mut out = BytesMut::new();
                out.extend_from_slice(b"*2\r\n");
                out.extend_from_slice(format!("${}\r\n{cursor}\r\n", cursor.len()).as_bytes());
                out.extend_from_slice(keys);
                out.freeze()
            }
            Merge::State(_) | Merge::First => unreachable!("handled above"),
        }
    }

    /// Routes one command from the pipe.
    async fn route(&mut self, request: Command) {
        if self.multi.is_some() {
            return self.queue(request).await;
        }
        if self.streaming != Streaming::No {
            return self.route_streaming(request).await;
        }
        let pending = match keys::kind(&request) {
            Kind::Ping if request.len() == 1 => Pending::Local(Bytes::from_static(b"+PONG\r\n")),
            Kind::Ping if request.len() == 2 => Pending::Local(bulk(request.arg(1))),
            Kind::Ping => self.home_node(request).await,
            Kind::Multi => {
                self.multi = Some(Multi::default());
                Pending::Local(Bytes::from_static(b"+OK\r\n"))
            }
            Kind::Exec => Pending::Local(error_frame("ERR EXEC without MULTI")),
            Kind::Discard => Pending::Local(error_frame("ERR DISCARD without MULTI")),
            Kind::Watch => self.watch(request).await,
            Kind::Unwatch => match self.watch.take() {
                Some((address, _)) => Pending::One(self.send(&address, request.raw, false).await),
                None => Pending::Local(Bytes::from_static(b"+OK\r\n")),
            },
            Kind::State => {
                let parts = self.everywhere(&request.raw).await;
                Pending::Merge(parts, Merge::State(request.to_args()))
            }
            Kind::Reset => {
                self.state.truncate(self.base_state);
                self.watch = None;
                self.resp3 = self.state.iter().any(|c| is_hello3(c));
                let parts = self.everywhere(&request.raw).await;
                Pending::Merge(parts, Merge::First)
            }
            Kind::Sum => self.on_primaries(&request.raw, Merge::Sum).await,
            Kind::Concat => self.on_primaries(&request.raw, Merge::Concat).await,
            Kind::AllOk => self.on_primaries(&request.raw, Merge::AllOk).await,
            Kind::AllFirst => self.on_primaries(&request.raw, Merge::First).await,
            Kind::Scan => self.scan(request).await,
            Kind::Subscribe | Kind::ShardSubscribe => {
                let address = match self.subscription_node(&request) {
                    Ok(a) => a,
                    Err(reply) => {
                        self.pending.push_back(Pending::Local(reply));
                        return;
                    }
                };
                self.remember_shard_command(&request);
                self.streaming = Streaming::Soon;
                Pending::StartStream(self.send(&address, request.raw, false).await)
            }
            Kind::Split(how) => self.split(request, how).await,
            Kind::Plain if request.arg(0).eq_ignore_ascii_case(b"info") => {
                let home = self.current_home();
                Pending::Info(self.send(&home, request.raw, false).await)
            }
            Kind::Plain => self.plain(request).await,
        };
        self.pending.push_back(pending);
    }

    async fn home_node(&mut self, request: Command) -> Pending {
        let home = self.current_home();
        Pending::One(self.send(&home, request.raw, false).await)
    }

    /// The home node, moved to a live primary once the map no longer names it one (its
    /// primary failed over, or its slots moved away): commands without keys must not keep
    /// failing at a node that is gone.
    fn current_home(&mut self) -> Arc<str> {
        let map = self.cluster.map();
        let lost = self.links.get(&*self.home).is_none_or(|l| l.dead.is_some());
        if lost && !map.primaries().any(|p| *p == *self.home) {
            let primaries: Vec<&str> = map.primaries().collect();
            if !primaries.is_empty() {
                let next = NEXT_HOME.fetch_add(1, Ordering::Relaxed) % primaries.len();
                self.home = Arc::from(primaries[next]);
            }
        }
        self.home.clone()
    }

    /// A command with keys (or none: the home node).
    async fn plain(&mut self, request: Command) -> Pending {
        let (positions, readonly) = {
            let table = self.upstream.commands();
            let readonly = table.get(request.arg(0)).is_some_and(|c| c.readonly);
            (keys::positions(&request, &table), readonly)
        };
        match keys::one_slot(&request, &positions) {
            Err(keys::CrossSlot) => Pending::Local(Bytes::from_static(CROSSSLOT)),
            Ok(None) => self.home_node(request).await,
            Ok(Some(slot)) => {
                let address = match self.node_for(slot, readonly) {
                    Ok(a) => a,
                    Err(reply) => return Pending::Local(reply),
                };
                Pending::One(self.send(&address, request.raw, false).await)
            }
        }
    }

    /// The node for `slot`: its primary, or one of its replicas for a read with
    /// `read_from = "replica"`.
    fn node_for(&mut self, slot: u16, readonly: bool) -> Result<Arc<str>, Bytes> {
        let map = self.cluster.map();
        let Some(shard) = map.shard(slot) else {
            return Err(error_frame(&format!(
                "CLUSTERDOWN Hash slot {slot} is not served (cachet's slot map)"
            )));
        };
        if readonly
            && self.cluster.read_from() == ReadFrom::Replica
            && self.watch.is_none()
            && !shard.replicas.is_empty()
        {
            self.replica_turn = self.replica_turn.wrapping_add(1);
            return Ok(shard.replicas[self.replica_turn % shard.replicas.len()].clone());
        }
        Ok(shard.primary.clone())
    }

    /// MGET, MSET, DEL, UNLINK, EXISTS, TOUCH: one command per slot, merged.
    async fn split(&mut self, request: Command, how: Split) -> Pending {
        let step = if how == Split::Mset { 2 } else { 1 };
        if request.len() < 2 || !(request.len() - 1).is_multiple_of(step) {
            return self.home_node(request).await;
        }
        // Slots in order of first appearance, each with its arguments' positions.
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for at in (1..request.len()).step_by(step) {
            let slot = keys::slot(request.arg(at));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, at_list)) => at_list.push(at),
                None => groups.push((slot, vec![at])),
            }
        }
        if groups.len() == 1 {
            return self.plain(request).await;
        }
        let readonly = how == Split::Mget;
        let mut parts = Vec::with_capacity(groups.len());
        let mut places = Vec::with_capacity(groups.len());
        for (slot, at_list) in &groups {
            let address = match self.node_for(*slot, readonly) {
                Ok(a) => a,
                Err(reply) => {
                    parts.push(Part::failed(&Arc::from(""), Bytes::new(), reply));
                    places.push(Vec::new());
                    continue;
                }
            };
            let sub = request.pick(at_list, step);
            parts.push(self.send(&address, sub, false).await);
            places.push(at_list.iter().map(|at| (at - 1) / step).collect());
        }
        let merge = match how {
            Split::Mget => Merge::Mget(places, (request.len() - 1) / step),
            Split::Mset => Merge::AllOk,
            Split::Count => Merge::Sum,
        };
        Pending::Merge(parts, merge)
    }

    /// The command on every primary.
    async fn on_primaries(&mut self, command: &Bytes, merge: Merge) -> Pending {
        let primaries: Vec<Arc<str>> = self.cluster.map().primaries().map(Arc::from).collect();
        let mut parts = Vec::with_capacity(primaries.len());
        for address in primaries {
            parts.push(self.send(&address, command.clone(), false).await);
        }
        if parts.is_empty() {
            return Pending::Local(error_frame("CLUSTERDOWN the cluster serves no slots"));
        }
        Pending::Merge(parts, merge)
    }

    /// The command on the home link first, then every other live link.
    async fn everywhere(&mut self, command: &Bytes) -> Vec<Part> {
        let home = self.current_home();
        let mut addresses = vec![home.clone()];
        addresses.extend(
            self.links
                .iter()
                .filter(|(a, l)| **a != home && l.dead.is_none())
                .map(|(a, _)| a.clone()),
        );
        let mut parts = Vec::with_capacity(addresses.len());
        for address in addresses {
            parts.push(self.send(&address, command.clone(), false).await);
        }
        parts
    }

    /// SCAN: the cursor carries the node's index among the primaries.
    async fn scan(&mut self, request: Command) -> Pending {
        let Some(cursor) = request
            .get(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return self.home_node(request).await;
        };
        let index = (cursor % SCAN_NODES) as usize;
        let node_cursor = cursor / SCAN_NODES;
        let Some(address) = self.cluster.map().primaries().nth(index).map(Arc::from) else {
            return Pending::Local(Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"));
        };
        let mut args = request.to_args();
        args[1] = Bytes::from(node_cursor.to_string());
        let part = self.send(&address, encode_command(&args), false).await;
        Pending::Merge(vec![part], Merge::Scan(index))
    }

    async fn watch(&mut self, request: Command) -> Pending {
        let positions: Vec<usize> = (1..request.len()).collect();
        let slot = match keys::one_slot(&request, &positions) {
            Ok(Some(slot)) => slot,
            Ok(None) => return self.home_node(request).await,
            Err(keys::CrossSlot) => return Pending::Local(Bytes::from_static(CROSSSLOT)),
        };
        if let Some((_, watched)) = &self.watch
            && *watched != slot
        {
            return Pending::Local(Bytes::from_static(CROSSSLOT));
        }
        let address = match self.node_for(slot, false) {
            Ok(a) => a,
            Err(reply) => return Pending::Local(reply),
        };
        self.watch = Some((address.clone(), slot));
        Pending::One(self.send(&address, request.raw, false).await)
    }

    /// A command while MULTI is open.
    async fn queue(&mut self, request: Command) {
        let reply = match keys::kind(&request) {
            Kind::Multi => error_frame("ERR MULTI calls can not be nested"),
            Kind::Watch => error_frame("ERR WATCH inside MULTI is not allowed"),
            Kind::Discard => {
                self.multi = None;
                let pending = match self.watch.take() {
                    Some((address, _)) => {
                        Pending::Replace(self.send(&address, unwatch(), false).await, b"+OK\r\n")
                    }
                    None => Pending::Local(Bytes::from_static(b"+OK\r\n")),
                };
                self.pending.push_back(pending);
                return;
            }
            Kind::Exec => {
                let pending = self.exec().await;
                self.pending.push_back(pending);
                return;
            }
            Kind::Reset => {
                self.multi = None;
                return Box::pin(self.route(request)).await;
            }
            _ => match self.refusal(&request) {
                Some(error) => {
                    if let Some(multi) = &mut self.multi {
                        multi.aborted = true;
                    }
                    error
                }
                None => {
                    if let Some(multi) = &mut self.multi {
                        multi.commands.push(request);
                    }
                    Bytes::from_static(b"+QUEUED\r\n")
                }
            },
        };
        self.pending.push_back(Pending::Local(reply));
    }

    /// Redis's refusal of a command at queueing time: unknown, or the wrong arity.
    fn refusal(&self, request: &Command) -> Option<Bytes> {
        let table = self.upstream.commands();
        let name = request.arg(0);
        let Some(info) = table.get(name) else {
            let mut message = format!(
                "ERR unknown command '{}', with args beginning with: ",
                String::from_utf8_lossy(&name[..name.len().min(128)])
            );
            for arg in (1..request.len()).map(|i| request.arg(i)) {
                message.push_str(&format!(
                    "'{}' ",
                    String::from_utf8_lossy(&arg[..arg.len().min(128)])
                ));
            }
            return Some(error_frame(&message));
        };
        let argc = request.len() as i64;
        let wrong = if info.arity >= 0 {
            argc != info.arity
        } else {
            argc < -info.arity
        };
        wrong.then(|| {
            error_frame(&format!(
                "ERR wrong number of arguments for '{}' command",
                info.name
            ))
        })
    }

    /// EXEC: the queued transaction, whole, on its slot's node.
    async fn exec(&mut self) -> Pending {
        let multi = self.multi.take().unwrap_or_default();
        let watch = self.watch.take();
        let refused: Option<&'static [u8]> = if multi.aborted {
            Some(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
        } else {
            None
        };
        let mut slot = watch.as_ref().map(|(_, s)| *s);
        let mut crossslot = false;
        if refused.is_none() {
            let table = self.upstream.commands();
            'commands: for command in &multi.commands {
                let positions = keys::positions(command, &table);
                for at in positions {
                    let s = keys::slot(command.arg(at));
                    match slot {
                        None => slot = Some(s),
                        Some(seen) if seen != s => {
                            crossslot = true;
                            break 'commands;
                        }
                        _ => {}
                    }
                }
            }
        }
        let refused = refused.or(crossslot.then_some(CROSSSLOT));
        if let Some(reply) = refused {
            // Redis forgets the WATCHed keys after EXEC, whatever it answered.
            return match watch {
                Some((address, _)) => {
                    Pending::Replace(self.send(&address, unwatch(), false).await, reply)
                }
                None => Pending::Local(Bytes::from_static(reply)),
            };
        }
        let address = match (&watch, slot) {
            (Some((address, _)), _) => address.clone(),
            (None, Some(slot)) => match self.node_for(slot, false) {
                Ok(a) => a,
                Err(reply) => return Pending::Local(reply),
            },
            (None, None) => self.current_home(),
        };
        let mut commands = Vec::with_capacity(multi.commands.len() + 2);
        commands.push(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n"));
        commands.extend(multi.commands.into_iter().map(|c| c.raw));
        commands.push(Bytes::from_static(b"*1\r\n$4\r\nEXEC\r\n"));
        let mut parts = Vec::with_capacity(commands.len());
        for command in commands {
            parts.push(self.send(&address, command, false).await);
        }
        Pending::Exec {
            parts,
            watched: watch.is_some(),
        }
    }

    /// Where a subscription command goes: the home node, or the shard channels' slot's
    /// primary.
    fn subscription_node(&mut self, request: &Command) -> Result<Arc<str>, Bytes> {
        if !matches!(keys::kind(request), Kind::ShardSubscribe) {
            return Ok(self.current_home());
        }
        let positions: Vec<usize> = (1..request.len()).collect();
        match keys::one_slot(request, &positions) {
            Err(keys::CrossSlot) => Err(Bytes::from_static(CROSSSLOT)),
            Ok(None) => Ok(self
                .shard_links
                .first()
                .cloned()
                .unwrap_or_else(|| self.home.clone())),
            Ok(Some(slot)) => {
                let address = self.node_for(slot, false)?;
                if !self.shard_links.contains(&address) {
                    self.shard_links.push(address.clone());
                }
                Ok(address)
            }
        }
    }

    /// Keeps a shard (un)subscription for [`parse_redirect`]'s `-MOVED` (the last 64).
    fn remember_shard_command(&mut self, request: &Command) {
        if keys::kind(request) == Kind::ShardSubscribe && request.len() > 1 {
            if self.shard_sent.len() == 64 {
                self.shard_sent.pop_front();
            }
            self.shard_sent.push_back(request.clone());
        }
    }

    /// A command of a connection that streams (or will once its subscription is in).
    async fn route_streaming(&mut self, request: Command) {
        let kind = keys::kind(&request);
        self.remember_shard_command(&request);
        let unsubscribe_all = kind == Kind::ShardSubscribe
            && request.len() == 1
            && request.arg(0).eq_ignore_ascii_case(b"sunsubscribe");
        let addresses = if unsubscribe_all {
            self.shard_links.clone()
        } else if kind == Kind::ShardSubscribe {
            match self.subscription_node(&request) {
                Ok(a) => vec![a],
                Err(reply) => {
                    self.out.extend_from_slice(&reply);
                    return;
                }
            }
        } else if kind == Kind::Plain {
            let positions = keys::positions(&request, &self.upstream.commands());
            match keys::one_slot(&request, &positions) {
                Ok(Some(slot)) => match self.node_for(slot, false) {
                    Ok(a) => vec![a],
                    Err(reply) => {
                        self.out.extend_from_slice(&reply);
                        return;
                    }
                },
                Ok(None) => vec![self.home.clone()],
                Err(keys::CrossSlot) => {
                    self.out.extend_from_slice(CROSSSLOT);
                    return;
                }
            }
        } else {
            vec![self.home.clone()]
        };
        for address in addresses {
            if !self.send_unmatched(&address, &request.raw).await {
                self.out.extend_from_slice(&error_frame(&format!(
                    "ERR upstream unavailable: {address}"
                )));
            }
        }
    }
}

fn unwatch() -> Bytes {
    Bytes::from_static(b"*1\r\n$7\r\nUNWATCH\r\n")
}

/// Reads a link's replies and hands the whole frames of each read to the router.
async fn read_frames(
    id: u64,
    mut reader: ReadHalf,
    to: mpsc::UnboundedSender<(u64, Result<Vec<Bytes>, String>)>,
) {
    let mut buf = BytesMut::new();
    let mut scanner = FrameScanner::default();
    loop {
        let mut frames = Vec::new();
        let failed = loop {
            match scanner.scan(&buf) {
                Ok(Some(info)) => frames.push(buf.split_to(info.len).freeze()),
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        if !frames.is_empty() && to.send((id, Ok(frames))).is_err() {
            return;
        }
        if let Some(e) = failed {
            let _ = to.send((id, Err(e)));
            return;
        }
        match crate::net::read_available(&mut reader, &mut buf).await {
            Ok(0) => {
                let _ = to.send((id, Err("closed by Redis".into())));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = to.send((id, Err(e.to_string())));
                return;
            }
        }
    }
}

/// A HELLO reply as a standalone Redis gives it: `mode` is `standalone`, so that no client
/// takes cachet for a cluster and goes around it. Any other reply is returned as it is.
fn standalone_hello(reply: &Bytes) -> Bytes {
    const CLUSTER: &[u8] = b"$4\r\nmode\r\n$7\r\ncluster\r\n";
    const STANDALONE: &[u8] = b"$4\r\nmode\r\n$10\r\nstandalone\r\n";
    if !matches!(reply.first(), Some(b'*') | Some(b'%')) {
        return reply.clone();
    }
    match reply.windows(CLUSTER.len()).position(|w| w == CLUSTER) {
        Some(at) => {
            let mut out = BytesMut::with_capacity(reply.len() + 3);
            out.extend_from_slice(&reply[..at]);
            out.extend_from_slice(STANDALONE);
            out.extend_from_slice(&reply[at + CLUSTER.len()..]);
            out.freeze()
        }
        None => reply.clone(),
    }
}

/// An INFO reply as a standalone Redis gives it: `redis_mode:standalone` and
/// `cluster_enabled:0` (the node's other fields are its own).
fn standalone_info(reply: &Bytes) -> Bytes {
    let Some(kind @ (b'$' | b'=')) = reply.first().copied() else {
        return reply.clone();
    };
    let Some(header_end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return reply.clone();
    };
    let Some(body) = reply[header_end + 2..].strip_suffix(b"\r\n") else {
        return reply.clone();
    };
    let text = String::from_utf8_lossy(body);
    if !text.contains("redis_mode:cluster") && !text.contains("cluster_enabled:1") {
        return reply.clone();
    }
    let text = text
        .replace("redis_mode:cluster\r\n", "redis_mode:standalone\r\n")
        .replace("cluster_enabled:1\r\n", "cluster_enabled:0\r\n");
    let mut out = BytesMut::with_capacity(text.len() + 16);
    out.extend_from_slice(format!("{}{}\r\n", kind as char, text.len()).as_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// `-MOVED slot host:port` / `-ASK slot host:port`: (is it ASK, slot, address).
fn parse_redirect(reply: &[u8]) -> Option<(bool, u16, String)> {
    let (asking, rest) = if let Some(rest) = reply.strip_prefix(b"-MOVED ") {
        (false, rest)
    } else if let Some(rest) = reply.strip_prefix(b"-ASK ") {
        (true, rest)
    } else {
        return None;
    };
    let line = std::str::from_utf8(rest).ok()?.trim_end();
    let (slot, address) = line.split_once(' ')?;
    let slot: u16 = slot.parse().ok().filter(|&s| (s as usize) < super::SLOTS)?;
    // A node that does not know its own address names it `:port`.
    if address.starts_with(':') {
        return None;
    }
    Some((asking, slot, address.to_owned()))
}

fn integer(reply: &[u8]) -> Option<i64> {
    let line = reply.strip_prefix(b":")?;
    std::str::from_utf8(line).ok()?.trim_end().parse().ok()
}

/// The elements of an array reply (RESP2 `*` or RESP3 `*`/`~`), each as its own frame.
fn elements(reply: &Bytes) -> Option<Vec<Bytes>> {
    if !matches!(reply.first(), Some(b'*') | Some(b'~')) {
        return None;
    }
    let header_end = reply.windows(2).position(|w| w == b"\r\n")?;
    let count: i64 = std::str::from_utf8(&reply[1..header_end])
        .ok()?
        .parse()
        .ok()?;
    let mut rest = reply.slice(header_end + 2..);
    let mut items = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let info = FrameScanner::default().scan(&rest).ok()??;
        items.push(rest.split_to(info.len));
    }
    Some(items)
}

fn array(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        out.extend_from_slice(item);
    }
    out.freeze()
}

fn bulk(value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(value.len() + 16);
    out.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

fn bulk_text(frame: &Bytes) -> Option<String> {
    let mut frame = frame.clone();
    let header_end = frame.windows(2).position(|w| w == b"\r\n")?;
    frame.advance(header_end + 2);
    let body = frame.strip_suffix(b"\r\n")?;
    Some(String::from_utf8_lossy(body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_hidden_in_hello_and_info() {
        let hello = Bytes::from_static(
            b"*4\r\n$4\r\nmode\r\n$7\r\ncluster\r\n$4\r\nrole\r\n$6\r\nmaster\r\n",
        );
        assert_eq!(
            &standalone_hello(&hello)[..],
            b"*4\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
        );
        let info =
            Bytes::from_static(b"$44\r\nredis_mode:cluster\r\nx:1\r\ncluster_enabled:1\r\n\r\n");
        let out = standalone_info(&info);
        assert_eq!(
            &out[..],
            b"$47\r\nredis_mode:standalone\r\nx:1\r\ncluster_enabled:0\r\n\r\n"
        );
        let ok = Bytes::from_static(b"+OK\r\n");
        assert_eq!(standalone_hello(&ok), ok);
        assert_eq!(standalone_info(&ok), ok);
    }

    #[test]
    fn redirects_are_parsed() {
        assert_eq!(
            parse_redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some((false, 3999, "127.0.0.1:6381".into()))
        );
        assert_eq!(
            parse_redirect(b"-ASK 3999 10.0.0.1:7000\r\n"),
            Some((true, 3999, "10.0.0.1:7000".into()))
        );
        assert_eq!(parse_redirect(b"-MOVED 99999 h:1\r\n"), None);
        assert_eq!(parse_redirect(b"-ERR x\r\n"), None);
    }

    #[test]
    fn arrays_split_into_frames() {
        let reply = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:1\r\n");
        let items = elements(&reply).unwrap();
        assert_eq!(
            items,
            vec![
                Bytes::from_static(b"$1\r\na\r\n"),
                Bytes::from_static(b"$-1\r\n"),
                Bytes::from_static(b"*1\r\n:1\r\n"),
            ]
        );
        assert_eq!(array(&items), reply);
        assert_eq!(
            bulk_text(&Bytes::from_static(b"$2\r\n17\r\n")).as_deref(),
            Some("17")
        );
        assert_eq!(integer(b":42\r\n"), Some(42));
    }
}
