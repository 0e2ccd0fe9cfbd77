//! Warming: asking the application to recompute what was just invalidated.
//!
//! Policies (and the `WARM` command) hand [`WarmRequest`]s to [`Warming::submit`]; the
//! `[warmers.*]` config says where each warmer sends them (an HTTP endpoint of the
//! application, or a Redis Stream for workers). [`Heat`] counts reads of rule-matched keys so
//! a warmer can skip keys nobody reads.
//!
//! * [`heat`]: the read-count sketch.
//! * `worker`: one task per warmer: the delay, the concurrency cap, retries.
//! * `deliver`: one attempt: an HTTP call, or an XADD on the control client.
//! * [`metrics`]: the `cachet_warm_*` families.
//!
//! `submit` is synchronous and never waits: the policy host calls it from its own threads,
//! which are not tokio's. It refuses an unknown warmer or a missing placeholder, answers
//! `Cold` when the request names a key whose heat is below `min_reads`, and looks the request
//! up in the warmer's de-duplication map (its key: the sorted parameters and the key; event
//! and reason do not count):
//!
//! * identical to a request still waiting: `Deduplicated`;
//! * identical to one sent less than `dedup_ms` ago: queued, due after `delay_ms` but not
//!   before that window ends, so a storm of invalidations becomes one request per window and
//!   the last invalidation is still warmed;
//! * otherwise: queued, due after `delay_ms`.
//!
//! It hands the request to the warmer's worker through an unbounded channel whose length is
//! capped by a counter (`queue`): the cap counts requests in the channel, delayed, or waiting
//! for a sender. The map holds at most those plus the requests sent in the last `dedup_ms`
//! (each entry's window end is a timer in the worker's `DelayQueue`). The flow is drawn in
//! docs/ARCHITECTURE.md, "Warming".
//!
//! Shutdown cancels the workers: requests waiting and retries in progress are dropped, and a
//! delivery in flight is abandoned. Warming is an optimisation: the next read after a dropped
//! request recomputes as it would without cachet.

mod deliver;
pub mod heat;
pub mod metrics;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WarmerConfig;

pub use heat::Heat;

/// One request to warm, as a policy's `warm` action or a `WARM` command made it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WarmRequest {
    /// The `[warmers.<name>]` entry to use.
    pub warmer: String,
    /// Values for the warmer's `{placeholders}`, in the order given.
    pub params: Vec<(String, String)>,
    /// The key to warm, when the request is about one key.
    pub key: Option<Bytes>,
    /// The event that caused it (for the stream entry and the log).
    pub event: String,
    /// Why: the policy's name, or `WARM` for an operator's command.
    pub reason: String,
}

/// What became of a submitted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued; it is sent after the warmer's delay.
    Queued,
    /// An identical request is already waiting inside the de-duplication window.
    Deduplicated,
    /// The key was read less often than the warmer's heat threshold.
    Cold,
    /// Not queued, and why (unknown warmer, missing parameter, queue full).
    Refused(String),
}

/// What makes two requests identical: the same parameters (in any order) and key. Event and
/// reason do not count: whichever event asked, the warm request does the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    params: Vec<(String, String)>,
    key: Option<Bytes>,
}

/// Where an identical request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Waiting to be sent: another identical one adds nothing.
    Waiting,
    /// Sent at this time: another identical one is held until `dedup_ms` after it.
    Sent(Instant),
}

/// A request on its way to the worker.
struct Job {
    request: WarmRequest,
    identity: Identity,
    due: Instant,
}

/// One `[warmers.NAME]`, its queue and its metrics.
struct Warmer {
    name: String,
    config: WarmerConfig,
    pending: Mutex<HashMap<Identity, Pending>>,
    /// Jobs in the channel, delayed, or waiting for a sender.
    depth: AtomicUsize,
    jobs: mpsc::UnboundedSender<Job>,
    /// Taken by the worker when it starts.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    metrics: metrics::WarmerMetrics,
}

/// The warmers configured, and their queues.
#[derive(Default)]
pub struct Warming {
    warmers: BTreeMap<String, Arc<Warmer>>,
    heat: Heat,
}

