//! The connection pool over SQLite (embedded, bundled library).

mod common;

use std::path::PathBuf;

use common::*;
use torsion_core::Reactor;
use torsion_db::{params, ConnectionPool, DbError, PoolOptions, Target};

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("torsion-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_target(dir: &TempDir) -> Target {
    Target::SqliteFile(dir.file("test.db"))
}

#[test]
fn query_operation_interaction_memory() {
    query_operation_interaction(Target::SqliteMemory);
}

#[test]
fn query_operation_interaction_file() {
    let dir = TempDir::new("basic");
    query_operation_interaction(file_target(&dir));
}

#[test]
fn rollback_on_error_and_panic_sqlite() {
    let dir = TempDir::new("rollback");
    rollback_on_error_and_panic(file_target(&dir));
}

#[test]
fn concurrent_interactions_sqlite() {
    let dir = TempDir::new("concurrent");
    let target = file_target(&dir);
    concurrent_interactions(target);
}

#[test]
fn typed_row_errors_sqlite() {
    typed_row_errors(Target::SqliteMemory);
}

#[test]
fn bad_sql_and_constraints_sqlite() {
    bad_sql_and_constraints(Target::SqliteMemory);
}

#[test]
fn stop_during_inserts_sqlite() {
    let dir = TempDir::new("stopload");
    let path = dir.file("test.db");
    stop_during_inserts(Target::SqliteFile(path.clone()), |_| {
        let c = rusqlite::Connection::open(&path).unwrap();
        let t = table("stopload");
        let mut stmt = c
            .prepare(&format!("SELECT id FROM {t} ORDER BY id"))
            .unwrap();
        let ids = stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap();
        ids.map(|r| r.unwrap()).collect()
    });
}

#[test]
fn closes_on_shutdown_sqlite() {
    let dir = TempDir::new("close");
    closes_on_shutdown(file_target(&dir));
}

#[test]
fn memory_database_is_one_connection_shared_by_all_calls() {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(
        &reactor,
        Target::SqliteMemory,
        PoolOptions::default().connections(3, 8),
    );
    wait(
        &reactor,
        db.run_operation("CREATE TABLE m (x BIGINT)", params![]),
    )
    .unwrap();
    let ds: Vec<_> = (0..20)
        .map(|i| db.run_operation("INSERT INTO m VALUES ($1)", params![i]))
        .collect();
    for d in ds {
        wait(&reactor, d).unwrap();
    }
    let rows = wait(&reactor, db.run_query("SELECT count(*) FROM m", params![])).unwrap();
    assert_eq!(rows[0].get::<i64, _>(0).unwrap(), 20);
    assert_eq!(db.thread_pool().size(), (1, 1));
}

#[test]
fn a_file_that_is_not_a_database_is_an_open_error() {
    let dir = TempDir::new("notadb");
    let path = dir.file("garbage.db");
    std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::sqlite(&reactor, &path);
    let err = wait(&reactor, db.run_query("SELECT 1", params![])).unwrap_err();
    match db_error(&err) {
        DbError::Open { message } => assert!(message.contains("not a database"), "{message}"),
        other => panic!("expected an open error, got {other:?}"),
    }
    // Still failing cleanly on the next call, not hanging.
    let err = wait(&reactor, db.run_operation("CREATE TABLE x (y)", params![])).unwrap_err();
    assert!(matches!(db_error(&err), DbError::Open { .. }));
}

#[test]
fn a_directory_that_does_not_exist_is_an_open_error() {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::sqlite(&reactor, "/nonexistent-torsion-dir/sub/x.db");
    let err = wait(&reactor, db.run_query("SELECT 1", params![])).unwrap_err();
    assert!(matches!(db_error(&err), DbError::Open { .. }), "{err}");
}

#[test]
fn on_open_hook_runs_on_every_connection() {
    let dir = TempDir::new("onopen");
    let reactor = Reactor::new().unwrap();
    let opts = PoolOptions::default()
        .connections(2, 2)
        .on_open(|c| c.batch_execute("PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL"));
    let db = ConnectionPool::new(&reactor, file_target(&dir), opts);
    wait(
        &reactor,
        db.run_with_connection(|c| {
            c.batch_execute(
                "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
                 CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id))",
            )?;
            Ok(())
        }),
    )
    .unwrap();
    // Foreign keys are enforced only because the hook turned them on.
    let err = wait(
        &reactor,
        db.run_operation("INSERT INTO child VALUES (1, 99)", params![]),
    )
    .unwrap_err();
    match db_error(&err) {
        DbError::Constraint { message, .. } => {
            assert!(message.contains("FOREIGN KEY"), "{message}")
        }
        other => panic!("expected a constraint violation, got {other:?}"),
    }
    let rows = wait(&reactor, db.run_query("PRAGMA journal_mode", params![])).unwrap();
    assert_eq!(rows[0].get::<String, _>(0).unwrap(), "wal");
}

#[test]
fn a_failing_on_open_hook_fails_the_call() {
    let reactor = Reactor::new().unwrap();
    let opts = PoolOptions::default().on_open(|c| c.batch_execute("PRAGMA nonsense syntax here ("));
    let db = ConnectionPool::new(&reactor, Target::SqliteMemory, opts);
    let err = wait(&reactor, db.run_query("SELECT 1", params![])).unwrap_err();
    match db_error(&err) {
        DbError::Open { message } => assert!(message.contains("on_open"), "{message}"),
        other => panic!("expected an open error, got {other:?}"),
    }
}

#[test]
fn min_connections_open_at_start_and_max_bounds_them() {
    let dir = TempDir::new("minmax");
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(
        &reactor,
        file_target(&dir),
        PoolOptions::default().connections(2, 3),
    );
    assert_eq!(
        db.open_connections(),
        0,
        "nothing opens before the pool starts"
    );
    db.thread_pool().start();
    let deadline = std::time::Instant::now() + LIMIT;
    while db.open_connections() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "min connections never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Many slow-ish queries at once: never more than max connections.
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) \
                SELECT count(*) FROM c";
    let ds: Vec<_> = (0..30).map(|_| db.run_query(slow, params![])).collect();
    for d in ds {
        let rows = wait(&reactor, d).unwrap();
        assert_eq!(rows[0].get::<i64, _>(0).unwrap(), 20000);
        assert!(db.open_connections() <= 3);
    }
    assert!(db.thread_pool().thread_count() <= 3);
    assert!(db.open_connections() >= 2);
}
