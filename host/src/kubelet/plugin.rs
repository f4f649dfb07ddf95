//! The life of one resource's device plug-in: serve, register, watch, start over.

use std::sync::Arc;
use std::time::Duration;

use kubelet_api::v1beta1 as pb;
use tokio::sync::watch;
use tracing::Instrument;

use super::convert;
use super::registration::{self, RegisterError};
use super::service::{DevicePluginService, StreamTracker};
use super::socket::{self, Serving};
use super::watcher::{Verdict, WatcherService};
use super::{KubeletConfig, RegistrationMode};
use crate::metrics::metrics;
use crate::readiness::{self, Readiness, Tracker};
use crate::resource::ResourceService;
use crate::shutdown;

/// First and longest wait between failed registrations (C7: back-off, no tight loop).
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Pause between stopping an old server and registering a new one, so the kubelet has
/// processed the old stream's end first (kubelet-interop §6.4).
const REREGISTER_PAUSE: Duration = Duration::from_millis(100);

/// Why a registration instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    KubeletSocketChanged,
    OwnSocketGone,
    StreamLost,
    WatcherRefused,
    Shutdown,
}

/// Starts following what the kubelet makes of `resource` of `guest` (for [`run`]).
pub fn track(
    readiness: &Arc<Readiness>,
    guest: &str,
    config: &KubeletConfig,
    resource: &str,
) -> Tracker {
    let mode = match config.mode {
        RegistrationMode::Direct => readiness::Mode::Direct,
        RegistrationMode::PluginWatcher { .. } => readiness::Mode::Watcher,
    };
    readiness.track(guest, resource, mode)
}

/// Serves `resource` until `shutdown` turns true, registering again with a fresh
/// socket each time the kubelet restarts, deletes the socket, or drops the stream;
/// `tracker` records what the kubelet makes of it (readiness).
pub async fn run(
    resource: Arc<ResourceService>,
    config: KubeletConfig,
    tracker: Tracker,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("device_plugin", resource = %resource.name());
    run_inner(resource, config, tracker, shutdown)
        .instrument(span)
        .await
}

async fn run_inner(
    resource: Arc<ResourceService>,
    config: KubeletConfig,
    tracker: Tracker,
    mut shutdown: watch::Receiver<bool>,
) {
    let kubelet_socket = config.kubelet_socket();
    let dir = match &config.mode {
        RegistrationMode::Direct => config.device_plugin_dir.clone(),
        RegistrationMode::PluginWatcher { registry_dir } => registry_dir.clone(),
    };
    let mut backoff = BACKOFF_START;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let name = socket::unique_name(resource.name(), &dir);
        let streams = Arc::new(StreamTracker::default());
        let (stop, stopped) = watch::channel(false);
        let service = DevicePluginService::new(resource.clone(), streams.clone(), stopped);
        let (verdict_tx, verdict) = watch::channel(Verdict::Pending);
        let watcher = match config.mode {
            RegistrationMode::Direct => None,
            RegistrationMode::PluginWatcher { .. } => {
                let endpoint = dir.join(&name).display().to_string();
                Some(WatcherService::new(resource.name(), &endpoint, verdict_tx))
            }
        };
        let serving = match Serving::start(&dir, &name, service, watcher, stop) {
            Ok(serving) => serving,
            Err(e) => {
                tracker.not_serving();
                tracing::error!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot listen in the plug-in socket directory; check that it is mounted and writable"
                );
                if wait_or_shutdown(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };

        tracker.serving(serving.path());
        let restart = match config.mode {
            RegistrationMode::Direct => {
                let outcome = register_until_done(
                    &resource,
                    &config,
                    &serving,
                    &tracker,
                    &mut shutdown,
                    &mut backoff,
                )
                .await;
                match outcome {
                    Ok(()) => {
                        backoff = BACKOFF_START;
                        watch_for_restart(&config, &serving, &streams, &tracker, &mut shutdown)
                            .await
                    }
                    Err(restart) => restart,
                }
            }
            // The watcher dials us; a refusal, a lost stream or a deleted socket means a
            // fresh socket, which the watcher picks up as a new plug-in.
            RegistrationMode::PluginWatcher { .. } => {
                tracing::info!(
                    socket = %serving.path().display(),
                    "serving for the kubelet's plugin watcher; not registered until the kubelet confirms (NotifyRegistrationStatus)"
                );
                let watched = Watched {
                    resource: resource.name(),
                    serving: &serving,
                    streams: &streams,
                    tracker: &tracker,
                };
                watch_as_watched(&config, watched, verdict, &mut shutdown).await
            }
        };
        tracker.not_serving();
        serving.stop().await;
        match restart {
            Restart::Shutdown => {
                tracing::info!("stopped; socket removed");
                return;
            }
            reason => {
                tracing::info!(?reason, kubelet = %kubelet_socket.display(), "registering again on a fresh socket")
            }
        }
        tokio::time::sleep(REREGISTER_PAUSE).await;
    }
}

