//! Connections to Redis.
//!
//! * [`pool`]: a few long-lived, pipelined connections per protocol version, shared by every
//!   client whose connection state is the default one. Many clients' commands go out in one
//!   write and come back in one read.
//! * [`dedicated`]: a connection owned by one client for as long as its state differs from the
//!   pool's (MULTI/WATCH, subscriptions, a blocking command, SELECT, AUTH as another user,
//!   CLIENT TRACKING, ...). Clean ones are kept as spares so the next MULTI does not connect.
//! * [`identity`]: the Redis user a set of connections signs in as. The pool's user is the
//!   default identity; clients signed in as another ACL user share that user's own pool,
//!   lane and spares, opened once Redis accepted the user's credentials, capped in number
//!   and closed when idle.
//! * [`aside`]: the out-of-band lane, one connection per protocol for the commands that act
//!   on other connections' work (SCRIPT KILL, CLIENT UNPAUSE, ...), which must not queue
//!   behind that work on the pool; it also keeps the pause issued through cachet.
//! * [`acl`]: Redis's ACL decision for a command without running it (`ACL DRYRUN`, cached),
//!   for cachet's own commands sent by clients signed in as other users.
//! * the control client (fred), for cachet's own work: loading the command table (again after
//!   every reconnect), the [`SetupStep`]s the composition root gives it (the tag index's
//!   function library), invalidations, the sweeper.
//! * [`sentinel`]: where the master is ([`sentinel::Master`]: fixed for `redis://`, followed
//!   through Redis Sentinel for `sentinel://`), and what lets go of it when it moves.
//!
//! With a `rediss://` or `sentinels://` url every connection is TLS, set up once from
//! `[upstream.tls]` ([`tls_connector`]): the raw ones in [`Upstream::open`] (to the data nodes
//! and, for `sentinels://`, to the Sentinels) and the control client's. The name checked is
//! `server_name` if set, else the host of the address connected (a Sentinel's, or the master's
//! the Sentinels named).

pub mod acl;
pub mod aside;
pub mod cluster;
pub mod dedicated;
pub mod identity;
pub mod pool;
pub mod sentinel;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use fred::cmd;
use fred::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio_rustls::TlsConnector;

use crate::config::UpstreamConfig;
use crate::net::Stream;
use crate::resp::commands::CommandTable;
use crate::resp::{self, Protocol};

pub use aside::{AsideError, AsideHandle, Effect, Pauses};
pub use dedicated::Dedicated;
pub use identity::{Identities, Identity};
pub use pool::{PoolHandle, PoolReply, PoolRequest, ReplyTo, UpstreamReply};

/// Why talking to Redis failed; its `Display` is what the client reads after `-ERR upstream`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream connection lost: {0}")]
    Lost(String),
    #[error("upstream timeout after {0} ms")]
    Timeout(u64),
    #[error("upstream refused the connection setup: {0}")]
    Handshake(String),
}

impl UpstreamError {
    /// The error as a RESP error frame (`-ERR upstream ...`).
    pub fn to_frame(&self) -> Bytes {
        resp::reply::error_bytes(&format!("ERR {self}"))
    }
}

/// Something to set up in Redis on the control client at its first connect, before the pool
/// serves, and again after every reconnect (a restarted Redis may have lost it): the tag
/// index's function library, say. The composition root registers them, so this module need
/// not know what they set up.
pub struct SetupStep {
    /// What it sets up, for the log when it fails.
    what: &'static str,
    run: Box<dyn Fn() -> StepFuture + Send + Sync>,
}

type StepFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

impl SetupStep {
    /// A step that runs `run` (which holds the handles it needs) and reports its error.
    pub fn new<F, Fut, E>(what: &'static str, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        SetupStep {
            what,
            run: Box::new(move || {
                let step = run();
                Box::pin(async move { step.await.map_err(|e| e.to_string()) })
            }),
        }
    }
}

