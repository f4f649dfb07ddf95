//! The guests ConfigMap: what `kubectl create configmap --from-file` makes of a guests
//! directory, and what the host and the API server need of it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The API server refuses a ConfigMap whose `data` and `binaryData` values add up to
/// more (bytes as stored, not base64).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Total size of an object's annotations. A client-side `kubectl apply` copies the whole
/// object, binaryData in base64, into `kubectl.kubernetes.io/last-applied-configuration`.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// How a WebAssembly component starts: `\0asm`, version 0x0d, layer 1.
pub const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// The extensions of a guest's own configuration (host/src/node/guests_dir.rs).
pub const CONFIG_EXTENSIONS: [&str; 4] = ["json", "yaml", "yml", "conf"];

/// A ConfigMap made as `kubectl create configmap NAME --from-file=DIR` makes it: one key
/// per file, text that is valid UTF-8 in `data`, anything else in `binaryData`.
pub fn from_files(name: &str, namespace: &str, files: &[(String, Vec<u8>)]) -> ConfigMap {
    let mut data = BTreeMap::new();
    let mut binary = BTreeMap::new();
    for (key, bytes) in files {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                data.insert(key.clone(), text.to_owned());
            }
            Err(_) => {
                binary.insert(key.clone(), ByteString(bytes.clone()));
            }
        }
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: (!data.is_empty()).then_some(data),
        binary_data: (!binary.is_empty()).then_some(binary),
        ..ConfigMap::default()
    }
}

/// Bytes the API server counts against [`MAX_DATA_BYTES`].
pub fn data_bytes(cm: &ConfigMap) -> usize {
    cm.data
        .iter()
        .flatten()
        .map(|(_, v)| v.len())
        .sum::<usize>()
        + cm.binary_data
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>()
}

/// Size of the last-applied annotation a client-side `kubectl apply` would write.
pub fn last_applied_bytes(cm: &ConfigMap) -> usize {
    serde_json::to_vec(cm)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// What a key of the guests directory is.
#[derive(Debug, PartialEq, Eq)]
enum Role<'a> {
    Wasm(&'a str),
    Policy(&'a str),
    Signature(&'a str),
    Config(&'a str),
}

fn role(key: &str) -> Option<Role<'_>> {
    if let Some(name) = key.strip_suffix(".wasm.sig") {
        return Some(Role::Signature(name));
    }
    if let Some(name) = key.strip_suffix(".policy.json") {
        return Some(Role::Policy(name));
    }
    if let Some(name) = key.strip_suffix(".wasm") {
        return Some(Role::Wasm(name));
    }
    let (name, ext) = key.rsplit_once('.')?;
    CONFIG_EXTENSIONS
        .contains(&ext)
        .then_some(Role::Config(name))
}

/// A valid ConfigMap key (the API server's `IsConfigMapKey`).
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && key != "."
        && key != ".."
        && !key.starts_with("..")
}

/// Every reason the API server would refuse `cm`, or the host would not load a guest
/// from it as the operator meant.
pub fn check(cm: &ConfigMap) -> Vec<String> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let mut err = |m: String| errors.push(format!("ConfigMap {name}: {m}"));
    let data = cm.data.clone().unwrap_or_default();
    let binary = cm.binary_data.clone().unwrap_or_default();

    let size = data_bytes(cm);
    if size > MAX_DATA_BYTES {
        err(format!(
            "{size} bytes of data: the API server takes at most {MAX_DATA_BYTES}; split the guests over several ConfigMaps"
        ));
    }
    for key in data.keys().chain(binary.keys()) {
        if !valid_key(key) {
            err(format!("{key:?} is not a valid ConfigMap key"));
        }
    }
    for key in data.keys().filter(|k| binary.contains_key(*k)) {
        err(format!("{key} is in both data and binaryData"));
    }

    let mut wasm = BTreeSet::new();
    let mut configs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, bytes) in &binary {
        match role(key) {
            Some(Role::Wasm(guest)) => {
                wasm.insert(guest);
                if !bytes.0.starts_with(&COMPONENT_HEADER) {
                    err(format!("{key} is not a WebAssembly component"));
                }
            }
            _ => err(format!(
                "{key} is binary: only the .wasm files are; policies, configurations and signatures are text"
            )),
        }
    }
    for (key, text) in &data {
        match role(key) {
            Some(Role::Wasm(_)) => err(format!(
                "{key} is in data: a guest is binary and belongs in binaryData"
            )),
            Some(Role::Policy(_)) => {
                if let Err(e) =
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                {
                    err(format!("{key}: not a JSON object: {e}"));
                }
            }
            Some(Role::Config(guest)) => {
                configs.entry(guest).or_default().push(key);
                if key.ends_with(".json")
                    && let Err(e) = serde_json::from_str::<serde_json::Value>(text)
                {
                    err(format!("{key}: not JSON: {e}"));
                }
            }
            Some(Role::Signature(_)) => {}
            None => err(format!(
                "{key} belongs to no guest (<name>.wasm, .policy.json, .json/.yaml/.yml/.conf, .wasm.sig)"
            )),
        }
    }
    for key in data.keys() {
        let guest = match role(key) {
            Some(Role::Policy(g) | Role::Signature(g) | Role::Config(g)) => g,
            _ => continue,
        };
        if !wasm.contains(guest) {
            err(format!("{key}: there is no {guest}.wasm"));
        }
    }
    for guest in &wasm {
        if !data.contains_key(&format!("{guest}.policy.json")) {
            err(format!(
                "{guest}.wasm has no {guest}.policy.json: the host grants it nothing"
            ));
        }
    }
    for (guest, files) in configs {
        if files.len() > 1 {
            err(format!(
                "{guest} has several configurations ({}): the host refuses to choose",
                files.join(", ")
            ));
        }
    }
    errors
}
