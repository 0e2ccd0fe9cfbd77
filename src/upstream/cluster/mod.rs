//! Redis Cluster behind cachet: a `redis-cluster://` url.
//!
//! Clients keep their plain, non-cluster Redis clients. Everything above this module (the
//! pool, dedicated connections, the out-of-band lane, identities) keeps talking to "one
//! Redis": in cluster mode [`super::Upstream::connect`] returns an in-process pipe
//! ([`crate::net::Stream::Mem`]) whose other end is a *router* task ([`conn`]) that speaks
//! RESP exactly as one Redis node would, and behind it holds a connection per cluster node.
//! So every feature built on connections works unchanged, and cluster routing lives here
//! only:
//!
//! * [`Cluster`] (this file): the slot map, learnt with `CLUSTER SHARDS` (`CLUSTER SLOTS`
//!   on servers without it), refreshed by one task, so refreshes are coalesced: every
//!   `refresh_ms` (1 s), at once after a `-MOVED` (the moved slot is patched into the map
//!   first, so the next command goes right without waiting), and every 100 ms while a node
//!   cannot be reached (a failover is picked up within that of the promotion).
//! * [`keys`]: where a command's keys are (the command table's first/last/step, and the
//!   key specs' `numkeys` and keyword forms by hand where the flags are not enough), and
//!   what a command without keys does on a cluster.
//! * [`conn`]: the router, one task per upstream connection (each pooled connection, lane,
//!   dedicated connection): routing, `-MOVED`/`-ASK` followed and never shown, multi-key
//!   commands split per slot and merged in the client's order, keyless commands fanned out,
//!   transactions pinned to their slot's node, replies in command order.
//!
//! What each command does on a cluster is the table in docs/ARCHITECTURE.md, "Redis
//! Cluster".

pub mod conn;
pub mod keys;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame as Frame;
use tokio::sync::{Notify, watch};

use super::{Upstream, UpstreamError, args};
use crate::config::{ClusterConfig, ReadFrom};

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;
/// A slot no node serves.
const UNASSIGNED: u16 = u16::MAX;
/// While a node cannot be reached, the map is asked for this often.
const DEGRADED_REFRESH: Duration = Duration::from_millis(100);
/// Refreshes are at least this far apart, however many `-MOVED` replies ask for one.
const MIN_GAP: Duration = Duration::from_millis(20);
/// At most this many nodes are taken from one map (a bound on what a reply can make cachet
/// hold and connect to).
const MAX_NODES: usize = 1000;

/// One shard: a primary and its replicas, by `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: Arc<str>,
    /// Replicas that were online when the map was read.
    pub replicas: Vec<Arc<str>>,
    /// How many slots it serves.
    pub slots: usize,
}

/// Which node serves each slot, as last learnt.
#[derive(Debug, Clone)]
pub struct SlotMap {
    /// Bumped on every change.
    pub version: u64,
    /// Index into `shards` per slot, or [`UNASSIGNED`].
    slots: Vec<u16>,
    /// Sorted by primary address, so "every primary" has a stable order (SCAN's cursor).
    pub shards: Vec<Shard>,
}

impl SlotMap {
    fn empty() -> Self {
        SlotMap {
            version: 0,
            slots: vec![UNASSIGNED; SLOTS],
            shards: Vec::new(),
        }
    }

    /// The shard serving `slot`.
    pub fn shard(&self, slot: u16) -> Option<&Shard> {
        match self.slots.get(slot as usize) {
            Some(&i) if i != UNASSIGNED => self.shards.get(i as usize),
            _ => None,
        }
    }

    /// The primary serving `slot`.
    pub fn primary(&self, slot: u16) -> Option<&str> {
        self.shard(slot).map(|s| &*s.primary)
    }

    /// Every primary serving at least one slot, in a stable order.
    pub fn primaries(&self) -> impl Iterator<Item = &str> {
        self.shards
            .iter()
            .filter(|s| s.slots > 0)
            .map(|s| &*s.primary)
    }

    /// Every node, primaries first.
    pub fn nodes(&self) -> Vec<(&str, bool)> {
        let mut nodes: Vec<(&str, bool)> =
            self.shards.iter().map(|s| (&*s.primary, true)).collect();
        for shard in &self.shards {
            nodes.extend(shard.replicas.iter().map(|r| (&**r, false)));
        }
        nodes
    }

