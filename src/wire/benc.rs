//! Allocation-free reading and writing of the small flat bencoded dicts BEP 10 and BEP 9 use.
//!
//! serde_bencode would need a struct per message and fails the whole dict when one field has
//! an unexpected type, while these dicts come from every client under the sun and must be
//! read field by field, ignoring what does not fit. Input is always structurally validated
//! with [`crate::bencode`] first, so the walkers here only slice already-checked bytes (and
//! still use checked indexing, returning `None` rather than panicking).

use crate::bencode::{self, MAX_DEPTH};

/// Iterator over the `(key, raw value)` pairs of a dict whose bytes `buf[start..]` have been
/// validated. Raw values are the complete bencoded encodings (`i5e`, `3:abc`, `d...e`).
pub(super) struct DictEntries<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> DictEntries<'a> {
    /// Entries of the dict starting at `buf[0]`; `None` if `buf` does not start with `d`.
    pub(super) fn new(buf: &'a [u8]) -> Option<Self> {
        (buf.first() == Some(&b'd')).then_some(DictEntries { buf, pos: 1 })
    }
}

impl<'a> Iterator for DictEntries<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if *self.buf.get(self.pos)? == b'e' {
            return None;
        }
        let key_end = bencode::scan_value(self.buf, self.pos, MAX_DEPTH).ok()?;
        let key = as_bytes(self.buf.get(self.pos..key_end)?)?;
        let value_end = bencode::scan_value(self.buf, key_end, MAX_DEPTH).ok()?;
        let value = self.buf.get(key_end..value_end)?;
        self.pos = value_end;
        Some((key, value))
    }
}

/// The integer in a raw `i...e` value.
pub(super) fn as_int(raw: &[u8]) -> Option<i64> {
    let body = raw.strip_prefix(b"i")?.strip_suffix(b"e")?;
    bencode::parse_int(body)
}

/// The payload of a raw `<len>:<bytes>` value.
pub(super) fn as_bytes(raw: &[u8]) -> Option<&[u8]> {
    if !raw.first()?.is_ascii_digit() {
        return None;
    }
    let colon = raw.iter().position(|&b| b == b':')?;
    raw.get(colon + 1..)
}

pub(super) use crate::bencode::{put_bytes, put_int};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_entries_and_reads_scalars() {
        let buf = b"d1:ai-3e3:bcd2:xy1:dd1:ei1eee";
        let got: Vec<_> = DictEntries::new(buf).unwrap().collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], &b"i-3e"[..]),
                (b"bcd", b"2:xy"),
                (b"d", b"d1:ei1ee")
            ]
        );
        assert_eq!(as_int(b"i-3e"), Some(-3));
        assert_eq!(as_int(b"2:xy"), None);
        assert_eq!(as_bytes(b"2:xy"), Some(&b"xy"[..]));
        assert_eq!(as_bytes(b"i1e"), None);
        assert!(DictEntries::new(b"le").is_none());
        let mut out = Vec::new();
        put_bytes(&mut out, b"spam");
        put_int(&mut out, -42);
        assert_eq!(out, b"4:spami-42e");
    }
}
