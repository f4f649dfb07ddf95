//! The kubelet contract (`kubelet-interop.md` §12), item by item, through the kubelet
//! stand-in: registration (C1–C8), serving (C9–C15), allocation (C16–C24) and
//! lifecycle (C25, C26, C28–C31). Vendor logic is the conformance guest, whose devices
//! ("widgets") live in the simulated node's sysfs. C27 is in `restart_soak.rs`, C32 in
//! `plugin_watcher.rs`; `CHECKLIST.md` maps every item to its tests.

use std::time::Duration;

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use kubelet_api::v1beta1 as pb;
use serde_json::json;
use testkit::kubelet::ResourceView;
use tonic::Code;

const WIDGET: &str = "example.com/widget";

/// A node with `n` widgets served by one conformance guest.
async fn serving_widgets(n: usize, resource: serde_json::Value) -> Harness {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(n));
    h.add_conformance("widgets", json!({ "resources": [resource] }));
    h.start_host().await;
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.devices.len() == n)
        .await
        .expect("widgets registered and listed");
    h
}

fn widget_resource() -> serde_json::Value {
    json!({ "name": WIDGET, "class": "widget" })
}

fn ids(view: &ResourceView) -> Vec<String> {
    let mut ids: Vec<String> = view.devices.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    ids
}

fn healthy(view: &ResourceView, id: &str) -> Option<bool> {
    view.devices
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.health == pb::HEALTHY)
}

// ---- Registration ------------------------------------------------------------------

/// C1, C3, C4, C5, C6: one Register call with version v1beta1, a bare socket name that
/// already answers, `:authority` localhost, a deadline of at least 30 s, and options
/// identical to GetDevicePluginOptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_as_the_kubelet_requires() {
    let h = serving_widgets(2, widget_resource()).await;
    let registrations = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap();
    let r = &registrations[0];
    assert_eq!(r.request.version, "v1beta1");
    assert!(
        !r.request.endpoint.contains('/'),
        "endpoint {:?} must be a file name",
        r.request.endpoint
    );
    assert!(
        h.plugin_sockets().contains(&r.request.endpoint),
        "endpoint {:?} is not a socket in the directory",
        r.request.endpoint
    );
    assert!(
        r.error.is_none(),
        "the kubelet's dial-back during Register failed: {:?}",
        r.error
    );
    assert_eq!(r.authority.as_deref(), Some("localhost"));
    assert!(
        r.timeout.is_some_and(|t| t >= Duration::from_secs(30)),
        "Register deadline {:?}",
        r.timeout
    );
    assert_eq!(
        r.request.options, r.options,
        "RegisterRequest.options must equal GetDevicePluginOptions"
    );
}

/// C2: an invalid resource name is refused by the host; nothing is registered for it,
/// while a valid resource of the same guest registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resource_names_are_never_registered() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(1));
    h.add_conformance(
        "widgets",
        json!({ "resources": [
            { "name": "kubernetes.io/widget", "class": "widget" },
            { "name": "widget", "class": "widget" },
            widget_resource(),
        ]}),
    );
    h.start_host().await;
    h.kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap();
    let names: Vec<String> = h
        .kubelet
        .registrations()
        .iter()
        .map(|r| r.request.resource_name.clone())
        .collect();
    assert_eq!(names, vec![WIDGET.to_string()]);
    let skipped = h.host().skipped();
    let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("not a valid extended resource name")),
        "{reasons:?}"
    );
}

