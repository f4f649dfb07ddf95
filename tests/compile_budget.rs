//! Compiling a guest is bounded in time and memory and never blocks another guest: a
//! compile bomb under 1 MiB is refused within the budget while the other guests keep
//! serving, the host's memory does not grow with the bomb's appetite, and the refusal
//! is remembered across a restart. The reference guests compile comfortably in the
//! child under the default budget.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use integration_tests::{Harness, WAIT, add_widgets, widgets};
use serde_json::json;
use wasm_device_plugin::policy::GuestPolicy;
use wasm_device_plugin::runtime::compiler::RefusalCause;
use wasm_device_plugin::runtime::{CompileBudget, Compiler, LoadError, Runtime};

const BYSTANDER: &str = "example.com/bystander";

/// The budget the bomb is held to: small, so the test is quick.
const SMALL: CompileBudget = CompileBudget {
    timeout: Duration::from_secs(3),
    memory_bytes: 1 << 30,
};

/// Slack for the refusal to reach the status after the budget ran out: the reload
/// tick, killing and reaping the child, a loaded CI machine.
const MARGIN: Duration = Duration::from_secs(5);

/// The bomb's policy: nothing the bystander's overlaps (a contested prefix would take
/// the bystander's resource off the kubelet).
const BOMB_POLICY: &str = r#"{ "resourcePrefixes": ["example.org/"] }"#;

/// What the host's RSS may grow by while it refuses the bomb: the pipes and the
/// bookkeeping, nothing like what the bomb would take in process.
const RSS_BOUND: u64 = 64 << 20;

/// Compiling in children of this package's `compile-child` binary, which runs the same
/// code as `wasm-device-plugin compile-guest`.
fn child_compiler(budget: CompileBudget) -> Compiler {
    Compiler::Child {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_compile-child")),
        budget,
    }
}

/// A component whose one core function Cranelift takes very long and much memory to
/// compile: `locals` i64 locals, all live across `depth` nested loops, each loop
/// jumping back to its header, so that every loop header needs every local as a block
/// parameter and the register allocator sees `locals × depth` long, overlapping live
/// ranges. `seed` changes the constants (and so the file's hash).
fn compile_bomb(locals: u32, depth: u32, seed: i64) -> Vec<u8> {
    use wasm_encoder::{BlockType, Function, ValType};
    let mut body = Function::new([(locals, ValType::I64)]);
    let mut code = body.instructions();
    for i in 0..locals {
        code.i64_const(seed ^ i64::from(i)).local_set(i);
    }
    for _ in 0..depth {
        code.loop_(BlockType::Empty);
    }
    for i in 0..locals {
        code.local_get(i)
            .local_get((i + 1) % locals)
            .i64_add()
            .local_set(i);
    }
    for level in 0..depth {
        // Back to the innermost open loop's header while a local is nonzero, then
        // close that loop.
        code.local_get(level % locals)
            .i64_const(0)
            .i64_ne()
            .br_if(0)
            .end();
    }
    code.end();
    component_of(&body)
}

/// A component holding one core module with `body` as its only function, `[] -> []`.
fn component_of(body: &wasm_encoder::Function) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Component, FunctionSection, Module, ModuleSection, TypeSection,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut bodies = CodeSection::new();
    bodies.function(body);
    let mut module = Module::new();
    module.section(&types).section(&functions).section(&bodies);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

/// The bomb's shape: about 80 KiB, and in process (debug build, 2 cores) still compiling
/// after 40 s with 3.7 GiB resident and growing.
const LOCALS: u32 = 5_000;
const DEPTH: u32 = 512;

/// The bomb the tests use: far under the 1 MiB guest limit.
fn bomb(seed: i64) -> Vec<u8> {
    let wasm = compile_bomb(LOCALS, DEPTH, seed);
    assert!(wasm.len() < 1 << 20, "{} bytes", wasm.len());
    wasm
}

