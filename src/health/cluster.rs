//! Health behind Redis Cluster: every node, primaries and replicas, checked on its own.
//!
//! The node list is `CLUSTER NODES` as one node sees it: unlike the routing table (`CLUSTER
//! SLOTS`, fred's cached state), it names the replicas, the nodes the cluster itself judges
//! failing (`fail?`, `fail`) and a failed primary after its replica took over. It is asked of a
//! node that answered the last check, else of the seeds (the control client's known primaries
//! and configured hosts); when none answers, the last list is checked again, so a node that
//! went down still shows, as down.
//!
//! Each node is checked on a connection of the check's own (a fred client per node, with the
//! control client's TLS, credentials and timeouts), all nodes at once: the PING round trip,
//! `INFO memory` and `DBSIZE`, as for a single Redis. Own connections, because a replica has
//! none in a primaries-only routing client, and a node's PING should not queue behind cachet's
//! traffic to it. A connection that is lost is opened again at the next check, not in the
//! background, so a dead node costs one refused connect per check. A check runs at once when
//! the control client loses a node's connection or sees the slot map change
//! (`super::recheck_on_events`), and every second while a node is down.
//!
//! The summary in [`Check`] ([`summarize`]): connected while any primary answers; memory and
//! keys summed over the primaries that answered; latency the worst node's; memory usage the
//! highest primary's (each node has its own `maxmemory`, and the first one full refuses
//! writes). `overall` judges each primary: down while it serves slots, slow, or full
//! (`super::assess`, the reasons name the node); a replica's state is reported, not judged.
//!
//! Bounded: at most [`MAX_NODES`] nodes are tracked (clients, `/metrics` series, `/health`
//! rows), primaries first; the rest are counted as omitted. A node's series in `/metrics` are
//! removed when it leaves the list, or changes role.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use tokio::task::JoinSet;

use super::{CHECK_TIMEOUT, Check, Measured, measure, now_ms};
use crate::metrics::Metrics;

/// The most nodes tracked: a bound on the connections, `/metrics` series and `/health` rows
/// the checks keep, whatever the cluster's size (Redis Cluster's own advice is at most 1,000).
pub const MAX_NODES: usize = 1000;

/// Nodes asked for the node list in one check, at most, one after the other.
const MAX_ASKED: usize = 3;
/// How long one of them may take to connect and answer `CLUSTER NODES`.
const ASK_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    #[default]
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// A node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    /// A replica's primary's id.
    pub primary_id: Option<String>,
    /// Slot ranges served, inclusive (none for a replica).
    pub slots: Vec<(u16, u16)>,
    /// `fail?` or `fail` when the cluster judges the node failing.
    pub failing: Option<&'static str>,
}

impl Listed {
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn address(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// The nodes in a `CLUSTER NODES` reply, less those without an address yet (`noaddr`,
/// `handshake`). Slots being imported or migrated (`[slot->-id]`) are the owner's still.
pub fn parse_nodes(text: &str) -> Vec<Listed> {
    text.lines().filter_map(parse_line).collect()
}

/// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`
fn parse_line(line: &str) -> Option<Listed> {
    let mut fields = line.split_ascii_whitespace();
    let id = fields.next()?;
    let address = fields.next()?;
    let flags: Vec<&str> = fields.next()?.split(',').collect();
    let primary = fields.next()?;
    let has = |flag: &str| flags.contains(&flag);
    if has("noaddr") || has("handshake") {
        return None;
    }
    let address = address.split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok().filter(|&p| p != 0)?;
    if host.is_empty() {
        return None;
    }
    let role = match (has("master"), has("slave")) {
        (true, _) => Role::Primary,
        (_, true) => Role::Replica,
        _ => return None,
    };
    let slot = |s: &str| s.parse::<u16>().ok();
    let slots = fields
        .skip(4)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((from, to)) => Some((slot(from)?, slot(to)?)),
            None => slot(s).map(|n| (n, n)),
        })
        .collect();
    Some(Listed {
        id: id.to_owned(),
        host: host.to_owned(),
        port,
        role,
        primary_id: (primary != "-").then(|| primary.to_owned()),
        slots,
        failing: match (has("fail"), has("fail?")) {
            (true, _) => Some("fail"),
            (_, true) => Some("fail?"),
            _ => None,
        },
    })
}

/// What one check of one node found.
#[derive(Debug, Clone, Default)]
pub struct NodeCheck {
    /// `host:port`, as the cluster announces it.
    pub address: String,
    pub id: String,
    pub role: Role,
    /// A replica's primary's address, when listed.
    pub primary: Option<String>,
    pub slots: Vec<(u16, u16)>,
    /// `fail?` or `fail` when the cluster judges the node failing.
    pub failing: Option<&'static str>,
    /// The node answered this check.
    pub up: bool,
    /// The fastest PING round trip, ms.
    pub latency_ms: f64,
    pub used_memory: u64,
    /// `used_memory` as a percentage of the basis.
    pub memory_usage: f64,
    /// `"maxmemory"` or `"system"`, as for a single Redis.
    pub memory_basis: &'static str,
    pub keys: u64,
    /// Why the node did not answer.
    pub error: Option<String>,
}

