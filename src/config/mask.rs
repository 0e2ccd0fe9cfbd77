//! Secrets in error messages: rendering a `toml` error with every secret in its excerpt and
//! message shown as `****`, and the lexical scanner that finds those secrets in text that need
//! not parse.

use std::ops::Range;

use super::error::{line_column, line_start};

// Secrets in error messages. A config that fails to parse cannot be trusted to say which of
// its values are secrets, so they are found in the text: the value of every key whose name
// looks like a secret's (`password`, `token`, ...: dotted, quoted or in an inline table, and
// whatever follows such a name on its line), the password of every url in the file, when the
// error is about a key (unknown, duplicate) that key's value, in case the key is a misspelt
// secret, and, in a document that is not TOML at all, every value on the line shown. Masking
// more than the secrets only costs a less helpful excerpt. (`no_damage_to_a_config_shows_its_
// secrets` below damages a config every way one character can and checks.)

/// What a `toml` error is about, for its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    /// The text is not TOML: `TOML syntax error at line ...`.
    Syntax,
    /// Valid TOML, but a key or value the config does not take: `error at line ...`, as the
    /// problems validation finds later are labelled.
    Value,
}

/// Renders a `toml` error as `toml` does (line, column, the line with a caret under the
/// problem, the message), labelled by `kind`, with every secret in the excerpt and in the
/// message shown as `****`.
pub(super) fn render_toml_error(text: &str, error: &toml::de::Error, kind: ErrorKind) -> String {
    let label = match kind {
        ErrorKind::Syntax => "TOML syntax error",
        ErrorKind::Value => "error",
    };
    let Some(span) = error.span() else {
        // No place, so no excerpt: the message and the keys it is about.
        return format!("{label}: {}", mask_url_passwords(&error.to_string()));
    };
    let start = span.start.min(text.len());
    let span = start..span.end.clamp(start, text.len());
    let line_from = line_start(text, span.start);
    let line_to = text[line_from..]
        .find('\n')
        .map_or(text.len(), |n| line_from + n);
    let mut secrets = secret_values(text);
    secrets.extend(value_of_key_at(text, &span, line_to));
    if text.parse::<toml::Table>().is_err() {
        // Not even TOML: which words are keys is a guess, so no value on the line is shown.
        secrets.extend(values_of_broken_line(text, line_from..line_to));
    }
    let mut message = mask_url_passwords(error.message());
    // An empty span (at the end of the text) still points at one character.
    let touched = span.start..span.end.max(span.start + 1);
    if secrets
        .iter()
        .any(|s| s.start < touched.end && touched.start < s.end)
        && ["invalid type", "invalid value", "invalid length"]
            .iter()
            .any(|serde| message.starts_with(serde))
    {
        // serde quotes the value it did not expect: "invalid type: integer `12345`".
        message = mask_quoted(&message);
    }
    secrets.extend(url_passwords(text));
    let (shown, from, to) = masked_line(text, line_from..line_to, &span, &secrets);
    let (line, column) = line_column(text, span.start);
    let gutter = " ".repeat(line.to_string().len() + 1);
    format!(
        "{label} at line {line}, column {column}\n{gutter}|\n{line} | {shown}\n\
         {gutter}|{} {}\n{message}",
        " ".repeat(from),
        "^".repeat(to.saturating_sub(from).max(1))
    )
}

/// Whether a key (its last dotted part, unquoted, any case) names a secret.
fn is_secret_name(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "token", "secret", "credential", "auth"]
        .iter()
        .any(|word| key.contains(word))
}

/// The byte ranges of the values of secret-named keys, found lexically (the text need not
/// parse). An unterminated value runs to the end of its line, or for a multi-line string,
/// array or inline table to the end of the text.
fn secret_values(text: &str) -> Vec<Range<usize>> {
    let mut ranges = secret_lines(text);
    let mut at = 0;
    while let Some(eq) = text[at..].find('=').map(|n| at + n) {
        // A key starts after the value before it (so the text is walked once).
        let key_from = text[at..eq]
            .rfind(['\n', '{', ','])
            .map_or(at, |n| at + n + 1);
        let key = text[key_from..eq].rsplit('.').next().unwrap_or_default();
        at = eq + 1;
        if is_secret_name(key.trim().trim_matches(['"', '\''])) {
            let value = value_at(text, eq + 1);
            at = value.end.max(at);
            ranges.push(value);
        }
    }
    ranges
}

