//! Compiling a guest within a budget, without putting the host at risk.
//!
//! Cranelift's time and memory grow faster than linearly with some shapes of code (tens
//! of thousands of locals, deeply nested blocks with many values live across them), so a
//! guest well under the 1 MiB size limit can ask for minutes and gigabytes. Compiled in
//! the host, such a guest stalls the load and can get the whole host OOM-killed, taking
//! every other guest with it. With [`Compiler::Child`] each compile runs in a child
//! process of the host binary (`wasm-device-plugin compile-guest`, see [`run_child`]) under
//! an address-space limit and a wall-clock timeout; the host only deserializes the code
//! the child hands back. A guest over the budget is refused with the reason (a
//! [`Refusal`]), which the loader remembers for that file's content.
//!
//! The child gets the bytes the host already read and verified (signature included) on
//! its stdin and writes the serialized component to its stdout: nothing touches the
//! filesystem, which is read-only in the deployments, and the child compiles exactly
//! what was verified.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::engine_config;

/// The hidden subcommand of the host binary that compiles one guest ([`run_child`]).
pub const CHILD_VERB: &str = "compile-guest";

/// Child exit status: the component does not compile (wasmtime's message on stderr).
pub const EXIT_INVALID: u8 = 3;
/// Child exit status: the compiler ran out of memory (an allocation was refused).
pub const EXIT_OUT_OF_MEMORY: u8 = 4;
/// Child exit status: reading the component or writing the code failed.
pub const EXIT_IO: u8 = 5;

/// Most threads one compile uses: on a node with a hundred cores a compile bomb could
/// otherwise take all of them for the whole timeout, and each thread's stack takes
/// address space from the budget (so the budget would have to grow with the node).
const COMPILE_THREADS_MAX: usize = 4;
/// glibc malloc arenas in the child. glibc reserves 64 MiB of address space for each
/// thread's arena, which against an address-space limit would count as used long
/// before it is; two arenas keep the limit close to the memory really used.
const MALLOC_ARENAS: &str = "2";

/// Most of the child's stderr kept for the refusal message and the log.
const STDERR_KEPT: usize = 16 << 10;
/// The exit status of a Rust program whose main thread panicked.
const RUST_PANIC: i32 = 101;
/// What the Rust runtime prints before it aborts on a refused allocation.
const ALLOCATION_FAILED: &str = "memory allocation of";

/// How long and how much memory compiling one guest may take.
///
/// The defaults leave a wide margin over the reference guests (each compiles in under
/// half a second in the child of a debug build of the host on 2 cores, within 96 MiB of
/// address space, the mapped binary included) so that a loaded node never refuses them,
/// and still stop a compile bomb long before it can hurt the node. In a container, the
/// container's memory limit applies too: a compile that reaches it first is killed by
/// the kernel (the child volunteers as the OOM killer's first victim) and refused as a
/// crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileBudget {
    /// Wall-clock time from starting the child to having its code. Default 60 s.
    pub timeout: Duration,
    /// Address space (`RLIMIT_AS`) of the child, in bytes: its heap, its threads' stacks
    /// and its mapped binary. Default 2 GiB.
    pub memory_bytes: u64,
}

impl Default for CompileBudget {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
        }
    }
}

impl CompileBudget {
    /// Whether `self` allows more than `other` in any dimension: a guest refused under
    /// `other` is worth trying again under `self`.
    pub fn exceeds(&self, other: &CompileBudget) -> bool {
        self.timeout > other.timeout || self.memory_bytes > other.memory_bytes
    }
}

impl fmt::Display for CompileBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} s and {} MiB",
            seconds(self.timeout),
            self.memory_bytes >> 20
        )
    }
}

/// Where guests are compiled.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// On a blocking thread of the host process, without any budget. The library's
    /// default, for tests and embedders that have no host binary to run as the child;
    /// the `wasm-device-plugin` binary always uses [`Compiler::Child`].
    #[default]
    InProcess,
    /// In a child process, `exe compile-guest`, within `budget`. `exe` must be a build
    /// of this host (the artifact is only loadable by an engine of the same wasmtime
    /// version and configuration; wasmtime checks that when it loads it).
    Child { exe: PathBuf, budget: CompileBudget },
}

