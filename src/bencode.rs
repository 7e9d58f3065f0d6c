//! Structural pre-scan of bencoded input.
//!
//! serde_bencode decodes our metainfo, but it trusts its input in three ways that the network
//! abuses: it recurses once per nesting level (a ~20k-deep list aborts a 2 MiB stack), it
//! accepts trailing garbage after the first value, and it reads any length prefix it is given.
//! [`validate`] walks the bytes once, iteratively and without allocating, and only input that
//! passes it is handed to serde. The same walk finds the raw byte span of a value (e.g. a
//! torrent's `info` dict, whose SHA-1 must be taken over the bytes as received). The KRPC
//! decoder, on the hot path, does not pre-scan: it makes these same checks with
//! [`scan_string`], [`read_int`] and [`scan_value`] while it extracts the fields.

#![deny(missing_docs)]

use std::fmt;
use std::ops::Range;

/// Deepest nesting any message we handle legitimately needs (KRPC uses 3, metainfo 5).
pub const MAX_DEPTH: usize = 32;

/// Why a buffer is not one well-formed bencoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// The input ended inside a value.
    Truncated,
    /// A byte that cannot start a value, at this offset.
    Unexpected(usize),
    /// An integer that is not `-?[0-9]+` or does not fit an i64.
    BadInteger(usize),
    /// A string length that is malformed or longer than the rest of the input.
    BadLength(usize),
    /// A dictionary key that is not a byte string.
    BadKey(usize),
    /// Nesting deeper than the limit.
    TooDeep(usize),
    /// Bytes left over after the value ended.
    Trailing(usize),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Truncated => write!(f, "truncated bencode"),
            ScanError::Unexpected(p) => write!(f, "unexpected byte at offset {p}"),
            ScanError::BadInteger(p) => write!(f, "malformed integer at offset {p}"),
            ScanError::BadLength(p) => write!(f, "bad string length at offset {p}"),
            ScanError::BadKey(p) => write!(f, "dictionary key is not a string at offset {p}"),
            ScanError::TooDeep(p) => write!(f, "nesting too deep at offset {p}"),
            ScanError::Trailing(p) => write!(f, "trailing bytes after offset {p}"),
        }
    }
}

impl std::error::Error for ScanError {}

/// Checks that `buf` is exactly one bencoded value nested at most `max_depth` deep.
pub fn validate(buf: &[u8], max_depth: usize) -> Result<(), ScanError> {
    let end = scan_value(buf, 0, max_depth)?;
    if end != buf.len() {
        return Err(ScanError::Trailing(end));
    }
    Ok(())
}

/// Returns the end offset of the single value starting at `start`.
///
/// Iterative: nesting state is one bit per level (dict or list) plus one bit saying whether a
/// dict is waiting for a key, so `max_depth` is capped at 64 and no memory is allocated.
pub fn scan_value(buf: &[u8], start: usize, max_depth: usize) -> Result<usize, ScanError> {
    let max_depth = max_depth.min(64);
    let mut is_dict: u64 = 0;
    let mut want_key: u64 = 0;
    let mut depth: usize = 0;
    let mut pos = start;
    loop {
        let byte = *buf.get(pos).ok_or(ScanError::Truncated)?;
        let level_bit = if depth > 0 { 1u64 << (depth - 1) } else { 0 };
        let expecting_key = depth > 0 && is_dict & level_bit != 0 && want_key & level_bit != 0;
        if byte == b'e' && depth > 0 {
            if is_dict & level_bit != 0 && want_key & level_bit == 0 {
                // A key without a value.
                return Err(ScanError::Unexpected(pos));
            }
            depth -= 1;
            pos += 1;
        } else {
            if expecting_key && !byte.is_ascii_digit() {
                return Err(ScanError::BadKey(pos));
            }
            match byte {
                b'i' => pos = scan_int(buf, pos)?,
                b'0'..=b'9' => pos = scan_string(buf, pos)?.end,
                b'l' | b'd' => {
                    if depth >= max_depth {
                        return Err(ScanError::TooDeep(pos));
                    }
                    // The container itself fills the slot of the enclosing dict's value.
                    if depth > 0 && is_dict & level_bit != 0 {
                        want_key ^= level_bit;
                    }
                    depth += 1;
                    let bit = 1u64 << (depth - 1);
                    if byte == b'd' {
                        is_dict |= bit;
                        want_key |= bit;
                    } else {
                        is_dict &= !bit;
                    }
                    pos += 1;
                    continue;
                }
                _ => return Err(ScanError::Unexpected(pos)),
            }
            if depth > 0 && is_dict & level_bit != 0 {
                want_key ^= level_bit;
            }
        }
        if depth == 0 {
            return Ok(pos);
        }
    }
}

