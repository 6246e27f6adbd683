//! The adapter: runs [`ServerConn`] as a [`Protocol`] over any transport.
//!
//! One rule keeps it simple and free of `RefCell` double borrows: every
//! outside event (bytes received, a handler finished, the body reader took
//! bytes, the transport drained, a timer fired) only records what happened
//! and calls `kick`, which runs `step` until nothing changes. `step` never
//! holds a borrow while user code or the transport runs.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use torsion_core::endpoint::{ListenError, ListeningHandle, ServerEndpoint};
use torsion_core::{
    Address, Deferred, DelayedCall, Factory, Failure, ListeningPort, Phase, Producer, Protocol,
    Reactor, SendFileError, SystemEvent, Transport,
};

use crate::config::ServerConfig;
use crate::h1::{Event, RequestHead, SendError, ServerConn, SharedLines};
use crate::request::{self, Request, RequestBody, SharedBody};
use crate::resource::{Handler, Reply};
use crate::response::{Body, BodySource, Chunk, Notify, Response};

/// Bytes the transport may hold before a streamed body waits for it to drain.
const STREAM_HIGH_WATER: usize = 64 * 1024;
/// Largest piece pulled from a body source at once.
const STREAM_CHUNK: usize = 32 * 1024;
/// How long a closing connection keeps draining the peer's input.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Pieces pulled per step before yielding to other connections.
const STREAM_PIECES_PER_STEP: usize = 16;
/// Most bytes handed to one `sendfile` call.
const SENDFILE_MAX: u64 = 1 << 20;

/// What an attempt to send a body's file region did.
enum FileStep {
    /// Bytes went out; carry on.
    Sent,
    /// Bytes are queued ahead: wait for the transport to pull.
    Wait,
    /// No file region, or the kernel took nothing: copy the bytes instead.
    Copy,
    /// The body or the socket failed: abort the connection.
    Failed,
}

struct Shared {
    reactor: Reactor,
    handler: Rc<dyn Handler>,
    cfg: Rc<ServerConfig>,
    /// The `date`/`server` lines every response starts with, rendered once
    /// per second for all connections.
    std_lines: SharedLines,
    /// When the rendered date is next renewed (reactor time).
    date_due: Cell<Duration>,
    conns: RefCell<Vec<Weak<Conn>>>,
    /// One timer per server sweeps the connections' deadlines (header,
    /// body, idle): no timer, closure or allocation per connection or request.
    sweeper: RefCell<Option<DelayedCall>>,
    draining: Cell<bool>,
    drained: RefCell<Vec<Deferred<()>>>,
    /// Ports opened through this server: closed first when it drains.
    ports: RefCell<Vec<Box<dyn ListeningHandle>>>,
}

/// An HTTP server: a handler (a [`crate::Site`], a closure, ...) plus
/// limits, usable as a factory on any listening port.
///
/// ```no_run
/// use torsion_core::Reactor;
/// use torsion_http::{handler_fn, HttpServer, Response, ServerConfig};
/// let reactor = Reactor::new()?;
/// let server = HttpServer::new(&reactor, handler_fn(|_req| async { Ok(Response::text("hi")) }), ServerConfig::default());
/// let port = server.listen_tcp("127.0.0.1:0".parse()?)?;
/// println!("listening on {}", port.local_addr());
/// server.stop_gracefully_on_shutdown();
/// reactor.install_signal_handlers()?;
/// reactor.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct HttpServer {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl HttpServer {
    /// A server answering with `handler`.
    pub fn new(reactor: &Reactor, handler: impl Handler, cfg: ServerConfig) -> HttpServer {
        Self::with_handler(reactor, Rc::new(handler), cfg)
    }

    /// A server answering with a shared handler.
    pub fn with_handler(reactor: &Reactor, handler: Rc<dyn Handler>, cfg: ServerConfig) -> Self {
        HttpServer {
            shared: Rc::new(Shared {
                reactor: reactor.clone(),
                handler,
                std_lines: SharedLines::new(&cfg),
                date_due: Cell::new(Duration::ZERO),
                cfg: Rc::new(cfg),
                conns: RefCell::new(Vec::new()),
                sweeper: RefCell::new(None),
                draining: Cell::new(false),
                drained: RefCell::new(Vec::new()),
                ports: RefCell::new(Vec::new()),
            }),
        }
    }

    /// The factory to hand to a listening port.
    pub fn factory(&self) -> Rc<dyn Factory> {
        Rc::new(ServerFactory(self.shared.clone()))
    }

    /// Listens on a TCP address. The server keeps the port: draining
    /// stops it first.
    pub fn listen_tcp(&self, addr: SocketAddr) -> std::io::Result<ListeningPort> {
        let port = self.shared.reactor.listen_tcp(addr, self.factory())?;
        self.shared.ports.borrow_mut().push(Box::new(port.clone()));
        Ok(port)
    }

    /// Listens on an endpoint (`tcp:8080`, `unix:/run/x.sock`,
    /// `ssl:8443:privateKey=…:certKey=…`, `systemd:…`) and returns the
    /// address it is bound to. The server keeps the port: draining stops it
    /// first, so new connections are refused while the ones in flight
    /// finish.
    ///
    /// ```no_run
    /// use torsion_core::{endpoint, Reactor};
    /// use torsion_http::{handler_fn, HttpServer, Response, ServerConfig};
    /// let reactor = Reactor::new()?;
    /// let server = HttpServer::new(&reactor, handler_fn(|_req| async { Ok(Response::text("hi")) }), ServerConfig::default());
    /// let at = server.listen(&endpoint::server_from_string("tcp:0:interface=127.0.0.1")?)?;
    /// println!("listening on {at}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen(&self, endpoint: &ServerEndpoint) -> Result<Address, ListenError> {
        let handle = endpoint.listen(&self.shared.reactor, self.factory())?;
        let at = handle.host();
        self.shared.ports.borrow_mut().push(handle);
        Ok(at)
    }

    /// Stops listening on every port opened through this server
    /// ([`listen`](Self::listen), [`listen_tcp`](Self::listen_tcp));
    /// connections already open carry on.
    pub fn stop_listening(&self) {
        let ports = std::mem::take(&mut *self.shared.ports.borrow_mut());
        for p in ports {
            p.stop_listening();
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        let mut c = self.shared.conns.borrow_mut();
        c.retain(|w| w.upgrade().is_some_and(|c| !c.closed.get()));
        c.len()
    }

    /// Stops taking new requests: the server's own ports stop listening
    /// (new connections are refused), idle connections close now, busy ones
    /// after their current responses. The Deferred fires when all are closed.
    pub fn drain(&self) -> Deferred<()> {
        self.shared.draining.set(true);
        self.stop_listening();
        let d = Deferred::new();
        self.shared.drained.borrow_mut().push(d.clone());
        let conns: Vec<Rc<Conn>> = self
            .shared
            .conns
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for c in conns {
            c.kick();
        }
        check_drained(&self.shared);
        d
    }

    /// On reactor shutdown, finish in-flight responses before connections
    /// are closed (bounded by the reactor's shutdown limits).
    pub fn stop_gracefully_on_shutdown(&self) {
        let me = self.clone();
        self.shared.reactor.add_system_event_trigger(
            Phase::Before,
            SystemEvent::Shutdown,
            move || Some(me.drain()),
        );
    }
}

