//! Plugin-watcher registration (C32): the host serves a socket in `plugins_registry`
//! that answers `GetInfo` at once, serves `DevicePlugin` at the endpoint it names, and
//! starts over on a fresh socket when the watcher reports a failed registration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{Harness, WAIT, add_widgets, ops, widgets};
use kubelet_api::pluginregistration as pr;
use kubelet_api::v1beta1 as pb;
use serde_json::json;
use testkit::kubelet::dial;
use wasm_device_plugin::kubelet::RegistrationMode;

const WIDGET: &str = "example.com/widget";

/// Waits for the plug-in sockets in `dir` to be exactly one, other than `not` (hidden
/// names skipped, as the kubelet's plugin watcher skips them).
async fn one_socket(dir: &Path, not: Option<&Path>) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sockets: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            // As the kubelet's plugin watcher does: hidden names are not plug-ins.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| Some(p.as_path()) != not)
            .collect();
        if let [one] = sockets.as_slice() {
            return one.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sockets in {}: {sockets:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plays the kubelet's plugin watcher against one socket: GetInfo within 1 s, then the
/// device-plugin calls at the endpoint it names, then NotifyRegistrationStatus(true).
async fn register_like_the_watcher(socket: &Path) -> (pr::PluginInfo, Vec<pb::Device>) {
    let (mut registration, info, devices) = connect_like_the_watcher(socket).await;
    registration
        .notify_registration_status(pr::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .expect("NotifyRegistrationStatus");
    (info, devices)
}

/// [`register_like_the_watcher`] up to its verdict: GetInfo, GetDevicePluginOptions and
/// ListAndWatch (kept open); the caller notifies, or stays silent.
async fn connect_like_the_watcher(
    socket: &Path,
) -> (
    pr::registration_client::RegistrationClient<tonic::transport::Channel>,
    pr::PluginInfo,
    Vec<pb::Device>,
) {
    let channel = dial(socket).await.expect("dial the registration socket");
    let mut registration = pr::registration_client::RegistrationClient::new(channel);
    let info = tokio::time::timeout(
        Duration::from_secs(1),
        registration.get_info(pr::InfoRequest {}),
    )
    .await
    .expect("GetInfo answers within the watcher's 1 s")
    .expect("GetInfo")
    .into_inner();
    let endpoint = PathBuf::from(&info.endpoint);
    let mut plugin = pb::device_plugin_client::DevicePluginClient::new(
        dial(&endpoint).await.expect("dial the endpoint"),
    );
    plugin
        .get_device_plugin_options(pb::Empty {})
        .await
        .expect("options");
    let mut stream = plugin
        .list_and_watch(pb::Empty {})
        .await
        .expect("ListAndWatch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("a list")
        .expect("not the end");
    // Keep the stream open for the caller's lifetime of the test by leaking it to a task.
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    (registration, info, first.devices)
}

/// A host serving `n` widgets in plugin-watcher mode; returns it and the registry dir.
async fn watched_host(n: usize) -> (Harness, PathBuf) {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(n));
    h.add_conformance(
        "widgets",
        json!({ "resources": [{ "name": WIDGET, "class": "widget" }] }),
    );
    let registry = h.tmp.path().join("plugins_registry");
    std::fs::create_dir_all(&registry).unwrap();
    let mut config = h.config();
    config.kubelet.mode = RegistrationMode::PluginWatcher {
        registry_dir: registry.clone(),
    };
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    h.start_host_with(config).await;
    (h, registry)
}

/// C32: GetInfo names the resource, type DevicePlugin, v1beta1 and an absolute endpoint
/// that serves the device list; nothing is registered on kubelet.sock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_finds_a_socket_that_answers_get_info() {
    let (h, registry) = watched_host(3).await;

    let socket = one_socket(&registry, None).await;
    let (info, devices) = register_like_the_watcher(&socket).await;
    assert_eq!(info.r#type, "DevicePlugin");
    assert_eq!(info.name, WIDGET);
    assert_eq!(info.supported_versions, vec!["v1beta1".to_string()]);
    assert!(Path::new(&info.endpoint).is_absolute(), "{}", info.endpoint);
    assert_eq!(devices.len(), 3);
    assert!(
        h.kubelet.registrations().is_empty(),
        "watcher mode does not Register on kubelet.sock"
    );
    assert!(
        h.plugin_sockets().is_empty(),
        "no socket in the device-plugin directory"
    );
}

/// C32: NotifyRegistrationStatus(false) makes the host serve a fresh socket, which the
/// watcher can register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_brings_a_fresh_socket() {
    let (_h, registry) = watched_host(1).await;

    let first = one_socket(&registry, None).await;
    let mut registration =
        pr::registration_client::RegistrationClient::new(dial(&first).await.unwrap());
    registration.get_info(pr::InfoRequest {}).await.unwrap();
    registration
        .notify_registration_status(pr::RegistrationStatus {
            plugin_registered: false,
            error: "resource name taken".into(),
        })
        .await
        .unwrap();
    let second = one_socket(&registry, Some(&first)).await;
    assert!(!first.exists(), "the refused socket is removed");
    let (info, devices) = register_like_the_watcher(&second).await;
    assert_eq!((info.name.as_str(), devices.len()), (WIDGET, 1));
}

/// Issue 13: the kubelet's plugin manager dials the registration socket by its bare path
/// without `WithAuthority`, so grpc-go sends the path as `:authority` (raw, or
/// percent-encoded by grpc-go since mid-2023). h2 reset such streams with
/// `PROTOCOL_ERROR` before any handler ran; the host's patched h2 (third_party/h2)
/// serves them as requests without an authority. An authority that is neither a valid
/// authority nor a path is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_info_is_answered_whatever_path_authority_grpc_go_sends() {
    use integration_tests::raw_h2::{Outcome, encode_authority, grpc_call};
    let (_h, registry) = watched_host(1).await;
    let socket = one_socket(&registry, None).await;
    let path = socket.display().to_string();
    const GET_INFO: &str = "/pluginregistration.Registration/GetInfo";

    for authority in [path.clone(), encode_authority(&path), "localhost".into()] {
        let outcome = grpc_call(&socket, &authority, GET_INFO, &[]).await.unwrap();
        match outcome {
            Outcome::Answered(data) => assert!(
                data.windows(WIDGET.len()).any(|w| w == WIDGET.as_bytes()),
                ":authority {authority:?}: GetInfo answered without the resource name: {data:?}"
            ),
            other => panic!(":authority {authority:?}: GetInfo not answered: {other:?}"),
        }
    }
    // Not a path, not an authority: still a malformed request.
    for authority in ["no spaces allowed", "%zz"] {
        let outcome = grpc_call(&socket, authority, GET_INFO, &[]).await.unwrap();
        assert_eq!(outcome, Outcome::Reset(1), ":authority {authority:?}");
    }
}

/// Issue 13: in watcher mode a resource is not ready because its socket serves, but
/// because the kubelet confirmed it: `/readyz` is 503 before GetInfo, after GetInfo and
/// ListAndWatch without a verdict, and 200 only after NotifyRegistrationStatus(true).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_kubelet_to_confirm() {
    let (h, registry) = watched_host(2).await;
    let addr = h.host().ops_addr().expect("ops endpoint bound");
    let socket = one_socket(&registry, None).await;

    let why = ops::eventually(addr, "/readyz", 503, |b| b.contains("GetInfo")).await;
    assert!(
        why.contains(WIDGET) && why.contains("--plugins-registry-dir"),
        "{why}"
    );

    let (mut registration, _, devices) = connect_like_the_watcher(&socket).await;
    assert_eq!(devices.len(), 2);
    let why = ops::eventually(addr, "/readyz", 503, |b| {
        b.contains("NotifyRegistrationStatus")
    })
    .await;
    assert!(why.contains(&socket.display().to_string()), "{why}");
    assert!(!h.host().readiness().is_accepted(WIDGET));

    registration
        .notify_registration_status(pr::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    ops::eventually(addr, "/readyz", 200, |b| b.contains("ready")).await;
    assert!(h.host().readiness().is_accepted(WIDGET));
    // A second GetInfo on the confirmed socket changes nothing.
    registration.get_info(pr::InfoRequest {}).await.unwrap();
    assert_eq!(ops::get(addr, "/readyz").await.0, 200);
}

/// Issue 13: a refusal keeps `/readyz` at 503 with the kubelet's error (cleaned), also
/// once the host serves a fresh socket, until the kubelet accepts the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_keeps_readyz_503_with_the_kubelets_reason() {
    let (h, registry) = watched_host(1).await;
    let addr = h.host().ops_addr().expect("ops endpoint bound");
    let first = one_socket(&registry, None).await;
    let (mut registration, _, _) = connect_like_the_watcher(&first).await;
    registration
        .notify_registration_status(pr::RegistrationStatus {
            plugin_registered: false,
            error: "resource name taken\n\u{1b}[31mforged".into(),
        })
        .await
        .unwrap();
    let second = one_socket(&registry, Some(&first)).await;
    let why = ops::eventually(addr, "/readyz", 503, |b| b.contains("resource name taken")).await;
    assert!(
        why.contains(&second.display().to_string()) && !why.contains('\u{1b}'),
        "{why}"
    );
    assert_eq!(why.lines().count(), 1, "{why}");

    register_like_the_watcher(&second).await;
    let ready = ops::eventually(addr, "/readyz", 200, |b| b.contains("ready")).await;
    assert!(!ready.contains("taken"), "{ready}");
}
