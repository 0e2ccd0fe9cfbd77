//! Tags through the proxy, end to end: real clients (fred, a raw RESP client) talk to cachet,
//! cachet talks to its own `redis-server`, and a direct connection to that Redis checks what
//! the tag index holds. Each guarantee of `cachet::tags::index` and `session::tagging` is a
//! test here: rule TTLs and tags on writes, the TAG* commands, no unreachable entries under
//! concurrent invalidation, no stale set after a miss, a bounded index, TTL changes followed,
//! exact invalidation of tricky tags, plain forwarding of reads, and RESP3 replies.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cachet::tags::Rules;
use cachet::tags::index::{FAST_SCORE_SLACK_MS, Names, TagIndex};
use fred::clients::Client;
use fred::cmd;
use fred::interfaces::ClientLike;
use fred::types::Value;
use support::resp::Value as R;
use support::{Proxy, RawClient, RedisServer, fred_client};

/// ClassWaves-like rules, plus a short-lived one and one full of characters that mean
/// something elsewhere (globs, hash tags, percent escapes).
const RULES: &str = r#"
[ttl]
default = 300
session-list = 300
session-detail = 900
short = 1

[[rules]]
name = "session-list"
pattern = "sessions:teacher:{teacher}"
tags = ["teacher:{teacher}", "sessions"]
ttl = "session-list"

[[rules]]
name = "session-detail"
pattern = "session:{session}"
tags = ["session:{session}"]
ttl = "session-detail"

[[rules]]
name = "roster"
pattern = "roster:{school}:{session}"
tags = ["school:{school}", "session:{session}", "roster"]
ttl = 600

[[rules]]
name = "rotating"
pattern = "rot:{group}:{n}"
tags = ["group:{group}", "rot"]
ttl = "short"

[[rules]]
name = "tricky"
pattern = "odd:[x]?\\{y\\}:{id}"
tags = ["odd%\\}{id}*?", "[odd]"]
ttl = 120
"#;

fn test_config() -> cachet::Config {
    cachet::Config::from_toml(RULES, "tests/tags.rs").expect("the test rules are valid")
}

fn rules() -> Rules {
    let config = test_config();
    Rules::compile(&config.ttl, &config.rules).expect("rules compile")
}

fn names() -> Names {
    Names::new("cachet").expect("prefix")
}

async fn start_proxy(redis: &RedisServer) -> Proxy {
    Proxy::start_with(&redis.url(), |c| {
        let mut parsed = test_config();
        parsed.upstream = c.upstream.clone();
        *c = parsed;
    })
    .await
}

// ---- replies, read by support's RESP reader -------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok() -> String {
    "+OK\r\n".to_owned()
}

// ---- connections ----------------------------------------------------------------------------

/// A raw RESP connection (to cachet or straight to Redis).
struct Conn(RawClient);

impl Conn {
    async fn connect(addr: SocketAddr) -> Conn {
        Conn(RawClient::connect(addr).await.expect("connect"))
    }

    async fn raw<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Bytes {
        self.0.command(args).await.unwrap_or_else(|e| {
            let shown: Vec<String> = args.iter().map(|a| text(a.as_ref())).collect();
            panic!("{shown:?}: {e}")
        })
    }

    async fn text<A: AsRef<[u8]>>(&mut self, args: &[A]) -> String {
        text(&self.raw(args).await)
    }

    async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> R {
        R::parse(&self.raw(args).await)
    }

    async fn int<A: AsRef<[u8]>>(&mut self, args: &[A]) -> i64 {
        self.cmd(args).await.int()
    }

    /// Sends every command in one write, then reads every reply.
    async fn pipeline<A: AsRef<[u8]>>(&mut self, commands: &[Vec<A>]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for command in commands {
            out.extend(RawClient::encode(command));
        }
        self.0.send_raw(&out).await.expect("send");
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.0.read_frame().await.expect("reply"));
        }
        replies
    }
}

fn b(s: impl AsRef<[u8]>) -> Vec<u8> {
    s.as_ref().to_vec()
}

// ---- what Redis holds (through a direct connection) -----------------------------------------

/// Every data key: everything but cachet's own keys.
async fn data_keys(d: &mut Conn) -> BTreeSet<Vec<u8>> {
    d.cmd(&["KEYS", "*"])
        .await
        .strings()
        .into_iter()
        .filter(|k| !k.starts_with(b"cachet:"))
        .collect()
}

async fn keys_matching(d: &mut Conn, pattern: &str) -> BTreeSet<Vec<u8>> {
    d.cmd(&["KEYS", pattern])
        .await
        .strings()
        .into_iter()
        .collect()
}

async fn ttl(d: &mut Conn, key: impl AsRef<[u8]>) -> i64 {
    d.int(&[b"TTL".as_ref(), key.as_ref()]).await
}

async fn assert_ttl(d: &mut Conn, key: &str, secs: i64) {
    let got = ttl(d, key).await;
    assert!(
        (secs - 2..=secs).contains(&got),
        "TTL of {key}: expected about {secs}, got {got}"
    );
}

/// The score of `key` in `tag`'s set, as Redis prints it.
async fn score(d: &mut Conn, tag: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Option<String> {
    let set = names().tag_keys(tag.as_ref());
    match d.cmd(&[b"ZSCORE".as_ref(), &set, key.as_ref()]).await {
        R::Nil => None,
        r => Some(text(r.bytes())),
    }
}

async fn key_set(d: &mut Conn, key: impl AsRef<[u8]>) -> BTreeSet<Vec<u8>> {
    let set = names().key_tags(key.as_ref());
    d.cmd(&[b"SMEMBERS".as_ref(), &set])
        .await
        .strings()
        .into_iter()
        .collect()
}

/// `key`'s PEXPIRETIME (-1: none); panics if it does not exist.
async fn expiry(d: &mut Conn, key: impl AsRef<[u8]>) -> i64 {
    match d.int(&[b"PEXPIRETIME".as_ref(), key.as_ref()]).await {
        -2 => panic!("{:?} does not exist", text(key.as_ref())),
        ms => ms,
    }
}

/// Whether a score (or a per-key set's PEXPIRETIME) fits a key's expiry: `inf` (-1) for a
/// key without one; else the expiry itself (`cachet_write` reads it) or cachet's estimate
/// of it (a fast SET: up to `FAST_SCORE_SLACK_MS` plus a grid step of at most a sixteenth of
/// the TTL above, below only by how much later than cachet's clock reading Redis ran the
/// SET). The tests check right after writing, so the TTL left stands for the TTL given.
fn fits(score: &str, expiry: i64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let step = ((expiry - now).max(0) + 2000) / 16;
    match (score, expiry) {
        ("inf" | "-1", -1) => true,
        (_, -1) => false,
        (score, expiry) => score.parse::<i64>().is_ok_and(|s| {
            (expiry - 500..=expiry + FAST_SCORE_SLACK_MS as i64 + step).contains(&s)
        }),
    }
}

/// Whether `tag` names `key` under the test rules (`Match::named`): such a tag has no index
/// entry; invalidation reads the key back from the tag.
fn names_key(tag: &[u8], key: &[u8]) -> bool {
    rules().keys_named_by(tag).iter().any(|k| k[..] == *key)
}

/// `key` exists and is reachable from each of `tags`: those that name it through the rules
/// have no index entry; for the others its per-key set names exactly them and expires with
/// it, and each of their sets holds it with its expiry as score.
async fn assert_indexed(d: &mut Conn, key: impl AsRef<[u8]>, tags: &[&[u8]]) {
    let key = key.as_ref();
    let shown = text(key);
    let want = expiry(d, key).await;
    let (named, tags): (Vec<&[u8]>, Vec<&[u8]>) = tags.iter().partition(|tag| names_key(tag, key));
    for tag in named {
        assert_eq!(
            score(d, tag, key).await,
            None,
            "{shown} indexed under {tag:?}"
        );
    }
    let expected: BTreeSet<Vec<u8>> = tags.iter().map(b).collect();
    let own = key_set(d, key).await;
    // A fast SET of a key with one indexed tag writes no per-key set: there is no other
    // tag set for a drain to take the key out of.
    if !(own.is_empty() && tags.len() == 1) {
        assert_eq!(own, expected, "per-key set of {shown}");
        let key_set_name = names().key_tags(key);
        let key_set_expiry = d.int(&[b"PEXPIRETIME".as_ref(), &key_set_name]).await;
        assert!(
            tags.is_empty() || fits(&key_set_expiry.to_string(), want),
            "the per-key set of {shown} expires at {key_set_expiry}, the key at {want}"
        );
    }
    for tag in tags {
        let got = score(d, tag, key).await;
        assert!(
            got.as_deref().is_some_and(|s| fits(s, want)),
            "score of {shown} in the set of tag {:?}: {got:?}, expiry {want}",
            text(tag)
        );
    }
}

/// `key` is nowhere in the index: no per-key set, in none of `tags`' sets.
async fn assert_unindexed(d: &mut Conn, key: impl AsRef<[u8]>, tags: &[&[u8]]) {
    let key = key.as_ref();
    let key_set_name = names().key_tags(key);
    assert_eq!(
        d.int(&[b"EXISTS".as_ref(), &key_set_name]).await,
        0,
        "per-key set of {:?} left behind",
        text(key)
    );
    for tag in tags {
        assert_eq!(
            score(d, tag, key).await,
            None,
            "{:?} left in the set of {:?}",
            text(key),
            text(tag)
        );
    }
}

/// `TAGS key` through cachet, as strings.
async fn tags_of(c: &mut Conn, key: impl AsRef<[u8]>) -> Vec<String> {
    c.cmd(&[b"TAGS".as_ref(), key.as_ref()])
        .await
        .strings()
        .iter()
        .map(|t| text(t))
        .collect()
}

/// A command over fred, arguments as they are.
async fn fred_run(c: &Client, args: &[&str]) -> Result<Value, fred::error::Error> {
    let rest: Vec<Value> = args[1..].iter().map(|a| Value::from(*a)).collect();
    c.custom(cmd!(args[0].to_owned()), rest).await
}

// ---- 1. the tagging flow --------------------------------------------------------------------

/// A Redis and cachet in front of it, held for the length of a case.
struct Flow {
    redis: RedisServer,
    _proxy: Proxy,
}

/// Where each case of the tagging flow starts: a fresh Redis, cachet in front of it, a
/// connection to cachet (`c`) and one straight to Redis (`d`).
async fn flow() -> (Flow, Conn, Conn) {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let c = Conn::connect(proxy.addr).await;
    let d = Conn::connect(redis.addr()).await;
    let flow = Flow {
        redis,
        _proxy: proxy,
    };
    (flow, c, d)
}

/// Sends each command through cachet; none may fail.
async fn write_all(c: &mut Conn, commands: &[&[&str]]) {
    for command in commands {
        let reply = c.text(command).await;
        assert!(!reply.starts_with('-'), "{command:?}: {reply}");
    }
}

/// The writes of the first cases below (rule-less keys; rule-matched SETs with and without
/// a TTL of their own, one overwritten; HSET, EXPIRE and HSET again; one MSET): the keys the
/// cases that read, page, invalidate and tag them start from.
async fn write_rule_examples(c: &mut Conn) {
    write_all(
        c,
        &[
            &["SET", "plain:1", "v"],
            &["HSET", "plain:h", "f", "v"],
            &["INCR", "plain:n"],
            &["SET", "sessions:teacher:123", "v"],
            &["SET", "sessions:teacher:124", "v", "EX", "50"],
            &["SET", "sessions:teacher:125", "v", "PX", "40000"],
            &["SET", "sessions:teacher:124", "v2"],
            &["HSET", "session:abc", "f", "v"],
            &["EXPIRE", "session:abc", "40"],
            &["HSET", "session:abc", "g", "w"],
            &[
                "MSET",
                "sessions:teacher:200",
                "a",
                "session:s1",
                "b",
                "plain:2",
                "c",
                "odd:[x]?{y}:42",
                "d",
            ],
        ],
    )
    .await;
}

/// The writes of the TAGSET case: `ts:1` to `ts:5`, all tagged `a`.
async fn write_tagset_examples(c: &mut Conn) {
    write_all(
        c,
        &[
            &[
                "TAGSET",
                "ts:1",
                "v",
                "TTLCLASS",
                "session-detail",
                "TAGS",
                "a",
                "b",
            ],
            &["TAGSET", "ts:2", "v", "EX", "50", "TAGS", "a"],
            &["TAGSET", "ts:3", "v", "TAGS", "a"],
            &[
                "TAGSET",
                "ts:4",
                "v",
                "PX",
                "20000",
                "TTLCLASS",
                "session-detail",
                "TAGS",
                "a",
            ],
            &[
                "tagset",
                "ts:5",
                "v",
                "ttlclass",
                "session-detail",
                "tags",
                "a",
            ],
            &["TAGSET", "ts:1", "v2", "KEEPTTL", "TAGS", "c"],
        ],
    )
    .await;
}

/// Keys that match no rule go through untouched: no TTL, no index keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_less_writes_get_no_ttl_and_no_index_keys() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(c.text(&["SET", "plain:1", "v"]).await, ok());
    assert_eq!(c.text(&["HSET", "plain:h", "f", "v"]).await, ":1\r\n");
    assert_eq!(c.text(&["INCR", "plain:n"]).await, ":1\r\n");
    assert_eq!(ttl(&mut d, "plain:1").await, -1);
    assert_eq!(ttl(&mut d, "plain:h").await, -1);
    assert!(
        keys_matching(&mut d, "cachet:*").await.is_empty(),
        "rule-less writes created index keys"
    );
}

