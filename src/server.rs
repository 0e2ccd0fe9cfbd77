//! The accept loop: client limits, one task per client, graceful shutdown.
//!
//! Shutdown stops accepting at once; every session then stops reading, finishes the replies
//! it owes, and closes. `run` returns when all sessions have ended, or when
//! `shutdown_grace_ms` has passed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::resp::Limits;
use crate::session::{ClientHandle, Inbox, Session};
use crate::tags::Rules;
use crate::tags::index::TagIndex;
use crate::upstream::Upstream;

/// cachet's client ids start here, far above any id Redis hands out, so a `CLIENT KILL ID`
/// can tell cachet's clients from Redis's connections.
const FIRST_CLIENT_ID: i64 = 1 << 32;

/// What every session shares.
pub struct Shared {
    pub config: Config,
    pub limits: Limits,
    pub request_buffers: crate::resp::request::RequestBuffers,
    pub rules: Arc<Rules>,
    pub index: TagIndex,
    pub metrics: Metrics,
    pub upstream: Arc<Upstream>,
    pub clients: ClientRegistry,
    pub warming: crate::warm::Warming,
    pub heat: crate::warm::Heat,
    pub policies: Arc<crate::policy::Policies>,
    pub health: crate::health::Health,
}

/// Live clients by cachet client id.
pub struct ClientRegistry {
    clients: Mutex<HashMap<i64, Arc<ClientHandle>>>,
    next_id: AtomicI64,
    /// Bytes of replies all clients owe (see `upstream::pool::ReplyAccount`).
    pub reply_bytes: prometheus::IntGauge,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        ClientRegistry {
            clients: Mutex::default(),
            next_id: AtomicI64::default(),
            reply_bytes: prometheus::IntGauge::new(
                "cachet_client_reply_bytes",
                "Bytes of replies cachet holds for clients that have not read them yet",
            )
            .expect("a valid metric name"),
        }
    }
}

impl ClientRegistry {
    fn next_id(&self) -> i64 {
        FIRST_CLIENT_ID + self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn insert(&self, id: i64, handle: Arc<ClientHandle>) {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, handle);
    }

    /// Removes a client; its handle if it was still registered.
    pub fn remove(&self, id: i64) -> Option<Arc<ClientHandle>> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }

    /// Sends every live client a message (shutdown, or kill once the grace period is over).
    fn broadcast(&self, message: impl Fn() -> Inbox) {
        for client in self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            let _ = client.inbox.send(message());
        }
    }

    pub fn get(&self, id: i64) -> Option<Arc<ClientHandle>> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Accepts clients on `listener` until `shutdown` is cancelled, then waits for them to finish.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    if let Err(error) = shared
        .metrics
        .registry
        .register(Box::new(shared.clients.reply_bytes.clone()))
    {
        tracing::warn!(%error, "cachet_client_reply_bytes not registered");
    }
    let slots = Arc::new(Semaphore::new(shared.config.proxy.max_clients));
    let sessions = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            let _permit = permit;
            serve_client(shared, stream, addr, shutdown).await;
        });
    }
    drop(listener);
    sessions.close();
    shared.clients.broadcast(|| Inbox::Shutdown);
    let grace = Duration::from_millis(shared.config.proxy.shutdown_grace_ms);
    tracing::info!(
        clients = sessions.len(),
        "shutting down: finishing in-flight replies"
    );
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            clients = sessions.len(),
            "shutdown grace period over; closing the rest"
        );
        shared.clients.broadcast(|| Inbox::Kill);
        sessions.wait().await;
    }
    shared.upstream.shutdown().await;
}

async fn serve_client(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let id = shared.clients.next_id();
    let (session, handle) = Session::new(shared.clone(), stream, addr, id);
    shared.clients.insert(id, handle);
    let _registered = Registered {
        registry: &shared.clients,
        id,
    };
    // Registered first, then checked: a client accepted as shutdown began either got the
    // broadcast or sees the token cancelled here.
    let shutting_down = shutdown.is_cancelled();
    let span = tracing::debug_span!("client", id, %addr);
    session.run(shutting_down).instrument(span).await;
}

/// A client's entry in the registry, removed when its session ends however it ends: a
/// session that panics leaves neither `CLIENT LIST` nor the client count.
struct Registered<'a> {
    registry: &'a ClientRegistry,
    id: i64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// Tells a client over the limit why, as Redis does, and closes.
async fn refuse(mut stream: TcpStream) {
    tracing::warn!("refusing a client: max number of clients reached");
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_that_panics_leaves_the_registry() {
        let registry = Arc::new(ClientRegistry::default());
        let id = registry.next_id();
        let (inbox, _inbox) = tokio::sync::mpsc::unbounded_channel();
        let limits = crate::upstream::pool::ReplyLimits {
            budget: 1,
            client: 1,
            total: 1,
        };
        let handle = ClientHandle {
            inbox,
            upstream_id: AtomicI64::new(0),
            addr: "127.0.0.1:1".parse().unwrap(),
            replies: crate::upstream::pool::ReplyAccount::new(limits, registry.reply_bytes.clone()),
        };
        registry.insert(id, Arc::new(handle));
        assert_eq!(registry.len(), 1);
        let session = {
            let registry = registry.clone();
            tokio::spawn(async move {
                let _registered = Registered {
                    registry: &registry,
                    id,
                };
                panic!("a bug in a session");
            })
        };
        assert!(session.await.unwrap_err().is_panic());
        assert!(registry.is_empty(), "the entry outlived its session");
    }
}
