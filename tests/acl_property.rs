//! Property: for random ACL users, keys and commands, cachet refuses exactly what Redis
//! refuses. Each case runs a command through cachet as a user, and its plain equivalent
//! (src/session/acl.rs: TAGSET ↔ SET, TAGINVALIDATE ↔ DEL of the tag's keys, TAGS/TAG/
//! TAGKEYS ↔ EXISTS; CLIENT LIST/INFO/KILL, which cachet answers, ↔ themselves) straight at Redis as the same user; the NOPERM decisions (refused or
//! not, and the error text) must agree in every case. EMIT's equivalent is the `[[acl]]`
//! grant, which has no Redis counterpart. Writes of keys a rule matches (`p*`) are checked
//! by cachet and run wrapped as cachet's user; the others go to Redis as the user. Users'
//! rights change now and then, through cachet (so its cached decisions must be dropped at
//! once).
//!
//! `ACL_PROPERTY_SEED=n` replays a run; `ACL_PROPERTY_CASES=n` sets its length.

mod support;

use support::acl::{admin, set_user};
use support::resp::Value;
use support::{Proxy, RawClient, RedisServer};

const USERS: usize = 8;
/// Each key and the tag cachet's user puts it under before every case (the users' TAGSETs
/// and TAGs add more: each case reads the tag's keys as they are then).
const KEYS: &[(&str, &str)] = &[
    ("p1", "t1"),
    ("q1", "t1"),
    ("p2", "t2"),
    ("q2", "t2"),
    ("r1", "t3"),
];
const TAGS: &[&str] = &["t1", "t2", "t3", "t4"];
/// Users granted EMIT of `ev.a*` (the others have no grant).
const EMITTERS: &[&str] = &["u0", "u1"];

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

/// Random rules: key patterns (plain, read-only, write-only), categories and single commands.
fn random_rules(rng: &mut fastrand::Rng) -> Vec<String> {
    const PATTERNS: &[&str] = &["~p*", "~q*", "%R~p*", "%W~q*", "%R~*", "%W~r*", "~*", "~r1"];
    const RULES: &[&str] = &[
        "+@all",
        "+@read",
        "+@write",
        "+@keyspace",
        "+@string",
        "-@string",
        "-@dangerous",
        "-@write",
        "+get",
        "-get",
        "+set",
        "-set",
        "+del",
        "-del",
        "+exists",
        "-exists",
        "+mget",
        "+@connection",
        "+client|list",
        "-client|kill",
    ];
    let base = *pick(rng, &["-@all", "+@all"]);
    let mut rules = vec!["resetkeys".to_owned(), base.to_owned()];
    let mut patterns: Vec<&str> = (0..rng.usize(1..=2))
        .map(|_| *pick(rng, PATTERNS))
        .collect();
    if patterns.contains(&"~*") {
        // Redis refuses any pattern after `~*`.
        patterns = vec!["~*"];
    }
    rules.extend(patterns.iter().map(|p| p.to_string()));
    for _ in 0..rng.usize(1..=4) {
        rules.push(pick(rng, RULES).to_string());
    }
    rules
}

/// A command through cachet and its equivalent at Redis (`None`: nothing to run there,
/// which allows it: a TAGINVALIDATE of an empty tag deletes nothing). For EMIT, the
/// equivalent is the grant: `Err(allowed)`.
type Case = (Vec<String>, Result<Option<Vec<String>>, bool>);

fn random_case(
    rng: &mut fastrand::Rng,
    user: &str,
    tag_keys: &dyn Fn(&str) -> Vec<String>,
) -> Case {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let key = pick(rng, KEYS).0;
    let other = pick(rng, KEYS).0;
    let tag = *pick(rng, TAGS);
    let keys_of = |tag: &str| tag_keys(tag);
    let with = |cmd: &str, keys: Vec<String>| -> Option<Vec<String>> {
        (!keys.is_empty()).then(|| {
            let mut v = vec![cmd.to_string()];
            v.extend(keys);
            v
        })
    };
    match rng.usize(..14) {
        0 => (s(&["GET", key]), Ok(Some(s(&["GET", key])))),
        1 => (s(&["SET", key, "v"]), Ok(Some(s(&["SET", key, "v"])))),
        2 => (s(&["DEL", key]), Ok(Some(s(&["DEL", key])))),
        3 => (s(&["MGET", key, other]), Ok(Some(s(&["MGET", key, other])))),
        4 => (
            s(&["TAGSET", key, "v", "TAGS", tag]),
            Ok(Some(s(&["SET", key, "v"]))),
        ),
        5 => (
            s(&["TAGSET", key, "v", "EX", "100", "TAGS", tag]),
            Ok(Some(s(&["SET", key, "v", "EX", "100"]))),
        ),
        6 => (s(&["TAGINVALIDATE", tag]), Ok(with("DEL", keys_of(tag)))),
        7 => (s(&["TAGS", key]), Ok(Some(s(&["EXISTS", key])))),
        8 => (s(&["TAG", key, tag]), Ok(Some(s(&["EXISTS", key])))),
        9 => (s(&["TAGKEYS", tag]), Ok(with("EXISTS", keys_of(tag)))),
        // cachet answers these over its own clients, once Redis allows them.
        10 => (s(&["CLIENT", "LIST"]), Ok(Some(s(&["CLIENT", "LIST"])))),
        11 => (s(&["CLIENT", "INFO"]), Ok(Some(s(&["CLIENT", "INFO"])))),
        12 => {
            let kill = s(&["CLIENT", "KILL", "ID", "999999999"]);
            (kill.clone(), Ok(Some(kill)))
        }
        _ => {
            let event = *pick(rng, &["ev.a1", "ev.a2", "ev.b1"]);
            let allowed = EMITTERS.contains(&user) && event.starts_with("ev.a");
            (s(&["EMIT", event]), Err(allowed))
        }
    }
}

