//! TLS as a protocol wrapper (Twisted's `TLSMemoryBIOProtocol`).
//!
//! [`TlsProtocol`] is a [`Protocol`] placed on any stream transport (TCP, a
//! Unix socket, a pipe, the in-memory loopback). It decrypts what arrives
//! and hands the plaintext to the protocol it wraps; to that inner protocol
//! it gives a [`Transport`] whose writes are encrypted on their way down.
//! [`StartTlsProtocol`] is the same wrapper starting in plaintext, switched
//! to TLS by the inner protocol with `start_tls` (STARTTLS in SMTP, IMAP, FTP).
//!
//! Re-entrancy rule: no `RefCell` of this module is borrowed while user code
//! (the inner protocol, its producer) or the lower transport runs; encrypted
//! output is collected first and written down after the borrow ends.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::io::IoSlice;
use std::rc::{Rc, Weak};
use std::time::Duration;

use torsion_core::transport::ProducerError;
use torsion_core::{
    Address, Clock, ConnectionError, Deferred, DelayedCall, Failure, NotSupportedError, Producer,
    Protocol, Transport, TransportImpl, UnixCredentials, DEFAULT_HIGH_WATER,
};

use crate::adapter::{Fed, Plain, Session};
use crate::config::{server_name, TlsClientConfig, TlsServerConfig};
use crate::error::{StartTlsError, TlsError};
use crate::ext::HandshakeInfo;

/// How long a peer may take to finish the handshake by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Plaintext handed to the inner protocol per `data_received` call at most.
const READ_CHUNK: usize = 64 * 1024;
/// Bound on feed/deliver rounds per input, a guard against a stuck state machine.
const MAX_ROUNDS: usize = 1 << 20;

thread_local! {
    /// Read buffers lent out while plaintext is delivered: no buffer is held
    /// by an idle connection, and nested TLS (TLS over TLS) takes a second one.
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn borrow_buffer() -> Vec<u8> {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_CHUNK])
}

fn return_buffer(buf: Vec<u8>) {
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < 4 {
            b.push(buf);
        }
    });
}

/// Which side of the handshake this end plays, with its configuration.
#[derive(Clone, Debug)]
pub enum TlsSide {
    /// Accept TLS with this server configuration.
    Server(TlsServerConfig),
    /// Connect with this client configuration, verifying and sending (SNI) `server_name`.
    Client {
        /// The client configuration.
        config: TlsClientConfig,
        /// The name to verify the server's certificate against and to send as SNI.
        server_name: String,
    },
}

impl TlsSide {
    /// The client side.
    pub fn client(config: TlsClientConfig, server_name: &str) -> Self {
        TlsSide::Client {
            config,
            server_name: server_name.to_string(),
        }
    }

    fn session(&self) -> Result<Session, TlsError> {
        match self {
            TlsSide::Server(c) => Session::server(c.inner.clone()),
            TlsSide::Client {
                config,
                server_name: name,
            } => {
                let n = server_name(name).map_err(|e| TlsError::Other(e.to_string()))?;
                Session::client(config.inner.clone(), n)
            }
        }
    }
}

/// Options of a TLS connection.
#[derive(Clone)]
pub struct TlsOptions {
    /// Abort a connection whose handshake has not completed after this long
    /// (needs `clock`). Default 30 s.
    pub handshake_timeout: Option<Duration>,
    /// The clock that runs the handshake timeout (the reactor, or a test clock).
    pub clock: Option<Rc<dyn Clock>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            clock: None,
        }
    }
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("clock", &self.clock.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// Default options with `clock` running the handshake timeout.
    pub fn with_clock(clock: Rc<dyn Clock>) -> Self {
        TlsOptions {
            clock: Some(clock),
            ..Default::default()
        }
    }
}

enum Mode {
    Plain,
    Tls(Box<Session>),
}

#[derive(Default)]
struct Flags {
    handshake_done: bool,
    close_requested: bool,
    write_shut_requested: bool,
    close_sent: bool,
    peer_closed: bool,
    lost: bool,
}

struct State {
    mode: Mode,
    flags: Flags,
    /// Plaintext written before the handshake completed.
    early: Vec<u8>,
    /// Ciphertext received but not yet taken by rustls (paused inner protocol).
    pending_in: Vec<u8>,
    error: Option<TlsError>,
}

