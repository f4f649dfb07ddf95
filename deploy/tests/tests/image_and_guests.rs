//! The image layout (deploy/Containerfile, deploy/build-image.sh) and the guests
//! ConfigMap made from it: the reference guests, their policies and example
//! configurations fit one ConfigMap, in the form the host and the API server accept.

use deploy_tests::configmap::{self, MAX_ANNOTATIONS_BYTES, MAX_DATA_BYTES};
use deploy_tests::load::{self, Document};
use deploy_tests::{assert_none, deploy_dir, repo_dir};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;

/// The reference guests as the image lays them out: `<name>.wasm` (built for
/// wasm32-wasip2 by testkit, as deploy/build-image.sh builds them), `<name>.policy.json`
/// from `guests/<name>/policy.json`, and here also `<name>.json`, the example
/// configuration, as an operator would add it.
fn reference_guest_files() -> Vec<(String, Vec<u8>)> {
    let guests = repo_dir().join("guests");
    let mut files = Vec::new();
    for (name, wasm) in [
        ("nvidia-gpu", testkit::guests::NVIDIA_GPU_WASM),
        ("infiniband", testkit::guests::INFINIBAND_WASM),
    ] {
        let read = |f: &str| {
            let path = guests.join(name).join(f);
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        files.push((format!("{name}.wasm"), wasm.to_vec()));
        files.push((format!("{name}.policy.json"), read("policy.json")));
        files.push((format!("{name}.json"), read("example-config.json")));
    }
    files
}

fn guests_configmap() -> ConfigMap {
    configmap::from_files(
        "wasm-device-plugin-guests",
        "wasm-device-plugin",
        &reference_guest_files(),
    )
}

#[test]
fn the_reference_guests_fit_one_configmap() {
    let cm = guests_configmap();
    // As YAML and back into the typed object, the way kubectl would send it.
    let yaml = serde_saphyr::to_string(&cm).expect("serializes");
    let docs = load::parse_documents(std::path::Path::new("guests-configmap.yaml"), &yaml)
        .unwrap_or_else(|e| panic!("{e}"));
    let [doc] = docs.as_slice() else {
        panic!("one document")
    };
    let back: ConfigMap = load::strict(doc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, cm, "the ConfigMap reads back as written");
    assert_none("guests ConfigMap", &configmap::check(&cm));

    let data = configmap::data_bytes(&cm);
    let applied = configmap::last_applied_bytes(&cm);
    eprintln!(
        "guests ConfigMap: {data} bytes of data (limit {MAX_DATA_BYTES}), {} bytes as YAML, \
         {applied} bytes as a client-side apply's annotation (limit {MAX_ANNOTATIONS_BYTES})",
        yaml.len()
    );
    assert!(data < MAX_DATA_BYTES);
    let wasm: Vec<&String> = cm.binary_data.iter().flatten().map(|(k, _)| k).collect();
    assert_eq!(wasm, ["infiniband.wasm", "nvidia-gpu.wasm"], "binaryData");
    if applied > MAX_ANNOTATIONS_BYTES {
        let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
        assert!(
            readme.contains("--server-side") && readme.contains("create configmap"),
            "a client-side apply of the guests would fail: deploy/README.md must say to \
             create the ConfigMap or apply it server-side"
        );
    }
}

#[test]
fn the_configmap_checks_refuse_what_the_host_or_api_server_would() {
    let refused = |files: Vec<(String, Vec<u8>)>, expect: &str| {
        let cm = configmap::from_files("g", "ns", &files);
        let errors = configmap::check(&cm);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "expected {expect:?} in {errors:#?}"
        );
    };
    let wasm = testkit::guests::INFINIBAND_WASM.to_vec();
    let policy = br#"{"read": ["/sys"]}"#.to_vec();
    refused(
        vec![("a.wasm".into(), wasm.clone())],
        "a.wasm has no a.policy.json",
    );
    refused(
        vec![("a.policy.json".into(), policy.clone())],
        "there is no a.wasm",
    );
    refused(
        vec![
            ("a.wasm".into(), wasm.clone()),
            ("a.policy.json".into(), policy.clone()),
            ("a.json".into(), b"{}".to_vec()),
            ("a.yaml".into(), b"{}".to_vec()),
        ],
        "several configurations",
    );
    refused(
        vec![
            ("a.wasm".into(), wasm.clone()),
            ("a.policy.json".into(), b"{not json".to_vec()),
        ],
        "a.policy.json: not a JSON object",
    );
    refused(
        vec![
            ("a.wasm".into(), b"\0asm\x01\0\0\0\xff".to_vec()),
            ("a.policy.json".into(), policy.clone()),
        ],
        "a.wasm is not a WebAssembly component",
    );
    refused(
        vec![("notes.txt".into(), b"hi".to_vec())],
        "belongs to no guest",
    );
    refused(
        vec![("dir/a.wasm".into(), wasm.clone())],
        "is not a valid ConfigMap key",
    );
    let huge = [wasm.clone(), vec![0xff; MAX_DATA_BYTES]].concat();
    refused(
        vec![("a.wasm".into(), huge), ("a.policy.json".into(), policy)],
        "the API server takes at most",
    );
    // A .wasm that is text (only possible by hand) is in data, which the host cannot load.
    let mut cm = configmap::from_files("g", "ns", &[]);
    cm.data = Some([("a.wasm".to_string(), "AGFzbQ==".to_string())].into());
    cm.binary_data = Some([("b.wasm".to_string(), ByteString(wasm))].into());
    let errors = configmap::check(&cm);
    assert!(
        errors.iter().any(|e| e.contains("belongs in binaryData")),
        "{errors:#?}"
    );
}