impl Compiler {
    /// Children of the running binary (`/proc/self/exe`, so even a binary replaced on
    /// disk since the start compiles for the engine that loads the result).
    pub fn this_executable(budget: CompileBudget) -> std::io::Result<Compiler> {
        let proc_exe = Path::new("/proc/self/exe");
        let exe = if proc_exe.exists() {
            proc_exe.to_owned()
        } else {
            std::env::current_exe()?
        };
        Ok(Compiler::Child { exe, budget })
    }

    /// The budget compiles are held to (none in process).
    pub fn budget(&self) -> Option<&CompileBudget> {
        match self {
            Compiler::InProcess => None,
            Compiler::Child { budget, .. } => Some(budget),
        }
    }

    /// Compiles `wasm` for `engine`.
    pub(crate) async fn compile(
        &self,
        engine: &Engine,
        wasm: Arc<Vec<u8>>,
    ) -> Result<Compiled, CompileError> {
        match self {
            Compiler::InProcess => {
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || Component::new(&engine, &wasm[..]))
                    .await
                    .map_err(|e| CompileError::Host(format!("the compiler task failed: {e}")))?
                    .map(|component| Compiled {
                        component,
                        code: None,
                    })
                    .map_err(|e| CompileError::Invalid(format!("{e:#}")))
            }
            Compiler::Child { exe, budget } => {
                let code = in_child(exe, budget, &wasm).await?;
                let engine = engine.clone();
                tokio::task::spawn_blocking(move || {
                    // SAFETY: `code` is what a child running this host's executable wrote
                    // to a pipe only this process holds, compiled from the bytes this
                    // process just handed it; nobody else could have written it.
                    // `deserialize` still refuses code of another wasmtime version or
                    // configuration.
                    let loaded = unsafe { Component::deserialize(&engine, &code) };
                    loaded
                        .map(|component| Compiled {
                            component,
                            code: Some(code),
                        })
                        .map_err(|e| {
                            CompileError::Host(format!(
                                "the compiler process's code does not load ({e:#}); is its executable a build of this host?"
                            ))
                        })
                })
                .await
                .map_err(|e| CompileError::Host(format!("the loader task failed: {e}")))?
            }
        }
    }
}

/// A compiled guest.
pub(crate) struct Compiled {
    pub component: Component,
    /// The serialized component, when the compiler produced it (the child does): what
    /// the compiled-guest cache stores.
    pub code: Option<Vec<u8>>,
}

/// Why compiling did not give a component.
#[derive(Debug, Error)]
pub(crate) enum CompileError {
    /// The component is not valid (wasmtime's message): the guest's fault, whatever the
    /// budget.
    #[error("{0}")]
    Invalid(String),
    /// The compile ran over its budget or the compiler crashed: the guest is refused.
    #[error(transparent)]
    Refused(Refusal),
    /// The host could not run the compiler (no executable, no pipes, no processes left,
    /// unloadable output): nothing is known about the guest, so nothing is remembered.
    #[error("{0}")]
    Host(String),
}

/// A compile stopped for its budget. Its message says which limit and how to raise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub cause: RefusalCause,
    /// The budget the compile was held to.
    pub budget: CompileBudget,
}

/// Which part of the budget a refused compile ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalCause {
    /// Still compiling at the timeout; the child was killed.
    Timeout,
    /// An allocation was refused at the address-space limit (or the code was larger
    /// than the limit).
    Memory,
    /// The child died another way (a signal, a panic), most often while short of memory.
    Crashed(String),
}

