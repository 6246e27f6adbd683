//! Arbitrary bytes as the binary form of the PostgreSQL types torsion-db
//! carries as text (uuid, json, jsonb, numeric, date, time, timestamp,
//! timestamptz; the first byte picks the type): decoding never panics, and
//! whatever decodes prints text that encodes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((kind, raw)) = data.split_first() {
        torsion_db::fuzzing::pg_text_round_trip(*kind, raw);
    }
});
