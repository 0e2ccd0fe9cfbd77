//! `cachet uninstall`: removes what cachet wrote into the application's Redis, and nothing else.
//!
//! What cachet writes (its README has the same list as a table for operators):
//!
//! * the tag index (`crate::tags::index`, key names in `tags::index::names`): tag sets
//!   `P:t:{tag}` and drain sets `P:d:{tag}:E` (ZSETs, no TTL), epochs `P:e:{tag}` (strings,
//!   24 h TTL), per-key tag sets `P:k:{S(K)}:K` (SETs, expiring with `K`);
//! * the dead-letter stream (`[events] dead_letter_stream`) and, when configured, the log
//!   stream (`[events] log_stream`), both capped by `MAXLEN ~`, no TTL;
//! * the function library `cachet` (`tags::index::LIBRARY_NAME`).
//!
//! Warmers' streams (`[warmers.NAME] stream`) are not cachet's: the application's workers
//! read them, and may hold consumer groups there. They are left alone.
//!
//! Keys are found with `SCAN ... MATCH P:x:* TYPE t` (never `KEYS`), one pass per kind with
//! the kind's Redis type, and a key is taken only if its whole name has the kind's shape
//! ([`index_kind`]): an application key that merely starts with `cachet:` but is of another
//! type or shape is never touched. Each page found is removed with one `UNLINK` (at most
//! [`SCAN_COUNT`] keys' worth), so a large index is removed without blocking Redis. Streams
//! are removed only when they are streams. Run it with every cachet in front of this Redis
//! stopped: a running one loads the library again at its next reconnect or TAG command, and
//! writes index keys with every tagged write.

use std::fmt;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{CustomCommand, Value};

use crate::config::EventsConfig;
use crate::tags::index::{LIBRARY_NAME, Names};

/// How many keys one `SCAN` call looks at (Redis's hint), and so at most how many one `UNLINK`
/// removes.
pub const SCAN_COUNT: usize = 1000;

/// The kinds of thing cachet keeps in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `P:t:{tag}`: a tag's keys.
    TagSet,
    /// `P:d:{tag}:E`: a tag's keys at an invalidation, being deleted.
    DrainSet,
    /// `P:e:{tag}`: a tag's epoch.
    Epoch,
    /// `P:k:{S(K)}:K`: a key's tags.
    KeyTags,
    /// `[events] dead_letter_stream` or `log_stream`.
    Stream,
    /// The `cachet` function library.
    Library,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::TagSet,
        Kind::DrainSet,
        Kind::Epoch,
        Kind::KeyTags,
        Kind::Stream,
        Kind::Library,
    ];

    /// One of them, in the listing.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TagSet => "tag set",
            Kind::DrainSet => "drain set",
            Kind::Epoch => "epoch",
            Kind::KeyTags => "key tags",
            Kind::Stream => "stream",
            Kind::Library => "function library",
        }
    }

    /// All of them, in the summary.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::TagSet => "tag sets",
            Kind::DrainSet => "drain sets",
            Kind::Epoch => "epochs",
            Kind::KeyTags => "key tag sets",
            Kind::Stream => "streams",
            Kind::Library => "function library",
        }
    }
}

/// One thing found (and, unless a dry run, removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub name: Bytes,
}

impl fmt::Display for Found {
    /// `kind<TAB>name`, the name escaped like redis-cli shows binary keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\t{}", self.kind.as_str(), self.name.escape_ascii())
    }
}

/// What a run found, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub counts: std::collections::BTreeMap<Kind, u64>,
    /// Clients connected to Redis under a name cachet gives its connections
    /// (`cachet:pool`, `cachet:aside`): a cachet still running.
    pub cachet_clients: usize,
}

/// Where cachet's things are: the index's key prefix and the `[events]` streams.
pub struct Targets {
    pub names: Names,
    pub streams: Vec<String>,
}

impl Targets {
    /// The index under `prefix` (`tags::index::DEFAULT_PREFIX` for a cachet from this
    /// build) and the streams `events` names.
    pub fn new(prefix: &str, events: &EventsConfig) -> anyhow::Result<Self> {
        let names = Names::new(prefix)?;
        let mut streams = vec![events.dead_letter_stream.clone()];
        streams.extend(events.log_stream.clone());
        Ok(Targets { names, streams })
    }
}

