//! What the node serves, assembled from each guest task's own report: guest tasks run
//! independently, so each writes only its own entry, and every change republishes the
//! node's [`Status`] (which `/readyz`, release detection and tests read).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Skipped, Status};
use crate::metrics::metrics;
use crate::resource::ResourceService;

/// One guest's part of the status.
#[derive(Clone, Default)]
pub(super) struct GuestReport {
    pub resources: Vec<Arc<ResourceService>>,
    pub skipped: Vec<Skipped>,
    /// Failed loads in a row (0 once loaded).
    pub failed_attempts: u32,
}

/// The shared board every guest task reports to.
#[derive(Clone)]
pub(super) struct StatusBoard {
    reports: Arc<Mutex<BTreeMap<String, GuestReport>>>,
    status: Arc<watch::Sender<Status>>,
}

impl StatusBoard {
    pub fn new(status: watch::Sender<Status>) -> Self {
        Self {
            reports: Arc::default(),
            status: Arc::new(status),
        }
    }

    /// Replaces `guest`'s report and republishes.
    pub fn set(&self, guest: &str, report: GuestReport) {
        metrics().set_load_failures(guest, report.failed_attempts);
        let mut reports = self.lock();
        reports.insert(guest.to_owned(), report);
        self.republish(&reports);
    }

    /// Drops `guest`'s report (the guest left the directory) and republishes.
    pub fn remove(&self, guest: &str) {
        metrics().forget_guest(guest);
        let mut reports = self.lock();
        if reports.remove(guest).is_some() {
            self.republish(&reports);
        }
    }

    /// The kubelet's view of the served resources, which the device plug-ins update.
    pub fn readiness(&self) -> Arc<crate::readiness::Readiness> {
        self.status.borrow().readiness.clone()
    }

    /// Counts a reload applied or refused.
    pub fn count_reload(&self, applied: bool) {
        metrics().reload(applied);
        self.status.send_modify(|s| {
            if applied {
                s.reloads_ok += 1;
            } else {
                s.reloads_refused += 1;
            }
        });
    }

    /// Publishes the status as it is, marking that the node has been looked at once.
    pub fn touch(&self) {
        let reports = self.lock();
        self.republish(&reports);
    }

    fn republish(&self, reports: &BTreeMap<String, GuestReport>) {
        let resources = reports
            .values()
            .flat_map(|r| r.resources.iter().cloned())
            .collect();
        let skipped = reports
            .values()
            .flat_map(|r| r.skipped.iter().cloned())
            .collect();
        self.status.send_modify(|status| {
            status.resources = resources;
            status.skipped = skipped;
            status.generation += 1;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, GuestReport>> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }
}
