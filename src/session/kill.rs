//! `CLIENT KILL` with filters (`ID`, `TYPE`, `USER`, `ADDR`, `LADDR`, `SKIPME`, and `MAXAGE`
//! where Redis has it, from 7.4) and the old
//! `CLIENT KILL addr:port`, evaluated by cachet for clients signed in as the pool's user.
//! Sent to Redis as they are, they would match cachet's own connections (a pooled one is a
//! `normal` client of the pool's user), and every client behind cachet would get
//! `-ERR upstream connection lost` / `unavailable` until the pool reconnects.
//!
//! What the filters are matched against is the set of clients as seen through cachet:
//!
//! * each of cachet's clients, as Redis would see it if it were connected directly: its
//!   cachet id, its own address, the address it reached cachet at (`LADDR`), and the user
//!   and type of its dedicated connection if it holds one (the pool's user and `normal`
//!   if not). Killing it closes it, as `CLIENT KILL ID` does; the caller itself only with
//!   `SKIPME no` (or the old form), after its reply, as Redis does;
//! * Redis's other clients, from `CLIENT LIST`, killed with `CLIENT KILL ID` each;
//! * never cachet's own connections: the pooled ones, the spares, the control client, the
//!   connection this runs on, any connection named `cachet:pool` (another cachet's pool),
//!   nor a client's dedicated connection (the client stands for it).
//!
//! Redis itself checks the syntax and the caller's rights first: cachet sends the filters
//! with `ID 9223372036854775807` appended (no client has that id, and a later `ID`
//! replaces an earlier one), so every refusal is Redis's own, worded by Redis, in the order
//! Redis checks. A dangling last argument is left out of that check and refused with
//! Redis's `syntax error` when nothing before it was refused. A filter that Redis accepts
//! but cachet does not know (a newer Redis's) is refused rather than ignored, which would
//! kill more than asked.
//!
//! A connection being opened or given back to the spares at that very moment is neither a
//! client's nor a spare yet: it may be counted, and killed, as one of Redis's.
//!
//! It runs off the session's task (`Session::reply_later`) on a connection of its own
//! (`Upstream::own_connection`), which queues behind no other client's commands. The
//! `CLIENT LIST` reply it reads is bounded (`LIST_LIMIT`); past it the command is answered
//! with an error and nothing is killed. A client signed in as another user sends `CLIENT
//! KILL` to its own dedicated connection, where Redis checks that user's rights.

use super::*;

/// The largest `CLIENT LIST` reply read (about 100,000 clients).
const LIST_LIMIT: usize = 32 << 20;

/// `TYPE` as Redis tells clients apart (`getClientType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Replica,
    Pubsub,
    Master,
}

impl Kind {
    fn parse(name: &[u8]) -> Option<Kind> {
        match name.to_ascii_lowercase().as_slice() {
            b"normal" => Some(Kind::Normal),
            b"slave" | b"replica" => Some(Kind::Replica),
            b"pubsub" => Some(Kind::Pubsub),
            b"master" => Some(Kind::Master),
            _ => None,
        }
    }

    /// From `CLIENT LIST`'s `flags`: `M` master, `S` replica (MONITOR shows `O` and counts as
    /// normal), `P` subscribed.
    fn from_flags(flags: &str) -> Kind {
        if flags.contains('M') {
            Kind::Master
        } else if flags.contains('S') {
            Kind::Replica
        } else if flags.contains('P') {
            Kind::Pubsub
        } else {
            Kind::Normal
        }
    }
}

/// The filters of one `CLIENT KILL`, already accepted by Redis.
#[derive(Debug, Default, PartialEq)]
struct Filters {
    id: Option<i64>,
    kind: Option<Kind>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    /// Only clients connected at least this many seconds.
    maxage: Option<i64>,
    skipme: bool,
    /// `CLIENT KILL addr:port`: `+OK` or `-ERR No such client`.
    old_form: bool,
}

