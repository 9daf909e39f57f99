//! A small tmpfs mounted over a directory for the length of a test, to fill a disk on
//! purpose. Mounting needs root (CI runs as root); elsewhere [`can_mount`] says why the
//! test skips, and fails under `CI=true`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted over a directory, unmounted when dropped.
pub struct TinyDisk(PathBuf);

impl TinyDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `16m`) over `dir`.
    pub fn mount(dir: &Path, size: &str) -> TinyDisk {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        TinyDisk(dir.to_owned())
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Whether `test` can run here; says why not (and fails under `CI=true`) otherwise.
pub fn can_mount(test: &str) -> bool {
    if running_as_root() {
        return true;
    }
    let note = format!("SKIPPED {test}: mounting a small tmpfs needs root");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{note} (CI=true)"
    );
    eprintln!("{note}");
    false
}