/// Where a connection's handshake outcome is reported (the client factory listens).
pub(crate) type OutcomeSink = Rc<RefCell<Option<Result<(), Failure>>>>;

/// The shared state of one wrapped connection; also the [`TransportImpl`]
/// the inner protocol writes to, and what `Transport::extension` finds.
pub(crate) struct TlsShared {
    me: Weak<TlsShared>,
    lower: RefCell<Option<Transport>>,
    inner: RefCell<Option<Box<dyn Protocol>>>,
    st: RefCell<State>,
    paused: Cell<bool>,
    in_process: Cell<bool>,
    in_flush: Cell<bool>,
    /// A pause (`true`) or resume the transport below asked for during `flush_tls`.
    held_producer_call: Cell<Option<bool>>,
    producer: RefCell<Option<Rc<dyn Producer>>>,
    streaming: Cell<bool>,
    paused_by_early: Cell<bool>,
    waiters: RefCell<Vec<Deferred<HandshakeInfo>>>,
    timer: RefCell<Option<DelayedCall>>,
    options: TlsOptions,
    initial: RefCell<Option<TlsSide>>,
    outcome: RefCell<Option<OutcomeSink>>,
    lost_while_busy: RefCell<Option<Failure>>,
    panicked: RefCell<Option<String>>,
}

/// Wraps a protocol in TLS. Place it on any stream transport.
///
/// ```
/// use torsion_core::testing::{AccumulatingProtocol, LoopbackPump};
/// use torsion_tls::{CertificateKey, TlsClientConfig, TlsProtocol, TlsServerConfig, TrustRoots};
///
/// // A self-signed certificate made on the spot (tests never commit keys).
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
/// let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
/// let server_cfg = TlsServerConfig::builder()
///     .certificate(CertificateKey::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap())
///     .build()
///     .unwrap();
/// let client_cfg = TlsClientConfig::with_roots(TrustRoots::from_pem(cert_pem.as_bytes()).unwrap()).unwrap();
///
/// let (server, server_log) = AccumulatingProtocol::new();
/// let (client, client_log) = AccumulatingProtocol::new();
/// let pump = LoopbackPump::connect(
///     Box::new(TlsProtocol::server(Box::new(server), server_cfg)),
///     Box::new(TlsProtocol::client(Box::new(client), client_cfg, "localhost")),
/// );
/// pump.pump(); // the handshake runs in memory
/// client_log.transport().unwrap().write(b"secret");
/// pump.pump();
/// assert_eq!(server_log.data(), b"secret");
/// ```
pub struct TlsProtocol {
    shared: Rc<TlsShared>,
}

/// A wrapper that starts in plaintext and switches to TLS when the inner
/// protocol calls [`crate::TlsTransportExt::start_tls_server`] (or
/// [`start_tls_client`](crate::TlsTransportExt::start_tls_client)) on its transport.
///
/// Bytes the inner protocol received after the switch point but had not yet
/// processed (the tail of the chunk that held the `STARTTLS` command) are
/// handed back with `start_tls` and read as TLS, so plaintext pipelined
/// after the command is never taken as protected data.
pub struct StartTlsProtocol {
    shared: Rc<TlsShared>,
}

impl TlsProtocol {
    /// TLS server side around `inner`.
    pub fn server(inner: Box<dyn Protocol>, config: TlsServerConfig) -> Self {
        Self::new(inner, TlsSide::Server(config), TlsOptions::default())
    }

    /// TLS client side around `inner`, verifying `server_name` (also sent as SNI).
    pub fn client(inner: Box<dyn Protocol>, config: TlsClientConfig, server_name: &str) -> Self {
        Self::new(
            inner,
            TlsSide::client(config, server_name),
            TlsOptions::default(),
        )
    }

    /// Either side, with options (handshake timeout and its clock).
    pub fn new(inner: Box<dyn Protocol>, side: TlsSide, options: TlsOptions) -> Self {
        TlsProtocol {
            shared: TlsShared::new(inner, Some(side), options),
        }
    }

    pub(crate) fn set_outcome_sink(&self, sink: OutcomeSink) {
        *self.shared.outcome.borrow_mut() = Some(sink);
    }
}