/// C7: a refused registration is retried with growing back-off, not in a tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registrations_are_retried_with_back_off() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(1));
    h.add_conformance("widgets", json!({ "resources": [widget_resource()] }));
    h.kubelet.refuse_next_registrations(2);
    h.start_host().await;
    h.kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap();
    let attempts = h.kubelet.registrations();
    assert_eq!(
        attempts.len(),
        3,
        "two refusals, then success: {attempts:?}"
    );
    assert!(
        attempts[0].error.is_some() && attempts[1].error.is_some() && attempts[2].error.is_none()
    );
    let first_gap = attempts[1].at - attempts[0].at;
    let second_gap = attempts[2].at - attempts[1].at;
    assert!(
        first_gap >= Duration::from_millis(400),
        "first retry after {first_gap:?}"
    );
    assert!(
        second_gap > first_gap,
        "back-off must grow: {first_gap:?} then {second_gap:?}"
    );
}

/// C8, C25, C31: after a kubelet restart the host registers again on a socket name never
/// used before, and the kubelet ends with full allocatable capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_on_a_fresh_socket_after_a_kubelet_restart() {
    let mut h = serving_widgets(3, widget_resource()).await;
    let first = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap()[0]
        .clone();
    h.kubelet.restart().await.unwrap();
    let all = h
        .kubelet
        .wait_for_registrations(WIDGET, 2, WAIT)
        .await
        .unwrap();
    let second = &all[1];
    assert_ne!(
        first.request.endpoint, second.request.endpoint,
        "socket names must not be reused"
    );
    let view = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == 3)
        .await
        .unwrap();
    assert_eq!(view.capacity(), 3);
    assert_eq!(
        h.plugin_sockets(),
        vec![second.request.endpoint.clone()],
        "one live socket, the new one"
    );
    // The restarted kubelet can allocate through the new registration.
    h.kubelet
        .allocate(WIDGET, vec![vec!["w0".into()]])
        .await
        .unwrap();
}

/// C26: when its socket is deleted, the host serves a new one and registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_when_its_socket_is_deleted() {
    let h = serving_widgets(1, widget_resource()).await;
    let first = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap()[0]
        .clone();
    std::fs::remove_file(h.plugin_dir.join(&first.request.endpoint)).unwrap();
    let all = h
        .kubelet
        .wait_for_registrations(WIDGET, 2, WAIT)
        .await
        .unwrap();
    assert_ne!(all[1].request.endpoint, first.request.endpoint);
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == 1)
        .await
        .unwrap();
}

/// C12: the stream stays open while nothing happens, and when the kubelet drops it
/// (kubelet.sock untouched) the host registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_leads_to_re_registration() {
    let h = serving_widgets(2, widget_resource()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = h.kubelet.resource(WIDGET).unwrap();
    assert!(view.connected, "the stream must stay open");
    assert_eq!(
        h.kubelet.registrations().len(),
        1,
        "no re-registration while all is well"
    );
    h.kubelet.drop_streams();
    h.kubelet
        .wait_for_registrations(WIDGET, 2, WAIT)
        .await
        .unwrap();
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .unwrap();
}

/// C30: the host starts before the kubelet and registers once kubelet.sock appears; a
/// legacy DEPRECATION file in the directory changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_kubelet_that_is_not_there_yet() {
    let mut h = Harness::empty().await;
    h.kubelet.stop().await;
    std::fs::write(h.plugin_dir.join("DEPRECATION"), "").unwrap();
    add_widgets(&h.node, "widget", &widgets(2));
    h.add_conformance("widgets", json!({ "resources": [widget_resource()] }));
    h.start_host().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(h.kubelet.registrations().is_empty());
    h.kubelet.start_again().unwrap();
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .unwrap();
}

/// C28: a stopped host ends the stream (the kubelet sees allocatable 0, capacity kept)
/// and leaves no socket behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_ends_the_stream_and_removes_the_socket() {
    let mut h = serving_widgets(2, widget_resource()).await;
    assert_eq!(h.plugin_sockets().len(), 1);
    h.stop_host().await;
    let view = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| !v.connected)
        .await
        .unwrap();
    assert_eq!((view.capacity(), view.allocatable()), (2, 0));
    assert!(
        h.plugin_sockets().is_empty(),
        "stale sockets: {:?}",
        h.plugin_sockets()
    );
}

