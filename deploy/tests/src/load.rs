//! Reading YAML documents and turning them into typed Kubernetes objects.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One YAML document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: PathBuf,
    /// Position in its file, from 0.
    pub index: usize,
    pub value: Value,
}

impl Document {
    /// `file#index`, for messages.
    pub fn origin(&self) -> String {
        format!("{}#{}", self.file.display(), self.index)
    }

    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

/// Every document of a YAML file (empty documents skipped). serde-saphyr refuses
/// duplicate keys, as the API server's strict decoding does.
pub fn read_documents(file: &Path) -> Result<Vec<Document>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    parse_documents(file, &text)
}

/// Every document of `text`, as if read from `file`.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Document>, String> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| format!("{}: not YAML: {e}", file.display()))?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Document {
            file: file.to_owned(),
            index,
            value,
        })
        .collect())
}

/// Every `.yaml`/`.yml` file under `dir`, sorted, leaving out Helm templates (Go
/// templates, not YAML until rendered) and this crate's own directory.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(dir, &mut found);
    found.sort();
    found
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            let helm_templates = name == "templates" && path.parent().is_some_and(is_chart);
            if !helm_templates && name != "target" && path != crate::deploy_dir().join("tests") {
                walk(&path, found);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            found.push(path);
        }
    }
}

/// Whether `dir` is a Helm chart.
pub fn is_chart(dir: &Path) -> bool {
    dir.join("Chart.yaml").is_file()
}

/// A manifest, typed by its `apiVersion` and `kind`. The kinds `deploy/` may hold: a new
/// kind needs a line here (and its checks).
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ConfigMap(Box<ConfigMap>),
    DaemonSet(Box<DaemonSet>),
}

/// The typed object of a document, or why it is not one.
pub fn typed(doc: &Document) -> Result<Object, String> {
    let api_version = doc.value["apiVersion"].as_str().unwrap_or("");
    let object = match (api_version, doc.kind()) {
        ("v1", "Namespace") => Object::Namespace(Box::new(strict(doc)?)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(Box::new(strict(doc)?)),
        ("v1", "ConfigMap") => Object::ConfigMap(Box::new(strict(doc)?)),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(strict(doc)?)),
        (api_version, kind) => {
            return Err(format!(
                "{}: apiVersion {api_version:?} kind {kind:?} is not a kind deploy/ may hold \
                 (deploy/tests/src/load.rs lists them)",
                doc.origin()
            ));
        }
    };
    Ok(object)
}

/// Deserializes `doc` into `K` and serializes it back: the two must be equal. The
/// k8s-openapi types skip unknown fields and default missing required ones, so a field
/// that does not read back is unknown (a typo, or newer than the modelled API) and one
/// that appears from nowhere is a required field left out.
pub fn strict<K>(doc: &Document) -> Result<K, String>
where
    K: k8s_openapi::Resource + DeserializeOwned + Serialize,
{
    if doc.value["apiVersion"] != K::API_VERSION || doc.value["kind"] != K::KIND {
        return Err(format!(
            "{}: expected apiVersion {} kind {}",
            doc.origin(),
            K::API_VERSION,
            K::KIND
        ));
    }
    let object: K = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        format!(
            "{}: not a {} {}: {e}",
            doc.origin(),
            K::API_VERSION,
            K::KIND
        )
    })?;
    let back = serde_json::to_value(&object)
        .map_err(|e| format!("{}: cannot serialize back: {e}", doc.origin()))?;
    let mut differences = Vec::new();
    round_trip_diff(&doc.value, &back, "", &mut differences);
    if differences.is_empty() {
        Ok(object)
    } else {
        Err(format!(
            "{}: {} {} does not read back as written (Kubernetes {} schema):\n    {}",
            doc.origin(),
            K::KIND,
            doc.name(),
            MODELLED_API,
            differences.join("\n    ")
        ))
    }
}

/// The Kubernetes version whose schema the manifests are checked against (the
/// k8s-openapi feature this crate enables).
pub const MODELLED_API: &str = "1.33";

/// Where `written` and `read_back` differ, as `path: what` lines.
pub fn round_trip_diff(written: &Value, read_back: &Value, path: &str, out: &mut Vec<String>) {
    match (written, read_back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => round_trip_diff(value, other, &at, out),
                    None if value.is_null() => out.push(format!("{at}: null (leave it out)")),
                    None => out.push(format!("{at}: unknown field")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: required field missing"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                round_trip_diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ if written == read_back => {}
        _ => out.push(format!("{path}: {written} reads back as {read_back}")),
    }
}
