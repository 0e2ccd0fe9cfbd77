//! `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL` through cachet act on cachet's clients: the
//! connections applications opened to cachet, with cachet's client ids, their own addresses
//! and the names they set. An application behind cachet sees itself and its peers as it
//! would at Redis, and can find and kill a peer by id, address or name; cachet's own
//! connections to Redis are never listed, so no filter (`SKIPME no`, `TYPE normal`, `USER`)
//! can kill them and fail every other client's commands.
//!
//! A listing asks each session for its line through its inbox (`Inbox::Describe`), so the
//! request path keeps no shared per-client state; a session that has not answered within
//! [`DESCRIBE_WAIT`] is left out. The reply is bounded by `proxy.max_clients` lines of a few
//! hundred bytes each.
//!
//! Fields are Redis 7.0's, in its order. cachet fills what it knows of its client: `fd`,
//! `name`, `age`, `idle`, `db`, `sub` (channels and patterns together, as Redis counts them
//! in its confirmations; `psub` is 0), `ssub`, `multi` (0 inside a transaction, not the
//! number queued), `qbuf` (unparsed input), `omem` (unwritten output), `cmd`, `user`,
//! `redir`, `resp`; `flags` has `O` (MONITOR), `S` (SYNC/PSYNC), `P` (subscribed), `x`
//! (MULTI) or `N`. Buffer fields cachet does not keep are 0.
//!
//! A client on another ACL user's pool (`upstream::identity`) gets the same answers once
//! Redis has said that user may run the command as sent (`ACL DRYRUN`, `super::acl`;
//! refused, Redis's own `-NOPERM`), so it cannot reach cachet's connections either. One
//! signed in on a connection of its own (past `max_user_pools`) sends them to Redis there,
//! where its rights are checked, and so does a transaction, where they are queued.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::*;

/// How long a listing waits for the other sessions' lines.
const DESCRIBE_WAIT: Duration = Duration::from_secs(1);

/// Container commands, whose `cmd=` names the subcommand too (`client|list`). A `match`,
/// not a list scan: it runs for every command.
fn is_container(name: &[u8]) -> bool {
    matches!(
        name,
        b"acl"
            | b"client"
            | b"cluster"
            | b"command"
            | b"config"
            | b"function"
            | b"latency"
            | b"memory"
            | b"module"
            | b"object"
            | b"pubsub"
            | b"script"
            | b"slowlog"
            | b"xgroup"
            | b"xinfo"
    )
}

/// The last command a client sent, as `CLIENT LIST` names it.
#[derive(Clone, Copy)]
pub(super) struct LastCommand {
    buf: [u8; 40],
    len: u8,
}

impl Default for LastCommand {
    fn default() -> Self {
        let mut last = LastCommand {
            buf: [0; 40],
            len: 0,
        };
        last.push(b"NULL");
        last
    }
}

impl LastCommand {
    /// Notes a command: its lowercase `name`, and for a container its subcommand.
    pub(super) fn set(&mut self, name: &[u8], request: &Request) {
        self.len = 0;
        self.push(name);
        if is_container(name)
            && let Some(sub) = request.arg(1)
        {
            self.push(b"|");
            let start = self.len as usize;
            self.push(sub);
            self.buf[start..self.len as usize].make_ascii_lowercase();
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = self.len as usize;
        let n = bytes.len().min(self.buf.len() - start);
        self.buf[start..start + n].copy_from_slice(&bytes[..n]);
        self.len += n as u8;
    }

    fn as_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.buf[..self.len as usize])
    }
}

/// Redis's client types, as `TYPE` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientType {
    Normal,
    Replica,
    Pubsub,
    Master,
}

fn client_type(name: &[u8]) -> Option<ClientType> {
    match name.to_ascii_lowercase().as_slice() {
        b"normal" => Some(ClientType::Normal),
        b"slave" | b"replica" => Some(ClientType::Replica),
        b"pubsub" => Some(ClientType::Pubsub),
        b"master" => Some(ClientType::Master),
        _ => None,
    }
}

