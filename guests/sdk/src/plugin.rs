//! The trait a vendor implements, and the adapter from the generated exports to it.
//!
//! The host calls one instance's exports one at a time and `configure` first, so the
//! guest's state is one value per instance, built by `configure` and lent to every later
//! call. It is kept type-erased because a `static` cannot be generic over the guest type.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::exports::wdp::device_plugin::plugin::Guest;
use crate::types::{ContainerAllocation, Device, Error, PreferredRequest, ResourceSpec};

/// A vendor guest: one value per component instance, built from the operator's
/// configuration. Export it with [`export!`](crate::export).
pub trait Plugin: Sized + 'static {
    /// Builds the guest from the operator's configuration text (empty when there is
    /// none). An error keeps the guest from serving and is shown to the operator.
    fn configure(config: &str) -> Result<Self, Error>;

    /// The extended resources this guest advertises, fixed for the instance's lifetime
    /// (the kubelet registers each resource once).
    fn resources(&self) -> Result<Vec<ResourceSpec>, Error>;

    /// The current devices of `resource`, with health and NUMA nodes.
    fn list_devices(&mut self, resource: &str) -> Result<Vec<Device>, Error>;

    /// One allocation per entry of `containers` (the device IDs each container got),
    /// in the same order.
    fn allocate(
        &mut self,
        resource: &str,
        containers: &[Vec<String>],
    ) -> Result<Vec<ContainerAllocation>, Error>;

    /// Which devices to prefer; called only for resources that advertise
    /// `preferred-allocation-available`.
    fn preferred_allocation(
        &mut self,
        resource: &str,
        request: &PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        let _ = request;
        Err(Error::Other(format!(
            "`{resource}` does not implement preferred allocation"
        )))
    }

    /// Called before each container start; only for resources that advertise
    /// `pre-start-required`.
    fn pre_start(&mut self, resource: &str, device_ids: &[String]) -> Result<(), Error> {
        let _ = (resource, device_ids);
        Ok(())
    }

    /// `device_ids` of `resource` are no longer held by any container. Exported only
    /// with the crate's `release` feature.
    #[cfg(feature = "release")]
    fn release(&mut self, resource: &str, device_ids: &[String]) -> Result<(), Error> {
        let _ = (resource, device_ids);
        Ok(())
    }

    /// Node labels to publish (`prefix/name`, value). Exported only with the crate's
    /// `labels` feature; the host keeps those under prefixes the guest's policy grants.
    #[cfg(feature = "labels")]
    fn labels(&mut self) -> Result<Vec<(String, String)>, Error> {
        Ok(Vec::new())
    }
}

thread_local! {
    /// The value `configure` built; none before it succeeded.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Lends the configured guest to `call`.
fn with<P: Plugin, T>(call: impl FnOnce(&mut P) -> Result<T, Error>) -> Result<T, Error> {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        match state.as_mut().and_then(|s| s.downcast_mut::<P>()) {
            Some(guest) => call(guest),
            None => Err(Error::Other(
                "called before `configure` succeeded: the host must configure first".into(),
            )),
        }
    })
}

/// Implements the generated export traits for a [`Plugin`]; named by [`export!`](crate::export).
#[doc(hidden)]
pub struct Adapter<P>(PhantomData<P>);

impl<P: Plugin> Guest for Adapter<P> {
    fn configure(config: String) -> Result<(), Error> {
        let guest = P::configure(&config)?;
        STATE.with(|state| *state.borrow_mut() = Some(Box::new(guest)));
        Ok(())
    }

    fn resources() -> Result<Vec<ResourceSpec>, Error> {
        with(|guest: &mut P| guest.resources())
    }

    fn list_devices(resource: String) -> Result<Vec<Device>, Error> {
        with(|guest: &mut P| guest.list_devices(&resource))
    }

    fn allocate(
        resource: String,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, Error> {
        with(|guest: &mut P| guest.allocate(&resource, &containers))
    }

    fn preferred_allocation(
        resource: String,
        request: PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        with(|guest: &mut P| guest.preferred_allocation(&resource, &request))
    }

    fn pre_start(resource: String, device_ids: Vec<String>) -> Result<(), Error> {
        with(|guest: &mut P| guest.pre_start(&resource, &device_ids))
    }
}

#[cfg(feature = "release")]
impl<P: Plugin> crate::bindings::exports::wdp::device_plugin::lifecycle::Guest for Adapter<P> {
    fn release(resource: String, device_ids: Vec<String>) -> Result<(), Error> {
        with(|guest: &mut P| guest.release(&resource, &device_ids))
    }
}

#[cfg(feature = "labels")]
impl<P: Plugin> crate::bindings::exports::wdp::device_plugin::node_labels::Guest for Adapter<P> {
    fn labels() -> Result<Vec<(String, String)>, Error> {
        with(|guest: &mut P| guest.labels())
    }
}
