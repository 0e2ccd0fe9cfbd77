//! Tags and TTL classes: which keys cachet tags on writes, with which tags, and for how long
//! they live.
//!
//! A rule pairs a key pattern with tag templates and a TTL (a class of `[ttl]`, or seconds):
//!
//! ```toml
//! [[rules]]
//! pattern = "sessions:teacher:{teacher}"    # {name} captures one `:`-free segment, * any run
//! tags = ["teacher:{teacher}", "sessions"]  # filled from the captures, byte for byte
//! ttl = "session-list"
//! ```
//!
//! * `pattern`: the key pattern language, its matching and its load-time analyses
//!   (ambiguity, one set of patterns covering another).
//! * [`rules`]: the compiled rule set: validation with every error at once, and
//!   [`Rules::match_key`], the first matching rule for a key, on the proxy's hot path.
//! * [`index`]: the tag index kept in Redis, and [`index::TagIndex`], its one owner.

mod pattern;
pub mod rules;

pub use rules::{Match, RuleError, Rules};
pub mod index;
