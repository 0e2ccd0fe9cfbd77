//! Phase 2, **route**: where one command goes, decided from the command and what the session
//! knows of its client, and nothing else: no socket, no Redis. [`route`] is a pure function,
//! so every routing rule is a row in this file's table test.
//!
//! The answers, in the order they are checked:
//! 1. a client not yet authenticated may only sign in (AUTH, HELLO), QUIT or RESET;
//! 2. commands about the connection itself that cachet answers (QUIT, CLIENT, and on the
//!    pool RESET, AUTH, HELLO, INFO), and, on the pool, commands that act on other
//!    connections' work, which go out of band ([`acts_on_others`]); COMMAND, whose reply
//!    gains cachet's own commands ([`merges_command`]);
//! 3. cachet's own commands (WARM, EMIT, POLICY, the TAG commands), through the one gate
//!    ([`gate`]) that decides who may run them;
//! 4. a client with a dedicated connection sends everything else there;
//! 5. a command that would change its connection's state at Redis, block it, or hold it up
//!    for everyone (see [`needs_dedicated`], and [`postponed_by_write_pause`] while a
//!    `CLIENT PAUSE ... WRITE` sent through cachet holds) takes the client to a dedicated
//!    connection;
//! 6. everything else joins the pool's batch.

use crate::resp::Request;
use crate::resp::commands::{CommandInfo, CommandTable};
use crate::resp::reply::Reply;

/// A request larger than this (bytes, or arguments) travels on a connection of its own:
/// Redis reads and parses a connection's commands in order, so on the shared connection the
/// other clients' commands would wait behind it (a 21 MB command of 3 million arguments
/// held them for 200-500 ms). At these sizes Redis takes about a millisecond.
pub(super) const SHARED_MAX_BYTES: usize = 1 << 20;
pub(super) const SHARED_MAX_ARGS: usize = 10_000;

/// Why a client holds a dedicated connection. While any of these is set it keeps it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Divergence {
    pub multi: bool,
    pub watch: bool,
    /// Subscribed to channels (normal + pattern) and shard channels.
    pub subscriptions: (i64, i64),
    /// MONITOR, SYNC/PSYNC: the connection became a stream of events.
    pub stream: bool,
    /// SELECT of a database other than the pool's.
    pub database: bool,
    /// AUTH or HELLO AUTH with credentials other than the pool's.
    pub user: bool,
    /// CLIENT TRACKING, CLIENT REPLY, CLIENT NO-EVICT/NO-TOUCH, CLIENT INFO.
    pub client_mode: bool,
    /// CLIENT REPLY OFF/SKIP: replies are not one per command any more.
    pub reply_mode: bool,
}

impl Divergence {
    pub fn pubsub(&self) -> bool {
        self.subscriptions.0 > 0 || self.subscriptions.1 > 0
    }

    pub fn any(&self) -> bool {
        self.multi
            || self.watch
            || self.pubsub()
            || self.stream
            || self.database
            || self.user
            || self.client_mode
    }
}

/// What routing reads of the client.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ClientState {
    /// Signed in with the pool's credentials (or none are needed).
    pub authenticated: bool,
    /// Holds a dedicated connection.
    pub pinned: bool,
    pub divergence: Divergence,
    /// The database the pool's connections use.
    pub pool_db: u32,
    /// A `CLIENT PAUSE ... WRITE` sent through cachet holds Redis now.
    pub writes_paused: bool,
    /// On the pool of an ACL user other than cachet's (`upstream::identity`).
    pub other_user: bool,
}

/// cachet's own commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Own {
    Warm,
    /// EMIT and POLICY.
    Policy,
    /// TAGINVALIDATE, TAGSET, TAG, TAGS, TAGKEYS.
    Tag,
}