impl Filters {
    /// Reads the filters as Redis does: later ones replace earlier ones. `Err` names a
    /// filter cachet does not know.
    fn parse(args: &[Bytes]) -> Result<Filters, String> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        if args.len() == 3 {
            return Ok(Filters {
                addr: Some(text(&args[2])),
                old_form: true,
                ..Filters::default()
            });
        }
        let mut filters = Filters {
            skipme: true,
            ..Filters::default()
        };
        for pair in args[2..].chunks_exact(2) {
            let value = &pair[1];
            match pair[0].to_ascii_lowercase().as_slice() {
                b"id" => filters.id = text(value).parse().ok(),
                b"type" => filters.kind = Kind::parse(value),
                b"addr" => filters.addr = Some(text(value)),
                b"laddr" => filters.laddr = Some(text(value)),
                b"user" => filters.user = Some(text(value)),
                b"maxage" => filters.maxage = text(value).parse().ok(),
                b"skipme" => filters.skipme = value.eq_ignore_ascii_case(b"yes"),
                _ => return Err(text(&pair[0])),
            }
        }
        Ok(filters)
    }

    fn matches(&self, client: &Candidate) -> bool {
        self.addr.as_ref().is_none_or(|a| *a == client.addr)
            && self.laddr.as_ref().is_none_or(|a| *a == client.laddr)
            && self.kind.is_none_or(|k| k == client.kind)
            && self.id.is_none_or(|id| id == client.id)
            && self.user.as_ref().is_none_or(|u| *u == client.user)
            && self.maxage.is_none_or(|age| client.age >= age)
            && !(self.skipme && client.is_caller)
    }
}

/// A client as Redis would list it.
#[derive(Debug)]
struct Candidate {
    id: i64,
    addr: String,
    laddr: String,
    user: String,
    kind: Kind,
    /// Seconds connected.
    age: i64,
    is_caller: bool,
    /// One of cachet's clients (closed by cachet), or a connection of Redis's (killed there).
    session: bool,
}

/// One line of `CLIENT LIST`.
#[derive(Debug, Default)]
struct Listed {
    id: i64,
    addr: String,
    laddr: String,
    name: String,
    flags: String,
    user: String,
    age: i64,
}

