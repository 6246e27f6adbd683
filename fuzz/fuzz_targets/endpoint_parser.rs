#![no_main]
//! Endpoint strings: never panics; whatever parses prints to a string that
//! parses back to the same value.
use libfuzzer_sys::fuzz_target;
use torsion_core::endpoint::{client_from_string, server_from_string};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = server_from_string(s) {
        let printed = e.to_string();
        assert_eq!(server_from_string(&printed).as_ref(), Ok(&e), "{printed}");
    }
    if let Ok(e) = client_from_string(s) {
        let printed = e.to_string();
        assert_eq!(client_from_string(&printed).as_ref(), Ok(&e), "{printed}");
    }
});