// ---- Serving -----------------------------------------------------------------------

/// C10, C11: a full list at once and after every change, unique IDs, exact health
/// strings; one health flip moves allocatable by one and capacity not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_changes_reach_the_kubelet_as_full_lists() {
    let h = serving_widgets(4, widget_resource()).await;
    let before = h.kubelet.resource(WIDGET).unwrap();
    assert_eq!(ids(&before), vec!["w0", "w1", "w2", "w3"]);
    assert_eq!((before.capacity(), before.allocatable()), (4, 4));

    h.node.set_widget_health("widget", "w2", false).unwrap();
    let after = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| healthy(v, "w2") == Some(false))
        .await
        .unwrap();
    assert_eq!(
        ids(&after),
        vec!["w0", "w1", "w2", "w3"],
        "every update is the full list"
    );
    assert_eq!((after.capacity(), after.allocatable()), (4, 3));
    assert!(
        after
            .devices
            .iter()
            .all(|d| d.health == "Healthy" || d.health == "Unhealthy")
    );

    h.node.set_widget_health("widget", "w2", true).unwrap();
    let back = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| healthy(v, "w2") == Some(true))
        .await
        .unwrap();
    assert_eq!((back.capacity(), back.allocatable()), (4, 4));

    // Re-enumeration that finds nothing new sends nothing new.
    let updates = back.updates;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.kubelet.resource(WIDGET).unwrap().updates,
        updates,
        "unchanged lists must not be re-sent"
    );
}

/// C13: no devices is an empty list on an open stream (0/0), not a closed stream; devices
/// that appear later are pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_device_list_is_sent_not_withheld() {
    let mut h = Harness::empty().await;
    h.add_conformance("widgets", json!({ "resources": [widget_resource()] }));
    h.start_host().await;
    let view = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| v.updates >= 1)
        .await
        .unwrap();
    assert!(view.connected && view.devices.is_empty());
    add_widgets(&h.node, "widget", &widgets(2));
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .unwrap();
}

/// C14: NUMA topology is sent where known and omitted where not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_sent_only_when_known() {
    let mut h = Harness::empty().await;
    add_widgets(
        &h.node,
        "widget",
        &[("near".into(), Some(1)), ("nowhere".into(), None)],
    );
    h.add_conformance("widgets", json!({ "resources": [widget_resource()] }));
    h.start_host().await;
    let view = h
        .kubelet
        .wait_for(WIDGET, WAIT, |v| v.devices.len() == 2)
        .await
        .unwrap();
    let numa = |id: &str| {
        view.devices
            .iter()
            .find(|d| d.id == id)
            .unwrap()
            .topology
            .clone()
    };
    assert_eq!(
        numa("near"),
        Some(pb::TopologyInfo {
            nodes: vec![pb::NumaNode { id: 1 }]
        })
    );
    assert_eq!(numa("nowhere"), None);
}

// ---- Allocation --------------------------------------------------------------------

/// C16: N container requests give N responses, in order, each for its own devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_answers_every_container_in_order() {
    let h = serving_widgets(
        4,
        json!({ "name": WIDGET, "class": "widget", "writeCdiSpec": true }),
    )
    .await;
    let answer = h
        .kubelet
        .allocate(
            WIDGET,
            vec![
                vec!["w3".into()],
                vec!["w0".into(), "w1".into()],
                vec!["w2".into()],
            ],
        )
        .await
        .unwrap();
    let visible: Vec<&str> = answer
        .container_responses
        .iter()
        .map(|c| c.envs["WIDGET_IDS"].as_str())
        .collect();
    assert_eq!(visible, vec!["w3", "w0,w1", "w2"]);
    let second = &answer.container_responses[1];
    let nodes: Vec<&str> = second
        .devices
        .iter()
        .map(|d| d.host_path.as_str())
        .collect();
    assert_eq!(nodes, vec!["/dev/widget/w0", "/dev/widget/w1"]);
    assert!(
        second
            .devices
            .iter()
            .all(|d| d.permissions == "rw" && d.container_path == d.host_path)
    );
    let cdi: Vec<&str> = second.cdi_devices.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(cdi, vec!["example.com/widget=w0", "example.com/widget=w1"]);
}

