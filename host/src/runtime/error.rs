//! Errors of guest calls, in terms an operator can act on.

use std::time::Duration;

use thiserror::Error;

use crate::guest_text::clean;
use crate::wit::latest::types::Error as WitError;

/// Why a call into a guest did not produce an answer.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The guest answered with an error value.
    #[error("guest {guest} {call}: {kind}: {}", clean(message))]
    Reported {
        guest: String,
        call: &'static str,
        kind: ReportedKind,
        /// The guest's own text, unsanitized: cleaned wherever it is shown.
        message: String,
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

/// The kind of error a guest reported: the WIT `error` variant's cases, in host terms,
/// so that the layers above `runtime` never see generated bindings (a new contract
/// version maps its own variant onto these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedKind {
    InvalidConfig,
    InvalidArgument,
    NotFound,
    Denied,
    Io,
    Other,
}

impl std::fmt::Display for ReportedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReportedKind::InvalidConfig => "invalid config",
            ReportedKind::InvalidArgument => "invalid argument",
            ReportedKind::NotFound => "not found",
            ReportedKind::Denied => "denied",
            ReportedKind::Io => "i/o error",
            ReportedKind::Other => "error",
        })
    }
}

/// Splits the guest's error value into its kind and message.
fn from_wit(error: WitError) -> (ReportedKind, String) {
    match error {
        WitError::InvalidConfig(m) => (ReportedKind::InvalidConfig, m),
        WitError::InvalidArgument(m) => (ReportedKind::InvalidArgument, m),
        WitError::NotFound(m) => (ReportedKind::NotFound, m),
        WitError::Denied(m) => (ReportedKind::Denied, m),
        WitError::Io(m) => (ReportedKind::Io, m),
        WitError::Other(m) => (ReportedKind::Other, m),
    }
}

impl GuestError {
    /// A guest's error value from a call, as the host reports it.
    pub fn reported(guest: &str, call: &'static str, error: WitError) -> Self {
        let (kind, message) = from_wit(error);
        GuestError::Reported {
            guest: guest.to_owned(),
            call,
            kind,
            message,
        }
    }

    /// The kind of error the guest reported, if that is what happened.
    pub fn reported_kind(&self) -> Option<ReportedKind> {
        match self {
            GuestError::Reported { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}
