//! Feeds arbitrary bytes, split at an arbitrary point, to the HTTP/1.1 server
//! machine and answers every request; nothing may panic, and the machine
//! must either want more input or have decided to answer/close.
#![no_main]

use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use torsion_http::h1::{Event, ServerConn};
use torsion_http::ServerConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = (split as usize * rest.len()) / 256;
    let cfg = ServerConfig {
        max_header_bytes: 2048,
        max_request_line: 512,
        max_body: 4096,
        ..ServerConfig::default()
    };
    let mut c = ServerConn::new(cfg);
    for piece in [&rest[..cut], &rest[cut..]] {
        c.receive(piece);
        for _ in 0..10_000 {
            match c.next_event() {
                Some(Event::End { id }) => {
                    if c.current() == Some(id) {
                        let _ = c.respond(id, StatusCode::OK, &HeaderMap::new(), None);
                        let _ = c.send_data(id, b"ok");
                        let _ = c.finish(id);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let _ = c.take_output();
    }
});
