//! Arbitrary bytes to the client's response parser, whole and split:
//! no panics, and both ways agree when the whole input parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torsion_http::client::{ResponseEvent, ResponseParser};

fn run(data: &[u8], step: usize, head: bool) -> Option<Vec<ResponseEvent>> {
    let mut p = ResponseParser::new(head, 4096);
    let mut evs = Vec::new();
    for piece in data.chunks(step.max(1)) {
        p.feed(piece);
        while let Some(e) = p.next_event().ok()? {
            evs.push(e);
        }
    }
    p.feed_eof();
    while let Some(e) = p.next_event().ok()? {
        evs.push(e);
    }
    Some(evs)
}

fn body(evs: &[ResponseEvent]) -> Vec<u8> {
    evs.iter()
        .filter_map(|e| match e {
            ResponseEvent::Data(d) => Some(d.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let head = flags & 1 == 1;
    let step = (flags >> 1) as usize + 1;
    if let (Some(a), Some(b)) = (run(rest, rest.len(), head), run(rest, step, head)) {
        assert_eq!(body(&a), body(&b));
    }
});
