//! Framing building blocks: lines, netstrings, length-prefixed strings.
//!
//! Each receiver is a sans-I/O piece a [`crate::Protocol`] embeds: feed it
//! the bytes from `data_received`, and it calls you back with whole frames.
//! None of them touches a transport, so they are driven the same way by a
//! socket, a test, or a fuzzer. Every one enforces a length limit and
//! reports a typed error instead of buffering without bound.
//!
//! The usual composition keeps the receiver and your handler state in
//! separate fields, so both can be borrowed at once:
//!
//! ```
//! use torsion_core::basic::{LineHandler, LineReceiver, Next};
//! use torsion_core::{Protocol, Transport};
//!
//! struct Upper { transport: Option<Transport> }
//! impl LineHandler for Upper {
//!     fn line_received(&mut self, line: &[u8]) -> Next {
//!         if let Some(t) = &self.transport {
//!             t.write(&line.to_ascii_uppercase());
//!             t.write(b"\r\n");
//!         }
//!         Next::Continue
//!     }
//! }
//! struct UpperProtocol { lines: LineReceiver, state: Upper }
//! impl Protocol for UpperProtocol {
//!     fn connection_made(&mut self, t: Transport) { self.state.transport = Some(t) }
//!     fn data_received(&mut self, data: &[u8]) {
//!         if self.lines.feed(data, &mut self.state).is_err() {
//!             // line too long: the documented reaction is to drop the connection
//!             if let Some(t) = &self.state.transport { t.lose_connection() }
//!         }
//!     }
//! }
//! ```

use std::fmt;

/// Twisted's default `MAX_LENGTH` for lines.
pub const DEFAULT_MAX_LINE_LENGTH: usize = 16384;
/// Default limit for netstrings and length-prefixed strings.
pub const DEFAULT_MAX_STRING_LENGTH: usize = 99_999;

/// What a [`LineHandler`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep the current mode.
    Continue,
    /// Switch to line mode (from raw mode).
    Line,
    /// Switch to raw mode: the rest of the buffer, and what follows, goes to `raw_data_received`.
    Raw,
    /// Stop processing; what remains buffered is dropped. `feed` returns [`LineError::Stopped`].
    Stop,
    /// From `raw_data_received`: only the first `n` bytes of this chunk were
    /// raw; switch to line mode and parse the rest as lines (Twisted's
    /// `setLineMode(extra)`), e.g. after an HTTP body of known length.
    LineAfter(usize),
}

/// Why a receiver stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line grew past the limit and the handler chose to stop (the default).
    #[error("line of {length} bytes or more exceeds the maximum of {max}")]
    TooLong {
        /// Bytes in the line so far.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// A handler returned [`Next::Stop`].
    #[error("the line handler stopped processing")]
    Stopped,
}

/// Callbacks of a [`LineReceiver`].
pub trait LineHandler {
    /// A complete line, without its delimiter.
    fn line_received(&mut self, line: &[u8]) -> Next;
    /// Bytes received in raw mode.
    fn raw_data_received(&mut self, data: &[u8]) -> Next {
        let _ = data;
        Next::Continue
    }
    /// A line passed the maximum length. `start` is what was buffered.
    /// Default: [`Next::Stop`], which makes `feed` return [`LineError::TooLong`]
    /// (a protocol then drops the connection). Returning anything else discards
    /// the over-long line up to its delimiter and carries on.
    fn line_length_exceeded(&mut self, start: &[u8]) -> Next {
        let _ = start;
        Next::Stop
    }
}

/// Splits a byte stream into lines, with a raw mode for mixed protocols
/// (HTTP bodies, FTP data) and a maximum line length.
///
/// ```
/// use torsion_core::basic::{LineReceiver, Next};
/// let mut lines = Vec::new();
/// let mut r = LineReceiver::new();
/// r.feed_fn(b"one\r\ntw", |l| { lines.push(l.to_vec()); Next::Continue }).unwrap();
/// r.feed_fn(b"o\r\n", |l| { lines.push(l.to_vec()); Next::Continue }).unwrap();
/// assert_eq!(lines, vec![b"one".to_vec(), b"two".to_vec()]);
/// ```
#[derive(Clone)]
pub struct LineReceiver {
    delimiter: Vec<u8>,
    max_length: usize,
    buf: Vec<u8>,
    raw: bool,
    discarding: bool,
}

impl fmt::Debug for LineReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineReceiver")
            .field("delimiter", &String::from_utf8_lossy(&self.delimiter))
            .field("max_length", &self.max_length)
            .field("buffered", &self.buf.len())
            .field("raw", &self.raw)
            .finish()
    }
}

