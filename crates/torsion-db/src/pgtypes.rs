//! PostgreSQL types with no `Value` variant of their own, carried as text:
//! `uuid`, `json`, `jsonb`, `numeric`, `date`, `time`, `timestamp` and
//! `timestamptz`.
//!
//! The `postgres` crate speaks the binary protocol, so a column of these
//! types cannot simply be read as a string. Reading decodes the binary form
//! into the text PostgreSQL itself prints (`timestamptz` in UTC, with
//! `+00`); binding a `Value::Text` parameter to such a type encodes it, so
//! `INSERT … VALUES ($1)` works with `"2026-11-25 16:30:00+00"` or a UUID
//! string without a cast in the SQL. Exact decimal text survives the round
//! trip for `numeric` (no float on the way).

use std::error::Error;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use postgres::types::{FromSql, Type};
use torsion_core::time::{civil_from_days, days_from_civil};

type BoxError = Box<dyn Error + Sync + Send>;

/// The types this module maps to and from text.
const TEXT_TYPES: [Type; 8] = [
    Type::UUID,
    Type::JSON,
    Type::JSONB,
    Type::NUMERIC,
    Type::DATE,
    Type::TIME,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
];

/// Whether `ty` is one of the types this module maps to and from text.
pub(crate) fn handles(ty: &Type) -> bool {
    TEXT_TYPES.contains(ty)
}

/// A column of one of the [`handles`] types, decoded to text.
pub(crate) struct PgText(pub(crate) String);

impl<'a> FromSql<'a> for PgText {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode(ty, raw).map(PgText)
    }
    fn accepts(ty: &Type) -> bool {
        handles(ty)
    }
}

/// A value that is not valid for its PostgreSQL type (reported to callers
/// as `DbError::Param` when binding, `DbError::Sql` when reading).
#[derive(Debug)]
pub(crate) struct TextValueError(String);

impl std::fmt::Display for TextValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for TextValueError {}

fn err(msg: impl Into<String>) -> BoxError {
    Box::new(TextValueError(msg.into()))
}

fn be_i16(b: &[u8], at: usize) -> Result<i16, BoxError> {
    b.get(at..at + 2)
        .map(|s| i16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| err("truncated value"))
}

fn be_i32(b: &[u8]) -> Result<i32, BoxError> {
    <[u8; 4]>::try_from(b)
        .map(i32::from_be_bytes)
        .map_err(|_| err("a 4-byte value was expected"))
}

fn be_i64(b: &[u8]) -> Result<i64, BoxError> {
    <[u8; 8]>::try_from(b)
        .map(i64::from_be_bytes)
        .map_err(|_| err("an 8-byte value was expected"))
}

fn utf8(b: &[u8]) -> Result<String, BoxError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| err("json is not UTF-8"))
}

/// Days since 2000-01-01, PostgreSQL's epoch, of 1970-01-01.
const UNIX_TO_PG_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// PostgreSQL's own limits (relative to 2000-01-01): dates from 4714-11-24
/// BC to 5874897-12-31, timestamps from 4714-11-24 BC up to 294277-01-01.
/// Values outside them never come from a server and are refused both ways.
const PG_DATE_MIN: i64 = -2_451_545;
const PG_DATE_END: i64 = 2_145_031_949;
const PG_TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const PG_TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;

fn decode(ty: &Type, raw: &[u8]) -> Result<String, BoxError> {
    match *ty {
        Type::UUID => {
            let b = <[u8; 16]>::try_from(raw).map_err(|_| err("a uuid is 16 bytes"))?;
            let mut s = String::with_capacity(36);
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                let _ = write!(s, "{byte:02x}");
            }
            Ok(s)
        }
        Type::JSON => utf8(raw),
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => utf8(rest),
            _ => Err(err("unknown jsonb version")),
        },
        Type::NUMERIC => decode_numeric(raw),
        Type::DATE => match be_i32(raw)? {
            i32::MAX => Ok("infinity".into()),
            i32::MIN => Ok("-infinity".into()),
            d if (PG_DATE_MIN..PG_DATE_END).contains(&i64::from(d)) => {
                Ok(format_date(i64::from(d) + UNIX_TO_PG_DAYS))
            }
            _ => Err(err("date out of PostgreSQL's range")),
        },
        Type::TIME => {
            let us = be_i64(raw)?;
            if !(0..=MICROS_PER_DAY).contains(&us) {
                return Err(err("time of day out of range"));
            }
            Ok(format_time(us))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let us = be_i64(raw)?;
            match us {
                i64::MAX => return Ok("infinity".into()),
                i64::MIN => return Ok("-infinity".into()),
                t if !(PG_TIMESTAMP_MIN..PG_TIMESTAMP_END).contains(&t) => {
                    return Err(err("timestamp out of PostgreSQL's range"))
                }
                _ => {}
            }
            let date = format_date(us.div_euclid(MICROS_PER_DAY) + UNIX_TO_PG_DAYS);
            let time = format_time(us.rem_euclid(MICROS_PER_DAY));
            let zone = if *ty == Type::TIMESTAMPTZ { "+00" } else { "" };
            // PostgreSQL puts the era last: `0044-03-15 12:00:00+00 BC`.
            Ok(match date.strip_suffix(" BC") {
                Some(d) => format!("{d} {time}{zone} BC"),
                None => format!("{date} {time}{zone}"),
            })
        }
        _ => Err(err(format!("type {} is not decoded as text", ty.name()))),
    }
}