/// A rule-matched SET: the rule's TTL and tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_matched_set_gets_the_rules_ttl_and_tags() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(c.text(&["SET", "sessions:teacher:123", "v"]).await, ok());
    assert_ttl(&mut d, "sessions:teacher:123", 300).await;
    assert_eq!(
        tags_of(&mut c, "sessions:teacher:123").await,
        ["sessions", "teacher:123"]
    );
    assert_indexed(
        &mut d,
        "sessions:teacher:123",
        &[b"teacher:123", b"sessions"],
    )
    .await;
}

/// An explicit TTL wins over the rule's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_ttl_wins_over_the_rules() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(
        c.text(&["SET", "sessions:teacher:124", "v", "EX", "50"])
            .await,
        ok()
    );
    assert_ttl(&mut d, "sessions:teacher:124", 50).await;
    assert_indexed(
        &mut d,
        "sessions:teacher:124",
        &[b"teacher:124", b"sessions"],
    )
    .await;
    assert_eq!(
        c.text(&["SET", "sessions:teacher:125", "v", "PX", "40000"])
            .await,
        ok()
    );
    assert_ttl(&mut d, "sessions:teacher:125", 40).await;
    // Overwriting without an option clears the TTL at Redis; the rule's comes back.
    assert_eq!(c.text(&["SET", "sessions:teacher:124", "v2"]).await, ok());
    assert_ttl(&mut d, "sessions:teacher:124", 300).await;
    assert_indexed(
        &mut d,
        "sessions:teacher:124",
        &[b"teacher:124", b"sessions"],
    )
    .await;
}

/// HSET creating a hash: the rule's TTL; a later HSET keeps whatever TTL it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hset_creating_a_hash_gets_the_rules_ttl_and_later_ones_keep_its_ttl() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(c.text(&["HSET", "session:abc", "f", "v"]).await, ":1\r\n");
    assert_ttl(&mut d, "session:abc", 900).await;
    assert_eq!(tags_of(&mut c, "session:abc").await, ["session:abc"]);
    assert_indexed(&mut d, "session:abc", &[b"session:abc"]).await;
    assert_eq!(c.text(&["EXPIRE", "session:abc", "40"]).await, ":1\r\n");
    assert_eq!(c.text(&["HSET", "session:abc", "g", "w"]).await, ":1\r\n");
    assert_ttl(&mut d, "session:abc", 40).await;
    assert_indexed(&mut d, "session:abc", &[b"session:abc"]).await;
}

/// MSET: each key by its own rule, the rule-less one untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_tags_each_key_by_its_own_rule() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(
        c.text(&[
            "MSET",
            "sessions:teacher:200",
            "a",
            "session:s1",
            "b",
            "plain:2",
            "c",
            "odd:[x]?{y}:42",
            "d",
        ])
        .await,
        ok()
    );
    assert_ttl(&mut d, "sessions:teacher:200", 300).await;
    assert_ttl(&mut d, "session:s1", 900).await;
    assert_eq!(ttl(&mut d, "plain:2").await, -1);
    assert_ttl(&mut d, "odd:[x]?{y}:42", 120).await;
    assert_indexed(
        &mut d,
        "sessions:teacher:200",
        &[b"teacher:200", b"sessions"],
    )
    .await;
    assert_indexed(&mut d, "session:s1", &[b"session:s1"]).await;
    assert_indexed(&mut d, "odd:[x]?{y}:42", &[b"odd%}42*?", b"[odd]"]).await;
    assert_eq!(
        tags_of(&mut c, "odd:[x]?{y}:42").await,
        ["[odd]", "odd%}42*?"]
    );
    assert_eq!(
        c.text(&["GET", "odd:[x]?{y}:42"]).await,
        "$1\r\nd\r\n",
        "the value is the client's"
    );
}

/// Per-key sets belong to rule-matched keys with a tag that does not name them (those
/// with two such tags always have one; a fast SET with one writes none): nothing for
/// plain ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_sets_exist_only_for_rule_matched_keys() {
    let (_flow, mut c, mut d) = flow().await;
    write_rule_examples(&mut c).await;
    let per_key: BTreeSet<Vec<u8>> = keys_matching(&mut d, "cachet:k:*")
        .await
        .iter()
        .map(|name| {
            names()
                .parse_key_tags(name)
                .unwrap_or_else(|| panic!("{:?} is not a per-key set", text(name)))
                .to_vec()
        })
        .collect();
    let indexed = |k: &[u8]| rules().match_key(k).map_or(0, |m| m.indexed_tags().count());
    let data = data_keys(&mut d).await;
    let may: BTreeSet<Vec<u8>> = data.iter().filter(|k| indexed(k) > 0).cloned().collect();
    let must: BTreeSet<Vec<u8>> = data.iter().filter(|k| indexed(k) > 1).cloned().collect();
    assert!(per_key.is_subset(&may), "{per_key:?} beyond {may:?}");
    assert!(must.is_subset(&per_key), "{must:?} not all in {per_key:?}");
    assert!(!must.is_empty());
    for name in keys_matching(&mut d, "cachet:*").await {
        assert!(
            !text(&name).contains("plain:"),
            "index key {:?} names a rule-less key",
            text(&name)
        );
    }
}

/// TAGKEYS pages: 200 more keys make the set a real hash table, so COUNT matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagkeys_pages_through_a_tag_with_cursor_and_count() {
    let (_flow, mut c, _d) = flow().await;
    write_rule_examples(&mut c).await;
    let mut sessions: BTreeSet<Vec<u8>> = [
        "sessions:teacher:123",
        "sessions:teacher:124",
        "sessions:teacher:125",
        "sessions:teacher:200",
    ]
    .iter()
    .map(b)
    .collect();
    let writes: Vec<Vec<String>> = (0..200)
        .map(|i| {
            let key = format!("sessions:teacher:p{i}");
            sessions.insert(b(&key));
            vec!["SET".into(), key, "v".into()]
        })
        .collect();
    for reply in c.pipeline(&writes).await {
        assert_eq!(text(&reply), ok());
    }
    let mut cursor = "0".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = c
            .cmd(&["TAGKEYS", "sessions", "CURSOR", &cursor, "COUNT", "7"])
            .await;
        let parts = page.items();
        assert_eq!(parts.len(), 2, "{page:?}");
        cursor = text(parts[0].bytes());
        seen.extend(parts[1].strings());
        pages += 1;
        assert!(pages < 1000, "TAGKEYS never returned cursor 0");
        if cursor == "0" {
            break;
        }
    }
    assert!(pages > 1, "COUNT 7 over 204 keys took one page");
    let unique: BTreeSet<Vec<u8>> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "TAGKEYS returned a key twice");
    assert_eq!(unique, sessions);
    let first = c.cmd(&["TAGKEYS", "sessions"]).await;
    assert_eq!(first.items().len(), 2);
    assert_eq!(
        c.text(&["TAGKEYS", "no-such-tag"]).await,
        "*2\r\n$1\r\n0\r\n*0\r\n"
    );
}

/// TAGINVALIDATE: the count, and exactly those keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taginvalidate_counts_and_deletes_exactly_the_tagged_keys() {
    let (_flow, mut c, mut d) = flow().await;
    write_rule_examples(&mut c).await;
    assert_eq!(
        c.text(&["TAGSET", "extra:1", "v", "TAGS", "teacher:123", "other"])
            .await,
        ok()
    );
    let before = data_keys(&mut d).await;
    assert_eq!(c.text(&["TAGINVALIDATE", "teacher:123"]).await, ":2\r\n");
    let after = data_keys(&mut d).await;
    let gone: BTreeSet<Vec<u8>> = before.difference(&after).cloned().collect();
    assert_eq!(
        gone,
        [b("sessions:teacher:123"), b("extra:1")]
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    assert!(after.is_subset(&before));
    assert_unindexed(
        &mut d,
        "sessions:teacher:123",
        &[b"teacher:123", b"sessions"],
    )
    .await;
    assert_unindexed(&mut d, "extra:1", &[b"teacher:123", b"other"]).await;
    assert_eq!(c.text(&["TAGINVALIDATE", "teacher:123"]).await, ":0\r\n");
    assert_eq!(
        c.text(&["TAGINVALIDATE", "session:abc", "session:s1", "nope"])
            .await,
        ":2\r\n"
    );
    assert_eq!(d.int(&["EXISTS", "session:abc", "session:s1"]).await, 0);
}

