//! A client factory that reconnects with exponential backoff and jitter.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::address::Address;
use crate::connector::Connector;
use crate::failure::Failure;
use crate::protocol::{ClientFactory, Factory, Protocol};
use crate::time::{Clock, DelayedCall};

/// Reconnects after a lost or failed connection, waiting longer each time.
///
/// Defaults follow Twisted: first delay 1 s, factor *e*, at most 3600 s,
/// jitter ±11.96 %. A successful connection resets the delay.
///
/// ```
/// use std::rc::Rc;
/// use torsion_core::{testing, ReconnectingClientFactory, Protocol};
/// struct Quiet;
/// impl Protocol for Quiet { fn data_received(&mut self, _: &[u8]) {} }
/// let clock = Rc::new(testing::Clock::new());
/// let f = ReconnectingClientFactory::new(clock, || Quiet);
/// assert_eq!(f.delay(), std::time::Duration::from_secs(1));
/// ```
pub struct ReconnectingClientFactory<F> {
    build: F,
    clock: Rc<dyn Clock>,
    /// First delay.
    pub initial_delay: Cell<Duration>,
    /// Longest delay.
    pub max_delay: Cell<Duration>,
    /// Growth factor per retry.
    pub factor: Cell<f64>,
    /// Relative jitter (0.0 for none).
    pub jitter: Cell<f64>,
    /// Give up after this many retries (`None`: never).
    pub max_retries: Cell<Option<u32>>,
    delay: Cell<Duration>,
    retries: Cell<u32>,
    continue_trying: Cell<bool>,
    pending: RefCell<Option<DelayedCall>>,
    connector: RefCell<Option<Connector>>,
    rng: Cell<u64>,
    me: std::rc::Weak<Self>,
}

impl<F, P> ReconnectingClientFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    /// A factory building protocols with `build`, scheduling retries on `clock`.
    pub fn new(clock: Rc<dyn Clock>, build: F) -> Rc<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Rc::new_cyclic(|me| ReconnectingClientFactory {
            build,
            clock,
            initial_delay: Cell::new(Duration::from_secs(1)),
            max_delay: Cell::new(Duration::from_secs(3600)),
            factor: Cell::new(std::f64::consts::E),
            jitter: Cell::new(0.119_626_564_72),
            max_retries: Cell::new(None),
            delay: Cell::new(Duration::from_secs(1)),
            retries: Cell::new(0),
            continue_trying: Cell::new(true),
            pending: RefCell::new(None),
            connector: RefCell::new(None),
            rng: Cell::new(seed),
            me: me.clone(),
        })
    }

    /// The delay the next retry will use (before jitter).
    pub fn delay(&self) -> Duration {
        self.delay.get()
    }

    /// Retries made since the last successful connection.
    pub fn retries(&self) -> u32 {
        self.retries.get()
    }

    /// Back to the initial delay (done automatically on a successful connection).
    pub fn reset_delay(&self) {
        self.delay.set(self.initial_delay.get());
        self.retries.set(0);
    }

    /// Stops reconnecting, and cancels a scheduled retry or an attempt under way.
    pub fn stop_trying(&self) {
        self.continue_trying.set(false);
        if let Some(c) = self.pending.borrow_mut().take() {
            let _ = c.cancel();
        }
        if let Some(c) = self.connector.borrow().as_ref() {
            c.stop_connecting();
        }
    }

    fn next_random(&self) -> f64 {
        // xorshift64*: jitter needs spread, not cryptographic quality.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn retry(&self, connector: &Connector) {
        if !self.continue_trying.get() {
            return;
        }
        let n = self.retries.get() + 1;
        self.retries.set(n);
        if self.max_retries.get().is_some_and(|m| n > m) {
            tracing::info!(destination = %connector.destination(), "giving up after {} retries", n - 1);
            return;
        }
        let grown = (self.delay.get().as_secs_f64() * self.factor.get())
            .min(self.max_delay.get().as_secs_f64());
        let max = self.max_delay.get();
        self.delay
            .set(Duration::try_from_secs_f64(grown).map_or(max, |d| d.min(max)));
        let j = self.jitter.get();
        let jittered = if j > 0.0 {
            grown * (1.0 + j * (2.0 * self.next_random() - 1.0))
        } else {
            grown
        };
        // Jitter spreads clients out, but never past the promised maximum.
        let wait = Duration::try_from_secs_f64(jittered.max(0.0)).map_or(max, |d| d.min(max));
        tracing::info!(destination = %connector.destination(), ?wait, "will retry");
        let c = connector.clone();
        let me = self.me.clone();
        let call = self.clock.call_later(
            wait,
            Box::new(move || {
                if let Some(me) = me.upgrade() {
                    me.pending.borrow_mut().take();
                    if me.continue_trying.get() {
                        c.connect();
                    }
                }
            }),
        );
        *self.pending.borrow_mut() = Some(call);
    }
}

impl<F, P> Factory for ReconnectingClientFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        self.reset_delay();
        Some(Box::new((self.build)()))
    }
}

impl<F, P> ClientFactory for ReconnectingClientFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    fn started_connecting(&self, connector: &Connector) {
        *self.connector.borrow_mut() = Some(connector.clone());
    }
    fn client_connection_failed(&self, connector: &Connector, reason: Failure) {
        tracing::info!(destination = %connector.destination(), %reason, "connection failed");
        self.retry(connector);
    }
    fn client_connection_lost(&self, connector: &Connector, reason: Failure) {
        tracing::info!(destination = %connector.destination(), %reason, "connection lost");
        self.retry(connector);
    }
}
