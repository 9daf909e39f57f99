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
//! Schedules live in their own table, one msgpack-encoded [`Schedule`] per name. So do
//! rolling batches still under way ([`RollingBatch`]), so a restarted master goes on
//! with them.
//!
//! Job ids are stored as 32 lowercase hex digits, and reversed beside, so a lookup by
//! prefix or by suffix is an index range scan whatever the number of jobs.
//!
//! Every method blocks on SQLite; async callers go through `spawn_blocking`.

use crate::schedule::Schedule;
use dispatch_common::message::{Exec, Outcome, Reply, now_ms};
use dispatch_common::target::Target;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;
use uuid::Uuid;

/// Schema migrations, in order; entry `n` brings `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        reversed_id TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        submitted_at_ms INTEGER NOT NULL,
        origin TEXT NOT NULL,
        target TEXT NOT NULL,
        target_spec BLOB NOT NULL,
        expected TEXT NOT NULL,
        offline TEXT NOT NULL,
        exec BLOB NOT NULL,
        wait_ms INTEGER NOT NULL,
        ttl_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        request_nonce BLOB UNIQUE
    );
    CREATE INDEX jobs_by_time ON jobs (submitted_at_ms);
    CREATE INDEX jobs_by_suffix ON jobs (reversed_id);
    CREATE TABLE returns (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        minion TEXT NOT NULL,
        arrived_at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        outcome BLOB NOT NULL,
        PRIMARY KEY (job_id, minion)
    );",
    "CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        schedule BLOB NOT NULL
    );",
    "CREATE TABLE request_nonces (
        nonce BLOB PRIMARY KEY,
        expires_at_ms INTEGER NOT NULL
    );",
    "CREATE TABLE rolling_batches (
        job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        size INTEGER NOT NULL,
        queue TEXT NOT NULL,
        in_flight TEXT NOT NULL,
        until_ms INTEGER NOT NULL
    );",
];

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
    /// Expected minions that were not connected when the job was published.
    pub offline: Vec<String>,
    pub exec: Exec,
    pub wait_ms: u64,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    /// The nonce of the RPC request that made the job, if one did.
    pub request_nonce: Option<[u8; 16]>,
}

