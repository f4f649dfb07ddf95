//! Readiness is the kubelet's view: a resource counts as ready only once the kubelet has
//! accepted it, and `/readyz` is 200 only when every served resource is.
//!
//! - direct registration: `Register` on `kubelet.sock` answered OK, and the kubelet's
//!   `ListAndWatch` stream open;
//! - plugin watcher: `NotifyRegistrationStatus(true)` received, and the kubelet's
//!   `ListAndWatch` stream open.
//!
//! The device plug-ins (`kubelet::plugin`) record what the kubelet did through one
//! [`Tracker`] per guest and resource; `/readyz` reads [`Readiness::waiting`], and the
//! `wdp_kubelet_accepted{resource}` gauge mirrors each change. When a resource stops
//! being served, its tracker is dropped, its entry goes, and so do the resource's
//! metric series. Text from the kubelet (a refusal's error) is cleaned as peer text
//! before it is kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::metrics::metrics;

/// Longest kubelet error text kept for `/readyz`.
const MAX_ERROR_BYTES: usize = 512;

/// How the resource registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Watcher,
}

/// Where a registration stands, as far as the kubelet has told us.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Not serving a socket (between two registration instances, or the socket directory
    /// is unusable).
    Starting,
    /// Direct: `Register` sent or about to be.
    Registering,
    /// Direct: the last `Register` failed with this error; retried with back-off.
    RegisterFailed(String),
    /// Watcher: serving; the plugin watcher has not called `GetInfo` yet.
    AwaitingGetInfo,
    /// Watcher: `GetInfo` answered; no `NotifyRegistrationStatus` yet.
    AwaitingNotify(Instant),
    /// Direct: `Register` answered OK. Watcher: `NotifyRegistrationStatus(true)`.
    Registered,
}

#[derive(Debug)]
struct Entry {
    /// Tells a tracker's entry from a later one for the same guest and resource.
    id: u64,
    mode: Mode,
    stage: Stage,
    stream_open: bool,
    /// The socket the current registration instance serves.
    socket: String,
    /// The kubelet's last refusal (watcher), kept until it accepts the resource, so
    /// that `/readyz` still says why after the host moved to a fresh socket.
    refused: Option<String>,
}

impl Entry {
    fn accepted(&self) -> bool {
        self.stage == Stage::Registered && self.stream_open
    }

    /// What the resource waits for, in words an operator can act on.
    fn waiting_for(&self) -> String {
        let mut why = match (&self.stage, self.mode) {
            (Stage::Starting, _) => "its device plug-in socket is not serving yet".to_owned(),
            (Stage::Registering, _) => "registering with the kubelet (kubelet.sock)".to_owned(),
            (Stage::RegisterFailed(e), _) => format!("{e}; retrying with back-off"),
            (Stage::AwaitingGetInfo, _) => format!(
                "waiting for the kubelet's plugin watcher to call GetInfo on {}; check that \
                 --plugins-registry-dir is the kubelet's plugins_registry directory and is mounted",
                self.socket
            ),
            (Stage::AwaitingNotify(since), _) => format!(
                "the kubelet called GetInfo on {} {}s ago but has not confirmed the registration \
                 (NotifyRegistrationStatus); see the host's and the kubelet's logs",
                self.socket,
                since.elapsed().as_secs()
            ),
            (Stage::Registered, Mode::Direct) => {
                "registered, but the kubelet has not opened ListAndWatch".to_owned()
            }
            (Stage::Registered, Mode::Watcher) => {
                "the kubelet confirmed the registration but has no ListAndWatch stream open"
                    .to_owned()
            }
        };
        if let Some(refused) = &self.refused {
            why.push_str(&format!(
                "; the kubelet refused the last registration: {refused}"
            ));
        }
        why
    }
}

/// The kubelet's view of every resource the host serves.
#[derive(Debug, Default)]
pub struct Readiness {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    ids: AtomicU64,
}

impl Readiness {
    /// Starts following `resource` of `guest`; the returned tracker removes it when
    /// dropped.
    pub fn track(self: &Arc<Self>, guest: &str, resource: &str, mode: Mode) -> Tracker {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let key = (guest.to_owned(), resource.to_owned());
        self.lock().insert(
            key.clone(),
            Entry {
                id,
                mode,
                stage: Stage::Starting,
                stream_open: false,
                socket: String::new(),
                refused: None,
            },
        );
        metrics().set_accepted(resource, false);
        Tracker {
            readiness: self.clone(),
            key,
            id,
        }
    }

    /// True once the kubelet has accepted `resource` (from any guest serving it).
    pub fn is_accepted(&self, resource: &str) -> bool {
        self.lock()
            .iter()
            .any(|((_, r), e)| r == resource && e.accepted())
    }