/// `YYYY-MM-DD` (with ` BC` for years before 1) of a day counted from 1970-01-01.
fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// `HH:MM:SS[.ffffff]`, trailing zeros of the fraction dropped as PostgreSQL does.
fn format_time(us: i64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// PostgreSQL's binary numeric: digit count, weight (of the first base-10000
/// digit), sign, display scale, then the base-10000 digits.
fn decode_numeric(raw: &[u8]) -> Result<String, BoxError> {
    let ndigits = be_i16(raw, 0)?;
    let weight = i32::from(be_i16(raw, 2)?);
    let sign = be_i16(raw, 4)? as u16;
    let dscale = be_i16(raw, 6)?;
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        0 | NUMERIC_NEG => {}
        _ => return Err(err("invalid numeric sign")),
    }
    let (Ok(ndigits), Ok(dscale)) = (usize::try_from(ndigits), usize::try_from(dscale)) else {
        return Err(err("invalid numeric header"));
    };
    if raw.len() != 8 + 2 * ndigits {
        return Err(err("numeric length does not match its digit count"));
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = be_i16(raw, 8 + 2 * i)?;
        if !(0..10_000).contains(&d) {
            return Err(err("invalid numeric digit"));
        }
        digits.push(d);
    }
    let digit = |i: i32| -> i16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut s = String::new();
    // The integer part: the first non-zero base-10000 digit unpadded, the
    // rest padded to four; "0" when there is none.
    let mut int = String::new();
    for i in 0..=weight {
        let d = digit(i);
        if int.is_empty() {
            if d != 0 {
                let _ = write!(int, "{d}");
            }
        } else {
            let _ = write!(int, "{d:04}");
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    s.push_str(&int);
    if dscale > 0 {
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    // A minus only before a value that shows a non-zero digit (digits past
    // the display scale, which PostgreSQL never sends, do not count).
    if sign == NUMERIC_NEG && s.bytes().any(|b| matches!(b, b'1'..=b'9')) {
        s.insert(0, '-');
    }
    Ok(s)
}

/// Encodes a text parameter for one of the [`handles`] types.
pub(crate) fn encode(ty: &Type, text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    match *ty {
        Type::UUID => {
            let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
            let valid_dashes = text.len() == 32
                || (text.len() == 36
                    && text
                        .char_indices()
                        .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-')));
            if hex.len() != 32 || !valid_dashes {
                return Err(err(format!("not a uuid: {text:?}")));
            }
            for pair in hex.chunks(2) {
                let byte = std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or_else(|| err(format!("not a uuid: {text:?}")))?;
                out.put_u8(byte);
            }
        }
        Type::JSON => out.put_slice(text.as_bytes()),
        Type::JSONB => {
            out.put_u8(1);
            out.put_slice(text.as_bytes());
        }
        Type::NUMERIC => encode_numeric(text, out)?,
        Type::DATE => {
            let days = match text {
                "infinity" => i64::from(i32::MAX),
                "-infinity" => i64::from(i32::MIN),
                _ => parse_date(text)? - UNIX_TO_PG_DAYS,
            };
            let in_range = (PG_DATE_MIN..PG_DATE_END).contains(&days)
                || days == i64::from(i32::MAX)
                || days == i64::from(i32::MIN);
            if !in_range {
                return Err(err(format!("date out of PostgreSQL's range: {text:?}")));
            }
            out.put_i32(i32::try_from(days).map_err(|_| err("date out of range"))?);
        }
        Type::TIME => out.put_i64(parse_time(text)?),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let us = match text {
                "infinity" => i64::MAX,
                "-infinity" => i64::MIN,
                _ => parse_timestamp(text, *ty == Type::TIMESTAMPTZ)?,
            };
            if !(PG_TIMESTAMP_MIN..PG_TIMESTAMP_END).contains(&us)
                && us != i64::MAX
                && us != i64::MIN
            {
                return Err(err(format!(
                    "timestamp out of PostgreSQL's range: {text:?}"
                )));
            }
            out.put_i64(us);
        }
        _ => return Err(err(format!("type {} is not encoded from text", ty.name()))),
    }
    Ok(())
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, BoxError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("bad {what}: {s:?}")));
    }
    s.parse().map_err(|_| err(format!("bad {what}: {s:?}")))
}