/// Finds everything cachet wrote on `client`'s database (and the library, which is the
/// server's), hands each to `found`, and removes it unless `dry_run`. `client` must be
/// connected to Redis itself: through cachet, `FUNCTION LIST` leaves the library out.
pub async fn run(
    client: &Client,
    targets: &Targets,
    dry_run: bool,
    mut found: impl FnMut(&Found),
) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        cachet_clients: cachet_clients(client).await?,
        ..Summary::default()
    };
    let prefix = glob_escape(targets.names.prefix());
    for (kinds, redis_type) in [("[td]", "zset"), ("e", "string"), ("k", "set")] {
        let pattern = [&prefix[..], b":", kinds.as_bytes(), b":*"].concat();
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let page: Value = client
                .custom(
                    CustomCommand::new_static("SCAN", None, false),
                    vec![
                        Value::Bytes(cursor.clone()),
                        Value::from("MATCH"),
                        Value::Bytes(pattern.clone().into()),
                        Value::from("COUNT"),
                        Value::from(SCAN_COUNT as i64),
                        Value::from("TYPE"),
                        Value::from(redis_type),
                    ],
                )
                .await?;
            let (next, keys) = scan_page(page)?;
            let ours: Vec<Found> = keys
                .into_iter()
                .filter_map(|name| {
                    index_kind(&targets.names, &name).map(|kind| Found { kind, name })
                })
                .collect();
            for item in &ours {
                found(item);
                *summary.counts.entry(item.kind).or_default() += 1;
            }
            if !dry_run && !ours.is_empty() {
                let names = ours.into_iter().map(|f| Value::Bytes(f.name)).collect();
                let _: Value = client
                    .custom(CustomCommand::new_static("UNLINK", None, false), names)
                    .await?;
            }
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
    }
    for stream in &targets.streams {
        let kind: String = client
            .custom(
                CustomCommand::new_static("TYPE", None, false),
                vec![Value::from(stream.as_str())],
            )
            .await?;
        if kind == "stream" {
            let item = Found {
                kind: Kind::Stream,
                name: Bytes::copy_from_slice(stream.as_bytes()),
            };
            found(&item);
            *summary.counts.entry(Kind::Stream).or_default() += 1;
            if !dry_run {
                let _: Value = client
                    .custom(
                        CustomCommand::new_static("UNLINK", None, false),
                        vec![Value::from(stream.as_str())],
                    )
                    .await?;
            }
        }
    }
    let listed: Value = client
        .custom(
            CustomCommand::new_static("FUNCTION", None, false),
            vec![
                Value::from("LIST"),
                Value::from("LIBRARYNAME"),
                Value::from(LIBRARY_NAME),
            ],
        )
        .await?;
    if has_library(&listed) {
        let item = Found {
            kind: Kind::Library,
            name: Bytes::from_static(LIBRARY_NAME.as_bytes()),
        };
        found(&item);
        *summary.counts.entry(Kind::Library).or_default() += 1;
        if !dry_run {
            let _: Value = client
                .custom(
                    CustomCommand::new_static("FUNCTION", None, false),
                    vec![Value::from("DELETE"), Value::from(LIBRARY_NAME)],
                )
                .await?;
        }
    }
    Ok(summary)
}

/// Which kind of index key `name` is, if it is one: the prefix, the kind's letter, a
/// `{...}` part as cachet writes it (no `}` inside), and then nothing (tag sets, epochs),
/// `:` and digits (drain sets), or `:` and the key whose slot part it is (per-key sets).
pub fn index_kind(names: &Names, name: &[u8]) -> Option<Kind> {
    let rest = name.strip_prefix(&names.prefix()[..])?;
    if names.parse_key_tags(name).is_some() {
        return Some(Kind::KeyTags);
    }
    let (kind, rest) = match rest {
        [b':', b't', b':', b'{', rest @ ..] => (Kind::TagSet, rest),
        [b':', b'e', b':', b'{', rest @ ..] => (Kind::Epoch, rest),
        [b':', b'd', b':', b'{', rest @ ..] => (Kind::DrainSet, rest),
        _ => return None,
    };
    let close = rest.iter().position(|&b| b == b'}')?;
    let tail = &rest[close + 1..];
    let fits = match kind {
        Kind::DrainSet => tail
            .strip_prefix(b":")
            .is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)),
        _ => tail.is_empty(),
    };
    (close > 0 && fits).then_some(kind)
}

