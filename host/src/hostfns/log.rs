//! `log` interface: guest log lines into the host's `tracing` output.
//!
//! Untrusted text goes into operators' logs, so lines are truncated, stripped of control
//! characters (no forged log lines) and rate-limited per guest.

use std::time::Instant;

use super::NodeAccess;
use crate::wit::latest::log::Host;
use crate::wit::latest::types::LogLevel;

/// Longest guest message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Sustained lines per second a guest may log; bursts up to [`BURST`].
pub const LINES_PER_SECOND: f64 = 50.0;
/// Lines a guest may log at once before the rate limit applies.
pub const BURST: f64 = 200.0;

/// A token bucket that also counts what it dropped, so the operator learns about it.
#[derive(Debug)]
pub struct LogLimiter {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self {
            tokens: BURST,
            last: Instant::now(),
            dropped: 0,
        }
    }
}

impl LogLimiter {
    /// Takes one token; returns how many lines were dropped before this one, or none
    /// when this line must be dropped too.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * LINES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

/// Truncates at a character boundary and replaces control and format characters.
pub fn sanitize(message: &str) -> String {
    crate::guest_text::clean_to(message, MAX_MESSAGE_BYTES)
}

impl Host for NodeAccess {
    fn log(&mut self, level: LogLevel, message: String) {
        let admitted = match self.log.lock() {
            Ok(mut limiter) => limiter.admit(),
            Err(poisoned) => poisoned.into_inner().admit(),
        };
        let Some(dropped) = admitted else {
            return;
        };
        let guest = self.guest();
        if dropped > 0 {
            tracing::warn!(guest, dropped, "guest logged too fast; lines were dropped");
        }
        let message = sanitize(&message);
        match level {
            LogLevel::Trace => tracing::trace!(guest, "{message}"),
            LogLevel::Debug => tracing::debug!(guest, "{message}"),
            LogLevel::Info => tracing::info!(guest, "{message}"),
            LogLevel::Warn => tracing::warn!(guest, "{message}"),
            LogLevel::Error => tracing::error!(guest, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_truncates_and_strips_control_characters() {
        assert_eq!(sanitize("a\nb\u{1b}[31m"), "a b [31m");
        let long = "é".repeat(1000);
        let clean = sanitize(&long);
        assert!(clean.len() <= MAX_MESSAGE_BYTES + "…".len());
        assert!(clean.ends_with('…'));
    }

    #[test]
    fn floods_are_limited() {
        let mut limiter = LogLimiter::default();
        let admitted = (0..1000).filter(|_| limiter.admit().is_some()).count();
        assert!(
            admitted >= BURST as usize && admitted < 300,
            "admitted {admitted}"
        );
    }
}
