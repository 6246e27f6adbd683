//! The request-head parser: RFC 9112's request line and field lines,
//! strictly, in one pass.
//!
//! Strict means the request-smuggling defences are part of the grammar
//! rather than checks run afterwards: every line ends in CRLF (a bare LF or
//! a bare CR is an error), a field line may not start with whitespace
//! (obsolete line folding), and nothing may stand between a field name and
//! its colon. Method and field names are RFC 9110 tokens; field values take
//! exactly the bytes the `http` crate's `HeaderValue` accepts (so building
//! one later cannot fail), and the target any visible byte, as UTF-8. Limits are checked while scanning, so an oversized
//! head is refused as soon as it passes the limit.
//!
//! Request targets, field names and field values are scanned sixteen
//! bytes at a time with SSE2 on x86-64 (every x86-64 processor has it):
//! one compare per class of byte and a mask give the first byte that ends
//! the run. Names take the fast way for letters, digits and `-` and fall
//! back to a table for the rarer token bytes. Elsewhere, and in the last
//! bytes of the input, runs go eight bytes at a time (SWAR).
//!
//! ```
//! use torsion_http::parse::{parse_request_head, HeadLimits};
//!
//! let buf = b"GET /index.html HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\nrest";
//! let mut fields = Vec::new();
//! let head = parse_request_head(buf, &HeadLimits::default(), |n, v| fields.push((n, v)))
//!     .unwrap()
//!     .expect("complete");
//! assert_eq!(&buf[head.method.clone()], b"GET");
//! assert_eq!(&buf[head.target.clone()], b"/index.html");
//! assert_eq!(head.minor_version, 1);
//! assert_eq!(head.len, buf.len() - 4);
//! assert_eq!(fields, [(&b"Host"[..], &b"example.org"[..]), (b"Accept", b"*/*")]);
//! ```

use std::ops::Range;

use http::StatusCode;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes in the whole head (request line, fields, empty line).
    pub max_head: usize,
    /// Most bytes in the request line, CR included.
    pub max_request_line: usize,
    /// Most field lines.
    pub max_fields: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head: 16 * 1024,
            max_request_line: 8 * 1024,
            max_fields: 100,
        }
    }
}

/// Where the parts of a complete head are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHead {
    /// Bytes of the head, through the CRLF of the empty line that ends it
    /// (empty lines before the request line included).
    pub len: usize,
    /// The method (the request line starts here).
    pub method: Range<usize>,
    /// The request target.
    pub target: Range<usize>,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    /// Where the first field line starts (the empty line, without fields).
    pub fields_start: usize,
    /// Number of field lines.
    pub field_count: usize,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The request line is longer than [`HeadLimits::max_request_line`].
    RequestLineTooLong,
    /// The head is longer than [`HeadLimits::max_head`] (or a field name
    /// longer than 65535 bytes).
    TooLarge,
    /// More field lines than [`HeadLimits::max_fields`].
    TooManyFields,
    /// A well-formed version other than HTTP/1.0 and HTTP/1.1.
    Version,
    /// The method is not a token.
    Method,
    /// The target holds a byte no URI may hold, or is not UTF-8.
    Target,
    /// The request line is not `method SP target SP HTTP/x.y CRLF`.
    RequestLine,
    /// A field name is empty, not a token, or followed by whitespace before its colon.
    FieldName,
    /// A field value holds a control byte.
    FieldValue,
    /// A field line starts with whitespace (obsolete line folding).
    ObsFold,
    /// A line ends in a bare LF, or a CR is not followed by LF.
    LineEnding,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HeadError {}

