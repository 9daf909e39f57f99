//! Results kept across a stop. A job that finished while its reply could not reach the
//! broker (the minion was disconnected, or held back by the broker's disk or memory
//! alarm) and whose minion was then stopped would otherwise be reported "interrupted" at
//! the next start, its result lost. Instead the stopping minion writes each such reply to
//! `DATA_DIR/kept-results/JOB_ID` (msgpack, durably), and the next start sends it in place
//! of "interrupted".
//!
//! The journal still shows the job started, so it is never run again whatever becomes
//! of the file. The file is forgotten once its reply is with the broker and the job is
//! marked finished; a file whose job the journal no longer shows unfinished (the minion
//! stopped in between) is pruned at the next start. A reply still in memory when the
//! minion is killed outright is lost as before: the job is then reported interrupted.

use dispatch_common::envelope::MAX_ENVELOPE_BYTES;
use dispatch_common::message::Reply;
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use tracing::warn;
use uuid::Uuid;

/// The folder of kept results.
#[derive(Debug, Clone)]
pub struct KeptResults {
    dir: PathBuf,
}

impl KeptResults {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `reply` durably, replacing any earlier copy.
    pub fn keep(&self, reply: &Reply) -> std::io::Result<()> {
        let bytes = rmp_serde::to_vec_named(reply).map_err(std::io::Error::other)?;
        dispatch_common::durable::replace(&self.path(reply.job_id), &bytes)
    }

    /// The reply kept for `job_id` by `minion`, if there is a sound one. A file that is
    /// too large to be a reply, does not decode, or names another job or minion is
    /// logged and ignored (the job is then reported interrupted).
    pub fn load(&self, job_id: Uuid, minion: &str) -> Option<Reply> {
        let path = self.path(job_id);
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&path).and_then(|file| {
            // One byte past the limit tells a file that is too large.
            file.take(MAX_ENVELOPE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        });
        match read {
            Ok(_) if bytes.len() > MAX_ENVELOPE_BYTES => {
                warn!(path = %path.display(), "ignoring a kept reply larger than {MAX_ENVELOPE_BYTES} bytes");
                None
            }
            Ok(_) => match rmp_serde::from_slice::<Reply>(&bytes) {
                Ok(reply) if reply.job_id == job_id && reply.minion == minion => Some(reply),
                Ok(reply) => {
                    warn!(path = %path.display(), "ignoring a kept reply of job {} by {}", reply.job_id, reply.minion);
                    None
                }
                Err(e) => {
                    warn!(path = %path.display(), "ignoring a damaged kept reply: {e}");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(path = %path.display(), "cannot read a kept reply: {e}");
                None
            }
        }
    }

    /// Removes the reply kept for `job_id`, if any.
    pub fn forget(&self, job_id: Uuid) {
        remove(&self.path(job_id));
    }

    /// Removes every file but the replies of `unfinished` jobs: replies sent before the
    /// minion could forget them, and leftovers of writes cut short.
    pub fn prune(&self, unfinished: &HashSet<Uuid>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let still_unfinished = name
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
                .is_some_and(|job| unfinished.contains(&job));
            if !still_unfinished {
                remove(&entry.path());
            }
        }
    }

    fn path(&self, job_id: Uuid) -> PathBuf {
        self.dir.join(job_id.to_string())
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), "cannot remove a kept reply: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::message::{ExecResult, Outcome};

    fn finished(job_id: Uuid, minion: &str) -> Reply {
        Reply {
            job_id,
            minion: minion.into(),
            outcome: Outcome::Finished(ExecResult {
                exit_code: Some(0),
                stdout: b"kept\n".to_vec(),
                ..ExecResult::default()
            }),
        }
    }

    #[test]
    fn a_kept_result_comes_back_until_it_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptResults::new(dir.path().join("replies"));
        let job = Uuid::now_v7();
        assert_eq!(kept.load(job, "web.01"), None, "nothing kept yet");
        kept.keep(&finished(job, "web.01")).unwrap();
        assert_eq!(kept.load(job, "web.01"), Some(finished(job, "web.01")));
        assert_eq!(kept.load(job, "web.02"), None, "another minion's id");
        kept.forget(job);
        assert_eq!(kept.load(job, "web.01"), None);
    }

    #[test]
    fn damaged_oversized_and_misplaced_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptResults::new(dir.path().to_owned());
        let (damaged, large, misplaced) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        std::fs::write(kept.path(damaged), b"\xc1 not msgpack").unwrap();
        std::fs::write(kept.path(large), vec![0u8; MAX_ENVELOPE_BYTES + 1]).unwrap();
        let other = finished(Uuid::now_v7(), "web.01");
        std::fs::write(
            kept.path(misplaced),
            rmp_serde::to_vec_named(&other).unwrap(),
        )
        .unwrap();
        for job in [damaged, large, misplaced] {
            assert_eq!(kept.load(job, "web.01"), None);
        }
    }

    #[test]
    fn pruning_keeps_only_the_results_of_unfinished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptResults::new(dir.path().to_owned());
        let (unfinished, sent) = (Uuid::now_v7(), Uuid::now_v7());
        kept.keep(&finished(unfinished, "web.01")).unwrap();
        kept.keep(&finished(sent, "web.01")).unwrap();
        std::fs::write(dir.path().join("stray.tmp"), b"cut short").unwrap();
        kept.prune(&HashSet::from([unfinished]));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [unfinished.to_string()]);
    }
}
