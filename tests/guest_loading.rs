//! Bad input gets a clear error and the rest keeps serving: unloadable guest files,
//! invalid or clashing resource names, and guests that trap, spin, grow or answer
//! nonsense at call time. Everything is observed from the kubelet's side (what the
//! stand-in receives) or from the host's list of skipped guests.

use std::time::Duration;

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use kubelet_api::v1beta1 as pb;
use serde_json::json;
use tonic::Code;
use wasm_device_plugin::policy::limits::CallDeadlines;

/// A conformance configuration advertising one resource `example.com/<class>` of `class`,
/// with `faults` injected.
fn resource_config(class: &str, faults: serde_json::Value) -> serde_json::Value {
    json!({
        "resources": [{ "name": format!("example.com/{class}"), "class": class }],
        "faults": faults,
    })
}

/// Adds a conformance guest named `class` serving `example.com/<class>` with `faults`,
/// and widgets `w0..w2` of that class on the node.
fn add_faulty(h: &Harness, class: &str, faults: serde_json::Value) {
    h.add_conformance(class, resource_config(class, faults));
    add_widgets(&h.node, class, &widgets(3));
}

/// Waits until the stand-in holds an open stream for `resource` listing `count` devices.
async fn wait_listed(h: &Harness, resource: &str, count: usize) -> testkit::kubelet::ResourceView {
    h.kubelet
        .wait_for(resource, WAIT, |v| v.connected && v.devices.len() == count)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `Allocate` of `ids` in one container, which must finish within [`WAIT`].
async fn allocate(
    h: &Harness,
    resource: &str,
    ids: &[&str],
) -> Result<pb::AllocateResponse, tonic::Status> {
    let ids = ids.iter().map(|s| s.to_string()).collect();
    tokio::time::timeout(WAIT, h.kubelet.allocate(resource, vec![ids]))
        .await
        .unwrap_or_else(|_| panic!("Allocate on {resource} did not return within {WAIT:?}"))
}

/// The gRPC error of an `Allocate` that must fail.
async fn allocate_err(h: &Harness, resource: &str, ids: &[&str]) -> tonic::Status {
    match allocate(h, resource, ids).await {
        Ok(answer) => panic!("Allocate {ids:?} on {resource} succeeded: {answer:?}"),
        Err(status) => status,
    }
}

/// Asserts a working allocation of `ids` on `resource`: one answer with their device nodes.
async fn assert_allocates(h: &Harness, resource: &str, class: &str, ids: &[&str]) {
    let answer = allocate(h, resource, ids)
        .await
        .unwrap_or_else(|s| panic!("Allocate {ids:?} on {resource}: {s:?}"));
    assert_eq!(answer.container_responses.len(), 1, "{answer:?}");
    let paths: Vec<&str> = answer.container_responses[0]
        .devices
        .iter()
        .map(|d| d.host_path.as_str())
        .collect();
    let expected: Vec<String> = ids.iter().map(|id| format!("/dev/{class}/{id}")).collect();
    assert_eq!(paths, expected, "{answer:?}");
}

fn health_of<'a>(view: &'a testkit::kubelet::ResourceView, id: &str) -> Option<&'a str> {
    view.devices
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.health.as_str())
}

/// Sets widget `id` of `class` unhealthy and waits until the kubelet sees it.
async fn flip_unhealthy_and_see_it(h: &Harness, class: &str, id: &str) {
    h.node
        .set_widget_health(class, id, false)
        .expect("widget health");
    let resource = format!("example.com/{class}");
    h.kubelet
        .wait_for(&resource, WAIT, |v| {
            v.connected && health_of(v, id) == Some(pb::UNHEALTHY)
        })
        .await
        .unwrap_or_else(|e| panic!("re-enumeration stopped after the fault: {e}"));
}

fn assert_status(status: &tonic::Status, code: Code, fragments: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{fragment:?} not in {:?}",
            status.message()
        );
    }
}