impl Default for LineReceiver {
    fn default() -> Self {
        Self::new()
    }
}

struct FnHandler<F>(F);
impl<F: FnMut(&[u8]) -> Next> LineHandler for FnHandler<F> {
    fn line_received(&mut self, line: &[u8]) -> Next {
        (self.0)(line)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return hay.iter().position(|&b| b == needle[0]);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl LineReceiver {
    /// `\r\n`-delimited lines of at most 16384 bytes.
    pub fn new() -> Self {
        LineReceiver {
            delimiter: b"\r\n".to_vec(),
            max_length: DEFAULT_MAX_LINE_LENGTH,
            buf: Vec::new(),
            raw: false,
            discarding: false,
        }
    }

    /// Sets the delimiter (must not be empty; an empty one is ignored).
    pub fn with_delimiter(mut self, delimiter: &[u8]) -> Self {
        if !delimiter.is_empty() {
            self.delimiter = delimiter.to_vec();
        }
        self
    }

    /// Sets the maximum line length (Twisted's `MAX_LENGTH`).
    pub fn with_max_length(mut self, max: usize) -> Self {
        self.max_length = max;
        self
    }

    /// The delimiter.
    pub fn delimiter(&self) -> &[u8] {
        &self.delimiter
    }

    /// The maximum line length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// True in raw mode.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Switches to raw mode from outside a callback (what is buffered is
    /// delivered raw on the next `feed`).
    pub fn set_raw_mode(&mut self) {
        self.raw = true;
    }

    /// Switches back to line mode from outside a callback.
    pub fn set_line_mode(&mut self) {
        self.raw = false;
    }

    /// Bytes buffered (part of a line).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes what is buffered (e.g. when handing the stream to another protocol).
    pub fn clear_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Feeds bytes with a closure for lines (no raw mode).
    pub fn feed_fn(&mut self, data: &[u8], f: impl FnMut(&[u8]) -> Next) -> Result<(), LineError> {
        self.feed(data, &mut FnHandler(f))
    }

    /// Feeds bytes; calls `handler` for each line (or raw chunk).
    pub fn feed<H: LineHandler + ?Sized>(
        &mut self,
        data: &[u8],
        handler: &mut H,
    ) -> Result<(), LineError> {
        // Fast path: nothing buffered, so lines can be handed out straight
        // from `data` without copying.
        let pending = std::mem::take(&mut self.buf);
        let owned;
        let input: &[u8] = if pending.is_empty() {
            data
        } else {
            let mut p = pending;
            p.extend_from_slice(data);
            owned = p;
            &owned
        };
        let mut pos = 0;
        let dl = self.delimiter.len();
        while pos < input.len() {
            if self.raw {
                let rest = &input[pos..];
                match handler.raw_data_received(rest) {
                    Next::Continue | Next::Raw => pos = input.len(),
                    Next::Line => {
                        pos = input.len();
                        self.raw = false;
                    }
                    Next::LineAfter(n) => {
                        pos += n.min(rest.len());
                        self.raw = false;
                    }
                    Next::Stop => return Err(LineError::Stopped),
                }
                continue;
            }
            let rest = &input[pos..];
            match find(rest, &self.delimiter) {
                Some(i) => {
                    pos += i + dl;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    let line = &rest[..i];
                    let next = if line.len() > self.max_length {
                        handler.line_length_exceeded(line)
                    } else {
                        handler.line_received(line)
                    };
                    match next {
                        Next::Continue | Next::Line | Next::LineAfter(_) => {}
                        Next::Raw => self.raw = true,
                        Next::Stop => {
                            return Err(if line.len() > self.max_length {
                                LineError::TooLong {
                                    length: line.len(),
                                    max: self.max_length,
                                }
                            } else {
                                LineError::Stopped
                            });
                        }
                    }
                }
                None => {
                    if self.discarding {
                        // Keep a possible partial delimiter only.
                        let keep = rest.len().min(dl.saturating_sub(1));
                        self.buf = rest[rest.len() - keep..].to_vec();
                        return Ok(());
                    }
                    // A partial delimiter at the end does not count toward the line.
                    if rest.len() > self.max_length + dl.saturating_sub(1) {
                        match handler.line_length_exceeded(rest) {
                            Next::Stop => {
                                return Err(LineError::TooLong {
                                    length: rest.len(),
                                    max: self.max_length,
                                })
                            }
                            Next::Raw => {
                                self.raw = true;
                                continue;
                            }
                            _ => {
                                self.discarding = true;
                                let keep = rest.len().min(dl.saturating_sub(1));
                                self.buf = rest[rest.len() - keep..].to_vec();
                                return Ok(());
                            }
                        }
                    }
                    self.buf = rest.to_vec();
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Frames `line` for sending: the line plus the delimiter.
    pub fn frame(&self, line: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(line.len() + self.delimiter.len());
        v.extend_from_slice(line);
        v.extend_from_slice(&self.delimiter);
        v
    }
}

/// A line splitter without raw mode: Twisted's `LineOnlyReceiver`.
///
/// ```
/// use torsion_core::basic::LineOnlyReceiver;
/// let mut r = LineOnlyReceiver::new(b"\n", 100);
/// let mut got = Vec::new();
/// r.feed(b"a\nb\n", |l| got.push(l.to_vec())).unwrap();
/// assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
/// ```
#[derive(Debug, Clone)]
pub struct LineOnlyReceiver {
    inner: LineReceiver,
}

impl LineOnlyReceiver {
    /// Lines ending with `delimiter`, at most `max_length` bytes.
    pub fn new(delimiter: &[u8], max_length: usize) -> Self {
        LineOnlyReceiver {
            inner: LineReceiver::new()
                .with_delimiter(delimiter)
                .with_max_length(max_length),
        }
    }

    /// Feeds bytes; `on_line` gets each line. An over-long line gives [`LineError::TooLong`].
    pub fn feed(&mut self, data: &[u8], mut on_line: impl FnMut(&[u8])) -> Result<(), LineError> {
        self.inner.feed_fn(data, |l| {
            on_line(l);
            Next::Continue
        })
    }
}

/// Errors of netstring and length-prefixed receivers. After an error the
/// receiver stays failed: the stream cannot be re-synchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A netstring length with a byte that is not a decimal digit.
    #[error("malformed netstring length: unexpected byte 0x{0:02x}")]
    BadLength(u8),
    /// A netstring length with a leading zero (forbidden by the spec).
    #[error("malformed netstring length: leading zero")]
    LeadingZero,
    /// The netstring did not end with a comma.
    #[error("netstring not terminated by ',' (got 0x{0:02x})")]
    MissingComma(u8),
    /// The announced length is over the limit.
    #[error("string of {length} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Announced length (for netstrings: at least this).
        length: u64,
        /// The limit.
        max: usize,
    },
    /// The receiver failed before and refuses further input.
    #[error("the receiver failed earlier; the connection should be dropped")]
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NsState {
    Length,
    Data,
    Comma,
    Failed,
}

/// Decodes netstrings (`5:hello,`) with a length limit.
///
/// ```
/// use torsion_core::basic::NetstringReceiver;
/// let mut r = NetstringReceiver::new(1000);
/// let mut got = Vec::new();
/// r.feed(b"5:hello,0:,", |s| got.push(s.to_vec())).unwrap();
/// assert_eq!(got, vec![b"hello".to_vec(), b"".to_vec()]);
/// assert!(r.feed(b"x", |_| {}).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct NetstringReceiver {
    max: usize,
    state: NsState,
    len: u64,
    digits: usize,
    buf: Vec<u8>,
}

impl NetstringReceiver {
    /// A receiver refusing strings longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        NetstringReceiver {
            max,
            state: NsState::Length,
            len: 0,
            digits: 0,
            buf: Vec::new(),
        }
    }

    /// Encodes one netstring.
    pub fn encode(data: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", data.len()).into_bytes();
        v.extend_from_slice(data);
        v.push(b',');
        v
    }

    fn fail(&mut self, e: FramingError) -> Result<(), FramingError> {
        self.state = NsState::Failed;
        self.buf = Vec::new();
        Err(e)
    }

    /// Feeds bytes; `on_string` gets each complete string.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_string: impl FnMut(&[u8]),
    ) -> Result<(), FramingError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                NsState::Failed => return Err(FramingError::Failed),
                NsState::Length => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' => {
                            if self.digits == 1 && self.len == 0 {
                                return self.fail(FramingError::LeadingZero);
                            }
                            self.len = self.len * 10 + u64::from(b - b'0');
                            self.digits += 1;
                            if self.len > self.max as u64 {
                                let length = self.len;
                                return self.fail(FramingError::TooLong {
                                    length,
                                    max: self.max,
                                });
                            }
                        }
                        b':' if self.digits > 0 => {
                            self.state = NsState::Data;
                            self.buf.clear();
                            if self.len == 0 {
                                self.state = NsState::Comma;
                            }
                        }
                        other => return self.fail(FramingError::BadLength(other)),
                    }
                }
                NsState::Data => {
                    let want = self.len as usize - self.buf.len();
                    let take = want.min(data.len() - i);
                    if self.buf.is_empty()
                        && take == want
                        && i + take < data.len()
                        && data[i + take] == b','
                    {
                        // Whole string in this chunk: hand it out without copying.
                        on_string(&data[i..i + take]);
                        i += take + 1;
                        self.reset();
                        continue;
                    }
                    self.buf.extend_from_slice(&data[i..i + take]);
                    i += take;
                    if self.buf.len() == self.len as usize {
                        self.state = NsState::Comma;
                    }
                }
                NsState::Comma => {
                    let b = data[i];
                    i += 1;
                    if b != b',' {
                        return self.fail(FramingError::MissingComma(b));
                    }
                    let s = std::mem::take(&mut self.buf);
                    on_string(&s);
                    self.buf = s;
                    self.reset();
                }
            }
        }
        if self.state == NsState::Failed {
            return Err(FramingError::Failed);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.state = NsState::Length;
        self.len = 0;
        self.digits = 0;
        self.buf.clear();
    }
}