impl StartTlsProtocol {
    /// A plaintext wrapper around `inner` that can switch to TLS later.
    pub fn new(inner: Box<dyn Protocol>) -> Self {
        Self::with_options(inner, TlsOptions::default())
    }

    /// With options for the TLS phase (handshake timeout and its clock).
    pub fn with_options(inner: Box<dyn Protocol>, options: TlsOptions) -> Self {
        StartTlsProtocol {
            shared: TlsShared::new(inner, None, options),
        }
    }
}

macro_rules! forward_protocol {
    ($t:ty) => {
        impl Protocol for $t {
            fn connection_made(&mut self, transport: Transport) {
                self.shared.connection_made(transport);
            }
            fn data_received(&mut self, data: &[u8]) {
                self.shared.data_received(data);
            }
            fn connection_lost(&mut self, reason: Failure) {
                self.shared.connection_lost(reason);
            }
            fn half_closeable(&self) -> bool {
                self.shared.inner_half_closeable()
            }
            fn read_connection_lost(&mut self) {
                self.shared.read_connection_lost();
            }
            fn write_connection_lost(&mut self) {
                self.shared
                    .with_inner(|p| p.write_connection_lost(), "write_connection_lost");
            }
        }
    };
}
forward_protocol!(TlsProtocol);
forward_protocol!(StartTlsProtocol);

/// An `io::Write` that hands TLS records to the transport below.
struct LowerWriter<'a>(&'a Transport);

impl std::io::Write for LowerWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.0.write_vectored(bufs);
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ProducerProxy(Weak<TlsShared>);

impl Producer for ProducerProxy {
    fn pause_producing(&self) {
        let Some(s) = self.0.upgrade() else { return };
        if s.in_flush.get() {
            s.held_producer_call.set(Some(true));
            return;
        }
        let p = s.producer.borrow().clone();
        if let Some(p) = p {
            p.pause_producing();
        }
    }
    fn resume_producing(&self) {
        let Some(s) = self.0.upgrade() else { return };
        if s.in_flush.get() {
            s.held_producer_call.set(Some(false));
            return;
        }
        if s.paused_by_early.get() {
            return;
        }
        let p = s.producer.borrow().clone();
        if let Some(p) = p {
            p.resume_producing();
        }
    }
    fn stop_producing(&self) {
        if let Some(p) = self
            .0
            .upgrade()
            .and_then(|s| s.producer.borrow_mut().take())
        {
            p.stop_producing();
        }
    }
}

impl TlsShared {
    fn new(inner: Box<dyn Protocol>, side: Option<TlsSide>, options: TlsOptions) -> Rc<Self> {
        Rc::new_cyclic(|me| TlsShared {
            me: me.clone(),
            lower: RefCell::new(None),
            inner: RefCell::new(Some(inner)),
            st: RefCell::new(State {
                mode: Mode::Plain,
                flags: Flags::default(),
                early: Vec::new(),
                pending_in: Vec::new(),
                error: None,
            }),
            paused: Cell::new(false),
            in_process: Cell::new(false),
            in_flush: Cell::new(false),
            held_producer_call: Cell::new(None),
            producer: RefCell::new(None),
            streaming: Cell::new(false),
            paused_by_early: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
            timer: RefCell::new(None),
            options,
            initial: RefCell::new(side),
            outcome: RefCell::new(None),
            lost_while_busy: RefCell::new(None),
            panicked: RefCell::new(None),
        })
    }

    fn lower(&self) -> Option<Transport> {
        self.lower.borrow().clone()
    }

    fn peer_addr(&self) -> String {
        self.lower()
            .map(|l| l.peer().to_string())
            .unwrap_or_default()
    }

