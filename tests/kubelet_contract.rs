//! The kubelet contract (`kubelet-interop.md` §12), item by item, through the kubelet
//! stand-in: registration (C1–C8), serving (C9–C15), allocation (C16, C17, C22–C24) and
//! lifecycle (C25, C26, C28, C30, C31). Vendor logic is the conformance guest, whose
//! devices ("widgets") live in the simulated node's sysfs.

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
    let h = serving_widgets(4, widget_resource()).await;
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

/// C23: options advertise only what the guest implements, and PreStartContainer is handed
/// to the guest only when it asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_implemented_calls_are_advertised_and_made() {
    // Pre-start not required: the host answers without calling the (failing) guest.
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(1));
    h.add_conformance(
        "widgets",
        json!({ "resources": [widget_resource()], "faults": { "preStart": "error" } }),
    );
    h.start_host().await;
    let r = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(
        r.options,
        Some(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: false
        })
    );
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap();
    h.kubelet
        .pre_start(WIDGET, vec!["w0".into()])
        .await
        .unwrap();

    // Pre-start required: advertised, and the guest's failure reaches the kubelet.
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(1));
    h.add_conformance(
        "widgets",
        json!({
            "resources": [{ "name": WIDGET, "class": "widget", "preStartRequired": true, "preferredAllocation": true }],
            "faults": { "preStart": "error" },
        }),
    );
    h.start_host().await;
    let r = h
        .kubelet
        .wait_for_registrations(WIDGET, 1, WAIT)
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(
        r.options,
        Some(pb::DevicePluginOptions {
            pre_start_required: true,
            get_preferred_allocation_available: true
        })
    );
    h.kubelet
        .wait_for(WIDGET, WAIT, |v| v.allocatable() == 1)
        .await
        .unwrap();
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
