//! Key patterns: the small language `[[rules]]` use to pick keys, compiled for matching raw key
//! bytes, and the load-time analyses that `check-config` relies on (ambiguity, one set of
//! patterns covering another).
//!
//! # The language
//!
//! * a literal byte matches itself; `?`, `[`, `]`, spaces and non-ASCII text are literal too
//!   (unlike Redis's `KEYS` globs);
//! * `{name}` matches one or more bytes up to the next `:`, never the `:` itself, and captures
//!   them; a name is ASCII letters, digits, `_` and `-`, unique in its pattern;
//! * `*` matches any run of bytes, `:` included, possibly empty; it captures nothing;
//! * `\{`, `\}`, `\*` and `\\` are a literal `{`, `}`, `*` and `\`.
//!
//! As a regular language over bytes, `{name}` is `[^:]+` and `*` is `.*`. A pattern must not be
//! *ambiguous*: no key may match it with two different sets of captures (`{a}-{b}` against
//! `x-y-z`, or `*{id}`). [`Pattern::ambiguity`] finds such a key, so a rule's captures, and the
//! tags filled from them, are a function of the key alone, whatever the matching order.
//!
//! # Matching
//!
//! Every pattern first checks its literal prefix, literal suffix and minimum length, so a key
//! that is not even close costs a couple of comparisons. Patterns whose captures each end at a
//! `:` (or at the end of the pattern), with at most a trailing `*` (`session:{id}:*`, the usual
//! Redis key shape) then match in one forward pass. Any other pattern runs an NFA simulation
//! (a Pike VM) that is linear in the key length, so no key can make matching backtrack
//! exponentially.
//!
//! # Analysis
//!
//! Each pattern is also a small NFA with one state per *atom* (a step that consumes one byte).
//! Bytes that no pattern names literally all behave alike, so the automata run over one
//! representative byte per class, and a search over the product of automata decides ambiguity,
//! overlap and coverage exactly; each search stops after [`SEARCH_BUDGET`] states and then
//! answers "don't know", which callers treat as the harmless answer.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::ops::Range;

/// Most product states one analysis visits. Real patterns need a few hundred; the cap keeps
/// `check-config` fast on pathological ones (many `*` against many rules).
pub const SEARCH_BUDGET: usize = 1 << 16;

/// What is wrong in a pattern or tag template, and which bytes of its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub at: Range<usize>,
    pub message: String,
}

/// One lexical item of a pattern or a tag template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Byte(u8),
    Capture { name: String, at: Range<usize> },
    Star,
}

/// Splits `src` into tokens. In tag templates (`star_is_glob` false) `*` is an ordinary byte;
/// `\*` is accepted there too, so the same text means the same bytes in both places.
pub fn tokenize(src: &str, star_is_glob: bool) -> Result<Vec<Token>, SyntaxError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => match bytes.get(i + 1) {
                Some(&c @ (b'{' | b'}' | b'*' | b'\\')) => {
                    tokens.push(Token::Byte(c));
                    i += 2;
                }
                Some(_) => {
                    let end = i + 1 + src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    return Err(SyntaxError {
                        at: i..end,
                        message: format!(
                            "unknown escape `{}`: the escapes are \\{{ \\}} \\* and \\\\",
                            &src[i..end]
                        ),
                    });
                }
                None => {
                    return Err(SyntaxError {
                        at: i..i + 1,
                        message: "lone `\\` at the end: write `\\\\` for a backslash".into(),
                    });
                }
            },
            b'{' => {
                let close = bytes[i + 1..]
                    .iter()
                    .position(|&c| c == b'}' || c == b'{')
                    .map(|p| i + 1 + p);
                let Some(end) = close.filter(|&end| bytes[end] == b'}') else {
                    return Err(SyntaxError {
                        at: i..close.unwrap_or(bytes.len()),
                        message: "unclosed `{`: write `\\{` for a literal brace".into(),
                    });
                };
                let name = &src[i + 1..end];
                let at = i..end + 1;
                if name.is_empty() {
                    return Err(SyntaxError {
                        at,
                        message: "empty capture name `{}`: write `\\{\\}` for literal braces"
                            .into(),
                    });
                }
                if !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                {
                    return Err(SyntaxError {
                        at,
                        message: format!(
                            "capture name `{{{name}}}` may only contain ASCII letters, digits, \
                             `_` and `-`"
                        ),
                    });
                }
                tokens.push(Token::Capture {
                    name: name.to_owned(),
                    at,
                });
                i = end + 1;
            }
            b'}' => {
                return Err(SyntaxError {
                    at: i..i + 1,
                    message: "unmatched `}`: write `\\}` for a literal brace".into(),
                });
            }
            b'*' if star_is_glob => {
                tokens.push(Token::Star);
                i += 1;
            }
            c => {
                tokens.push(Token::Byte(c));
                i += 1;
            }
        }
    }
    Ok(tokens)
}