/// Where a command goes.
#[derive(Debug)]
pub(super) enum Route<'t> {
    /// cachet answers this error; the command goes nowhere.
    Refuse(Reply),
    /// `+OK`, then the connection closes once the replies owed are written.
    Quit,
    /// CLIENT: cachet answers some subcommands itself (`Session::client_command`).
    Client,
    /// RESET, AUTH, HELLO and INFO on the pool: cachet answers them, or rewrites them.
    Reset,
    Auth,
    Hello,
    Info,
    /// COMMAND: Redis's command table with cachet's commands added (`Session::command_command`).
    Command,
    /// A command that acts on other connections' work, on the out-of-band lane
    /// (`upstream::aside`), answered in order.
    Aside,
    /// FUNCTION FLUSH, DELETE or RESTORE: may remove cachet's own library, which is loaded
    /// again before the reply; FUNCTION LIST, which leaves it out (`Session::functions_command`).
    Functions,
    /// A command of cachet's own, past the gate.
    Own(Own),
    /// Refused by the gate inside MULTI on the dedicated connection. It is queued at Redis
    /// too, where it is unknown, so Redis aborts the transaction at EXEC as after any
    /// command refused while queued; the client reads this reason instead of Redis's.
    RefuseQueued(Reply),
    /// To the pool, answered with `frames` frames, no rule or count applied.
    Pool {
        frames: usize,
    },
    /// To the pool through the rules (tags, TTL) and the hit/miss count.
    Tracked(Option<&'t CommandInfo>),
    /// Onto the client's dedicated connection, through the rules.
    Dedicated,
    /// Onto the client's dedicated connection as it is (a name longer than any command).
    DedicatedPlain,
    /// The client needs a dedicated connection first.
    Pin,
}

/// Decides where `request` goes. `name` is its lowercase name, `None` when it is longer
/// than any command's.
pub(super) fn route<'t>(
    request: &Request,
    name: Option<&[u8]>,
    state: &ClientState,
    table: &'t CommandTable,
) -> Route<'t> {
    let Some(name) = name else {
        // Longer than any command: let Redis say it is unknown, on whichever connection the
        // client is using.
        return match (state.authenticated, state.pinned) {
            (_, true) => Route::DedicatedPlain,
            (false, false) => Route::Refuse(noauth()),
            (true, false) => Route::Pool { frames: 1 },
        };
    };
    if !state.authenticated
        && !state.pinned
        && !matches!(name, b"auth" | b"hello" | b"quit" | b"reset")
    {
        return Route::Refuse(noauth());
    }
    let pinned = state.pinned;
    match name {
        b"quit" => Route::Quit,
        b"client" if !pinned && acts_on_others(name, request) => Route::Aside,
        b"client" => Route::Client,
        b"reset" if !pinned => Route::Reset,
        b"auth" if !pinned => Route::Auth,
        b"hello" if !pinned => Route::Hello,
        // Not subscribed, so Redis confirms each channel named (or once for none).
        b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" if !pinned => Route::Pool {
            frames: request.args.len().max(2) - 1,
        },
        b"info" if !pinned => Route::Info,
        b"command" if merges_command(state) => Route::Command,
        b"function" if !pinned && drops_functions(request) => Route::Functions,
        b"script" | b"function" | b"shutdown" if !pinned && acts_on_others(name, request) => {
            Route::Aside
        }
        b"warm" => own(Own::Warm, name, state),
        b"emit" | b"policy" => own(Own::Policy, name, state),
        b"taginvalidate" | b"tagset" | b"tag" | b"tags" | b"tagkeys" => own(Own::Tag, name, state),
        _ if pinned => Route::Dedicated,
        _ => {
            // One table lookup serves both the routing and the index phase.
            let info = table.get(name);
            let paused = state.writes_paused && postponed_by_write_pause(request, name, info);
            match paused || needs_dedicated(request, name, info, state.pool_db) {
                true => Route::Pin,
                false => Route::Tracked(info),
            }
        }
    }
}

fn noauth() -> Reply {
    Reply::error("NOAUTH Authentication required.")
}

fn own<'t>(command: Own, name: &[u8], state: &ClientState) -> Route<'t> {
    match gate(name, state) {
        None => Route::Own(command),
        Some(reason) if state.divergence.multi && state.pinned => Route::RefuseQueued(reason),
        Some(reason) => Route::Refuse(reason),
    }
}