impl HeadError {
    /// What was wrong, for logs.
    pub fn reason(self) -> &'static str {
        match self {
            HeadError::RequestLineTooLong => "request line too long",
            HeadError::TooLarge => "header block too large",
            HeadError::TooManyFields => "too many header fields",
            HeadError::Version => "unsupported HTTP version",
            HeadError::Method => "invalid method",
            HeadError::Target => "invalid request target",
            HeadError::RequestLine => "malformed request line",
            HeadError::FieldName => "invalid header name",
            HeadError::FieldValue => "invalid header value",
            HeadError::ObsFold => "obsolete line folding",
            HeadError::LineEnding => "bare CR or LF in head",
        }
    }

    /// The status a server answers with.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::RequestLineTooLong => StatusCode::URI_TOO_LONG,
            HeadError::TooLarge | HeadError::TooManyFields => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A byte table: true for ASCII letters and digits and for the bytes in `extra`.
pub(crate) const fn alnum_and(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// RFC 9110 `tchar`.
static TOKEN: [bool; 256] = alnum_and(b"!#$%&'*+-.^_`|~");

/// True for a byte that is a token character.
pub fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Index of the first byte of the little-endian word `w` that is below
/// `n` (`n` ≤ 0x80) or equal to 0x7F, or 8. Bytes from 0x80 up are never
/// flagged. Borrows in the subtraction can flag bytes after the first real
/// hit, never before it, so the lowest flag is exact.
#[inline(always)]
fn first_stop(w: u64, n: u8) -> usize {
    let below = w.wrapping_sub(ONES * n as u64) & !w;
    let x = w ^ (ONES * 0x7F);
    let del = x.wrapping_sub(ONES) & !x;
    ((below | del) & HIGHS).trailing_zeros() as usize / 8
}

/// Sixteen bytes at a time with SSE2, which every x86-64 processor has.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod simd {
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// The 16 bytes at `i`, when `buf` holds them.
    #[inline(always)]
    pub(super) fn load(buf: &[u8], i: usize) -> Option<__m128i> {
        let chunk = buf.get(i..i + 16)?;
        // SAFETY: `chunk` is 16 readable bytes, and an unaligned load
        // reads exactly those.
        Some(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) })
    }

    /// Bit `k` set when byte `k` lies in `lo..=hi` (both below 0x80).
    #[inline(always)]
    fn in_range(v: __m128i, lo: u8, hi: u8) -> __m128i {
        // Signed compares: bytes from 0x80 up are negative, in no range.
        // SAFETY (this and the blocks below): register-only SSE2
        // instructions, which the cfg above guarantees the target has.
        unsafe {
            _mm_and_si128(
                _mm_cmpgt_epi8(v, _mm_set1_epi8(lo as i8 - 1)),
                _mm_cmplt_epi8(v, _mm_set1_epi8(hi as i8 + 1)),
            )
        }
    }

    /// Bit `k` set when byte `k` is below `n` (0 < `n` < 0x80) or 0x7F;
    /// bytes from 0x80 up never.
    #[inline(always)]
    pub(super) fn stops(v: __m128i, n: u8) -> u32 {
        let below = in_range(v, 0, n - 1);
        unsafe {
            let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7F));
            _mm_movemask_epi8(_mm_or_si128(below, del)) as u32
        }
    }

    /// Bit `k` set when byte `k` is not a letter, a digit or `-`: the
    /// token bytes field names are made of, all but always.
    #[inline(always)]
    pub(super) fn not_name(v: __m128i) -> u32 {
        // Setting bit 5 folds upper case onto lower; it maps no other
        // byte into a-z. Digits and `-` are tested on the byte itself.
        let folded = unsafe { _mm_or_si128(v, _mm_set1_epi8(0x20)) };
        let alpha = in_range(folded, b'a', b'z');
        let digit = in_range(v, b'0', b'9');
        unsafe {
            let dash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8));
            let name = _mm_or_si128(_mm_or_si128(alpha, digit), dash);
            !(_mm_movemask_epi8(name) as u32) & 0xFFFF
        }
    }

    /// For a request target: bits of the bytes outside
    /// [`PLAIN_TARGET`](super::PLAIN_TARGET), of the `?`s and of the `%`s.
    #[inline(always)]
    pub(super) fn target_classes(v: __m128i) -> (u32, u32, u32) {
        let eq = |b: u8| unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)) };
        // `!`, `$`..`;`, `=`, `?`..`Z`, `_`, `a`..`z`, `~`.
        let plain = unsafe {
            _mm_or_si128(
                _mm_or_si128(
                    _mm_or_si128(in_range(v, b'$', b';'), in_range(v, b'?', b'Z')),
                    _mm_or_si128(in_range(v, b'a', b'z'), eq(b'!')),
                ),
                _mm_or_si128(_mm_or_si128(eq(b'='), eq(b'_')), eq(b'~')),
            )
        };
        unsafe {
            (
                !(_mm_movemask_epi8(plain) as u32) & 0xFFFF,
                _mm_movemask_epi8(eq(b'?')) as u32,
                _mm_movemask_epi8(eq(b'%')) as u32,
            )
        }
    }
}

