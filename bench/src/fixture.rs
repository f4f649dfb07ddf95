//! Set-up shared by the sections: a simulated node, a guests directory, a device-plugin
//! directory with the kubelet stand-in, and the host (in process or as the real binary).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::SimNode;
use testkit::kubelet::KubeletStandIn;
use wasm_device_plugin::node::HostConfig;

pub const GPU: &str = "nvidia.com/gpu";
pub const HCA: &str = "rdma/hca";
/// How long anything that should take a second may take before the bench gives up.
pub const WAIT: Duration = Duration::from_secs(60);

/// The guests the sections load.
#[derive(Clone, Copy)]
pub enum GuestKind {
    Nvidia,
    Infiniband,
    /// The test guest: `example.com/widget` from `/sys/class/widget`; its `allocate`
    /// reads nothing, so it shows the Wasm layer's floor on the Allocate path.
    Conformance,
}

/// The conformance guest's policy (the integration tests' `TEST_POLICY`).
pub const CONFORMANCE_POLICY: &str = r#"{
    "read": ["/sys", "/proc", "/dev"],
    "devices": ["/dev/**"],
    "env": ["*_IDS"],
    "annotations": ["example.com/*"],
    "resourcePrefixes": ["example.com/"],
    "cdiKinds": ["example.com/widget"]
}"#;
pub const WIDGET: &str = "example.com/widget";

impl GuestKind {
    pub fn name(self) -> &'static str {
        match self {
            GuestKind::Nvidia => "nvidia-gpu",
            GuestKind::Infiniband => "infiniband",
            GuestKind::Conformance => "conformance",
        }
    }

    pub fn wasm(self) -> &'static [u8] {
        match self {
            GuestKind::Nvidia => testkit::guests::NVIDIA_GPU_WASM,
            GuestKind::Infiniband => testkit::guests::INFINIBAND_WASM,
            GuestKind::Conformance => testkit::guests::CONFORMANCE_WASM,
        }
    }

    pub fn policy(self) -> &'static str {
        match self {
            GuestKind::Nvidia => testkit::guests::NVIDIA_GPU_POLICY,
            GuestKind::Infiniband => testkit::guests::INFINIBAND_POLICY,
            GuestKind::Conformance => CONFORMANCE_POLICY,
        }
    }
}

/// A DGX-H100-like node with directories for guests, plug-in sockets, cache and CDI.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub node: SimNode,
    pub guests: PathBuf,
    pub cache: PathBuf,
    pub cdi: PathBuf,
}

impl Fixture {
    pub fn dgx() -> anyhow::Result<Fixture> {
        // Short paths: unix socket paths are limited to 107 bytes.
        let tmp = tempfile::Builder::new().prefix("wdpb").tempdir()?;
        let node = SimNode::dgx_h100(&tmp.path().join("root"))?;
        let guests = tmp.path().join("guests");
        let cache = tmp.path().join("cache");
        let cdi = tmp.path().join("cdi");
        for d in [&guests, &cdi] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Fixture {
            tmp,
            node,
            guests,
            cache,
            cdi,
        })
    }

    pub fn root(&self) -> &Path {
        self.node.root()
    }

    /// `<name>.wasm`, its shipped policy and (if given) its configuration.
    pub fn add_guest(&self, kind: GuestKind, config: Option<&str>) -> anyhow::Result<PathBuf> {
        let wasm = self.guests.join(format!("{}.wasm", kind.name()));
        std::fs::write(&wasm, kind.wasm())?;
        std::fs::write(
            self.guests.join(format!("{}.policy.json", kind.name())),
            kind.policy(),
        )?;
        if let Some(config) = config {
            std::fs::write(self.guests.join(format!("{}.json", kind.name())), config)?;
        }
        Ok(wasm)
    }

    /// A fresh device-plugin directory (`n` keeps runs apart) with a stand-in serving it.
    pub async fn kubelet(&self, n: usize) -> anyhow::Result<KubeletStandIn> {
        let dir = self.tmp.path().join(format!("dp{n}"));
        Ok(KubeletStandIn::start(&dir).await?)
    }

    /// The in-process host's configuration (production defaults, cache on).
    pub fn host_config(&self, kubelet: &KubeletStandIn) -> HostConfig {
        let mut config = HostConfig::new(self.root(), &self.guests, kubelet.dir());
        // The fixture's device nodes are plain files.
        config.device_nodes = wasm_device_plugin::handout::DeviceNodes::Simulated;
        config.cache_dir = Some(self.cache.clone());
        config.cdi_dir = self.cdi.clone();
        config
    }
}