/// One NFA state's consuming step. A pattern is a sequence of atoms; configuration `c` means
/// "atoms before `c` are done".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Byte(u8),
    /// The first byte of capture `n`: anything but `:`.
    CaptureFirst(u32),
    /// More bytes of capture `n`: loops on anything but `:`, or is skipped.
    CaptureRest(u32),
    /// `*`: loops on any byte, or is skipped.
    Any,
}

impl Atom {
    fn accepts(self, byte: u8) -> bool {
        match self {
            Atom::Byte(b) => b == byte,
            Atom::CaptureFirst(_) | Atom::CaptureRest(_) => byte != b':',
            Atom::Any => true,
        }
    }

    /// Loops may consume nothing, so a configuration also stands at the atoms after a run of
    /// them.
    fn loops(self) -> bool {
        matches!(self, Atom::CaptureRest(_) | Atom::Any)
    }

    /// The capture a byte consumed by this atom belongs to: two runs over the same key with the
    /// same labels have the same captures.
    fn label(self) -> Option<u32> {
        match self {
            Atom::CaptureFirst(n) | Atom::CaptureRest(n) => Some(n),
            Atom::Byte(_) | Atom::Any => None,
        }
    }
}

/// The one-pass form of a pattern whose captures each end at a `:` or at the pattern's end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Vec<u8>),
    Capture,
    /// A trailing `*`: whatever is left.
    Rest,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    atoms: Vec<Atom>,
    names: Vec<String>,
    /// For each configuration `c`, the last atom it can consume with (`c` followed by loops);
    /// `atoms.len()` there means the configuration accepts.
    stop: Vec<usize>,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    min_len: usize,
    segments: Option<Vec<Segment>>,
}

impl Pattern {
    pub fn parse(src: &str) -> Result<Pattern, SyntaxError> {
        if src.is_empty() {
            return Err(SyntaxError {
                at: 0..0,
                message: "empty pattern".into(),
            });
        }
        let mut atoms = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for token in tokenize(src, true)? {
            match token {
                Token::Byte(b) => atoms.push(Atom::Byte(b)),
                Token::Star => atoms.push(Atom::Any),
                Token::Capture { name, at } => {
                    if names.contains(&name) {
                        return Err(SyntaxError {
                            at,
                            message: format!("duplicate capture name `{{{name}}}`"),
                        });
                    }
                    let n = names.len() as u32;
                    names.push(name);
                    atoms.extend([Atom::CaptureFirst(n), Atom::CaptureRest(n)]);
                }
            }
        }
        Ok(Pattern::from_atoms(atoms, names))
    }

