//! Injected misbehaviour, so host tests can check that each kind is contained.

use serde::Deserialize;

use crate::wdp::device_plugin::types::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Return `other("injected fault")`.
    Error,
    /// Panic, which traps the instance.
    Trap,
    /// Spin forever (the host's deadline must stop it).
    Loop,
    /// Sleep through WASI (an hour, or `sleepMs`): the guest blocks inside a host call
    /// (a poll), where epoch interruption cannot reach; the host must cut the call loose.
    Sleep,
    /// Allocate memory until allocation fails (the host's memory limit must stop it).
    Grow,
    /// Recurse without end (the guest's stack must run out, not the host's).
    Recurse,
    /// Read the configured `probe` path and fail with what the host said (or with
    /// "probe succeeded" when the host let it through).
    Probe,
    // List and allocate: answers too big to accept.
    /// 20,000 devices; or an environment variable of 5 MiB.
    Huge,
    // List only.
    /// The same ID twice.
    DuplicateIds,
    // Allocate only: answers that break the contract.
    /// Device specs with permissions `rwx`.
    BadPermissions,
    /// Device specs with the relative container path `dev/x`.
    RelativePath,
    /// One container answer fewer than requested.
    WrongCount,
    /// The unqualified CDI name `not-qualified`.
    BadCdi,
    /// Device specs whose host path `/dev/does-not-exist` does not exist.
    MissingHostPath,
    /// Device specs handing out `/dev/sda`, a node outside any widget grant.
    ForeignDevice,
    // Preferred allocation only.
    /// An ID that is not among the available ones.
    Outside,
    /// One ID fewer (or more) than requested.
    WrongSize,
}

impl Fault {
    pub fn breaks_allocate(self) -> bool {
        matches!(
            self,
            Fault::BadPermissions
                | Fault::RelativePath
                | Fault::WrongCount
                | Fault::BadCdi
                | Fault::MissingHostPath
                | Fault::ForeignDevice
        )
    }

    pub fn breaks_listing(self) -> bool {
        matches!(self, Fault::DuplicateIds)
    }

    pub fn breaks_preference(self) -> bool {
        matches!(self, Fault::Outside | Fault::WrongSize)
    }
}

/// Acts out the faults that replace a call's work; answer-breaking ones are left to the
/// export that builds the answer.
pub fn inject(fault: Option<Fault>, probe: Option<&str>) -> Result<(), Error> {
    inject_sleeping(fault, probe, None)
}

/// [`inject`], with the sleep's length where the configuration gives one.
pub fn inject_sleeping(
    fault: Option<Fault>,
    probe: Option<&str>,
    sleep_ms: Option<u64>,
) -> Result<(), Error> {
    match fault {
        Some(Fault::Error) => Err(Error::Other("injected fault".into())),
        Some(Fault::Trap) => panic!("injected trap"),
        Some(Fault::Loop) => loop {
            core::hint::black_box(());
        },
        Some(Fault::Sleep) => {
            std::thread::sleep(std::time::Duration::from_millis(
                sleep_ms.unwrap_or(3_600_000),
            ));
            Ok(())
        }
        Some(Fault::Grow) => grow(),
        Some(Fault::Recurse) => {
            recurse(core::hint::black_box(1));
            Ok(())
        }
        Some(Fault::Probe) => {
            let path = probe.unwrap_or("/");
            match crate::wdp::device_plugin::sysfs::read_file(path) {
                Ok(text) => Err(Error::Other(format!(
                    "probe {path} succeeded: {} bytes",
                    text.len()
                ))),
                Err(e) => Err(e),
            }
        }
        _ => Ok(()),
    }
}

/// Recursion the optimiser cannot remove: each frame keeps a live buffer.
#[allow(unconditional_recursion)] // on purpose: the fault is a stack overflow
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    frame[0] + recurse(depth + 1)
}

/// Holds on to 1 MiB blocks until the allocator fails, which aborts (traps) the instance.
fn grow() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(core::hint::black_box(vec![1u8; 1 << 20]));
        core::hint::black_box(&held);
    }
}
