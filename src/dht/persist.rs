//! Durable node state on sled: our node id and the routing table's contacts.
//!
//! sled 0.34 is beta and has open reports of corruption after abrupt stops, so everything
//! about it stays behind this module (it could be swapped without touching the node), a
//! store that fails to open becomes a clear error instead of a panic, and the data kept here
//! is only what a node can rebuild: losing it costs a slower start, never correctness.
//! Writes happen a few times an hour and on shutdown, never per packet.
//!
//! Each family has its own id and contacts (BEP 32): `node_id`/`contacts` for IPv4,
//! `node_id6`/`contacts6` for IPv6. A store written before IPv6 simply has no IPv6 keys, and
//! loads as an IPv4 store with an empty IPv6 side.

use std::fmt;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

use crate::dht::id::{COMPACT_NODE_LEN, Contact, Contact6, Family, NodeAddr, NodeId};
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
/// The IPv6 node's id (BEP 32: its own, valid for its own address under BEP 42).
const NODE_ID6_KEY: &[u8] = b"node_id6";

/// The node's sled store. Cloning is cheap (sled handles are shared), so saves can run on
/// the blocking pool while the event loop keeps serving.
#[derive(Clone)]
pub struct NodeStore {
    path: PathBuf,
    db: sled::Db,
    contacts: sled::Tree,
    contacts6: sled::Tree,
}

impl NodeStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<NodeStore, PersistError> {
        let path = dir.to_path_buf();
        let db = sled_open::open(dir, sled::Config::new())?;
        let contacts = db
            .open_tree("contacts")
            .map_err(|e| classify(path.clone(), e))?;
        let contacts6 = db
            .open_tree("contacts6")
            .map_err(|e| classify(path.clone(), e))?;
        Ok(NodeStore {
            path,
            db,
            contacts,
            contacts6,
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn id_key(family: Family) -> &'static [u8] {
        match family {
            Family::V4 => NODE_ID_KEY,
            Family::V6 => NODE_ID6_KEY,
        }
    }

    fn tree(&self, family: Family) -> &sled::Tree {
        match family {
            Family::V4 => &self.contacts,
            Family::V6 => &self.contacts6,
        }
    }

    /// The saved IPv4 node id, if any.
    pub fn node_id(&self) -> Result<Option<NodeId>, PersistError> {
        self.node_id_of(Family::V4)
    }

    /// The saved node id of `family`'s node, if any.
    pub fn node_id_of(&self, family: Family) -> Result<Option<NodeId>, PersistError> {
        let v = self
            .db
            .get(Self::id_key(family))
            .map_err(|e| classify(self.path.clone(), e))?;
        Ok(v.and_then(|v| NodeId::from_slice(&v)))
    }

    /// Records the IPv4 node id (call [`NodeStore::flush`] to make it durable).
    pub fn set_node_id(&self, id: &NodeId) -> Result<(), PersistError> {
        self.set_node_id_of(Family::V4, id)
    }

    /// Records `family`'s node id (call [`NodeStore::flush`] to make it durable).
    pub fn set_node_id_of(&self, family: Family, id: &NodeId) -> Result<(), PersistError> {
        self.db
            .insert(Self::id_key(family), &id.0[..])
            .map_err(|e| classify(self.path.clone(), e))?;
        Ok(())
    }

    /// The saved IPv4 contacts (entries that fail to parse are skipped).
    pub fn contacts(&self) -> Vec<Contact> {
        self.contacts_of()
    }

    /// The saved IPv6 contacts.
    pub fn contacts6(&self) -> Vec<Contact6> {
        self.contacts_of()
    }

    /// The saved contacts of `A`'s family.
    pub fn contacts_of<A: NodeAddr>(&self) -> Vec<Contact<A>> {
        self.tree(A::FAMILY)
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| Contact::from_compact(&v))
            .collect()
    }

    /// Replaces the saved IPv4 contacts with `contacts` and flushes.
    pub fn save_contacts(&self, contacts: &[Contact]) -> Result<(), PersistError> {
        self.save_contacts_of(contacts)
    }

    /// Replaces the saved contacts of `A`'s family with `contacts` and flushes.
    pub fn save_contacts_of<A: NodeAddr>(
        &self,
        contacts: &[Contact<A>],
    ) -> Result<(), PersistError> {
        let tree = self.tree(A::FAMILY);
        let mut batch = sled::Batch::default();
        for kv in tree.iter().keys() {
            let k = kv.map_err(|e| classify(self.path.clone(), e))?;
            batch.remove(k);
        }
        let mut buf = Vec::with_capacity(A::NODE_LEN.max(COMPACT_NODE_LEN));
        for c in contacts {
            buf.clear();
            c.write_compact(&mut buf);
            batch.insert(&c.id.0[..], &buf[..]);
        }
        tree.apply_batch(batch)
            .map_err(|e| classify(self.path.clone(), e))?;
        self.flush()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), PersistError> {
        self.db
            .flush()
            .map_err(|e| classify(self.path.clone(), e))?;
        Ok(())
    }

    /// The saved IPv4 contacts' addresses (what a restart pings).
    pub fn contact_addrs(&self) -> Vec<SocketAddrV4> {
        self.contacts().into_iter().map(|c| c.addr).collect()
    }

    /// The saved IPv6 contacts' addresses.
    pub fn contact_addrs6(&self) -> Vec<SocketAddrV6> {
        self.contacts6().into_iter().map(|c| c.addr).collect()
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

    /// BEP 32: each family keeps its own id and contacts; a store written before IPv6 (no
    /// IPv6 keys) loads with an empty IPv6 side and its IPv4 side intact.
    #[test]
    fn each_family_keeps_its_own_id_and_contacts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = NodeStore::open(dir.path()).unwrap();
            s.set_node_id(&NodeId([4; 20])).unwrap();
            s.save_contacts(&[Contact::new(
                NodeId([1; 20]),
                "127.0.0.1:1".parse().unwrap(),
            )])
            .unwrap();
        }
        let s = NodeStore::open(dir.path()).unwrap();
        assert_eq!(
            s.node_id_of(Family::V6).unwrap(),
            None,
            "an old store has no IPv6 id"
        );
        assert!(s.contacts6().is_empty());
        assert_eq!(s.contacts().len(), 1);
        let c6: Vec<Contact6> = (1..=3u8)
            .map(|i| {
                Contact::new(
                    NodeId([i; 20]),
                    format!("[fd77::{i}]:6881").parse().unwrap(),
                )
            })
            .collect();
        s.set_node_id_of(Family::V6, &NodeId([6; 20])).unwrap();
        s.save_contacts_of(&c6).unwrap();
        drop(s);
        let s = NodeStore::open(dir.path()).unwrap();
        assert_eq!(s.node_id().unwrap(), Some(NodeId([4; 20])));
        assert_eq!(s.node_id_of(Family::V6).unwrap(), Some(NodeId([6; 20])));
        let mut back = s.contacts6();
        back.sort_by_key(|c| c.id);
        assert_eq!(back, c6);
        assert_eq!(
            s.contacts().len(),
            1,
            "saving IPv6 contacts leaves IPv4's alone"
        );
        assert_eq!(s.contact_addrs6().len(), 3);
    }

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