/// C17: unknown and unhealthy IDs are refused with InvalidArgument naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_refuses_unknown_and_unhealthy_devices() {
    let h = serving_widgets(2, widget_resource()).await;
    let err = h
        .kubelet
        .allocate(WIDGET, vec![vec!["w0".into(), "ghost".into(), "w9".into()]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("ghost") && err.message().contains("w9"),
        "{}",
        err.message()
    );

    h.node.set_widget_health("widget", "w1", false).unwrap();
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| healthy(v, "w1") == Some(false))
        .await
        .unwrap();
    let err = h
        .kubelet
        .allocate(WIDGET, vec![vec!["w1".into()]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("unhealthy") && err.message().contains("w1"),
        "{}",
        err.message()
    );
    // The healthy device still allocates.
    h.kubelet
        .allocate(WIDGET, vec![vec!["w0".into()]])
        .await
        .unwrap();
}

/// C22: the preferred allocation is a subset of the available IDs, holds every
/// must-include ID and has the requested size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_honours_must_include_and_size() {
    let h = serving_widgets(
        6,
        json!({ "name": WIDGET, "class": "widget", "preferredAllocation": true }),
    )
    .await;
    let available: Vec<String> = ["w0", "w1", "w2", "w3", "w5"].map(String::from).to_vec();
    let answer = h
        .kubelet
        .preferred_allocation(WIDGET, available.clone(), vec!["w3".into()], 3)
        .await
        .unwrap();
    let chosen = &answer.container_responses[0].device_i_ds;
    assert_eq!(chosen.len(), 3, "{chosen:?}");
    assert!(chosen.contains(&"w3".to_string()), "{chosen:?}");
    assert!(chosen.iter().all(|id| available.contains(id)), "{chosen:?}");
}

/// C22: a guest that fails or answers out of bounds gives an empty answer, never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_never_fails_the_kubelet() {
    for fault in ["error", "outside", "trap"] {
        let mut h = Harness::empty().await;
        add_widgets(&h.node, "widget", &widgets(4));
        h.add_conformance(
            "widgets",
            json!({
                "resources": [{ "name": WIDGET, "class": "widget", "preferredAllocation": true }],
                "faults": { "preferredAllocation": fault },
            }),
        );
        h.start_host().await;
        h.kubelet
            .wait_for(WIDGET, WAIT, |v| v.allocatable() == 4)
            .await
            .unwrap();
        let available: Vec<String> = ["w0", "w1", "w2", "w3"].map(String::from).to_vec();
        let answer = h
            .kubelet
            .preferred_allocation(WIDGET, available, vec![], 2)
            .await;
        let answer =
            answer.unwrap_or_else(|e| panic!("fault {fault}: the kubelet got an error: {e}"));
        assert_eq!(answer.container_responses.len(), 1, "fault {fault}");
        assert!(
            answer.container_responses[0].device_i_ds.is_empty(),
            "fault {fault}: {answer:?}"
        );
    }
}

/// One widget served by a guest whose pre-start fails, once the kubelet can allocate it;
/// returns the harness and the registration.
async fn one_failing_pre_start(
    resource: serde_json::Value,
) -> (Harness, testkit::kubelet::Registration) {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(1));
    h.add_conformance(
        "widgets",
        json!({ "resources": [resource], "faults": { "preStart": "error" } }),
    );
    h.start_host().await;
    let registration = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap()[0]
        .clone();
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap();
    (h, registration)
}

