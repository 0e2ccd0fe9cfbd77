//! Unit tests of key patterns: captures and `*`, keys as bytes, syntax errors and where they
//! are, ambiguity, coverage and overlap (checked against brute force), and matching in linear
//! time.

use super::*;

fn pattern(src: &str) -> Pattern {
    Pattern::parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"))
}

/// The captured bytes, or `None` for no match.
fn run(p: &Pattern, key: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut spans = Vec::new();
    p.captures(key, &mut spans)
        .then(|| spans.iter().map(|s| key[s.clone()].to_vec()).collect())
}

fn caps(list: &[&str]) -> Option<Vec<Vec<u8>>> {
    Some(list.iter().map(|s| s.as_bytes().to_vec()).collect())
}

#[test]
fn captures_take_one_segment() {
    let p = pattern("sessions:teacher:{teacher}");
    assert!(p.segments.is_some());
    assert_eq!(run(&p, b"sessions:teacher:123"), caps(&["123"]));
    assert_eq!(run(&p, b"sessions:teacher:"), None);
    assert_eq!(run(&p, b"sessions:teacher:1:2"), None);
    assert_eq!(run(&p, b"sessions:teacher"), None);
    assert_eq!(run(&p, b"sessions:teachers:1"), None);

    let p = pattern("roster:{school}:{session}");
    assert_eq!(run(&p, b"roster:s1:x"), caps(&["s1", "x"]));
    assert_eq!(run(&p, b"roster:s1:"), None);
    assert_eq!(run(&p, b"roster::x"), None);
}

#[test]
fn star_matches_any_run_including_colons_and_nothing() {
    let p = pattern("session:{id}:*");
    assert!(p.segments.is_some());
    assert_eq!(run(&p, b"session:7:"), caps(&["7"]));
    assert_eq!(run(&p, b"session:7:a:b:c"), caps(&["7"]));
    assert_eq!(run(&p, b"session:7"), None);

    let p = pattern("tenant:*:user:{id}");
    assert!(p.segments.is_none());
    assert_eq!(run(&p, b"tenant:a:b:user:5"), caps(&["5"]));
    assert_eq!(run(&p, b"tenant::user:5"), caps(&["5"]));
    assert_eq!(run(&p, b"tenant:user:5"), None);
    assert_eq!(run(&p, b"tenant:a:user:b:user:c"), caps(&["c"]));

    let p = pattern("*");
    assert_eq!(run(&p, b""), caps(&[]));
    assert_eq!(run(&p, b"anything:at:all"), caps(&[]));

    let p = pattern("*:{last}");
    assert_eq!(run(&p, b"a:b:c"), caps(&["c"]));
    assert_eq!(run(&p, b":c"), caps(&["c"]));
}

#[test]
fn captures_may_end_inside_a_segment() {
    let p = pattern("file:{name}.json");
    assert!(p.segments.is_none());
    assert_eq!(run(&p, b"file:a.b.json"), caps(&["a.b"]));
    assert_eq!(run(&p, b"file:.json"), None);
    assert_eq!(run(&p, b"file:a:b.json"), None);
    assert_eq!(p.ambiguity(), Search::Exhausted);
}

#[test]
fn keys_are_bytes() {
    let p = pattern("bin:{id}:*");
    let key = b"bin:\xff\x00\xfe:\x80";
    assert_eq!(run(&p, key), Some(vec![b"\xff\x00\xfe".to_vec()]));
    let p = pattern("*{x}\\*");
    assert_eq!(p.atoms.last(), Some(&Atom::Byte(b'*')));
}

