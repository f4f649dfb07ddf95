//! A kubelet stand-in: the kubelet's side of the device plug-in API, in process.
//!
//! It behaves as `kubelet-interop.md` describes the real kubelet: it serves
//! `Registration` on `<dir>/kubelet.sock`; during `Register` it validates the version
//! and resource name, dials the plug-in back at `<dir>/<endpoint>` with `:authority`
//! `localhost` and calls `GetDevicePluginOptions` before answering; then it consumes
//! `ListAndWatch`, replacing its view of the resource with every message and counting
//! capacity and allocatable as the kubelet does. It never retries a stream that ended.
//! Tests drive allocation through it and can restart it (a new `kubelet.sock` inode).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use kubelet_api::v1beta1 as pb;
use pb::device_plugin_client::DevicePluginClient;
use pb::registration_server::{Registration as RegistrationService, RegistrationServer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// The kubelet's dial-back timeout during `Register`.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One `Register` call the stand-in received, accepted or not.
#[derive(Debug, Clone)]
pub struct Registration {
    pub request: pb::RegisterRequest,
    /// The HTTP/2 `:authority` the plug-in sent (grpc-go servers require one).
    pub authority: Option<String>,
    /// The `grpc-timeout` the plug-in set on the call (the kubelet needs seconds).
    pub timeout: Option<Duration>,
    /// What `GetDevicePluginOptions` answered during registration, if it was reached.
    pub options: Option<pb::DevicePluginOptions>,
    /// The error returned to the plug-in, if registration failed.
    pub error: Option<String>,
    pub at: Instant,
}

/// The stand-in's view of one resource, as the kubelet's device manager keeps it.
#[derive(Debug, Clone, Default)]
pub struct ResourceView {
    /// The last complete device list received.
    pub devices: Vec<pb::Device>,
    /// Lists received on the current stream.
    pub updates: usize,
    /// False once the stream ended: the kubelet then counts every device unhealthy.
    pub connected: bool,
    /// The socket the current registration is served on.
    pub endpoint: PathBuf,
}

impl ResourceView {
    /// `capacity` as the kubelet reports it: every listed device.
    pub fn capacity(&self) -> usize {
        self.devices.len()
    }

    /// `allocatable`: healthy devices while the stream is open, else zero.
    pub fn allocatable(&self) -> usize {
        if !self.connected {
            return 0;
        }
        self.devices
            .iter()
            .filter(|d| d.health == pb::HEALTHY)
            .count()
    }
}

#[derive(Default)]
struct State {
    registrations: Vec<Registration>,
    resources: HashMap<String, ResourceView>,
    clients: HashMap<String, DevicePluginClient<Channel>>,
    streams: HashMap<String, JoinHandle<()>>,
    /// Authority and `grpc-timeout` of incoming requests, in order.
    requests: Vec<(Option<String>, Option<Duration>)>,
    /// Registrations still to refuse (to test the plug-in's retries).
    refuse: usize,
    /// Total ListAndWatch streams opened, per resource.
    streams_opened: HashMap<String, usize>,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    changed: Notify,
    /// While true, registrations are answered but ListAndWatch is not opened yet.
    hold_streams: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The kubelet stand-in. Dropping it stops its server.
pub struct KubeletStandIn {
    shared: Arc<Shared>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl KubeletStandIn {
    /// Creates `dir` if needed and starts serving `dir/kubelet.sock`.
    pub async fn start(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            hold_streams: tokio::sync::watch::Sender::new(false),
        });
        let mut kubelet = Self {
            shared,
            server: None,
        };
        kubelet.serve()?;
        Ok(kubelet)
    }

    /// The directory holding `kubelet.sock` (the device-plugin directory).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.shared.dir.join(pb::KUBELET_SOCKET)
    }

    fn serve(&mut self) -> std::io::Result<()> {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = self.shared.clone();
        let recorder = shared.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .layer(tower::layer::layer_fn(move |inner| RecordAuthority {
                    inner,
                    shared: recorder.clone(),
                }))
                .add_service(RegistrationServer::new(RegistrationHandler { shared }))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, task));
        Ok(())
    }

    /// Stops like a kubelet going down: the registration server stops, `kubelet.sock`
    /// is removed, and every plug-in stream is dropped.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let _ = std::fs::remove_file(self.socket());
        let mut state = self.shared.lock();
        for (_, stream) in state.streams.drain() {
            stream.abort();
        }
        state.clients.clear();
        for view in state.resources.values_mut() {
            view.connected = false;
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// A kubelet restart: stop, remove every socket in the directory as the kubelet's
    /// start-up does (`CleanupPluginDirectory`), and serve a fresh `kubelet.sock`.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        self.remove_plugin_sockets()?;
        self.serve()
    }

    /// Starts serving again after [`stop`](Self::stop) without touching other sockets.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        self.serve()
    }

    /// Removes every socket in the device-plugin directory (files and directories stay).
    /// A socket that vanishes meanwhile (its plug-in is replacing it) is already gone.
    pub fn remove_plugin_sockets(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileTypeExt;
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for entry in std::fs::read_dir(self.dir())? {
            let entry = entry?;
            let is_socket = match entry.file_type() {
                Ok(t) => t.is_socket(),
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            if is_socket {
                match std::fs::remove_file(entry.path()) {
                    Err(e) if !gone(&e) => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// While `hold` is true, registrations are answered but their ListAndWatch streams
    /// are opened only once it turns false again (a slow kubelet).
    pub fn hold_list_and_watch(&self, hold: bool) {
        self.shared.hold_streams.send_replace(hold);
    }

    /// Refuses the next `n` registrations with an error, as a kubelet might.
    pub fn refuse_next_registrations(&self, n: usize) {
        self.shared.lock().refuse = n;
    }

    /// Every `Register` call so far.
    pub fn registrations(&self) -> Vec<Registration> {
        self.shared.lock().registrations.clone()
    }

    /// Authorities of every request the registration server received.
    pub fn authorities(&self) -> Vec<Option<String>> {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Ends every ListAndWatch stream, as a kubelet that disconnects does, while
    /// `kubelet.sock` stays as it is.
    pub fn drop_streams(&self) {
        let mut state = self.shared.lock();
        for (_, stream) in state.streams.drain() {
            stream.abort();
        }
        state.clients.clear();
        for view in state.resources.values_mut() {
            view.connected = false;
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// The stand-in's current view of `resource`.
    pub fn resource(&self, resource: &str) -> Option<ResourceView> {
        self.shared.lock().resources.get(resource).cloned()
    }

    /// How many ListAndWatch streams were opened for `resource`.
    pub fn streams_opened(&self, resource: &str) -> usize {
        self.shared
            .lock()
            .streams_opened
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `check` holds for the view of `resource`, or fails with what was seen.
    pub async fn wait_for(
        &self,
        resource: &str,
        timeout: Duration,
        check: impl Fn(&ResourceView) -> bool,
    ) -> Result<ResourceView, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if let Some(view) = self.resource(resource).filter(|v| check(v)) {
                return Ok(view);
            }
            let tick = tokio::time::sleep(Duration::from_millis(50));
            if tokio::time::timeout_at(deadline, async {
                tokio::select! { _ = notified => {}, _ = tick => {} }
            })
            .await
            .is_err()
            {
                return Err(format!(
                    "timed out after {timeout:?} waiting on {resource}; last view: {:?}",
                    self.resource(resource)
                ));
            }
        }
    }

    /// Waits until the registrations for `resource` number at least `count`.
    pub async fn wait_for_registrations(
        &self,
        resource: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Registration>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let seen: Vec<Registration> = self
                .registrations()
                .into_iter()
                .filter(|r| r.request.resource_name == resource && r.error.is_none())
                .collect();
            if seen.len() >= count {
                return Ok(seen);
            }
            let tick = tokio::time::sleep(Duration::from_millis(50));
            if tokio::time::timeout_at(deadline, async {
                tokio::select! { _ = notified => {}, _ = tick => {} }
            })
            .await
            .is_err()
            {
                return Err(format!(
                    "timed out after {timeout:?}: {} of {count} registrations of {resource}; all: {:?}",
                    seen.len(),
                    self.registrations()
                ));
            }
        }
    }

    /// The client connected to the plug-in currently registered for `resource`.
    pub fn client(&self, resource: &str) -> Result<DevicePluginClient<Channel>, Status> {
        self.shared
            .lock()
            .clients
            .get(resource)
            .cloned()
            .ok_or_else(|| Status::failed_precondition(format!("{resource} is not registered")))
    }

    /// `Allocate` with one container request per entry.
    pub async fn allocate(
        &self,
        resource: &str,
        containers: Vec<Vec<String>>,
    ) -> Result<pb::AllocateResponse, Status> {
        let request = pb::AllocateRequest {
            container_requests: containers
                .into_iter()
                .map(|devices_ids| pb::ContainerAllocateRequest { devices_ids })
                .collect(),
        };
        Ok(self.client(resource)?.allocate(request).await?.into_inner())
    }

    /// `GetPreferredAllocation` for one container.
    pub async fn preferred_allocation(
        &self,
        resource: &str,
        available: Vec<String>,
        must_include: Vec<String>,
        size: i32,
    ) -> Result<pb::PreferredAllocationResponse, Status> {
        let request = pb::PreferredAllocationRequest {
            container_requests: vec![pb::ContainerPreferredAllocationRequest {
                available_device_i_ds: available,
                must_include_device_i_ds: must_include,
                allocation_size: size,
            }],
        };
        Ok(self
            .client(resource)?
            .get_preferred_allocation(request)
            .await?
            .into_inner())
    }

    /// `PreStartContainer` with the kubelet's 30 s deadline.
    pub async fn pre_start(&self, resource: &str, ids: Vec<String>) -> Result<(), Status> {
        let mut request = Request::new(pb::PreStartContainerRequest { devices_ids: ids });
        request.set_timeout(Duration::from_secs(pb::PRE_START_TIMEOUT_SECS));
        self.client(resource)?.pre_start_container(request).await?;
        Ok(())
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            task.abort();
        }
        for (_, stream) in self.shared.lock().streams.drain() {
            stream.abort();
        }
    }
}

/// Dials a plug-in socket the way the kubelet does: a unix connection and
/// `:authority: localhost`.
pub async fn dial(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_timeout(DIAL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

struct RegistrationHandler {
    shared: Arc<Shared>,
}

impl RegistrationHandler {
    fn record(&self, registration: Registration) {
        self.shared.lock().registrations.push(registration);
        self.shared.changed.notify_waiters();
    }

    async fn connect(
        &self,
        request: &pb::RegisterRequest,
    ) -> Result<
        (
            DevicePluginClient<Channel>,
            pb::DevicePluginOptions,
            PathBuf,
        ),
        String,
    > {
        if request.version != pb::VERSION {
            return Err(format!(
                "requested API version {:?} is not supported by kubelet. Supported version is {:?}",
                request.version,
                pb::VERSION
            ));
        }
        if !is_extended_resource_name(&request.resource_name) {
            return Err(format!(
                "the ResourceName {:?} is invalid",
                request.resource_name
            ));
        }
        {
            let mut state = self.shared.lock();
            if state.refuse > 0 {
                state.refuse -= 1;
                return Err("registration refused by the test".into());
            }
        }
        // filepath.Join(socketDir, endpoint): an absolute endpoint is NOT honoured.
        let endpoint = self
            .shared
            .dir
            .join(request.endpoint.trim_start_matches('/'));
        let channel = tokio::time::timeout(DIAL_TIMEOUT, dial(&endpoint))
            .await
            .map_err(|_| "failed to dial device plugin: timeout".to_string())?
            .map_err(|e| format!("failed to dial device plugin: {e}"))?;
        let mut client = DevicePluginClient::new(channel);
        let options = client
            .get_device_plugin_options(pb::Empty {})
            .await
            .map_err(|s| format!("failed to get device plugin options: {}", s.message()))?
            .into_inner();
        Ok((client, options, endpoint))
    }
}

#[tonic::async_trait]
impl RegistrationService for RegistrationHandler {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let (authority, timeout) = self
            .shared
            .lock()
            .requests
            .last()
            .cloned()
            .unwrap_or_default();
        let request = request.into_inner();
        let mut registration = Registration {
            request: request.clone(),
            authority,
            timeout,
            options: None,
            error: None,
            at: Instant::now(),
        };
        let (client, options, endpoint) = match self.connect(&request).await {
            Ok(connected) => connected,
            Err(error) => {
                registration.error = Some(error.clone());
                self.record(registration);
                // The kubelet's errors are plain Go errors: gRPC code Unknown.
                return Err(Status::unknown(error));
            }
        };
        registration.options = Some(options);
        let resource = request.resource_name.clone();
        {
            let mut state = self.shared.lock();
            // Latest registration wins; the previous stream is dropped.
            if let Some(old) = state.streams.remove(&resource) {
                old.abort();
            }
            state.clients.insert(resource.clone(), client.clone());
            state.resources.insert(
                resource.clone(),
                ResourceView {
                    devices: Vec::new(),
                    updates: 0,
                    connected: true,
                    endpoint,
                },
            );
            *state.streams_opened.entry(resource.clone()).or_default() += 1;
            // Recorded before the stream starts, so that nobody sees devices of a
            // registration that is not on record yet.
            state.registrations.push(registration);
            let stream = tokio::spawn(consume(self.shared.clone(), resource.clone(), client));
            state.streams.insert(resource, stream);
        }
        self.shared.changed.notify_waiters();
        Ok(Response::new(pb::Empty {}))
    }
}

/// Consumes one ListAndWatch stream until it ends; never reopens it (as the kubelet).
async fn consume(shared: Arc<Shared>, resource: String, mut client: DevicePluginClient<Channel>) {
    let mut held = shared.hold_streams.subscribe();
    while *held.borrow_and_update() {
        if held.changed().await.is_err() {
            break;
        }
    }
    let mut stream = match client.list_and_watch(pb::Empty {}).await {
        Ok(response) => response.into_inner(),
        Err(_) => {
            disconnect(&shared, &resource);
            return;
        }
    };
    while let Ok(Some(message)) = stream.message().await {
        if let Some(view) = shared.lock().resources.get_mut(&resource) {
            view.devices = message.devices;
            view.updates += 1;
        }
        shared.changed.notify_waiters();
    }
    disconnect(&shared, &resource);
}

fn disconnect(shared: &Shared, resource: &str) {
    if let Some(view) = shared.lock().resources.get_mut(resource) {
        view.connected = false;
    }
    shared.changed.notify_waiters();
}

/// The kubelet's `IsExtendedResourceName`, written independently of the host's check
/// so that each tests the other.
pub fn is_extended_resource_name(name: &str) -> bool {
    let Some((domain, local)) = name.split_once('/') else {
        return false;
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    };
    let quota_domain = format!("requests.{domain}");
    !name.contains("kubernetes.io/")
        && !name.starts_with("requests.")
        && quota_domain.len() <= 253
        && quota_domain.split('.').all(label_ok)
        && !local.is_empty()
        && local.len() <= 63
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && local
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && local
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Records each request's `:authority` (or `Host`) before the registration service.
#[derive(Clone)]
struct RecordAuthority<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> tower::Service<http::Request<B>> for RecordAuthority<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|h| h.to_str().ok())
            .and_then(parse_grpc_timeout);
        self.shared.lock().requests.push((authority, timeout));
        self.inner.call(request)
    }
}

/// `grpc-timeout` is digits followed by a unit letter (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
