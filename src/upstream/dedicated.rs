//! A connection to Redis owned by one client while its connection state differs from the
//! pool's. The client's session drives it directly (see `crate::session::pinning`); this
//! module opens it, replays the client's state onto it, and checks a spare is still usable.
//!
//! A client gets one of a small set of clean spares or a newly opened connection, with its
//! state replayed: its identity's credentials (`super::identity`: the pool's user's, or
//! those of the user its client signed in as), `HELLO 3` for RESP3 clients, the pool's
//! database, the client name. Only connections authenticated with their identity's
//! credentials become spares, of that identity.
//!
//! A client signing in as someone else (AUTH or HELLO ... AUTH with other credentials than
//! the pool's) gets a bare connection instead ([`Dedicated::open_bare`]): nothing is sent
//! before its own AUTH, since Redis may refuse anything before it (a `requirepass` set since
//! the pool connected, a default user switched off). What puts the connection in the
//! client's state follows the AUTH, unseen by the client (`crate::session::pinning`). Once
//! Redis accepted it, the client joins that user's pool (`super::identity`) and this
//! connection closes; it stays the client's own only past `max_user_pools`.
//!
//! Each keeps the master's generation it was opened at ([`Dedicated::master`]): when the
//! master moves (`super::sentinel`), the session's wait on it ends and the connection is
//! closed as lost; a spare opened before the move is never handed out.

use bytes::Bytes;

use super::sentinel::MasterWatch;
use super::{Upstream, UpstreamError, args};
use crate::net::{ReadHalf, WriteHalf};
use crate::resp::Protocol;

pub struct Dedicated {
    pub reader: ReadHalf,
    pub writer: WriteHalf,
    pub protocol: Protocol,
    /// The client name set on this connection, if any.
    pub name: Option<Bytes>,
    /// Authenticated with its identity's credentials (only such connections become spares,
    /// of that identity).
    pub authenticated: bool,
    /// The connection's own `CLIENT ID` at Redis.
    pub upstream_id: i64,
    /// The master's generation it was opened at: `master.moved()` resolves when it moves.
    pub master: MasterWatch,
}

impl Dedicated {
    pub(super) async fn open(
        upstream: &Upstream,
        login: Option<&super::identity::Login>,
        protocol: Protocol,
        name: Option<Bytes>,
    ) -> Result<Self, UpstreamError> {
        let mut setup = upstream.setup_commands_as(login, protocol);
        let required = setup.len();
        if let Some(name) = &name {
            setup.push(vec![
                Bytes::from_static(b"CLIENT"),
                Bytes::from_static(b"SETNAME"),
                name.clone(),
            ]);
        }
        setup.push(args(&["CLIENT", "ID"]));
        let master = upstream.master.watch();
        let (stream, replies) = upstream.connect(&setup, required).await?;
        let upstream_id = replies.last().and_then(|r| parse_integer(r)).unwrap_or(0);
        let (reader, writer) = stream.into_split();
        Ok(Dedicated {
            reader,
            writer,
            protocol,
            name,
            authenticated: true,
            upstream_id,
            master,
        })
    }

    /// A connection with nothing sent on it yet, for a client's own sign-in: RESP2, no name,
    /// Redis's default user (or none), id unknown until the session asks.
    pub(super) async fn open_bare(upstream: &Upstream) -> Result<Self, UpstreamError> {
        let master = upstream.master.watch();
        let (stream, _) = upstream.connect(&[], 0).await?;
        let (reader, writer) = stream.into_split();
        Ok(Dedicated {
            reader,
            writer,
            protocol: Protocol::Resp2,
            name: None,
            authenticated: false,
            upstream_id: 0,
            master,
        })
    }

    /// True unless the peer closed the connection or sent something unasked while spare.
    pub fn is_alive(&mut self) -> bool {
        self.reader.is_idle()
    }

    /// Gives a spare connection the name the new owner has (or none).
    pub(super) async fn rename(
        self,
        name: Option<Bytes>,
        timeout: std::time::Duration,
    ) -> Result<Self, UpstreamError> {
        if self.name == name {
            return Ok(self);
        }
        let mut stream = self
            .reader
            .unsplit(self.writer)
            .map_err(|e| UpstreamError::Lost(e.to_string()))?;
        let command = vec![
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"SETNAME"),
            name.clone().unwrap_or_default(),
        ];
        tokio::time::timeout(
            timeout,
            super::run_setup(&mut stream, &[command], 1, super::SETUP_REPLY_LIMIT),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(timeout.as_millis() as u64))??;
        let (reader, writer) = stream.into_split();
        Ok(Dedicated {
            reader,
            writer,
            name,
            ..self
        })
    }
}

/// The value of an integer reply (`:42\r\n`).
pub fn parse_integer(frame: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(frame.strip_prefix(b":")?).ok()?;
    text.trim_end().parse().ok()
}
