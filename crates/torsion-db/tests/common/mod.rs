//! Test bodies shared by the SQLite and PostgreSQL suites: the same SQL runs
//! on both (`$1` placeholders work in SQLite too).
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use torsion_core::{Deferred, Failure, PanicError, Reactor, ThreadPoolError};
use torsion_db::{params, ConnectionPool, DbError, PoolOptions, RowError, Target, Value};

pub const LIMIT: Duration = Duration::from_secs(60);

/// Turns the reactor until `d` fires (bounded in time) and returns its result.
pub fn wait<T: 'static>(reactor: &Reactor, d: Deferred<T>) -> Result<T, Failure> {
    let out = Rc::new(RefCell::new(None));
    let o = out.clone();
    d.finally(move |r| *o.borrow_mut() = Some(r));
    let deadline = Instant::now() + LIMIT;
    while out.borrow().is_none() {
        assert!(
            Instant::now() < deadline,
            "Deferred did not fire in {LIMIT:?}"
        );
        reactor.iterate(Some(Duration::from_millis(50))).unwrap();
    }
    let r = out.borrow_mut().take().unwrap();
    r
}

pub fn db_error(f: &Failure) -> DbError {
    f.downcast_ref::<DbError>()
        .unwrap_or_else(|| panic!("expected a DbError, got {f}"))
        .clone()
}

/// A table name unique to this test and process (PG tests share a server).
pub fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}

pub fn create(reactor: &Reactor, db: &ConnectionPool, t: &str) {
    wait(
        reactor,
        db.run_operation(format!("DROP TABLE IF EXISTS {t}"), params![]),
    )
    .unwrap();
    wait(
        reactor,
        db.run_operation(
            format!(
                "CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score DOUBLE PRECISION, \
                 data BYTEA, ok BOOLEAN)"
            ),
            params![],
        ),
    )
    .unwrap();
}

pub fn query_operation_interaction(target: Target) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, target, PoolOptions::default().connections(1, 3));
    let t = table("basic");
    create(&reactor, &db, &t);
    let n = wait(
        &reactor,
        db.run_operation(
            format!("INSERT INTO {t} (id, name, score, data, ok) VALUES ($1, $2, $3, $4, $5)"),
            params![1, "one", 1.5, vec![0u8, 255, 7], true],
        ),
    )
    .unwrap();
    assert_eq!(n, 1);
    let n = wait(
        &reactor,
        db.run_operation(
            format!("INSERT INTO {t} (id, name, score, data, ok) VALUES ($1, $2, $3, $4, $5)"),
            params![2, "two", None::<f64>, None::<Vec<u8>>, false],
        ),
    )
    .unwrap();
    assert_eq!(n, 1);

    // Results come back on the reactor thread.
    let me = std::thread::current().id();
    let seen_on = Rc::new(RefCell::new(None));
    let s = seen_on.clone();
    let rows = wait(
        &reactor,
        db.run_query(
            format!("SELECT id, name, score, data, ok FROM {t} ORDER BY id"),
            params![],
        )
        .add_callback(move |rows| {
            *s.borrow_mut() = Some(std::thread::current().id());
            rows
        }),
    )
    .unwrap();
    assert_eq!(*seen_on.borrow(), Some(me));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].columns(), ["id", "name", "score", "data", "ok"]);
    assert_eq!(rows[0].get::<i64, _>("id").unwrap(), 1);
    assert_eq!(rows[0].get::<String, _>(1).unwrap(), "one");
    assert_eq!(rows[0].get::<f64, _>("score").unwrap(), 1.5);
    assert_eq!(rows[0].get::<Vec<u8>, _>("data").unwrap(), vec![0, 255, 7]);
    assert!(rows[0].get::<bool, _>("ok").unwrap());
    assert_eq!(rows[1].get::<Option<f64>, _>("score").unwrap(), None);
    assert_eq!(rows[1].value("data").unwrap(), &Value::Null);
    assert!(!rows[1].get::<bool, _>("ok").unwrap());

    // An interaction that reads and writes, and returns a value.
    let t2 = t.clone();
    let total = wait(
        &reactor,
        db.run_interaction(move |txn| {
            txn.execute(
                &format!("UPDATE {t2} SET score = $1 WHERE id = $2"),
                &params![10.0, 2],
            )?;
            let row = txn.query_one(&format!("SELECT sum(score) AS total FROM {t2}"), &[])?;
            Ok(row.get::<f64, _>("total")?)
        }),
    )
    .unwrap();
    assert_eq!(total, 11.5);
    let rows = wait(
        &reactor,
        db.run_query(format!("SELECT score FROM {t} WHERE id = $1"), params![2]),
    )
    .unwrap();
    assert_eq!(
        rows[0].get::<f64, _>(0).unwrap(),
        10.0,
        "the interaction committed"
    );

    // run_with_connection gets the raw connection.
    let t3 = t.clone();
    let count = wait(
        &reactor,
        db.run_with_connection(move |conn| {
            let rows = conn.query(&format!("SELECT count(*) FROM {t3}"), &[])?;
            Ok(rows[0].get::<i64, _>(0)?)
        }),
    )
    .unwrap();
    assert_eq!(count, 2);
    drop_table(&reactor, &db, &t);
}

