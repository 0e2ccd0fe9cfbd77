//! cachet: a caching proxy for Redis.
//!
//! Applications keep their Redis clients and point them at cachet. It speaks RESP2 and RESP3,
//! forwards every command to Redis, and adds tags and TTL classes on writes, tag
//! invalidation, WebAssembly policies, warming and a health endpoint.
//!
//! Modules depend on lower layers only (docs/ARCHITECTURE.md, "Layers"; `tests/layers.rs`
//! enforces it): `resp`, `config`, `net` → `metrics` → `tags`, `upstream`, `policy`, `warm` →
//! `health`, `events`, `uninstall` → `session` → `server`, `admin` → `app`.
//!
//! # Module map
//!
//! * [`app`]: the composition root: validates the config once, builds every service, runs.
//! * [`admin`]: the admin HTTP listener: `/health`, `/metrics`, `/live`, `/ready`, dashboard.
//! * [`config`]: the TOML configuration as plain data, a file per section; environment
//!   overrides; errors placed in the file, secrets masked.
//! * [`events`]: EMIT: routing events to policies, merging and applying their actions,
//!   dead letters and `POLICY REPLAY`, reloading modules.
//! * [`health`]: the monitor loop, thresholds and `overall`; the `# cachet` INFO section.
//! * [`metrics`]: every metric cachet keeps, in one place.
//! * [`policy`]: the WebAssembly policy host: the sandbox, loaded modules, policy threads;
//!   `cachet policy check` and `cachet policy new`/`build` (`policy::scaffold`).
//! * [`net`]: the connection type (plain TCP or TLS), socket reads without the extra
//!   `WouldBlock` syscall, and the rustls configs (`net::tls`: PEM files, reload).
//! * [`resp`]: frames on the wire (requests, replies, locally built replies) and the command
//!   table learned from Redis.
//! * [`server`]: the accept loops (plain and TLS), client limits, graceful shutdown.
//! * [`session`]: one client connection and the phases each command goes through (its
//!   module header is the request path, top to bottom).
//! * [`tags`]: `[[rules]]` and TTL classes (which keys get which tags and TTL), and the tag
//!   index cachet keeps in Redis: its functions, calls, retries and sweeper.
//! * [`uninstall`]: `cachet uninstall`: finds and removes the keys, streams and function
//!   library cachet wrote into Redis, and nothing else.
//! * [`upstream`]: connections to Redis: the shared pipelined pool, dedicated connections for
//!   clients with their own state, and the control client; where the master is, found
//!   through Redis Sentinel for a `sentinel://` url and followed on failover.
//! * [`warm`]: warm requests from policies and operators, and read heat.
//!
//! # Request flow
//!
//! ```text
//! client ──▶ session: parse ─▶ route ────┬─▶ local reply (CLIENT ID, AUTH, RESET, ...)
//!                                         ├─▶ batch ─▶ pool connection ─▶ Redis
//!                                         └─▶ dedicated connection ─────▶ Redis
//! client ◀── session: replies in command order ◀───────────────────────────┘
//! ```

pub mod admin;
pub mod app;
pub mod config;
pub mod events;
pub mod health;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod resp;
pub mod server;
pub mod session;
pub mod tags;
pub mod uninstall;
pub mod upstream;
pub mod warm;

pub use app::{run, run_with_admin};
pub use config::Config;
