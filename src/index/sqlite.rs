//! SQLite writers take turns in a queue of this process rather than in SQLite's
//! busy handler.
//!
//! SQLite has one writer per database file. Left to itself, a writer that finds
//! the file locked sleeps in SQLite's busy handler — in growing steps of up to
//! 100 ms — and polls again: it does not wake when the lock is released. Under a
//! few concurrent STOW requests that turned a 12 ms transaction into a p99 of
//! 0.5–0.8 s (benches/README.md, "Where STOW waits"). Here each database file
//! has one [`WriterQueue`]: a writer waits on a parking_lot mutex, woken the
//! moment the previous writer's transaction ends and served first come, first
//! served (fair unlock), and only then begins `BEGIN IMMEDIATE`.
//!
//! The queue is per file, shared by every pool this process opens on it, and
//! bounded in time by the index's busy timeout (a write that waits longer fails
//! as unavailable, as one that met SQLite's busy timeout does). Other processes
//! on the same file still meet SQLite's busy handler, which stays configured.
//!
//! One writer at a time also means one commit — one fsync of the WAL — at a
//! time. [`GroupCommit`] lets writers of one kind (STOW batches) that queue
//! together share a transaction: whichever of them gets the turn first runs
//! the jobs waiting, each in its own savepoint, and commits once. A group holds
//! at most [`GROUP_MAX_SIZE`] instances (a larger request runs alone), so that
//! one transaction — and the write lock every other writer waits for — stays
//! short however many requests pile up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::result::QueryResult;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{Connection, QueryableByName};

use super::conn::{Dialect, IndexConn};
use super::sql::Bind;
use super::{IndexError, NewInstance, StoreOutcome};

/// The writers of one SQLite database file in this process, one at a time.
#[derive(Debug)]
pub struct WriterQueue {
    turn: parking_lot::Mutex<()>,
    wait_limit: Duration,
}

/// Every open file's queue, by canonical path; weak, so that a closed index's
/// queue goes with it.
static QUEUES: LazyLock<Mutex<HashMap<PathBuf, Weak<WriterQueue>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl WriterQueue {
    /// The queue of the database at `path` (shared with every other pool of this
    /// process on the same file); writers wait at most `wait_limit` for their turn.
    pub fn for_file(path: &Path, wait_limit: Duration) -> Arc<WriterQueue> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut queues = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|_, queue| queue.strong_count() > 0);
        if let Some(queue) = queues.get(&key).and_then(Weak::upgrade) {
            return queue;
        }
        let queue = Arc::new(WriterQueue {
            turn: parking_lot::Mutex::new(()),
            wait_limit,
        });
        queues.insert(key, Arc::downgrade(&queue));
        queue
    }

    /// Waits for the turn however long it takes: only for a writer that knows
    /// the one holding it is finishing its work.
    fn wait_turn_unbounded(&self) -> Turn<'_> {
        Turn(Some(self.turn.lock()))
    }

    fn wait_turn(&self) -> Result<Turn<'_>, IndexError> {
        self.turn
            .try_lock_for(self.wait_limit)
            .map(|guard| Turn(Some(guard)))
            .ok_or(IndexError::WriterBusy(self.wait_limit))
    }
}

/// A writer's turn; handed to the next writer in line when dropped.
struct Turn<'a>(Option<parking_lot::MutexGuard<'a, ()>>);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take() {
            parking_lot::MutexGuard::unlock_fair(guard);
        }
    }
}

/// A SQLite database's pool, its writers' queue and its group commits.
pub struct SqlitePool {
    pub(super) pool: Pool<ConnectionManager<SqliteConnection>>,
    writers: Arc<WriterQueue>,
    /// `Index::store_instances` batches: (instances, overwrite); `None` when
    /// group commit is off (`index.group_commit`).
    pub(super) stores: Option<StoreGroup>,
}

/// The group commit of `Index::store_instances`: (instances, overwrite) in,
/// each instance's outcome out.
pub(super) type StoreGroup = GroupCommit<(Vec<NewInstance>, bool), Vec<StoreOutcome>>;

impl SqlitePool {
    pub(super) fn new(
        pool: Pool<ConnectionManager<SqliteConnection>>,
        writers: Arc<WriterQueue>,
        group_commit: bool,
    ) -> Self {
        SqlitePool {
            pool,
            writers,
            stores: group_commit.then(GroupCommit::default),
        }
    }

