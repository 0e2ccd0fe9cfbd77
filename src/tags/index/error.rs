//! What goes wrong talking to the index, classified once: where a fred error enters the
//! index (`From<fred::error::Error>`), by what Redis answered. The retry after Redis lost
//! the function library looks for [`IndexError::FunctionMissing`]; clients read
//! [`IndexError::reply_text`].

use fred::error::{Error as RedisError, ErrorKind};

/// How Redis answers a call of a function it does not have (`FCALL`, `FCALL_RO`) after a
/// restart without persistence or a `FUNCTION FLUSH`. The error has no code of its own (as
/// `NOSCRIPT` is for scripts), so this prefix of its text is the signal.
const FUNCTION_NOT_FOUND: &str = "ERR Function not found";

/// Something went wrong talking to the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("invalid tag index prefix {prefix:?}: {reason}")]
    Prefix {
        prefix: String,
        reason: &'static str,
    },
    /// Redis does not have cachet's function library: loading it and calling again fixes it.
    #[error(transparent)]
    FunctionMissing(RedisError),
    /// Redis refused the command with an error reply of its own (`ERR no such key`,
    /// `WRONGTYPE ...`, `OOM ...`).
    #[error(transparent)]
    Refused(RedisError),
    /// No reply from Redis: not reachable, the connection broke, no reply in time.
    #[error(transparent)]
    Transport(RedisError),
    /// Loading the function library failed.
    #[error(transparent)]
    Load(RedisError),
    #[error("unexpected reply from {function}: {reply}")]
    Reply {
        function: &'static str,
        reply: String,
    },
}

impl From<RedisError> for IndexError {
    fn from(error: RedisError) -> Self {
        let transport = matches!(
            error.kind(),
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Protocol
        );
        // Redis's error replies start with their code (`ERR`, `WRONGTYPE`, `OOM`); fred's own
        // errors about the connection do not.
        if transport
            || !error
                .details()
                .starts_with(|c: char| c.is_ascii_uppercase())
        {
            IndexError::Transport(error)
        } else if error.details().starts_with(FUNCTION_NOT_FOUND) {
            IndexError::FunctionMissing(error)
        } else {
            IndexError::Refused(error)
        }
    }
}

impl IndexError {
    /// The error as a client reads it: Redis's own words when Redis refused the command
    /// (`ERR no such key`, `ERR value is not an integer ...`), `ERR upstream: ...` when
    /// cachet could not reach Redis, load the library, or read the reply.
    pub fn reply_text(&self) -> String {
        match self {
            IndexError::FunctionMissing(error) | IndexError::Refused(error) => {
                error.details().to_owned()
            }
            _ => format!("ERR upstream: {self}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(kind: ErrorKind, details: &'static str) -> IndexError {
        IndexError::from(RedisError::new(kind, details))
    }

    #[test]
    fn redis_errors_are_classified_by_what_redis_answered() {
        let missing = classify(ErrorKind::Unknown, "ERR Function not found");
        assert!(
            matches!(missing, IndexError::FunctionMissing(_)),
            "{missing:?}"
        );
        assert_eq!(missing.reply_text(), "ERR Function not found");
        for (kind, details) in [
            (ErrorKind::Unknown, "ERR no such key"),
            (
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key",
            ),
            (ErrorKind::Unknown, "OOM command not allowed"),
            // Only the reply's start counts: a message that merely mentions it is Redis's.
            (
                ErrorKind::Unknown,
                "ERR Error running script: Function not found",
            ),
        ] {
            let error = classify(kind, details);
            assert!(matches!(error, IndexError::Refused(_)), "{error:?}");
            assert_eq!(error.reply_text(), details);
        }
        for (kind, details) in [
            (ErrorKind::IO, "Broken pipe"),
            (ErrorKind::Timeout, "Request timed out."),
            (ErrorKind::Canceled, "Canceled."),
            (ErrorKind::Unknown, "connection closed"),
        ] {
            let error = classify(kind, details);
            assert!(matches!(error, IndexError::Transport(_)), "{error:?}");
            assert_eq!(error.reply_text(), format!("ERR upstream: {error}"));
        }
        let load = IndexError::Load(RedisError::new(ErrorKind::Unknown, "OOM no memory"));
        assert_eq!(
            load.reply_text(),
            "ERR upstream: Unknown Error: OOM no memory"
        );
    }
}
