//! Child processes and the program's own standard input/output.
//!
//! [`Reactor::spawn_process`] starts a program with pipes (or a
//! pseudo-terminal) on the descriptors you choose and drives a
//! [`ProcessProtocol`]: `child_data_received(fd, data)` for what the child
//! writes, `process_exited` when it is reaped, `process_ended` once it is
//! reaped *and* every pipe is closed. Children are reaped through a pidfd
//! (Linux ≥ 5.3) registered with the poller; where that is unavailable a
//! 50 ms `waitpid(WNOHANG)` poll takes over, so no child is left a zombie.
//!
//! [`Reactor::spawn_process_stream`] runs an ordinary stream [`Protocol`]
//! over a child's stdin/stdout, and [`Reactor::stdio`] over this program's
//! own stdin/stdout: the same protocol code as for TCP.
//!
//! Reading follows flow control: `pause_producing` stops reading the
//! child's output, so a child that writes faster than the protocol consumes
//! blocks on its full pipe instead of growing our memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::{Rc, Weak};
use std::time::Duration;

use mio::unix::pipe::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::Interest;

use crate::address::Address;
use crate::error::ConnectionError;
use crate::failure::{catch, Failure};
use crate::protocol::{Producer, Protocol};
use crate::reactor::{Inner, Reactor, Readiness, Source};
use crate::stream::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
use crate::sys::WaitStatus;
use crate::transport::{ProducerError, Transport, TransportImpl};

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A child ended other than with exit code 0 (the reason a stream protocol
/// over a process sees in `connection_lost`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("process {pid} ended: {status}")]
pub struct ProcessTerminated {
    /// The child's pid.
    pub pid: u32,
    /// How it ended.
    pub status: ExitStatus,
}

/// Errors from process operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The process has been reaped; it can no longer be signalled.
    #[error("the process has already exited")]
    AlreadyExited,
    /// There is no pipe to that child descriptor (or it is closed).
    #[error("no open pipe to child descriptor {0}")]
    NoSuchFd(i32),
    /// Starting the process failed.
    #[error("could not start '{program}': {source}")]
    Spawn {
        /// What was run.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another OS error.
    #[error("process I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The user's side of a child process.
///
/// ```
/// use torsion_core::process::{ExitStatus, ProcessProtocol, ProcessTransport};
/// #[derive(Default)]
/// struct Collect { out: Vec<u8>, status: Option<ExitStatus> }
/// impl ProcessProtocol for Collect {
///     fn connection_made(&mut self, p: ProcessTransport) { p.close_stdin(); }
///     fn child_data_received(&mut self, fd: i32, data: &[u8]) {
///         if fd == 1 { self.out.extend_from_slice(data) }
///     }
///     fn process_ended(&mut self, status: ExitStatus) { self.status = Some(status) }
/// }
/// ```
pub trait ProcessProtocol: 'static {
    /// The child is running; keep the handle to write to it or signal it.
    fn connection_made(&mut self, process: ProcessTransport) {
        let _ = process;
    }
    /// The child wrote `data` on its descriptor `fd` (1: stdout, 2: stderr, ...).
    fn child_data_received(&mut self, fd: i32, data: &[u8]);
    /// The pipe on child descriptor `fd` closed.
    fn child_connection_lost(&mut self, fd: i32) {
        let _ = fd;
    }
    /// The child was reaped.
    fn process_exited(&mut self, status: ExitStatus) {
        let _ = status;
    }
    /// The child was reaped and all its pipes are closed: the last call.
    fn process_ended(&mut self, status: ExitStatus) {
        let _ = status;
    }
}

/// What to connect to one of the child's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildFd {
    /// A pipe the parent writes and the child reads (Twisted's `"w"`).
    ToChild,
    /// A pipe the child writes and the parent reads (Twisted's `"r"`).
    FromChild,
    /// The child inherits this descriptor of ours.
    Inherit(RawFd),
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// The program (looked up on `PATH` when it has no slash).
    pub program: OsString,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
    /// The environment: `None` inherits ours; `Some` replaces it entirely.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Descriptor map; descriptors not listed are closed (0–2 get `/dev/null`).
    /// Default: stdin to the child, stdout and stderr from it.
    pub child_fds: Vec<(i32, ChildFd)>,
    /// Run on a pseudo-terminal: the child's 0, 1 and 2 are the terminal,
    /// its output arrives as fd 1 and writes go to its input. `child_fds`
    /// entries for 0–2 are then ignored.
    pub use_pty: bool,
}