/// How often the sweeper looks: an eighth of the shortest timeout, between
/// 5 ms and 1 s, so a timeout fires at most that much late.
fn sweep_interval(cfg: &ServerConfig) -> Duration {
    let shortest = cfg
        .header_timeout
        .min(cfg.body_timeout)
        .min(cfg.idle_timeout);
    (shortest / 8).clamp(Duration::from_millis(5), Duration::from_secs(1))
}

/// Runs the sweeper while the server has connections.
fn start_sweeper(shared: &Rc<Shared>) {
    if shared.sweeper.borrow().as_ref().is_some_and(|t| t.active()) {
        return;
    }
    let weak = Rc::downgrade(shared);
    let t = shared
        .reactor
        .call_later(sweep_interval(&shared.cfg), move || {
            if let Some(s) = weak.upgrade() {
                sweep(&s);
            }
        });
    *shared.sweeper.borrow_mut() = Some(t);
}

/// Fires the timeouts that are due and forgets closed connections.
fn sweep(shared: &Rc<Shared>) {
    shared.sweeper.borrow_mut().take();
    let now = shared.reactor.now();
    let mut due = Vec::new();
    shared.conns.borrow_mut().retain(|w| {
        let Some(c) = w.upgrade() else { return false };
        if c.closed.get() {
            return false;
        }
        if let Some((kind, at)) = c.deadline.get() {
            if at <= now {
                due.push((c, kind));
            }
        }
        true
    });
    for (c, kind) in due {
        c.timed_out(kind);
    }
    if !shared.conns.borrow().is_empty() {
        start_sweeper(shared);
    }
}

fn check_drained(shared: &Rc<Shared>) {
    if !shared.draining.get() {
        return;
    }
    let open = {
        let mut c = shared.conns.borrow_mut();
        c.retain(|w| w.upgrade().is_some_and(|c| !c.closed.get()));
        c.len()
    };
    if open == 0 {
        let waiting = std::mem::take(&mut *shared.drained.borrow_mut());
        for d in waiting {
            let _ = d.callback(());
        }
    }
}

struct ServerFactory(Rc<Shared>);

impl Factory for ServerFactory {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        if self.0.draining.get() {
            return None;
        }
        Some(Box::new(HttpProtocol {
            shared: self.0.clone(),
            conn: None,
        }))
    }
}

/// The per-connection protocol object the reactor owns.
struct HttpProtocol {
    shared: Rc<Shared>,
    conn: Option<Rc<Conn>>,
}