/// Everything cachet holds towards one Redis server.
pub struct Upstream {
    pub config: UpstreamConfig,
    /// The pool's own user: its pools, lanes and spares.
    default: Arc<Identity>,
    /// Every other ACL user clients signed in as (see [`identity`]).
    pub identities: Identities,
    /// The pause issued through cachet that Redis holds now, if any (see [`aside`]).
    pub pauses: Pauses,
    commands: ArcSwap<CommandTable>,
    table_ready: watch::Sender<bool>,
    control: Client,
    /// For a `rediss://` or `sentinels://` url: the connector, and `[upstream.tls]
    /// server_name` if set (else each connection checks the host it connects to).
    tls: Option<(TlsConnector, Option<rustls_pki_types::ServerName<'static>>)>,
    /// The master's address now, and its generation (see [`sentinel`]).
    pub master: Arc<sentinel::Master>,
    /// For a `redis-cluster://` url: the slot map; every connection is then a router's
    /// pipe (see [`cluster`]).
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// This upstream itself, for the cluster routers' tasks.
    me: Weak<Upstream>,
    acl: acl::AclCheck,
    shut: AtomicBool,
    /// Pooled connections brought back up after they were lost (registered with the
    /// metrics by whoever exposes them, as `cachet_upstream_pool_reconnects_total`).
    pub pool_reconnects: prometheus::IntCounter,
    /// Times cachet followed the master to a new address (registered as the pool's
    /// counter is, as `cachet_upstream_master_moves_total`).
    pub master_moves: prometheus::IntCounter,
}

impl Upstream {
    /// Creates the upstream side. Nothing connects before [`Upstream::start`], so the
    /// control client ([`Upstream::control`]) can be handed out first.
    pub fn new(config: UpstreamConfig) -> anyhow::Result<Arc<Self>> {
        let tls = tls_connector(&config)?;
        let control = control_client(&config, tls.as_ref())?;
        let (table_ready, _) = watch::channel(false);
        let master = Arc::new(sentinel::Master::new(&config.url));
        let login = config
            .credentials()
            .map(|(user, password)| identity::Login { user, password });
        let identities = Identities::new(config.max_user_pools, config.user_pool_idle());
        let cluster = config.url.cluster.as_ref().map(|url| {
            let seeds = url
                .seeds
                .iter()
                .map(|(host, port)| crate::config::host_port(host, *port))
                .collect();
            Arc::new(cluster::Cluster::new(
                config.cluster.clone(),
                seeds,
                config.url.tls,
            ))
        });
        Ok(Arc::new_cyclic(|me| Upstream {
            cluster,
            me: me.clone(),
            default: Arc::new(Identity::new(None, login)),
            identities,
            config,
            pauses: Pauses::default(),
            commands: ArcSwap::from_pointee(CommandTable::default()),
            table_ready,
            acl: acl::AclCheck::new(control.clone()),
            control,
            tls: tls.map(|(client, name)| (TlsConnector::from(Arc::new(client)), name)),
            master,
            shut: AtomicBool::new(false),
            pool_reconnects: prometheus::IntCounter::new(
                "cachet_upstream_pool_reconnects_total",
                "Pooled connections to Redis brought back up after they were lost",
            )
            .expect("a valid metric name"),
            master_moves: prometheus::IntCounter::new(
                "cachet_upstream_master_moves_total",
                "Times the master moved (Sentinel failover) and cachet followed it",
            )
            .expect("a valid metric name"),
        }))
    }

    /// Connects the control client and starts the RESP2 pool; call it once. `setup` runs on
    /// the control client at its first connect, before the pool serves, and again after
    /// every reconnect.
    pub fn start(self: &Arc<Self>, setup: Vec<SetupStep>) {
        tokio::spawn(load_commands(self.clone(), setup));
        if let Some(url) = &self.config.url.sentinel {
            tokio::spawn(sentinel::watch(self.clone(), url.clone()));
        }
        if let Some(cluster) = &self.cluster {
            tokio::spawn(cluster.clone().run(self.clone()));
        }
        tokio::spawn(reap_identities(self.clone()));
        self.pool(Protocol::Resp2);
    }

    /// The pool's own user's identity.
    pub fn default_identity(&self) -> &Arc<Identity> {
        &self.default
    }