impl ProcessOptions {
    /// Runs `program` with `args`, stdin/stdout/stderr piped.
    pub fn new<I, S>(program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        ProcessOptions {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: None,
            cwd: None,
            child_fds: vec![
                (0, ChildFd::ToChild),
                (1, ChildFd::FromChild),
                (2, ChildFd::FromChild),
            ],
            use_pty: false,
        }
    }
}

// ---- internals ----

#[derive(Clone, Copy)]
enum Which {
    Reader(i32),
    Writer(i32),
    Exit,
}

struct FdSource {
    proc_: Weak<Proc>,
    which: Which,
}

impl Source for FdSource {
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness) {
        let Some(p) = self.proc_.upgrade() else {
            return;
        };
        match self.which {
            Which::Reader(fd) if readiness.readable => p.read_fd(reactor, fd),
            Which::Writer(fd) => {
                p.flush_fd(fd);
                p.clone().settle(reactor);
            }
            Which::Exit => p.check_exit(),
            _ => {}
        }
    }
}

struct ReadPipe {
    fd: i32,
    closing: bool,
    pipe: Option<Receiver>,
    token: usize,
    source: Rc<FdSource>,
}

struct WritePipe {
    fd: i32,
    pipe: Option<Sender>,
    token: usize,
    buf: VecDeque<u8>,
    closing: bool,
}

struct Proc {
    reactor: Weak<Inner>,
    me: Weak<Proc>,
    pid: Option<u32>,
    protocol: RefCell<Option<Box<dyn ProcessProtocol>>>,
    readers: RefCell<Vec<ReadPipe>>,
    writers: RefCell<Vec<WritePipe>>,
    paused: Cell<bool>,
    status: Cell<Option<ExitStatus>>,
    exit_source: RefCell<Option<(OwnedFd, usize)>>,
    ended: Cell<bool>,
    dirty: Cell<bool>,
    producer: RefCell<Option<(Rc<dyn Producer>, bool)>>,
    producer_paused: Cell<bool>,
    aborting: Cell<bool>,
}

impl Proc {
    /// Asks for a read pipe to be closed at the next safe point (never
    /// inside a protocol callback, which may be the caller).
    fn request_close_reader(&self, fd: i32) {
        if let Some(r) = self.readers.borrow_mut().iter_mut().find(|r| r.fd == fd) {
            r.closing = true;
        }
        self.mark_dirty();
    }

    fn reactor(&self) -> Option<Reactor> {
        self.reactor.upgrade().map(Reactor::from_inner)
    }

    fn call(&self, what: &str, f: impl FnOnce(&mut dyn ProcessProtocol)) {
        let mut p = self.protocol.borrow_mut();
        if let Some(p) = p.as_mut() {
            if let Err(e) = catch(|| f(&mut **p)) {
                tracing::error!(failure = %e, pid = ?self.pid, "{what} panicked");
            }
        }
    }

    fn mark_dirty(&self) {
        if self.dirty.replace(true) {
            return;
        }
        if let (Some(r), Some(me)) = (self.reactor(), self.me.upgrade()) {
            r.mark_dirty(me);
        }
    }