/// Bytes an origin-form target may hold for its `Uri` to be built later
/// instead of now: RFC 3986's `pchar`, `/` and `?` (all of which the `http`
/// crate accepts, so the lazy build cannot fail).
pub(crate) static PLAIN_TARGET: [bool; 256] = alnum_and(b"-._~!$&'()*+,;=:@%/?");

/// What the target `buf[t0..t1]` is made of: `None` when it holds a byte
/// outside [`PLAIN_TARGET`]; otherwise where its first `?` is (counted
/// from `t0`; its length when it has none) and whether it holds a `%`.
/// Sixteen bytes at a time where `buf` holds them (a target is followed by
/// the rest of its head), then byte by byte.
pub(crate) fn plain_target(buf: &[u8], t0: usize, t1: usize) -> Option<(usize, bool)> {
    let mut i = t0;
    let mut query = None;
    let mut pct = false;
    // (A target of a few bytes, as `/`, is quicker byte by byte.)
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while i < t1 && t1 - t0 > 4 {
        let Some(v) = simd::load(buf, i) else { break };
        // Only the bytes up to `t1` count.
        let keep = if t1 - i >= 16 {
            0xFFFF
        } else {
            (1u32 << (t1 - i)) - 1
        };
        let (other, q, p) = simd::target_classes(v);
        if other & keep != 0 {
            return None;
        }
        if query.is_none() && q & keep != 0 {
            query = Some(i - t0 + (q & keep).trailing_zeros() as usize);
        }
        pct |= p & keep != 0;
        i += 16;
    }
    for (k, &b) in buf.get(i..t1).unwrap_or_default().iter().enumerate() {
        if !PLAIN_TARGET[b as usize] {
            return None;
        }
        if b == b'?' && query.is_none() {
            query = Some(i - t0 + k);
        }
        pct |= b == b'%';
    }
    Some((query.unwrap_or(t1 - t0), pct))
}

