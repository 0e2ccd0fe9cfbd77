//! Commands about the connection itself that cachet answers or rewrites on the pool: CLIENT
//! (ID, GETNAME, SETNAME, KILL, UNBLOCK, TRACKING ... REDIRECT), AUTH and HELLO with the pool's
//! credentials, RESET. Whatever needs Redis's own answer for this client goes to a dedicated
//! connection instead (`pinning`).
//!
//! Some connection state is common enough that pinning for it would defeat the pool, so
//! cachet virtualises it:
//!
//! * `CLIENT SETNAME` / `GETNAME`: kept per client, replayed on a dedicated connection.
//!   Inside MULTI every CLIENT command is queued at Redis like any other, so EXEC's reply has
//!   one entry per queued command (CLIENT ID there reports the Redis connection's id).
//! * `CLIENT ID`: each client has an id of cachet's own (from 2³² up, so it never collides
//!   with an id Redis hands out); `HELLO`'s reply carries the same id. `CLIENT KILL ID` and
//!   `CLIENT UNBLOCK` of such an id act on that cachet client (`UNBLOCK` is translated to its
//!   dedicated connection's Redis id); `CLIENT TRACKING ... REDIRECT id` likewise, with what
//!   it means for a target on the pool in `translate_redirect`.
//! * `AUTH` with the pool's credentials is answered by cachet, which compares them in
//!   constant time (`config::secret_eq`); when `upstream.password` is set, clients that have not
//!   authenticated get `-NOAUTH`, as from Redis. An AUTH that Redis accepts as another user
//!   (on the client's dedicated connection) ends the limits for unauthenticated clients; a
//!   refused one does not. Such an AUTH is the first command on a bare connection, and a
//!   refusal closes that connection and puts the client back where it was, as a refused
//!   AUTH leaves a Redis connection as it was (`pinning`, "Signing in as someone else");
//!   accepted, the client moves to that user's pool. The same user and password as an open
//!   user pool's join it at once (`upstream::identity`), after the client's earlier replies.
//!   A client on another user's pool gets cachet's `CLIENT LIST`/`INFO`/`KILL` once Redis
//!   says that user may run them (`client_list`).
//! * `HELLO 2|3` picks the RESP2 or RESP3 pool; `SETNAME` in it is kept as above.
//! * `RESET` and `QUIT` on the pool are answered by cachet; on a dedicated connection `RESET`
//!   goes to Redis and the connection is dropped after its `+RESET`. `RESET` with arguments
//!   gets Redis's arity error and changes nothing, subscribers included.
//!
//! * `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL` list and kill cachet's clients, never
//!   cachet's own connections to Redis (`client_list`).
//!
//! `CLIENT PAUSE` reaches Redis and pauses every client of Redis, cachet's included.
//! `CLIENT PAUSE`, `UNPAUSE` and `UNBLOCK` of a client on the pool go out of band (`aside`);
//! here they arrive only from a client holding a dedicated connection.

use super::*;

