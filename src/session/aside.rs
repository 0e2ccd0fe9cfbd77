//! Commands that act on other connections' work (`route::acts_on_others`: SCRIPT KILL,
//! FUNCTION KILL/STATS, SHUTDOWN, CLIENT PAUSE/UNPAUSE/UNBLOCK), sent on the out-of-band lane
//! (`upstream::aside`) rather than the pool, where they would queue behind the busy script or
//! paused write they are meant to end. The lane is the one of the client's user
//! (`upstream::identity`), so Redis judges them as that user.
//!
//! The command leaves at once, even while this client's earlier commands still wait on the
//! pool (they may be what it unsticks), and its reply takes its place in the order like any
//! other (`Slot::Async`). Later commands wait for every earlier reply (`Wait::Drain`), so
//! nothing the client sends after, say, `CLIENT PAUSE` reaches Redis before the pause does.
//! A SHUTDOWN that takes Redis down closes the client's connection without a reply, as Redis
//! does. Redis's reply reaches the client unchanged (`-BUSY`, `-NOTBUSY`, `-UNKILLABLE`, arity
//! errors); a failure of the lane itself is an `-ERR upstream ...` or `-ERR cachet's
//! out-of-band lane is full ...` and counts as an error.

use super::*;
use crate::upstream::{AsideError, Effect};

impl Session {
    pub(super) fn aside_command(&mut self, request: Request, name: &[u8]) {
        if self.client_gone {
            // Nobody would read the reply.
            self.closing = true;
            return;
        }
        let unblock = name == b"client"
            && request
                .arg(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"unblock"));
        let request = match unblock {
            true => self.translate_unblock(request),
            false => request,
        };
        let id = self.reserve_async();
        let effect = match name {
            b"client" => Effect::of(&request.args),
            _ => Effect::None,
        };
        let upstream = self.services.upstream.clone();
        let identity = self.identity.clone();
        let metrics = self.services.metrics.clone();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let shutdown = name == b"shutdown";
        tokio::spawn(async move {
            let lane = identity.aside(&upstream, protocol);
            let done = match lane.call(request.raw.clone(), effect).await {
                Ok(bytes) => Inbox::Done(id, bytes),
                // Redis closes every connection when it shuts down, the client's included.
                Err(AsideError::Upstream(UpstreamError::Lost(_))) if shutdown => Inbox::Closed(id),
                Err(error) => {
                    metrics.errors.inc();
                    Inbox::Done(id, error.to_frame())
                }
            };
            let _ = inbox.send(done);
        });
    }
}

impl Session {
    /// `FUNCTION LIST`: its reply leaves cachet's own library out (when this cachet uses it).
    ///
    /// `FUNCTION FLUSH`, `DELETE` or `RESTORE`: once this client's earlier replies are in,
    /// sent on the out-of-band lane, and before its reply goes out (and before this client's
    /// next command), cachet loads its own function library again if it uses it, so a tagged
    /// write after it does not meet `ERR Function not found`. Other clients' tagged writes
    /// in the millisecond between the two can (README, "What is transparent").
    pub(super) fn functions_command(&mut self, request: Request) {
        let Some((request, id)) = self.slot_after_earlier_replies(request) else {
            return;
        };
        let services = self.services.clone();
        let identity = self.identity.clone();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let list = request
            .arg(1)
            .is_some_and(|sub| sub.eq_ignore_ascii_case(b"list"));
        tokio::spawn(async move {
            let lane = identity.aside(&services.upstream, protocol);
            let reply = match lane.call(request.raw.clone(), Effect::None).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    services.metrics.errors.inc();
                    error.to_frame()
                }
            };
            let reply = if list {
                // The library is cachet's, not the application's.
                let name = crate::tags::index::LIBRARY_NAME.as_bytes();
                match services.index.is_loaded() {
                    true => crate::resp::reply::without_library(&reply, name).unwrap_or(reply),
                    false => reply,
                }
            } else {
                if let Err(error) = services.index.reload().await {
                    tracing::warn!(%error, "loading cachet's function library after FUNCTION FLUSH/DELETE/RESTORE failed");
                }
                reply
            };
            let _ = inbox.send(Inbox::Done(id, reply));
        });
    }
}