/// Scans `i<digits>e` at `pos`, returning the offset after the `e`.
fn scan_int(buf: &[u8], pos: usize) -> Result<usize, ScanError> {
    read_int(buf, pos).map(|(_, end)| end)
}

/// Reads the integer `i<digits>e` starting at `pos` (which must hold the `i`), returning its
/// value and the offset after the `e`, with exactly the errors [`validate`] reports there.
/// Public so that single-pass decoders (the KRPC decoder) can validate while they extract.
pub fn read_int(buf: &[u8], pos: usize) -> Result<(i64, usize), ScanError> {
    let body_start = pos.checked_add(1).ok_or(ScanError::Truncated)?;
    let rest = buf.get(body_start..).ok_or(ScanError::Truncated)?;
    let len = rest
        .iter()
        .position(|&b| b == b'e')
        .ok_or(ScanError::Truncated)?;
    let value = parse_int(&rest[..len]).ok_or(ScanError::BadInteger(pos))?;
    Ok((value, body_start + len + 1))
}

/// Parses `-?[0-9]+` into an i64 without allocating; `None` when malformed or out of range.
pub fn parse_int(body: &[u8]) -> Option<i64> {
    let (neg, digits) = match body.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, body),
    };
    // No cap on the digit count: leading zeros are read (see the crate's leniency rules),
    // so `i-02036203620365475477e` is a valid i64 with 20 digits; the checked arithmetic
    // below is what refuses values outside i64.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        let digit = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if neg {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    Some(value)
}

/// Scans `<len>:<bytes>` at `pos`, returning the range of the payload bytes (always within
/// `buf`), with exactly the errors [`validate`] reports there. Public for single-pass
/// decoders, like [`read_int`].
pub fn scan_string(buf: &[u8], pos: usize) -> Result<Range<usize>, ScanError> {
    // Fast path for one- and two-digit lengths (every KRPC key, most KRPC values): the same
    // result as the loop below, whose early `len > buf.len()` exit can only fire when the
    // final bounds check would fail too, with the same error.
    if let Some(&[a, b, c]) = buf.get(pos..pos.saturating_add(3)) {
        let short = match (a, b, c) {
            (b'0'..=b'9', b':', _) => Some((usize::from(a - b'0'), pos + 2)),
            (b'0'..=b'9', b'0'..=b'9', b':') => {
                Some((usize::from(a - b'0') * 10 + usize::from(b - b'0'), pos + 3))
            }
            _ => None,
        };
        if let Some((len, start)) = short {
            let end = start + len;
            if end > buf.len() {
                return Err(ScanError::BadLength(pos));
            }
            return Ok(start..end);
        }
    }
    scan_string_general(buf, pos)
}

/// [`scan_string`] for any length prefix.
fn scan_string_general(buf: &[u8], pos: usize) -> Result<Range<usize>, ScanError> {
    let mut len: usize = 0;
    let mut i = pos;
    loop {
        match buf.get(i) {
            None => return Err(ScanError::Truncated),
            Some(b':') => break,
            Some(d @ b'0'..=b'9') => {
                len = len
                    .checked_mul(10)
                    .and_then(|l| l.checked_add(usize::from(d - b'0')))
                    .ok_or(ScanError::BadLength(pos))?;
                // Longer than the whole input can never be satisfied; stop before overflow.
                if len > buf.len() {
                    return Err(ScanError::BadLength(pos));
                }
            }
            Some(_) => return Err(ScanError::BadLength(pos)),
        }
        i += 1;
    }
    let start = i + 1;
    let end = start.checked_add(len).ok_or(ScanError::BadLength(pos))?;
    if end > buf.len() {
        return Err(ScanError::BadLength(pos));
    }
    Ok(start..end)
}

