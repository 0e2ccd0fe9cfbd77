//! `[warmers.NAME]` and `[heat]`: where warm requests go, how often, and how hot a key must be.
//!
//! Everything is checked while it is deserialized, so `toml` reports a mistake with its line:
//! a warmer is either `http` or `stream`, never both; an `http` template may hold
//! `{placeholders}` in its path and query only, so no parameter value can pick the host a
//! request goes to.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::str::FromStr;

use hyper::Uri;
use hyper::http::uri::Authority;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// Everything in a parameter value but RFC 3986's unreserved characters is percent-encoded,
/// `.` too: a value can then neither add a path segment, start a query, nor be a `..`.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// One `[warmers.NAME]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawWarmer")]
pub struct WarmerConfig {
    pub target: Target,
    /// Wait this long before sending (the original system's `setTimeout(..., 100)`), so the
    /// write that caused the invalidation has landed and a burst collapses into one request.
    pub delay_ms: u64,
    /// After a request was sent, an identical one is held back until this much time has
    /// passed since, then sent once for all that came meanwhile.
    pub dedup_ms: u64,
    /// Most requests waiting (delayed, or for a free sender); more are refused.
    pub queue: NonZeroUsize,
    /// Per attempt.
    pub timeout_ms: u64,
    /// Attempts after the first, for timeouts, connection errors and 5xx/408/429 answers.
    pub retries: u32,
    /// The first retry waits about this long; each later one twice as long (with jitter).
    pub backoff_ms: u64,
    /// Most requests of this warmer in flight at once.
    pub concurrency: NonZeroUsize,
    /// A request that names a key is sent only if the key was read at least this often in
    /// the recent heat window (0 = always).
    pub min_reads: u32,
}

/// Where a warmer sends its requests.
#[derive(Debug, Clone)]
pub enum Target {
    /// An endpoint of the application, which recomputes the entry and writes it through cachet.
    Http {
        url: UrlTemplate,
        method: HttpMethod,
    },
    /// A Redis Stream that the application's workers read with XREADGROUP.
    Stream { key: String, max_len: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HttpMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

/// The entry as written; [`WarmerConfig`] is what it becomes once checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmer {
    /// Parsed here rather than in `try_from`, so its errors point at the value.
    http: Option<UrlTemplate>,
    method: Option<HttpMethod>,
    stream: Option<String>,
    max_len: Option<u64>,
    delay_ms: Option<u64>,
    dedup_ms: Option<u64>,
    queue: Option<NonZeroUsize>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    backoff_ms: Option<u64>,
    concurrency: Option<NonZeroUsize>,
    min_reads: Option<u32>,
}

impl TryFrom<RawWarmer> for WarmerConfig {
    type Error = String;

    fn try_from(raw: RawWarmer) -> Result<Self, String> {
        let target = match (raw.http, raw.stream) {
            (Some(_), Some(_)) => {
                return Err("a warmer is `http` or `stream`, not both".to_owned());
            }
            (None, None) => {
                return Err("a warmer needs `http = \"http://...\"` or `stream = \"...\"`".into());
            }
            (Some(url), None) => {
                if raw.max_len.is_some() {
                    return Err("`max_len` is for `stream` warmers".to_owned());
                }
                Target::Http {
                    url,
                    method: raw.method.unwrap_or(HttpMethod::Get),
                }
            }
            (None, Some(key)) => {
                if raw.method.is_some() {
                    return Err("`method` is for `http` warmers".to_owned());
                }
                if key.is_empty() {
                    return Err("`stream` names a Redis key; it cannot be empty".to_owned());
                }
                let max_len = raw.max_len.unwrap_or(10_000);
                if max_len == 0 {
                    return Err("`max_len` must be at least 1".to_owned());
                }
                Target::Stream { key, max_len }
            }
        };
        let timeout_ms = raw.timeout_ms.unwrap_or(2_000);
        if timeout_ms == 0 {
            return Err("`timeout_ms` must be at least 1".to_owned());
        }
        let delay_ms = raw.delay_ms.unwrap_or(100);
        Ok(WarmerConfig {
            target,
            delay_ms,
            dedup_ms: raw.dedup_ms.unwrap_or(1_000),
            queue: raw
                .queue
                .unwrap_or(NonZeroUsize::new(10_000).expect("non-zero")),
            timeout_ms,
            retries: raw.retries.unwrap_or(3),
            backoff_ms: raw.backoff_ms.unwrap_or(100),
            concurrency: raw
                .concurrency
                .unwrap_or(NonZeroUsize::new(8).expect("non-zero")),
            min_reads: raw.min_reads.unwrap_or(0),
        })
    }
}

impl WarmerConfig {
    /// The `{placeholders}` a request must give values for.
    pub fn placeholders(&self) -> &[String] {
        match &self.target {
            Target::Http { url, .. } => &url.names,
            Target::Stream { .. } => &[],
        }
    }
}

/// `[heat]`: how reads of rule-matched keys are counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeatConfig {
    /// Reads are counted per window of this many seconds; a key's heat is its reads in the
    /// current and the previous window.
    pub window_secs: NonZeroU64,
    /// Memory of the sketch (both windows), in KiB; rounded down to a power of two.
    pub memory_kib: NonZeroUsize,
}

impl Default for HeatConfig {
    fn default() -> Self {
        HeatConfig {
            window_secs: NonZeroU64::new(60).expect("non-zero"),
            memory_kib: NonZeroUsize::new(512).expect("non-zero"),
        }
    }
}