    /// The command table as last loaded from Redis (empty until the first load).
    pub fn commands(&self) -> arc_swap::Guard<Arc<CommandTable>> {
        self.commands.load()
    }

    /// The master's `host:port` for messages: the url's, or the one the Sentinels named
    /// last (the url, password masked, before they have).
    pub fn address(&self) -> String {
        match self.master.address() {
            Ok((address, _)) => address,
            Err(_) => self.config.url.to_string(),
        }
    }

    /// The fred client for cachet's own commands.
    pub fn control(&self) -> &Client {
        &self.control
    }

    /// Redis's ACL decisions for users other than cachet's (see [`acl`]).
    pub fn acl(&self) -> &acl::AclCheck {
        &self.acl
    }

    /// True once the command table is loaded and at least one pooled connection is up.
    pub fn is_ready(&self) -> bool {
        *self.table_ready.borrow()
            && self
                .default
                .started_pool(Protocol::Resp2)
                .is_some_and(|p| p.iter().any(PoolHandle::is_up))
    }

    /// The pool's user's pooled connections (both protocols) that are up now.
    pub fn pooled_connections_up(&self) -> usize {
        [Protocol::Resp2, Protocol::Resp3]
            .into_iter()
            .filter_map(|protocol| self.default.started_pool(protocol))
            .map(|p| p.iter().filter(|h| h.is_up()).count())
            .sum()
    }

    /// A connection Redis can never send a tracking invalidation on: a RESP2 pooled
    /// connection, which is never subscribed, so Redis drops what is redirected to it
    /// (`tracking.c`, `sendTrackingMessage`). `None` while the RESP2 pool is down.
    pub fn tracking_sink(&self) -> Option<i64> {
        self.default
            .started_pool(Protocol::Resp2)?
            .iter()
            .find_map(PoolHandle::redis_id)
    }

    /// The pool's user's pooled connections for `protocol`, started on first use.
    pub fn pool(self: &Arc<Self>, protocol: Protocol) -> &[PoolHandle] {
        self.default.pool(self, protocol)
    }

    /// The pool's user's out-of-band lane for `protocol`, started on first use.
    pub fn aside(self: &Arc<Self>, protocol: Protocol) -> &AsideHandle {
        self.default.aside(self, protocol)
    }

    /// Waits until the command table has been loaded (pool connections wait for it, so that
    /// no blocking command can reach the shared pool unrecognised).
    pub async fn table_loaded(&self) {
        let mut rx = self.table_ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// A connection for one client alone, from the spares or newly opened, set up for
    /// `protocol` and `name` and authenticated as the pool is.
    pub async fn dedicated(
        &self,
        protocol: Protocol,
        name: Option<Bytes>,
    ) -> Result<Dedicated, UpstreamError> {
        self.default.dedicated(self, protocol, name).await
    }

    /// A newly opened connection with nothing sent on it, for a client that signs in as
    /// someone else: its own AUTH must be the first command Redis reads.
    pub async fn bare(&self) -> Result<Dedicated, UpstreamError> {
        Dedicated::open_bare(self).await
    }

    /// Takes back a dedicated connection of the pool's user whose state is the default one.
    pub async fn release(&self, conn: Dedicated) {
        self.default.release(self, conn).await
    }

    /// Stops reconnecting, drops the spare connections and the other users' identities.
    pub async fn shutdown(&self) {
        self.shut.store(true, Ordering::Relaxed);
        self.default.drop_spares().await;
        self.identities.clear();
        let _ = self.control.quit().await;
    }

    pub(crate) fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Relaxed)
    }