    /// The map with `slot` served by `address` (a `-MOVED` reply's news).
    fn with_moved(&self, slot: u16, address: &str) -> SlotMap {
        let mut map = self.clone();
        let index = match map.shards.iter().position(|s| &*s.primary == address) {
            Some(i) => i,
            None => {
                map.shards.push(Shard {
                    primary: address.into(),
                    replicas: Vec::new(),
                    slots: 0,
                });
                map.shards.len() - 1
            }
        };
        if let Some(old) = map.slots.get(slot as usize).copied()
            && old != UNASSIGNED
        {
            map.shards[old as usize].slots -= 1;
        }
        map.slots[slot as usize] = index as u16;
        map.shards[index].slots += 1;
        map.version += 1;
        map
    }
}

/// Everything cachet knows of the cluster; one per [`Upstream`].
pub struct Cluster {
    config: ClusterConfig,
    /// `host:port` of each seed from the url.
    seeds: Vec<String>,
    /// Use a node's `tls-port` (a `rediss-cluster://` url).
    tls: bool,
    map: ArcSwap<SlotMap>,
    /// True once a map has been read.
    ready: watch::Sender<bool>,
    /// Why the last refresh failed, for the clients' errors while there is no map.
    last_error: std::sync::Mutex<String>,
    wake: Notify,
    /// A node could not be reached since the last refresh: refresh more often.
    degraded: AtomicBool,
    versions: AtomicU64,
    /// Refreshes of the slot map (`cachet_cluster_refreshes_total`).
    pub refreshes: prometheus::IntCounter,
    /// `-MOVED` and `-ASK` replies followed (`cachet_cluster_redirects_total{kind}`).
    pub redirects: prometheus::IntCounterVec,
}

