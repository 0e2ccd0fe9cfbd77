//! The rules shipped in examples/cachet.toml give the ClassWaves keys the tags and TTLs of the
//! original CacheManager, and keys outside them none.

use std::path::Path;

use cachet::Config;
use cachet::tags::Rules;

fn example_rules() -> Rules {
    let mut config = Config::from_file(Path::new("examples/cachet.toml")).expect("example config");
    config.apply_env(|_| None).expect("no environment");
    Rules::compile(&config.ttl, &config.rules).expect("validated by from_file")
}

/// (name, tags, ttl) of the rule that `key` matches.
fn lookup(rules: &Rules, key: &[u8]) -> Option<(String, Vec<String>, u64)> {
    rules.match_key(key).map(|m| {
        let tags = m
            .tags
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        (m.name.to_owned(), tags, m.ttl_secs)
    })
}

fn expect(rules: &Rules, key: &str, name: &str, tags: &[&str], ttl: u64) {
    assert_eq!(
        lookup(rules, key.as_bytes()),
        Some((
            name.to_owned(),
            tags.iter().map(|t| t.to_string()).collect(),
            ttl
        )),
        "{key}"
    );
}

#[test]
fn classwaves_keys_get_the_original_tags_and_ttls() {
    let rules = example_rules();
    expect(
        &rules,
        "sessions:teacher:123",
        "session-list",
        &["teacher:123", "sessions"],
        300,
    );
    expect(
        &rules,
        "sessions:school:s9",
        "school-session-list",
        &["school-sessions:s9", "sessions"],
        300,
    );
    expect(
        &rules,
        "session:abc",
        "session-detail",
        &["session:abc"],
        900,
    );
    expect(
        &rules,
        "session:abc:detail",
        "session-parts",
        &["session:abc"],
        900,
    );
    expect(
        &rules,
        "session:abc:groups:3",
        "session-parts",
        &["session:abc"],
        900,
    );
    expect(
        &rules,
        "session:abc:analytics",
        "session-analytics",
        &["session:abc", "analytics"],
        60,
    );
    expect(
        &rules,
        "user:u1:profile",
        "user-profile",
        &["user:u1"],
        1800,
    );
    expect(
        &rules,
        "user:u1:permissions",
        "user-permissions",
        &["user:u1", "permissions"],
        600,
    );
    expect(
        &rules,
        "roster:s9:abc",
        "roster",
        &["roster:s9:abc", "session:abc", "roster"],
        1800,
    );
    expect(&rules, "school:s9", "school", &["school:s9"], 3600);
    expect(
        &rules,
        "school:s9:teachers",
        "school-parts",
        &["school:s9"],
        3600,
    );
}

#[test]
fn other_keys_match_no_rule() {
    let rules = example_rules();
    for key in [
        &b"greeting"[..],
        b"",
        b"sessions:teacher:",
        b"sessions:teacher:1:2",
        b"session:",
        b"user:u1",
        b"user:u1:profile:x",
        b"roster:s9",
        b"lock:session:1",
        b"\xff\xfe",
    ] {
        assert_eq!(lookup(&rules, key), None, "{}", key.escape_ascii());
    }
}

#[test]
fn captured_bytes_need_not_be_utf8() {
    let rules = example_rules();
    let m = rules
        .match_key(b"sessions:teacher:\xff\x00 *{?}")
        .expect("match");
    assert_eq!(m.tags[0].as_ref(), b"teacher:\xff\x00 *{?}");
}

#[test]
fn cache_default_ttl_reaches_rules_without_a_ttl() {
    let text = "[ttl]\ndefault = 30\n[[rules]]\npattern = \"tmp:*\"\n";
    let mut config = Config::from_toml(text, "inline").expect("valid");
    let rules = Rules::compile(&config.ttl, &config.rules).expect("valid");
    assert_eq!(rules.match_key(b"tmp:1").expect("match").ttl_secs, 30);
    config
        .apply_env(|name| (name == "CACHE_DEFAULT_TTL").then(|| "45".into()))
        .expect("valid");
    let rules = Rules::compile(&config.ttl, &config.rules).expect("valid");
    assert_eq!(rules.match_key(b"tmp:1").expect("match").ttl_secs, 45);
}
