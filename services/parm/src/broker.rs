//! Finding a Kafka broker: the one given, or a local one started with
//! `scripts/kafka-local` (single-node KRaft from the Maven Central jars).

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;

/// The repository's `scripts/kafka-local`, found from `models/` (see `models_dir`).
pub fn kafka_local_script() -> PathBuf {
    parm_common::model::models_dir().join("../scripts/kafka-local")
}

/// Starts the local broker if it is not running (idempotent) and returns its address.
pub fn start_local() -> anyhow::Result<String> {
    kafka_local(&[], "start")
}

/// A Kafka cluster of its own on other ports than the shared broker's, for a test or a
/// benchmark that stops, kills and starts brokers: one node, or several on loopback (each a
/// broker and a controller, from the same jars as `scripts/kafka-local`) with topics
/// replicated to every node (up to 3) and `min.insync.replicas` 2, so that one node can be
/// lost without losing a write. Node `i` (1-based)
/// listens on `base_port + 10 (i - 1)`, its controller one port above. Dropping it stops
/// every node.
pub struct Cluster {
    nodes: Vec<Vec<(&'static str, String)>>,
    pub bootstrap: String,
}

impl Cluster {
    /// Wipes the nodes' data (a fresh cluster id) and starts them together; returns once
    /// each serves clients.
    pub fn start(base_port: u16, nodes: usize) -> anyhow::Result<Self> {
        let port = |i: usize| base_port + 10 * i as u16;
        let voters: Vec<String> = (0..nodes).map(|i| format!("{}@127.0.0.1:{}", i + 1, port(i) + 1)).collect();
        let cluster_id = cluster_id();
        let nodes: Vec<Vec<(&'static str, String)>> = (0..nodes)
            .map(|i| {
                vec![
                    ("PARM_KAFKA_PORT", port(i).to_string()),
                    ("PARM_KAFKA_CONTROLLER_PORT", (port(i) + 1).to_string()),
                    ("PARM_KAFKA_NODE_ID", (i + 1).to_string()),
                    ("PARM_KAFKA_VOTERS", voters.join(",")),
                    ("PARM_KAFKA_CLUSTER_ID", cluster_id.clone()),
                    ("PARM_KAFKA_REPLICAS", nodes.min(3).to_string()),
                    ("PARM_KAFKA_HEAP", "384m".to_string()),
                ]
            })
            .collect();
        for env in &nodes {
            kafka_local(env, "reset")?;
        }
        let c = Self { bootstrap: (0..nodes.len()).map(|i| format!("127.0.0.1:{}", port(i))).collect::<Vec<_>>().join(","), nodes };
        c.start_all()?;
        Ok(c)
    }

    /// Starts every node at once (a node serves only once a quorum of them runs); returns
    /// once each serves clients.
    pub fn start_all(&self) -> anyhow::Result<()> {
        std::thread::scope(|s| {
            let started: Vec<_> = self.nodes.iter().map(|env| s.spawn(move || kafka_local(env, "start"))).collect();
            started.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a node's start panicked"))?.map(|_| ()))
        })
    }

    /// Stops every node (a controlled shutdown each).
    pub fn stop_all(&self) -> anyhow::Result<()> {
        self.nodes.iter().try_for_each(|env| kafka_local(env, "stop").map(|_| ()))
    }

    /// SIGKILLs node `id` (1-based): a crash, no controlled shutdown.
    pub fn kill_node(&self, id: i32) -> anyhow::Result<()> {
        kafka_local(self.node(id)?, "kill").map(|_| ())
    }

    /// Starts node `id` again; returns once it serves clients.
    pub fn start_node(&self, id: i32) -> anyhow::Result<()> {
        kafka_local(self.node(id)?, "start").map(|_| ())
    }

    fn node(&self, id: i32) -> anyhow::Result<&[(&'static str, String)]> {
        id.checked_sub(1).and_then(|i| usize::try_from(i).ok()).and_then(|i| self.nodes.get(i)).map(Vec::as_slice).with_context(|| format!("no node {id} in this cluster"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for env in &self.nodes {
            let _ = kafka_local(env, "stop");
        }
    }
}

/// A fresh Kafka cluster id: 16 random bytes as unpadded base64url.
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = rand::random::<[u8; 16]>();
    let mut id = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        // Unpadded: a chunk of m bytes gives m + 1 characters.
        for j in 0..=chunk.len() {
            id.push(char::from(ALPHABET[((n >> (18 - 6 * j)) & 63) as usize]));
        }
    }
    id
}

/// Runs `scripts/kafka-local COMMAND` with `env`; returns the last line it printed.
fn kafka_local(env: &[(&str, String)], command: &str) -> anyhow::Result<String> {
    let script = kafka_local_script();
    let out = Command::new("bash")
        .arg(&script)
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {command} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .or_else(|| (command != "start").then(String::new))
        .context("scripts/kafka-local start printed no bootstrap address")
}

/// The broker the tests use: `PARM_TEST_BROKERS` (`scripts/test` starts one and sets it),
/// else the local one, started if needed.
pub fn for_tests() -> anyhow::Result<String> {
    match std::env::var("PARM_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => Ok(b),
        _ => start_local(),
    }
}
