//! Follows the guests directory: one task per guest ([`guest_task`](super::guest_task)),
//! started when its files appear, asked to reload when they (or the ownership decided by
//! the policies) change, stopped when they go. The supervisor itself never loads,
//! compiles or enumerates anything, so no guest waits for another.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::Status;
use super::guest_task::{GuestTaskHandle, LoadRequest};
use super::guests_dir::{self, Fingerprint};
use super::ownership::Claims;
use super::status_board::StatusBoard;
use crate::node::HostConfig;
use crate::runtime::Runtime;
use crate::shutdown;

/// Most resources one guest may advertise: each is a socket, a registration and a field
/// in the Node's status.
pub const MAX_RESOURCES_PER_GUEST: usize = 16;

pub(super) struct Supervisor {
    config: HostConfig,
    runtime: Arc<Runtime>,
    guests: BTreeMap<String, GuestTaskHandle>,
    /// What every policy in the directory claims, and the files it was read from: the
    /// policies are read again only when a guest's files change.
    claims: Claims,
    claims_from: Vec<(String, Fingerprint)>,
    board: StatusBoard,
    /// The host's shutdown signal, passed to every guest task.
    host_stop: watch::Receiver<bool>,
}

impl Supervisor {
    pub(super) fn new(
        config: HostConfig,
        runtime: Runtime,
        status: watch::Sender<Status>,
        host_stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            runtime: Arc::new(runtime),
            guests: BTreeMap::new(),
            claims: Claims::default(),
            claims_from: Vec::new(),
            board: StatusBoard::new(status),
            host_stop,
        }
    }

    /// Follows the directory until shutdown, then stops every guest's task (which
    /// deregisters its resources).
    pub(super) async fn run(mut self) {
        let mut stop = self.host_stop.clone();
        let mut reload = tokio::time::interval(self.config.reload_interval);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reload.reset();
        loop {
            tokio::select! {
                _ = shutdown::requested(&mut stop) => break,
                _ = reload.tick() => { self.sync().await; }
            }
        }
        // Every guest at once, so that shutdown takes as long as the slowest one.
        let mut stopping = tokio::task::JoinSet::new();
        for handle in std::mem::take(&mut self.guests).into_values() {
            stopping.spawn(handle.stop());
        }
        while stopping.join_next().await.is_some() {}
    }

    /// Brings the guest tasks in line with the guests directory. Returns receivers that
    /// are answered once each load asked for here has been tried (start-up waits on
    /// them; later scans do not).
    pub(super) async fn sync(&mut self) -> Vec<oneshot::Receiver<()>> {
        let found = match guests_dir::scan(&self.config.guests_dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the guests directory; keeping what is loaded");
                return Vec::new();
            }
        };
        let files: Vec<(String, Fingerprint)> = found
            .iter()
            .map(|f| (f.name.clone(), f.fingerprint.clone()))
            .collect();
        if files != self.claims_from {
            let claims = Claims::of(&found, &self.config.limits);
            if claims != self.claims && !self.guests.is_empty() {
                tracing::info!(
                    "the policies changed which guest owns which names; checking every guest again"
                );
            }
            self.claims = claims;
            self.claims_from = files;
        }
        let gone: Vec<String> = self
            .guests
            .keys()
            .filter(|name| !found.iter().any(|f| &f.name == *name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(handle) = self.guests.remove(&name) {
                tracing::info!(
                    guest = %name,
                    "guest removed from the guests directory; deregistering its resources"
                );
                handle.stop().await;
            }
        }
        let mut waiting = Vec::new();
        for files in found {
            let handle = self.guests.entry(files.name.clone()).or_insert_with(|| {
                GuestTaskHandle::spawn(
                    &files.name,
                    self.config.clone(),
                    self.runtime.clone(),
                    self.board.clone(),
                    self.host_stop.clone(),
                )
            });
            let current = (files.fingerprint.clone(), self.claims.clone());
            if handle.sent.as_ref() == Some(&current) {
                continue;
            }
            let (done, answered) = oneshot::channel();
            let request = LoadRequest {
                files,
                claims: self.claims.clone(),
                done: Some(done),
            };
            if handle.requests.send(request).is_ok() {
                handle.sent = Some(current);
                waiting.push(answered);
            }
        }
        waiting
    }

    /// Publishes the status once, even with no guest at all (the first look at the
    /// node counts as a change).
    pub(super) fn publish(&self) {
        self.board.touch();
    }
}
