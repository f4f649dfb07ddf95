//! Dialing the kubelet's unix sockets the way grpc-go expects to be dialed.

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the gRPC server on `socket`. The URI's host gives every request an
/// `:authority` of `localhost`, which recent grpc-go servers require (kubelet-interop
/// §8); no HTTP/2 keepalive pings are sent (the kubelet answers them with GOAWAY).
pub async fn unix_channel(
    socket: &Path,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_timeout(connect_timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}
