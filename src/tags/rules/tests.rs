//! Unit tests of [`super::Rules`]: the first matching rule wins with its tags and TTL, tags
//! that name their key, file order, and every problem `Rules::compile` reports (unknown TTL
//! classes, missing captures, bad patterns, shadowed rules, rule names).

use super::*;
use crate::config::Config;

fn rules(toml: &str) -> Rules {
    let config = Config::from_toml(toml, "test").unwrap_or_else(|e| panic!("{e}"));
    Rules::compile(&config.ttl, &config.rules).expect("validated by from_toml")
}

/// Compiles without `Config`'s own validation, to see the raw errors.
fn errors(toml: &str) -> Vec<RuleError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        ttl: TtlConfig,
        rules: Vec<RuleConfig>,
    }
    let doc: Doc = toml::from_str(toml).unwrap();
    Rules::compile(&doc.ttl, &doc.rules).unwrap_err()
}

fn tags<'m>(m: &'m Match<'_>) -> Vec<&'m [u8]> {
    m.tags.iter().map(|t| t.as_ref()).collect()
}

#[test]
fn first_matching_rule_wins_with_its_tags_and_ttl() {
    let rules = rules(
        r#"
            [ttl]
            session-list = 300
            session-detail = 900
            [[rules]]
            pattern = "sessions:teacher:{teacher}"
            tags = ["teacher:{teacher}", "sessions"]
            ttl = "session-list"
            [[rules]]
            name = "detail"
            pattern = "session:{id}:*"
            tags = ["session:{id}"]
            ttl = "session-detail"
            [[rules]]
            pattern = "*:{last}"
            tags = ["last:{last}"]
            ttl = 42
            [[rules]]
            pattern = "plain"
            "#,
    );
    assert_eq!(rules.len(), 4);
    let m = rules.match_key(b"sessions:teacher:123").unwrap();
    assert_eq!((m.rule, m.name), (0, "sessions:teacher:{teacher}"));
    assert_eq!(tags(&m), [&b"teacher:123"[..], b"sessions"]);
    assert_eq!(m.ttl_secs, 300);

    let m = rules.match_key(b"session:9:detail").unwrap();
    assert_eq!((m.rule, m.name, m.ttl_secs), (1, "detail", 900));
    assert_eq!(tags(&m), [&b"session:9"[..]]);

    let m = rules.match_key(b"x:y:z").unwrap();
    assert_eq!((m.rule, m.ttl_secs), (2, 42));
    assert_eq!(tags(&m), [&b"last:z"[..]]);
    // An unprefixed rule after prefixed ones still loses to them.
    assert_eq!(rules.match_key(b"session:9:x").unwrap().rule, 1);

    let m = rules.match_key(b"plain").unwrap();
    assert_eq!((m.rule, m.ttl_secs), (3, 300), "no ttl: the default class");
    assert!(m.tags.is_empty());

    assert_eq!(rules.match_key(b"session"), None);
    assert_eq!(rules.match_key(b""), None);
    assert_eq!(rules.match_key(b"unrelated"), None);
}

