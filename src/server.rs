//! The accept loop: client limits, one task per client, graceful shutdown.
//!
//! Plain and TLS clients come from their own listeners and share `max_clients`. A TLS client
//! takes its place at accept, before its handshake, which must finish within the
//! handshake timeout: clients that connect and never finish cannot pile up beyond
//! `max_clients`, nor stay. Its acceptor is built from the server config current at accept
//! (`net::tls::Reloadable`), so a certificate reload reaches new clients only.
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
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::Stream;
use crate::net::tls::Reloadable;
use crate::session::{ClientRegistry, Inbox, Services, Session};

/// The TLS listener (`[proxy.tls]`) and what its clients are accepted with.
pub struct TlsListener {
    pub listener: TcpListener,
    pub config: Arc<Reloadable>,
    /// A client not done with its handshake after this long is closed.
    pub handshake_timeout: Duration,
}

/// Accepts clients on `listener` (and `tls`'s) until `shutdown` is cancelled, then waits for
/// them to finish.
pub async fn serve(
    services: Arc<Services>,
    listener: TcpListener,
    tls: Option<TlsListener>,
    shutdown: CancellationToken,
) {
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
        let (accepted, secure) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => (accepted, false),
            accepted = async { tls.as_ref().expect("checked").listener.accept().await }, if tls.is_some() => (accepted, true),
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if secure {
                // Plain text would be garbage to a TLS client, and a handshake beyond the
                // limit is what the limit is for.
                tracing::warn!("refusing a TLS client: max number of clients reached");
            } else {
                tokio::spawn(refuse(stream));
            }
            continue;
        };
        let handshake = match (&tls, secure) {
            (Some(tls), true) => Some((
                TlsAcceptor::from(tls.config.current()),
                tls.handshake_timeout,
            )),
            _ => None,
        };
        let services = services.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            let _permit = permit;
            let stream = match handshake {
                None => Stream::from(stream),
                Some((acceptor, limit)) => {
                    match accept_tls(acceptor, stream, limit, &shutdown).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%addr, %error, "TLS handshake failed");
                            return;
                        }
                    }
                }
            };
            serve_client(services, stream, addr, shutdown).await;
        });
    }
    drop(listener);
    drop(tls);
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

/// A TLS client's handshake, cut off after `limit` or at shutdown.
async fn accept_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Result<Stream, String> {
    // Before the handshake, whose flights would otherwise wait on Nagle's algorithm.
    stream.set_nodelay(true).ok();
    tokio::select! {
        done = tokio::time::timeout(limit, acceptor.accept(stream)) => match done {
            Ok(Ok(tls)) => Ok(Stream::from(tokio_rustls::TlsStream::from(tls))),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("not done after {} ms", limit.as_millis())),
        },
        _ = shutdown.cancelled() => Err("shutting down".to_owned()),
    }
}

async fn serve_client(
    services: Arc<Services>,
    stream: Stream,
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
