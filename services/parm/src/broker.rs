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

/// A broker of its own on other ports (`scripts/kafka-local` with `PARM_KAFKA_PORT`), for a
/// test that stops and starts it without touching the broker other tests share.
pub struct OwnBroker {
    env: Vec<(&'static str, String)>,
    pub bootstrap: String,
}

impl OwnBroker {
    /// Starts (or finds running) the broker on `port`, its controller on `port + 1`.
    pub fn start(port: u16) -> anyhow::Result<Self> {
        let env = vec![("PARM_KAFKA_PORT", port.to_string()), ("PARM_KAFKA_CONTROLLER_PORT", (port + 1).to_string())];
        let bootstrap = kafka_local(&env, "start")?;
        Ok(Self { env, bootstrap })
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 30 s).
    pub fn stop(&self) -> anyhow::Result<()> {
        kafka_local(&self.env, "stop").map(|_| ())
    }

    /// Starts it again after [`OwnBroker::stop`]; returns once it serves clients.
    pub fn restart(&self) -> anyhow::Result<()> {
        kafka_local(&self.env, "start").map(|_| ())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.stop();
    }
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
        .or_else(|| (command == "stop").then(String::new))
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
