//! `[upstream]`: the Redis server cachet forwards to, and its `redis://` (or `rediss://`, TLS)
//! url, parsed once and printed with the password masked. A `sentinel://` url (`sentinels://`:
//! TLS to the Sentinels and to the data nodes they name) names Sentinels and a master name
//! instead ([`SentinelUrl`]); `[upstream.sentinel]` holds what the Sentinels themselves need.
//! A `redis-cluster://` url (`rediss-cluster://`: TLS) names seed nodes of a Redis Cluster
//! ([`ClusterUrl`]); `[upstream.cluster]` holds how cachet follows it.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::Secret;
use super::mask::mask_url;

/// The highest database an upstream url may name: cachet's control connection (fred) selects
/// its database as a `u8`.
pub const MAX_DB: u32 = u8::MAX as u32;

/// `[upstream]`: the Redis server cachet forwards to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `redis://[user[:password]@]host[:port][/db]` (`rediss://` for TLS), or
    /// `sentinel://[user[:password]@]host[:port][,host[:port]...]/master-name[/db]`
    /// (`sentinels://` for TLS to the Sentinels and the data nodes).
    pub url: RedisUrl,
    /// Password for the pool's connections; overrides one given in `url`.
    pub password: Option<Secret>,
    /// Pipelined connections per protocol version (RESP2, RESP3) shared by all clients.
    pub pool_size: NonZeroUsize,
    /// Idle dedicated connections kept for clients that need one briefly (MULTI, BLPOP, ...).
    pub spare_connections: usize,
    pub connect_timeout_ms: u64,
    /// A pooled command with no reply after this long fails the connection: every command
    /// in flight on it gets `-ERR upstream timeout` and cachet reconnects (0 = no limit).
    pub command_timeout_ms: u64,
    /// `[upstream.tls]`: CA, client certificate and server name for a `rediss://` or
    /// `sentinels://` url.
    pub tls: Option<super::UpstreamTlsConfig>,
    /// Pools kept for clients signed in as other ACL users than the pool's (one per user,
    /// `crate::upstream::identity`); past it such a client gets a connection of its own.
    pub max_user_pools: usize,
    /// A user's pool with no client for this long is closed (at least 1).
    pub user_pool_idle_secs: u64,
    /// `[upstream.sentinel]`: used only with a `sentinel://` url.
    pub sentinel: SentinelConfig,
    /// `[upstream.cluster]`: used only with a `redis-cluster://` url.
    pub cluster: ClusterConfig,
}

/// Where a cluster's reads go: `read_from` in `[upstream.cluster]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Every command goes to the slot's primary.
    #[default]
    Primary,
    /// Read-only commands go to one of the slot's replicas (connections sent `READONLY`),
    /// the primary when it has none up.
    Replica,
}

/// `[upstream.cluster]`: how cachet follows a Redis Cluster (`redis-cluster://` url).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub read_from: ReadFrom,
    /// Ask the cluster for its slot map this often, besides after `-MOVED` and lost nodes.
    pub refresh_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            read_from: ReadFrom::Primary,
            refresh_ms: 1_000,
        }
    }
}

impl ClusterConfig {
    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.max(10))
    }
}

/// `[upstream.sentinel]`: how cachet talks to the Sentinels of a `sentinel://` url. The data
/// nodes' credentials are the url's and `[upstream] password`, as for `redis://`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelConfig {
    /// ACL user for the Sentinels (`AUTH username password`); `default` if only a password.
    pub username: Option<String>,
    /// The Sentinels' own password (their `requirepass`), not the data nodes'.
    pub password: Option<Secret>,
    /// Replaced by the `sentinels://` scheme (TLS to the Sentinels and to the data nodes
    /// alike): `true` is refused with a message that says so; `false` is accepted.
    #[serde(deserialize_with = "tls_is_the_scheme")]
    pub tls: bool,
    /// Ask the Sentinels for the master this often, besides listening for `+switch-master`.
    pub recheck_ms: u64,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        SentinelConfig {
            username: None,
            password: None,
            tls: false,
            recheck_ms: 1_000,
        }
    }
}

fn tls_is_the_scheme<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    match bool::deserialize(deserializer)? {
        false => Ok(false),
        true => Err(serde::de::Error::custom(
            "[upstream.sentinel] tls is replaced by the url's scheme: use a sentinels:// url \
             for TLS to the Sentinels and the data nodes (with [upstream.tls] for the CA, \
             client certificate and server name)",
        )),
    }
}

impl SentinelConfig {
    pub fn recheck(&self) -> Duration {
        Duration::from_millis(self.recheck_ms.max(10))
    }

