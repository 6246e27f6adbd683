//! # torsion-db
//!
//! Database access for Torsion, in the spirit of Twisted's `adbapi`: a
//! [`ConnectionPool`] runs blocking database calls on its own pool threads
//! (one connection per thread) and hands results back as [`Deferred`]s fired
//! on the reactor thread. SQLite (embedded, through `rusqlite` with the
//! bundled library) is the default; PostgreSQL goes through the synchronous
//! `postgres` client. Parameters are always bound, never interpolated.
//!
//! ```
//! use torsion_core::Reactor;
//! use torsion_db::{params, ConnectionPool, Target};
//!
//! let reactor = Reactor::new().unwrap();
//! let db = ConnectionPool::new(&reactor, Target::SqliteMemory, Default::default());
//! let r = reactor.clone();
//! let db2 = db.clone();
//! db.run_operation("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)", params![])
//!     .add_callback_deferred(move |_| {
//!         db2.run_interaction(|txn| {
//!             txn.execute("INSERT INTO notes (body) VALUES (?1)", &params!["hello"])?;
//!             let row = txn.query_one("SELECT count(*) AS n FROM notes", &[])?;
//!             Ok(row.get::<i64, _>("n")?)
//!         })
//!     })
//!     .finally(move |n| {
//!         assert_eq!(n.unwrap(), 1);
//!         r.stop().unwrap();
//!     });
//! reactor.run().unwrap();
//! ```

#![warn(missing_docs)]

mod connection;
mod error;
mod pgtypes;

/// Entry points for the fuzz targets in `/fuzz` (built only with
/// `--cfg fuzzing`, which cargo-fuzz sets): not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `raw` as the binary form of the `kind`-th type carried as text
    /// (uuid, json, jsonb, numeric, date, time, timestamp, timestamptz) and,
    /// when that succeeds, checks that the text encodes back to a value that
    /// decodes to the same text.
    pub fn pg_text_round_trip(kind: u8, raw: &[u8]) {
        crate::pgtypes::fuzz_round_trip(kind, raw)
    }
}
mod value;

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use torsion_core::threads::{defer_to_thread_pool, ThreadPool};
use torsion_core::{Deferred, Failure, Reactor};

pub use connection::{Connection, Target, Transaction};
pub use error::{DbError, RowError};
pub use value::{FromValue, Row, RowIndex, Value};

type OnOpen = Arc<dyn Fn(&mut Connection) -> Result<(), DbError> + Send + Sync>;

/// Options of a [`ConnectionPool`].
#[derive(Clone)]
pub struct PoolOptions {
    /// Connections (and threads) opened when the reactor starts. Default 1.
    pub min: usize,
    /// Most connections (and threads). Default 5.
    pub max: usize,
    /// Prefix of the pool's thread names. Default `torsion-db`.
    pub name: String,
    on_open: Option<OnOpen>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            min: 1,
            max: 5,
            name: "torsion-db".into(),
            on_open: None,
        }
    }
}

impl fmt::Debug for PoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolOptions")
            .field("min", &self.min)
            .field("max", &self.max)
            .field("name", &self.name)
            .field("on_open", &self.on_open.is_some())
            .finish()
    }
}

impl PoolOptions {
    /// Sets `min` and `max` connections.
    pub fn connections(mut self, min: usize, max: usize) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Runs on every new connection before first use (e.g. PRAGMAs, `SET`).
    /// An error fails the opening with [`DbError::Open`].
    ///
    /// ```
    /// use torsion_db::PoolOptions;
    /// let opts = PoolOptions::default()
    ///     .on_open(|conn| conn.batch_execute("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON"));
    /// ```
    pub fn on_open(
        mut self,
        f: impl Fn(&mut Connection) -> Result<(), DbError> + Send + Sync + 'static,
    ) -> Self {
        self.on_open = Some(Arc::new(f));
        self
    }
}

struct Shared {
    target: Target,
    on_open: Option<OnOpen>,
    /// Bumped when a connection is found broken: every thread then replaces
    /// its connection before the next call, since a server restart broke them all.
    generation: AtomicU64,
    open: AtomicUsize,
}

/// A pool thread's connection, with the generation it was opened in.
struct Pooled {
    conn: Option<Connection>,
    generation: u64,
    shared: Arc<Shared>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close();
        }
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

thread_local! {
    // Each pool thread belongs to one ConnectionPool, so one slot suffices.
    static CONNECTION: RefCell<Option<Pooled>> = const { RefCell::new(None) };
}

