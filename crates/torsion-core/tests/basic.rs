//! Framing receivers: lines split at every chunk boundary, over-long lines,
//! raw mode switched mid-buffer, netstrings and length prefixes with limits
//! and malformed input.

use proptest::prelude::*;
use torsion_core::basic::*;

/// Records lines and raw data; switches to raw after a line "RAW <n>" and
/// back to line mode after n raw bytes.
#[derive(Default, Debug)]
struct Mixed {
    lines: Vec<Vec<u8>>,
    raw: Vec<u8>,
    raw_left: usize,
    exceeded: Vec<usize>,
    ignore_overflow: bool,
}

impl LineHandler for Mixed {
    fn line_received(&mut self, line: &[u8]) -> Next {
        self.lines.push(line.to_vec());
        if let Some(n) = line.strip_prefix(b"RAW ") {
            self.raw_left = std::str::from_utf8(n).unwrap().parse().unwrap();
            if self.raw_left > 0 {
                return Next::Raw;
            }
        }
        Next::Continue
    }
    fn raw_data_received(&mut self, data: &[u8]) -> Next {
        // Take exactly the announced block; the surplus goes back to line mode.
        let take = data.len().min(self.raw_left);
        self.raw.extend_from_slice(&data[..take]);
        self.raw_left -= take;
        if self.raw_left == 0 {
            Next::LineAfter(take)
        } else {
            Next::Continue
        }
    }
    fn line_length_exceeded(&mut self, start: &[u8]) -> Next {
        self.exceeded.push(start.len());
        if self.ignore_overflow {
            Next::Continue
        } else {
            Next::Stop
        }
    }
}

fn feed_chunks(
    r: &mut LineReceiver,
    h: &mut Mixed,
    data: &[u8],
    cuts: &[usize],
) -> Result<(), LineError> {
    let mut prev = 0;
    for &c in cuts {
        r.feed(&data[prev..c], h)?;
        prev = c;
    }
    r.feed(&data[prev..], h)
}

#[test]
fn lines_split_at_every_single_boundary() {
    let data = b"alpha\r\nbeta\r\n\r\ngamma delta\r\n";
    let want: Vec<Vec<u8>> = vec![
        b"alpha".to_vec(),
        b"beta".to_vec(),
        b"".to_vec(),
        b"gamma delta".to_vec(),
    ];
    for cut in 0..=data.len() {
        let mut r = LineReceiver::new();
        let mut h = Mixed::default();
        feed_chunks(&mut r, &mut h, data, &[cut]).unwrap();
        assert_eq!(h.lines, want, "cut at {cut}");
        assert!(r.buffered().is_empty());
    }
}