/// Unloadable files are each skipped with a reason naming the file and the problem, while a good guest beside them serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_guest_files_are_skipped_with_reasons_and_the_good_guest_serves() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(3));
    h.add_guest("good", testkit::guests::CONFORMANCE_WASM, None);
    // The bad ones' policies claim no names, so they contest none of the good one's.
    let bad = |name: &str, wasm: &[u8], config: Option<&str>| {
        h.add_guest_with_policy(name, wasm, config, Some("{}"));
    };
    bad("garbage", b"this is not WebAssembly at all", None);
    bad("empty", b"", None);
    bad("core", b"\0asm\x01\0\0\0", None);
    bad("huge", &vec![0u8; (1 << 20) + 1], None);
    bad(
        "badconfig",
        testkit::guests::CONFORMANCE_WASM,
        Some("{ this is not json"),
    );
    h.start_host().await;

    let view = wait_listed(&h, "example.com/widget", 3).await;
    let mut ids: Vec<&str> = view.devices.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["w0", "w1", "w2"]);
    assert!(
        view.devices.iter().all(|d| d.health == pb::HEALTHY),
        "{view:?}"
    );

    let skipped = h.host().skipped();
    let expected: [(&str, &[&str]); 5] = [
        (
            "badconfig.wasm",
            &["refused to start", "configure", "invalid config"],
        ),
        ("core.wasm", &["core WebAssembly module, not a component"]),
        ("empty.wasm", &["not a WebAssembly binary"]),
        ("garbage.wasm", &["not a WebAssembly binary"]),
        ("huge.wasm", &["over the 1048576-byte limit"]),
    ];
    assert_eq!(skipped.len(), expected.len(), "{skipped:#?}");
    for (file, fragments) in expected {
        let entry = skipped
            .iter()
            .find(|s| s.path.file_name().is_some_and(|n| n == file))
            .unwrap_or_else(|| panic!("{file} not skipped: {skipped:#?}"));
        assert!(
            entry.reason.contains(file),
            "reason does not name {file}: {:?}",
            entry.reason
        );
        for fragment in fragments {
            assert!(
                entry.reason.contains(fragment),
                "{fragment:?} not in {:?}",
                entry.reason
            );
        }
    }
    let registered: Vec<String> = h
        .kubelet
        .registrations()
        .into_iter()
        .map(|r| r.request.resource_name)
        .collect();
    assert_eq!(
        registered,
        ["example.com/widget"],
        "only the good guest registers"
    );
}

/// An invalid resource name is refused before registration; the guest's valid resource still registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resource_name_is_skipped_and_never_registered() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(2));
    h.add_conformance(
        "mixed",
        json!({ "resources": [
            { "name": "invalid", "class": "widget" },
            { "name": "example.com/ok", "class": "widget" },
        ]}),
    );
    h.start_host().await;

    wait_listed(&h, "example.com/ok", 2).await;
    let names: Vec<String> = h
        .kubelet
        .registrations()
        .into_iter()
        .map(|r| r.request.resource_name)
        .collect();
    assert_eq!(
        names,
        ["example.com/ok"],
        "the kubelet must never see `invalid`"
    );
    let skipped = h.host().skipped();
    assert_eq!(skipped.len(), 1, "{skipped:#?}");
    assert!(skipped[0].path.ends_with("mixed.wasm"), "{skipped:#?}");
    assert!(
        skipped[0].reason.contains("\"invalid\""),
        "{:?}",
        skipped[0].reason
    );
    assert!(
        skipped[0]
            .reason
            .contains("not a valid extended resource name"),
        "{:?}",
        skipped[0].reason
    );
    assert_eq!(
        h.plugin_sockets().len(),
        1,
        "one plug-in socket: {:?}",
        h.plugin_sockets()
    );
}

/// Two guests whose policies grant the same name alike contest it: whichever loads first,
/// neither serves it, and both are reported (the operator narrows a policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_two_policies_grant_alike_is_served_by_neither() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(2));
    h.node
        .add_widgets("gadget", &[("g0", None), ("g1", None), ("g2", None)])
        .expect("gadgets");
    let policy = integration_tests::TEST_POLICY;
    for (name, class) in [("a-first", "widget"), ("b-second", "gadget")] {
        let config = json!({ "resources": [{ "name": "example.com/thing", "class": class }] });
        h.add_guest_with_policy(
            name,
            testkit::guests::CONFORMANCE_WASM,
            Some(&config.to_string()),
            Some(policy),
        );
    }
    h.start_host().await;
    let skipped = h.host().skipped();
    for guest in ["a-first.wasm", "b-second.wasm"] {
        assert!(
            skipped.iter().any(|s| s.path.ends_with(guest)
                && s.reason.contains("example.com/thing")
                && s.reason.contains("none of them serves it")),
            "{guest}: {skipped:#?}"
        );
    }
    assert!(
        h.kubelet.registrations().is_empty(),
        "{:?}",
        h.kubelet.registrations()
    );
    assert!(h.host().resources().is_empty());
}

