//! The rule set: which keys get which tags and which TTL, compiled once from `[ttl]` and
//! `[[rules]]` and then consulted for every write (and rule-matched read) through the proxy.
//!
//! [`Rules::compile`] checks everything `check-config` reports about rules and returns every
//! problem at once, each with its place in the file. [`Rules::match_key`] finds the first rule,
//! in file order, whose pattern matches a key. It only tries the rules whose literal prefix
//! starts with the key's first byte (plus those without a literal prefix), and each of those
//! checks prefix, suffix and length before matching, so a key that no rule wants costs a table
//! lookup and a few comparisons (tens of ns).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::pattern::{self, Pattern, Search, SyntaxError, Token};
use crate::config::{RuleConfig, TtlConfig, TtlRef};

/// The compiled rules, in file order.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    /// By first byte: the rules whose literal prefix starts with it, in file order.
    by_first_byte: Vec<Vec<u32>>,
    /// The rules without a literal prefix, in file order: candidates for every key.
    unprefixed: Vec<u32>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    pattern: Pattern,
    tags: Vec<Template>,
    /// Bit `j` set: `tags[j]` names one key of this rule ([`Match::named`]).
    named: u64,
    /// The pattern as literal bytes and captures when it has no `*`: how a key is written back
    /// from its captures.
    key: Option<Vec<Part>>,
    ttl_secs: u64,
}

/// What the first matching rule says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'r> {
    /// The rule's position in `[[rules]]`, from 0.
    pub rule: usize,
    /// The rule's `name`, or its pattern when it has none (meant as a metrics label).
    pub name: &'r str,
    /// The rule's tag templates filled with the key's captured bytes, in the rule's order.
    pub tags: Vec<Bytes>,
    /// The rule's TTL, resolved from its class.
    pub ttl_secs: u64,
    /// Bit `j` set: `tags[j]` *names* the key. The rule's pattern has no `*` and the tag's
    /// template holds every capture, each followed by `:` or the end, so the tag can be read
    /// back into its captures and those into the key: this key is the one key of the rule
    /// that carries the tag ([`Rules::keys_named_by`]). Such a tag needs no entry in the tag
    /// index; invalidation finds its key from the rules.
    pub named: u64,
}

impl Match<'_> {
    /// Whether `tags[j]` names the key (see [`Match::named`]).
    pub fn is_named(&self, j: usize) -> bool {
        j < 64 && self.named & (1 << j) != 0
    }

    /// The tags the tag index must hold for this key: those that do not name it.
    pub fn indexed_tags(&self) -> impl Iterator<Item = &Bytes> {
        self.tags
            .iter()
            .enumerate()
            .filter(|(j, _)| !self.is_named(*j))
            .map(|(_, tag)| tag)
    }
}

/// A problem in `[[rules]]`. Spans are byte ranges of the configuration text, as
/// [`toml::Spanned`] gives them; `config` turns them into lines and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The value the problem is in.
    pub span: Range<usize>,
    /// The bytes of that string value (not of the file) the problem is about, when narrower.
    pub within: Option<Range<usize>>,
    pub message: String,
    /// Other places that explain the problem, such as the earlier rule that shadows this one.
    pub notes: Vec<(Range<usize>, String)>,
}

