//! Policies: WebAssembly components that decide what an event means for the cache.
//!
//! * [`engine`]: the wasmtime sandbox: compile and check a component, call it within limits.
//! * [`check`]: `cachet policy check`, a component's report before it is deployed.
//! * [`scaffold`]: `cachet policy new` and `cachet policy build`, a new policy in Rust,
//!   JavaScript or Python and the component built from it.
//! * This file: the loaded policies ([`Policies`]), which events each one handles, reloading
//!   a module without stopping the others, per-policy statistics, and the OS threads that run
//!   calls ([`Workers`]) so that wasm never runs on a task that serves clients.
//!
//! The contract is `wit/policy.wit`; EMIT itself (routing, merging and applying actions) is
//! in [`crate::events`].
//!
//! **Why threads, not tokio tasks.** A call may run up to its deadline (`timeout_ms`, 10 ms by
//! default) and host imports block on Redis; on a thread serving clients either would stall
//! every client on it. The policy threads are plain OS threads fed by a bounded channel
//! ([`Workers`]); the session's task awaits a oneshot. A full queue answers
//! `policy threads are busy` ([`Busy`], kind `limit`).
//!
//! **Reload.** Each policy's module is an `ArcSwap<Version>`. A reload compiles on a blocking
//! thread, then stores the new version; an event holds the `Arc` it took at routing, so it
//! finishes on that version. Reloads of one policy are serialised; a failure leaves the old
//! version.
//!
//! **Noticing a change.** Each entry remembers the file as it last looked at it, loaded or
//! refused (`Seen`: modification time, length, inode, digest). The watcher reads the file only
//! when one of the first three changed, and compiles it only when its digest changed too, so
//! a bad file left in place is reported once, not on every tick, and touching a file changes
//! nothing.

pub mod check;
pub mod engine;
pub mod scaffold;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

use crate::config::PolicyConfig;

pub use engine::{Backend, CallError, Host, LoadError, Module};

/// How many recent call durations each policy keeps for `POLICY LIST`'s p99.
const RECENT: usize = 1024;

/// One version of a policy's module, as loaded from its file.
pub struct Version {
    pub module: Module,
    /// Hex SHA-256 of the file's bytes.
    pub digest: String,
}

/// What the file system says about a module file without reading it: a change of any part
/// means it may hold something new. The inode catches a file moved into place within the
/// same tick of the file system's clock as the one it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: Option<u64>,
    inode: Option<u64>,
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok();
        Stamp {
            modified: metadata.as_ref().and_then(|m| m.modified().ok()),
            len: metadata.as_ref().map(|m| m.len()),
            inode: metadata.map(|m| m.ino()),
        }
    }
}

/// The module file as a policy last looked at it, whether it loaded or was refused.
#[derive(Debug)]
struct Seen {
    stamp: Stamp,
    /// Its digest; none when it could not be read.
    digest: Option<String>,
}

/// Counters of one policy, kept across reloads.
#[derive(Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub traps: AtomicU64,
    pub reloads: AtomicU64,
    pub failed_reloads: AtomicU64,
    recent: Mutex<VecDeque<Duration>>,
    total_ns: AtomicU64,
}

