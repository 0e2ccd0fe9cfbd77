//! Environment overrides: the original system's variables (`REDIS_HOST`, `REDIS_PORT`,
//! `REDIS_PASSWORD`, `CACHE_DEFAULT_TTL`, `CACHE_HEALTH_CHECK_INTERVAL`) and cachet's own
//! (`CACHET_LISTEN`, `CACHET_ADMIN_LISTEN`), applied over the file.

use super::rules::{TtlSecs, ttl_secs};
use super::{AdminListen, Config, ConfigError, Secret};

impl Config {
    /// Applies `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `CACHE_DEFAULT_TTL`,
    /// `CACHE_HEALTH_CHECK_INTERVAL`, `CACHET_LISTEN` and `CACHET_ADMIN_LISTEN` (empty: no admin
    /// listener) from `env` (a lookup function, so tests need not touch the process
    /// environment).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(host) = env("REDIS_HOST").filter(|h| !h.is_empty()) {
            self.upstream.url.host = host;
        }
        if let Some(port) = env("REDIS_PORT").filter(|p| !p.is_empty()) {
            self.upstream.url.port = port.parse().map_err(|_| ConfigError::Env {
                name: "REDIS_PORT",
                message: format!("{port:?} is not a port number"),
            })?;
        }
        if let Some(password) = env("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
            self.upstream.password = Some(Secret(password));
        }
        if let Some(ttl) = env("CACHE_DEFAULT_TTL").filter(|t| !t.is_empty()) {
            let secs = ttl
                .parse::<i64>()
                .map_err(|_| format!("{ttl:?} is not a number of seconds"))
                .and_then(ttl_secs)
                .map_err(|message| ConfigError::Env {
                    name: "CACHE_DEFAULT_TTL",
                    message,
                })?;
            self.ttl.classes.insert("default".to_owned(), TtlSecs(secs));
        }
        if let Some(interval) = env("CACHE_HEALTH_CHECK_INTERVAL").filter(|i| !i.is_empty()) {
            self.health.interval_ms = interval
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| ConfigError::Env {
                    name: "CACHE_HEALTH_CHECK_INTERVAL",
                    message: format!("{interval:?} is not a positive number of milliseconds"),
                })?;
        }
        if let Some(listen) = env("CACHET_LISTEN").filter(|l| !l.is_empty()) {
            self.proxy.listen = listen.parse().map_err(|_| ConfigError::Env {
                name: "CACHET_LISTEN",
                message: format!("{listen:?} is not an address like 127.0.0.1:6380"),
            })?;
        }
        if let Some(listen) = env("CACHET_ADMIN_LISTEN") {
            self.admin.listen = match listen.as_str() {
                "" => AdminListen(None),
                text => AdminListen(Some(text.parse().map_err(|_| ConfigError::Env {
                    name: "CACHET_ADMIN_LISTEN",
                    message: format!(
                        "{listen:?} is not an address like 127.0.0.1:9121 (or empty to disable)"
                    ),
                })?)),
            };
        }
        Ok(())
    }
}