/// `YYYY-MM-DD[ BC]` → days since 1970-01-01.
fn parse_date(s: &str) -> Result<i64, BoxError> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (s, false),
    };
    let mut it = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else {
        return Err(err(format!("not a date (YYYY-MM-DD): {s:?}")));
    };
    let (y, m, d): (i64, u32, u32) = (number(y, "year")?, number(m, "month")?, number(d, "day")?);
    if bc && y == 0 {
        return Err(err(format!("there is no year 0 BC: {s:?}")));
    }
    // Year 1 BC is the proleptic year 0.
    let y = if bc { 1 - y } else { y };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(err(format!("bad month in {s:?}"))),
    };
    if d == 0 || d > days_in_month {
        return Err(err(format!("bad day in {s:?}")));
    }
    Ok(days_from_civil(y, m, d))
}

/// `HH:MM[:SS[.ffffff]]` → microseconds since midnight.
fn parse_time(s: &str) -> Result<i64, BoxError> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let mut it = hms.split(':');
    let h: i64 = number(it.next().unwrap_or(""), "hour")?;
    let m: i64 = number(it.next().unwrap_or(""), "minute")?;
    let sec: i64 = match it.next() {
        Some(x) => number(x, "second")?,
        None => 0,
    };
    if it.next().is_some() || h > 24 || m > 59 || sec > 59 || (h == 24 && (m, sec) != (0, 0)) {
        return Err(err(format!("not a time (HH:MM:SS): {s:?}")));
    }
    let mut us = ((h * 60 + m) * 60 + sec) * 1_000_000;
    if let Some(f) = frac {
        if f.len() > 6 {
            return Err(err(format!("more than microsecond precision: {s:?}")));
        }
        let digits: i64 = number(f, "fraction")?;
        us += digits * 10_i64.pow(6 - f.len() as u32);
    }
    if h == 24 && us != 24 * 3_600_000_000 {
        return Err(err(format!("not a time (HH:MM:SS): {s:?}")));
    }
    Ok(us)
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.f]]` with, for `timestamptz`, an optional `Z`
/// or `±HH[:MM]` offset (none means UTC) → microseconds since 2000-01-01.
fn parse_timestamp(s: &str, with_zone: bool) -> Result<i64, BoxError> {
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (s, false),
    };
    let (date, rest) = match body.find([' ', 'T']) {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, "00:00"),
    };
    let days = if bc {
        parse_date(&format!("{date} BC"))?
    } else {
        parse_date(date)?
    } - UNIX_TO_PG_DAYS;
    let (time, offset_us) = split_offset(rest)?;
    if offset_us.is_some() && !with_zone {
        return Err(err(format!(
            "a timestamp without time zone takes no offset: {s:?}"
        )));
    }
    let us = parse_time(time)?;
    days.checked_mul(MICROS_PER_DAY)
        .and_then(|d| d.checked_add(us))
        .and_then(|t| t.checked_sub(offset_us.unwrap_or(0)))
        .ok_or_else(|| err("timestamp out of range"))
}

/// Splits `HH:MM:SS[.f]` from a trailing `Z`, `+HH`, `+HH:MM` or `+HHMM`.
fn split_offset(s: &str) -> Result<(&str, Option<i64>), BoxError> {
    if let Some(t) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Ok((t, Some(0)));
    }
    let Some(i) = s.rfind(['+', '-']) else {
        return Ok((s, None));
    };
    let (time, off) = (&s[..i], &s[i + 1..]);
    let sign = if s.as_bytes()[i] == b'-' { -1 } else { 1 };
    let (h, m) = match off.split_once(':') {
        Some((h, m)) => (h, m),
        None if off.len() == 4 => off.split_at(2),
        None => (off, "0"),
    };
    let (h, m): (i64, i64) = (number(h, "offset hours")?, number(m, "offset minutes")?);
    if h > 15 || m > 59 {
        return Err(err(format!("bad time zone offset in {s:?}")));
    }
    Ok((time, Some(sign * (h * 3600 + m * 60) * 1_000_000)))
}

/// Decimal text (`-12.3400`, `NaN`, `Infinity`) → PostgreSQL's binary numeric.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    let header = |out: &mut BytesMut, n: i16, w: i16, sign: u16, dscale: i16| {
        out.put_i16(n);
        out.put_i16(w);
        out.put_u16(sign);
        out.put_i16(dscale);
    };
    match text {
        "NaN" => {
            header(out, 0, 0, NUMERIC_NAN, 0);
            return Ok(());
        }
        "Infinity" | "+Infinity" => {
            header(out, 0, 0, NUMERIC_PINF, 0);
            return Ok(());
        }
        "-Infinity" => {
            header(out, 0, 0, NUMERIC_NINF, 0);
            return Ok(());
        }
        _ => {}
    }
    let bad = || err(format!("not a decimal number: {text:?}"));
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let dscale = i16::try_from(frac.len()).map_err(|_| bad())?;
    let int = int.trim_start_matches('0');
    // Pad to whole base-10000 digits: the integer part on the left, the
    // fraction on the right.
    let lead = (4 - int.len() % 4) % 4;
    let trail = (4 - frac.len() % 4) % 4;
    let padded: String = "0".repeat(lead) + int + frac + &"0".repeat(trail);
    let mut digits: Vec<i16> = padded
        .as_bytes()
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |a, d| a * 10 + i16::from(d - b'0')))
        .collect();
    let mut weight = i32::try_from((lead + int.len()) / 4).map_err(|_| bad())? - 1;
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let n = i16::try_from(digits.len()).map_err(|_| bad())?;
    let w = i16::try_from(weight).map_err(|_| bad())?;
    let sign = if neg && !digits.is_empty() {
        NUMERIC_NEG
    } else {
        0
    };
    header(out, n, w, sign, dscale);
    for d in digits {
        out.put_i16(d);
    }
    Ok(())
}

/// For the fuzz target: decode arbitrary bytes, and re-encode what decodes.
#[cfg(fuzzing)]
pub(crate) fn fuzz_round_trip(kind: u8, raw: &[u8]) {
    let ty = &TEXT_TYPES[usize::from(kind) % TEXT_TYPES.len()];
    let Ok(text) = decode(ty, raw) else { return };
    let mut again = BytesMut::new();
    // Text we print must be text we accept, meaning the same value (the
    // bytes may differ: e.g. a numeric's unnormalised digits).
    encode(ty, &text, &mut again).unwrap_or_else(|e| panic!("{text:?} does not encode: {e}"));
    assert_eq!(decode(ty, &again).ok().as_deref(), Some(text.as_str()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ty: Type, text: &str) -> String {
        let mut b = BytesMut::new();
        encode(&ty, text, &mut b).unwrap();
        decode(&ty, &b).unwrap()
    }

    #[test]
    fn numerics_round_trip_exactly() {
        for s in [
            "0",
            "1",
            "-1",
            "12345678.9",
            "0.0001",
            "-0.00012300",
            "10000",
            "99999999999999999999.123456789",
            "3.14159",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(round(Type::NUMERIC, s), s, "{s}");
        }
        assert_eq!(round(Type::NUMERIC, "007.50"), "7.50");
        assert_eq!(round(Type::NUMERIC, "-0.0"), "0.0");
        for bad in ["", "-", "1.2.3", "1e5", "abc", "."] {
            assert!(
                encode(&Type::NUMERIC, bad, &mut BytesMut::new()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn dates_and_times_round_trip() {
        assert_eq!(round(Type::DATE, "2000-01-01"), "2000-01-01");
        assert_eq!(round(Type::DATE, "1969-12-31"), "1969-12-31");
        assert_eq!(round(Type::DATE, "2024-02-29"), "2024-02-29");
        assert_eq!(round(Type::DATE, "infinity"), "infinity");
        assert_eq!(round(Type::DATE, "0044-03-15 BC"), "0044-03-15 BC");
        assert_eq!(round(Type::DATE, "0001-01-01 BC"), "0001-01-01 BC");
        assert!(encode(&Type::DATE, "0000-01-01 BC", &mut BytesMut::new()).is_err());
        assert_eq!(
            round(Type::TIMESTAMPTZ, "0044-03-15 12:00:00.25+00 BC"),
            "0044-03-15 12:00:00.25+00 BC"
        );
        assert_eq!(round(Type::TIME, "23:59:59.5"), "23:59:59.5");
        assert_eq!(round(Type::TIME, "07:05"), "07:05:00");
        assert_eq!(
            round(Type::TIMESTAMP, "2026-11-25T16:30:00.000123"),
            "2026-11-25 16:30:00.000123"
        );
        assert_eq!(
            round(Type::TIMESTAMPTZ, "2026-11-25 18:30:00+02"),
            "2026-11-25 16:30:00+00"
        );
        assert_eq!(
            round(Type::TIMESTAMPTZ, "2026-11-25 16:30:00Z"),
            "2026-11-25 16:30:00+00"
        );
        for bad in ["2023-02-29", "2026-13-01", "2026-1-", "x"] {
            assert!(
                encode(&Type::DATE, bad, &mut BytesMut::new()).is_err(),
                "{bad}"
            );
        }
        for bad in ["25:00", "12:60", "12:00:00.1234567", "1:2:3:4"] {
            assert!(
                encode(&Type::TIME, bad, &mut BytesMut::new()).is_err(),
                "{bad}"
            );
        }
        assert!(encode(
            &Type::TIMESTAMP,
            "2026-11-25 16:30+01",
            &mut BytesMut::new()
        )
        .is_err());
    }

    proptest::proptest! {
        // What a server (or anything posing as one) sends is decoded to a
        // value or a typed error, never a panic; so is any text a caller binds.
        #[test]
        fn arbitrary_bytes_and_text_never_panic(
            t in 0usize..8,
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            text in ".{0,40}",
        ) {
            let ty = &TEXT_TYPES[t];
            let _ = decode(ty, &raw);
            let _ = encode(ty, &text, &mut BytesMut::new());
        }

        // Decimal text survives the binary form exactly (sign, leading
        // zeros dropped, scale kept).
        #[test]
        fn decimal_text_round_trips(
            neg in proptest::bool::ANY,
            int in "[0-9]{0,30}",
            frac in "[0-9]{0,30}",
        ) {
            proptest::prop_assume!(!(int.is_empty() && frac.is_empty()));
            let text = format!("{}{int}{}{frac}", if neg { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
            let mut canon = int.trim_start_matches('0').to_string();
            if canon.is_empty() {
                canon.push('0');
            }
            if !frac.is_empty() {
                canon = format!("{canon}.{frac}");
            }
            let is_zero = !int.bytes().chain(frac.bytes()).any(|b| b != b'0');
            if neg && !is_zero {
                canon.insert(0, '-');
            }
            proptest::prop_assert_eq!(round(Type::NUMERIC, &text), canon);
        }

        // Every instant within ±3000 years at microsecond precision comes back.
        #[test]
        fn timestamps_round_trip(us in -94_000_000_000_000_000i64..31_000_000_000_000_000i64) {
            let mut b = BytesMut::new();
            b.put_i64(us);
            let text = decode(&Type::TIMESTAMP, &b).unwrap();
            let mut back = BytesMut::new();
            encode(&Type::TIMESTAMP, &text, &mut back).unwrap();
            proptest::prop_assert_eq!(&back[..], &b[..]);
        }
    }

    #[test]
    fn uuids_and_json() {
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(round(Type::UUID, u), u);
        assert_eq!(round(Type::UUID, &u.replace('-', "")), u);
        for bad in [
            "a0eebc99",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
            "a0eebc999c0b-4ef8-bb6d-6bb9bd380a11-",
        ] {
            assert!(
                encode(&Type::UUID, bad, &mut BytesMut::new()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(round(Type::JSONB, r#"{"a": 1}"#), r#"{"a": 1}"#);
        assert!(decode(&Type::JSONB, b"\x02{}").is_err());
        assert!(
            decode(&Type::NUMERIC, b"\x00").is_err(),
            "truncated input is an error"
        );
    }
}
