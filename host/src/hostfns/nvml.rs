//! `nvml` interface: the host's latest NVML reading and the critical events since this
//! guest's previous read, for guests granted `nvml`.
//!
//! Nothing here calls NVML: [`crate::nvml`] reads it on its own thread, so these calls
//! answer at once whatever the driver is doing.

use std::sync::atomic::Ordering;

use super::NodeAccess;
use crate::nvml::{self as node_nvml, Answer};
use crate::wit::latest::nvml::{Event, EventKind, Gpu, Host, MigDevice, MigMode, Nvlink, System};
use crate::wit::latest::types::Error as WitError;

impl Host for NodeAccess {
    fn devices(&mut self) -> Result<Option<System>, WitError> {
        self.check_nvml_grant()?;
        match self.nvml.current() {
            Answer::Unavailable => Ok(None),
            Answer::Failed(reason) => Err(WitError::Io(reason)),
            Answer::Current(reading) => Ok(Some(system(&reading))),
        }
    }

    fn read_events(&mut self) -> Result<Vec<Event>, WitError> {
        self.check_nvml_grant()?;
        let cursor = self.nvml_events_next.load(Ordering::Relaxed);
        let batch = self.nvml.events().since(cursor);
        if batch.missed > 0 {
            tracing::warn!(
                guest = %self.guest(),
                missed = batch.missed,
                "the guest fell behind NVML's events and missed some; their GPUs may still need attention (see earlier event logs)"
            );
        }
        self.nvml_events_next.store(batch.next, Ordering::Relaxed);
        Ok(batch.events.iter().map(event).collect())
    }
}

impl NodeAccess {
    fn check_nvml_grant(&self) -> Result<(), WitError> {
        if self.grant().nvml {
            Ok(())
        } else {
            Err(WitError::Denied(format!(
                "guest {} is not granted NVML (nvml)",
                self.guest()
            )))
        }
    }
}

fn system(r: &node_nvml::Reading) -> System {
    System {
        driver_version: r.driver_version.clone(),
        cuda_version: r.cuda_version,
        gpus: r.gpus.iter().map(gpu).collect(),
    }
}

fn gpu(g: &node_nvml::Gpu) -> Gpu {
    Gpu {
        index: g.index,
        uuid: g.uuid.clone(),
        minor: g.minor,
        pci_address: g.pci_address.clone(),
        name: g.name.clone(),
        memory_mib: g.memory_mib,
        compute_capability: g.compute_capability,
        mig_mode: match g.mig_mode {
            node_nvml::MigMode::Unsupported => MigMode::Unsupported,
            node_nvml::MigMode::Disabled => MigMode::Disabled,
            node_nvml::MigMode::Enabled => MigMode::Enabled,
        },
        mig_devices: g
            .mig_devices
            .iter()
            .map(|m| MigDevice {
                uuid: m.uuid.clone(),
                profile: m.profile.clone(),
                gpu_instance_id: m.gpu_instance_id,
                compute_instance_id: m.compute_instance_id,
                gpu_slices: m.gpu_slices,
                compute_slices: m.compute_slices,
                memory_mib: m.memory_mib,
                multiprocessors: m.multiprocessors,
            })
            .collect(),
        nvlinks: g
            .nvlinks
            .iter()
            .map(|l| Nvlink {
                link: l.link,
                remote_pci_address: l.remote_pci_address.clone(),
            })
            .collect(),
    }
}

fn event(e: &node_nvml::Event) -> Event {
    Event {
        kind: match e.kind {
            node_nvml::EventKind::Xid => EventKind::Xid,
            node_nvml::EventKind::DoubleBitEcc => EventKind::DoubleBitEcc,
        },
        gpu_uuid: e.gpu_uuid.clone(),
        gpu_instance_id: e.gpu_instance_id,
        compute_instance_id: e.compute_instance_id,
        data: e.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Grant;
    use std::sync::Arc;

    fn access(nvml: bool) -> NodeAccess {
        let grant = Grant {
            nvml,
            ..Grant::none()
        };
        NodeAccess::new("t", "/nonexistent", Arc::new(grant), "/var/run/cdi")
    }

    #[test]
    fn needs_the_grant_and_says_unavailable_without_a_library() {
        assert!(matches!(access(false).devices(), Err(WitError::Denied(_))));
        assert!(matches!(
            access(false).read_events(),
            Err(WitError::Denied(_))
        ));
        let mut a = access(true).with_nvml(node_nvml::Nvml::unavailable("no library"));
        assert!(a.devices().unwrap().is_none());
        assert!(a.read_events().unwrap().is_empty());
    }

    #[test]
    fn events_are_handed_to_each_guest_once_and_survive_rebuilds() {
        let nvml = node_nvml::Nvml::unavailable("events only");
        let mut a = access(true).with_nvml(nvml.clone());
        let mut b = access(true).with_nvml(nvml.clone());
        nvml.events().push(node_nvml::Event {
            kind: node_nvml::EventKind::Xid,
            gpu_uuid: "GPU-1".into(),
            gpu_instance_id: Some(1),
            compute_instance_id: Some(0),
            data: 48,
        });
        let first = a.read_events().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].data, 48);
        assert_eq!(first[0].gpu_instance_id, Some(1));
        // A rebuilt instance of the same guest shares the cursor.
        assert!(a.clone().read_events().unwrap().is_empty());
        // Another guest reads it too.
        assert_eq!(b.read_events().unwrap().len(), 1);
    }
}
