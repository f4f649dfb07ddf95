//! What the real tools render (deploy/check.sh writes it and sets WDP_DEPLOY_RENDERED):
//! kustomize must give exactly the overlay files, every Helm profile must keep the
//! DaemonSet's promises with the pod of its kustomize counterpart, and kubectl's guests
//! ConfigMap must pass the ConfigMap checks. Without WDP_DEPLOY_RENDERED these tests
//! say so and pass: `cargo test` alone has no kubectl or helm.

use std::path::{Path, PathBuf};

use deploy_tests::load::{self, Document, Object};
use deploy_tests::{assert_none, check_set, configmap, deploy_dir, kustomize};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

/// The profiles: kustomization directory and the name check.sh gives its renders.
const PROFILES: [(&str, &str); 4] = [
    ("base", "base"),
    ("overlays/least-privilege", "least-privilege"),
    ("overlays/pci-reset", "pci-reset"),
    ("overlays/nvml", "nvml"),
];

fn rendered_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("WDP_DEPLOY_RENDERED") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("{test}: skipped, WDP_DEPLOY_RENDERED is not set (run deploy/check.sh)");
            None
        }
    }
}

fn read(dir: &Path, file: &str) -> Vec<Document> {
    load::read_documents(&dir.join(file)).unwrap_or_else(|e| panic!("{e}"))
}

fn pod_spec(docs: &[Document]) -> Value {
    let ds = docs
        .iter()
        .find(|d| d.kind() == "DaemonSet")
        .expect("a DaemonSet");
    ds.value["spec"]["template"]["spec"].clone()
}

#[test]
fn kustomize_renders_exactly_the_overlay_files() {
    let Some(dir) = rendered_dir("kustomize_renders_exactly_the_overlay_files") else {
        return;
    };
    for (root, name) in PROFILES {
        let (ours, _) = kustomize::render(&deploy_dir().join(root)).unwrap();
        let theirs = read(&dir, &format!("kustomize-{name}.yaml"));
        let ours: Vec<&Value> = ours.iter().map(|d| &d.value).collect();
        let theirs: Vec<&Value> = theirs.iter().map(|d| &d.value).collect();
        assert_eq!(
            theirs, ours,
            "{root}: kubectl kustomize renders something else than the files say"
        );
    }
}

#[test]
fn every_helm_profile_keeps_the_promises_with_the_overlays_pod() {
    let Some(dir) = rendered_dir("every_helm_profile_keeps_the_promises_with_the_overlays_pod")
    else {
        return;
    };
    for (root, name) in PROFILES {
        let docs = read(&dir, &format!("helm-{name}.yaml"));
        let objects: Vec<Object> = docs
            .iter()
            .map(|d| load::typed(d).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_none(&format!("helm profile {name}"), &check_set(&objects));
        let (overlay, _) = kustomize::render(&deploy_dir().join(root)).unwrap();
        assert_eq!(
            pod_spec(&docs),
            pod_spec(&overlay),
            "helm profile {name}: the chart's pod differs from deploy/{root}'s"
        );
    }
}

#[test]
fn kubectls_guests_configmap_passes_the_checks() {
    let Some(dir) = rendered_dir("kubectls_guests_configmap_passes_the_checks") else {
        return;
    };
    let mut docs = read(&dir, "guests-configmap.yaml");
    assert_eq!(docs.len(), 1);
    let doc = &mut docs[0];
    // Older kubectl writes `creationTimestamp: null` into a dry-run object.
    if let Some(meta) = doc.value["metadata"].as_object_mut() {
        meta.retain(|k, v| !(k == "creationTimestamp" && v.is_null()));
    }
    let cm: ConfigMap = load::strict(doc).unwrap_or_else(|e| panic!("{e}"));
    assert_none("kubectl's guests ConfigMap", &configmap::check(&cm));
    // deploy_tests::configmap::from_files sorts files the way kubectl does.
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("guests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let ours = configmap::from_files("wasm-device-plugin-guests", "wasm-device-plugin", &files);
    assert_eq!(
        cm, ours,
        "kubectl sorts data and binaryData as from_files does"
    );
    eprintln!(
        "kubectl's guests ConfigMap: {} bytes of data",
        configmap::data_bytes(&cm)
    );
}
