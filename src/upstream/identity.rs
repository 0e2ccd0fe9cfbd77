//! Identities: the Redis user a set of connections is signed in as, and everything cachet
//! keeps per user. The pool's user (the `[upstream]` credentials, or none) is the default
//! identity, which lives as long as cachet; every other ACL user a client signs in as gets
//! an identity of its own, kept in a registry ([`Identities`]), so that clients signed in as
//! the same user share a multiplexed pool instead of a connection each.
//!
//! What an identity holds: its pooled connections per protocol ([`super::pool`]), its
//! out-of-band lane per protocol ([`super::aside`]), its spare dedicated connections, and
//! its credentials. Every connection it opens (pooled, lane, dedicated) signs in with them.
//!
//! * **Credentials are checked by Redis, never by cachet alone.** A user's identity is made
//!   only from credentials Redis has just accepted on a connection of the client's own
//!   (`crate::session::pinning`, "Signing in as someone else"). A later client joins at once
//!   only with the same user and password as the identity holds (compared in constant
//!   time, [`crate::config::secret_eq`]); any other password is sent to Redis first, and
//!   once accepted it replaces the one the identity reconnects with (the newest a client
//!   proved). A password Redis has since revoked keeps working for clients that join with
//!   it while the identity stays open: its connections were signed in before the change,
//!   as a Redis connection stays signed in after `ACL SETUSER u <password`.
//! * **The password lives as long as the identity**: held here and by its connection tasks,
//!   dropped with them (an identity is dropped when the registry lets it go: the tasks stop
//!   when their last handle is gone, the spares close).
//! * **Bounds**: at most `[upstream] max_user_pools` identities besides the default one; a
//!   client signing in as a new user past that keeps a dedicated connection, as before
//!   identities existed. Each holds at most `pool_size` pooled connections per protocol, one
//!   lane per protocol and `spare_connections` spares, so cachet holds at most
//!   (1 + `max_user_pools`) × (2 × `pool_size` + 2 + `spare_connections`) connections
//!   besides the dedicated ones its clients hold.
//! * **Idle ones close**: an identity no session holds for `user_pool_idle_secs` is removed
//!   by the reaper ([`Identities::reap`], every quarter of that, at most every second).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{AsideHandle, Dedicated, PoolHandle, Upstream, UpstreamError, pool};
use crate::config::{Secret, secret_eq};
use crate::resp::Protocol;

/// A user name and password, as the connections of one identity sign in.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: Secret,
}

/// The credentials an identity's connections use now, shared with its connection tasks (a
/// newer password a client proved replaces the one they reconnect with).
pub type SharedLogin = Arc<RwLock<Option<Login>>>;

/// One Redis user's connections. See the module header.
pub struct Identity {
    /// The user, `None` for the pool's own (the `[upstream]` credentials).
    user: Option<Bytes>,
    login: SharedLogin,
    pools: [OnceLock<Vec<PoolHandle>>; 2],
    asides: [OnceLock<AsideHandle>; 2],
    spares: Mutex<Vec<Dedicated>>,
}

impl Identity {
    pub(super) fn new(user: Option<Bytes>, login: Option<Login>) -> Self {
        Identity {
            user,
            login: Arc::new(RwLock::new(login)),
            pools: Default::default(),
            asides: Default::default(),
            spares: Mutex::new(Vec::new()),
        }
    }

    /// The ACL user, `None` for cachet's own.
    pub fn user(&self) -> Option<&Bytes> {
        self.user.as_ref()
    }

    /// Whether this is the pool's own user (cachet's).
    pub fn is_default(&self) -> bool {
        self.user.is_none()
    }

    pub(super) fn login(&self) -> SharedLogin {
        self.login.clone()
    }