    fn read_fd(self: &Rc<Self>, reactor: &Reactor, fd: i32) {
        if self.paused.get() {
            return;
        }
        let source = {
            let readers = self.readers.borrow();
            match readers.iter().find(|r| r.fd == fd && r.pipe.is_some()) {
                Some(r) => r.source.clone(),
                None => return,
            }
        };
        reactor.with_read_buffer(|buf| {
            for _ in 0..16 {
                let r = {
                    let mut readers = self.readers.borrow_mut();
                    let Some(pipe) = readers
                        .iter_mut()
                        .find(|r| r.fd == fd)
                        .and_then(|r| r.pipe.as_mut())
                    else {
                        return;
                    };
                    pipe.read(buf)
                };
                match r {
                    Ok(0) => {
                        self.close_reader(fd);
                        return;
                    }
                    Ok(n) => {
                        self.call("child_data_received", |p| {
                            p.child_data_received(fd, &buf[..n])
                        });
                        // A short read does not mean the pipe is drained of its
                        // end-of-file: data and hang-up can share one edge, so
                        // read on until EAGAIN or EOF.
                        if self.paused.get() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EIO on a pty master means the child closed the terminal.
                        if e.raw_os_error() != Some(libc::EIO) {
                            tracing::debug!(error = %e, fd, "child pipe read failed");
                        }
                        self.close_reader(fd);
                        return;
                    }
                }
            }
            reactor.want_read_turn(source);
        });
    }

    fn close_reader(&self, fd: i32) {
        let taken = {
            let mut readers = self.readers.borrow_mut();
            readers
                .iter_mut()
                .find(|r| r.fd == fd)
                .and_then(|r| r.pipe.take().map(|p| (p, r.token)))
        };
        let Some((mut pipe, token)) = taken else {
            return;
        };
        if let Some(r) = self.reactor() {
            let _ = r.registry().deregister(&mut pipe);
            r.retire_source(token);
        }
        drop(pipe);
        self.call("child_connection_lost", |p| p.child_connection_lost(fd));
        self.mark_dirty();
    }

    fn close_writer_now(&self, fd: i32, notify: bool) {
        let taken = {
            let mut writers = self.writers.borrow_mut();
            writers.iter_mut().find(|w| w.fd == fd).and_then(|w| {
                w.buf.clear();
                w.pipe.take().map(|p| (p, w.token))
            })
        };
        let Some((mut pipe, token)) = taken else {
            return;
        };
        if let Some(r) = self.reactor() {
            let _ = r.registry().deregister(&mut pipe);
            r.retire_source(token);
        }
        drop(pipe);
        if notify {
            self.call("child_connection_lost", |p| p.child_connection_lost(fd));
        }
        self.mark_dirty();
    }

