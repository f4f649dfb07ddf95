//! A stand-in for the kubelet's pod-resources API (`v1.PodResourcesLister`): tests say
//! which device IDs are assigned to which containers, as the kubelet would report them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kubelet_api::podresources as pr;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// One container's devices of one resource.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub pod: String,
    pub container: String,
    pub resource: String,
    pub device_ids: Vec<String>,
}

/// Serves `List` from the assignments set last; dropping it stops the server.
pub struct PodResourcesStandIn {
    socket: PathBuf,
    assignments: Arc<Mutex<Vec<Assignment>>>,
    lists: Arc<Mutex<usize>>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl PodResourcesStandIn {
    /// Serves on `socket` (its directory is created).
    pub fn start(socket: &Path) -> std::io::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let assignments = Arc::new(Mutex::new(Vec::new()));
        let lists = Arc::new(Mutex::new(0));
        let service = Lister {
            assignments: assignments.clone(),
            lists: lists.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(
                    pr::pod_resources_lister_server::PodResourcesListerServer::new(service),
                )
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            socket: socket.to_owned(),
            assignments,
            lists,
            server: Some((stop, task)),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Replaces what the kubelet reports as assigned.
    pub fn set(&self, assignments: Vec<Assignment>) {
        *self.assignments.lock().unwrap_or_else(|p| p.into_inner()) = assignments;
    }

    /// How many times `List` was called.
    pub fn lists(&self) -> usize {
        *self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PodResourcesStandIn {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            task.abort();
        }
    }
}

struct Lister {
    assignments: Arc<Mutex<Vec<Assignment>>>,
    lists: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for Lister {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        *self.lists.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let assignments = self
            .assignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let pod_resources = assignments
            .into_iter()
            .map(|a| pr::PodResources {
                name: a.pod,
                namespace: "default".into(),
                containers: vec![pr::ContainerResources {
                    name: a.container,
                    devices: vec![pr::ContainerDevices {
                        resource_name: a.resource,
                        device_ids: a.device_ids,
                        topology: None,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pr::ListPodResourcesResponse {
            pod_resources,
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        Ok(Response::new(pr::AllocatableResourcesResponse::default()))
    }

    async fn get(
        &self,
        _: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("the stand-in serves List only"))
    }
}
