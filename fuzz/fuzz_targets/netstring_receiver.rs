#![no_main]
//! Netstrings: never panics, respects the limit, chunking does not matter.
use libfuzzer_sys::fuzz_target;
use torsion_core::basic::NetstringReceiver;

const MAX: usize = 100;

fn run(data: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
    let mut r = NetstringReceiver::new(MAX);
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
    assert_eq!(
        run(data, data.len()),
        run(data, usize::from(first % 13) + 1)
    );
    // Encoding round-trips.
    let mut r = NetstringReceiver::new(data.len());
    let mut back = Vec::new();
    r.feed(&NetstringReceiver::encode(data), |s| back.push(s.to_vec()))
        .unwrap();
    assert_eq!(back, vec![data.to_vec()]);
});
