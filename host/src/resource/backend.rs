//! The seam between a resource and the vendor logic behind it.

use std::future::Future;
use std::pin::Pin;

use crate::device::{ContainerAllocation, Device, PreferredRequest};
use crate::handout::CdiLedger;
use crate::runtime::{Guest, GuestError};

/// A boxed future, so that [`Backend`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Vendor logic for the resources of one guest. Implemented by [`Guest`]; tests of the
/// resource layer implement it natively.
pub trait Backend: Send + Sync + 'static {
    /// Name used in logs and errors.
    fn name(&self) -> &str;
    /// Why the backend should not be trusted with allocations right now (it keeps
    /// faulting), if so; its devices are then reported unhealthy.
    fn degraded(&self) -> Option<String> {
        None
    }
    /// The CDI devices the backend defined through the host; an answer may name only
    /// those. A backend that writes no specs defines none.
    fn cdi_ledger(&self) -> CdiLedger {
        CdiLedger::default()
    }
    fn list_devices<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Device>, GuestError>>;
    fn allocate<'a>(
        &'a self,
        resource: &'a str,
        containers: Vec<Vec<String>>,
    ) -> BoxFuture<'a, Result<Vec<ContainerAllocation>, GuestError>>;
    fn preferred_allocation<'a>(
        &'a self,
        resource: &'a str,
        request: &'a PreferredRequest,
    ) -> BoxFuture<'a, Result<Vec<String>, GuestError>>;
    fn pre_start<'a>(
        &'a self,
        resource: &'a str,
        ids: Vec<String>,
    ) -> BoxFuture<'a, Result<(), GuestError>>;
    /// Whether the backend wants to hear about released devices.
    fn handles_release(&self) -> bool {
        false
    }
    /// `ids` are no longer assigned to any container.
    fn release<'a>(
        &'a self,
        _resource: &'a str,
        _ids: Vec<String>,
    ) -> BoxFuture<'a, Result<(), GuestError>> {
        Box::pin(async { Ok(()) })
    }
}

impl Backend for Guest {
    fn name(&self) -> &str {
        Guest::name(self)
    }

    fn degraded(&self) -> Option<String> {
        Guest::degraded(self).map(|call| format!("its {call} export keeps faulting"))
    }

    fn cdi_ledger(&self) -> CdiLedger {
        Guest::cdi_ledger(self).clone()
    }

    fn list_devices<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Device>, GuestError>> {
        Box::pin(Guest::list_devices(self, resource))
    }

    fn allocate<'a>(
        &'a self,
        resource: &'a str,
        containers: Vec<Vec<String>>,
    ) -> BoxFuture<'a, Result<Vec<ContainerAllocation>, GuestError>> {
        Box::pin(Guest::allocate(self, resource, containers))
    }

    fn preferred_allocation<'a>(
        &'a self,
        resource: &'a str,
        request: &'a PreferredRequest,
    ) -> BoxFuture<'a, Result<Vec<String>, GuestError>> {
        Box::pin(Guest::preferred_allocation(self, resource, request))
    }

    fn pre_start<'a>(
        &'a self,
        resource: &'a str,
        ids: Vec<String>,
    ) -> BoxFuture<'a, Result<(), GuestError>> {
        Box::pin(Guest::pre_start(self, resource, ids))
    }

    fn handles_release(&self) -> bool {
        Guest::handles_release(self)
    }

    fn release<'a>(
        &'a self,
        resource: &'a str,
        ids: Vec<String>,
    ) -> BoxFuture<'a, Result<(), GuestError>> {
        Box::pin(Guest::release(self, resource, ids))
    }
}
