//! Node labels a guest proposes, held to its policy before the host writes them where
//! Node Feature Discovery turns them into labels on the Node object.
//!
//! A label steers the scheduler (node selectors, affinities) and can be matched by
//! admission or security tooling, so it is a hand-out like an env var: only names under
//! a prefix the operator granted, only what Kubernetes accepts as a label (checked here,
//! so a newline can never smuggle a second line, or an NFD directive, into the feature
//! file), never a name in the `kubernetes.io`/`k8s.io` namespaces, which belong to
//! Kubernetes itself (`node-role.kubernetes.io/…`, `node-restriction.kubernetes.io/…`).

use std::collections::BTreeMap;

/// Labels one guest may publish.
pub const MAX_LABELS: usize = 256;
/// Longest name part and value, as Kubernetes allows.
const MAX_NAME: usize = 63;
/// Longest prefix (a DNS subdomain).
const MAX_PREFIX: usize = 253;
/// Namespaces that belong to Kubernetes; never granted.
const RESERVED: [&str; 2] = ["kubernetes.io", "k8s.io"];

/// Checks a `labelPrefixes` entry of a policy: `domain/` or `domain/name-start`.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let Some((domain, rest)) = prefix.split_once('/') else {
        return Err(format!(
            "{prefix:?} must be a DNS domain and a slash, e.g. \"example.com/\""
        ));
    };
    check_domain(domain).map_err(|e| format!("{prefix:?}: {e}"))?;
    if rest.contains('/') || !rest.chars().all(name_char) {
        return Err(format!(
            "{prefix:?}: after the slash only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// The labels a guest may publish, sorted by name, and a reason for each one refused.
pub fn check(proposed: Vec<(String, String)>, grant: &crate::grant::Grant) -> Checked {
    let mut accepted = BTreeMap::new();
    let mut refused = Vec::new();
    for (key, value) in proposed {
        let shown = crate::guest_text::clean_to(&key, 80);
        let verdict = check_key(&key)
            .and_then(|()| check_value(&value))
            .and_then(|()| {
                if grant.allows_label(&key) {
                    Ok(())
                } else {
                    Err("outside the label prefixes the policy grants (labelPrefixes)".into())
                }
            })
            .and_then(|()| {
                if accepted.contains_key(&key) {
                    Err("given twice".into())
                } else if accepted.len() == MAX_LABELS {
                    Err(format!("more than {MAX_LABELS} labels"))
                } else {
                    Ok(())
                }
            });
        match verdict {
            Ok(()) => {
                accepted.insert(key, value);
            }
            Err(reason) => refused.push(format!("label {shown:?}: {reason}")),
        }
    }
    Checked { accepted, refused }
}

/// The outcome of [`check`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub accepted: BTreeMap<String, String>,
    /// Why each refused label was refused, for the operator (guest text sanitised).
    pub refused: Vec<String>,
}

/// `prefix/name` with a DNS-subdomain prefix outside Kubernetes' namespaces.
fn check_key(key: &str) -> Result<(), String> {
    let Some((prefix, name)) = key.split_once('/') else {
        return Err("needs a prefix (`vendor.com/name`)".into());
    };
    check_domain(prefix)?;
    check_name_or_value(name, "name")?;
    if name.is_empty() {
        return Err("empty name".into());
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), String> {
    check_name_or_value(value, "value")
}

/// Kubernetes' rule for label names and values: at most 63 characters, alphanumerics,
/// '-', '_' and '.', beginning and ending alphanumeric (a value may be empty).
fn check_name_or_value(text: &str, what: &str) -> Result<(), String> {
    if text.len() > MAX_NAME {
        return Err(format!("{what} longer than {MAX_NAME} characters"));
    }
    if !text.chars().all(name_char) {
        return Err(format!(
            "{what} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !edge_ok(text.chars().next()) || !edge_ok(text.chars().last()) {
        return Err(format!("{what} must begin and end with a letter or digit"));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A lower-case DNS subdomain, not Kubernetes' own.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > MAX_PREFIX {
        return Err(format!(
            "prefix must be a DNS domain of 1 to {MAX_PREFIX} characters"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !domain.split('.').all(label_ok) {
        return Err(format!("prefix {domain:?} is not a lower-case DNS domain"));
    }
    if RESERVED
        .iter()
        .any(|r| domain == *r || domain.ends_with(&format!(".{r}")))
    {
        return Err(format!(
            "prefix {domain:?} belongs to Kubernetes (kubernetes.io, k8s.io)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Grant;

    fn grant(prefixes: &[&str]) -> Grant {
        Grant {
            label_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            ..Grant::none()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_newline_cannot_add_a_line_to_the_feature_file() {
        let c = check(
            labels(&[
                (
                    "nvidia.com/gpu.product",
                    "H100\nfeature.node.kubernetes.io/x=true",
                ),
                ("nvidia.com/gpu.count\nnvidia.com/evil", "1"),
                ("nvidia.com/a=b", "c"),
                ("# +expiry-time", "2030-01-01T00:00:00Z"),
            ]),
            &grant(&["nvidia.com/"]),
        );
        assert!(c.accepted.is_empty(), "{:?}", c.accepted);
        assert_eq!(c.refused.len(), 4);
        assert!(
            c.refused.iter().all(|r| !r.contains('\n')),
            "{:?}",
            c.refused
        );
    }

    #[test]
    fn only_granted_prefixes_and_never_kubernetes_namespaces() {
        let c = check(
            labels(&[
                ("nvidia.com/gpu.count", "8"),
                ("amd.com/gpu.count", "8"),
                ("node-role.kubernetes.io/control-plane", ""),
                ("nvidia.com.evil.io/x", "1"),
            ]),
            &grant(&["nvidia.com/"]),
        );
        assert_eq!(
            c.accepted.keys().collect::<Vec<_>>(),
            vec!["nvidia.com/gpu.count"]
        );
        assert_eq!(c.refused.len(), 3, "{:?}", c.refused);
        // A prefix that ends inside a name restricts names too.
        let c = check(
            labels(&[
                ("nvidia.com/gpu.count", "8"),
                ("nvidia.com/mig.strategy", "single"),
            ]),
            &grant(&["nvidia.com/gpu."]),
        );
        assert_eq!(c.accepted.len(), 1);
        assert!(check_prefix("node-role.kubernetes.io/").is_err());
        assert!(check_prefix("x.k8s.io/").is_err());
        assert!(check_prefix("nvidia.com").is_err());
        assert!(check_prefix("Nvidia.com/").is_err());
        assert!(check_prefix("nvidia.com/gpu.").is_ok());
    }

    #[test]
    fn values_and_names_follow_kubernetes_rules() {
        let long = "x".repeat(64);
        let c = check(
            labels(&[
                ("nvidia.com/ok", "NVIDIA-H100-80GB-HBM3"),
                ("nvidia.com/empty", ""),
                ("nvidia.com/space", "NVIDIA H100"),
                ("nvidia.com/edge", "-x"),
                ("nvidia.com/long", &long),
                ("nvidia.com/ok", "again"),
                ("nvidia.com/", "x"),
                ("nvidia.com/ünï", "x"),
            ]),
            &grant(&["nvidia.com/"]),
        );
        assert_eq!(
            c.accepted.keys().collect::<Vec<_>>(),
            vec!["nvidia.com/empty", "nvidia.com/ok"]
        );
        assert_eq!(c.accepted["nvidia.com/ok"], "NVIDIA-H100-80GB-HBM3");
        assert_eq!(c.refused.len(), 6, "{:?}", c.refused);
    }

    #[test]
    fn a_flood_is_cut_at_the_limit() {
        let many: Vec<(String, String)> = (0..MAX_LABELS + 5)
            .map(|i| (format!("nvidia.com/l{i}"), "1".into()))
            .collect();
        let c = check(many, &grant(&["nvidia.com/"]));
        assert_eq!(c.accepted.len(), MAX_LABELS);
        assert_eq!(c.refused.len(), 5);
    }
}
