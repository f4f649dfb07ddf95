//! The optional config file (`--config <file>` or `WDP_CONFIG`): a JSON object whose keys
//! are the long flag names (`"guests-dir": "/etc/guests"`). Its entries become defaults
//! for the matching `WDP_*` environment variables that are not set, so clap's own
//! precedence gives flags, then environment, then the file, then built-in defaults.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Reads the config file named on the command line or in `WDP_CONFIG`, if any, and sets
/// the environment variable of each entry's flag where it is unset. A key that is not
/// a flag with an environment variable of `command` (a typo like `guest-dir`) is an
/// error naming it. Runs first in `main`, before any other thread exists.
pub fn load_as_env_defaults(command: &clap::Command) -> anyhow::Result<()> {
    let Some(path) = config_path() else {
        return Ok(());
    };
    let shown = path.display();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {shown}"))?;
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{shown}: not a JSON object of flag names"))?;
    let flags = flags_with_env(command);
    for (key, value) in entries {
        let Some(var) = flags.get(&key) else {
            let hint = closest(&key, flags.keys())
                .map(|k| format!("; did you mean {k:?}?"))
                .unwrap_or_default();
            bail!(
                "{shown}: unknown key {key:?}{hint} (keys are the long flag names of `--help`, like \"guests-dir\")"
            );
        };
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => bail!("{shown}: {key}: expected a string, number or boolean, found {other}"),
        };
        if std::env::var_os(var).is_none() {
            // SAFETY: called at the start of `main`, before the async runtime or any other
            // thread exists, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(var, value) };
        }
    }
    Ok(())
}

/// `--config <path>`, `--config=<path>`, or `WDP_CONFIG`. Arguments need not be UTF-8
/// (paths on Linux are bytes); clap reports any that must be.
fn config_path() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.as_bytes().strip_prefix(b"--config=") {
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
        }
    }
    std::env::var_os("WDP_CONFIG").map(PathBuf::from)
}

/// Every long flag of `command` and its subcommands that has an environment variable,
/// with that variable: what a config file may set.
fn flags_with_env(command: &clap::Command) -> BTreeMap<String, OsString> {
    let mut flags = BTreeMap::new();
    let mut stack = vec![command];
    while let Some(command) = stack.pop() {
        for arg in command.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
                flags.insert(long.to_owned(), env.to_owned());
            }
        }
        stack.extend(command.get_subcommands());
    }
    flags.remove("config");
    flags
}

/// The known key nearest to `key` by edit distance, if it is near enough to be a typo.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn config_keys_are_the_flags_with_an_environment_variable() {
        let flags = flags_with_env(&crate::Cli::command());
        assert_eq!(
            flags.get("guests-dir").map(|v| v.to_str()),
            Some(Some("WDP_GUESTS_DIR"))
        );
        assert!(flags.contains_key("registration"));
        assert!(
            !flags.contains_key("config"),
            "a file cannot name another file"
        );
        assert_eq!(
            closest("guest-dir", flags.keys()).map(String::as_str),
            Some("guests-dir")
        );
        assert_eq!(closest("frobnicate", flags.keys()), None);
    }
}