#[test]
fn glob_characters_of_redis_are_literal() {
    let p = pattern("a?[b] {c}");
    assert_eq!(run(&p, b"a?[b] x"), caps(&["x"]));
    assert_eq!(run(&p, b"aX[b] x"), None);
    assert_eq!(run(&p, b"a?b x"), None);
    let p = pattern(r"h:\{{user}\}:\*\\");
    assert_eq!(run(&p, br"h:{42}:*\"), caps(&["42"]));
    assert_eq!(run(&p, br"h:{42}:x\"), None);
    let p = pattern("é:{x}");
    assert_eq!(run(&p, "é:ü".as_bytes()), caps(&["ü"]));
}

#[test]
fn syntax_errors_say_where() {
    let cases: &[(&str, &str, Range<usize>)] = &[
        ("a:{b", "unclosed `{`", 2..4),
        ("a:{b{c}", "unclosed `{`", 2..4),
        ("a:b}", "unmatched `}`", 3..4),
        ("a:{}", "empty capture name", 2..4),
        ("{a}:{a}", "duplicate capture name `{a}`", 4..7),
        ("{a b}", "may only contain", 0..5),
        ("a\\n", "unknown escape `\\n`", 1..3),
        ("a\\é", "unknown escape `\\é`", 1..4),
        ("a\\", "lone `\\`", 1..2),
        ("", "empty pattern", 0..0),
    ];
    for (src, message, at) in cases {
        let err = Pattern::parse(src).unwrap_err();
        assert!(err.message.contains(message), "{src}: {err:?}");
        assert_eq!(&err.at, at, "{src}: {err:?}");
    }
}

#[test]
fn ambiguous_patterns_come_with_a_key() {
    for src in ["{a}{b}", "{a}-{b}", "*{a}", "{a}*", "x:*-{id}", "{a}*{b}"] {
        let p = pattern(src);
        let Search::Found(key) = p.ambiguity() else {
            panic!("{src} not found ambiguous");
        };
        assert!(
            brute_captures(&p, &key).len() >= 2,
            "{src}: {key:?} is not ambiguous"
        );
    }
    for src in [
        "sessions:teacher:{t}",
        "{a}:{b}",
        "{a}:*",
        "*:{a}",
        "*",
        "**",
        "*:*",
        "tenant:*:user:*",
        "{a}.json",
        "x-{a}",
    ] {
        assert_eq!(pattern(src).ambiguity(), Search::Exhausted, "{src}");
    }
}

#[test]
fn coverage() {
    let covered = |a: &[&str], b: &str| {
        let a: Vec<Pattern> = a.iter().map(|s| pattern(s)).collect();
        let a: Vec<&Pattern> = a.iter().collect();
        let b = pattern(b);
        match uncovered(&a, &b) {
            Search::Exhausted => true,
            Search::Found(key) => {
                assert!(run(&b, &key).is_some() && a.iter().all(|p| run(p, &key).is_none()));
                false
            }
            Search::GaveUp => panic!("gave up"),
        }
    };
    // Must be reported as shadowed.
    assert!(covered(&["session:{id}"], "session:{id}"));
    assert!(covered(&["session:{a}"], "session:{b}"));
    assert!(covered(&["session:*"], "session:{id}:detail"));
    assert!(covered(&["*"], "anything"));
    assert!(covered(&["session:{id}:*"], "session:{id}:analytics"));
    assert!(covered(&["*:*"], "{a}:{b}"));
    assert!(covered(&["{a}:*"], "x:{b}:*"));
    assert!(covered(&["*:{a}"], "x:{b}:{c}"));
    assert!(covered(&["{a}"], "x{b}"));
    assert!(covered(&["{a}", "{a}:*"], "x*"), "together");
    assert!(!covered(&["{a}", "{a}:*"], "*"), "the empty key, `:`");
    assert!(covered(&["k:{x}", "k::*", "k:{x}:*"], "k:*:*"), "together");
    // Must not.
    assert!(
        !covered(&["session:{id}"], "session:*"),
        "empty and `:` runs"
    );
    assert!(!covered(&["session:{id}:detail"], "session:{id}"));
    assert!(!covered(&["session:{id}:*"], "session:{id}"));
    assert!(!covered(&["{a}:{b}"], "*:*"));
    assert!(!covered(&["x{b}"], "{a}"));
    assert!(!covered(&["k:{x}", "k:{x}:*"], "k:*"), "`k:` itself");
    assert!(!covered(&["a*"], "*a"));
    assert!(!covered(&["user:{u}:profile"], "user:{u}:permissions"));
    assert!(!covered(&["sessions:teacher:{t}"], "sessions:{kind}:{id}"));
}

#[test]
fn overlap() {
    let both = |a: &str, b: &str| overlaps(&pattern(a), &pattern(b));
    assert!(both("session:{id}", "session:*"));
    assert!(both("*a", "a*"));
    assert!(both("{a}:x", "y:{b}"));
    assert!(!both("session:{id}", "sessions:*"));
    assert!(!both("{a}", "*:*"));
    assert!(!both("x:{a}", "x:{a}:y"));
}

// Randomised cross-checks against a brute-force reference, over patterns and keys built
// from a few bytes that exercise every distinction the language makes.

/// Every set of captures with which `key` matches, by trying every split.
fn brute_captures(p: &Pattern, key: &[u8]) -> HashSet<Vec<Range<usize>>> {
    fn go(
        atoms: &[Atom],
        key: &[u8],
        pos: usize,
        spans: &mut Vec<Range<usize>>,
        out: &mut HashSet<Vec<Range<usize>>>,
    ) {
        let Some((&atom, rest)) = atoms.split_first() else {
            if pos == key.len() {
                out.insert(spans.clone());
            }
            return;
        };
        match atom {
            Atom::Byte(b) => {
                if key.get(pos) == Some(&b) {
                    go(rest, key, pos + 1, spans, out);
                }
            }
            Atom::CaptureFirst(_) => {
                let run = key[pos..].iter().take_while(|&&b| b != b':').count();
                // `rest` starts with the CaptureRest atom this replaces.
                for len in 1..=run {
                    spans.push(pos..pos + len);
                    go(&rest[1..], key, pos + len, spans, out);
                    spans.pop();
                }
            }
            Atom::Any => {
                for end in pos..=key.len() {
                    go(rest, key, end, spans, out);
                }
            }
            Atom::CaptureRest(_) => unreachable!("consumed with its CaptureFirst"),
        }
    }
    let mut out = HashSet::new();
    go(&p.atoms, key, 0, &mut Vec::new(), &mut out);
    out
}

fn random_pattern(rng: &mut fastrand::Rng) -> String {
    let mut src = String::new();
    for n in 0..rng.usize(1..=5) {
        match rng.usize(0..7) {
            0 | 1 => src.push(':'),
            2 => src.push('a'),
            3 => src.push('-'),
            4 => src.push_str(r"\*"),
            5 => src.push('*'),
            _ => src.push_str(&format!("{{c{n}}}")),
        }
    }
    src
}

/// Every key up to `max` bytes over `:`, `a`, `-`, `*` and a byte no pattern names.
fn all_keys(max: usize) -> Vec<Vec<u8>> {
    let alphabet = [b':', b'a', b'-', b'*', 0xff];
    let mut keys = vec![Vec::new()];
    let mut last = vec![Vec::new()];
    for _ in 0..max {
        last = last
            .iter()
            .flat_map(|k: &Vec<u8>| {
                alphabet.iter().map(move |&b| {
                    let mut k = k.clone();
                    k.push(b);
                    k
                })
            })
            .collect();
        keys.extend(last.iter().cloned());
    }
    keys
}

#[test]
fn matching_and_ambiguity_agree_with_brute_force() {
    let mut rng = fastrand::Rng::with_seed(7);
    let keys = all_keys(5);
    for _ in 0..300 {
        let src = random_pattern(&mut rng);
        let p = pattern(&src);
        let ambiguity = p.ambiguity();
        let mut spans = Vec::new();
        for key in &keys {
            let all = brute_captures(&p, key);
            let matched = p.captures(key, &mut spans);
            assert_eq!(matched, !all.is_empty(), "{src} on {key:?}");
            if all.len() > 1 {
                assert!(
                    matches!(ambiguity, Search::Found(_)),
                    "{src} splits {key:?} {all:?} but was found unambiguous"
                );
            } else if matched {
                assert!(
                    all.contains(&spans),
                    "{src} on {key:?}: {spans:?} vs {all:?}"
                );
            }
        }
        if let Search::Found(key) = &ambiguity {
            assert!(brute_captures(&p, key).len() > 1, "{src}: {key:?}");
        }
        if p.segments.is_some() {
            // The one-pass matcher and the NFA must agree wherever the former applies.
            for key in &keys {
                let mut pike = Vec::new();
                let by_pike = p.pike(key, &mut pike);
                assert_eq!(p.captures(key, &mut spans), by_pike, "{src} on {key:?}");
                if by_pike {
                    assert_eq!(spans, pike, "{src} on {key:?}");
                }
            }
        }
    }
}

#[test]
fn coverage_and_overlap_agree_with_brute_force() {
    let mut rng = fastrand::Rng::with_seed(11);
    let keys = all_keys(5);
    let mut spans = Vec::new();
    for _ in 0..400 {
        let earlier: Vec<Pattern> = (0..rng.usize(1..=2))
            .map(|_| pattern(&random_pattern(&mut rng)))
            .collect();
        let earlier: Vec<&Pattern> = earlier.iter().collect();
        let later = pattern(&random_pattern(&mut rng));
        let matched_by_earlier = |key: &[u8], spans: &mut Vec<Range<usize>>| {
            earlier.iter().any(|p| p.captures(key, spans))
        };
        match uncovered(&earlier, &later) {
            Search::Found(key) => {
                assert!(later.captures(&key, &mut spans), "{later:?} on {key:?}");
                assert!(!matched_by_earlier(&key, &mut spans), "{key:?}");
            }
            Search::Exhausted => {
                for key in &keys {
                    assert!(
                        !later.captures(key, &mut spans) || matched_by_earlier(key, &mut spans),
                        "{later:?} said covered by {earlier:?}, but not {key:?}"
                    );
                }
            }
            Search::GaveUp => panic!("gave up on small patterns"),
        }
        let a = earlier[0];
        let shared = keys
            .iter()
            .any(|k| a.captures(k, &mut spans) && later.captures(k, &mut spans));
        if shared {
            assert!(overlaps(a, &later), "{a:?} and {later:?} share a key");
        }
    }
}

#[test]
fn long_keys_match_in_linear_time() {
    // A pattern that a backtracking matcher would take quadratic time or worse on.
    let p = pattern("*a*a*a*b*");
    let key = vec![b'a'; 200_000];
    let started = std::time::Instant::now();
    assert_eq!(run(&p, &key), None);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
