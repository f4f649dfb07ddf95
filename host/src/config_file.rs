//! The optional config file (`--config <file>` or `WDP_CONFIG`): a JSON object whose keys
//! are the long flag names (`"guests-dir": "/etc/guests"`). Its entries become defaults
//! for the matching `WDP_*` environment variables that are not set, so clap's own
//! precedence gives flags, then environment, then the file, then built-in defaults.

use anyhow::{Context, bail};

/// Reads the config file named on the command line or in `WDP_CONFIG`, if any, and sets
/// `WDP_<KEY>` for each entry whose variable is unset. Runs first in `main`, before any
/// other thread exists.
pub fn load_as_env_defaults() -> anyhow::Result<()> {
    let Some(path) = config_path() else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {path}"))?;
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{path}: not a JSON object of flag names"))?;
    for (key, value) in entries {
        if !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            bail!("{path}: {key:?} is not a flag name (like \"guests-dir\")");
        }
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => bail!("{path}: {key}: expected a string, number or boolean, found {other}"),
        };
        let var = format!("WDP_{}", key.to_ascii_uppercase().replace('-', "_"));
        if std::env::var_os(&var).is_none() {
            // SAFETY: called at the start of `main`, before the async runtime or any other
            // thread exists, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(var, value) };
        }
    }
    Ok(())
}

/// `--config <path>`, `--config=<path>`, or `WDP_CONFIG`.
fn config_path() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_owned());
        }
    }
    std::env::var("WDP_CONFIG").ok()
}