/// Where a rolling batch (`dispatch run --batch`) stands: how many minions may have the
/// command at once, which online targets have not been sent it yet, which have it and
/// have not returned, and until when the batch may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollingBatch {
    pub job_id: Uuid,
    pub size: usize,
    pub queue: Vec<String>,
    pub in_flight: Vec<String>,
    pub until_ms: u64,
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
            "INSERT OR IGNORE INTO jobs (id, reversed_id, submitted_by, submitted_at_ms, origin,
                               target, target_spec, expected, offline, exec, wait_ms, ttl_ms,
                               expires_at_ms, request_nonce)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                hex_id(&job.id),
                reversed(&hex_id(&job.id)),
                job.submitted_by,
                job.submitted_at_ms as i64,
                job.origin,
                job.target.to_string(),
                encode(&job.target),
                job.expected.join(","),
                job.offline.join(","),
                encode(&job.exec),
                job.wait_ms as i64,
                job.ttl_ms as i64,
                job.expires_at_ms as i64,
                job.request_nonce.map(|n| n.to_vec()),
            ],
        )?;
        Ok(inserted == 1)
    }

    /// Records a return; false when it does not count: the job is unknown, the minion is
    /// not one it expects, or this minion's return to it is already recorded (a refusal
    /// only gives way to a result).
    pub fn insert_return(&self, reply: &Reply, arrived_at_ms: u64) -> Result<bool, StoreError> {
        let recorded = self.lock().execute(
            "INSERT INTO returns (job_id, minion, arrived_at_ms, kind, outcome)
             SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (
                SELECT 1 FROM jobs WHERE id = ?1 AND ',' || expected || ',' LIKE '%,' || ?2 || ',%')
             ON CONFLICT (job_id, minion) DO UPDATE
                SET arrived_at_ms = excluded.arrived_at_ms, kind = excluded.kind,
                    outcome = excluded.outcome
                WHERE returns.kind = 'refused' AND excluded.kind != 'refused'",
            params![
                hex_id(&reply.job_id),
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
        let mut statement = connection.prepare_cached(&format!("{SELECT_JOB} WHERE id = ?1"))?;
        let row = statement
            .query_row(params![hex_id(id)], read_job)
            .optional()?;
        row.map(JobRow::decode).transpose()
    }

    /// Ids of the jobs whose id starts or ends with `hex` (lowercase hex digits), at
    /// most `limit`.
    pub fn find_ids(&self, hex: &str, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id FROM jobs WHERE id >= ?1 AND id < ?1 || 'g'
             UNION SELECT id FROM jobs WHERE reversed_id >= ?2 AND reversed_id < ?2 || 'g'
             LIMIT ?3",
        )?;
        let rows = statement.query_map(params![hex, reversed(hex), limit as i64], |r| {
            r.get::<_, String>(0)
        })?;
        let mut ids = Vec::new();
        for row in rows {
            ids.push(Uuid::parse_str(&row?).map_err(|e| StoreError::Decode(e.to_string()))?);
        }
        Ok(ids)
    }

    /// Up to `limit` jobs older than `before` (a submission time and job id; `None`:
    /// the newest) and submitted at or after `since_ms`, newest first: a page of the job
    /// history.
    pub fn page(
        &self,
        before: Option<(u64, Uuid)>,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (before_ms, before_id) = match before {
            Some((ms, id)) => (ms as i64, hex_id(&id)),
            None => (i64::MAX, String::new()),
        };
        let connection = self.lock();
        let mut statement = connection.prepare_cached(&format!(
            "{SELECT_JOB} WHERE (submitted_at_ms < ?1 OR (submitted_at_ms = ?1 AND id < ?2))
                AND submitted_at_ms >= ?3
             ORDER BY submitted_at_ms DESC, id DESC LIMIT ?4"
        ))?;
        let rows = statement.query_map(
            params![before_ms, before_id, since_ms as i64, limit as i64],
            read_job,
        )?;
        let mut jobs = Vec::new();
        for row in rows {
            jobs.push(row?.decode()?);
        }
        Ok(jobs)
    }

    /// Remembers an RPC request's nonce until `expires_at_ms`; false if it is already
    /// remembered (a replayed request). Expired nonces go with [`prune`](Self::prune).
    pub fn remember_nonce(&self, nonce: [u8; 16], expires_at_ms: u64) -> Result<bool, StoreError> {
        let inserted = self.lock().execute(
            "INSERT OR IGNORE INTO request_nonces (nonce, expires_at_ms) VALUES (?1, ?2)",
            params![nonce.to_vec(), expires_at_ms as i64],
        )?;
        Ok(inserted == 1)
    }

    /// Deletes up to `batch` jobs (and their returns) submitted before `before_ms` whose
    /// command also expired before it (a long TTL keeps a job while it may still run),
    /// and whose rolling batch, if any, ended; returns how many went.
    pub fn prune(&self, before_ms: u64, batch: usize) -> Result<usize, StoreError> {
        let connection = self.lock();
        connection.execute(
            "DELETE FROM request_nonces WHERE expires_at_ms < ?1",
            params![now_ms() as i64],
        )?;
        let deleted = connection.execute(
            "DELETE FROM jobs WHERE id IN (
                SELECT id FROM jobs WHERE submitted_at_ms < ?1 AND expires_at_ms < ?1
                    AND id NOT IN (SELECT job_id FROM rolling_batches) LIMIT ?2)",
            params![before_ms as i64, batch as i64],
        )?;
        Ok(deleted)
    }

    /// Every return of job `id`, in order of arrival.
    pub fn returns(&self, id: &Uuid) -> Result<Vec<ReturnRecord>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT minion, arrived_at_ms, outcome FROM returns
             WHERE job_id = ?1 ORDER BY arrived_at_ms, minion",
        )?;
        let rows = statement.query_map(params![hex_id(id)], |r| {
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

impl JobStore {
    /// Creates or replaces the schedule of that name.
    pub fn put_schedule(&self, schedule: &Schedule) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO schedules (name, schedule) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET schedule = excluded.schedule",
            params![schedule.name, encode(schedule)],
        )?;
        Ok(())
    }

    /// Deletes the schedule `name`; false if there was none.
    pub fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM schedules WHERE name = ?1", params![name])?;
        Ok(deleted == 1)
    }

    /// Every schedule, by name.
    pub fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let connection = self.lock();
        let mut statement =
            connection.prepare_cached("SELECT schedule FROM schedules ORDER BY name")?;
        let rows = statement.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut schedules = Vec::new();
        for row in rows {
            match decode(&row?) {
                Ok(schedule) => schedules.push(schedule),
                Err(e) => tracing::error!("skipping a stored schedule that does not decode: {e}"),
            }
        }
        Ok(schedules)
    }
}

