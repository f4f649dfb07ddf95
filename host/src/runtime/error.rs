//! Errors of guest calls, in terms an operator can act on.

use std::time::Duration;

use thiserror::Error;

use crate::guest_text::clean;
use crate::wit::latest::types::Error as WitError;

/// Why a call into a guest did not produce an answer.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The guest answered with an error value.
    #[error("guest {guest} {call}: {}", describe(error))]
    Reported {
        guest: String,
        call: &'static str,
        error: WitError,
    },
    /// The guest trapped (panic, out-of-bounds access, out of memory...). The instance
    /// was discarded and is rebuilt for the next call.
    #[error(
        "guest {guest} {call} trapped: {}; the instance is rebuilt for the next call",
        clean(reason)
    )]
    Trap {
        guest: String,
        call: &'static str,
        reason: String,
    },
    /// The guest ran past its wall-clock deadline and was interrupted.
    #[error("guest {guest} {call} ran past its {limit:?} wall-clock deadline and was interrupted")]
    Deadline {
        guest: String,
        call: &'static str,
        limit: Duration,
    },
    /// The guest answered, but the answer is malformed.
    #[error("guest {guest} {call} gave a malformed answer: {}", clean(reason))]
    Malformed {
        guest: String,
        call: &'static str,
        reason: String,
    },
    /// The guest cannot take calls (its thread ended, or its queue is full).
    #[error("guest {guest} is unavailable: {reason}")]
    Unavailable { guest: String, reason: String },
}

impl GuestError {
    /// The WIT error the guest returned, if that is what happened.
    pub fn reported(&self) -> Option<&WitError> {
        match self {
            GuestError::Reported { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// An operator-facing rendering of a guest's error value: `kind: message`, the message
/// cleaned of control characters and cut to a bounded length (it is the guest's text).
pub fn describe(error: &WitError) -> String {
    let (kind, message) = match error {
        WitError::InvalidConfig(m) => ("invalid config", m),
        WitError::InvalidArgument(m) => ("invalid argument", m),
        WitError::NotFound(m) => ("not found", m),
        WitError::Denied(m) => ("denied", m),
        WitError::Io(m) => ("i/o error", m),
        WitError::Other(m) => ("error", m),
    };
    format!("{kind}: {}", clean(message))
}
