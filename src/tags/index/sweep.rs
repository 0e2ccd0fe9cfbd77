//! The sweeper: walks cachet's own keys now and then, removing the index entries of keys that
//! vanished behind cachet's back (evicted, deleted by a client that bypassed cachet) and
//! finishing the drain sets of invalidations whose cachet died. One SCAN page of
//! `SWEEP_PAGE` keys per step, a step every `SWEEP_STEP`, and a full pass every
//! `SWEEP_PAUSE`: each step stays short, and an idle cachet costs Redis almost nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::TagIndex;

/// Keys one step asks SCAN for.
const SWEEP_PAGE: u64 = 200;
/// The pause between two steps of a pass.
const SWEEP_STEP: Duration = Duration::from_millis(100);
/// The pause between two passes.
const SWEEP_PAUSE: Duration = Duration::from_secs(60);

impl TagIndex {
    /// Sweeps until `shutdown`, skipping steps while `ready` says Redis is not reachable.
    /// `keys` is set to the number of cachet's keys after each full pass.
    pub async fn sweep(
        &self,
        ready: impl Fn() -> bool,
        keys: prometheus::IntGauge,
        shutdown: CancellationToken,
    ) {
        let mut cursor = 0;
        let mut seen = 0;
        loop {
            let pause = if cursor == 0 { SWEEP_PAUSE } else { SWEEP_STEP };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if !ready() {
                continue;
            }
            match self.sweep_step(cursor, SWEEP_PAGE).await {
                Ok((next, stats)) => {
                    if stats.members_removed + stats.key_sets_removed + stats.drained > 0 {
                        tracing::info!(?stats, "tag index sweep removed entries of vanished keys");
                    }
                    seen += stats.scanned as i64;
                    if next == 0 {
                        keys.set(seen);
                        seen = 0;
                    }
                    cursor = next;
                }
                Err(error) => {
                    tracing::debug!(%error, "tag index sweep step failed");
                    cursor = 0;
                    seen = 0;
                }
            }
        }
    }
}
