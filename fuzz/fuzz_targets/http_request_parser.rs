//! Feeds arbitrary bytes, split at an arbitrary point, to the HTTP/1.1 server
//! machine and answers every request; nothing may panic, and after each
//! piece the machine must want more input, have answered and close, or hold
//! requests for their handlers (asserted).
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
        // Never stalled: it wants input, or has answered and closes, or
        // holds requests for their handlers.
        assert!(c.wants_input() || c.should_close() || c.queued() > 0);
    }
});
