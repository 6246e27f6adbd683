#![no_main]
//! Lines: never panics, never delivers a line over the limit, and the lines
//! delivered do not depend on how the input is chunked.
use libfuzzer_sys::fuzz_target;
use torsion_core::basic::{LineReceiver, Next};

const MAX: usize = 64;

fn run(data: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
    let mut r = LineReceiver::new()
        .with_delimiter(b"\r\n")
        .with_max_length(MAX);
    let mut lines = Vec::new();
    let mut failed = false;
    for chunk in data.chunks(step.max(1)) {
        let res = r.feed_fn(chunk, |l| {
            assert!(l.len() <= MAX);
            lines.push(l.to_vec());
            Next::Continue
        });
        if res.is_err() {
            failed = true;
            break;
        }
        assert!(r.buffered().len() <= MAX + 1);
    }
    (lines, failed)
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let whole = run(data, data.len());
    let chunked = run(data, usize::from(first % 17) + 1);
    assert_eq!(whole, chunked);
});