    fn from_atoms(atoms: Vec<Atom>, names: Vec<String>) -> Pattern {
        let literal = |a: &Atom| match a {
            Atom::Byte(b) => Some(*b),
            _ => None,
        };
        let prefix: Vec<u8> = atoms.iter().map_while(literal).collect();
        let suffix: Vec<u8> = if prefix.len() == atoms.len() {
            Vec::new()
        } else {
            let mut s: Vec<u8> = atoms.iter().rev().map_while(literal).collect();
            s.reverse();
            s
        };
        let min_len = atoms
            .iter()
            .filter(|a| matches!(a, Atom::Byte(_) | Atom::CaptureFirst(_)))
            .count();
        let mut stop = vec![atoms.len(); atoms.len() + 1];
        for c in (0..atoms.len()).rev() {
            stop[c] = if atoms[c].loops() { stop[c + 1] } else { c };
        }
        let segments = segments(&atoms);
        Pattern {
            atoms,
            names,
            stop,
            prefix,
            suffix,
            min_len,
            segments,
        }
    }

    /// Capture names, in pattern order (the order of the spans [`Pattern::captures`] fills).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The literal bytes every matching key starts with.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Whether `key` matches; if so `spans` holds each capture's byte range in `key` (if not,
    /// its contents mean nothing).
    pub fn captures(&self, key: &[u8], spans: &mut Vec<Range<usize>>) -> bool {
        spans.clear();
        // (An empty suffix, the usual case, is not compared: even that costs a call.)
        if key.len() < self.min_len
            || !key.starts_with(&self.prefix)
            || (!self.suffix.is_empty() && !key.ends_with(&self.suffix))
        {
            return false;
        }
        match &self.segments {
            Some(segments) => match_segments(segments, key, spans),
            None => self.pike(key, spans),
        }
    }

    /// Simulates the NFA over `key`, one thread per configuration. Threads that meet in one
    /// configuration have the same future, and (the pattern being unambiguous) any that reach
    /// the end have the same captures, so keeping the first is enough.
    fn pike(&self, key: &[u8], spans: &mut Vec<Range<usize>>) -> bool {
        let width = 2 * self.names.len();
        let end = self.atoms.len();
        let mut current = Threads::new(end + 1, width);
        let mut next = Threads::new(end + 1, width);
        let mut slots = vec![0; width];
        current.add(0, &slots);
        for (pos, &byte) in key.iter().enumerate() {
            next.clear();
            for t in 0..current.configs.len() {
                let config = current.configs[t];
                for state in config..=self.stop[config] {
                    let Some(&atom) = self.atoms.get(state) else {
                        continue;
                    };
                    if !atom.accepts(byte) {
                        continue;
                    }
                    slots.copy_from_slice(current.slots(t));
                    if let Some(n) = atom.label() {
                        let n = n as usize;
                        if matches!(atom, Atom::CaptureFirst(_)) {
                            slots[2 * n] = pos;
                        }
                        slots[2 * n + 1] = pos + 1;
                    }
                    next.add(target(atom, state), &slots);
                }
            }
            if next.configs.is_empty() {
                return false;
            }
            std::mem::swap(&mut current, &mut next);
        }
        let Some(t) = (0..current.configs.len()).find(|&t| self.accepts(current.configs[t])) else {
            return false;
        };
        spans.extend(current.slots(t).chunks(2).map(|s| s[0]..s[1]));
        true
    }

    fn accepts(&self, config: usize) -> bool {
        self.stop[config] == self.atoms.len()
    }

    /// The configurations reachable from `config` by consuming `byte` (a consuming state and
    /// the loops before it).
    fn step(&self, config: usize, byte: u8) -> impl Iterator<Item = (usize, Atom)> + '_ {
        (config..=self.stop[config]).filter_map(move |state| {
            let atom = *self.atoms.get(state)?;
            atom.accepts(byte).then(|| (target(atom, state), atom))
        })
    }

    /// A key that matches this pattern with two different sets of captures, if there is one:
    /// a search over pairs of runs that read the same bytes, for two that both accept after
    /// labelling some byte with different captures.
    pub fn ambiguity(&self) -> Search {
        if self.names.is_empty() {
            return Search::Exhausted;
        }
        let bytes = byte_classes([self]);
        search(
            (0usize, 0usize, false),
            &bytes,
            |&(a, b, split)| split && self.accepts(a) && self.accepts(b),
            |&(a, b, split), byte, out| {
                for (ta, atom_a) in self.step(a, byte) {
                    for (tb, atom_b) in self.step(b, byte) {
                        out.push((ta, tb, split || atom_a.label() != atom_b.label()));
                    }
                }
            },
        )
    }
}

