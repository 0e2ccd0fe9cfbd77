//! `WARM warmer [param value ...] [KEY key]`: an operator's warm request, handed to the same
//! queue as policies' warm actions. It answers at once with what became of the request
//! (`+QUEUED`, `+DEDUPLICATED`, `+COLD`, or an error naming why it was refused); sending
//! happens later, after the warmer's delay.

use bytes::Bytes;

use super::Session;
use crate::resp::Request;
use crate::resp::reply::Reply;
use crate::warm::{Submitted, WarmRequest};

/// The `reason` of requests made with `WARM`.
pub const REASON: &str = "WARM";

/// Parses a `WARM` command's arguments into a request.
fn parse(args: &[Bytes]) -> Result<WarmRequest, String> {
    if args.len() < 2 || !args.len().is_multiple_of(2) {
        return Err("ERR wrong number of arguments for 'warm' command".to_owned());
    }
    let text = |arg: &Bytes, what: &str| {
        String::from_utf8(arg.to_vec()).map_err(|_| format!("ERR WARM {what} must be UTF-8"))
    };
    let mut request = WarmRequest {
        warmer: text(&args[1], "warmer names")?,
        params: Vec::new(),
        key: None,
        event: String::new(),
        reason: REASON.to_owned(),
    };
    for pair in args[2..].chunks(2) {
        if pair[0].eq_ignore_ascii_case(b"key") {
            if request.key.is_some() {
                return Err("ERR syntax error: KEY given twice".to_owned());
            }
            request.key = Some(pair[1].clone());
        } else {
            let name = text(&pair[0], "parameter names")?;
            let value = text(&pair[1], "parameter values")?;
            request.params.push((name, value));
        }
    }
    Ok(request)
}

impl Session {
    /// Past the gate of cachet's own commands (`route::gate`).
    pub(super) fn warm_command(&mut self, request: Request) {
        if let Err(refused) = self.granted(crate::config::Permission::Warm) {
            return self.reply_local(refused);
        }
        let reply = match parse(&request.args) {
            Err(error) => Reply::error(error),
            Ok(warm) => match self.services.warming.submit(warm) {
                Submitted::Queued => Reply::Simple("QUEUED"),
                Submitted::Deduplicated => Reply::Simple("DEDUPLICATED"),
                Submitted::Cold => Reply::Simple("COLD"),
                Submitted::Refused(why) => Reply::error(format!("ERR {why}")),
            },
        };
        self.reply_local(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Bytes> {
        list.iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    #[test]
    fn parameters_and_key_are_read_in_pairs() {
        let request = parse(&args(&[
            "WARM",
            "w",
            "teacherId",
            "7",
            "key",
            "k",
            "a",
            "b",
        ]))
        .unwrap();
        assert_eq!(request.warmer, "w");
        assert_eq!(
            request.params,
            [("teacherId".into(), "7".into()), ("a".into(), "b".into())]
        );
        assert_eq!(request.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(request.reason, REASON);
    }

    #[test]
    fn bad_arity_and_repeated_key_are_errors() {
        for bad in [&["WARM"][..], &["WARM", "w", "a"], &["WARM", "w", "KEY"]] {
            assert!(
                parse(&args(bad)).unwrap_err().contains("wrong number"),
                "{bad:?}"
            );
        }
        let err = parse(&args(&["WARM", "w", "KEY", "a", "key", "b"])).unwrap_err();
        assert!(err.contains("KEY given twice"), "{err}");
    }
}
