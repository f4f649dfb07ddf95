//! Annotations a guest may set on a container.
//!
//! Runtimes read annotations as instructions: `cdi.k8s.io/<x>` (and
//! `<vendor>.cdi.k8s.io/<x>`) asks containerd and CRI-O to inject CDI devices, CRI-O
//! acts on `io.kubernetes.cri-o.*` (devices, userns, seccomp), containerd on
//! `io.containerd.*`, crun on `run.oci.*`, Kata on `io.katacontainers.*`. Such keys
//! are refused whatever the policy says; others only where a policy pattern grants them.

use super::Refused;
use crate::grant::{Grant, glob, literal_prefix};

/// Longest key: a 253-byte prefix, `/`, a 63-byte name.
pub const MAX_KEY_BYTES: usize = 253 + 1 + 63;
/// Longest value.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Key prefixes a runtime interprets.
pub const RESERVED_PREFIXES: &[&str] = &[
    "cdi.k8s.io/",
    "io.kubernetes.",
    "io.containerd.",
    "io.cri-o.",
    "io.katacontainers.",
    "io.podman.",
    "run.oci.",
    "org.opencontainers.",
    "org.systemd.",
];
/// Key domains a runtime or Kubernetes interprets (the domain and its subdomains).
pub const RESERVED_DOMAINS: &[&str] = &["cdi.k8s.io", "k8s.io", "kubernetes.io"];

/// Whether a runtime or Kubernetes interprets `key`.
pub fn is_reserved(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return true;
    }
    let domain = key.split_once('/').map_or("", |(d, _)| d);
    RESERVED_DOMAINS
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
}

/// Checks a policy's annotation pattern: not empty, printable, and not naming a
/// reserved key.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty()
        || pattern.len() > MAX_KEY_BYTES
        || pattern.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{pattern:?} must be a key pattern without spaces"));
    }
    let literal = literal_prefix(pattern);
    if is_reserved(literal) || (!pattern.contains('*') && is_reserved(pattern)) {
        return Err(format!(
            "{pattern:?} names keys that container runtimes interpret; those are never granted"
        ));
    }
    Ok(())
}

/// Checks one annotation of an answer against the grant.
pub fn check(grant: &Grant, key: &str, value: &str) -> Result<(), Refused> {
    if is_reserved(key) {
        return Err(Refused::annotation(
            key,
            "container runtimes interpret this key (CDI requests and runtime-reserved prefixes are never granted)",
        ));
    }
    if !is_qualified_key(key) {
        return Err(Refused::annotation(
            key,
            "keys must be [prefix/]name as Kubernetes qualifies them",
        ));
    }
    if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
        return Err(Refused::annotation(
            key,
            format!("values must be at most {MAX_VALUE_BYTES} bytes without NUL"),
        ));
    }
    if grant.annotations.iter().any(|p| glob(p, key)) {
        Ok(())
    } else {
        Err(Refused::annotation(
            key,
            "not granted by the policy's annotation patterns",
        ))
    }
}

/// `[prefix/]name`: a DNS-subdomain prefix of at most 253 bytes, a name of 1-63
/// `[A-Za-z0-9_.-]` starting and ending alphanumeric.
fn is_qualified_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let edge = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && edge(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && edge(label)
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(patterns: &[&str]) -> Grant {
        Grant {
            annotations: patterns.iter().map(|s| s.to_string()).collect(),
            ..Grant::none()
        }
    }

    #[test]
    fn runtime_keys_are_refused_whatever_the_grant() {
        let g = grant(&["**"]);
        for key in [
            "cdi.k8s.io/widget",
            "nvidia.cdi.k8s.io/gpu",
            "CDI.K8S.IO/x",
            "io.kubernetes.cri-o.Devices",
            "io.kubernetes.cri-o.userns-mode",
            "io.containerd.runc.v2.group",
            "run.oci.keep_original_groups",
            "io.katacontainers.config.hypervisor.path",
            "kubernetes.io/x",
            "node.kubernetes.io/x",
        ] {
            let err = check(&g, key, "v").unwrap_err();
            assert!(err.to_string().contains("interpret"), "{key}: {err}");
        }
    }

    #[test]
    fn others_need_a_pattern() {
        let g = grant(&["example.com/*"]);
        assert_eq!(check(&g, "example.com/allocated", "w0"), Ok(()));
        assert!(check(&g, "other.com/allocated", "w0").is_err());
        assert!(check(&Grant::none(), "example.com/allocated", "w0").is_err());
        for bad in ["", "a b", "-x", "example.com/", "Example.com/x", "/x"] {
            assert!(check(&grant(&["**"]), bad, "v").is_err(), "{bad:?}");
        }
        assert!(check(&g, "example.com/x", "a\0b").is_err());
    }

    #[test]
    fn policy_patterns_cannot_name_reserved_keys() {
        assert_eq!(check_pattern("example.com/*"), Ok(()));
        assert_eq!(check_pattern("*"), Ok(()));
        for bad in [
            "cdi.k8s.io/*",
            "io.kubernetes.*",
            "io.kubernetes.cri-o.Devices",
            "x y",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