    /// The pooled connections for `protocol`, started on first use.
    pub fn pool(&self, upstream: &Arc<Upstream>, protocol: Protocol) -> &[PoolHandle] {
        self.pools[protocol.index()].get_or_init(|| {
            (0..upstream.config.pool_size.get())
                .map(|index| pool::spawn(upstream.clone(), self.login(), protocol, index))
                .collect()
        })
    }

    /// The pooled connections already started for `protocol`.
    pub(super) fn started_pool(&self, protocol: Protocol) -> Option<&[PoolHandle]> {
        self.pools[protocol.index()].get().map(Vec::as_slice)
    }

    /// The out-of-band lane for `protocol`, started on first use.
    pub fn aside(&self, upstream: &Arc<Upstream>, protocol: Protocol) -> &AsideHandle {
        self.asides[protocol.index()]
            .get_or_init(|| AsideHandle::spawn(upstream.clone(), self.login(), protocol))
    }

    /// A connection for one client alone, from this identity's spares or newly opened,
    /// signed in with its credentials and set up for `protocol` and `name`.
    pub async fn dedicated(
        &self,
        upstream: &Upstream,
        protocol: Protocol,
        name: Option<Bytes>,
    ) -> Result<Dedicated, UpstreamError> {
        let mut spares = self.spares.lock().await;
        while let Some(mut conn) = spares.pop() {
            if conn.protocol == protocol && conn.is_alive() && !conn.master.is_stale() {
                drop(spares);
                return conn.rename(name, upstream.config.connect_timeout()).await;
            }
        }
        drop(spares);
        let login = self.login.read().expect("not poisoned").clone();
        Dedicated::open(upstream, login.as_ref(), protocol, name).await
    }

    /// Takes back a dedicated connection of this identity whose state is the default one.
    pub async fn release(&self, upstream: &Upstream, conn: Dedicated) {
        // One opened before the master moved (`super::sentinel`) is not kept.
        if upstream.is_shut() || !conn.authenticated || conn.master.is_stale() {
            return;
        }
        let mut spares = self.spares.lock().await;
        if spares.len() < upstream.config.spare_connections {
            spares.push(conn);
        }
    }

    pub(super) async fn drop_spares(&self) {
        self.spares.lock().await.clear();
    }

    /// Whether `password` is the one this identity signs in with, in constant time.
    fn password_is(&self, password: &[u8]) -> bool {
        let login = self.login.read().expect("not poisoned");
        login
            .as_ref()
            .is_some_and(|l| secret_eq(l.password.expose().as_bytes(), password))
    }
}

/// The identities of users other than the pool's. See the module header.
pub struct Identities {
    users: std::sync::Mutex<HashMap<Bytes, Entry>>,
    max: usize,
    idle: Duration,
}

struct Entry {
    identity: Arc<Identity>,
    /// Since when no session holds it.
    idle_since: Option<Instant>,
}

impl Identities {
    pub(super) fn new(max: usize, idle: Duration) -> Self {
        Identities {
            users: Default::default(),
            max,
            idle,
        }
    }

    /// The identity of `user` if one is open and signs in with this very `password`: a
    /// client with the same credentials joins it without asking Redis again.
    pub fn member(&self, user: &[u8], password: &[u8]) -> Option<Arc<Identity>> {
        let users = self.users.lock().expect("not poisoned");
        let entry = users.get(user)?;
        entry
            .identity
            .password_is(password)
            .then(|| entry.identity.clone())
    }

