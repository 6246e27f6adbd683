//! The connection pool against a real PostgreSQL server, started by
//! `scripts/test.d/threads-db.sh` (source it before running these locally).

mod common;

use std::time::Duration;

use common::*;
use torsion_core::Reactor;
use torsion_db::{params, ConnectionPool, DbError, PoolOptions, Target};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the PostgreSQL servers started by \
             scripts/test.d/threads-db.sh (run `source scripts/test.d/threads-db.sh` first)"
        )
    })
}

fn pg() -> Target {
    Target::Postgres(env("TORSION_TEST_PG"))
}

#[test]
fn query_operation_interaction_pg() {
    query_operation_interaction(pg());
}

#[test]
fn rollback_on_error_and_panic_pg() {
    rollback_on_error_and_panic(pg());
}

#[test]
fn concurrent_interactions_pg() {
    concurrent_interactions(pg());
}

#[test]
fn typed_row_errors_pg() {
    typed_row_errors(pg());
}

#[test]
fn bad_sql_and_constraints_pg() {
    bad_sql_and_constraints(pg());
}

#[test]
fn closes_on_shutdown_pg() {
    closes_on_shutdown(pg());
}

#[test]
fn stop_during_inserts_pg() {
    stop_during_inserts(pg(), |_| {
        let mut c = postgres::Client::connect(&env("TORSION_TEST_PG"), postgres::NoTls).unwrap();
        let t = table("stopload");
        let ids: Vec<i64> = c
            .query(&format!("SELECT id FROM {t} ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        c.batch_execute(&format!("DROP TABLE {t}")).unwrap();
        ids
    });
}

#[test]
fn parameter_type_mismatch_is_a_param_error() {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, pg(), PoolOptions::default());
    let t = table("ptypes");
    create(&reactor, &db, &t);
    // Text where the column is a bigint: refused when binding, not coerced.
    let err = wait(
        &reactor,
        db.run_operation(
            format!("INSERT INTO {t} (id, name) VALUES ($1, $2)"),
            params!["seven", "x"],
        ),
    )
    .unwrap_err();
    match db_error(&err) {
        DbError::Param { message } => assert!(message.contains("int8"), "{message}"),
        other => panic!("expected a parameter error, got {other:?}"),
    }
    // An integer that does not fit an int4 parameter.
    let err = wait(
        &reactor,
        db.run_query("SELECT $1::int4 AS v", params![i64::MAX]),
    )
    .unwrap_err();
    assert!(matches!(db_error(&err), DbError::Param { .. }), "{err}");
    // Columns of types we do not map come back as a typed error.
    let err = wait(&reactor, db.run_query("SELECT point(1, 2) AS t", params![])).unwrap_err();
    assert!(
        matches!(db_error(&err), DbError::UnsupportedType { .. }),
        "{err}"
    );
    let rows = wait(&reactor, db.run_query("SELECT now()::text AS t", params![])).unwrap();
    assert!(!rows[0].get::<String, _>("t").unwrap().is_empty());
    drop_table(&reactor, &db, &t);
}

#[test]
fn server_down_at_start_is_an_open_error() {
    // A loopback port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(
        &reactor,
        Target::Postgres(format!(
            "host=127.0.0.1 port={port} user=torsion dbname=postgres"
        )),
        PoolOptions::default().connections(1, 2),
    );
    for _ in 0..2 {
        let err = wait(&reactor, db.run_query("SELECT 1", params![])).unwrap_err();
        match db_error(&err) {
            DbError::Open { message } => {
                assert!(message.to_lowercase().contains("refused"), "{message}")
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }
    let err = wait(&reactor, db.run_interaction(|_| Ok(()))).unwrap_err();
    assert!(matches!(db_error(&err), DbError::Open { .. }));
}

#[test]
fn a_bad_connection_string_is_an_open_error() {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::postgres(&reactor, "host=127.0.0.1 port=notaport");
    let err = wait(&reactor, db.run_query("SELECT 1", params![])).unwrap_err();
    assert!(matches!(db_error(&err), DbError::Open { .. }), "{err}");
}

/// Restarts the second test server (its own, so other tests are not disturbed)
/// while a query runs on it.
#[test]
fn reconnects_after_a_server_restart() {
    let conn = env("TORSION_TEST_PG_RESTART");
    let data = env("TORSION_TEST_PG_RESTART_DATA");
    let pg_ctl = env("TORSION_TEST_PG_CTL");
    let user = env("TORSION_TEST_PG_USER");
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(
        &reactor,
        Target::Postgres(conn),
        PoolOptions::default().connections(2, 2),
    );
    // Both connections are up and used.
    let warm: Vec<_> = (0..4)
        .map(|_| db.run_query("SELECT 1 AS one", params![]))
        .collect();
    for d in warm {
        assert_eq!(
            wait(&reactor, d).unwrap()[0].get::<i64, _>("one").unwrap(),
            1
        );
    }
    // A long query is in flight when the server restarts.
    let in_flight = db.run_query("SELECT pg_sleep(30)::text", params![]);
    // Let it reach the server.
    let until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < until {
        reactor.iterate(Some(Duration::from_millis(20))).unwrap();
    }
    let restart = std::thread::spawn(move || {
        let mut cmd = if is_root() && user != whoami() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", &user, "--", &pg_ctl]);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        cmd.args(["-D", &data, "-m", "fast", "-w", "-t", "60", "restart"])
            .stdout(std::process::Stdio::null())
            .status()
    });
    let err = wait(&reactor, in_flight).unwrap_err();
    assert!(
        matches!(db_error(&err), DbError::ConnectionLost { .. }),
        "{err}"
    );
    let status = restart.join().unwrap().expect("run pg_ctl");
    assert!(status.success(), "pg_ctl restart failed: {status}");
    // The server is back: the next calls succeed, on fresh connections.
    for _ in 0..4 {
        let rows = wait(&reactor, db.run_query("SELECT 2::int8 AS two", params![])).unwrap();
        assert_eq!(rows[0].get::<i64, _>("two").unwrap(), 2);
    }
}

fn whoami() -> String {
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// An interaction that swallows a failed statement and returns `Ok`: PostgreSQL
/// has aborted the transaction, so success must not be reported (a `COMMIT`
/// would silently roll back).
#[test]
fn an_aborted_transaction_is_not_reported_as_committed() {
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, pg(), PoolOptions::default());
    let t = table("aborted");
    create(&reactor, &db, &t);
    let t1 = t.clone();
    let err = wait(
        &reactor,
        db.run_interaction(move |txn| {
            txn.execute(&format!("INSERT INTO {t1} (id, name) VALUES (1, 'a')"), &[])?;
            let _ignored = txn.execute("SELECT * FROM no_such_table_at_all", &[]);
            Ok(())
        }),
    )
    .unwrap_err();
    match db_error(&err) {
        DbError::Sql { code, .. } => assert_eq!(code.as_deref(), Some("25P02"), "{err}"),
        other => panic!("expected the aborted-transaction error, got {other:?}"),
    }
    // A transaction that recovered through a savepoint does commit.
    let t2 = t.clone();
    wait(
        &reactor,
        db.run_interaction(move |txn| {
            txn.execute(&format!("INSERT INTO {t2} (id, name) VALUES (2, 'b')"), &[])?;
            txn.execute("SAVEPOINT s", &[])?;
            let _ignored = txn.execute("SELECT * FROM no_such_table_at_all", &[]);
            txn.execute("ROLLBACK TO SAVEPOINT s", &[])?;
            Ok(())
        }),
    )
    .unwrap();
    let rows = wait(
        &reactor,
        db.run_query(format!("SELECT id FROM {t} ORDER BY id"), params![]),
    )
    .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0).unwrap()).collect();
    assert_eq!(ids, vec![2]);
    drop_table(&reactor, &db, &t);
}