fn parse_list(text: &str) -> Vec<Listed> {
    text.lines()
        .filter_map(|line| {
            let mut entry = Listed::default();
            for field in line.split(' ') {
                let (key, value) = field.split_once('=')?;
                match key {
                    "id" => entry.id = value.parse().ok()?,
                    "addr" => entry.addr = value.to_owned(),
                    "laddr" => entry.laddr = value.to_owned(),
                    "name" => entry.name = value.to_owned(),
                    "flags" => entry.flags = value.to_owned(),
                    "user" => entry.user = value.to_owned(),
                    "age" => entry.age = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            Some(entry)
        })
        .collect()
}

/// The text of a RESP2 error frame, or `None` for any other frame.
fn error_text(frame: &[u8]) -> Option<String> {
    let text = frame.strip_prefix(b"-")?;
    Some(String::from_utf8_lossy(text).trim_end().to_owned())
}

/// The body of a RESP2 bulk string.
fn bulk_text(frame: &[u8]) -> Option<String> {
    let header = frame.windows(2).position(|w| w == b"\r\n")? + 2;
    let body = frame.get(header..frame.len().checked_sub(2)?)?;
    Some(String::from_utf8_lossy(body).into_owned())
}

impl Session {
    /// `CLIENT KILL` with filters, or the old form, for a client signed in as the pool's
    /// user: answered in order, off this task (see the module header).
    pub(super) fn client_kill(&mut self, request: Request) {
        let me = self.id;
        let closer = self.reply_tx.clone();
        let args = request.args.clone();
        self.reply_later(request, move |services| async move {
            let (reply, kills_caller) = kill(&services, &args, me).await;
            if kills_caller {
                // Before the reply (`Inbox` keeps order): no command after this one runs.
                let _ = closer.send(Inbox::Close);
            }
            reply
        });
    }
}

/// Evaluates `CLIENT KILL` for client `me`: the reply, and whether it killed `me`.
async fn kill(services: &Services, args: &[Bytes], me: i64) -> (Reply, bool) {
    let old_form = args.len() == 3;
    let filters = &args[2..];
    let dangling = !old_form && !filters.len().is_multiple_of(2);
    let mut check = args[..2].to_vec();
    if !old_form {
        check.extend_from_slice(&filters[..filters.len() - usize::from(dangling)]);
    }
    check.push(Bytes::from_static(b"ID"));
    check.push(Bytes::from(i64::MAX.to_string()));

    let upstream = &services.upstream;
    let unavailable = |e: UpstreamError| (Reply::error(format!("ERR {e}")), false);
    let mut conn = match upstream.own_connection().await {
        Ok(conn) => conn,
        Err(e) => return unavailable(e),
    };
    let client_id = crate::upstream::args(&["CLIENT", "ID"]);
    let client_list = crate::upstream::args(&["CLIENT", "LIST"]);
    let replies = match conn.run(&[client_id, check, client_list], LIST_LIMIT).await {
        Ok(replies) => replies,
        Err(e) => return unavailable(e),
    };
    if let Some(refusal) = error_text(&replies[1]) {
        return (Reply::error(refusal), false);
    }
    if dangling {
        return (Reply::error("ERR syntax error"), false);
    }
    let filters = match Filters::parse(args) {
        Ok(filters) => filters,
        Err(unknown) => {
            let refusal = format!("ERR cachet cannot evaluate the CLIENT KILL filter '{unknown}'");
            return (Reply::error(refusal), false);
        }
    };
    if let Some(refusal) = error_text(&replies[2]) {
        return (Reply::error(refusal), false);
    }
    let Some(list) = bulk_text(&replies[2]) else {
        return (
            Reply::error("ERR upstream: unexpected CLIENT LIST reply"),
            false,
        );
    };

    // cachet's own connections, and those that stand for one of its clients.
    let mut own = upstream.own_connection_ids().await;
    own.extend(crate::upstream::dedicated::parse_integer(&replies[0]));
    own.extend(upstream.control_id().await);
    let listed = parse_list(&list);
    let sessions = services.clients.all();
    let pool_user = upstream
        .config
        .credentials()
        .map_or_else(|| "default".to_owned(), |(user, _)| user);
    let mut candidates = Vec::with_capacity(listed.len() + sessions.len());
    for (id, handle) in &sessions {
        let dedicated = handle.upstream_id.load(Ordering::Relaxed);
        let entry = listed.iter().find(|l| dedicated != 0 && l.id == dedicated);
        candidates.push(Candidate {
            id: *id,
            addr: handle.addr.to_string(),
            laddr: handle.local.map(|a| a.to_string()).unwrap_or_default(),
            user: entry.map_or_else(|| pool_user.clone(), |e| e.user.clone()),
            kind: entry.map_or(Kind::Normal, |e| Kind::from_flags(&e.flags)),
            age: handle.connected.elapsed().as_secs() as i64,
            is_caller: *id == me,
            session: true,
        });
    }
    let dedicated: Vec<i64> = sessions
        .iter()
        .map(|(_, h)| h.upstream_id.load(Ordering::Relaxed))
        .collect();
    for entry in listed {
        if own.contains(&entry.id) || dedicated.contains(&entry.id) || entry.name == "cachet:pool" {
            continue;
        }
        candidates.push(Candidate {
            id: entry.id,
            addr: entry.addr,
            laddr: entry.laddr,
            user: entry.user,
            kind: Kind::from_flags(&entry.flags),
            age: entry.age,
            is_caller: false,
            session: false,
        });
    }

    let mut killed = 0;
    let mut kills_caller = false;
    let mut at_redis = Vec::new();
    for candidate in candidates.iter().filter(|c| filters.matches(c)) {
        if candidate.is_caller {
            kills_caller = true;
            killed += 1;
        } else if candidate.session {
            if let Some(client) = services.clients.remove(candidate.id) {
                let _ = client.inbox.send(Inbox::Kill);
                killed += 1;
            }
        } else {
            let id = candidate.id.to_string();
            at_redis.push(crate::upstream::args(&["CLIENT", "KILL", "ID", &id]));
        }
    }
    if !at_redis.is_empty() {
        match conn
            .run(&at_redis, crate::upstream::SETUP_REPLY_LIMIT)
            .await
        {
            Ok(replies) => killed += replies.iter().filter(|r| &r[..] == b":1\r\n").count(),
            Err(e) => return unavailable(e),
        }
    }
    let reply = match (old_form, killed) {
        (true, 0) => Reply::error("ERR No such client"),
        (true, _) => Reply::ok(),
        (false, n) => Reply::Integer(n as i64),
    };
    (reply, kills_caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Bytes> {
        crate::upstream::args(parts)
    }

    fn filters(parts: &[&str]) -> Filters {
        Filters::parse(&args(parts)).expect("filters cachet knows")
    }

    fn candidate(id: i64, kind: Kind, user: &str, is_caller: bool) -> Candidate {
        Candidate {
            id,
            addr: format!("127.0.0.1:{id}"),
            laddr: "127.0.0.1:6380".into(),
            user: user.into(),
            kind,
            age: id,
            is_caller,
            session: true,
        }
    }

    #[test]
    fn filters_are_read_as_redis_reads_them() {
        let f = filters(&["CLIENT", "KILL", "127.0.0.1:5"]);
        assert!(f.old_form && !f.skipme);
        assert_eq!(f.addr.as_deref(), Some("127.0.0.1:5"));
        let f = filters(&[
            "client", "kill", "type", "Replica", "id", "4", "ID", "7", "skipme", "NO",
        ]);
        assert_eq!(f.kind, Some(Kind::Replica));
        assert_eq!(f.id, Some(7), "a later ID replaces an earlier one");
        assert!(!f.skipme && !f.old_form);
        assert!(filters(&["CLIENT", "KILL", "USER", "x"]).skipme);
    }

    #[test]
    fn every_filter_must_match_and_skipme_spares_the_caller() {
        let me = candidate(10, Kind::Normal, "default", true);
        let other = candidate(11, Kind::Normal, "default", false);
        let subscriber = candidate(12, Kind::Pubsub, "app", false);
        let normal = filters(&["CLIENT", "KILL", "TYPE", "normal"]);
        assert!(!normal.matches(&me) && normal.matches(&other) && !normal.matches(&subscriber));
        let all = filters(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"]);
        assert!(all.matches(&me));
        let app = filters(&["CLIENT", "KILL", "USER", "app", "ID", "12"]);
        assert!(app.matches(&subscriber) && !app.matches(&other));
        let addr = filters(&["CLIENT", "KILL", "ADDR", "127.0.0.1:11"]);
        assert!(addr.matches(&other) && !addr.matches(&subscriber));
        let old = filters(&["CLIENT", "KILL", "127.0.0.1:10"]);
        assert!(old.matches(&me), "the old form can kill the caller");
        // `age` is the id in these candidates: 11 and 12 seconds.
        let old_enough = filters(&["CLIENT", "KILL", "MAXAGE", "12"]);
        assert!(old_enough.matches(&subscriber) && !old_enough.matches(&other));
        let unknown = Filters::parse(&args(&["CLIENT", "KILL", "NOT-ID", "3"]));
        assert_eq!(unknown, Err("NOT-ID".to_owned()), "never ignored");
    }

    #[test]
    fn client_list_lines_and_flags() {
        let listed = parse_list(
            "id=3 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 fd=8 name=cachet:pool age=1 flags=N user=default\n\
             id=9 addr=[::1]:5001 laddr=[::1]:6379 fd=9 name= age=0 flags=P user=app\n",
        );
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].name, "cachet:pool");
        assert_eq!(listed[1].addr, "[::1]:5001");
        assert_eq!(Kind::from_flags(&listed[1].flags), Kind::Pubsub);
        assert_eq!(
            Kind::from_flags("O"),
            Kind::Normal,
            "MONITOR counts as normal"
        );
        assert_eq!(Kind::from_flags("S"), Kind::Replica);
        assert_eq!(bulk_text(b"$3\r\nabc\r\n").as_deref(), Some("abc"));
        assert_eq!(
            error_text(b"-ERR syntax error\r\n").as_deref(),
            Some("ERR syntax error")
        );
    }
}
