//! The names of the index's keys in Redis: pure, injective, and mirrored by `index.lua`
//! (the tests check that every key the functions write is one [`Names`] predicts).
//!
//! # Keys
//!
//! With prefix `P` (`cachet`), tag `t` and data key `K`, the four kinds of key are
//! `P:t:{esc(t)}`, `P:e:{esc(t)}`, `P:d:{esc(t)}:E` and `P:k:{S(K)}:K`; what each holds is
//! the key table in docs/ARCHITECTURE.md, "Tag index" (an operator's reference, kept there
//! only).
//!
//! `esc` percent-encodes `%` and `}` and maps the empty tag to a lone `%`, so it is injective
//! and its output never closes a hash tag early. `S(K)` is `K`'s own hash tag when it has a
//! valid one (Redis's rule: the first `{`, the first `}` after it, something in between), else
//! `K` itself when `K` has no `}`, else `esc(K)`. The text after `S(K)`'s closing brace is `K`
//! verbatim, so every name is injective and [`Names::parse_key_tags`] inverts the per-key one.
//! The prefix may contain neither `{` nor `}`, so the first `{` of every name is cachet's.
//!
//! # Slots (Redis Cluster)
//!
//! * Per-tag keys (`t`, `e`, `d`) hash `esc(t)`, so they share one slot: the slot of `t`
//!   itself unless `t` contains `%` or `}`, and, when a tag equals the hash tag of the keys it
//!   covers (`user:42` for `{user:42}:profile`), the slot of those keys too.
//! * The per-key set hashes `S(K)`: `K`'s slot, except for the empty key and for keys that
//!   contain `}` without a valid hash tag (those land in `esc(K)`'s slot).
//!
//! On one server `cachet_write` reaches a data key's slot and each of its tags' slots, and
//! invalidation reaches every tagged key's slot. On Redis Cluster the names stay the same and
//! each call stays in one slot instead: the data key with its per-key set, or a tag with its
//! set, epoch and drain sets; cachet orders the calls between them so that the guarantees
//! hold (`cluster`, "Cluster"). The two kinds of key above whose per-key set is in another
//! slot cannot be written through the index there.

use bytes::{BufMut, Bytes, BytesMut};

use super::IndexError;

/// The names of the index's keys (see the module docs). Pure, and mirrored by `index.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: Bytes,
}

impl Names {
    /// Checks the prefix: not empty, no `{` or `}` (it would capture the hash tag).
    pub fn new(prefix: &str) -> Result<Self, IndexError> {
        let reason = if prefix.is_empty() {
            Some("it is empty")
        } else if prefix.contains(['{', '}']) {
            Some("it contains `{` or `}`, which would change every index key's slot")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IndexError::Prefix {
                prefix: prefix.to_owned(),
                reason,
            }),
            None => Ok(Names {
                prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            }),
        }
    }

    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }

    /// `P:t:{esc(tag)}`: the ZSET of the tag's keys.
    pub fn tag_keys(&self, tag: &[u8]) -> Bytes {
        self.per_tag(b't', tag, None)
    }

    /// `P:e:{esc(tag)}`: the tag's epoch.
    pub fn epoch(&self, tag: &[u8]) -> Bytes {
        self.per_tag(b'e', tag, None)
    }

    /// `P:d:{esc(tag)}:epoch`: the drain set of the invalidation that set `epoch`.
    pub fn drain(&self, tag: &[u8], epoch: u64) -> Bytes {
        self.per_tag(b'd', tag, Some(epoch))
    }

    /// `P:k:{S(key)}:key`: the SET of the key's tags.
    pub fn key_tags(&self, key: &[u8]) -> Bytes {
        let slot = slot_part(key);
        let mut out = BytesMut::with_capacity(self.prefix.len() + 6 + slot.len() + key.len());
        out.put_slice(&self.prefix);
        out.put_slice(b":k:{");
        out.put_slice(&slot);
        out.put_slice(b"}:");
        out.put_slice(key);
        out.freeze()
    }

    /// The data key a per-key set belongs to, if `name` is one.
    pub fn parse_key_tags<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        let rest = name.strip_prefix(&self.prefix[..])?.strip_prefix(b":k:{")?;
        let close = rest.iter().position(|&b| b == b'}')?;
        let key = rest[close + 1..].strip_prefix(b":")?;
        (slot_part(key)[..] == rest[..close]).then_some(key)
    }

    /// The SCAN MATCH pattern of the tag sets, drain sets and per-key sets: `P:[tdk]:*`, the
    /// prefix's glob characters escaped.
    pub(super) fn scan_pattern(&self) -> Vec<u8> {
        let mut pattern = glob_escape(&self.prefix);
        pattern.extend_from_slice(b":[tdk]:*");
        pattern
    }

    fn per_tag(&self, kind: u8, tag: &[u8], epoch: Option<u64>) -> Bytes {
        let escaped = escape(tag);
        let mut out = BytesMut::with_capacity(self.prefix.len() + escaped.len() + 26);
        out.put_slice(&self.prefix);
        out.put_slice(&[b':', kind, b':', b'{']);
        out.put_slice(&escaped);
        out.put_u8(b'}');
        if let Some(epoch) = epoch {
            out.put_u8(b':');
            out.put_slice(epoch.to_string().as_bytes());
        }
        out.freeze()
    }
}

