//! Plugin-watcher registration: the kubelet finds the plug-in's socket in
//! `plugins_registry`, asks `GetInfo`, dials the endpoint it names, and reports the
//! outcome with `NotifyRegistrationStatus` (kubelet-interop §7). The same socket serves
//! the `DevicePlugin` service, so the endpoint is the socket itself.

use kubelet_api::pluginregistration as pr;
use kubelet_api::v1beta1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The kubelet's verdict on a registration, as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not reported yet.
    Pending,
    Registered,
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
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<pr::RegistrationStatus>,
    ) -> Result<Response<pr::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let verdict = if status.plugin_registered {
            tracing::info!(resource = %self.info.name, "the plugin watcher registered the resource");
            Verdict::Registered
        } else {
            tracing::warn!(resource = %self.info.name, error = %status.error, "the plugin watcher refused the registration; serving a fresh socket");
            Verdict::Refused(status.error)
        };
        let _ = self.verdict.send(verdict);
        Ok(Response::new(pr::RegistrationStatusResponse {}))
    }
}