/// The configuration after `atom`, at `state`, consumed a byte.
fn target(atom: Atom, state: usize) -> usize {
    if atom.loops() { state } else { state + 1 }
}

/// The one-pass form, if the pattern has it: every capture followed by a literal starting with
/// `:` or by nothing, and `*` only at the very end. A capture then takes exactly the bytes up
/// to the next `:`, so no choice is ever made.
fn segments(atoms: &[Atom]) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut i = 0;
    while i < atoms.len() {
        match atoms[i] {
            Atom::Byte(b) => match segments.last_mut() {
                Some(Segment::Literal(bytes)) => bytes.push(b),
                _ => segments.push(Segment::Literal(vec![b])),
            },
            Atom::CaptureFirst(_) => {
                if !matches!(atoms.get(i + 2), None | Some(Atom::Byte(b':'))) {
                    return None;
                }
                segments.push(Segment::Capture);
                i += 1;
            }
            Atom::Any if i + 1 == atoms.len() => segments.push(Segment::Rest),
            Atom::Any | Atom::CaptureRest(_) => return None,
        }
        i += 1;
    }
    Some(segments)
}

fn match_segments(segments: &[Segment], key: &[u8], spans: &mut Vec<Range<usize>>) -> bool {
    let mut pos = 0;
    for segment in segments {
        match segment {
            Segment::Literal(literal) => {
                if !key[pos..].starts_with(literal) {
                    return false;
                }
                pos += literal.len();
            }
            Segment::Capture => {
                let end = key[pos..]
                    .iter()
                    .position(|&b| b == b':')
                    .map_or(key.len(), |p| pos + p);
                if end == pos {
                    return false;
                }
                spans.push(pos..end);
                pos = end;
            }
            Segment::Rest => return true,
        }
    }
    pos == key.len()
}

/// The Pike VM's thread list: at most one thread per configuration, with its capture slots.
struct Threads {
    configs: Vec<usize>,
    slots: Vec<usize>,
    present: Vec<bool>,
    width: usize,
}

impl Threads {
    fn new(configs: usize, width: usize) -> Self {
        Threads {
            configs: Vec::with_capacity(configs),
            slots: Vec::with_capacity(configs * width),
            present: vec![false; configs],
            width,
        }
    }

    fn add(&mut self, config: usize, slots: &[usize]) {
        if !self.present[config] {
            self.present[config] = true;
            self.configs.push(config);
            self.slots.extend_from_slice(slots);
        }
    }

    fn slots(&self, thread: usize) -> &[usize] {
        &self.slots[thread * self.width..(thread + 1) * self.width]
    }

    fn clear(&mut self) {
        for &config in &self.configs {
            self.present[config] = false;
        }
        self.configs.clear();
        self.slots.clear();
    }
}

/// The outcome of a search for a key with some property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// A shortest key with the property.
    Found(Vec<u8>),
    /// No key has it.
    Exhausted,
    /// The search hit [`SEARCH_BUDGET`] first.
    GaveUp,
}