proptest! {
    #[test]
    fn lines_survive_any_chunking(
        lines in proptest::collection::vec("[a-z ]{0,12}", 0..8),
        mut cuts in proptest::collection::vec(0usize..200, 0..10),
        delim in prop_oneof![Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b"--sep--".to_vec())],
    ) {
        let mut data = Vec::new();
        for l in &lines { data.extend_from_slice(l.as_bytes()); data.extend_from_slice(&delim); }
        cuts.retain(|&c| c <= data.len());
        cuts.sort();
        let mut r = LineReceiver::new().with_delimiter(&delim);
        let mut h = Mixed::default();
        feed_chunks(&mut r, &mut h, &data, &cuts).unwrap();
        let want: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
        prop_assert_eq!(h.lines, want);
    }

    #[test]
    fn raw_mode_switch_survives_any_chunking(
        raw in proptest::collection::vec(any::<u8>(), 0..50),
        cuts in proptest::collection::vec(0usize..120, 0..6),
    ) {
        let mut data = b"HEAD\r\n".to_vec();
        data.extend_from_slice(format!("RAW {}\r\n", raw.len()).as_bytes());
        data.extend_from_slice(&raw);
        data.extend_from_slice(b"TAIL\r\n");
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= data.len()).collect();
        cuts.sort();
        let mut r = LineReceiver::new();
        let mut h = Mixed::default();
        feed_chunks(&mut r, &mut h, &data, &cuts).unwrap();
        prop_assert_eq!(&h.raw, &raw);
        let l: Vec<&[u8]> = h.lines.iter().map(|x| x.as_slice()).collect();
        let raw_line = format!("RAW {}", raw.len());
        prop_assert_eq!(l, vec![&b"HEAD"[..], raw_line.as_bytes(), &b"TAIL"[..]]);
    }

    #[test]
    fn netstrings_survive_any_chunking(
        strings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..6),
        cuts in proptest::collection::vec(0usize..300, 0..8),
    ) {
        let mut data = Vec::new();
        for s in &strings { data.extend(NetstringReceiver::encode(s)); }
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= data.len()).collect();
        cuts.sort();
        let mut r = NetstringReceiver::new(1000);
        let mut got = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            r.feed(&data[prev..c], |s| got.push(s.to_vec())).unwrap();
            prev = c;
        }
        prop_assert_eq!(got, strings);
    }

    #[test]
    fn prefixed_strings_survive_any_chunking(
        strings in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..6),
        cuts in proptest::collection::vec(0usize..300, 0..8),
        width in prop_oneof![Just(PrefixWidth::U8), Just(PrefixWidth::U16), Just(PrefixWidth::U32)],
    ) {
        let mut data = Vec::new();
        for s in &strings { data.extend(PrefixedReceiver::encode(width, s).unwrap()); }
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= data.len()).collect();
        cuts.sort();
        let mut r = PrefixedReceiver::new(width, 100);
        let mut got = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            r.feed(&data[prev..c], |s| got.push(s.to_vec())).unwrap();
            prev = c;
        }
        prop_assert_eq!(got, strings);
    }

    #[test]
    fn receivers_never_panic_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut l = LineReceiver::new().with_max_length(10);
        let _ = l.feed_fn(&data, |_| Next::Continue);
        let mut n = NetstringReceiver::new(50);
        let _ = n.feed(&data, |_| {});
        for w in [PrefixWidth::U8, PrefixWidth::U16, PrefixWidth::U32] {
            let mut p = PrefixedReceiver::new(w, 50);
            let _ = p.feed(&data, |_| {});
        }
    }
}

#[test]
fn raw_mode_switch_mid_buffer_delivers_the_rest_raw() {
    // One buffer: a line that switches to raw, then body bytes.
    struct Http {
        lines: Vec<Vec<u8>>,
        body: Vec<u8>,
    }
    impl LineHandler for Http {
        fn line_received(&mut self, line: &[u8]) -> Next {
            self.lines.push(line.to_vec());
            if line.is_empty() {
                Next::Raw
            } else {
                Next::Continue
            }
        }
        fn raw_data_received(&mut self, data: &[u8]) -> Next {
            self.body.extend_from_slice(data);
            Next::Continue
        }
    }
    let mut r = LineReceiver::new();
    let mut h = Http {
        lines: vec![],
        body: vec![],
    };
    r.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\r\nbytes", &mut h)
        .unwrap();
    assert_eq!(
        h.lines,
        vec![
            b"GET / HTTP/1.1".to_vec(),
            b"Host: x".to_vec(),
            b"".to_vec()
        ]
    );
    assert_eq!(h.body, b"body\r\nbytes");
    assert!(r.is_raw());
    r.feed(b"\r\nmore", &mut h).unwrap();
    assert_eq!(h.body, b"body\r\nbytes\r\nmore");
    // Switching back from outside a callback.
    r.set_line_mode();
    r.feed(b"next\r\n", &mut h).unwrap();
    assert_eq!(h.lines.last().unwrap(), b"next");

    // Mid-buffer in both directions: a raw block of known size inside one chunk.
    let mut r = LineReceiver::new();
    let mut m = Mixed::default();
    r.feed(b"RAW 3\r\nxyzAFTER\r\n", &mut m).unwrap();
    assert_eq!(m.raw, b"xyz");
    assert_eq!(m.lines, vec![b"RAW 3".to_vec(), b"AFTER".to_vec()]);
}