/// A guest that traps in Allocate fails that call with Internal, while another guest serves and its own enumeration carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_in_allocate_costs_one_call_not_the_guest() {
    let mut h = Harness::empty().await;
    add_faulty(&h, "faulty", json!({ "allocate": "trap" }));
    add_faulty(&h, "steady", json!({}));
    h.start_host().await;
    wait_listed(&h, "example.com/faulty", 3).await;
    wait_listed(&h, "example.com/steady", 3).await;

    let status = allocate_err(&h, "example.com/faulty", &["w0"]).await;
    assert_status(&status, Code::Internal, &["guest faulty", "trapped"]);
    assert_allocates(&h, "example.com/steady", "steady", &["w0", "w2"]).await;

    // The faulty guest's devices stay listed and healthy, and it is still enumerated.
    let view = h
        .kubelet
        .resource("example.com/faulty")
        .expect("faulty view");
    assert!(view.connected && view.allocatable() == 3, "{view:?}");
    flip_unhealthy_and_see_it(&h, "faulty", "w1").await;
    // The rebuilt instance traps again, the same way.
    let status = allocate_err(&h, "example.com/faulty", &["w0"]).await;
    assert_status(&status, Code::Internal, &["guest faulty", "trapped"]);
    assert_eq!(
        h.kubelet.streams_opened("example.com/faulty"),
        1,
        "never had to register again"
    );
}

/// A guest spinning in Allocate is interrupted at its deadline (DeadlineExceeded), rebuilt, and serves its list again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_in_allocate_hits_the_deadline_and_the_guest_is_rebuilt() {
    let mut h = Harness::empty().await;
    h.deadlines = CallDeadlines::all(Duration::from_millis(300));
    add_faulty(&h, "spinner", json!({ "allocate": "loop" }));
    add_faulty(&h, "steady", json!({}));
    h.start_host().await;
    wait_listed(&h, "example.com/spinner", 3).await;
    wait_listed(&h, "example.com/steady", 3).await;

    for attempt in 1..=2 {
        let status = allocate_err(&h, "example.com/spinner", &["w0"]).await;
        assert_status(
            &status,
            Code::DeadlineExceeded,
            &["guest spinner", "deadline"],
        );
        assert_allocates(&h, "example.com/steady", "steady", &["w1"]).await;
        assert!(
            h.kubelet
                .resource("example.com/spinner")
                .is_some_and(|v| v.connected),
            "attempt {attempt}"
        );
    }
    // The spinning instance was interrupted, not left running: enumeration still answers.
    flip_unhealthy_and_see_it(&h, "spinner", "w2").await;
}

/// A guest growing memory without bound in Allocate is stopped by the memory limit (Internal), every time, without hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_growth_in_allocate_is_stopped_by_the_limit() {
    let mut h = Harness::empty().await;
    add_faulty(&h, "hog", json!({ "allocate": "grow" }));
    add_faulty(&h, "steady", json!({}));
    h.start_host().await;
    wait_listed(&h, "example.com/hog", 3).await;
    wait_listed(&h, "example.com/steady", 3).await;

    for _ in 0..2 {
        let status = allocate_err(&h, "example.com/hog", &["w0"]).await;
        assert_status(&status, Code::Internal, &["guest hog", "trapped"]);
        assert_allocates(&h, "example.com/steady", "steady", &["w0"]).await;
    }
    flip_unhealthy_and_see_it(&h, "hog", "w1").await;
}

/// Each kind of malformed Allocate answer is refused with Internal and a message naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_allocate_answers_are_refused_with_the_reason() {
    let cases: [(&str, &str); 5] = [
        ("bad-permissions", "rwx"),
        ("relative-path", "dev/x"),
        ("wrong-count", "answered 0 allocations for 1 containers"),
        ("bad-cdi", "not-qualified"),
        ("missing-host-path", "/dev/does-not-exist"),
    ];
    let mut h = Harness::empty().await;
    for (fault, _) in cases {
        add_faulty(&h, fault, json!({ "allocate": fault }));
    }
    h.start_host().await;
    for (fault, problem) in cases {
        let resource = format!("example.com/{fault}");
        wait_listed(&h, &resource, 3).await;
        let status = allocate_err(&h, &resource, &["w0"]).await;
        assert_status(
            &status,
            Code::Internal,
            &[&format!("guest {fault}"), problem],
        );
    }
}

