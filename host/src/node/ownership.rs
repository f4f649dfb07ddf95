//! Who owns a resource name or a CDI kind on this node, decided by the operator's
//! policies and never by the order guests happen to load in.
//!
//! A resource name belongs to the guest whose policy grants it with the longest
//! (most specific) prefix: with `nvidia.com/` for one guest and `nvidia.com/ib` for
//! another, `nvidia.com/ib` is the second's even if the first loads earlier and asks for
//! it. Where two policies grant a name equally specifically, it is contested: neither
//! guest serves it, both are told why, and the operator narrows a policy. A CDI kind
//! granted by two policies is contested the same way (a spec file per kind can have only
//! one writer). Every policy in the guests directory counts, also one whose guest fails
//! to load, so a broken update cannot hand its names to someone else.

use std::collections::BTreeMap;

use super::guests_dir::GuestFiles;
use crate::policy::GuestLimits;
use crate::policy::GuestPolicy;

/// What each guest's policy claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Per guest: resource prefixes and CDI kinds its policy grants.
    by_guest: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

/// Who a resource name belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// One guest's policy grants it most specifically.
    Guest(String),
    /// Several policies grant it with the same prefix: nobody serves it.
    Contested { prefix: String, guests: Vec<String> },
    /// No policy grants it.
    Nobody,
}

impl Claims {
    /// The claims of every guest in the directory with a readable, valid policy.
    pub fn of(guests: &[GuestFiles], limits: &GuestLimits) -> Self {
        let mut claims = Claims::default();
        for files in guests {
            if let Ok(Some(policy)) = GuestPolicy::for_guest(&files.wasm, limits) {
                claims.add(&files.name, &policy);
            }
        }
        claims
    }

    /// Adds `guest`'s policy.
    pub fn add(&mut self, guest: &str, policy: &GuestPolicy) {
        self.by_guest.insert(
            guest.to_owned(),
            (
                policy.grant.resource_prefixes.clone(),
                policy.grant.cdi_kinds.clone(),
            ),
        );
    }

    /// The owner of `resource`.
    pub fn owner_of(&self, resource: &str) -> Owner {
        let mut best: Option<(&str, Vec<&str>)> = None;
        for (guest, (prefixes, _)) in &self.by_guest {
            let Some(prefix) = prefixes
                .iter()
                .filter(|p| resource.starts_with(p.as_str()))
                .max_by_key(|p| p.len())
            else {
                continue;
            };
            match &mut best {
                Some((held, guests)) if held.len() == prefix.len() => guests.push(guest),
                Some((held, _)) if held.len() > prefix.len() => {}
                _ => best = Some((prefix, vec![guest])),
            }
        }
        match best {
            None => Owner::Nobody,
            Some((_, guests)) if guests.len() == 1 => Owner::Guest(guests[0].to_owned()),
            Some((prefix, guests)) => Owner::Contested {
                prefix: prefix.to_owned(),
                guests: guests.into_iter().map(str::to_owned).collect(),
            },
        }
    }

    /// The CDI kinds `guest`'s policy grants that another policy grants too, each with
    /// the other guests.
    pub fn contested_kinds(&self, guest: &str) -> Vec<(String, Vec<String>)> {
        let Some((_, kinds)) = self.by_guest.get(guest) else {
            return Vec::new();
        };
        kinds
            .iter()
            .filter_map(|kind| {
                let others: Vec<String> = self
                    .by_guest
                    .iter()
                    .filter(|(g, (_, k))| g.as_str() != guest && k.contains(kind))
                    .map(|(g, _)| g.clone())
                    .collect();
                (!others.is_empty()).then(|| (kind.clone(), others))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Grant;

    fn policy(prefixes: &[&str], kinds: &[&str]) -> GuestPolicy {
        GuestPolicy {
            grant: Grant {
                resource_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
                cdi_kinds: kinds.iter().map(|s| s.to_string()).collect(),
                ..Grant::none()
            },
            limits: GuestLimits::default(),
        }
    }

    #[test]
    fn the_most_specific_policy_owns_a_name_whatever_the_order() {
        for order in [["gpu", "ib"], ["ib", "gpu"]] {
            let mut claims = Claims::default();
            for guest in order {
                match guest {
                    "gpu" => claims.add("gpu", &policy(&["nvidia.com/"], &[])),
                    _ => claims.add("ib", &policy(&["nvidia.com/ib", "rdma/"], &[])),
                }
            }
            assert_eq!(
                claims.owner_of("nvidia.com/gpu"),
                Owner::Guest("gpu".into())
            );
            assert_eq!(claims.owner_of("nvidia.com/ib"), Owner::Guest("ib".into()));
            assert_eq!(claims.owner_of("rdma/hca"), Owner::Guest("ib".into()));
            assert_eq!(claims.owner_of("amd.com/gpu"), Owner::Nobody);
        }
    }

    #[test]
    fn equal_claims_are_contested_and_reported_for_both() {
        let mut claims = Claims::default();
        claims.add("a", &policy(&["nvidia.com/"], &["nvidia.com/gpu"]));
        claims.add(
            "b",
            &policy(&["nvidia.com/"], &["nvidia.com/gpu", "b.com/x"]),
        );
        assert_eq!(
            claims.owner_of("nvidia.com/gpu"),
            Owner::Contested {
                prefix: "nvidia.com/".into(),
                guests: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            claims.contested_kinds("a"),
            vec![("nvidia.com/gpu".to_string(), vec!["b".to_string()])]
        );
        assert_eq!(claims.contested_kinds("b").len(), 1, "b.com/x is b's alone");
    }
}