impl Cluster {
    pub fn new(config: ClusterConfig, seeds: Vec<String>, tls: bool) -> Self {
        let (ready, _) = watch::channel(false);
        Cluster {
            config,
            seeds,
            tls,
            map: ArcSwap::from_pointee(SlotMap::empty()),
            ready,
            last_error: std::sync::Mutex::new("the cluster's slot map is not known yet".into()),
            wake: Notify::new(),
            degraded: AtomicBool::new(false),
            versions: AtomicU64::new(0),
            refreshes: prometheus::IntCounter::new(
                "cachet_cluster_refreshes_total",
                "Times cachet read the Redis Cluster's slot map",
            )
            .expect("a valid metric name"),
            redirects: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "cachet_cluster_redirects_total",
                    "MOVED and ASK replies cachet followed for its clients",
                ),
                &["kind"],
            )
            .expect("a valid metric name"),
        }
    }

    /// The slot map as last learnt.
    pub fn map(&self) -> arc_swap::Guard<Arc<SlotMap>> {
        self.map.load()
    }

    pub fn read_from(&self) -> ReadFrom {
        self.config.read_from
    }

    /// Asks the refresher for a new map soon (coalesced with any other request).
    pub fn refresh_soon(&self) {
        self.wake.notify_one();
    }

    /// A node could not be reached: refresh now, and often until the map has moved on.
    pub fn node_lost(&self) {
        self.degraded.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// A `-MOVED slot address` reply: the slot is patched into the map at once, and a full
    /// refresh follows.
    pub fn moved(&self, slot: u16, address: &str) {
        self.redirects.with_label_values(&["moved"]).inc();
        self.map.rcu(|map| {
            if map.primary(slot) == Some(address) {
                Arc::clone(map)
            } else {
                let mut next = map.with_moved(slot, address);
                next.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
                Arc::new(next)
            }
        });
        self.wake.notify_one();
    }

    /// Waits (at most `timeout`) until a slot map is known; the error says why there is none.
    pub async fn ready(&self, timeout: Duration) -> Result<(), UpstreamError> {
        let mut rx = self.ready.subscribe();
        if tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        Err(UpstreamError::Unavailable(
            self.last_error.lock().expect("not poisoned").clone(),
        ))
    }

    /// The refresher: one task, so two refreshes never run at once.
    pub async fn run(self: Arc<Self>, upstream: Arc<Upstream>) {
        let mut last = tokio::time::Instant::now() - MIN_GAP;
        loop {
            let since = last.elapsed();
            if since < MIN_GAP {
                tokio::time::sleep(MIN_GAP - since).await;
            }
            last = tokio::time::Instant::now();
            if upstream.is_shut() {
                return;
            }
            match self.refresh(&upstream).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cluster slot map refresh failed");
                    *self.last_error.lock().expect("not poisoned") = e;
                }
            }
            let wait = if self.degraded.load(Ordering::Relaxed) || !*self.ready.borrow() {
                DEGRADED_REFRESH
            } else {
                self.config.refresh()
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Reads the map from the first node that answers: the known nodes, then the seeds.
    async fn refresh(&self, upstream: &Upstream) -> Result<(), String> {
        self.refreshes.inc();
        let mut candidates: Vec<String> = {
            let map = self.map.load();
            map.nodes().into_iter().map(|(a, _)| a.to_owned()).collect()
        };
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut errors = Vec::new();
        let mut unreachable = false;
        for address in candidates {
            match self.read_map(upstream, &address).await {
                Ok(mut map) => {
                    let old = self.map.load();
                    let changed = old.shards != map.shards || old.slots != map.slots;
                    if changed {
                        map.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
                        if *self.ready.borrow() {
                            tracing::info!(
                                primaries = map.primaries().count(),
                                "cluster slot map changed"
                            );
                        }
                        self.map.store(Arc::new(map));
                    }
                    // Still degraded while a node the map names was unreachable.
                    self.degraded.store(unreachable, Ordering::Relaxed);
                    self.ready.send_replace(true);
                    return Ok(());
                }
                Err(e) => {
                    unreachable = true;
                    errors.push(e)
                }
            }
        }
        Err(format!(
            "no cluster node answered CLUSTER SHARDS: {}",
            errors.join("; ")
        ))
    }

    /// One node's view of the map.
    async fn read_map(&self, upstream: &Upstream, address: &str) -> Result<SlotMap, String> {
        let mut setup = upstream.setup_commands(crate::resp::Protocol::Resp2);
        let required = setup.len();
        setup.push(args(&["CLUSTER", "SHARDS"]));
        let (_, replies) = upstream
            .connect_to(address, &setup, required)
            .await
            .map_err(|e| e.to_string())?;
        let reply = replies.last().cloned().unwrap_or_default();
        if reply.starts_with(b"-") {
            let text = String::from_utf8_lossy(&reply).trim().to_owned();
            if text.contains("cluster support disabled") {
                return Err(format!("{address} is not a cluster node ({text})"));
            }
            // CLUSTER SHARDS is Redis 7.0's; older servers answer CLUSTER SLOTS.
            let mut setup = upstream.setup_commands(crate::resp::Protocol::Resp2);
            setup.push(args(&["CLUSTER", "SLOTS"]));
            let (_, replies) = upstream
                .connect_to(address, &setup, required)
                .await
                .map_err(|e| e.to_string())?;
            let reply = replies.last().cloned().unwrap_or_default();
            return parse_slots(&decode(&reply)?, self.tls)
                .map_err(|e| format!("{address}: CLUSTER SLOTS: {e}"));
        }
        parse_shards(&decode(&reply)?, self.tls)
            .map_err(|e| format!("{address}: CLUSTER SHARDS: {e}"))
    }
}

fn decode(reply: &[u8]) -> Result<Frame, String> {
    match redis_protocol::resp2::decode::decode_bytes(&Bytes::copy_from_slice(reply)) {
        Ok(Some((frame, _))) => Ok(frame),
        Ok(None) => Err("an incomplete reply".into()),
        Err(e) => Err(format!("a reply that is not RESP2: {e}")),
    }
}

fn text(frame: &Frame) -> Option<String> {
    match frame {
        Frame::BulkString(b) | Frame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        Frame::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(frame: &Frame) -> Option<i64> {
    match frame {
        Frame::Integer(i) => Some(*i),
        Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A map-as-array (`[name, value, name, value, ...]`) as pairs.
fn fields(frame: &Frame) -> Vec<(String, &Frame)> {
    match frame {
        Frame::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some((text(k)?, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `host:port` of a node as CLUSTER SHARDS describes it: its endpoint (else its ip), and its
/// TLS port for a TLS url.
fn node_address(node: &[(String, &Frame)], tls: bool) -> Option<String> {
    let get = |name: &str| node.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let host = get("endpoint")
        .and_then(text)
        .filter(|h| !h.is_empty() && h != "?")
        .or_else(|| get("ip").and_then(text))?;
    let port = if tls {
        get("tls-port")
            .and_then(int)
            .or_else(|| get("port").and_then(int))
    } else {
        get("port")
            .and_then(int)
            .or_else(|| get("tls-port").and_then(int))
    }?;
    let port = u16::try_from(port).ok().filter(|&p| p != 0)?;
    Some(crate::config::host_port(&host, port))
}

/// Builds the map from `CLUSTER SHARDS`.
pub fn parse_shards(reply: &Frame, tls: bool) -> Result<SlotMap, String> {
    let Frame::Array(shards) = reply else {
        return Err(format!("not an array: {reply:?}"));
    };
    let mut map = SlotMap::empty();
    let mut ranges = Vec::new();
    for shard in shards {
        let shard = fields(shard);
        let get = |name: &str| shard.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let mut primary = None;
        let mut replicas = Vec::new();
        if let Some(Frame::Array(nodes)) = get("nodes") {
            for node in nodes {
                let node = fields(node);
                let value = |name: &str| {
                    node.iter()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| text(v))
                };
                let Some(address) = node_address(&node, tls) else {
                    continue;
                };
                let online = value("health").is_none_or(|h| h == "online");
                match value("role").as_deref() {
                    Some("master") => primary = Some(address),
                    _ if online => replicas.push(Arc::<str>::from(address)),
                    _ => {}
                }
            }
        }
        let slots: Vec<i64> = match get("slots") {
            Some(Frame::Array(s)) => s.iter().filter_map(int).collect(),
            _ => Vec::new(),
        };
        let Some(primary) = primary else { continue };
        if map.shards.len() >= MAX_NODES {
            return Err(format!("more than {MAX_NODES} shards"));
        }
        replicas.sort();
        map.shards.push(Shard {
            primary: primary.into(),
            replicas,
            slots: 0,
        });
        ranges.push(slots);
    }
    assign(&mut map, ranges)?;
    Ok(map)
}

/// Builds the map from `CLUSTER SLOTS` (servers before 7.0).
pub fn parse_slots(reply: &Frame, tls: bool) -> Result<SlotMap, String> {
    let _ = tls; // CLUSTER SLOTS names the port clients use, whichever it is.
    let Frame::Array(entries) = reply else {
        return Err(format!("not an array: {reply:?}"));
    };
    let mut map = SlotMap::empty();
    let mut ranges: Vec<Vec<i64>> = Vec::new();
    for entry in entries {
        let Frame::Array(items) = entry else { continue };
        let (Some(start), Some(end)) = (items.first().and_then(int), items.get(1).and_then(int))
        else {
            continue;
        };
        let address = |node: &Frame| -> Option<String> {
            let Frame::Array(n) = node else { return None };
            let host = n
                .first()
                .and_then(text)
                .filter(|h| !h.is_empty() && h != "?")?;
            let port = u16::try_from(n.get(1).and_then(int)?).ok()?;
            Some(crate::config::host_port(&host, port))
        };
        let Some(primary) = items.get(2).and_then(address) else {
            continue;
        };
        let replicas: Vec<Arc<str>> = items
            .iter()
            .skip(3)
            .filter_map(address)
            .map(Arc::from)
            .collect();
        match map.shards.iter().position(|s| *s.primary == *primary) {
            Some(i) => ranges[i].extend([start, end]),
            None => {
                if map.shards.len() >= MAX_NODES {
                    return Err(format!("more than {MAX_NODES} shards"));
                }
                map.shards.push(Shard {
                    primary: primary.into(),
                    replicas,
                    slots: 0,
                });
                ranges.push(vec![start, end]);
            }
        }
    }
    assign(&mut map, ranges)?;
    Ok(map)
}

/// Sorts the shards by primary and fills the slot table from each shard's ranges.
fn assign(map: &mut SlotMap, ranges: Vec<Vec<i64>>) -> Result<(), String> {
    let mut order: Vec<usize> = (0..map.shards.len()).collect();
    order.sort_by(|&a, &b| map.shards[a].primary.cmp(&map.shards[b].primary));
    let shards: Vec<Shard> = order.iter().map(|&i| map.shards[i].clone()).collect();
    map.shards = shards;
    for (new, &old) in order.iter().enumerate() {
        for pair in ranges[old].chunks(2) {
            let [start, end] = pair else {
                return Err("a slot range without its end".into());
            };
            if *start < 0 || *end >= SLOTS as i64 || start > end {
                return Err(format!("slot range {start}-{end} is out of range"));
            }
            for slot in *start..=*end {
                map.slots[slot as usize] = new as u16;
            }
            map.shards[new].slots += (end - start + 1) as usize;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn node(port: i64, role: &str, health: &str) -> Frame {
        Frame::Array(vec![
            bulk("id"),
            bulk("abc"),
            bulk("port"),
            Frame::Integer(port),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Frame::Integer(7),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(ranges: &[i64], nodes: Vec<Frame>) -> Frame {
        Frame::Array(vec![
            bulk("slots"),
            Frame::Array(ranges.iter().map(|&i| Frame::Integer(i)).collect()),
            bulk("nodes"),
            Frame::Array(nodes),
        ])
    }

    #[test]
    fn shards_give_every_slot_its_primary_and_online_replicas() {
        let reply = Frame::Array(vec![
            shard(
                &[5461, 10922],
                vec![
                    node(7002, "replica", "online"),
                    node(7001, "master", "online"),
                ],
            ),
            shard(
                &[0, 5460, 16000, 16383],
                vec![
                    node(7000, "master", "online"),
                    node(7003, "replica", "failed"),
                ],
            ),
            shard(&[10923, 15999], vec![node(7004, "master", "online")]),
        ]);
        let map = parse_shards(&reply, false).unwrap();
        assert_eq!(map.primary(0), Some("127.0.0.1:7000"));
        assert_eq!(map.primary(16383), Some("127.0.0.1:7000"));
        assert_eq!(map.primary(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.primary(15999), Some("127.0.0.1:7004"));
        assert_eq!(
            map.shard(5461).unwrap().replicas,
            vec![Arc::from("127.0.0.1:7002")]
        );
        assert!(
            map.shard(0).unwrap().replicas.is_empty(),
            "a failed replica is left out"
        );
        assert_eq!(
            map.primaries().collect::<Vec<_>>(),
            vec!["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7004"]
        );
        assert_eq!(map.shards.iter().map(|s| s.slots).sum::<usize>(), SLOTS);
    }

    #[test]
    fn a_moved_slot_changes_owner_at_once() {
        let reply = Frame::Array(vec![shard(
            &[0, 16383],
            vec![node(7000, "master", "online")],
        )]);
        let map = parse_shards(&reply, false).unwrap();
        let moved = map.with_moved(42, "127.0.0.1:7009");
        assert_eq!(moved.primary(42), Some("127.0.0.1:7009"));
        assert_eq!(moved.primary(43), Some("127.0.0.1:7000"));
        assert_eq!(moved.shards[0].slots, SLOTS - 1);
    }

    #[test]
    fn cluster_slots_is_read_too() {
        let entry = |s: i64, e: i64, port: i64| {
            Frame::Array(vec![
                Frame::Integer(s),
                Frame::Integer(e),
                Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(port), bulk("id")]),
                Frame::Array(vec![
                    bulk("127.0.0.1"),
                    Frame::Integer(port + 10),
                    bulk("id2"),
                ]),
            ])
        };
        let reply = Frame::Array(vec![entry(0, 99, 7000), entry(100, 16383, 7001)]);
        let map = parse_slots(&reply, false).unwrap();
        assert_eq!(map.primary(99), Some("127.0.0.1:7000"));
        assert_eq!(map.primary(100), Some("127.0.0.1:7001"));
        assert_eq!(
            map.shard(100).unwrap().replicas,
            vec![Arc::from("127.0.0.1:7011")]
        );
    }

    #[test]
    fn a_bad_range_is_refused() {
        let reply = Frame::Array(vec![shard(
            &[0, 20000],
            vec![node(7000, "master", "online")],
        )]);
        assert!(parse_shards(&reply, false).is_err());
    }
}
