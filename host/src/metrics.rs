//! Prometheus metrics: what operators watch on every node.
//!
//! One process-wide set (metrics are a cross-cutting concern; every layer records into
//! it and only `ops` reads it). Label values are resource, guest and call names, all
//! bounded by what the operator configured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceHealth {
    pub resource: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceResult {
    pub resource: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestCall {
    pub guest: String,
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestFault {
    pub guest: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestLabel {
    pub guest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 100 µs to ~6.5 s, doubling: guest calls take microseconds, a hung one its deadline.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// `wdp_devices{resource,health}`: devices listed to the kubelet.
    pub devices: Family<ResourceHealth, Gauge>,
    /// `wdp_allocations_total{resource,result}`.
    pub allocations: Family<ResourceResult, Counter>,
    /// `wdp_registrations_total{resource,result}`.
    pub registrations: Family<ResourceResult, Counter>,
    /// `wdp_rpc_duration_seconds{method}`: kubelet RPCs as the host served them.
    pub rpc_seconds: Histograms<Method>,
    /// `wdp_guest_call_duration_seconds{guest,call}`.
    pub guest_call_seconds: Histograms<GuestCall>,
    /// `wdp_guest_faults_total{guest,kind}`: traps and deadlines.
    pub guest_faults: Family<GuestFault, Counter>,
    /// `wdp_reloads_total{result}`: guest updates applied or refused.
    pub reloads: Family<Outcome, Counter>,
    /// `wdp_guest_stuck_threads{guest}`: threads abandoned in a stuck host call.
    pub stuck_threads: Family<GuestLabel, Gauge>,
    /// `wdp_guest_load_failures{guest}`: failed loads in a row (0 once loaded); the
    /// host tries again with back-off.
    pub load_failures: Family<GuestLabel, Gauge>,
    /// `wdp_guest_load_retries_total{guest}`.
    pub load_retries: Family<GuestLabel, Counter>,
    /// `wdp_handouts_refused_total{guest}`: answers and CDI specs refused by the policy.
    pub handouts_refused: Family<GuestLabel, Counter>,
    /// `wdp_kubelet_accepted{resource}`: 1 while the kubelet has accepted the resource
    /// (a mirror of [`crate::readiness`], which holds the state).
    pub accepted: Family<ResourceLabel, Gauge>,
    /// The `call` and `kind` label values recorded per guest, so that a removed guest's
    /// series can all be deleted.
    guest_labels: Mutex<BTreeMap<String, GuestLabels>>,
}

#[derive(Default)]
struct GuestLabels {
    calls: BTreeSet<String>,
    faults: BTreeSet<String>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("wdp");
        let devices = Family::default();
        registry.register(
            "devices",
            "Devices listed to the kubelet, by health",
            devices.clone(),
        );
        let allocations = Family::default();
        registry.register(
            "allocations",
            "Allocate calls answered, by result",
            allocations.clone(),
        );
        let registrations = Family::default();
        registry.register(
            "registrations",
            "Registrations with the kubelet, by result",
            registrations.clone(),
        );
        let rpc_seconds: Histograms<Method> = Family::new_with_constructor(latency);
        registry.register(
            "rpc_duration_seconds",
            "Kubelet RPCs served, by method",
            rpc_seconds.clone(),
        );
        let guest_call_seconds: Histograms<GuestCall> = Family::new_with_constructor(latency);
        registry.register(
            "guest_call_duration_seconds",
            "Calls into guests, by guest and export",
            guest_call_seconds.clone(),
        );
        let guest_faults = Family::default();
        registry.register(
            "guest_faults",
            "Guest traps and deadlines",
            guest_faults.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "reloads",
            "Guest updates, applied or refused",
            reloads.clone(),
        );
        let stuck_threads = Family::default();
        registry.register(
            "guest_stuck_threads",
            "Guest threads abandoned while stuck in a host call past their deadline",
            stuck_threads.clone(),
        );
        let load_failures = Family::default();
        registry.register(
            "guest_load_failures",
            "Failed loads of a guest in a row (0 once loaded); retried with back-off",
            load_failures.clone(),
        );
        let load_retries = Family::default();
        registry.register(
            "guest_load_retries",
            "Loads of a guest tried again after a failure",
            load_retries.clone(),
        );
        let handouts_refused = Family::default();
        registry.register(
            "handouts_refused",
            "Allocation answers and CDI specs refused because the guest's policy does not grant them",
            handouts_refused.clone(),
        );
        let accepted = Family::default();
        registry.register(
            "kubelet_accepted",
            "1 while the kubelet has accepted the resource (registered and ListAndWatch open)",
            accepted.clone(),
        );
        Self {
            registry,
            accepted,
            guest_labels: Mutex::default(),
            stuck_threads,
            load_failures,
            load_retries,
            handouts_refused,
            devices,
            allocations,
            registrations,
            rpc_seconds,
            guest_call_seconds,
            guest_faults,
            reloads,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn set_devices(&self, resource: &str, healthy: usize, unhealthy: usize) {
        for (health, n) in [("Healthy", healthy), ("Unhealthy", unhealthy)] {
            self.devices
                .get_or_create(&ResourceHealth {
                    resource: resource.into(),
                    health: health.into(),
                })
                .set(n as i64);
        }
    }

    pub fn count(&self, family: &Family<ResourceResult, Counter>, resource: &str, ok: bool) {
        family
            .get_or_create(&ResourceResult {
                resource: resource.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn observe_rpc(&self, method: &str, took: Duration) {
        self.rpc_seconds
            .get_or_create(&Method {
                method: method.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn observe_guest_call(&self, guest: &str, call: &str, took: Duration) {
        self.note_guest_label(guest, |l| &mut l.calls, call);
        self.guest_call_seconds
            .get_or_create(&GuestCall {
                guest: guest.into(),
                call: call.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn guest_fault(&self, guest: &str, kind: &str) {
        self.note_guest_label(guest, |l| &mut l.faults, kind);
        self.guest_faults
            .get_or_create(&GuestFault {
                guest: guest.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub fn reload(&self, applied: bool) {
        self.reloads
            .get_or_create(&Outcome {
                result: if applied { "applied" } else { "refused" }.into(),
            })
            .inc();
    }

    pub fn set_load_failures(&self, guest: &str, failures: u32) {
        self.load_failures
            .get_or_create(&GuestLabel {
                guest: guest.into(),
            })
            .set(i64::from(failures));
    }

    pub fn load_retry(&self, guest: &str) {
        self.load_retries
            .get_or_create(&GuestLabel {
                guest: guest.into(),
            })
            .inc();
    }

    /// Deletes the per-guest series of a guest that left the guests directory.
    pub fn forget_guest(&self, guest: &str) {
        let label = GuestLabel {
            guest: guest.into(),
        };
        self.load_failures.remove(&label);
        self.load_retries.remove(&label);
        self.stuck_threads.remove(&label);
        self.handouts_refused.remove(&label);
        let labels = self
            .guest_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(guest)
            .unwrap_or_default();
        for call in labels.calls {
            self.guest_call_seconds.remove(&GuestCall {
                guest: guest.into(),
                call,
            });
        }
        for kind in labels.faults {
            self.guest_faults.remove(&GuestFault {
                guest: guest.into(),
                kind,
            });
        }
    }

    fn note_guest_label(
        &self,
        guest: &str,
        set: impl FnOnce(&mut GuestLabels) -> &mut BTreeSet<String>,
        value: &str,
    ) {
        let mut labels = self.guest_labels.lock().unwrap_or_else(|p| p.into_inner());
        let seen = set(labels.entry(guest.to_owned()).or_default());
        if !seen.contains(value) {
            seen.insert(value.to_owned());
        }
    }

    /// Deletes the per-resource series of a resource no longer served.
    pub fn forget_resource(&self, resource: &str) {
        for health in ["Healthy", "Unhealthy"] {
            self.devices.remove(&ResourceHealth {
                resource: resource.into(),
                health: health.into(),
            });
        }
        for result in ["ok", "error"] {
            let label = ResourceResult {
                resource: resource.into(),
                result: result.into(),
            };
            self.allocations.remove(&label);
            self.registrations.remove(&label);
        }
        self.accepted.remove(&ResourceLabel {
            resource: resource.into(),
        });
    }

    /// Mirrors [`crate::readiness`]: whether the kubelet has accepted `resource`.
    pub fn set_accepted(&self, resource: &str, accepted: bool) {
        self.accepted
            .get_or_create(&ResourceLabel {
                resource: resource.into(),
            })
            .set(i64::from(accepted));
    }

    pub fn set_stuck_threads(&self, guest: &str, stuck: usize) {
        self.stuck_threads
            .get_or_create(&GuestLabel {
                guest: guest.into(),
            })
            .set(stuck as i64);
    }

    pub fn handout_refused(&self, guest: &str) {
        self.handouts_refused
            .get_or_create(&GuestLabel {
                guest: guest.into(),
            })
            .inc();
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