    /// Opens a TCP connection to the master and runs the setup commands every cachet
    /// connection needs (AUTH, HELLO 3, SELECT, CLIENT SETNAME, ...). An error reply to one
    /// of the first `required` commands fails the connection; later ones (conveniences like
    /// CLIENT ID) are returned like any reply. Returns the stream and the replies, in order.
    /// A caller that must notice the master moving takes [`sentinel::Master::watch`] first.
    /// With a `rediss://` url, TLS runs over the TCP connection before the setup.
    pub(crate) async fn connect(
        &self,
        setup: &[Vec<Bytes>],
        required: usize,
    ) -> Result<(Stream, Vec<Bytes>), UpstreamError> {
        if let Some(cluster) = &self.cluster {
            let me = self
                .me
                .upgrade()
                .ok_or_else(|| UpstreamError::Unavailable("cachet is shutting down".into()))?;
            return cluster::conn::connect(me, cluster.clone(), setup, required).await;
        }
        let (address, _) = self.master.address()?;
        self.connect_to(&address, setup, required).await
    }

    /// [`Upstream::connect`] to a given data node (the Sentinel client's `ROLE` check).
    pub(crate) async fn connect_to(
        &self,
        address: &str,
        setup: &[Vec<Bytes>],
        required: usize,
    ) -> Result<(Stream, Vec<Bytes>), UpstreamError> {
        let timeout = self.config.connect_timeout();
        let attempt = async {
            let mut stream = self.open(address).await?;
            let replies = run_setup(&mut stream, setup, required, SETUP_REPLY_LIMIT).await?;
            Ok((stream, replies))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Unavailable(format!(
                    "{address}: connect timed out after {} ms",
                    timeout.as_millis()
                )))
            })
    }

    /// A TCP connection to `address` (a data node, or a Sentinel), with TLS over it for a
    /// `rediss://` or `sentinels://` url. The name sent and checked is `[upstream.tls]
    /// server_name`, else `address`'s host. No timeout of its own: callers bound it.
    pub(crate) async fn open(&self, address: &str) -> Result<Stream, UpstreamError> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("{address}: {e}")))?;
        tcp.set_nodelay(true).ok();
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::from(tcp));
        };
        let name = match name {
            Some(name) => name.clone(),
            None => crate::net::tls::server_name(host_of(address))
                .map_err(|e| UpstreamError::Unavailable(format!("{address}: {e}")))?,
        };
        connector
            .connect(name, tcp)
            .await
            .map(|tls| Stream::from(tokio_rustls::TlsStream::from(tls)))
            .map_err(|e| UpstreamError::Unavailable(format!("{address}: {e}")))
    }

    /// The setup commands that put a new connection in the pool's user's state.
    pub(crate) fn setup_commands(&self, protocol: Protocol) -> Vec<Vec<Bytes>> {
        let login = self.default.login();
        let login = login.read().expect("not poisoned");
        self.setup_commands_as(login.as_ref(), protocol)
    }

    /// The setup commands that put a new connection in the state of a pool signed in as
    /// `login` (none: Redis's default user, with no password).
    pub(crate) fn setup_commands_as(
        &self,
        login: Option<&identity::Login>,
        protocol: Protocol,
    ) -> Vec<Vec<Bytes>> {
        let mut setup = Vec::new();
        match (protocol, login) {
            (Protocol::Resp3, Some(l)) => {
                setup.push(args(&["HELLO", "3", "AUTH", &l.user, l.password.expose()]))
            }
            (Protocol::Resp3, None) => setup.push(args(&["HELLO", "3"])),
            (Protocol::Resp2, Some(l)) => setup.push(args(&["AUTH", &l.user, l.password.expose()])),
            (Protocol::Resp2, None) => {}
        }
        if self.config.url.db != 0 {
            setup.push(args(&["SELECT", &self.config.url.db.to_string()]));
        }
        setup
    }
}

/// Closes the identities of other users that no client has used for their idle time.
async fn reap_identities(upstream: Arc<Upstream>) {
    let every = upstream.identities.reap_every();
    loop {
        tokio::time::sleep(every).await;
        if upstream.is_shut() {
            return;
        }
        upstream.identities.reap();
    }
}

/// The host of `host:port` (`[v6]:port` too), as the TLS name to check.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Replies to setup commands are a few bytes each; this bounds what a misbehaving server
/// can make cachet buffer during a handshake.
pub(crate) const SETUP_REPLY_LIMIT: usize = 1 << 20;

