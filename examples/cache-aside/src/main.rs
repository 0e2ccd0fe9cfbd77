//! Cache-aside through cachet from Rust, with fred.
//!
//! The application keeps a plain Redis client and plain `GET`/`SET`s; cachet (configured with
//! `examples/cachet.toml`) gives the key its tags and TTL as it is written, and a domain event
//! sent with `EMIT` after a write lets cachet's policies invalidate what the write made stale.
//! No tag names and no TTLs appear in this file.
//!
//! It is a package of its own, so running it builds fred and tokio only (a minute or two
//! from scratch), not cachet and wasmtime:
//!
//! ```sh
//! cargo run --release -- --config examples/cachet.toml     # cachet on 127.0.0.1:6380
//! cargo run --manifest-path examples/cache-aside/Cargo.toml   # or: -- redis://host:port
//! ```

use std::collections::BTreeMap;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

/// Stands in for the application's database: each teacher's sessions.
#[derive(Default)]
struct Database {
    sessions: BTreeMap<u64, Vec<(u64, String)>>,
    queries: u32,
}

impl Database {
    fn teacher_sessions(&mut self, teacher: u64) -> String {
        self.queries += 1;
        let titles: Vec<String> = self
            .sessions
            .get(&teacher)
            .into_iter()
            .flatten()
            .map(|(id, title)| format!("{id}:{title}"))
            .collect();
        titles.join(",")
    }

    fn create_session(&mut self, teacher: u64, id: u64, title: &str) {
        self.sessions
            .entry(teacher)
            .or_default()
            .push((id, title.to_owned()));
    }
}

/// The cache-aside read. On a miss cachet remembers the tag epochs it saw, so if an
/// invalidation lands between this GET and the SET below, the SET's stale value is dropped
/// instead of cached (per connection, like a memcache lease).
async fn teacher_sessions(
    cache: &Client,
    db: &mut Database,
    teacher: u64,
) -> Result<String, Error> {
    let key = format!("sessions:teacher:{teacher}");
    if let Some(hit) = cache.get::<Option<String>, _>(&key).await? {
        println!("GET {key}: hit");
        return Ok(hit);
    }
    println!("GET {key}: miss, loading from the database");
    let value = db.teacher_sessions(teacher);
    // No EX: the `session-list` rule in cachet's config sets the TTL and the tags.
    cache
        .set::<(), _, _>(&key, value.as_str(), None, None, false)
        .await?;
    Ok(value)
}

/// A command fred has no method for (cachet's own, or EMIT), sent as is.
async fn command(cache: &Client, name: &'static str, args: Vec<&str>) -> Result<Value, Error> {
    cache
        .custom(
            CustomCommand::new_static(name, ClusterHash::FirstKey, false),
            args,
        )
        .await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6380".to_owned());
    let cache = Builder::from_config(Config::from_url(&url)?).build()?;
    cache.init().await?;

    let mut db = Database::default();
    db.create_session(123, 1, "Algebra");
    // Start from a clean slate so the first read misses.
    cache.del::<(), _>("sessions:teacher:123").await?;

    println!(
        "sessions: {}",
        teacher_sessions(&cache, &mut db, 123).await?
    );
    println!(
        "sessions: {}",
        teacher_sessions(&cache, &mut db, 123).await?
    );
    // What cachet attached on the SET: the rule's tags and TTL class.
    println!(
        "TAGS: {:?}",
        command(&cache, "TAGS", vec!["sessions:teacher:123"]).await?
    );
    println!(
        "TTL: {}",
        cache.ttl::<i64, _>("sessions:teacher:123").await?
    );

    // A write: commit to the database first, then tell cachet what happened. The sessions
    // policy invalidates the tags `teacher:123` and `school-sessions:7` and may ask the
    // application to warm the list again.
    db.create_session(123, 2, "Biology");
    match command(
        &cache,
        "EMIT",
        vec![
            "session.created",
            "sessionId",
            "2",
            "teacherId",
            "123",
            "schoolId",
            "7",
        ],
    )
    .await
    {
        Ok(reply) => println!("EMIT session.created: {reply:?}"),
        Err(e) => {
            // The data is committed either way. A cachet without the sessions policy refuses
            // the event; invalidating the tag by hand keeps this example's output right.
            println!("EMIT failed ({e}); TAGINVALIDATE teacher:123 instead");
            command(&cache, "TAGINVALIDATE", vec!["teacher:123"]).await?;
        }
    }

    println!(
        "sessions: {}",
        teacher_sessions(&cache, &mut db, 123).await?
    );
    println!("database queries: {}", db.queries);
    cache.quit().await?;
    Ok(())
}