/// Registers, retrying with back-off. Gives up (to start over on a fresh socket) only
/// when our socket was deleted or on shutdown.
async fn register_until_done(
    resource: &ResourceService,
    config: &KubeletConfig,
    serving: &Serving,
    tracker: &Tracker,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), Restart> {
    let kubelet_socket = config.kubelet_socket();
    let options = convert::options(&resource.spec().options);
    loop {
        if !serving.socket_intact() {
            return Err(Restart::OwnSocketGone);
        }
        let request = pb::RegisterRequest {
            version: pb::VERSION.to_owned(),
            endpoint: serving.endpoint(),
            resource_name: resource.name().to_owned(),
            // Identical to GetDevicePluginOptions (C6): older kubelets read these.
            options: Some(options),
        };
        let seen = socket::identity(&kubelet_socket);
        // A kubelet that accepts the connection and then hangs must not hold a SIGTERM
        // up for the whole registration timeout.
        let attempt = registration::register(&kubelet_socket, request, config.register_timeout);
        let result = tokio::select! {
            result = attempt => result,
            _ = shutdown::requested(shutdown) => return Err(Restart::Shutdown),
        };
        match result {
            Ok(()) => {
                tracing::info!(endpoint = %serving.endpoint(), "registered with the kubelet");
                metrics().count(&metrics().registrations, resource.name(), true);
                tracker.registered();
                return Ok(());
            }
            Err(e) => {
                metrics().count(&metrics().registrations, resource.name(), false);
                tracker.register_failed(&e.to_string());
                match &e {
                    RegisterError::Unreachable { .. } => {
                        tracing::info!(error = %e, retry_in = ?backoff, "kubelet not reachable yet")
                    }
                    _ => tracing::warn!(error = %e, retry_in = ?backoff, "registration failed"),
                }
                // Wait out the back-off, but retry at once when kubelet.sock reappears.
                let deadline = tokio::time::Instant::now() + *backoff;
                *backoff = (*backoff * 2).min(BACKOFF_MAX);
                loop {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    if wait_or_shutdown(config.poll_interval, shutdown).await {
                        return Err(Restart::Shutdown);
                    }
                    if !serving.socket_intact() {
                        return Err(Restart::OwnSocketGone);
                    }
                    let now = socket::identity(&kubelet_socket);
                    if now.is_some() && now != seen {
                        *backoff = BACKOFF_START;
                        break;
                    }
                }
            }
        }
    }
}