impl JobStore {
    /// Records where a rolling batch stands, replacing what was recorded.
    pub fn put_batch(&self, batch: &RollingBatch) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO rolling_batches (job_id, size, queue, in_flight, until_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job_id) DO UPDATE SET size = excluded.size, queue = excluded.queue,
                in_flight = excluded.in_flight, until_ms = excluded.until_ms",
            params![
                hex_id(&batch.job_id),
                batch.size as i64,
                batch.queue.join(","),
                batch.in_flight.join(","),
                batch.until_ms as i64,
            ],
        )?;
        Ok(())
    }

    /// Forgets the rolling batch of job `id` (it ended or ran out of time).
    pub fn delete_batch(&self, id: &Uuid) -> Result<(), StoreError> {
        self.lock().execute(
            "DELETE FROM rolling_batches WHERE job_id = ?1",
            params![hex_id(id)],
        )?;
        Ok(())
    }

    /// Every rolling batch recorded as under way.
    pub fn batches(&self) -> Result<Vec<RollingBatch>, StoreError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT job_id, size, queue, in_flight, until_ms FROM rolling_batches",
        )?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut batches = Vec::new();
        for row in rows {
            let (id, size, queue, in_flight, until_ms) = row?;
            batches.push(RollingBatch {
                job_id: Uuid::parse_str(&id).map_err(|e| StoreError::Decode(e.to_string()))?,
                size: size as usize,
                queue: id_list(&queue),
                in_flight: id_list(&in_flight),
                until_ms: until_ms as u64,
            });
        }
        Ok(batches)
    }
}

/// The columns [`read_job`] reads.
const SELECT_JOB: &str = "SELECT id, submitted_by, submitted_at_ms, origin, target_spec, expected,
    offline, exec, wait_ms, ttl_ms, expires_at_ms FROM jobs";

/// A row of [`SELECT_JOB`], not yet decoded.
struct JobRow {
    id: String,
    submitted_by: String,
    submitted_at_ms: i64,
    origin: String,
    target: Vec<u8>,
    expected: String,
    offline: String,
    exec: Vec<u8>,
    wait_ms: i64,
    ttl_ms: i64,
    expires_at_ms: i64,
}

fn read_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        submitted_by: r.get(1)?,
        submitted_at_ms: r.get(2)?,
        origin: r.get(3)?,
        target: r.get(4)?,
        expected: r.get(5)?,
        offline: r.get(6)?,
        exec: r.get(7)?,
        wait_ms: r.get(8)?,
        ttl_ms: r.get(9)?,
        expires_at_ms: r.get(10)?,
    })
}

impl JobRow {
    fn decode(self) -> Result<JobRecord, StoreError> {
        Ok(JobRecord {
            id: Uuid::parse_str(&self.id).map_err(|e| StoreError::Decode(e.to_string()))?,
            submitted_by: self.submitted_by,
            submitted_at_ms: self.submitted_at_ms as u64,
            origin: self.origin,
            target: decode(&self.target)?,
            expected: id_list(&self.expected),
            offline: id_list(&self.offline),
            exec: decode(&self.exec)?,
            wait_ms: self.wait_ms as u64,
            ttl_ms: self.ttl_ms as u64,
            expires_at_ms: self.expires_at_ms as u64,
            request_nonce: None,
        })
    }
}