pub fn drop_table(reactor: &Reactor, db: &ConnectionPool, t: &str) {
    wait(
        reactor,
        db.run_operation(format!("DROP TABLE {t}"), params![]),
    )
    .unwrap();
}

pub fn rollback_on_error_and_panic(target: Target) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, target, PoolOptions::default());
    let t = table("rollback");
    create(&reactor, &db, &t);
    let t1 = t.clone();
    let err = wait(
        &reactor,
        db.run_interaction(move |txn| -> Result<(), Failure> {
            txn.execute(
                &format!("INSERT INTO {t1} (id, name) VALUES ($1, $2)"),
                &params![1, "a"],
            )?;
            Err(Failure::msg("changed my mind"))
        }),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "changed my mind");
    let t2 = t.clone();
    let err = wait(
        &reactor,
        db.run_interaction(move |txn| -> Result<(), Failure> {
            txn.execute(
                &format!("INSERT INTO {t2} (id, name) VALUES ($1, $2)"),
                &params![2, "b"],
            )?;
            panic!("boom in the middle");
        }),
    )
    .unwrap_err();
    assert_eq!(
        err.downcast_ref::<PanicError>().unwrap().message,
        "boom in the middle"
    );
    // A failing statement inside: the earlier insert is rolled back too.
    let t3 = t.clone();
    let err = wait(
        &reactor,
        db.run_interaction(move |txn| {
            txn.execute(
                &format!("INSERT INTO {t3} (id, name) VALUES ($1, $2)"),
                &params![3, "c"],
            )?;
            txn.execute(
                &format!("INSERT INTO {t3} (id, name) VALUES ($1, $2)"),
                &params![3, "dup"],
            )?;
            Ok(())
        }),
    )
    .unwrap_err();
    assert!(
        matches!(db_error(&err), DbError::Constraint { .. }),
        "{err}"
    );
    let rows = wait(
        &reactor,
        db.run_query(format!("SELECT id FROM {t}"), params![]),
    )
    .unwrap();
    assert!(rows.is_empty(), "rolled-back rows are absent: {rows:?}");
    // The connection is still usable after the rollbacks.
    let n = wait(
        &reactor,
        db.run_operation(
            format!("INSERT INTO {t} (id, name) VALUES ($1, $2)"),
            params![4, "d"],
        ),
    )
    .unwrap();
    assert_eq!(n, 1);
    drop_table(&reactor, &db, &t);
}

