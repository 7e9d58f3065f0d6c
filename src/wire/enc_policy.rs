//! Which handshake (plain BitTorrent or MSE/PE) a peer connection uses, as pure functions
//! of the user's `--encryption` policy and what happened on the previous attempt.
//!
//! Kept apart from the sockets so the retry rules (libtorrent's default: plain first,
//! encrypted again when a peer hangs up during the plain handshake) are tested without
//! I/O; the connection drivers only ask "what next?".

use super::mse::{CryptoSet, Incoming};

/// The `--encryption` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EncryptionPolicy {
    /// Accept both incoming; outgoing plain first, encrypted again if the peer closes
    /// during the plain handshake (libtorrent's default behaviour).
    #[default]
    Default,
    /// Outgoing encrypted first (RC4 preferred), plain again if that fails.
    Prefer,
    /// Encrypted only, RC4 only, both directions: plain peers are refused.
    Require,
    /// Plain only: no MSE out, incoming MSE refused.
    Disable,
}

/// One outgoing handshake attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A plain BitTorrent handshake.
    Plain,
    /// An MSE handshake offering these methods.
    Mse(CryptoSet),
}

/// How an outgoing attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handshake completed: the connection is in use, nothing more to try.
    Done,
    /// The peer refused or closed the stream during the handshake: worth another kind.
    RefusedDuringHandshake,
    /// Anything else (connect failure, timeout, wrong info hash): another handshake kind
    /// would not help.
    Failed,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Reconnect and try this.
    Try(Attempt),
    /// Stop: the connection is up or the peer is given up on.
    Stop,
    /// Stop, and say why: the policy requires encryption and the peer did not speak it.
    EncryptionRequiredButRefused,
}

impl EncryptionPolicy {
    /// The first outgoing attempt.
    pub fn first_attempt(self) -> Attempt {
        match self {
            EncryptionPolicy::Default | EncryptionPolicy::Disable => Attempt::Plain,
            EncryptionPolicy::Prefer => Attempt::Mse(CryptoSet::BOTH),
            EncryptionPolicy::Require => Attempt::Mse(CryptoSet::RC4),
        }
    }

    /// After `attempt` ended with `outcome`, what to do. At most one fallback per peer,
    /// so a peer that refuses everything costs two connections, not a loop.
    pub fn next(self, attempt: Attempt, outcome: Outcome) -> Next {
        match outcome {
            Outcome::Done | Outcome::Failed => Next::Stop,
            Outcome::RefusedDuringHandshake => match (self, attempt) {
                (EncryptionPolicy::Default, Attempt::Plain) => {
                    Next::Try(Attempt::Mse(CryptoSet::BOTH))
                }
                (EncryptionPolicy::Prefer, Attempt::Mse(_)) => Next::Try(Attempt::Plain),
                (EncryptionPolicy::Require, _) => Next::EncryptionRequiredButRefused,
                _ => Next::Stop,
            },
        }
    }

    /// Whether an incoming connection whose first bytes classify as `incoming` is
    /// accepted. `NeedMore` is accepted (the caller reads more and asks again).
    pub fn accepts_incoming(self, incoming: Incoming) -> bool {
        match (self, incoming) {
            (_, Incoming::NeedMore) => true,
            (EncryptionPolicy::Require, Incoming::Plain) => false,
            (EncryptionPolicy::Disable, Incoming::Mse) => false,
            _ => true,
        }
    }

    /// The methods an incoming MSE handshake may select.
    pub fn incoming_methods(self) -> CryptoSet {
        match self {
            EncryptionPolicy::Require => CryptoSet::RC4,
            _ => CryptoSet::BOTH,
        }
    }
}

/// The message logged when `require` meets a plain-only peer; tests match on it.
pub const ENCRYPTION_REQUIRED_MSG: &str =
    "encryption is required (--encryption require) but the peer did not speak MSE/PE";

#[cfg(test)]
mod tests {
    use super::*;
    use EncryptionPolicy::*;

    #[test]
    fn first_attempts() {
        assert_eq!(Default.first_attempt(), Attempt::Plain);
        assert_eq!(Disable.first_attempt(), Attempt::Plain);
        assert_eq!(Prefer.first_attempt(), Attempt::Mse(CryptoSet::BOTH));
        assert_eq!(Require.first_attempt(), Attempt::Mse(CryptoSet::RC4));
    }

    #[test]
    fn default_retries_encrypted_once() {
        let a = Default.first_attempt();
        let n = Default.next(a, Outcome::RefusedDuringHandshake);
        assert_eq!(n, Next::Try(Attempt::Mse(CryptoSet::BOTH)));
        let Next::Try(b) = n else { unreachable!() };
        assert_eq!(Default.next(b, Outcome::RefusedDuringHandshake), Next::Stop);
    }

    #[test]
    fn prefer_falls_back_to_plain_once() {
        let a = Prefer.first_attempt();
        assert_eq!(
            Prefer.next(a, Outcome::RefusedDuringHandshake),
            Next::Try(Attempt::Plain)
        );
        assert_eq!(
            Prefer.next(Attempt::Plain, Outcome::RefusedDuringHandshake),
            Next::Stop
        );
    }

    #[test]
    fn require_never_falls_back() {
        let a = Require.first_attempt();
        assert_eq!(
            Require.next(a, Outcome::RefusedDuringHandshake),
            Next::EncryptionRequiredButRefused
        );
        assert_eq!(Require.next(a, Outcome::Failed), Next::Stop);
    }

    #[test]
    fn disable_never_tries_mse() {
        assert_eq!(
            Disable.next(Attempt::Plain, Outcome::RefusedDuringHandshake),
            Next::Stop
        );
    }

    #[test]
    fn done_and_failed_stop() {
        for p in [Default, Prefer, Require, Disable] {
            let a = p.first_attempt();
            assert_eq!(p.next(a, Outcome::Done), Next::Stop);
            assert_eq!(p.next(a, Outcome::Failed), Next::Stop);
        }
    }

    #[test]
    fn incoming_acceptance() {
        assert!(Default.accepts_incoming(Incoming::Plain));
        assert!(Default.accepts_incoming(Incoming::Mse));
        assert!(Prefer.accepts_incoming(Incoming::Plain));
        assert!(!Require.accepts_incoming(Incoming::Plain));
        assert!(Require.accepts_incoming(Incoming::Mse));
        assert!(Disable.accepts_incoming(Incoming::Plain));
        assert!(!Disable.accepts_incoming(Incoming::Mse));
        for p in [Default, Prefer, Require, Disable] {
            assert!(p.accepts_incoming(Incoming::NeedMore));
        }
        assert_eq!(Require.incoming_methods(), CryptoSet::RC4);
        assert_eq!(Default.incoming_methods(), CryptoSet::BOTH);
    }
}
