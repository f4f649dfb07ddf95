//! The `DevicePlugin` gRPC service for one resource.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kubelet_api::v1beta1 as pb;
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert;
use crate::device::PreferredRequest;
use crate::metrics::metrics;
use crate::resource::{ResourceService, ServiceError};
use crate::shutdown;
use std::time::Instant;

/// grpc-go's default receive limit on the kubelet side (C15).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Records an RPC's duration when dropped, however the RPC returns.
struct RpcTimer {
    method: &'static str,
    started: Instant,
}

impl RpcTimer {
    fn start(method: &'static str) -> Self {
        Self {
            method,
            started: Instant::now(),
        }
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        metrics().observe_rpc(self.method, self.started.elapsed());
    }
}

/// Counts open `ListAndWatch` streams and signals when the last one ends, which means
/// the kubelet has disconnected and the plug-in must register again.
#[derive(Debug, Default)]
pub struct StreamTracker {
    active: AtomicUsize,
    lost: Notify,
}

impl StreamTracker {
    /// Resolves once the last open stream has ended.
    pub async fn lost(&self) {
        self.lost.notified().await
    }

    /// True while the kubelet holds at least one `ListAndWatch` stream open.
    pub fn is_open(&self) -> bool {
        self.active.load(Ordering::SeqCst) > 0
    }

    fn opened(self: &Arc<Self>) -> StreamGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }
}

/// Decrements the count when a stream's task ends, however it ends.
struct StreamGuard(Arc<StreamTracker>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.lost.notify_one();
        }
    }
}

/// Serves one resource on one socket until `stop` turns true.
pub struct DevicePluginService {
    resource: Arc<ResourceService>,
    streams: Arc<StreamTracker>,
    stop: watch::Receiver<bool>,
}

impl DevicePluginService {
    pub fn new(
        resource: Arc<ResourceService>,
        streams: Arc<StreamTracker>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            resource,
            streams,
            stop,
        }
    }
}

/// Longest error message sent to the kubelet (it becomes an event on the pod).
const MAX_STATUS_BYTES: usize = 4096;

/// The gRPC status for a refused call. Guest text inside the message was cleaned where
/// it entered the host; cleaning the whole message again keeps that true of any path.
fn status(e: ServiceError) -> Status {
    let clean = |m: String| crate::guest_text::clean_to(&m, MAX_STATUS_BYTES);
    match e {
        ServiceError::InvalidArgument(m) => Status::invalid_argument(clean(m)),
        ServiceError::DeadlineExceeded(m) => Status::deadline_exceeded(clean(m)),
        ServiceError::Internal(m) => Status::internal(clean(m)),
        ServiceError::Unavailable(m) => Status::unavailable(clean(m)),
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(convert::options(
            &self.resource.spec().options,
        )))
    }

    type ListAndWatchStream = DeviceStream;

    /// Sends the full list at once, then a full list after every change; the stream
    /// stays open until the kubelet goes away or this server stops.
    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = self.resource.subscribe();
        let mut stop = self.stop.clone();
        let guard = self.streams.opened();
        let resource = self.resource.name().to_owned();
        let span = tracing::info_span!("list_and_watch", resource = %resource);
        tokio::spawn(
            async move {
                let _guard = guard;
                loop {
                    let message = convert::devices(&snapshots.borrow_and_update());
                    let size = message.encoded_len();
                    if size >= MAX_MESSAGE_BYTES {
                        tracing::error!(
                            size,
                            "device list too large for the kubelet (4 MiB); not sent"
                        );
                    } else {
                        let healthy = message
                            .devices
                            .iter()
                            .filter(|d| d.health == pb::HEALTHY)
                            .count();
                        tracing::info!(
                            devices = message.devices.len(),
                            healthy,
                            "sending device list"
                        );
                        if tx.send(Ok(message)).await.is_err() {
                            tracing::info!("the kubelet closed the ListAndWatch stream");
                            return;
                        }
                    }
                    tokio::select! {
                        changed = snapshots.changed() => if changed.is_err() { return },
                        _ = tx.closed() => {
                            tracing::info!("the kubelet closed the ListAndWatch stream");
                            return;
                        }
                        _ = shutdown::requested(&mut stop) => return,
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(resource = %self.resource.name()))]
    async fn get_preferred_allocation(
        &self,
        request: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        let _timer = RpcTimer::start("GetPreferredAllocation");
        let requests = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|r| PreferredRequest {
                available: r.available_device_i_ds,
                must_include: r.must_include_device_i_ds,
                size: usize::try_from(r.allocation_size).unwrap_or(0),
            })
            .collect();
        let answers = self.resource.preferred_allocation(requests).await;
        Ok(Response::new(pb::PreferredAllocationResponse {
            container_responses: answers
                .into_iter()
                .map(|device_i_ds| pb::ContainerPreferredAllocationResponse { device_i_ds })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(resource = %self.resource.name()))]
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let _timer = RpcTimer::start("Allocate");
        let containers: Vec<Vec<String>> = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        tracing::info!(?containers, "allocate");
        let answer = self.resource.allocate(containers).await;
        metrics().count(&metrics().allocations, self.resource.name(), answer.is_ok());
        let answer = answer.map_err(|e| {
            tracing::warn!(error = %e, "allocation refused");
            status(e)
        })?;
        let response = pb::AllocateResponse {
            container_responses: answer.into_iter().map(convert::allocation).collect(),
        };
        if response.encoded_len() >= MAX_MESSAGE_BYTES {
            return Err(Status::internal(format!(
                "the allocation for {} exceeds the kubelet's 4 MiB message limit",
                self.resource.name()
            )));
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(resource = %self.resource.name()))]
    async fn pre_start_container(
        &self,
        request: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        let _timer = RpcTimer::start("PreStartContainer");
        let ids = request.into_inner().devices_ids;
        self.resource.pre_start(ids).await.map_err(|e| {
            tracing::warn!(error = %e, "pre-start failed");
            status(e)
        })?;
        Ok(Response::new(pb::PreStartContainerResponse {}))
    }
}
