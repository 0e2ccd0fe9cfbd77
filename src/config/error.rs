//! Configuration errors, and placing a problem found after parsing in the text: line, column,
//! and an excerpt with a caret under the offending text, as `toml` places its own errors.
//!
//! The problems come from outside: `crate::app::validate` compiles the rules and hands each
//! rule error over as a [`Problem`], plain byte ranges of the text and messages.

use std::fmt;
use std::ops::Range;

/// Where a configuration problem was found; `Display` gives a message fit for a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `toml`'s errors (syntax, or a value that does not fit the config), each rendered with
    /// every secret masked (`mask::render_toml_error`).
    #[error("{}", errors.iter().map(|e| format!("{path}: {e}")).collect::<Vec<_>>().join("\n"))]
    Parse { path: String, errors: Vec<String> },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("{}", Invalid::list(path, errors))]
    Invalid { path: String, errors: Vec<Invalid> },
    /// Rule problems in a config that has no text to place them in (one built in code).
    #[error("invalid rules: {}", errors.join("; "))]
    Rules { errors: Vec<String> },
    #[error("{path}: {}", errors.join("; "))]
    Policies { path: String, errors: Vec<String> },
    /// Problems found by more than one check, each reported in full.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// A problem found after parsing, not yet placed. Spans are byte ranges of the configuration
/// text, as [`toml::Spanned`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The value the problem is in.
    pub span: Range<usize>,
    /// The bytes of that string value (not of the file) the problem is about, when narrower.
    pub within: Option<Range<usize>>,
    pub message: String,
    /// Other places that explain the problem, such as the earlier rule that shadows this one.
    pub notes: Vec<(Range<usize>, String)>,
}

impl Problem {
    /// Whether every place it names is in `text` (it could come from another text).
    pub(super) fn fits(&self, text: &str) -> bool {
        text.get(self.span.clone()).is_some()
            && self
                .notes
                .iter()
                .all(|(span, _)| text.get(span.clone()).is_some())
    }
}

/// A problem found after parsing, placed in the file like `toml` places its own errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending line with a caret under the offending text.
    excerpt: String,
    /// Other places that explain the problem, already located.
    pub notes: Vec<String>,
}

impl Invalid {
    pub(super) fn locate(text: &str, error: &Problem) -> Invalid {
        let span = narrow(text, error.span.clone(), error.within.clone());
        let (line, column) = line_column(text, span.start);
        let start = line_start(text, span.start);
        let line_text = text[start..].lines().next().unwrap_or("");
        let width = text[span.start..span.end.min(start + line_text.len())]
            .chars()
            .count()
            .max(1);
        let gutter = " ".repeat(line.to_string().len());
        let excerpt = format!(
            "{gutter} |\n{line} | {line_text}\n{gutter} | {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        );
        let notes = error
            .notes
            .iter()
            .map(|(span, note)| {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}: {note}")
            })
            .collect();
        Invalid {
            line,
            column,
            message: error.message.clone(),
            excerpt,
            notes,
        }
    }

    fn list(path: &str, errors: &[Invalid]) -> String {
        let blocks: Vec<String> = errors.iter().map(|e| format!("{path}: {e}")).collect();
        blocks.join("\n")
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error at line {}, column {}\n{}\n{}",
            self.line, self.column, self.excerpt, self.message
        )?;
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

/// Narrows `span` (a string value in `text`) to the bytes `within` of the string, when the
/// value is written so that its bytes are the string's: a literal string, or a basic string
/// without escapes. Otherwise the whole value is the place.
fn narrow(text: &str, span: Range<usize>, within: Option<Range<usize>>) -> Range<usize> {
    let raw = &text[span.clone()];
    let plain = (raw.starts_with('\'') && !raw.starts_with("'''"))
        || (raw.starts_with('"') && !raw.starts_with("\"\"\"") && !raw.contains('\\'));
    match within {
        Some(within) if plain => {
            let start = span.start + 1 + within.start;
            // An empty range (an empty pattern) still gets one caret, on the closing quote.
            let narrowed = start..(span.start + 1 + within.end).max(start + 1);
            match text.get(narrowed.clone()) {
                Some(_) => narrowed,
                None => span,
            }
        }
        _ => span,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let line = text[..offset].matches('\n').count() + 1;
    let column = text[line_start(text, offset)..offset].chars().count() + 1;
    (line, column)
}

/// The byte offset where the line holding `offset` starts.
pub(super) fn line_start(text: &str, offset: usize) -> usize {
    text[..offset].rfind('\n').map_or(0, |n| n + 1)
}
