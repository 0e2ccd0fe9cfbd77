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
mod tests;
