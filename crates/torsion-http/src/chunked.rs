//! The chunked transfer-coding: a strict, limit-enforcing decoder and the encoder.
//!
//! The decoder works on a borrowed input buffer and reports how much it
//! consumed, so the caller keeps one buffer and no bytes are copied twice.
//! It is deliberately strict where leniency enables request smuggling: chunk
//! sizes are bare hex digits (no sign, no `0x`, no leading spaces, at most 16
//! digits), every line ends in CRLF (a bare LF is an error), and the CRLF
//! after chunk data must be exactly that.

use std::ops::Range;

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// The chunk-size line is not 1–16 hex digits, optional extensions and CRLF.
    #[error("invalid chunk size line")]
    InvalidSize,
    /// A line did not end in CRLF, or chunk data was not followed by CRLF.
    #[error("invalid line ending in chunked body")]
    InvalidLineEnding,
    /// A chunk-size or trailer line is longer than allowed.
    #[error("chunked body line too long")]
    LineTooLong,
    /// The decoded body is larger than allowed.
    #[error("chunked body too large")]
    TooLarge,
    /// A trailer field is malformed or the trailer section is too large.
    #[error("invalid trailer section")]
    InvalidTrailer,
}

/// One decoding step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input used up by this step.
    pub consumed: usize,
    /// Body data found, as a range of the input.
    pub data: Option<Range<usize>>,
    /// The last chunk and trailers were read: the body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailer,
    Done,
}

/// A strict decoder for `Transfer-Encoding: chunked` bodies.
///
/// ```
/// use torsion_http::chunked::ChunkedDecoder;
/// let mut d = ChunkedDecoder::new(1 << 20);
/// let input = b"5\r\nhello\r\n0\r\n\r\n";
/// let mut body = Vec::new();
/// let mut pos = 0;
/// loop {
///     let step = d.decode(&input[pos..]).unwrap();
///     if let Some(r) = step.data.clone() { body.extend_from_slice(&input[pos..][r]); }
///     pos += step.consumed;
///     if step.done { break; }
/// }
/// assert_eq!(body, b"hello");
/// ```
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    total: u64,
    max_body: u64,
    max_line: usize,
    trailer_bytes: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    /// A decoder refusing bodies larger than `max_body` bytes.
    pub fn new(max_body: u64) -> Self {
        ChunkedDecoder {
            state: State::Size,
            total: 0,
            max_body,
            max_line: 4096,
            trailer_bytes: 0,
            max_trailer: 8192,
        }
    }

    /// True once the terminating chunk and trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded body bytes so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Decodes from `input`. Call again with the unconsumed rest (plus new
    /// bytes) while `consumed > 0` or `data` is set; a step that consumes
    /// nothing needs more input.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let none = |consumed| Step {
            consumed,
            data: None,
            done: false,
        };
        match self.state {
            State::Done => Ok(Step {
                consumed: 0,
                data: None,
                done: true,
            }),
            State::Size => {
                let Some(line_len) = self.line(input)? else {
                    return Ok(none(0));
                };
                let size = parse_size_line(&input[..line_len - 2])?;
                if self.total.saturating_add(size) > self.max_body {
                    return Err(ChunkedError::TooLarge);
                }
                self.state = if size == 0 {
                    State::Trailer
                } else {
                    State::Data(size)
                };
                Ok(none(line_len))
            }
            State::Data(rem) => {
                let n = (input.len() as u64).min(rem) as usize;
                if n == 0 {
                    return Ok(none(0));
                }
                self.total += n as u64;
                self.state = if rem == n as u64 {
                    State::DataCrlf
                } else {
                    State::Data(rem - n as u64)
                };
                Ok(Step {
                    consumed: n,
                    data: Some(0..n),
                    done: false,
                })
            }
            State::DataCrlf => {
                if input.len() < 2 {
                    if input.first().is_some_and(|&b| b != b'\r') {
                        return Err(ChunkedError::InvalidLineEnding);
                    }
                    return Ok(none(0));
                }
                if &input[..2] != b"\r\n" {
                    return Err(ChunkedError::InvalidLineEnding);
                }
                self.state = State::Size;
                Ok(none(2))
            }
            State::Trailer => {
                let Some(line_len) = self.line(input)? else {
                    return Ok(none(0));
                };
                if line_len == 2 {
                    self.state = State::Done;
                    return Ok(Step {
                        consumed: 2,
                        data: None,
                        done: true,
                    });
                }
                self.trailer_bytes += line_len;
                if self.trailer_bytes > self.max_trailer {
                    return Err(ChunkedError::InvalidTrailer);
                }
                validate_trailer_line(&input[..line_len - 2])?;
                Ok(none(line_len))
            }
        }
    }

    /// The length of the CRLF-terminated line at the start of `input`
    /// (including the CRLF), `None` when incomplete.
    fn line(&self, input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let limit = input.len().min(self.max_line + 2);
        match input[..limit].iter().position(|&b| b == b'\n') {
            Some(i) => {
                if i == 0 || input[i - 1] != b'\r' {
                    return Err(ChunkedError::InvalidLineEnding);
                }
                if input[..i - 1].contains(&b'\r') {
                    return Err(ChunkedError::InvalidLineEnding);
                }
                Ok(Some(i + 1))
            }
            None if input.len() > self.max_line + 1 => Err(ChunkedError::LineTooLong),
            None => {
                // A CR anywhere but last can never become a valid line end.
                if let Some(p) = input.iter().position(|&b| b == b'\r') {
                    if p + 1 < input.len() {
                        return Err(ChunkedError::InvalidLineEnding);
                    }
                }
                Ok(None)
            }
        }
    }
}

