//! The sandbox: one wasmtime [`Engine`] with the pooling allocator and epoch interruption,
//! components compiled once and pre-instantiated, a few instances per module reused across
//! calls, and every limit of a call (deadline, memory, fuel, actions) enforced here.
//!
//! * **One engine**: the pooling allocator (slots for 128 component instances, memories of
//!   up to 256 MiB (`MAX_MEMORY_MB`) of address space each), epoch interruption (a 1 ms ticker
//!   thread), the component model's async support (QuickJS components need its intrinsics),
//!   and fuel only when some policy sets `fuel` (it costs 15-70% per call). Each module is
//!   compiled once; `InstancePre` makes instantiation a copy of prepared state. A trap
//!   poisons its instance, which is dropped; after a success or an error it is kept.
//! * **Import check**: before linking, the component's import names are listed, and anything
//!   but [`ALLOWED_IMPORTS`] is refused by name. The linker has no WASI, so nothing else could
//!   be satisfied anyway; the check turns a link error into a message that names the import.
//!
//! A call runs on the thread that calls [`Module::call`], which must not be a thread serving
//! clients (see [`super::Workers`]). Host imports that need Redis block that thread; the time
//! they wait is not counted against the deadline but against a budget of its own
//! (`host_timeout_ms`), and one call may make at most `max_host_calls` host calls (all but
//! `monotonic-ns`): past either, the host call traps and the policy call fails as `limit`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};

use crate::config::policy::{MAX_MEMORY_MB, PolicyConfig};

/// The bindings `bindgen!` makes from `wit/`, the same folder the guests build against.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "policy",
        // A host call past the call's host-call cap or host-time budget traps.
        imports: { default: trappable },
    });
}

pub use bindings::cachet::policy::types::{Action, Event, Field, FollowUp, Level, Name};
use bindings::{Policy, PolicyPre};

/// The only imports a policy may have: cachet's own interfaces, at the version served.
pub const ALLOWED_IMPORTS: [&str; 2] = ["cachet:policy/types@0.1.0", "cachet:policy/host@0.1.0"];
/// The package the host serves, to tell a version mismatch from a foreign import.
const PACKAGE: &str = "cachet:policy/";
/// How often the epoch advances; deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(1);

/// What a policy may read while it decides. cachet's implementation asks Redis and the
/// read-heat sketch; `cachet policy check` answers with nothing. `budget` is what is left of
/// the call's host time: an answer not ready by then may be given up (as none).
pub trait Backend: Send + Sync {
    /// The tags of a key, from the tag index.
    fn key_tags(&self, key: &[u8], budget: Duration) -> Vec<Vec<u8>>;
    /// How many keys the tag index holds under a tag.
    fn tag_size(&self, tag: &[u8], budget: Duration) -> u64;
    /// The key's recent read count.
    fn key_heat(&self, key: &[u8]) -> u32;
}

/// A backend with no cache behind it: no tags, sizes 0, heat 0.
pub struct Offline;

impl Backend for Offline {
    fn key_tags(&self, _key: &[u8], _budget: Duration) -> Vec<Vec<u8>> {
        Vec::new()
    }
    fn tag_size(&self, _tag: &[u8], _budget: Duration) -> u64 {
        0
    }
    fn key_heat(&self, _key: &[u8]) -> u32 {
        0
    }
}

/// Why a call produced no actions. The kind names the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The policy returned `err(..)`.
    #[error("{0}")]
    Error(String),
    /// The guest trapped (panic, unreachable, a bad host call), or could not be instantiated.
    #[error("trapped: {0}")]
    Trap(String),
    /// The deadline passed.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// A memory grew past its cap.
    #[error("memory limit of {0} MiB reached")]
    Memory(u64),
    /// Fuel ran out, the actions returned were too many or too large, or the host calls
    /// were too many or waited too long.
    #[error("{0}")]
    Limit(String),
}