/// In a buffer whose top-level value (starting at offset 0) is a dict, returns the raw byte
/// span of the value stored under `key`, exactly as it appears in the input.
///
/// Used where a hash must be taken over bytes as received (a torrent's `info` dict) and where
/// a dict is followed by a raw payload (BEP 9 `data` messages: pass the dict's own span).
pub fn dict_value_span(buf: &[u8], key: &[u8]) -> Result<Option<Range<usize>>, ScanError> {
    if buf.first() != Some(&b'd') {
        return Err(ScanError::Unexpected(0));
    }
    let mut pos = 1;
    loop {
        match buf.get(pos) {
            None => return Err(ScanError::Truncated),
            Some(b'e') => return Ok(None),
            Some(b'0'..=b'9') => {}
            Some(_) => return Err(ScanError::BadKey(pos)),
        }
        let key_range = scan_string(buf, pos)?;
        let value_start = key_range.end;
        let value_end = scan_value(buf, value_start, MAX_DEPTH)?;
        if &buf[key_range] == key {
            return Ok(Some(value_start..value_end));
        }
        pos = value_end;
    }
}

// ---------------------------------------------------------------- writing

// The one bencode writer of the crate (KRPC messages, BEP 9/10 dicts, .torrent files). It
// appends to a caller's buffer and allocates nothing of its own: the KRPC encoder runs once
// per reply on the node's hot path.

/// Appends `<len>:<bytes>`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends `i<n>e`.
pub fn put_int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    put_int_body(out, n);
}

/// Appends an integer without its leading `i` (for callers that write a constant prefix
/// ending in `i`), and the closing `e`.
pub fn put_int_body(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    put_uint(out, v.unsigned_abs());
    out.push(b'e');
}

