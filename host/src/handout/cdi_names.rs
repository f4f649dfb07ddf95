//! CDI device names in an answer: `vendor.com/class=name`, of a kind the guest's policy
//! grants, defined by a spec the guest wrote through the host.

use super::{CdiLedger, Refused};
use crate::grant::Grant;

/// Checks one CDI name of an answer.
pub fn check(grant: &Grant, ledger: &CdiLedger, name: &str) -> Result<(), Refused> {
    if !is_qualified(name) {
        return Err(Refused::cdi_name(
            name,
            "not a fully qualified name (vendor.com/class=name)",
        ));
    }
    let (kind, device) = name.split_once('=').unwrap_or_default();
    if !grant.allows_cdi_kind(kind) {
        return Err(Refused::cdi_name(
            name,
            format!(
                "kind {} is not among the policy's cdiKinds",
                crate::guest_text::quote(kind)
            ),
        ));
    }
    if !ledger.defines(kind, device) {
        return Err(Refused::cdi_name(
            name,
            "no spec this guest wrote through the host defines it (write the spec before answering)",
        ));
    }
    Ok(())
}

/// `vendor/class=name` as the CDI specification's parser accepts it.
pub fn is_qualified(name: &str) -> bool {
    let Some((kind, device)) = name.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let edge_alnum = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let vendor_ok = vendor
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && edge_alnum(vendor)
        && vendor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let class_ok = class
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && edge_alnum(class)
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    let device_ok = edge_alnum(device)
        && device
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    vendor_ok && class_ok && device_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_fully_qualified() {
        for ok in [
            "nvidia.com/gpu=0",
            "nvidia.com/gpu=GPU-12ab",
            "example.com/widget=a:b",
            "vendor/class=all",
        ] {
            assert!(is_qualified(ok), "{ok}");
        }
        for bad in [
            "gpu0",
            "nvidia.com/gpu",
            "nvidia.com=gpu",
            "/gpu=0",
            "nvidia.com/=0",
            "nvidia.com/gpu=",
            "nvidia.com/g.pu=0",
            "1vendor/gpu=0",
        ] {
            assert!(!is_qualified(bad), "{bad}");
        }
    }

    #[test]
    fn only_granted_kinds_and_devices_the_guest_defined() {
        let grant = Grant {
            cdi_kinds: vec!["example.com/widget".into()],
            ..Grant::none()
        };
        let ledger = CdiLedger::default();
        assert!(
            check(&grant, &ledger, "example.com/widget=w0").is_err(),
            "not written yet"
        );
        ledger.record("example.com/widget", ["w0".to_string()]);
        assert_eq!(check(&grant, &ledger, "example.com/widget=w0"), Ok(()));
        let foreign = check(&grant, &ledger, "nvidia.com/gpu=all").unwrap_err();
        assert!(foreign.to_string().contains("cdiKinds"), "{foreign}");
        assert!(check(&grant, &ledger, "example.com/widget=all").is_err());
        assert!(check(&grant, &ledger, "widget").is_err());
    }
}
