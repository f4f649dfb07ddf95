//! Every manifest under deploy/ parses into its k8s-openapi type, every overlay renders,
//! and every rendered DaemonSet keeps the promises in deploy/tests/src/daemonset.rs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use deploy_tests::load::{self, Document, Object};
use deploy_tests::{assert_none, check_set, daemonset, deploy_dir, kustomize};
use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::Value;

/// Files that are YAML but not Kubernetes objects.
fn is_object_file(file: &Path) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_chart = file.ancestors().skip(1).any(load::is_chart);
    name != "kustomization.yaml" && !in_chart
}

fn object_files() -> Vec<PathBuf> {
    load::yaml_files(&deploy_dir())
        .into_iter()
        .filter(|f| is_object_file(f))
        .collect()
}

fn rel(path: &Path) -> String {
    path.strip_prefix(deploy_dir().parent().unwrap())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The one DaemonSet that `root` renders.
fn rendered_daemonset(root: &Path) -> (Document, DaemonSet) {
    let (docs, _) = kustomize::render(root).unwrap_or_else(|e| panic!("{e}"));
    let mut found = docs.into_iter().filter(|d| d.kind() == "DaemonSet");
    let doc = found
        .next()
        .expect("every kustomization renders a DaemonSet");
    assert!(found.next().is_none(), "{}: one DaemonSet", root.display());
    let ds = load::strict::<DaemonSet>(&doc).unwrap_or_else(|e| panic!("{e}"));
    (doc, ds)
}

/// JSON paths at which `a` and `b` differ.
fn differences(a: &Value, b: &Value, path: &str, out: &mut BTreeSet<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => {
            out.insert(path.to_owned());
        }
    }
}

