//! Environment variables a guest may set in a container.
//!
//! Some variables are instructions to software outside the workload: the NVIDIA
//! container toolkit gives a container the GPUs `NVIDIA_VISIBLE_DEVICES` names (`all`
//! means every GPU on the node), other vendors' hooks read `*_VISIBLE_DEVICES`, and the
//! dynamic linker loads what `LD_PRELOAD` names and obeys `GLIBC_TUNABLES`. Those are
//! granted only by an exact entry in the policy, never by a wildcard.

use super::Refused;
use crate::grant::{Grant, glob, literal_prefix};

/// Longest variable name.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value (an SR-IOV style `_INFO` JSON for a few dozen devices fits).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Names a wildcard never grants: they steer a container runtime, its hooks or the
/// dynamic linker.
pub const STEERING: &[&str] = &[
    "LD_*",
    "GLIBC_TUNABLES",
    "NVIDIA_*",
    "*_VISIBLE_DEVICES",
    "CUDA_MPS_*",
];

/// Whether `key` steers a runtime or the linker (see [`STEERING`]).
pub fn is_steering(key: &str) -> bool {
    STEERING.iter().any(|p| glob(p, key))
}

/// Checks a policy's env pattern: a variable name, or one with `*` wildcards that does
/// not pretend to grant steering names (they need their exact name).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let name_like = !pattern.is_empty()
        && pattern.len() <= MAX_KEY_BYTES
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*');
    if !name_like {
        return Err(format!(
            "{pattern:?} must be a variable name of [A-Za-z0-9_], with * as a wildcard"
        ));
    }
    if pattern.contains('*') {
        let literal = literal_prefix(pattern);
        let steering_literal = STEERING.iter().any(|s| {
            let s = literal_prefix(s);
            !s.is_empty()
                && (literal.starts_with(s) || (s.starts_with(literal) && !literal.is_empty()))
        }) || pattern.ends_with("_VISIBLE_DEVICES");
        if steering_literal {
            return Err(format!(
                "{pattern:?}: variables that steer the runtime or the linker ({}) are granted by their exact name only",
                STEERING.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks one variable of an answer or a spec against the grant.
pub fn check(grant: &Grant, key: &str, value: &str) -> Result<(), Refused> {
    let valid_name = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(Refused::env(
            key,
            format!(
                "names must be 1-{MAX_KEY_BYTES} characters of [A-Za-z0-9_], not starting with a digit"
            ),
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Refused::env(
            key,
            format!(
                "the value has {} bytes; at most {MAX_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    if value.contains(['\0', '\n', '\r']) {
        return Err(Refused::env(key, "the value contains NUL or a line break"));
    }
    let granted = if is_steering(key) {
        grant.env.iter().any(|p| p == key)
    } else {
        grant.env.iter().any(|p| glob(p, key))
    };
    if granted {
        Ok(())
    } else if is_steering(key) {
        Err(Refused::env(
            key,
            "steers the container runtime or the dynamic linker; only a policy env entry with exactly this name grants it",
        ))
    } else {
        Err(Refused::env(
            key,
            "not granted by the policy's env patterns",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(env: &[&str]) -> Grant {
        Grant {
            env: env.iter().map(|s| s.to_string()).collect(),
            ..Grant::none()
        }
    }

    #[test]
    fn wildcards_grant_ordinary_names_only() {
        let g = grant(&["*", "PCIDEVICE_*"]);
        assert_eq!(check(&g, "PCIDEVICE_RDMA_A", "0000:18:00.0"), Ok(()));
        assert_eq!(check(&g, "WIDGET_IDS", "w0"), Ok(()));
        for steering in [
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "GLIBC_TUNABLES",
            "AMD_VISIBLE_DEVICES",
            "CUDA_MPS_PIPE_DIRECTORY",
        ] {
            let err = check(&g, steering, "all").unwrap_err();
            assert!(err.to_string().contains("exactly this name"), "{err}");
        }
        let exact = grant(&["NVIDIA_VISIBLE_DEVICES"]);
        assert_eq!(check(&exact, "NVIDIA_VISIBLE_DEVICES", "GPU-1"), Ok(()));
        assert!(check(&exact, "NVIDIA_DRIVER_CAPABILITIES", "all").is_err());
        assert!(check(&Grant::none(), "WIDGET_IDS", "w0").is_err());
    }

    #[test]
    fn names_and_values_are_bounded_and_single_line() {
        let g = grant(&["*"]);
        for bad in ["", "A=B", "A B", "1A", "A\0", "Ä"] {
            assert!(check(&g, bad, "x").is_err(), "{bad:?}");
        }
        assert!(check(&g, &"A".repeat(MAX_KEY_BYTES + 1), "x").is_err());
        for bad in ["a\nb", "a\rb", "a\0b"] {
            assert!(check(&g, "A", bad).is_err(), "{bad:?}");
        }
        assert!(check(&g, "A", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert_eq!(check(&g, "A", &"x".repeat(MAX_VALUE_BYTES)), Ok(()));
    }

    #[test]
    fn policy_patterns_cannot_pretend_to_grant_steering_names() {
        for ok in [
            "NVIDIA_VISIBLE_DEVICES",
            "PCIDEVICE_*",
            "*",
            "WIDGET_*",
            "LD_PRELOAD",
        ] {
            assert_eq!(check_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "LD_*",
            "NVIDIA_*",
            "NV*",
            "*_VISIBLE_DEVICES",
            "GLIBC_TUN*",
            "A=B",
            "",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
