//! `COMMAND` through cachet: Redis's command table with cachet's own commands in it, so
//! clients that read it for key positions (cluster routing, client-side caching, redis-py's
//! and Lettuce's command parsers) know TAGSET, TAG and TAGS name a key and the others none.
//!
//! cachet's entries are described in `crate::resp::commands::OWN` and encoded here in the
//! client's protocol, shaped as Redis 7 shapes its own (RESP3 sets where Redis sends sets,
//! including its quirk of an empty *set* but a non-empty *array* of subcommands).
//!
//! * `COMMAND`, `COMMAND INFO` (all), `COMMAND DOCS` (all), `COMMAND COUNT`, `COMMAND LIST`
//!   (with or without `FILTERBY MODULE|ACLCAT|PATTERN`), and `COMMAND INFO`/`DOCS` naming
//!   one of cachet's commands: Redis's reply with cachet's entries added. Like `FUNCTION
//!   LIST` (`aside`), the command waits for the client's earlier replies, goes on the
//!   out-of-band lane in the client's protocol, and its reply is edited before it takes its
//!   place; later commands wait for it. An error from Redis (or the lane) is passed on as is.
//!   `COMMAND INFO` keeps Redis's order, cachet's entries in place of the nils Redis gives
//!   names it does not know; `COMMAND DOCS` appends cachet's after Redis's.
//! * `COMMAND GETKEYS`/`GETKEYSANDFLAGS` of one of cachet's commands: answered by cachet,
//!   with Redis's wording for its errors; of any other command, Redis's own answer.
//! * Anything else (`COMMAND HELP`, wrong arity, a syntax error): Redis's own answer.
//!
//! Inside MULTI, on a connection subscribed or streaming, with replies switched off, or
//! signed in as another ACL user (whose rights Redis checks), COMMAND goes to the client's
//! dedicated connection untouched (`route`).
//!
//! The edit walks the reply frame by frame with `crate::resp::reply_frame` (measured, never
//! decoded) and holds Redis's reply whole, as every reply is held until it is forwarded:
//! about 200 KiB for `COMMAND` on Redis 7.0, bounded by Redis, not by the client.

use super::*;
use crate::resp::commands::{OWN, OwnArg, OwnCommand};
use crate::upstream::Effect;

