//! The request-head parser against httparse: whatever Torsion accepts,
//! httparse accepts with the same parts; whatever httparse accepts, Torsion
//! accepts too unless a line in it does not end in CRLF (Torsion's one
//! stricter rule); a head Torsion waits on is one httparse waits on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torsion_http::parse::{parse_request_head, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_head: 1 << 20,
    max_request_line: 1 << 20,
    max_fields: 64,
};

fn crlf_only(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\n' => i > 0 && b[i - 1] == b'\r',
        b'\r' => i + 1 >= b.len() || b[i + 1] == b'\n',
        _ => true,
    })
}

fuzz_target!(|buf: &[u8]| {
    let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
    let ours = parse_request_head(buf, &LIMITS, |n, v| fields.push((n, v)));
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let theirs = req.parse(buf);
    match (ours, theirs) {
        (Ok(Some(h)), Ok(httparse::Status::Complete(n))) => {
            assert_eq!(h.len, n);
            assert_eq!(Some(&buf[h.method.clone()]), req.method.map(str::as_bytes));
            assert_eq!(Some(&buf[h.target.clone()]), req.path.map(str::as_bytes));
            assert_eq!(Some(h.minor_version), req.version);
            let theirs: Vec<(&[u8], &[u8])> =
                req.headers.iter().map(|f| (f.name.as_bytes(), f.value)).collect();
            assert_eq!(fields, theirs);
        }
        (Ok(Some(_)), other) => panic!("torsion accepted, httparse says {other:?}"),
        (Ok(None), Ok(httparse::Status::Partial)) => {}
        (Ok(None), other) => panic!("torsion waits, httparse says {other:?}"),
        (Err(_), Err(_)) => {}
        (Err(e), Ok(httparse::Status::Complete(n))) => {
            assert!(!crlf_only(&buf[..n]), "torsion refused ({e}) a CRLF head httparse accepts")
        }
        (Err(e), Ok(httparse::Status::Partial)) => {
            assert!(!crlf_only(buf), "torsion refused ({e}) a CRLF prefix httparse waits on")
        }
    }
});
