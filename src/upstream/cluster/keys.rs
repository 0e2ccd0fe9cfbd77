//! Where a command's keys are, and what a command without keys does on a cluster. Pure.
//!
//! Keys come from the command table's first/last/step triple (for a container command,
//! its subcommand's: `OBJECT ENCODING key`, `MEMORY USAGE key`). Redis marks commands whose
//! keys depend on other arguments `movablekeys` and reports no usable triple for them; their
//! key specs are `keynum` (a count argument) or `keyword` (after a word) forms, read here by
//! hand: EVAL/FCALL and their `_RO` forms, ZUNION/ZINTER/ZDIFF(STORE), SINTERCARD,
//! ZINTERCARD, LMPOP/ZMPOP/BLMPOP/BZMPOP, XREAD/XREADGROUP (`STREAMS`), SORT (`STORE`),
//! MIGRATE (`KEYS`), GEORADIUS(BYMEMBER) (`STORE`/`STOREDIST`).
//!
//! Shard channels (SSUBSCRIBE, SPUBLISH, SUNSUBSCRIBE) hash like keys.

use bytes::{Bytes, BytesMut};

use crate::resp::commands::CommandTable;

/// One command as it came through the pipe: its bytes, and where each argument sits in
/// them (no copy, no allocation per argument).
#[derive(Debug, Clone)]
pub struct Command {
    pub raw: Bytes,
    /// Per argument: where its `$len` header starts, and where its bytes start and end.
    spans: Vec<(u32, u32, u32)>,
}

impl Command {
    /// Frames the command at the front of `buf`, taking it off. The session wrote it, so it
    /// is always a multibulk of bulk strings (inline commands were encoded by then); `Err`
    /// names anything else. `Ok(None)`: not all here yet.
    pub fn next(buf: &mut BytesMut) -> Result<Option<Command>, &'static str> {
        let Some((count, mut at)) = line_number(buf, 0, b'*')? else {
            return Ok(None);
        };
        if count < 1 {
            return Err("an empty or null command");
        }
        let count = count as usize;
        let mut spans = Vec::with_capacity(count);
        for _ in 0..count {
            let Some((len, start)) = line_number(buf, at, b'$')? else {
                return Ok(None);
            };
            if len < 0 {
                return Err("a null argument");
            }
            let end = start + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("an argument not ended by CRLF");
            }
            spans.push((at as u32, start as u32, end as u32));
            at = end + 2;
        }
        let raw = buf.split_to(at).freeze();
        Ok(Some(Command { raw, spans }))
    }

    /// A command from its arguments (cachet's own, and tests).
    pub fn from_args(args: &[Bytes]) -> Command {
        let mut buf = BytesMut::from(&crate::resp::encode_command(args)[..]);
        Command::next(&mut buf)
            .ok()
            .flatten()
            .expect("an encoded command frames")
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn arg(&self, i: usize) -> &[u8] {
        let (_, start, end) = self.spans[i];
        &self.raw[start as usize..end as usize]
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        (i < self.spans.len()).then(|| self.arg(i))
    }

    /// Every argument, copied out (for state kept to replay).
    pub fn to_args(&self) -> Vec<Bytes> {
        self.spans
            .iter()
            .map(|&(_, start, end)| self.raw.slice(start as usize..end as usize))
            .collect()
    }

    /// The command made of argument 0 and the arguments `from..from + width` for each `from`
    /// in `groups`, copied as they were encoded.
    pub fn pick(&self, groups: &[usize], width: usize) -> Bytes {
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{}\r\n", 1 + groups.len() * width).as_bytes());
        let encoded = |i: usize| {
            let (header, _, end) = self.spans[i];
            &self.raw[header as usize..end as usize + 2]
        };
        out.extend_from_slice(encoded(0));
        for &from in groups {
            for i in from..from + width {
                out.extend_from_slice(encoded(i));
            }
        }
        out.freeze()
    }
}