/// A reply shaped like Redis's, encoded in either protocol: sets and maps become arrays in
/// RESP2, as Redis sends them.
#[derive(Debug)]
enum Node {
    Bulk(String),
    Status(&'static str),
    Int(i64),
    Array(Vec<Node>),
    Set(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Node::Bulk(text) => {
                out.extend_from_slice(format!("${}\r\n{text}\r\n", text.len()).as_bytes())
            }
            Node::Status(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
            Node::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Node::Array(items) | Node::Set(items) => {
                let kind = if resp3 && matches!(self, Node::Set(_)) {
                    '~'
                } else {
                    '*'
                };
                out.extend_from_slice(format!("{kind}{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Node::Map(pairs) => {
                let header = match resp3 {
                    true => format!("%{}\r\n", pairs.len()),
                    false => format!("*{}\r\n", pairs.len() * 2),
                };
                out.extend_from_slice(header.as_bytes());
                for (key, value) in pairs {
                    Node::Bulk(key.clone()).encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }

    fn bytes(&self, protocol: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(protocol, &mut out);
        out
    }
}

fn bulk(text: &str) -> Node {
    Node::Bulk(text.to_owned())
}

fn statuses(items: &[&'static str]) -> Node {
    Node::Set(items.iter().map(|s| Node::Status(s)).collect())
}

/// A command's `COMMAND INFO` entry, as Redis 7.0 writes one (`addReplyCommandInfo`).
fn info_entry(command: &OwnCommand) -> Node {
    let (first, last, step) = command.key_range();
    let key_specs = command
        .key
        .iter()
        .map(|key| {
            Node::Map(vec![
                ("flags".into(), statuses(key.flags)),
                (
                    "begin_search".into(),
                    Node::Map(vec![
                        ("type".into(), bulk("index")),
                        (
                            "spec".into(),
                            Node::Map(vec![("index".into(), Node::Int(key.index))]),
                        ),
                    ]),
                ),
                (
                    "find_keys".into(),
                    Node::Map(vec![
                        ("type".into(), bulk("range")),
                        (
                            "spec".into(),
                            Node::Map(vec![
                                ("lastkey".into(), Node::Int(0)),
                                ("keystep".into(), Node::Int(1)),
                                ("limit".into(), Node::Int(0)),
                            ]),
                        ),
                    ]),
                ),
            ])
        })
        .collect();
    let subcommands: Vec<Node> = command.subcommands.iter().map(info_entry).collect();
    Node::Array(vec![
        bulk(command.name),
        Node::Int(command.arity),
        statuses(command.flags),
        Node::Int(first),
        Node::Int(last),
        Node::Int(step),
        statuses(command.acl_categories),
        Node::Set(command.tips.iter().map(|t| bulk(t)).collect()),
        Node::Set(key_specs),
        // Redis sends an empty set, or an array of entries.
        match subcommands.is_empty() {
            true => Node::Set(subcommands),
            false => Node::Array(subcommands),
        },
    ])
}

fn arg_docs(arg: &OwnArg, key_index: &mut i64) -> Node {
    let mut map = vec![
        ("name".into(), bulk(arg.name)),
        ("type".into(), bulk(arg.kind)),
    ];
    if arg.kind == "key" {
        map.push(("key_spec_index".into(), Node::Int(*key_index)));
        *key_index += 1;
    }
    if let Some(token) = arg.token {
        map.push(("token".into(), bulk(token)));
    }
    let mut flags = Vec::new();
    if arg.optional {
        flags.push("optional");
    }
    if arg.multiple {
        flags.push("multiple");
    }
    if !flags.is_empty() {
        map.push(("flags".into(), statuses(&flags)));
    }
    if !arg.arguments.is_empty() {
        let nested = arg
            .arguments
            .iter()
            .map(|a| arg_docs(a, key_index))
            .collect();
        map.push(("arguments".into(), Node::Array(nested)));
    }
    Node::Map(map)
}

/// A command's `COMMAND DOCS` value, as Redis 7.0 writes a module command's
/// (`addReplyCommandDocs`).
fn docs_entry(command: &OwnCommand) -> Node {
    let mut map = vec![
        ("summary".into(), bulk(command.summary)),
        ("since".into(), bulk("0.1.0")),
        ("group".into(), bulk("module")),
        ("complexity".into(), bulk(command.complexity)),
        ("module".into(), bulk("cachet")),
    ];
    if !command.arguments.is_empty() {
        let mut key_index = 0;
        let args = command
            .arguments
            .iter()
            .map(|a| arg_docs(a, &mut key_index))
            .collect();
        map.push(("arguments".into(), Node::Array(args)));
    }
    if !command.subcommands.is_empty() {
        let subs = command
            .subcommands
            .iter()
            .map(|s| (s.name.to_owned(), docs_entry(s)))
            .collect();
        map.push(("subcommands".into(), Node::Map(subs)));
    }
    Node::Map(map)
}

/// Every command and subcommand name, as `COMMAND LIST` lists them.
fn all_names() -> impl Iterator<Item = &'static OwnCommand> {
    OWN.iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands))
}

/// The names `COMMAND LIST [FILTERBY ...]` adds; `None` for arguments Redis should word the
/// error for.
fn list_names(args: &[Bytes]) -> Option<Vec<&'static str>> {
    let keep: Box<dyn Fn(&OwnCommand) -> bool> = match args {
        [] => Box::new(|_| true),
        [filterby, kind, value] if filterby.eq_ignore_ascii_case(b"filterby") => {
            let value = value.clone();
            match kind.to_ascii_lowercase().as_slice() {
                b"module" => {
                    let ours = value.eq_ignore_ascii_case(b"cachet");
                    Box::new(move |_| ours)
                }
                b"aclcat" => Box::new(move |c| {
                    c.acl_categories
                        .iter()
                        .any(|cat| cat.as_bytes()[1..].eq_ignore_ascii_case(&value))
                }),
                b"pattern" => Box::new(move |c| glob_match(&value, c.name.as_bytes())),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(all_names().filter(|c| keep(c)).map(|c| c.name).collect())
}

/// Redis's glob (`stringmatchlen`, case-insensitive): `*`, `?`, `[...]` with `^` and
/// ranges, `\` escaping the next byte.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let lower = |c: u8| c.to_ascii_lowercase();
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some((&c, tail)) = text.split_first() else {
                return false;
            };
            let (negate, mut p) = match rest.first() {
                Some(b'^') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let mut matched = false;
            loop {
                match p {
                    [] => break,
                    [b']', after @ ..] => {
                        p = after;
                        break;
                    }
                    [b'\\', x, after @ ..] => {
                        matched |= lower(*x) == lower(c);
                        p = after;
                    }
                    [a, b'-', b, after @ ..] if *b != b']' => {
                        let (lo, hi) = (lower(*a.min(b)), lower(*a.max(b)));
                        matched |= (lo..=hi).contains(&lower(c));
                        p = after;
                    }
                    [x, after @ ..] => {
                        matched |= lower(*x) == lower(c);
                        p = after;
                    }
                }
            }
            matched != negate && glob_match(p, tail)
        }
        Some((b'\\', [x, rest @ ..])) => {
            text.first().is_some_and(|c| lower(*c) == lower(*x)) && glob_match(rest, &text[1..])
        }
        Some((x, rest)) => {
            text.first().is_some_and(|c| lower(*c) == lower(*x)) && glob_match(rest, &text[1..])
        }
    }
}

/// A key argument and its key spec's flags.
type Key = (Bytes, &'static [&'static str]);

/// `COMMAND GETKEYS` / `GETKEYSANDFLAGS` of one of cachet's commands (`args` from the
/// command's name on): its key and the key's flags, or Redis's refusal, checked in Redis's
/// order. `None` for a command that is not cachet's.
fn getkeys(args: &[Bytes]) -> Option<Result<Key, Reply>> {
    let top = OWN
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(&args[0]))?;
    let command = match (top.subcommands.is_empty(), args.get(1)) {
        (false, Some(sub)) => {
            let full = [top.name.as_bytes(), b"|", sub].concat();
            match OwnCommand::find(&full) {
                Some(command) => command,
                None => return Some(Err(Reply::error("ERR Invalid command specified"))),
            }
        }
        _ => top,
    };
    let Some(key) = command.key else {
        return Some(Err(Reply::error("ERR The command has no key arguments")));
    };
    let argc = args.len() as i64;
    if (command.arity > 0 && command.arity != argc) || argc < -command.arity {
        return Some(Err(Reply::error(
            "ERR Invalid number of arguments specified for command",
        )));
    }
    Some(Ok((args[key.index as usize].clone(), key.flags)))
}

/// The reply to GETKEYS (`[key]`) or GETKEYSANDFLAGS (`[[key, flags]]`, flags a set in RESP3).
fn getkeys_reply((key, flags): Key, with_flags: bool, protocol: Protocol) -> Bytes {
    let mut out = b"*1\r\n".to_vec();
    if with_flags {
        out.extend_from_slice(b"*2\r\n");
    }
    // The key byte for byte, UTF-8 or not.
    out.extend_from_slice(format!("${}\r\n", key.len()).as_bytes());
    out.extend_from_slice(&key);
    out.extend_from_slice(b"\r\n");
    if with_flags {
        statuses(flags).encode(protocol, &mut out);
    }
    Bytes::from(out)
}

/// What to do with Redis's reply to a COMMAND subcommand.
#[derive(Debug)]
enum Merge {
    /// `COMMAND`, `COMMAND INFO`: append every entry.
    All,
    /// `COMMAND INFO name ...`: cachet's entries in place of Redis's nils.
    Info(Vec<Option<&'static OwnCommand>>),
    /// `COMMAND DOCS [name ...]`: append these.
    Docs(Vec<&'static OwnCommand>),
    Count,
    List(Vec<&'static str>),
}

/// The header of an aggregate frame: its type byte, element count and header length.
fn header(frame: &[u8]) -> Option<(u8, usize, usize)> {
    let end = frame.windows(2).position(|w| w == b"\r\n")?;
    let count = std::str::from_utf8(frame.get(1..end)?).ok()?.parse().ok()?;
    Some((*frame.first()?, count, end + 2))
}

/// The byte ranges of the `count` frames after `at`, which must end the reply.
fn elements(frame: &[u8], mut at: usize, count: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let len = crate::resp::reply_frame(&frame[at..]).ok()??.len;
        items.push(at..at + len);
        at += len;
    }
    (at == frame.len()).then_some(items)
}

/// Redis's reply with cachet's part merged in; `None` when the reply is not what a success
/// looks like (an error, say): it is then passed on as it is.
fn merge(frame: &[u8], merge: &Merge, protocol: Protocol) -> Option<Bytes> {
    let append = |kind: u8, entries: Vec<Vec<u8>>, per_entry: usize| {
        let (got, count, start) = header(frame)?;
        if got != kind {
            return None;
        }
        // A RESP3 map's count is of pairs.
        let frames = if kind == b'%' { count * 2 } else { count };
        elements(frame, start, frames)?;
        let mut out =
            format!("{}{}\r\n", kind as char, count + entries.len() * per_entry).into_bytes();
        out.extend_from_slice(&frame[start..]);
        entries.iter().for_each(|e| out.extend_from_slice(e));
        Some(Bytes::from(out))
    };
    match merge {
        Merge::All => append(
            b'*',
            OWN.iter().map(|c| info_entry(c).bytes(protocol)).collect(),
            1,
        ),
        Merge::Info(wanted) => {
            let (kind, count, start) = header(frame)?;
            if kind != b'*' || count != wanted.len() {
                return None;
            }
            let mut out = frame[..start].to_vec();
            for (range, ours) in elements(frame, start, count)?.into_iter().zip(wanted) {
                let nil = matches!(&frame[range.clone()], b"$-1\r\n" | b"*-1\r\n" | b"_\r\n");
                match ours {
                    Some(command) if nil => out.extend(info_entry(command).bytes(protocol)),
                    _ => out.extend_from_slice(&frame[range]),
                }
            }
            Some(Bytes::from(out))
        }
        Merge::Docs(commands) => {
            let (kind, per_entry) = match protocol {
                Protocol::Resp2 => (b'*', 2),
                Protocol::Resp3 => (b'%', 1),
            };
            let entries = commands
                .iter()
                .map(|c| {
                    let mut bytes = bulk(c.name).bytes(protocol);
                    bytes.extend(docs_entry(c).bytes(protocol));
                    bytes
                })
                .collect();
            append(kind, entries, per_entry)
        }
        Merge::Count => {
            let n: i64 = std::str::from_utf8(frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
                .ok()?
                .parse()
                .ok()?;
            Some(Bytes::from(format!(":{}\r\n", n + OWN.len() as i64)))
        }
        Merge::List(names) => append(
            b'*',
            names.iter().map(|n| bulk(n).bytes(protocol)).collect(),
            1,
        ),
    }
}

impl Session {
    /// `COMMAND [subcommand ...]` on a connection whose COMMAND cachet answers (`route`).
    pub(super) fn command_command(&mut self, request: Request) {
        let sub = request.arg(1).map(|s| s.to_ascii_lowercase());
        let names = request.args.get(2..).unwrap_or_default();
        let merge = match sub.as_deref() {
            None => Merge::All,
            Some(b"info") if names.is_empty() => Merge::All,
            Some(b"info") => Merge::Info(names.iter().map(|n| OwnCommand::find(n)).collect()),
            Some(b"docs") if names.is_empty() => Merge::Docs(OWN.iter().collect()),
            Some(b"docs") => {
                Merge::Docs(names.iter().filter_map(|n| OwnCommand::find(n)).collect())
            }
            Some(b"count") if names.is_empty() => Merge::Count,
            Some(b"list") => match list_names(names) {
                Some(ours) => Merge::List(ours),
                None => return self.command_to_redis(request),
            },
            Some(sub @ (b"getkeys" | b"getkeysandflags")) if !names.is_empty() => {
                return match getkeys(names) {
                    Some(Ok(key)) => {
                        let bytes = getkeys_reply(key, sub == b"getkeysandflags", self.protocol);
                        self.flush_batch();
                        match self.replies.slots.is_empty() {
                            true => self.output.extend_from_slice(&bytes),
                            false => self.replies.slots.push_back(Slot::Local(bytes)),
                        }
                    }
                    Some(Err(refusal)) => self.reply_local(refusal),
                    None => self.command_to_redis(request),
                };
            }
            _ => return self.command_to_redis(request),
        };
        let adds_nothing = match &merge {
            Merge::Info(wanted) => wanted.iter().all(Option::is_none),
            Merge::Docs(ours) => ours.is_empty(),
            Merge::List(ours) => ours.is_empty(),
            Merge::All | Merge::Count => false,
        };
        if adds_nothing {
            return self.command_to_redis(request);
        }
        let Some((request, id)) = self.slot_after_earlier_replies(request) else {
            return;
        };
        let upstream = self.services.upstream.clone();
        let metrics = self.services.metrics.clone();
        let inbox = self.reply_tx.clone();
        let protocol = self.protocol;
        tokio::spawn(async move {
            let reply = match upstream
                .aside(protocol)
                .call(request.raw, Effect::None)
                .await
            {
                Ok(bytes) => self::merge(&bytes, &merge, protocol).unwrap_or(bytes),
                Err(error) => {
                    metrics.errors.inc();
                    error.to_frame()
                }
            };
            let _ = inbox.send(Inbox::Done(id, reply));
        });
    }

    /// COMMAND as the client sent it, on the connection it uses.
    fn command_to_redis(&mut self, request: Request) {
        match self.pinning.link.is_some() {
            true => self.send_dedicated(request, b"command"),
            false => self.forward(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn entries_have_redis_shape_in_both_protocols() {
        let tags = OwnCommand::find(b"tags").unwrap();
        let resp2 = String::from_utf8(info_entry(tags).bytes(Protocol::Resp2)).unwrap();
        assert_eq!(
            resp2,
            "*10\r\n$4\r\ntags\r\n:2\r\n*4\r\n+readonly\r\n+noscript\r\n+no_multi\r\n+module\r\n\
             :1\r\n:1\r\n:1\r\n*3\r\n+@read\r\n+@keyspace\r\n+@slow\r\n\
             *1\r\n$29\r\nnondeterministic_output_order\r\n\
             *1\r\n*6\r\n$5\r\nflags\r\n*1\r\n+RO\r\n\
             $12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n\
             $9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n\
             *6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n"
        );
        let resp3 = String::from_utf8(info_entry(tags).bytes(Protocol::Resp3)).unwrap();
        assert!(
            resp3.starts_with("*10\r\n$4\r\ntags\r\n:2\r\n~4\r\n"),
            "{resp3}"
        );
        assert!(resp3.ends_with(
            "%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n~0\r\n"
        ));
        let policy = OwnCommand::find(b"policy").unwrap();
        let resp3 = String::from_utf8(info_entry(policy).bytes(Protocol::Resp3)).unwrap();
        assert!(
            resp3.contains("~0\r\n~0\r\n*3\r\n*10\r\n$11\r\npolicy|list\r\n"),
            "{resp3}"
        );
    }

    #[test]
    fn replies_are_merged_or_left_alone() {
        let p = Protocol::Resp2;
        let info = b"*2\r\n*1\r\n:1\r\n$-1\r\n";
        let tagset = OwnCommand::find(b"tagset");
        let out = merge(info, &Merge::Info(vec![None, tagset]), p).unwrap();
        let expected = [
            &b"*2\r\n*1\r\n:1\r\n"[..],
            &info_entry(tagset.unwrap()).bytes(p),
        ]
        .concat();
        assert_eq!(&out[..], &expected[..]);
        // A nil Redis gave for a name that is not cachet's stays nil.
        let out = merge(info, &Merge::Info(vec![None, None]), p).unwrap();
        assert_eq!(&out[..], &info[..]);
        assert_eq!(
            &merge(b":240\r\n", &Merge::Count, p).unwrap()[..],
            b":248\r\n"
        );
        let list = merge(b"*1\r\n$3\r\nget\r\n", &Merge::List(vec!["tag"]), p).unwrap();
        assert_eq!(&list[..], b"*2\r\n$3\r\nget\r\n$3\r\ntag\r\n");
        let docs = merge(b"%0\r\n", &Merge::Docs(vec![]), Protocol::Resp3).unwrap();
        assert_eq!(&docs[..], b"%0\r\n");
        let tags = OwnCommand::find(b"tags").unwrap();
        let docs = merge(
            b"%1\r\n$1\r\nx\r\n%0\r\n",
            &Merge::Docs(vec![tags]),
            Protocol::Resp3,
        );
        let ours = [
            bulk("tags").bytes(Protocol::Resp3),
            docs_entry(tags).bytes(Protocol::Resp3),
        ]
        .concat();
        assert_eq!(
            &docs.unwrap()[..],
            &[&b"%2\r\n$1\r\nx\r\n%0\r\n"[..], &ours].concat()[..]
        );
        for error in [&b"-ERR x\r\n"[..], b"*2\r\n:1\r\n"] {
            assert!(merge(error, &Merge::All, p).is_none());
            assert!(merge(error, &Merge::Count, p).is_none());
        }
    }

    #[test]
    fn getkeys_finds_the_key_or_says_why_not() {
        let keys = |words: &[&str]| match getkeys(&args(words)) {
            Some(Ok((key, flags))) => format!("{key:?} {flags:?}"),
            Some(Err(Reply::Error(e))) => e,
            other => format!("{other:?}"),
        };
        assert_eq!(
            keys(&["TAGSET", "k", "v", "TAGS", "t"]),
            r#"b"k" ["OW", "update"]"#
        );
        assert_eq!(keys(&["tag", "k", "t1", "t2"]), r#"b"k" ["RO"]"#);
        assert_eq!(keys(&["tags", "k"]), r#"b"k" ["RO"]"#);
        assert_eq!(
            keys(&["tags", "k", "x"]),
            "ERR Invalid number of arguments specified for command"
        );
        assert_eq!(
            keys(&["tagset", "k", "v"]),
            "ERR Invalid number of arguments specified for command"
        );
        assert_eq!(
            keys(&["TAGINVALIDATE", "t"]),
            "ERR The command has no key arguments"
        );
        assert_eq!(keys(&["emit", "e"]), "ERR The command has no key arguments");
        assert_eq!(
            keys(&["policy", "list"]),
            "ERR The command has no key arguments"
        );
        assert_eq!(keys(&["policy", "nope"]), "ERR Invalid command specified");
        assert!(getkeys(&args(&["get", "k"])).is_none());
        let key = (Bytes::from_static(b"k"), &["OW", "update"][..]);
        assert_eq!(
            &getkeys_reply(key.clone(), false, Protocol::Resp3)[..],
            b"*1\r\n$1\r\nk\r\n"
        );
        assert_eq!(
            &getkeys_reply(key, true, Protocol::Resp3)[..],
            b"*1\r\n*2\r\n$1\r\nk\r\n~2\r\n+OW\r\n+update\r\n"
        );
    }

    #[test]
    fn list_filters_as_redis_does() {
        let names = |words: &[&str]| list_names(&args(words)).map(|n| n.join(" "));
        assert_eq!(names(&[]).unwrap().split(' ').count(), OWN.len() + 3);
        assert_eq!(names(&["FILTERBY", "MODULE", "Cachet"]), names(&[]));
        assert_eq!(names(&["filterby", "module", "other"]).unwrap(), "");
        assert_eq!(
            names(&["FILTERBY", "PATTERN", "tag*"]).unwrap(),
            "taginvalidate tagset tag tags tagkeys"
        );
        assert_eq!(
            names(&["FILTERBY", "PATTERN", "policy|[r]?l*"]).unwrap(),
            "policy|reload"
        );
        assert_eq!(
            names(&["FILTERBY", "ACLCAT", "READ"]).unwrap(),
            "tags tagkeys"
        );
        assert_eq!(
            names(&["FILTERBY", "ACLCAT", "dangerous"]).unwrap(),
            "policy|reload policy|replay"
        );
        assert!(names(&["FILTERBY", "NOPE", "x"]).is_none());
        assert!(names(&["FILTERBY"]).is_none());
    }

    #[test]
    fn globs_match_as_redis_does() {
        for (pattern, text, expected) in [
            ("*", "anything", true),
            ("t?g", "TAG", true),
            ("tag[sk]*", "tagkeys", true),
            ("tag[^s]", "tags", false),
            ("tag[a-z]", "tagq", true),
            ("policy\\|list", "policy|list", true),
            ("tag", "tags", false),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern} {text}"
            );
        }
    }
}