/// An `http` warmer's URL: a fixed `http://host:port` and a path and query that may hold
/// `{name}` placeholders, filled with percent-encoded values.
#[derive(Clone)]
pub struct UrlTemplate {
    raw: String,
    /// `http://host:port`, as written.
    origin: String,
    authority: Authority,
    parts: Vec<Part>,
    names: Vec<String>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Value(String),
}

impl fmt::Debug for UrlTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl fmt::Display for UrlTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for UrlTemplate {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let fail = |why: &str| Err(format!("warmer url {raw:?}: {why}"));
        let Some((scheme, rest)) = raw.split_once("://") else {
            return fail("expected http://host:port/path");
        };
        if scheme.contains(['{', '}']) {
            return fail("placeholders may appear in the path and query only, not the scheme");
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return fail("only http:// is supported (the warm client speaks no TLS)");
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains(['{', '}']) {
            return fail(
                "placeholders may appear in the path and query only, not the host or port",
            );
        }
        if authority.contains('@') {
            return fail("credentials in the url are not supported");
        }
        let authority = match Authority::from_str(authority) {
            Ok(a) if !a.host().is_empty() => a,
            _ => return fail("no valid host"),
        };
        if tail.contains('#') {
            return fail("a #fragment is never sent; remove it");
        }
        let mut parts = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut text = tail;
        while let Some(open) = text.find(['{', '}']) {
            if text.as_bytes()[open] == b'}' {
                return fail("`}` without `{`");
            }
            let Some(close) = text[open..].find('}') else {
                return fail("unclosed `{`");
            };
            let name = &text[open + 1..open + close];
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if name.is_empty() || !name.chars().all(valid) {
                return fail(&format!(
                    "placeholder `{{{name}}}`: a name is letters, digits, `_` and `-`"
                ));
            }
            parts.push(Part::Text(text[..open].to_owned()));
            parts.push(Part::Value(name.to_owned()));
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
            text = &text[open + close + 1..];
        }
        parts.push(Part::Text(text.to_owned()));
        let template = UrlTemplate {
            raw: raw.to_owned(),
            origin: format!("http://{authority}"),
            authority,
            parts,
            names,
        };
        // Literal text that is not valid in a URI shows now, not at the first request.
        let sample: Vec<(String, String)> = template
            .names
            .iter()
            .map(|n| (n.clone(), "x".to_owned()))
            .collect();
        template
            .render(&sample)
            .map_err(|e| format!("warmer url {raw:?}: {e}"))?;
        Ok(template)
    }
}

impl<'de> Deserialize<'de> for UrlTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl UrlTemplate {
    /// The URL for `params` (the first value given for a name wins). The authority is the
    /// configured one whatever the values hold: they are percent-encoded, and the result is
    /// checked once more before it is used.
    pub fn render(&self, params: &[(String, String)]) -> Result<Uri, String> {
        let mut url = self.origin.clone();
        for part in &self.parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Value(name) => {
                    let value = params
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v)
                        .ok_or_else(|| format!("missing parameter '{name}'"))?;
                    url.extend(utf8_percent_encode(value, VALUE));
                }
            }
        }
        let uri = Uri::from_str(&url).map_err(|e| format!("invalid url: {e}"))?;
        if uri.authority() != Some(&self.authority) || uri.scheme_str() != Some("http") {
            return Err(format!("{url:?} does not go to {}", self.authority));
        }
        Ok(uri)
    }

    /// The configured `host:port`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_and_encoded() {
        let t: UrlTemplate = "http://127.0.0.1:3000/warm/teacher/{teacherId}?school={school}"
            .parse()
            .unwrap();
        let uri = t
            .render(&params(&[("teacherId", "1 2/3"), ("school", "a&b=c")]))
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:3000/warm/teacher/1%202%2F3?school=a%26b%3Dc"
        );
        let err = t.render(&params(&[("teacherId", "1")])).unwrap_err();
        assert!(err.contains("missing parameter 'school'"), "{err}");
    }

    #[test]
    fn values_cannot_reach_another_host_or_path() {
        let t: UrlTemplate = "http://127.0.0.1:3000/{a}".parse().unwrap();
        for evil in ["@evil:1/", "../..", "//evil.example/x", "x?y#z", "\\\\evil"] {
            let uri = t.render(&params(&[("a", evil)])).unwrap();
            assert_eq!(
                uri.authority().unwrap().as_str(),
                "127.0.0.1:3000",
                "{evil}"
            );
            assert_eq!(uri.path().matches('/').count(), 1, "{evil}: {uri}");
            assert!(uri.query().is_none(), "{evil}: {uri}");
        }
    }

    #[test]
    fn templates_that_could_pick_the_host_are_refused() {
        for (bad, why) in [
            ("http://{host}/x", "not the host or port"),
            ("http://127.0.0.1:{port}/x", "not the host or port"),
            ("http://a{b}.example/x", "not the host or port"),
            ("{scheme}://a/x", "not the scheme"),
            ("https://a/x", "only http://"),
            ("http://u:p@a/x", "credentials"),
            ("http:///x", "no valid host"),
            ("http://a/{x", "unclosed"),
            ("http://a/x}", "without"),
            ("http://a/{}", "placeholder"),
            ("http://a/x#{y}", "fragment"),
            ("127.0.0.1:3000/x", "expected http://"),
        ] {
            let err = bad.parse::<UrlTemplate>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