impl NodeCheck {
    /// Slots the node serves.
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(from, to)| u32::from(to.saturating_sub(from)) + 1)
            .sum()
    }

    /// Whether a client's keys are lost while the node is down: a primary serving slots.
    pub fn serves(&self) -> bool {
        self.role == Role::Primary && !self.slots.is_empty()
    }
}

/// What the checks keep from one to the next: the connections, the last list, and the
/// series in `/metrics`. Only the monitor loop checks, so the locks are never contended.
#[derive(Default)]
pub struct Nodes {
    /// The check's own connection to each node, by address.
    clients: Mutex<HashMap<String, Client>>,
    /// The last list, checked again when no node answers `CLUSTER NODES`.
    listed: Mutex<Vec<Listed>>,
    /// The (node, role) pairs with series in `/metrics`.
    series: Mutex<HashSet<(String, Role)>>,
}

/// How the check's connections are made: the control client's settings, one server each.
struct Template {
    config: Config,
    connection: ConnectionConfig,
    performance: PerformanceConfig,
    /// `[upstream.tls] server_name`, when the control client carries one.
    tls_name: Option<String>,
}

impl Template {
    fn of(control: &Client) -> Self {
        let config = control.client_config();
        let tls_name = config
            .server
            .hosts()
            .into_iter()
            .find_map(|s| s.tls_server_name.map(|n| n.to_string()));
        Template {
            config,
            connection: control.connection_config().clone(),
            performance: control.perf_config(),
            tls_name,
        }
    }

    /// A client of `host:port` alone that fails at once rather than retrying: the next check
    /// is the retry. Its policy allows one immediate reconnect: without any, fred leaves a
    /// client whose connection closed marked connected, and commands sent to it wait for
    /// nothing; after a failed attempt it reads as disconnected, and the check connects anew.
    fn client(&self, host: &str, port: u16) -> Client {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized {
            server: Server::new_with_tls(host, port, self.tls_name.clone()),
        };
        config.fail_fast = true;
        config.database = None;
        Client::new(
            config,
            Some(self.performance.clone()),
            Some(self.connection.clone()),
            Some(ReconnectPolicy::new_constant(1, 0)),
        )
    }
}

fn quit_later(client: Client) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CHECK_TIMEOUT, client.quit()).await;
    });
}

/// `client` if it is still connected, else a new connection to `host:port`.
async fn connected(
    template: &Template,
    client: Option<Client>,
    host: &str,
    port: u16,
) -> Result<Client, String> {
    match client {
        Some(client) if client.is_connected() => return Ok(client),
        Some(client) => quit_later(client),
        None => {}
    }
    let client = template.client(host, port);
    match tokio::time::timeout(CHECK_TIMEOUT, client.init()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(error)) => Err(match error.kind() {
            // fred words a refused connect as a Debug dump: the socket's own error is clearer.
            ErrorKind::IO => tcp_cause(host, port)
                .await
                .unwrap_or_else(|| error.to_string()),
            _ => error.to_string(),
        }),
        Err(_) => {
            quit_later(client);
            Err(format!(
                "no connection within {} ms",
                CHECK_TIMEOUT.as_millis()
            ))
        }
    }
}

/// Why a TCP connection to `host:port` fails, if it does.
async fn tcp_cause(host: &str, port: u16) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Err(error)) => Some(error.to_string()),
        _ => None,
    }
}

/// The node list, asked of a node that answered the last check, else of the seeds: at most
/// [`MAX_ASKED`] of them, each given [`ASK_TIMEOUT`], so a node that stopped answering
/// without closing its connection delays the check by that much, once.
async fn list(nodes: &Nodes, template: &Template, control: &Client) -> Result<Vec<Listed>, String> {
    let mut candidates: Vec<(String, u16)> = {
        let clients = nodes.clients.lock().expect("nodes lock");
        let listed = nodes.listed.lock().expect("nodes lock");
        listed
            .iter()
            .filter(|n| clients.get(&n.address()).is_some_and(Client::is_connected))
            .map(|n| (n.host.clone(), n.port))
            .collect()
    };
    let known = control
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default();
    for seed in known
        .into_iter()
        .chain(control.client_config().server.hosts())
    {
        let seed = (seed.host.to_string(), seed.port);
        if !candidates.contains(&seed) {
            candidates.push(seed);
        }
    }
    let mut last_error = "no node to ask".to_owned();
    for (host, port) in candidates.into_iter().take(MAX_ASKED) {
        let address = address(&host, port);
        let existing = nodes.clients.lock().expect("nodes lock").remove(&address);
        let asked = tokio::time::timeout(ASK_TIMEOUT, async {
            let client = connected(template, existing, &host, port).await?;
            let answer = client.cluster_nodes::<String>().await;
            Ok::<_, String>((client, answer))
        })
        .await;
        match asked {
            Ok(Ok((client, answer))) => {
                nodes
                    .clients
                    .lock()
                    .expect("nodes lock")
                    .insert(address.clone(), client);
                match answer {
                    Ok(text) => return Ok(parse_nodes(&text)),
                    Err(error) => last_error = format!("{address}: {error}"),
                }
            }
            Ok(Err(error)) => last_error = format!("{address}: {error}"),
            Err(_) => {
                last_error = format!(
                    "{address}: no reply to CLUSTER NODES within {} ms",
                    ASK_TIMEOUT.as_millis()
                )
            }
        }
    }
    Err(last_error)
}

