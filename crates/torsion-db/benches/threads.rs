//! Thread round trips and pooled SQLite reads.
//!
//! `cargo bench -p torsion-db --bench threads`
//!
//! Prints, from one run: `defer_to_thread` round-trip latency and throughput
//! beside tokio's `spawn_blocking` (both pools capped at 10 threads), and
//! SQLite point-select throughput through the pool beside one thread calling
//! rusqlite directly.
//!
//! `-- --quick` runs 10x fewer calls; `-- --only=NAME` (`latency`,
//! `throughput`, `tokio-latency`, `tokio-throughput`, `sqlite`) runs one part,
//! e.g. under `strace -c -f` or `perf`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use torsion_core::threads::defer_to_thread;
use torsion_core::{Deferred, Reactor};
use torsion_db::{params, ConnectionPool, PoolOptions, Target};

const THREADS: usize = 10;

/// Runs the reactor until `done` is set; returns the elapsed time.
fn run_until(reactor: &Reactor, start: impl FnOnce(Rc<Cell<bool>>)) -> Duration {
    let done = Rc::new(Cell::new(false));
    let t0 = Instant::now();
    start(done.clone());
    while !done.get() {
        reactor.iterate(Some(Duration::from_millis(100))).unwrap();
    }
    t0.elapsed()
}

/// `n` calls one after the other: each submitted when the previous returned.
fn torsion_latency(reactor: &Reactor, n: u64) -> Duration {
    fn step(r: Reactor, left: u64, done: Rc<Cell<bool>>) {
        if left == 0 {
            done.set(true);
            return;
        }
        let r2 = r.clone();
        defer_to_thread(&r, move || left).finally(move |v| {
            assert_eq!(v.unwrap(), left);
            step(r2, left - 1, done);
        });
    }
    let r = reactor.clone();
    run_until(reactor, move |done| step(r, n, done)) / n as u32
}

/// `n` calls submitted at once; time until all have come back.
fn torsion_throughput(reactor: &Reactor, n: u64) -> f64 {
    let elapsed = run_until(reactor, |done| {
        let left = Rc::new(Cell::new(n));
        for i in 0..n {
            let (left, done) = (left.clone(), done.clone());
            defer_to_thread(reactor, move || i).finally(move |v| {
                v.unwrap();
                left.set(left.get() - 1);
                if left.get() == 0 {
                    done.set(true);
                }
            });
        }
    });
    n as f64 / elapsed.as_secs_f64()
}

fn tokio_latency(rt: &tokio::runtime::Runtime, n: u64) -> Duration {
    let t0 = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let v = tokio::task::spawn_blocking(move || i).await.unwrap();
            assert_eq!(v, i);
        }
    });
    t0.elapsed() / n as u32
}

