//! `cargo run --release -p torsion-bench --bin echo_bench [-- --quick]`
//!
//! Runs the Torsion, tokio and raw-epoll echo servers one after another, each
//! in a child process (this binary re-executed with `--server KIND`) pinned to
//! CPU 0, while this process generates load from CPU 1, and prints a table of
//! round trips/s, server CPU µs per round trip, ratios, and RSS per idle
//! connection.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use torsion_bench::load::{self, Sample, Window};
use torsion_bench::servers::{self, ServerKind};
use torsion_bench::sys;

const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

#[derive(Debug, Clone, Copy)]
enum Workload {
    PingPong50,
    PingPong1,
    InFlight50x16,
    ConnectRate,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::PingPong50,
        Workload::PingPong1,
        Workload::InFlight50x16,
        Workload::ConnectRate,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::PingPong50 => "50 conns ping-pong 64 B",
            Workload::PingPong1 => "1 conn ping-pong 64 B",
            Workload::InFlight50x16 => "50 conns x 16 pipelined",
            Workload::ConnectRate => "connect+echo+close",
        }
    }

    fn run(self, addr: SocketAddr, pid: u32, w: Window) -> io::Result<Sample> {
        match self {
            Workload::PingPong50 => load::echo(addr, 50, 1, pid, w),
            Workload::PingPong1 => load::echo(addr, 1, 1, pid, w),
            Workload::InFlight50x16 => load::echo(addr, 50, 16, pid, w),
            Workload::ConnectRate => load::connect_rate(addr, 32, pid, w),
        }
    }
}

struct Options {
    window: Window,
    repeat: usize,
    idle: usize,
    kinds: Vec<ServerKind>,
    workloads: Vec<usize>,
    /// A command the servers run under (e.g. valgrind), split on spaces.
    wrap: Vec<String>,
    /// Count user-mode instructions per round trip under callgrind instead of timing.
    callgrind: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: echo_bench [--quick] [--seconds S] [--repeat N] [--idle N] [--only torsion,tokio,raw] [--workloads 1,2,3,4,5] [--wrap CMD] [--callgrind]\n       echo_bench --server torsion|tokio|raw"
    );
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut o = Options {
        window: Window {
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(700),
        },
        repeat: 7,
        idle: 10_000,
        kinds: ServerKind::ALL.to_vec(),
        workloads: vec![1, 2, 3, 4, 5],
        wrap: Vec::new(),
        callgrind: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => {
                o.window = Window {
                    warmup: Duration::from_millis(50),
                    measure: Duration::from_millis(250),
                };
                o.repeat = 1;
                o.idle = 1_000;
            }
            "--seconds" => {
                let s: f64 = value().parse().unwrap_or_else(|_| usage());
                o.window.measure = Duration::from_secs_f64(s);
            }
            "--repeat" => o.repeat = value().parse().unwrap_or_else(|_| usage()),
            "--idle" => o.idle = value().parse().unwrap_or_else(|_| usage()),
            "--only" => {
                o.kinds = value()
                    .split(',')
                    .map(|k| ServerKind::parse(k).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--callgrind" => o.callgrind = true,
            "--wrap" => o.wrap = value().split_whitespace().map(String::from).collect(),
            "--workloads" => {
                o.workloads = value()
                    .split(',')
                    .map(|w| w.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            _ => usage(),
        }
    }
    o.repeat = o.repeat.max(1);
    o
}

/// A server child process; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn spawn(kind: ServerKind, wrap: &[String]) -> io::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args(["--server", kind.name()])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                let _ = child.kill();
                io::Error::other(format!("{} server did not start: {line:?}", kind.name()))
            })?;
        Ok(Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so a wrapper (valgrind) can write its results.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(kind: ServerKind) -> io::Result<()> {
    sys::die_with_parent();
    sys::pin_to_cpu(SERVER_CPU)?;
    sys::raise_nofile()?;
    servers::run(kind, |port| {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "PORT {port}");
        let _ = out.flush();
    })
}

/// The run with the median CPU per round trip. On a shared machine the cost
/// per round trip shifts between levels for seconds at a time (other jobs,
/// the host), for every server alike; the median of interleaved runs reports
/// the typical level, where the best run would reward whichever server
/// happened to run during a quiet spell.
fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.cpu_us_per_rt().total_cmp(&b.cpu_us_per_rt()));
    v[v.len() / 2]
}