impl Warming {
    /// The warmers of `config`, counting into `registry` and judging heat by `heat`. Nothing
    /// is sent until [`Warming::start`]; requests submitted before wait in the queues.
    pub fn new(
        config: &BTreeMap<String, WarmerConfig>,
        heat: Heat,
        registry: &prometheus::Registry,
    ) -> Self {
        let families = metrics::WarmMetrics::register(registry);
        let warmers = config
            .iter()
            .map(|(name, config)| {
                let (jobs, inbox) = mpsc::unbounded_channel();
                let warmer = Warmer {
                    name: name.clone(),
                    config: config.clone(),
                    pending: Mutex::new(HashMap::new()),
                    depth: AtomicUsize::new(0),
                    jobs,
                    inbox: Mutex::new(Some(inbox)),
                    metrics: families.warmer(name),
                };
                (name.clone(), Arc::new(warmer))
            })
            .collect();
        Warming { warmers, heat }
    }

    /// Starts one worker per warmer (stream warmers write through `control`) and the heat
    /// window rotation; all stop at `shutdown`, dropping what is still queued.
    pub fn start(&self, control: &fred::clients::Client, shutdown: CancellationToken) {
        self.heat.start(shutdown.clone());
        for warmer in self.warmers.values() {
            let Some(inbox) = warmer.inbox.lock().expect("warmer lock").take() else {
                continue;
            };
            let timeout = Duration::from_millis(warmer.config.timeout_ms);
            let sender = deliver::Sender::new(&warmer.config.target, control, timeout);
            tokio::spawn(worker::run(warmer.clone(), inbox, sender, shutdown.clone()));
        }
    }

    /// The names of the configured warmers.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.warmers.keys().map(String::as_str)
    }

    /// Queues `request` with its warmer. Never blocks and never waits for the warmer.
    pub fn submit(&self, request: WarmRequest) -> Submitted {
        let Some(warmer) = self.warmers.get(&request.warmer) else {
            return Submitted::Refused(format!("no warmer named '{}'", request.warmer));
        };
        let outcome = warmer.submit(request, &self.heat);
        match &outcome {
            Submitted::Queued => warmer.metrics.queued.inc(),
            Submitted::Deduplicated => warmer.metrics.deduplicated.inc(),
            Submitted::Cold => warmer.metrics.cold.inc(),
            Submitted::Refused(_) => warmer.metrics.refused.inc(),
        }
        outcome
    }
}

impl Warmer {
    fn submit(&self, request: WarmRequest, heat: &Heat) -> Submitted {
        let config = &self.config;
        if let Some(missing) = config
            .placeholders()
            .iter()
            .find(|name| !request.params.iter().any(|(n, _)| n == *name))
        {
            return Submitted::Refused(format!(
                "warmer '{}' needs parameter '{missing}'",
                self.name
            ));
        }
        if config.min_reads > 0
            && let Some(key) = &request.key
            && heat.estimate(key) < config.min_reads
        {
            return Submitted::Cold;
        }
        let mut params = request.params.clone();
        params.sort();
        let identity = Identity {
            params,
            key: request.key.clone(),
        };
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("warmer lock");
        let due = match pending.get(&identity) {
            Some(Pending::Waiting) => return Submitted::Deduplicated,
            Some(Pending::Sent(at)) => (now + Duration::from_millis(config.delay_ms))
                .max(*at + Duration::from_millis(config.dedup_ms)),
            None => now + Duration::from_millis(config.delay_ms),
        };
        if self.depth.load(Ordering::Relaxed) >= config.queue.get() {
            return Submitted::Refused("queue full".to_owned());
        }
        let job = Job {
            request,
            identity: identity.clone(),
            due,
        };
        if self.jobs.send(job).is_err() {
            return Submitted::Refused("warming has stopped".to_owned());
        }
        pending.insert(identity, Pending::Waiting);
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.depth.set(depth as i64);
        Submitted::Queued
    }

    /// A job left the queue for a sender.
    fn dequeued(&self, identity: &Identity, at: Instant) {
        self.pending
            .lock()
            .expect("warmer lock")
            .insert(identity.clone(), Pending::Sent(at));
        let depth = self.depth.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.depth.set(depth as i64);
    }

    /// The de-duplication window of a request sent at `at` is over (unless an identical one
    /// was queued since, which then owns the entry).
    fn forget(&self, identity: &Identity, at: Instant) {
        let mut pending = self.pending.lock().expect("warmer lock");
        if pending.get(identity) == Some(&Pending::Sent(at)) {
            pending.remove(identity);
        }
    }
}