#[test]
fn tags_that_name_their_key_read_back_into_it() {
    let rules = rules(
        r#"
            [[rules]]
            pattern = "sessions:teacher:{teacher}"
            tags = ["teacher:{teacher}", "sessions"]
            [[rules]]
            pattern = "roster:{school}:{session}"
            tags = ["roster:{school}:{session}", "school:{school}", "s:{session}:of:{school}"]
            [[rules]]
            pattern = "session:{id}:*"
            tags = ["session:{id}"]
            [[rules]]
            pattern = "session:{id}"
            tags = ["session:{id}", "x{id}-", "{id}{id}"]
            [[rules]]
            pattern = "profile"
            tags = ["the-profile"]
            [[rules]]
            pattern = "user:{id}"
            tags = ["teacher:{id}"]
            "#,
    );
    let m = rules.match_key(b"sessions:teacher:12").unwrap();
    assert_eq!((m.is_named(0), m.is_named(1)), (true, false));
    assert_eq!(
        m.indexed_tags().collect::<Vec<_>>(),
        [&Bytes::from("sessions")]
    );
    let m = rules.match_key(b"roster:7:42").unwrap();
    assert_eq!(m.named, 0b101, "a tag must hold every capture");
    assert_eq!(
        rules.match_key(b"session:9:x").unwrap().named,
        0,
        "a `*` names nothing"
    );
    let m = rules.match_key(b"session:9").unwrap();
    assert_eq!(m.named, 0b001, "captures must end at `:` or the end");
    assert_eq!(rules.match_key(b"profile").unwrap().named, 1);

    // A write that only indexes gets the same rule with just the tags to index.
    for key in [
        &b"sessions:teacher:12"[..],
        b"roster:7:42",
        b"session:9:x",
        b"session:9",
        b"profile",
        b"user:3",
        b"nothing:here",
    ] {
        let full = rules.match_key(key);
        let lean = rules.match_indexed(key);
        assert_eq!(
            lean.as_ref()
                .map(|m| (m.rule, m.ttl_secs, m.tags.clone(), m.named)),
            full.as_ref().map(|m| {
                let tags = m.indexed_tags().cloned().collect::<Vec<_>>();
                (m.rule, m.ttl_secs, tags, 0)
            }),
            "{}",
            key.escape_ascii()
        );
    }

    let named = |tag: &[u8]| rules.keys_named_by(tag);
    assert_eq!(named(b"roster:7:42"), [Bytes::from("roster:7:42")]);
    assert_eq!(named(b"s:42:of:7"), [Bytes::from("roster:7:42")]);
    assert_eq!(named(b"session:9"), [Bytes::from("session:9")]);
    assert_eq!(named(b"the-profile"), [Bytes::from("profile")]);
    // Two rules give `teacher:12` as a naming tag: both keys carry it.
    assert_eq!(
        named(b"teacher:12"),
        [Bytes::from("sessions:teacher:12"), Bytes::from("user:12")]
    );
    for tag in [
        &b"teacher:"[..],
        b"teacher:1:2",
        b"sessions",
        b"school:7",
        b"session:9:x",
        b"roster:7",
        b"s:42:of:",
    ] {
        assert_eq!(named(tag), Vec::<Bytes>::new(), "{}", tag.escape_ascii());
    }
}

#[test]
fn every_key_carrying_a_naming_tag_is_found_from_it() {
    // Random keys over a small alphabet: whenever a key's rule gives it a naming tag,
    // reading that tag back finds the key, and only keys that carry it.
    let rules = rules(
        r#"
            [[rules]]
            pattern = "a:{x}"
            tags = ["t:{x}", "a"]
            [[rules]]
            pattern = "{x}:b:{y}"
            tags = ["t:{x}:{y}", "u:{y}:{x}", "t:{x}"]
            [[rules]]
            pattern = "{x}"
            tags = ["t:{x}"]
            "#,
    );
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..5_000 {
        let key: Vec<u8> = (0..rng.usize(0..7))
            .map(|_| *rng.choice(b"ab:t\xff").unwrap())
            .collect();
        let Some(m) = rules.match_key(&key) else {
            continue;
        };
        for (j, tag) in m.tags.iter().enumerate() {
            let found = rules.keys_named_by(tag);
            if m.is_named(j) {
                assert!(
                    found.iter().any(|k| k[..] == key[..]),
                    "{key:?} from {tag:?}"
                );
            }
            for k in found {
                let carries = rules.match_key(&k).is_some_and(|m| m.tags.contains(tag));
                assert!(carries, "{k:?} does not carry {tag:?}");
            }
        }
    }
}

#[test]
fn tags_are_exactly_the_bytes_written() {
    let rules = rules(
        r#"
            [[rules]]
            pattern = 'k:{a}:{b}'
            tags = ['{a}', '[{b}] ? * {a}{b}', '\{{a}\}', 'x\*\\', ' ', '{b}{a}{b}']
            "#,
    );
    let key = b"k:\xff\x00 {?}*[]:b b";
    let m = rules.match_key(key).unwrap();
    assert_eq!(
        tags(&m),
        [
            &b"\xff\x00 {?}*[]"[..],
            b"[b b] ? * \xff\x00 {?}*[]b b",
            b"{\xff\x00 {?}*[]}",
            b"x*\\",
            b" ",
            b"b b\xff\x00 {?}*[]b b",
        ]
    );
}

#[test]
fn the_index_tries_rules_in_file_order() {
    // Every key matches the same rule as trying all rules in order would.
    let rules = rules(
        r#"
            [[rules]]
            pattern = "a:{x}"
            [[rules]]
            pattern = "*:b"
            [[rules]]
            pattern = "a:*"
            [[rules]]
            pattern = "{y}-x"
            [[rules]]
            pattern = "b*"
            [[rules]]
            pattern = "*"
            "#,
    );
    let mut rng = fastrand::Rng::with_seed(3);
    let mut spans = Vec::new();
    for _ in 0..5_000 {
        let key: Vec<u8> = (0..rng.usize(0..6))
            .map(|_| *rng.choice(b"ab:-x\xff").unwrap())
            .collect();
        let expected = rules
            .rules
            .iter()
            .position(|r| r.pattern.captures(&key, &mut spans));
        assert_eq!(rules.match_key(&key).map(|m| m.rule), expected, "{key:?}");
    }
}

