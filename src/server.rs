//! The accept loop: client limits, one task per client, graceful shutdown.
//!
//! Shutdown stops accepting at once; every session then stops reading, finishes the replies
//! it owes, and closes. `run` returns when all sessions have ended, or when
//! `shutdown_grace_ms` has passed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::session::{ClientRegistry, Inbox, Services, Session};

/// Accepts clients on `listener` until `shutdown` is cancelled, then waits for them to finish.
pub async fn serve(services: Arc<Services>, listener: TcpListener, shutdown: CancellationToken) {
    if let Err(error) = services
        .metrics
        .registry
        .register(Box::new(services.clients.reply_bytes.clone()))
    {
        tracing::warn!(%error, "cachet_client_reply_bytes not registered");
    }
    let slots = Arc::new(Semaphore::new(services.proxy.max_clients));
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
        let services = services.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            let _permit = permit;
            serve_client(services, stream, addr, shutdown).await;
        });
    }
    drop(listener);
    sessions.close();
    services.clients.broadcast(|| Inbox::Shutdown);
    let grace = Duration::from_millis(services.proxy.shutdown_grace_ms);
    tracing::info!(
        clients = sessions.len(),
        "shutting down: finishing in-flight replies"
    );
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            clients = sessions.len(),
            "shutdown grace period over; closing the rest"
        );
        services.clients.broadcast(|| Inbox::Kill);
        sessions.wait().await;
    }
    services.upstream.shutdown().await;
}

async fn serve_client(
    services: Arc<Services>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let id = services.clients.next_id();
    let (session, handle) = Session::new(services.clone(), stream, addr, id);
    services.clients.insert(id, handle);
    let _registered = Registered {
        registry: &services.clients,
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
    use std::sync::atomic::AtomicI64;

    use super::*;
    use crate::session::ClientHandle;

    #[tokio::test]
    async fn a_session_that_panics_leaves_the_registry() {
        let registry = Arc::new(ClientRegistry::new(
            prometheus::IntGauge::new("c", "c").unwrap(),
        ));
        let id = registry.next_id();
        let (inbox, _inbox) = tokio::sync::mpsc::unbounded_channel();
        let limits = crate::upstream::pool::ReplyLimits {
            budget: 1,
            client: 1,
            total: 1,
        };
        let (pool_tx, _pool_replies) = tokio::sync::mpsc::unbounded_channel();
        let addr = "127.0.0.1:1".parse().unwrap();
        let handle = ClientHandle {
            inbox,
            upstream_id: AtomicI64::new(0),
            addr,
            local: None,
            connected: std::time::Instant::now(),
            pooled: Arc::new(crate::upstream::ReplyTo {
                tx: pool_tx,
                account: crate::upstream::pool::ReplyAccount::new(
                    limits,
                    registry.reply_bytes.clone(),
                ),
                addr,
            }),
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
