//! The operator's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process
//! answers) and `/readyz` (every configured guest is loaded and the kubelet has accepted
//! every resource: see [`crate::readiness`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Status;
use crate::metrics::metrics;
use crate::shutdown;

/// Binds `addr` at start-up, so that a taken port fails the start rather than later.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Connections served at once; more wait in the listen backlog. Probes and a scraper
/// need a handful; the cap keeps a flood from costing the host memory and tasks.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head (a slow client, or one that
/// connects and sends nothing, is cut off instead of holding a connection forever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may last, whatever it does.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Serves the three endpoints on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = shutdown::requested(&mut stop) => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
            _ = shutdown::requested(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| answer(request, status.clone()));
            // One request per connection (probes and scrapers reconnect), its head
            // within HEADER_READ_TIMEOUT, the whole within CONNECTION_DEADLINE.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended with an error")
                }
                Err(_) => tracing::debug!("metrics endpoint: connection cut off at its deadline"),
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    status: watch::Receiver<Status>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (code, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match not_ready(&status.borrow()) {
            None => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Why the node is not ready, if it is not.
fn not_ready(status: &Status) -> Option<String> {
    if let Some(skipped) = status.skipped.first() {
        return Some(format!(
            "{} ({} refused in all)",
            skipped.reason,
            status.skipped.len()
        ));
    }
    if status.resources.is_empty() {
        return Some("no resource is served".into());
    }
    let waiting = status
        .readiness
        .waiting(status.resources.iter().map(|r| r.name()));
    let (resource, why) = waiting.first()?;
    Some(format!(
        "{resource} is not accepted by the kubelet yet: {why} ({} of {} resources waiting)",
        waiting.len(),
        status.resources.len()
    ))
}
