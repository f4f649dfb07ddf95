//! What an operator relies on in a rendered DaemonSet of the host.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The container that runs the host.
pub const CONTAINER: &str = "wasm-device-plugin";

/// The flags of `wasm-device-plugin run` (host/src/args.rs: `NodeArgs` and `RunArgs`,
/// plus the global `--log-format` and `--config` of host/src/main.rs), and whether each
/// takes a value. Kept by hand rather than parsed from `run --help`, which would need the
/// binary built in this test; tests/manifests.rs compares it with the fields in
/// host/src/args.rs, so a flag added, renamed or removed there fails until it is
/// changed here too (and in the manifests).
pub const RUN_FLAGS: &[(&str, bool)] = &[
    ("--host-root", true),
    ("--guests-dir", true),
    ("--device-plugin-dir", true),
    ("--rescan-seconds", true),
    ("--reload-seconds", true),
    ("--cache-dir", true),
    ("--cache-max-mib", true),
    ("--compile-timeout-seconds", true),
    ("--compile-memory-mib", true),
    ("--trusted-keys", true),
    ("--registration", true),
    ("--plugins-registry-dir", true),
    ("--pod-resources-socket", true),
    ("--release-poll-seconds", true),
    ("--no-release-detection", false),
    ("--simulated-node", false),
    ("--cdi-dir", true),
    ("--nvml-library", true),
    ("--features-dir", true),
    ("--metrics-addr", true),
    ("--log-format", true),
    ("--config", true),
];

/// Defaults of the flags these checks read (host/src/main.rs).
const DEFAULTS: &[(&str, &str)] = &[
    ("--host-root", "/"),
    ("--guests-dir", "/etc/wasm-device-plugin/guests"),
    ("--device-plugin-dir", "/var/lib/kubelet/device-plugins"),
    (
        "--pod-resources-socket",
        "/var/lib/kubelet/pod-resources/kubelet.sock",
    ),
    ("--cdi-dir", "/var/run/cdi"),
    (
        "--features-dir",
        "/etc/kubernetes/node-feature-discovery/features.d",
    ),
    ("--metrics-addr", "0.0.0.0:9464"),
    ("--nvml-library", "auto"),
];

/// The node paths a DaemonSet of the host may mount, and whether the mount may be
/// writable: the kubelet's device-plugin directory (sockets), the CDI directory (specs)
/// and Node Feature Discovery's features.d (node labels) are; `/sys` only in a variant
/// for guests granted sysfs writes. The NVIDIA driver's library directories (the nvml
/// overlay: `--nvml-library auto` finds `libnvidia-ml.so.1` there) are never writable.
pub const HOST_PATHS: &[(&str, bool)] = &[
    ("/var/lib/kubelet/device-plugins", true),
    ("/var/lib/kubelet/pod-resources", false),
    ("/sys", true),
    ("/proc", false),
    ("/dev", false),
    ("/var/run/cdi", true),
    ("/etc/kubernetes/node-feature-discovery/features.d", true),
    ("/usr/lib/x86_64-linux-gnu", false),
    ("/run/nvidia/driver", false),
];

/// Node directories the nvml overlay mounts for `--nvml-library auto`: each must be one
/// the host searches (host/src/nvml/mod.rs, `SEARCH_DIRS`), or the mount gives nothing.
/// `/run/nvidia/driver` is the GPU operator's driver root: the host searches its
/// `usr/lib/x86_64-linux-gnu` and `usr/lib64`.
pub const NVML_SEARCH_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib64",
    "/run/nvidia/driver/usr/lib/x86_64-linux-gnu",
    "/run/nvidia/driver/usr/lib64",
    "/usr/local/nvidia/lib64",
];