impl RuleError {
    fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        RuleError {
            span,
            within: None,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    fn syntax(span: Range<usize>, error: SyntaxError) -> Self {
        RuleError {
            within: Some(error.at),
            ..RuleError::new(span, error.message)
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuleError {}

impl Rules {
    /// Checks and compiles `rules` against the TTL classes in `ttl`. The errors are every
    /// problem found, in file order.
    pub fn compile(ttl: &TtlConfig, rules: &[RuleConfig]) -> Result<Rules, Vec<RuleError>> {
        let mut errors = Vec::new();
        let patterns: Vec<Option<Pattern>> = rules
            .iter()
            .map(|rule| {
                let source = rule.pattern.get_ref();
                let pattern = Pattern::parse(source)
                    .map_err(|e| errors.push(RuleError::syntax(rule.pattern.span(), e)))
                    .ok()?;
                if let Search::Found(key) = pattern.ambiguity() {
                    errors.push(RuleError::new(
                        rule.pattern.span(),
                        format!(
                            "pattern `{source}` is ambiguous: the key {} matches it with \
                             different captures; separate captures and `*` from each other \
                             with `:`",
                            show(&key)
                        ),
                    ));
                }
                Some(pattern)
            })
            .collect();
        check_shadowing(rules, &patterns, &mut errors);
        check_names(rules, &mut errors);

        let mut compiled = Vec::with_capacity(rules.len());
        for (rule, pattern) in rules.iter().zip(patterns) {
            let tags: Vec<Option<Template>> = rule
                .tags
                .iter()
                .map(|tag| {
                    Template::parse(tag.get_ref(), pattern.as_ref(), rule.pattern.get_ref())
                        .map_err(|e| errors.push(RuleError::syntax(tag.span(), e)))
                        .ok()
                })
                .collect();
            let ttl_secs = resolve_ttl(ttl, rule).map_err(|e| errors.push(e)).ok();
            if let (Some(pattern), Some(tags), Some(ttl_secs)) = (
                pattern,
                tags.into_iter().collect::<Option<Vec<Template>>>(),
                ttl_secs,
            ) {
                let key = key_parts(rule.pattern.get_ref(), &pattern);
                let named = match key {
                    Some(_) => tags
                        .iter()
                        .take(64)
                        .enumerate()
                        .filter(|(_, t)| t.names_one_key(pattern.names().len()))
                        .fold(0u64, |mask, (j, _)| mask | 1 << j),
                    None => 0,
                };
                compiled.push(Rule {
                    name: rule
                        .name
                        .as_ref()
                        .unwrap_or(&rule.pattern)
                        .get_ref()
                        .clone(),
                    pattern,
                    tags,
                    named,
                    key,
                    ttl_secs,
                });
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.span.start);
            return Err(errors);
        }

        let mut by_first_byte = vec![Vec::new(); 256];
        let mut unprefixed = Vec::new();
        for (i, rule) in compiled.iter().enumerate() {
            let i = i as u32;
            match rule.pattern.prefix().first() {
                Some(&b) => by_first_byte[usize::from(b)].push(i),
                None => unprefixed.push(i),
            }
        }
        Ok(Rules {
            rules: compiled,
            by_first_byte,
            unprefixed,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule, in file order, that matches `key`, with its tags filled in.
    pub fn match_key(&self, key: &[u8]) -> Option<Match<'_>> {
        self.match_filling(key, |_| true)
    }

    /// [`Rules::match_key`] for a write that only has to index its key: the same rule, with
    /// only the tags that do not name the key ([`Match::indexed_tags`]) filled in, so that
    /// the common write allocates nothing for tags it never sends. `named` is then 0.
    pub fn match_indexed(&self, key: &[u8]) -> Option<Match<'_>> {
        let mut found = self.match_filling(key, |named| !named)?;
        found.named = 0;
        Some(found)
    }

    /// The first matching rule, filling the tags for which `fill(names the key)` holds.
    fn match_filling(&self, key: &[u8], fill: impl Fn(bool) -> bool) -> Option<Match<'_>> {
        let prefixed: &[u32] = match key.first() {
            Some(&b) => &self.by_first_byte[usize::from(b)],
            None => &[],
        };
        // Both lists are in file order; merging them tries the candidates in file order, and
        // `next` is `None` once both are used up.
        let (mut a, mut b) = (
            prefixed.iter().peekable(),
            self.unprefixed.iter().peekable(),
        );
        let mut spans = Vec::new();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (_, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => None,
            };
            let i = *next? as usize;
            let rule = &self.rules[i];
            if rule.pattern.captures(key, &mut spans) {
                let named = |j: usize| j < 64 && rule.named & (1 << j) != 0;
                let tags = (rule.tags.iter().enumerate())
                    .filter(|&(j, _)| fill(named(j)))
                    .map(|(_, template)| template.fill(key, &spans));
                return Some(Match {
                    rule: i,
                    name: &rule.name,
                    tags: tags.collect(),
                    ttl_secs: rule.ttl_secs,
                    named: rule.named,
                });
            }
        }
    }

    /// The keys that `tag` names ([`Match::named`]): per rule and tag template that can name
    /// a key, the key written back from the tag, kept only if that key's first matching rule
    /// is this one and gives it `tag` there. Every key whose rules give it `tag` as a naming
    /// tag is in the list (a template's captures each end at `:` or the end, so a tag reads
    /// back one way only). A handful of byte comparisons per rule; no Redis.
    pub fn keys_named_by(&self, tag: &[u8]) -> Vec<Bytes> {
        self.named_matches(tag)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// [`Rules::keys_named_by`], each key with its match (its tags, the indexed ones among
    /// them), so callers need not match the key again.
    pub fn named_matches(&self, tag: &[u8]) -> Vec<(Bytes, Match<'_>)> {
        let mut keys: Vec<(Bytes, Match<'_>)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(parts) = rule.key.as_ref().filter(|_| rule.named != 0) else {
                continue;
            };
            for (j, template) in rule.tags.iter().enumerate().take(64) {
                if rule.named & (1 << j) == 0 {
                    continue;
                }
                let Some(values) = template.read_back(tag, rule.pattern.names().len()) else {
                    continue;
                };
                let mut key = BytesMut::new();
                for part in parts {
                    match part {
                        Part::Literal(bytes) => key.extend_from_slice(bytes),
                        Part::Capture(c) => key.extend_from_slice(&tag[values[*c].clone()]),
                    }
                }
                let key = key.freeze();
                let found = self
                    .match_key(&key)
                    .filter(|m| m.rule == i && m.tags.get(j).is_some_and(|t| t == tag));
                if let Some(found) = found
                    && !keys.iter().any(|(k, _)| *k == key)
                {
                    keys.push((key, found));
                }
            }
        }
        keys
    }
}

/// A pattern as literal bytes and captures (by index), or `None` when it has a `*`.
fn key_parts(source: &str, pattern: &Pattern) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    for token in pattern::tokenize(source, true).ok()? {
        match token {
            Token::Byte(b) => match parts.last_mut() {
                Some(Part::Literal(bytes)) => bytes.push(b),
                _ => parts.push(Part::Literal(vec![b])),
            },
            Token::Capture { name, .. } => {
                parts.push(Part::Capture(
                    pattern.names().iter().position(|n| *n == name)?,
                ));
            }
            Token::Star => return None,
        }
    }
    Some(parts)
}

fn resolve_ttl(ttl: &TtlConfig, rule: &RuleConfig) -> Result<u64, RuleError> {
    let Some(spanned) = &rule.ttl else {
        return Ok(ttl.default_secs());
    };
    match spanned.get_ref() {
        TtlRef::Seconds(secs) => Ok(*secs),
        TtlRef::Class(class) => ttl.get(class).ok_or_else(|| {
            let classes: Vec<&str> = ttl.names().collect();
            let mut message = format!(
                "unknown TTL class \"{class}\"; the classes are {}",
                classes.join(", ")
            );
            if class.parse::<u64>().is_ok() {
                message += &format!("; for a number of seconds write ttl = {class}, unquoted");
            }
            RuleError::new(spanned.span(), message)
        }),
    }
}

/// Reports each rule that can never match because the rules before it match every key it
/// does: first against each earlier rule alone, then against all the earlier rules it overlaps
/// together. Both checks are exact (see `pattern::uncovered`); a check that gives up reports
/// nothing, so a reachable rule is never reported.
fn check_shadowing(
    rules: &[RuleConfig],
    patterns: &[Option<Pattern>],
    errors: &mut Vec<RuleError>,
) {
    let label = |i: usize| {
        rules[i]
            .name
            .as_ref()
            .unwrap_or(&rules[i].pattern)
            .get_ref()
    };
    for (j, later) in patterns.iter().enumerate() {
        let Some(later) = later else { continue };
        let overlapping: Vec<usize> = (0..j)
            .filter(|&i| {
                patterns[i]
                    .as_ref()
                    .is_some_and(|p| pattern::overlaps(p, later))
            })
            .collect();
        let pattern_of = |i: usize| patterns[i].as_ref().expect("overlapping rules parsed");
        let alone = overlapping
            .iter()
            .find(|&&i| pattern::uncovered(&[pattern_of(i)], later) == Search::Exhausted);
        let shadowing = match alone {
            Some(&i) => vec![i],
            None if overlapping.len() > 1 => {
                let earlier: Vec<&Pattern> = overlapping.iter().map(|&i| pattern_of(i)).collect();
                if pattern::uncovered(&earlier, later) != Search::Exhausted {
                    continue;
                }
                overlapping
            }
            None => continue,
        };
        let by = shadowing
            .iter()
            .map(|&i| format!("`{}`", label(i)))
            .collect::<Vec<_>>()
            .join(", ");
        let rules_word = if shadowing.len() == 1 {
            "rule"
        } else {
            "rules"
        };
        errors.push(RuleError {
            notes: shadowing
                .iter()
                .map(|&i| {
                    (
                        rules[i].pattern.span(),
                        format!("the earlier rule `{}`", label(i)),
                    )
                })
                .collect(),
            ..RuleError::new(
                rules[j].pattern.span(),
                format!(
                    "rule `{}` can never match: every key it matches is matched first by the \
                     earlier {rules_word} {by}; put the more specific rule first",
                    label(j)
                ),
            )
        });
    }
}

/// Rule names label metrics, so they must be unique and non-empty. Two unnamed rules with the
/// same pattern are left to the shadowing check.
fn check_names(rules: &[RuleConfig], errors: &mut Vec<RuleError>) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = rule.name.as_ref().unwrap_or(&rule.pattern);
        if rule.name.is_some() && name.get_ref().is_empty() {
            errors.push(RuleError::new(name.span(), "empty rule name"));
            continue;
        }
        match first.get(name.get_ref().as_str()) {
            None => {
                first.insert(name.get_ref(), i);
            }
            Some(&earlier) if rule.name.is_some() || rules[earlier].name.is_some() => {
                let other = rules[earlier]
                    .name
                    .as_ref()
                    .unwrap_or(&rules[earlier].pattern);
                errors.push(RuleError {
                    notes: vec![(other.span(), "the other rule".into())],
                    ..RuleError::new(
                        name.span(),
                        format!(
                            "rule name `{}` is already used (names label metrics)",
                            name.get_ref()
                        ),
                    )
                });
            }
            Some(_) => {}
        }
    }
}