    /// A pooled connection that writes through the queue.
    pub(super) fn session(&self) -> Result<SqliteSession, IndexError> {
        Ok(SqliteSession {
            conn: self
                .pool
                .get()
                .map_err(|e| IndexError::Pool(e.to_string()))?,
            writers: self.writers.clone(),
        })
    }
}

/// A pooled SQLite connection whose write transactions take their turn in the
/// file's [`WriterQueue`]. Dereferences to the connection for anything else.
pub struct SqliteSession {
    conn: PooledConnection<ConnectionManager<SqliteConnection>>,
    writers: Arc<WriterQueue>,
}

impl std::ops::Deref for SqliteSession {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for SqliteSession {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl IndexConn for SqliteSession {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn load<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
    {
        IndexConn::load(&mut *self.conn, sql, binds)
    }

    fn load_prepared<T>(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
    {
        IndexConn::load_prepared(&mut *self.conn, sql, binds)
    }

    fn run(&mut self, sql: &str, binds: &[Bind]) -> QueryResult<usize> {
        IndexConn::run(&mut *self.conn, sql, binds)
    }

    fn write<T, F>(&mut self, mut work: F) -> Result<T, IndexError>
    where
        F: FnMut(&mut Self) -> Result<T, IndexError>,
    {
        let writers = self.writers.clone();
        let _turn = writers.wait_turn()?;
        // IMMEDIATE takes the write lock up front (another process may hold it:
        // then SQLite's busy timeout applies), so no transaction fails on a lock
        // upgrade halfway through.
        let conn: &mut SqliteConnection = &mut self.conn;
        AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE")?;
        match work(self) {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(&mut *self.conn)?;
                Ok(value)
            }
            Err(error) => {
                AnsiTransactionManager::rollback_transaction(&mut *self.conn)?;
                Err(error)
            }
        }
    }
}

/// Most instances one group commit holds (see the module's documentation).
pub const GROUP_MAX_SIZE: usize = 1_000;

/// Where a submitted job's result is left for its thread.
type Slot<R> = Arc<Mutex<Option<Result<R, IndexError>>>>;

/// A submitted job: its data, its size (instances), where its result goes.
struct Waiting<J, R> {
    job: J,
    size: usize,
    slot: Slot<R>,
}

/// Jobs of one kind submitted by concurrent threads and committed together
/// (see the module's documentation). A job is owned data (`J`) and one
/// function runs every job, so that any thread can run any other's.
pub struct GroupCommit<J, R> {
    waiting: Mutex<Vec<Waiting<J, R>>>,
    /// Most instances one group holds.
    max_size: usize,
}

impl<J, R> Default for GroupCommit<J, R> {
    fn default() -> Self {
        Self::with_max_size(GROUP_MAX_SIZE)
    }
}

impl<J, R> GroupCommit<J, R> {
    pub fn with_max_size(max_size: usize) -> Self {
        GroupCommit {
            waiting: Mutex::new(Vec::new()),
            max_size,
        }
    }