/// Width of a length prefix (big-endian, as Twisted's `Int8/16/32StringReceiver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixWidth {
    /// One byte.
    U8,
    /// Two bytes.
    U16,
    /// Four bytes.
    U32,
}

impl PrefixWidth {
    fn bytes(self) -> usize {
        match self {
            PrefixWidth::U8 => 1,
            PrefixWidth::U16 => 2,
            PrefixWidth::U32 => 4,
        }
    }
    fn max_value(self) -> u64 {
        match self {
            PrefixWidth::U8 => u8::MAX as u64,
            PrefixWidth::U16 => u16::MAX as u64,
            PrefixWidth::U32 => u32::MAX as u64,
        }
    }
}

/// Decodes length-prefixed strings with a limit.
///
/// ```
/// use torsion_core::basic::{PrefixedReceiver, PrefixWidth};
/// let mut r = PrefixedReceiver::new(PrefixWidth::U16, 100);
/// let frame = PrefixedReceiver::encode(PrefixWidth::U16, b"hi").unwrap();
/// assert_eq!(frame, b"\x00\x02hi");
/// let mut got = Vec::new();
/// r.feed(&frame, |s| got.push(s.to_vec())).unwrap();
/// assert_eq!(got, vec![b"hi".to_vec()]);
/// ```
#[derive(Debug, Clone)]
pub struct PrefixedReceiver {
    width: PrefixWidth,
    max: usize,
    buf: Vec<u8>,
    failed: bool,
}

