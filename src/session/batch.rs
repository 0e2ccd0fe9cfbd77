//! Phase 3, **upstream** (pool side): commands bound for the pool are gathered from one read of
//! the client into one batch, and the batch goes to the client's pooled connection as one
//! write. The tag rules may add frames of their own to it (`tagging`).

use super::*;

/// The commands for the pool gathered from one read of the client.
pub(super) struct Batch {
    /// The pooled connection this client's batches go to (sticky, so they stay in order).
    pub pool: usize,
    /// The commands, encoded as the client sent them (plus the rules' own frames).
    pub bytes: BytesMut,
    /// Reply frames Redis will send for them.
    pub count: usize,
    /// The inspection plan of the batch being gathered, if it needs one.
    pub inspect: Option<Vec<Inspect>>,
    /// Reply frames gathered since the plan's last entry.
    pub plain: usize,
    /// Tagged SETs waiting to join the batch as one transaction (see `tagging`).
    pub fast: crate::tags::index::FastBatch,
    /// cachet's clock (ms since the Unix epoch) as the tagged SETs of the client read being
    /// processed read it: the scores of their index entries start from it.
    pub clock_ms: Option<u64>,
}

impl Batch {
    pub fn new(pool: usize) -> Self {
        Batch {
            pool,
            bytes: BytesMut::new(),
            count: 0,
            inspect: None,
            plain: 0,
            fast: Default::default(),
            clock_ms: None,
        }
    }
}

impl Session {
    /// Adds a command to the batch for the pool.
    pub(super) fn forward(&mut self, request: Request) {
        self.forward_frames(request, 1);
    }

    /// Adds a command that Redis answers with `frames` frames.
    pub(super) fn forward_frames(&mut self, request: Request, frames: usize) {
        self.close_fast();
        self.batch.bytes.extend_from_slice(&request.raw);
        self.batch.count += frames;
        self.batch.plain += frames;
    }

    /// Sends the batch gathered from this read to the pool.
    pub(super) fn flush_batch(&mut self) {
        self.close_fast();
        if self.batch.count == 0 {
            return;
        }
        let slot = self.batch_slot();
        let pool = self.identity.pool(&self.services.upstream, self.protocol);
        let handle = &pool[self.batch.pool % pool.len()];
        handle.send(PoolRequest {
            payload: self.batch.bytes.split().freeze(),
            count: self.batch.count,
            client: self.handle.pooled.clone(),
            partial: matches!(slot, Slot::Pool),
        });
        self.replies.slots.push_back(slot);
        self.replies.sent.push_back(std::time::Instant::now());
        self.replies.in_flight += self.batch.count;
        self.batch.count = 0;
    }
}
