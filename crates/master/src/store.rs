//! The job store: every job and every return, in SQLite in the master's data dir
//! (`DIR/jobs.sqlite`).
//!
//! The schema evolves by numbered migrations recorded in `PRAGMA user_version`; a store
//! written by a newer master is refused rather than misread. The database runs in WAL
//! mode with `synchronous = NORMAL`: a committed job survives a master crash, and at
//! worst the last few milliseconds of writes are lost on a power cut.
//!
//! Returns are keyed by (job, minion) and the first one recorded wins, with one
//! exception: a refusal gives way to a later result or interruption (a copy replayed
//! while the real job still ran is refused before the real result arrives). A job
//! records the nonce of the request that made it, so a request redelivered after a
//! master crash cannot publish the job twice.
//!
//! Every method blocks on SQLite; async callers go through `spawn_blocking`.

use dispatch_common::message::{Exec, Outcome, Reply};
use dispatch_common::target::Target;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;
use uuid::Uuid;

/// Schema migrations, in order; entry `n` brings `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        submitted_by TEXT NOT NULL,
        submitted_at_ms INTEGER NOT NULL,
        origin TEXT NOT NULL,
        target TEXT NOT NULL,
        target_spec BLOB NOT NULL,
        expected TEXT NOT NULL,
        exec BLOB NOT NULL,
        wait_ms INTEGER NOT NULL,
        ttl_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        request_nonce BLOB UNIQUE
    );
    CREATE INDEX jobs_by_time ON jobs (submitted_at_ms);
    CREATE TABLE returns (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        minion TEXT NOT NULL,
        arrived_at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        outcome BLOB NOT NULL,
        PRIMARY KEY (job_id, minion)
    );"];

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "job store {path} has schema version {found}, newer than this master knows ({known}); \
         run a newer dispatch master"
    )]
    TooNew {
        path: String,
        found: i64,
        known: usize,
    },
    #[error("job store: a stored value does not decode: {0}")]
    Decode(String),
}

/// A job as it is recorded when it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: Uuid,
    pub submitted_by: String,
    pub submitted_at_ms: u64,
    /// `cli` for `dispatch run`; later a schedule's name.
    pub origin: String,
    pub target: Target,
    pub expected: Vec<String>,
    pub exec: Exec,
    pub wait_ms: u64,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    /// The nonce of the RPC request that made the job, if one did.
    pub request_nonce: Option<[u8; 16]>,
}

/// One recorded return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnRecord {
    pub minion: String,
    pub arrived_at_ms: u64,
    pub outcome: Outcome,
}

/// The SQLite job store.
#[derive(Debug)]
pub struct JobStore {
    connection: Mutex<Connection>,
}

impl JobStore {
    /// Opens (creating and migrating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (n, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = connection.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", (n + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new job; false if a job of the same request is already recorded.
    pub fn insert_job(&self, job: &JobRecord) -> Result<bool, StoreError> {
        let inserted = self.lock().execute(
            "INSERT OR IGNORE INTO jobs (id, submitted_by, submitted_at_ms, origin, target,
                               target_spec, expected, exec, wait_ms, ttl_ms, expires_at_ms,
                               request_nonce)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                job.id.to_string(),
                job.submitted_by,
                job.submitted_at_ms as i64,
                job.origin,
                job.target.to_string(),
                encode(&job.target),
                job.expected.join(","),
                encode(&job.exec),
                job.wait_ms as i64,
                job.ttl_ms as i64,
                job.expires_at_ms as i64,
                job.request_nonce.map(|n| n.to_vec()),
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Records a return; false when it does not count: the job is unknown, or this
    /// minion's return to it is already recorded (a refusal only gives way to a result).
    pub fn insert_return(&self, reply: &Reply, arrived_at_ms: u64) -> Result<bool, StoreError> {
        let recorded = self.lock().execute(
            "INSERT INTO returns (job_id, minion, arrived_at_ms, kind, outcome)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)
             ON CONFLICT (job_id, minion) DO UPDATE
                SET arrived_at_ms = excluded.arrived_at_ms, kind = excluded.kind,
                    outcome = excluded.outcome
                WHERE returns.kind = 'refused' AND excluded.kind != 'refused'",
            params![
                reply.job_id.to_string(),
                reply.minion,
                arrived_at_ms as i64,
                outcome_kind(&reply.outcome),
                encode(&reply.outcome),
            ],
        )?;
        Ok(recorded == 1)
    }

    /// The job `id`, if recorded.
    pub fn job(&self, id: &Uuid) -> Result<Option<JobRecord>, StoreError> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT submitted_by, submitted_at_ms, origin, target_spec, expected, exec,
                        wait_ms, ttl_ms, expires_at_ms
                 FROM jobs WHERE id = ?1",
                params![id.to_string()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                },
            )
            .optional()?;
        let Some((by, at, origin, target, expected, exec, wait, ttl, expires)) = row else {
            return Ok(None);
        };
        Ok(Some(JobRecord {
            id: *id,
            submitted_by: by,
            submitted_at_ms: at as u64,
            origin,
            target: decode(&target)?,
            expected: expected
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            exec: decode(&exec)?,
            wait_ms: wait as u64,
            ttl_ms: ttl as u64,
            expires_at_ms: expires as u64,
            request_nonce: None,
        }))
    }

    /// Every return of job `id`, in order of arrival.
    pub fn returns(&self, id: &Uuid) -> Result<Vec<ReturnRecord>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT minion, arrived_at_ms, outcome FROM returns
             WHERE job_id = ?1 ORDER BY arrived_at_ms, minion",
        )?;
        let rows = statement.query_map(params![id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut returns = Vec::new();
        for row in rows {
            let (minion, at, outcome) = row?;
            returns.push(ReturnRecord {
                minion,
                arrived_at_ms: at as u64,
                outcome: decode(&outcome)?,
            });
        }
        Ok(returns)
    }
}