    fn flush_fd(&self, fd: i32) {
        let mut broken = false;
        let mut drained_to = None;
        {
            let mut writers = self.writers.borrow_mut();
            let Some(w) = writers.iter_mut().find(|w| w.fd == fd) else {
                return;
            };
            let Some(pipe) = w.pipe.as_mut() else { return };
            while !w.buf.is_empty() {
                let (a, _) = w.buf.as_slices();
                match pipe.write(a) {
                    Ok(0) => break,
                    Ok(n) => {
                        w.buf.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if fd == 0 || self.pid.is_none() {
                drained_to = Some(w.buf.len());
            }
        }
        if broken {
            // The child closed its end (EPIPE): what is left cannot be delivered.
            self.close_writer_now(fd, true);
            return;
        }
        if let Some(len) = drained_to {
            self.after_drain(len);
        }
    }

    fn after_drain(&self, len: usize) {
        let p = self.producer.borrow().clone();
        let Some((p, streaming)) = p else { return };
        if streaming {
            if self.producer_paused.get() && len <= DEFAULT_LOW_WATER {
                self.producer_paused.set(false);
                if let Err(f) = catch(|| p.resume_producing()) {
                    tracing::error!(failure = %f, "resume_producing panicked");
                }
            }
        } else if len == 0 {
            if let Err(f) = catch(|| p.resume_producing()) {
                tracing::error!(failure = %f, "resume_producing panicked");
            }
        }
    }

    fn write(&self, fd: i32, data: &[u8]) -> Result<(), ProcessError> {
        let len = {
            let mut writers = self.writers.borrow_mut();
            let w = writers
                .iter_mut()
                .find(|w| w.fd == fd && w.pipe.is_some() && !w.closing)
                .ok_or(ProcessError::NoSuchFd(fd))?;
            w.buf.extend(data);
            w.buf.len()
        };
        self.mark_dirty();
        if len > DEFAULT_HIGH_WATER && !self.producer_paused.get() {
            let p = self.producer.borrow().clone();
            if let Some((p, true)) = p {
                self.producer_paused.set(true);
                if let Err(f) = catch(|| p.pause_producing()) {
                    tracing::error!(failure = %f, "pause_producing panicked");
                }
            }
        }
        Ok(())
    }

    fn close_writer(&self, fd: i32) {
        if let Some(w) = self.writers.borrow_mut().iter_mut().find(|w| w.fd == fd) {
            w.closing = true;
        }
        self.mark_dirty();
    }

    fn check_exit(&self) {
        if self.status.get().is_some() {
            return;
        }
        let Some(pid) = self.pid else { return };
        match crate::sys::try_reap(pid) {
            Ok(Some(ws)) => {
                let status = match ws {
                    WaitStatus::Exited(c) => ExitStatus::Code(c),
                    WaitStatus::Signaled(s) => ExitStatus::Signal(s),
                };
                self.status.set(Some(status));
                if let Some((mut fd, token)) = self.exit_source.borrow_mut().take() {
                    if let Some(r) = self.reactor() {
                        let raw = fd.as_raw_fd();
                        let _ = r.registry().deregister(&mut SourceFd(&raw));
                        if token != usize::MAX {
                            r.retire_source(token);
                        }
                    }
                    let _ = &mut fd;
                }
                self.call("process_exited", |p| p.process_exited(status));
                self.mark_dirty();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, pid, "waitpid failed");
            }
        }
    }

    fn poll_exit_later(self: &Rc<Self>, reactor: &Reactor) {
        let weak = Rc::downgrade(self);
        reactor.call_later(Duration::from_millis(50), move || {
            if let Some(p) = weak.upgrade() {
                p.check_exit();
                if p.status.get().is_none() {
                    if let Some(r) = p.reactor() {
                        p.poll_exit_later(&r);
                    }
                }
            }
        });
    }

    fn all_readers_closed(&self) -> bool {
        self.readers.borrow().iter().all(|r| r.pipe.is_none())
    }

    fn all_writers_closed(&self) -> bool {
        self.writers.borrow().iter().all(|w| w.pipe.is_none())
    }

    fn maybe_end(&self) {
        if self.ended.get() {
            return;
        }
        let done = match self.pid {
            Some(_) => {
                if self.status.get().is_none() || !self.all_readers_closed() {
                    return;
                }
                let fds: Vec<i32> = self.writers.borrow().iter().map(|w| w.fd).collect();
                for fd in fds {
                    self.close_writer_now(fd, false);
                }
                true
            }
            None => {
                if self.all_readers_closed() {
                    let fds: Vec<i32> = self.writers.borrow().iter().map(|w| w.fd).collect();
                    for fd in fds {
                        self.close_writer(fd);
                    }
                }
                self.all_readers_closed() && self.all_writers_closed()
            }
        };
        if !done {
            return;
        }
        self.ended.set(true);
        if let Some((p, _)) = self.producer.borrow_mut().take() {
            if let Err(f) = catch(|| p.stop_producing()) {
                tracing::error!(failure = %f, "stop_producing panicked");
            }
        }
        let status = self.status.get().unwrap_or(ExitStatus::Code(0));
        let protocol = self.protocol.borrow_mut().take();
        if let Some(mut p) = protocol {
            if let Err(f) = catch(move || p.process_ended(status)) {
                tracing::error!(failure = %f, "process_ended panicked");
            }
        }
    }
}

impl Source for Proc {
    fn ready(self: Rc<Self>, _reactor: &Reactor, _readiness: Readiness) {}

    fn settle(self: Rc<Self>, _reactor: &Reactor) {
        self.dirty.set(false);
        let closing: Vec<i32> = self
            .readers
            .borrow()
            .iter()
            .filter(|r| r.closing && r.pipe.is_some())
            .map(|r| r.fd)
            .collect();
        for fd in closing {
            self.close_reader(fd);
        }
        if self.aborting.replace(false) {
            let fds: Vec<i32> = self.writers.borrow().iter().map(|w| w.fd).collect();
            for fd in fds {
                self.close_writer_now(fd, true);
            }
            let fds: Vec<i32> = self.readers.borrow().iter().map(|r| r.fd).collect();
            for fd in fds {
                self.close_reader(fd);
            }
        }
        let fds: Vec<(i32, bool)> = self
            .writers
            .borrow()
            .iter()
            .filter(|w| w.pipe.is_some())
            .map(|w| (w.fd, w.closing))
            .collect();
        for (fd, _) in &fds {
            self.flush_fd(*fd);
        }
        for (fd, closing) in fds {
            let empty = self
                .writers
                .borrow()
                .iter()
                .find(|w| w.fd == fd)
                .map(|w| w.buf.is_empty())
                .unwrap_or(true);
            if closing && empty {
                self.close_writer_now(fd, true);
            }
        }
        self.maybe_end();
    }
}

/// The handle on a running child: write to it, close its input, signal it.
#[derive(Clone)]
pub struct ProcessTransport(Rc<Proc>);

impl fmt::Debug for ProcessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProcessTransport(pid {:?})", self.0.pid)
    }
}