/// Builds an argument vector from string slices.
pub(crate) fn args(parts: &[&str]) -> Vec<Bytes> {
    parts
        .iter()
        .map(|p| Bytes::copy_from_slice(p.as_bytes()))
        .collect()
}

async fn run_setup<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    setup: &[Vec<Bytes>],
    required: usize,
    max_bytes: usize,
) -> Result<Vec<Bytes>, UpstreamError> {
    if setup.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = BytesMut::new();
    for command in setup {
        out.extend_from_slice(&resp::encode_command(command));
    }
    stream
        .write_all(&out)
        .await
        .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut replies = Vec::with_capacity(setup.len());
    while replies.len() < setup.len() {
        match resp::reply_frame(&buf) {
            Ok(Some(info)) => {
                let frame = buf.split_to(info.len).freeze();
                if info.push {
                    continue;
                }
                if replies.len() < required && matches!(frame.first(), Some(b'-' | b'!')) {
                    let text = String::from_utf8_lossy(&frame[1..]).trim().to_owned();
                    let command = String::from_utf8_lossy(&setup[replies.len()][0]).into_owned();
                    return Err(UpstreamError::Handshake(format!("{command}: {text}")));
                }
                replies.push(frame);
            }
            Ok(None) => {
                if buf.len() > max_bytes {
                    return Err(UpstreamError::Lost(format!(
                        "a reply of over {max_bytes} bytes"
                    )));
                }
                let n = stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
                if n == 0 {
                    return Err(UpstreamError::Unavailable(
                        "connection closed during setup".into(),
                    ));
                }
            }
            Err(e) => return Err(UpstreamError::Lost(e.to_string())),
        }
    }
    Ok(replies)
}

/// The TLS client config for a `rediss://` or `sentinels://` url (`None` for `redis://` and
/// `sentinel://`), and `[upstream.tls] server_name` if set. Warns at start when certificate
/// checks are off.
pub fn tls_connector(
    config: &UpstreamConfig,
) -> anyhow::Result<
    Option<(
        rustls::ClientConfig,
        Option<rustls_pki_types::ServerName<'static>>,
    )>,
> {
    let settings = config.tls.clone().unwrap_or_default();
    if !config.url.tls {
        anyhow::ensure!(
            config.tls.is_none(),
            "[upstream.tls] is set but the upstream url is not rediss:// or sentinels://: use \
             rediss:// (sentinels:// behind Sentinel) for TLS"
        );
        return Ok(None);
    }
    let server_name = settings
        .server_name
        .as_deref()
        .map(crate::net::tls::server_name)
        .transpose()
        .map_err(|e| anyhow::anyhow!("[upstream.tls]: {e}"))?;
    if server_name.is_none() && config.url.sentinel.is_none() {
        // rediss://: the name each connection checks is the url's host; a bad one is
        // reported now, not at every connect.
        crate::net::tls::server_name(&config.url.host)
            .map_err(|e| anyhow::anyhow!("[upstream.tls]: {e}"))?;
    }
    let identity = match (settings.cert, settings.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => anyhow::bail!("[upstream.tls]: cert and key go together"),
    };
    let files = crate::net::tls::ClientFiles {
        ca: settings.ca,
        identity,
        insecure_skip_verify: settings.insecure_skip_verify,
        // Behind Sentinel, fred opens the master's connection with the master's host as its
        // name: the configured one is checked all the same.
        verify_name: server_name
            .clone()
            .filter(|_| config.url.sentinel.is_some()),
    };
    let client = files
        .load()
        .map_err(|e| anyhow::anyhow!("[upstream.tls]: {e}"))?;
    if files.insecure_skip_verify {
        tracing::warn!(
            upstream = %config.url,
            "[upstream.tls] insecure_skip_verify: Redis's certificate is not checked"
        );
    }
    Ok(Some((client, server_name)))
}

