//! The sans-I/O machine: malformed/smuggling table, chunk-split property, framing.

use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use torsion_http::h1::{Event, ServerConn};
use torsion_http::ServerConfig;

/// Feeds `chunks`, answers every request with 200 "ok" as soon as its body
/// ended, and returns (events, output, closed).
fn drive(cfg: ServerConfig, chunks: &[&[u8]]) -> (Vec<Event>, String, bool) {
    let mut c = ServerConn::new(cfg);
    c.set_date("Thu, 01 Jan 1970 00:00:00 GMT");
    let mut events = Vec::new();
    let mut ended = std::collections::VecDeque::new();
    let mut out = Vec::new();
    for chunk in chunks {
        c.receive(chunk);
        for _ in 0..10_000 {
            let Some(ev) = c.next_event() else { break };
            if let Event::End { id } = &ev {
                ended.push_back(*id);
            }
            events.push(ev);
            while let Some(&id) = ended.front() {
                if c.current() != Some(id) {
                    break;
                }
                ended.pop_front();
                c.respond(id, StatusCode::OK, &HeaderMap::new(), Some(2))
                    .unwrap();
                c.send_data(id, b"ok").unwrap();
                c.finish(id).unwrap();
            }
        }
        out.extend(c.take_output());
    }
    // Normalise: merge adjacent Data events so chunk splits compare equal.
    let mut merged: Vec<Event> = Vec::new();
    for ev in events {
        if let (Some(Event::Data { id: a, data }), Event::Data { id: b, data: more }) =
            (merged.last_mut(), &ev)
        {
            if a == b {
                data.extend_from_slice(more);
                continue;
            }
        }
        merged.push(ev);
    }
    (
        merged,
        String::from_utf8_lossy(&out).into_owned(),
        c.should_close(),
    )
}

fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| out.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// (name, input, expected statuses in order, connection closed)
type TableRow = (&'static str, Vec<u8>, Vec<u16>, bool);

/// The malformed-input and smuggling vectors, with what the server must answer.
fn table() -> (ServerConfig, Vec<TableRow>) {
    let cfg = ServerConfig {
        max_body: 1000,
        ..ServerConfig::default()
    };
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..40)
            .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(500)))
            .collect::<String>()
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let table: Vec<TableRow> = vec![
        ("ok", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![200], false),
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), vec![400], true),
        ("duplicate CL same", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(), vec![400], true),
        ("duplicate CL differ", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(), vec![400], true),
        ("CL list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(), vec![400], true),
        ("CL non-numeric", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), vec![400], true),
        ("CL signed", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello".to_vec(), vec![400], true),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), vec![400], true),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello".to_vec(), vec![400], true),
        ("CL too big", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n".to_vec(), vec![413], true),
        ("CL overflow", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(), vec![400], true),
        ("TE not chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), vec![400], true),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n".to_vec(), vec![400], true),
        ("TE duplicate header", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), vec![400], true),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), vec![400], true),
        ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), vec![501], true),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), vec![400], true),
        ("chunk size invalid", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), vec![400], true),
        ("chunk size 0x", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n".to_vec(), vec![400], true),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n".to_vec(), vec![400], true),
        ("chunk size too big", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n".to_vec(), vec![413], true),
        ("chunk data no CRLF", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n".to_vec(), vec![400], true),
        ("chunk bare LF", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_vec(), vec![400], true),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), vec![400], true),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n".to_vec(), vec![400], true),
        ("tab before colon", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 0\r\n\r\n".to_vec(), vec![400], true),
        ("bare LF in headers", b"GET / HTTP/1.1\nHost: x\n\n".to_vec(), vec![400], true),
        ("bare LF one header", b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n".to_vec(), vec![400], true),
        ("bare CR", b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n".to_vec(), vec![400], true),
        ("missing Host 1.1", b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![400], true),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), vec![400], true),
        ("HTTP/1.0 no Host ok", b"GET / HTTP/1.0\r\n\r\n".to_vec(), vec![200], true),
        ("bad version", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), vec![505], true),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), vec![400], true),
        ("relative target", b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![400], true),
        ("NUL in header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n".to_vec(), vec![400], true),
        ("long URI", long_uri.into_bytes(), vec![414], true),
        ("big head", big_head.into_bytes(), vec![431], true),
        ("many headers", many_headers.into_bytes(), vec![431], true),
        ("unknown expect", b"POST / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\nContent-Length: 1\r\n\r\nx".to_vec(), vec![417], true),
        ("pipelined then bad", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX : y\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![200, 400], true),
        ("connection close", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![200], true),
        ("1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n".to_vec(), vec![200, 200], true),
        ("leading empty line", b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![200], false),
    ];
    (cfg, table)
}

