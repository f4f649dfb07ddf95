//! Checks for everything under `deploy/`: the manifests and overlays parse into the
//! `k8s-openapi` types (and read back unchanged, so an unknown or misspelt field fails),
//! each overlay's patch restates its base completely (so the patch file is what the overlay
//! renders), and the rendered DaemonSets keep the promises operators rely on: hostPaths
//! from a fixed list, `--host-root` matching the mounts, the guests as a whole ConfigMap
//! volume, flags the binary has, probes on the metrics port.
//!
//! Kustomize is not needed for the default run: the overlays here use only complete
//! strategic-merge patches, which this crate applies itself. `deploy/check.sh` renders
//! the same overlays (and the Helm chart) with the real tools and hands the output to
//! the `rendered_*` tests through `WDP_DEPLOY_RENDERED`.

pub mod configmap;
pub mod daemonset;
pub mod kustomize;
pub mod load;

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::load::Object;

/// The `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/tests lives in deploy/")
        .to_owned()
}

/// The repository root.
pub fn repo_dir() -> PathBuf {
    deploy_dir()
        .parent()
        .expect("deploy/ lives in the repository")
        .to_owned()
}

/// Fails with every message, one per line, when there are any.
pub fn assert_none(what: &str, errors: &[String]) {
    assert!(errors.is_empty(), "{what}:\n  {}", errors.join("\n  "));
}

/// The DaemonSet's checks, and how it fits the other objects of its set.
pub fn check_set(objects: &[Object]) -> Vec<String> {
    let mut errors = Vec::new();
    let namespaces: Vec<String> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => n.metadata.name.clone(),
            _ => None,
        })
        .collect();
    let accounts: Vec<(Option<String>, Option<String>)> = objects
        .iter()
        .filter_map(|o| match o {
            Object::ServiceAccount(sa) => {
                Some((sa.metadata.namespace.clone(), sa.metadata.name.clone()))
            }
            _ => None,
        })
        .collect();
    let daemonsets: Vec<&DaemonSet> = objects
        .iter()
        .filter_map(|o| match o {
            Object::DaemonSet(ds) => Some(&**ds),
            _ => None,
        })
        .collect();
    if daemonsets.len() != 1 {
        errors.push(format!("{} DaemonSets, expected one", daemonsets.len()));
    }
    for ds in daemonsets {
        errors.extend(daemonset::check(ds));
        let ns = ds.metadata.namespace.clone();
        if !namespaces.is_empty() && !namespaces.iter().any(|n| Some(n) == ns.as_ref()) {
            errors.push(format!(
                "the DaemonSet's namespace {ns:?} is not the Namespace here"
            ));
        }
        let sa = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.service_account_name.clone());
        if !accounts.contains(&(ns.clone(), sa.clone())) {
            errors.push(format!(
                "serviceAccountName {sa:?} is not a ServiceAccount in namespace {ns:?} here"
            ));
        }
    }
    for (ns, name) in &accounts {
        let sa = objects.iter().find_map(|o| match o {
            Object::ServiceAccount(sa) if &sa.metadata.name == name => Some(sa),
            _ => None,
        });
        if sa.is_some_and(|sa| sa.automount_service_account_token != Some(false)) {
            errors.push(format!(
                "ServiceAccount {ns:?}/{name:?}: automountServiceAccountToken must be false"
            ));
        }
    }
    errors
}