fn control_client(
    config: &UpstreamConfig,
    tls: Option<&(
        rustls::ClientConfig,
        Option<rustls_pki_types::ServerName<'static>>,
    )>,
) -> anyhow::Result<Client> {
    let mut fred_config = Config {
        // fred applies `tls` to the Sentinels' connections and the master's alike.
        server: control_server(config, tls.and_then(|(_, name)| name.as_ref())),
        tls: tls.map(|(client, _)| fred::types::config::TlsConnector::from(client.clone()).into()),
        database: match config.url.db {
            0 => None,
            db => Some(u8::try_from(db).map_err(|_| {
                anyhow::anyhow!("upstream database {db}: at most {}", crate::config::MAX_DB)
            })?),
        },
        // Redis may come up after cachet: keep following the reconnect policy after a failed
        // first connect (fred's default gives up, and cachet would never become ready).
        fail_fast: false,
        ..Config::default()
    };
    if let Some((user, password)) = config.credentials() {
        fred_config.username = Some(user);
        fred_config.password = Some(password.expose().to_owned());
    }
    let connect_timeout = config.connect_timeout();
    let client = Builder::from_config(fred_config)
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = Duration::from_secs(5);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(5);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    Ok(client)
}

/// Where the control client connects: the url's server, or for `sentinel://` fred's own
/// Sentinel mode on the same Sentinels (it checks `ROLE` too); cachet tells it to reconnect
/// when its own Sentinel client sees the master move (`sentinel::watch`). `name`: the TLS
/// server name configured, sent instead of each host (fred sends the master's host
/// regardless, and the config's verifier checks `name`: see [`tls_connector`]).
fn control_server(
    config: &UpstreamConfig,
    name: Option<&rustls_pki_types::ServerName<'static>>,
) -> ServerConfig {
    let name = name.map(|n| n.to_str().into_owned());
    let server =
        |host: &str, port: u16| fred::types::config::Server::new_with_tls(host, port, name.clone());
    if let Some(cluster) = &config.url.cluster {
        return ServerConfig::Clustered {
            hosts: cluster
                .seeds
                .iter()
                .map(|(host, port)| server(host, *port))
                .collect(),
            policy: Default::default(),
        };
    }
    let Some(url) = &config.url.sentinel else {
        return ServerConfig::Centralized {
            server: server(&config.url.host, config.url.port),
        };
    };
    let credentials = config.sentinel.credentials();
    ServerConfig::Sentinel {
        hosts: url
            .sentinels
            .iter()
            .map(|(host, port)| server(host, *port))
            .collect(),
        service_name: url.master_name.clone(),
        username: credentials.as_ref().map(|(user, _)| user.clone()),
        password: credentials.map(|(_, password)| password.expose().to_owned()),
    }
}

/// Loads the command table once the control client connects, and again after every
/// reconnect (the server may have been upgraded or loaded a module), then runs the setup
/// steps.
async fn load_commands(upstream: Arc<Upstream>, setup: Vec<SetupStep>) {
    let control = upstream.control.clone();
    let mut reconnects = control.reconnect_rx();
    control.connect();
    loop {
        if upstream.is_shut() {
            return;
        }
        if control.wait_for_connect().await.is_ok() {
            // fred announces the first connection as a reconnect too: what is queued now is
            // about the connection this load runs on, so it must not cause a second load.
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = reconnects.try_recv()
            {
            }
            let reply: Result<Value, _> =
                control.custom(cmd!("COMMAND"), Vec::<Value>::new()).await;
            match reply
                .map_err(|e| e.to_string())
                .and_then(|v| CommandTable::from_command_reply(&v))
            {
                Ok(table) => {
                    tracing::info!(commands = table.len(), "command table loaded from upstream");
                    upstream.commands.store(Arc::new(table));
                    // Before any pooled connection serves, so that no command through the
                    // pool finds them missing (no tagged write meets "Function not found").
                    for step in &setup {
                        if let Err(error) = (step.run)().await {
                            tracing::warn!(
                                %error,
                                step = step.what,
                                "a setup step of the control connection failed"
                            );
                        }
                    }
                    upstream.table_ready.send_replace(true);
                    if reconnects.recv().await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(error) => tracing::warn!(%error, "loading the command table failed"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