    /// Runs `job` (of `size` instances) with `run` in a write transaction of `pool`'s database, perhaps
    /// together with jobs other threads submitted meanwhile, and returns its
    /// result. Each job runs in a savepoint: one that fails is rolled back alone
    /// and only its caller sees the error. Only when the transaction as a whole
    /// fails (BEGIN or COMMIT) do all its jobs fail.
    pub fn submit(
        &self,
        pool: &SqlitePool,
        job: J,
        size: usize,
        run: impl Fn(&mut SqliteConnection, &J) -> Result<R, IndexError>,
    ) -> Result<R, IndexError> {
        let slot: Slot<R> = Arc::new(Mutex::new(None));
        self.lock_waiting().push(Waiting {
            job,
            size,
            slot: slot.clone(),
        });
        let _turn = match pool.writers.wait_turn() {
            Ok(turn) => turn,
            Err(busy) => {
                if self.withdraw(&slot) {
                    return Err(busy);
                }
                // A writer took the job and is running it: its turn ends when
                // the job is done.
                pool.writers.wait_turn_unbounded()
            }
        };
        if let Some(result) = take(&slot) {
            return result;
        }
        // No writer runs while this thread has the turn, so the job is still
        // waiting (unless a writer that took it panicked): this thread runs it
        // and the oldest others waiting. Only this thread needs a connection —
        // the jobs that wait hold none, so a burst of STOW requests does not
        // empty the pool readers share. (Other writers take their connection
        // before the turn; should all of the pool's wait for the turn, this
        // one fails after the pool's acquire timeout, withdrawing its job, and
        // they go on.)
        let mut session = match pool.session() {
            Ok(session) => session,
            Err(error) => {
                self.withdraw(&slot);
                return Err(error);
            }
        };
        let jobs = self.take_group(&slot);
        let results = run_together(&mut session.conn, &jobs, &run);
        for (waiting, result) in jobs.iter().zip(results) {
            *waiting.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }
        take(&slot).unwrap_or_else(|| {
            Err(IndexError::GroupFailed {
                message: "the job was not run".to_string(),
                unavailable: false,
            })
        })
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<J, R>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The jobs one turn runs, in the order they came: the caller's own, and
    /// the oldest others while the group stays within `max_size` instances.
    /// The rest wait for their own threads' turns.
    fn take_group(&self, own: &Slot<R>) -> Vec<Waiting<J, R>> {
        let mut waiting = self.lock_waiting();
        let mut size = waiting
            .iter()
            .find(|w| Arc::ptr_eq(&w.slot, own))
            .map_or(0, |w| w.size);
        let (taken, left) = std::mem::take(&mut *waiting).into_iter().partition(|w| {
            if Arc::ptr_eq(&w.slot, own) {
                return true;
            }
            let fits = size + w.size <= self.max_size;
            if fits {
                size += w.size;
            }
            fits
        });
        *waiting = left;
        taken
    }

    /// Takes the job of `slot` back if no writer has taken it yet.
    fn withdraw(&self, slot: &Slot<R>) -> bool {
        let mut waiting = self.lock_waiting();
        let before = waiting.len();
        waiting.retain(|w| !Arc::ptr_eq(&w.slot, slot));
        waiting.len() < before
    }
}

fn take<R>(slot: &Slot<R>) -> Option<Result<R, IndexError>> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Runs `jobs` in one transaction, each in a savepoint; their results in order.
fn run_together<J, R>(
    conn: &mut SqliteConnection,
    jobs: &[Waiting<J, R>],
    run: &impl Fn(&mut SqliteConnection, &J) -> Result<R, IndexError>,
) -> Vec<Result<R, IndexError>> {
    let all_failed = |error: &IndexError| {
        let message = error.to_string();
        let unavailable = error.is_unavailable();
        jobs.iter()
            .map(|_| {
                Err(IndexError::GroupFailed {
                    message: message.clone(),
                    unavailable,
                })
            })
            .collect()
    };
    if let Err(error) = AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE") {
        return all_failed(&error.into());
    }
    // `transaction` within a transaction is a savepoint.
    let results: Vec<_> = jobs
        .iter()
        .map(|waiting| conn.transaction(|conn| run(conn, &waiting.job)))
        .collect();
    match AnsiTransactionManager::commit_transaction(conn) {
        Ok(()) => results,
        Err(error) => {
            let _ = AnsiTransactionManager::rollback_transaction(conn);
            all_failed(&error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_queue_per_file_and_waits_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("i.sqlite");
        std::fs::write(&file, b"").unwrap();
        let a = WriterQueue::for_file(&file, Duration::from_millis(50));
        let b = WriterQueue::for_file(&dir.path().join(".").join("i.sqlite"), Duration::ZERO);
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same file, named two ways, has one queue"
        );
        let other = WriterQueue::for_file(&dir.path().join("j.sqlite"), Duration::ZERO);
        assert!(!Arc::ptr_eq(&a, &other));

        let turn = a.wait_turn().unwrap();
        let waited = std::thread::scope(|s| s.spawn(|| a.wait_turn().map(|_| ())).join().unwrap());
        assert!(
            matches!(waited, Err(IndexError::WriterBusy(_))),
            "{waited:?}"
        );
        drop(turn);
        assert!(a.wait_turn().is_ok(), "the turn is handed on when released");
    }

    fn pool_with_table(dir: &Path) -> SqlitePool {
        let path = dir.join("g.sqlite");
        let pool = Pool::builder()
            .max_size(8)
            .build(ConnectionManager::<SqliteConnection>::new(
                path.to_str().unwrap(),
            ))
            .unwrap();
        let writers = WriterQueue::for_file(&path, Duration::from_secs(30));
        let pool = SqlitePool::new(pool, writers, true);
        diesel::connection::SimpleConnection::batch_execute(
            &mut *pool.session().unwrap(),
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER NOT NULL UNIQUE, by TEXT NOT NULL)",
        )
        .unwrap();
        pool
    }