/// A child process (the real host or the bare plug-in), stopped with SIGTERM on drop.
pub struct Proc {
    pub child: Child,
    pub spawned: Instant,
    pub spawned_wall: std::time::SystemTime,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut command: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let spawned_wall = std::time::SystemTime::now();
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {command:?}: {e}"))?;
        Ok(Proc {
            child,
            spawned,
            spawned_wall,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `wasm-device-plugin run` against `fixture`'s node and guests and `plugin_dir`.
pub fn host_command(
    host_bin: &Path,
    fixture: &Fixture,
    plugin_dir: &Path,
    cache: &Path,
    rescan_seconds: f64,
) -> Command {
    let mut c = Command::new(host_bin);
    c.arg("run")
        .arg("--host-root")
        .arg(fixture.root())
        // The fixture's device nodes are plain files.
        .arg("--simulated-node")
        .arg("--guests-dir")
        .arg(&fixture.guests)
        .arg("--device-plugin-dir")
        .arg(plugin_dir)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--cdi-dir")
        .arg(&fixture.cdi)
        .arg("--rescan-seconds")
        .arg(rescan_seconds.to_string())
        .arg("--no-release-detection")
        .env_remove("RUST_LOG")
        .env("WDP_LOG_FORMAT", "json");
    c
}

/// `wdp-bench bare-plugin` registering `resource` in `plugin_dir`.
pub fn bare_command(plugin_dir: &Path, resource: &str) -> anyhow::Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("bare-plugin")
        .arg("--dir")
        .arg(plugin_dir)
        .arg("--resource")
        .arg(resource);
    Ok(c)
}

/// Resident-set figures of a process, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub file: u64,
    pub threads: u64,
}

pub fn rss(pid: u32) -> anyhow::Result<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut out = Rss::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        match key {
            "VmRSS" => out.rss = number * 1024,
            "VmHWM" => out.hwm = number * 1024,
            "RssAnon" => out.anon = number * 1024,
            "RssFile" => out.file = number * 1024,
            "Threads" => out.threads = number,
            _ => {}
        }
    }
    Ok(out)
}

/// Resident bytes per mapping group from `/proc/<pid>/smaps`, largest first.
pub fn rss_by_mapping(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut groups: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let perms = fields.get(1).copied().unwrap_or("");
            let name = fields.get(5..).map(|f| f.join(" ")).unwrap_or_default();
            current = if name.is_empty() {
                format!("[anon {}]", &perms[..3.min(perms.len())])
            } else {
                let short = Path::new(&name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(name);
                format!("{short} {}", &perms[..3.min(perms.len())])
            };
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            let kb: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            *groups.entry(current.clone()).or_default() += kb * 1024;
        }
    }
    let mut out: Vec<(String, u64)> = groups.into_iter().filter(|(_, b)| *b > 0).collect();
    out.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    Ok(out)
}

/// Anonymous mappings of a process by size class, to tell thread stacks, guest memories
/// and heap arenas apart: `(size of mapping, count, resident bytes)`.
pub fn anon_by_size(pid: u32) -> anyhow::Result<Vec<(u64, usize, u64)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut classes: std::collections::BTreeMap<u64, (usize, u64)> = Default::default();
    let mut size = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            size = (fields.len() <= 5).then(|| {
                let (a, b) = first.split_once('-').unwrap_or(("0", "0"));
                let a = u64::from_str_radix(a, 16).unwrap_or(0);
                let b = u64::from_str_radix(b, 16).unwrap_or(0);
                b.saturating_sub(a)
            });
        } else if let (Some(sz), Some(rest)) = (size, line.strip_prefix("Rss:")) {
            let kb: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let e = classes.entry(sz).or_default();
            e.0 += 1;
            e.1 += kb * 1024;
        }
    }
    let mut out: Vec<(u64, usize, u64)> = classes
        .into_iter()
        .filter(|(_, (_, r))| *r > 0)
        .map(|(s, (n, r))| (s, n, r))
        .collect();
    out.sort_by_key(|(_, _, r)| std::cmp::Reverse(*r));
    Ok(out)
}

/// Waits until the stand-in has `count` accepted registrations of every resource;
/// returns the time of the last one.
pub async fn registered(
    kubelet: &KubeletStandIn,
    resources: &[&str],
    count: usize,
) -> anyhow::Result<Instant> {
    let mut last = None::<Instant>;
    for r in resources {
        let regs = kubelet
            .wait_for_registrations(r, count, WAIT)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let at = regs[count - 1].at;
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    last.ok_or_else(|| anyhow::anyhow!("no resources"))
}

/// Timestamps (relative to `spawned_wall`) of the host's JSON log events whose message
/// contains `needle`, with the `resource` field if any.
pub fn log_events(
    text: &str,
    spawned_wall: std::time::SystemTime,
    needle: &str,
) -> Vec<(Duration, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = v["fields"]["message"].as_str().unwrap_or("");
        if !message.contains(needle) {
            continue;
        }
        let Some(ts) = v["timestamp"].as_str().and_then(parse_rfc3339) else {
            continue;
        };
        let since = ts.duration_since(spawned_wall).unwrap_or(Duration::ZERO);
        let resource = v["span"]["resource"]
            .as_str()
            .or_else(|| v["fields"]["resource"].as_str())
            .or_else(|| v["fields"]["guest"].as_str())
            .unwrap_or("")
            .to_owned();
        out.push((since, resource));
    }
    out
}

/// `2026-11-27T11:40:00.123456Z` → a `SystemTime` (UTC only, as tracing writes it).
fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_tracing_timestamps() {
        let t = super::parse_rfc3339("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap(),
            std::time::Duration::from_millis(86_401_500)
        );
        let t = super::parse_rfc3339("2026-11-27T11:40:00.123456Z").unwrap();
        let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_795_779_600);
    }
}
