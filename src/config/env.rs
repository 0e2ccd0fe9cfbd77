//! Environment overrides: the original system's variables (`REDIS_HOST`, `REDIS_PORT`,
//! `REDIS_PASSWORD`, `CACHE_DEFAULT_TTL`, `CACHE_HEALTH_CHECK_INTERVAL`) and cachet's own
//! (`CACHET_LISTEN`, `CACHET_ADMIN_LISTEN`), applied over the file.
//!
//! [`VARIABLES`] is the one list: [`Config::apply_env`] reads exactly these, and the binary's
//! `--help` prints them from it, so the two cannot disagree.

use super::rules::{TtlSecs, ttl_secs};
use super::{AdminListen, Config, ConfigError, Secret};

/// One environment variable cachet reads over the file.
pub struct EnvVar {
    pub name: &'static str,
    /// What it sets, and its default, for `--help`.
    pub help: &'static str,
    /// Applies a value (never called for an unset variable); the error says what is wrong
    /// with the value.
    apply: fn(&mut Config, String) -> Result<(), String>,
}

/// Every variable [`Config::apply_env`] reads, in the order it applies them. The defaults
/// the help texts state are checked against [`Config::default`] by a test.
pub const VARIABLES: &[EnvVar] = &[
    EnvVar {
        name: "REDIS_HOST",
        help: "upstream host (default 127.0.0.1; empty: ignored)",
        apply: |config, host| {
            if !host.is_empty() {
                config.upstream.url.host = host;
            }
            Ok(())
        },
    },
    EnvVar {
        name: "REDIS_PORT",
        help: "upstream port (default 6379; empty: ignored)",
        apply: |config, port| {
            if !port.is_empty() {
                config.upstream.url.port = port
                    .parse()
                    .map_err(|_| format!("{port:?} is not a port number"))?;
            }
            Ok(())
        },
    },
    EnvVar {
        name: "REDIS_PASSWORD",
        help: "upstream password (default none; empty: ignored)",
        apply: |config, password| {
            if !password.is_empty() {
                config.upstream.password = Some(Secret(password));
            }
            Ok(())
        },
    },
    EnvVar {
        name: "CACHE_DEFAULT_TTL",
        help: DEFAULT_TTL_HELP,
        apply: |config, ttl| {
            if !ttl.is_empty() {
                let secs = ttl
                    .parse::<i64>()
                    .map_err(|_| format!("{ttl:?} is not a number of seconds"))
                    .and_then(ttl_secs)?;
                config
                    .ttl
                    .classes
                    .insert("default".to_owned(), TtlSecs(secs));
            }
            Ok(())
        },
    },
    EnvVar {
        name: "CACHE_HEALTH_CHECK_INTERVAL",
        help: HEALTH_INTERVAL_HELP,
        apply: |config, interval| {
            if !interval.is_empty() {
                config.health.interval_ms = interval
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        format!("{interval:?} is not a positive number of milliseconds")
                    })?;
            }
            Ok(())
        },
    },
    EnvVar {
        name: "CACHET_LISTEN",
        help: "address of the RESP listener (default 127.0.0.1:6380; empty: ignored)",
        apply: |config, listen| {
            if !listen.is_empty() {
                config.proxy.listen = listen
                    .parse()
                    .map_err(|_| format!("{listen:?} is not an address like 127.0.0.1:6380"))?;
            }
            Ok(())
        },
    },
    EnvVar {
        name: "CACHET_ADMIN_LISTEN",
        help: ADMIN_LISTEN_HELP,
        apply: |config, listen| {
            config.admin.listen = match listen.as_str() {
                "" => AdminListen(None),
                text => AdminListen(Some(text.parse().map_err(|_| {
                    format!(
                        "{listen:?} is not an address like 127.0.0.1:9121 (or empty to disable)"
                    )
                })?)),
            };
            Ok(())
        },
    },
];

const DEFAULT_TTL_HELP: &str = "seconds of the `default` TTL class (default 300; empty: ignored)";
const HEALTH_INTERVAL_HELP: &str =
    "milliseconds between health checks of Redis (default 30000; empty: ignored)";
const ADMIN_LISTEN_HELP: &str =
    "address of the admin HTTP listener (default 127.0.0.1:9121; empty: no admin listener)";

impl Config {
    /// Applies every variable of [`VARIABLES`] that `env` (a lookup function, so tests need
    /// not touch the process environment) has a value for.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for var in VARIABLES {
            if let Some(value) = env(var.name) {
                (var.apply)(self, value).map_err(|message| ConfigError::Env {
                    name: var.name,
                    message,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules::DEFAULT_TTL_SECS;
    use crate::config::{admin, health};

    /// The defaults `--help` states are the ones a config without a file gets.
    #[test]
    fn help_states_the_real_defaults() {
        let config = Config::default();
        let help = |name: &str| {
            VARIABLES
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.help)
                .unwrap()
        };
        let url = &config.upstream.url;
        assert!(help("REDIS_HOST").contains(&format!("default {}", url.host)));
        assert!(help("REDIS_PORT").contains(&format!("default {}", url.port)));
        assert!(config.upstream.password.is_none());
        assert!(help("CACHE_DEFAULT_TTL").contains(&format!("default {DEFAULT_TTL_SECS}")));
        assert!(help("CACHE_HEALTH_CHECK_INTERVAL").contains(&format!(
            "default {}",
            health::HealthConfig::default().interval_ms
        )));
        assert!(help("CACHET_LISTEN").contains(&format!("default {}", config.proxy.listen)));
        assert!(
            help("CACHET_ADMIN_LISTEN").contains(&format!("default {}", admin::DEFAULT_LISTEN))
        );
    }

    #[test]
    fn every_variable_is_read_and_an_empty_one_is_ignored_but_admin_listen() {
        let mut config = Config::default();
        config.apply_env(|_| Some(String::new())).unwrap();
        assert_eq!(config.proxy.listen, Config::default().proxy.listen);
        assert_eq!(config.admin.listen, AdminListen(None));

        let asked = std::cell::RefCell::new(Vec::new());
        Config::default()
            .apply_env(|name| {
                asked.borrow_mut().push(name.to_owned());
                None
            })
            .unwrap();
        let names: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(*asked.borrow(), names);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let error = Config::default()
            .apply_env(|name| (name == "REDIS_PORT").then(|| "http".to_owned()))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable REDIS_PORT: \"http\" is not a port number"
        );
    }
}