impl ProcessTransport {
    /// The child's pid (`None` for the stdio transport).
    pub fn pid(&self) -> Option<u32> {
        self.0.pid
    }
    /// Writes to the child's stdin (with a PTY: its terminal input).
    pub fn write(&self, data: &[u8]) -> Result<(), ProcessError> {
        self.0.write(0, data)
    }
    /// Writes to the child's descriptor `fd` (one mapped [`ChildFd::ToChild`]).
    pub fn write_to_child(&self, fd: i32, data: &[u8]) -> Result<(), ProcessError> {
        self.0.write(fd, data)
    }
    /// Closes the child's stdin after what was written is flushed.
    pub fn close_stdin(&self) {
        self.0.close_writer(0)
    }
    /// Closes the pipe on child descriptor `fd` (a write pipe after flushing).
    pub fn close_child_fd(&self, fd: i32) {
        if self.0.writers.borrow().iter().any(|w| w.fd == fd) {
            self.0.close_writer(fd);
        } else {
            self.0.request_close_reader(fd);
        }
    }
    /// Sends a signal (`libc::SIGTERM`, ...).
    pub fn signal(&self, sig: i32) -> Result<(), ProcessError> {
        let pid = self.0.pid.ok_or(ProcessError::AlreadyExited)?;
        if self.0.status.get().is_some() {
            return Err(ProcessError::AlreadyExited);
        }
        crate::sys::kill(pid, sig).map_err(ProcessError::Io)
    }
    /// Stops reading the child's output until `resume_producing`.
    pub fn pause_producing(&self) {
        self.0.paused.set(true);
    }
    /// Reads the child's output again.
    pub fn resume_producing(&self) {
        if !self.0.paused.replace(false) {
            return;
        }
        if let Some(r) = self.0.reactor() {
            let sources: Vec<Rc<FdSource>> = self
                .0
                .readers
                .borrow()
                .iter()
                .filter(|p| p.pipe.is_some())
                .map(|p| p.source.clone())
                .collect();
            for s in sources {
                r.want_read_turn(s);
            }
        }
    }
    /// Closes every pipe; the child is not signalled.
    pub fn lose_connection(&self) {
        let fds: Vec<i32> = self.0.readers.borrow().iter().map(|r| r.fd).collect();
        for fd in fds {
            self.0.request_close_reader(fd);
        }
        let fds: Vec<i32> = self.0.writers.borrow().iter().map(|w| w.fd).collect();
        for fd in fds {
            self.0.close_writer(fd);
        }
    }
    /// Bytes queued for the child's stdin.
    pub fn write_buffer_len(&self) -> usize {
        self.0
            .writers
            .borrow()
            .iter()
            .find(|w| w.fd == 0)
            .map(|w| w.buf.len())
            .unwrap_or(0)
    }
    /// How the child ended, once reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        self.0.status.get()
    }
}

