//! Whole-config tests: defaults, parse errors with their places, masked secrets, environment
//! overrides. Rule errors, found by validation, are tested with it in `crate::app`.

use std::time::Duration;

use super::*;

#[test]
fn defaults_match_the_documented_ones() {
    let config = Config::default();
    assert_eq!(config.proxy.listen.to_string(), "127.0.0.1:6380");
    assert_eq!(config.upstream.url.address(), "127.0.0.1:6379");
    assert_eq!(config.proxy.max_bulk_len, 512 * 1024 * 1024);
}

#[test]
fn unknown_keys_are_errors_with_a_line_number() {
    let err = Config::from_toml("[proxy]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("listne"), "{err}");
}

#[test]
fn bad_values_are_reported_where_they_are() {
    let err = Config::from_toml("[upstream]\n\nurl = \"http://x\"\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("scheme"), "{err}");
    let err = Config::from_toml("[upstream]\npool_size = 0\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn secrets_never_print() {
    let mut config =
        Config::from_toml("[upstream]\nurl = \"redis://app:hunter2@db:6390/2\"\n", "x").unwrap();
    config
        .apply_env(|name| (name == "REDIS_PASSWORD").then(|| "s3cret".to_owned()))
        .unwrap();
    let printed = format!("{config:?} {}", config.upstream.url);
    assert!(
        !printed.contains("hunter2") && !printed.contains("s3cret"),
        "{printed}"
    );
    let (user, password) = config.upstream.credentials().unwrap();
    assert_eq!((user.as_str(), password.expose()), ("app", "s3cret"));
    assert_eq!(config.upstream.url.db, 2);
}

/// Every way a secret's line can be wrong, with the secret in it.
const BROKEN_SECRETS: &[(&str, &str)] = &[
    ("[upstream]\npassword = [\"Zq8Xw3Kp\"]\n", "Zq8Xw3Kp"),
    ("[upstream]\npassword = \"Zq8Xw3Kp\n", "Zq8Xw3Kp"),
    ("[upstream]\npassword = 'Zq8Xw3Kp\n", "Zq8Xw3Kp"),
    ("[upstream]\npassword = \"\"\"Zq8Xw3Kp", "Zq8Xw3Kp"),
    (
        "[upstream]\npassword = [\n  \"Zq8Xw3Kp\",\n  3,\n]\n",
        "Zq8Xw3Kp",
    ),
    ("[upstream]\npassword \"Zq8Xw3Kp\"\n", "Zq8Xw3Kp"),
    (
        "[upstream]\npassword = \"Zq8Xw3Kp\"\npassword = \"Zq8Xw3Kq\"\n",
        "Zq8Xw3K",
    ),
    ("[upstream]\npasword = \"Zq8Xw3Kp\"\n", "Zq8Xw3Kp"),
    ("[upstream]\n'password' = 'Zq8Xw3Kp' 'x'\n", "Zq8Xw3Kp"),
    (
        "upstream = { url = \"redis://x\", password = 8675309.5 }\n",
        "8675309",
    ),
    ("upstream.password = 8675309\n", "8675309"),
    ("[admin]\ntoken = 8675309\n", "8675309"),
    ("[admin]\ntoken = { v = \"Zq8Xw3Kp\" }\n", "Zq8Xw3Kp"),
    (
        "[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db:99999\"\n",
        "Zq8Xw3Kp",
    ),
    (
        "[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db/x\"\n",
        "Zq8Xw3Kp",
    ),
    (
        "[upstream]\nurl = \"redis://:Zq8Xw3Kp@db\", 3\n",
        "Zq8Xw3Kp",
    ),
    ("[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db", "Zq8Xw3Kp"),
    (
        "[warmers.w]\nhttp = \"http://u:Zq8Xw3Kp@h/x\"\n",
        "Zq8Xw3Kp",
    ),
];

#[test]
fn a_broken_secret_prints_masked_where_the_error_is_shown() {
    for (text, secret) in BROKEN_SECRETS {
        let shown = Config::from_toml(text, "x.toml").unwrap_err().to_string();
        assert!(!shown.contains(secret), "{text:?} printed\n{shown}");
        assert!(shown.contains("****"), "{text:?} printed\n{shown}");
        assert!(shown.contains("error at line"), "{text:?} printed\n{shown}");
    }
    let shown = RedisUrl::parse("redis://u:Zq8Xw3Kp@h:99999").unwrap_err();
    assert_eq!(
        shown,
        "invalid upstream url \"redis://u:****@h:99999\": invalid port number"
    );
    let shown = RedisUrl::parse(":Zq8Xw3Kp@h").unwrap_err();
    assert!(
        shown.contains(":****@h") && !shown.contains("Zq8"),
        "{shown}"
    );
}

/// A config with secrets in every place they can be, cut short at every character, and
/// with every character deleted or replaced in turn: no error shows three characters of
/// a secret in a row, and rendering an error never panics.
#[test]
fn no_damage_to_a_config_shows_its_secrets() {
    let text = "# caf\u{e9}\u{3000}\n[upstream]\n\
                url = \"redis://app:Zq8Xw3Kp@db:6390/2\"\n\
                password = \"Zq8Xw3Kp\"\n\
                [admin]\n\
                token = 'Zq8Xw3Kp' # \u{e9}t\u{e9}\n";
    Config::from_toml(text, "x").expect("the whole config is valid");
    let windows: Vec<&str> = (0..6).map(|i| &"Zq8Xw3Kp"[i..i + 3]).collect();
    let mut damaged = Vec::new();
    for (n, c) in text.char_indices() {
        let (before, after) = (&text[..n], &text[n + c.len_utf8()..]);
        damaged.push(before.to_owned());
        damaged.push(format!("{before}{after}"));
        for other in ["\"", "'", "=", "\n", "[", "\u{3000}"] {
            damaged.push(format!("{before}{other}{after}"));
        }
    }
    let mut errors = 0;
    for text in &damaged {
        let Err(error) = Config::from_toml(text, "x") else {
            continue;
        };
        errors += 1;
        let shown = error.to_string();
        for window in &windows {
            assert!(!shown.contains(window), "{text:?} printed\n{shown}");
        }
    }
    assert!(
        errors > 500,
        "only {errors} damaged configs failed to parse"
    );
}

/// Finding the secrets walks the text a bounded number of times: a broken 600 KB line
/// full of `=`, `@` and `://` is rendered at once, not in quadratic time.
#[test]
fn masking_a_huge_broken_line_takes_linear_time() {
    let text = format!("token = 1 {}\n", "a=b@c://d:e/ ".repeat(50_000));
    let began = std::time::Instant::now();
    let shown = Config::from_toml(&text, "x").unwrap_err().to_string();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert!(
        shown.contains("line 1") && !shown.contains("d:e"),
        "{}",
        &shown[..200]
    );
}

#[test]
fn errors_away_from_secrets_keep_their_excerpt() {
    let shown = Config::from_toml(
        "[upstream]\npassword = \"pw\"\n[proxy]\nlisten = \"nowhere\"\n",
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        shown.contains("4 | listen = \"nowhere\"\n  |          ^^^^^^^^^\n"),
        "{shown}"
    );
}

#[test]
fn a_database_past_255_is_refused_where_it_is_written() {
    assert_eq!(RedisUrl::parse("redis://h/255").unwrap().db, 255);
    for url in ["redis://h/256", "redis://h/4294967295"] {
        let err = RedisUrl::parse(url).unwrap_err();
        assert!(
            err.contains("out of range") && err.contains("0 to 255"),
            "{err}"
        );
    }
    let err = Config::from_toml("[upstream]\nurl = \"redis://h:6379/300\"\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("database 300 is out of range"),
        "{err}"
    );
}

#[test]
fn env_overrides_the_file() {
    let mut config = Config::from_toml("[upstream]\nurl = \"redis://a:1\"\n", "x").unwrap();
    config
        .apply_env(|name| match name {
            "REDIS_HOST" => Some("b".into()),
            "REDIS_PORT" => Some("2".into()),
            "CACHET_LISTEN" => Some("0.0.0.0:7000".into()),
            _ => None,
        })
        .unwrap();
    assert_eq!(config.upstream.url.address(), "b:2");
    assert_eq!(config.proxy.listen.to_string(), "0.0.0.0:7000");
    let err = config
        .apply_env(|name| (name == "REDIS_PORT").then(|| "http".into()))
        .unwrap_err();
    assert!(err.to_string().contains("REDIS_PORT"));
}

#[test]
fn cache_default_ttl_overrides_the_default_class() {
    let mut config = Config::from_toml("[ttl]\ndefault = 10\nshort = 5\n", "x").unwrap();
    assert_eq!(config.ttl.default_secs(), 10);
    config
        .apply_env(|name| (name == "CACHE_DEFAULT_TTL").then(|| "600".into()))
        .unwrap();
    assert_eq!(config.ttl.default_secs(), 600);
    assert_eq!(config.ttl.get("short"), Some(5));
    for bad in ["0", "-1", "5m", "4294967296"] {
        let err = config
            .apply_env(|name| (name == "CACHE_DEFAULT_TTL").then(|| bad.into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CACHE_DEFAULT_TTL"), "{err}");
    }
    assert_eq!(Config::default().ttl.default_secs(), DEFAULT_TTL_SECS);
}

#[test]
fn ttl_values_are_checked_where_they_are() {
    let err = Config::from_toml("[ttl]\nshort = 5\nnone = 0\n", "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("from 1 to"), "{err}");
    let err = Config::from_toml("[[rules]]\npattern = \"a\"\nttl = 1.5\n", "x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 3") && err.contains("a TTL class name or a number of seconds"),
        "{err}"
    );
    let err = Config::from_toml("[[rules]]\npattern = \"a\"\nttl = -3\n", "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("not -3"), "{err}");
    let err = Config::from_toml("[[rules]]\npattern = \"a\"\npatern = \"b\"\n", "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3") && err.contains("patern"), "{err}");
}
