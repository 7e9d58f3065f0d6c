//! A loopback testnet: N real nodes with real UDP sockets, each on its own 127.x.y.z address,
//! all driven by the current tokio runtime. Used by the integration tests and the testnet
//! tool; every node's allow-list is 127.0.0.0/8.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use crate::dht::driver::{Dht, DhtConfig, DhtHandle, StartError};
use crate::dht::node;

/// Testnet settings.
#[derive(Debug, Clone)]
pub struct TestnetConfig {
    /// Second octet of every node's address (127.B.x.y), so concurrent testnets (e.g. tests
    /// running in parallel) do not collide.
    pub subnet: u8,
    /// UDP port of every node (distinct IPs make a fixed port safe); 0 = ephemeral.
    pub port: u16,
    /// Node template (allow-list forced to loopback).
    pub node: node::Config,
    /// Per-node data directories `<dir>/node-<i>` when set.
    pub data_dir: Option<PathBuf>,
    /// Routers each joining node is given, drawn from earlier nodes.
    pub fanout: usize,
}

impl Default for TestnetConfig {
    fn default() -> Self {
        TestnetConfig {
            subnet: 50,
            port: 0,
            node: node::Config::loopback_testnet(),
            data_dir: None,
            fanout: 3,
        }
    }
}

/// The address node `i` binds: 127.subnet.(i / 250).(i % 250 + 1).
pub fn testnet_ip(subnet: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, subnet, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// Running testnet nodes.
pub struct Testnet {
    /// Handles of the nodes, by index (node `i` binds [`testnet_ip`]`(subnet, i)`).
    pub nodes: Vec<DhtHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Testnet {
    /// Starts `n` nodes on the current runtime. Node 0 starts alone; each later node
    /// joins through node 0 and up to `fanout - 1` random earlier nodes, given as contacts.
    pub async fn start(n: usize, config: TestnetConfig) -> Result<Testnet, StartError> {
        assert!(
            n <= 250 * 250,
            "testnet addresses cover at most 62,500 nodes"
        );
        let mut nodes: Vec<DhtHandle> = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let mut node_cfg = config.node.clone();
            node_cfg.allow = crate::dht::allow::AllowList::loopback();
            // A joiner is given node 0 and random earlier nodes as plain contacts, not as
            // routers: BEP 5 keeps routers out of routing tables, so nodes given as routers
            // would be in no joiner's table (in a 3-node testnet, tables could not fill).
            let mut contacts = Vec::new();
            for j in std::iter::once(0)
                .chain((1..config.fanout).map(|_| rand::random_range(0..i.max(1))))
            {
                if j < i
                    && let SocketAddr::V4(c) = nodes[j].local_addr()
                    && !contacts.contains(&c)
                {
                    contacts.push(c);
                }
            }
            let bind = SocketAddr::V4(SocketAddrV4::new(testnet_ip(config.subnet, i), config.port));
            let dht = DhtConfig {
                bind,
                bind6: None,
                bind6_optional: false,
                node: node_cfg,
                bootstrap: Vec::new(),
                contacts: contacts.into_iter().map(SocketAddr::V4).collect(),
                data_dir: config
                    .data_dir
                    .as_ref()
                    .map(|d| d.join(format!("node-{i}"))),
                save_interval: Duration::from_secs(300),
                incoming: None,
                receive_delay: Duration::ZERO,
            };
            let (handle, driver) = Dht::bind(dht).await?;
            tasks.push(tokio::spawn(driver));
            nodes.push(handle);
        }
        Ok(Testnet { nodes, tasks })
    }

    /// Address of node `i` as a v4 socket address.
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        match self.nodes[i].local_addr() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("testnet nodes bind IPv4"),
        }
    }

    /// Waits until every node has at least `min_nodes` nodes in its table (or `timeout`
    /// passes). Returns the smallest table size seen in the last round.
    pub async fn wait_for_tables(&self, min_nodes: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut smallest = usize::MAX;
            for n in &self.nodes {
                if let Ok(s) = n.stats().await {
                    smallest = smallest.min(s.good_nodes + s.questionable_nodes);
                }
            }
            if smallest >= min_nodes || tokio::time::Instant::now() >= deadline {
                return smallest;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node (persisting where configured).
    pub async fn shutdown(self) {
        for n in &self.nodes {
            let _ = n.shutdown().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