/// uuid, json, jsonb, numeric, date, time, timestamp and timestamptz are
/// bound from and read as text. The server is the reference: what it stores
/// from our binary encoding and prints with its own `::text` must equal what
/// we decode, and both must mean the value we sent.
#[test]
fn uuid_json_numeric_and_time_types_map_to_text() {
    use torsion_db::Value;
    let reactor = Reactor::new().unwrap();
    let db = ConnectionPool::new(&reactor, pg(), PoolOptions::default());
    let t = table("texttypes");
    wait(
        &reactor,
        db.run_operation(
            format!(
                "CREATE TABLE {t} (k int PRIMARY KEY, u uuid, j json, jb jsonb, n numeric, \
                 d date, tm time, ts timestamp, tz timestamptz)"
            ),
            params![],
        ),
    )
    .unwrap();
    let rows_in: [[&str; 8]; 4] = [
        [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            r#"{"a": [1, 2]}"#,
            r#"{"b": 2, "a": 1}"#,
            "-12345.678900",
            "2024-02-29",
            "23:59:59.123456",
            "2026-11-25 16:30:00.5",
            "2026-11-25 18:30:00+02",
        ],
        [
            "00000000000000000000000000000000",
            "[]",
            "null",
            "0.0001",
            "1999-12-31",
            "00:00:00",
            "1970-01-01 00:00:00",
            "1969-12-31T23:59:59.999999Z",
        ],
        [
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "1",
            "[1, \"x\"]",
            "NaN",
            "infinity",
            "12:00",
            "-infinity",
            "2000-01-01 00:00:00-08:30",
        ],
        [
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "{}",
            "{}",
            "-0.5",
            "0044-03-15 BC",
            "24:00:00",
            "0044-03-15 12:00:00.25 BC",
            "0001-01-01 00:00:00+00 BC",
        ],
    ];
    for (k, r) in rows_in.iter().enumerate() {
        let mut p = params![k as i64];
        p.extend(r.iter().map(|v| Value::from(*v)));
        wait(
            &reactor,
            db.run_operation(
                format!("INSERT INTO {t} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
                p,
            ),
        )
        .unwrap();
    }
    wait(
        &reactor,
        db.run_operation(format!("INSERT INTO {t} (k) VALUES (4)"), params![]),
    )
    .unwrap();
    // The server prints timestamptz in the session's zone: UTC here, as we do.
    let select = format!(
        "SELECT u, u::text, j, j::text, jb, jb::text, n, n::text, d, d::text, \
         tm, tm::text, ts, ts::text, tz, tz::text FROM {t} ORDER BY k"
    );
    let rows = wait(
        &reactor,
        db.run_interaction(move |txn| {
            txn.execute("SET LOCAL TIME ZONE 'UTC'", &[])?;
            Ok(txn.query(&select, &[])?)
        }),
    )
    .unwrap();
    assert_eq!(rows.len(), 5);
    for (k, row) in rows.iter().take(4).enumerate() {
        for col in 0..8 {
            let ours = row.get::<String, _>(2 * col).unwrap();
            let server = row.get::<String, _>(2 * col + 1).unwrap();
            assert_eq!(ours, server, "row {k}, column {col}");
        }
    }
    // And they mean what was sent.
    let first: Vec<String> = (0..8).map(|c| rows[0].get(2 * c).unwrap()).collect();
    assert_eq!(
        first,
        [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            r#"{"a": [1, 2]}"#,
            r#"{"a": 1, "b": 2}"#,
            "-12345.678900",
            "2024-02-29",
            "23:59:59.123456",
            "2026-11-25 16:30:00.5",
            "2026-11-25 16:30:00+00",
        ]
    );
    assert_eq!(
        rows[1].get::<String, _>(14).unwrap(),
        "1969-12-31 23:59:59.999999+00"
    );
    assert_eq!(
        rows[2].get::<String, _>(0).unwrap(),
        "ffffffff-ffff-ffff-ffff-ffffffffffff"
    );
    assert_eq!(
        rows[2].get::<String, _>(14).unwrap(),
        "2000-01-01 08:30:00+00"
    );
    assert_eq!(
        rows[3].get::<String, _>(12).unwrap(),
        "0044-03-15 12:00:00.25 BC"
    );
    // NULLs of these types are NULL.
    for col in 0..8 {
        assert_eq!(
            rows[4].value(2 * col).unwrap(),
            &Value::Null,
            "column {col}"
        );
    }
    // A malformed value is a parameter error naming the problem.
    let err = wait(
        &reactor,
        db.run_operation(
            format!("INSERT INTO {t} (k, u) VALUES (9, $1)"),
            params!["not-a-uuid"],
        ),
    )
    .unwrap_err();
    match db_error(&err) {
        DbError::Param { message } => assert!(message.contains("not a uuid"), "{message}"),
        other => panic!("expected a parameter error, got {other:?}"),
    }
    drop_table(&reactor, &db, &t);
}
