//! `wdp-bench`: the cost of the Wasm layer against native baselines measured in the same
//! run (issue 8). `BENCHMARKS.md` at the workspace root explains every figure.
//!
//! ```sh
//! cargo run --release -p bench            # the full suite (a few minutes)
//! cargo run -p bench -- --quick           # CI smoke run: few iterations, no assertions
//! ```
//!
//! Options: `--quick`, `--only <section,...>` (sizes, guest, rtt, scale, process, handout),
//! `--host-bin <path>` (the `wasm-device-plugin` binary to spawn; by default the one
//! beside this binary, built first with the same profile), `--no-build`,
//! `--markdown <file>` (also write the table and details there).
//!
//! Two more modes: `wdp-bench bare-plugin --dir D --resource R` is the native baseline
//! process the suite spawns; `wdp-bench profile <what> <n>` runs one operation `n`
//! times and nothing else, for `strace -c -f` and `valgrind --tool=callgrind`.

mod bare;
mod fixture;
mod inline;
mod native;
mod profile;
mod raw;
mod sections;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use stats::Row;

/// Options and the figures collected so far.
pub struct Ctx {
    pub quick: bool,
    pub host_bin: PathBuf,
    pub rows: Vec<Row>,
    details: String,
}

impl Ctx {
    /// `full` iterations, or `quick` ones in a smoke run.
    pub fn n(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// Prints a detail line and keeps it for the markdown file.
    pub fn say(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        self.details.push_str(line.as_ref());
        self.details.push('\n');
    }

    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }
}

struct Args {
    quick: bool,
    only: Option<Vec<String>>,
    host_bin: Option<PathBuf>,
    build: bool,
    markdown: Option<PathBuf>,
}

const SECTIONS: [&str; 6] = ["sizes", "guest", "rtt", "scale", "process", "handout"];

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut out = Args {
        quick: false,
        only: None,
        host_bin: None,
        build: true,
        markdown: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match arg.as_str() {
            "--quick" => out.quick = true,
            "--no-build" => out.build = false,
            "--only" => {
                let list: Vec<String> = value("--only")?.split(',').map(str::to_owned).collect();
                if let Some(bad) = list.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    anyhow::bail!("unknown section {bad:?}; sections: {}", SECTIONS.join(", "));
                }
                out.only = Some(list);
            }
            "--host-bin" => out.host_bin = Some(value("--host-bin")?.into()),
            "--markdown" => out.markdown = Some(value("--markdown")?.into()),
            "-h" | "--help" => {
                println!(
                    "wdp-bench [--quick] [--only {}] [--host-bin PATH] [--no-build] [--markdown FILE]",
                    SECTIONS.join(",")
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(out)
}

/// Builds the host binary with this binary's profile, so that one `cargo run -p bench`
/// measures the current source. Returns its path.
fn host_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.host_bin {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    let bin = dir.join("wasm-device-plugin");
    if args.build {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.current_dir(&workspace).args([
            "build",
            "-p",
            "wasm-device-plugin",
            "--bin",
            "wasm-device-plugin",
        ]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        println!("building the host binary: {build:?}");
        let status = build.status()?;
        anyhow::ensure!(status.success(), "building wasm-device-plugin failed");
    }
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it (cargo build --release -p wasm-device-plugin) or pass --host-bin",
        bin.display()
    );
    Ok(bin)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({model}), load average {} at start, {} build",
        load.join(" "),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("bare-plugin") {
        argv.next();
        return bare_plugin_main(argv);
    }
    if argv.peek().map(String::as_str) == Some("profile") {
        argv.next();
        let what = argv.next().unwrap_or_default();
        let n = argv.next().and_then(|n| n.parse().ok()).unwrap_or(100);
        return profile::run(&what, n);
    }
    let args = parse_args(argv)?;
    let host_bin = host_binary(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut ctx = Ctx {
        quick: args.quick,
        host_bin,
        rows: Vec::new(),
        details: String::new(),
    };
    let started = Instant::now();
    ctx.say(format!(
        "# wdp-bench{}",
        if ctx.quick { " --quick" } else { "" }
    ));
    ctx.say(format!("machine: {}", machine()));
    let wanted = |s: &str| args.only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    runtime.block_on(async {
        for section in SECTIONS {
            if !wanted(section) {
                continue;
            }
            let t = Instant::now();
            match section {
                "sizes" => sections::sizes::run(&mut ctx)?,
                "guest" => sections::guest::run(&mut ctx).await?,
                "rtt" => sections::rtt::run(&mut ctx).await?,
                "scale" => sections::scale::run(&mut ctx).await?,
                "handout" => sections::handout::run(&mut ctx).await?,
                _ => sections::process::run(&mut ctx).await?,
            }
            ctx.say(format!("({section}: {:.1} s)", t.elapsed().as_secs_f64()));
        }
        anyhow::Ok(())
    })?;
    let table = stats::table(&ctx.rows);
    println!("\n## Figures\n\n{table}");
    println!("suite took {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.markdown {
        std::fs::write(path, format!("{}\n## Figures\n\n{table}", ctx.details))?;
    }
    // The guests' threads and the in-process hosts' tasks end with the process.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

fn bare_plugin_main(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let (mut dir, mut resource) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--resource" => resource = args.next(),
            other => anyhow::bail!("bare-plugin: unknown argument {other:?}"),
        }
    }
    let dir = dir.ok_or_else(|| anyhow::anyhow!("bare-plugin needs --dir"))?;
    let resource = resource.unwrap_or_else(|| "example.com/bare".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bare::run_child(dir, resource))
}