/// TAGSET: TTL class, explicit TTLs, the default class, KEEPTTL, tags accumulating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagset_takes_ttl_classes_explicit_ttls_keepttl_and_more_tags() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(
        c.text(&[
            "TAGSET",
            "ts:1",
            "v",
            "TTLCLASS",
            "session-detail",
            "TAGS",
            "a",
            "b"
        ])
        .await,
        ok()
    );
    assert_eq!(c.text(&["GET", "ts:1"]).await, "$1\r\nv\r\n");
    assert_ttl(&mut d, "ts:1", 900).await;
    assert_eq!(tags_of(&mut c, "ts:1").await, ["a", "b"]);
    assert_indexed(&mut d, "ts:1", &[b"a", b"b"]).await;
    assert_eq!(
        c.text(&["TAGSET", "ts:2", "v", "EX", "50", "TAGS", "a"])
            .await,
        ok()
    );
    assert_ttl(&mut d, "ts:2", 50).await;
    assert_eq!(c.text(&["TAGSET", "ts:3", "v", "TAGS", "a"]).await, ok());
    assert_ttl(&mut d, "ts:3", 300).await;
    assert_eq!(
        c.text(&[
            "TAGSET",
            "ts:4",
            "v",
            "PX",
            "20000",
            "TTLCLASS",
            "session-detail",
            "TAGS",
            "a"
        ])
        .await,
        ok()
    );
    assert_ttl(&mut d, "ts:4", 20).await;
    assert_eq!(
        c.text(&[
            "tagset",
            "ts:5",
            "v",
            "ttlclass",
            "session-detail",
            "tags",
            "a"
        ])
        .await,
        ok()
    );
    assert_ttl(&mut d, "ts:5", 900).await;
    assert_eq!(
        c.text(&["TAGSET", "ts:1", "v2", "KEEPTTL", "TAGS", "c"])
            .await,
        ok()
    );
    assert_eq!(c.text(&["GET", "ts:1"]).await, "$2\r\nv2\r\n");
    assert_ttl(&mut d, "ts:1", 900).await;
    assert_eq!(tags_of(&mut c, "ts:1").await, ["a", "b", "c"]);
    assert_indexed(&mut d, "ts:1", &[b"a", b"b", b"c"]).await;
    let page = c.cmd(&["TAGKEYS", "a", "COUNT", "100"]).await;
    let in_a: BTreeSet<Vec<u8>> = page.items()[1].strings().into_iter().collect();
    assert_eq!(
        in_a,
        ["ts:1", "ts:2", "ts:3", "ts:4", "ts:5"]
            .iter()
            .map(b)
            .collect()
    );
}

/// TAG: attaches to an existing key, counts new tags, refuses a missing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_attaches_to_existing_keys_and_refuses_missing_ones() {
    let (_flow, mut c, mut d) = flow().await;
    write_rule_examples(&mut c).await;
    assert_eq!(c.text(&["TAG", "plain:1", "t1", "t2"]).await, ":2\r\n");
    assert_eq!(tags_of(&mut c, "plain:1").await, ["t1", "t2"]);
    assert_eq!(c.text(&["TAG", "plain:1", "t1", "t3"]).await, ":1\r\n");
    assert_eq!(tags_of(&mut c, "plain:1").await, ["t1", "t2", "t3"]);
    assert_eq!(ttl(&mut d, "plain:1").await, -1, "TAG sets no TTL");
    assert_indexed(&mut d, "plain:1", &[b"t1", b"t2", b"t3"]).await;
    // (The exact wording is checked by `tag_command_errors_are_redis_style`.)
    let missing = c.text(&["TAG", "missing:key", "t"]).await;
    assert!(
        missing.starts_with("-ERR") && missing.contains("no such key"),
        "{missing:?}"
    );
    assert_eq!(
        c.text(&["TAG", "sessions:teacher:124", "extra"]).await,
        ":1\r\n"
    );
    assert_eq!(
        tags_of(&mut c, "sessions:teacher:124").await,
        ["extra", "sessions", "teacher:124"]
    );
    assert_eq!(tags_of(&mut c, "missing:key").await, Vec::<String>::new());
    assert_eq!(c.text(&["TAGINVALIDATE", "t3"]).await, ":1\r\n");
    assert_eq!(d.int(&["EXISTS", "plain:1"]).await, 0);
    assert_unindexed(&mut d, "plain:1", &[b"t1", b"t2", b"t3"]).await;
    assert_eq!(c.text(&["TAGINVALIDATE", "extra"]).await, ":1\r\n");
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:124"]).await, 0);
}

/// Errors, worded as Redis words them; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tag_commands_get_redis_style_errors_and_write_nothing() {
    let (_flow, mut c, mut d) = flow().await;
    let arity = |name: &str| format!("-ERR wrong number of arguments for '{name}' command\r\n");
    let syntax = "-ERR syntax error\r\n".to_owned();
    let not_integer = "-ERR value is not an integer or out of range\r\n".to_owned();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["TAGINVALIDATE"], arity("taginvalidate")),
        (vec!["taginvalidate"], arity("taginvalidate")),
        (vec!["TAG", "k"], arity("tag")),
        (vec!["TAG"], arity("tag")),
        (vec!["TAGS"], arity("tags")),
        (vec!["TAGS", "a", "b"], arity("tags")),
        (vec!["TAGKEYS"], arity("tagkeys")),
        (vec!["TAGSET", "k", "v", "TAGS"], arity("tagset")),
        (vec!["TagSet", "k"], arity("tagset")),
        (vec!["TAGKEYS", "t", "FOO", "1"], syntax.clone()),
        (vec!["TAGKEYS", "t", "COUNT"], syntax.clone()),
        (vec!["TAGKEYS", "t", "COUNT", "x"], not_integer.clone()),
        (vec!["TAGKEYS", "t", "CURSOR", "-1"], not_integer.clone()),
        (vec!["TAGSET", "k", "v", "FOO", "TAGS", "a"], syntax.clone()),
        (vec!["TAGSET", "k", "v", "EX", "10", "TAGS"], syntax.clone()),
        (vec!["TAGSET", "k", "v", "a", "b"], syntax.clone()),
        (
            vec!["TAGSET", "k", "v", "EX", "10", "PX", "5", "TAGS", "a"],
            syntax.clone(),
        ),
        (
            vec!["TAGSET", "k", "v", "TTLCLASS", "nope", "TAGS", "a"],
            "-ERR unknown TTL class 'nope'\r\n".to_owned(),
        ),
    ];
    for (command, expected) in &cases {
        assert_eq!(&c.text(command).await, expected, "{command:?}");
    }
    assert_eq!(d.int(&["EXISTS", "k"]).await, 0);
    // The connection is still in step after all those local replies.
    assert_eq!(c.text(&["PING"]).await, "+PONG\r\n");
}

/// TAG commands inside MULTI are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_commands_inside_multi_are_refused() {
    let (_flow, mut c, mut d) = flow().await;
    write_tagset_examples(&mut c).await;
    assert_eq!(c.text(&["MULTI"]).await, ok());
    assert_eq!(c.text(&["SET", "m:1", "v"]).await, "+QUEUED\r\n");
    for command in [
        vec!["TAGINVALIDATE", "a"],
        vec!["TAGSET", "m:2", "v", "TAGS", "a"],
        vec!["TAG", "ts:1", "x"],
        vec!["TAGS", "ts:1"],
        vec!["TAGKEYS", "a"],
    ] {
        let refused = format!(
            "-ERR cachet's '{}' command cannot run inside MULTI\r\n",
            command[0].to_lowercase()
        );
        assert_eq!(c.text(&command).await, refused, "{command:?}");
    }
    assert_eq!(c.text(&["DISCARD"]).await, ok());
    assert_eq!(d.int(&["EXISTS", "m:1", "m:2"]).await, 0);
    assert_eq!(d.int(&["EXISTS", "ts:1"]).await, 1, "TAGINVALIDATE a ran");
}