/// A tag template: literal bytes and captures, filled per key.
#[derive(Debug)]
enum Template {
    /// No captures: the same tag for every key, shared without copying.
    Fixed(Bytes),
    Parts(Vec<Part>),
}

#[derive(Debug)]
enum Part {
    Literal(Vec<u8>),
    /// Index into the pattern's captures.
    Capture(usize),
}

impl Template {
    /// Parses a tag template. With `pattern` absent (it failed to parse) only the template's own
    /// syntax is checked.
    fn parse(src: &str, pattern: Option<&Pattern>, source: &str) -> Result<Self, SyntaxError> {
        if src.is_empty() {
            return Err(SyntaxError {
                at: 0..0,
                message: "empty tag".into(),
            });
        }
        let mut parts = Vec::new();
        for token in pattern::tokenize(src, false)? {
            match token {
                Token::Byte(b) => match parts.last_mut() {
                    Some(Part::Literal(bytes)) => bytes.push(b),
                    _ => parts.push(Part::Literal(vec![b])),
                },
                Token::Capture { name, at } => {
                    let Some(pattern) = pattern else { continue };
                    let Some(index) = pattern.names().iter().position(|n| *n == name) else {
                        return Err(SyntaxError {
                            at,
                            message: format!(
                                "tag `{src}` uses capture `{{{name}}}`, which pattern \
                                 `{source}` does not have{}",
                                captures_hint(pattern.names())
                            ),
                        });
                    };
                    parts.push(Part::Capture(index));
                }
                Token::Star => unreachable!("templates tokenize `*` as a byte"),
            }
        }
        Ok(match parts.as_slice() {
            [Part::Literal(bytes)] => Template::Fixed(Bytes::copy_from_slice(bytes)),
            _ => Template::Parts(parts),
        })
    }