impl Protocol for HttpProtocol {
    fn connection_made(&mut self, transport: Transport) {
        let conn = Rc::new_cyclic(|me| Conn {
            me: me.clone(),
            shared: self.shared.clone(),
            peer: transport.peer(),
            transport,
            machine: RefCell::new(ServerConn::with_shared_parts(
                self.shared.cfg.clone(),
                self.shared.std_lines.clone(),
            )),
            slots: RefCell::new(VecDeque::new()),
            body: RefCell::new(None),
            running: Cell::new(false),
            again: Cell::new(false),
            closed: Cell::new(false),
            closing: Cell::new(false),
            reading_paused: Cell::new(false),
            deadline: Cell::new(None),
            producer: Cell::new(false),
        });
        self.shared.conns.borrow_mut().push(Rc::downgrade(&conn));
        start_sweeper(&self.shared);
        conn.kick();
        self.conn = Some(conn);
    }

    fn data_received(&mut self, data: &[u8]) {
        if let Some(c) = &self.conn {
            // After the last response, what the peer still sends is dropped.
            if c.closing.get() {
                return;
            }
            // Progress on a body restarts its timer.
            if c.deadline.get().is_some_and(|(k, _)| k == TimerKind::Body) {
                c.cancel_timer();
            }
            c.machine.borrow_mut().receive(data);
            c.kick();
        }
    }

