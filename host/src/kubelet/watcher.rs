//! Plugin-watcher registration: the kubelet finds the plug-in's socket in
//! `plugins_registry`, asks `GetInfo`, dials the endpoint it names, and reports the
//! outcome with `NotifyRegistrationStatus` (kubelet-interop §7). The same socket serves
//! the `DevicePlugin` service, so the endpoint is the socket itself.
//!
//! The kubelet's plugin manager dials the socket by its bare path without an
//! `:authority` override, so grpc-go sends the path (percent-encoded by current grpc-go)
//! as `:authority`. Stock h2 resets such requests with `PROTOCOL_ERROR`; the workspace
//! carries a patched h2 (`third_party/h2/PATCH.md`) that serves them.

use kubelet_api::pluginregistration as pr;
use kubelet_api::v1beta1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Where the plugin watcher's registration stands, as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The watcher has not called yet.
    Pending,
    /// `GetInfo` answered; the kubelet is registering (verdict to come).
    InfoServed,
    Registered,
    /// `NotifyRegistrationStatus(false)` with the kubelet's error, cleaned.
    Refused(String),
}

/// Answers the plugin watcher for one resource on one socket.
pub struct WatcherService {
    info: pr::PluginInfo,
    verdict: watch::Sender<Verdict>,
}

impl WatcherService {
    /// `endpoint` is the absolute path of the socket serving `DevicePlugin`.
    pub fn new(resource: &str, endpoint: &str, verdict: watch::Sender<Verdict>) -> Self {
        Self {
            info: pr::PluginInfo {
                r#type: pr::DEVICE_PLUGIN.to_owned(),
                name: resource.to_owned(),
                endpoint: endpoint.to_owned(),
                supported_versions: vec![pb::VERSION.to_owned()],
            },
            verdict,
        }
    }
}

#[tonic::async_trait]
impl pr::registration_server::Registration for WatcherService {
    /// Answers at once from memory: the kubelet allows it one second.
    async fn get_info(
        &self,
        _: Request<pr::InfoRequest>,
    ) -> Result<Response<pr::PluginInfo>, Status> {
        // Only the first call moves the registration on: a GetInfo on a socket the
        // kubelet has already confirmed (a second caller) changes nothing. (A restarted
        // kubelet calls again, but its old ListAndWatch stream ended first, and that
        // brings a fresh socket anyway.)
        self.verdict.send_if_modified(|v| {
            let first = *v == Verdict::Pending;
            if first {
                *v = Verdict::InfoServed;
            }
            first
        });
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<pr::RegistrationStatus>,
    ) -> Result<Response<pr::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let verdict = if status.plugin_registered {
            tracing::info!(resource = %self.info.name, "the kubelet confirmed the registration (NotifyRegistrationStatus)");
            Verdict::Registered
        } else {
            let error = crate::guest_text::clean(&status.error);
            tracing::warn!(
                resource = %self.info.name,
                %error,
                "the kubelet refused the registration (NotifyRegistrationStatus); its device manager's log says why \
                 (a resource name another plug-in registered, an unsupported version); serving a fresh socket for the \
                 plugin watcher to try again"
            );
            Verdict::Refused(error)
        };
        let _ = self.verdict.send(verdict);
        Ok(Response::new(pr::RegistrationStatusResponse {}))
    }
}