/// C23: options advertise only what the guest implements, and PreStartContainer is handed
/// to the guest only when it asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_implemented_calls_are_advertised_and_made() {
    // Pre-start not required: the host answers without calling the (failing) guest.
    let (h, r) = one_failing_pre_start(widget_resource()).await;
    assert_eq!(
        r.options,
        Some(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: false
        })
    );
    h.kubelet
        .pre_start(WIDGET, vec!["w0".into()])
        .await
        .unwrap();

    // Pre-start required: advertised, and the guest's failure reaches the kubelet.
    let (h, r) = one_failing_pre_start(
        json!({ "name": WIDGET, "class": "widget", "preStartRequired": true, "preferredAllocation": true }),
    )
    .await;
    assert_eq!(
        r.options,
        Some(pb::DevicePluginOptions {
            pre_start_required: true,
            get_preferred_allocation_available: true
        })
    );
    let err = h
        .kubelet
        .pre_start(WIDGET, vec!["w0".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
}

/// C24: PreStartContainer is idempotent: every container start calls it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_start_is_idempotent() {
    let h = serving_widgets(
        2,
        json!({ "name": WIDGET, "class": "widget", "preStartRequired": true }),
    )
    .await;
    for _ in 0..3 {
        h.kubelet
            .pre_start(WIDGET, vec!["w0".into(), "w1".into()])
            .await
            .unwrap();
    }
    let err = h
        .kubelet
        .pre_start(WIDGET, vec!["nope".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

// ---- Items added for issue 6 -------------------------------------------------------

/// Waits until the kubelet's open stream counts `n` allocatable widgets.
async fn widgets_ready(h: &Harness, n: usize) {
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == n)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Every host path (device nodes and mounts) in an answer, as node paths.
fn host_paths(answer: &pb::AllocateResponse) -> Vec<String> {
    answer
        .container_responses
        .iter()
        .flat_map(|c| {
            c.devices
                .iter()
                .map(|d| d.host_path.clone())
                .chain(c.mounts.iter().map(|m| m.host_path.clone()))
        })
        .collect()
}

/// Every `kind=name` declared by the CDI spec files (`*.json`) in `dir`, with the device
/// node paths each one's container edits name.
fn cdi_devices_on_disk(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut found = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let spec: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a CDI spec: {e}", path.display()));
        let kind = spec["kind"].as_str().unwrap_or_default().to_owned();
        for device in spec["devices"].as_array().into_iter().flatten() {
            let name = device["name"].as_str().unwrap_or_default();
            let nodes = device["containerEdits"]["deviceNodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["hostPath"].as_str().or_else(|| n["path"].as_str()))
                .map(str::to_owned)
                .collect();
            found.insert(format!("{kind}={name}"), nodes);
        }
    }
    found
}

/// C9: a client that dials like the kubelet's grpc-go since v1.26 — the socket path as a
/// passthrough target, a unix dialer, `:authority: localhost` — is served every call:
/// options, the device stream and allocation. The URI below is only where the
/// `:authority` comes from; the connector ignores it and dials the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_client_dialing_with_authority_localhost() {
    use hyper_util::rt::TokioIo;
    use pb::device_plugin_client::DevicePluginClient;
    use tonic::transport::{Endpoint, Uri};

    let h = serving_widgets(2, widget_resource()).await;
    let registration = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap()[0]
        .clone();
    let socket = h.plugin_dir.join(&registration.request.endpoint);
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .expect("dial the plug-in socket");
    let mut client = DevicePluginClient::new(channel);

    let options = client
        .get_device_plugin_options(pb::Empty {})
        .await
        .expect("GetDevicePluginOptions with :authority localhost")
        .into_inner();
    assert_eq!(Some(options), registration.options);
    let mut stream = client
        .list_and_watch(pb::Empty {})
        .await
        .expect("ListAndWatch with :authority localhost")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a list at once")
        .expect("a list, not an error")
        .expect("a list, not the end");
    let mut listed: Vec<String> = first.devices.iter().map(|d| d.id.clone()).collect();
    listed.sort();
    assert_eq!(listed, vec!["w0", "w1"]);
    let answer = client
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec!["w1".into()],
            }],
        })
        .await
        .expect("Allocate with :authority localhost")
        .into_inner();
    assert_eq!(answer.container_responses[0].envs["WIDGET_IDS"], "w1");
    // The kubelet stand-in, which dials the same way, still has its stream.
    assert!(h.kubelet.resource(WIDGET).unwrap().connected);
}