/// Redis aborts a transaction when a command is refused while it is queued; a TAG command
/// refused inside MULTI should do the same, or EXEC runs the rest without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_command_refused_inside_multi_aborts_exec() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    // What Redis does with a command it refuses at queueing time:
    assert_eq!(d.text(&["MULTI"]).await, ok());
    assert_eq!(d.text(&["SET", "direct:1", "v"]).await, "+QUEUED\r\n");
    assert!(
        d.text(&["NOSUCHCOMMAND"])
            .await
            .starts_with("-ERR unknown command")
    );
    assert_eq!(
        d.text(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    // Through cachet:
    assert_eq!(c.text(&["MULTI"]).await, ok());
    assert_eq!(c.text(&["SET", "m:1", "v"]).await, "+QUEUED\r\n");
    assert!(c.text(&["TAGINVALIDATE", "a"]).await.starts_with("-ERR"));
    assert_eq!(
        c.text(&["EXEC"]).await,
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
        "EXEC after a refused TAG command"
    );
    assert_eq!(d.int(&["EXISTS", "m:1"]).await, 0);
}

/// Errors of TAG commands that Redis itself raises (the index function's, or the SET inside
/// TAGSET) reach the client as Redis words them, like every other error through cachet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_command_errors_are_redis_style() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    let not_integer = "-ERR value is not an integer or out of range\r\n";
    assert_eq!(d.text(&["SET", "k", "v", "EX", "x"]).await, not_integer);
    let invalid_expire = d.text(&["SET", "k", "v", "EX", "-5"]).await;
    assert_eq!(
        invalid_expire,
        "-ERR invalid expire time in 'set' command\r\n"
    );
    let mut mismatches = Vec::new();
    for (command, expected) in [
        (vec!["TAG", "missing:key", "t"], "-ERR no such key\r\n"),
        (
            vec!["TAGSET", "k", "v", "EX", "x", "TAGS", "a"],
            not_integer,
        ),
        (
            vec!["TAGSET", "k", "v", "EX", "-5", "TAGS", "a"],
            invalid_expire.as_str(),
        ),
    ] {
        let got = c.text(&command).await;
        if got != expected {
            mismatches.push(format!("{command:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert_eq!(d.int(&["EXISTS", "k", "missing:key"]).await, 0);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// A client in another database than the pool's gets its TAG commands refused (they run on
/// cachet's own connection, in the pool's database); back in database 0 they work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_commands_are_refused_in_another_database() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    assert_eq!(c.text(&["SELECT", "1"]).await, ok());
    for command in [
        vec!["TAGSET", "db1:k", "v", "TAGS", "a"],
        vec!["TAGINVALIDATE", "a"],
        vec!["TAG", "db1:k", "a"],
        vec!["TAGS", "db1:k"],
        vec!["TAGKEYS", "a"],
    ] {
        let refused = format!(
            "-ERR cachet's '{}' command works in database 0 only\r\n",
            command[0].to_lowercase()
        );
        assert_eq!(c.text(&command).await, refused, "{command:?}");
    }
    for db in ["0", "1"] {
        assert_eq!(d.text(&["SELECT", db]).await, ok());
        assert_eq!(
            d.int(&["DBSIZE"]).await,
            0,
            "db {db} after refused TAG commands"
        );
    }
    assert_eq!(c.text(&["SELECT", "0"]).await, ok());
    assert_eq!(c.text(&["TAGSET", "db0:k", "v", "TAGS", "a"]).await, ok());
    assert_eq!(tags_of(&mut c, "db0:k").await, ["a"]);
    assert_eq!(c.text(&["TAGINVALIDATE", "a"]).await, ":1\r\n");
}

/// The lease of a miss is about the value the client computes from that miss. A hit on the
/// same connection does not end it: on a multiplexed connection (ioredis, fred) the hit may
/// belong to another request while the one that missed is still computing. So the next write
/// is checked against the miss and dropped (the key is left absent, never stale); that uses
/// the lease up, and the write after it stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_does_not_end_the_lease_of_an_outstanding_miss() {
    let redis = RedisServer::start();
    let p1 = start_proxy(&redis).await;
    let p2 = start_proxy(&redis).await;
    let mut a = Conn::connect(p1.addr).await;
    let mut other = Conn::connect(p1.addr).await;
    let mut b = Conn::connect(p2.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    assert_eq!(a.text(&["GET", "sessions:teacher:5"]).await, "$-1\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:5"]).await, ":0\r\n");
    assert_eq!(
        other.text(&["SET", "sessions:teacher:5", "new"]).await,
        ok()
    );
    assert_eq!(
        a.text(&["GET", "sessions:teacher:5"]).await,
        "$3\r\nnew\r\n"
    );
    assert_eq!(a.text(&["SET", "sessions:teacher:5", "newer"]).await, ok());
    assert_eq!(
        d.text(&["GET", "sessions:teacher:5"]).await,
        "$-1\r\n",
        "a write checked against a miss from before the invalidation survived"
    );
    assert_eq!(a.text(&["SET", "sessions:teacher:5", "newest"]).await, ok());
    assert_eq!(
        d.text(&["GET", "sessions:teacher:5"]).await,
        "$6\r\nnewest\r\n",
        "the lease was not used up by the write it checked"
    );
}

// ---- 2. property 1: no unreachable entries --------------------------------------------------

const SCHOOLS: u8 = 3;
const SESSIONS: u8 = 5;
const TEACHERS: u8 = 4;

fn all_tags() -> Vec<String> {
    let mut tags = vec!["roster".to_owned(), "sessions".to_owned()];
    tags.extend((0..SCHOOLS).map(|s| format!("school:{s}")));
    tags.extend((0..SESSIONS).map(|s| format!("session:{s}")));
    tags.extend((0..TEACHERS).map(|t| format!("teacher:{t}")));
    tags
}

/// Every surviving rule-matched key is reachable: its per-key set names its rule's tags (and
/// any inherited), each of those tags' sets holds it with its expiry, and invalidating every
/// tag leaves no data key and no index key behind.
async fn assert_all_reachable(d: &mut Conn) -> usize {
    let rules = rules();
    let data = data_keys(d).await;
    for key in &data {
        let shown = text(key);
        let found = rules
            .match_key(key)
            .unwrap_or_else(|| panic!("{shown} matches no rule"));
        assert!(ttl(d, key).await > 0, "{shown} has no TTL");
        let own = key_set(d, key).await;
        for (j, tag) in found.tags.iter().enumerate() {
            // A tag that names the key has no index entry: TAGINVALIDATE reads the key
            // back from the tag.
            if found.is_named(j) {
                let named = rules.keys_named_by(tag);
                assert!(
                    named.iter().any(|k| k[..] == key[..]),
                    "{shown} cannot be found from {tag:?}"
                );
                continue;
            }
            // With one indexed tag a fast SET writes no per-key set; the tag's set holds it.
            if own.is_empty() && found.indexed_tags().count() == 1 {
                assert!(
                    score(d, tag, key).await.is_some(),
                    "{shown} not in {tag:?}'s set"
                );
                continue;
            }
            assert!(
                own.contains(&tag[..]),
                "{shown}'s per-key set lacks its rule's tag {:?} (has {:?})",
                text(tag),
                own.iter().map(|t| text(t)).collect::<Vec<_>>()
            );
        }
        // Every tag's set holds it; its rule tags' scores fit its expiry (tags it took
        // from a RENAME or COPY source keep their score until a re-check rescores them).
        let want = expiry(d, key).await;
        for tag in &own {
            let got = score(d, tag, key).await;
            let rule_tag = found.tags.iter().any(|t| t == tag);
            assert!(
                got.as_deref().is_some_and(|s| !rule_tag || fits(s, want)),
                "{shown} is missing from (or misscored in) the set of {:?}: {got:?}, expiry {want}",
                text(tag)
            );
        }
    }
    data.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unreachable_entries_under_concurrent_invalidation() {
    let redis = RedisServer::start();
    let writer_proxy = start_proxy(&redis).await;
    let invalidator_proxy = start_proxy(&redis).await;
    let stop_invalidating = Arc::new(AtomicBool::new(false));
    let stop_writing = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..3u64 {
        let client = fred_client(&writer_proxy.url(), w == 2).await;
        let stop = stop_writing.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w);
            let (mut ops, mut errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let roster = format!("roster:{}:{}", rng.u8(0..SCHOOLS), rng.u8(0..SESSIONS));
                let other = format!("roster:{}:{}", rng.u8(0..SCHOOLS), rng.u8(0..SESSIONS));
                let teacher = format!("sessions:teacher:{}", rng.u8(0..TEACHERS));
                let hash = format!("session:{}", rng.u8(0..SESSIONS));
                let result = match rng.u8(0..10) {
                    0 => fred_run(&client, &["SET", &roster, "v"]).await,
                    1 => fred_run(&client, &["HSET", &hash, "f", "v"]).await,
                    2 => fred_run(&client, &["MSET", &roster, "v", &teacher, "v"]).await,
                    3 => {
                        // The fill after a miss: read, then write.
                        let read = fred_run(&client, &["GET", &roster]).await;
                        match read {
                            Ok(_) => fred_run(&client, &["SET", &roster, "filled"]).await,
                            Err(e) => Err(e),
                        }
                    }
                    4 => fred_run(&client, &["DEL", &roster, &teacher]).await,
                    5 => fred_run(&client, &["EXPIRE", &roster, "100"]).await,
                    6 => fred_run(&client, &["RENAME", &roster, &other]).await,
                    7 => fred_run(&client, &["COPY", &roster, &other, "REPLACE"]).await,
                    8 => fred_run(&client, &["SET", &teacher, "v", "EX", "200"]).await,
                    _ => fred_run(&client, &["HINCRBY", &hash, "n", "1"]).await,
                };
                match result {
                    Ok(_) => ops += 1,
                    // Redis's own refusals of RENAME/COPY (a missing source, the key onto
                    // itself). Hashes live under session:*, strings under roster:* and
                    // sessions:*, so nothing else may fail.
                    Err(e)
                        if e.to_string().contains("no such key")
                            || e.to_string().contains("source and destination") =>
                    {
                        ops += 1
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ops, errors)
        }));
    }
    let mut invalidators = Vec::new();
    for i in 0..2u64 {
        let client = fred_client(&invalidator_proxy.url(), false).await;
        let stop = stop_invalidating.clone();
        invalidators.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + i);
            let tags = all_tags();
            let (mut ops, mut deleted, mut errors) = (0u64, 0i64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let tag = &tags[rng.usize(..tags.len())];
                match fred_run(&client, &["TAGINVALIDATE", tag]).await {
                    Ok(v) => {
                        ops += 1;
                        deleted += v.as_i64().unwrap_or(0);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(0..4))).await;
            }
            (ops, deleted, errors)
        }));
    }

    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop_invalidating.store(true, Ordering::Relaxed);
    let mut invalidations = 0;
    let mut deleted = 0;
    for task in invalidators {
        let (ops, d, errors) = task.await.expect("invalidator");
        assert!(errors.is_empty(), "TAGINVALIDATE failed: {errors:?}");
        invalidations += ops;
        deleted += d;
    }
    // Writers go on a little, so that some keys survive to be checked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_writing.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for task in writers {
        let (ops, errors) = task.await.expect("writer");
        assert!(errors.is_empty(), "writes failed: {errors:?}");
        writes += ops;
    }
    assert!(writes > 300, "only {writes} writes");
    assert!(invalidations > 50, "only {invalidations} invalidations");
    assert!(deleted > 0, "invalidations deleted nothing");

    let mut d = Conn::connect(redis.addr()).await;
    let survivors = assert_all_reachable(&mut d).await;
    assert!(survivors > 0, "no key survived to be checked");

    // Invalidating every tag reaches every key: nothing is left, not even index entries.
    let mut c = Conn::connect(invalidator_proxy.addr).await;
    let mut command = vec!["TAGINVALIDATE".to_owned()];
    command.extend(all_tags());
    let n = c.int(&command).await;
    assert_eq!(n as usize, survivors, "TAGINVALIDATE of every tag");
    assert_eq!(data_keys(&mut d).await, BTreeSet::new());
    let left: Vec<String> = keys_matching(&mut d, "cachet:*")
        .await
        .iter()
        .map(|k| text(k))
        .filter(|k| !k.starts_with("cachet:e:"))
        .collect();
    assert!(left.is_empty(), "index keys left: {left:?}");
}

/// A RENAME (or COPY) of a key that matches no rule but carries tags (TAGSET, TAG) must take
/// its tags along, or the new name escapes invalidation (index.rs, "Limits").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_copy_of_rule_less_tagged_keys_keep_their_tags() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    assert_eq!(c.text(&["TAGSET", "plain:a", "v", "TAGS", "x"]).await, ok());
    assert_eq!(c.text(&["RENAME", "plain:a", "plain:b"]).await, ok());
    assert_eq!(c.text(&["COPY", "plain:b", "plain:c"]).await, ":1\r\n");
    assert_eq!(
        tags_of(&mut c, "plain:b").await,
        ["x"],
        "RENAME destination"
    );
    assert_eq!(tags_of(&mut c, "plain:c").await, ["x"], "COPY destination");
    assert_eq!(c.text(&["TAGINVALIDATE", "x"]).await, ":2\r\n");
    assert_eq!(
        data_keys(&mut d).await,
        BTreeSet::new(),
        "keys left after TAGINVALIDATE x"
    );
}

// ---- 3. property 2: no stale set ------------------------------------------------------------