/// The parsed `run` arguments: flag to value (`""` for a switch).
pub fn run_args(container: &Container) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut errors = Vec::new();
    if container.command.is_some() {
        errors.push("`command` is set: the image's entrypoint is the host".into());
    }
    let args = container.args.clone().unwrap_or_default();
    if args.first().map(String::as_str) != Some("run") {
        errors.push(format!("args must start with `run`, not {args:?}"));
    }
    let mut parsed = BTreeMap::new();
    for arg in args.iter().skip(1) {
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (arg.as_str(), None),
        };
        match RUN_FLAGS.iter().find(|(f, _)| *f == flag) {
            None => errors.push(format!(
                "{arg}: `wasm-device-plugin run` has no flag {flag} (deploy/tests/src/daemonset.rs lists them)"
            )),
            Some((_, true)) if value.is_none_or(str::is_empty) => {
                errors.push(format!("{arg}: write it as {flag}=VALUE"));
            }
            Some((_, false)) if value.is_some() => {
                errors.push(format!("{arg}: {flag} takes no value"));
            }
            Some(_) => {
                if parsed
                    .insert(flag.to_owned(), value.unwrap_or("").to_owned())
                    .is_some()
                {
                    errors.push(format!("{flag} is given twice"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

fn flag(args: &BTreeMap<String, String>, name: &str) -> String {
    args.get(name).cloned().unwrap_or_else(|| {
        DEFAULTS
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, d)| d.to_string())
            .unwrap_or_default()
    })
}

/// `root` joined with the absolute node path `node`.
fn under(root: &str, node: &str) -> String {
    let joined = Path::new(root).join(node.trim_start_matches('/'));
    joined.display().to_string()
}

/// Every broken promise of one DaemonSet, as messages.
pub fn check(ds: &DaemonSet) -> Vec<String> {
    let mut errors = Vec::new();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let mut err = |m: String| errors.push(format!("DaemonSet {name}: {m}"));
    let Some(spec) = &ds.spec else {
        err("no spec".into());
        return errors;
    };
    let Some(pod) = &spec.template.spec else {
        err("no pod spec".into());
        return errors;
    };

    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        if template_labels.and_then(|l| l.get(k)) != Some(v) {
            err(format!("selector {k}={v} does not select the pod template"));
        }
    }
    if pod.priority_class_name.as_deref() != Some("system-node-critical") {
        err("priorityClassName must be system-node-critical".into());
    }
    if pod.service_account_name.is_none() {
        err("no serviceAccountName".into());
    }
    if pod.automount_service_account_token != Some(false) {
        err(
            "automountServiceAccountToken must be false: the host never calls the API server"
                .into(),
        );
    }
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        err("hostNetwork/hostPID/hostIPC are not needed: the kubelet API is unix sockets".into());
    }
    let tolerates_gpu = pod.tolerations.iter().flatten().any(|t| {
        t.key.as_deref() == Some("nvidia.com/gpu") && t.operator.as_deref() == Some("Exists")
    });
    if !tolerates_gpu {
        err("must tolerate the nvidia.com/gpu taint, as NVIDIA's chart does".into());
    }
    if pod.node_selector.is_none()
        && pod
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .is_none()
    {
        err("no node selection: the host belongs on GPU/NIC nodes only".into());
    }
    if pod.init_containers.is_some() {
        err("no init containers are expected".into());
    }

    let containers: Vec<&Container> = pod.containers.iter().collect();
    let [container] = containers.as_slice() else {
        err(format!(
            "expected one container, found {}",
            containers.len()
        ));
        return errors;
    };
    if container.name != CONTAINER {
        err(format!(
            "the container is named {CONTAINER}, not {}",
            container.name
        ));
    }
    if container.image.as_deref().is_none_or(str::is_empty) {
        err("no image".into());
    }
    for e in container.env.iter().flatten() {
        if e.name.starts_with("WDP_") {
            err(format!(
                "env {}: pass the host's settings as args, where these checks see them",
                e.name
            ));
        }
    }
    let args = match run_args(container) {
        Ok(args) => args,
        Err(es) => {
            es.into_iter().for_each(&mut err);
            return errors;
        }
    };
    errors.extend(check_mounts(&name, pod, container, &args));
    if args.contains_key("--config") {
        errors.push(format!(
            "DaemonSet {name}: --config: settings in a file are invisible to these checks; pass flags"
        ));
    }
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    errors.extend(check_probes(&name, container, &args, &annotations));
    errors.extend(check_resources(&name, container));
    errors.extend(check_security(&name, pod, container));
    errors
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Volume> {
    pod.volumes.iter().flatten().find(|v| v.name == name)
}

/// The mounts, volumes and path flags agree with each other and with [`HOST_PATHS`].
fn check_mounts(
    name: &str,
    pod: &PodSpec,
    container: &Container,
    args: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut err = |m: String| errors.push(format!("DaemonSet {name}: {m}"));
    let mounts: Vec<&VolumeMount> = container.volume_mounts.iter().flatten().collect();
    let mount_at = |path: &str| mounts.iter().copied().find(|m| m.mount_path == path);

    for v in pod.volumes.iter().flatten() {
        let kinds = [
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.empty_dir.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            err(format!(
                "volume {}: only hostPath, configMap and emptyDir volumes are expected",
                v.name
            ));
        }
        if let Some(hp) = &v.host_path
            && !HOST_PATHS.iter().any(|(p, _)| *p == hp.path)
        {
            err(format!(
                "volume {}: hostPath {} is not one the host needs ({})",
                v.name,
                hp.path,
                HOST_PATHS
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !mounts.iter().any(|m| m.name == v.name) {
            err(format!("volume {} is never mounted", v.name));
        }
    }
    for m in &mounts {
        if m.sub_path.is_some() || m.sub_path_expr.is_some() {
            err(format!(
                "mount {}: subPath: a subPath mount never sees ConfigMap updates; mount the whole volume",
                m.mount_path
            ));
        }
        let Some(v) = volume(pod, &m.name) else {
            err(format!("mount {}: no volume {}", m.mount_path, m.name));
            continue;
        };
        if let Some(hp) = &v.host_path {
            let writable = m.read_only != Some(true);
            if writable && !HOST_PATHS.iter().any(|(p, w)| *p == hp.path && *w) {
                err(format!(
                    "mount {}: {} must be read-only",
                    m.mount_path, hp.path
                ));
            }
        }
    }

    // The node's /sys, /proc, /dev and the CDI directory, under --host-root.
    let host_root = flag(args, "--host-root");
    if host_root == "/" {
        err(
            "--host-root=/ inside a container would read the container's /sys, /proc and /dev"
                .into(),
        );
    }
    let cdi = flag(args, "--cdi-dir");
    for node in ["/sys", "/proc", "/dev", cdi.as_str()] {
        let at = under(&host_root, node);
        match mount_at(&at).and_then(|m| volume(pod, &m.name).map(|v| (m, v))) {
            Some((m, v)) => {
                if v.host_path.as_ref().map(|h| h.path.as_str()) != Some(node) {
                    err(format!(
                        "{at} must be the node's {node} (a hostPath volume)"
                    ));
                }
                if node != cdi && node != "/sys" && m.read_only != Some(true) {
                    err(format!("{at} must be read-only"));
                }
            }
            None => err(format!(
                "--host-root={host_root}: nothing is mounted at {at} (the node's {node})"
            )),
        }
    }
    // Every hostPath mounted under the host root is at host root + its node path.
    for m in &mounts {
        if let Some(hp) = volume(pod, &m.name).and_then(|v| v.host_path.as_ref()) {
            let expected_in_root = under(&host_root, &hp.path);
            let kubelet_path = hp.path.starts_with("/var/lib/kubelet/");
            if kubelet_path && m.mount_path != hp.path {
                err(format!(
                    "{} must be mounted at its node path (the kubelet and the host must agree on socket paths), not {}",
                    hp.path, m.mount_path
                ));
            }
            if !kubelet_path && m.mount_path != expected_in_root {
                err(format!(
                    "{} is mounted at {}, not at {expected_in_root} where --host-root={host_root} resolves it",
                    hp.path, m.mount_path
                ));
            }
        }
    }

    // Node Feature Discovery's features.d, under the host root like the CDI directory:
    // without the mount the host would write the label files into the container's
    // (read-only) root, and NFD would never see them.
    let features = flag(args, "--features-dir");
    if features != "off" {
        let at = under(&host_root, &features);
        match mount_at(&at).and_then(|m| volume(pod, &m.name).map(|v| (m, v))) {
            Some((m, v)) => {
                if v.host_path.as_ref().map(|h| h.path.as_str()) != Some(features.as_str()) {
                    err(format!(
                        "{at} must be the node's {features} (a hostPath volume)"
                    ));
                }
                let privileged = container
                    .security_context
                    .as_ref()
                    .and_then(|s| s.privileged)
                    == Some(true);
                if privileged && m.read_only == Some(true) {
                    err(format!(
                        "{at} is read-only: a privileged variant publishes guests' node labels there (--features-dir=off to publish none)"
                    ));
                }
            }
            None => err(format!(
                "--features-dir={features}: nothing is mounted at {at} (the node's {features}); mount it or pass --features-dir=off"
            )),
        }
    }
    // The NVIDIA driver's library directories: only where the host looks for NVML, and
    // only when it looks (`--nvml-library auto`, the default).
    for m in &mounts {
        let Some(hp) = volume(pod, &m.name).and_then(|v| v.host_path.as_ref()) else {
            continue;
        };
        if hp.path != "/usr/lib/x86_64-linux-gnu" && hp.path != "/run/nvidia/driver" {
            continue;
        }
        let searched = NVML_SEARCH_DIRS
            .iter()
            .any(|d| *d == hp.path || d.starts_with(&format!("{}/", hp.path)));
        if !searched {
            err(format!(
                "{}: the host does not search it for libnvidia-ml.so.1",
                hp.path
            ));
        }
        let nvml = flag(args, "--nvml-library");
        if nvml != "auto" {
            err(format!(
                "{} is mounted for NVML, but --nvml-library={nvml} does not search the node",
                hp.path
            ));
        }
    }

    // The kubelet's directories at their node paths.
    let dp = flag(args, "--device-plugin-dir");
    match mount_at(dp.trim_end_matches('/')).and_then(|m| volume(pod, &m.name).map(|v| (m, v))) {
        Some((m, v))
            if v.host_path
                .as_ref()
                .is_some_and(|h| h.path == dp.trim_end_matches('/')) =>
        {
            if m.read_only == Some(true) {
                err(format!(
                    "{dp} must be writable: the host creates its sockets there"
                ));
            }
        }
        _ => err(format!(
            "--device-plugin-dir={dp} is not the node's directory mounted at the same path"
        )),
    }
    if !args.contains_key("--no-release-detection") {
        let socket = flag(args, "--pod-resources-socket");
        let dir = Path::new(&socket)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match mount_at(&dir).and_then(|m| volume(pod, &m.name).map(|v| (m, v))) {
            Some((m, v)) if v.host_path.as_ref().is_some_and(|h| h.path == dir) => {
                if m.read_only != Some(true) {
                    err(format!(
                        "{dir} must be read-only: the host only dials the socket"
                    ));
                }
            }
            _ => err(format!(
                "--pod-resources-socket={socket}: the node's {dir} is not mounted at the same path"
            )),
        }
    }

    // The guests: a whole ConfigMap volume, read-only.
    let guests = flag(args, "--guests-dir");
    match mount_at(&guests).and_then(|m| volume(pod, &m.name).map(|v| (m, v))) {
        Some((m, v)) if v.config_map.is_some() => {
            if m.read_only != Some(true) {
                err(format!("{guests}: the guests mount must be read-only"));
            }
            let cm = v.config_map.as_ref().expect("checked");
            if cm.items.is_some() {
                err(format!(
                    "{guests}: configMap `items` would hide guests added later; mount every key"
                ));
            }
            if cm.optional == Some(true) {
                err(format!(
                    "{guests}: the guests ConfigMap must not be optional"
                ));
            }
        }
        _ => err(format!(
            "--guests-dir={guests} is not a ConfigMap volume mounted whole"
        )),
    }
    // The cache: pod-private.
    match args.get("--cache-dir") {
        Some(cache) => match mount_at(cache).and_then(|m| volume(pod, &m.name)) {
            Some(v) if v.empty_dir.is_some() => {}
            _ => err(format!(
                "--cache-dir={cache} must be an emptyDir: the host runs what it finds there as machine code"
            )),
        },
        None => err("no --cache-dir: every restart would recompile every guest".into()),
    }
    errors
}

fn http_get(probe: Option<&Probe>) -> Option<(String, IntOrString)> {
    let get = probe?.http_get.as_ref()?;
    Some((get.path.clone().unwrap_or_default(), get.port.clone()))
}

/// The host serves on every address of the pod (the kubelet probes the pod IP), on the
/// container's `metrics` port; liveness on `/healthz`, readiness on `/readyz` there.
fn check_probes(
    name: &str,
    container: &Container,
    args: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let addr = flag(args, "--metrics-addr");
    let port = match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => i32::from(a.port()),
        Ok(_) => {
            errors.push(format!(
                "DaemonSet {name}: --metrics-addr={addr}: bind every address (0.0.0.0 or [::]); the kubelet probes the pod IP"
            ));
            return errors;
        }
        Err(_) => {
            errors.push(format!(
                "DaemonSet {name}: --metrics-addr={addr}: the probes need the host's HTTP server on host:port"
            ));
            return errors;
        }
    };
    let declared = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map(|p| p.container_port);
    if declared != Some(port) {
        errors.push(format!(
            "DaemonSet {name}: the container port named `metrics` must be {port} (--metrics-addr)"
        ));
    }
    if let Some(p) = annotations.get("prometheus.io/port")
        && *p != port.to_string()
    {
        errors.push(format!(
            "DaemonSet {name}: annotation prometheus.io/port={p}, but --metrics-addr serves {port}"
        ));
    }
    let port_number = |p: &IntOrString| match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(named) => container
            .ports
            .iter()
            .flatten()
            .find(|q| q.name.as_deref() == Some(named))
            .map(|q| q.container_port),
    };
    for (what, probe, path) in [
        (
            "livenessProbe",
            container.liveness_probe.as_ref(),
            "/healthz",
        ),
        (
            "readinessProbe",
            container.readiness_probe.as_ref(),
            "/readyz",
        ),
        ("startupProbe", container.startup_probe.as_ref(), "/healthz"),
    ] {
        if what == "startupProbe" && probe.is_none() {
            continue;
        }
        match http_get(probe) {
            Some((p, q)) if p == path && port_number(&q) == Some(port) => {}
            _ => errors.push(format!(
                "DaemonSet {name}: {what} must be an HTTP GET of {path} on port {port}"
            )),
        }
    }
    errors
}

/// Requests for CPU and memory, a memory limit.
fn check_resources(name: &str, container: &Container) -> Vec<String> {
    let mut errors = Vec::new();
    let resources = container.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    for key in ["cpu", "memory"] {
        if !requests.is_some_and(|r| r.contains_key(key)) {
            errors.push(format!("DaemonSet {name}: no {key} request"));
        }
    }
    if !limits.is_some_and(|l| l.contains_key("memory")) {
        errors.push(format!("DaemonSet {name}: no memory limit"));
    }
    errors
}

/// A privileged container is a deliberate choice; a non-privileged one must be the
/// full least-privilege set, with only the kubelet's directory writable on the node.
fn check_security(name: &str, pod: &PodSpec, container: &Container) -> Vec<String> {
    let mut errors = Vec::new();
    let mut err = |m: String| errors.push(format!("DaemonSet {name}: {m}"));
    let Some(sc) = &container.security_context else {
        err("no securityContext: say privileged or least-privilege".into());
        return errors;
    };
    if sc.read_only_root_filesystem != Some(true) {
        err("readOnlyRootFilesystem must be true: the host writes only to its volumes".into());
    }
    if sc.privileged == Some(true) {
        return errors;
    }
    if sc.allow_privilege_escalation != Some(false) {
        err("least-privilege: allowPrivilegeEscalation must be false".into());
    }
    let drops_all = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    if !drops_all {
        err("least-privilege: capabilities must drop ALL".into());
    }
    if sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_some_and(|a| !a.is_empty())
    {
        err("least-privilege: no capabilities may be added".into());
    }
    if sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()) != Some("RuntimeDefault") {
        err("least-privilege: seccompProfile must be RuntimeDefault".into());
    }
    for m in container.volume_mounts.iter().flatten() {
        let host = volume(pod, &m.name).and_then(|v| v.host_path.as_ref());
        if let Some(hp) = host {
            let writable = m.read_only != Some(true);
            if writable && hp.path != "/var/lib/kubelet/device-plugins" {
                err(format!(
                    "least-privilege: {} must be read-only (only the device-plugin directory is writable)",
                    hp.path
                ));
            }
        }
    }
    errors
}