impl Session {
    pub(super) fn client_command(&mut self, request: Request) {
        let sub = request
            .arg(1)
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let dedicated = self.pinning.link.is_some();
        if self.pinning.divergence.multi {
            // Queued like any command, so EXEC's reply has one entry per command; inside a
            // transaction CLIENT ID therefore reports the Redis connection's own id.
            if sub == b"setname" && request.args.len() == 3 {
                let name = request.args[2].clone();
                self.name = (!name.is_empty()).then_some(name);
            }
            return self.send_dedicated(request, b"client");
        }
        match (sub.as_slice(), request.args.len()) {
            (b"id", 2) => self.reply_local(Reply::Integer(self.id)),
            (b"getname", 2) if !dedicated => self.reply_local(match &self.name {
                Some(name) => Reply::Bulk(name.clone()),
                None => Reply::Null,
            }),
            (b"setname", 3) => {
                let name = request.args[2].clone();
                if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    return self.reply_local(Reply::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = (!name.is_empty()).then_some(name);
                if dedicated {
                    self.send_dedicated(request, b"client");
                } else {
                    self.reply_local(Reply::ok());
                }
            }
            // cachet's clients, not its connections to Redis (`client_list`; on another
            // user's pool once Redis says that user may). A client signed in as another user
            // on a connection of its own goes to Redis there, which checks its rights.
            (b"list", _) if !self.pinning.divergence.user => self.client_list(request),
            (b"info", 2) if !self.pinning.divergence.user => self.client_info(request),
            // The redirection in cachet's ids, as the client gave it.
            (b"getredir", 2) if !self.pinning.divergence.user => {
                self.reply_local(Reply::Integer(self.redirect))
            }
            (b"kill", 3..) if !self.pinning.divergence.user => self.client_kill(request),
            (b"unblock", _) => {
                let request = self.translate_unblock(request);
                self.route(request, b"client");
            }
            (b"tracking", _) => {
                let on = request
                    .arg(2)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
                let original = request.clone();
                let request = match self.translate_redirect(request, on && !dedicated) {
                    Ok(request) => request,
                    Err(refusal) => return self.reply_local(refusal),
                };
                if on || dedicated {
                    self.pinning.divergence.client_mode |= on;
                    // As CLIENT GETREDIR and CLIENT LIST's `redir` show it: the client's
                    // own id for the target, 0 for none, -1 with tracking off.
                    self.redirect = match on {
                        true => redirect_of(&original).unwrap_or(0),
                        false => -1,
                    };
                    self.route_dedicated(request, b"client");
                } else {
                    self.forward(request);
                }
            }
            (b"reply", 3) => {
                let mode = request.args[2].to_ascii_lowercase();
                if matches!(mode.as_slice(), b"off" | b"skip") {
                    self.pinning.divergence.reply_mode = true;
                    self.pinning.divergence.client_mode = true;
                }
                self.route_dedicated(request, b"client");
            }
            (b"no-evict" | b"no-touch" | b"info", _) => {
                self.pinning.divergence.client_mode = true;
                self.route_dedicated(request, b"client");
            }
            _ => self.route(request, b"client"),
        }
    }

    /// CLIENT UNBLOCK <id> [TIMEOUT|ERROR]: a cachet client id becomes the Redis id of that
    /// client's dedicated connection, where it is blocked; any other id (or arity) goes to
    /// Redis as it is, for Redis's own answer.
    pub(super) fn translate_unblock(&self, request: Request) -> Request {
        if !matches!(request.args.len(), 3 | 4) {
            return request;
        }
        let target = std::str::from_utf8(&request.args[2])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|id| self.services.clients.get(id));
        match target {
            Some(client) => {
                let real = client.upstream_id.load(Ordering::Relaxed);
                let mut args = request.args;
                args[2] = Bytes::from(real.to_string());
                Request::from_args(args)
            }
            None => request,
        }
    }