/// A guest whose enumeration fails from the start still registers, sends an empty device list and keeps the stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_enumeration_from_the_start_serves_an_empty_list() {
    let mut h = Harness::empty().await;
    add_faulty(&h, "blind", json!({ "listDevices": "error" }));
    add_faulty(&h, "steady", json!({}));
    h.start_host().await;

    wait_listed(&h, "example.com/steady", 3).await;
    let view = h
        .kubelet
        .wait_for("example.com/blind", WAIT, |v| v.connected && v.updates >= 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        view.devices.is_empty(),
        "widgets exist but enumeration fails: {view:?}"
    );
    assert!(h.host().skipped().is_empty(), "{:#?}", h.host().skipped());

    // Several failing rescans later (100 ms apart) the stream is still the same open one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let view = h.kubelet.resource("example.com/blind").expect("view");
    assert!(view.connected && view.devices.is_empty(), "{view:?}");
    assert_eq!(h.kubelet.streams_opened("example.com/blind"), 1);
    let status = allocate_err(&h, "example.com/blind", &["w0"]).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &["unknown device IDs", "w0"],
    );
}

/// Allocate names every unknown device ID, and refuses a device the kubelet was told is unhealthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_refuses_unknown_and_unhealthy_devices() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "widget", &widgets(3));
    h.add_guest("widgets", testkit::guests::CONFORMANCE_WASM, None);
    h.start_host().await;
    wait_listed(&h, "example.com/widget", 3).await;

    let status = allocate_err(&h, "example.com/widget", &["w0", "nope-1", "nope-2"]).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &["unknown device IDs", "nope-1", "nope-2"],
    );
    assert!(
        !status.message().contains("w0"),
        "w0 is known: {:?}",
        status.message()
    );

    h.node
        .set_widget_health("widget", "w1", false)
        .expect("widget health");
    h.kubelet
        .wait_for("example.com/widget", WAIT, |v| {
            health_of(v, "w1") == Some(pb::UNHEALTHY)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = allocate_err(&h, "example.com/widget", &["w0", "w1"]).await;
    assert_status(&status, Code::InvalidArgument, &["unhealthy", "w1"]);
    assert_allocates(&h, "example.com/widget", "widget", &["w0", "w2"]).await;
}

/// The compatibility promise of the contract: a guest built against the first published
/// WIT (`wdp:device-plugin@0.1.0`, frozen in `guests/contract-v0-1-0/wit/`) loads on
/// today's host and serves every call through the kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_built_against_the_0_1_0_contract_loads_and_serves() {
    let wasm = testkit::guests::CONTRACT_V0_1_0_WASM;
    // The component names its imports with their package version: this is a 0.1.0 guest.
    let names = String::from_utf8_lossy(wasm);
    assert!(
        names.contains("wdp:device-plugin/sysfs@0.1.0")
            && names.contains("wdp:device-plugin/plugin@0.1.0")
            && !names.contains("@0.1.1"),
        "the compatibility guest must be built against the 0.1.0 contract"
    );
    let mut h = Harness::dgx().await;
    // 0x15b3: the ConnectX functions of the simulated node.
    h.add_guest_with_policy(
        "compat",
        wasm,
        Some(r#"{"vendor": 5555}"#),
        Some(testkit::guests::CONTRACT_V0_1_0_POLICY),
    );
    h.start_host().await;

    let nics: std::collections::BTreeSet<String> =
        h.node.nics().iter().map(|n| n.address.clone()).collect();
    let view = wait_listed(&h, "example.com/compat", nics.len()).await;
    let listed: std::collections::BTreeSet<String> =
        view.devices.iter().map(|d| d.id.clone()).collect();
    assert_eq!(listed, nics);
    let registration = &h
        .kubelet
        .wait_for_registrations("example.com/compat", 1, WAIT)
        .await
        .expect("registered")[0];
    let options = registration.options.expect("options");
    assert!(options.pre_start_required && options.get_preferred_allocation_available);

    let first = nics.iter().next().expect("the node has NICs").clone();
    let preferred = h
        .kubelet
        .preferred_allocation(
            "example.com/compat",
            nics.iter().cloned().collect(),
            vec![first.clone()],
            1,
        )
        .await
        .expect("preferred allocation");
    assert_eq!(
        preferred.container_responses[0].device_i_ds,
        vec![first.clone()]
    );
    let answer = allocate(&h, "example.com/compat", &[&first])
        .await
        .expect("allocate");
    let envs = &answer.container_responses[0].envs;
    assert_eq!(envs.get("COMPAT_VISIBLE_DEVICES"), Some(&first));
    assert_eq!(
        envs.get("COMPAT_VENDOR").map(String::as_str),
        Some("0x15b3")
    );
    h.kubelet
        .pre_start("example.com/compat", vec![first.clone()])
        .await
        .expect("pre-start");
    let unknown = allocate_err(&h, "example.com/compat", &["0000:ff:00.0"]).await;
    assert_eq!(unknown.code(), Code::InvalidArgument, "{unknown:?}");
}
