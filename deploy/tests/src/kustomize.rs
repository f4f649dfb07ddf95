//! The part of kustomize that `deploy/` uses: `resources` (files or directories with a
//! `kustomization.yaml`) and `patches` that are complete strategic-merge patches. Such a
//! patch restates every field and list item of its target, so applying it gives the patch
//! itself; [`covers`] checks that it does.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::load::{Document, read_documents};

/// A `kustomization.yaml`, as far as `deploy/` uses it. Unknown fields are refused: a
/// feature used here must also be modelled here (or rendered by `deploy/check.sh`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub patches: Vec<PatchRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRef {
    pub path: String,
}

/// Every directory under `deploy/` that holds a `kustomization.yaml`, sorted.
pub fn roots(deploy: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = crate::load::yaml_files(deploy)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    roots.sort();
    roots
}

/// The parsed `kustomization.yaml` of `dir`.
pub fn read(dir: &Path) -> Result<Kustomization, String> {
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let k: Kustomization = serde_saphyr::from_str(&text).map_err(|e| {
        format!(
            "{}: not a kustomization deploy/tests models: {e}",
            file.display()
        )
    })?;
    if k.api_version != "kustomize.config.k8s.io/v1beta1" || k.kind != "Kustomization" {
        return Err(format!(
            "{}: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization",
            file.display()
        ));
    }
    Ok(k)
}

/// What `kubectl kustomize dir` renders, and every file it read (resources and patches).
pub fn render(dir: &Path) -> Result<(Vec<Document>, Vec<PathBuf>), String> {
    let k = read(dir)?;
    let mut docs = Vec::new();
    let mut used = vec![dir.join("kustomization.yaml")];
    for resource in &k.resources {
        let path = dir.join(resource);
        if path.is_dir() {
            let (more, files) = render(&path)?;
            docs.extend(more);
            used.extend(files);
        } else if path.is_file() {
            docs.extend(read_documents(&path)?);
            used.push(path);
        } else {
            return Err(format!(
                "{}: resource {resource} does not exist",
                dir.join("kustomization.yaml").display()
            ));
        }
    }
    for patch in &k.patches {
        let file = dir.join(&patch.path);
        let patches = read_documents(&file)?;
        used.push(file.clone());
        for p in patches {
            let target = docs
                .iter_mut()
                .find(|d| {
                    d.value["apiVersion"] == p.value["apiVersion"]
                        && d.kind() == p.kind()
                        && d.name() == p.name()
                        && (p.namespace().is_none() || d.namespace() == p.namespace())
                })
                .ok_or_else(|| {
                    format!(
                        "{}: patches {} {}, which {} does not render",
                        p.origin(),
                        p.kind(),
                        p.name(),
                        dir.display()
                    )
                })?;
            let mut gaps = Vec::new();
            covers(&target.value, &p.value, "", &mut gaps);
            if !gaps.is_empty() {
                return Err(format!(
                    "{}: not a complete patch of {}: it must restate everything the base has, \
                     so that the file is what the overlay renders:\n    {}",
                    p.origin(),
                    target.origin(),
                    gaps.join("\n    ")
                ));
            }
            *target = p;
        }
    }
    Ok((docs, used))
}

/// The merge key of a list field in a strategic-merge patch (Kubernetes'
/// `patchMergeKey`), for the fields a DaemonSet here uses. Lists without one are
/// replaced whole by a patch.
pub fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Whether applying `patch` to `base` as a strategic-merge patch gives `patch`: every
/// key of every base map is in the patch, every keyed list item of the base has its
/// counterpart; lists without a merge key are replaced whole. Gaps go to `out`.
pub fn covers(base: &Value, patch: &Value, path: &str, out: &mut Vec<String>) {
    if let Value::Object(p) = patch {
        for key in p.keys().filter(|k| k.starts_with('$')) {
            out.push(format!("{path}.{key}: patch directives are not used here"));
        }
    }
    let (Value::Object(b), Value::Object(p)) = (base, patch) else {
        return;
    };
    for (key, base_value) in b {
        let at = format!("{path}.{key}");
        let Some(patch_value) = p.get(key) else {
            out.push(format!("{at}: missing (the base has it)"));
            continue;
        };
        match (base_value, patch_value, merge_key(key)) {
            (Value::Array(bs), Value::Array(ps), Some(mk)) => {
                for item in bs {
                    let id = &item[mk];
                    match ps.iter().find(|q| &q[mk] == id) {
                        Some(q) => covers(item, q, &format!("{at}[{mk}={id}]"), out),
                        None => out.push(format!("{at}[{mk}={id}]: missing (the base has it)")),
                    }
                }
            }
            (Value::Object(_), Value::Object(_), _) => covers(base_value, patch_value, &at, out),
            (Value::Object(_), other, _) | (Value::Array(_), other, Some(_)) => {
                out.push(format!("{at}: the base's structure is replaced by {other}"));
            }
            _ => {}
        }
    }
}
