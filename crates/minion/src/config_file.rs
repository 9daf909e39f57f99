//! `--config FILE`: the minion's options in a TOML file, for systemd units and
//! configuration management.
//!
//! Every key is a command-line option without its dashes (`master`, `id`, `groups` or
//! `group`, `data_dir` or `data-dir`, `master_fingerprint`, `skew`, `concurrency`,
//! `reconnect_max`, `max_output`); values are strings, integers or, for `groups`, an
//! array of strings. The file's options are placed before the command line's, so an
//! option given on the command line wins (groups add up). An unknown key is an error
//! that names the file.
//!
//! ```toml
//! master = "amqp://master.example:5672"
//! id = "web.01"
//! groups = ["web", "eu"]
//! data_dir = "/var/lib/dispatch-minion"
//! ```

use std::ffi::OsString;
use std::path::Path;

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The options a config file may set.
const KEYS: &[&str] = &[
    "master",
    "id",
    "group",
    "data-dir",
    "master-fingerprint",
    "skew",
    "concurrency",
    "reconnect-max",
    "max-output",
];

/// `argv` with the options of its `--config FILE` (if any) inserted after the program
/// name, before the command line's own options.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let mut expanded = argv[..1].to_vec();
    expanded.extend(options(Path::new(&path))?);
    expanded.extend(argv.into_iter().skip(1));
    Ok(expanded)
}

/// The value of `--config FILE` or `--config=FILE`.
fn config_path(argv: &[OsString]) -> Option<OsString> {
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--" {
            return None;
        }
        if word == "--config" {
            return words.next().cloned();
        }
        if let Some(path) = word.to_str().and_then(|w| w.strip_prefix("--config=")) {
            return Some(path.into());
        }
    }
    None
}

/// The file's settings as command-line words.
fn options(path: &Path) -> Result<Vec<OsString>, String> {
    let fail = |what: String| format!("config file {}: {what}", path.display());
    let size = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > MAX_CONFIG_BYTES {
        return Err(fail(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(e.to_string()))?;
    let mut words = Vec::new();
    for (key, value) in table {
        let option = match key.replace('_', "-").as_str() {
            "groups" => "group".to_owned(),
            other => other.to_owned(),
        };
        if !KEYS.contains(&option.as_str()) {
            return Err(fail(format!(
                "unknown setting '{key}'; settings are {}",
                KEYS.join(", ")
            )));
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                other => {
                    return Err(fail(format!(
                        "'{key}' is a {}: expected a string or a number",
                        other.type_str()
                    )));
                }
            };
            words.push(format!("--{option}").into());
            words.push(text.into());
        }
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_settings_come_before_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minion.toml");
        std::fs::write(
            &path,
            "id = \"web.01\"\ngroups = [\"web\", \"eu\"]\nconcurrency = 2\n",
        )
        .unwrap();
        let expanded = expand(argv(&[
            "m",
            "--config",
            path.to_str().unwrap(),
            "--id",
            "web.02",
        ]))
        .unwrap();
        let words: Vec<_> = expanded.iter().map(|w| w.to_str().unwrap()).collect();
        assert_eq!(
            words[..9],
            [
                "m",
                "--concurrency",
                "2",
                "--group",
                "web",
                "--group",
                "eu",
                "--id",
                "web.01"
            ]
        );
        assert_eq!(words[words.len() - 2..], ["--id", "web.02"]);
    }

    #[test]
    fn unknown_settings_and_bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minion.toml");
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = expand(argv(&["m", "--config", path.to_str().unwrap()])).unwrap_err();
        assert!(
            err.contains("minion.toml") && err.contains("unknown setting 'colour'"),
            "{err}"
        );
        let missing = expand(argv(&["m", "--config=/nonexistent.toml"])).unwrap_err();
        assert!(missing.contains("/nonexistent.toml"), "{missing}");
        assert_eq!(expand(argv(&["m", "--id", "a"])).unwrap().len(), 3);
    }
}
