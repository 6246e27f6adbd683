//! Child processes: /bin/sh, cat, sort, signals, extra descriptors, PTY,
//! flow control against a flooding child, and reaping (no zombies).

#[path = "transports_common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::run_until;
use torsion_core::process::{
    ChildFd, ExitStatus, ProcessError, ProcessOptions, ProcessProtocol, ProcessTransport,
};
use torsion_core::Reactor;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Default, Debug)]
struct Seen {
    out: Vec<u8>,
    err: Vec<u8>,
    fd3: Vec<u8>,
    lost_fds: Vec<i32>,
    exited: Option<ExitStatus>,
    ended: Option<ExitStatus>,
    transport: Option<ProcessTransport>,
}

struct Recorder {
    seen: Rc<RefCell<Seen>>,
    stdin: Option<Vec<u8>>,
}

impl Recorder {
    fn new(stdin: Option<&[u8]>) -> (Box<Self>, Rc<RefCell<Seen>>) {
        let seen = Rc::new(RefCell::new(Seen::default()));
        (
            Box::new(Recorder {
                seen: seen.clone(),
                stdin: stdin.map(|s| s.to_vec()),
            }),
            seen,
        )
    }
}

impl ProcessProtocol for Recorder {
    fn connection_made(&mut self, p: ProcessTransport) {
        if let Some(data) = self.stdin.take() {
            p.write(&data).unwrap();
            p.close_stdin();
        }
        self.seen.borrow_mut().transport = Some(p);
    }
    fn child_data_received(&mut self, fd: i32, data: &[u8]) {
        let mut s = self.seen.borrow_mut();
        match fd {
            1 => s.out.extend_from_slice(data),
            2 => s.err.extend_from_slice(data),
            3 => s.fd3.extend_from_slice(data),
            _ => panic!("unexpected fd {fd}"),
        }
    }
    fn child_connection_lost(&mut self, fd: i32) {
        self.seen.borrow_mut().lost_fds.push(fd);
    }
    fn process_exited(&mut self, status: ExitStatus) {
        self.seen.borrow_mut().exited = Some(status);
    }
    fn process_ended(&mut self, status: ExitStatus) {
        let mut s = self.seen.borrow_mut();
        assert!(
            s.exited.is_some(),
            "process_exited comes before process_ended"
        );
        s.ended = Some(status);
    }
}

fn wait_ended(reactor: &Reactor, seen: &Rc<RefCell<Seen>>) {
    let ok = run_until(reactor, LIMIT, || seen.borrow().ended.is_some());
    assert!(ok, "process did not end: {:?}", seen.borrow());
}

fn zombie_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.chars().next()
}

#[test]
fn sh_exit_code_stdout_and_stderr() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(None);
    let p = reactor
        .spawn_process(
            proto,
            ProcessOptions::new("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"]),
        )
        .unwrap();
    wait_ended(&reactor, &seen);
    let s = seen.borrow();
    assert_eq!(s.out, b"out\n");
    assert_eq!(s.err, b"err\n");
    assert_eq!(s.ended, Some(ExitStatus::Code(3)));
    assert!(s.lost_fds.contains(&1) && s.lost_fds.contains(&2));
    let pid = p.pid().unwrap();
    // Reaped: no /proc entry (or at least not a zombie).
    assert_ne!(zombie_state(pid), Some('Z'), "child {pid} left a zombie");
    assert!(matches!(
        p.signal(libc::SIGTERM),
        Err(ProcessError::AlreadyExited)
    ));
}

#[test]
fn sort_sorts_what_we_write() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(Some(b"pear\napple\nfig\n"));
    reactor
        .spawn_process(proto, ProcessOptions::new("sort", Vec::<String>::new()))
        .unwrap();
    assert!(
        run_until(&reactor, LIMIT, || seen.borrow().ended.is_some()),
        "{:?}",
        seen.borrow()
    );
    assert_eq!(seen.borrow().out, b"apple\nfig\npear\n");
    assert_eq!(seen.borrow().ended, Some(ExitStatus::Code(0)));
}

#[test]
fn cat_with_large_input_round_trips() {
    // More than a pipe buffer each way, so both directions block and resume.
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(Some(&data));
    reactor
        .spawn_process(proto, ProcessOptions::new("cat", Vec::<String>::new()))
        .unwrap();
    wait_ended(&reactor, &seen);
    assert!(seen.borrow().out == data, "cat output differs");
}

#[test]
fn killed_by_signal() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(None);
    let p = reactor
        .spawn_process(proto, ProcessOptions::new("sleep", ["30"]))
        .unwrap();
    p.signal(libc::SIGKILL).unwrap();
    wait_ended(&reactor, &seen);
    assert_eq!(seen.borrow().ended, Some(ExitStatus::Signal(libc::SIGKILL)));
    assert_eq!(
        seen.borrow().exited,
        Some(ExitStatus::Signal(libc::SIGKILL))
    );
}

