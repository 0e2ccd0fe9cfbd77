//! The `cachet` function library (`index.lua`) in Redis: loading it, knowing whether this
//! cachet uses it, and the one retry after Redis lost it.
//!
//! This cachet uses the library from the start when it has rules (they turn writes into
//! calls of its functions), else from the first TAG command or policy action that needs it.
//! From then on [`TagIndex::reload`], a setup step of the control client, loads it again at
//! every (re)connect, before the pool serves at the first one. Redis can still be without it
//! (`FUNCTION FLUSH`, a call that races the reload after a restart): a call then fails with
//! [`IndexError::FunctionMissing`], and [`TagIndex::with_library`] loads the library and
//! makes the call once more. A client's tagged write, which goes through the pool, is not
//! retried: a `FUNCTION FLUSH`, `DELETE` or `RESTORE` through cachet is followed by a reload
//! before its reply (`session::aside`), but after one sent to Redis directly a tagged write
//! gets Redis's `ERR Function not found` until the control client reconnects or a call of
//! the index's own (a TAG command, an invalidation, a policy's action) loads the library
//! again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fred::interfaces::FunctionInterface;
use fred::types::Value;

use super::{IndexError, TagIndex};

/// The library, loaded with `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = include_str!("../index.lua");

/// Its name in Redis (`#!lua name=...`, the library's first line), which `FUNCTION LIST`
/// through cachet leaves out.
pub const LIBRARY_NAME: &str = "cachet";

/// Whether this cachet uses the library, shared by the clones of one [`TagIndex`].
#[derive(Debug, Clone, Default)]
pub(super) struct InUse(Arc<AtomicBool>);

impl InUse {
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl TagIndex {
    /// Loads (or replaces) the function library, and from now on again at every reconnect
    /// ([`TagIndex::reload`]).
    pub async fn install(&self) -> Result<(), IndexError> {
        // In a cluster every primary needs it: functions run where their keys are.
        let loaded: Result<Value, _> = match self.cluster {
            true => self.client.function_load_cluster(true, LIBRARY).await,
            false => self.client.function_load(true, LIBRARY).await,
        };
        loaded.map_err(IndexError::Load)?;
        self.in_use.set();
        Ok(())
    }

    /// Whether this cachet uses the library: it has rules, or has loaded the library for a
    /// command since. Redis then has it, barring a loss that the next TAG command, invalidation
    /// or policy delete repairs.
    pub fn is_loaded(&self) -> bool {
        self.in_use.get()
    }

    /// What the control client runs at every (re)connect: loads the library again if this
    /// cachet uses it (Redis may have restarted without it).
    pub async fn reload(&self) -> Result<(), IndexError> {
        match self.is_loaded() {
            true => self.install().await,
            false => Ok(()),
        }
    }

    /// Runs `operation` (a call of the library's functions), loading the library first if
    /// this cachet has not yet, and again if Redis lost it, after which `operation` runs a
    /// second time.
    pub(super) async fn with_library<T, Fut>(
        &self,
        mut operation: impl FnMut() -> Fut,
    ) -> Result<T, IndexError>
    where
        Fut: Future<Output = Result<T, IndexError>>,
    {
        if !self.is_loaded() {
            self.install().await?;
        }
        match operation().await {
            Err(IndexError::FunctionMissing(_)) => {
                self.install().await?;
                operation().await
            }
            result => result,
        }
    }
}