fn tokio_throughput(rt: &tokio::runtime::Runtime, n: u64) -> f64 {
    let t0 = Instant::now();
    rt.block_on(async {
        let handles: Vec<_> = (0..n)
            .map(|i| tokio::task::spawn_blocking(move || i))
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    n as f64 / t0.elapsed().as_secs_f64()
}

fn sqlite_pool_selects(reactor: &Reactor, db: &ConnectionPool, n: u64, in_flight: u64) -> f64 {
    fn issue(
        db: ConnectionPool,
        next: Rc<Cell<u64>>,
        left: Rc<Cell<u64>>,
        n: u64,
        done: Rc<Cell<bool>>,
    ) {
        let i = next.get();
        if i >= n {
            return;
        }
        next.set(i + 1);
        let d: Deferred<_> = db.run_query(
            "SELECT value FROM kv WHERE id = $1",
            params![(i % 10_000) as i64],
        );
        d.finally(move |rows| {
            assert_eq!(rows.unwrap().len(), 1);
            left.set(left.get() - 1);
            if left.get() == 0 {
                done.set(true);
            } else {
                issue(db, next, left, n, done);
            }
        });
    }
    let elapsed = run_until(reactor, |done| {
        let next = Rc::new(Cell::new(0));
        let left = Rc::new(Cell::new(n));
        for _ in 0..in_flight {
            issue(db.clone(), next.clone(), left.clone(), n, done.clone());
        }
    });
    n as f64 / elapsed.as_secs_f64()
}

fn sqlite_direct_selects(path: &std::path::Path, n: u64) -> f64 {
    let c = rusqlite::Connection::open(path).unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        let mut stmt = c
            .prepare_cached("SELECT value FROM kv WHERE id = $1")
            .unwrap();
        let v: String = stmt.query_row([(i % 10_000) as i64], |r| r.get(0)).unwrap();
        assert!(!v.is_empty());
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let only = std::env::args().find_map(|a| a.strip_prefix("--only=").map(String::from));
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let reactor = Reactor::new().unwrap();
    reactor.suggest_thread_pool_size(THREADS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(THREADS)
        .build()
        .unwrap();

    if let Some(part) = &only {
        println!("only: {part}");
    }
    // Warm both pools up.
    if runs("latency") || runs("throughput") {
        torsion_throughput(&reactor, 10_000);
    }
    if runs("tokio-latency") || runs("tokio-throughput") {
        tokio_throughput(&rt, 10_000);
    }

    let n_lat = 20_000 / scale;
    let n_thr = 200_000 / scale;
    let tl = runs("latency").then(|| torsion_latency(&reactor, n_lat));
    let kl = runs("tokio-latency").then(|| tokio_latency(&rt, n_lat));
    let tt = runs("throughput").then(|| torsion_throughput(&reactor, n_thr));
    let kt = runs("tokio-throughput").then(|| tokio_throughput(&rt, n_thr));
    println!("round-trip latency ({n_lat} sequential calls, mean)");
    if let Some(tl) = tl {
        println!(
            "  torsion defer_to_thread   {:>9.2} µs",
            tl.as_secs_f64() * 1e6
        );
    }
    if let Some(kl) = kl {
        println!(
            "  tokio spawn_blocking      {:>9.2} µs",
            kl.as_secs_f64() * 1e6
        );
    }
    if let (Some(tl), Some(kl)) = (tl, kl) {
        println!(
            "  ratio torsion/tokio       {:>9.2}",
            tl.as_secs_f64() / kl.as_secs_f64()
        );
    }
    println!("throughput ({n_thr} calls submitted at once, {THREADS} threads)");
    if let Some(tt) = tt {
        println!("  torsion defer_to_thread   {:>9.0} calls/s", tt);
    }
    if let Some(kt) = kt {
        println!("  tokio spawn_blocking      {:>9.0} calls/s", kt);
    }
    if let (Some(tt), Some(kt)) = (tt, kt) {
        println!("  ratio torsion/tokio       {:>9.2}", tt / kt);
    }
    if !runs("sqlite") {
        return;
    }

    let dir = std::env::temp_dir().join(format!("torsion-db-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; DROP TABLE IF EXISTS kv; \
             CREATE TABLE kv (id INTEGER PRIMARY KEY, value TEXT NOT NULL);",
        )
        .unwrap();
        c.execute_batch("BEGIN").unwrap();
        for i in 0..10_000i64 {
            c.execute(
                "INSERT INTO kv VALUES (?1, ?2)",
                rusqlite::params![i, format!("value-{i}")],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
    }
    let n_sel = 100_000 / scale;
    let direct = sqlite_direct_selects(&path, n_sel);
    println!("SQLite point selects ({n_sel}, 10,000-row table, WAL)");
    println!(
        "  rusqlite, one thread, no pool        {:>9.0} selects/s",
        direct
    );
    for conns in [1usize, 4] {
        let db = ConnectionPool::new(
            &reactor,
            Target::SqliteFile(path.clone()),
            PoolOptions::default().connections(conns, conns),
        );
        sqlite_pool_selects(&reactor, &db, 5_000, 64);
        let pooled = sqlite_pool_selects(&reactor, &db, n_sel, 64);
        println!(
            "  ConnectionPool, {conns} connection(s), 64 in flight {:>9.0} selects/s ({:.2} of direct)",
            pooled,
            pooled / direct
        );
        let closed = db.close();
        let d = Rc::new(Cell::new(false));
        let d2 = d.clone();
        closed.finally(move |_| d2.set(true));
        while !d.get() {
            reactor.iterate(Some(Duration::from_millis(50))).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