/// Skips bytes in `buf[i..end]` that are ≥ `n` (and not 0x7F); returns
/// the index of the first byte that is not, or `end`.
#[inline(always)]
fn skip_run(buf: &[u8], mut i: usize, end: usize, n: u8) -> usize {
    // Sixteen bytes at a time, read from all of `buf` (past `end` when it
    // holds more, as a pipelined batch does): a stop at or past `end`
    // means `end`.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while i < end {
        let Some(v) = simd::load(buf, i) else { break };
        let m = simd::stops(v, n);
        if m != 0 {
            return (i + m.trailing_zeros() as usize).min(end);
        }
        i += 16;
    }
    if i >= end {
        return end;
    }
    // Eight at a time (SWAR) near the end of `buf`, or elsewhere.
    let b = &buf[..end];
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let k = first_stop(u64::from_le_bytes(word), n);
        if k < 8 {
            return i + k;
        }
        i += 8;
    }
    // The last few bytes, padded with zeros, which stop a run: the first
    // stop is a real byte or the end.
    let rest = b.get(i..).unwrap_or_default();
    let mut word = [0u8; 8];
    word[..rest.len()].copy_from_slice(rest);
    i + first_stop(u64::from_le_bytes(word), n).min(rest.len())
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(Some(head))` for a complete head, `Ok(None)` when the bytes so far
/// are a valid beginning of one (read more), `Err` as soon as they cannot
/// be. `field` is called with each field's name and value (the value
/// without leading and trailing whitespace) in order; on an error or an
/// incomplete head some calls may already have been made.
pub fn parse_request_head<'a>(
    buf: &'a [u8],
    limits: &HeadLimits,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Option<ParsedHead>, HeadError> {
    // Past `max_head` nothing can complete: parse what fits, and a head
    // still incomplete there is too large.
    let end = buf.len().min(limits.max_head);
    let too_long = buf.len() >= limits.max_head;
    let partial = |e: Option<HeadError>| match e {
        Some(e) => Err(e),
        None if too_long => Err(HeadError::TooLarge),
        None => Ok(None),
    };
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    let mut i = 0;
    while i < end && buf[i] == b'\r' {
        if i + 1 == end {
            return partial(None);
        }
        if buf[i + 1] != b'\n' {
            return Err(HeadError::LineEnding);
        }
        i += 2;
    }
    let m0 = i;
    // The request line's LF may not lie further than this from its start.
    let line_max = limits.max_request_line;
    let past_line = |i: usize| (i - m0 > line_max).then_some(HeadError::RequestLineTooLong);

    // method ("GET " and "POST " in one comparison each)
    i = match buf.get(m0..m0 + 5) {
        Some([b'G', b'E', b'T', b' ', _]) => m0 + 3,
        Some(b"POST ") => m0 + 4,
        _ => skip_token(buf, i, end),
    };
    if i == end {
        return partial(past_line(i));
    }
    if buf[i] != b' ' || i == m0 {
        return Err(HeadError::Method);
    }
    let method = m0..i;
    i += 1;

    // target: everything up to the next SP that a URI may hold
    let t0 = i;
    i = skip_run(buf, i, end, 0x21);
    if i == end {
        return partial(past_line(i));
    }
    if buf[i] != b' ' || i == t0 {
        if let Some(e) = past_line(i) {
            return Err(e);
        }
        return Err(if i == t0 {
            HeadError::RequestLine
        } else {
            HeadError::Target
        });
    }
    let target = t0..i;
    // Non-ASCII bytes must at least be UTF-8 (RFC 3986 wants them
    // percent-encoded; clients that send them raw send UTF-8).
    let t = &buf[target.clone()];
    if !t.is_ascii() && std::str::from_utf8(t).is_err() {
        return Err(HeadError::Target);
    }
    i += 1;

    // version and the line's CRLF: "HTTP/d.d\r\n"
    const VERSION: &[u8] = b"HTTP/1.1\r\n";
    let minor_version = match word_at(buf, i, end) {
        // What every client sends, compared as one word and the CRLF.
        Some(w) if buf.get(i + 8..i + 10) == Some(b"\r\n") && i + 9 - m0 <= line_max => {
            if w == u64::from_le_bytes(*b"HTTP/1.1") {
                Some(1)
            } else if w == u64::from_le_bytes(*b"HTTP/1.0") {
                Some(0)
            } else {
                None
            }
        }
        _ => None,
    };
    if let Some(minor_version) = minor_version.filter(|_| i + VERSION.len() <= end) {
        i += VERSION.len();
        return parse_fields(buf, i, end, too_long, limits, field).map(|f| {
            f.map(|(len, fields_start, field_count)| ParsedHead {
                len,
                method,
                target,
                minor_version,
                fields_start,
                field_count,
            })
        });
    }
    let avail = (end - i).min(VERSION.len());
    let got = &buf[i..i + avail];
    let well_formed = |k: usize, b: u8| match k {
        5 | 7 => b.is_ascii_digit(),
        8 => b == b'\r',
        9 => b == b'\n',
        _ => b == VERSION[k],
    };
    if let Some(k) = got
        .iter()
        .enumerate()
        .position(|(k, &b)| !well_formed(k, b))
    {
        if let Some(e) = past_line(i + k) {
            return Err(e);
        }
        // A CR not followed by LF, or an LF without its CR.
        if (k == 9 && got[8] == b'\r') || (k == 8 && got[k] == b'\n') {
            return Err(HeadError::LineEnding);
        }
        return Err(HeadError::RequestLine);
    }
    // Known as soon as the digits are in, whatever follows.
    if got.get(5).is_some_and(|&major| major != b'1') {
        return Err(HeadError::Version);
    }
    let minor_version = match got.get(7) {
        Some(b'0') => 0,
        Some(b'1') | None => 1,
        Some(_) => return Err(HeadError::Version),
    };
    if avail < VERSION.len() {
        return partial(past_line(i + avail));
    }
    if let Some(e) = past_line(i + 9) {
        return Err(e);
    }
    i += VERSION.len();
    parse_fields(buf, i, end, too_long, limits, field).map(|f| {
        f.map(|(len, fields_start, field_count)| ParsedHead {
            len,
            method,
            target,
            minor_version,
            fields_start,
            field_count,
        })
    })
}

/// The eight bytes at `i` as a little-endian word, if they lie before `end`.
#[inline(always)]
fn word_at(buf: &[u8], i: usize, end: usize) -> Option<u64> {
    if i + 8 > end {
        return None;
    }
    let bytes: [u8; 8] = buf.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Skips token bytes in `buf[i..end]`; returns the index of the first
/// other byte, or `end`.
#[inline(always)]
fn skip_token(buf: &[u8], mut i: usize, end: usize) -> usize {
    // Letters, digits and `-` sixteen at a time; the byte that ends the
    // run may still be another token byte (`_`, `.`, ...): the table
    // goes on from there.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while i < end {
        let Some(v) = simd::load(buf, i) else { break };
        let m = simd::not_name(v);
        if m != 0 {
            i += m.trailing_zeros() as usize;
            // The usual end of a field name: no table look-up for it.
            if i < end && buf[i] == b':' {
                return i;
            }
            break;
        }
        i += 16;
    }
    let s = &buf[..end];
    i = i.min(end);
    while i < s.len() && TOKEN[s[i] as usize] {
        i += 1;
    }
    i
}

/// The field lines from `i` and the empty line after them: the head's
/// length, where the fields start, how many there are.
#[inline(always)]
fn parse_fields<'a>(
    buf: &'a [u8],
    mut i: usize,
    end: usize,
    too_long: bool,
    limits: &HeadLimits,
    mut field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<Option<(usize, usize, usize)>, HeadError> {
    let partial = || {
        if too_long {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        }
    };
    let fields_start = i;
    let mut field_count = 0;
    loop {
        if i == end {
            return partial();
        }
        // (Compares, not a `match`: a jump table is one more piece of
        // memory to miss in the cache, and a name's first byte, above
        // space, is by far the likeliest.)
        let c = buf[i];
        if c == b'\r' {
            if i + 1 == end {
                return partial();
            }
            if buf[i + 1] != b'\n' {
                return Err(HeadError::LineEnding);
            }
            return Ok(Some((i + 2, fields_start, field_count)));
        }
        if c <= b' ' {
            return Err(match c {
                b' ' | b'\t' => HeadError::ObsFold,
                b'\n' => HeadError::LineEnding,
                // (No name starts with a control byte.)
                _ => HeadError::FieldName,
            });
        }
        // name
        let n0 = i;
        i = skip_token(buf, i, end);
        if i == end {
            return partial();
        }
        if buf[i] != b':' || i == n0 {
            return Err(HeadError::FieldName);
        }
        if i - n0 > u16::MAX as usize {
            return Err(HeadError::TooLarge);
        }
        let name = &buf[n0..i];
        i += 1;
        // leading whitespace (usually one space)
        if i < end && buf[i] == b' ' {
            i += 1;
        }
        while i < end && (buf[i] == b' ' || buf[i] == b'\t') {
            i += 1;
        }
        // value: up to the CR, tabs allowed, no other control byte
        let v0 = i;
        loop {
            i = skip_run(buf, i, end, 0x20);
            if i == end {
                return partial();
            }
            match buf[i] {
                b'\r' => break,
                b'\t' => i += 1,
                b'\n' => return Err(HeadError::LineEnding),
                _ => return Err(HeadError::FieldValue),
            }
        }
        if i + 1 == end {
            return partial();
        }
        if buf[i + 1] != b'\n' {
            return Err(HeadError::LineEnding);
        }
        // Trailing whitespace off. (A value's bytes were checked above: at
        // or below space there are only space and tab, so one compare.)
        let mut v1 = i;
        while v1 > v0 && buf[v1 - 1] <= b' ' {
            v1 -= 1;
        }
        field_count += 1;
        if field_count > limits.max_fields {
            return Err(HeadError::TooManyFields);
        }
        field(name, &buf[v0..v1]);
        i += 2;
    }
}

#[cfg(test)]
mod tests {
    /// The sixteen-at-a-time classification against a byte-by-byte
    /// reference: every byte value in every position of targets of every
    /// length to 40, with input following them (as in a head) or not.
    #[test]
    fn plain_target_agrees_with_the_table() {
        use super::{plain_target, PLAIN_TARGET};
        let reference = |t: &[u8]| -> Option<(usize, bool)> {
            if !t.iter().all(|&b| PLAIN_TARGET[b as usize]) {
                return None;
            }
            let q = t.iter().position(|&b| b == b'?').unwrap_or(t.len());
            Some((q, t.contains(&b'%')))
        };
        let base = b"/abcdefghij/KLMNOPQRST/0123456789-._~!$&'()*+,;=:@";
        for len in 0..=40usize {
            for at in 0..len.max(1) {
                for b in 0..=255u8 {
                    let mut t = base[..len].to_vec();
                    if len > 0 {
                        t[at] = b;
                    }
                    for tail in [&b""[..], b" HTTP/1.1\r\nHost: x\r\n\r\n"] {
                        let mut buf = b"GET ".to_vec();
                        buf.extend_from_slice(&t);
                        buf.extend_from_slice(tail);
                        assert_eq!(
                            plain_target(&buf, 4, 4 + len),
                            reference(&t),
                            "{:?} + {:?}",
                            String::from_utf8_lossy(&t),
                            String::from_utf8_lossy(tail)
                        );
                    }
                }
            }
        }
        // A second `?` after the first, and `?`s in later chunks.
        let t = b"/aaaaaaaaaaaaaaaaaaaa?b=1?c%20";
        let mut buf = t.to_vec();
        buf.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(plain_target(&buf, 0, t.len()), Some((21, true)));
    }

    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<ParsedHead>, HeadError> {
        parse_request_head(buf, &HeadLimits::default(), |_, _| {})
    }

    #[test]
    fn swar_stop_finds_the_first_byte_that_ends_a_run() {
        for n in [0x20u8, 0x21] {
            for pos in 0..8 {
                for stop in [0u8, 0x09, 0x0d, 0x1f, 0x20, 0x7f] {
                    if stop >= n && stop != 0x7f {
                        continue;
                    }
                    // Bytes after the stop that would trip a naive test.
                    let mut w = [b'a'; 8];
                    w[pos] = stop;
                    for (later, b) in w.iter_mut().enumerate().skip(pos + 1) {
                        *b = if later % 2 == 0 { 0x00 } else { 0xff };
                    }
                    assert_eq!(first_stop(u64::from_le_bytes(w), n), pos, "{w:?} n={n}");
                }
            }
            // High bytes and the boundary itself never stop a run.
            assert_eq!(
                first_stop(
                    u64::from_le_bytes([0x80, 0xff, n, 0x7e, n, 0xc3, 0xa9, 0x41]),
                    n
                ),
                8
            );
        }
    }

    #[test]
    fn complete_partial_and_errors() {
        let full = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Tab: a\tb \t\r\n\r\n";
        let h = parse(full).unwrap().unwrap();
        assert_eq!(h.len, full.len());
        assert_eq!(h.field_count, 3);
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let mut seen = Vec::new();
        parse_request_head(full, &HeadLimits::default(), |n, v| {
            seen.push((n.to_vec(), v.to_vec()))
        })
        .unwrap();
        assert_eq!(seen[1], (b"X-Empty".to_vec(), Vec::new()));
        assert_eq!(seen[2], (b"X-Tab".to_vec(), b"a\tb".to_vec()));

        let cases: &[(&[u8], HeadError)] = &[
            (b"GET / HTTP/2.0\r\n\r\n", HeadError::Version),
            (b"GET / HTTP/1.2\r\n\r\n", HeadError::Version),
            (b"GET / FTP/1.1\r\n\r\n", HeadError::RequestLine),
            (b"GET  / HTTP/1.1\r\n\r\n", HeadError::RequestLine),
            (b"GET / HTTP/1.1 \r\n\r\n", HeadError::RequestLine),
            (b"G\x01T / HTTP/1.1\r\n\r\n", HeadError::Method),
            (b" GET / HTTP/1.1\r\n\r\n", HeadError::Method),
            (b"GET /a\x7fb HTTP/1.1\r\n\r\n", HeadError::Target),
            (b"GET /a\tb HTTP/1.1\r\n\r\n", HeadError::Target),
            (b"GET / HTTP/1.1\n\r\n", HeadError::LineEnding),
            (b"GET / HTTP/1.1\rX\r\n", HeadError::LineEnding),
            (b"GET / HTTP/1.1\r\nA: b\n\r\n", HeadError::LineEnding),
            (
                b"GET / HTTP/1.1\r\nA: b\rC: d\r\n\r\n",
                HeadError::LineEnding,
            ),
            (b"GET / HTTP/1.1\r\nA: b\r\n\n", HeadError::LineEnding),
            (b"GET / HTTP/1.1\r\nA: b\r\n\rX", HeadError::LineEnding),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", HeadError::ObsFold),
            (b"GET / HTTP/1.1\r\n\tA: b\r\n\r\n", HeadError::ObsFold),
            (b"GET / HTTP/1.1\r\nA : b\r\n\r\n", HeadError::FieldName),
            (b"GET / HTTP/1.1\r\n: b\r\n\r\n", HeadError::FieldName),
            (b"GET / HTTP/1.1\r\nA\x00: b\r\n\r\n", HeadError::FieldName),
            (
                b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
                HeadError::FieldValue,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\x7fc\r\n\r\n",
                HeadError::FieldValue,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_are_enforced_while_scanning() {
        let limits = HeadLimits {
            max_head: 64,
            max_request_line: 20,
            max_fields: 2,
        };
        let p = |b: &[u8]| parse_request_head(b, &limits, |_, _| {});
        // A request line of exactly 20 bytes with its CR is fine; one more is not.
        assert!(p(b"GET /abcde HTTP/1.1\r\n\r\n").unwrap().is_some());
        assert_eq!(
            p(b"GET /abcdef HTTP/1.1\r\n\r\n"),
            Err(HeadError::RequestLineTooLong)
        );
        // Detected before the line is complete.
        assert_eq!(
            p(b"GET /aaaaaaaaaaaaaaaaaaaaaaa"),
            Err(HeadError::RequestLineTooLong)
        );
        assert_eq!(
            p(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            Err(HeadError::TooManyFields)
        );
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "v".repeat(60));
        assert_eq!(p(big.as_bytes()), Err(HeadError::TooLarge));
        // Incomplete and already at the limit: too large, not "read more".
        assert_eq!(p(&big.as_bytes()[..64]), Err(HeadError::TooLarge));
        assert_eq!(p(&big.as_bytes()[..63]), Ok(None));
    }
}