/// On each line that names a secret, everything after the name: a line too broken to have a
/// `key = value` shape (a missing `=`, say) still shows no secret.
fn secret_lines(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut line_from = 0;
    let is_key_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    for line in text.split_inclusive('\n') {
        let bytes = line.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let word_end = at + bytes[at..].iter().take_while(|b| is_key_byte(**b)).count();
            if is_secret_name(&line[at..word_end]) {
                let value = line[word_end..].trim_start_matches(['"', '\'', ' ', '\t', '=']);
                let (start, end) = (line.len() - value.len(), line.trim_end().len());
                if start < end {
                    ranges.push(line_from + start..line_from + end);
                }
                break;
            }
            // Past the word and the (ASCII or not) characters up to the next one.
            at = word_end
                + line[word_end..]
                    .find(|c: char| c.is_ascii() && is_key_byte(c as u8))
                    .unwrap_or(line.len() - word_end);
        }
        line_from += line.len();
    }
    ranges
}

/// The value that starts after the `=` at `from - 1` (leading blanks skipped).
fn value_at(text: &str, from: usize) -> Range<usize> {
    let bytes = text.as_bytes();
    let start = from + (text[from..].len() - text[from..].trim_start_matches([' ', '\t']).len());
    let rest = &text[start..];
    let end_of_line = rest.find('\n').map_or(text.len(), |n| start + n);
    let end = if let Some(quotes) = ["\"\"\"", "'''"].iter().find(|q| rest.starts_with(**q)) {
        rest[3..]
            .find(quotes)
            .map_or(text.len(), |n| start + 3 + n + 3)
    } else if rest.starts_with(['"', '\'']) {
        string_end(bytes, start).min(end_of_line)
    } else if rest.starts_with(['[', '{']) {
        nested_end(bytes, start)
    } else {
        rest.find(['\n', ',', '}', ']', '#'])
            .map_or(text.len(), |n| start + n)
    };
    let end = end.max(start);
    start..start + text[start..end].trim_end().len()
}

/// The end of the one-line string opening at `start`: after its closing quote, or at the end
/// of the line.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != b'\n' {
        match bytes[i] {
            b if b == quote => return i + 1,
            b'\\' if quote == b'"' => i += 2,
            _ => i += 1,
        }
    }
    i.min(bytes.len())
}

