//! `[[acl]]`: what clients signed in as other Redis users than cachet's may do with cachet's
//! commands that have no Redis equivalent to judge them by.
//!
//! For the commands that do have one (TAGSET is a SET, TAGINVALIDATE a DEL of the tag's keys,
//! ...), Redis's own ACL decides (`crate::upstream::acl`). EMIT, WARM and the POLICY
//! subcommands that change state act through policies and warmers, on keys nobody named, so
//! no plain command's rights say whether a user may run them: they need a grant here. cachet's
//! own user (the pool's) needs none.
//!
//! ```toml
//! [[acl]]
//! users = ["teacher-app"]
//! emit = ["session.*", "teacher.updated"]   # event globs
//! warm = true                               # WARM
//! policy = false                            # POLICY RELOAD / REPLAY / DROP
//! ```

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Deserializer};

/// One `[[acl]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclGrant {
    /// The Redis users (as in `AUTH user password`) this grant is for.
    pub users: Vec<String>,
    /// Events they may EMIT: globs over the event name (`*`, `?`, `[...]`).
    pub emit: EventGlobs,
    /// May run `WARM`.
    pub warm: bool,
    /// May run `POLICY RELOAD`, `POLICY REPLAY` and `POLICY DROP`.
    pub policy: bool,
}

/// What a signed-in user asks to do that only a grant allows.
#[derive(Debug, Clone, Copy)]
pub enum Permission<'a> {
    Emit(&'a str),
    Warm,
    Policy,
}

/// Event globs, compiled once when the config is read.
#[derive(Clone, Default)]
pub struct EventGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl EventGlobs {
    pub fn matches(&self, event: &str) -> bool {
        self.set.is_match(event)
    }
}

impl std::fmt::Debug for EventGlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

impl<'de> Deserialize<'de> for EventGlobs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(deserializer)?;
        let mut builder = GlobSetBuilder::new();
        for pattern in &patterns {
            let glob = Glob::new(pattern)
                .map_err(|e| serde::de::Error::custom(format!("acl emit glob {pattern:?}: {e}")))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(serde::de::Error::custom)?;
        Ok(EventGlobs { patterns, set })
    }
}

/// Whether any grant lets `user` do `what`.
pub fn allows(grants: &[AclGrant], user: &str, what: Permission<'_>) -> bool {
    grants
        .iter()
        .filter(|g| g.users.iter().any(|u| u == user))
        .any(|g| match what {
            Permission::Emit(event) => g.emit.matches(event),
            Permission::Warm => g.warm,
            Permission::Policy => g.policy,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(text: &str) -> Vec<AclGrant> {
        #[derive(Deserialize)]
        struct Doc {
            acl: Vec<AclGrant>,
        }
        toml::from_str::<Doc>(text).unwrap().acl
    }

    #[test]
    fn a_grant_names_users_events_and_commands() {
        let g = grants(
            r#"
            [[acl]]
            users = ["app", "ops"]
            emit = ["session.*"]
            warm = true

            [[acl]]
            users = ["ops"]
            policy = true
            "#,
        );
        assert!(allows(&g, "app", Permission::Emit("session.ended")));
        assert!(!allows(&g, "app", Permission::Emit("teacher.updated")));
        assert!(allows(&g, "app", Permission::Warm));
        assert!(!allows(&g, "app", Permission::Policy));
        assert!(allows(&g, "ops", Permission::Policy));
        assert!(!allows(&g, "stranger", Permission::Warm));
        assert!(!allows(&[], "app", Permission::Emit("x")));
    }

    #[test]
    fn a_bad_glob_is_refused() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Doc {
            acl: Vec<AclGrant>,
        }
        let err = toml::from_str::<Doc>("[[acl]]\nusers = [\"a\"]\nemit = [\"a[\"]\n").unwrap_err();
        assert!(err.to_string().contains("acl emit glob"), "{err}");
        let err = toml::from_str::<Doc>("[[acl]]\nusers = [\"a\"]\nwarmm = true\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
