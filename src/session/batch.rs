//! Phase 3, **upstream** (pool side): commands bound for the pool are gathered from one read of
//! the client into one batch, and the batch goes to the client's pooled connection as one
//! write. The tag rules may add frames of their own to it (`tagging`).

use super::*;

impl Session {
    /// Adds a command to the batch for the pool.
    pub(super) fn forward(&mut self, request: Request) {
        self.forward_frames(request, 1);
    }

    /// Adds a command that Redis answers with `frames` frames.
    pub(super) fn forward_frames(&mut self, request: Request, frames: usize) {
        self.close_fast();
        self.batch.extend_from_slice(&request.raw);
        self.batch_count += frames;
        self.batch_plain += frames;
    }

    /// Sends the batch gathered from this read to the pool.
    pub(super) fn flush_batch(&mut self) {
        self.close_fast();
        if self.batch_count == 0 {
            return;
        }
        let slot = self.batch_slot();
        let pool = self.shared.upstream.pool(self.protocol);
        let handle = &pool[self.pool_index % pool.len()];
        handle.send(PoolRequest {
            payload: self.batch.split().freeze(),
            count: self.batch_count,
            client: self.handle.pooled.clone(),
            partial: matches!(slot, Slot::Pool),
        });
        self.slots.push_back(slot);
        self.sent.push_back(std::time::Instant::now());
        self.in_flight += self.batch_count;
        self.batch_count = 0;
    }
}