impl CallError {
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Error(_) => "error",
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
            CallError::Memory(_) => "memory",
            CallError::Limit(_) => "limit",
        }
    }
}

/// Why a module was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid component: {message}")]
    Compile { path: String, message: String },
    #[error("{path} imports what cachet does not provide: {imports}")]
    Imports { path: String, imports: String },
    #[error("{path} cannot be instantiated: {message}")]
    Link { path: String, message: String },
}

/// The shared wasmtime engine and its epoch ticker.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    fuel: bool,
    stop: Arc<AtomicBool>,
}

impl Host {
    /// An engine for components; `fuel` turns on fuel metering (for every store: a cost of
    /// 15-70% per call, so only when some policy asks for it).
    pub fn new(fuel: bool) -> Result<Self, String> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(128)
            .total_core_instances(2048)
            .total_memories(256)
            .total_tables(512)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_memories_per_module(4)
            .max_tables_per_module(8)
            .table_elements(1 << 17)
            .max_memory_size((MAX_MEMORY_MB as usize) << 20);
        let engine = Self::build_engine(Some(pool), fuel).or_else(|error| {
            // A host that cannot reserve the pool's address space still runs policies.
            tracing::warn!(%error, "pooling allocator unavailable; allocating on demand");
            Self::build_engine(None, fuel)
        })?;
        let mut linker = Linker::new(&engine);
        Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("cachet-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Host {
            engine,
            linker,
            fuel,
            stop,
        })
    }

    fn build_engine(pool: Option<PoolingAllocationConfig>, fuel: bool) -> Result<Engine, String> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(fuel)
            // QuickJS components use async intrinsics (task.cancel) even for sync exports.
            .wasm_component_model_async(true);
        if let Some(pool) = pool {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        Engine::new(&config).map_err(|e| e.to_string())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` and checks its imports and exports; `path` names it in errors.
    pub fn compile(&self, path: &str, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let component = Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            path: path.to_owned(),
            message: format!("{e:#}"),
        })?;
        let shape = self.shape(&component);
        let refused: Vec<String> = shape
            .imports
            .iter()
            .filter(|name| !ALLOWED_IMPORTS.contains(&name.as_str()))
            .map(|name| match name.strip_prefix(PACKAGE) {
                Some(_) => format!("{name} (cachet serves cachet:policy@0.1.0)"),
                None => name.clone(),
            })
            .collect();
        if !refused.is_empty() {
            return Err(LoadError::Imports {
                path: path.to_owned(),
                imports: refused.join(", "),
            });
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PolicyPre::new)
            .map_err(|e| LoadError::Link {
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        Ok(Compiled { shape, pre })
    }

    /// The names a component imports and exports.
    pub fn shape(&self, component: &Component) -> Shape {
        let ty = component.component_type();
        Shape {
            imports: ty
                .imports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
            exports: ty
                .exports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A component's import and export names.
#[derive(Debug, Clone)]
pub struct Shape {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// A compiled, checked component, before it gets its limits.
pub struct Compiled {
    pub shape: Shape,
    pre: PolicyPre<State>,
}

/// The limits of every call of one module.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    /// Most host calls (all imports but `monotonic-ns`) one call may make.
    pub max_host_calls: u32,
    /// Most time one call's host calls may wait (for Redis), all together.
    pub host_timeout: Duration,
    pub memory_bytes: usize,
    pub fuel: Option<u64>,
    pub max_actions: usize,
    pub max_action_bytes: usize,
    pub instances: usize,
}

impl Limits {
    pub fn from_config(config: &PolicyConfig) -> Self {
        Limits {
            timeout: Duration::from_millis(config.timeout_ms),
            max_host_calls: config.max_host_calls,
            host_timeout: Duration::from_millis(config.host_timeout_ms),
            memory_bytes: (config.memory_mb as usize) << 20,
            fuel: config.fuel,
            max_actions: config.max_actions,
            max_action_bytes: config.max_action_bytes,
            instances: config.instances,
        }
    }
}

/// A loaded module: instantiates quickly, keeps a few instances for reuse.
pub struct Module {
    pub policy: String,
    pub shape: Shape,
    pub limits: Limits,
    pre: PolicyPre<State>,
    fuel_metered: bool,
    idle: Mutex<Vec<Instance>>,
}

struct Instance {
    store: Store<State>,
    bindings: Policy,
}

impl Module {
    pub fn new(host: &Host, policy: &str, compiled: Compiled, limits: Limits) -> Self {
        Module {
            policy: policy.to_owned(),
            shape: compiled.shape,
            limits,
            pre: compiled.pre,
            fuel_metered: host.fuel,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn instantiate(&self) -> Result<Instance, CallError> {
        let budget = self.limits.timeout.max(INSTANTIATE_BUDGET);
        let state = State {
            policy: self.policy.clone(),
            event: String::new(),
            memory_cap: self.limits.memory_bytes,
            started: Instant::now(),
            budget,
            waited: Duration::ZERO,
            host_calls: 0,
            max_host_calls: self.limits.max_host_calls,
            host_budget: self.limits.host_timeout,
            host_refused: None,
            timed_out: false,
            memory_refused: false,
            backend: None,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| state);
        store.epoch_deadline_callback(move |mut context| {
            let state = context.data_mut();
            let used = state.started.elapsed().saturating_sub(state.waited);
            if used >= state.budget {
                state.timed_out = true;
                return Err(wasmtime::Error::msg("policy deadline passed"));
            }
            Ok(UpdateDeadline::Continue(ticks(state.budget - used)))
        });
        // Instantiation runs the guest's start functions (an interpreter's set-up, for the
        // JavaScript and Python components): bounded, but not by the call's deadline.
        store.set_epoch_deadline(ticks(budget));
        if self.fuel_metered {
            let _ = store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX));
        }
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Instance { store, bindings }),
            Err(error) => Err(classify(store.data(), &self.limits, &error, "instantiate")),
        }
    }

    /// Runs `on-event` with every limit in force. The instance is kept for the next call
    /// unless the call trapped (a trapped instance is poisoned).
    pub fn call(&self, event: &Event, backend: Arc<dyn Backend>) -> Result<Vec<Action>, CallError> {
        self.call_counted(event, backend).0
    }

    /// [`Self::call`], and how many host calls it made (refused ones included).
    pub fn call_counted(
        &self,
        event: &Event,
        backend: Arc<dyn Backend>,
    ) -> (Result<Vec<Action>, CallError>, u32) {
        let idle = self.idle.lock().expect("instance pool").pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => match self.instantiate() {
                Ok(instance) => instance,
                Err(error) => return (Err(error), 0),
            },
        };
        let store = &mut instance.store;
        {
            let state = store.data_mut();
            state.started = Instant::now();
            state.budget = self.limits.timeout;
            state.waited = Duration::ZERO;
            state.host_calls = 0;
            state.host_refused = None;
            state.timed_out = false;
            state.memory_refused = false;
            state.event = event.name.clone();
            state.backend = Some(backend);
        }
        store.set_epoch_deadline(ticks(self.limits.timeout));
        if self.fuel_metered {
            let _ = store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX));
        }
        let result = instance.bindings.call_on_event(&mut *store, event);
        store.data_mut().backend = None;
        let host_calls = store.data().host_calls;
        let outcome = match result {
            Ok(Ok(actions)) => self.check(actions),
            Ok(Err(message)) => Err(CallError::Error(message)),
            Err(error) => {
                let error = classify(store.data(), &self.limits, &error, "call");
                // Poisoned: drop this instance, the next call gets a fresh one.
                return (Err(error), host_calls);
            }
        };
        let mut idle = self.idle.lock().expect("instance pool");
        if idle.len() < self.limits.instances {
            idle.push(instance);
        }
        (outcome, host_calls)
    }

    /// Refuses results beyond the action caps.
    fn check(&self, actions: Vec<Action>) -> Result<Vec<Action>, CallError> {
        if actions.len() > self.limits.max_actions {
            return Err(CallError::Limit(format!(
                "returned {} actions, more than the limit of {}",
                actions.len(),
                self.limits.max_actions
            )));
        }
        let bytes: usize = actions.iter().map(action_bytes).sum();
        if bytes > self.limits.max_action_bytes {
            return Err(CallError::Limit(format!(
                "returned {bytes} bytes of actions, more than the limit of {}",
                self.limits.max_action_bytes
            )));
        }
        Ok(actions)
    }
}

/// The longest a fresh instance may take to start (its start functions run then), or the
/// call's deadline if that is longer. An 18 MB Python component takes about 1 ms on a quiet
/// machine and tens of milliseconds on a loaded one; a start function that never returns is
/// still stopped.
const INSTANTIATE_BUDGET: Duration = Duration::from_millis(250);

/// Deadline ticks for a duration, rounded up, at least one.
fn ticks(duration: Duration) -> u64 {
    (duration.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

fn classify(state: &State, limits: &Limits, error: &wasmtime::Error, during: &str) -> CallError {
    if state.timed_out {
        return CallError::Timeout(limits.timeout.as_millis() as u64);
    }
    if state.memory_refused {
        return CallError::Memory((limits.memory_bytes >> 20) as u64);
    }
    if let Some(refused) = &state.host_refused {
        return CallError::Limit(refused.clone());
    }
    if let Some(wasmtime::Trap::OutOfFuel) = error.downcast_ref::<wasmtime::Trap>() {
        return CallError::Limit(format!(
            "ran out of fuel ({})",
            limits.fuel.unwrap_or_default()
        ));
    }
    let message = format!("{error:#}");
    CallError::Trap(if during == "call" {
        message
    } else {
        format!("during {during}: {message}")
    })
}

fn name_bytes(name: &Name) -> usize {
    match name {
        Name::Text(text) => text.len(),
        Name::Binary(bytes) => bytes.len(),
    }
}

fn action_bytes(action: &Action) -> usize {
    match action {
        Action::InvalidateTag(name) | Action::DeleteKey(name) => name_bytes(name),
        Action::Warm(warm) => {
            warm.warmer.len()
                + warm.key.as_ref().map_or(0, name_bytes)
                + warm
                    .params
                    .iter()
                    .map(|p| p.name.len() + p.value.len())
                    .sum::<usize>()
        }
        Action::Emit(follow) => {
            follow.name.len()
                + follow
                    .fields
                    .iter()
                    .map(|p| p.name.len() + p.value.len())
                    .sum::<usize>()
        }
        Action::Log(entry) => entry.message.len(),
    }
}

/// A client's event (depth 0) with its fields as sent.
pub fn client_event(name: String, fields: Vec<(String, bytes::Bytes)>) -> Event {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Event {
        name,
        fields: fields
            .into_iter()
            .map(|(name, raw)| Field {
                name,
                value: String::from_utf8_lossy(&raw).into_owned(),
                raw: raw.to_vec(),
            })
            .collect(),
        time_ms,
        depth: 0,
    }
}

/// The bytes a name stands for.
pub fn name_to_bytes(name: Name) -> Vec<u8> {
    match name {
        Name::Text(text) => text.into_bytes(),
        Name::Binary(bytes) => bytes,
    }
}

/// What a store carries: the call's clock and flags, and what host imports need.
struct State {
    policy: String,
    event: String,
    memory_cap: usize,
    /// When the call (or instantiation) began.
    started: Instant,
    /// How long it may run: the call's deadline, or [`INSTANTIATE_BUDGET`] while a fresh
    /// instance is made.
    budget: Duration,
    /// Time spent in host imports waiting for Redis: not counted against the deadline, but
    /// against `host_budget`.
    waited: Duration,
    /// Host calls made so far in this call, and the most it may make.
    host_calls: u32,
    max_host_calls: u32,
    /// How long this call's host imports may wait, all together.
    host_budget: Duration,
    /// Why a host call was refused (and trapped), when one was.
    host_refused: Option<String>,
    timed_out: bool,
    memory_refused: bool,
    backend: Option<Arc<dyn Backend>>,
}

impl State {
    /// Counts a host call; a trap once there are more than `max_host_calls`.
    fn host_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls = self.host_calls.saturating_add(1);
        if self.host_calls > self.max_host_calls {
            return Err(self.refuse(format!(
                "more than {} host calls in one call",
                self.max_host_calls
            )));
        }
        Ok(())
    }

    fn refuse(&mut self, why: String) -> wasmtime::Error {
        let error = wasmtime::Error::msg(why.clone());
        self.host_refused = Some(why);
        error
    }

    /// Runs a host import that may wait (a counted host call), keeping its time off the
    /// deadline and on the host-time budget; the backend is given what is left of the budget,
    /// and a call that ends past it traps.
    fn waiting<R>(
        &mut self,
        read: impl FnOnce(&dyn Backend, Duration) -> R,
        otherwise: R,
    ) -> wasmtime::Result<R> {
        self.host_call()?;
        let Some(backend) = self.backend.clone() else {
            return Ok(otherwise);
        };
        let left = self.host_budget.saturating_sub(self.waited);
        let began = Instant::now();
        let result = read(backend.as_ref(), left);
        self.waited += began.elapsed();
        if self.waited >= self.host_budget {
            return Err(self.refuse(format!(
                "host calls waited more than {} ms in one call",
                self.host_budget.as_millis()
            )));
        }
        Ok(result)
    }
}

impl ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_refused = true;
            return Err(wasmtime::Error::msg("policy memory cap reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A table element is a pointer: hold tables to the memory cap's order of size.
        Ok(desired <= self.memory_cap / 8)
    }
}

impl bindings::cachet::policy::types::Host for State {}

impl bindings::cachet::policy::host::Host for State {
    fn key_tags(&mut self, key: Name) -> wasmtime::Result<Vec<Vec<u8>>> {
        let key = name_to_bytes(key);
        self.waiting(|b, left| b.key_tags(&key, left), Vec::new())
    }

    fn tag_size(&mut self, tag: Name) -> wasmtime::Result<u64> {
        let tag = name_to_bytes(tag);
        self.waiting(|b, left| b.tag_size(&tag, left), 0)
    }

    fn key_heat(&mut self, key: Name) -> wasmtime::Result<u32> {
        self.host_call()?;
        let key = name_to_bytes(key);
        Ok(self.backend.as_ref().map_or(0, |b| b.key_heat(&key)))
    }

    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.host_call()?;
        log_line(&self.policy, &self.event, level, &message);
        Ok(())
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        Ok(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64)
    }
}

/// A policy's log line (host import or `log` action), tagged with the policy and event.
pub fn log_line(policy: &str, event: &str, level: Level, message: &str) {
    match level {
        Level::Debug => tracing::debug!(policy, event, message, "policy log"),
        Level::Info => tracing::info!(policy, event, message, "policy log"),
        Level::Warn => tracing::warn!(policy, event, message, "policy log"),
        Level::Error => tracing::error!(policy, event, message, "policy log"),
    }
}

#[cfg(test)]
mod tests {
    use super::bindings::cachet::policy::host::Host as _;
    use super::*;

    /// Answers after `delay` (or when the budget it is given runs out, like cachet's own),
    /// and remembers the budgets it was given.
    struct Slow {
        delay: Duration,
        budgets: Mutex<Vec<Duration>>,
    }

    impl Backend for Slow {
        fn key_tags(&self, _key: &[u8], budget: Duration) -> Vec<Vec<u8>> {
            self.budgets.lock().unwrap().push(budget);
            std::thread::sleep(self.delay.min(budget));
            vec![b"t".to_vec()]
        }
        fn tag_size(&self, tag: &[u8], budget: Duration) -> u64 {
            self.key_tags(tag, budget).len() as u64
        }
        fn key_heat(&self, _key: &[u8]) -> u32 {
            1
        }
    }

    fn state(limits: &Limits, backend: Arc<Slow>) -> State {
        State {
            policy: "p".into(),
            event: "e".into(),
            memory_cap: limits.memory_bytes,
            started: Instant::now(),
            budget: limits.timeout,
            waited: Duration::ZERO,
            host_calls: 0,
            max_host_calls: limits.max_host_calls,
            host_budget: limits.host_timeout,
            host_refused: None,
            timed_out: false,
            memory_refused: false,
            backend: Some(backend),
        }
    }

    fn limits(max_host_calls: u32, host_timeout: Duration) -> Limits {
        Limits {
            timeout: Duration::from_millis(10),
            max_host_calls,
            host_timeout,
            memory_bytes: 1 << 20,
            fuel: None,
            max_actions: 10,
            max_action_bytes: 1000,
            instances: 1,
        }
    }

    fn key() -> Name {
        Name::Text("k".into())
    }

    #[test]
    fn host_calls_past_the_cap_trap_and_reach_no_backend() {
        let limits = limits(64, Duration::from_secs(10));
        let backend = Arc::new(Slow {
            delay: Duration::ZERO,
            budgets: Mutex::new(Vec::new()),
        });
        let mut state = state(&limits, backend.clone());
        for n in 0..64 {
            let answer = match n % 4 {
                0 => state.key_tags(key()).map(|t| t.len() as u64),
                1 => state.tag_size(key()),
                2 => state.key_heat(key()).map(u64::from),
                _ => state.log(Level::Debug, "x".into()).map(|()| 1),
            };
            assert_eq!(answer.expect("within the cap"), 1);
            // The clock is free: it reaches nothing outside the sandbox.
            state.monotonic_ns().unwrap();
        }
        let error = state.key_tags(key()).expect_err("the 65th host call traps");
        assert!(
            error.to_string().contains("more than 64 host calls"),
            "{error}"
        );
        assert!(state.tag_size(key()).is_err() && state.log(Level::Info, "x".into()).is_err());
        assert_eq!(
            backend.budgets.lock().unwrap().len(),
            32,
            "key-tags and tag-size"
        );
        assert_eq!(state.host_calls, 67);
        assert_eq!(
            classify(&state, &limits, &error, "call"),
            CallError::Limit("more than 64 host calls in one call".into())
        );
        assert_eq!(CallError::Limit(String::new()).kind(), "limit");
    }

    #[test]
    fn host_calls_share_one_time_budget_and_trap_past_it() {
        let limits = limits(64, Duration::from_millis(100));
        let backend = Arc::new(Slow {
            delay: Duration::from_millis(40),
            budgets: Mutex::new(Vec::new()),
        });
        let mut state = state(&limits, backend.clone());
        assert!(state.key_tags(key()).is_ok());
        assert!(state.tag_size(key()).is_ok());
        let error = state.key_tags(key()).expect_err("past 100 ms of host time");
        assert!(
            error.to_string().contains("waited more than 100 ms"),
            "{error}"
        );
        // The third call was given what was left (at most 20 ms), not another 40.
        let budgets = backend.budgets.lock().unwrap().clone();
        assert_eq!(budgets.len(), 3);
        assert_eq!(budgets[0], Duration::from_millis(100));
        assert!(budgets[2] <= Duration::from_millis(20), "{budgets:?}");
        assert!(matches!(
            classify(&state, &limits, &error, "call"),
            CallError::Limit(why) if why.contains("waited more than 100 ms")
        ));
        // Waiting never counted against the 10 ms deadline itself.
        assert!(!state.timed_out);
    }
}