    /// The credentials for the Sentinels, if any.
    pub fn credentials(&self) -> Option<(String, Secret)> {
        let password = self.password.clone()?;
        let user = self
            .username
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        Some((user, password))
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: RedisUrl::parse("redis://127.0.0.1:6379").expect("default url"),
            password: None,
            pool_size: NonZeroUsize::new(1).expect("non-zero"),
            spare_connections: 8,
            connect_timeout_ms: 1_000,
            command_timeout_ms: 5_000,
            tls: None,
            max_user_pools: 64,
            user_pool_idle_secs: 60,
            sentinel: SentinelConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl UpstreamConfig {
    /// True for a `redis-cluster://` (or `rediss-cluster://`) url.
    pub fn is_cluster(&self) -> bool {
        self.url.cluster.is_some()
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn command_timeout(&self) -> Option<Duration> {
        (self.command_timeout_ms > 0).then(|| Duration::from_millis(self.command_timeout_ms))
    }

    /// How long a user's pool may go without a client before it is closed.
    pub fn user_pool_idle(&self) -> Duration {
        Duration::from_secs(self.user_pool_idle_secs.max(1))
    }

    /// The credentials the pool authenticates with: `password` wins over the URL's.
    pub fn credentials(&self) -> Option<(String, Secret)> {
        let password = self
            .password
            .clone()
            .or_else(|| self.url.password.clone())?;
        let user = self
            .url
            .username
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        Some((user, password))
    }
}

/// A parsed `redis://` or `rediss://` (TLS) URL, or `sentinel://` / `sentinels://` (TLS).
/// For a `sentinel://` url, `host` and `port` are the first Sentinel's, and `sentinel` says
/// where the master is to be found; `username`, `password` and `db` are the master's.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://` or `sentinels://`: connections to Redis (and to the Sentinels) use TLS
    /// (see `[upstream.tls]`).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
    pub sentinel: Option<SentinelUrl>,
    /// For `redis-cluster://`: the seed nodes.
    pub cluster: Option<ClusterUrl>,
}

/// The seed nodes of a `redis-cluster://` url: any reachable one tells cachet the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub seeds: Vec<(String, u16)>,
}

/// At most this many seed nodes in one url.
pub const MAX_SEEDS: usize = 64;

/// The Sentinel part of a `sentinel://` url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// Each Sentinel as `(host, port)`, in the order given (port 26379 if none).
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
}

/// At most this many Sentinels in one url.
pub const MAX_SENTINELS: usize = 32;

impl RedisUrl {
    pub fn parse(input: &str) -> Result<Self, String> {
        // Messages name the url with its password masked: they end up in logs and terminals.
        let shown = mask_url(input);
        if let Some(rest) = input.strip_prefix("sentinel://") {
            return parse_sentinel(rest, &shown, false);
        }
        if let Some(rest) = input.strip_prefix("sentinels://") {
            return parse_sentinel(rest, &shown, true);
        }
        if let Some(rest) = input.strip_prefix("redis-cluster://") {
            return parse_cluster(rest, &shown, false);
        }
        if let Some(rest) = input.strip_prefix("rediss-cluster://") {
            return parse_cluster(rest, &shown, true);
        }
        let url =
            url::Url::parse(input).map_err(|e| format!("invalid upstream url {shown:?}: {e}"))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(format!(
                    "unsupported upstream url scheme {other:?} (expected redis://, rediss://, sentinel://, sentinels://, redis-cluster:// or rediss-cluster://)"
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("upstream url {shown:?} has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(|p| Secret(decode(p)));
        let path = url.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| format!("upstream url {shown:?}: database {path:?} is not a number"))?
        };
        if db > MAX_DB {
            return Err(format!(
                "upstream url {shown:?}: database {db} is out of range: cachet selects databases 0 to {MAX_DB}"
            ));
        }
        Ok(RedisUrl {
            tls,
            host,
            port: url.port().unwrap_or(6379),
            username,
            password,
            db,
            sentinel: None,
            cluster: None,
        })
    }

    /// `host:port`, with IPv6 hosts bracketed.
    pub fn address(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// `host:port`, with IPv6 hosts bracketed.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `[user[:password]@]host[:port][,host[:port]...]/master-name[/db]`, after `sentinel://`
/// (or `sentinels://`: `tls`). The url crate takes one host only, so this reads the list
/// itself.
fn parse_sentinel(rest: &str, shown: &str, tls: bool) -> Result<RedisUrl, String> {
    let bad = |why: &str| format!("invalid upstream url {shown:?}: {why}");
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("no master name (sentinel://host:port,.../mymaster)"))?;
    let (username, password, sentinels) = parse_authority(authority, 26379, &bad)?;
    if sentinels.len() > MAX_SENTINELS {
        return Err(bad(&format!("more than {MAX_SENTINELS} Sentinels")));
    }
    let (name, db) = match path.split_once('/') {
        Some((name, db)) => (name, db),
        None => (path, ""),
    };
    if name.is_empty() {
        return Err(bad("no master name (sentinel://host:port,.../mymaster)"));
    }
    let db = match db {
        "" => 0,
        db => db
            .parse::<u32>()
            .ok()
            .filter(|&db| db <= MAX_DB)
            .ok_or_else(|| {
                bad(&format!(
                    "database {db:?} is not a number from 0 to {MAX_DB}"
                ))
            })?,
    };
    let (host, port) = sentinels[0].clone();
    Ok(RedisUrl {
        tls,
        host,
        port,
        username,
        password,
        db,
        sentinel: Some(SentinelUrl {
            sentinels,
            master_name: decode(name),
        }),
        cluster: None,
    })
}

/// `[user[:password]@]host[:port][,host[:port]...]`: the credentials and the hosts, each
/// with `default_port` when it names none.
type Authority = (Option<String>, Option<Secret>, Vec<(String, u16)>);

fn parse_authority(
    authority: &str,
    default_port: u16,
    bad: &dyn Fn(&str) -> String,
) -> Result<Authority, String> {
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (
                (!user.is_empty()).then(|| decode(user)),
                Some(Secret(decode(password))),
            ),
            None => ((!info.is_empty()).then(|| decode(info)), None),
        },
    };
    let mut found = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = match host.strip_prefix('[') {
            Some(v6) => {
                let (name, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
                (name, after.strip_prefix(':'))
            }
            None => match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        if name.is_empty() {
            return Err(bad("a host is empty (no host between two commas)"));
        }
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(&format!("port {port:?} is not a port number")))?,
        };
        found.push((name.to_owned(), port));
    }
    Ok((username, password, found))
}

