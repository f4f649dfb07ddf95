//! A resource's device list at one moment, checked and indexed.

use std::collections::HashMap;

use thiserror::Error;

use crate::device::{Device, Health};

/// The kubelet's proto comment limits device IDs to 63 characters.
pub const MAX_ID_LEN: usize = 63;

/// Why a guest's device list was refused (the previous snapshot stays in force).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("device ID {0:?} appears more than once")]
    Duplicate(String),
    #[error(
        "device ID {0:?} is empty, longer than 63 characters or contains whitespace/control characters"
    )]
    BadId(String),
    #[error("{count} devices exceed the limit of {limit} per resource")]
    TooMany { count: usize, limit: usize },
}

/// A checked device list: unique, well-formed IDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    devices: Vec<Device>,
    index: HashMap<String, usize>,
}

impl Snapshot {
    /// Checks `devices`; NUMA lists are sorted and deduplicated so that comparisons see
    /// only real changes.
    pub fn new(mut devices: Vec<Device>, limit: usize) -> Result<Self, SnapshotError> {
        if devices.len() > limit {
            return Err(SnapshotError::TooMany {
                count: devices.len(),
                limit,
            });
        }
        let mut index = HashMap::with_capacity(devices.len());
        for (i, device) in devices.iter_mut().enumerate() {
            if device.id.is_empty()
                || device.id.len() > MAX_ID_LEN
                || device
                    .id
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SnapshotError::BadId(crate::guest_text::clean_to(
                    &device.id,
                    crate::guest_text::MAX_NAME_BYTES,
                )));
            }
            if index.insert(device.id.clone(), i).is_some() {
                return Err(SnapshotError::Duplicate(device.id.clone())); // a valid ID: short, no controls
            }
            device.numa_nodes.sort_unstable();
            device.numa_nodes.dedup();
        }
        Ok(Self { devices, index })
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn get(&self, id: &str) -> Option<&Device> {
        self.index.get(id).map(|&i| &self.devices[i])
    }

    /// The same snapshot with every device unhealthy (used while the guest is failing:
    /// devices stay visible, so capacity holds, but none is allocatable).
    pub fn all_unhealthy(&self) -> Self {
        let mut out = self.clone();
        for device in &mut out.devices {
            device.health = Health::Unhealthy;
        }
        out
    }

    /// True when the kubelet would see a difference (order does not matter to it).
    pub fn differs_from(&self, other: &Snapshot) -> bool {
        self.devices.len() != other.devices.len()
            || self.devices.iter().any(|d| other.get(&d.id) != Some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, health: Health, numa: &[u32]) -> Device {
        Device {
            id: id.into(),
            health,
            numa_nodes: numa.to_vec(),
        }
    }

    #[test]
    fn refuses_duplicates_and_bad_ids() {
        let dup = vec![
            dev("a", Health::Healthy, &[]),
            dev("a", Health::Unhealthy, &[]),
        ];
        assert_eq!(
            Snapshot::new(dup, 10),
            Err(SnapshotError::Duplicate("a".into()))
        );
        for bad in ["", "a b", &"x".repeat(64)] {
            assert!(matches!(
                Snapshot::new(vec![dev(bad, Health::Healthy, &[])], 10),
                Err(SnapshotError::BadId(_))
            ));
        }
        let many = (0..11)
            .map(|i| dev(&i.to_string(), Health::Healthy, &[]))
            .collect();
        assert!(matches!(
            Snapshot::new(many, 10),
            Err(SnapshotError::TooMany { .. })
        ));
    }

    #[test]
    fn differs_only_on_real_changes() {
        let a = Snapshot::new(
            vec![
                dev("a", Health::Healthy, &[1, 0]),
                dev("b", Health::Healthy, &[]),
            ],
            10,
        )
        .unwrap();
        let reordered = Snapshot::new(
            vec![
                dev("b", Health::Healthy, &[]),
                dev("a", Health::Healthy, &[0, 1]),
            ],
            10,
        )
        .unwrap();
        assert!(!a.differs_from(&reordered));
        let flipped = Snapshot::new(
            vec![
                dev("a", Health::Unhealthy, &[0, 1]),
                dev("b", Health::Healthy, &[]),
            ],
            10,
        )
        .unwrap();
        assert!(a.differs_from(&flipped));
        let fewer = Snapshot::new(vec![dev("a", Health::Healthy, &[0, 1])], 10).unwrap();
        assert!(a.differs_from(&fewer));
        assert!(
            a.all_unhealthy()
                .devices()
                .iter()
                .all(|d| d.health == Health::Unhealthy)
        );
    }
}
