//! The critical events NVML delivered since the host started, for every guest to read
//! at its own pace.
//!
//! One bounded log, numbered from 0; each guest keeps its own cursor (in its
//! `NodeAccess`, surviving instance rebuilds), so an event is handed to each guest once,
//! a guest reloaded after a ConfigMap edit reads again what happened since the start, and
//! a guest that does not read costs nobody else anything. When a guest falls more than
//! [`CAPACITY`] events behind, it is told how many it missed (and the host logs it).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept; an XID storm beyond this drops the oldest.
pub const CAPACITY: usize = 4096;
/// Events handed out per read.
pub const MAX_PER_READ: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Xid,
    DoubleBitEcc,
}

/// One critical event, with the GPU already named by UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub gpu_uuid: String,
    /// Present when NVML could tell the MIG device (GPU and compute instance).
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
    /// The XID number for [`EventKind::Xid`].
    pub data: u64,
}

/// What one read returns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<Event>,
    /// The cursor for the next read.
    pub next: u64,
    /// Events dropped from the log before this reader saw them.
    pub missed: u64,
}

#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `events[0]`.
    first: u64,
    events: VecDeque<Event>,
}

impl EventLog {
    pub fn push(&self, event: Event) {
        let mut inner = self.lock();
        if inner.events.len() == CAPACITY {
            inner.events.pop_front();
            inner.first += 1;
        }
        inner.events.push_back(event);
    }

    /// Up to [`MAX_PER_READ`] events from sequence number `cursor` on.
    pub fn since(&self, cursor: u64) -> Batch {
        let inner = self.lock();
        let missed = inner.first.saturating_sub(cursor);
        let start = cursor.max(inner.first);
        let skip = usize::try_from(start - inner.first).unwrap_or(usize::MAX);
        let events: Vec<Event> = inner
            .events
            .iter()
            .skip(skip)
            .take(MAX_PER_READ)
            .cloned()
            .collect();
        Batch {
            next: start + events.len() as u64,
            events,
            missed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xid(n: u64) -> Event {
        Event {
            kind: EventKind::Xid,
            gpu_uuid: "GPU-1".into(),
            gpu_instance_id: None,
            compute_instance_id: None,
            data: n,
        }
    }

    #[test]
    fn each_reader_sees_each_event_once_in_pages() {
        let log = EventLog::default();
        for n in 0..300 {
            log.push(xid(n));
        }
        let first = log.since(0);
        assert_eq!(first.events.len(), MAX_PER_READ);
        assert_eq!(first.events[0].data, 0);
        let second = log.since(first.next);
        assert_eq!(second.events.len(), 300 - MAX_PER_READ);
        assert_eq!(log.since(second.next).events, vec![]);
        // Another reader starts from the beginning on its own.
        assert_eq!(log.since(0).events[0].data, 0);
    }

    #[test]
    fn a_reader_left_behind_is_told_what_it_missed() {
        let log = EventLog::default();
        for n in 0..(CAPACITY as u64 + 10) {
            log.push(xid(n));
        }
        let batch = log.since(0);
        assert_eq!(batch.missed, 10);
        assert_eq!(batch.events[0].data, 10);
    }
}