/// `[user[:password]@]host[:port][,host[:port]...][/]`, after `redis-cluster://` (or
/// `rediss-cluster://`: `tls`). A cluster has database 0 only, so no database is taken.
fn parse_cluster(rest: &str, shown: &str, tls: bool) -> Result<RedisUrl, String> {
    let bad = |why: &str| format!("invalid upstream url {shown:?}: {why}");
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(bad(
            "a cluster url names no database (Redis Cluster has database 0 only)",
        ));
    }
    let (username, password, seeds) = parse_authority(authority, 6379, &bad)?;
    if seeds.len() > MAX_SEEDS {
        return Err(bad(&format!("more than {MAX_SEEDS} seed nodes")));
    }
    let (host, port) = seeds[0].clone();
    Ok(RedisUrl {
        tls,
        host,
        port,
        username,
        password,
        db: 0,
        sentinel: None,
        cluster: Some(ClusterUrl { seeds }),
    })
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (&self.sentinel, &self.cluster, self.tls) {
            (Some(_), _, false) => "sentinel://",
            (Some(_), _, true) => "sentinels://",
            (None, Some(_), false) => "redis-cluster://",
            (None, Some(_), true) => "rediss-cluster://",
            (None, None, true) => "rediss://",
            (None, None, false) => "redis://",
        })?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:****@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => f.write_str(":****@")?,
            (None, None) => {}
        }
        match &self.sentinel {
            Some(sentinel) => {
                let hosts: Vec<String> = sentinel
                    .sentinels
                    .iter()
                    .map(|(host, port)| host_port(host, *port))
                    .collect();
                write!(f, "{}/{}", hosts.join(","), sentinel.master_name)?;
            }
            None => match &self.cluster {
                Some(cluster) => {
                    let hosts: Vec<String> = cluster
                        .seeds
                        .iter()
                        .map(|(host, port)| host_port(host, *port))
                        .collect();
                    f.write_str(&hosts.join(","))?;
                }
                None => write!(f, "{}", self.address())?,
            },
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        RedisUrl::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod sentinel_tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_every_sentinel_the_master_and_its_credentials() {
        let url = RedisUrl::parse("sentinel://u:p%40ss@a:1,b,[::1]:3/my%20master/2").unwrap();
        let sentinel = url.sentinel.as_ref().unwrap();
        assert_eq!(
            sentinel.sentinels,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 26379),
                ("::1".to_owned(), 3)
            ]
        );
        assert_eq!(sentinel.master_name, "my master");
        assert_eq!(url.username.as_deref(), Some("u"));
        assert_eq!(url.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(url.db, 2);
        assert_eq!((url.host.as_str(), url.port), ("a", 1));
        // Printed with the password masked.
        let shown = url.to_string();
        assert_eq!(shown, "sentinel://u:****@a:1,b:26379,[::1]:3/my master/2");
        assert!(!url.tls);
        let url = RedisUrl::parse("sentinel://:pw@h:5/m").unwrap();
        assert_eq!((url.username, url.db), (None, 0));
        // sentinels://: the same, over TLS, and printed as it was written.
        let url = RedisUrl::parse("sentinels://:pw@a:1,b:2/m/3").unwrap();
        assert!(url.tls);
        assert_eq!(url.sentinel.as_ref().unwrap().sentinels.len(), 2);
        assert_eq!(url.to_string(), "sentinels://:****@a:1,b:2/m/3");
        let err = RedisUrl::parse("sentinels://h:1").unwrap_err();
        assert!(err.contains("no master name"), "{err}");
    }

    #[test]
    fn a_bad_sentinel_url_is_refused_with_its_password_masked() {
        for (input, why) in [
            ("sentinel://h:1", "no master name"),
            ("sentinel://h:1/", "no master name"),
            ("sentinel://h:1,/m", "no host"),
            ("sentinel://:Zq8Xw3Kp@h:0/m", "not a port number"),
            ("sentinel://h:x/m", "not a port number"),
            ("sentinel://h:70000/m", "not a port number"),
            ("sentinel://[::1/m", "unclosed"),
            ("sentinel://h/m/256", "0 to 255"),
            ("sentinel://h/m/x", "0 to 255"),
        ] {
            let err = RedisUrl::parse(input).unwrap_err();
            assert!(err.contains(why), "{input}: {err}");
            assert!(!err.contains("Zq8"), "{input}: {err}");
        }
        let many = vec!["h:1"; MAX_SENTINELS + 1].join(",");
        let err = RedisUrl::parse(&format!("sentinel://{many}/m")).unwrap_err();
        assert!(err.contains("more than 32 Sentinels"), "{err}");
    }

    #[test]
    fn sentinel_settings_parse_and_tls_there_points_to_the_scheme() {
        let config: UpstreamConfig = toml::from_str(
            "url = \"sentinel://h:1/m\"\n[sentinel]\nusername = \"s\"\npassword = \"pw\"\nrecheck_ms = 250\n",
        )
        .unwrap();
        assert_eq!(config.sentinel.recheck(), Duration::from_millis(250));
        let (user, password) = config.sentinel.credentials().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("s", "pw"));
        assert!(
            format!("{config:?}").contains("****") && !format!("{config:?}").contains("\"pw\"")
        );
        let err = toml::from_str::<UpstreamConfig>("[sentinel]\ntls = true\n").unwrap_err();
        assert!(err.to_string().contains("use a sentinels:// url"), "{err}");
        let config: UpstreamConfig = toml::from_str("[sentinel]\ntls = false\n").unwrap();
        assert!(!config.url.tls);
        let err = toml::from_str::<UpstreamConfig>("[sentinel]\nmaster = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_seeds_and_credentials() {
        let url = RedisUrl::parse("redis-cluster://u:p%40ss@a:7000,b,[::1]:7002/").unwrap();
        let cluster = url.cluster.as_ref().unwrap();
        assert_eq!(
            cluster.seeds,
            vec![
                ("a".to_owned(), 7000),
                ("b".to_owned(), 6379),
                ("::1".to_owned(), 7002)
            ]
        );
        assert_eq!(url.username.as_deref(), Some("u"));
        assert_eq!(url.password.as_ref().unwrap().expose(), "p@ss");
        assert!(!url.tls);
        assert_eq!(
            url.to_string(),
            "redis-cluster://u:****@a:7000,b:6379,[::1]:7002"
        );
        let tls = RedisUrl::parse("rediss-cluster://h:1").unwrap();
        assert!(tls.tls && tls.cluster.is_some());
        assert_eq!(tls.to_string(), "rediss-cluster://h:1");
    }

    #[test]
    fn a_cluster_url_with_a_database_or_no_host_is_refused() {
        let err = RedisUrl::parse("redis-cluster://a:1/2").unwrap_err();
        assert!(err.contains("database 0 only"), "{err}");
        let err = RedisUrl::parse("redis-cluster://a:1,,b:2").unwrap_err();
        assert!(err.contains("a host is empty"), "{err}");
        let err = RedisUrl::parse("redis-cluster://a:0").unwrap_err();
        assert!(err.contains("not a port number"), "{err}");
    }
}