/// Clients like ioredis and fred multiplex one connection: two requests miss the same key,
/// one before and one after an invalidation, and their writes come back in either order.
/// cachet cannot tell which write computed from which read, so the value computed before
/// the invalidation must not survive in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_set_when_one_connection_carries_two_misses() {
    let redis = RedisServer::start();
    let p1 = start_proxy(&redis).await;
    let p2 = start_proxy(&redis).await;
    let mut a = Conn::connect(p1.addr).await;
    let mut b = Conn::connect(p2.addr).await;
    for (key, order) in [
        ("sessions:teacher:21", ["fresh", "stale"]),
        ("sessions:teacher:22", ["stale", "fresh"]),
    ] {
        let tag = key.replace("sessions:", "");
        assert_eq!(a.text(&["GET", key]).await, "$-1\r\n");
        assert_eq!(b.text(&["TAGINVALIDATE", &tag]).await, ":0\r\n");
        assert_eq!(a.text(&["GET", key]).await, "$-1\r\n");
        for value in order {
            assert_eq!(a.text(&["SET", key, value]).await, ok());
        }
        let read = a.text(&["GET", key]).await;
        assert!(!read.contains("stale"), "{key}: {read:?} survived");
        // Both misses are used up: the next fill survives.
        assert_eq!(a.text(&["GET", key]).await, "$-1\r\n");
        assert_eq!(a.text(&["SET", key, "later"]).await, ok());
        assert_eq!(a.text(&["GET", key]).await, "$5\r\nlater\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_set_after_a_miss_and_an_invalidation() {
    let redis = RedisServer::start();
    let p1 = start_proxy(&redis).await;
    let p2 = start_proxy(&redis).await;
    let mut a = Conn::connect(p1.addr).await;
    let mut other = Conn::connect(p1.addr).await;
    let mut b = Conn::connect(p2.addr).await;
    let mut d = Conn::connect(redis.addr()).await;

    // A misses, B invalidates on another cachet, A fills with what it computed before: the
    // SET gets Redis's own +OK, but the value does not survive.
    assert_eq!(a.text(&["GET", "sessions:teacher:7"]).await, "$-1\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:7"]).await, ":0\r\n");
    assert_eq!(a.text(&["SET", "sessions:teacher:7", "stale"]).await, ok());
    assert_eq!(a.text(&["GET", "sessions:teacher:7"]).await, "$-1\r\n");
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:7"]).await, 0);
    assert_unindexed(&mut d, "sessions:teacher:7", &[b"teacher:7", b"sessions"]).await;
    // The miss was used up: the next write (after a new miss with fresh epochs) survives.
    assert_eq!(a.text(&["SET", "sessions:teacher:7", "fresh"]).await, ok());
    assert_eq!(
        a.text(&["GET", "sessions:teacher:7"]).await,
        "$5\r\nfresh\r\n"
    );
    assert_indexed(&mut d, "sessions:teacher:7", &[b"teacher:7", b"sessions"]).await;

    // Control: no invalidation in between, the fill survives.
    assert_eq!(a.text(&["GET", "sessions:teacher:8"]).await, "$-1\r\n");
    assert_eq!(a.text(&["SET", "sessions:teacher:8", "v"]).await, ok());
    assert_eq!(a.text(&["GET", "sessions:teacher:8"]).await, "$1\r\nv\r\n");
    assert_indexed(&mut d, "sessions:teacher:8", &[b"teacher:8", b"sessions"]).await;

    // An invalidation of a tag the key does not have changes nothing.
    assert_eq!(a.text(&["GET", "sessions:teacher:9"]).await, "$-1\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:10"]).await, ":0\r\n");
    assert_eq!(a.text(&["SET", "sessions:teacher:9", "v"]).await, ok());
    assert_eq!(a.text(&["GET", "sessions:teacher:9"]).await, "$1\r\nv\r\n");

    // An invalidation of the key's other tag counts too.
    assert_eq!(a.text(&["GET", "sessions:teacher:12"]).await, "$-1\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "sessions"]).await, ":3\r\n");
    assert_eq!(a.text(&["SET", "sessions:teacher:12", "v"]).await, ok());
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:12"]).await, 0);

    // A miss on one connection does not affect a write on another.
    assert_eq!(a.text(&["GET", "sessions:teacher:11"]).await, "$-1\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:11"]).await, ":0\r\n");
    assert_eq!(other.text(&["SET", "sessions:teacher:11", "v"]).await, ok());
    assert_eq!(
        other.text(&["GET", "sessions:teacher:11"]).await,
        "$1\r\nv\r\n"
    );
    assert_indexed(&mut d, "sessions:teacher:11", &[b"teacher:11", b"sessions"]).await;

    // A read that hits is no lease: a later write stands, whatever was invalidated.
    assert_eq!(other.text(&["SET", "sessions:teacher:30", "v"]).await, ok());
    assert_eq!(a.text(&["GET", "sessions:teacher:30"]).await, "$1\r\nv\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:999"]).await, ":0\r\n");
    assert_eq!(a.text(&["SET", "sessions:teacher:30", "w"]).await, ok());
    assert_eq!(d.text(&["GET", "sessions:teacher:30"]).await, "$1\r\nw\r\n");

    // Pipelined: the miss and the fill in one batch, the invalidation before it is sent.
    let replies = a
        .pipeline(&[
            vec!["GET", "sessions:teacher:20"],
            vec!["SET", "sessions:teacher:20", "v"],
        ])
        .await;
    assert_eq!(text(&replies[0]), "$-1\r\n");
    assert_eq!(text(&replies[1]), ok());
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:20"]).await, 1);

    // RESP3, a hash: an empty HGETALL is a miss, HSET gets Redis's reply, the hash is gone.
    let mut a3 = Conn::connect(p1.addr).await;
    assert!(a3.text(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(a3.text(&["HGETALL", "session:x"]).await, "%0\r\n");
    assert_eq!(b.text(&["TAGINVALIDATE", "session:x"]).await, ":0\r\n");
    assert_eq!(a3.text(&["HSET", "session:x", "f", "v"]).await, ":1\r\n");
    assert_eq!(d.int(&["EXISTS", "session:x"]).await, 0);
    assert_unindexed(&mut d, "session:x", &[b"session:x"]).await;
}

/// A connection holds read leases for at most 4,096 keys at once. The misses past that get
/// none: they are counted (INFO's `leases_dropped`, `cachet_leases_dropped_total`) and their
/// fills are not checked, while the leases within the bound still refuse a stale fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_past_the_cap_are_counted_and_those_within_it_still_guard() {
    let redis = RedisServer::start();
    let p1 = start_proxy(&redis).await;
    let mut a = Conn::connect(p1.addr).await;
    let mut b = Conn::connect(p1.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    let leases_dropped = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("leases_dropped:"))
            .unwrap_or_else(|| panic!("no leases_dropped in {info}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(a.text(&["GET", "sessions:teacher:0"]).await, "$-1\r\n");
    let misses: Vec<Vec<String>> = (1..=4_200)
        .map(|i| vec!["GET".to_owned(), format!("sessions:teacher:{i}")])
        .collect();
    for reply in a.pipeline(&misses).await {
        assert_eq!(text(&reply), "$-1\r\n");
    }
    // 4,201 keys missed, 4,096 got a lease.
    assert_eq!(leases_dropped(b.text(&["INFO", "cachet"]).await), 105);

    // The first miss's lease still guards its fill.
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:0"]).await, ":0\r\n");
    assert_eq!(a.text(&["SET", "sessions:teacher:0", "stale"]).await, ok());
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:0"]).await, 0);
    // The last miss got none: its fill stands, and that is what the count reports.
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:4200"]).await, ":0\r\n");
    assert_eq!(
        a.text(&["SET", "sessions:teacher:4200", "stale"]).await,
        ok()
    );
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:4200"]).await, 1);
    // A fill used a lease up, so the next new key's miss gets one again.
    assert_eq!(a.text(&["GET", "sessions:teacher:5000"]).await, "$-1\r\n");
    assert_eq!(leases_dropped(b.text(&["INFO", "cachet"]).await), 105);
    assert_eq!(b.text(&["TAGINVALIDATE", "teacher:5000"]).await, ":0\r\n");
    assert_eq!(
        a.text(&["SET", "sessions:teacher:5000", "stale"]).await,
        ok()
    );
    assert_eq!(d.int(&["EXISTS", "sessions:teacher:5000"]).await, 0);
}

// ---- 4. property 3: a bounded index ---------------------------------------------------------

const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

fn rot_tags() -> Vec<String> {
    let mut tags: Vec<String> = GROUPS.iter().map(|g| format!("group:{g}")).collect();
    tags.push("rot".to_owned());
    tags
}

/// Members of the tag sets plus per-key sets.
async fn index_size(d: &mut Conn) -> i64 {
    let mut size = 0;
    for tag in rot_tags() {
        size += d
            .int(&[b"ZCARD".as_ref(), &names().tag_keys(tag.as_bytes())])
            .await;
    }
    size + keys_matching(d, "cachet:k:*").await.len() as i64
}

async fn zcard(d: &mut Conn, tag: &str) -> i64 {
    d.int(&[b"ZCARD".as_ref(), &names().tag_keys(tag.as_bytes())])
        .await
}

/// The writer of `the_index_stays_bounded_as_keys_expire`, until `stop`. Returns the rounds
/// written, the keys removed, and the problems the checks found.
async fn churn(client: Client, direct: Client, stop: Arc<AtomicBool>) -> (u64, u32, Vec<String>) {
    let mut n = 0u64;
    let mut problems = Vec::new();
    let mut removed = 0;
    let check_gone = |key: String| {
        let direct = direct.clone();
        async move {
            let group = key.split(':').nth(1).unwrap().to_owned();
            let mut found = Vec::new();
            for tag in [format!("group:{group}"), "rot".to_owned()] {
                let set = names().tag_keys(tag.as_bytes());
                let v: Value = direct
                    .custom(cmd!("ZSCORE"), vec![Value::Bytes(set), Value::from(&*key)])
                    .await
                    .unwrap();
                if !v.is_null() {
                    found.push(tag);
                }
            }
            let kt = names().key_tags(key.as_bytes());
            let v: Value = direct
                .custom(cmd!("EXISTS"), vec![Value::Bytes(kt)])
                .await
                .unwrap();
            if v.as_i64() != Some(0) {
                found.push("per-key set".to_owned());
            }
            found
        }
    };
    while !stop.load(Ordering::Relaxed) {
        for g in GROUPS {
            let key = format!("rot:{g}:{n}");
            fred_run(&client, &["SET", &key, "v"]).await.unwrap();
        }
        if n >= 3 && n.is_multiple_of(5) {
            let g = GROUPS[(n / 5) as usize % 3];
            let old = format!("rot:{g}:{}", n - 3);
            let (command, gone) = match (n / 5) % 3 {
                0 => ("DEL", old.clone()),
                1 => ("UNLINK", old.clone()),
                _ => ("RENAME", old.clone()),
            };
            let target = format!("rot:{g}:r{n}");
            let result = if command == "RENAME" {
                fred_run(&client, &["RENAME", &old, &target]).await
            } else {
                fred_run(&client, &[command, &old]).await
            };
            result.unwrap();
            removed += 1;
            let left = check_gone(gone).await;
            if !left.is_empty() {
                problems.push(format!("{command} {old}: still in {left:?}"));
            }
            if command == "RENAME" {
                let tags: Value = fred_run(&client, &["TAGS", &target]).await.unwrap();
                let tags: Vec<String> = tags
                    .into_array()
                    .into_iter()
                    .map(|t| t.as_string().unwrap())
                    .collect();
                let expected = vec![format!("group:{g}"), "rot".to_owned()];
                if tags != expected {
                    problems.push(format!("RENAME to {target}: TAGS {tags:?}"));
                }
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (n, removed, problems)
}

/// Under churn (keys with a 1 s TTL written, deleted, renamed) the index stays flat, and
/// the per-key sets expire with their keys; then touching empties the stale entries the churn
/// left. One case: touching works on the stale entries only those seconds of churn leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_stays_bounded_as_keys_expire() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let client = fred_client(&proxy.url(), false).await;
    let direct = fred_client(&redis.url(), false).await;
    let stop = Arc::new(AtomicBool::new(false));

    // A writer: keys with a 1 s TTL (the rule's), three per 10 ms, some deleted, unlinked or
    // renamed right away; each of those is checked gone from the index at once.
    let writer = tokio::spawn(churn(client, direct, stop.clone()));

    let mut d = Conn::connect(redis.addr()).await;
    let started = Instant::now();
    let mut samples: Vec<(Duration, i64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push((started.elapsed(), index_size(&mut d).await));
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, removed, problems) = writer.await.expect("writer");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(rounds > 100, "only {rounds} rounds of writes");
    assert!(removed > 10);

    // Flat: after the first second (keys then start expiring as fast as they come) the index
    // never grows past twice its size then.
    let baseline = samples
        .iter()
        .find(|(at, _)| *at >= Duration::from_secs(1))
        .expect("a sample after 1 s")
        .1;
    assert!(baseline > 0);
    let later: Vec<i64> = samples
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(1))
        .map(|(_, size)| *size)
        .collect();
    for size in &later {
        assert!(
            *size <= 2 * baseline,
            "index grew from {baseline} to {size}: {samples:?}"
        );
    }

    // Writes stopped; once every key has expired, the per-key sets are gone with them (they
    // expire at the same time). Tag sets keep entries until touched or swept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(keys_matching(&mut d, "rot:*").await, BTreeSet::new());
    assert_eq!(keys_matching(&mut d, "cachet:k:*").await, BTreeSet::new());
    let stale_total: i64 = {
        let mut total = 0;
        for tag in rot_tags() {
            total += zcard(&mut d, &tag).await;
        }
        total
    };
    eprintln!("index size samples {samples:?}; stale tag set entries after expiry {stale_total}");
    assert!(
        stale_total <= 2 * baseline,
        "{stale_total} stale entries for a baseline of {baseline}"
    );

    // Touching: a key joining a tag set re-checks up to 16 of its members whose score has
    // passed, so stale / 16 + 1 new keys under a tag empty its set of stale members.
    let mut c = Conn::connect(proxy.addr).await;
    let mut touches = BTreeMap::new();
    for g in GROUPS {
        let stale = zcard(&mut d, &format!("group:{g}")).await;
        let count = stale / 16 + 1;
        for i in 0..count {
            let key = format!("rot:{g}:touch{i}");
            assert_eq!(c.text(&["SET", &key, "v", "EX", "60"]).await, ok());
        }
        touches.insert(g, count);
    }
    let total: i64 = touches.values().sum();
    for g in GROUPS {
        assert_eq!(
            zcard(&mut d, &format!("group:{g}")).await,
            touches[g],
            "group:{g} after {} touches",
            touches[g]
        );
    }
    assert_eq!(zcard(&mut d, "rot").await, total);
    assert_eq!(
        keys_matching(&mut d, "cachet:k:*").await.len() as i64,
        total
    );
}

/// Sweeping: keys deleted behind cachet's back (scores still in the future) leave the
/// index with one full sweep pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_removes_what_keys_deleted_behind_cachets_back_left() {
    let (flow, mut c, mut d) = flow().await;
    let redis = &flow.redis;
    // Keys indexed with a TTL, as the touching step of `the_index_stays_bounded_as_keys_expire`
    // leaves them (and nothing else in the index).
    let touches: BTreeMap<&str, i64> = GROUPS.iter().map(|g| (*g, 3)).collect();
    for g in GROUPS {
        for i in 0..touches[g] {
            let key = format!("rot:{g}:touch{i}");
            write_all(&mut c, &[&["SET", &key, "v", "EX", "60"]]).await;
        }
    }
    for g in GROUPS {
        for i in 0..touches[g] {
            d.int(&["DEL", &format!("rot:{g}:touch{i}")]).await;
        }
    }
    let sweeper = fred_client(&redis.url(), false).await;
    let index = TagIndex::new(sweeper, "cachet").expect("prefix");
    let mut cursor = 0;
    loop {
        let (next, _) = index.sweep_step(cursor, 100).await.expect("sweep step");
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(index_size(&mut d).await, 0, "index after a sweep");
    assert_eq!(
        keys_matching(&mut d, "cachet:*").await,
        BTreeSet::new(),
        "cachet keys after a sweep"
    );
}

/// FLUSHDB through cachet removes everything; tagging works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushdb_through_cachet_empties_the_index_and_tagging_goes_on() {
    let (_flow, mut c, mut d) = flow().await;
    assert_eq!(c.text(&["SET", "rot:g0:x", "v"]).await, ok());
    assert_eq!(c.text(&["TAGSET", "any", "v", "TAGS", "t"]).await, ok());
    assert_eq!(c.text(&["TAGINVALIDATE", "nothing"]).await, ":0\r\n");
    assert_eq!(c.text(&["FLUSHDB"]).await, ok());
    assert_eq!(d.int(&["DBSIZE"]).await, 0);
    assert_eq!(c.text(&["SET", "rot:g0:y", "v"]).await, ok());
    assert_eq!(tags_of(&mut c, "rot:g0:y").await, ["group:g0", "rot"]);
    assert_eq!(c.text(&["TAGINVALIDATE", "group:g0"]).await, ":1\r\n");
}

// ---- 5. property 4: TTL changes -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_ttl_changes() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    // A roster key: none of its tags names it, so all three have index entries to follow.
    let key = "roster:9:t1";
    let tags: &[&[u8]] = &[b"school:9", b"session:t1", b"roster"];

    assert_eq!(c.text(&["SET", key, "v"]).await, ok());
    assert_ttl(&mut d, key, 600).await;
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["EXPIRE", key, "100"]).await, ":1\r\n");
    assert_ttl(&mut d, key, 100).await;
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["PERSIST", key]).await, ":1\r\n");
    assert_eq!(ttl(&mut d, key).await, -1);
    assert_eq!(score(&mut d, "roster", key).await.as_deref(), Some("inf"));
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["GETEX", key, "EX", "200"]).await, "$1\r\nv\r\n");
    assert_ttl(&mut d, key, 200).await;
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["SET", key, "v2", "KEEPTTL"]).await, ok());
    assert_ttl(&mut d, key, 200).await;
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["PEXPIRE", key, "70000"]).await, ":1\r\n");
    assert_ttl(&mut d, key, 70).await;
    assert_indexed(&mut d, key, tags).await;

    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 500;
    assert_eq!(c.text(&["EXPIREAT", key, &at.to_string()]).await, ":1\r\n");
    assert_ttl(&mut d, key, 500).await;
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["GETEX", key, "PERSIST"]).await, "$2\r\nv2\r\n");
    assert_eq!(ttl(&mut d, key).await, -1);
    assert_indexed(&mut d, key, tags).await;

    // A plain SET clears the TTL at Redis; the rule's comes back.
    assert_eq!(c.text(&["SET", key, "v3"]).await, ok());
    assert_ttl(&mut d, key, 600).await;
    assert_indexed(&mut d, key, tags).await;

    assert_eq!(c.text(&["SETEX", key, "30", "v4"]).await, ok());
    assert_ttl(&mut d, key, 30).await;
    assert_indexed(&mut d, key, tags).await;

    // A plain GETEX changes nothing.
    assert_eq!(c.text(&["GETEX", key]).await, "$2\r\nv4\r\n");
    assert_ttl(&mut d, key, 30).await;
    assert_indexed(&mut d, key, tags).await;

    // EXPIRE with a time in the past deletes the key, and it leaves the index.
    assert_eq!(c.text(&["EXPIREAT", key, "1"]).await, ":1\r\n");
    assert_eq!(d.int(&["EXISTS", key]).await, 0);
    assert_unindexed(&mut d, key, tags).await;
    assert_eq!(tags_of(&mut c, key).await, Vec::<String>::new());

    for (i, command) in [
        vec!["EXPIRE", "session:t2", "-1"],
        vec!["PEXPIRE", "session:t3", "0"],
        vec!["PEXPIREAT", "session:t4", "1000"],
    ]
    .into_iter()
    .enumerate()
    {
        let key = command[1];
        assert_eq!(c.text(&["SET", key, "v"]).await, ok());
        assert_indexed(&mut d, key, &[key.as_bytes()]).await;
        assert_eq!(c.text(&command).await, ":1\r\n", "case {i}");
        assert_eq!(d.int(&["EXISTS", key]).await, 0);
        assert_unindexed(&mut d, key, &[key.as_bytes()]).await;
    }
    // GETEX with a past EXAT: the value comes back, the key is gone, and so is its entry.
    assert_eq!(c.text(&["SET", "session:t5", "v"]).await, ok());
    assert_eq!(
        c.text(&["GETEX", "session:t5", "EXAT", "1"]).await,
        "$1\r\nv\r\n"
    );
    assert_eq!(d.int(&["EXISTS", "session:t5"]).await, 0);
    assert_unindexed(&mut d, "session:t5", &[b"session:t5"]).await;

    // EXPIRE on a key that does not exist: nothing appears in the index.
    assert_eq!(c.text(&["EXPIRE", "session:none", "10"]).await, ":0\r\n");
    assert_unindexed(&mut d, "session:none", &[b"session:none"]).await;
    assert_eq!(
        keys_matching(&mut d, "cachet:t:*").await,
        BTreeSet::new(),
        "every tag set is empty now"
    );
}