    /// CLIENT TRACKING on|off [options] REDIRECT <id>: cachet's client ids are its own, and
    /// Redis needs the id of a connection, so the first REDIRECT's id becomes:
    ///
    /// * the Redis id of the target's dedicated connection, when it holds one: the target
    ///   receives what Redis sends (pushes in RESP3, `__redis__:invalidate` messages when it
    ///   is subscribed in RESP2). If it later gives that connection back, Redis keeps
    ///   redirecting to the connection, not to the client;
    /// * unchanged while the client is about to get its own dedicated connection
    ///   (`deferred`): the command is dispatched again once the connection is acquired,
    ///   and translated then (a client naming itself has a Redis id only from then on);
    /// * a RESP2 pooled connection (`Upstream::tracking_sink`) for any other of cachet's
    ///   clients: Redis drops what it would send there, as it does for a RESP2 target that
    ///   is not subscribed (which any pooled client is). A RESP3 target on the pool does not
    ///   get the pushes Redis would have sent it (README, "What is transparent"), and no
    ///   pooled connection ever receives a push it could not frame;
    /// * Redis's own error for an id that is no client's: it could only name one of
    ///   cachet's upstream connections.
    ///
    /// Options before REDIRECT that Redis would refuse, and an id that is not a number, are
    /// left for Redis to word.
    pub(super) fn translate_redirect(
        &self,
        request: Request,
        deferred: bool,
    ) -> Result<Request, Reply> {
        let mut pos = None;
        let mut i = 3;
        while i < request.args.len() {
            let option = request.args[i].to_ascii_lowercase();
            let more = i + 1 < request.args.len();
            match option.as_slice() {
                b"redirect" if more => {
                    pos = Some(i + 1);
                    break;
                }
                b"prefix" if more => i += 2,
                b"bcast" | b"optin" | b"optout" | b"noloop" => i += 1,
                _ => break,
            }
        }
        let Some(pos) = pos else {
            return Ok(request);
        };
        let Some(id) = std::str::from_utf8(&request.args[pos])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            return Ok(request);
        };
        let target =
            self.services.clients.get(id).ok_or_else(|| {
                Reply::error("ERR The client ID you want redirect to does not exist")
            })?;
        if deferred {
            return Ok(request);
        }
        let real = match target.upstream_id.load(Ordering::Relaxed) {
            0 => self.services.upstream.tracking_sink().ok_or_else(|| {
                Reply::error(format!(
                    "ERR {}",
                    UpstreamError::Unavailable("no pooled connection is up".into())
                ))
            })?,
            real => real,
        };
        let mut args = request.args;
        args[pos] = Bytes::from(real.to_string());
        Ok(Request::from_args(args))
    }

    pub(super) fn credentials_match(&self, user: &[u8], password: &[u8]) -> bool {
        self.services
            .upstream
            .config
            .credentials()
            .is_some_and(|(u, p)| {
                // Both compared, always: which one differs must not show in the time taken.
                let user_matches = crate::config::secret_eq(u.as_bytes(), user);
                let password_matches = crate::config::secret_eq(p.expose().as_bytes(), password);
                user_matches & password_matches
            })
    }

    pub(super) fn auth(&mut self, request: Request) {
        let (user, password): (&[u8], &[u8]) = match request.args.len() {
            2 => (b"default", &request.args[1]),
            3 => (&request.args[1], &request.args[2]),
            // Wrong arity goes to Redis for its own error.
            _ => return self.forward(request),
        };
        let target = self.sign_in_target(user, password);
        let (user, password) = (
            Bytes::copy_from_slice(user),
            Bytes::copy_from_slice(password),
        );
        match target {
            Some(identity) => {
                if !Arc::ptr_eq(&identity, &self.identity) {
                    // Its earlier commands run on the pool it leaves, before it moves.
                    if self.after_earlier_replies(request).is_none() {
                        return;
                    }
                    self.enter_identity(identity);
                }
                self.authenticated = true;
                self.reply_local(Reply::ok());
            }
            // Another user (or a wrong password): only Redis can say, on a connection of
            // the client's own; accepted, the client joins that user's pool.
            None => {
                self.pending_login = Some((user, password));
                self.pinning.divergence.user = true;
                self.switch_to_dedicated(request);
            }
        }
    }

    /// The identity credentials put the client in without asking Redis: cachet's own for
    /// the pool's credentials, or an open user pool that signs in with this very password
    /// (`upstream::identity`). `None`: Redis must judge them.
    fn sign_in_target(
        &self,
        user: &[u8],
        password: &[u8],
    ) -> Option<Arc<crate::upstream::Identity>> {
        if self.credentials_match(user, password) {
            return Some(self.services.upstream.default_identity().clone());
        }
        self.services.upstream.identities.member(user, password)
    }

    /// Signed in at Redis as an ACL user other than cachet's: on that user's pool, or on a
    /// connection of its own after AUTH there.
    pub(super) fn other_user(&self) -> bool {
        !self.identity.is_default() || self.pinning.divergence.user
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]: the protocol picks the pool, the
    /// name is kept by cachet, credentials other than the pool's need a dedicated connection.
    pub(super) fn hello(&mut self, request: Request) {
        let version = match request.arg(1) {
            None => None,
            Some(b"2") => Some(Protocol::Resp2),
            Some(b"3") => Some(Protocol::Resp3),
            // Redis answers NOPROTO (or a syntax error) without changing anything.
            Some(_) => return self.forward(request),
        };
        let mut name = None;
        let mut authenticated_here = false;
        let mut target = None;
        let mut i = 2;
        while i < request.args.len() {
            let option = request.args[i].to_ascii_lowercase();
            match (option.as_slice(), request.args.len() - i) {
                (b"auth", 3..) => {
                    let (user, password) = (&request.args[i + 1], &request.args[i + 2]);
                    target = self.sign_in_target(user, password);
                    if target.is_none() {
                        self.pending_login = Some((user.clone(), password.clone()));
                        self.pinning.divergence.user = true;
                        return self.switch_to_dedicated(request);
                    }
                    authenticated_here = true;
                    i += 3;
                }
                (b"setname", 2..) => {
                    name = Some(request.args[i + 1].clone());
                    i += 2;
                }
                // Let Redis word the syntax error.
                _ => return self.forward(request),
            }
        }
        if !self.authenticated && !authenticated_here {
            return self.reply_local(Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        if let Some(name) = &name
            && name.iter().any(|&c| !(b'!'..=b'~').contains(&c))
        {
            return self.reply_local(Reply::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        let version = version.unwrap_or(self.protocol);
        let moves = target.as_ref().filter(|t| !Arc::ptr_eq(t, &self.identity));
        self.flush_batch();
        if (version != self.protocol || moves.is_some()) && !self.replies.slots.is_empty() {
            self.pinning.held = Some(request);
            self.pinning.wait = Wait::Drain;
            return;
        }
        if let Some(identity) = moves.cloned() {
            self.enter_identity(identity);
        }
        self.authenticated = true;
        if let Some(name) = name {
            self.name = (!name.is_empty()).then_some(name);
        }
        self.protocol = version;
        let plain = if request.args.len() == 1 {
            request
        } else {
            Request::from_args(vec![request.args[0].clone(), request.args[1].clone()])
        };
        self.flush_batch();
        self.forward(plain);
        self.flush_batch();
        if let Some(slot) = self.replies.slots.back_mut() {
            *slot = Slot::Hello;
        }
    }

    /// RESET on the pool: cachet's own state goes back to a new connection's.
    pub(super) fn reset_local(&mut self, request: Request) {
        if request.args.len() != 1 {
            return self.reply_local(Reply::error(
                "ERR wrong number of arguments for 'reset' command",
            ));
        }
        self.flush_batch();
        let moves = self.protocol != Protocol::Resp2 || !self.identity.is_default();
        if !self.replies.slots.is_empty() && moves {
            self.pinning.held = Some(request);
            self.pinning.wait = Wait::Drain;
            return;
        }
        self.reset_state();
        self.reply_local(Reply::Simple("RESET"));
    }

    /// A command after a MULTI that cachet could not open a connection for. Redis itself
    /// never refuses MULTI alone, and a client that pipelines `MULTI ... EXEC` reads MULTI's
    /// error only at EXEC: running the queued writes one by one on the pool would apply part
    /// of a transaction. So, as for a transaction in which a command failed to queue, each
    /// command gets an error, EXEC `-EXECABORT`, DISCARD `+OK`, and the client is back to
    /// normal after either (or RESET, or QUIT).
    pub(super) fn failed_transaction(&mut self, request: Request, name: &[u8]) {
        match name {
            b"exec" => {
                self.multi_failed = false;
                self.reply_local(Reply::error(
                    "EXECABORT Transaction discarded because of previous errors.",
                ));
            }
            b"discard" => {
                self.multi_failed = false;
                self.reply_local(Reply::ok());
            }
            b"multi" => self.reply_local(Reply::error("ERR MULTI calls can not be nested")),
            b"reset" | b"quit" => {
                self.multi_failed = false;
                self.dispatch(request);
            }
            _ => self.reply_local(Reply::error(
                "ERR command not queued: cachet could not open a connection for this MULTI (see its error); send EXEC or DISCARD",
            )),
        }
    }

    pub(super) fn reset_state(&mut self) {
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.db = self.services.upstream.config.url.db;
        self.user = None;
        self.identity = self.services.upstream.default_identity().clone();
        self.pending_login = None;
        self.redirect = -1;
        self.authenticated = self.services.upstream.config.credentials().is_none();
        self.signed_in = false;
        self.pinning.divergence = Divergence::default();
    }
}

/// The id after `REDIRECT` in a CLIENT TRACKING command, as the client wrote it.
fn redirect_of(request: &Request) -> Option<i64> {
    let pos = request
        .args
        .iter()
        .position(|a| a.eq_ignore_ascii_case(b"redirect"))?;
    std::str::from_utf8(request.arg(pos + 1)?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use crate::config::secret_eq;

    #[test]
    pub(super) fn secrets_compare_equal_only_when_identical() {
        assert!(secret_eq(b"s3cret", b"s3cret"));
        assert!(secret_eq(b"", b""));
        for guess in [
            &b"S3cret"[..],
            b"s3creT",
            b"s3cre",
            b"s3crett",
            b"",
            b"s3cret\0",
        ] {
            assert!(!secret_eq(b"s3cret", guess), "{guess:?}");
        }
        // Long secrets hash to the same digest length: no difference in how they compare.
        let long = vec![b'x'; 10_000];
        let mut almost = long.clone();
        almost[9_999] = b'y';
        assert!(secret_eq(&long, &long.clone()));
        assert!(!secret_eq(&long, &almost));
    }
}