/// The index of the container's mount at `mount_path`, for expected-difference paths.
fn mount_index(ds: &Value, mount_path: &str) -> usize {
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .position(|m| m["mountPath"] == mount_path)
        .unwrap_or_else(|| panic!("no mount at {mount_path}"))
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let files = object_files();
    assert!(
        files.len() >= 5,
        "found only {files:?}: is deploy/ where it should be?"
    );
    let mut errors = Vec::new();
    let mut kinds = BTreeSet::new();
    for file in &files {
        match load::read_documents(file) {
            Ok(docs) if docs.is_empty() => errors.push(format!("{}: no document", rel(file))),
            Ok(docs) => {
                for doc in docs {
                    match load::typed(&doc) {
                        Ok(_) => {
                            kinds.insert(doc.kind().to_owned());
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    assert_none("manifests that are not valid Kubernetes objects", &errors);
    for kind in ["Namespace", "ServiceAccount", "DaemonSet"] {
        assert!(kinds.contains(kind), "no {kind} under deploy/");
    }
    eprintln!(
        "{} files parsed as Kubernetes {} objects: {kinds:?}",
        files.len(),
        load::MODELLED_API
    );
}

#[test]
fn every_manifest_belongs_to_a_kustomization() {
    let roots = kustomize::roots(&deploy_dir());
    let names: Vec<String> = roots.iter().map(|r| rel(r)).collect();
    assert_eq!(
        names,
        [
            "deploy/base",
            "deploy/overlays/least-privilege",
            "deploy/overlays/nvml",
            "deploy/overlays/pci-reset"
        ],
        "the kustomizations (update this list, deploy/README.md and deploy/check.sh together)"
    );
    let mut used = BTreeSet::new();
    for root in &roots {
        let (_, files) = kustomize::render(root).unwrap_or_else(|e| panic!("{e}"));
        used.extend(files);
    }
    let orphans: Vec<String> = object_files()
        .into_iter()
        .filter(|f| !used.contains(f))
        .map(|f| format!("{} is in no kustomization", rel(&f)))
        .collect();
    assert_none("manifests nothing deploys", &orphans);
}

#[test]
fn overlays_render_and_restate_their_base_completely() {
    for root in kustomize::roots(&deploy_dir()) {
        let (docs, _) = kustomize::render(&root).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
        assert_eq!(
            kinds,
            ["Namespace", "ServiceAccount", "DaemonSet"],
            "{}",
            rel(&root)
        );
    }
}

#[test]
fn rendered_daemonsets_keep_their_promises() {
    let mut errors = Vec::new();
    for root in kustomize::roots(&deploy_dir()) {
        let (docs, _) = kustomize::render(&root).unwrap_or_else(|e| panic!("{e}"));
        let objects: Vec<Object> = docs
            .iter()
            .map(|d| load::typed(d).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        errors.extend(
            check_set(&objects)
                .into_iter()
                .map(|e| format!("{}: {e}", rel(&root))),
        );
    }
    assert_none("broken promises", &errors);
}

#[test]
fn the_base_is_privileged_and_the_least_privilege_overlay_is_not() {
    let privileged = |ds: &DaemonSet| {
        ds.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
    };
    let (_, base) = rendered_daemonset(&deploy_dir().join("base"));
    let (_, lp) = rendered_daemonset(&deploy_dir().join("overlays/least-privilege"));
    let (_, pr) = rendered_daemonset(&deploy_dir().join("overlays/pci-reset"));
    let (_, nvml) = rendered_daemonset(&deploy_dir().join("overlays/nvml"));
    assert_eq!(privileged(&base), Some(true));
    assert_eq!(privileged(&pr), Some(true));
    // NVML opens /dev/nvidiactl and /dev/nvidia* in the container's own /dev.
    assert_eq!(privileged(&nvml), Some(true));
    // Not privileged, and so held to the full least-privilege set by daemonset::check.
    assert_eq!(privileged(&lp), Some(false));
    assert_none("least-privilege overlay", &daemonset::check(&lp));
}

#[test]
fn overlays_differ_from_the_base_only_where_they_mean_to() {
    let (base, _) = rendered_daemonset(&deploy_dir().join("base"));
    let container = "spec.template.spec.containers[0]";

    let (lp, _) = rendered_daemonset(&deploy_dir().join("overlays/least-privilege"));
    let mut found = BTreeSet::new();
    differences(&base.value, &lp.value, "", &mut found);
    let cdi = mount_index(&base.value, "/host/var/run/cdi");
    let features = mount_index(
        &base.value,
        "/host/etc/kubernetes/node-feature-discovery/features.d",
    );
    let expected: BTreeSet<String> = [
        "securityContext.privileged",
        "securityContext.allowPrivilegeEscalation",
        "securityContext.capabilities",
        "securityContext.seccompProfile",
    ]
    .iter()
    .map(|p| format!(".{container}.{p}"))
    .chain([
        format!(".{container}.volumeMounts[{cdi}].readOnly"),
        format!(".{container}.volumeMounts[{features}].readOnly"),
    ])
    .collect();
    assert_eq!(
        found, expected,
        "least-privilege: change the base and its overlays together"
    );

    let (pr, _) = rendered_daemonset(&deploy_dir().join("overlays/pci-reset"));
    let mut found = BTreeSet::new();
    differences(&base.value, &pr.value, "", &mut found);
    let sys = mount_index(&base.value, "/host/sys");
    let expected: BTreeSet<String> = [format!(".{container}.volumeMounts[{sys}].readOnly")].into();
    assert_eq!(
        found, expected,
        "pci-reset: change the base and its overlays together"
    );

    // nvml: another image and two more read-only mounts; the base's items unchanged.
    let (mut nvml, _) = rendered_daemonset(&deploy_dir().join("overlays/nvml"));
    let pod = &mut nvml.value["spec"]["template"]["spec"];
    let mut added = Vec::new();
    for (list, key) in [("volumes", "name"), ("volumeMounts", "mountPath")] {
        let items = if list == "volumes" {
            &mut pod["volumes"]
        } else {
            &mut pod["containers"][0]["volumeMounts"]
        };
        items.as_array_mut().unwrap().retain(|item| {
            let name = item["name"].as_str().unwrap_or_default();
            let extra = name == "nvidia-libraries" || name == "nvidia-driver-root";
            if extra {
                added.push(format!(
                    "{list}: {}",
                    item[key].as_str().unwrap_or_default()
                ));
            }
            !extra
        });
    }
    assert_eq!(
        added,
        [
            "volumes: nvidia-libraries",
            "volumes: nvidia-driver-root",
            "volumeMounts: /host/usr/lib/x86_64-linux-gnu",
            "volumeMounts: /host/run/nvidia/driver",
        ],
        "nvml: the driver library mounts"
    );
    let mut found = BTreeSet::new();
    differences(&base.value, &nvml.value, "", &mut found);
    let expected: BTreeSet<String> = [format!(".{container}.image")].into();
    assert_eq!(
        found, expected,
        "nvml: change the base and its overlays together"
    );
    assert_eq!(
        nvml.value["spec"]["template"]["spec"]["containers"][0]["image"],
        "wasm-device-plugin:0.1.0-nvml",
        "nvml: the image deploy/build-image.sh tags with WDP_IMAGE_VARIANT=nvml"
    );
}

/// The directories the nvml overlay mounts are ones the host searches: the list in
/// deploy/tests is the host's own `SEARCH_DIRS`, read from its source.
#[test]
fn the_nvml_search_dirs_are_the_hosts() {
    let source = deploy_tests::repo_dir().join("host/src/nvml/mod.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    let start = text
        .find("pub const SEARCH_DIRS: &[&str] = &[")
        .expect("host/src/nvml/mod.rs defines SEARCH_DIRS");
    let end = start + text[start..].find("];").unwrap();
    let theirs: Vec<&str> = text[start..end]
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.strip_suffix("\","))
        .collect();
    assert_eq!(
        theirs,
        daemonset::NVML_SEARCH_DIRS,
        "deploy/tests/src/daemonset.rs NVML_SEARCH_DIRS must be the host's SEARCH_DIRS"
    );
}

#[test]
fn the_checks_catch_what_they_promise_to() {
    let (base, _) = rendered_daemonset(&deploy_dir().join("base"));
    let broken = |edit: &dyn Fn(&mut Value), expect: &str| {
        let mut doc = base.clone();
        edit(&mut doc.value);
        let messages = match load::strict::<DaemonSet>(&doc) {
            Ok(ds) => daemonset::check(&ds),
            Err(e) => vec![e],
        };
        assert!(
            messages.iter().any(|m| m.contains(expect)),
            "expected a message with {expect:?}, got {messages:#?}"
        );
    };
    broken(
        &|v| {
            v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readOnyl"] =
                true.into()
        },
        "readOnyl: unknown field",
    );
    broken(
        &|v| {
            v["spec"]["template"]["spec"]["containers"][0]
                .as_object_mut()
                .unwrap()
                .remove("name");
        },
        "name: required field missing",
    );
    broken(
        &|v| {
            let mounts = &mut v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
            let i = mounts
                .as_array()
                .unwrap()
                .iter()
                .position(|m| m["name"] == "guests")
                .unwrap();
            mounts[i]["subPath"] = "nvidia-gpu.wasm".into();
        },
        "subPath",
    );
    broken(
        &|v| {
            let args = &mut v["spec"]["template"]["spec"]["containers"][0]["args"];
            args.as_array_mut()
                .unwrap()
                .push("--metrics-adr=:9464".into());
        },
        "has no flag --metrics-adr",
    );
    broken(
        &|v| {
            let args = &mut v["spec"]["template"]["spec"]["containers"][0]["args"];
            for a in args.as_array_mut().unwrap() {
                if a == "--host-root=/host" {
                    *a = "--host-root=/node".into();
                }
            }
        },
        "nothing is mounted at /node/sys",
    );
    broken(
        &|v| {
            let vols = &mut v["spec"]["template"]["spec"]["volumes"];
            for vol in vols.as_array_mut().unwrap() {
                if vol["name"] == "host-proc" {
                    vol["hostPath"]["path"] = "/etc".into();
                }
            }
        },
        "hostPath /etc is not one the host needs",
    );
    broken(
        &|v| {
            let vols = &mut v["spec"]["template"]["spec"]["volumes"];
            for vol in vols.as_array_mut().unwrap() {
                if vol["name"] == "guests" {
                    *vol = serde_json::json!({"name": "guests", "emptyDir": {}});
                }
            }
        },
        "is not a ConfigMap volume mounted whole",
    );
    broken(
        &|v| {
            let mounts = &mut v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
            for m in mounts.as_array_mut().unwrap() {
                if m["mountPath"] == "/host/dev" {
                    m.as_object_mut().unwrap().remove("readOnly");
                }
            }
        },
        "/host/dev must be read-only",
    );
    broken(
        &|v| {
            v["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] =
                8080.into()
        },
        "livenessProbe must be an HTTP GET of /healthz on port 9464",
    );
    broken(
        &|v| {
            let args = &mut v["spec"]["template"]["spec"]["containers"][0]["args"];
            for a in args.as_array_mut().unwrap() {
                if a == "--metrics-addr=0.0.0.0:9464" {
                    *a = "--metrics-addr=127.0.0.1:9464".into();
                }
            }
        },
        "bind every address",
    );
    broken(
        &|v| {
            let args = &mut v["spec"]["template"]["spec"]["containers"][0]["args"];
            args.as_array_mut()
                .unwrap()
                .push("--config=/etc/wdp.json".into());
        },
        "--config: settings in a file are invisible",
    );
    broken(
        &|v| {
            v["spec"]["template"]["spec"]["containers"][0]["securityContext"] =
                serde_json::json!({"readOnlyRootFilesystem": true});
        },
        "capabilities must drop ALL",
    );
    broken(
        &|v| {
            let mounts = &mut v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
            for m in mounts.as_array_mut().unwrap() {
                if m["name"] == "nfd-features" {
                    m["mountPath"] = "/etc/kubernetes/node-feature-discovery/features.d".into();
                }
            }
        },
        "nothing is mounted at /host/etc/kubernetes/node-feature-discovery/features.d",
    );
    broken(
        &|v| {
            let mounts = &mut v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
            for m in mounts.as_array_mut().unwrap() {
                if m["name"] == "nfd-features" {
                    m["readOnly"] = true.into();
                }
            }
        },
        "a privileged variant publishes guests' node labels there",
    );

    // The nvml overlay's library mounts are for `--nvml-library auto` only.
    let (nvml, _) = rendered_daemonset(&deploy_dir().join("overlays/nvml"));
    assert_none("nvml overlay", &check_one(&nvml));
    let mut off = nvml.clone();
    off.value["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .unwrap()
        .push("--nvml-library=off".into());
    let messages = check_one(&off);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("--nvml-library=off does not search the node")),
        "{messages:#?}"
    );
    let mut writable = nvml.clone();
    for m in writable.value["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
    {
        if m["name"] == "nvidia-libraries" {
            m.as_object_mut().unwrap().remove("readOnly");
        }
    }
    let messages = check_one(&writable);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("/usr/lib/x86_64-linux-gnu must be read-only")),
        "{messages:#?}"
    );
}

fn check_one(doc: &Document) -> Vec<String> {
    match load::strict::<DaemonSet>(doc) {
        Ok(ds) => daemonset::check(&ds),
        Err(e) => vec![e],
    }
}

#[test]
fn an_incomplete_patch_is_refused() {
    let dir = std::env::temp_dir().join(format!("deploy-tests-{}", std::process::id()));
    let base = dir.join("base");
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::copy(
        deploy_dir().join("base/daemonset.yaml"),
        base.join("daemonset.yaml"),
    )
    .unwrap();
    std::fs::write(
        base.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [daemonset.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\npatches: [{path: patch.yaml}]\n",
    )
    .unwrap();
    // Only what changes: a real strategic-merge patch, but not the rendered object.
    std::fs::write(
        overlay.join("patch.yaml"),
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: wasm-device-plugin, namespace: wasm-device-plugin}\nspec:\n  template:\n    spec:\n      containers:\n        - name: wasm-device-plugin\n          securityContext: {privileged: false}\n",
    )
    .unwrap();
    let result = kustomize::render(&overlay);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = result.expect_err("a partial patch");
    assert!(e.contains("not a complete patch"), "{e}");
    assert!(e.contains(".spec.selector: missing"), "{e}");
    assert!(
        e.contains(".volumeMounts: missing") && e.contains("readOnlyRootFilesystem: missing"),
        "{e}"
    );
}

/// RUN_FLAGS is what `wasm-device-plugin run` takes: the fields of `NodeArgs` and
/// `RunArgs` in host/src/args.rs (clap's `--kebab-case` of each; a `bool` is a switch),
/// plus the two global flags of host/src/main.rs.
#[test]
fn run_flags_are_the_hosts() {
    let args = std::fs::read_to_string(deploy_tests::repo_dir().join("host/src/args.rs")).unwrap();
    let mut theirs = BTreeSet::new();
    for name in ["NodeArgs", "RunArgs"] {
        let start = args
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("host/src/args.rs defines {name}"));
        let body = &args[start..start + args[start..].find("\n}").unwrap()];
        for line in body.lines().skip(1) {
            let Some((field, ty)) = line
                .trim()
                .strip_prefix("pub ")
                .and_then(|l| l.strip_suffix(','))
                .and_then(|l| l.split_once(": "))
            else {
                continue;
            };
            if ty == "NodeArgs" {
                continue; // flattened
            }
            theirs.insert((format!("--{}", field.replace('_', "-")), ty != "bool"));
        }
    }
    let main = std::fs::read_to_string(deploy_tests::repo_dir().join("host/src/main.rs")).unwrap();
    for (field, flag) in [("log_format:", "--log-format"), ("config:", "--config")] {
        assert!(
            main.contains(field),
            "host/src/main.rs has no global {flag}"
        );
        theirs.insert((flag.to_owned(), true));
    }
    let ours: BTreeSet<(String, bool)> = daemonset::RUN_FLAGS
        .iter()
        .map(|(f, v)| (f.to_string(), *v))
        .collect();
    assert_eq!(
        ours, theirs,
        "deploy/tests/src/daemonset.rs RUN_FLAGS must be the flags of host/src/args.rs"
    );
}
