//! What goes wrong talking to the index.

/// Something went wrong talking to the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("invalid tag index prefix {prefix:?}: {reason}")]
    Prefix {
        prefix: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from {function}: {reply}")]
    Reply {
        function: &'static str,
        reply: String,
    },
}