fn parse_size_line(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkedError::InvalidSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let v = (b as char).to_digit(16).ok_or(ChunkedError::InvalidSize)? as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .ok_or(ChunkedError::InvalidSize)?;
    }
    let rest = &line[digits..];
    if rest.is_empty() {
        return Ok(size);
    }
    // chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ): only visible
    // characters and blanks, and the first non-blank must be ';'.
    let first = rest.iter().position(|&b| b != b' ' && b != b'\t');
    match first {
        Some(i) if rest[i] == b';' => {}
        _ => return Err(ChunkedError::InvalidSize),
    }
    if rest.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        return Err(ChunkedError::InvalidSize);
    }
    Ok(size)
}

fn validate_trailer_line(line: &[u8]) -> Result<(), ChunkedError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ChunkedError::InvalidTrailer)?;
    if colon == 0 || !line[..colon].iter().all(|&b| is_tchar(b)) {
        return Err(ChunkedError::InvalidTrailer);
    }
    if line[colon + 1..]
        .iter()
        .any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f))
    {
        return Err(ChunkedError::InvalidTrailer);
    }
    Ok(())
}

/// RFC 9110 token characters.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `data` as one chunk (nothing for empty data: an empty chunk would end the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and an empty trailer section.
pub fn encode_last(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: u64) -> Result<Vec<u8>, ChunkedError> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let mut pos = 0;
        for _ in 0..10_000 {
            let s = d.decode(&input[pos..])?;
            if let Some(r) = s.data {
                out.extend_from_slice(&input[pos..][r]);
            }
            pos += s.consumed;
            if s.done {
                return Ok(out);
            }
            if s.consumed == 0 {
                return Err(ChunkedError::InvalidSize);
            }
        }
        unreachable!()
    }

    #[test]
    fn decodes_with_extensions_and_trailers() {
        let b = b"4;name=v\r\nWiki\r\n5 ; x\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(decode_all(b, 100).unwrap(), b"Wikipedia");
    }

    #[test]
    fn rejects_bad_sizes() {
        for bad in [
            &b"-1\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                decode_all(bad, u64::MAX),
                Err(ChunkedError::InvalidSize),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_bare_lf_and_bad_crlf() {
        assert_eq!(
            decode_all(b"5\nhello\r\n0\r\n\r\n", 100),
            Err(ChunkedError::InvalidLineEnding)
        );
        assert_eq!(
            decode_all(b"5\r\nhelloXX0\r\n\r\n", 100),
            Err(ChunkedError::InvalidLineEnding)
        );
        assert_eq!(
            decode_all(b"5\r\nhello\r\n0\r\n\n", 100),
            Err(ChunkedError::InvalidLineEnding)
        );
    }

    #[test]
    fn enforces_body_limit() {
        assert_eq!(
            decode_all(b"5\r\nhello\r\n5\r\nhello\r\n0\r\n\r\n", 8),
            Err(ChunkedError::TooLarge)
        );
    }

    #[test]
    fn encoder_roundtrip() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"hello");
        encode_chunk(&mut out, b"");
        encode_chunk(&mut out, &[7u8; 300]);
        encode_last(&mut out);
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&[7u8; 300]);
        assert_eq!(decode_all(&out, 1000).unwrap(), want);
    }
}