// ---- 6. property 5: exact invalidation of tricky tags ---------------------------------------

fn tricky_tags() -> Vec<Vec<u8>> {
    [
        &b"a*"[..],
        b"a?",
        b"a[b]",
        b"a",
        b"{a}",
        b"a}",
        b"{a",
        b"A",
        b"*",
        b"?",
        b"[",
        b"]",
        b"[a-z]",
        b"{}",
        b"}{",
        b"%",
        b"%25",
        b"%7D",
        b"a%}",
        b"a b",
        b" ",
        b"a:b",
        b"a:*",
        b"\\",
        b"\\*",
        b"\x00",
        b"a\x00b",
        b"\xff\xfe",
        b"a\r\nb",
        b"",
    ]
    .iter()
    .map(|t| t.to_vec())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taginvalidate_deletes_exactly_the_tagged_keys() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    let universe = tricky_tags();
    let alphabet = b"{}*?[]: \x00\xff%a";

    for round in 0..4u64 {
        let mut rng = fastrand::Rng::with_seed(round);
        let mut model: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
        let mut sets = Vec::new();
        for i in 0..80 {
            let mut key = format!("x{round}:{i}:").into_bytes();
            key.extend((0..rng.usize(0..6)).map(|_| alphabet[rng.usize(..alphabet.len())]));
            let n = rng.usize(1..=4);
            let mut tags = BTreeSet::new();
            while tags.len() < n {
                tags.insert(universe[rng.usize(..universe.len())].clone());
            }
            let mut command = vec![b("TAGSET"), key.clone(), b("v")];
            if rng.bool() {
                command.extend([b("EX"), b("600")]);
            }
            command.push(b("TAGS"));
            command.extend(tags.iter().cloned());
            sets.push(command);
            model.insert(key, tags);
        }
        for reply in c.pipeline(&sets).await {
            assert_eq!(text(&reply), ok());
        }
        // More tags for some keys, by TAG and by TAGSET again: tags accumulate.
        let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
        for _ in 0..20 {
            let key = &keys[rng.usize(..keys.len())];
            let tag = universe[rng.usize(..universe.len())].clone();
            let new = !model[key].contains(&tag);
            let reply = c.int(&[b("TAG"), key.clone(), tag.clone()]).await;
            assert_eq!(reply, i64::from(new));
            model.get_mut(key).unwrap().insert(tag);
        }
        for _ in 0..10 {
            let key = &keys[rng.usize(..keys.len())];
            let tag = universe[rng.usize(..universe.len())].clone();
            let command = vec![b("TAGSET"), key.clone(), b("v2"), b("TAGS"), tag.clone()];
            assert_eq!(c.text(&command).await, ok());
            model.get_mut(key).unwrap().insert(tag);
        }
        for key in keys.iter().take(15) {
            let got: BTreeSet<Vec<u8>> = c
                .cmd(&[b("TAGS"), key.clone()])
                .await
                .strings()
                .into_iter()
                .collect();
            assert_eq!(got, model[key], "TAGS {:?}", text(key));
            let expected: Vec<&[u8]> = model[key].iter().map(|t| &t[..]).collect();
            assert_indexed(&mut d, key, &expected).await;
        }
        for tag in universe.iter().take(6) {
            let page = c
                .cmd(&[b("TAGKEYS"), tag.clone(), b("COUNT"), b("1000")])
                .await;
            let got: BTreeSet<Vec<u8>> = page.items()[1].strings().into_iter().collect();
            let expected: BTreeSet<Vec<u8>> = model
                .iter()
                .filter(|(_, tags)| tags.contains(tag))
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(got, expected, "TAGKEYS {:?}", text(tag));
        }

        // Invalidate one tag (sometimes two) at a time, in random order.
        let mut order = universe.clone();
        rng.shuffle(&mut order);
        while !order.is_empty() {
            let take = if order.len() > 1 && rng.bool() { 2 } else { 1 };
            let tags: Vec<Vec<u8>> = order.drain(..take).collect();
            let expected: BTreeSet<Vec<u8>> = model
                .iter()
                .filter(|(_, t)| tags.iter().any(|tag| t.contains(tag)))
                .map(|(k, _)| k.clone())
                .collect();
            let mut command = vec![b("TAGINVALIDATE")];
            command.extend(tags.iter().cloned());
            let shown: Vec<String> = tags.iter().map(|t| text(t)).collect();
            assert_eq!(
                c.int(&command).await,
                expected.len() as i64,
                "TAGINVALIDATE {shown:?}"
            );
            model.retain(|k, _| !expected.contains(k));
            let alive: BTreeSet<Vec<u8>> = data_keys(&mut d).await;
            let want: BTreeSet<Vec<u8>> = model.keys().cloned().collect();
            assert_eq!(
                alive.iter().map(|k| text(k)).collect::<Vec<_>>(),
                want.iter().map(|k| text(k)).collect::<Vec<_>>(),
                "keys after TAGINVALIDATE {shown:?}"
            );
        }
        assert!(model.is_empty());
        let left: Vec<String> = keys_matching(&mut d, "cachet:*")
            .await
            .iter()
            .map(|k| text(k))
            .filter(|k| !k.starts_with("cachet:e:"))
            .collect();
        assert!(left.is_empty(), "round {round}: index keys left: {left:?}");
    }
}

