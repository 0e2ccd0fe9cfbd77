//! One task per warmer: holds each request for its delay, then sends it with at most
//! `concurrency` in flight, retrying with exponential backoff and jitter.
//!
//! The worker takes a semaphore permit before it dequeues a due request, so at most
//! `concurrency` deliveries run and the rest wait, still counted in the queue depth. A
//! delivery retries timeouts, connection errors and 5xx/408/429 answers up to `retries`
//! times, waiting `backoff_ms × 2ⁿ` (its upper half jittered, capped at [`MAX_BACKOFF`]); a
//! redirect or another 4xx fails at once (`deliver` says which failure is which).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tracing::Instrument;

use super::deliver::{Failure, Sender};
use super::{Identity, Job, WarmRequest, Warmer};

/// The longest wait between two attempts, however many retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

enum Timer {
    /// A job whose delay is over.
    Send(Job),
    /// The de-duplication window of a request sent at this time is over.
    Forget(Identity, Instant),
}

pub(super) async fn run(
    warmer: Arc<Warmer>,
    mut inbox: mpsc::UnboundedReceiver<Job>,
    sender: Sender,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("warmer", name = %warmer.name);
    async move {
        let sender = Arc::new(sender);
        let permits = Arc::new(Semaphore::new(warmer.config.concurrency.get()));
        let dedup = Duration::from_millis(warmer.config.dedup_ms);
        let mut timers: DelayQueue<Timer> = DelayQueue::new();
        loop {
            let timer = tokio::select! {
                _ = shutdown.cancelled() => break,
                job = inbox.recv() => match job {
                    Some(job) => {
                        let due = tokio::time::Instant::from_std(job.due);
                        timers.insert_at(Timer::Send(job), due);
                        continue;
                    }
                    None => break,
                },
                expired = std::future::poll_fn(|cx| timers.poll_expired(cx)), if !timers.is_empty() => {
                    match expired {
                        Some(expired) => expired.into_inner(),
                        None => continue,
                    }
                }
            };
            match timer {
                Timer::Forget(identity, at) => warmer.forget(&identity, at),
                Timer::Send(job) => {
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                    };
                    let at = Instant::now();
                    warmer.dequeued(&job.identity, at);
                    timers.insert(Timer::Forget(job.identity, at), dedup);
                    tokio::spawn(
                        deliver(
                            warmer.clone(),
                            sender.clone(),
                            job.request,
                            permit,
                            shutdown.clone(),
                        )
                        .in_current_span(),
                    );
                }
            }
        }
        tracing::debug!(dropped = timers.len(), "warmer stopped");
    }
    .instrument(span)
    .await
}

/// Sends `request`, retrying what may succeed later, and counts the result.
async fn deliver(
    warmer: Arc<Warmer>,
    sender: Arc<Sender>,
    request: WarmRequest,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let config = &warmer.config;
    let timeout = Duration::from_millis(config.timeout_ms);
    let started = Instant::now();
    let mut retries = 0;
    let result = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = tokio::time::timeout(timeout, sender.send(&request)) => attempt,
        };
        let failure = match attempt {
            Ok(Ok(())) => break Ok(()),
            Ok(Err(failure)) => failure,
            Err(_) => Failure::Retry(format!("no answer within {} ms", config.timeout_ms)),
        };
        match failure {
            Failure::Retry(why) if retries < config.retries => {
                let wait = backoff(config.backoff_ms, retries);
                tracing::debug!(%why, retry = retries + 1, wait_ms = wait.as_millis() as u64, "warm attempt failed");
                retries += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Failure::Retry(why) | Failure::Permanent(why) => break Err(why),
        }
    };
    warmer
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            warmer.metrics.sent.inc();
            tracing::debug!(
                event = %request.event,
                reason = %request.reason,
                retries,
                "warm request sent"
            );
        }
        Err(why) => {
            warmer.metrics.failed.inc();
            tracing::warn!(
                event = %request.event,
                reason = %request.reason,
                retries,
                error = %why,
                "warm request failed"
            );
        }
    }
}

/// The wait before retry `n` (from 0): `base × 2ⁿ`, capped, with jitter over its upper half
/// so that warmers failing together do not retry together.
fn backoff(base_ms: u64, n: u32) -> Duration {
    let full = Duration::from_millis(base_ms)
        .saturating_mul(1 << n.min(20))
        .min(MAX_BACKOFF);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for n in 0..4 {
            let full = Duration::from_millis(100 << n);
            for _ in 0..50 {
                let wait = backoff(100, n);
                assert!(wait >= full / 2 && wait <= full, "{n}: {wait:?}");
            }
        }
        assert!(backoff(100, 40) <= MAX_BACKOFF);
    }
}
