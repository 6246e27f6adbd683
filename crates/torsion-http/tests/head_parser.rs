//! The request-head parser against httparse as an oracle: on heads built
//! from the grammar with random mutations, whatever Torsion accepts,
//! httparse accepts with the same parts, and whatever httparse accepts
//! Torsion accepts too — unless it breaks one of the strictness rules
//! Torsion adds (a line not ending in CRLF).

use proptest::prelude::*;
use torsion_http::parse::{parse_request_head, HeadError, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_head: 1 << 20,
    max_request_line: 1 << 20,
    max_fields: 64,
};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, PartialEq)]
enum Outcome {
    Complete {
        len: usize,
        method: Vec<u8>,
        target: Vec<u8>,
        minor: u8,
        fields: Fields,
    },
    Partial,
    Error,
}

fn torsion(buf: &[u8]) -> (Outcome, Option<HeadError>) {
    let mut fields = Vec::new();
    match parse_request_head(buf, &LIMITS, |n, v| fields.push((n.to_vec(), v.to_vec()))) {
        Ok(Some(h)) => (
            Outcome::Complete {
                len: h.len,
                method: buf[h.method].to_vec(),
                target: buf[h.target].to_vec(),
                minor: h.minor_version,
                fields,
            },
            None,
        ),
        Ok(None) => (Outcome::Partial, None),
        Err(e) => (Outcome::Error, Some(e)),
    }
}

fn oracle(buf: &[u8]) -> Outcome {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Outcome::Complete {
            len,
            method: req.method.unwrap_or_default().as_bytes().to_vec(),
            target: req.path.unwrap_or_default().as_bytes().to_vec(),
            minor: req.version.unwrap_or(9),
            fields: req
                .headers
                .iter()
                .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
                .collect(),
        },
        Ok(httparse::Status::Partial) => Outcome::Partial,
        Err(_) => Outcome::Error,
    }
}

/// True when every LF in `buf[..end]` follows a CR and every CR precedes an LF.
fn crlf_only(buf: &[u8], end: usize) -> bool {
    let b = &buf[..end.min(buf.len())];
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\n' => i > 0 && b[i - 1] == b'\r',
        b'\r' => i + 1 >= b.len() || b[i + 1] == b'\n',
        _ => true,
    })
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(b"abcXYZ09-_.!#$%&'*+^`|~".to_vec()),
        1..8,
    )
}

/// Mostly bytes a part may hold, now and then one it may not.
fn bytes_from(common: &'static [u8], rare: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            20 => prop::sample::select(common.to_vec()),
            1 => prop::sample::select(rare.to_vec()),
        ],
        0..24,
    )
}

fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        30 => Just(&b"\r\n"[..]),
        1 => Just(&b"\n"[..]),
        1 => Just(&b"\r"[..]),
        1 => Just(&b" \r\n"[..]),
    ]
}

prop_compose! {
    fn field()(
        lead in prop_oneof![20 => Just(&b""[..]), 1 => Just(&b" "[..]), 1 => Just(&b"\t"[..])],
        name in token(),
        before_colon in prop_oneof![20 => Just(&b""[..]), 1 => Just(&b" "[..])],
        ows in prop::sample::select(vec![&b""[..], b" ", b"  ", b"\t"]),
        value in bytes_from(b"abc xyz/;=,.:\t\xc3\xa9\x80\xff\"", b"\x00\x01\x7f\x0b"),
        trail in prop::sample::select(vec![&b""[..], b" ", b"\t "]),
        end in line_end(),
    ) -> Vec<u8> {
        [lead, &name[..], before_colon, b":", ows, &value[..], trail, end].concat()
    }
}

prop_compose! {
    fn head()(
        method in prop_oneof![
            5 => prop::sample::select(vec![b"GET".to_vec(), b"POST".to_vec(), b"HEAD".to_vec()]),
            2 => token(),
            1 => bytes_from(b"GET", b" \x00@"),
        ],
        sep1 in prop_oneof![20 => Just(&b" "[..]), 1 => Just(&b"  "[..]), 1 => Just(&b"\t"[..])],
        target in bytes_from(b"/abc?=&%2e.~!$'()*+,;:@\xe2\x82\xac\"<>{}|^`[]#", b" \x00\x7f\t\x1f"),
        version in prop_oneof![
            20 => Just(&b" HTTP/1.1"[..]),
            5 => Just(&b" HTTP/1.0"[..]),
            1 => Just(&b" HTTP/2.0"[..]),
            1 => Just(&b" HTTP/1.x"[..]),
            1 => Just(&b" http/1.1"[..]),
            1 => Just(&b"HTTP/1.1"[..]),
        ],
        end in line_end(),
        fields in prop::collection::vec(field(), 0..6),
        last in line_end(),
        tail in bytes_from(b"GET ", b"\r\n"),
    ) -> Vec<u8> {
        let mut h = [&method[..], sep1, &target[..], version, end].concat();
        for f in &fields {
            h.extend_from_slice(f);
        }
        h.extend_from_slice(last);
        h.extend_from_slice(&tail);
        h
    }
}

fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

fn check(buf: &[u8]) -> Result<(), TestCaseError> {
    let (ours, why) = torsion(buf);
    let theirs = oracle(buf);
    match (&ours, &theirs) {
        // Accepted: exactly what httparse sees.
        (Outcome::Complete { .. }, _) => prop_assert_eq!(&ours, &theirs),
        (Outcome::Partial, _) => prop_assert!(
            theirs == Outcome::Partial,
            "torsion wants more, httparse says {:?}",
            theirs
        ),
        (Outcome::Error, Outcome::Error) => {}
        // Refused where httparse accepts (or waits): only for a line that
        // does not end in CRLF, in the part httparse looked at.
        (Outcome::Error, Outcome::Complete { len, .. }) => prop_assert!(
            !crlf_only(buf, *len),
            "torsion refused ({:?}) a CRLF head httparse accepts",
            why
        ),
        (Outcome::Error, Outcome::Partial) => prop_assert!(
            !crlf_only(buf, buf.len()),
            "torsion refused ({:?}) a CRLF prefix httparse waits on",
            why
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4096), ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_httparse(buf in head()) {
        check(&buf)?;
        // And on every prefix: partial heads are judged the same way.
        for cut in (0..buf.len()).step_by(3) {
            check(&buf[..cut])?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_agree(buf in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&buf)?;
    }
}

#[test]
fn well_formed_heads_are_accepted_by_both() {
    let heads: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /upload?x=1 HTTP/1.0\r\nContent-Length: 3\r\nX: \t a b \t\r\n\r\nabc",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://example.org/a HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nX-Bin: \x80\xff\r\nEmpty:\r\n\r\n",
    ];
    for h in heads {
        let (ours, _) = torsion(h);
        assert!(
            matches!(ours, Outcome::Complete { .. }),
            "{:?}",
            String::from_utf8_lossy(h)
        );
        assert_eq!(ours, oracle(h));
    }
}
