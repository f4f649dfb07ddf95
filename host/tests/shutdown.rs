//! SIGTERM ends the real binary in time even when the kubelet hangs: a `kubelet.sock`
//! and a pod-resources socket that accept connections and never answer, so the host is
//! inside `Register` (40 s timeout) and a pod-resources poll when the signal comes.
//! The 5 s bound is the contract (operators plan rollouts with it), so it is asserted.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::SimNode;

const BIN: &str = env!("CARGO_BIN_EXE_wasm-device-plugin");
/// The contract: from SIGTERM to exit.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);
/// Generous: the host compiles its guest first.
const WAIT: Duration = Duration::from_secs(120);

const POLICY: &str = r#"{
    "read": ["/sys", "/dev"],
    "devices": ["/dev/**"],
    "resourcePrefixes": ["example.com/"]
}"#;

/// A socket that accepts every connection and then says nothing, holding them open.
struct Hung {
    accepted: Arc<AtomicUsize>,
    _held: Arc<Mutex<Vec<UnixStream>>>,
}

impl Hung {
    fn serve(path: &Path) -> Hung {
        let listener = UnixListener::bind(path).expect("bind the hung socket");
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (count, keep) = (accepted.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                keep.lock().expect("lock").push(stream);
            }
        });
        Hung {
            accepted,
            _held: held,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn wait_until(what: &str, child: &mut Child, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the host exited ({status}) while waiting until {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_ends_the_host_within_five_seconds_while_the_kubelet_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = SimNode::empty(&dir.path().join("root")).expect("fixture");
    node.add_widgets("widget", &[("w0", Some(0)), ("w1", Some(1))])
        .expect("widgets");
    for id in ["w0", "w1"] {
        node.add_dev_node(&format!("/dev/widget-{id}"))
            .expect("device node");
    }
    let guests = dir.path().join("guests");
    std::fs::create_dir_all(&guests).expect("guests dir");
    std::fs::write(guests.join("w.wasm"), testkit::guests::CONFORMANCE_WASM).expect("guest");
    std::fs::write(guests.join("w.policy.json"), POLICY).expect("policy");
    let plugins = dir.path().join("device-plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let kubelet = Hung::serve(&plugins.join("kubelet.sock"));
    let pod_resources = Hung::serve(&dir.path().join("pod-resources.sock"));

    let mut host = Command::new(BIN)
        .arg("run")
        .arg("--host-root")
        .arg(node.root())
        .arg("--simulated-node")
        .arg("--guests-dir")
        .arg(&guests)
        .arg("--device-plugin-dir")
        .arg(&plugins)
        .arg("--pod-resources-socket")
        .arg(dir.path().join("pod-resources.sock"))
        .args(["--release-poll-seconds", "0.2", "--metrics-addr", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the host");

    // The host is now waiting on both: Register and a pod-resources List.
    wait_until("the host dials the hung kubelet", &mut host, || {
        kubelet.accepted() >= 1
    });
    wait_until("the host polls the hung pod resources", &mut host, || {
        pod_resources.accepted() >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.try_wait().expect("status").is_none(), "still running");

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &host.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = loop {
        if let Some(status) = host.try_wait().expect("status") {
            break status;
        }
        if signalled.elapsed() > SHUTDOWN_BOUND * 3 {
            let _ = host.kill();
            panic!(
                "the host was still running {:?} after SIGTERM",
                signalled.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(
        took < SHUTDOWN_BOUND,
        "SIGTERM to exit took {took:?}, over {SHUTDOWN_BOUND:?}"
    );
    let left: Vec<String> = std::fs::read_dir(&plugins)
        .expect("plugins dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kubelet.sock")
        .collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
}