/// The end of the array or inline table opening at `start`: its matching bracket, or the end
/// of the text. Strings and comments inside are skipped.
fn nested_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b'"' | b'\'' => {
                i = string_end(bytes, i);
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Everything on a line of a document that is not TOML but its key and `=` (and an opening
/// quote or bracket), or but a table header; all of a line with neither.
fn values_of_broken_line(text: &str, line: Range<usize>) -> Option<Range<usize>> {
    let content = &text[line.clone()];
    let trimmed = content.trim_start();
    if trimmed.starts_with('[') && !content.contains('=') {
        return None;
    }
    let start = match content.find('=') {
        Some(eq) => {
            let value = content[eq + 1..].trim_start_matches([' ', '\t', '"', '\'', '[', '{']);
            line.end - value.len()
        }
        None => line.end - trimmed.len(),
    };
    let end = line.start + content.trim_end().len();
    (start < end).then_some(start..end)
}

/// When `span` is a key followed by `=` (an unknown or duplicate key), the value after it.
fn value_of_key_at(text: &str, span: &Range<usize>, line_to: usize) -> Option<Range<usize>> {
    let after = text
        .get(span.end..line_to)?
        .trim_start_matches(['"', '\'', ' ', '\t']);
    after
        .starts_with('=')
        .then(|| value_at(text, line_to - after.len() + 1))
        .map(|value| value.start..value.end.max(line_to))
}

/// The passwords of urls in `text`, generously for a url written badly:
/// - after each `://` with an `@` later on its line: from the first `:` to the last `@` (all
///   of it without a `:`);
/// - after each `://` without: a `:` not followed by a port number, up to the next `/`;
/// - in any word with an `@` (a url with a damaged scheme, or cut in two): from the first `:`
///   after its last `//` (without a `:`, from the start of the word) to the `@`.
///
/// Each part of the text is looked at a bounded number of times.
fn url_passwords(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut floor = 0;
    for (at_sign, _) in text.match_indices('@') {
        let word = text[floor..at_sign]
            .rfind(|c: char| c.is_ascii_whitespace() || "\"'`=,[{(".contains(c))
            .map_or(floor, |n| floor + n + 1);
        let authority = text[word..at_sign]
            .rfind("//")
            .map_or(word, |n| word + n + 2);
        let password = text[authority..at_sign]
            .find(':')
            .map_or(authority, |colon| authority + colon + 1);
        ranges.push(password..at_sign);
        floor = at_sign + 1;
    }
    // The line of the last `://` seen: where it ends, and its last `@`.
    let mut line: Option<(usize, Option<usize>)> = None;
    let mut covered = 0;
    let mut at = 0;
    while let Some(scheme_end) = text[at..].find("://").map(|n| at + n + 3) {
        at = scheme_end;
        if scheme_end < covered {
            continue;
        }
        let (line_end, last_at) = match line {
            Some((end, last_at)) if scheme_end <= end => (end, last_at),
            _ => {
                let end = text[scheme_end..]
                    .find('\n')
                    .map_or(text.len(), |n| scheme_end + n);
                let last_at = text[scheme_end..end].rfind('@').map(|n| scheme_end + n);
                line = Some((end, last_at));
                (end, last_at)
            }
        };
        match last_at.filter(|a| *a >= scheme_end) {
            Some(at_sign) => {
                let password = text[scheme_end..at_sign]
                    .find(':')
                    .map_or(scheme_end, |colon| scheme_end + colon + 1);
                ranges.push(password..at_sign);
                covered = at_sign;
            }
            None => {
                let authority_end = text[scheme_end..line_end]
                    .find(['/', '"', '\'', ' ', '\t', '\r'])
                    .map_or(line_end, |n| scheme_end + n);
                if let Some(colon) = text[scheme_end..authority_end].find(':') {
                    let after = scheme_end + colon + 1;
                    if !text[after..authority_end]
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                    {
                        ranges.push(after..authority_end);
                    }
                }
                covered = authority_end;
            }
        }
    }
    ranges
}

/// `text` with the password of every url in it (see [`url_passwords`]) shown as `****`.
pub fn mask_url_passwords(text: &str) -> String {
    mask(text, url_passwords(text))
}

/// A url as given, for a message: its password shown as `****`, also when it has no scheme
/// (`user:password@host`).
pub(super) fn mask_url(input: &str) -> String {
    if input.contains("://") {
        return mask_url_passwords(input);
    }
    match (input.find(':'), input.rfind('@')) {
        (Some(colon), Some(at_sign)) if colon < at_sign => {
            mask(input, std::iter::once(colon + 1..at_sign))
        }
        _ => input.to_owned(),
    }
}

/// `text` with each of `ranges` shown as `****` (ranges that overlap or touch as one).
fn mask(text: &str, ranges: impl IntoIterator<Item = Range<usize>>) -> String {
    let mut ranges: Vec<Range<usize>> = ranges.into_iter().collect();
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut masked_to = None;
    for range in ranges {
        // One that overlaps or touches the mask before it extends it.
        if masked_to.is_none_or(|end| range.start > end) {
            out.push_str(&text[at..range.start]);
            out.push_str("****");
        }
        at = at.max(range.end);
        masked_to = Some(at);
    }
    out.push_str(&text[at..]);
    out
}

/// `message` with whatever it quotes (between backticks or double quotes) shown as `****`.
fn mask_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().expect("found");
        out.push_str(&rest[..=open]);
        match rest[open + 1..].find(quote) {
            Some(close) => {
                out.push_str("****");
                out.push(quote);
                rest = &rest[open + 1 + close + 1..];
            }
            None => {
                out.push_str("****");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The line `line` of `text` with the parts of `secrets` in it shown as `****`, and the
/// columns (in characters, 0-based) where `span` starts and ends in what is shown.
fn masked_line(
    text: &str,
    line: Range<usize>,
    span: &Range<usize>,
    secrets: &[Range<usize>],
) -> (String, usize, usize) {
    let mut masks: Vec<Range<usize>> = secrets
        .iter()
        .map(|s| s.start.max(line.start)..s.end.min(line.end))
        .filter(|s| s.start < s.end)
        .collect();
    masks.sort_by_key(|m| m.start);
    // The line in pieces, each shown as its text or, if masked, as `****`; masks that
    // overlap or touch are one.
    let mut pieces: Vec<(Range<usize>, bool)> = Vec::new();
    let mut at = line.start;
    for mask in masks {
        match pieces.last_mut() {
            Some((last, true)) if mask.start <= last.end => last.end = last.end.max(mask.end),
            _ => {
                if at < mask.start {
                    pieces.push((at..mask.start, false));
                }
                pieces.push((mask.clone(), true));
            }
        }
        at = at.max(mask.end);
    }
    if at < line.end {
        pieces.push((at..line.end, false));
    }
    let mut shown = String::new();
    let (mut from, mut to) = (None, None);
    for (range, masked) in pieces {
        let column = shown.chars().count();
        let column_of = |offset: usize, end: bool| match masked {
            true if end => column + 4,
            true => column,
            false => column + text[range.start..offset].chars().count(),
        };
        if from.is_none() && range.contains(&span.start) {
            from = Some(column_of(span.start, false));
        }
        if to.is_none() && range.start < span.end && span.end <= range.end {
            to = Some(column_of(span.end, true));
        }
        shown.push_str(if masked { "****" } else { &text[range] });
    }
    let width = shown.chars().count();
    let from = from.unwrap_or(width);
    // At least one caret; a span past the end of the line is underlined to one past it.
    let to = to.unwrap_or(width).clamp(from + 1, width.max(from) + 1);
    (shown, from, to)
}
