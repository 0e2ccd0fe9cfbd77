//! Commands that act on other connections' work (`route::acts_on_others`: SCRIPT KILL,
//! FUNCTION KILL/STATS, SHUTDOWN, CLIENT PAUSE/UNPAUSE/UNBLOCK), sent on the out-of-band lane
//! (`upstream::aside`) rather than the pool, where they would queue behind the busy script or
//! paused write they are meant to end.
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
        self.flush_batch();
        self.replies.next_async += 1;
        let id = self.replies.next_async;
        self.replies.slots.push_back(Slot::Async(id));
        self.replies.in_flight += 1;
        self.pinning.wait = Wait::Drain;
        let effect = match name {
            b"client" => Effect::of(&request.args),
            _ => Effect::None,
        };
        let upstream = self.services.upstream.clone();
        let metrics = self.services.metrics.clone();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        let shutdown = name == b"shutdown";
        tokio::spawn(async move {
            let lane = upstream.aside(protocol);
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