// ---- 7. property 8: reads go to Redis as they are -------------------------------------------

/// A MONITOR line's client address and command.
fn monitor_line(line: &str) -> (String, String) {
    let open = line.find('[').expect("[");
    let close = line.find(']').expect("]");
    let client = line[open + 1..close]
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    (client, line[close + 2..].trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_redis_as_plain_commands() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut marker = Conn::connect(redis.addr()).await;
    let mut monitor = Conn::connect(redis.addr()).await;
    assert_eq!(monitor.text(&["MONITOR"]).await, ok());

    assert_eq!(
        marker.text(&["ECHO", "monitor-start"]).await,
        "$13\r\nmonitor-start\r\n"
    );
    assert_eq!(c.text(&["GET", "plain:mon"]).await, "$-1\r\n");
    assert_eq!(c.text(&["GET", "sessions:teacher:mon"]).await, "$-1\r\n");
    assert_eq!(c.text(&["SET", "plain:mon", "v"]).await, ok());
    assert_eq!(c.text(&["GET", "plain:mon"]).await, "$1\r\nv\r\n");
    assert_eq!(
        marker.text(&["ECHO", "monitor-end"]).await,
        "$11\r\nmonitor-end\r\n"
    );

    let mut lines = Vec::new();
    let mut started = false;
    loop {
        let frame = monitor.0.read_frame().await.expect("monitor line");
        let line = text(&frame);
        if line.contains("\"monitor-start\"") {
            started = true;
            continue;
        }
        if line.contains("\"monitor-end\"") {
            break;
        }
        if started {
            lines.push(monitor_line(line.trim_start_matches('+')));
        }
    }
    for (_, command) in &lines {
        assert!(
            !command.contains("cachet:k:")
                && !command.contains("cachet:t:")
                && !command.contains("FCALL"),
            "a read touched the index: {command} (all: {lines:#?})"
        );
    }
    let (client, _) = lines
        .iter()
        .find(|(_, command)| command == "\"GET\" \"plain:mon\"")
        .unwrap_or_else(|| panic!("no plain GET in {lines:#?}"))
        .clone();
    let from_client: Vec<&str> = lines
        .iter()
        .filter(|(c, _)| *c == client)
        .map(|(_, command)| command.as_str())
        .collect();
    assert_eq!(
        from_client,
        [
            "\"GET\" \"plain:mon\"",
            "\"MGET\" \"cachet:e:{teacher:mon}\" \"cachet:e:{sessions}\"",
            "\"GET\" \"sessions:teacher:mon\"",
            "\"SET\" \"plain:mon\" \"v\"",
            "\"GET\" \"plain:mon\"",
        ],
        "what cachet sent for this client (all: {lines:#?})"
    );
}

// ---- 8. RESP3 replies of tagged writes ------------------------------------------------------

/// Tagged writes through cachet get, byte for byte, the reply Redis gives the same command
/// sent directly, in RESP2 and RESP3 (the index function runs the command in the client's
/// protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_write_replies_match_redis_in_both_protocols() {
    let behind = RedisServer::start();
    let direct = RedisServer::start();
    let proxy = start_proxy(&behind).await;
    let mut checked = Conn::connect(behind.addr()).await;
    for protocol in ["2", "3"] {
        let mut c = Conn::connect(proxy.addr).await;
        let mut d = Conn::connect(direct.addr()).await;
        let hello_c = R::parse(&c.raw(&["HELLO", protocol]).await);
        let hello_d = R::parse(&d.raw(&["HELLO", protocol]).await);
        assert!(matches!(hello_c, R::Array(_)) && matches!(hello_d, R::Array(_)));
        let h = format!("session:h{protocol}");
        let z = format!("session:z{protocol}");
        let f = format!("session:f{protocol}");
        let s = format!("session:s{protocol}");
        let l = format!("session:l{protocol}");
        let commands: Vec<Vec<&str>> = vec![
            vec!["HINCRBYFLOAT", &h, "f", "1.5"],
            vec!["HINCRBYFLOAT", &h, "f", "0.1"],
            vec!["HSET", &h, "a", "1", "b", "2"],
            vec!["HINCRBY", &h, "a", "5"],
            vec!["HDEL", &h, "b", "nope"],
            vec!["ZINCRBY", &z, "2.5", "m"],
            vec!["ZINCRBY", &z, "0.1", "m"],
            vec!["ZINCRBY", &z, "1e300", "big"],
            vec!["ZADD", &z, "INCR", "1", "m"],
            vec!["ZADD", &z, "GT", "INCR", "-1", "m"],
            vec!["ZADD", &z, "1", "a", "2", "b", "inf", "c"],
            vec!["ZPOPMIN", &z],
            vec!["ZPOPMAX", &z, "2"],
            vec!["INCRBYFLOAT", &f, "3.0e3"],
            vec!["INCRBYFLOAT", &f, "0.25"],
            vec!["SET", &s, "v", "GET"],
            vec!["SET", &s, "w", "GET"],
            vec!["SET", &s, "x", "NX"],
            vec!["SET", &s, "x", "EX", "0"],
            vec!["GETDEL", &s],
            vec!["LPUSH", &l, "a", "b", "c"],
            vec!["LPOP", &l, "2"],
            vec!["RPOP", &l],
            vec!["LPOP", &l],
            vec!["INCR", &h],
            vec!["SET", &s],
            vec!["HSET", &h, "f"],
            vec!["SET", &s, "v", "FOO"],
            vec!["EXPIRE", &h, "10", "XX", "NX"],
            vec!["HSET", &z, "f", "v"],
            vec!["SADD", &s, "a"],
            vec!["SPOP", &s, "5"],
            vec!["SADD", &s, "a"],
            vec!["SPOP", &s],
            vec!["SPOP", &s, "3"],
        ];
        for command in &commands {
            let expected = d.raw(command).await;
            let got = c.raw(command).await;
            assert_eq!(
                text(&got),
                text(&expected),
                "RESP{protocol} reply to {command:?}"
            );
        }
        // And they were tagged writes: the rule's TTL and tags.
        assert_ttl(&mut checked, &h, 900).await;
        assert_ttl(&mut checked, &z, 900).await;
        assert_eq!(tags_of(&mut c, &z).await, [z.as_str()]);
        assert_indexed(&mut checked, &z, &[z.as_bytes()]).await;
    }

    // fred in RESP3 sees doubles as numbers.
    let fred3 = fred_client(&proxy.url(), true).await;
    let v: Value = fred_run(&fred3, &["ZINCRBY", "session:fred", "1.25", "m"])
        .await
        .unwrap();
    assert_eq!(v.as_f64(), Some(1.25));
    let v: Value = fred_run(&fred3, &["HINCRBYFLOAT", "session:fredh", "f", "0.5"])
        .await
        .unwrap();
    assert_eq!(v.as_f64(), Some(0.5));
    assert_ttl(&mut checked, "session:fred", 900).await;
}