/// The one gate every command of cachet's own passes: cachet runs them with its own upstream
/// credentials, on its own connection, in the pool's database, so only a client that is
/// that user there, or one on another user's pool (whose rights each handler then asks
/// Redis about, `session::acl`), may ask for them. `Some` is the refusal: `-NOAUTH
/// Authentication required.`, `-NOPERM only the user cachet connects as may run cachet's 'x'
/// command` (signed in as another user on a connection of its own, or an AUTH refused on a
/// dedicated connection the client held already: only Redis knows which), `-ERR cachet's 'x' command
/// works in database N only`, `-ERR cachet's 'x' command cannot run inside MULTI` (queued at
/// Redis as well, so EXEC aborts). [`route`] applies it, so no handler can skip it.
pub(super) fn gate(name: &[u8], state: &ClientState) -> Option<Reply> {
    let name = String::from_utf8_lossy(name);
    let d = &state.divergence;
    if d.user {
        // AUTH as another user, or one refused on a dedicated connection the client held
        // already (only Redis knew which): either way not cachet's user, whose rights cachet
        // acts with. An AUTH refused on the connection opened for it leaves `user` unset:
        // the client is back as it was (`pinning`, "Signing in as someone else").
        Some(Reply::error(format!(
            "NOPERM only the user cachet connects as may run cachet's '{name}' command"
        )))
    } else if !state.authenticated {
        Some(noauth())
    } else if d.database {
        Some(Reply::error(format!(
            "ERR cachet's '{name}' command works in database {} only",
            state.pool_db
        )))
    } else if d.multi {
        Some(Reply::error(format!(
            "ERR cachet's '{name}' command cannot run inside MULTI"
        )))
    } else {
        None
    }
}

/// Whether COMMAND's reply gains cachet's commands: not where Redis's reply is not one reply
/// to this client's COMMAND as cachet's user would get it (queued in MULTI, subscribed or
/// streaming, replies off), nor for a client signed in as another user, whose rights Redis
/// checks on its own connection.
pub(super) fn merges_command(state: &ClientState) -> bool {
    let d = &state.divergence;
    !(d.multi || d.user || state.other_user || d.pubsub() || d.stream || d.reply_mode)
}

/// Commands that change this connection's state at Redis (or may block it), and requests
/// too large for the shared connection, cannot share a pooled connection.
pub(super) fn needs_dedicated(
    request: &Request,
    name: &[u8],
    info: Option<&CommandInfo>,
    pool_db: u32,
) -> bool {
    if request.raw.len() > SHARED_MAX_BYTES || request.args.len() > SHARED_MAX_ARGS {
        return true;
    }
    match name {
        b"multi" | b"watch" | b"subscribe" | b"psubscribe" | b"ssubscribe" | b"monitor"
        | b"sync" | b"psync" | b"wait" | b"waitaof" => true,
        // The Lua debugger takes over the connection at the next EVAL.
        b"script" => request
            .arg(1)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"debug")),
        b"select" => !is_db(request.arg(1), pool_db),
        b"xread" | b"xreadgroup" => request.args[1..]
            .iter()
            .any(|a| a.eq_ignore_ascii_case(b"block")),
        _ => info.is_some_and(|info| info.blocking),
    }
}

/// Commands that exist to act on other connections' work, so must reach Redis while the
/// pool waits behind that work: a busy script (Redis flags these `allow_busy`: SCRIPT KILL,
/// FUNCTION KILL, FUNCTION STATS, SHUTDOWN) or a pause (CLIENT PAUSE and UNPAUSE, which
/// Redis answers during a `WRITE` pause; CLIENT UNBLOCK, for a client blocked elsewhere).
pub(super) fn acts_on_others(name: &[u8], request: &Request) -> bool {
    if name == b"shutdown" {
        return true;
    }
    let sub = request.arg(1).unwrap_or_default().to_ascii_lowercase();
    matches!(
        (name, sub.as_slice()),
        (b"script", b"kill")
            | (b"function", b"kill" | b"stats")
            | (b"client", b"pause" | b"unpause" | b"unblock")
    )
}

/// FUNCTION FLUSH, DELETE and RESTORE: they may take cachet's library away with the
/// client's (DELETE of another library cannot, but is rare enough to treat alike); and
/// FUNCTION LIST, whose reply leaves cachet's library out.
pub(super) fn drops_functions(request: &Request) -> bool {
    request.arg(1).is_some_and(|sub| {
        sub.eq_ignore_ascii_case(b"flush")
            || sub.eq_ignore_ascii_case(b"delete")
            || sub.eq_ignore_ascii_case(b"restore")
            || sub.eq_ignore_ascii_case(b"list")
    })
}

/// Commands Redis 7 postpones during a `CLIENT PAUSE ... WRITE` (its `processCommand`:
/// flagged `write` or `may_replicate`; EVAL unless the script declares `no-writes`). On the
/// pool one would hold every client's commands until the pause ends. FCALL and EVALSHA count
/// as writes whatever their flags (cachet does not know them): on a dedicated connection a
/// read-only one is answered at once all the same. EXEC runs where MULTI pinned it.
pub(super) fn postponed_by_write_pause(
    request: &Request,
    name: &[u8],
    info: Option<&CommandInfo>,
) -> bool {
    match (name, info) {
        (_, None) => false,
        (b"eval", Some(_)) => !declares_no_writes(request.arg(1).unwrap_or_default()),
        (_, Some(info)) => info.write || info.may_replicate,
    }
}