#[test]
fn extra_child_fds() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(None);
    let mut opts = ProcessOptions::new(
        "/bin/sh",
        ["-c", "read line <&4; echo \"fd3:$line\" >&3; echo done"],
    );
    opts.child_fds.push((3, ChildFd::FromChild));
    opts.child_fds.push((4, ChildFd::ToChild));
    let p = reactor.spawn_process(proto, opts).unwrap();
    p.write_to_child(4, b"hello four\n").unwrap();
    p.close_child_fd(4);
    wait_ended(&reactor, &seen);
    assert_eq!(seen.borrow().fd3, b"fd3:hello four\n");
    assert_eq!(seen.borrow().out, b"done\n");
    assert!(matches!(
        p.write_to_child(9, b"x"),
        Err(ProcessError::NoSuchFd(9))
    ));
}

#[test]
fn environment_and_cwd() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(None);
    let mut opts = ProcessOptions::new("/bin/sh", ["-c", "echo \"$GREETING\"; pwd"]);
    opts.env = Some(vec![("GREETING".into(), "hi there".into())]);
    opts.cwd = Some("/".into());
    reactor.spawn_process(proto, opts).unwrap();
    wait_ended(&reactor, &seen);
    assert_eq!(seen.borrow().out, b"hi there\n/\n");
}

#[test]
fn pty_child_sees_a_terminal() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(None);
    let mut opts = ProcessOptions::new(
        "/bin/sh",
        [
            "-c",
            "if [ -t 0 ] && [ -t 1 ]; then echo tty; else echo notty; fi",
        ],
    );
    opts.use_pty = true;
    reactor.spawn_process(proto, opts).unwrap();
    wait_ended(&reactor, &seen);
    let out = String::from_utf8_lossy(&seen.borrow().out).into_owned();
    assert!(out.contains("tty") && !out.contains("notty"), "got {out:?}");
}

#[test]
fn missing_program_is_a_typed_error() {
    let reactor = Reactor::new().unwrap();
    let (proto, _seen) = Recorder::new(None);
    let err = reactor
        .spawn_process(
            proto,
            ProcessOptions::new("/nonexistent/program", Vec::<String>::new()),
        )
        .unwrap_err();
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/program"));
}

/// Pauses reading once it has `pause_at` bytes.
struct SlowReader {
    got: Rc<RefCell<usize>>,
    pause_at: usize,
    t: Option<ProcessTransport>,
}

impl ProcessProtocol for SlowReader {
    fn connection_made(&mut self, p: ProcessTransport) {
        self.t = Some(p);
    }
    fn child_data_received(&mut self, _fd: i32, data: &[u8]) {
        *self.got.borrow_mut() += data.len();
        if *self.got.borrow() >= self.pause_at {
            if let Some(t) = &self.t {
                t.pause_producing();
            }
        }
    }
}

#[test]
fn flooding_child_is_held_back_by_flow_control() {
    let reactor = Reactor::new().unwrap();
    let got = Rc::new(RefCell::new(0usize));
    let proto = SlowReader {
        got: got.clone(),
        pause_at: 1 << 20,
        t: None,
    };
    let p = reactor
        .spawn_process(Box::new(proto), ProcessOptions::new("yes", ["flood"]))
        .unwrap();
    assert!(run_until(&reactor, LIMIT, || *got.borrow() >= 1 << 20));
    // Paused: `yes` blocks on its full pipe; we take nothing more, however long we run.
    let at_pause = *got.borrow();
    run_until(&reactor, Duration::from_millis(300), || false);
    let later = *got.borrow();
    // At most what one read turn had already taken (16 reads of 64 KiB).
    assert!(
        later - at_pause <= 16 * 64 * 1024,
        "kept reading while paused"
    );
    assert_eq!(later, *got.borrow());
    run_until(&reactor, Duration::from_millis(100), || false);
    assert_eq!(later, *got.borrow(), "no reads while paused");
    // Resume: data flows again.
    p.resume_producing();
    assert!(run_until(&reactor, LIMIT, || *got.borrow() > later));
    p.signal(libc::SIGKILL).unwrap();
    assert!(run_until(&reactor, LIMIT, || p.status().is_some()));
}

#[test]
fn pty_child_reads_what_we_write() {
    let reactor = Reactor::new().unwrap();
    let (proto, seen) = Recorder::new(None);
    let mut opts = ProcessOptions::new("/bin/sh", ["-c", "read line; echo \"got:$line\""]);
    opts.use_pty = true;
    let p = reactor.spawn_process(proto, opts).unwrap();
    p.write(b"typed\n").unwrap();
    wait_ended(&reactor, &seen);
    let out = String::from_utf8_lossy(&seen.borrow().out).into_owned();
    // The terminal echoes our input, then the child's answer follows.
    assert!(out.contains("got:typed"), "got {out:?}");
}
