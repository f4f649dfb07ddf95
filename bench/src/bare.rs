//! The baseline: a bare tonic `DevicePlugin` server with no logic behind it, on the same
//! kind of unix socket, served the same way as the host serves its plug-ins. Used in
//! process (Allocate round trip, 10,000-device stream) and as a child process
//! (`wdp-bench bare-plugin`: start-up to Register, resident set, re-registration).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use kubelet_api::v1beta1 as pb;
use pb::device_plugin_server::{DevicePlugin, DevicePluginServer};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::native::{Direct, NvidiaNative};

type DeviceStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

/// Answers every call at once with an empty message. `ListAndWatch` streams what the
/// feed sends (in process), or one fixed list of eight devices.
#[derive(Default)]
pub struct Bare {
    feed: Mutex<Option<mpsc::Receiver<pb::ListAndWatchResponse>>>,
    /// Present: `Allocate` runs the NVIDIA logic natively (a native plug-in).
    native: Option<Mutex<NvidiaNative<Direct>>>,
}

impl Bare {
    pub fn with_feed(feed: mpsc::Receiver<pb::ListAndWatchResponse>) -> Self {
        Self {
            feed: Mutex::new(Some(feed)),
            native: None,
        }
    }

    /// A native plug-in: the guest's logic compiled into the server, reading the node
    /// with `std::fs` (see `native.rs`).
    pub fn with_native_logic(logic: NvidiaNative<Direct>) -> Self {
        Self {
            feed: Mutex::default(),
            native: Some(Mutex::new(logic)),
        }
    }
}

/// Eight healthy devices, as a plug-in for the DGX's GPUs would list them.
pub fn eight_devices() -> pb::ListAndWatchResponse {
    pb::ListAndWatchResponse {
        devices: (0..8)
            .map(|i| pb::Device {
                id: format!("bare-{i}"),
                health: pb::HEALTHY.into(),
                topology: Some(pb::TopologyInfo {
                    nodes: vec![pb::NumaNode { id: i / 4 }],
                }),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl DevicePlugin for Bare {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(pb::DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let feed = self.feed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let stream: DeviceStream = match feed {
            Some(rx) => Box::pin(ReceiverStream::new(rx).map(Ok)),
            None => {
                Box::pin(tokio_stream::once(Ok(eight_devices())).chain(tokio_stream::pending()))
            }
        };
        Ok(Response::new(stream))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        Ok(Response::new(pb::PreferredAllocationResponse::default()))
    }

    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let Some(native) = &self.native else {
            return Ok(Response::new(pb::AllocateResponse::default()));
        };
        let containers: Vec<Vec<String>> = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        let answer = native
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate(&containers)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::AllocateResponse {
            container_responses: answer
                .into_iter()
                .map(|a| pb::ContainerAllocateResponse {
                    envs: a.envs.into_iter().collect(),
                    devices: a
                        .devices
                        .into_iter()
                        .map(|(container_path, host_path, permissions)| pb::DeviceSpec {
                            container_path,
                            host_path,
                            permissions,
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse::default()))
    }
}

/// A bare server on `socket` until the returned sender fires or is dropped.
pub struct BareServer {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl BareServer {
    pub fn start(socket: &Path, service: Bare) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            socket: socket.to_owned(),
            stop: Some(stop),
            task,
        })
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `wdp-bench bare-plugin --dir D --resource R`: the native floor of a device plug-in
/// process. Serves [`Bare`] on a fresh socket in `dir`, registers `resource` with
/// `dir/kubelet.sock` through the host's own `register` (same dialing, same timeout),
/// and registers again on a fresh socket whenever `kubelet.sock` is recreated, checked
/// every 100 ms like the host's default poll interval. Runs until SIGTERM.
pub async fn run_child(dir: PathBuf, resource: String) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    use wasm_device_plugin::kubelet::{registration, socket};
    let mut term = signal(SignalKind::terminate())?;
    let kubelet = dir.join(pb::KUBELET_SOCKET);
    let mut generation = 0u32;
    loop {
        let name = format!("bare-{}-{generation}.sock", std::process::id());
        generation += 1;
        let server = BareServer::start(&dir.join(&name), Bare::default())?;
        let request = pb::RegisterRequest {
            version: pb::VERSION.into(),
            endpoint: name,
            resource_name: resource.clone(),
            options: Some(pb::DevicePluginOptions::default()),
        };
        let registered_with = socket::identity(&kubelet);
        let mut ok =
            registration::register(&kubelet, request.clone(), Duration::from_secs(40)).await;
        while ok.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ok = registration::register(&kubelet, request.clone(), Duration::from_secs(40)).await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => {
                    server.stop().await;
                    return Ok(());
                }
                _ = tick.tick() => {
                    // A restarting kubelet removes every socket (ours too); a recreated
                    // kubelet.sock may even get the old inode number back.
                    let now = socket::identity(&kubelet);
                    let ours = server.socket.exists();
                    if (now.is_some() && now != registered_with) || (now.is_some() && !ours) {
                        break;
                    }
                }
            }
        }
        server.stop().await;
    }
}