pub fn concurrent_interactions(target: Target) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, target, PoolOptions::default().connections(2, 4));
    let t = table("counter");
    wait(
        &reactor,
        db.run_operation(format!("DROP TABLE IF EXISTS {t}"), params![]),
    )
    .unwrap();
    wait(
        &reactor,
        db.run_operation(
            format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"),
            params![],
        ),
    )
    .unwrap();
    wait(
        &reactor,
        db.run_operation(format!("INSERT INTO {t} VALUES (1, 0)"), params![]),
    )
    .unwrap();
    let jobs = 60;
    let ds: Vec<Deferred<i64>> = (0..jobs)
        .map(|i| {
            let t = t.clone();
            db.run_interaction(move |txn| {
                txn.execute(&format!("UPDATE {t} SET n = n + 1 WHERE id = 1"), &[])?;
                txn.execute(
                    &format!("INSERT INTO {t} VALUES ($1, $2)"),
                    &params![100 + i, i],
                )?;
                let row = txn.query_one(&format!("SELECT n FROM {t} WHERE id = 1"), &[])?;
                Ok(row.get::<i64, _>(0)?)
            })
        })
        .collect();
    let mut seen = Vec::new();
    for d in ds {
        seen.push(wait(&reactor, d).unwrap());
    }
    // Each transaction saw its own increment: all counts distinct, 1..=jobs.
    seen.sort();
    assert_eq!(seen, (1..=jobs).collect::<Vec<_>>());
    let rows = wait(
        &reactor,
        db.run_query(format!("SELECT count(*) FROM {t}"), params![]),
    )
    .unwrap();
    assert_eq!(rows[0].get::<i64, _>(0).unwrap(), jobs + 1);
    assert!(db.thread_pool().thread_count() <= 4);
    drop_table(&reactor, &db, &t);
}

pub fn typed_row_errors(target: Target) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, target, PoolOptions::default());
    let rows = wait(
        &reactor,
        db.run_query(
            "SELECT 42 AS answer, 'text' AS word, NULL AS empty",
            params![],
        ),
    )
    .unwrap();
    let row = &rows[0];
    assert!(matches!(
        row.get::<String, _>("answer"),
        Err(RowError::TypeMismatch { ref column, found: "INTEGER", .. }) if column == "answer"
    ));
    assert!(matches!(
        row.get::<i64, _>("word"),
        Err(RowError::TypeMismatch { found: "TEXT", .. })
    ));
    assert!(matches!(
        row.get::<i64, _>("empty"),
        Err(RowError::TypeMismatch { found: "NULL", .. })
    ));
    assert_eq!(row.get::<Option<i64>, _>("empty").unwrap(), None);
    assert_eq!(
        row.get::<i64, _>("missing"),
        Err(RowError::NoSuchColumn("missing".into()))
    );
    assert_eq!(
        row.get::<i64, _>(9),
        Err(RowError::IndexOutOfRange { index: 9, len: 3 })
    );
    // Inside an interaction, `?` turns the RowError into the Deferred's failure.
    let err = wait(
        &reactor,
        db.run_interaction(|txn| {
            let row = txn.query_one("SELECT 'x' AS v", &[])?;
            Ok(row.get::<i64, _>("v")?)
        }),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<RowError>(),
            Some(RowError::TypeMismatch { .. })
        ),
        "{err}"
    );
}

pub fn bad_sql_and_constraints(target: Target) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, target, PoolOptions::default());
    let err = wait(&reactor, db.run_query("SELEC nonsense FROM", params![])).unwrap_err();
    match db_error(&err) {
        DbError::Sql { message, .. } => assert!(message.contains("syntax error"), "{message}"),
        other => panic!("expected an SQL error, got {other:?}"),
    }
    let err = wait(
        &reactor,
        db.run_query("SELECT * FROM no_such_table_here", params![]),
    )
    .unwrap_err();
    match db_error(&err) {
        DbError::Sql { message, .. } => {
            assert!(message.contains("no_such_table_here"), "{message}")
        }
        other => panic!("expected an SQL error, got {other:?}"),
    }
    let t = table("constraints");
    create(&reactor, &db, &t);
    let ins = format!("INSERT INTO {t} (id, name) VALUES ($1, $2)");
    wait(&reactor, db.run_operation(ins.clone(), params![1, "x"])).unwrap();
    let err = wait(&reactor, db.run_operation(ins.clone(), params![1, "again"])).unwrap_err();
    match db_error(&err) {
        DbError::Constraint { message, .. } => {
            assert!(
                message.to_lowercase().contains("unique") || message.contains("duplicate"),
                "{message}"
            )
        }
        other => panic!("expected a constraint violation, got {other:?}"),
    }
    let err = wait(
        &reactor,
        db.run_operation(ins.clone(), params![2, None::<String>]),
    )
    .unwrap_err();
    assert!(
        matches!(db_error(&err), DbError::Constraint { .. }),
        "{err}"
    );
    // Wrong number of parameters.
    let err = wait(&reactor, db.run_operation(ins.clone(), params![3])).unwrap_err();
    assert!(
        matches!(db_error(&err), DbError::Param { .. } | DbError::Sql { .. }),
        "{err}"
    );
    // Parameters are bound, never interpolated: this is just a name.
    let evil = format!("x'); DROP TABLE {t}; --");
    wait(
        &reactor,
        db.run_operation(ins.clone(), params![4, evil.clone()]),
    )
    .unwrap();
    let rows = wait(
        &reactor,
        db.run_query(format!("SELECT name FROM {t} WHERE id = 4"), params![]),
    )
    .unwrap();
    assert_eq!(rows[0].get::<String, _>(0).unwrap(), evil);
    drop_table(&reactor, &db, &t);
}

