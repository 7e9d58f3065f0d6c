//! Process-wide event counters (PEX messages, connections per transport): the binaries
//! print them once a second and tests read them, so each set is a few relaxed atomics and a
//! `Copy` snapshot struct. The macro writes the statics, the struct and its snapshot
//! function from one field list, so a counter cannot be declared and then forgotten in the
//! snapshot.

/// Declares one static `AtomicU64` per field (named by the identifier after `=`), a `Copy`
/// snapshot struct holding a `u64` per field, and a function returning the snapshot.
macro_rules! process_counters {
    (
        $(#[$smeta:meta])*
        pub struct $name:ident;
        $(#[$fmeta:meta])*
        pub fn $snap:ident;
        $( $(#[$doc:meta])* $field:ident = $stat:ident, )*
    ) => {
        $( static $stat: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0); )*

        $(#[$smeta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$doc])* pub $field: u64, )*
        }

        $(#[$fmeta])*
        pub fn $snap() -> $name {
            $name {
                $( $field: $stat.load(std::sync::atomic::Ordering::Relaxed), )*
            }
        }
    };
}

pub(crate) use process_counters;
