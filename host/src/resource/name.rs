//! Extended resource names, validated exactly as the kubelet does in `Register`
//! (`IsExtendedResourceName`), so an invalid name is refused here, with a reason,
//! before anything is registered.

use thiserror::Error;

/// Why a resource name cannot be registered.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("resource name {name:?} is not a valid extended resource name: {reason}")]
pub struct InvalidResourceName {
    pub name: String,
    pub reason: &'static str,
}

/// Checks `name` the way the kubelet's `IsExtendedResourceName` does:
/// `domain/name`, outside the `kubernetes.io/` namespace, not starting with `requests.`,
/// and `requests.<name>` a qualified name (DNS-1123 subdomain prefix of at most 253
/// characters, a name of at most 63 `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`).
pub fn validate(name: &str) -> Result<(), InvalidResourceName> {
    let fail = |reason| {
        Err(InvalidResourceName {
            name: crate::guest_text::clean_to(name, crate::guest_text::MAX_NAME_BYTES),
            reason,
        })
    };
    if !name.contains('/') {
        return fail("it needs a domain prefix, as in vendor.com/device");
    }
    if name.contains("kubernetes.io/") {
        return fail("the kubernetes.io/ namespace is reserved for native resources");
    }
    if name.starts_with("requests.") {
        return fail("it must not start with requests.");
    }
    let quota = format!("requests.{name}");
    let mut parts = quota.split('/');
    let (Some(prefix), Some(local), None) = (parts.next(), parts.next(), parts.next()) else {
        return fail("it must contain exactly one /");
    };
    if !is_dns1123_subdomain(prefix) {
        return fail("the prefix must be a lowercase DNS subdomain of at most 253 characters");
    }
    if !is_qualified_local_name(local) {
        return fail(
            "the name after / must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        );
    }
    Ok(())
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

fn is_qualified_local_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_what_the_kubelet_accepts() {
        for ok in [
            "nvidia.com/gpu",
            "example.com/foo",
            "vendor.io/gpu-mig.1g",
            "rdma/hca_shared_devices_a",
            "nvidia.com/gpu.shared",
            "a/B",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_the_kubelet_refuses() {
        for bad in [
            "gpu",
            "kubernetes.io/gpu",
            "foo.kubernetes.io/gpu",
            "requests.example.com/gpu",
            "Example.com/gpu",
            "example.com/",
            "/gpu",
            "example.com/gpu/x",
            "example.com/-gpu",
            "example.com/gpu-",
            "exa mple.com/gpu",
            &format!("example.com/{}", "a".repeat(64)),
            &format!("{}.com/gpu", "a".repeat(250)),
        ] {
            assert!(validate(bad).is_err(), "{bad} should be refused");
        }
    }
}
