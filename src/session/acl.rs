//! cachet's own commands for a client signed in as another ACL user than cachet's (one on
//! that user's pool, `upstream::identity`). They run as cachet's user, on cachet's own
//! connection, so before each runs Redis is asked whether the client's user may run the
//! plain command it stands for (`upstream::acl`, `ACL DRYRUN`), and a refusal is the exact
//! `-NOPERM` Redis would give that user for the plain command. cachet's own user passes
//! unchecked, as before; a client signed in on a connection of its own (past
//! `max_user_pools`, or by an AUTH sent while it held one) is refused by the gate
//! (`route::gate`).
//!
//! | command | checked as | when |
//! |---|---|---|
//! | `TAGSET k v [EX s\|PX ms\|KEEPTTL] ...` | `SET k v [EX s\|PX ms\|KEEPTTL]` | before the write |
//! | `TAGINVALIDATE t ...` | `DEL k1 ... kn` of the tags' keys now, 1000 keys a check | before anything is deleted |
//! | `TAGS k` | `EXISTS k` (read of the key) | before the index is read |
//! | `TAG k t ...` | `EXISTS k` | before the tags are added |
//! | `TAGKEYS t ...` | `EXISTS k1 ... kn` of the page's keys | before the page is answered |
//! | `EMIT event ...` | an `[[acl]]` grant whose `emit` globs match the event | — |
//! | `WARM` | an `[[acl]]` grant with `warm = true` | — |
//! | `POLICY RELOAD\|REPLAY\|DROP` | an `[[acl]]` grant with `policy = true` (`POLICY LIST` needs none) | — |
//!
//! Every check runs inside the command's `reply_later`, so after the client's earlier
//! commands have replied on its pool and before its later ones are sent: at Redis they run
//! in the client's order. A check Redis cannot answer (`AclDenied::Upstream`) is the
//! client's error: never a pass.
//!
//! **The race with concurrent writers.** TAGINVALIDATE reads the tags' keys (with cachet's
//! connection, in pages), checks them, then invalidates: a key tagged by another client
//! between the check and the invalidation is deleted without having been checked for this
//! user. Only keys a rule or a TAGSET of someone allowed to write them put under the tag
//! can appear that way. An empty tag needs no check (nothing is deleted; its epoch moves).
//!
//! Bounds: one check at a time per client (its later commands wait); the keys of one page
//! (1000) held at a time; the decisions cached by `upstream::acl`.

use bytes::Bytes;

use super::Services;
use crate::config::Permission;
use crate::resp::reply::Reply;
use crate::upstream::acl::AclDenied;

/// Keys per `DEL` check of TAGINVALIDATE, and per page of the tag read for it.
pub(super) const CHECK_KEYS: usize = 1000;

impl super::Session {
    /// The ACL user whose rights cachet's commands are checked against: `Some` for a client
    /// on another user's pool, `None` for cachet's own user.
    pub(super) fn acl_user(&self) -> Option<Bytes> {
        self.identity.user().cloned()
    }

    /// Whether an `[[acl]]` grant lets the client's user do `what`; cachet's own user needs
    /// none. The refusal is a `-NOPERM` naming the grant that is missing.
    pub(super) fn granted(&self, what: Permission<'_>) -> Result<(), Reply> {
        let Some(user) = self.identity.user() else {
            return Ok(());
        };
        let user = String::from_utf8_lossy(user);
        if crate::config::acl::allows(&self.services.acl, &user, what) {
            return Ok(());
        }
        let what = match what {
            Permission::Emit(event) => format!("emit the '{event}' event"),
            Permission::Warm => "run the 'warm' command".to_owned(),
            Permission::Policy => "run the 'policy' command with this subcommand".to_owned(),
        };
        Err(Reply::error(format!(
            "NOPERM User {user} has no permissions to {what} (no [[acl]] grant in cachet's config)"
        )))
    }
}

/// Redis's decision on `argv` for `user`, as the client's refusal.
pub(super) async fn check(services: &Services, user: &[u8], argv: Vec<Bytes>) -> Result<(), Reply> {
    services
        .upstream
        .acl()
        .check(user, &argv)
        .await
        .map_err(|denied| match denied {
            AclDenied::NoPerm(line) | AclDenied::Upstream(line) => Reply::error(line),
        })
}

/// `cmd k1 ... kn` as an argument vector.
pub(super) fn with_keys(cmd: &'static [u8], keys: &[Bytes]) -> Vec<Bytes> {
    let mut argv = Vec::with_capacity(keys.len() + 1);
    argv.push(Bytes::from_static(cmd));
    argv.extend(keys.iter().cloned());
    argv
}

/// TAGINVALIDATE's check: `user` may `DEL` every key under `tags` now, checked in chunks of
/// [`CHECK_KEYS`] as the tags' pages are read. The first refusal ends it.
pub(super) async fn may_delete_tagged(
    services: &Services,
    user: &[u8],
    tags: &[Bytes],
) -> Result<(), Reply> {
    let error = |e: crate::tags::index::IndexError| Reply::error(e.reply_text());
    let mut chunk: Vec<Bytes> = Vec::with_capacity(CHECK_KEYS);
    for tag in tags {
        let mut cursor = 0;
        loop {
            let (next, keys) = services
                .index
                .tagkeys(tag, cursor, CHECK_KEYS as u64)
                .await
                .map_err(error)?;
            for key in keys {
                chunk.push(key);
                if chunk.len() == CHECK_KEYS {
                    check(services, user, with_keys(b"DEL", &chunk)).await?;
                    chunk.clear();
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if !chunk.is_empty() {
        check(services, user, with_keys(b"DEL", &chunk)).await?;
    }
    Ok(())
}