fn unknown_type(name: &[u8]) -> Reply {
    Reply::error(format!(
        "ERR Unknown client type '{}'",
        String::from_utf8_lossy(name)
    ))
}

fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

/// One client as `CLIENT LIST` shows it.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub(super) id: i64,
    pub(super) addr: SocketAddr,
    pub(super) laddr: SocketAddr,
    pub(super) fd: i32,
    pub(super) name: Option<Bytes>,
    pub(super) age: u64,
    pub(super) idle: u64,
    pub(super) kind: ClientType,
    pub(super) flags: String,
    pub(super) db: u32,
    pub(super) sub: i64,
    pub(super) ssub: i64,
    pub(super) multi: i64,
    pub(super) qbuf: usize,
    pub(super) omem: usize,
    pub(super) cmd: String,
    pub(super) user: String,
    pub(super) redir: i64,
    pub(super) resp: u8,
}

impl ClientView {
    /// Appends its line, with the newline, in Redis 7.0's format.
    fn write_line(&self, out: &mut String) {
        let name = self
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let events = if self.omem > 0 { "rw" } else { "r" };
        let _ = writeln!(
            out,
            "id={} addr={} laddr={} fd={} name={name} age={} idle={} flags={} db={} sub={} \
             psub=0 ssub={} multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 \
             obl=0 oll=0 omem={} tot-mem={} events={events} cmd={} user={} redir={} resp={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            self.age,
            self.idle,
            self.flags,
            self.db,
            self.sub,
            self.ssub,
            self.multi,
            self.qbuf,
            self.omem,
            self.qbuf + self.omem,
            self.cmd,
            self.user,
            self.redir,
            self.resp,
        );
    }
}

/// `CLIENT LIST`'s arguments.
#[derive(Debug, PartialEq)]
enum ListFilter {
    All,
    Type(ClientType),
    Ids(Vec<i64>),
}

/// Parses `CLIENT LIST [TYPE t | ID id ...]` with Redis 7.0's errors.
fn parse_list(args: &[Bytes]) -> Result<ListFilter, Reply> {
    match args.get(2).map(|a| a.to_ascii_lowercase()).as_deref() {
        None => Ok(ListFilter::All),
        Some(b"type") if args.len() == 4 => client_type(&args[3])
            .map(ListFilter::Type)
            .ok_or_else(|| unknown_type(&args[3])),
        Some(b"id") if args.len() > 3 => args[3..]
            .iter()
            .map(|a| {
                std::str::from_utf8(a)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| Reply::error("ERR Invalid client ID"))
            })
            .collect::<Result<_, _>>()
            .map(ListFilter::Ids),
        Some(_) => Err(syntax_error()),
    }
}

/// `CLIENT KILL`'s arguments: the old form (one address, `+OK` or `No such client`) or
/// filters (all must match; the reply is how many were killed).
#[derive(Debug, Default, PartialEq)]
struct KillFilter {
    old_form: bool,
    id: Option<i64>,
    kind: Option<ClientType>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    skipme: bool,
}

/// Parses `CLIENT KILL` as Redis 7.0 does, with its errors.
fn parse_kill(args: &[Bytes]) -> Result<KillFilter, Reply> {
    let text = |a: &Bytes| String::from_utf8_lossy(a).into_owned();
    if args.len() == 3 {
        return Ok(KillFilter {
            old_form: true,
            addr: Some(text(&args[2])),
            ..KillFilter::default()
        });
    }
    let mut filter = KillFilter {
        skipme: true,
        ..KillFilter::default()
    };
    let mut i = 2;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else {
            return Err(syntax_error());
        };
        match args[i].to_ascii_lowercase().as_slice() {
            b"id" => {
                let id = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|&id| id >= 1)
                    .ok_or_else(|| Reply::error("ERR client-id should be greater than 0"))?;
                filter.id = Some(id);
            }
            b"type" => filter.kind = Some(client_type(value).ok_or_else(|| unknown_type(value))?),
            b"addr" => filter.addr = Some(text(value)),
            b"laddr" => filter.laddr = Some(text(value)),
            b"user" => filter.user = Some(text(value)),
            b"skipme" => {
                filter.skipme = match value.to_ascii_lowercase().as_slice() {
                    b"yes" => true,
                    b"no" => false,
                    _ => return Err(syntax_error()),
                }
            }
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    Ok(filter)
}

