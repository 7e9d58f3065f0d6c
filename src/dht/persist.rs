//! Durable node state on sled: our node id and the routing table's contacts.
//!
//! sled 0.34 is beta and has open reports of corruption after abrupt stops, so everything
//! about it stays behind this module (it could be swapped without touching the node), a
//! store that fails to open becomes a clear error instead of a panic, and the data kept here
//! is only what a node can rebuild: losing it costs a slower start, never correctness.
//! Writes happen a few times an hour and on shutdown, never per packet.

use std::fmt;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use crate::dht::id::{COMPACT_NODE_LEN, Contact, NodeId};
use crate::util::sled_open::{self, SledError};

/// Why the store could not be used.
#[derive(Debug)]
pub enum PersistError {
    /// Another process holds the store.
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// The files are not a readable store.
    Corrupt {
        /// The store's directory.
        path: PathBuf,
        /// What sled reported.
        detail: String,
    },
    /// The directory cannot be created, read or written.
    Io {
        /// The store's directory.
        path: PathBuf,
        /// The I/O error, as text.
        detail: String,
    },
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Locked { path } => write!(
                f,
                "the node store at {} is in use (is another dht-node running with this data \
                 directory? stop it or pass a different --data-dir)",
                path.display()
            ),
            PersistError::Corrupt { path, detail } => write!(
                f,
                "the node store at {} is unreadable ({detail}); it only holds the node id and \
                 routing contacts, so move it aside (or delete it) to start fresh, or pass a \
                 different --data-dir",
                path.display()
            ),
            PersistError::Io { path, detail } => write!(
                f,
                "cannot use the node store at {}: {detail} (check permissions and free space, \
                 or pass a different --data-dir)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PersistError {}

const NODE_ID_KEY: &[u8] = b"node_id";

/// The node's sled store. Cloning is cheap (sled handles are shared), so saves can run on
/// the blocking pool while the event loop keeps serving.
#[derive(Clone)]
pub struct NodeStore {
    path: PathBuf,
    db: sled::Db,
    contacts: sled::Tree,
}

impl NodeStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<NodeStore, PersistError> {
        let path = dir.to_path_buf();
        let db = sled_open::open(dir, sled::Config::new())?;
        let contacts = db
            .open_tree("contacts")
            .map_err(|e| classify(path.clone(), e))?;
        Ok(NodeStore { path, db, contacts })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted node id, if any (a malformed value reads as none).
    pub fn node_id(&self) -> Result<Option<NodeId>, PersistError> {
        let v = self
            .db
            .get(NODE_ID_KEY)
            .map_err(|e| classify(self.path.clone(), e))?;
        Ok(v.and_then(|v| NodeId::from_slice(&v)))
    }

    /// Records our node id (durable after the next [`NodeStore::flush`]).
    pub fn set_node_id(&self, id: &NodeId) -> Result<(), PersistError> {
        self.db
            .insert(NODE_ID_KEY, &id.0[..])
            .map_err(|e| classify(self.path.clone(), e))?;
        Ok(())
    }

    /// The persisted contacts; malformed records are skipped.
    pub fn contacts(&self) -> Vec<Contact> {
        self.contacts
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| Contact::from_compact(&v))
            .collect()
    }

    /// Replaces the persisted contacts with `contacts`, atomically, and flushes.
    pub fn save_contacts(&self, contacts: &[Contact]) -> Result<(), PersistError> {
        let mut batch = sled::Batch::default();
        for kv in self.contacts.iter().keys() {
            let k = kv.map_err(|e| classify(self.path.clone(), e))?;
            batch.remove(k);
        }
        let mut buf = Vec::with_capacity(COMPACT_NODE_LEN);
        for c in contacts {
            buf.clear();
            c.write_compact(&mut buf);
            batch.insert(&c.id.0[..], &buf[..]);
        }
        self.contacts
            .apply_batch(batch)
            .map_err(|e| classify(self.path.clone(), e))?;
        self.flush()
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), PersistError> {
        self.db
            .flush()
            .map_err(|e| classify(self.path.clone(), e))?;
        Ok(())
    }

    /// Contact addresses only (what the node re-pings on start).
    pub fn contact_addrs(&self) -> Vec<SocketAddrV4> {
        self.contacts().into_iter().map(|c| c.addr).collect()
    }
}

fn classify(path: PathBuf, e: sled::Error) -> PersistError {
    sled_open::classify(&path, e).into()
}

impl From<SledError> for PersistError {
    fn from(e: SledError) -> Self {
        match e {
            SledError::Locked { path } => PersistError::Locked { path },
            SledError::Corrupt { path, detail } => PersistError::Corrupt { path, detail },
            SledError::Io { path, detail } => PersistError::Io { path, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_contacts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeId([5; 20]);
        let contacts: Vec<Contact> = (1..=50u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    SocketAddrV4::new([127, 0, 0, i].into(), 6881),
                )
            })
            .collect();
        {
            let s = NodeStore::open(dir.path()).unwrap();
            assert_eq!(s.node_id().unwrap(), None);
            s.set_node_id(&id).unwrap();
            s.save_contacts(&contacts).unwrap();
            s.save_contacts(&contacts[..10]).unwrap();
        }
        let s = NodeStore::open(dir.path()).unwrap();
        assert_eq!(s.node_id().unwrap(), Some(id));
        let mut got = s.contacts();
        got.sort_by_key(|c| c.id);
        assert_eq!(got, contacts[..10].to_vec());
    }

    #[test]
    fn locked_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = NodeStore::open(dir.path()).unwrap();
        let err = NodeStore::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, PersistError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another dht-node"), "{err}");
    }

    #[test]
    fn garbage_store_is_a_clear_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("conf"),
            b"\xde\xad\xbe\xef not a sled config",
        )
        .unwrap();
        std::fs::write(dir.path().join("db"), vec![0xa5u8; 100_000]).unwrap();
        let err = NodeStore::open(dir.path())
            .err()
            .expect("garbage must not open");
        assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("--data-dir"), "{err}");
    }

    #[test]
    fn unusable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = NodeStore::open(&file.join("sub"))
            .err()
            .expect("cannot create under a file");
        assert!(matches!(err, PersistError::Io { .. }), "{err}");
    }
}