/// A conformance guest serving two widgets as [`BYSTANDER`], its answers naming the
/// devices of a CDI spec it writes through the host (so that an allocation crosses every
/// check of the hand-out path).
fn add_bystander(h: &Harness) {
    let policy: serde_json::Value =
        serde_json::from_str(integration_tests::TEST_POLICY).expect("the test policy");
    let mut policy = policy.as_object().cloned().expect("an object");
    policy.insert("cdiKinds".into(), json!(["example.com/bystander"]));
    h.add_guest_with_policy(
        "bystander",
        testkit::guests::CONFORMANCE_WASM,
        Some(
            &json!({ "resources": [
                { "name": BYSTANDER, "class": "bystander", "writeCdiSpec": true }
            ] })
            .to_string(),
        ),
        Some(&serde_json::Value::Object(policy).to_string()),
    );
}

/// This process's resident set and its high-water mark (`/proc/self/status`), bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib << 10)
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// The bomb is refused within its budget, named with the limit it hit, while the
/// bystander keeps allocating; the host's memory stays flat; a restart refuses it from
/// the marker in the cache directory without compiling it; a changed bomb is tried
/// (and refused) again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_bomb_is_refused_within_budget_and_remembered() {
    let mut h = Harness::empty().await;
    add_widgets(&h.node, "bystander", &widgets(2));
    add_bystander(&h);
    let mut config = h.config();
    config.cache_dir = Some(h.tmp.path().join("cache"));
    config.compiler = child_compiler(SMALL);
    h.start_host_with(config.clone()).await;
    h.kubelet
        .wait_for(BYSTANDER, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .expect("the bystander registers");

    // The bomb arrives while the host serves; the supervisor compiles it (in a child)
    // while the bystander keeps answering.
    let (rss_before, hwm_before) = rss();
    let wasm = bomb(1);
    let mut status = h.host().status();
    let started = Instant::now();
    h.add_guest_with_policy("bomb", &wasm, None, Some(BOMB_POLICY));
    let mut served_meanwhile = 0;
    let reason = loop {
        if let Some(s) = h
            .host()
            .skipped()
            .into_iter()
            .find(|s| s.path.ends_with("bomb.wasm"))
        {
            break s.reason;
        }
        assert!(
            started.elapsed() < SMALL.timeout + MARGIN,
            "no refusal within the budget: {:?}",
            h.host().skipped()
        );
        let call = Instant::now();
        tokio::time::timeout(WAIT, h.kubelet.allocate(BYSTANDER, vec![vec!["w0".into()]]))
            .await
            .expect("Allocate returns")
            .expect("the bystander allocates while the bomb compiles");
        assert!(
            call.elapsed() < Duration::from_secs(1),
            "{:?}",
            call.elapsed()
        );
        served_meanwhile += 1;
        let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
    };
    let took = started.elapsed();
    let (rss_after, hwm_after) = rss();
    eprintln!(
        "bomb: {} KiB, refused after {took:?} ({served_meanwhile} allocations served meanwhile): {reason}",
        wasm.len() >> 10
    );
    eprintln!(
        "host RSS: {} MiB before, {} MiB after; high-water mark {} MiB before, {} MiB after",
        mib(rss_before),
        mib(rss_after),
        mib(hwm_before),
        mib(hwm_after)
    );
    assert!(
        reason.contains("bomb.wasm: refused:")
            && (reason
                .contains("did not compile within 3 s; the budget is --compile-timeout-seconds")
                || reason.contains(
                    "needed more than 1024 MiB to compile; the budget is --compile-memory-mib"
                )),
        "{reason}"
    );
    assert!(
        served_meanwhile > 0,
        "the bystander was called while the bomb compiled"
    );
    assert!(
        hwm_after.saturating_sub(rss_before.max(hwm_before)) < RSS_BOUND
            && rss_after.saturating_sub(rss_before) < RSS_BOUND,
        "the host's memory grew with the bomb"
    );
    let stats = h.host().load_stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.compiled.load(Ordering::Relaxed), 1, "the bystander");
    h.stop_host().await;

    // A restart with the same cache directory refuses it without compiling it.
    let started = Instant::now();
    h.start_host_with(config.clone()).await;
    let took = started.elapsed();
    let stats = h.host().load_stats();
    assert_eq!(
        (
            stats.compiled.load(Ordering::Relaxed),
            stats.cache_hits.load(Ordering::Relaxed),
            stats.refused.load(Ordering::Relaxed),
            stats.refusals_remembered.load(Ordering::Relaxed)
        ),
        (0, 1, 0, 1),
        "(compiled, cache hits, refused, refused from memory)"
    );
    let skipped = h.host().skipped();
    let remembered = skipped
        .iter()
        .find(|s| s.path.ends_with("bomb.wasm"))
        .expect("the bomb is still refused");
    assert!(
        remembered.reason.contains("did not compile within 3 s")
            || remembered.reason.contains("needed more than 1024 MiB"),
        "{}",
        remembered.reason
    );
    assert!(
        remembered.reason.contains("remembered"),
        "{}",
        remembered.reason
    );
    eprintln!("restart: ready in {took:?}: {}", remembered.reason);
    h.kubelet
        .wait_for(BYSTANDER, WAIT, |v| v.connected && v.allocatable() == 2)
        .await
        .expect("the bystander serves after the restart");

    // A changed file is another hash: compiled (and refused) again.
    let mut status = h.host().status();
    h.add_guest_with_policy("bomb", &bomb(2), None, Some(BOMB_POLICY));
    let refused_again = tokio::time::timeout(SMALL.timeout + MARGIN, async {
        while h.host().load_stats().refused.load(Ordering::Relaxed) == 0 {
            let _ = status.changed().await;
        }
    })
    .await;
    assert!(
        refused_again.is_ok(),
        "the changed bomb was not compiled again"
    );
}

