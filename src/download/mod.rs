//! Trackerless downloading and seeding (BEP 3 piece transfer): storage with resume records,
//! a piece picker, a choker, peer connections, and the session that runs them.
//!
//! The picker ([`picker`]) and the choker ([`choker`]) are sans-IO so their strategies are
//! tested on a simulated clock; [`storage`] does the file I/O and hashing on dedicated
//! threads; [`session`] owns a torrent and its peer connections ([`peer`]).

pub mod bitfield;
pub mod choker;
pub mod display;
mod peer;
pub mod picker;
pub mod resume;
pub mod session;
pub mod storage;

pub use bitfield::{Bitfield, BitfieldError};
pub use choker::{Choker, ChokerConfig, PeerView};
pub use peer::{MAX_QUEUED_REQUESTS, MAX_REQUEST};
pub use picker::{BLOCK, BlockRef, BlockResult, PeerKey, Picker, PickerConfig};
pub use resume::{ResumeRecord, ResumeStore, StartPlan, plan_start};
pub use session::{Phase, Progress, Session, SessionConfig, SessionError, SessionHandoff};
pub use storage::{DiskEvent, FileStamp, Mode, Storage, StorageError};