/// Waits until something means the kubelet no longer knows this registration.
async fn watch_for_restart(
    config: &KubeletConfig,
    serving: &Serving,
    streams: &StreamTracker,
    tracker: &Tracker,
    shutdown: &mut watch::Receiver<bool>,
) -> Restart {
    let kubelet_socket = config.kubelet_socket();
    let registered_with = socket::identity(&kubelet_socket);
    let mut tick = tokio::time::interval(config.poll_interval);
    loop {
        tokio::select! {
            _ = shutdown::requested(shutdown) => return Restart::Shutdown,
            _ = streams.lost() => return Restart::StreamLost,
            _ = tick.tick() => {
                tracker.set_stream_open(streams.is_open());
                if socket::identity(&kubelet_socket) != registered_with {
                    return Restart::KubeletSocketChanged;
                }
                if !serving.socket_intact() {
                    return Restart::OwnSocketGone;
                }
            }
        }
    }
}

/// One plugin-watcher registration instance, as [`watch_as_watched`] follows it.
struct Watched<'a> {
    resource: &'a str,
    serving: &'a Serving,
    streams: &'a StreamTracker,
    tracker: &'a Tracker,
}

/// Plugin-watcher mode: records what the kubelet does (GetInfo, its verdict, the
/// stream) and waits until it refuses us, drops its stream, or our socket is deleted.
/// A kubelet restart needs nothing: the watcher finds the socket again. Warns once when
/// the kubelet does not call `GetInfo`, or does not confirm after it, within
/// `config.watcher_patience`.
async fn watch_as_watched(
    config: &KubeletConfig,
    w: Watched<'_>,
    mut verdict: watch::Receiver<Verdict>,
    shutdown: &mut watch::Receiver<bool>,
) -> Restart {
    let socket = w.serving.path().display().to_string();
    let since = tokio::time::Instant::now();
    let mut info_at: Option<tokio::time::Instant> = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(config.poll_interval);
    loop {
        tokio::select! {
            _ = shutdown::requested(shutdown) => return Restart::Shutdown,
            _ = w.streams.lost() => return Restart::StreamLost,
            changed = verdict.changed() => {
                if changed.is_err() {
                    continue;
                }
                let now = verdict.borrow_and_update().clone();
                match now {
                    Verdict::Pending => {}
                    Verdict::InfoServed => {
                        tracing::info!(%socket, "the kubelet's plugin watcher called GetInfo; waiting for it to confirm the registration");
                        info_at = Some(tokio::time::Instant::now());
                        warned = false;
                        w.tracker.info_served();
                    }
                    Verdict::Registered => {
                        metrics().count(&metrics().registrations, w.resource, true);
                        w.tracker.set_stream_open(w.streams.is_open());
                        w.tracker.registered();
                    }
                    Verdict::Refused(error) => {
                        metrics().count(&metrics().registrations, w.resource, false);
                        w.tracker.refused(&error);
                        return Restart::WatcherRefused;
                    }
                }
            }
            _ = tick.tick() => {
                w.tracker.set_stream_open(w.streams.is_open());
                if !w.serving.socket_intact() {
                    return Restart::OwnSocketGone;
                }
                if warned || w.tracker.is_accepted() || *verdict.borrow() == Verdict::Registered {
                    continue;
                }
                let patience = config.watcher_patience;
                match info_at {
                    None if since.elapsed() >= patience => {
                        warned = true;
                        tracing::warn!(
                            %socket,
                            waited = ?patience,
                            "the kubelet's plugin watcher has not called GetInfo on the socket; check that \
                             --plugins-registry-dir is the kubelet's plugins_registry directory (<kubelet \
                             --root-dir>/plugins_registry, mounted into this container) and that the kubelet runs"
                        );
                    }
                    Some(at) if at.elapsed() >= patience => {
                        warned = true;
                        tracing::warn!(
                            %socket,
                            waited = ?patience,
                            "the kubelet called GetInfo but has not confirmed the registration \
                             (NotifyRegistrationStatus); the resource is not registered. Check the kubelet's log \
                             (plugin manager and device manager errors for this socket) and its version, or use \
                             --registration direct"
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Sleeps for `d`; returns true if shutdown was requested meanwhile.
async fn wait_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown::requested(shutdown) => true,
    }
}