/// C15: with 1,000 devices, the device list and an allocation of all of them, as the
/// kubelet stand-in received them, each encode to less than the kubelet's 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_a_thousand_devices_stay_under_four_mib() {
    use prost::Message;
    const LIMIT: usize = 4 << 20;

    let h = serving_widgets(1000, widget_resource()).await;
    let view = h.kubelet.resource(WIDGET).unwrap();
    assert_eq!(view.devices.len(), 1000);
    let list = pb::ListAndWatchResponse {
        devices: view.devices.clone(),
    };
    let list_size = list.encoded_len();
    assert!(list_size < LIMIT, "device list: {list_size} bytes");

    let all = ids(&view);
    let answer = h
        .kubelet
        .allocate(WIDGET, vec![all.clone()])
        .await
        .expect("allocate all 1,000");
    assert_eq!(answer.container_responses[0].devices.len(), 1000);
    let answer_size = answer.encoded_len();
    assert!(answer_size < LIMIT, "allocation: {answer_size} bytes");

    // Ten containers of 100 each: one answer per container, still under the limit.
    let answer = h
        .kubelet
        .allocate(WIDGET, all.chunks(100).map(<[String]>::to_vec).collect())
        .await
        .expect("allocate in ten containers");
    assert_eq!(answer.container_responses.len(), 10);
    assert!(
        answer.encoded_len() < LIMIT,
        "{} bytes",
        answer.encoded_len()
    );
}

/// C18: the kubelet calls Allocate per container, and hands a device an init container
/// used to the pod's next container (and a restartable sidecar keeps it): Allocate
/// accepts IDs that were already allocated and answers the same both times; one request
/// naming a device for two containers is answered for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_accepts_ids_already_allocated_to_another_container_of_the_pod() {
    let h = serving_widgets(3, widget_resource()).await;
    let init = h
        .kubelet
        .allocate(WIDGET, vec![vec!["w1".into()]])
        .await
        .expect("the init container's allocation");
    let app = h
        .kubelet
        .allocate(WIDGET, vec![vec!["w1".into()]])
        .await
        .expect("the app container gets the init container's device again");
    assert_eq!(init, app, "the same device, the same answer");
    let sidecar = h
        .kubelet
        .allocate(WIDGET, vec![vec!["w1".into(), "w2".into()]])
        .await
        .expect("a device already allocated, together with a new one");
    assert_eq!(sidecar.container_responses[0].envs["WIDGET_IDS"], "w1,w2");

    let both = h
        .kubelet
        .allocate(
            WIDGET,
            vec![vec!["w0".into()], vec!["w0".into(), "w2".into()]],
        )
        .await
        .expect("one request, the same device for two containers");
    let visible: Vec<&str> = both
        .container_responses
        .iter()
        .map(|c| c.envs["WIDGET_IDS"].as_str())
        .collect();
    assert_eq!(visible, vec!["w0", "w0,w2"]);
}