#[test]
fn malformed_and_smuggling_table() {
    let (cfg, table) = table();
    let mut failures = Vec::new();
    for (name, input, want, want_closed) in &table {
        let (_, out, closed) = drive(cfg.clone(), &[input]);
        let got = statuses(&out);
        if &got != want || closed != *want_closed {
            failures.push(format!(
                "{name}: got {got:?} closed={closed}, want {want:?} closed={want_closed}\n{out}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_responses_carry_close_and_length() {
    let (_, out, closed) = drive(
        ServerConfig::default(),
        &[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"],
    );
    assert!(closed);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("connection: close\r\n"));
    assert!(out.contains("content-length: 16\r\n"));
    assert!(out.ends_with("400 Bad Request\n"));
}

#[test]
fn chunked_request_body_events() {
    let (ev, _, _) = drive(
        ServerConfig::default(),
        &[b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n"],
    );
    assert!(matches!(&ev[0], Event::Head(h) if h.path() == "/u" && h.content_length().is_none()));
    assert_eq!(
        ev[1],
        Event::Data {
            id: 0,
            data: b"hello world".to_vec()
        }
    );
    assert_eq!(ev[2], Event::End { id: 0 });
    assert_eq!(ev.len(), 3);
}

#[test]
fn chunked_and_close_delimited_responses() {
    let mut c = ServerConn::new(ServerConfig::default());
    c.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n");
    let mut ids = Vec::new();
    while let Some(ev) = c.next_event() {
        if let Event::Head(h) = ev {
            ids.push(h.id());
        }
    }
    assert_eq!(ids, vec![0, 1]);
    // Out of order: the second request cannot be answered first.
    assert!(c
        .respond(1, StatusCode::OK, &HeaderMap::new(), None)
        .is_err());
    c.respond(0, StatusCode::OK, &HeaderMap::new(), None)
        .unwrap();
    c.send_data(0, b"abc").unwrap();
    c.finish(0).unwrap();
    c.respond(1, StatusCode::OK, &HeaderMap::new(), None)
        .unwrap();
    c.send_data(1, b"xyz").unwrap();
    c.finish(1).unwrap();
    let out = String::from_utf8(c.take_output()).unwrap();
    let (first, second) = out.split_at(out.find("0\r\n\r\n").unwrap() + 5);
    assert!(first.contains("transfer-encoding: chunked\r\n"));
    assert!(first.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
    assert!(second.contains("connection: close\r\n"));
    assert!(!second.contains("transfer-encoding"));
    assert!(second.ends_with("\r\n\r\nxyz"));
    assert!(c.should_close());
}

#[test]
fn head_and_304_have_no_body() {
    let mut c = ServerConn::new(ServerConfig::default());
    c.receive(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    while c.next_event().is_some() {}
    c.respond(0, StatusCode::OK, &HeaderMap::new(), Some(5))
        .unwrap();
    c.send_data(0, b"hello").unwrap();
    c.finish(0).unwrap();
    c.respond(1, StatusCode::NOT_MODIFIED, &HeaderMap::new(), Some(5))
        .unwrap();
    c.finish(1).unwrap();
    let out = String::from_utf8(c.take_output()).unwrap();
    assert!(out.contains("content-length: 5\r\n"));
    assert!(!out.contains("hello"));
    assert_eq!(statuses(&out), vec![200, 304]);
    assert!(!c.should_close());
}

#[test]
fn expect_continue_sent_when_front() {
    let mut c = ServerConn::new(ServerConfig::default());
    c.receive(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(matches!(c.next_event(), Some(Event::Head(h)) if h.expect_continue()));
    assert_eq!(c.take_output(), b"HTTP/1.1 100 Continue\r\n\r\n");
    c.receive(b"abc");
    assert_eq!(
        c.next_event(),
        Some(Event::Data {
            id: 0,
            data: b"abc".to_vec()
        })
    );
    assert_eq!(c.next_event(), Some(Event::End { id: 0 }));
}

#[test]
fn pipelining_limit_stops_parsing() {
    let cfg = ServerConfig {
        max_pipelined: 2,
        ..ServerConfig::default()
    };
    let mut c = ServerConn::new(cfg);
    c.receive(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3));
    let mut heads = 0;
    while let Some(ev) = c.next_event() {
        heads += matches!(ev, Event::Head(_)) as usize;
    }
    assert_eq!(heads, 2);
    c.respond(0, StatusCode::OK, &HeaderMap::new(), Some(0))
        .unwrap();
    c.finish(0).unwrap();
    assert!(matches!(c.next_event(), Some(Event::Head(h)) if h.id() == 2));
}

fn stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Long: ");
    s.extend_from_slice(&[b'v'; 300]);
    s.extend_from_slice(b"\r\n\r\n");
    s.extend_from_slice(b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world");
    s.extend_from_slice(
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTr: x\r\n\r\n",
    );
    s.extend_from_slice(b"HEAD /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// Any split of the input stream into chunks gives the same events and output.
    #[test]
    fn any_chunk_split_gives_same_events(cuts in proptest::collection::vec(0usize..1000, 0..40)) {
        let s = stream();
        let whole = drive(ServerConfig::default(), &[&s]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (s.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&s[last..c]);
            last = c;
        }
        pieces.push(&s[last..]);
        let split = drive(ServerConfig::default(), &pieces);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(statuses(&whole.1), vec![200, 200, 200, 200]);
        prop_assert!(whole.2);
    }

    /// Byte-at-a-time feeding of malformed inputs gives the same status as whole.
    #[test]
    fn byte_split_errors_match(idx in 0usize..4) {
        let inputs: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        ];
        let input = inputs[idx];
        let whole = drive(ServerConfig::default(), &[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let split = drive(ServerConfig::default(), &bytes);
        prop_assert_eq!(statuses(&whole.1), statuses(&split.1));
        prop_assert!(split.2);
    }

    /// Arbitrary bytes never panic, and the machine never just stops: it
    /// either wants more input, or has answered and asks to close, or
    /// holds requests waiting for their handlers. Nothing else may happen
    /// (a machine in none of these states would hang the connection).
    #[test]
    fn arbitrary_input_never_panics_or_stalls(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut c = ServerConn::new(ServerConfig::default());
        c.receive(&data);
        let mut ended = Vec::new();
        while let Some(ev) = c.next_event() {
            if let Event::End { id } = ev {
                ended.push(id);
            }
        }
        prop_assert!(
            c.wants_input() || c.should_close() || c.queued() > 0,
            "stalled: queued {} buffered {}", c.queued(), c.buffered()
        );
        // Answering what ended leaves it wanting input or closing.
        for id in ended {
            if c.current() == Some(id) {
                c.respond_with_body(id, StatusCode::OK, &HeaderMap::new(), b"ok").unwrap();
            }
        }
        while c.next_event().is_some() {}
        prop_assert!(c.wants_input() || c.should_close() || c.queued() > 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// A valid pipelined stream with a few bytes damaged: however it is
    /// split, the machine reaches the same verdicts (split-dependent parsing
    /// is what request smuggling feeds on).
    #[test]
    fn damaged_streams_parse_the_same_however_split(
        damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut s = stream();
        let n = s.len();
        for (i, b) in damage {
            s[i % n] = b;
        }
        let whole = drive(ServerConfig::default(), &[&s]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (n + 1)).collect();
        cuts.sort_unstable();
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&s[last..c]);
            last = c;
        }
        pieces.push(&s[last..]);
        let split = drive(ServerConfig::default(), &pieces);
        prop_assert_eq!(statuses(&whole.1), statuses(&split.1));
        prop_assert_eq!(whole.2, split.2);
        let heads = |ev: &[Event]| ev.iter().filter(|e| matches!(e, Event::Head(_))).count();
        prop_assert_eq!(heads(&whole.0), heads(&split.0));
    }
}

fn decode_in_steps(
    input: &[u8],
    step: usize,
) -> Result<(Vec<u8>, bool), torsion_http::chunked::ChunkedError> {
    let mut d = torsion_http::chunked::ChunkedDecoder::new(1 << 16);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        for _ in 0..100_000 {
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

fn chunked_strategy() -> impl Strategy<Value = Vec<u8>> {
    // Mostly well-formed chunked bodies with random damage, plus raw noise.
    let good = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6)
        .prop_map(|chunks| {
            let mut out = Vec::new();
            for c in chunks {
                torsion_http::chunked::encode_chunk(&mut out, &c);
            }
            torsion_http::chunked::encode_last(&mut out);
            out
        });
    let damaged = (good.clone(), any::<usize>(), any::<u8>()).prop_map(|(mut v, i, b)| {
        let n = v.len();
        v[i % n] = b;
        v
    });
    prop_oneof![
        good,
        damaged,
        proptest::collection::vec(any::<u8>(), 0..200)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// The chunked decoder (the fuzz target's property): whole and
    /// byte-by-byte decoding agree, and nothing panics.
    #[test]
    fn chunked_decoder_split_invariant(input in chunked_strategy(), step in 1usize..8) {
        let whole = decode_in_steps(&input, input.len());
        let split = decode_in_steps(&input, step);
        match (&whole, &split) {
            (Ok((a, true)), Ok((b, true))) => prop_assert_eq!(a, b),
            (Ok((_, true)), other) => prop_assert!(false, "whole decoded, split gave {:?}", other),
            _ => {}
        }
    }
}

/// Case count: `PROPTEST_CASES` when set (long local campaigns), else `n`.
#[allow(dead_code)]
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

/// A response sent before the request body arrived (a handler answering at
/// once) must not stop the connection: the body is read, then the next
/// request. (It used to stop reading, and the next request hung.)
#[test]
fn answer_before_body_keeps_connection_reading() {
    let mut c = ServerConn::new(ServerConfig::default());
    c.receive(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n");
    assert!(matches!(c.next_event(), Some(Event::Head(h)) if h.id() == 0));
    c.respond(0, StatusCode::OK, &HeaderMap::new(), Some(0))
        .unwrap();
    c.finish(0).unwrap();
    c.receive(b"dataGET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        c.next_event(),
        Some(Event::Data {
            id: 0,
            data: b"data".to_vec()
        })
    );
    assert_eq!(c.next_event(), Some(Event::End { id: 0 }));
    assert!(matches!(c.next_event(), Some(Event::Head(h)) if h.id() == 1 && h.path() == "/next"));
    assert!(!c.should_close());
}

/// Every input of the table, split in two at every point (at most 300
/// points for the long ones), and fed a byte at a time when short: the
/// same statuses and the same close as when it arrives whole. A verdict
/// that depends on how bytes arrive is what request smuggling feeds on.
#[test]
fn the_table_gives_the_same_verdicts_however_its_inputs_arrive() {
    let (cfg, table) = table();
    let mut failures = Vec::new();
    for (name, input, want, want_closed) in &table {
        let step = (input.len() / 300).max(1);
        for cut in (0..=input.len()).step_by(step) {
            let (_, out, closed) = drive(cfg.clone(), &[&input[..cut], &input[cut..]]);
            if statuses(&out) != *want || closed != *want_closed {
                failures.push(format!(
                    "{name} cut at {cut}: {:?} closed={closed}",
                    statuses(&out)
                ));
            }
        }
        if input.len() <= 600 {
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let (_, out, closed) = drive(cfg.clone(), &bytes);
            if statuses(&out) != *want || closed != *want_closed {
                failures.push(format!(
                    "{name} byte by byte: {:?} closed={closed}",
                    statuses(&out)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The valid pipelined stream split in two at every single point, and fed
/// a byte at a time: always the same events and output.
#[test]
fn every_split_of_a_pipelined_stream_gives_the_same_events() {
    let s = stream();
    let whole = drive(ServerConfig::default(), &[&s]);
    assert_eq!(statuses(&whole.1), vec![200, 200, 200, 200]);
    for cut in 0..=s.len() {
        let split = drive(ServerConfig::default(), &[&s[..cut], &s[cut..]]);
        assert_eq!(whole, split, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = s.chunks(1).collect();
    assert_eq!(whole, drive(ServerConfig::default(), &bytes));
}

/// Heads come from a per-thread pool of boxes: nothing of a dropped head
/// may show through in the next one that reuses its box.
#[test]
fn a_reused_head_box_shows_nothing_of_its_last_head() {
    let mut c = ServerConn::new(ServerConfig::default());
    c.receive(b"OPTIONS http://example.org/abs?q=1 HTTP/1.1\r\nHost: example.org\r\nX-Old: 1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx");
    let Some(Event::Head(first)) = c.next_event() else {
        panic!()
    };
    assert_eq!((first.path(), first.query()), ("/abs", Some("q=1")));
    assert!(first.expect_continue());
    drop(first);
    let mut c = ServerConn::new(ServerConfig::default());
    c.receive(b"GET /plain HTTP/1.0\r\n\r\n");
    let Some(Event::Head(second)) = c.next_event() else {
        panic!()
    };
    assert_eq!(second.method(), http::Method::GET);
    assert_eq!(
        (second.path(), second.query(), second.target()),
        ("/plain", None, "/plain")
    );
    assert_eq!(second.version(), http::Version::HTTP_10);
    assert!(second.header("x-old").is_none() && second.fields().count() == 0);
    assert!(!second.expect_continue() && !second.has_body() && second.id() == 0);
    let built = torsion_http::Request::new(http::Method::PUT, "/b?x".parse().unwrap());
    assert_eq!((built.path(), built.query()), ("/b", Some("x")));
    assert!(built.header("x-old").is_none());
}
