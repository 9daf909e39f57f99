//! The job journal: the minion's replay guard and its memory of what it was running.
//!
//! # Format
//!
//! `DATA_DIR/journal` is a text file of JSON lines, appended to and never edited in
//! place:
//!
//! ```text
//! {"job":"0190c4a2-…","state":"started","expires_at_ms":1718000060000}
//! {"job":"0190c4a2-…","state":"finished","expires_at_ms":1718000060000}
//! ```
//!
//! A job id appears with `started` when the minion decides to run it and with
//! `finished` once its reply (result, or "interrupted") has been handed to the broker.
//! The last line for a job wins. Every line carries the command's signed expiry.
//!
//! # Fsync points
//!
//! [`Journal::begin`] writes the `started` line and fsyncs the file *before* it returns,
//! and the minion spawns a job only after it returned: a job that ran is always in the
//! journal, so it is never run twice (a redelivered or republished command finds it)
//! and a minion that died while it ran reports it `interrupted` at the next start.
//! [`Journal::finish`] also fsyncs; losing a `finished` line only means a job is reported
//! interrupted once more after a crash. An append that fails (disk full) cuts the file
//! back to its previous length, so no partial line is left for the next line to be
//! glued onto.
//!
//! # Recovery and compaction
//!
//! [`Journal::open`] reads at most [`MAX_JOURNAL_BYTES`] (a larger file is refused: it
//! is compacted at every start, so size means damage). A line that does not parse, is
//! longer than [`MAX_JOURNAL_LINE`], or lacks its final newline (a write torn by a crash,
//! whose `begin` therefore never returned and whose job never started) is skipped with a
//! warning. Jobs left `started` are returned as unfinished (reported with their kept
//! result, [`crate::kept`], or else as interrupted), and stay in the journal (so they
//! are never run again) until the session reports them and marks them finished.
//!
//! Open then rewrites the file with one line per job still worth remembering (a
//! temporary file, fsync, rename, fsync of the directory): an entry is dropped once
//! `now > expires_at + skew` and it is finished — past that point an old command is
//! refused as expired anyway. The same compaction runs every
//! [`JOURNAL_COMPACT_EVERY`] appends while the minion runs.

use crate::config::{JOURNAL_COMPACT_EVERY, MAX_JOURNAL_BYTES, MAX_JOURNAL_LINE};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Where a job stands in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Taken: the job was (or is being) run.
    Started,
    /// Its reply was handed to the broker.
    Finished,
}

/// One journal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    job: Uuid,
    state: JobState,
    expires_at_ms: u64,
}

/// What the journal knows about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub state: JobState,
    pub expires_at_ms: u64,
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal {path} is {size} bytes, more than the {MAX_JOURNAL_BYTES}-byte limit; it is \
         compacted at every start, so it is damaged: move it away to start with an empty \
         journal (commands already run could then be run again until they expire)"
    )]
    TooLarge { path: PathBuf, size: u64 },
}