    /// Inserts the job's values one by one, saying which thread ran it; the
    /// unique column makes a job with a value already stored fail halfway.
    fn insert(conn: &mut SqliteConnection, values: &Vec<i64>) -> Result<String, IndexError> {
        let by = format!("{:?}", std::thread::current().id());
        for x in values {
            conn.run(
                "INSERT INTO t (x, by) VALUES (?, ?)",
                &[Bind::Int(*x), Bind::Text(by.clone())],
            )?;
        }
        Ok(by)
    }

    #[test]
    fn jobs_waiting_together_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_with_table(dir.path());
        let group: GroupCommit<Vec<i64>, String> = GroupCommit::default();
        // Job k stores 10k..10k+3; job 3 also stores 999, stored before: it fails
        // after writing rows of its own, which must be rolled back alone (in
        // whatever order the jobs queued).
        insert(&mut pool.session().unwrap(), &vec![999]).unwrap();
        let jobs: Vec<Vec<i64>> = (0..6)
            .map(|k| {
                let mut values: Vec<i64> = (10 * k..10 * k + 3).collect();
                if k == 3 {
                    values.push(999);
                }
                values
            })
            .collect();
        // Holding the turn while the jobs arrive makes them wait together.
        let turn = pool.writers.wait_turn().unwrap();
        let results: Vec<Result<String, IndexError>> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| {
                    let (pool, group) = (&pool, &group);
                    s.spawn(move || group.submit(pool, job.clone(), job.len(), insert))
                })
                .collect();
            while group.lock_waiting().len() < jobs.len() {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(turn);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let failed: Vec<usize> = (0..6).filter(|&k| results[k].is_err()).collect();
        assert_eq!(failed, vec![3], "{results:?}");
        let runners: std::collections::BTreeSet<&String> =
            results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(runners.len(), 1, "one thread ran every job: {runners:?}");

        #[derive(QueryableByName)]
        struct X {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            x: i64,
        }
        let stored: Vec<i64> = pool
            .session()
            .unwrap()
            .load::<X>("SELECT x FROM t ORDER BY x", &[])
            .unwrap()
            .into_iter()
            .map(|r| r.x)
            .collect();
        let mut expected: Vec<i64> = [0, 1, 2, 4, 5]
            .iter()
            .flat_map(|k| 10 * k..10 * k + 3)
            .collect();
        expected.push(999);
        assert_eq!(
            stored, expected,
            "job 3's own rows are rolled back, the others stored"
        );
    }

    #[test]
    fn a_job_that_cannot_get_its_turn_is_withdrawn_not_run_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = pool_with_table(dir.path());
        pool.writers = Arc::new(WriterQueue {
            turn: parking_lot::Mutex::new(()),
            wait_limit: Duration::from_millis(20),
        });
        let group: GroupCommit<Vec<i64>, String> = GroupCommit::default();
        let turn = pool.writers.wait_turn().unwrap();
        let waited = std::thread::scope(|s| {
            s.spawn(|| group.submit(&pool, vec![7], 1, insert))
                .join()
                .unwrap()
        });
        assert!(
            matches!(waited, Err(IndexError::WriterBusy(_))),
            "{waited:?}"
        );
        assert!(group.lock_waiting().is_empty(), "the job was withdrawn");
        drop(turn);
        assert!(group.submit(&pool, vec![8], 1, insert).is_ok());
        let count = pool
            .session()
            .unwrap()
            .run("DELETE FROM t WHERE x = 7", &[])
            .unwrap();
        assert_eq!(count, 0, "the withdrawn job never ran");
    }

    #[test]
    fn a_group_holds_at_most_its_size_and_the_rest_run_in_later_turns() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool_with_table(dir.path());
        let group: GroupCommit<Vec<i64>, String> = GroupCommit::with_max_size(2);
        let turn = pool.writers.wait_turn().unwrap();
        let results: Vec<Result<String, IndexError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|k| {
                    let (pool, group) = (&pool, &group);
                    s.spawn(move || group.submit(pool, vec![k], 1, insert))
                })
                .collect();
            while group.lock_waiting().len() < 6 {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(turn);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut per_runner = std::collections::BTreeMap::<String, usize>::new();
        for result in results {
            *per_runner
                .entry(result.expect("every job stored"))
                .or_default() += 1;
        }
        assert!(
            per_runner.values().all(|&jobs| jobs <= 2),
            "no turn ran more than two one-instance jobs: {per_runner:?}"
        );
        assert_eq!(per_runner.values().sum::<usize>(), 6);
    }
}