fn find(kinds: &[ServerKind], row: &[Sample], k: ServerKind) -> Option<Sample> {
    kinds.iter().position(|x| *x == k).map(|i| row[i])
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn main() {
    let mut raw_args = std::env::args().skip(1);
    if raw_args.next().as_deref() == Some("--server") {
        let kind = raw_args
            .next()
            .and_then(|k| ServerKind::parse(&k))
            .unwrap_or_else(|| usage());
        if let Err(e) = serve(kind) {
            eprintln!("server {}: {e}", kind.name());
            std::process::exit(1);
        }
        return;
    }
    let opts = parse_args();
    let result = if opts.callgrind {
        instructions(&opts)
    } else {
        bench(&opts)
    };
    if let Err(e) = result {
        eprintln!("echo_bench: {e}");
        std::process::exit(1);
    }
}

fn bench(o: &Options) -> io::Result<()> {
    let started = Instant::now();
    let nofile = sys::raise_nofile()?;
    let pinned = sys::pin_to_cpu(CLIENT_CPU)?;
    if !pinned {
        eprintln!("note: fewer than 2 CPUs; server and load generator are not pinned apart");
    }
    let idle = o.idle.min((nofile as usize).saturating_sub(100));
    eprintln!(
        "echo_bench: servers on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}; warm-up {:?}, window {:?}, {} run(s) each, median CPU/rt kept",
        o.window.warmup, o.window.measure, o.repeat
    );

    let mut rows: Vec<(Workload, Vec<Sample>)> = Vec::new();
    for (n, w) in Workload::ALL.into_iter().enumerate() {
        if !o.workloads.contains(&(n + 1)) {
            continue;
        }
        let mut per_kind: Vec<Vec<Sample>> = vec![Vec::new(); o.kinds.len()];
        // Interleave the servers so drifting background load hits all alike.
        for _ in 0..o.repeat {
            for (i, &k) in o.kinds.iter().enumerate() {
                let server = Server::spawn(k, &o.wrap)?;
                let s = w
                    .run(server.addr, server.pid(), o.window)
                    .map_err(|e| io::Error::other(format!("{} / {}: {e}", w.label(), k.name())))?;
                eprintln!(
                    "  {:<26} {:<8} {:>10.0} rt/s {:>7.2} µs/rt ({} round trips in all)",
                    w.label(),
                    k.name(),
                    s.rate(),
                    s.cpu_us_per_rt(),
                    s.total_round_trips
                );
                per_kind[i].push(s);
            }
        }
        rows.push((w, per_kind.into_iter().map(median).collect()));
    }

    let mut idle_kib = Vec::new();
    for &k in &o.kinds {
        if !o.workloads.contains(&5) {
            break;
        }
        let server = Server::spawn(k, &o.wrap)?;
        let kib = load::idle_rss(server.addr, idle, server.pid())
            .map_err(|e| io::Error::other(format!("idle / {}: {e}", k.name())))?;
        eprintln!(
            "  {idle} idle conns        {:<8} {kib:.2} KiB/conn",
            k.name()
        );
        idle_kib.push(kib);
    }

    // The table (Markdown).
    let names: Vec<&str> = o.kinds.iter().map(|k| k.name()).collect();
    let mut head = String::from("| workload |");
    let mut sep = String::from("|---|");
    for n in &names {
        head += &format!(" {n} rt/s |");
        sep += "---:|";
    }
    for n in &names {
        head += &format!(" {n} µs/rt |");
        sep += "---:|";
    }
    head += " torsion/tokio | torsion/raw |";
    sep += "---:|---:|";
    println!("{head}\n{sep}");
    for (w, row) in &rows {
        let mut line = format!("| {} |", w.label());
        for s in row {
            line += &format!(" {:.0} |", s.rate());
        }
        for s in row {
            line += &format!(" {:.2} |", s.cpu_us_per_rt());
        }
        let cpu = |k| find(&o.kinds, row, k).map(|s| s.cpu_us_per_rt());
        line += &format!(
            " {} | {} |",
            ratio(cpu(ServerKind::Torsion), cpu(ServerKind::Tokio)),
            ratio(cpu(ServerKind::Torsion), cpu(ServerKind::Raw))
        );
        println!("{line}");
    }
    if !idle_kib.is_empty() {
        let mut head = String::from("\n| RSS per idle connection |");
        let mut sep = String::from("|---|");
        let mut line = format!("| KiB, {idle} idle conns |");
        for (n, kib) in names.iter().zip(&idle_kib) {
            head += &format!(" {n} |");
            sep += "---:|";
            line += &format!(" {kib:.2} |");
        }
        println!("{head}\n{sep}\n{line}");
    }
    println!(
        "\nrt/s: round trips per second seen by the load generator. µs/rt: server process CPU \
         time (user+system) per round trip, median of {} interleaved run(s) of {:?}; ratios compare µs/rt. RSS: growth of the server's \
         VmRSS per connection. Total time {:.0} s.",
        o.repeat,
        o.window.measure,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The `Ir` total callgrind wrote to `path` (its `summary:`/`totals:` line).
fn callgrind_total(path: &std::path::Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no totals in {}", path.display())))
}

/// `--callgrind`: user-mode instructions per round trip, free of timing noise.
/// Each server runs twice under callgrind, with a short and a long window;
/// the difference of the totals over the difference of round trips cancels
/// start-up and shutdown.
fn instructions(o: &Options) -> io::Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err(io::Error::other(
            "--callgrind needs valgrind on PATH (apt-get install valgrind)",
        ));
    }
    sys::raise_nofile()?;
    sys::pin_to_cpu(CLIENT_CPU)?;
    let dir = std::env::temp_dir().join(format!("echo_bench_callgrind.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let windows = [
        Window {
            warmup: Duration::from_millis(200),
            measure: o.window.measure / 4,
        },
        Window {
            warmup: Duration::from_millis(200),
            measure: o.window.measure * 5 / 4,
        },
    ];
    eprintln!(
        "echo_bench --callgrind: servers under valgrind, windows {:?} and {:?}",
        windows[0].measure, windows[1].measure
    );
    let mut rows = Vec::new();
    for (n, w) in Workload::ALL.into_iter().enumerate() {
        if !o.workloads.contains(&(n + 1)) {
            continue;
        }
        let mut per_kind = Vec::new();
        for &k in &o.kinds {
            let mut points = Vec::new();
            for (j, win) in windows.iter().enumerate() {
                let out = dir.join(format!("{}.{}.{j}.out", k.name(), n + 1));
                let wrap: Vec<String> = vec![
                    "valgrind".into(),
                    "-q".into(),
                    "--tool=callgrind".into(),
                    format!("--callgrind-out-file={}", out.display()),
                ];
                let server = Server::spawn(k, &wrap)?;
                let s = w
                    .run(server.addr, server.pid(), *win)
                    .map_err(|e| io::Error::other(format!("{} / {}: {e}", w.label(), k.name())))?;
                drop(server); // SIGTERM: callgrind writes its totals
                points.push((s.total_round_trips, callgrind_total(&out)?));
            }
            let (rt0, ir0) = points[0];
            let (rt1, ir1) = points[1];
            let per = ir1.saturating_sub(ir0) as f64 / (rt1.saturating_sub(rt0).max(1)) as f64;
            eprintln!(
                "  {:<26} {:<8} {per:>8.0} instructions/rt",
                w.label(),
                k.name()
            );
            per_kind.push(per);
        }
        rows.push((w, per_kind));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut head = String::from("| workload |");
    let mut sep = String::from("|---|");
    for k in &o.kinds {
        head += &format!(" {} instr/rt |", k.name());
        sep += "---:|";
    }
    head += " torsion/tokio | torsion/raw |";
    sep += "---:|---:|";
    println!("{head}\n{sep}");
    for (w, per) in &rows {
        let mut line = format!("| {} |", w.label());
        for v in per {
            line += &format!(" {v:.0} |");
        }
        let of = |k| o.kinds.iter().position(|x| *x == k).map(|i| per[i]);
        line += &format!(
            " {} | {} |",
            ratio(of(ServerKind::Torsion), of(ServerKind::Tokio)),
            ratio(of(ServerKind::Torsion), of(ServerKind::Raw))
        );
        println!("{line}");
    }
    println!(
        "\ninstr/rt: user-mode instructions the server executes per round trip (callgrind; \
         system calls count only their libc wrappers, the kernel's work is not included)."
    );
    Ok(())
}
