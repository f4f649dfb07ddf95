//! Plug-in sockets: unique names, serving, and clean removal.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubelet_api::v1beta1::device_plugin_server::DevicePluginServer;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

use super::service::DevicePluginService;
use super::watcher::WatcherService;
use crate::shutdown;
use kubelet_api::pluginregistration::registration_server::RegistrationServer;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// How long a stopping server may take to close its connections before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// What marks a socket name as this host's: `<resource>.wdp-<start>-<n>.sock`. The
/// start-up clean-up removes only names with this mark ([`remove_stale`]).
const MARK: &str = ".wdp-";
/// How long a dial may take to tell a live socket from a stale one.
const STALE_DIAL: Duration = Duration::from_secs(1);

/// A socket file name never used before by this host, nor by an earlier run of it (a
/// restarted container has the same PID, so the start time is part of the name). A
/// fresh name per registration keeps kubelets from confusing a new registration with the
/// old one's ending stream (kubernetes#121994, #139338).
pub fn unique_name(resource: &str, dir: &Path) -> String {
    let started = START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{MARK}{}-{n}.sock", radix36(*started));
    let mut stem: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let room = MAX_SOCKET_PATH.saturating_sub(dir.as_os_str().len() + 2 + suffix.len());
    stem.truncate(room.max(1));
    format!("{stem}{suffix}")
}

static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

fn radix36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Whether `name` is a socket name this host makes (or the hidden name it binds under
/// first): `<stem>.wdp-<base36>-<decimal>.sock`, optionally with a leading `.`.
pub fn is_ours(name: &str) -> bool {
    let name = name.strip_prefix('.').unwrap_or(name);
    let Some((stem, tail)) = name
        .strip_suffix(".sock")
        .and_then(|rest| rest.rsplit_once(MARK))
    else {
        return false;
    };
    let Some((started, n)) = tail.split_once('-') else {
        return false;
    };
    !stem.is_empty()
        && !started.is_empty()
        && started
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// Removes the sockets an earlier run of this host left in `dir` when it was killed
/// before it could remove them (SIGKILL, OOM, a node crash): socket files with this
/// host's names that nobody listens on. Another plug-in's sockets, whatever their
/// state, and a live host's (two pods overlapping in a rollout) are left alone.
pub async fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().is_some_and(is_ours);
        let socket = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        if !ours || !socket {
            continue;
        }
        let dial = tokio::time::timeout(STALE_DIAL, tokio::net::UnixStream::connect(&path)).await;
        // Only a refused connection proves nobody listens; a live or slow socket stays.
        let Ok(Err(e)) = dial else { continue };
        if e.kind() != io::ErrorKind::ConnectionRefused {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove a stale socket of an earlier run")
            }
        }
    }
    removed
}

/// The identity of a file (device and inode): a recreated `kubelet.sock` has a new one.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A `DevicePlugin` server listening on one socket.
pub struct Serving {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Serving {
    /// Binds `dir/name` and starts serving at once, so the kubelet can dial back while
    /// `Register` is still in flight (C4).
    pub fn start(
        dir: &Path,
        name: &str,
        service: DevicePluginService,
        watcher: Option<WatcherService>,
        stop: watch::Sender<bool>,
    ) -> io::Result<Serving> {
        let path = dir.join(name);
        // One byte more for the hidden name it is bound under first.
        if path.as_os_str().len() + 1 > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is longer than 106 bytes (107, less one for the name it is bound under first)",
                    path.display()
                ),
            ));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Bound under a hidden name and renamed into place: the socket appears under its
        // real name only once it listens, so a watcher that dials on sight (the kubelet's
        // plugin watcher does, and skips names starting with '.') never meets a socket
        // that refuses the connection.
        let binding = dir.join(format!(".{name}"));
        match std::fs::remove_file(&binding) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&binding)?;
        if let Err(e) = std::fs::rename(&binding, &path) {
            let _ = std::fs::remove_file(&binding);
            return Err(e);
        }
        let identity = identity(&path);
        let mut stopped = stop.subscribe();
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .add_optional_service(watcher.map(RegistrationServer::new))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    shutdown::requested(&mut stopped).await
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "device plugin server failed");
            }
        });
        Ok(Serving {
            path,
            identity,
            stop,
            task,
        })
    }

    /// The socket's absolute path (the plugin watcher's `PluginInfo.endpoint`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket's file name, as sent in `RegisterRequest.endpoint`.
    pub fn endpoint(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// True while our socket file is still the one we bound (a restarting kubelet
    /// deletes every socket in the directory).
    pub fn socket_intact(&self) -> bool {
        self.identity.is_some() && identity(&self.path) == self.identity
    }

    /// Ends every stream, stops the server and removes the socket if it is still ours.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let ours = self.socket_intact();
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
        }
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_short_and_safe() {
        let dir = Path::new("/var/lib/kubelet/device-plugins");
        let a = unique_name("nvidia.com/gpu", dir);
        let b = unique_name("nvidia.com/gpu", dir);
        assert_ne!(a, b);
        assert!(
            a.starts_with("nvidia.com_gpu.wdp-") && a.ends_with(".sock"),
            "{a}"
        );
        assert!(is_ours(&a) && is_ours(&format!(".{a}")), "{a}");
        let long = unique_name(&format!("{}.com/x", "a".repeat(250)), dir);
        assert!(dir.join(&long).as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(!long.contains('/'));
        assert!(is_ours(&long), "{long}");
    }

    #[test]
    fn only_this_hosts_names_are_ours() {
        for foreign in [
            "kubelet.sock",
            "nvidia-gpu.sock",
            "nvidia.com_gpu-mx2f44o0-0.sock",
            ".wdp-abc-1.sock",
            "x.wdp-abc-.sock",
            "x.wdp--1.sock",
            "x.wdp-ABC-1.sock",
            "x.wdp-abc-1.sock.bak",
            "x.wdp-abc-1x.sock",
        ] {
            assert!(!is_ours(foreign), "{foreign}");
        }
    }

    #[tokio::test]
    async fn stale_sockets_of_this_host_go_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        // Dead sockets: bound, then the listener dropped (as a killed process leaves them).
        let dead = |name: &str| drop(std::os::unix::net::UnixListener::bind(path(name)).unwrap());
        dead("nvidia.com_gpu.wdp-mx2f44o0-0.sock");
        dead(".nvidia.com_gpu.wdp-mx2f44o0-1.sock");
        dead("nvidia-gpu.sock");
        let _live =
            std::os::unix::net::UnixListener::bind(path("example.com_w.wdp-mx3-0.sock")).unwrap();
        std::fs::write(path("plain.wdp-mx2-0.sock"), b"not a socket").unwrap();

        let mut removed = remove_stale(dir.path()).await;
        removed.sort();
        assert_eq!(
            removed,
            [
                path(".nvidia.com_gpu.wdp-mx2f44o0-1.sock"),
                path("nvidia.com_gpu.wdp-mx2f44o0-0.sock")
            ]
        );
        for kept in [
            "nvidia-gpu.sock",
            "example.com_w.wdp-mx3-0.sock",
            "plain.wdp-mx2-0.sock",
        ] {
            assert!(path(kept).exists(), "{kept} must stay");
        }
    }
}