/// Replies with a null array (`*-1` in RESP2: LPOP with a count on nothing, ZMPOP/LMPOP on
/// nothing) must reach the client as Redis sends them, tagged key or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_array_replies_of_tagged_writes_match_redis() {
    let behind = RedisServer::start();
    let direct = RedisServer::start();
    let proxy = start_proxy(&behind).await;
    let mut mismatches = Vec::new();
    for protocol in ["2", "3"] {
        let mut c = Conn::connect(proxy.addr).await;
        let mut d = Conn::connect(direct.addr()).await;
        c.raw(&["HELLO", protocol]).await;
        d.raw(&["HELLO", protocol]).await;
        for command in [
            vec!["LPOP", "session:empty", "2"],
            vec!["LMPOP", "1", "session:empty", "LEFT"],
            vec!["ZMPOP", "1", "session:empty", "MIN"],
        ] {
            let expected = text(&d.raw(&command).await);
            let got = text(&c.raw(&command).await);
            if got != expected {
                mismatches.push(format!(
                    "RESP{protocol} {command:?}: Redis {expected:?}, cachet {got:?}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// How many times Redis ran `command` since the last `CONFIG RESETSTAT` (INFO commandstats).
async fn calls(d: &mut Conn, command: &str) -> u64 {
    let info = d.text(&["INFO", "commandstats"]).await;
    let field = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&field))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

// ---- fast writes ------------------------------------------------------------------------------

/// A SET of a rule-matched key with no lease to check runs as MULTI/EXEC of plain commands,
/// not as a function call, and leaves the same index as `cachet_write` (scores within the
/// slack of the expiry); one after a miss still goes through `cachet_write` for its epoch
/// check; Redis's refusal of the SET reaches the client as Redis words it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_matched_sets_skip_the_function() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    let tags = |t: &str| -> Vec<Vec<u8>> { vec![b(format!("teacher:{t}")), b("sessions")] };
    assert_eq!(d.text(&["CONFIG", "RESETSTAT"]).await, ok());

    assert_eq!(c.text(&["SET", "sessions:teacher:1", "v"]).await, ok());
    assert_ttl(&mut d, "sessions:teacher:1", 300).await;
    assert_eq!(
        c.text(&["SET", "sessions:teacher:2", "v", "ex", "50"])
            .await,
        ok()
    );
    assert_ttl(&mut d, "sessions:teacher:2", 50).await;
    assert_eq!(
        c.text(&["SET", "sessions:teacher:3", "v", "PX", "40000"])
            .await,
        ok()
    );
    assert_ttl(&mut d, "sessions:teacher:3", 40).await;
    // A pipeline of fast writes, overwrites among them, and a plain key in between.
    let mut batch: Vec<Vec<String>> = Vec::new();
    for i in 0..40 {
        batch.push(vec![
            "SET".into(),
            format!("sessions:teacher:{}", i % 20),
            "w".into(),
        ]);
        if i == 7 {
            batch.push(vec!["SET".into(), "plain:x".into(), "y".into()]);
        }
    }
    let replies = c.pipeline(&batch).await;
    assert!(replies.iter().all(|r| &r[..] == b"+OK\r\n"), "{replies:?}");
    // New members cost one `cachet_trim` per reply batch; overwrites cost no function call.
    assert_eq!(d.text(&["CONFIG", "RESETSTAT"]).await, ok());
    let replies = c.pipeline(&batch).await;
    assert!(replies.iter().all(|r| &r[..] == b"+OK\r\n"), "{replies:?}");
    // 40 overwrites through the function would be 40 calls; the background sweeper may make
    // one call per 100 ms step meanwhile.
    let fcalls = calls(&mut d, "fcall").await;
    assert!(fcalls < 5, "{fcalls} function calls for 40 overwrites");
    // The tagged SETs of one read share a transaction, and one ZADD per tag; the plain SET
    // in between closes one (so at least two).
    assert_eq!(calls(&mut d, "set").await, 41);
    let execs = calls(&mut d, "exec").await;
    assert!((2..40).contains(&execs), "{execs} transactions for 40 SETs");
    assert_eq!(
        calls(&mut d, "zadd").await,
        execs,
        "one ZADD of `sessions` per transaction"
    );
    for i in 0..20 {
        let key = format!("sessions:teacher:{i}");
        let t = tags(&i.to_string());
        let t: Vec<&[u8]> = t.iter().map(|t| &t[..]).collect();
        assert_indexed(&mut d, &key, &t).await;
        assert_ttl(&mut d, &key, 300).await;
        assert_eq!(
            tags_of(&mut c, &key).await,
            ["sessions", &format!("teacher:{i}")]
        );
    }
    assert_eq!(ttl(&mut d, "plain:x").await, -1);

    // Invalidation finds what fast writes indexed.
    assert_eq!(c.int(&["TAGINVALIDATE", "teacher:4"]).await, 1);
    assert_eq!(c.int(&["TAGINVALIDATE", "sessions"]).await, 19);
    assert_eq!(data_keys(&mut d).await, BTreeSet::from([b("plain:x")]));
    assert_eq!(keys_matching(&mut d, "cachet:k:*").await, BTreeSet::new());

    // A write after a miss carries a lease: the function checks the epochs.
    assert_eq!(d.text(&["CONFIG", "RESETSTAT"]).await, ok());
    assert_eq!(c.text(&["GET", "sessions:teacher:9"]).await, "$-1\r\n");
    assert_eq!(c.text(&["SET", "sessions:teacher:9", "v"]).await, ok());
    assert_eq!(calls(&mut d, "fcall").await, 1);
    assert_eq!(calls(&mut d, "exec").await, 0);
    let t = tags("9");
    let t: Vec<&[u8]> = t.iter().map(|t| &t[..]).collect();
    assert_indexed(&mut d, "sessions:teacher:9", &t).await;

    // Redis refuses the SET when queued (out of memory): the client reads Redis's own error,
    // not EXECABORT, and nothing is indexed.
    assert_eq!(d.text(&["CONFIG", "SET", "maxmemory", "1"]).await, ok());
    let direct = d.text(&["SET", "sessions:teacher:10", "v"]).await;
    assert!(direct.starts_with("-OOM"), "{direct}");
    assert_eq!(c.text(&["SET", "sessions:teacher:10", "v"]).await, direct);
    // A pipeline of them (one transaction): one refusal each, in order, nothing else.
    let batch: Vec<Vec<String>> = (20..23)
        .map(|i| vec!["SET".into(), format!("sessions:teacher:{i}"), "v".into()])
        .chain([vec!["PING".into()]])
        .collect();
    let replies = c.pipeline(&batch).await;
    assert_eq!(replies.len(), 4);
    for reply in &replies[..3] {
        assert_eq!(text(reply), direct);
    }
    assert_eq!(&replies[3][..], b"+PONG\r\n");
    assert_eq!(d.text(&["CONFIG", "SET", "maxmemory", "0"]).await, ok());
    assert_unindexed(&mut d, "sessions:teacher:10", &t_refs(&tags("10"))).await;
    assert_eq!(c.text(&["SET", "sessions:teacher:10", "v"]).await, ok());
}

fn t_refs(tags: &[Vec<u8>]) -> Vec<&[u8]> {
    tags.iter().map(|t| &t[..]).collect()
}

/// A key whose every tag names it (`session:{session}` tagged `session:{session}`) is written
/// as the plain SET with the rule's TTL: no transaction, no index entry. The commands still
/// find it from the tag (TAGS, TAGKEYS, TAGINVALIDATE), extra tags are indexed as usual, and
/// a RENAME carries the naming tag to a name it does not name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_named_by_their_tags_need_no_index() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut c = Conn::connect(proxy.addr).await;
    let mut d = Conn::connect(redis.addr()).await;
    assert_eq!(d.text(&["CONFIG", "RESETSTAT"]).await, ok());

    let batch: Vec<Vec<String>> = (0..30)
        .flat_map(|i| {
            let key = format!("session:n{}", i % 10);
            [
                vec!["SET".into(), key.clone(), format!("v{i}")],
                vec!["GET".into(), key],
            ]
        })
        .collect();
    let replies = c.pipeline(&batch).await;
    for (i, pair) in replies.chunks(2).enumerate() {
        assert_eq!(&pair[0][..], b"+OK\r\n");
        let want = format!("${}\r\nv{i}\r\n", format!("v{i}").len());
        assert_eq!(text(&pair[1]), want, "reply {i}");
    }
    assert_eq!(calls(&mut d, "set").await, 30);
    assert_eq!(calls(&mut d, "exec").await, 0, "no transaction");
    assert_eq!(calls(&mut d, "zadd").await, 0, "no index entry");
    assert_ttl(&mut d, "session:n3", 900).await;
    assert_eq!(
        keys_matching(&mut d, "cachet:[tk]:*").await,
        BTreeSet::new()
    );

    assert_eq!(tags_of(&mut c, "session:n1").await, ["session:n1"]);
    assert_eq!(
        c.text(&["TAGKEYS", "session:n1"]).await,
        "*2\r\n$1\r\n0\r\n*1\r\n$10\r\nsession:n1\r\n"
    );
    assert_eq!(
        c.text(&["TAGKEYS", "session:none"]).await,
        "*2\r\n$1\r\n0\r\n*0\r\n",
        "only keys that exist"
    );
    assert_eq!(c.int(&["TAG", "session:n1", "extra"]).await, 1);
    assert_eq!(tags_of(&mut c, "session:n1").await, ["extra", "session:n1"]);
    assert_indexed(&mut d, "session:n1", &[b"extra", b"session:n1"]).await;

    // Invalidation reads the key back from the tag; the extra tag's entry goes with it.
    assert_eq!(
        c.int(&["TAGINVALIDATE", "session:n2", "session:n1"]).await,
        2
    );
    assert_eq!(d.int(&["EXISTS", "session:n1", "session:n2"]).await, 0);
    assert_unindexed(&mut d, "session:n1", &[b"extra"]).await;
    assert_eq!(c.int(&["TAGINVALIDATE", "session:n1"]).await, 0);

    // RENAME to a name the tag does not name: there the tag is indexed, and still finds it.
    assert_eq!(c.text(&["RENAME", "session:n4", "moved:n4"]).await, ok());
    assert_eq!(tags_of(&mut c, "moved:n4").await, ["session:n4"]);
    assert_eq!(c.int(&["TAGINVALIDATE", "session:n4"]).await, 1);
    assert_eq!(d.int(&["EXISTS", "moved:n4"]).await, 0);
    let left = data_keys(&mut d).await.len();
    assert_eq!(left, 7, "the other sessions are untouched");

    // One indexed tag (`sessions`) beside a naming one: MULTI, SET, ZADD, EXEC, no per-key
    // set. Invalidating the naming tag takes the key out of `sessions` too.
    assert_eq!(d.text(&["CONFIG", "RESETSTAT"]).await, ok());
    assert_eq!(c.text(&["SET", "sessions:teacher:7", "v"]).await, ok());
    assert_eq!(calls(&mut d, "exec").await, 1);
    assert_eq!(calls(&mut d, "sadd").await, 0, "no per-key set");
    assert_eq!(key_set(&mut d, "sessions:teacher:7").await, BTreeSet::new());
    assert_indexed(&mut d, "sessions:teacher:7", &[b"teacher:7", b"sessions"]).await;
    assert_eq!(
        tags_of(&mut c, "sessions:teacher:7").await,
        ["sessions", "teacher:7"]
    );
    assert_eq!(c.int(&["TAGINVALIDATE", "teacher:7"]).await, 1);
    assert_unindexed(&mut d, "sessions:teacher:7", &[b"sessions"]).await;
}

/// Redis down: a fast write (six frames from Redis when it works) and the command after it
/// get exactly one error each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_error_per_command_when_a_fast_write_fails() {
    let mut redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(
        client.text(&["SET", "sessions:teacher:1", "v"]).await,
        ok(),
        "a fast write while Redis is up"
    );
    tokio::task::block_in_place(|| redis.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .send_raw(
            &[
                RawClient::encode(&["SET", "sessions:teacher:1", "v"]),
                RawClient::encode(&["PING"]),
            ]
            .concat(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let reply = client.read_frame().await.unwrap();
        assert!(reply.starts_with(b"-ERR upstream"), "{reply:?}");
    }
    assert!(
        client
            .read_frame_timeout(Duration::from_millis(300))
            .await
            .is_err(),
        "an extra reply arrived"
    );
}

/// A client's `FUNCTION FLUSH` (or DELETE, RESTORE) through cachet takes cachet's library
/// with it; cachet loads it again before answering, so the tagged writes and RENAMEs after
/// it work (before, they got `ERR Function not found` until the control client reconnected:
/// ioredis's suite flushes functions between tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_writes_survive_a_function_flush_through_cachet() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(client.text(&["SET", "sessions:teacher:1", "v"]).await, ok());
    for flush in [
        &["FUNCTION", "FLUSH"][..],
        &["FUNCTION", "DELETE", "cachet"],
        &["FUNCTION", "FLUSH", "SYNC"],
    ] {
        // Pipelined: the write right behind the flush must find the library.
        client
            .send_raw(
                &[
                    RawClient::encode(flush),
                    RawClient::encode(&["SET", "sessions:teacher:2", "w"]),
                    RawClient::encode(&["RENAME", "sessions:teacher:2", "sessions:teacher:3"]),
                ]
                .concat(),
            )
            .await
            .unwrap();
        for expected in ["+OK\r\n", "+OK\r\n", "+OK\r\n"] {
            let reply = client.read_frame().await.unwrap();
            assert_eq!(text(&reply), expected, "after {flush:?}");
        }
    }
    // The renamed key kept its tags: invalidating the teacher's tag deletes it.
    assert_eq!(client.text(&["TAGINVALIDATE", "teacher:3"]).await, ":1\r\n");
    assert_eq!(
        client.text(&["EXISTS", "sessions:teacher:3"]).await,
        ":0\r\n"
    );
    // Redis's own error for a library that is not there, unchanged.
    assert_eq!(
        client.text(&["FUNCTION", "DELETE", "nosuchlib"]).await,
        "-ERR Library not found\r\n"
    );
}

/// cachet's function library is cachet's, not the application's: FUNCTION LIST through
/// cachet leaves it out (RESP2 and RESP3, with or without the client's own libraries), while
/// Redis itself still lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_list_through_cachet_leaves_cachets_library_out() {
    let redis = RedisServer::start();
    let proxy = start_proxy(&redis).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    let mut direct = RawClient::connect(redis.addr()).await.unwrap();
    assert_eq!(client.text(&["SET", "sessions:teacher:1", "v"]).await, ok());
    assert!(
        direct
            .text(&["FUNCTION", "LIST"])
            .await
            .contains("\r\ncachet\r\n")
    );
    assert_eq!(client.text(&["FUNCTION", "LIST"]).await, "*0\r\n");
    let lib = "#!lua name=mylib\nredis.register_function('f1', function() return 1 end)";
    assert_eq!(
        client.text(&["FUNCTION", "LOAD", lib]).await,
        "$5\r\nmylib\r\n"
    );
    for hello in ["2", "3"] {
        let mut c = RawClient::connect(proxy.addr).await.unwrap();
        let mut d = RawClient::connect(redis.addr()).await.unwrap();
        c.command(&["HELLO", hello]).await.unwrap();
        d.command(&["HELLO", hello]).await.unwrap();
        // Redis's reply, with the `cachet` entry cut out, byte for byte.
        let mine = c.text(&["FUNCTION", "LIST", "LIBRARYNAME", "mylib"]).await;
        let theirs = d.text(&["FUNCTION", "LIST", "LIBRARYNAME", "mylib"]).await;
        assert_eq!(mine, theirs, "RESP{hello}");
        let all = c.text(&["FUNCTION", "LIST", "WITHCODE"]).await;
        assert!(
            all.starts_with("*1\r\n") && all.contains("mylib"),
            "RESP{hello}: {all}"
        );
        assert!(!all.contains("\r\ncachet\r\n"), "RESP{hello}: {all}");
    }
}