    /// For each of `resources` the kubelet has not accepted: the resource and what it
    /// waits for. Empty when all are accepted.
    pub fn waiting<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, String)> {
        let entries = self.lock();
        let mut waiting = Vec::new();
        for resource in resources {
            let all: Vec<_> = entries.iter().filter(|((_, r), _)| r == resource).collect();
            if all.iter().any(|(_, e)| e.accepted()) {
                continue;
            }
            let why = match all.first() {
                Some(((guest, _), e)) => format!("(guest {guest}) {}", e.waiting_for()),
                None => "its device plug-in has not started yet".to_owned(),
            };
            waiting.push((resource.to_owned(), why));
        }
        waiting
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One guest's resource, as its device plug-in reports the kubelet's doing.
#[derive(Debug)]
pub struct Tracker {
    readiness: Arc<Readiness>,
    key: (String, String),
    id: u64,
}

impl Tracker {
    /// A new registration instance serves `socket`; nothing is registered on it yet.
    pub fn serving(&self, socket: &Path) {
        self.update(|e| {
            e.socket = socket.display().to_string();
            e.stream_open = false;
            e.stage = match e.mode {
                Mode::Direct => Stage::Registering,
                Mode::Watcher => Stage::AwaitingGetInfo,
            };
        });
    }

    /// No socket serves the resource (the instance ended, or binding failed).
    pub fn not_serving(&self) {
        self.update(|e| {
            e.stream_open = false;
            e.stage = Stage::Starting;
        });
    }

    /// Direct: `Register` failed with `error`.
    pub fn register_failed(&self, error: &str) {
        let error = crate::guest_text::clean_to(error, MAX_ERROR_BYTES);
        self.update(|e| e.stage = Stage::RegisterFailed(error));
    }

    /// Watcher: `GetInfo` answered.
    pub fn info_served(&self) {
        self.update(|e| {
            if !matches!(e.stage, Stage::AwaitingNotify(_)) {
                e.stage = Stage::AwaitingNotify(Instant::now());
            }
        });
    }

    /// Direct: `Register` answered OK. Watcher: `NotifyRegistrationStatus(true)`.
    pub fn registered(&self) {
        self.update(|e| e.stage = Stage::Registered);
    }

    /// Watcher: `NotifyRegistrationStatus(false)` with the kubelet's `error`.
    pub fn refused(&self, error: &str) {
        let error = crate::guest_text::clean_to(error, MAX_ERROR_BYTES);
        self.update(|e| {
            e.refused = Some(if error.is_empty() {
                "(no reason given)".to_owned()
            } else {
                error
            });
            e.stage = Stage::Starting;
        });
    }

    /// Whether the kubelet holds a `ListAndWatch` stream open.
    pub fn set_stream_open(&self, open: bool) {
        self.update(|e| e.stream_open = open);
    }

    /// True once the kubelet has accepted this resource.
    pub fn is_accepted(&self) -> bool {
        self.readiness
            .lock()
            .get(&self.key)
            .is_some_and(|e| e.id == self.id && e.accepted())
    }

    fn update(&self, change: impl FnOnce(&mut Entry)) {
        let resource = &self.key.1;
        let mut entries = self.readiness.lock();
        let Some(entry) = entries.get_mut(&self.key).filter(|e| e.id == self.id) else {
            return;
        };
        let was = entry.accepted();
        change(entry);
        let now = entry.accepted();
        if now {
            entry.refused = None;
        }
        if was != now {
            if now {
                tracing::info!(resource, "the kubelet accepted the resource");
            } else {
                tracing::info!(resource, waiting_for = %entry.waiting_for(), "the resource is no longer accepted by the kubelet");
            }
            let accepted = entries
                .iter()
                .any(|((_, r), e)| r == resource && e.accepted());
            metrics().set_accepted(resource, accepted);
        }
    }
}

impl Drop for Tracker {
    /// The resource is no longer served by this guest: its entry goes, and unless another
    /// guest serves the same name now, so do the resource's metric series.
    fn drop(&mut self) {
        let mut entries = self.readiness.lock();
        if entries.get(&self.key).is_some_and(|e| e.id == self.id) {
            entries.remove(&self.key);
        }
        let resource = &self.key.1;
        if !entries.keys().any(|(_, r)| r == resource) {
            metrics().forget_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_only_when_registered_and_streaming() {
        let readiness = Arc::new(Readiness::default());
        let t = readiness.track("g", "example.com/a", Mode::Watcher);
        assert_eq!(readiness.waiting(["example.com/a"]).len(), 1);
        t.serving(Path::new("/r/a.sock"));
        t.info_served();
        t.set_stream_open(true);
        let waiting = readiness.waiting(["example.com/a"]);
        assert!(
            waiting[0].1.contains("NotifyRegistrationStatus"),
            "{waiting:?}"
        );
        t.registered();
        assert!(readiness.waiting(["example.com/a"]).is_empty());
        assert!(readiness.is_accepted("example.com/a"));
        t.set_stream_open(false);
        assert!(!readiness.is_accepted("example.com/a"));
    }

    #[test]
    fn a_refusal_is_kept_across_instances_until_accepted() {
        let readiness = Arc::new(Readiness::default());
        let t = readiness.track("g", "example.com/b", Mode::Watcher);
        t.serving(Path::new("/r/b-1.sock"));
        t.refused("name taken\nforged line");
        t.serving(Path::new("/r/b-2.sock"));
        let why = &readiness.waiting(["example.com/b"])[0].1;
        assert!(
            why.contains("b-2.sock") && why.contains("name taken forged line"),
            "{why}"
        );
        t.registered();
        t.set_stream_open(true);
        t.set_stream_open(false);
        let why = &readiness.waiting(["example.com/b"])[0].1;
        assert!(!why.contains("refused"), "{why}");
    }

    #[test]
    fn a_dropped_tracker_leaves_a_later_one_alone() {
        let readiness = Arc::new(Readiness::default());
        let old = readiness.track("g", "example.com/c", Mode::Direct);
        let new = readiness.track("g", "example.com/c", Mode::Direct);
        drop(old);
        new.registered();
        new.set_stream_open(true);
        assert!(readiness.is_accepted("example.com/c"));
        drop(new);
        assert_eq!(
            readiness.waiting(["example.com/c"])[0].1,
            "its device plug-in has not started yet"
        );
    }
}