/// Whether a script's shebang line (`#!lua flags=no-writes,...`) declares `no-writes`.
fn declares_no_writes(script: &[u8]) -> bool {
    let Some(rest) = script.strip_prefix(b"#!") else {
        return false;
    };
    let line = rest.split(|&c| c == b'\n').next().unwrap_or_default();
    line.split(|c| c.is_ascii_whitespace())
        .filter_map(|word| word.strip_prefix(b"flags="))
        .any(|flags| flags.split(|&c| c == b',').any(|f| f == b"no-writes"))
}

/// Whether a SELECT argument names database `db` (as a number, as Redis reads it).
pub(super) fn is_db(arg: Option<&[u8]>, db: u32) -> bool {
    arg.and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|s| s.parse::<u32>().ok())
        == Some(db)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::resp::lowercase_name;

    fn table() -> CommandTable {
        let info = |name: &str, blocking: bool| CommandInfo {
            name: name.to_owned(),
            arity: -2,
            blocking,
            write: matches!(name, "set" | "blpop"),
            readonly: matches!(name, "get" | "eval_ro"),
            may_replicate: matches!(name, "eval" | "fcall" | "publish"),
            first_key: 1,
            last_key: 1,
            key_step: 1,
            ..CommandInfo::default()
        };
        [
            info("get", false),
            info("set", false),
            info("blpop", true),
            info("eval", false),
            info("eval_ro", false),
            info("fcall", false),
            info("publish", false),
        ]
        .into_iter()
        .collect()
    }

    fn request(args: &[&str]) -> Request {
        Request::from_args(
            args.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect(),
        )
    }

    /// The route's kind and, for refusals, the error's first word.
    fn kind(route: &Route<'_>) -> String {
        let error = |reply: &Reply| match reply {
            Reply::Error(text) => text.split(' ').next().unwrap_or_default().to_owned(),
            other => format!("{other:?}"),
        };
        match route {
            Route::Refuse(reply) => format!("refuse {}", error(reply)),
            Route::RefuseQueued(reply) => format!("refuse-queued {}", error(reply)),
            Route::Pool { frames } => format!("pool {frames}"),
            Route::Tracked(info) => format!("tracked {}", info.is_some()),
            Route::Own(own) => format!("own {own:?}"),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    fn go(args: &[&str], state: ClientState) -> String {
        let table = table();
        let request = request(args);
        let mut scratch = [0u8; 64];
        let name = lowercase_name(request.name(), &mut scratch);
        kind(&route(&request, name, &state, &table))
    }

    const SIGNED_IN: ClientState = ClientState {
        authenticated: true,
        pinned: false,
        divergence: Divergence {
            multi: false,
            watch: false,
            subscriptions: (0, 0),
            stream: false,
            database: false,
            user: false,
            client_mode: false,
            reply_mode: false,
        },
        pool_db: 0,
        writes_paused: false,
        other_user: false,
    };

    #[test]
    fn each_command_goes_where_the_table_says() {
        let stranger = ClientState {
            authenticated: false,
            ..SIGNED_IN
        };
        let pinned = ClientState {
            pinned: true,
            ..SIGNED_IN
        };
        let in_multi = ClientState {
            pinned: true,
            divergence: Divergence {
                multi: true,
                ..Divergence::default()
            },
            ..SIGNED_IN
        };
        let other_user = ClientState {
            pinned: true,
            divergence: Divergence {
                user: true,
                ..Divergence::default()
            },
            ..SIGNED_IN
        };
        let other_db = ClientState {
            pinned: true,
            divergence: Divergence {
                database: true,
                ..Divergence::default()
            },
            ..SIGNED_IN
        };
        let paused = ClientState {
            writes_paused: true,
            ..SIGNED_IN
        };
        let user_pool = ClientState {
            other_user: true,
            ..SIGNED_IN
        };
        let long = "x".repeat(65);
        let cases: &[(&[&str], ClientState, &str)] = &[
            // Before authentication only signing in, QUIT and RESET.
            (&["GET", "k"], stranger, "refuse NOAUTH"),
            (&["AUTH", "p"], stranger, "auth"),
            (&["hello", "3"], stranger, "hello"),
            (&["QUIT"], stranger, "quit"),
            (&["RESET"], stranger, "reset"),
            (&["TAGINVALIDATE", "t"], stranger, "refuse NOAUTH"),
            (&[&long], stranger, "refuse NOAUTH"),
            // Commands about the connection.
            (&["CLIENT", "ID"], SIGNED_IN, "client"),
            (&["client", "id"], pinned, "client"),
            (&["INFO"], SIGNED_IN, "info"),
            (&["INFO"], pinned, "dedicated"),
            (&["RESET"], pinned, "dedicated"),
            (&["AUTH", "u", "p"], pinned, "dedicated"),
            (&["UNSUBSCRIBE"], SIGNED_IN, "pool 1"),
            (&["UNSUBSCRIBE", "a", "b", "c"], SIGNED_IN, "pool 3"),
            (&["UNSUBSCRIBE", "a"], pinned, "dedicated"),
            // COMMAND gains cachet's commands, wherever its reply is this client's alone.
            (&["COMMAND"], SIGNED_IN, "command"),
            (&["command", "info", "tagset"], pinned, "command"),
            (&["COMMAND"], in_multi, "dedicated"),
            (&["COMMAND", "COUNT"], other_user, "dedicated"),
            (&["COMMAND"], user_pool, "tracked false"),
            (&["COMMAND"], stranger, "refuse NOAUTH"),
            // The gate.
            (&["WARM", "w", "k"], SIGNED_IN, "own Warm"),
            (&["EMIT", "e"], SIGNED_IN, "own Policy"),
            (&["POLICY", "LIST"], pinned, "own Policy"),
            (&["TagSet", "k", "v"], SIGNED_IN, "own Tag"),
            (&["TAGKEYS", "t"], SIGNED_IN, "own Tag"),
            (&["WARM", "w", "k"], other_user, "refuse NOPERM"),
            (&["TAGSET", "k", "v"], user_pool, "own Tag"),
            // On another user's pool: that user's lane, through the same routes.
            (&["SCRIPT", "KILL"], user_pool, "aside"),
            (&["GET", "k"], user_pool, "tracked true"),
            (&["MULTI"], user_pool, "pin"),
            (&["TAGS", "k"], other_db, "refuse ERR"),
            (&["EMIT", "e"], in_multi, "refuse-queued ERR"),
            // Everything else.
            (&["GET", "k"], SIGNED_IN, "tracked true"),
            (&["NOSUCHCOMMAND"], SIGNED_IN, "tracked false"),
            (&["GET", "k"], pinned, "dedicated"),
            (&[&long], SIGNED_IN, "pool 1"),
            // An empty name is a name Redis does not know, like any other.
            (&[""], SIGNED_IN, "tracked false"),
            (&[""], stranger, "refuse NOAUTH"),
            (&[&long], pinned, "dedicatedplain"),
            (&["BLPOP", "q", "0"], SIGNED_IN, "pin"),
            (&["MULTI"], SIGNED_IN, "pin"),
            (&["watch", "k"], SIGNED_IN, "pin"),
            (&["SUBSCRIBE", "c"], SIGNED_IN, "pin"),
            (&["MONITOR"], SIGNED_IN, "pin"),
            (&["WAIT", "1", "0"], SIGNED_IN, "pin"),
            (&["SCRIPT", "DEBUG", "yes"], SIGNED_IN, "pin"),
            (&["SCRIPT", "FLUSH"], SIGNED_IN, "tracked false"),
            (&["SELECT", "0"], SIGNED_IN, "tracked false"),
            (&["SELECT", "00"], SIGNED_IN, "tracked false"),
            (&["SELECT", "1"], SIGNED_IN, "pin"),
            (
                &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
                SIGNED_IN,
                "pin",
            ),
            (&["XREAD", "STREAMS", "s", "0"], SIGNED_IN, "tracked false"),
            // Work on other connections: out of band, unless a dedicated connection is held
            // (inside MULTI it is queued there like any command).
            (&["SCRIPT", "KILL"], SIGNED_IN, "aside"),
            (&["script", "kill", "x"], SIGNED_IN, "aside"),
            (&["FUNCTION", "KILL"], SIGNED_IN, "aside"),
            (&["FUNCTION", "STATS"], SIGNED_IN, "aside"),
            (&["FUNCTION", "FLUSH"], SIGNED_IN, "functions"),
            (&["function", "delete", "lib"], SIGNED_IN, "functions"),
            (
                &["FUNCTION", "RESTORE", "payload", "REPLACE"],
                SIGNED_IN,
                "functions",
            ),
            (&["FUNCTION", "FLUSH"], pinned, "dedicated"),
            (&["FUNCTION", "LIST"], SIGNED_IN, "functions"),
            (&["FUNCTION", "STATS"], pinned, "dedicated"),
            (&["SHUTDOWN", "NOSAVE"], SIGNED_IN, "aside"),
            (&["SHUTDOWN"], SIGNED_IN, "aside"),
            (&["CLIENT", "PAUSE", "100", "WRITE"], SIGNED_IN, "aside"),
            (&["client", "unpause"], SIGNED_IN, "aside"),
            (&["CLIENT", "UNBLOCK", "7"], SIGNED_IN, "aside"),
            (&["CLIENT", "UNPAUSE"], pinned, "client"),
            (&["CLIENT", "UNPAUSE"], in_multi, "client"),
            (&["SCRIPT", "KILL"], in_multi, "dedicated"),
            (&["SHUTDOWN"], other_user, "dedicated"),
            (&["SCRIPT", "KILL"], stranger, "refuse NOAUTH"),
            (&["CLIENT", "UNPAUSE"], stranger, "refuse NOAUTH"),
            (&["CLIENT", "LIST"], stranger, "refuse NOAUTH"),
            (
                &["CLIENT", "KILL", "SKIPME", "no"],
                stranger,
                "refuse NOAUTH",
            ),
            (&["FUNCTION", "FLUSH"], stranger, "refuse NOAUTH"),
            (&["FUNCTION", "LIST"], stranger, "refuse NOAUTH"),
            (&["SYNC"], stranger, "refuse NOAUTH"),
            // A WRITE pause sent through cachet: what Redis postpones waits on a dedicated
            // connection, never on the pool.
            (&["SET", "k", "v"], paused, "pin"),
            (&["GET", "k"], paused, "tracked true"),
            (&["PUBLISH", "c", "m"], paused, "pin"),
            (&["EVAL", "return 1", "0"], paused, "pin"),
            (
                &["EVAL", "#!lua flags=no-writes\nreturn 1", "0"],
                paused,
                "tracked true",
            ),
            (&["EVAL", "#!lua name=x\nreturn 1", "0"], paused, "pin"),
            (&["EVAL_RO", "return 1", "0"], paused, "tracked true"),
            (&["FCALL", "f", "0"], paused, "pin"),
            (&["NOSUCHCOMMAND"], paused, "tracked false"),
            (&["SET", "k", "v"], pinned, "dedicated"),
            (&["PUBLISH", "c", "m"], SIGNED_IN, "tracked true"),
        ];
        let mut wrong = Vec::new();
        for (args, state, expected) in cases {
            let got = go(args, *state);
            if got != *expected {
                wrong.push(format!(
                    "{args:?} with {state:?}: {got}, expected {expected}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn requests_too_large_to_share_go_to_a_dedicated_connection() {
        let many: Vec<String> = (0..=SHARED_MAX_ARGS).map(|i| i.to_string()).collect();
        let mut args = vec!["DEL"];
        args.extend(many.iter().map(String::as_str));
        assert_eq!(go(&args, SIGNED_IN), "pin");
        args.truncate(SHARED_MAX_ARGS);
        assert_eq!(go(&args, SIGNED_IN), "tracked false");
        let big = "v".repeat(SHARED_MAX_BYTES);
        assert_eq!(go(&["SET", "k", &big], SIGNED_IN), "pin");
        assert_eq!(go(&["SET", "k", "v"], SIGNED_IN), "tracked true");
    }

    #[test]
    fn the_gate_words_its_refusals_as_redis_would() {
        let refusal = |state: ClientState| match gate(b"tagset", &state) {
            Some(Reply::Error(text)) => text,
            other => panic!("{other:?}"),
        };
        let mut state = SIGNED_IN;
        assert!(gate(b"tagset", &state).is_none());
        state.divergence.multi = true;
        assert_eq!(
            refusal(state),
            "ERR cachet's 'tagset' command cannot run inside MULTI"
        );
        state.pool_db = 3;
        state.divergence.database = true;
        assert_eq!(
            refusal(state),
            "ERR cachet's 'tagset' command works in database 3 only"
        );
        state.authenticated = false;
        assert_eq!(refusal(state), "NOAUTH Authentication required.");
        state.divergence.user = true;
        assert_eq!(
            refusal(state),
            "NOPERM only the user cachet connects as may run cachet's 'tagset' command"
        );
    }
}