/// The `kind` column of a return.
fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Finished(_) => "finished",
        Outcome::Refused { .. } => "refused",
        Outcome::Interrupted => "interrupted",
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("stored values always encode")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_common::message::ExecResult;

    fn job() -> JobRecord {
        JobRecord {
            id: Uuid::now_v7(),
            submitted_by: "operator.local".into(),
            submitted_at_ms: 1,
            origin: "cli".into(),
            target: Target::pattern("web.*").unwrap(),
            expected: vec!["web.01".into(), "web.02".into()],
            exec: Exec {
                argv: vec!["uptime".into()],
                shell: false,
                env: vec![],
                cwd: None,
                timeout_ms: Some(5),
            },
            wait_ms: 2,
            ttl_ms: 3,
            expires_at_ms: 4,
            request_nonce: Some([7; 16]),
        }
    }

    fn reply(job: &JobRecord, minion: &str, outcome: Outcome) -> Reply {
        Reply {
            job_id: job.id,
            minion: minion.into(),
            outcome,
        }
    }

    #[test]
    fn jobs_and_returns_survive_reopening_and_a_result_outranks_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let job = job();
        {
            let store = JobStore::open(&path).unwrap();
            assert!(store.insert_job(&job).unwrap());
            let again = JobRecord {
                id: Uuid::now_v7(),
                ..job.clone()
            };
            assert!(!store.insert_job(&again).unwrap(), "same request, no second job");
            let refused = || Outcome::Refused {
                reason: "replayed".into(),
            };
            let done = Outcome::Finished(ExecResult {
                exit_code: Some(0),
                ..ExecResult::default()
            });
            let record = |outcome, at| store.insert_return(&reply(&job, "web.01", outcome), at);
            assert!(record(refused(), 9).unwrap());
            assert!(record(done, 10).unwrap());
            assert!(!record(refused(), 11).unwrap());
            assert!(!record(Outcome::Interrupted, 12).unwrap());
        }
        let store = JobStore::open(&path).unwrap();
        let stored = store.job(&job.id).unwrap().unwrap();
        let expected = JobRecord {
            request_nonce: None,
            ..job.clone()
        };
        assert_eq!(stored, expected);
        let returns = store.returns(&job.id).unwrap();
        assert_eq!(returns.len(), 1);
        assert!(matches!(returns[0].outcome, Outcome::Finished(_)));
    }

    #[test]
    fn returns_for_unknown_jobs_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let stray = reply(&job(), "web.01", Outcome::Interrupted);
        assert!(!store.insert_return(&stray, 1).unwrap());
    }

    #[test]
    fn a_store_from_a_newer_master_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        drop(JobStore::open(&path).unwrap());
        let connection = Connection::open(&path).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        drop(connection);
        let err = JobStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