/// C19: Allocate returns within a bounded time even when the guest never returns: with
/// the default deadlines, a guest spinning forever in `allocate` gives the kubelet
/// DeadlineExceeded within 10 s, every time, and the resource stays served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_returns_within_ten_seconds_when_the_guest_hangs() {
    let mut h = Harness::empty().await;
    assert_eq!(
        h.deadlines.allocate,
        wasm_device_plugin::policy::limits::CallDeadlines::default().allocate,
        "this test is about the default deadlines"
    );
    add_widgets(&h.node, "widget", &widgets(2));
    h.add_conformance(
        "widgets",
        json!({ "resources": [widget_resource()], "faults": { "allocate": "loop" } }),
    );
    h.start_host().await;
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .unwrap();
    for attempt in 1..=2 {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            h.kubelet.allocate(WIDGET, vec![vec!["w0".into()]]),
        )
        .await
        .unwrap_or_else(|_| panic!("attempt {attempt}: Allocate still running after 10 s"));
        let took = started.elapsed();
        let err = result.expect_err("a hung guest cannot have answered");
        assert_eq!(
            err.code(),
            Code::DeadlineExceeded,
            "attempt {attempt}: {err:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "attempt {attempt}: {took:?}"
        );
        let view = h.kubelet.resource(WIDGET).unwrap();
        assert!(
            view.connected && view.allocatable() == 2,
            "attempt {attempt}: {view:?}"
        );
    }
}

/// C20: every host path in an Allocate answer exists on the node when the answer
/// arrives; a device whose node has vanished is refused, never answered with a
/// dangling path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_path_in_an_answer_exists_when_it_returns() {
    let h = serving_widgets(4, widget_resource()).await;
    let answer = h
        .kubelet
        .allocate(
            WIDGET,
            vec![vec!["w0".into(), "w1".into()], vec!["w2".into()]],
        )
        .await
        .unwrap();
    let paths = host_paths(&answer);
    assert_eq!(paths.len(), 3, "{answer:?}");
    for path in &paths {
        assert!(
            h.node.path(path).exists(),
            "{path} is in the answer but not on the node"
        );
    }

    h.node.remove_dev_node("/dev/widget/w3").unwrap();
    match h.kubelet.allocate(WIDGET, vec![vec!["w3".into()]]).await {
        // Refused by the host's answer check (Internal, naming the path) or, were the
        // guest to notice, as an unhealthy device (InvalidArgument): either is safe.
        Err(status) => assert!(
            matches!(status.code(), Code::Internal | Code::InvalidArgument)
                && status.message().contains("w3"),
            "{status:?}"
        ),
        Ok(answer) => {
            let dangling: Vec<String> = host_paths(&answer)
                .into_iter()
                .filter(|p| !h.node.path(p).exists())
                .collect();
            assert!(dangling.is_empty(), "answered with missing {dangling:?}");
        }
    }
}

/// C21: with a guest that writes a CDI spec, every CDI name in the answer is fully
/// qualified and resolves to a device of a spec file under `<host root>/var/run/cdi/`
/// that is on disk when the answer arrives, its device nodes present on the node. A
/// device never allocated before resolves right after its own Allocate: the spec was
/// written for that answer, before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_names_in_an_answer_resolve_in_a_spec_written_before_it() {
    let h = serving_widgets(
        4,
        json!({ "name": WIDGET, "class": "widget", "writeCdiSpec": true }),
    )
    .await;
    let cdi_dir = h.node.path("/var/run/cdi");
    assert!(
        cdi_devices_on_disk(&cdi_dir).is_empty(),
        "no spec before any allocation"
    );

    for containers in [
        vec![
            vec!["w0".to_string(), "w1".to_string()],
            vec!["w2".to_string()],
        ],
        vec![vec!["w3".to_string()]],
    ] {
        let answer = h
            .kubelet
            .allocate(WIDGET, containers.clone())
            .await
            .unwrap();
        let on_disk = cdi_devices_on_disk(&cdi_dir);
        for (container, ids) in answer.container_responses.iter().zip(&containers) {
            let names: Vec<&str> = container
                .cdi_devices
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let expected: Vec<String> = ids.iter().map(|id| format!("{WIDGET}={id}")).collect();
            assert_eq!(names, expected, "CDI names for {ids:?}");
            for name in names {
                let (kind, device) = name.split_once('=').expect("kind=name");
                assert!(
                    kind.contains('/') && !device.is_empty(),
                    "{name} is not fully qualified"
                );
                let nodes = on_disk.get(name).unwrap_or_else(|| {
                    panic!("{name} is in the answer but in no spec under {cdi_dir:?}: {on_disk:?}")
                });
                assert!(!nodes.is_empty(), "{name} edits no device node");
                for node in nodes {
                    assert!(h.node.path(node).exists(), "{name}: {node} missing");
                }
            }
        }
    }
}