    /// Whether a tag filled from this template can be read back into all `captures` of its
    /// pattern: each appears, and each is followed by the end or by a literal starting with
    /// `:` (a capture never holds `:`, so where it ends is never in doubt).
    fn names_one_key(&self, captures: usize) -> bool {
        let parts = match self {
            Template::Fixed(_) => return captures == 0,
            Template::Parts(parts) => parts,
        };
        let mut seen = vec![false; captures];
        for (i, part) in parts.iter().enumerate() {
            if let Part::Capture(c) = part {
                seen[*c] = true;
                match parts.get(i + 1) {
                    None => {}
                    Some(Part::Literal(next)) if next.first() == Some(&b':') => {}
                    Some(_) => return false,
                }
            }
        }
        seen.iter().all(|&s| s)
    }

    /// The captures (byte ranges of `tag`) that fill this template to exactly `tag`, for a
    /// template that [`names_one_key`](Template::names_one_key); `None` when no captures do.
    fn read_back(&self, tag: &[u8], captures: usize) -> Option<Vec<Range<usize>>> {
        let parts = match self {
            Template::Fixed(bytes) => return (bytes[..] == *tag).then(Vec::new),
            Template::Parts(parts) => parts,
        };
        let mut values: Vec<Option<Range<usize>>> = vec![None; captures];
        let mut at = 0;
        for part in parts {
            match part {
                Part::Literal(bytes) => {
                    if !tag[at..].starts_with(bytes) {
                        return None;
                    }
                    at += bytes.len();
                }
                Part::Capture(c) => {
                    let rest = &tag[at..];
                    let len = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
                    if len == 0 {
                        return None;
                    }
                    let value = at..at + len;
                    if let Some(earlier) = &values[*c]
                        && tag[earlier.clone()] != tag[value.clone()]
                    {
                        return None;
                    }
                    values[*c] = Some(value);
                    at += len;
                }
            }
        }
        if at != tag.len() {
            return None;
        }
        values.into_iter().collect()
    }

    fn fill(&self, key: &[u8], spans: &[Range<usize>]) -> Bytes {
        let parts = match self {
            Template::Fixed(bytes) => return bytes.clone(),
            Template::Parts(parts) => parts,
        };
        let mut tag =
            BytesMut::with_capacity(parts.iter().map(|p| p.bytes(key, spans).len()).sum());
        for part in parts {
            tag.extend_from_slice(part.bytes(key, spans));
        }
        tag.freeze()
    }
}

impl Part {
    fn bytes<'a>(&'a self, key: &'a [u8], spans: &[Range<usize>]) -> &'a [u8] {
        match self {
            Part::Literal(bytes) => bytes,
            Part::Capture(i) => &key[spans[*i].clone()],
        }
    }
}

fn captures_hint(names: &[String]) -> String {
    if names.is_empty() {
        return " (it captures nothing)".into();
    }
    let names: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
    format!(" (it has {})", names.join(", "))
}

/// A key for a message: printable ASCII as is, other bytes escaped.
fn show(key: &[u8]) -> String {
    format!("\"{}\"", key.escape_ascii())
}

#[cfg(test)]
mod tests;