fn register_pipes(
    reactor: &Reactor,
    proc_: &Rc<Proc>,
    readers: Vec<(i32, OwnedFd)>,
    writers: Vec<(i32, OwnedFd)>,
) -> io::Result<()> {
    for (fd, owned) in readers {
        crate::sys::set_nonblocking(owned.as_raw_fd(), true)?;
        let mut pipe = Receiver::from(owned);
        let source = Rc::new(FdSource {
            proc_: Rc::downgrade(proc_),
            which: Which::Reader(fd),
        });
        let s2 = source.clone();
        let token = reactor.register_source(&mut pipe, Interest::READABLE, move |_| s2)?;
        proc_.readers.borrow_mut().push(ReadPipe {
            fd,
            closing: false,
            pipe: Some(pipe),
            token,
            source,
        });
    }
    for (fd, owned) in writers {
        crate::sys::set_nonblocking(owned.as_raw_fd(), true)?;
        let mut pipe = Sender::from(owned);
        let source = Rc::new(FdSource {
            proc_: Rc::downgrade(proc_),
            which: Which::Writer(fd),
        });
        let token = reactor.register_source(&mut pipe, Interest::WRITABLE, move |_| source)?;
        proc_.writers.borrow_mut().push(WritePipe {
            fd,
            pipe: Some(pipe),
            token,
            buf: VecDeque::new(),
            closing: false,
        });
    }
    Ok(())
}

fn new_proc(reactor: &Reactor, pid: Option<u32>, protocol: Box<dyn ProcessProtocol>) -> Rc<Proc> {
    Rc::new_cyclic(|me| Proc {
        reactor: reactor.downgrade(),
        me: me.clone(),
        pid,
        protocol: RefCell::new(Some(protocol)),
        readers: RefCell::new(Vec::new()),
        writers: RefCell::new(Vec::new()),
        paused: Cell::new(false),
        status: Cell::new(None),
        exit_source: RefCell::new(None),
        ended: Cell::new(false),
        dirty: Cell::new(false),
        producer: RefCell::new(None),
        producer_paused: Cell::new(false),
        aborting: Cell::new(false),
    })
}

fn start_proc(proc_: &Rc<Proc>) -> ProcessTransport {
    let t = ProcessTransport(proc_.clone());
    let t2 = t.clone();
    proc_.call("connection_made", |p| p.connection_made(t2));
    proc_.mark_dirty();
    t
}