    /// Runs a callback of the inner protocol, catching a panic (logged; the connection is aborted).
    fn with_inner(&self, f: impl FnOnce(&mut dyn Protocol), what: &str) {
        let taken = self.inner.borrow_mut().take();
        let Some(mut p) = taken else { return };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *p)));
        let lost = self.lost_while_busy.borrow_mut().take();
        match lost {
            Some(reason) => {
                // The connection ended while the callback ran: finish it now.
                let r2 = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    p.connection_lost(reason)
                }));
                if let Err(e) = r2 {
                    let f = Failure::from_panic(e);
                    tracing::error!(failure = %f, "connection_lost panicked");
                }
            }
            None => *self.inner.borrow_mut() = Some(p),
        }
        if let Err(e) = r {
            let f = Failure::from_panic(e);
            tracing::error!(peer = %self.peer_addr(), failure = %f, "{what} panicked; aborting the connection");
            {
                let mut st = self.st.borrow_mut();
                if st.error.is_none() {
                    // Stops further processing; `connection_lost` reports the panic itself.
                    st.error = Some(TlsError::Other(format!("{what} panicked: {f}")));
                }
            }
            *self.panicked.borrow_mut() = Some(f.to_string());
            if let Some(l) = self.lower() {
                l.abort_connection();
            }
        }
    }

    fn connection_made(self: &Rc<Self>, lower: Transport) {
        *self.lower.borrow_mut() = Some(lower);
        let side = self.initial.borrow_mut().take();
        if let Some(side) = side {
            if let Err(e) = self.begin_tls(&side) {
                self.fail(e, false);
            }
        }
        let t = Transport::new(self.clone() as Rc<dyn TransportImpl>);
        self.with_inner(|p| p.connection_made(t), "connection_made");
        // A client's hello may have been produced before the inner protocol knew its transport.
        self.flush_tls();
    }

    /// Switches to TLS: creates the session, starts the handshake timer, and
    /// (client side) sends the hello.
    fn begin_tls(&self, side: &TlsSide) -> Result<(), TlsError> {
        let session = side.session()?;
        self.st.borrow_mut().mode = Mode::Tls(Box::new(session));
        if let (Some(t), Some(clock)) = (self.options.handshake_timeout, &self.options.clock) {
            let weak = self.me.clone();
            let call = clock.call_later(
                t,
                Box::new(move || {
                    if let Some(s) = weak.upgrade() {
                        let done = s.st.borrow().flags.handshake_done;
                        if !done {
                            s.fail(TlsError::HandshakeTimeout(t), true);
                        }
                    }
                }),
            );
            *self.timer.borrow_mut() = Some(call);
        }
        self.flush_tls();
        Ok(())
    }

    fn cancel_timer(&self) {
        if let Some(c) = self.timer.borrow_mut().take() {
            let _ = c.cancel();
        }
    }

    /// Sends whatever TLS records rustls has ready, straight into the
    /// transport below. That transport may pause or resume the producer while
    /// it takes the bytes; the proxy holds such calls back until the state
    /// borrow held here has ended (user code must never meet it borrowed).
    fn flush_tls(&self) {
        let lower = self.lower();
        self.in_flush.set(true);
        {
            let mut st = self.st.borrow_mut();
            if let Mode::Tls(s) = &mut st.mode {
                match &lower {
                    Some(l) => s.take_tls(&mut LowerWriter(l)),
                    None => s.take_tls(&mut std::io::sink()),
                }
            }
        }
        self.in_flush.set(false);
        self.release_held_producer_calls();
    }

    fn release_held_producer_calls(&self) {
        let held = self.held_producer_call.take();
        let Some(pause) = held else { return };
        let p = self.producer.borrow().clone();
        let Some(p) = p else { return };
        if pause {
            p.pause_producing();
        } else if !self.paused_by_early.get() {
            p.resume_producing();
        }
    }

    /// Records the first error, sends rustls' alert, tells handshake waiters,
    /// and closes the lower transport (`abort` drops unsent data).
    fn fail(&self, err: TlsError, abort: bool) {
        {
            let mut st = self.st.borrow_mut();
            if st.error.is_some() || st.flags.lost {
                return;
            }
            st.error = Some(err.clone());
        }
        tracing::warn!(peer = %self.peer_addr(), error = %err, "TLS connection failed");
        self.cancel_timer();
        if !abort {
            self.flush_tls();
        }
        self.fire_waiters(Err(Failure::new(err)));
        if let Some(l) = self.lower() {
            if abort {
                l.abort_connection();
            } else {
                l.lose_connection();
            }
        }
    }

    fn fire_waiters(&self, result: Result<HandshakeInfo, Failure>) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for d in waiters {
            let _ = d.fire(result.clone());
        }
    }

    fn dead(&self) -> bool {
        let st = self.st.borrow();
        st.error.is_some() || st.flags.lost
    }

    fn data_received(self: &Rc<Self>, data: &[u8]) {
        let plain = matches!(self.st.borrow().mode, Mode::Plain);
        if plain {
            self.in_process.set(true);
            self.with_inner(|p| p.data_received(data), "data_received");
            self.in_process.set(false);
            // `start_tls` during the call may have handed back bytes to read as TLS.
            let has_pending = !self.st.borrow().pending_in.is_empty();
            if has_pending {
                self.process(&[]);
            }
            return;
        }
        self.process(data);
    }

    /// Feeds ciphertext, delivers plaintext, sends what rustls wants sent;
    /// stops when the input is used up or the inner protocol pauses.
    fn process(&self, input: &[u8]) {
        if self.in_process.get() {
            self.st.borrow_mut().pending_in.extend_from_slice(input);
            return;
        }
        self.in_process.set(true);
        let mut input = input;
        {
            let mut st = self.st.borrow_mut();
            if !st.pending_in.is_empty() {
                st.pending_in.extend_from_slice(input);
                input = &[];
            }
        }
        for _ in 0..MAX_ROUNDS {
            if self.dead() || !self.deliver_plaintext() {
                break;
            }
            let step = {
                let mut st = self.st.borrow_mut();
                let st = &mut *st;
                let Mode::Tls(s) = &mut st.mode else { break };
                let was_handshaking = s.is_handshaking();
                let r = if !st.pending_in.is_empty() {
                    s.feed(&st.pending_in).map(|f| {
                        if let Fed::Took(n) = f {
                            st.pending_in.drain(..n);
                        }
                        f
                    })
                } else if !input.is_empty() {
                    s.feed(input).map(|f| {
                        if let Fed::Took(n) = f {
                            input = &input[n..];
                        }
                        f
                    })
                } else {
                    Ok(Fed::Took(0))
                };
                let finished = was_handshaking && !s.is_handshaking();
                (r, finished)
            };
            match step {
                (Err(e), _) => {
                    self.fail(e, false);
                    break;
                }
                (Ok(Fed::Took(n)), finished) => {
                    self.flush_tls();
                    if finished {
                        self.handshake_finished();
                    }
                    if n == 0 {
                        // Input used up: hand over what is decrypted, then stop.
                        self.deliver_plaintext();
                        break;
                    }
                }
                (Ok(Fed::Full), _) => {
                    if self.paused.get() {
                        break;
                    }
                }
                (Ok(Fed::Closed), _) => {
                    self.st.borrow_mut().pending_in.clear();
                    input = &[];
                    self.deliver_plaintext();
                    break;
                }
            }
        }
        // After a failure the rest is dropped: the connection is closing.
        if !input.is_empty() && !self.dead() {
            self.st.borrow_mut().pending_in.extend_from_slice(input);
        }
        if self.dead() {
            self.st.borrow_mut().pending_in = Vec::new();
        }
        self.in_process.set(false);
    }

    /// Hands decrypted bytes to the inner protocol until none is left or it
    /// pauses. Returns false when paused or closed.
    fn deliver_plaintext(&self) -> bool {
        let mut buf = borrow_buffer();
        let mut ok = true;
        loop {
            if self.paused.get() || self.dead() {
                ok = false;
                break;
            }
            let got = {
                let mut st = self.st.borrow_mut();
                let Mode::Tls(s) = &mut st.mode else { break };
                s.read_plaintext(&mut buf)
            };
            match got {
                Plain::Data(n) => {
                    self.with_inner(|p| p.data_received(&buf[..n]), "data_received");
                }
                Plain::Empty => break,
                Plain::Eof => {
                    self.peer_closed();
                    ok = false;
                    break;
                }
            }
        }
        return_buffer(buf);
        ok
    }

    /// The peer sent close_notify and everything before it was delivered.
    fn peer_closed(&self) {
        let already_sent = {
            let mut st = self.st.borrow_mut();
            if st.flags.peer_closed {
                return;
            }
            st.flags.peer_closed = true;
            st.flags.close_sent
        };
        if self.inner_half_closeable() {
            self.with_inner(|p| p.read_connection_lost(), "read_connection_lost");
        }
        if already_sent {
            // Both directions are finished.
            if let Some(l) = self.lower() {
                l.lose_connection();
            }
        } else if !self.inner_half_closeable() {
            self.send_close(true);
        }
    }

    fn handshake_finished(&self) {
        self.cancel_timer();
        let (early, close) = {
            let mut st = self.st.borrow_mut();
            st.flags.handshake_done = true;
            (
                std::mem::take(&mut st.early),
                (st.flags.close_requested, st.flags.write_shut_requested),
            )
        };
        if !early.is_empty() {
            self.encrypt(&early);
        }
        let info = self.info();
        tracing::debug!(peer = %self.peer_addr(), version = ?info.version, suite = ?info.cipher_suite, "TLS handshake completed");
        if let Some(sink) = self.outcome.borrow().as_ref() {
            *sink.borrow_mut() = Some(Ok(()));
        }
        self.fire_waiters(Ok(info));
        if close.0 {
            self.send_close(true);
        } else if close.1 {
            self.send_close(false);
        }
        if self.paused_by_early.replace(false) {
            // Flushing the early data may have pushed the lower transport past
            // its high-water mark, in which case it paused the producer itself
            // and resumes it when it drains; resuming here would go behind its back.
            let lower_full = self
                .lower()
                .is_some_and(|l| l.write_buffer_len() > DEFAULT_HIGH_WATER);
            let p = self.producer.borrow().clone();
            if let (Some(p), false) = (p, lower_full) {
                p.resume_producing();
            }
        }
    }

    /// Encrypts and sends plaintext (handshake complete).
    fn encrypt(&self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let n = {
                let mut st = self.st.borrow_mut();
                let Mode::Tls(s) = &mut st.mode else { return };
                s.write_plaintext(rest)
            };
            self.flush_tls();
            if n == 0 {
                // rustls refused even with its buffer flushed: nothing sensible to retry.
                tracing::error!(peer = %self.peer_addr(), "TLS layer refused plaintext; dropping the write");
                return;
            }
            rest = &rest[n..];
        }
    }

    /// Sends close_notify; closes the lower transport (or only its sending side).
    fn send_close(&self, full: bool) {
        {
            let mut st = self.st.borrow_mut();
            if st.flags.close_sent || st.flags.lost {
                return;
            }
            st.flags.close_sent = true;
            if let Mode::Tls(s) = &mut st.mode {
                s.send_close_notify();
            }
        }
        self.flush_tls();
        if let Some(l) = self.lower() {
            if full {
                l.lose_connection();
            } else {
                l.lose_write_connection();
            }
        }
    }

    fn info(&self) -> HandshakeInfo {
        let st = self.st.borrow();
        match &st.mode {
            Mode::Tls(s) => HandshakeInfo {
                version: s.version(),
                cipher_suite: s.cipher_suite(),
                alpn: s.alpn(),
                peer_certificates: s.peer_certificates(),
                server_name: s.server_name(),
                resumed: s.resumed().unwrap_or(false),
            },
            Mode::Plain => HandshakeInfo::default(),
        }
    }

    fn connection_lost(&self, reason: Failure) {
        self.cancel_timer();
        let (error, tls, handshake_done, clean) = {
            let mut st = self.st.borrow_mut();
            if st.flags.lost {
                return;
            }
            st.flags.lost = true;
            (
                st.error.take(),
                matches!(st.mode, Mode::Tls(_)),
                st.flags.handshake_done,
                st.flags.peer_closed || st.flags.close_sent,
            )
        };
        let plain_close = reason
            .downcast_ref::<ConnectionError>()
            .is_some_and(|e| matches!(e, ConnectionError::Done));
        let panicked = self.panicked.borrow_mut().take();
        let reason = match error {
            _ if panicked.is_some() => Failure::new(ConnectionError::ProtocolPanicked(
                panicked.unwrap_or_default(),
            )),
            Some(e) => Failure::new(e),
            None if tls && !handshake_done && plain_close => {
                Failure::new(TlsError::ClosedDuringHandshake)
            }
            None if tls && !clean && plain_close => Failure::new(TlsError::Truncated),
            None => reason,
        };
        if tls && !handshake_done {
            tracing::info!(peer = %self.peer_addr(), reason = %reason, "TLS connection ended before the handshake completed");
        }
        if let Some(sink) = self.outcome.borrow().as_ref() {
            let mut s = sink.borrow_mut();
            if s.is_none() {
                *s = Some(Err(reason.clone()));
            }
        }
        self.fire_waiters(Err(reason.clone()));
        if let Some(p) = self.producer.borrow_mut().take() {
            p.stop_producing();
        }
        let busy = self.inner.borrow().is_none();
        if busy {
            // Inside one of the inner protocol's callbacks: deliver when it returns.
            *self.lost_while_busy.borrow_mut() = Some(reason);
            return;
        }
        let taken = self.inner.borrow_mut().take();
        if let Some(mut p) = taken {
            if let Err(e) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.connection_lost(reason)))
            {
                let f = Failure::from_panic(e);
                tracing::error!(failure = %f, "connection_lost panicked");
            }
        }
    }

    fn inner_half_closeable(&self) -> bool {
        self.inner
            .borrow()
            .as_ref()
            .is_some_and(|p| p.half_closeable())
    }

    fn read_connection_lost(&self) {
        let tls = matches!(self.st.borrow().mode, Mode::Tls(_));
        if tls {
            let peer_closed = self.st.borrow().flags.peer_closed;
            if !peer_closed {
                // EOF without close_notify: treat as truncation.
                self.fail(TlsError::Truncated, false);
            }
        } else {
            self.with_inner(|p| p.read_connection_lost(), "read_connection_lost");
        }
    }

    // ----- what the inner protocol and the extension trait call -----

    /// `lose_connection` (`whole`) or `lose_write_connection`: plaintext
    /// passes it down at once; TLS sends close_notify, after the handshake
    /// if that is still under way (early data goes out first).
    fn request_close(&self, whole: bool) {
        let plain = {
            let mut st = self.st.borrow_mut();
            if st.flags.lost {
                return;
            }
            if whole {
                st.flags.close_requested = true;
            } else {
                st.flags.write_shut_requested = true;
            }
            match st.mode {
                Mode::Plain => true,
                Mode::Tls(_) if st.flags.handshake_done => false,
                // Acted on when the handshake completes.
                Mode::Tls(_) => return,
            }
        };
        if !plain {
            self.send_close(whole);
        } else if let Some(l) = self.lower() {
            if whole {
                l.lose_connection();
            } else {
                l.lose_write_connection();
            }
        }
    }

    pub(crate) fn start_tls(&self, side: TlsSide, leftover: &[u8]) -> Result<(), StartTlsError> {
        {
            let st = self.st.borrow();
            if st.flags.lost || st.flags.close_requested || st.error.is_some() {
                return Err(StartTlsError::Closed);
            }
            if matches!(st.mode, Mode::Tls(_)) {
                return Err(StartTlsError::AlreadyStarted);
            }
        }
        self.begin_tls(&side)
            .map_err(|e| StartTlsError::Setup(e.to_string()))?;
        if !leftover.is_empty() {
            self.process(leftover);
        }
        Ok(())
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.st.borrow().mode, Mode::Tls(_))
    }

    pub(crate) fn handshake_info(&self) -> Option<HandshakeInfo> {
        let done = self.st.borrow().flags.handshake_done;
        done.then(|| self.info())
    }

    pub(crate) fn when_handshake_done(&self) -> Deferred<HandshakeInfo> {
        if let Some(info) = self.handshake_info() {
            return Deferred::succeed(info);
        }
        let failed = {
            let st = self.st.borrow();
            st.error.clone()
        };
        if let Some(e) = failed {
            return Deferred::fail(e);
        }
        let d = Deferred::new();
        self.waiters.borrow_mut().push(d.clone());
        d
    }
}

