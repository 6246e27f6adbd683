//! Deferred chains against boxed futures and Twisted, in one run.
//!
//! `cargo bench -p torsion-core --bench deferred`
//!
//! Each case builds a chain of N callbacks, fires it, and reads the result;
//! the figure is time divided by the number of callbacks run (best of seven
//! short rounds, the same rule for all three), printed twice: by wall time,
//! and by the CPU time of the measuring thread, which on a shared machine
//! leaves out the time the thread waited for a CPU. Twisted
//! is measured through `python3` when it can import `twisted` (the run tries
//! `pip install twisted` once when it cannot, unless TORSION_BENCH_NO_PIP is set).

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::FutureExt;
use torsion_core::Deferred;

thread_local! {
    static SINK: Cell<u64> = const { Cell::new(0) };
}

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(80);

/// Best ns per callback over the rounds, by two clocks.
#[derive(Clone, Copy)]
struct Figures {
    /// Wall time.
    wall: f64,
    /// CPU time of the measuring thread: on a shared machine it leaves out
    /// the time the thread waited for a CPU (which wall time counts).
    cpu: f64,
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid place for the result.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` (which performs `per_iter` callbacks) for several short rounds
/// and returns the best round's ns per callback, by wall and by CPU time:
/// the minimum is the figure least disturbed by other work on a shared
/// machine.
fn measure(per_iter: u64, mut f: impl FnMut()) -> Figures {
    for _ in 0..1000 {
        f();
    }
    let mut best = Figures {
        wall: f64::INFINITY,
        cpu: f64::INFINITY,
    };
    for _ in 0..ROUNDS {
        let mut iters = 0u64;
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        while start.elapsed() < ROUND {
            for _ in 0..256 {
                f();
            }
            iters += 256;
        }
        let cpu = (thread_cpu_time() - cpu_start).as_nanos() as f64;
        let calls = (iters * per_iter) as f64;
        best.wall = best.wall.min(start.elapsed().as_nanos() as f64 / calls);
        best.cpu = best.cpu.min(cpu / calls);
    }
    best
}

fn deferred_chain(n: u64) {
    let d = Deferred::<u64>::new();
    let mut h = d.clone();
    for _ in 1..n {
        h = h.add_callback(|x| black_box(x) + 1);
    }
    h.add_callback(|x| SINK.with(|s| s.set(x)));
    let _ = d.callback(black_box(1));
}

fn deferred_returning_deferred() {
    // Two callbacks: one returns an already-fired Deferred, the next reads the result.
    let d = Deferred::<u64>::new();
    d.clone()
        .add_callback_deferred(|x| Deferred::succeed(x + 1))
        .add_callback(|x| SINK.with(|s| s.set(x)));
    let _ = d.callback(black_box(1));
}

fn deferred_returning_paused_deferred() {
    // The returned Deferred fires later: the outer chain pauses, then resumes.
    let d = Deferred::<u64>::new();
    let inner = Deferred::<u64>::new();
    let i2 = inner.clone();
    d.clone()
        .add_callback_deferred(move |_| i2)
        .add_callback(|x| SINK.with(|s| s.set(x)));
    let _ = d.callback(black_box(1));
    let _ = inner.callback(black_box(2));
}

fn futures_chain(n: u64) {
    let mut f: Pin<Box<dyn Future<Output = u64>>> = Box::pin(futures::future::ready(black_box(1)));
    for _ in 1..n {
        f = f.map(|x| black_box(x) + 1).boxed_local();
    }
    let f = f.map(|x| SINK.with(|s| s.set(x)));
    futures::executor::block_on(f);
}

fn futures_returning_future() {
    let f = futures::future::ready(black_box(1u64))
        .boxed_local()
        .then(|x| futures::future::ready(x + 1).boxed_local())
        .boxed_local()
        .map(|x| SINK.with(|s| s.set(x)));
    futures::executor::block_on(f);
}

const TWISTED_SCRIPT: &str = r#"
import sys, time
from twisted.internet.defer import Deferred, succeed
def measure(per_iter, f, rounds=7, length=0.08):
    for _ in range(200): f()
    best = float("inf"); best_cpu = float("inf")
    for _ in range(rounds):
        iters = 0; start = time.perf_counter(); cpu = time.thread_time()
        while time.perf_counter() - start < length:
            for _ in range(64): f()
            iters += 64
        calls = iters * per_iter
        best_cpu = min(best_cpu, (time.thread_time() - cpu) * 1e9 / calls)
        best = min(best, (time.perf_counter() - start) * 1e9 / calls)
    return "%.1f %.1f" % (best, best_cpu)
sink = [0]
def inc(x): return x + 1
def store(x): sink[0] = x
def chain(n):
    def run():
        d = Deferred()
        for _ in range(n - 1): d.addCallback(inc)
        d.addCallback(store)
        d.callback(1)
    return run
def returning():
    d = Deferred()
    d.addCallback(lambda x: succeed(x + 1))
    d.addCallback(store)
    d.callback(1)
def returning_paused():
    d = Deferred(); inner = Deferred()
    d.addCallback(lambda _: inner)
    d.addCallback(store)
    d.callback(1); inner.callback(2)
for n in (1, 10, 100):
    print("chain%d %s" % (n, measure(n, chain(n))))
print("returning %s" % measure(2, returning))
print("returning_paused %s" % measure(2, returning_paused))
"#;

fn twisted() -> Option<Vec<(String, Figures)>> {
    let has = |py: &str| {
        Command::new(py)
            .args(["-c", "import twisted"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has("python3") {
        if std::env::var_os("TORSION_BENCH_NO_PIP").is_some() {
            return None;
        }
        eprintln!("installing twisted with pip for the comparison ...");
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "twisted"])
            .status();
        if !has("python3") {
            let _ = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--break-system-packages",
                    "twisted",
                ])
                .status();
        }
        if !has("python3") {
            return None;
        }
    }
    let out = Command::new("python3")
        .args(["-c", TWISTED_SCRIPT])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "twisted run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut words = l.split(' ');
                let k = words.next()?;
                let wall = words.next()?.parse().ok()?;
                let cpu = words.next()?.parse().ok()?;
                Some((k.to_string(), Figures { wall, cpu }))
            })
            .collect(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    // TORSION_BENCH_PROFILE=N runs only the Deferred chain of N callbacks
    // 10^7 callbacks' worth (for `perf record` / `perf stat`).
    // TORSION_BENCH_PROFILE=ret (or ret_paused) runs the Deferred returning
    // a fired (or unfired) Deferred instead, two callbacks per round.
    if let Ok(case) = std::env::var("TORSION_BENCH_PROFILE") {
        // A fixed amount of work, so `perf stat` / callgrind counts compare across runs.
        let total: u64 = std::env::var("TORSION_BENCH_CALLBACKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000_000);
        match case.as_str() {
            "ret" => (0..total / 2).for_each(|_| deferred_returning_deferred()),
            "ret_paused" => (0..total / 2).for_each(|_| deferred_returning_paused_deferred()),
            n => {
                let n = n.parse::<u64>().unwrap_or(1).max(1);
                for _ in 0..(total / n) {
                    deferred_chain(n);
                }
            }
        }
        return;
    }
    let tw = twisted();
    let tw_get = |k: &str| {
        tw.as_ref()
            .and_then(|v| v.iter().find(|(n, _)| n == k).map(|(_, x)| *x))
    };
    let mut rows: Vec<(String, Figures, Figures, Option<Figures>)> = Vec::new();
    for n in [1u64, 10, 100] {
        let d = measure(n, || deferred_chain(n));
        let f = measure(n, || futures_chain(n));
        rows.push((
            format!("chain of {n} callbacks"),
            d,
            f,
            tw_get(&format!("chain{n}")),
        ));
    }
    let d = measure(2, deferred_returning_deferred);
    let f = measure(2, futures_returning_future);
    rows.push((
        "Deferred returning fired Deferred".into(),
        d,
        f,
        tw_get("returning"),
    ));
    let d = measure(2, deferred_returning_paused_deferred);
    rows.push((
        "Deferred returning unfired Deferred".into(),
        d,
        f,
        tw_get("returning_paused"),
    ));
    for (title, pick) in [
        ("wall time", (|x: &Figures| x.wall) as fn(&Figures) -> f64),
        ("CPU time of the thread", |x: &Figures| x.cpu),
    ] {
        println!("{title}:");
        println!(
            "{:<34} {:>12} {:>14} {:>12} {:>10} {:>10}",
            "case (ns per callback)", "Deferred", "boxed futures", "Twisted", "fut/Def", "Tw/Def"
        );
        for (name, d, f, t) in &rows {
            let (d, f, t) = (pick(d), pick(f), t.as_ref().map(pick));
            let ts = t.map_or("n/a".to_string(), |t| format!("{t:.1}"));
            let tr = t.map_or("n/a".to_string(), |t| format!("{:.0}x", t / d));
            println!(
                "{name:<34} {d:>12.1} {f:>14.1} {ts:>12} {:>9.1}x {tr:>10}",
                f / d
            );
        }
    }
    black_box(SINK.with(|s| s.get()));
}
