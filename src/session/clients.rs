//! Live clients by cachet client id: how `CLIENT KILL`, `CLIENT UNBLOCK`, `CLIENT TRACKING
//! ... REDIRECT` and shutdown reach another session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{ClientHandle, Inbox};

/// cachet's client ids start here, far above any id Redis hands out, so a `CLIENT KILL ID`
/// can tell cachet's clients from Redis's connections.
const FIRST_CLIENT_ID: i64 = 1 << 32;

/// Live clients by cachet client id.
pub struct ClientRegistry {
    clients: Mutex<HashMap<i64, Arc<ClientHandle>>>,
    next_id: AtomicI64,
    /// Bytes of replies all clients owe (see `upstream::pool::ReplyAccount`).
    pub reply_bytes: prometheus::IntGauge,
    /// `cachet_clients_connected`, kept equal to the number of entries.
    connected: prometheus::IntGauge,
}

impl ClientRegistry {
    /// An empty registry that keeps `connected` at its number of clients.
    pub fn new(connected: prometheus::IntGauge) -> Self {
        ClientRegistry {
            clients: Mutex::default(),
            next_id: AtomicI64::default(),
            reply_bytes: prometheus::IntGauge::new(
                "cachet_client_reply_bytes",
                "Bytes of replies cachet holds for clients that have not read them yet",
            )
            .expect("a valid metric name"),
            connected,
        }
    }
}

impl ClientRegistry {
    pub fn next_id(&self) -> i64 {
        FIRST_CLIENT_ID + self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn insert(&self, id: i64, handle: Arc<ClientHandle>) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.insert(id, handle);
        self.connected.set(clients.len() as i64);
    }

    /// Removes a client; its handle if it was still registered.
    pub fn remove(&self, id: i64) -> Option<Arc<ClientHandle>> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = clients.remove(&id);
        self.connected.set(clients.len() as i64);
        removed
    }

    /// Sends every live client a message (shutdown, or kill once the grace period is over).
    pub fn broadcast(&self, message: impl Fn() -> Inbox) {
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

    /// Every live client (at most `proxy.max_clients`).
    pub fn all(&self) -> Vec<(i64, Arc<ClientHandle>)> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, handle)| (*id, handle.clone()))
            .collect()
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