impl std::error::Error for Refusal {}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            RefusalCause::Timeout => write!(
                f,
                "did not compile within {} s; the budget is --compile-timeout-seconds",
                seconds(self.budget.timeout)
            ),
            RefusalCause::Memory => write!(
                f,
                "needed more than {} MiB to compile; the budget is --compile-memory-mib",
                self.budget.memory_bytes >> 20
            ),
            RefusalCause::Crashed(how) => write!(
                f,
                "the compiler crashed ({how}) within its budget of {}; usually that is \
                 running out of memory: the budget is --compile-memory-mib",
                self.budget
            ),
        }
    }
}

/// Runs `exe compile-guest` on `wasm` within `budget`; the serialized component.
async fn in_child(
    exe: &Path,
    budget: &CompileBudget,
    wasm: &[u8],
) -> Result<Vec<u8>, CompileError> {
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(CHILD_VERB)
        // Nothing of the host's environment (config file, log settings) applies.
        .env_clear()
        // Read by rayon (wasmtime's parallel compilation) and by glibc's malloc (other C
        // libraries ignore it).
        .env("RAYON_NUM_THREADS", compile_threads().to_string())
        .env("MALLOC_ARENA_MAX", MALLOC_ARENAS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let memory = budget.memory_bytes;
    // SAFETY: the closure runs in the forked child before `exec`; it makes `prlimit`
    // and `prctl` system calls only, and allocates nothing.
    unsafe {
        command.pre_exec(move || limit_child(memory));
    }
    let started = Instant::now();
    let mut child = command.spawn().map_err(|e| {
        CompileError::Host(format!(
            "cannot start the compiler process {} {CHILD_VERB}: {e}",
            exe.display()
        ))
    })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(CompileError::Host(
            "the compiler process has no pipes".into(),
        ));
    };
    // The code cannot be larger than the child's address space; reading more than that
    // would make the host hold what the budget keeps out of the child.
    let code_limit = usize::try_from(budget.memory_bytes).unwrap_or(usize::MAX);
    let finished = tokio::time::timeout(budget.timeout, async {
        let feed = async move {
            // A child that exits early closes the pipe; its exit status says why.
            let _ = stdin.write_all(wasm).await;
        };
        let ((), out, err) = tokio::join!(
            feed,
            read_capped(stdout, code_limit),
            read_capped(stderr, STDERR_KEPT)
        );
        (out, err, child.wait().await)
    })
    .await;
    let Ok((out, err, status)) = finished else {
        // `kill` sends SIGKILL and reaps the child.
        if let Err(e) = child.kill().await {
            tracing::warn!(error = %e, "cannot kill the compiler process at its timeout");
        }
        return Err(CompileError::Refused(Refusal {
            cause: RefusalCause::Timeout,
            budget: budget.clone(),
        }));
    };
    let host = |what: &str, e: std::io::Error| {
        CompileError::Host(format!("the compiler process's {what}: {e}"))
    };
    let status = status.map_err(|e| host("exit status", e))?;
    let (code, code_overflow) = out.map_err(|e| host("output", e))?;
    let (err, _) = err.map_err(|e| host("error output", e))?;
    let stderr = String::from_utf8_lossy(&err);
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        %status,
        "compiler process finished"
    );
    let refused = |cause| {
        Err(CompileError::Refused(Refusal {
            cause,
            budget: budget.clone(),
        }))
    };
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(0) if code_overflow => refused(RefusalCause::Memory),
        Some(0) if code.is_empty() => Err(CompileError::Host(
            "the compiler process exited without output".into(),
        )),
        Some(0) => Ok(code),
        Some(c) if c == i32::from(EXIT_INVALID) => {
            Err(CompileError::Invalid(child_message(&stderr)))
        }
        Some(c) if c == i32::from(EXIT_OUT_OF_MEMORY) => refused(RefusalCause::Memory),
        _ if stderr.contains(ALLOCATION_FAILED) => refused(RefusalCause::Memory),
        Some(RUST_PANIC) => refused(RefusalCause::Crashed(format!(
            "it panicked: {}",
            child_message(&stderr)
        ))),
        Some(c) if c == i32::from(EXIT_IO) => Err(CompileError::Host(format!(
            "the compiler process failed: {}",
            child_message(&stderr)
        ))),
        Some(c) => Err(CompileError::Host(format!(
            "the compiler process {} exited with status {c} ({}); is it a build of this host, with the `{CHILD_VERB}` command?",
            exe.display(),
            child_message(&stderr)
        ))),
        None => {
            let signal = status.signal().unwrap_or_default();
            let named = rustix::process::Signal::from_named_raw(signal);
            let name = named
                .map(|s| format!("{s:?}").replace("Signal::", "SIG"))
                .unwrap_or_else(|| format!("signal {signal}"));
            let why = if named == Some(rustix::process::Signal::KILL) {
                // Not the host's kill (that is the timeout, above): the kernel's.
                "most likely the kernel's OOM killer: the node or the container's memory \
                 limit ran out before the budget did"
                    .to_owned()
            } else {
                child_message(&stderr)
            };
            refused(RefusalCause::Crashed(format!("killed by {name}: {why}")))
        }
    }
}

