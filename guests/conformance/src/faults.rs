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
    /// Allocate memory until allocation fails (the host's memory limit must stop it).
    Grow,
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
        )
    }

    pub fn breaks_preference(self) -> bool {
        matches!(self, Fault::Outside | Fault::WrongSize)
    }
}

/// Acts out the faults that replace a call's work; answer-breaking ones are left to the
/// export that builds the answer.
pub fn inject(fault: Option<Fault>) -> Result<(), Error> {
    match fault {
        Some(Fault::Error) => Err(Error::Other("injected fault".into())),
        Some(Fault::Trap) => panic!("injected trap"),
        Some(Fault::Loop) => loop {
            core::hint::black_box(());
        },
        Some(Fault::Grow) => grow(),
        _ => Ok(()),
    }
}

/// Holds on to 1 MiB blocks until the allocator fails, which aborts (traps) the instance.
fn grow() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(core::hint::black_box(vec![1u8; 1 << 20]));
        core::hint::black_box(&held);
    }
}