/// Minion ids stored joined by commas (the id grammar has none).
fn id_list(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A job id as stored: 32 lowercase hex digits.
fn hex_id(id: &Uuid) -> String {
    id.simple().to_string()
}

fn reversed(text: &str) -> String {
    text.chars().rev().collect()
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
            offline: vec!["web.02".into()],
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

    #[test]
    fn a_rolling_batch_is_recorded_replaced_and_forgotten_and_keeps_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let job = job();
        store.insert_job(&job).unwrap();
        let mut batch = RollingBatch {
            job_id: job.id,
            size: 1,
            queue: vec!["web.02".into()],
            in_flight: vec!["web.01".into()],
            until_ms: 99,
        };
        store.put_batch(&batch).unwrap();
        batch.queue.clear();
        batch.in_flight = vec!["web.01".into(), "web.02".into()];
        store.put_batch(&batch).unwrap();
        assert_eq!(store.batches().unwrap(), [batch.clone()]);
        store.delete_batch(&job.id).unwrap();
        assert_eq!(store.batches().unwrap(), []);
        store.put_batch(&batch).unwrap();
        assert_eq!(
            store.prune(1_000, 10).unwrap(),
            0,
            "a job whose batch rolls stays"
        );
        store.delete_batch(&job.id).unwrap();
        assert_eq!(store.prune(1_000, 10).unwrap(), 1);
    }

    #[test]
    fn a_store_at_version_3_gains_the_rolling_batches_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        {
            let store = JobStore::open(&path).unwrap();
            let connection = store.lock();
            connection
                .execute_batch("DROP TABLE rolling_batches; PRAGMA user_version = 3;")
                .unwrap();
        }
        let store = JobStore::open(&path).unwrap();
        let job = job();
        store.insert_job(&job).unwrap();
        let batch = RollingBatch {
            job_id: job.id,
            size: 2,
            queue: vec![],
            in_flight: vec!["web.01".into()],
            until_ms: 5,
        };
        store.put_batch(&batch).unwrap();
        assert_eq!(store.batches().unwrap(), [batch]);
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
            assert!(
                !store.insert_job(&again).unwrap(),
                "same request, no second job"
            );
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
    fn jobs_are_found_by_prefix_or_suffix_listed_by_page_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let mut jobs = Vec::new();
        for n in 0..5u64 {
            let job = JobRecord {
                id: Uuid::now_v7(),
                submitted_at_ms: 1000 + n,
                request_nonce: None,
                ..job()
            };
            store.insert_job(&job).unwrap();
            jobs.push(job);
        }
        let hex = jobs[3].id.simple().to_string();
        assert_eq!(store.find_ids(&hex[..], 10).unwrap(), [jobs[3].id]);
        assert_eq!(store.find_ids(&hex[24..], 10).unwrap(), [jobs[3].id]);
        assert_eq!(
            store.find_ids(&hex[..8], 10).unwrap().len(),
            5,
            "same 8-digit time prefix"
        );
        let ids = |page: Vec<JobRecord>| page.iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.page(None, 1001, 2).unwrap()),
            [jobs[4].id, jobs[3].id]
        );
        let after = Some((jobs[3].submitted_at_ms, jobs[3].id));
        assert_eq!(
            ids(store.page(after, 1001, 2).unwrap()),
            [jobs[2].id, jobs[1].id]
        );
        assert_eq!(store.prune(1002, 1).unwrap(), 1);
        assert_eq!(store.prune(1002, 10).unwrap(), 1);
        assert!(store.job(&jobs[0].id).unwrap().is_none());
        assert!(store.job(&jobs[2].id).unwrap().is_some());
    }

    #[test]
    fn returns_for_unknown_jobs_or_from_unexpected_minions_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("jobs.sqlite")).unwrap();
        let stray = reply(&job(), "web.01", Outcome::Interrupted);
        assert!(!store.insert_return(&stray, 1).unwrap());
        let job = job();
        store.insert_job(&job).unwrap();
        for stranger in ["db.01", "web.0", "web.01.x"] {
            let reply = reply(&job, stranger, Outcome::Interrupted);
            assert!(!store.insert_return(&reply, 1).unwrap(), "{stranger}");
        }
    }

    #[test]
    fn request_nonces_are_remembered_across_reopening_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let far = now_ms() + 60_000;
        {
            let store = JobStore::open(&path).unwrap();
            assert!(store.remember_nonce([1; 16], far).unwrap());
            assert!(store.remember_nonce([2; 16], 1).unwrap());
            assert!(!store.remember_nonce([1; 16], far).unwrap());
        }
        let store = JobStore::open(&path).unwrap();
        assert!(
            !store.remember_nonce([1; 16], far).unwrap(),
            "a restart forgets no nonce"
        );
        store.prune(0, 10).unwrap();
        assert!(!store.remember_nonce([1; 16], far).unwrap());
        assert!(
            store.remember_nonce([2; 16], far).unwrap(),
            "expired ones are pruned"
        );
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
