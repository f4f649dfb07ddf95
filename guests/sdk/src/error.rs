//! The WIT `error` variant: its message, and context added on the way up.

use crate::types::Error;

/// The operator-facing text of an error, whatever its case.
pub fn message(e: Error) -> String {
    match e {
        Error::InvalidConfig(m)
        | Error::InvalidArgument(m)
        | Error::NotFound(m)
        | Error::Denied(m)
        | Error::Io(m)
        | Error::Other(m) => m,
    }
}

/// Prefixes an error's message with what the guest was doing, keeping its case (the host
/// and the tests tell a refusal from a missing file by the case).
pub fn context(e: Error, doing: &str) -> Error {
    match e {
        Error::InvalidConfig(m) => Error::InvalidConfig(format!("{doing}: {m}")),
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{doing}: {m}")),
        Error::NotFound(m) => Error::NotFound(format!("{doing}: {m}")),
        Error::Denied(m) => Error::Denied(format!("{doing}: {m}")),
        Error::Io(m) => Error::Io(format!("{doing}: {m}")),
        Error::Other(m) => Error::Other(format!("{doing}: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_case() {
        let e = context(Error::NotFound("no such file".into()), "reading /sys/x");
        assert!(matches!(&e, Error::NotFound(m) if m == "reading /sys/x: no such file"));
        assert_eq!(message(e), "reading /sys/x: no such file");
    }
}