/// `%` → `%25`, `}` → `%7D`, the empty string → `%`.
fn escape(s: &[u8]) -> Vec<u8> {
    if s.is_empty() {
        return b"%".to_vec();
    }
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'}' => out.extend_from_slice(b"%7D"),
            _ => out.push(b),
        }
    }
    out
}

/// The key's own hash tag, else the key when it has no `}`, else the key escaped.
fn slot_part(key: &[u8]) -> Vec<u8> {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return key[open + 1..open + 1 + len].to_vec();
    }
    if !key.is_empty() && !key.contains(&b'}') {
        return key.to_vec();
    }
    escape(key)
}

/// `*`, `?`, `[`, `]` and `\` backslash-escaped for a SCAN MATCH pattern.
fn glob_escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 4);
    for &b in s {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::redis_keyslot;
    use std::collections::HashMap;

    const TRICKY: &[&[u8]] = &[
        b"",
        b"a",
        b"%",
        b"%25",
        b"%7D",
        b"}",
        b"{",
        b"{}",
        b"}{",
        b"{a}",
        b"a{b}c",
        b"a{}b}",
        b"{{a}}",
        b"a:b",
        b"*",
        b"?",
        b"[a-z]",
        b"a b",
        b"\0",
        b"\xff\xfe",
        b"a%}b",
        b"a%7Db",
        b"%%",
    ];

    fn names() -> Names {
        Names::new("cachet").unwrap()
    }

    #[test]
    fn prefix_must_not_carry_a_hash_tag() {
        assert!(Names::new("cachet").is_ok());
        assert!(Names::new("my*app:[x]").is_ok());
        assert!(Names::new("").is_err());
        assert!(Names::new("a{b").is_err());
        assert!(Names::new("a}b").is_err());
    }

    #[test]
    fn per_tag_names_are_injective_and_share_a_slot() {
        let n = names();
        let mut seen = HashMap::new();
        for &tag in TRICKY {
            for name in [
                n.tag_keys(tag),
                n.epoch(tag),
                n.drain(tag, 1_700_000_000_000),
            ] {
                assert_eq!(
                    seen.insert(name.clone(), tag),
                    None,
                    "{name:?} for two tags"
                );
            }
            let slot = redis_keyslot(&n.tag_keys(tag));
            assert_eq!(redis_keyslot(&n.epoch(tag)), slot, "{tag:?}");
            assert_eq!(redis_keyslot(&n.drain(tag, 7)), slot, "{tag:?}");
        }
    }

    #[test]
    fn a_plain_tag_hashes_like_keys_with_that_hash_tag() {
        let n = names();
        for tag in [&b"user:42"[..], b"a{b", b"x y", b"\0\xff"] {
            let mut key = b"{".to_vec();
            key.extend_from_slice(tag);
            key.extend_from_slice(b"}:profile");
            assert_eq!(redis_keyslot(&n.tag_keys(tag)), redis_keyslot(&key));
        }
        assert_eq!(&n.tag_keys(b"a%}b")[..], b"cachet:t:{a%25%7Db}");
        assert_eq!(&n.epoch(b"")[..], b"cachet:e:{%}");
    }

    #[test]
    fn key_names_are_injective_parse_back_and_keep_the_slot() {
        let n = names();
        let mut seen = HashMap::new();
        for &key in TRICKY {
            let name = n.key_tags(key);
            assert_eq!(
                seen.insert(name.clone(), key),
                None,
                "{name:?} for two keys"
            );
            assert_eq!(n.parse_key_tags(&name), Some(key));
            let has_hash_tag = {
                let open = key.iter().position(|&b| b == b'{');
                open.is_some_and(|o| {
                    key[o + 1..]
                        .iter()
                        .position(|&b| b == b'}')
                        .is_some_and(|l| l > 0)
                })
            };
            if has_hash_tag || (!key.is_empty() && !key.contains(&b'}')) {
                assert_eq!(redis_keyslot(&name), redis_keyslot(key), "{key:?}");
            }
        }
        assert_eq!(&n.key_tags(b"a{b}c")[..], b"cachet:k:{b}:a{b}c");
        assert_eq!(&n.key_tags(b"x{y")[..], b"cachet:k:{x{y}:x{y");
        assert_eq!(&n.key_tags(b"a}b")[..], b"cachet:k:{a%7Db}:a}b");
        assert_eq!(n.parse_key_tags(b"cachet:t:{a}"), None);
        assert_eq!(n.parse_key_tags(b"cachet:k:{a}:b"), None);
    }

    #[test]
    fn escape_is_injective_on_random_bytes() {
        let alphabet = b"%}{27Da:";
        let mut seen = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..6);
            let s: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let e = escape(&s);
            assert!(!e.contains(&b'}') && !e.is_empty());
            if let Some(other) = seen.insert(e.clone(), s.clone()) {
                assert_eq!(other, s, "{e:?}");
            }
        }
    }

    #[test]
    fn scan_pattern_escapes_the_prefix() {
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\".to_vec());
    }
}
