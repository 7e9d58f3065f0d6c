//! A fixed-length bit set in the peer-wire layout (BEP 3: high bit of byte 0 = piece 0), used
//! for our verified pieces, each peer's pieces, and the resume record.

use std::fmt;

/// A set of piece indices below a fixed length, stored as the wire sends it (the default is
/// the empty set of no pieces).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: usize,
    count: usize,
}

/// Why a peer's `bitfield` message does not fit the torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitfieldError {
    /// The byte length is not `ceil(pieces / 8)`.
    WrongLength {
        /// `ceil(pieces / 8)` for the torrent.
        expected: usize,
        /// The message's byte length.
        got: usize,
    },
    /// A bit past the last piece is set (BEP 3 says they must be zero).
    SpareBitsSet,
}

impl fmt::Display for BitfieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitfieldError::WrongLength { expected, got } => {
                write!(f, "bitfield of {got} bytes, expected {expected}")
            }
            BitfieldError::SpareBitsSet => write!(f, "bitfield sets bits past the last piece"),
        }
    }
}

impl std::error::Error for BitfieldError {}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: usize) -> Self {
        Bitfield {
            bytes: vec![0; len.div_ceil(8)],
            len,
            count: 0,
        }
    }

    /// The set holding every piece below `len`.
    pub fn full(len: usize) -> Self {
        let mut b = Bitfield::new(len);
        b.bytes.fill(0xff);
        b.clear_spare_bits();
        b.count = len;
        b
    }

    /// Parses a wire bitfield for a torrent of `len` pieces, refusing a wrong length or set
    /// spare bits (both mean the peer is broken or talking about another torrent).
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Self, BitfieldError> {
        let expected = len.div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                expected,
                got: bytes.len(),
            });
        }
        let mut b = Bitfield {
            bytes: bytes.to_vec(),
            len,
            count: 0,
        };
        let before: u32 = b.bytes.iter().map(|x| x.count_ones()).sum();
        b.clear_spare_bits();
        let after: u32 = b.bytes.iter().map(|x| x.count_ones()).sum();
        if before != after {
            return Err(BitfieldError::SpareBitsSet);
        }
        b.count = after as usize;
        Ok(b)
    }

    /// Like [`Self::from_bytes`] but lenient: a short input leaves the rest unset and spare
    /// bits are dropped. For our own resume record, which a version change may have resized.
    pub fn from_bytes_lossy(bytes: &[u8], len: usize) -> Self {
        let mut b = Bitfield::new(len);
        let n = b.bytes.len().min(bytes.len());
        b.bytes[..n].copy_from_slice(&bytes[..n]);
        b.clear_spare_bits();
        b.count = b.bytes.iter().map(|x| x.count_ones() as usize).sum();
        b
    }

    fn clear_spare_bits(&mut self) {
        let spare = self.bytes.len() * 8 - self.len;
        if spare > 0
            && let Some(last) = self.bytes.last_mut()
        {
            *last &= 0xffu8 << spare;
        }
    }

    /// Number of pieces the set ranges over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set ranges over no piece at all (length 0, not "no piece set").
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether every piece is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Whether `index` is in the set; `false` past the end (indices come from peers).
    pub fn get(&self, index: usize) -> bool {
        index < self.len && self.bytes[index / 8] & (0x80 >> (index % 8)) != 0
    }

    /// Adds `index`; returns whether it was newly added. Out-of-range indices are ignored.
    pub fn set(&mut self, index: usize) -> bool {
        if index >= self.len || self.get(index) {
            return false;
        }
        self.bytes[index / 8] |= 0x80 >> (index % 8);
        self.count += 1;
        true
    }

    /// Removes `index`; returns whether it was present.
    pub fn unset(&mut self, index: usize) -> bool {
        if !self.get(index) {
            return false;
        }
        self.bytes[index / 8] &= !(0x80 >> (index % 8));
        self.count -= 1;
        true
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The indices in the set, ascending.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(i, &b)| {
                (0..8)
                    .filter(move |bit| b & (0x80 >> bit) != 0)
                    .map(move |bit| i * 8 + bit)
            })
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.count, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layout_and_counts() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0) && b.set(9) && !b.set(9) && !b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert_eq!(b.ones().collect::<Vec<_>>(), [0, 9]);
        assert!(b.unset(0) && !b.unset(0));
        assert_eq!(b.count(), 1);
        let f = Bitfield::full(10);
        assert_eq!(f.as_bytes(), &[0xff, 0xc0]);
        assert!(f.is_full());
    }

    #[test]
    fn peer_bitfields_are_checked() {
        assert_eq!(
            Bitfield::from_bytes(&[0xff], 10),
            Err(BitfieldError::WrongLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Bitfield::from_bytes(&[0xff, 0xe0], 10),
            Err(BitfieldError::SpareBitsSet)
        );
        let b = Bitfield::from_bytes(&[0xff, 0xc0], 10).unwrap();
        assert!(b.is_full());
        let l = Bitfield::from_bytes_lossy(&[0xff], 10);
        assert_eq!(l.count(), 8);
    }
}