impl Stats {
    /// Records one call's duration and outcome.
    pub fn record(&self, duration: Duration, error: Option<&CallError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_ns
            .fetch_add(duration.as_nanos() as u64, Ordering::Relaxed);
        match error {
            None => {}
            Some(CallError::Error(_) | CallError::Limit(_)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.traps.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut recent = self.recent.lock().expect("stats lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(duration);
    }

    /// Mean duration over all calls, and the 99th percentile of the recent ones.
    pub fn durations(&self) -> (Duration, Duration) {
        let calls = self.calls.load(Ordering::Relaxed);
        let mean = match calls {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.total_ns.load(Ordering::Relaxed) / n),
        };
        let mut recent: Vec<Duration> = self
            .recent
            .lock()
            .expect("stats lock")
            .iter()
            .copied()
            .collect();
        recent.sort_unstable();
        let p99 = match recent.len() {
            0 => Duration::ZERO,
            n => recent[(n * 99).div_ceil(100) - 1],
        };
        (mean, p99)
    }
}

/// One configured policy: its settings, the version serving now, its statistics.
pub struct Entry {
    pub config: PolicyConfig,
    matcher: GlobSet,
    current: ArcSwap<Version>,
    pub stats: Stats,
    /// Serialises reloads of this policy, and holds the file as last looked at.
    reloading: tokio::sync::Mutex<Seen>,
}

impl Entry {
    /// Whether this policy handles events named `event`.
    pub fn subscribes(&self, event: &str) -> bool {
        self.matcher.is_match(event)
    }

    /// The version serving now; a caller keeps it for the whole event.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// What became of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The new module serves from now on.
    Replaced { digest: String },
    /// The file holds what was last looked at (the version serving, or one already
    /// refused): nothing was compiled, nothing is reported.
    Unchanged,
    /// The new module was refused; the old one keeps serving.
    Failed(String),
}

/// Every configured policy, and the engine and threads they run on.
pub struct Policies {
    /// The engine; none when no policy is configured (no ticker thread, no reserved pool).
    pub host: Option<Arc<Host>>,
    pub entries: Vec<Arc<Entry>>,
    pub workers: Workers,
}

impl Policies {
    /// Compiles and checks every configured module. Any failure refuses the whole set, so
    /// cachet never starts with a policy missing.
    pub fn load(configs: &[PolicyConfig], threads: usize) -> Result<Self, String> {
        if configs.is_empty() {
            return Ok(Policies {
                host: None,
                entries: Vec::new(),
                workers: Workers::start(0),
            });
        }
        let fuel = configs.iter().any(|c| c.fuel.is_some());
        let host = Arc::new(Host::new(fuel)?);
        let mut entries = Vec::with_capacity(configs.len());
        for config in configs {
            let stamp = Stamp::of(&config.module);
            let version = read_version(&host, config).map_err(|e| e.to_string())?;
            tracing::info!(
                policy = %config.name,
                module = %config.module.display(),
                digest = %version.digest,
                "policy loaded"
            );
            entries.push(Arc::new(Entry {
                config: config.clone(),
                matcher: matcher(&config.events)?,
                reloading: tokio::sync::Mutex::new(Seen {
                    stamp,
                    digest: Some(version.digest.clone()),
                }),
                current: ArcSwap::from_pointee(version),
                stats: Stats::default(),
            }));
        }
        let workers = Workers::start(threads);
        Ok(Policies {
            host: Some(host),
            entries,
            workers,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|e| e.name() == name)
    }

    /// The policies that handle `event`, in config order.
    pub fn subscribed(&self, event: &str) -> Vec<Arc<Entry>> {
        self.entries
            .iter()
            .filter(|e| e.subscribes(event))
            .cloned()
            .collect()
    }

    /// Reads, compiles and checks `entry`'s module file again and swaps it in. Events
    /// already running keep the version they started with. Without `force`, a file that
    /// looks (time and length) or reads (digest) as it did last time, served or refused, is
    /// left alone; `force` reloads, and reports, whatever the file holds.
    pub async fn reload(&self, entry: &Arc<Entry>, force: bool) -> Reloaded {
        let mut seen = entry.reloading.lock().await;
        let path = entry.config.module.clone();
        let stamp = Stamp::of(&path);
        if !force && stamp == seen.stamp {
            return Reloaded::Unchanged;
        }
        let host = self
            .host
            .clone()
            .expect("a configured policy has an engine");
        let config = entry.config.clone();
        let known = (!force).then(|| seen.digest.clone()).flatten();
        let looked = tokio::task::spawn_blocking(move || look(&host, &config, known))
            .await
            .unwrap_or_else(|e| Looked::Refused {
                digest: None,
                error: LoadError::Compile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                },
            });
        match looked {
            Looked::Same => {
                // Touched, not changed: remember the new stamp so it is not read again.
                seen.stamp = stamp;
                Reloaded::Unchanged
            }
            Looked::Loaded(version) => {
                let digest = version.digest.clone();
                *seen = Seen {
                    stamp,
                    digest: Some(digest.clone()),
                };
                entry.current.store(Arc::new(version));
                entry.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(policy = %entry.name(), %digest, "policy reloaded");
                Reloaded::Replaced { digest }
            }
            Looked::Refused { digest, error } => {
                *seen = Seen { stamp, digest };
                entry.stats.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    policy = %entry.name(),
                    %error,
                    "policy reload failed; the previous version keeps serving"
                );
                Reloaded::Failed(error.to_string())
            }
        }
    }
}

/// What a reload found in a module file.
enum Looked {
    /// The digest it was told it knows.
    Same,
    Loaded(Version),
    /// Unreadable (no digest) or refused.
    Refused {
        digest: Option<String>,
        error: LoadError,
    },
}

/// Reads a policy's module file and, unless its digest is `known`, compiles it. Blocking.
fn look(host: &Host, config: &PolicyConfig, known: Option<String>) -> Looked {
    let (bytes, digest) = match read_module(config) {
        Ok(read) => read,
        Err(error) => {
            return Looked::Refused {
                digest: None,
                error,
            };
        }
    };
    if known.as_ref() == Some(&digest) {
        return Looked::Same;
    }
    match compile_version(host, config, &bytes, digest.clone()) {
        Ok(version) => Looked::Loaded(version),
        Err(error) => Looked::Refused {
            digest: Some(digest),
            error,
        },
    }
}

fn matcher(patterns: &[String]) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // Literal separators: `session.*` must not match `session.a/b`-style names oddly.
        builder.add(Glob::new(pattern).map_err(|e| format!("{pattern:?}: {e}"))?);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Reads and compiles a policy's module file. Blocking (compiling a large component takes
/// seconds): call from a blocking thread.
pub fn read_version(host: &Host, config: &PolicyConfig) -> Result<Version, LoadError> {
    let (bytes, digest) = read_module(config)?;
    compile_version(host, config, &bytes, digest)
}

/// A module file's bytes and their hex SHA-256.
fn read_module(config: &PolicyConfig) -> Result<(Vec<u8>, String), LoadError> {
    let bytes = std::fs::read(&config.module).map_err(|source| LoadError::Read {
        path: config.module.display().to_string(),
        source,
    })?;
    let digest = hex(&Sha256::digest(&bytes));
    Ok((bytes, digest))
}

fn compile_version(
    host: &Host,
    config: &PolicyConfig,
    bytes: &[u8],
    digest: String,
) -> Result<Version, LoadError> {
    let compiled = host.compile(&config.module.display().to_string(), bytes)?;
    let module = Module::new(
        host,
        &config.name,
        compiled,
        engine::Limits::from_config(config),
    );
    Ok(Version { module, digest })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of OS threads that run policy calls, fed by a bounded queue.
pub struct Workers {
    queue: Option<mpsc::SyncSender<Job>>,
}

/// The queue of policy calls is full.
#[derive(Debug, thiserror::Error)]
#[error("policy threads are busy")]
pub struct Busy;

impl Workers {
    fn start(threads: usize) -> Self {
        if threads == 0 {
            return Workers { queue: None };
        }
        let (queue, jobs) = mpsc::sync_channel::<Job>(1024);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cachet-policy-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = jobs.lock().expect("job queue").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a policy thread");
            }
        }
        Workers { queue: Some(queue) }
    }

    /// Queues `work` for a policy thread; await the receiver for its result (the caller's
    /// tokio thread is never blocked).
    pub fn submit<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<R>, Busy> {
        let queue = self.queue.as_ref().ok_or(Busy)?;
        let (done, result) = tokio::sync::oneshot::channel();
        queue
            .try_send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| Busy)?;
        Ok(result)
    }
}