/// The open journal of one minion.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<Uuid, Entry>,
    skew_ms: u64,
    appended: u64,
    /// An append failed and could not be cut back: a partial line may end the file.
    torn: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, compacts it as of `now_ms`, and
    /// returns it with the jobs that were started but never finished: the minion stopped
    /// while they ran or before their reply was sent, and they are to be reported.
    pub fn open(path: &Path, skew_ms: u64, now_ms: u64) -> Result<(Self, Vec<Uuid>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let mut entries = HashMap::new();
        match File::open(path) {
            Ok(file) => {
                let size = file.metadata().map_err(io)?.len();
                if size > MAX_JOURNAL_BYTES {
                    return Err(JournalError::TooLarge {
                        path: path.to_owned(),
                        size,
                    });
                }
                let mut bytes = Vec::with_capacity(size as usize);
                file.take(MAX_JOURNAL_BYTES)
                    .read_to_end(&mut bytes)
                    .map_err(io)?;
                entries = parse(path, &bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut interrupted: Vec<Uuid> = entries
            .iter()
            .filter(|(_, e)| e.state == JobState::Started)
            .map(|(id, _)| *id)
            .collect();
        interrupted.sort();
        let file = rewrite(path, &mut entries, skew_ms, now_ms)?;
        let journal = Self {
            path: path.to_owned(),
            file,
            entries,
            skew_ms,
            appended: 0,
            torn: false,
        };
        Ok((journal, interrupted))
    }

    /// What the journal knows of `job`.
    pub fn get(&self, job: &Uuid) -> Option<Entry> {
        self.entries.get(job).copied()
    }

    /// Whether `job` was ever taken (within the remembered window).
    pub fn contains(&self, job: &Uuid) -> bool {
        self.entries.contains_key(job)
    }

    /// Number of jobs remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes `job`: appends `started` and fsyncs. Returns `false`, writing nothing,
    /// when the job was already taken (a replay). Spawn the job only after `Ok(true)`.
    pub fn begin(
        &mut self,
        job: Uuid,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, JournalError> {
        if self.entries.contains_key(&job) {
            return Ok(false);
        }
        self.append(Line {
            job,
            state: JobState::Started,
            expires_at_ms,
        })?;
        self.entries.insert(
            job,
            Entry {
                state: JobState::Started,
                expires_at_ms,
            },
        );
        self.maybe_compact(now_ms)?;
        Ok(true)
    }

    /// Marks `job` finished (its reply is with the broker) and fsyncs. A job the journal
    /// does not know is ignored.
    pub fn finish(&mut self, job: Uuid) -> Result<(), JournalError> {
        let Some(entry) = self.entries.get(&job).copied() else {
            return Ok(());
        };
        if entry.state == JobState::Finished {
            return Ok(());
        }
        self.append(Line {
            job,
            state: JobState::Finished,
            expires_at_ms: entry.expires_at_ms,
        })?;
        self.entries.insert(
            job,
            Entry {
                state: JobState::Finished,
                ..entry
            },
        );
        Ok(())
    }

    /// Rewrites the journal now, dropping what is past its window.
    pub fn compact(&mut self, now_ms: u64) -> Result<(), JournalError> {
        self.file = rewrite(&self.path, &mut self.entries, self.skew_ms, now_ms)?;
        self.appended = 0;
        self.torn = false;
        Ok(())
    }

    fn maybe_compact(&mut self, now_ms: u64) -> Result<(), JournalError> {
        if self.appended >= JOURNAL_COMPACT_EVERY {
            self.compact(now_ms)?;
        }
        Ok(())
    }

    fn append(&mut self, line: Line) -> Result<(), JournalError> {
        let mut text = serde_json::to_string(&line).expect("journal lines always encode");
        text.push('\n');
        append_line(&mut self.file, text.as_bytes(), &mut self.torn).map_err(|source| {
            JournalError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        self.appended += 1;
        Ok(())
    }
}

/// What the journal appends to: a [`File`], or in tests a disk that fills up.
trait AppendTarget: Write {
    fn len(&self) -> std::io::Result<u64>;
    fn sync(&mut self) -> std::io::Result<()>;
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl AppendTarget for File {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

/// Appends one `line` (ending in a newline) to `file` and syncs it.
///
/// A write can fail halfway (disk full). The file is then cut back to its previous
/// length before the error is returned: a partial line left behind would have the next
/// good line glued onto it, and both would be skipped at recovery (a job could then run
/// twice). If even the cut fails, `torn` is set and the next append starts with a
/// newline of its own, so only the partial line is lost.
fn append_line(file: &mut impl AppendTarget, line: &[u8], torn: &mut bool) -> std::io::Result<()> {
    let len = file.len()?;
    let written = (|| {
        if *torn {
            file.write_all(b"\n")?;
        }
        file.write_all(line)?;
        file.sync()
    })();
    match written {
        Ok(()) => {
            *torn = false;
            Ok(())
        }
        Err(e) => {
            match file.truncate(len).and_then(|()| file.sync()) {
                Ok(()) => {}
                Err(cut) => {
                    tracing::error!(
                        "cannot cut the journal back after a failed write ({cut}); the next \
                         line starts on a line of its own"
                    );
                    *torn = true;
                }
            }
            Err(e)
        }
    }
}

/// Parses journal bytes, skipping (with a warning) every line that is torn or corrupt.
fn parse(path: &Path, bytes: &[u8]) -> HashMap<Uuid, Entry> {
    let mut entries = HashMap::new();
    let mut rest = bytes;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            tracing::warn!(
                journal = %path.display(),
                line = number,
                "skipping the torn last line of the journal (a write cut short by a crash)"
            );
            break;
        };
        let raw = &rest[..end];
        rest = &rest[end + 1..];
        if raw.is_empty() {
            continue;
        }
        let parsed = (raw.len() <= MAX_JOURNAL_LINE)
            .then(|| serde_json::from_slice::<Line>(raw).ok())
            .flatten();
        match parsed {
            Some(line) => {
                entries.insert(
                    line.job,
                    Entry {
                        state: line.state,
                        expires_at_ms: line.expires_at_ms,
                    },
                );
            }
            None => tracing::warn!(
                journal = %path.display(),
                line = number,
                "skipping a corrupt journal line"
            ),
        }
    }
    entries
}

/// Drops finished entries past `expires_at + skew`, replaces `path` with the rest
/// durably, and returns the new file open for appending.
fn rewrite(
    path: &Path,
    entries: &mut HashMap<Uuid, Entry>,
    skew_ms: u64,
    now_ms: u64,
) -> Result<File, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    entries.retain(|_, e| {
        e.state == JobState::Started || now_ms <= e.expires_at_ms.saturating_add(skew_ms)
    });
    let mut lines: Vec<(&Uuid, &Entry)> = entries.iter().collect();
    lines.sort_by_key(|(id, _)| **id);
    let mut text = String::new();
    for (job, entry) in lines {
        text.push_str(
            &serde_json::to_string(&Line {
                job: *job,
                state: entry.state,
                expires_at_ms: entry.expires_at_ms,
            })
            .expect("journal lines always encode"),
        );
        text.push('\n');
    }
    dispatch_common::durable::replace(path, text.as_bytes()).map_err(io)?;
    OpenOptions::new().append(true).open(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: u64 = 60_000;
    const NOW: u64 = 1_700_000_000_000;

    fn job() -> Uuid {
        Uuid::now_v7()
    }

    fn open(path: &Path, now: u64) -> (Journal, Vec<Uuid>) {
        Journal::open(path, SKEW, now).unwrap()
    }

    #[test]
    fn the_replay_guard_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (a, b) = (job(), job());
        {
            let (mut journal, _) = open(&path, NOW);
            assert!(journal.begin(a, NOW + 60_000, NOW).unwrap());
            assert!(
                !journal.begin(a, NOW + 60_000, NOW).unwrap(),
                "second begin is a replay"
            );
            assert!(journal.begin(b, NOW + 60_000, NOW).unwrap());
            journal.finish(b).unwrap();
        }
        let (mut journal, _) = open(&path, NOW + 1000);
        assert!(journal.contains(&a) && journal.contains(&b));
        assert!(!journal.begin(a, NOW + 60_000, NOW).unwrap());
        assert!(!journal.begin(b, NOW + 60_000, NOW).unwrap());
    }

    #[test]
    fn a_started_job_never_finished_is_reported_interrupted_after_reopening_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (running, done) = (job(), job());
        {
            let (mut journal, interrupted) = open(&path, NOW);
            assert!(interrupted.is_empty());
            journal.begin(running, NOW + 60_000, NOW).unwrap();
            journal.begin(done, NOW + 60_000, NOW).unwrap();
            journal.finish(done).unwrap();
        }
        let (mut journal, interrupted) = open(&path, NOW);
        assert_eq!(interrupted, vec![running]);
        // Reported: marked finished, still a replay, and not reported again.
        journal.finish(running).unwrap();
        assert!(!journal.begin(running, NOW + 60_000, NOW).unwrap());
        drop(journal);
        let (journal, interrupted) = open(&path, NOW);
        assert!(interrupted.is_empty());
        assert_eq!(journal.get(&running).unwrap().state, JobState::Finished);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let kept = job();
        {
            let (mut journal, _) = open(&path, NOW);
            journal.begin(kept, NOW + 60_000, NOW).unwrap();
            journal.finish(kept).unwrap();
        }
        let torn = job();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{{\"job\":\"{torn}\",\"state\":\"sta").unwrap();
        drop(file);
        let (mut journal, interrupted) = open(&path, NOW);
        assert!(interrupted.is_empty());
        assert!(journal.contains(&kept));
        assert!(!journal.contains(&torn), "the torn job never started");
        // Appending after recovery yields a clean file.
        let next = job();
        journal.begin(next, NOW + 60_000, NOW).unwrap();
        drop(journal);
        let (journal, interrupted) = open(&path, NOW);
        assert_eq!(interrupted, vec![next]);
        assert!(journal.contains(&kept));
    }

    #[test]
    fn corrupt_and_overlong_lines_in_the_middle_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let good = job();
        let text = format!(
            "garbage\n{}\n{{\"job\":\"{good}\",\"state\":\"finished\",\"expires_at_ms\":{}}}\n\n",
            "x".repeat(MAX_JOURNAL_LINE + 1),
            NOW + 60_000
        );
        std::fs::write(&path, text).unwrap();
        let (journal, interrupted) = open(&path, NOW);
        assert!(interrupted.is_empty());
        assert_eq!(journal.len(), 1);
        assert!(journal.contains(&good));
    }

    #[test]
    fn compaction_drops_finished_entries_past_expiry_plus_skew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (old, recent, old_but_unreported) = (job(), job(), job());
        {
            let (mut journal, _) = open(&path, NOW);
            journal.begin(old, NOW + 1_000, NOW).unwrap();
            journal.finish(old).unwrap();
            journal.begin(recent, NOW + 600_000, NOW).unwrap();
            journal.finish(recent).unwrap();
            journal.begin(old_but_unreported, NOW + 1_000, NOW).unwrap();
        }
        // Within expiry + skew: everything is kept.
        let (journal, _) = open(&path, NOW + 1_000 + SKEW);
        assert_eq!(journal.len(), 3);
        drop(journal);
        // Past it: the old finished job goes, the unreported one stays until reported.
        let (journal, interrupted) = open(&path, NOW + 1_001 + SKEW);
        assert_eq!(interrupted, vec![old_but_unreported]);
        assert!(!journal.contains(&old));
        assert!(journal.contains(&recent) && journal.contains(&old_but_unreported));
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 2, "one line per remembered job after compaction");
    }

    #[test]
    fn an_oversized_journal_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let file = File::create(&path).unwrap();
        file.set_len(MAX_JOURNAL_BYTES + 1).unwrap();
        let err = Journal::open(&path, SKEW, NOW).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    /// A disk with `room` bytes left: a write past it is cut short, then fails.
    struct FullDisk {
        data: Vec<u8>,
        room: usize,
        can_truncate: bool,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            let n = buf.len().min(self.room);
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl AppendTarget for FullDisk {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.data.len() as u64)
        }

        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            if !self.can_truncate {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            self.data.truncate(len as usize);
            Ok(())
        }
    }

    fn line(job: Uuid, state: JobState) -> Vec<u8> {
        let mut text = serde_json::to_vec(&Line {
            job,
            state,
            expires_at_ms: NOW,
        })
        .unwrap();
        text.push(b'\n');
        text
    }

    #[test]
    fn a_write_that_fails_halfway_leaves_no_partial_line() {
        let (first, failed, next) = (job(), job(), job());
        let mut disk = FullDisk {
            data: Vec::new(),
            room: 0,
            can_truncate: true,
        };
        let mut torn = false;
        let good = line(first, JobState::Finished);
        disk.room = good.len() + 10;
        append_line(&mut disk, &good, &mut torn).unwrap();
        let err = append_line(&mut disk, &line(failed, JobState::Started), &mut torn).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(disk.data, good, "the partial line is cut away");
        assert!(!torn);
        // Room again: the next line is whole and found at recovery.
        disk.room = usize::MAX;
        append_line(&mut disk, &line(next, JobState::Started), &mut torn).unwrap();
        let entries = parse(Path::new("journal"), &disk.data);
        assert_eq!(entries.len(), 2);
        assert!(entries.contains_key(&first) && entries.contains_key(&next));
        assert!(!entries.contains_key(&failed));
    }

    #[test]
    fn a_partial_line_that_cannot_be_cut_does_not_swallow_the_next_line() {
        let (failed, next) = (job(), job());
        let mut disk = FullDisk {
            data: Vec::new(),
            room: 20,
            can_truncate: false,
        };
        let mut torn = false;
        append_line(&mut disk, &line(failed, JobState::Started), &mut torn).unwrap_err();
        assert!(torn);
        disk.room = usize::MAX;
        append_line(&mut disk, &line(next, JobState::Started), &mut torn).unwrap();
        assert!(!torn);
        let entries = parse(Path::new("journal"), &disk.data);
        assert_eq!(entries.keys().collect::<Vec<_>>(), vec![&next]);
    }
}