    fn connection_lost(&mut self, reason: Failure) {
        if let Some(c) = self.conn.take() {
            c.lost(reason);
        }
        check_drained(&self.shared);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TimerKind {
    Header,
    Idle,
    Body,
}

enum SlotState {
    Waiting,
    Ready(Box<Response>),
    Streaming(Box<dyn BodySource>),
    /// The source is out being polled (its slot must not be touched).
    Busy,
}

struct Slot {
    id: u64,
    /// HEAD: a streamed body is never pulled.
    is_head: bool,
    state: SlotState,
    deferred: Option<Deferred<Response>>,
    log: Option<Box<LogInfo>>,
}

impl Slot {
    fn waiting(id: u64, is_head: bool, log: Option<Box<LogInfo>>) -> Slot {
        Slot {
            id,
            is_head,
            state: SlotState::Waiting,
            deferred: None,
            log,
        }
    }
}

/// What a request answered at once (and so never queued) leaves for its response.
struct Answered {
    is_head: bool,
    log: Option<Box<LogInfo>>,
}

struct LogInfo {
    /// The `Host` the client asked for (virtual hosts in one site differ here).
    host: String,
    request_line: String,
    referer: String,
    user_agent: String,
    status: u16,
    bytes: u64,
    time: SystemTime,
}

struct Conn {
    me: Weak<Conn>,
    shared: Rc<Shared>,
    transport: Transport,
    /// The peer's address (asked of the transport once, not per request).
    peer: Address,
    machine: RefCell<ServerConn>,
    slots: RefCell<VecDeque<Slot>>,
    /// The request whose body is arriving now.
    body: RefCell<Option<(u64, SharedBody)>>,
    running: Cell<bool>,
    again: Cell<bool>,
    closed: Cell<bool>,
    closing: Cell<bool>,
    reading_paused: Cell<bool>,
    /// The running timeout and when it expires (reactor time).
    deadline: Cell<Option<(TimerKind, Duration)>>,
    producer: Cell<bool>,
}

impl request::ConnInfo for Conn {
    fn peer(&self) -> &Address {
        &self.peer
    }
    fn reactor(&self) -> Option<&Reactor> {
        Some(&self.shared.reactor)
    }
}

/// Pull producer registered while a body streams: the transport asks for
/// more when its buffer drained.
struct ConnProducer(Weak<Conn>);

impl Producer for ConnProducer {
    fn pause_producing(&self) {}
    fn resume_producing(&self) {
        if let Some(c) = self.0.upgrade() {
            c.kick();
        }
    }
    fn stop_producing(&self) {}
}

/// Largest output buffer kept for reuse.
const SPARE_OUT_MAX: usize = 64 * 1024;

thread_local! {
    /// One output buffer per thread, lent to the connection writing responses.
    static SPARE_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Renews the server's rendered `Date` when a wall-clock second may have
/// passed: the turn's cached clock says when, so a busy server reads the
/// wall clock about once a second, not once per step.
fn refresh_date(shared: &Shared) {
    let now = shared.reactor.turn_now();
    if now >= shared.date_due.get() {
        renew_date(shared, now);
    }
}

/// Renders the `date` line for the current second (about once a second).
#[cold]
fn renew_date(shared: &Shared, now: Duration) {
    let wall = SystemTime::now();
    let into_second = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Due again when the next wall-clock second starts.
    let left = Duration::from_nanos(1_000_000_000 - u64::from(into_second));
    shared.date_due.set(now + left);
    shared
        .std_lines
        .set_date(&httpdate::fmt_http_date(wall), &shared.cfg);
}

/// The access log's record of a request, filled in as it is answered.
#[cold]
fn log_info(head: &RequestHead) -> Box<LogInfo> {
    let hv = |n| {
        head.header(n)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("-")
            .to_string()
    };
    Box::new(LogInfo {
        host: hv("host"),
        request_line: format!("{} {} {:?}", head.method(), head.target(), head.version()),
        referer: hv("referer"),
        user_agent: hv("user-agent"),
        status: 0,
        bytes: 0,
        time: SystemTime::now(),
    })
}

fn access_log_enabled() -> bool {
    tracing::enabled!(target: "torsion_http::access", tracing::Level::INFO)
}

impl Conn {
    fn kick(&self) {
        if self.closed.get() {
            return;
        }
        if self.running.get() {
            self.again.set(true);
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.running.set(true);
        for _ in 0..1000 {
            self.again.set(false);
            me.step();
            if !self.again.get() || self.closed.get() {
                break;
            }
        }
        self.running.set(false);
    }

    fn notify(&self) -> Notify {
        let me = self.me.clone();
        Notify(Rc::new(move || {
            if let Some(c) = me.upgrade() {
                c.kick();
            }
        }))
    }

    fn body_full(&self) -> bool {
        self.body
            .borrow()
            .as_ref()
            .is_some_and(|(_, b)| b.borrow().buffered >= self.shared.cfg.body_buffer)
    }

    fn step(self: &Rc<Self>) {
        if self.closed.get() {
            return;
        }
        {
            refresh_date(&self.shared);
            let mut m = self.machine.borrow_mut();
            // Responses are written into the thread's spare output buffer
            // (not a buffer of the connection's own, grown again for every batch).
            if !m.has_output() {
                SPARE_OUT.with(|s| m.swap_output(&mut s.borrow_mut()));
            }
        }
        // 1. Requests and their bodies.
        if !self.closing.get() {
            for _ in 0..256 {
                if self.body_full() {
                    break;
                }
                let ev = self.machine.borrow_mut().next_event();
                let Some(ev) = ev else { break };
                self.on_event(ev);
            }
        }
        // 2. Responses, in request order. (Answers given at once never
        // queue a slot: then there is nothing to do here.)
        if !self.slots.borrow().is_empty() {
            self.write_responses();
        }
        // 3. Bytes out.
        self.flush();
        self.lend_back_output();
        // 4. Closing.
        let should_close = self.machine.borrow().should_close();
        let drain_now = self.shared.draining.get()
            && self.slots.borrow().is_empty()
            && self.machine.borrow().queued() == 0;
        if (should_close || drain_now) && !self.closing.get() {
            self.linger();
            return;
        }
        // 5. Read flow control.
        let want_read = {
            let m = self.machine.borrow();
            m.wants_input() && !self.body_full()
        };
        if want_read && self.reading_paused.get() {
            self.reading_paused.set(false);
            self.transport.resume_producing();
        } else if !want_read && !self.reading_paused.get() {
            self.reading_paused.set(true);
            self.transport.pause_producing();
        }
        // 6. Timers.
        self.update_timer();
        // An idle keep-alive connection holds no buffers.
        if self.machine.borrow().is_idle() {
            self.machine.borrow_mut().compact();
            let mut slots = self.slots.borrow_mut();
            if slots.is_empty() && slots.capacity() > 0 {
                *slots = VecDeque::new();
            }
        }
    }

    fn on_event(self: &Rc<Self>, ev: Event) {
        match ev {
            Event::Head(head) => {
                // A complete head: the header timer starts afresh for the next one.
                self.cancel_timer();
                self.dispatch(head)
            }
            ev => self.on_body_event(ev),
        }
    }

    /// Body and error events: out of line, off the common path.
    #[inline(never)]
    fn on_body_event(self: &Rc<Self>, ev: Event) {
        match ev {
            Event::Head(head) => self.dispatch(head),
            Event::Data { id, data } => {
                let b = self.body.borrow().clone();
                if let Some((bid, b)) = b {
                    if bid == id {
                        request::push_body(&b, data);
                    }
                }
            }
            Event::End { id } => {
                let b = self.body.borrow_mut().take();
                if let Some((bid, b)) = b {
                    if bid == id {
                        request::end_body(&b, None);
                    }
                }
            }
            Event::Error { id, status, reason } => {
                tracing::debug!(peer = %self.peer, %status, reason, "bad request");
                if id.is_some() {
                    let b = self.body.borrow_mut().take();
                    if let Some((_, b)) = b {
                        request::end_body(&b, Some(reason.to_string()));
                    }
                } else if access_log_enabled() {
                    access_log(
                        &self.shared.cfg.log_name,
                        &self.peer,
                        &LogInfo {
                            host: "-".into(),
                            request_line: "-".into(),
                            referer: "-".into(),
                            user_agent: "-".into(),
                            status: status.as_u16(),
                            bytes: 0,
                            time: SystemTime::now(),
                        },
                    );
                }
            }
        }
    }

    /// The body stream of request `id`, whose bytes arrive next.
    #[inline(never)]
    fn start_body(&self, id: u64) -> RequestBody {
        let me = self.me.clone();
        let on_consume: Rc<dyn Fn()> = Rc::new(move || {
            if let Some(c) = me.upgrade() {
                c.kick();
            }
        });
        let shared_body = request::new_body(false, Some(on_consume));
        *self.body.borrow_mut() = Some((id, shared_body.clone()));
        RequestBody::new(shared_body)
    }

    fn dispatch(self: &Rc<Self>, head: RequestHead) {
        let has_body = head.has_body();
        let body = if has_body {
            Some(self.start_body(head.id()))
        } else {
            // Its End event is known already: take it now rather than
            // through another turn of the event loop.
            self.machine.borrow_mut().take_end(head.id());
            // `take_body` makes the empty body if a handler asks for one.
            None
        };
        // The access log line's parts are kept only when someone listens.
        let log = access_log_enabled().then(|| log_info(&head));
        let id = head.id();
        let is_head = *head.method() == http::Method::HEAD;
        if !head.path_is_plain() && !request::path_is_valid(head.path_bytes()) {
            self.slots
                .borrow_mut()
                .push_back(Slot::waiting(id, is_head, log));
            self.set_response(id, Ok(Response::error(StatusCode::BAD_REQUEST)));
            return;
        }
        let req = Request::from_head(head, body, self.clone());
        // (The handler is borrowed, not counted: `self` keeps `shared` alive.)
        let handler = &self.shared.handler;
        // The oldest unanswered request answered at once, with a response
        // the machine's short way takes: answered here, where the handler
        // left the reply. (Not moved out of `catch_unwind` first: the
        // handler has just written it field by field, and the wide loads
        // of a move wait for those stores to land. A panic in this short
        // step would be taken for the handler's: the request then gets a
        // 500, or nothing more if its answer had gone.)
        // Whether it is the oldest unanswered request, asked before the
        // handler runs: nothing the handler does changes the machine (events
        // arriving meanwhile only mark the connection for another step).
        let at_once = !has_body && self.machine.borrow().current() == Some(id);
        let short_way = at_once && log.is_none();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let reply = handler.handle(req);
            if let Reply::Now(r) = &reply {
                if short_way && self.emit_ok_typed(id, r) {
                    return None;
                }
            }
            Some(reply)
        }));
        let reply = match caught {
            Ok(None) => return,
            Ok(Some(reply)) => Ok(reply),
            Err(p) => Err(p),
        };
        // Otherwise straight to the machine all the same when answered at
        // once, without queueing a slot for it at all. (Requests with a
        // body take the usual way: their body events come first.)
        match reply {
            Ok(Reply::Now(r)) if at_once => self.emit(id, r, Some(Answered { is_head, log })),
            reply => self.queue_reply(id, is_head, log, reply),
        }
    }

    /// A reply that waits its turn: a slot in the queue, filled now or
    /// when its Deferred fires.
    #[inline(never)]
    fn queue_reply(
        self: &Rc<Self>,
        id: u64,
        is_head: bool,
        log: Option<Box<LogInfo>>,
        reply: std::thread::Result<Reply>,
    ) {
        self.slots
            .borrow_mut()
            .push_back(Slot::waiting(id, is_head, log));
        match reply {
            Ok(Reply::Now(r)) => self.set_response(id, Ok(r)),
            Ok(Reply::Later(d)) => {
                if let Some(s) = self.slots.borrow_mut().iter_mut().find(|s| s.id == id) {
                    s.deferred = Some(d.clone());
                }
                let me = self.me.clone();
                d.finally(move |r| {
                    if let Some(c) = me.upgrade() {
                        c.set_response(id, r);
                        c.kick();
                    }
                });
            }
            Err(p) => {
                let f = Failure::from_panic(p);
                self.set_response(id, Err(f));
            }
        }
    }

    fn set_response(&self, id: u64, r: Result<Response, Failure>) {
        let resp = match r {
            Ok(r) => r,
            Err(f) => {
                tracing::error!(peer = %self.peer, failure = %f, "request handler failed");
                Response::error(StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        let mut slots = self.slots.borrow_mut();
        if let Some(s) = slots.iter_mut().find(|s| s.id == id) {
            if matches!(s.state, SlotState::Waiting) {
                s.deferred = None;
                s.state = SlotState::Ready(Box::new(resp));
            }
        }
        drop(slots);
        self.again.set(true);
    }

    // (Out of line: the streaming code here would otherwise be inlined into
    // `step`, whose common path is then spread over more cache lines.)
    #[inline(never)]
    fn write_responses(self: &Rc<Self>) {
        let mut pieces = 0;
        loop {
            let Some(front) = self.machine.borrow().current() else {
                // Every request answered; slots left over were superseded.
                self.slots.borrow_mut().clear();
                return;
            };
            // Drop slots the machine is done with (answered with an error by it).
            let state = {
                let mut slots = self.slots.borrow_mut();
                while slots.front().is_some_and(|s| s.id < front) {
                    slots.pop_front();
                }
                match slots.front_mut() {
                    Some(s) if s.id == front => std::mem::replace(&mut s.state, SlotState::Busy),
                    _ => return,
                }
            };
            match state {
                SlotState::Waiting | SlotState::Busy => {
                    self.put_state(front, state);
                    return;
                }
                SlotState::Ready(resp) => self.emit(front, *resp, None),
                SlotState::Streaming(mut source) => {
                    if !self.producer.get() {
                        self.producer.set(true);
                        let p: Rc<dyn Producer> = Rc::new(ConnProducer(self.me.clone()));
                        // Registering a pull producer asks it for data at once:
                        // that re-enters kick, which only sets `again`.
                        let _ = self.transport.register_producer(p, false);
                    }
                    loop {
                        self.flush();
                        if self.closed.get() || self.closing.get() {
                            return;
                        }
                        if self.transport.write_buffer_len() >= STREAM_HIGH_WATER {
                            // The producer is resumed when the buffer drains.
                            self.put_state(front, SlotState::Streaming(source));
                            return;
                        }
                        if pieces >= STREAM_PIECES_PER_STEP {
                            self.put_state(front, SlotState::Streaming(source));
                            let me = self.me.clone();
                            self.shared.reactor.call_soon(move || {
                                if let Some(c) = me.upgrade() {
                                    c.kick();
                                }
                            });
                            return;
                        }
                        pieces += 1;
                        match self.send_file_region(front, &mut source) {
                            FileStep::Sent => continue,
                            FileStep::Wait => {
                                // The transport pulls again once its buffer is empty.
                                self.put_state(front, SlotState::Streaming(source));
                                return;
                            }
                            FileStep::Failed => {
                                self.abort();
                                return;
                            }
                            FileStep::Copy => {}
                        }
                        let notify = self.notify();
                        let chunk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            source.next_chunk(STREAM_CHUNK, &notify)
                        }))
                        .unwrap_or_else(|p| Chunk::Error(Failure::from_panic(p)));
                        match chunk {
                            Chunk::Data(d) => {
                                let r = self.machine.borrow_mut().send_data(front, &d);
                                self.with_slot(front, |s| {
                                    if let Some(l) = s.log.as_mut() {
                                        l.bytes += d.len() as u64;
                                    }
                                });
                                if let Err(e) = r {
                                    tracing::error!(peer = %self.peer, error = %e, "streamed body does not fit its response");
                                    self.abort();
                                    return;
                                }
                            }
                            Chunk::Pending => {
                                self.put_state(front, SlotState::Streaming(source));
                                return;
                            }
                            Chunk::End => {
                                drop(source);
                                self.finish(front, None);
                                break;
                            }
                            Chunk::Error(f) => {
                                tracing::error!(peer = %self.peer, failure = %f, "response body failed");
                                self.abort();
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A response in memory with no fields of its own (what `Response::text`
    /// and `html` make) to request `id`, answered at once with nothing to
    /// log: to the machine without taking the response apart as `emit`
    /// does (the machine takes its shortest way when the request allows).
    /// False, having done nothing, when it is not such a response.
    #[inline]
    fn emit_ok_typed(&self, id: u64, r: &Response) -> bool {
        let (Some(ct), Body::Bytes(body)) = (r.default_content_type, &r.body) else {
            return false;
        };
        if r.headers.is_built() {
            return false;
        }
        // (`respond_typed_with_body`'s choice, written out: its fields are
        // known to be none, and asking the empty map cost 17 instructions
        // per request.)
        let mut m = self.machine.borrow_mut();
        let sent = if r.status == StatusCode::OK && m.respond_ok_typed(id, ct, body) {
            Ok(())
        } else {
            m.respond_whole(id, r.status, &r.headers, Some(ct), body)
        };
        drop(m);
        match sent {
            Ok(()) => self.finished(id, None, false),
            Err(e) => self.response_refused(id, e),
        }
        true
    }

    /// Hands the response for `front` (the oldest unanswered request) to
    /// the machine. `own` is what its request left when it was answered at
    /// once and never queued a slot; otherwise its slot is in the queue.
    fn emit(&self, front: u64, resp: Response, own: Option<Answered>) {
        let Response {
            status,
            headers,
            body,
            default_content_type,
        } = resp;
        let (own_is_head, mut log) = match own {
            Some(o) => (Some(o.is_head), o.log),
            None => (
                None,
                self.slots
                    .borrow_mut()
                    .iter_mut()
                    .find(|s| s.id == front)
                    .and_then(|s| s.log.take()),
            ),
        };
        if let Some(l) = log.as_mut() {
            l.status = status.as_u16();
        }
        let whole = match &body {
            Body::Empty => Some(&[][..]),
            Body::Bytes(b) => Some(&b[..]),
            Body::Stream { .. } => None,
        };
        if let Some(bytes) = whole {
            // Head, body and end in one call: the common case.
            let r = self.machine.borrow_mut().respond_typed_with_body(
                front,
                status,
                &headers,
                default_content_type,
                bytes,
            );
            headers.recycle();
            if let Some(l) = log.as_mut() {
                l.bytes = bytes.len() as u64;
            }
            match r {
                Ok(()) => self.finished(front, log, own_is_head.is_none()),
                Err(e) => self.response_refused(front, e),
            }
            return;
        }
        let Body::Stream { len, source } = body else {
            return;
        };
        let r = self.machine.borrow_mut().respond_typed(
            front,
            status,
            &headers,
            default_content_type,
            len,
        );
        headers.recycle();
        if let Err(e) = r {
            self.response_refused(front, e);
            return;
        }
        let is_head = own_is_head.unwrap_or_else(|| {
            self.slots
                .borrow()
                .iter()
                .any(|s| s.id == front && s.is_head)
        });
        if is_head {
            drop(source);
            self.finish(front, log);
        } else if own_is_head.is_some() {
            // Later requests are not dispatched yet: the back is its place.
            self.slots.borrow_mut().push_back(Slot {
                state: SlotState::Streaming(source),
                ..Slot::waiting(front, is_head, log)
            });
        } else {
            self.with_slot(front, |s| {
                s.log = log;
                s.state = SlotState::Streaming(source);
            });
        }
    }

    fn put_state(&self, id: u64, state: SlotState) {
        self.with_slot(id, |s| s.state = state);
    }

    fn with_slot(&self, id: u64, f: impl FnOnce(&mut Slot)) {
        if let Some(s) = self.slots.borrow_mut().iter_mut().find(|s| s.id == id) {
            f(s);
        }
    }

    fn response_refused(&self, id: u64, e: SendError) {
        if e != SendError::Superseded {
            tracing::error!(peer = %self.peer, error = %e, "response refused");
        }
        self.slots.borrow_mut().retain(|s| s.id != id);
    }

    /// Ends request `id`'s response; `log` is its access-log record when
    /// the caller holds it (otherwise it is in the slot).
    fn finish(&self, id: u64, log: Option<Box<LogInfo>>) {
        let r = self.machine.borrow_mut().finish(id);
        if let Err(e) = r {
            tracing::error!(peer = %self.peer, error = %e, "finishing response failed");
        }
        self.finished(id, log, true);
    }

    /// What follows the end of request `id`'s response in the machine;
    /// `queued` when it may have a slot (it was not answered at once).
    #[inline]
    fn finished(&self, id: u64, log: Option<Box<LogInfo>>, queued: bool) {
        // The usual end of an answer given at once: nothing to do.
        if !queued && log.is_none() && !self.producer.get() && self.body.borrow().is_none() {
            return;
        }
        self.finished_slow(id, log, queued);
    }

    #[inline(never)]
    fn finished_slow(&self, id: u64, log: Option<Box<LogInfo>>, queued: bool) {
        // Body bytes still arriving for an answered request are dropped.
        if let Some((bid, b)) = self.body.borrow().as_ref() {
            if *bid == id {
                request::discard_body(b);
            }
        }
        let slot = if queued {
            let mut slots = self.slots.borrow_mut();
            match slots.iter().position(|s| s.id == id) {
                Some(p) => slots.remove(p),
                None => None,
            }
        } else {
            None
        };
        if let Some(l) = log.or_else(|| slot.and_then(|s| s.log)) {
            access_log(&self.shared.cfg.log_name, &self.peer, &l);
        }
        if self.producer.get() {
            self.producer.set(false);
            self.transport.unregister_producer();
        }
    }

    /// Hands the machine's output to the transport; the emptied buffer
    /// stays with the machine for what this step still writes.
    fn flush(&self) {
        let mut buf = Vec::new();
        {
            let mut m = self.machine.borrow_mut();
            if !m.has_output() {
                return;
            }
            m.swap_output(&mut buf);
        }
        // No borrow held while the transport runs. The batch is sent from
        // this buffer (not copied into the transport's first), and the
        // buffer stays for the next batch.
        self.transport.write_through(&buf);
        buf.clear();
        let mut m = self.machine.borrow_mut();
        if !m.has_output() {
            m.swap_output(&mut buf);
        }
    }

    /// After the step's last flush the (empty) output buffer goes back to
    /// the thread for the next connection's responses: connections hold none
    /// between steps.
    fn lend_back_output(&self) {
        let mut m = self.machine.borrow_mut();
        if m.has_output() {
            return;
        }
        let mut buf = Vec::new();
        m.swap_output(&mut buf);
        if buf.capacity() > 0 && buf.capacity() <= SPARE_OUT_MAX {
            SPARE_OUT.with(|s| {
                let mut s = s.borrow_mut();
                if s.capacity() < buf.capacity() {
                    *s = buf;
                }
            });
        }
    }

    /// Closes after the last response without losing it: send FIN once the
    /// output is flushed, keep reading (and dropping) what the peer still
    /// sends, and close when it closes or after `LINGER`. Closing with
    /// unread input would make the kernel send a reset, which can destroy
    /// the response before the client read it (e.g. an early 413 during an
    /// upload).
    #[inline(never)]
    fn linger(&self) {
        self.closing.set(true);
        self.cancel_timer();
        self.transport.lose_write_connection();
        if self.reading_paused.replace(false) {
            self.transport.resume_producing();
        }
        let t = self.transport.clone();
        self.shared.reactor.call_later(LINGER, move || {
            if t.is_connected() {
                t.lose_connection();
            }
        });
    }

    /// Hands the next bytes of a file-backed body to the kernel
    /// (`sendfile`) when the source offers a file region, the transport is
    /// a plain socket with nothing queued, and the response is not chunked.
    fn send_file_region(&self, front: u64, source: &mut Box<dyn BodySource>) -> FileStep {
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Some((file, off, left)) = source.file_region() else {
                return Ok(None);
            };
            if !self.machine.borrow_mut().raw_body_ready(front) {
                return Ok(None);
            }
            let want = usize::try_from(left.min(SENDFILE_MAX)).unwrap_or(usize::MAX);
            match self.transport.send_file(file, off, want) {
                Ok(n) => Ok(Some(n as u64)),
                Err(SendFileError::Busy) if self.transport.write_buffer_len() > 0 => {
                    Err(FileStep::Wait)
                }
                Err(SendFileError::Io(e)) => {
                    tracing::error!(peer = %self.peer, error = %e, "sendfile failed");
                    Err(FileStep::Failed)
                }
                Err(_) => Ok(None),
            }
        }));
        let n = match attempt {
            Ok(Ok(Some(n))) if n > 0 => n,
            // Nothing sent (the socket is full, or no file region): the
            // bytes go through the write buffer, whose draining pulls again.
            Ok(Ok(_)) => return FileStep::Copy,
            Ok(Err(step)) => return step,
            Err(p) => {
                let f = Failure::from_panic(p);
                tracing::error!(peer = %self.peer, failure = %f, "response body failed");
                return FileStep::Failed;
            }
        };
        if let Err(p) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.file_region_sent(n)))
        {
            let f = Failure::from_panic(p);
            tracing::error!(peer = %self.peer, failure = %f, "response body failed");
            return FileStep::Failed;
        }
        self.with_slot(front, |s| {
            if let Some(l) = s.log.as_mut() {
                l.bytes += n;
            }
        });
        match self.machine.borrow_mut().note_raw_body_sent(front, n) {
            Ok(()) => FileStep::Sent,
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "streamed body does not fit its response");
                FileStep::Failed
            }
        }
    }

    fn abort(&self) {
        self.closing.set(true);
        self.cancel_timer();
        self.transport.lose_connection();
    }

    fn cancel_timer(&self) {
        self.deadline.set(None);
    }

    fn update_timer(&self) {
        let want = {
            let m = self.machine.borrow();
            // Also for a pipelined head behind unanswered requests: the
            // header timer bounds how long any head may take.
            if m.receiving_head() {
                Some(TimerKind::Header)
            } else if m.receiving_body() && !self.reading_paused.get() {
                // Waiting for body bytes the handler is ready for.
                Some(TimerKind::Body)
            } else if m.is_idle() && self.slots.borrow().is_empty() {
                Some(TimerKind::Idle)
            } else {
                None
            }
        };
        let current = self.deadline.get().map(|(k, _)| k);
        if want == current {
            return;
        }
        let Some(kind) = want else {
            self.deadline.set(None);
            return;
        };
        let delay = match kind {
            TimerKind::Header => self.shared.cfg.header_timeout,
            TimerKind::Idle => self.shared.cfg.idle_timeout,
            TimerKind::Body => self.shared.cfg.body_timeout,
        };
        // (The turn's clock, read once per turn: a deadline seconds away
        // need not be exact to the microsecond, and a connection going
        // idle after each answer would otherwise read the clock each time.)
        let at = self.shared.reactor.turn_now().saturating_add(delay);
        self.deadline.set(Some((kind, at)));
    }

    fn timed_out(&self, kind: TimerKind) {
        if self.closed.get() || self.closing.get() {
            return;
        }
        self.deadline.set(None);
        match kind {
            TimerKind::Header => {
                tracing::info!(peer = %self.peer, "request head not received in time; closing");
                if self.slots.borrow().is_empty() && self.machine.borrow().queued() == 0 {
                    self.transport.write(
                        b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            }
            TimerKind::Idle => {
                tracing::debug!(peer = %self.peer, "idle keep-alive connection closed")
            }
            TimerKind::Body => {
                tracing::info!(peer = %self.peer, "request body stalled; closing");
                let b = self.body.borrow_mut().take();
                if let Some((_, b)) = b {
                    request::end_body(&b, Some("request body timed out".into()));
                }
            }
        }
        self.closing.set(true);
        self.transport.lose_connection();
    }

    fn lost(&self, reason: Failure) {
        self.closed.set(true);
        self.cancel_timer();
        tracing::trace!(peer = %self.peer, %reason, "HTTP connection closed");
        let b = self.body.borrow_mut().take();
        if let Some((_, b)) = b {
            request::end_body(&b, Some("connection lost".into()));
        }
        // Cancel handlers still working for this connection.
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        for s in slots {
            if let Some(d) = s.deferred {
                d.cancel();
            }
        }
    }
}

fn access_log(site: &str, peer: &Address, l: &LogInfo) {
    let host = match peer.socket_addr() {
        Some(a) => a.ip().to_string(),
        None => peer.to_string(),
    };
    let bytes = if l.bytes == 0 {
        "-".to_string()
    } else {
        l.bytes.to_string()
    };
    tracing::info!(
        target: "torsion_http::access",
        site,
        host = %l.host,
        "{host} - - [{}] \"{}\" {} {bytes} \"{}\" \"{}\"",
        crate::util::log_time(l.time),
        l.request_line.replace('"', "\\\""),
        l.status,
        l.referer.replace('"', "\\\""),
        l.user_agent.replace('"', "\\\""),
    );
}