/// Checks one node on `client` (or a new connection), and gives the connection back.
async fn check_node(
    template: Arc<Template>,
    node: Listed,
    primary: Option<String>,
    client: Option<Client>,
    metrics: Arc<Metrics>,
) -> (NodeCheck, Option<Client>) {
    let mut found = NodeCheck {
        address: node.address(),
        id: node.id.clone(),
        role: node.role,
        primary,
        slots: node.slots.clone(),
        failing: node.failing,
        ..NodeCheck::default()
    };
    let client = match connected(&template, client, &node.host, node.port).await {
        Ok(client) => client,
        Err(error) => {
            found.error = Some(error);
            return (found, None);
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, measure(&client, &metrics)).await {
        Ok(Ok(Measured {
            latency,
            memory,
            keys,
        })) => {
            found.up = true;
            found.latency_ms = latency.as_secs_f64() * 1000.0;
            found.used_memory = memory.used;
            found.memory_usage = memory.usage();
            found.memory_basis = memory.basis;
            found.keys = keys;
            (found, Some(client))
        }
        Ok(Err(error)) => {
            quit_later(client);
            // A connection lost mid-check says little ("Canceled"): a new one says why.
            found.error = Some(
                match connected(&template, None, &node.host, node.port).await {
                    Err(why) => why,
                    Ok(fresh) => {
                        quit_later(fresh);
                        error.to_string()
                    }
                },
            );
            (found, None)
        }
        Err(_) => {
            found.error = Some(format!("no reply within {} ms", CHECK_TIMEOUT.as_millis()));
            quit_later(client);
            (found, None)
        }
    }
}

/// One check of every node of the cluster behind `control`; updates the per-node series.
pub(super) async fn check(nodes: &Nodes, control: &Client, metrics: &Arc<Metrics>) -> Check {
    let at_ms = now_ms();
    let template = Arc::new(Template::of(control));
    let mut listed = match list(nodes, &template, control).await {
        Ok(listed) if !listed.is_empty() => listed,
        outcome => {
            let previous = nodes.listed.lock().expect("nodes lock").clone();
            if previous.is_empty() {
                let why = outcome.err().unwrap_or_else(|| "no node listed".to_owned());
                return Check {
                    cluster: true,
                    error: Some(format!("no cluster node answered CLUSTER NODES: {why}")),
                    at_ms,
                    ..Check::default()
                };
            }
            previous
        }
    };
    listed.sort_by_key(|n| (n.role, n.address()));
    let omitted = listed.len().saturating_sub(MAX_NODES);
    listed.truncate(MAX_NODES);
    let addresses: HashMap<String, String> =
        listed.iter().map(|n| (n.id.clone(), n.address())).collect();
    let mut clients = std::mem::take(&mut *nodes.clients.lock().expect("nodes lock"));
    let mut running = JoinSet::new();
    for (i, node) in listed.iter().enumerate() {
        let primary = node
            .primary_id
            .as_ref()
            .and_then(|id| addresses.get(id))
            .cloned();
        let client = clients.remove(&node.address());
        let task = check_node(
            template.clone(),
            node.clone(),
            primary,
            client,
            metrics.clone(),
        );
        running.spawn(async move { (i, task.await) });
    }
    // Whoever left the list keeps no connection.
    clients.into_values().for_each(quit_later);
    let mut found: Vec<Option<NodeCheck>> = vec![None; listed.len()];
    let mut kept = HashMap::new();
    while let Some(joined) = running.join_next().await {
        if let Ok((i, (node, client))) = joined {
            if let Some(client) = client {
                kept.insert(node.address.clone(), client);
            }
            found[i] = Some(node);
        }
    }
    *nodes.clients.lock().expect("nodes lock") = kept;
    *nodes.listed.lock().expect("nodes lock") = listed;
    let found: Vec<NodeCheck> = found.into_iter().flatten().collect();
    update_series(nodes, metrics, &found);
    summarize(found, omitted, at_ms)
}

/// Sets each node's series, and removes those of nodes gone or changed role.
fn update_series(nodes: &Nodes, metrics: &Metrics, found: &[NodeCheck]) {
    let gauges = &metrics.upstream_nodes;
    let mut series = nodes.series.lock().expect("nodes lock");
    let now: HashSet<(String, Role)> = found.iter().map(|n| (n.address.clone(), n.role)).collect();
    for (node, role) in series.difference(&now) {
        gauges.remove(node, role.as_str());
    }
    for node in found {
        let figures = node.up.then(|| {
            (
                node.latency_ms / 1000.0,
                node.used_memory as i64,
                node.keys as i64,
            )
        });
        gauges.set(&node.address, node.role.as_str(), figures);
    }
    *series = now;
}

/// The cluster's figures as one [`Check`], with every node's.
pub fn summarize(found: Vec<NodeCheck>, omitted: usize, at_ms: u64) -> Check {
    let answered: Vec<&NodeCheck> = found
        .iter()
        .filter(|n| n.up && n.role == Role::Primary)
        .collect();
    let fullest = answered
        .iter()
        .max_by(|a, b| a.memory_usage.total_cmp(&b.memory_usage));
    let error = match answered.is_empty() {
        false => None,
        true => Some(found.iter().find(|n| n.role == Role::Primary).map_or(
            "no primary listed".to_owned(),
            |n| {
                format!(
                    "no primary answered ({}: {})",
                    n.address,
                    n.error.as_deref().unwrap_or("unknown")
                )
            },
        )),
    };
    Check {
        connected: !answered.is_empty(),
        latency_ms: found
            .iter()
            .filter(|n| n.up)
            .map(|n| n.latency_ms)
            .fold(0.0, f64::max),
        memory_usage: fullest.map_or(0.0, |n| n.memory_usage),
        used_memory: answered.iter().map(|n| n.used_memory).sum(),
        memory_basis: fullest.map_or("maxmemory", |n| n.memory_basis),
        key_count: answered.iter().map(|n| n.keys).sum(),
        error,
        at_ms,
        cluster: true,
        nodes: found.into(),
        nodes_omitted: omitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail? - 0 1426238318243 3 connected 10923-16383 [16383->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 :0@0 slave,noaddr 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238316232 5 disconnected
";

    #[test]
    fn cluster_nodes_gives_every_addressed_node_with_its_role_and_slots() {
        let nodes = parse_nodes(NODES);
        assert_eq!(nodes.len(), 4, "{nodes:?}");
        let replica = &nodes[0];
        assert_eq!(
            (replica.address(), replica.role, replica.slots.len()),
            ("127.0.0.1:30004".to_owned(), Role::Replica, 0)
        );
        assert_eq!(
            replica.primary_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(nodes[1].slots, [(5461, 10922)]);
        assert_eq!(nodes[2].failing, Some("fail?"));
        assert_eq!(nodes[2].slots, [(10923, 16383)]);
        assert_eq!(nodes[3].slots, [(0, 5460), (7000, 7000)]);
        assert_eq!(nodes[3].primary_id, None);
    }

    fn node(address: &str, role: Role, up: bool, latency_ms: f64, memory_usage: f64) -> NodeCheck {
        NodeCheck {
            address: address.into(),
            role,
            up,
            latency_ms,
            used_memory: 100,
            memory_usage,
            memory_basis: "maxmemory",
            keys: 10,
            slots: match role {
                Role::Primary => vec![(0, 99)],
                Role::Replica => vec![],
            },
            error: (!up).then(|| "Connection refused".to_owned()),
            ..NodeCheck::default()
        }
    }

    #[test]
    fn the_summary_sums_primaries_and_takes_the_worst_latency_and_memory() {
        let check = summarize(
            vec![
                node("a:1", Role::Primary, true, 1.0, 10.0),
                node("b:1", Role::Primary, true, 2.0, 30.0),
                node("c:1", Role::Primary, false, 0.0, 0.0),
                node("d:1", Role::Replica, true, 7.0, 90.0),
            ],
            0,
            1,
        );
        assert!(check.connected && check.cluster);
        assert_eq!((check.used_memory, check.key_count), (200, 20));
        assert_eq!((check.latency_ms, check.memory_usage), (7.0, 30.0));
        assert_eq!(check.nodes[0].slot_count(), 100);
        let none = summarize(vec![node("c:1", Role::Primary, false, 0.0, 0.0)], 0, 1);
        assert!(!none.connected);
        assert_eq!(
            none.error.as_deref(),
            Some("no primary answered (c:1: Connection refused)")
        );
    }
}