/// C29: registration, a kubelet restart, a deleted socket, host restarts and allocations
/// leave nothing in the device-plugin directory's root but sockets, and the kubelet's
/// `kubelet_internal_checkpoint` byte-for-byte as it was, same inode, same mtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sockets_are_written_to_the_device_plugin_directory_and_the_checkpoint_is_untouched() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    let mut h = Harness::empty().await;
    let checkpoint = h.plugin_dir.join("kubelet_internal_checkpoint");
    let content = br#"{"Data":{"PodDeviceEntries":[{"PodUID":"p","ContainerName":"c","ResourceName":"example.com/widget","DeviceIDs":{"0":["w0"]},"AllocResp":"AA=="}],"RegisteredDevices":{"example.com/widget":["w0","w1"]}},"Checksum":1}"#;
    std::fs::write(&checkpoint, content).unwrap();
    let written = std::fs::metadata(&checkpoint).unwrap();
    let check = |h: &Harness, phase: &str| {
        for entry in std::fs::read_dir(&h.plugin_dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().unwrap();
            assert!(
                kind.is_socket() || name == "kubelet_internal_checkpoint",
                "{phase}: {name} ({kind:?}) in the device-plugin directory"
            );
        }
        let now = std::fs::metadata(&checkpoint)
            .unwrap_or_else(|e| panic!("{phase}: the checkpoint is gone: {e}"));
        assert_eq!(
            std::fs::read(&checkpoint).unwrap(),
            content,
            "{phase}: checkpoint content"
        );
        assert_eq!(
            (now.ino(), now.mtime(), now.mtime_nsec()),
            (written.ino(), written.mtime(), written.mtime_nsec()),
            "{phase}: checkpoint inode or mtime"
        );
    };

    add_widgets(&h.node, "widget", &widgets(2));
    h.add_conformance(
        "widgets",
        json!({ "resources": [{
            "name": WIDGET, "class": "widget", "writeCdiSpec": true, "preStartRequired": true
        }] }),
    );
    h.start_host().await;
    widgets_ready(&h, 2).await;
    h.kubelet
        .allocate(WIDGET, vec![vec!["w0".into()]])
        .await
        .unwrap();
    h.kubelet
        .pre_start(WIDGET, vec!["w0".into()])
        .await
        .unwrap();
    check(&h, "after registration and allocation");

    h.kubelet.restart().await.unwrap();
    h.kubelet
        .wait_for_registrations(WIDGET, 2, WAIT)
        .await
        .unwrap();
    widgets_ready(&h, 2).await;
    check(&h, "after a kubelet restart");

    let endpoint = h
        .kubelet
        .registrations()
        .last()
        .unwrap()
        .request
        .endpoint
        .clone();
    std::fs::remove_file(h.plugin_dir.join(endpoint)).unwrap();
    h.kubelet
        .wait_for_registrations(WIDGET, 3, WAIT)
        .await
        .unwrap();
    widgets_ready(&h, 2).await;
    check(&h, "after its socket was deleted");

    h.stop_host().await;
    check(&h, "after the host stopped");
    h.start_host().await;
    h.kubelet
        .wait_for_registrations(WIDGET, 4, WAIT)
        .await
        .unwrap();
    widgets_ready(&h, 2).await;
    h.kubelet
        .allocate(WIDGET, vec![vec!["w1".into()]])
        .await
        .unwrap();
    check(&h, "after a host restart and allocation");
    h.stop_host().await;
    check(&h, "at the end");
}