impl Shared {
    fn open_connection(self: &Arc<Self>) -> Result<Pooled, DbError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut conn = Connection::open(&self.target)?;
        if let Some(hook) = &self.on_open {
            hook(&mut conn).map_err(|e| DbError::Open {
                message: format!("on_open hook failed: {e}"),
            })?;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Pooled {
            conn: Some(conn),
            generation,
            shared: self.clone(),
        })
    }

    /// Runs `f` with this thread's connection, opening or replacing it as needed.
    fn with_connection<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let current = self.generation.load(Ordering::SeqCst);
        let slot = CONNECTION.with(|c| c.borrow_mut().take());
        let mut pooled = match slot {
            Some(p)
                if p.generation == current && p.conn.as_ref().is_some_and(|c| !c.is_broken()) =>
            {
                p
            }
            _ => self.open_connection().map_err(Failure::new)?,
        };
        let result = match pooled.conn.as_mut() {
            Some(conn) => f(conn),
            None => Err(Failure::new(DbError::Open {
                message: "no connection".into(),
            })),
        };
        let lost = pooled.conn.as_ref().is_none_or(|c| c.is_broken())
            || matches!(&result, Err(f) if matches!(f.downcast_ref::<DbError>(), Some(DbError::ConnectionLost { .. })));
        if lost {
            // Only the first thread to notice moves the generation on, so
            // connections opened since then are not thrown away again.
            let seen = pooled.generation;
            let _ = self.generation.compare_exchange(
                seen,
                seen + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            tracing::warn!("database connection lost; it will be replaced on the next call");
            drop(pooled);
            return match result {
                Err(f) if f.check::<DbError>() => Err(match f.downcast_ref::<DbError>() {
                    Some(e @ DbError::ConnectionLost { .. }) => Failure::new(e.clone()),
                    Some(e) => Failure::new(DbError::ConnectionLost {
                        message: e.to_string(),
                    }),
                    None => f,
                }),
                Err(f) => Err(f),
                Ok(_) => Err(Failure::new(DbError::ConnectionLost {
                    message: "the connection closed during the call".into(),
                })),
            };
        }
        CONNECTION.with(|c| *c.borrow_mut() = Some(pooled));
        result
    }
}

/// A pool of database connections, each owned by one pool thread.
/// Cheap to clone. Started with the reactor; its connections are closed when
/// the reactor shuts down (calls still queued then fail with
/// [`torsion_core::ThreadPoolError::Stopped`]).
#[derive(Clone)]
pub struct ConnectionPool {
    shared: Arc<Shared>,
    threads: ThreadPool,
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("target", &self.shared.target)
            .field("open_connections", &self.open_connections())
            .field("threads", &self.threads)
            .finish()
    }
}

