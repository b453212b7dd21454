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
    let script = kafka_local_script();
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} start failed:\n{}{}",
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