/// Threads for one compile: the node's cores, at most [`COMPILE_THREADS_MAX`].
fn compile_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(COMPILE_THREADS_MAX)
}

/// In the forked child, before `exec`: the address-space limit, no core dump (a
/// crashed compile would write one as large as the limit), and death with the host.
fn limit_child(memory_bytes: u64) -> std::io::Result<()> {
    use rustix::process::{
        Resource, Rlimit, Signal, getrlimit, set_parent_process_death_signal, setrlimit,
    };
    let limit = |bytes| Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    // Never above a hard limit the host already runs under: raising it would fail.
    let memory_bytes = getrlimit(Resource::As)
        .maximum
        .map_or(memory_bytes, |hard| hard.min(memory_bytes));
    setrlimit(Resource::As, limit(memory_bytes))?;
    setrlimit(Resource::Core, limit(0))?;
    // Sent when the thread that forked exits: a tokio worker or the thread that runs
    // the runtime, which live as long as the host does.
    set_parent_process_death_signal(Some(Signal::KILL))?;
    Ok(())
}

/// Reads `from` to its end, keeping at most `limit` bytes; whether more came (the rest
/// is read and dropped, so the writer never blocks on a full pipe).
async fn read_capped(
    mut from: impl AsyncRead + Unpin,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = limit.saturating_sub(kept.len());
        if n > room {
            overflow = true;
        }
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// The child's stderr as one cleaned, bounded line (without the Rust runtime's hint
/// about backtraces).
fn child_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if lines.is_empty() {
        "no message".into()
    } else {
        crate::guest_text::clean(&lines.join("; "))
    }
}

/// A duration as seconds, without a trailing `.0`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

/// The child's side (`wasm-device-plugin compile-guest`): reads a component on stdin,
/// compiles it with the host's engine configuration and writes the serialized component
/// to stdout. Returns the exit status: 0, [`EXIT_INVALID`] (wasmtime's message on
/// stderr), [`EXIT_OUT_OF_MEMORY`] or [`EXIT_IO`]. The limits were set by the host
/// before `exec`.
pub fn run_child() -> u8 {
    close_inherited_descriptors();
    // Should the node or the container run short of memory while a guest compiles, the
    // kernel's OOM killer takes the compile, never the host (raising one's own score
    // needs no privilege).
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        eprintln!("note: cannot volunteer as the OOM killer's first victim: {e}");
    }
    let mut wasm = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut wasm) {
        eprintln!("cannot read the component from stdin: {e}");
        return EXIT_IO;
    }
    let failed = |what: &str, e: wasmtime::Error, otherwise: u8| {
        eprintln!("{what}{e:#}");
        if out_of_memory(&e) {
            EXIT_OUT_OF_MEMORY
        } else {
            otherwise
        }
    };
    let engine = match Engine::new(&engine_config()) {
        Ok(engine) => engine,
        Err(e) => return failed("cannot create the engine: ", e, EXIT_IO),
    };
    let component = match Component::new(&engine, &wasm) {
        Ok(component) => component,
        Err(e) => return failed("", e, EXIT_INVALID),
    };
    let code = match component.serialize() {
        Ok(code) => code,
        Err(e) => return failed("cannot serialize the compiled component: ", e, EXIT_IO),
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&code).and_then(|()| out.flush()) {
        eprintln!("cannot write the compiled component: {e}");
        return EXIT_IO;
    }
    0
}

