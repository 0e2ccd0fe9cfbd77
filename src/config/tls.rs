//! `[proxy.tls]` and `[upstream.tls]`: TLS towards clients and towards Redis, as plain data.
//!
//! Only paths and names are parsed here; the PEM files are read when cachet starts (and again
//! on every reload of the client side), by `crate::net::tls`, so a missing or bad file is
//! reported then, with its path.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[proxy.tls]`: a second listener, beside the plain one, that speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// Address the TLS listener binds (the plain listener keeps `[proxy] listen`).
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. When set, every client must
    /// present a certificate they sign (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// The lowest TLS version accepted: "1.2" (the default) or "1.3".
    #[serde(default)]
    pub min_version: TlsVersion,
    /// A client that has not finished its handshake after this long is closed. Until then it
    /// holds one of `max_clients`' places.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// How often the certificate, key and client CA files are checked for changes (by
    /// modification time and length); 0 = only on SIGHUP.
    #[serde(default = "default_reload_check_ms")]
    pub reload_check_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn default_reload_check_ms() -> u64 {
    1_000
}

/// A TLS protocol version, as written in the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[upstream.tls]`: how cachet checks Redis's certificate, and the one it shows Redis. Used
/// with a `rediss://` url only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// CA certificates (PEM) that Redis's certificate must chain to; without it, the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) for Redis's `tls-auth-clients`; needs `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name sent as SNI and checked against Redis's certificate; default the url's host.
    pub server_name: Option<String>,
    /// Accept any certificate from Redis. Only for tests: cachet warns at start.
    pub insecure_skip_verify: bool,
}

#[cfg(test)]
mod tests {
    use crate::Config;

    use super::*;

    #[test]
    fn tls_sections_parse_with_their_defaults() {
        let text = "[proxy.tls]\nlisten = \"127.0.0.1:6390\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                    [upstream]\nurl = \"rediss://:pw@redis.example:6380/2\"\n\
                    [upstream.tls]\nca = \"ca.pem\"\n";
        let config = Config::from_toml(text, "x.toml").unwrap();
        let tls = config.proxy.tls.expect("[proxy.tls]");
        assert_eq!(tls.listen.to_string(), "127.0.0.1:6390");
        assert_eq!(tls.client_ca, None);
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(tls.handshake_timeout_ms, 10_000);
        assert!(config.upstream.url.tls);
        assert_eq!(
            config.upstream.url.to_string(),
            "rediss://:****@redis.example:6380/2"
        );
        let upstream = config.upstream.tls.expect("[upstream.tls]");
        assert_eq!(upstream.ca, Some(PathBuf::from("ca.pem")));
        assert!(!upstream.insecure_skip_verify);
    }

    #[test]
    fn bad_tls_values_are_refused_with_their_place() {
        let text = "[proxy.tls]\nlisten = \"127.0.0.1:6390\"\ncert = \"c\"\nkey = \"k\"\n\
                    min_version = \"1.1\"\n";
        let error = Config::from_toml(text, "x.toml").unwrap_err().to_string();
        assert!(error.contains("line 5"), "{error}");
        let text = "[proxy.tls]\nlisten = \"127.0.0.1:6390\"\ncert = \"c\"\n";
        let error = Config::from_toml(text, "x.toml").unwrap_err().to_string();
        assert!(error.contains("missing field `key`"), "{error}");
        let text = "[upstream.tls]\nskip_verify = true\n";
        let error = Config::from_toml(text, "x.toml").unwrap_err().to_string();
        assert!(error.contains("unknown field `skip_verify`"), "{error}");
    }
}
