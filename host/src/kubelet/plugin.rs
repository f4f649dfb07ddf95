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

/// Serves `resource` until `shutdown` turns true, registering again with a fresh
/// socket each time the kubelet restarts, deletes the socket, or drops the stream.
pub async fn run(
    resource: Arc<ResourceService>,
    config: KubeletConfig,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("device_plugin", resource = %resource.name());
    run_inner(resource, config, shutdown).instrument(span).await
}

async fn run_inner(
    resource: Arc<ResourceService>,
    config: KubeletConfig,
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

        let restart = match config.mode {
            RegistrationMode::Direct => {
                let outcome =
                    register_until_done(&resource, &config, &serving, &mut shutdown, &mut backoff)
                        .await;
                match outcome {
                    Ok(()) => {
                        backoff = BACKOFF_START;
                        watch_for_restart(&config, &serving, &streams, &mut shutdown).await
                    }
                    Err(restart) => restart,
                }
            }
            // The watcher dials us; a refusal, a lost stream or a deleted socket means a
            // fresh socket, which the watcher picks up as a new plug-in.
            RegistrationMode::PluginWatcher { .. } => {
                tracing::info!(socket = %serving.path().display(), "serving for the plugin watcher");
                metrics().set_registered(resource.name(), true);
                watch_as_watched(&config, &serving, &streams, verdict, &mut shutdown).await
            }
        };
        metrics().set_registered(resource.name(), false);
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
                metrics().set_registered(resource.name(), true);
                return Ok(());
            }
            Err(e) => {
                metrics().count(&metrics().registrations, resource.name(), false);
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

/// Plugin-watcher mode: waits until the watcher refuses us, drops its stream, or our
/// socket is deleted. A kubelet restart needs nothing: the watcher finds the socket again.
async fn watch_as_watched(
    config: &KubeletConfig,
    serving: &Serving,
    streams: &StreamTracker,
    mut verdict: watch::Receiver<Verdict>,
    shutdown: &mut watch::Receiver<bool>,
) -> Restart {
    let mut tick = tokio::time::interval(config.poll_interval);
    loop {
        tokio::select! {
            _ = shutdown::requested(shutdown) => return Restart::Shutdown,
            _ = streams.lost() => return Restart::StreamLost,
            changed = verdict.changed() => {
                if changed.is_ok() && matches!(*verdict.borrow(), Verdict::Refused(_)) {
                    return Restart::WatcherRefused;
                }
            }
            _ = tick.tick() => {
                if !serving.socket_intact() {
                    return Restart::OwnSocketGone;
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