impl TransportImpl for TlsShared {
    fn write(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        enum Route {
            Drop,
            Plain,
            Early,
            Encrypt,
        }
        let route = {
            let st = self.st.borrow();
            let f = &st.flags;
            if f.lost || f.close_requested || f.write_shut_requested || st.error.is_some() {
                Route::Drop
            } else {
                match st.mode {
                    Mode::Plain => Route::Plain,
                    Mode::Tls(_) if !f.handshake_done => Route::Early,
                    Mode::Tls(_) => Route::Encrypt,
                }
            }
        };
        match route {
            Route::Drop => {}
            Route::Plain => {
                if let Some(l) = self.lower() {
                    l.write(data);
                }
            }
            Route::Early => {
                let len = {
                    let mut st = self.st.borrow_mut();
                    st.early.extend_from_slice(data);
                    st.early.len()
                };
                if len > DEFAULT_HIGH_WATER && self.streaming.get() && !self.paused_by_early.get() {
                    let p = self.producer.borrow().clone();
                    if let Some(p) = p {
                        self.paused_by_early.set(true);
                        p.pause_producing();
                    }
                }
            }
            Route::Encrypt => self.encrypt(data),
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) {
        for b in bufs {
            self.write(b);
        }
    }

    fn lose_connection(&self) {
        self.request_close(true);
    }

    fn abort_connection(&self) {
        if let Some(l) = self.lower() {
            l.abort_connection();
        }
    }

    fn lose_write_connection(&self) {
        self.request_close(false);
    }

    fn peer(&self) -> Address {
        self.lower()
            .map(|l| l.peer())
            .unwrap_or_else(|| Address::Memory("unconnected".into()))
    }

    fn host(&self) -> Address {
        self.lower()
            .map(|l| l.host())
            .unwrap_or_else(|| Address::Memory("unconnected".into()))
    }

    fn pause_producing(&self) {
        self.paused.set(true);
        if let Some(l) = self.lower() {
            l.pause_producing();
        }
    }

    fn resume_producing(&self) {
        if !self.paused.replace(false) {
            return;
        }
        if !self.in_process.get() {
            // Plaintext and ciphertext held back while paused go first.
            self.process(&[]);
        }
        if !self.paused.get() {
            if let Some(l) = self.lower() {
                l.resume_producing();
            }
        }
    }

    fn stop_producing(&self) {
        self.lose_connection();
    }

    fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError> {
        if self.st.borrow().flags.lost {
            return Err(ProducerError::Closed);
        }
        if self.producer.borrow().is_some() {
            return Err(ProducerError::AlreadyRegistered);
        }
        *self.producer.borrow_mut() = Some(producer);
        self.streaming.set(streaming);
        let Some(l) = self.lower() else {
            return Err(ProducerError::Closed);
        };
        let r = l.register_producer(Rc::new(ProducerProxy(self.me.clone())), streaming);
        if r.is_err() {
            self.producer.borrow_mut().take();
        }
        r
    }

    fn unregister_producer(&self) {
        self.producer.borrow_mut().take();
        self.paused_by_early.set(false);
        if let Some(l) = self.lower() {
            l.unregister_producer();
        }
    }

    fn write_buffer_len(&self) -> usize {
        let early = self.st.borrow().early.len();
        early + self.lower().map(|l| l.write_buffer_len()).unwrap_or(0)
    }

    fn is_connected(&self) -> bool {
        !self.st.borrow().flags.lost && self.lower().is_some_and(|l| l.is_connected())
    }

    fn set_tcp_nodelay(&self, on: bool) -> Result<(), NotSupportedError> {
        match self.lower() {
            Some(l) => l.set_tcp_nodelay(on),
            None => Err(self.unsupported("TCP_NODELAY")),
        }
    }

    fn set_tcp_keepalive(&self, on: bool) -> Result<(), NotSupportedError> {
        match self.lower() {
            Some(l) => l.set_tcp_keepalive(on),
            None => Err(self.unsupported("TCP keepalive")),
        }
    }

    fn unix_credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        match self.lower() {
            Some(l) => l.unix_credentials(),
            None => Err(self.unsupported("Unix peer credentials")),
        }
    }

    fn kind(&self) -> &'static str {
        if self.is_tls() {
            "TLS"
        } else {
            "plaintext (TLS not started)"
        }
    }

    fn extension(&self, type_id: TypeId) -> Option<Rc<dyn Any>> {
        if type_id == TypeId::of::<TlsShared>() {
            return self.me.upgrade().map(|s| s as Rc<dyn Any>);
        }
        self.lower().and_then(|l| l.inner().extension(type_id))
    }
}