/// The number in the `kind`-typed line at `at`, and where the line after it starts.
fn line_number(buf: &[u8], at: usize, kind: u8) -> Result<Option<(i64, usize)>, &'static str> {
    let Some(&first) = buf.get(at) else {
        return Ok(None);
    };
    if first != kind {
        return Err("not a multibulk of bulk strings");
    }
    let Some(cr) = buf[at..].iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    let cr = at + cr;
    if buf.len() < cr + 2 {
        return Ok(None);
    }
    let number = std::str::from_utf8(&buf[at + 1..cr])
        .ok()
        .and_then(|n| n.parse::<i64>().ok())
        .ok_or("a bad length")?;
    Ok(Some((number, cr + 2)))
}

/// Slot of a key (Redis's CRC16 with hash tags).
pub fn slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// What a command is to the router, beyond its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Routed by its keys (to any node when it has none).
    Plain,
    /// Answered by cachet: `PING` (with an optional message).
    Ping,
    /// Sent to every primary; the reply is the sum of the integers (`DBSIZE`).
    Sum,
    /// Sent to every primary; the reply is the concatenation of the arrays (`KEYS`).
    Concat,
    /// Sent to every primary; `+OK` when all said so, else the first error (`FLUSHALL`,
    /// `FUNCTION FLUSH`, `CONFIG SET`, ...).
    AllOk,
    /// Sent to every primary; the first primary's reply (`SCRIPT LOAD`, `FUNCTION LOAD`).
    AllFirst,
    /// `SCAN`, with a cursor that names the node.
    Scan,
    /// Connection state (AUTH, HELLO, SELECT, CLIENT SETNAME, READONLY, ...): sent to
    /// every node connection open and replayed on each one opened later.
    State,
    /// `RESET`: back to the connection's first state on every node connection.
    Reset,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, MONITOR: on one node (the cluster
    /// carries PUBLISH to every node); the connection streams from then on.
    Subscribe,
    /// SSUBSCRIBE / SUNSUBSCRIBE: on the channels' slot's primary.
    ShardSubscribe,
    /// Multi-key commands split per slot: MGET (values in order), DEL, UNLINK, EXISTS,
    /// TOUCH (integers summed), MSET (`+OK`).
    Split(Split),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Mget,
    Mset,
    Count,
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// What the router does with `command`.
pub fn kind(command: &Command) -> Kind {
    let name = command.arg(0);
    let sub = command.get(1).unwrap_or(b"");
    let one_of = |names: &[&str]| names.iter().any(|n| eq(name, n));
    if one_of(&["get", "set", "hget", "hset", "incr", "expire"]) {
        return Kind::Plain;
    }
    if eq(name, "ping") {
        return Kind::Ping;
    }
    if one_of(&["mget"]) {
        return Kind::Split(Split::Mget);
    }
    if one_of(&["mset"]) {
        return Kind::Split(Split::Mset);
    }
    if one_of(&["del", "unlink", "exists", "touch"]) {
        return Kind::Split(Split::Count);
    }
    if eq(name, "dbsize") {
        return Kind::Sum;
    }
    if eq(name, "keys") {
        return Kind::Concat;
    }
    if eq(name, "scan") {
        return Kind::Scan;
    }
    if one_of(&["flushall", "flushdb"]) {
        return Kind::AllOk;
    }
    if eq(name, "script") {
        if eq(sub, "load") {
            return Kind::AllFirst;
        }
        if eq(sub, "flush") {
            return Kind::AllOk;
        }
    }
    if eq(name, "function") {
        if eq(sub, "load") {
            return Kind::AllFirst;
        }
        if eq(sub, "flush") || eq(sub, "delete") || eq(sub, "restore") {
            return Kind::AllOk;
        }
    }
    if eq(name, "config") && (eq(sub, "set") || eq(sub, "resetstat")) {
        return Kind::AllOk;
    }
    if one_of(&["auth", "hello", "select", "readonly", "readwrite"]) {
        return Kind::State;
    }
    if eq(name, "client")
        && ["setname", "setinfo", "tracking", "no-evict", "no-touch"]
            .iter()
            .any(|s| eq(sub, s))
    {
        return Kind::State;
    }
    if eq(name, "reset") {
        return Kind::Reset;
    }
    if eq(name, "multi") {
        return Kind::Multi;
    }
    if eq(name, "exec") {
        return Kind::Exec;
    }
    if eq(name, "discard") {
        return Kind::Discard;
    }
    if eq(name, "watch") {
        return Kind::Watch;
    }
    if eq(name, "unwatch") {
        return Kind::Unwatch;
    }
    if one_of(&[
        "subscribe",
        "psubscribe",
        "unsubscribe",
        "punsubscribe",
        "monitor",
    ]) {
        return Kind::Subscribe;
    }
    if one_of(&["ssubscribe", "sunsubscribe"]) {
        return Kind::ShardSubscribe;
    }
    Kind::Plain
}

/// The positions of `args`' keys (the command name is position 0).
pub fn positions(command: &Command, table: &CommandTable) -> Vec<usize> {
    let name = command.arg(0);
    let argc = command.len();
    let number = |i: usize| -> Option<usize> {
        std::str::from_utf8(command.get(i)?)
            .ok()?
            .parse::<usize>()
            .ok()
    };
    // `numkeys` at `at`, the keys right after it.
    let counted = |at: usize| -> Vec<usize> {
        match number(at) {
            Some(n) => (at + 1..(at + 1 + n).min(argc)).collect(),
            None => Vec::new(),
        }
    };
    let after_word = |word: &str, from: usize| -> Option<usize> {
        (from..argc).find(|&i| eq(command.arg(i), word))
    };
    let one_of = |names: &[&str]| names.iter().any(|n| eq(name, n));
    if one_of(&[
        "eval",
        "evalsha",
        "eval_ro",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
    ]) {
        return counted(2);
    }
    if one_of(&[
        "zunion",
        "zinter",
        "zdiff",
        "zintercard",
        "sintercard",
        "lmpop",
        "zmpop",
    ]) {
        return counted(1);
    }
    if one_of(&["zunionstore", "zinterstore", "zdiffstore"]) {
        let mut keys = vec![1];
        keys.extend(counted(2));
        return keys;
    }
    if one_of(&["blmpop", "bzmpop"]) {
        return counted(2);
    }
    if one_of(&["xread", "xreadgroup"]) {
        let Some(streams) = after_word("streams", 1) else {
            return Vec::new();
        };
        let rest = argc - streams - 1;
        return (streams + 1..streams + 1 + rest / 2).collect();
    }
    if eq(name, "sort_ro") {
        // No STORE: its one key is the first argument (`SORT_RO k STORE x` is a syntax error).
        return if argc > 1 { vec![1] } else { Vec::new() };
    }
    if eq(name, "sort") {
        let mut keys = vec![1];
        if let Some(store) = after_word("store", 2)
            && store + 1 < argc
        {
            keys.push(store + 1);
        }
        return keys;
    }
    if one_of(&["georadius", "georadiusbymember"]) {
        let mut keys = vec![1];
        for word in ["store", "storedist"] {
            if let Some(at) = after_word(word, 2)
                && at + 1 < argc
            {
                keys.push(at + 1);
            }
        }
        return keys;
    }
    if eq(name, "migrate") {
        if let Some(at) = after_word("keys", 6) {
            return (at + 1..argc).collect();
        }
        return if argc > 3 && !command.arg(3).is_empty() {
            vec![3]
        } else {
            Vec::new()
        };
    }
    let Some(info) = table.get(name) else {
        return Vec::new();
    };
    if info.first_key == 0 && argc > 1 {
        // A container: its subcommand names the keys (`OBJECT ENCODING key`).
        let mut full = Vec::with_capacity(name.len() + 1 + command.arg(1).len());
        full.extend_from_slice(name);
        full.push(b'|');
        full.extend_from_slice(command.arg(1));
        if let Some(sub) = table.get(&full) {
            return sub.key_positions(argc).collect();
        }
        return Vec::new();
    }
    info.key_positions(argc).collect()
}

/// Keys that hash to several slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossSlot;

/// The one slot of `positions`' keys; `Err(CrossSlot)` when they hash to several;
/// `Ok(None)` when there are none.
pub fn one_slot(command: &Command, positions: &[usize]) -> Result<Option<u16>, CrossSlot> {
    let mut found = None;
    for &i in positions {
        let s = slot(command.arg(i));
        match found {
            None => found = Some(s),
            Some(f) if f != s => return Err(CrossSlot),
            _ => {}
        }
    }
    Ok(found)
}

/// Redis Cluster's own error for keys in several slots.
pub const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Command {
        let parts: Vec<Bytes> = parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        Command::from_args(&parts)
    }

    #[test]
    fn commands_are_framed_in_place_and_picked_apart() {
        let mut buf =
            BytesMut::from(&b"*3\r\n$4\r\nMSET\r\n$1\r\na\r\n$0\r\n\r\n*1\r\n$4\r\nPI"[..]);
        let command = Command::next(&mut buf).unwrap().unwrap();
        assert_eq!(command.len(), 3);
        assert_eq!(command.arg(0), b"MSET");
        assert_eq!(command.arg(2), b"");
        assert!(
            Command::next(&mut buf).unwrap().is_none(),
            "a partial command waits"
        );
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
        let m = args(&["MSET", "a", "1", "b", "2", "c", "3"]);
        assert_eq!(
            &m.pick(&[1, 5], 2)[..],
            b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nc\r\n$1\r\n3\r\n"
        );
        assert!(Command::next(&mut BytesMut::from(&b"PING\r\n"[..])).is_err());
        assert!(Command::next(&mut BytesMut::from(&b"*1\r\n$-1\r\n"[..])).is_err());
    }

    #[test]
    fn slots_follow_hash_tags() {
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
    }

    #[test]
    fn movable_keys_are_found() {
        let table = CommandTable::default();
        assert_eq!(
            positions(&args(&["EVAL", "s", "2", "a", "b", "x"]), &table),
            [3, 4]
        );
        assert_eq!(
            positions(&args(&["FCALL", "f", "0", "x"]), &table),
            Vec::<usize>::new()
        );
        assert_eq!(
            positions(
                &args(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
                &table
            ),
            [1, 3, 4]
        );
        assert_eq!(
            positions(
                &args(&["XREAD", "COUNT", "2", "STREAMS", "a", "b", "0", "0"]),
                &table
            ),
            [4, 5]
        );
        assert_eq!(
            positions(&args(&["SORT", "a", "BY", "x", "STORE", "d"]), &table),
            [1, 5]
        );
        assert_eq!(
            positions(&args(&["BLMPOP", "0", "2", "a", "b", "LEFT"]), &table),
            [3, 4]
        );
        assert_eq!(
            positions(
                &args(&["MIGRATE", "h", "1", "", "0", "5", "KEYS", "a", "b"]),
                &table
            ),
            [7, 8]
        );
        // A count past the end takes what is there, never more.
        assert_eq!(positions(&args(&["EVAL", "s", "9", "a"]), &table), [3]);
    }

    #[test]
    fn one_slot_or_crossslot() {
        let a = args(&["MGET", "{t}a", "{t}b", "c"]);
        assert_eq!(one_slot(&a, &[1, 2]), Ok(Some(slot(b"t"))));
        assert_eq!(one_slot(&a, &[1, 2, 3]), Err(CrossSlot));
        assert_eq!(one_slot(&a, &[]), Ok(None));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&args(&["mget", "a"])), Kind::Split(Split::Mget));
        assert_eq!(kind(&args(&["Script", "LOAD", "x"])), Kind::AllFirst);
        assert_eq!(kind(&args(&["client", "setname", "x"])), Kind::State);
        assert_eq!(kind(&args(&["client", "id"])), Kind::Plain);
        assert_eq!(kind(&args(&["MSETNX", "a", "1"])), Kind::Plain);
    }
}
