//! Trackerless downloading and seeding (BEP 3 piece transfer): storage with resume records,
//! a piece picker, a choker, peer connections, and the session that runs them.
//!
//! The picker ([`picker`]) and the choker ([`choker`]) are sans-IO so their strategies are
//! tested on a simulated clock; [`storage`] does the file I/O and hashing on dedicated
//! threads; [`session`] owns a torrent and its peer connections (`peer`).

#![deny(missing_docs)]

pub mod bitfield;
pub mod choker;
pub mod connection;
pub mod display;
mod peer;
pub mod picker;
pub mod resume;
pub mod session;
pub mod storage;

pub use bitfield::{Bitfield, BitfieldError};
pub use choker::{Choker, ChokerConfig, PeerView};
pub use connection::{MAX_QUEUED_REQUESTS, MAX_REQUEST, PeerConnection};
pub use picker::{BLOCK, BlockRef, BlockResult, PeerKey, Picker, PickerConfig};
pub use resume::{ResumeError, ResumeRecord, ResumeStore, StartPlan, plan_start};
pub use session::{Phase, Progress, Session, SessionConfig, SessionError, SessionHandoff};
pub use storage::{DiskEvent, FileStamp, Mode, Storage, StorageError};

/// Tunes glibc's allocator for streaming blocks; dht-get and dht-seed call it first thing.
///
/// Every received block is allocated on a network thread and freed on a disk thread once
/// written (and every uploaded block the other way round). With glibc's defaults the freed
/// memory at the top of a heap is trimmed back to the kernel, and the next allocations
/// fault fresh zeroed pages in again: at loopback rates that page-faulting was about a
/// tenth of the downloader's CPU time. Keeping freed memory for reuse costs nothing
/// unbounded, as the disk backlog and the request pipelines already bound what is in
/// flight. A fixed mmap threshold keeps the few large buffers (hash read-back) on the
/// heaps too.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters (under the allocator's own locks).
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