#[test]
fn over_long_lines() {
    // Default reaction: stop with TooLong, whether the line ends or not.
    let mut r = LineReceiver::new().with_max_length(5);
    let mut h = Mixed::default();
    assert_eq!(
        r.feed(b"123456\r\n", &mut h),
        Err(LineError::TooLong { length: 6, max: 5 })
    );
    let mut r = LineReceiver::new().with_max_length(5);
    let mut h = Mixed::default();
    let e = r.feed(b"1234567890", &mut h).unwrap_err();
    assert_eq!(e, LineError::TooLong { length: 10, max: 5 });
    assert_eq!(
        e.to_string(),
        "line of 10 bytes or more exceeds the maximum of 5"
    );
    // Exactly the limit is fine, in any split.
    let mut r = LineReceiver::new().with_max_length(5);
    let mut h = Mixed::default();
    r.feed(b"12345\r", &mut h).unwrap();
    r.feed(b"\n", &mut h).unwrap();
    assert_eq!(h.lines, vec![b"12345".to_vec()]);
    // A handler that ignores the overflow: the long line is dropped, the next one arrives.
    let mut r = LineReceiver::new().with_max_length(5);
    let mut h = Mixed {
        ignore_overflow: true,
        ..Mixed::default()
    };
    r.feed(b"ok\r\n", &mut h).unwrap();
    for chunk in [&b"0123456789"[..], b"0123456789", b"01\r", b"\nafter\r\n"] {
        r.feed(chunk, &mut h).unwrap();
    }
    assert_eq!(h.lines, vec![b"ok".to_vec(), b"after".to_vec()]);
    assert_eq!(h.exceeded.len(), 1);
    // Memory stays bounded while discarding: only a partial delimiter is kept.
    assert!(r.buffered().len() < 2);
}

#[test]
fn line_only_receiver() {
    let mut r = LineOnlyReceiver::new(b"\n", 4);
    let mut got = Vec::new();
    r.feed(b"ab\ncd", |l| got.push(l.to_vec())).unwrap();
    r.feed(b"\n", |l| got.push(l.to_vec())).unwrap();
    assert_eq!(got, vec![b"ab".to_vec(), b"cd".to_vec()]);
    assert!(matches!(
        r.feed(b"toolong\n", |_| {}),
        Err(LineError::TooLong { .. })
    ));
}

#[test]
fn malformed_netstrings() {
    let cases: Vec<(&[u8], FramingError)> = vec![
        (b"x:", FramingError::BadLength(b'x')),
        (b":abc,", FramingError::BadLength(b':')),
        (b"05:hello,", FramingError::LeadingZero),
        (b"3:abc;", FramingError::MissingComma(b';')),
        (
            b"1001:",
            FramingError::TooLong {
                length: 1001,
                max: 1000,
            },
        ),
        (
            b"99999999999999999999999:",
            FramingError::TooLong {
                length: 9999,
                max: 1000,
            },
        ),
        (b"-1:", FramingError::BadLength(b'-')),
    ];
    for (input, want) in cases {
        let mut r = NetstringReceiver::new(1000);
        let got = r
            .feed(input, |_| panic!("no string from bad input"))
            .unwrap_err();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        // The receiver stays failed.
        assert_eq!(r.feed(b"1:a,", |_| {}), Err(FramingError::Failed));
    }
    assert_eq!(
        FramingError::TooLong {
            length: 1001,
            max: 1000
        }
        .to_string(),
        "string of 1001 bytes exceeds the maximum of 1000"
    );
}

#[test]
fn oversized_prefixed_strings() {
    let mut r = PrefixedReceiver::new(PrefixWidth::U32, 1024);
    let e = r.feed(&[0xff, 0xff, 0xff, 0xff], |_| {}).unwrap_err();
    assert_eq!(
        e,
        FramingError::TooLong {
            length: 0xffff_ffff,
            max: 1024
        }
    );
    assert_eq!(r.feed(b"", |_| {}), Err(FramingError::Failed));
    assert!(PrefixedReceiver::encode(PrefixWidth::U8, &[0; 256]).is_err());
    assert_eq!(
        PrefixedReceiver::encode(PrefixWidth::U8, &[9; 2]).unwrap(),
        vec![2, 9, 9]
    );
    assert_eq!(
        PrefixedReceiver::encode(PrefixWidth::U32, b"a").unwrap(),
        vec![0, 0, 0, 1, b'a']
    );
}