/// Whether a wasmtime error comes from a refused allocation (an `mmap` at the limit).
fn out_of_memory(e: &wasmtime::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
    })
}

/// Closes descriptors inherited from the host beyond stdio. Everything the host opens is
/// close-on-exec (std, tokio and wasmtime all ask for it), so normally there is none;
/// this keeps it so if a library ever forgets, so that a compile never holds a kubelet
/// socket or a guest file open.
fn close_inherited_descriptors() {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // The directory being read is open too; its link names the directory.
    let listing = PathBuf::from(format!("/proc/{}/fd", std::process::id()));
    let inherited: Vec<RawFd> = entries
        .flatten()
        .filter_map(|entry| {
            let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            (fd > 2 && target != listing).then_some(fd)
        })
        .collect();
    for fd in inherited {
        // SAFETY: `fd` was open just now, is not the directory listed above (closed
        // since), and nothing in this process owns it: it crossed `exec` from the host,
        // and this runs before anything else in the child opens a file.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_limit_and_the_flag() {
        let budget = CompileBudget {
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
        };
        let timeout = Refusal {
            cause: RefusalCause::Timeout,
            budget: budget.clone(),
        };
        assert_eq!(
            timeout.to_string(),
            "did not compile within 60 s; the budget is --compile-timeout-seconds"
        );
        let memory = Refusal {
            cause: RefusalCause::Memory,
            budget: budget.clone(),
        };
        assert_eq!(
            memory.to_string(),
            "needed more than 2048 MiB to compile; the budget is --compile-memory-mib"
        );
        let crashed = Refusal {
            cause: RefusalCause::Crashed("killed by SIGSEGV: no message".into()),
            budget: CompileBudget {
                timeout: Duration::from_millis(2500),
                ..budget
            },
        };
        assert!(
            crashed
                .to_string()
                .contains("within its budget of 2.5 s and 2048 MiB"),
            "{crashed}"
        );
    }

    #[test]
    fn a_larger_budget_in_either_dimension_exceeds() {
        let base = CompileBudget::default();
        assert!(!base.exceeds(&base));
        let longer = CompileBudget {
            timeout: base.timeout * 2,
            ..base.clone()
        };
        let larger = CompileBudget {
            memory_bytes: base.memory_bytes * 2,
            ..base.clone()
        };
        assert!(longer.exceeds(&base) && larger.exceeds(&base));
        assert!(!base.exceeds(&longer));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_drained_and_flagged() {
        let data = vec![7u8; 200 << 10];
        let (kept, overflow) = read_capped(&data[..], 100 << 10).await.unwrap();
        assert_eq!((kept.len(), overflow), (100 << 10, true));
        let (kept, overflow) = read_capped(&data[..], 300 << 10).await.unwrap();
        assert_eq!((kept.len(), overflow), (200 << 10, false));
    }

    /// A missing executable is the host's problem, not the guest's: nothing is refused.
    #[tokio::test]
    async fn a_missing_compiler_is_a_host_error() {
        let compiler = Compiler::Child {
            exe: PathBuf::from("/nonexistent/wasm-device-plugin"),
            budget: CompileBudget::default(),
        };
        let engine = Engine::new(&engine_config()).unwrap();
        let Err(err) = compiler
            .compile(&engine, Arc::new(b"\0asm\x0d\0\x01\0".to_vec()))
            .await
        else {
            panic!("compiled without a compiler");
        };
        assert!(
            matches!(&err, CompileError::Host(m) if m.contains("cannot start the compiler process")),
            "{err}"
        );
    }
}