/// The reply as a decision: the NOPERM line, or `None` for anything else.
fn noperm(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    text.starts_with("-NOPERM")
        .then(|| text.trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cachet_refuses_exactly_what_redis_refuses() {
    let seed: u64 = std::env::var("ACL_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: usize = std::env::var("ACL_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    println!("seed {seed} (ACL_PROPERTY_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    for name in &names {
        let rules = random_rules(&mut rng);
        let mut all = vec!["on".to_owned(), format!(">pw-{name}")];
        all.extend(rules);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        set_user(&mut root, name, &all).await;
    }
    let proxy = Proxy::start_with(&redis.url(), |c| {
        let users = EMITTERS
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let grant: cachet::config::AclGrant =
            toml::from_str(&format!("users = [{users}]\nemit = [\"ev.a*\"]\n")).expect("grant");
        c.acl = vec![grant];
        // Writes of `p` keys are tagged: through cachet they are checked, then wrapped.
        let rules = "[[rules]]\npattern = \"p*\"\ntags = [\"tp\"]\n";
        c.rules = cachet::Config::from_toml(rules, "rules").unwrap().rules;
    })
    .await;
    let mut own = RawClient::connect(proxy.addr).await.unwrap();
    let mut through = Vec::new();
    let mut direct = Vec::new();
    for name in &names {
        let password = format!("pw-{name}");
        let mut c = RawClient::connect(proxy.addr).await.unwrap();
        assert_eq!(c.text(&["AUTH", name, &password]).await, "+OK\r\n");
        through.push(c);
        let mut d = RawClient::connect(redis.addr()).await.unwrap();
        assert_eq!(d.text(&["AUTH", name, &password]).await, "+OK\r\n");
        direct.push(d);
    }

    let mut refused = 0;
    let mut disagreements = Vec::new();
    for case in 0..cases {
        // Now and then a user's rights change, through cachet.
        if case > 0 && case % 50 == 0 {
            let name = pick(&mut rng, &names).clone();
            let rules = random_rules(&mut rng);
            let mut args = vec!["ACL".to_owned(), "SETUSER".to_owned(), name.clone()];
            args.extend(rules);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(own.text(&args).await, "+OK\r\n", "{args:?}");
        }
        for (key, tag) in KEYS {
            assert_eq!(
                own.text(&["TAGSET", key, "v", "TAGS", tag]).await,
                "+OK\r\n"
            );
        }
        // The tags' keys now, as cachet's user reads them.
        let mut members = std::collections::HashMap::new();
        for tag in TAGS {
            let reply = own
                .command(&["TAGKEYS", tag, "COUNT", "1000"])
                .await
                .unwrap();
            let page = Value::parse(&reply);
            assert_eq!(page.items()[0].bytes(), b"0", "one page holds them all");
            let keys: Vec<String> = page.items()[1]
                .strings()
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect();
            members.insert(tag.to_string(), keys);
        }
        let u = rng.usize(..USERS);
        let (command, equivalent) = random_case(&mut rng, &names[u], &|tag| members[tag].clone());
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let got = noperm(&through[u].command(&args).await.expect("reply from cachet"));
        let expected = match &equivalent {
            Ok(Some(plain)) => {
                let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
                noperm(&direct[u].command(&plain).await.expect("reply from Redis"))
            }
            Ok(None) => None,
            Err(allowed) => (!allowed).then(|| "(an [[acl]] refusal)".to_owned()),
        };
        let agree = match (&equivalent, &got, &expected) {
            (Err(_), Some(line), Some(_)) => line.starts_with(&format!(
                "-NOPERM User {} has no permissions to emit",
                names[u]
            )),
            _ => got == expected,
        };
        if expected.is_some() {
            refused += 1;
        }
        if !agree {
            disagreements.push(format!(
                "case {case}: {} {command:?} ↔ {equivalent:?}: cachet {got:?}, Redis {expected:?}",
                names[u]
            ));
        }
    }
    println!(
        "{cases} cases, {refused} refused, {} disagreements (seed {seed})",
        disagreements.len()
    );
    assert!(
        disagreements.is_empty(),
        "seed {seed}:\n{}",
        disagreements.join("\n")
    );
    assert!(
        refused > cases / 10 && refused < cases * 9 / 10,
        "a run that refuses almost nothing (or everything) tests little: {refused} of {cases}"
    );
}