/// Stops the reactor while 1,000 inserts are in flight: every insert whose
/// Deferred succeeded must be in the table; every Deferred fires.
pub fn stop_during_inserts(target: Target, check: impl FnOnce(&[i64]) -> Vec<i64>) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(
        &reactor,
        target.clone(),
        PoolOptions::default().connections(2, 4),
    );
    let t = table("stopload");
    let succeeded: Rc<RefCell<Vec<i64>>> = Rc::default();
    let failed = Rc::new(RefCell::new(0usize));
    let r = reactor.clone();
    let db2 = db.clone();
    let (s, f, t2) = (succeeded.clone(), failed.clone(), t.clone());
    reactor.call_when_running(move || {
        let setup = db2.run_operation(format!("DROP TABLE IF EXISTS {t2}"), params![]);
        let db3 = db2.clone();
        let t3 = t2.clone();
        setup
            .add_callback_deferred(move |_| {
                db3.run_operation(
                    format!("CREATE TABLE {t3} (id BIGINT PRIMARY KEY)"),
                    params![],
                )
            })
            .finally(move |res| {
                res.unwrap();
                for i in 0..1000i64 {
                    let (s, f, r) = (s.clone(), f.clone(), r.clone());
                    db2.run_operation(format!("INSERT INTO {t2} (id) VALUES ($1)"), params![i])
                        .finally(move |res| match res {
                            Ok(1) => {
                                s.borrow_mut().push(i);
                                // Stop part-way through the load.
                                if s.borrow().len() == 100 {
                                    let _ = r.stop();
                                }
                            }
                            Ok(n) => panic!("insert changed {n} rows"),
                            Err(e) => {
                                assert!(e.check::<ThreadPoolError>(), "unexpected failure: {e}");
                                *f.borrow_mut() += 1;
                            }
                        });
                }
            });
    });
    let watchdog = {
        let r = reactor.clone();
        reactor.call_later(LIMIT, move || {
            let _ = r.stop();
            panic!("stop_during_inserts did not finish");
        })
    };
    reactor.run().unwrap();
    let _ = watchdog.cancel();
    let ok = succeeded.borrow().clone();
    assert!(ok.len() >= 100, "{} succeeded", ok.len());
    assert_eq!(ok.len() + *failed.borrow(), 1000, "every Deferred fired");
    assert!(
        *failed.borrow() > 0,
        "the stop came before the end of the load"
    );
    assert_eq!(db.open_connections(), 0, "shutdown closed every connection");
    let present = check(&ok);
    for id in &ok {
        assert!(
            present.binary_search(id).is_ok(),
            "insert {id} was reported but is missing"
        );
    }
}

/// Shutdown closes the pool's connections.
pub fn closes_on_shutdown(target: Target) {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, target, PoolOptions::default().connections(2, 3));
    let r = reactor.clone();
    let opened = Rc::new(RefCell::new(0));
    let (o, db2) = (opened.clone(), db.clone());
    reactor.call_when_running(move || {
        db2.run_query("SELECT 1", params![]).finally(move |res| {
            res.unwrap();
            *o.borrow_mut() = db2.open_connections();
            r.stop().unwrap();
        });
    });
    reactor.run().unwrap();
    assert!(*opened.borrow() >= 1);
    assert_eq!(db.open_connections(), 0);
    assert_eq!(db.thread_pool().thread_count(), 0);
}