/// Appends the decimal digits of `v`. Nearly every number we write (string lengths, ports,
/// error codes) has at most three digits, so those skip the general division loop.
pub fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 10 {
        out.push(b'0' + v as u8);
    } else if v < 100 {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    } else if v < 1000 {
        out.extend_from_slice(&[
            b'0' + (v / 100) as u8,
            b'0' + (v / 10 % 10) as u8,
            b'0' + (v % 10) as u8,
        ]);
    } else {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = v;
        while v > 0 {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_values() {
        for ok in [
            &b"i0e"[..],
            b"i-42e",
            b"4:spam",
            b"0:",
            b"le",
            b"de",
            b"l4:spami42ee",
            b"d3:bar4:spam3:fooi42ee",
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            b"d1:ald1:xleee1:bi1ee",
        ] {
            assert_eq!(
                validate(ok, MAX_DEPTH),
                Ok(()),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn rejects_malformed_values() {
        let cases: &[(&[u8], ScanError)] = &[
            (b"", ScanError::Truncated),
            (b"i12", ScanError::Truncated),
            (b"iabce", ScanError::BadInteger(0)),
            (b"ie", ScanError::BadInteger(0)),
            (b"i99999999999999999999e", ScanError::BadInteger(0)),
            (b"5:abc", ScanError::BadLength(0)),
            (b"9223372036854775808:x", ScanError::BadLength(0)),
            (b"l", ScanError::Truncated),
            (b"di1e1:ae", ScanError::BadKey(1)),
            (b"d1:ae", ScanError::Unexpected(4)),
            (b"x", ScanError::Unexpected(0)),
            (b"dei1e", ScanError::Trailing(2)),
            (b"e", ScanError::Unexpected(0)),
        ];
        for (input, want) in cases {
            assert_eq!(
                validate(input, MAX_DEPTH),
                Err(*want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn depth_bomb_is_refused_without_recursion() {
        let mut bomb = vec![b'l'; 100_000];
        bomb.extend(std::iter::repeat_n(b'e', 100_000));
        assert_eq!(
            validate(&bomb, MAX_DEPTH),
            Err(ScanError::TooDeep(MAX_DEPTH))
        );
        let mut ok = vec![b'l'; MAX_DEPTH];
        ok.extend(std::iter::repeat_n(b'e', MAX_DEPTH));
        assert_eq!(validate(&ok, MAX_DEPTH), Ok(()));
    }

    #[test]
    fn nested_dict_keys_alternate_correctly() {
        // A dict value that is itself a dict must not confuse the key/value parity.
        assert_eq!(validate(b"d1:ad1:bd1:ci1eee1:d1:ee", MAX_DEPTH), Ok(()));
        assert_eq!(
            validate(b"d1:ad1:bd1:ci1eeei5ee", MAX_DEPTH),
            Err(ScanError::BadKey(17))
        );
    }

    #[test]
    fn finds_raw_value_span() {
        let buf = b"d8:announce3:url4:infod6:lengthi5e4:name1:xe1:zi0ee";
        let span = dict_value_span(buf, b"info").unwrap().unwrap();
        assert_eq!(&buf[span], b"d6:lengthi5e4:name1:xe");
        assert_eq!(dict_value_span(buf, b"nope").unwrap(), None);
    }

    #[test]
    fn scan_string_fast_path_agrees_with_the_general_loop() {
        // Every buffer of up to 6 bytes over digits, ':' and a filler, at every offset.
        let alphabet = b"0129:x";
        let mut checked = 0;
        for len in 0..=6u32 {
            for n in 0..(alphabet.len() as u32).pow(len) {
                let mut k = n as usize;
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = alphabet[k % alphabet.len()];
                        k /= alphabet.len();
                        c
                    })
                    .collect();
                for pos in 0..=buf.len() {
                    assert_eq!(
                        scan_string(&buf, pos),
                        scan_string_general(&buf, pos),
                        "{:?} at {pos}",
                        String::from_utf8_lossy(&buf)
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 50_000);
        // Every one- and two-digit length (with and without a leading zero) against a payload
        // one short, exact and one over.
        for len in 0..100usize {
            for prefix in [len.to_string(), format!("0{len}")] {
                for payload in len.saturating_sub(1)..=len + 1 {
                    let mut buf = format!("x{prefix}:").into_bytes();
                    buf.extend(std::iter::repeat_n(b'y', payload));
                    assert_eq!(
                        scan_string(&buf, 1),
                        scan_string_general(&buf, 1),
                        "{prefix}"
                    );
                    if payload >= len {
                        assert_eq!(scan_string(&buf, 1).map(|r| r.len()), Ok(len), "{prefix}");
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_match_std_formatting_across_digit_counts() {
        let mut out = Vec::new();
        let mut check = |v: i64| {
            out.clear();
            put_int_body(&mut out, v);
            assert_eq!(out, format!("{v}e").into_bytes());
            if v >= 0 {
                out.clear();
                put_uint(&mut out, v as u64);
                assert_eq!(out, v.to_string().into_bytes());
            }
        };
        for base in [1i64, 10, 100, 1000, 10_000, 1_000_000_000_000_000_000] {
            for v in [base - 1, base, base + 1, 2 * base - 1] {
                check(v);
                check(-v);
            }
        }
        for v in [i64::MAX, i64::MIN, i64::MIN + 1, 65535, 99, 999] {
            check(v);
        }
        out.clear();
        put_uint(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().into_bytes());
    }

    #[test]
    fn the_writer_round_trips_through_the_reader() {
        for n in [
            0,
            7,
            -7,
            42,
            999,
            1000,
            -1000,
            123_456_789,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            put_int(&mut out, n);
            assert_eq!(out, format!("i{n}e").into_bytes());
            assert_eq!(read_int(&out, 0), Ok((n, out.len())));
        }
        for len in [0usize, 1, 9, 10, 99, 100, 999, 1000, 12_345] {
            let b = vec![b'x'; len];
            let mut out = Vec::new();
            put_bytes(&mut out, &b);
            assert_eq!(out[..out.len() - len], *format!("{len}:").as_bytes());
            assert_eq!(scan_string(&out, 0), Ok(out.len() - len..out.len()));
        }
    }

    #[test]
    fn parse_int_limits() {
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"+1"), None);
        // Leading zeros do not count towards the range (found by the `krpc` fuzz target:
        // the reference decoder read this value, we dropped the datagram as malformed).
        assert_eq!(
            parse_int(b"-02036203620365475477"),
            Some(-2_036_203_620_365_475_477)
        );
        assert_eq!(parse_int(b"00000000000000000000001"), Some(1));
        assert_eq!(parse_int(b"09223372036854775808"), None);
    }
}
