//! What every 160-bit identifier type shares (node ids, info hashes): construction from
//! random bits, a slice or hex (also as `FromStr`, with [`ParseIdError`]), the raw bytes,
//! and the lowercase-hex `Display` and named `Debug` forms. Written once, as a macro, because the types must stay distinct (a swapped
//! node id and info hash must not compile) while their byte handling is the same.

/// Why text is not a 160-bit id: anything but exactly 40 hex digits. Carries the input so
/// the one-line error a command prints names what was typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError {
    /// What was being parsed ("an info hash", "a node id").
    pub what: &'static str,
    /// The text that did not parse.
    pub input: String,
}

impl std::fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected 40 hex digits for {}, got {:?}",
            self.what, self.input
        )
    }
}

impl std::error::Error for ParseIdError {}

/// Implements the shared constructors, accessors and formatting for a newtype
/// `$ty(pub [u8; 20])`; `$what` names a value of it in the generated docs.
macro_rules! id160_common {
    ($ty:ident, $what:literal) => {
        impl $ty {
            #[doc = concat!("A uniformly random ", $what, " (fresh identities, and values for")]
            /// tests, simulations and benchmarks that must exist nowhere else).
            pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
                let mut b = [0u8; 20];
                rng.fill_bytes(&mut b);
                $ty(b)
            }

            #[doc = concat!("Builds ", $what, " from a slice that must be exactly 20 bytes")]
            /// long (wire fields and store keys arrive as slices; any other length is
            /// malformed, hence `None`).
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 20]>::try_from(b).ok().map($ty)
            }

            /// The raw bytes, as sent on the wire and stored as keys.
            pub fn as_bytes(&self) -> &[u8; 20] {
                &self.0
            }

            /// Lowercase hex (40 digits), the usual human form (magnet links, logs, pages).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses exactly 40 hex digits (either case); `None` otherwise.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut b = [0u8; 20];
                hex::decode_to_slice(s, &mut b).ok()?;
                Some($ty(b))
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::util::id160::ParseIdError;

            /// Parses exactly 40 hex digits (command lines, web queries, files).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::from_hex(s).ok_or_else(|| $crate::util::id160::ParseIdError {
                    what: $what,
                    input: s.to_owned(),
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($ty), "({})"), self)
            }
        }
    };
}

pub(crate) use id160_common;
