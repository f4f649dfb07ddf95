//! The `Register` call to the kubelet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubelet_api::v1beta1 as pb;
use thiserror::Error;

use super::dial::unix_channel;

/// Why registration did not succeed. Every case is retried with back-off.
#[derive(Debug, Error)]
pub enum RegisterError {
    #[error(
        "cannot reach the kubelet at {socket}: {reason}; is the kubelet running and the device-plugin directory mounted?"
    )]
    Unreachable { socket: PathBuf, reason: String },
    #[error("the kubelet refused the registration: {0}")]
    Rejected(String),
    #[error("the kubelet did not answer within {0:?}")]
    Timeout(Duration),
}

/// Dials `kubelet.sock` (see [`unix_channel`]) and sends `request`.
pub async fn register(
    kubelet_socket: &Path,
    request: pb::RegisterRequest,
    timeout: Duration,
) -> Result<(), RegisterError> {
    let unreachable = |reason: String| RegisterError::Unreachable {
        socket: kubelet_socket.to_owned(),
        reason,
    };
    let channel = unix_channel(kubelet_socket, Duration::from_secs(10))
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    let mut client = pb::registration_client::RegistrationClient::new(channel);
    let mut call = tonic::Request::new(request);
    call.set_timeout(timeout);
    match tokio::time::timeout(timeout + Duration::from_secs(1), client.register(call)).await {
        Err(_) => Err(RegisterError::Timeout(timeout)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            Err(unreachable(status.message().to_owned()))
        }
        Ok(Err(status)) => Err(RegisterError::Rejected(status.message().to_owned())),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
