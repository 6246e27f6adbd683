//! Arbitrary input to the chunked decoder, whole and byte by byte: no
//! panics, and both ways agree on the decoded body or the error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torsion_http::chunked::{ChunkedDecoder, ChunkedError};

fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkedError> {
    let mut d = ChunkedDecoder::new(1 << 16);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let s = d.decode(&buf)?;
            if let Some(r) = s.data.clone() {
                out.extend_from_slice(&buf[r]);
            }
            buf.drain(..s.consumed);
            if s.done {
                return Ok((out, true));
            }
            if s.consumed == 0 {
                break;
            }
        }
    }
    Ok((out, false))
}

fuzz_target!(|data: &[u8]| {
    let whole = run(data, data.len());
    let bytewise = run(data, 1);
    if let (Ok((a, true)), Ok((b, true))) = (&whole, &bytewise) {
        assert_eq!(a, b);
    }
    if let (Ok((_, true)), Err(e)) = (&whole, &bytewise) {
        panic!("whole input decoded but byte-wise failed: {e}");
    }
});
