#![no_main]
//! Length-prefixed strings of all three widths: never panics, respects the
//! limit, chunking does not matter.
use libfuzzer_sys::fuzz_target;
use torsion_core::basic::{PrefixWidth, PrefixedReceiver};

const MAX: usize = 200;

fn run(width: PrefixWidth, data: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
    let mut r = PrefixedReceiver::new(width, MAX);
    let mut got = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        let res = r.feed(chunk, |s| {
            assert!(s.len() <= MAX);
            got.push(s.to_vec());
        });
        if res.is_err() {
            return (got, true);
        }
    }
    (got, false)
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let width = match first % 3 {
        0 => PrefixWidth::U8,
        1 => PrefixWidth::U16,
        _ => PrefixWidth::U32,
    };
    assert_eq!(
        run(width, data, data.len()),
        run(width, data, usize::from(first / 3 % 11) + 1)
    );
});