impl KillFilter {
    fn matches(&self, view: &ClientView, me: i64) -> bool {
        self.addr
            .as_ref()
            .is_none_or(|a| *a == view.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| *a == view.laddr.to_string())
            && self.kind.is_none_or(|k| k == view.kind)
            && self.id.is_none_or(|id| id == view.id)
            && self.user.as_ref().is_none_or(|u| *u == view.user)
            && !(self.skipme && view.id == me)
    }
}

impl Session {
    /// This client as `CLIENT LIST` shows it.
    pub(super) fn view(&self) -> ClientView {
        use std::os::fd::AsRawFd;
        let d = &self.pinning.divergence;
        let replica = self.pinning.link.as_ref().is_some_and(|l| l.replication);
        let mut flags = String::new();
        if d.stream {
            flags.push(if replica { 'S' } else { 'O' });
        }
        if d.pubsub() {
            flags.push('P');
        }
        if d.multi {
            flags.push('x');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let kind = if replica {
            ClientType::Replica
        } else if d.pubsub() {
            ClientType::Pubsub
        } else {
            ClientType::Normal
        };
        let pool_user = self.services.upstream.config.credentials().map(|(u, _)| u);
        let user = self
            .user
            .as_ref()
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .or(pool_user)
            .unwrap_or_else(|| "default".to_owned());
        ClientView {
            id: self.id,
            addr: self.handle.addr,
            laddr: self.laddr,
            fd: self.reader.as_raw_fd(),
            name: self.name.clone(),
            age: self.created.elapsed().as_secs(),
            idle: self.last_activity.elapsed().as_secs(),
            kind,
            flags,
            db: self.db,
            sub: d.subscriptions.0,
            ssub: d.subscriptions.1,
            multi: if d.multi { 0 } else { -1 },
            qbuf: self.input.len(),
            omem: self.output.len(),
            cmd: self.last_command.as_str().into_owned(),
            user,
            redir: self.redirect,
            resp: match self.protocol {
                Protocol::Resp2 => 2,
                Protocol::Resp3 => 3,
            },
        }
    }

    /// `CLIENT INFO`: this client's own line.
    pub(super) fn client_info(&mut self, request: Request) {
        let mut out = String::new();
        self.view().write_line(&mut out);
        let reply = Reply::Verbatim(Bytes::from(out));
        match self.acl_user() {
            None => self.reply_local(reply),
            Some(user) => self.reply_later(request.clone(), move |services| async move {
                match super::acl::check(&services, &user, request.args).await {
                    Ok(()) => reply,
                    Err(refused) => refused,
                }
            }),
        }
    }

    /// `CLIENT LIST [TYPE t | ID id ...]` over cachet's clients.
    pub(super) fn client_list(&mut self, request: Request) {
        let filter = match parse_list(&request.args) {
            Ok(filter) => filter,
            Err(refusal) => return self.reply_local(refusal),
        };
        let me = self.view();
        let (user, argv) = (self.acl_user(), request.args.clone());
        self.reply_later(request, move |services| async move {
            if let Some(user) = &user
                && let Err(refused) = super::acl::check(&services, user, argv).await
            {
                return refused;
            }
            let mut views = gather(&services, me).await;
            match filter {
                ListFilter::All => {}
                ListFilter::Type(kind) => views.retain(|v| v.kind == kind),
                // In the order asked, as Redis looks each id up.
                ListFilter::Ids(ids) => {
                    views = ids
                        .iter()
                        .filter_map(|id| views.iter().find(|v| v.id == *id).cloned())
                        .collect()
                }
            }
            let mut out = String::new();
            views.iter().for_each(|v| v.write_line(&mut out));
            Reply::Verbatim(Bytes::from(out))
        });
    }

    /// `CLIENT KILL addr` or `CLIENT KILL <filter> <value> ...` over cachet's clients.
    pub(super) fn client_kill(&mut self, request: Request) {
        let filter = match parse_kill(&request.args) {
            Ok(filter) => filter,
            Err(refusal) => return self.reply_local(refusal),
        };
        let me = self.view();
        let own_id = self.id;
        let inbox = self.reply_tx.clone();
        let (user, argv) = (self.acl_user(), request.args.clone());
        self.reply_later(request, move |services| async move {
            if let Some(user) = &user
                && let Err(refused) = super::acl::check(&services, user, argv).await
            {
                return refused;
            }
            let views = gather(&services, me).await;
            if let Some(user) = &filter.user
                && !views.iter().any(|v| v.user == *user)
                && !user_exists(&services, user).await
            {
                return Reply::error(format!("ERR No such user '{user}'"));
            }
            let mut killed = 0;
            for view in views.iter().filter(|v| filter.matches(v, own_id)) {
                killed += 1;
                if view.id == own_id {
                    // Answered first, then closed, as Redis closes a client that kills itself.
                    let _ = inbox.send(Inbox::Close);
                } else if let Some(client) = services.clients.remove(view.id) {
                    // Unregistered at once, as Redis frees a killed client at once.
                    let _ = client.inbox.send(Inbox::Kill);
                }
            }
            match (filter.old_form, killed) {
                (true, 0) => Reply::error("ERR No such client"),
                (true, _) => Reply::ok(),
                (false, n) => Reply::Integer(n),
            }
        });
    }
}

/// Whether Redis knows the ACL user `name` (`ACL GETUSER` on the control client). If
/// cachet's user may not ask, it is taken to exist: the filter then matches no one, `:0`.
async fn user_exists(services: &Services, name: &str) -> bool {
    use fred::prelude::*;
    let reply: Result<Value, _> = services
        .upstream
        .control()
        .custom(fred::cmd!("ACL"), vec!["GETUSER", name])
        .await;
    !matches!(reply, Ok(Value::Null))
}

/// Every live client's line, this one's (`me`) included, in id order.
async fn gather(services: &Services, me: ClientView) -> Vec<ClientView> {
    let pending: Vec<_> = services
        .clients
        .all()
        .into_iter()
        .filter(|(id, _)| *id != me.id)
        .filter_map(|(_, client)| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            client.inbox.send(Inbox::Describe(tx)).ok().map(|_| rx)
        })
        .collect();
    let deadline = tokio::time::Instant::now() + DESCRIBE_WAIT;
    let mut views = vec![me];
    for rx in pending {
        if let Ok(Ok(view)) = tokio::time::timeout_at(deadline, rx).await {
            views.push(view);
        }
    }
    views.sort_by_key(|v| v.id);
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    fn error_of(reply: Reply) -> String {
        match reply {
            Reply::Error(text) => text,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn kill_arguments_parse_with_redis_errors() {
        let kill = |parts: &[&str]| parse_kill(&args(parts)).map_err(error_of);
        assert_eq!(
            kill(&["CLIENT", "KILL", "1.2.3.4:5"]).unwrap(),
            KillFilter {
                old_form: true,
                addr: Some("1.2.3.4:5".into()),
                ..KillFilter::default()
            }
        );
        let f = kill(&[
            "client", "kill", "ID", "7", "type", "PUBSUB", "skipme", "no",
        ])
        .unwrap();
        assert_eq!(
            (f.id, f.kind, f.skipme),
            (Some(7), Some(ClientType::Pubsub), false)
        );
        assert!(kill(&["client", "kill", "user", "u"]).unwrap().skipme);
        for (bad, error) in [
            (
                &["client", "kill", "id", "abc"][..],
                "ERR client-id should be greater than 0",
            ),
            (
                &["client", "kill", "id", "0"],
                "ERR client-id should be greater than 0",
            ),
            (
                &["client", "kill", "type", "foo"],
                "ERR Unknown client type 'foo'",
            ),
            (&["client", "kill", "skipme", "maybe"], "ERR syntax error"),
            (&["client", "kill", "foo", "bar"], "ERR syntax error"),
            (&["client", "kill", "maxage", "5"], "ERR syntax error"),
            (&["client", "kill", "id", "5", "type"], "ERR syntax error"),
        ] {
            assert_eq!(kill(bad).unwrap_err(), error, "{bad:?}");
        }
    }

    #[test]
    fn list_arguments_parse_with_redis_errors() {
        let list = |parts: &[&str]| parse_list(&args(parts)).map_err(error_of);
        assert_eq!(list(&["client", "list"]).unwrap(), ListFilter::All);
        assert_eq!(
            list(&["client", "list", "TYPE", "replica"]).unwrap(),
            ListFilter::Type(ClientType::Replica)
        );
        assert_eq!(
            list(&["client", "list", "id", "3", "9"]).unwrap(),
            ListFilter::Ids(vec![3, 9])
        );
        assert_eq!(
            list(&["client", "list", "type", "foo"]).unwrap_err(),
            "ERR Unknown client type 'foo'"
        );
        assert_eq!(
            list(&["client", "list", "id", "x"]).unwrap_err(),
            "ERR Invalid client ID"
        );
        assert_eq!(
            list(&["client", "list", "foo"]).unwrap_err(),
            "ERR syntax error"
        );
        assert_eq!(
            list(&["client", "list", "type"]).unwrap_err(),
            "ERR syntax error"
        );
    }

    #[test]
    fn a_line_has_redis_fields_in_redis_order() {
        let view = ClientView {
            id: 1 << 32,
            addr: "127.0.0.1:5000".parse().unwrap(),
            laddr: "127.0.0.1:6380".parse().unwrap(),
            fd: 9,
            name: Some(Bytes::from_static(b"a=b")),
            age: 3,
            idle: 1,
            kind: ClientType::Normal,
            flags: "N".into(),
            db: 0,
            sub: 0,
            ssub: 0,
            multi: -1,
            qbuf: 0,
            omem: 0,
            cmd: "client|list".into(),
            user: "default".into(),
            redir: -1,
            resp: 2,
        };
        let mut line = String::new();
        view.write_line(&mut line);
        assert_eq!(
            line,
            "id=4294967296 addr=127.0.0.1:5000 laddr=127.0.0.1:6380 fd=9 name=a=b age=3 idle=1 \
             flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 \
             multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|list \
             user=default redir=-1 resp=2\n"
        );
        let fields: Vec<&str> = line
            .split(' ')
            .map(|f| f.split('=').next().unwrap())
            .collect();
        assert_eq!(fields.len(), 28);
    }

    #[test]
    fn the_last_command_names_a_container_subcommand() {
        let mut last = LastCommand::default();
        assert_eq!(last.as_str(), "NULL");
        let request = Request::from_args(args(&["CLIENT", "LIST"]));
        last.set(b"client", &request);
        assert_eq!(last.as_str(), "client|list");
        last.set(b"get", &Request::from_args(args(&["GET", "k"])));
        assert_eq!(last.as_str(), "get");
        let long = "x".repeat(100);
        last.set(b"config", &Request::from_args(args(&["CONFIG", &long])));
        assert_eq!(last.as_str().len(), 40);
    }
}