impl ConnectionPool {
    /// A pool for `target`. Connections open on the pool threads: at reactor
    /// start-up (`min` of them) and on demand (up to `max`). Failing to open
    /// one is reported by the call that needed it, as [`DbError::Open`].
    pub fn new(reactor: &Reactor, target: Target, options: PoolOptions) -> ConnectionPool {
        let (min, max) = if target == Target::SqliteMemory {
            (1, 1)
        } else {
            (options.min, options.max.max(1))
        };
        let shared = Arc::new(Shared {
            target,
            on_open: options.on_open,
            generation: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let starting = shared.clone();
        let threads = ThreadPool::builder()
            .name(options.name)
            .min(min)
            .max(max)
            .on_thread_start(move || {
                // Open early so the first call does not pay for it; a failure
                // here is retried (and reported) by the first call.
                match starting.open_connection() {
                    Ok(p) => CONNECTION.with(|c| *c.borrow_mut() = Some(p)),
                    Err(e) => tracing::warn!(error = %e, "could not open a database connection"),
                }
            })
            .on_thread_stop(|| {
                let slot = CONNECTION.with(|c| c.borrow_mut().take());
                drop(slot);
            })
            .build(reactor);
        let t = threads.clone();
        reactor.call_when_running(move || t.start());
        ConnectionPool { shared, threads }
    }

    /// A pool on an SQLite file (created when missing).
    pub fn sqlite(reactor: &Reactor, path: impl Into<std::path::PathBuf>) -> ConnectionPool {
        Self::new(
            reactor,
            Target::SqliteFile(path.into()),
            PoolOptions::default(),
        )
    }

    /// A pool on a PostgreSQL server.
    pub fn postgres(reactor: &Reactor, config: impl Into<String>) -> ConnectionPool {
        Self::new(
            reactor,
            Target::Postgres(config.into()),
            PoolOptions::default(),
        )
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> Deferred<T> {
        let shared = self.shared.clone();
        defer_to_thread_pool(&self.threads, move || shared.with_connection(f))
            .add_callback_result(|r| r)
    }

    /// Runs a query; fires with its rows.
    ///
    /// ```
    /// use torsion_core::Reactor;
    /// use torsion_db::{params, ConnectionPool, Target};
    /// let reactor = Reactor::new().unwrap();
    /// let db = ConnectionPool::new(&reactor, Target::SqliteMemory, Default::default());
    /// let r = reactor.clone();
    /// db.run_query("SELECT $1 + 1 AS n, $2 AS who", params![41, "me"]).finally(move |rows| {
    ///     let rows = rows.unwrap();
    ///     assert_eq!(rows[0].get::<i64, _>("n").unwrap(), 42);
    ///     assert_eq!(rows[0].get::<String, _>(1).unwrap(), "me");
    ///     r.stop().unwrap();
    /// });
    /// reactor.run().unwrap();
    /// ```
    pub fn run_query(&self, sql: impl Into<String>, params: Vec<Value>) -> Deferred<Vec<Row>> {
        let sql = sql.into();
        self.run(move |c| Ok(c.query(&sql, &params)?))
    }

    /// Runs a statement; fires with the number of rows it changed.
    ///
    /// ```
    /// use torsion_core::Reactor;
    /// use torsion_db::{params, ConnectionPool, Target};
    /// let reactor = Reactor::new().unwrap();
    /// let db = ConnectionPool::new(&reactor, Target::SqliteMemory, Default::default());
    /// let (r, db2) = (reactor.clone(), db.clone());
    /// db.run_operation("CREATE TABLE t (x INTEGER)", params![])
    ///     .add_callback_deferred(move |_| {
    ///         db2.run_operation("INSERT INTO t VALUES ($1), ($2)", params![1, 2])
    ///     })
    ///     .finally(move |n| {
    ///         assert_eq!(n.unwrap(), 2);
    ///         r.stop().unwrap();
    ///     });
    /// reactor.run().unwrap();
    /// ```
    pub fn run_operation(&self, sql: impl Into<String>, params: Vec<Value>) -> Deferred<u64> {
        let sql = sql.into();
        self.run(move |c| Ok(c.execute(&sql, &params)?))
    }

    /// Runs `f` in a transaction on a pool thread: commits when it returns
    /// `Ok`, rolls back when it returns `Err` or panics (the panic becomes
    /// the Deferred's failure).
    ///
    /// ```
    /// use torsion_core::{Failure, Reactor};
    /// use torsion_db::{params, ConnectionPool, Target};
    /// let reactor = Reactor::new().unwrap();
    /// let db = ConnectionPool::new(&reactor, Target::SqliteMemory, Default::default());
    /// let (r, db2) = (reactor.clone(), db.clone());
    /// db.run_interaction(|txn| {
    ///     txn.execute("CREATE TABLE t (x INTEGER)", &[])?;
    ///     Ok(())
    /// })
    /// .add_callback_deferred(move |()| {
    ///     db2.run_interaction(|txn| -> Result<(), Failure> {
    ///         txn.execute("INSERT INTO t VALUES ($1)", &params![1])?;
    ///         Err(Failure::msg("undo"))
    ///     })
    /// })
    /// .finally(move |res| {
    ///     assert_eq!(res.unwrap_err().to_string(), "undo"); // and the insert was rolled back
    ///     r.stop().unwrap();
    /// });
    /// reactor.run().unwrap();
    /// ```
    pub fn run_interaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Deferred<T> {
        self.run(move |conn| {
            conn.begin()?;
            let mut suspect = false;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut txn = Transaction {
                    conn: &mut *conn,
                    suspect: false,
                };
                let r = f(&mut txn);
                suspect = txn.suspect;
                r
            }));
            match outcome {
                Ok(Ok(v)) => match (if suspect {
                    conn.check_not_aborted()
                } else {
                    Ok(())
                })
                .and_then(|()| conn.commit())
                {
                    Ok(()) => Ok(v),
                    Err(e) => {
                        let _ = conn.rollback();
                        Err(Failure::new(e))
                    }
                },
                Ok(Err(f)) => {
                    rollback_after(conn, &f);
                    Err(f)
                }
                Err(payload) => {
                    let f = Failure::from_panic(payload);
                    tracing::error!(failure = %f, "database interaction panicked; rolled back");
                    rollback_after(conn, &f);
                    Err(f)
                }
            }
        })
    }

    /// Runs `f` with a pool thread's connection, outside any transaction.
    ///
    /// ```
    /// use torsion_core::Reactor;
    /// use torsion_db::{ConnectionPool, Target};
    /// let reactor = Reactor::new().unwrap();
    /// let db = ConnectionPool::new(&reactor, Target::SqliteMemory, Default::default());
    /// let r = reactor.clone();
    /// db.run_with_connection(|conn| {
    ///     // The native handle is there for what this API does not cover.
    ///     let sqlite = conn.as_sqlite().expect("an SQLite pool");
    ///     Ok(sqlite.is_autocommit())
    /// })
    /// .finally(move |autocommit| {
    ///     assert!(autocommit.unwrap());
    ///     r.stop().unwrap();
    /// });
    /// reactor.run().unwrap();
    /// ```
    pub fn run_with_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> Deferred<T> {
        self.run(move |conn| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|p| Err(Failure::from_panic(p)))
        })
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The pool's threads (one connection each).
    pub fn thread_pool(&self) -> &ThreadPool {
        &self.threads
    }

    /// Closes the pool before the reactor stops: waits for running calls,
    /// fails queued ones, closes every connection.
    pub fn close(&self) -> Deferred<()> {
        self.threads.stop()
    }
}

fn rollback_after(conn: &mut Connection, why: &Failure) {
    if conn.is_broken() {
        return;
    }
    if let Err(e) = conn.rollback() {
        tracing::warn!(error = %e, cause = %why, "rollback failed");
    }
}
