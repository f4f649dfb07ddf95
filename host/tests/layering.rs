//! The host's layers, as the README draws them, checked against the source: each
//! top-level module of `host/src` may use only modules of the layers below its own.
//! A new `use crate::…` that points upwards (a cycle in the making) fails here, naming
//! the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. Modules in one layer may not use each other.
const LAYERS: &[&[&str]] = &[
    // Vocabulary and leaves: depend on nothing in the crate.
    &[
        "device",
        "grant",
        "guest_text",
        "metrics",
        "shutdown",
        "wit",
    ],
    // The node under the host root: resolve and open as the kernel does; the kubelet's
    // view of each resource (what /readyz reports).
    &["host_root", "readiness"],
    // NVIDIA's management library, loaded from the node and read on a thread of its own.
    &["nvml"],
    // What a guest may hand to a container runtime.
    &["handout"],
    // The operator's policy file (its patterns checked with the hand-out's own rules).
    &["policy"],
    // What a guest may read and write (the WIT imports).
    &["hostfns"],
    // wasmtime: guests, their threads and limits.
    &["runtime"],
    // One advertised resource: snapshots, request and answer checks.
    &["resource"],
    // The kubelet protocol.
    &["kubelet"],
    // Assembly: configuration, supervisor, per-guest tasks, ops server.
    &["node"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("read host/src")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// Every `crate::<module>` a file names outside comments.
fn crate_uses(text: &str) -> Vec<(usize, String)> {
    let mut uses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                uses.push((n + 1, name));
            }
            rest = tail;
        }
    }
    uses
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut seen = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read host/src") {
        let path = entry.expect("dir entry").path();
        let module = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name")
            .to_owned();
        // The binary's own files (main.rs and its modules) sit above everything.
        if ["lib", "main", "args", "config_file", "demo", "tools"].contains(&module.as_str()) {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "host/src/{module}: not in LAYERS; place it in the layering (and the README)"
            ));
            continue;
        };
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        seen.insert(module.clone(), files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            for (line, used) in crate_uses(&text) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(layer) if layer < own => {}
                    _ => violations.push(format!(
                        "{}:{line}: {module} uses crate::{used}, which is not below it",
                        file.strip_prefix(&src).unwrap_or(&file).display()
                    )),
                }
            }
        }
    }
    assert!(
        seen.contains_key("kubelet") && seen.contains_key("runtime") && seen.contains_key("node"),
        "the walk found the layers: {seen:?}"
    );
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_use() {
    let uses = crate_uses("use crate::node::HostConfig; // crate::kubelet in a comment\n");
    assert_eq!(uses, vec![(1, "node".to_string())]);
    assert!(layer_of("node") > layer_of("runtime"));
}