    /// For a client Redis has just signed in as `user` with `password`: that user's
    /// identity, opened now if there is none (with these credentials) and there is room;
    /// an open one takes `password` as the one it reconnects with. `None` past the cap (or
    /// for a name or password that is not UTF-8).
    pub fn join(&self, user: &[u8], password: &[u8]) -> Option<Arc<Identity>> {
        let login = Login {
            user: String::from_utf8_lossy(user).into_owned(),
            password: Secret::new(String::from_utf8_lossy(password).into_owned()),
        };
        let mut users = self.users.lock().expect("not poisoned");
        if let Some(entry) = users.get_mut(user) {
            entry.idle_since = None;
            if !entry.identity.password_is(password) && std::str::from_utf8(password).is_ok() {
                *entry.identity.login.write().expect("not poisoned") = Some(login);
            }
            return Some(entry.identity.clone());
        }
        let utf8 = std::str::from_utf8(user).is_ok() && std::str::from_utf8(password).is_ok();
        if users.len() >= self.max || !utf8 {
            // A name or password that is not UTF-8 cannot be kept as a `Login`: such a
            // client keeps the connection Redis signed it in on.
            return None;
        }
        let user = Bytes::copy_from_slice(user);
        let identity = Arc::new(Identity::new(Some(user.clone()), Some(login)));
        users.insert(
            user,
            Entry {
                identity: identity.clone(),
                idle_since: None,
            },
        );
        Some(identity)
    }

    /// Closes the identities no session has held for the idle time: their connections end
    /// once the registry's handles are dropped (a session joining holds the identity first,
    /// under the same lock, so none is closed under a client).
    pub fn reap(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut users = self.users.lock().expect("not poisoned");
            users.retain(|user, entry| {
                if Arc::strong_count(&entry.identity) > 1 {
                    entry.idle_since = None;
                    return true;
                }
                let since = *entry.idle_since.get_or_insert(now);
                if now.duration_since(since) < self.idle {
                    return true;
                }
                tracing::info!(user = %String::from_utf8_lossy(user), "closing an idle user pool");
                closed.push(entry.identity.clone());
                false
            });
        }
        // Dropped outside the lock: dropping closes sockets.
        drop(closed);
    }

    /// How often [`Identities::reap`] runs.
    pub(super) fn reap_every(&self) -> Duration {
        (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Number of open identities of other users.
    pub fn len(&self) -> usize {
        self.users.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open identity, to let go of their spares when the master moves.
    pub(super) fn all(&self) -> Vec<Arc<Identity>> {
        let users = self.users.lock().expect("not poisoned");
        users.values().map(|e| e.identity.clone()).collect()
    }

    pub(super) fn clear(&self) {
        let all: Vec<_> = {
            let mut users = self.users.lock().expect("not poisoned");
            users.drain().collect()
        };
        drop(all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_password_joins_others_are_asked_and_the_cap_holds() {
        let ids = Identities::new(1, Duration::from_secs(60));
        assert!(ids.member(b"a", b"pw").is_none(), "nothing open yet");
        let a = ids.join(b"a", b"pw").expect("room for one");
        assert!(Arc::ptr_eq(&ids.member(b"a", b"pw").unwrap(), &a));
        assert!(
            ids.member(b"a", b"other").is_none(),
            "another password asks Redis"
        );
        assert!(ids.member(b"b", b"pw").is_none());
        assert!(ids.join(b"b", b"pw").is_none(), "past the cap");
        // A newer password Redis accepted replaces the one it reconnects with.
        let again = ids.join(b"a", b"newer").unwrap();
        assert!(Arc::ptr_eq(&again, &a));
        assert!(ids.member(b"a", b"newer").is_some());
        assert!(ids.member(b"a", b"pw").is_none());
    }

    #[test]
    fn only_identities_nobody_holds_close_after_the_idle_time() {
        let ids = Identities::new(4, Duration::from_millis(30));
        let held = ids.join(b"a", b"pw").unwrap();
        drop(ids.join(b"b", b"pw").unwrap());
        ids.reap();
        assert_eq!(ids.len(), 2, "b is idle only from now");
        std::thread::sleep(Duration::from_millis(40));
        ids.reap();
        assert_eq!(ids.len(), 1, "b closed, a is held");
        assert!(ids.member(b"a", b"pw").is_some());
        drop(held);
        ids.reap();
        std::thread::sleep(Duration::from_millis(40));
        ids.reap();
        assert!(ids.is_empty());
    }
}