impl Reactor {
    /// Starts a child process driven by `protocol`.
    ///
    /// ```
    /// use torsion_core::{Reactor, process::*};
    /// struct Quiet;
    /// impl ProcessProtocol for Quiet {
    ///     fn child_data_received(&mut self, _: i32, _: &[u8]) {}
    /// }
    /// let reactor = Reactor::new().unwrap();
    /// let p = reactor.spawn_process(Box::new(Quiet), ProcessOptions::new("true", Vec::<String>::new())).unwrap();
    /// assert!(p.pid().is_some());
    /// ```
    pub fn spawn_process(
        &self,
        protocol: Box<dyn ProcessProtocol>,
        opts: ProcessOptions,
    ) -> Result<ProcessTransport, ProcessError> {
        let program = opts.program.to_string_lossy().into_owned();
        let spawn_err = |source: io::Error| ProcessError::Spawn {
            program: program.clone(),
            source,
        };
        let mut cmd = Command::new(&opts.program);
        cmd.args(&opts.args);
        if let Some(env) = &opts.env {
            cmd.env_clear();
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        if let Some(cwd) = &opts.cwd {
            cmd.current_dir(cwd);
        }
        let mut readers: Vec<(i32, OwnedFd)> = Vec::new();
        let mut writers: Vec<(i32, OwnedFd)> = Vec::new();
        // Child ends of extra descriptors, kept open until the child has forked.
        let mut keep: Vec<OwnedFd> = Vec::new();
        let mut placements: Vec<(RawFd, RawFd)> = Vec::new();
        let max_target = opts
            .child_fds
            .iter()
            .map(|(fd, _)| *fd)
            .max()
            .unwrap_or(2)
            .max(2);
        let mut have = [false; 3];

        if opts.use_pty {
            let (master, slave) = crate::sys::open_pty().map_err(spawn_err)?;
            let w = master.try_clone().map_err(spawn_err)?;
            readers.push((1, master));
            writers.push((0, w));
            cmd.stdin(Stdio::from(slave.try_clone().map_err(spawn_err)?));
            cmd.stdout(Stdio::from(slave.try_clone().map_err(spawn_err)?));
            cmd.stderr(Stdio::from(slave));
            have = [true; 3];
        }
        for (target, kind) in &opts.child_fds {
            let target = *target;
            if target < 0 || (opts.use_pty && target <= 2) {
                continue;
            }
            let child_end: OwnedFd = match kind {
                ChildFd::ToChild => {
                    let (r, w) = crate::sys::pipe_cloexec().map_err(spawn_err)?;
                    writers.push((target, w));
                    r
                }
                ChildFd::FromChild => {
                    let (r, w) = crate::sys::pipe_cloexec().map_err(spawn_err)?;
                    readers.push((target, r));
                    w
                }
                ChildFd::Inherit(raw) => {
                    crate::sys::dup_cloexec_at_least(*raw, max_target + 1).map_err(spawn_err)?
                }
            };
            match target {
                0 => cmd.stdin(Stdio::from(child_end)),
                1 => cmd.stdout(Stdio::from(child_end)),
                2 => cmd.stderr(Stdio::from(child_end)),
                _ => {
                    // Move it above every target so placing one cannot clobber another.
                    let high =
                        crate::sys::dup_cloexec_at_least(child_end.as_raw_fd(), max_target + 1)
                            .map_err(spawn_err)?;
                    placements.push((high.as_raw_fd(), target));
                    keep.push(high);
                    continue;
                }
            };
            have[target as usize] = true;
        }
        if !have[0] {
            cmd.stdin(Stdio::null());
        }
        if !have[1] {
            cmd.stdout(Stdio::null());
        }
        if !have[2] {
            cmd.stderr(Stdio::null());
        }
        let pty = opts.use_pty;
        // SAFETY: the closure only makes async-signal-safe calls (setsid,
        // ioctl, fcntl, dup2) on descriptors that exist in the child.
        unsafe {
            cmd.pre_exec(move || {
                if pty {
                    crate::sys::child_take_terminal()?;
                }
                for (src, dst) in &placements {
                    crate::sys::child_place_fd(*src, *dst)?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(cmd);
        drop(keep);
        let pid = child.id();
        // std's Child does not reap on drop; the pidfd (or poll) below does.
        drop(child);

        let proc_ = new_proc(self, Some(pid), protocol);
        register_pipes(self, &proc_, readers, writers)?;
        match crate::sys::pidfd_open(pid) {
            Ok(pidfd) => {
                let raw = pidfd.as_raw_fd();
                let source = Rc::new(FdSource {
                    proc_: Rc::downgrade(&proc_),
                    which: Which::Exit,
                });
                let token =
                    self.register_source(&mut SourceFd(&raw), Interest::READABLE, move |_| source)?;
                *proc_.exit_source.borrow_mut() = Some((pidfd, token));
            }
            Err(e) => {
                tracing::debug!(error = %e, "pidfd_open unavailable; polling for the child's exit");
                proc_.poll_exit_later(self);
            }
        }
        Ok(start_proc(&proc_))
    }

    /// Starts a child and runs a stream [`Protocol`] over its stdin/stdout,
    /// exactly as over a socket. The child's stderr is logged at debug level.
    /// `lose_connection` closes the child's stdin; `connection_lost` comes once
    /// it has ended, with [`ConnectionError::Done`] for exit code 0 and a
    /// [`ProcessTerminated`] otherwise.
    pub fn spawn_process_stream(
        &self,
        protocol: Box<dyn Protocol>,
        opts: ProcessOptions,
    ) -> Result<ProcessTransport, ProcessError> {
        self.spawn_process(Box::new(StreamAdapter::new(protocol)), opts)
    }

    /// Runs a stream protocol over this program's own stdin and stdout.
    ///
    /// The descriptors are duplicated and made non-blocking (which the
    /// shell that started us also sees). They must be pipes, sockets or
    /// terminals: the poller cannot watch regular files, which gives an error.
    /// End of input closes the connection once pending output is written.
    pub fn stdio(&self, protocol: Box<dyn Protocol>) -> io::Result<Transport> {
        let input = crate::sys::dup_cloexec_at_least(0, 3)?;
        let output = crate::sys::dup_cloexec_at_least(1, 3)?;
        let proc_ = new_proc(self, None, Box::new(StreamAdapter::new(protocol)));
        register_pipes(self, &proc_, vec![(0, input)], vec![(1, output)]).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "stdin and stdout must be pipes, sockets or terminals for the stdio transport \
                     (the poller cannot watch regular files)",
                )
            } else {
                e
            }
        })?;
        let pt = start_proc(&proc_);
        Ok(Transport::new(Rc::new(ProcStream(pt.0))))
    }
}

// ---- a stream protocol over a process or stdio ----

struct StreamAdapter {
    inner: Box<dyn Protocol>,
    pid: u32,
}

impl StreamAdapter {
    fn new(inner: Box<dyn Protocol>) -> Self {
        StreamAdapter { inner, pid: 0 }
    }
}

impl ProcessProtocol for StreamAdapter {
    fn connection_made(&mut self, process: ProcessTransport) {
        self.pid = process.pid().unwrap_or(0);
        self.inner
            .connection_made(Transport::new(Rc::new(ProcStream(process.0))));
    }
    fn child_data_received(&mut self, fd: i32, data: &[u8]) {
        match fd {
            0 | 1 => self.inner.data_received(data),
            _ => tracing::debug!(fd, data = %String::from_utf8_lossy(data), "child output"),
        }
    }
    fn process_ended(&mut self, status: ExitStatus) {
        let reason = match status {
            ExitStatus::Code(0) => Failure::new(ConnectionError::Done),
            s => Failure::new(ProcessTerminated {
                pid: self.pid,
                status: s,
            }),
        };
        self.inner.connection_lost(reason);
    }
}

/// The `TransportImpl` a stream protocol over a process or stdio sees.
struct ProcStream(Rc<Proc>);

impl ProcStream {
    fn out_fd(&self) -> i32 {
        if self.0.pid.is_some() {
            0
        } else {
            1
        }
    }
}

impl TransportImpl for ProcStream {
    fn write(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Err(e) = self.0.write(self.out_fd(), data) {
            tracing::debug!(error = %e, "write to a closed process pipe dropped");
        }
    }
    fn lose_connection(&self) {
        if self.0.pid.is_some() {
            self.0.close_writer(0);
        } else {
            self.0.request_close_reader(0);
            self.0.close_writer(1);
        }
    }
    fn abort_connection(&self) {
        if let Some(pid) = self.0.pid {
            if self.0.status.get().is_none() {
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
        }
        self.0.aborting.set(true);
        self.0.mark_dirty();
    }
    fn lose_write_connection(&self) {
        self.0.close_writer(self.out_fd());
    }
    fn peer(&self) -> Address {
        match self.0.pid {
            Some(pid) => Address::Process(pid),
            None => Address::Stdio,
        }
    }
    fn host(&self) -> Address {
        match self.0.pid {
            Some(_) => Address::Process(std::process::id()),
            None => Address::Stdio,
        }
    }
    fn pause_producing(&self) {
        ProcessTransport(self.0.clone()).pause_producing()
    }
    fn resume_producing(&self) {
        ProcessTransport(self.0.clone()).resume_producing()
    }
    fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError> {
        if self.0.ended.get() {
            return Err(ProducerError::Closed);
        }
        if self.0.producer.borrow().is_some() {
            return Err(ProducerError::AlreadyRegistered);
        }
        *self.0.producer.borrow_mut() = Some((producer.clone(), streaming));
        self.0.producer_paused.set(false);
        if !streaming {
            if let Err(f) = catch(|| producer.resume_producing()) {
                tracing::error!(failure = %f, "resume_producing panicked");
            }
        }
        Ok(())
    }
    fn unregister_producer(&self) {
        self.0.producer.borrow_mut().take();
    }
    fn write_buffer_len(&self) -> usize {
        let fd = self.out_fd();
        self.0
            .writers
            .borrow()
            .iter()
            .find(|w| w.fd == fd)
            .map(|w| w.buf.len())
            .unwrap_or(0)
    }
    fn is_connected(&self) -> bool {
        !self.0.ended.get()
    }
    fn kind(&self) -> &'static str {
        if self.0.pid.is_some() {
            "process"
        } else {
            "stdio"
        }
    }
}