/// How many connections to Redis carry the names cachet gives its own.
async fn cachet_clients(client: &Client) -> anyhow::Result<usize> {
    let list: String = client
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec![Value::from("LIST")],
        )
        .await?;
    Ok(list
        .lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field == "name=cachet:pool" || field == "name=cachet:aside")
        })
        .count())
}

/// `[next cursor, [keys]]`.
fn scan_page(page: Value) -> anyhow::Result<(Bytes, Vec<Bytes>)> {
    let Value::Array(mut parts) = page else {
        anyhow::bail!("SCAN replied {page:?}");
    };
    if parts.len() != 2 {
        anyhow::bail!("SCAN replied {} elements", parts.len());
    }
    let keys = match parts.pop() {
        Some(Value::Array(keys)) => keys.into_iter().filter_map(bytes).collect(),
        other => anyhow::bail!("SCAN replied keys {other:?}"),
    };
    let cursor = parts
        .pop()
        .and_then(bytes)
        .ok_or_else(|| anyhow::anyhow!("SCAN replied no cursor"))?;
    Ok((cursor, keys))
}

fn bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        Value::Integer(n) => Some(Bytes::from(n.to_string())),
        _ => None,
    }
}

/// Whether a `FUNCTION LIST LIBRARYNAME cachet` reply holds a library named exactly `cachet`
/// (the argument is a pattern of sorts: Redis matches it as a substring).
fn has_library(reply: &Value) -> bool {
    let Value::Array(libraries) = reply else {
        return false;
    };
    libraries.iter().any(|library| match library {
        Value::Array(fields) => fields.chunks(2).any(|pair| {
            pair[0].as_str().as_deref() == Some("library_name")
                && pair.get(1).and_then(|v| v.as_str()).as_deref() == Some(LIBRARY_NAME)
        }),
        Value::Map(map) => map.clone().inner().iter().any(|(k, v)| {
            k.as_str() == Some("library_name") && v.as_str().as_deref() == Some(LIBRARY_NAME)
        }),
        _ => false,
    })
}

/// `prefix` with the glob's special characters escaped, for `SCAN MATCH`.
fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len());
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\' | b'^' | b'-') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_cachet_s_shapes_are_index_keys() {
        let names = Names::new("cachet").unwrap();
        for tag in [&b"teacher:123"[..], b"", b"a}b", b"%"] {
            assert_eq!(index_kind(&names, &names.tag_keys(tag)), Some(Kind::TagSet));
            assert_eq!(index_kind(&names, &names.epoch(tag)), Some(Kind::Epoch));
            assert_eq!(
                index_kind(&names, &names.drain(tag, 1_700_000_000_000)),
                Some(Kind::DrainSet)
            );
        }
        for key in [
            &b"sessions:teacher:1"[..],
            b"",
            b"{user:1}:x",
            b"a}b",
            b"x{y",
        ] {
            assert_eq!(
                index_kind(&names, &names.key_tags(key)),
                Some(Kind::KeyTags)
            );
        }
        for app_key in [
            &b"cachet:warm"[..],
            b"cachet:policy:dead",
            b"cachet:t:plain",
            b"cachet:t:{a}:more",
            b"cachet:t:{}",
            b"cachet:d:{a}",
            b"cachet:d:{a}:12x",
            b"cachet:k:{a}:b",
            b"cachet:k:{a}",
            b"cachetx:t:{a}",
            b"other:t:{a}",
        ] {
            assert_eq!(
                index_kind(&names, app_key),
                None,
                "{}",
                app_key.escape_ascii()
            );
        }
    }
}
