//! The `Register` call to the kubelet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubelet_api::v1beta1 as pb;
use thiserror::Error;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

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

/// Dials `kubelet.sock` and sends `request`.
///
/// The URI's host gives requests an `:authority` of `localhost`, which recent grpc-go
/// servers require (kubelet-interop §8). No HTTP/2 keepalive pings are sent: the
/// kubelet's server would answer them with GOAWAY `too_many_pings`.
pub async fn register(
    kubelet_socket: &Path,
    request: pb::RegisterRequest,
    timeout: Duration,
) -> Result<(), RegisterError> {
    let socket = kubelet_socket.to_owned();
    let unreachable = |reason: String| RegisterError::Unreachable {
        socket: kubelet_socket.to_owned(),
        reason,
    };
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