#[test]
fn unknown_ttl_class() {
    let errs = errors("[ttl]\nshort = 5\n[[rules]]\npattern = \"a\"\nttl = \"long\"\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].message.contains("unknown TTL class \"long\"")
            && errs[0].message.contains("default, short"),
        "{errs:?}"
    );
    let errs = errors("[[rules]]\npattern = \"a\"\nttl = \"60\"\n");
    assert!(errs[0].message.contains("ttl = 60, unquoted"), "{errs:?}");
}

#[test]
fn tag_with_a_capture_the_pattern_lacks() {
    let doc = "[[rules]]\npattern = \"t:{teacher}\"\ntags = [\"ok:{teacher}\", \"t:{id}\"]\n";
    let errs = errors(doc);
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert!(
        e.message
            .contains("uses capture `{id}`, which pattern `t:{teacher}` does not have")
            && e.message.contains("(it has {teacher})"),
        "{e:?}"
    );
    assert_eq!(&doc[e.span.clone()], "\"t:{id}\"");
    assert_eq!(e.within, Some(2..6));
}

#[test]
fn bad_patterns_and_templates_are_all_reported() {
    let errs = errors(
        r#"
            [[rules]]
            pattern = "a:{x"
            tags = ["{y}"]
            [[rules]]
            pattern = "b:{x}:{x}"
            [[rules]]
            pattern = "c:{}"
            [[rules]]
            pattern = "d:{x}"
            tags = ["d}", ""]
            [[rules]]
            pattern = "e:{a}{b}"
            "#,
    );
    let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 6, "{messages:#?}");
    assert!(messages[0].contains("unclosed `{`"));
    assert!(messages[1].contains("duplicate capture name `{x}`"));
    assert!(messages[2].contains("empty capture name"));
    assert!(messages[3].contains("unmatched `}`"));
    assert!(messages[4].contains("empty tag"));
    assert!(
        messages[5].contains("pattern `e:{a}{b}` is ambiguous: the key \"e:"),
        "{messages:#?}"
    );
}

#[test]
fn shadowed_rules() {
    let doc = r#"
            [[rules]]
            pattern = "session:{id}:*"
            [[rules]]
            pattern = "session:{id}:analytics"
            "#;
    let errs = errors(doc);
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert!(
        e.message.contains(
            "rule `session:{id}:analytics` can never match: every key it matches is \
                 matched first by the earlier rule `session:{id}:*`"
        ),
        "{e:?}"
    );
    assert_eq!(&doc[e.span.clone()], "\"session:{id}:analytics\"");
    assert_eq!(&doc[e.notes[0].0.clone()], "\"session:{id}:*\"");

    let errs = errors(
        r#"
            [[rules]]
            name = "one"
            pattern = "k:{x}"
            [[rules]]
            name = "deeper"
            pattern = "k:{x}:*"
            [[rules]]
            name = "empty"
            pattern = "k::*"
            [[rules]]
            name = "any"
            pattern = "k:*:*"
            "#,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
            errs[0]
                .message
                .contains("`any` can never match: every key it matches is matched first by the earlier rules `deeper`, `empty`"),
            "{errs:?}"
        );
    assert_eq!(errs[0].notes.len(), 2);
}

#[test]
fn overlapping_rules_in_a_sensible_order_are_fine() {
    rules(
        r#"
            [[rules]]
            pattern = "session:{id}:analytics"
            [[rules]]
            pattern = "session:{id}"
            [[rules]]
            pattern = "session:{id}:*"
            [[rules]]
            pattern = "session:*"
            [[rules]]
            pattern = "*:{last}"
            [[rules]]
            pattern = "*"
            "#,
    );
}

#[test]
fn rule_names_are_unique_and_not_empty() {
    let doc = "[[rules]]\nname = \"x\"\npattern = \"a\"\n[[rules]]\nname = \"x\"\npattern = \"b\"\n[[rules]]\nname = \"\"\npattern = \"c\"\n";
    let errs = errors(doc);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].message.contains("rule name `x` is already used"));
    assert_eq!(
        errs[0].span.start,
        doc.find("name = \"x\"\npattern = \"b\"").unwrap() + 7
    );
    assert_eq!(errs[1].message, "empty rule name");
    // An explicit name equal to another rule's pattern clashes too.
    let errs = errors("[[rules]]\npattern = \"a\"\n[[rules]]\nname = \"a\"\npattern = \"b\"\n");
    assert!(errs[0].message.contains("rule name `a`"), "{errs:?}");
}