/// Over its memory budget the bomb is refused for memory, well before the timeout; the
/// same content is then refused at once, from memory, without a cache directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_bomb_over_its_memory_budget_is_refused_for_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.wasm");
    std::fs::write(&path, bomb(3)).unwrap();
    std::fs::write(
        dir.path().join("bomb.policy.json"),
        integration_tests::TEST_POLICY,
    )
    .unwrap();
    let budget = CompileBudget {
        timeout: Duration::from_secs(60),
        memory_bytes: 256 << 20,
    };
    let runtime = Runtime::new(dir.path(), dir.path(), Default::default())
        .unwrap()
        .with_compiler(child_compiler(budget.clone()));
    let load = || async {
        let policy = GuestPolicy::for_guest(&path, runtime.limits())
            .expect("policy")
            .expect("a policy beside it");
        let started = Instant::now();
        let Err(err) = runtime.load("bomb", &path, String::new(), policy).await else {
            panic!("the bomb loaded");
        };
        (err, started.elapsed())
    };
    let (err, took) = load().await;
    eprintln!("refused after {took:?}: {err}");
    assert!(
        matches!(&err, LoadError::Refused { refusal, remembered: false, .. } if refusal.cause == RefusalCause::Memory),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("needed more than 256 MiB to compile; the budget is --compile-memory-mib"),
        "{err}"
    );
    assert!(took < budget.timeout / 2, "{took:?}");

    let (err, took) = load().await;
    assert!(
        matches!(
            &err,
            LoadError::Refused {
                remembered: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    let stats = runtime.stats();
    assert_eq!(
        (
            stats.refused.load(Ordering::Relaxed),
            stats.refusals_remembered.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
}

/// A guest that is not valid WebAssembly is refused with wasmtime's message as before:
/// a compile error, not a budget refusal, and nothing is remembered.
#[tokio::test]
async fn an_invalid_guest_in_the_child_is_a_compile_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invalid.wasm");
    std::fs::write(&path, invalid_component()).unwrap();
    let runtime = Runtime::new(dir.path(), dir.path(), Default::default())
        .unwrap()
        .with_compiler(child_compiler(CompileBudget::default()));
    let policy = GuestPolicy::parse("{}", runtime.limits()).expect("an empty policy");
    let Err(err) = runtime.load("invalid", &path, String::new(), policy).await else {
        panic!("an invalid guest loaded");
    };
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    assert!(err.to_string().contains("does not compile"), "{err}");
    let stats = runtime.stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
}

/// A component whose one function adds with nothing on the stack.
fn invalid_component() -> Vec<u8> {
    let mut body = wasm_encoder::Function::new([]);
    body.instructions().i32_add().end();
    component_of(&body)
}

/// Both reference guests compile in the child under the default budget and load; the
/// NVIDIA guest then serves its GPUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_guests_compile_in_the_child_and_load() {
    let mut h = Harness::dgx().await;
    let guests = [
        (
            "nvidia-gpu",
            testkit::guests::NVIDIA_GPU_WASM,
            testkit::guests::NVIDIA_GPU_POLICY,
        ),
        (
            "infiniband",
            testkit::guests::INFINIBAND_WASM,
            testkit::guests::INFINIBAND_POLICY,
        ),
    ];
    for (name, wasm, policy) in guests {
        h.add_guest_with_policy(name, wasm, None, Some(policy));
    }
    let budget = CompileBudget::default();
    let mut config = h.config();
    config.compiler = child_compiler(budget.clone());

    // Each alone, timed, through the runtime the host uses.
    let runtime = wasm_device_plugin::node::runtime(&config).expect("runtime");
    for (name, _, _) in guests {
        let path = h.guests_dir.join(format!("{name}.wasm"));
        let policy = GuestPolicy::for_guest(&path, &config.limits)
            .expect("policy")
            .expect("a policy beside it");
        let started = Instant::now();
        let guest = runtime
            .load(name, &path, String::new(), policy)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let took = started.elapsed();
        eprintln!("{name}: compiled in the child and loaded in {took:?} (budget {budget})",);
        assert!(!guest.resources().is_empty(), "{name} advertises resources");
        assert!(
            took < budget.timeout / 4,
            "{name} took {took:?}: too close to the budget"
        );
    }
    assert_eq!(runtime.stats().compiled.load(Ordering::Relaxed), 2);
    drop(runtime);

    h.start_host_with(config).await;
    assert!(h.host().skipped().is_empty(), "{:?}", h.host().skipped());
    h.kubelet
        .wait_for("nvidia.com/gpu", WAIT, |v| {
            v.connected && v.allocatable() == 8
        })
        .await
        .expect("the GPUs are served");
}

/// For reference, not run by default: how long and how much memory the bomb takes when
/// compiled in process, without a budget (`BOMB_LOCALS`, `BOMB_DEPTH` to vary it;
/// `BOMB_OUT=<file>` also writes it there, to feed to `compile-guest` by hand).
/// `cargo test -p integration-tests --test compile_budget -- --ignored --nocapture`
#[tokio::test]
#[ignore = "measures the bomb in process: slow, and takes gigabytes"]
async fn bomb_in_process() {
    let param = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (locals, depth) = (param("BOMB_LOCALS", LOCALS), param("BOMB_DEPTH", DEPTH));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.wasm");
    let wasm = compile_bomb(locals, depth, 1);
    std::fs::write(&path, &wasm).unwrap();
    if let Some(out) = std::env::var_os("BOMB_OUT") {
        std::fs::write(out, &wasm).unwrap();
    }
    let runtime = Runtime::new(dir.path(), dir.path(), Default::default()).unwrap();
    let (rss_before, _) = rss();
    let started = Instant::now();
    let result = runtime.inspect(&path).await;
    let (_, hwm) = rss();
    eprintln!(
        "bomb ({locals} locals, depth {depth}, {} KiB): {} in process after {:?}, high-water mark {} MiB (from {} MiB)",
        wasm.len() >> 10,
        match &result {
            Ok(_) => "compiled".to_string(),
            Err(e) => format!("failed ({e})"),
        },
        started.elapsed(),
        mib(hwm),
        mib(rss_before)
    );
}
