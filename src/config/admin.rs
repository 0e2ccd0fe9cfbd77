//! `[admin]`: where the admin HTTP listener binds (or that there is none), and the bearer token
//! its data routes want.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::Secret;

/// The original system's admin port is an HTTP API; cachet's is 9121 by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9121";

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the admin HTTP listener binds; `""` disables it.
    pub listen: AdminListen,
    /// When set, requests (all but `/live`) need `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: AdminListen(Some(DEFAULT_LISTEN.parse().expect("default address"))),
            token: None,
        }
    }
}

/// An address, or none (`""`): the admin listener is off.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl fmt::Debug for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "\"{addr}\""),
            None => f.write_str("\"\" (disabled)"),
        }
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        if raw.is_empty() {
            return Ok(AdminListen(None));
        }
        raw.parse().map(|a| AdminListen(Some(a))).map_err(|_| {
            serde::de::Error::custom(format!(
                "{raw:?} is not an address like 127.0.0.1:9121 (or \"\" to disable)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn admin_and_health_sections_parse_with_their_defaults() {
        let config = Config::default();
        assert_eq!(
            config.admin.listen.0,
            Some(super::DEFAULT_LISTEN.parse().unwrap())
        );
        assert_eq!(config.health.interval_ms, 30_000);
        let text = "[admin]\nlisten = \"\"\ntoken = \"t0k\"\n[health]\ninterval_ms = 500\n\
                    [health.thresholds]\nhit_rate = { warning = 90, critical = 70.5 }\n";
        let mut config = Config::from_toml(text, "x").unwrap();
        assert_eq!(config.admin.listen.0, None, "\"\" disables the listener");
        assert!(
            !format!("{config:?}").contains("t0k"),
            "the token prints masked"
        );
        assert_eq!(config.health.interval_ms, 500);
        assert_eq!(config.health.thresholds.hit_rate.critical, 70.5);
        assert_eq!(config.health.thresholds.error_rate.warning, 1.0);
        config
            .apply_env(|name| (name == "CACHE_HEALTH_CHECK_INTERVAL").then(|| "2500".into()))
            .unwrap();
        assert_eq!(config.health.interval_ms, 2_500);
        let err = config
            .apply_env(|name| (name == "CACHE_HEALTH_CHECK_INTERVAL").then(|| "soon".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("CACHE_HEALTH_CHECK_INTERVAL"),
            "{err}"
        );
        let err = Config::from_toml("[admin]\nlisten = \"nowhere\"\n", "x").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Config::from_toml("[health.thresholds]\nhit_rate = 5\n", "x").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