#[test]
fn the_containerfile_builds_the_layout_the_manifests_expect() {
    // The recipe pulls nothing: one stage on an empty base, holding the directory that
    // deploy/build-image.sh lays out from what cargo built (CI builds and runs it:
    // .ci/container.sh).
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert_eq!(stages, ["FROM scratch"], "one stage, nothing to pull");
    for needle in [
        "COPY rootfs/ /",
        "ENTRYPOINT [\"/usr/local/bin/wasm-device-plugin\"]",
    ] {
        assert!(
            text.contains(needle),
            "deploy/Containerfile lacks {needle:?}"
        );
    }
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image sets USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "the image's default user is not root: {user}"
    );

    let script = std::fs::read_to_string(deploy_dir().join("build-image.sh")).unwrap();
    for needle in [
        "--no-default-features -p wasm-device-plugin",
        "triple=x86_64-unknown-linux-musl",
        "--target wasm32-wasip2",
        "--locked",
        "-f deploy/Containerfile",
        "\"$rootfs/usr/local/bin/wasm-device-plugin\"",
        // The default --guests-dir, which the ConfigMap volume replaces.
        "\"$rootfs/etc/wasm-device-plugin/guests/$guest.wasm\"",
        "\"$rootfs/etc/wasm-device-plugin/guests/$guest.policy.json\"",
        "\"$rootfs/usr/share/wasm-device-plugin/examples/$guest.json\"",
        "\"$rootfs/var/cache/wasm-device-plugin\"",
        "\"$rootfs/host\"",
    ] {
        assert!(
            script.contains(needle),
            "deploy/build-image.sh lacks {needle:?}"
        );
    }
    assert!(
        script.contains("for guest in nvidia-gpu infiniband; do"),
        "the image ships both reference guests with their policies"
    );
    for guest in ["nvidia-gpu", "infiniband"] {
        for file in ["policy.json", "example-config.json"] {
            let path = repo_dir().join("guests").join(guest).join(file);
            assert!(
                path.is_file(),
                "deploy/build-image.sh copies {}",
                path.display()
            );
        }
    }
}

#[test]
fn the_manifests_image_layout_matches_the_containerfile() {
    // The base's --guests-dir is where the image puts the built-in guests, so that the
    // ConfigMap volume replaces them whole rather than sitting beside them.
    let doc: Document = load::read_documents(&deploy_dir().join("base/daemonset.yaml"))
        .unwrap()
        .remove(0);
    let args = doc.value["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(args.contains(&"--guests-dir=/etc/wasm-device-plugin/guests".into()));
    assert!(args.contains(&"--cache-dir=/var/cache/wasm-device-plugin".into()));
}