impl PrefixedReceiver {
    /// A receiver for `width` prefixes refusing strings over `max` bytes.
    pub fn new(width: PrefixWidth, max: usize) -> Self {
        PrefixedReceiver {
            width,
            max,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// Encodes one string; too long for the prefix gives [`FramingError::TooLong`].
    pub fn encode(width: PrefixWidth, data: &[u8]) -> Result<Vec<u8>, FramingError> {
        if data.len() as u64 > width.max_value() {
            return Err(FramingError::TooLong {
                length: data.len() as u64,
                max: width.max_value() as usize,
            });
        }
        let mut v = Vec::with_capacity(width.bytes() + data.len());
        let n = data.len() as u32;
        match width {
            PrefixWidth::U8 => v.push(n as u8),
            PrefixWidth::U16 => v.extend_from_slice(&(n as u16).to_be_bytes()),
            PrefixWidth::U32 => v.extend_from_slice(&n.to_be_bytes()),
        }
        v.extend_from_slice(data);
        Ok(v)
    }

    fn prefix(&self, b: &[u8]) -> u64 {
        b[..self.width.bytes()]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    }

    /// Feeds bytes; `on_string` gets each complete string.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_string: impl FnMut(&[u8]),
    ) -> Result<(), FramingError> {
        if self.failed {
            return Err(FramingError::Failed);
        }
        let w = self.width.bytes();
        let pending = std::mem::take(&mut self.buf);
        let owned;
        let input: &[u8] = if pending.is_empty() {
            data
        } else {
            let mut p = pending;
            p.extend_from_slice(data);
            owned = p;
            &owned
        };
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if rest.len() < w {
                self.buf = rest.to_vec();
                return Ok(());
            }
            let len = self.prefix(rest);
            if len > self.max as u64 {
                self.failed = true;
                return Err(FramingError::TooLong {
                    length: len,
                    max: self.max,
                });
            }
            let len = len as usize;
            if rest.len() < w + len {
                self.buf = rest.to_vec();
                return Ok(());
            }
            on_string(&rest[w..w + len]);
            pos += w + len;
        }
    }
}