/// Breadth-first search from `start` over the product automaton `step` describes, reading one
/// representative of each byte class at each step, for a state where `goal` holds.
fn search<S: Clone + Eq + Hash>(
    start: S,
    bytes: &[u8],
    goal: impl Fn(&S) -> bool,
    step: impl Fn(&S, u8, &mut Vec<S>),
) -> Search {
    // (state, parent node, byte read to get here): walking parents back spells the key.
    let mut nodes: Vec<(S, usize, u8)> = vec![(start.clone(), usize::MAX, 0)];
    let mut seen: HashSet<S> = HashSet::from([start]);
    let mut queue = VecDeque::from([0]);
    let mut successors = Vec::new();
    while let Some(node) = queue.pop_front() {
        if goal(&nodes[node].0) {
            let mut key = Vec::new();
            let mut at = node;
            while nodes[at].1 != usize::MAX {
                key.push(nodes[at].2);
                at = nodes[at].1;
            }
            key.reverse();
            return Search::Found(key);
        }
        for &byte in bytes {
            step(&nodes[node].0, byte, &mut successors);
            for state in successors.drain(..) {
                if seen.contains(&state) {
                    continue;
                }
                if nodes.len() == SEARCH_BUDGET {
                    return Search::GaveUp;
                }
                seen.insert(state.clone());
                queue.push_back(nodes.len());
                nodes.push((state, node, byte));
            }
        }
    }
    Search::Exhausted
}

/// One representative byte for each class of bytes the patterns cannot tell apart: one byte
/// for all those they do not name, then each byte they name literally, and `:`. The first is a
/// letter or digit when possible and comes first, so that example keys in messages read well.
fn byte_classes<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> Vec<u8> {
    let mut named = [false; 256];
    named[usize::from(b':')] = true;
    for pattern in patterns {
        for atom in &pattern.atoms {
            if let Atom::Byte(b) = atom {
                named[usize::from(*b)] = true;
            }
        }
    }
    let other = (b'a'..=b'z')
        .chain(b'0'..=b'9')
        .chain(0..=255)
        .find(|&b| !named[usize::from(b)]);
    other
        .into_iter()
        .chain((0..=255).filter(|&b| named[usize::from(b)]))
        .collect()
}

/// Whether some key matches both patterns (a search over pairs of runs).
pub fn overlaps(a: &Pattern, b: &Pattern) -> bool {
    // Literal prefixes that disagree settle it without a search (rules usually differ there).
    let common = a.prefix.len().min(b.prefix.len());
    if a.prefix[..common] != b.prefix[..common] {
        return false;
    }
    let bytes = byte_classes([a, b]);
    let found = search(
        (0usize, 0usize),
        &bytes,
        |&(ca, cb)| a.accepts(ca) && b.accepts(cb),
        |&(ca, cb), byte, out| {
            for (ta, _) in a.step(ca, byte) {
                out.extend(b.step(cb, byte).map(|(tb, _)| (ta, tb)));
            }
        },
    );
    // Giving up here only means a later coverage check runs that would have been skipped.
    found != Search::Exhausted
}

/// Looks for a key that `later` matches and none of `earlier` does. `Exhausted` means there is
/// none: the earlier patterns cover `later`.
///
/// The earlier patterns run determinised (the state holds every configuration each of them can
/// be in), `later` runs as an NFA, and the search looks for a state where `later` accepts and no
/// earlier pattern does.
pub fn uncovered(earlier: &[&Pattern], later: &Pattern) -> Search {
    let bytes = byte_classes(earlier.iter().copied().chain([later]));
    let start: Vec<(usize, usize)> = (0..earlier.len()).map(|p| (p, 0)).collect();
    search(
        (0usize, start),
        &bytes,
        |(config, set)| later.accepts(*config) && !set.iter().any(|&(p, c)| earlier[p].accepts(c)),
        |(config, set), byte, out| {
            let mut next: Vec<(usize, usize)> = set
                .iter()
                .flat_map(|&(p, c)| earlier[p].step(c, byte).map(move |(t, _)| (p, t)))
                .collect();
            next.sort_unstable();
            next.dedup();
            out.extend(later.step(*config, byte).map(|(t, _)| (t, next.clone())));
        },
    )
}

#[cfg(test)]
mod tests {
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
}
